"""What a fleet is made of: the adapters behind files, folders, globs, Hub ids and Hub queries.

A SOURCE of ``lorarank fleet`` is one of

==========================================  ===================================================
``path/adapter.safetensors`` (.npz, .gguf)  one adapter (a config beside it is used)
``path/run/`` (an adapter folder)           one adapter (its weights file and config)
``path/runs/`` (any other folder)           every adapter under it: adapter folders (a config
                                            and a weights file, or one preferred weights file),
                                            named adapters (PEFT's subfolders), loose weights
                                            files; at most :data:`MAX_DEPTH` levels down
``"runs/*/adapter_model.safetensors"``      a glob (``**`` recurses), each match as above
``hf://owner/name[@rev][/subfolder]``       one Hub adapter
``hf://owner/*`` (``hf://owner/prefix*``)    every adapter repo of a user or organisation
``"hf://?author=org&base_model=o/n"``       a Hub query: ``author``, ``base_model`` (adapters
                                            of that base model), ``search``, ``limit``
==========================================  ===================================================

Expansion lists members and reads nothing but folder listings (and, for queries, the Hub's
model list); each member is read by the worker that audits it.
"""

from __future__ import annotations

import fnmatch
import glob as _glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import parse_qs

from ..bounded import clip
from ..errors import ConfigError, HubError

__all__ = ["Member", "Expansion", "HubQuery", "expand_sources", "parse_hub_query", "is_hub_query",
           "members_from_uploads", "MAX_MEMBERS", "MAX_DEPTH", "WEIGHT_SUFFIXES", "DEFAULT_QUERY_LIMIT",
           "MAX_QUERY_LIMIT"]

#: Most adapters one fleet holds (a bound on every expansion).
MAX_MEMBERS = 100_000
#: Deepest folder level searched under a folder SOURCE.
MAX_DEPTH = 6
#: Repos a Hub query lists by default, and at most.
DEFAULT_QUERY_LIMIT = 1000
MAX_QUERY_LIMIT = 100_000
WEIGHT_SUFFIXES = (".safetensors", ".npz", ".gguf")
_PREFERRED = ("adapter_model.safetensors", "adapters.safetensors")
_NOT_ADAPTERS = ("base_weights.safetensors",)   # DoRA samples keep base weights beside the adapter
_CONFIG = "adapter_config.json"
_HUB = "hf://"


@dataclass(frozen=True)
class Member:
    """One adapter of a fleet, before it is read.

    Attributes
    ----------
    source : str
        How rows name it: the path as found (``runs/a``), ``runs/multi [summarize]`` for a named
        adapter, ``hf://owner/name[/sub]`` for the Hub (the row adds the pinned revision), or an
        uploaded name.
    path : str or None
        A local weights file or adapter folder.
    hub : str or None
        ``hf://owner/name[@revision][/subfolder]``.
    files : tuple of (str, bytes) or None
        In-memory files (an upload): one weights file and optionally its config.
    """

    source: str
    path: str | None = None
    hub: str | None = None
    files: tuple[tuple[str, bytes], ...] | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        """``"hub"``, ``"bytes"`` or ``"local"``."""
        return "hub" if self.hub else "bytes" if self.files is not None else "local"


@dataclass(frozen=True)
class Expansion:
    """The members of a fleet and sentences about what expansion skipped or capped."""

    members: tuple[Member, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class HubQuery:
    """A Hub model listing: ``hf://?author=...&base_model=...&search=...&limit=...``.

    ``pattern`` (from ``hf://owner/prefix*``) keeps repos whose name matches it (fnmatch).
    """

    author: str | None = None
    base_model: str | None = None
    search: str | None = None
    limit: int = DEFAULT_QUERY_LIMIT
    pattern: str | None = None

    @property
    def uri(self) -> str:
        parts = [f"{k}={v}" for k, v in (("author", self.author), ("base_model", self.base_model),
                                          ("search", self.search)) if v]
        if self.limit != DEFAULT_QUERY_LIMIT:
            parts.append(f"limit={self.limit}")
        if self.pattern and self.author:
            return f"{_HUB}{self.author}/{self.pattern}"
        return f"{_HUB}?" + "&".join(parts)


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}")
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}")


def is_hub_query(text: str) -> bool:
    """True for ``hf://?...`` and ``hf://owner/<pattern with * or ?>``."""
    text = str(text).strip()
    if not text.startswith(_HUB):
        return False
    body = text[len(_HUB):]
    return body.startswith("?") or ("/" in body and any(c in body.split("/", 1)[1] for c in "*[")
                                     and "@" not in body)


def parse_hub_query(text: str) -> HubQuery:
    """``hf://?author=..&base_model=..&search=..&limit=N`` or ``hf://owner/prefix*`` -> HubQuery.

    Raises
    ------
    ConfigError
        An unknown key, a bad name, a limit out of 1..:data:`MAX_QUERY_LIMIT`, or no filter
        at all (the whole Hub is not a fleet).
    """
    raw = str(text).strip()
    body = raw[len(_HUB):]
    if not body.startswith("?"):
        owner, _, pattern = body.partition("/")
        if not _NAME.fullmatch(owner) or not pattern or "/" in pattern or len(pattern) > 96:
            raise ConfigError(f"{raw!r} is not hf://owner/pattern (e.g. hf://my-org/*)")
        return HubQuery(author=owner, pattern=None if pattern == "*" else pattern)
    try:
        params = parse_qs(body[1:], keep_blank_values=True, strict_parsing=True, max_num_fields=8)
    except ValueError:
        raise ConfigError(f"{raw!r} is not hf://?author=ORG&base_model=OWNER/NAME&search=TEXT&limit=N") from None
    known = {"author", "base_model", "search", "limit"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"{raw!r}: unknown query key {unknown[0]!r}; use author, base_model, search or limit")
    if any(len(v) > 1 for v in params.values()):
        raise ConfigError(f"{raw!r}: each query key at most once")
    get = {k: v[0].strip() for k, v in params.items()}
    author, base, search = get.get("author") or None, get.get("base_model") or None, get.get("search") or None
    if author is not None and not _NAME.fullmatch(author):
        raise ConfigError(f"{raw!r}: author should be a user or organisation name, got {author!r}")
    if base is not None and not _REPO.fullmatch(base):
        raise ConfigError(f"{raw!r}: base_model should be owner/name, got {base!r}")
    if search is not None and (len(search) > 200 or any(ord(c) < 32 for c in search)):
        raise ConfigError(f"{raw!r}: search should be up to 200 printable characters")
    limit = DEFAULT_QUERY_LIMIT
    if "limit" in get:
        try:
            limit = int(get["limit"])
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_QUERY_LIMIT:
            raise ConfigError(f"{raw!r}: limit should be a whole number from 1 to {MAX_QUERY_LIMIT:,}, "
                              f"got {get['limit']!r}")
    if not (author or base or search):
        raise ConfigError(f"{raw!r}: a Hub query needs author, base_model or search (not the whole Hub)")
    return HubQuery(author=author, base_model=base, search=search, limit=limit)


# ------------------------------------------------------------------------------- local files
def _weights(folder: Path) -> list[Path]:
    try:
        items = list(folder.iterdir())
    except OSError:
        return []
    return sorted(p for p in items if p.suffix.lower() in WEIGHT_SUFFIXES and p.is_file()
                  and p.name not in _NOT_ADAPTERS)


def _is_adapter_folder(folder: Path) -> bool:
    """A folder that ``load_adapter`` reads as one adapter: a config and weights, or one
    preferred weights file (an mlx-lm or PEFT folder without config)."""
    weights = _weights(folder)
    if not weights:
        return False
    if (folder / _CONFIG).is_file():
        return True
    return any(p.name in _PREFERRED for p in weights)


def _local_members(path: Path, shown: str, out: list[Member], notes: list[str], depth: int = 0) -> None:
    if path.is_file() or (path.exists() and not path.is_dir()):
        out.append(Member(source=shown, path=str(path)))   # a FIFO or device: a row with its sentence
        return
    if not path.is_dir():
        raise FileNotFoundError(2, "No such file or directory", shown)
    if _is_adapter_folder(path):
        out.append(Member(source=shown, path=str(path)))
        return
    if depth >= MAX_DEPTH:
        notes.append(f"{shown}: not searched below {MAX_DEPTH} folder levels")
        return
    for item in sorted(path.iterdir()):
        if len(out) > MAX_MEMBERS:
            return
        if item.name.startswith("."):
            continue
        sub = f"{shown.rstrip('/')}/{item.name}"
        if item.is_dir() and not item.is_symlink():
            _local_members(item, sub, out, notes, depth + 1)
        elif (item.suffix.lower() in WEIGHT_SUFFIXES and item.name not in _NOT_ADAPTERS
              and (item.is_file() or item.exists())):   # a FIFO named *.safetensors: a row with its sentence
            out.append(Member(source=sub, path=str(item)))


def _glob_members(pattern: str, out: list[Member], notes: list[str]) -> None:
    matches = sorted(_glob.iglob(pattern, recursive=True))
    if not matches:
        raise ConfigError(f"{pattern!r} matches no file or folder")
    for match in matches:
        p = Path(match)
        if p.is_file() and p.suffix.lower() not in WEIGHT_SUFFIXES:
            continue   # adapter_config.json, README.md ... beside the weights
        if p.is_file() and p.name in _PREFERRED and _is_adapter_folder(p.parent):
            out.append(Member(source=match, path=str(p.parent) if (p.parent / _CONFIG).is_file() else match))
            continue
        _local_members(p, match, out, notes)


# ------------------------------------------------------------------------------------ the Hub
def _hub_members(query: HubQuery, *, token: str | None, settings, notes: list[str],
                 max_members: int = MAX_MEMBERS) -> list[Member]:
    from ..hub import list_adapter_repos

    # A listing past max_members would be refused anyway: list one more, not the query's limit.
    repos, skipped = list_adapter_repos(author=query.author, base_model=query.base_model,
                                        search=query.search, limit=min(query.limit, max_members + 1),
                                        token=token, settings=settings)
    if query.pattern:
        repos = [r for r in repos if fnmatch.fnmatchcase(r.split("/", 1)[1], query.pattern)]
    if skipped:
        notes.append(f"{query.uri}: {skipped} repo(s) listed are not tagged as adapters (no peft or "
                     "lora tag, no base_model:adapter:... tag) and were skipped")
    if not repos:
        raise HubError(f"{query.uri} lists no adapter repos on this Hub")
    return [Member(source=f"{_HUB}{repo}", hub=f"{_HUB}{repo}") for repo in repos]


def expand_sources(sources: Sequence[str], *, token: str | None = None, settings=None,
                   max_members: int = MAX_MEMBERS) -> Expansion:
    """The members behind ``sources`` (see the module docstring), duplicates dropped.

    Parameters
    ----------
    sources : sequence of str
    token, settings
        For Hub queries, as in :func:`lorarank.hub.fetch_adapter_files`.
    max_members : int
        A fleet larger than this is refused (one sentence).

    Raises
    ------
    ConfigError
        No source, a glob matching nothing, a bad Hub query, too many members.
    FileNotFoundError
        A path that does not exist.
    HubError
        A Hub query that cannot be listed or lists no adapter.
    """
    from ..hub import parse_hub_uri

    if not sources:
        raise ConfigError("give at least one SOURCE (a file, folder, glob, hf:// id or Hub query)")
    out: list[Member] = []
    notes: list[str] = []
    for text in sources:
        text = str(text).strip()
        if is_hub_query(text):
            out.extend(_hub_members(parse_hub_query(text), token=token, settings=settings, notes=notes,
                                    max_members=max_members))
        elif text.startswith(_HUB):
            ref = parse_hub_uri(text)
            out.append(Member(source=ref.uri, hub=ref.uri))
        elif any(c in text for c in "*?[") and not Path(text).exists():
            _glob_members(text, out, notes)
        else:
            _local_members(Path(text), text, out, notes)
        if len(out) > max_members:
            raise ConfigError(f"the fleet holds more than {max_members:,} adapters; split it")
    if not out:
        raise ConfigError(f"no adapter weights (.safetensors, .npz or .gguf) found in "
                          f"{clip(', '.join(map(str, sources)), 300)}")
    seen: set[tuple] = set()
    unique = []
    for m in out:
        key = (m.hub,) if m.hub else (os.path.realpath(m.path),) if m.path else (m.source,)
        if key not in seen:
            seen.add(key)
            unique.append(m)
    if len(unique) < len(out):
        notes.append(f"{len(out) - len(unique)} duplicate source(s) counted once")
    return Expansion(tuple(unique), tuple(notes))


# ------------------------------------------------------------------------------------ uploads
#: Bounds on an uploaded zip of adapters (checked on its directory before anything is read).
MAX_ZIP_MEMBERS = 20_000
MAX_ZIP_BYTES = 4 * 2**30


def members_from_uploads(files: Iterable[tuple[str, bytes]], *, max_zip_bytes: int = MAX_ZIP_BYTES) -> Expansion:
    """Members from uploaded files: weights files, configs and zips of adapter folders.

    Each weights file is one adapter; a config joins the weights file in its folder (inside a
    zip: the same folder; loose uploads have no folders, so a lone config pairs with a lone
    weights file only). A zip's members are grouped by folder, bounded by
    :data:`MAX_ZIP_MEMBERS` and ``max_zip_bytes`` (default :data:`MAX_ZIP_BYTES`) declared
    unpacked bytes per zip, checked before inflating (its members are held in memory).

    Raises
    ------
    ConfigError
        A zip that cannot be read or is over the bounds, a member name with ``..``.
    """
    loose: list[tuple[str, bytes]] = []
    folders: dict[str, list[tuple[str, bytes]]] = {}
    notes: list[str] = []
    for name, data in files:
        if str(name).lower().endswith(".zip"):
            for folder, items in _zip_folders(str(name), data, max_bytes=max_zip_bytes).items():
                folders.setdefault(folder, []).extend(items)
        else:
            loose.append((str(name), bytes(data)))
    members: list[Member] = []
    weights = [(n, b) for n, b in loose if n.lower().endswith(WEIGHT_SUFFIXES)]
    configs = [(n, b) for n, b in loose if n.lower().endswith(".json")]
    if configs and len(weights) == 1 and len(configs) == 1:
        members.append(Member(source=weights[0][0], files=(weights[0], configs[0])))
    else:
        if configs:
            notes.append(f"{len(configs)} loose config file(s) not used: with several weights files, "
                         "upload each PEFT adapter as a folder in a zip")
        members.extend(Member(source=n, files=((n, b),)) for n, b in weights)
    for folder, items in sorted(folders.items()):
        ws = [(n, b) for n, b in items if n.lower().endswith(WEIGHT_SUFFIXES)
              and n.rsplit("/", 1)[-1] not in _NOT_ADAPTERS]
        cfg = [(n, b) for n, b in items if n.rsplit("/", 1)[-1] == _CONFIG]
        preferred = [w for w in ws if w[0].rsplit("/", 1)[-1] in _PREFERRED]
        if cfg and (len(ws) == 1 or len(preferred) == 1):
            w = preferred[0] if preferred else ws[0]
            members.append(Member(source=folder or w[0], files=((w[0].rsplit("/", 1)[-1], w[1]),
                                                                 (_CONFIG, cfg[0][1]))))
        else:
            members.extend(Member(source=n, files=((n.rsplit("/", 1)[-1], b),)) for n, b in ws)
    if not members:
        raise ConfigError("the upload holds no adapter weights (.safetensors, .npz or .gguf)")
    return Expansion(tuple(members), tuple(notes))


def _zip_folders(name: str, data: bytes, *, max_bytes: int = MAX_ZIP_BYTES) -> dict[str, list[tuple[str, bytes]]]:
    """The adapter files of a zip, by folder, read with the bounded reader
    (:class:`lorarank.bounded.ZipArchive`: directory checked first, members streamed)."""
    from ..bounded import ZipArchive

    archive = ZipArchive(name, data, max_members=MAX_ZIP_MEMBERS, max_bytes=max_bytes)
    out: dict[str, list[tuple[str, bytes]]] = {}
    for member in archive.files():
        path = member.name.replace("\\", "/")
        parts = [p for p in path.split("/") if p]
        if not parts or ".." in parts or path.startswith("/"):
            raise ConfigError(f"{name}: member {member.name!r} has an unsafe path")
        if parts[0] == "__MACOSX" or parts[-1].startswith("."):
            continue
        leaf = parts[-1]
        if not (leaf.lower().endswith(WEIGHT_SUFFIXES) or leaf == _CONFIG):
            continue
        out.setdefault("/".join(parts[:-1]), []).append(("/".join(parts), bytes(archive.read(member))))
    return out
