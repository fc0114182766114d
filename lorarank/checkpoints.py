"""Checkpoints of one training run, wherever they are: a folder, a zip, uploads, the Hub.

A run is a list of :class:`Checkpoint` (a step, where it came from, and a function that reads
its adapter), found

- in a folder of ``checkpoint-<step>`` subfolders as Transformers' and TRL's trainers write
  them, or of kohya's numbered saves (:func:`find_checkpoints`);
- in uploaded files: a ``.zip`` of such a folder, unpacked member by member through
  :class:`lorarank.bounded.ZipArchive` (the one zip reader), or numbered weights files
  (:func:`checkpoints_from_files`);
- on the Hugging Face Hub: one checkpoint per revision, or the ``checkpoint-<step>`` folders of
  one revision (:func:`plan_hub_series`, through :mod:`lorarank.hub`'s client).

Every folder's weights file is chosen by :func:`lorarank.adapters.choose_weights`, the rule a
single adapter folder is read with. Steps come from ``trainer_state.json``'s ``global_step``,
else the number in the name (:func:`step_from_name`). :func:`lorarank.series.audit_series`
reads the checkpoints one at a time.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Mapping, Sequence

from . import hub
from ._validate import check_int
from .adapters import (WEIGHT_SUFFIXES, Adapter, check_override, choose_weights, load_adapter,
                       load_adapter_bytes)
from .bounded import ZipArchive, clip, load_json, read_file
from .documents import name_list
from .errors import AdapterError, ConfigError, HubError

__all__ = [
    "MAX_CHECKPOINTS", "MAX_STEP", "MAX_TRAINER_STATE", "MAX_SERIES_REVISIONS", "Checkpoint",
    "Run", "step_from_name", "step_from_trainer_state", "check_step", "check_steps",
    "find_checkpoints", "checkpoints_from_files", "HubSeriesRef", "parse_hub_series",
    "HubCheckpoint", "HubSeries", "plan_hub_series",
]

#: Most checkpoints one series may hold (each costs one read and a small summary).
MAX_CHECKPOINTS = 1000
#: Most entries of a run folder listed (its checkpoints and whatever else the trainer wrote).
MAX_FOLDER_ENTRIES = 50_000
#: Largest ``trainer_state.json`` read for its ``global_step`` (long runs log a lot).
MAX_TRAINER_STATE = 64 * 2**20
#: Most JSON values in one ``trainer_state.json`` (a log entry per logging step: 100,000 steps
#: logged one by one are about 1.2 million values; more would cost over 150 MB to parse).
MAX_TRAINER_STATE_VALUES = 4_000_000
#: Largest step read: 2^53 - 1, the largest whole number JSON readers (and browsers) keep exact.
MAX_STEP = 2**53 - 1

_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
# kohya / sd-scripts save `<name>-000005.safetensors` per epoch, `<name>-step00001000` per step.
_KOHYA_FILE = re.compile(r"^.+-(?:step)?(\d{6,})\.(?:safetensors|npz)$")


# --------------------------------------------------------------------------------- a folder
@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of a run.

    Attributes
    ----------
    step : int
        Training step (``global_step``); checkpoints are ordered by it.
    path : str
        Where it came from, for display and JSON: a folder, a zip member folder, a file, or a
        Hub address with its revision.
    load : callable() -> Adapter
        Reads the adapter; called once by :func:`audit_series` (never kept).
    label : str or None
        What to call it besides its step (a Hub revision as given); None: the step.
    """

    step: int
    path: str
    load: Callable[[], Adapter] = field(repr=False, compare=False)
    label: str | None = None


@dataclass(frozen=True)
class Run:
    """The checkpoints found in a folder or an upload, and what was found but not used.

    Attributes
    ----------
    checkpoints : list of Checkpoint
        In step order.
    notes : list of str
        One sentence per thing left out or assumed (an adapter at the top level whose step is
        unknown, a ``trainer_state.json`` step that differs from the folder name, ...).
    """

    checkpoints: list[Checkpoint]
    notes: list[str] = field(default_factory=list)


def step_from_name(name: str) -> int | None:
    """The step in a checkpoint's folder or file name, or None.

    ``checkpoint-500`` (Transformers, TRL) gives 500; kohya's ``mylora-000005.safetensors``
    (epoch 5) gives 5 and ``mylora-step00001000.safetensors`` gives 1000. Other names give None.

    Raises
    ------
    AdapterError
        A step larger than :data:`MAX_STEP`.
    """
    base = PurePosixPath(str(name).replace("\\", "/")).name
    match = _CHECKPOINT_DIR.match(base) or _KOHYA_FILE.match(base)
    if not match:
        return None
    digits = match.group(1).lstrip("0") or "0"
    if len(digits) > len(str(MAX_STEP)):  # int() of a 10,000-digit name would fail or crawl
        raise AdapterError(f"{clip(base, 120)}: step {clip(digits, 40)} is larger than lorarank reads "
                           f"({MAX_STEP:,}, the largest whole number a JSON reader keeps exact)")
    return check_step(int(digits), clip(base, 120))


def step_from_trainer_state(data: bytes | memoryview, *, source: str = "trainer_state.json") -> int:
    """``global_step`` of a Transformers ``trainer_state.json``.

    Parsed by :func:`lorarank.bounded.load_json` (at most :data:`MAX_TRAINER_STATE` bytes, 64
    levels of nesting and :data:`MAX_TRAINER_STATE_VALUES` values).

    Raises
    ------
    AdapterError
        If the file is too large, too deep, not JSON, or has no whole-number ``global_step``
        from 0 to :data:`MAX_STEP`.
    """
    state = load_json(source, data, what="trainer state", max_bytes=MAX_TRAINER_STATE,
                      max_values=MAX_TRAINER_STATE_VALUES)
    step = state.get("global_step") if isinstance(state, dict) else None
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise AdapterError(f"{source} has no whole-number global_step >= 0 (got {clip(repr(step), 80)})")
    return check_step(step, source)


def check_step(step: int, where: str) -> int:
    """``step`` when it is at most :data:`MAX_STEP`; AdapterError naming ``where`` otherwise."""
    if step > MAX_STEP:
        raise AdapterError(f"{where}: step {clip(step, 40)} is larger than lorarank reads "
                           f"({MAX_STEP:,}, the largest whole number a JSON reader keeps exact)")
    return step


def _pick_weights(names: Sequence[str], where: str) -> str:
    chosen, weights = choose_weights(names)
    if chosen is not None:
        return chosen
    if not weights:
        raise AdapterError(f"{where} holds no .safetensors, .npz or .gguf weights file")
    listed = ", ".join(PurePosixPath(n).name for n in weights)
    raise AdapterError(f"{where} holds several weights files ({listed}); keep one per checkpoint")


def _resolve_step(name_step: int, state: bytes | None, where: str, notes: list[str]) -> int:
    if state is None:
        return name_step
    step = step_from_trainer_state(state, source=f"{where}/trainer_state.json")
    if step != name_step:
        notes.append(f"{where}: trainer_state.json says global_step {step}, the folder name "
                     f"{name_step}; step {step} is used.")
    return step


def _checked_run(checkpoints: list[Checkpoint], notes: list[str], source: str) -> Run:
    if not checkpoints:
        raise AdapterError(
            f"{source} holds no checkpoint: expected checkpoint-<step> folders (as Transformers "
            f"and TRL save them), each with an adapter, or kohya <name>-000005.safetensors files")
    checkpoints.sort(key=lambda c: c.step)
    check_steps(checkpoints)
    return Run(checkpoints, notes)


def _count(checkpoints: Sequence[Checkpoint]) -> None:
    if len(checkpoints) > MAX_CHECKPOINTS:
        raise ConfigError(f"a series holds at most {MAX_CHECKPOINTS} checkpoints, got more "
                          f"({len(checkpoints):,} so far)")


def check_steps(checkpoints: Sequence[Checkpoint]) -> None:
    """ConfigError unless the checkpoints are at most :data:`MAX_CHECKPOINTS`, each with a whole
    step from 0 to :data:`MAX_STEP`, no two with the same step."""
    if len(checkpoints) > MAX_CHECKPOINTS:
        raise ConfigError(f"a series holds at most {MAX_CHECKPOINTS} checkpoints, got {len(checkpoints)}")
    seen: dict[int, str] = {}
    for c in checkpoints:
        check_int(f"step of {clip(c.path, 200)}", c.step, minimum=0)
        check_step(c.step, clip(c.path, 200))
        if c.step in seen:
            raise ConfigError(f"two checkpoints have step {c.step}: {seen[c.step]} and {c.path}")
        seen[c.step] = c.path


def find_checkpoints(path: str | os.PathLike, *, alpha: float | None = None,
                     scale: float | None = None) -> Run:
    """The checkpoints of a training run's output folder.

    Parameters
    ----------
    path : str or PathLike
        A folder holding ``checkpoint-<step>`` subfolders (each a PEFT adapter, as Transformers'
        ``Trainer`` and TRL save them, optionally with ``trainer_state.json``), or kohya
        ``<name>-000005.safetensors`` / ``<name>-step00001000.safetensors`` files.
    alpha, scale : float, optional
        Passed to every checkpoint's :func:`lorarank.adapters.load_adapter` (at most one):
        alpha for every module (scale = alpha / r), or the scale itself.

    Returns
    -------
    Run
        The step is ``trainer_state.json``'s ``global_step`` when the folder has one, else the
        number in the name. Nothing is read but those small JSON files.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    AdapterError
        If it is not a folder or holds no checkpoint.
    """
    alpha, scale = check_override(alpha, scale)
    load = partial(load_adapter, alpha=alpha, scale=scale)
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(2, "No such file or directory", str(root))
    if not root.is_dir():
        raise AdapterError(f"{root} is not a folder; --series takes a run folder with checkpoint-<step> subfolders")
    checkpoints, notes = [], []
    top_weights = []
    names = []
    with os.scandir(root) as listing:  # counted before anything is sorted or read
        for item in listing:
            names.append(item.name)
            if len(names) > MAX_FOLDER_ENTRIES:
                raise AdapterError(f"{clip(str(root), 300)} holds over {MAX_FOLDER_ENTRIES:,} entries; a "
                                   f"run folder holds at most {MAX_CHECKPOINTS} checkpoints")
    for entry in (root / name for name in sorted(names)):
        step = step_from_name(entry.name)
        if entry.is_dir() and step is not None and _CHECKPOINT_DIR.match(entry.name):
            state = entry / "trainer_state.json"
            data = (read_file(state, max_bytes=MAX_TRAINER_STATE, what="trainer states")
                    if state.exists() else None)
            step = _resolve_step(step, data, entry.name, notes)
            checkpoints.append(Checkpoint(step, str(entry), partial(load, entry)))
        elif entry.is_file() and step is not None:
            checkpoints.append(Checkpoint(step, str(entry), partial(load, entry)))
        elif entry.is_file() and entry.suffix in WEIGHT_SUFFIXES:
            top_weights.append(entry.name)
        _count(checkpoints)  # refused at the 1,001st, before reading more trainer states
    if top_weights and checkpoints:
        notes.append(f"{', '.join(top_weights)} at the top of {root.name} left out: no step in its name "
                     f"(the trainer's final save is usually the last checkpoint again).")
    return _checked_run(checkpoints, notes, str(root))


# --------------------------------------------------------------------------------- uploads
def _zip_members(name: str, data: bytes | memoryview) -> list[tuple[str, Callable[[], bytes]]]:
    """The files of a zip as (path, reader), after bounding what they may inflate to.

    The archive's directory is read once (:class:`lorarank.bounded.ZipArchive`: member count,
    unique names, declared sizes at most 16 times the archive plus 64 MiB); each reader inflates
    its member by streaming, never past its declared size.
    """
    archive = ZipArchive(name, data, kind=".zip archive")
    members = []
    for member in archive.files():
        parts = PurePosixPath(member.name.replace("\\", "/")).parts
        # macOS adds __MACOSX/._name resource forks; hidden files are never checkpoints.
        if any(p.startswith(".") or p == "__MACOSX" for p in parts):
            continue
        members.append(("/".join(parts), partial(archive.read, member)))
    return members


def checkpoints_from_files(files: Mapping[str, bytes] | Iterable[tuple[str, bytes]], *,
                           alpha: float | None = None, scale: float | None = None) -> Run:
    """The checkpoints of uploaded files, read from memory (nothing is written to disk).

    Parameters
    ----------
    files : mapping or iterable of (name, bytes)
        Either one ``.zip`` of a run folder (``checkpoint-<step>/adapter_model.safetensors``,
        ``adapter_config.json`` and optionally ``trainer_state.json`` per checkpoint, at any
        depth), or weights files whose names carry the step (kohya ``<name>-000005.safetensors``),
        optionally with one ``.json`` config shared by all of them.
    alpha, scale : float, optional
        Passed to every checkpoint's :func:`lorarank.adapters.load_adapter_bytes` (at most
        one): alpha for every module (scale = alpha / r), or the scale itself.

    Returns
    -------
    Run
        Each checkpoint's files are unpacked only when it is read.
    """
    override = check_override(alpha, scale)
    items = list(files.items()) if isinstance(files, Mapping) else list(files)
    if not items:
        raise AdapterError("no files given")
    zips = [(n, b) for n, b in items if str(n).lower().endswith(".zip")]
    if zips:
        if len(items) != 1:
            raise AdapterError("give one .zip of the run folder, or the checkpoint files themselves, "
                               "not both")
        name, data = zips[0]
        return _from_members(_zip_members(name, data), name, override)
    members = [(str(n), partial(lambda b: b if isinstance(b, (bytes, memoryview)) else bytes(b), b))
               for n, b in items]
    return _from_members(members, "the uploaded files", override)


def _from_members(members: list[tuple[str, Callable[[], bytes]]], source: str,
                  override: tuple[float | None, float | None] = (None, None)) -> Run:
    by_dir: dict[str, dict[str, Callable[[], bytes]]] = {}
    for path, read in members:
        parent, _, base = path.rpartition("/")
        by_dir.setdefault(parent, {})[base] = read
    checkpoints, notes, left_out = [], [], []
    for folder, entries in sorted(by_dir.items()):
        dir_name = folder.rpartition("/")[2]
        if _CHECKPOINT_DIR.match(dir_name):
            weights = _pick_weights(list(entries), folder)
            state = entries["trainer_state.json"]() if "trainer_state.json" in entries else None
            step = _resolve_step(step_from_name(dir_name), state, folder, notes)
            chosen = [weights] + (["adapter_config.json"] if "adapter_config.json" in entries else [])
            checkpoints.append(Checkpoint(step, folder, partial(_load_members, entries, chosen, override)))
            _count(checkpoints)  # refused at the 1,001st, before inflating more trainer states
            continue
        numbered = [n for n in entries if step_from_name(n) is not None]
        configs = [n for n in entries if n.lower().endswith(".json")]
        if len(configs) > 1 and numbered:
            raise AdapterError(f"{folder or source} holds several .json configs ({', '.join(configs)}); "
                               f"give at most one for the numbered weights files")
        for n in numbered:
            where = f"{folder}/{n}" if folder else n
            checkpoints.append(Checkpoint(step_from_name(n), where,
                                          partial(_load_members, entries, [n] + configs, override)))
            _count(checkpoints)
        left_out.extend(f"{folder}/{n}" if folder else n for n in entries
                        if n.lower().endswith(WEIGHT_SUFFIXES) and n not in numbered)
    if left_out and checkpoints:
        notes.append(f"{name_list(left_out)} left out: no step in the file or folder name (the "
                     f"trainer's final save is usually the last checkpoint again).")
    return _checked_run(checkpoints, notes, source)


def _load_members(entries: Mapping[str, Callable[[], bytes]], names: Sequence[str],
                  override: tuple[float | None, float | None] = (None, None)) -> Adapter:
    alpha, scale = override
    return load_adapter_bytes([(n, entries[n]()) for n in names], alpha=alpha, scale=scale)


# ------------------------------------------------------------------------------ a Hub series
#: Most revisions one Hub series may name (each costs one API call before anything is read).
MAX_SERIES_REVISIONS = 100
_TRAINER_STATE = "trainer_state.json"


@dataclass(frozen=True)
class HubSeriesRef:
    """The checkpoints of one training run on the Hub.

    ``hf://owner/name@rev1,rev2,...[/subfolder]``: one checkpoint per revision (branch, tag or
    commit, as ``Trainer(push_to_hub=True)`` pushes a commit per save), the adapter at
    ``subfolder`` in each. ``hf://owner/name[@revision][/subfolder]`` (one revision): the
    ``checkpoint-<step>`` folders inside ``subfolder`` at that revision (as
    ``hub_strategy="all_checkpoints"`` pushes them).

    Attributes
    ----------
    repo_id : str
    revisions : tuple of (str or None)
        In the order given; ``(None,)`` is the default branch.
    subfolder : str
    """

    repo_id: str
    revisions: tuple[str | None, ...] = (None,)
    subfolder: str = ""

    def __post_init__(self) -> None:
        revisions = tuple(self.revisions)
        if not revisions:
            raise ConfigError("a Hub series names at least one revision")
        if len(revisions) > MAX_SERIES_REVISIONS:
            raise ConfigError(f"a Hub series names at most {MAX_SERIES_REVISIONS} revisions, "
                              f"got {len(revisions)}")
        refs = [hub.HubRef(self.repo_id, rev, self.subfolder) for rev in revisions]
        if len(revisions) > 1 and any(r.revision is None for r in refs):
            raise ConfigError(f"an empty revision in {self.revisions!r}; separate revisions "
                              "with single commas (hf://owner/name@rev1,rev2)")
        seen = [r.revision for r in refs]
        twice = sorted({r for r in seen if seen.count(r) > 1})
        if twice:
            raise ConfigError(f"revision {twice[0]!r} is named twice in the series")
        object.__setattr__(self, "repo_id", refs[0].repo_id)
        object.__setattr__(self, "revisions", tuple(r.revision for r in refs))
        object.__setattr__(self, "subfolder", refs[0].subfolder)

    @property
    def by_revision(self) -> bool:
        """True when each revision is one checkpoint (several revisions named)."""
        return len(self.revisions) > 1

    @property
    def uri(self) -> str:
        """``hf://owner/name[@rev1,rev2,...][/subfolder]``."""
        revs = ",".join(r for r in self.revisions if r)
        return (hub.PREFIX + self.repo_id + (f"@{revs}" if revs else "")
                + (f"/{self.subfolder}" if self.subfolder else ""))


def parse_hub_series(text: str) -> HubSeriesRef:
    """``hf://owner/name[@rev1,rev2,...][/subfolder]`` -> :class:`HubSeriesRef`.

    Each revision is checked as :func:`parse_hub_uri` checks one (a revision cannot hold a
    comma, so the list is unambiguous).
    """
    raw = str(text).strip()
    body = raw[len(hub.PREFIX):] if raw.startswith(hub.PREFIX) else raw
    owner, _, rest = body.partition("/")
    name, _, after = rest.partition("/")
    if "@" not in name:
        ref = hub.parse_hub_uri(raw)
        return HubSeriesRef(ref.repo_id, (ref.revision,), ref.subfolder)
    name, _, revs = name.partition("@")
    refs = [hub.parse_hub_uri(f"{hub.PREFIX}{owner}/{name}@{rev}" + (f"/{after}" if after else ""))
            for rev in revs.split(",")] if revs else [hub.parse_hub_uri(raw)]
    if len(refs) > 1 and any(r.revision is None for r in refs):
        raise ConfigError(f"{raw!r}: an empty revision; separate revisions with single commas "
                          "(hf://owner/name@rev1,rev2)")
    return HubSeriesRef(refs[0].repo_id, tuple(r.revision for r in refs), refs[0].subfolder)


@dataclass(frozen=True)
class HubCheckpoint:
    """One checkpoint of a Hub series, pinned to its commit.

    Attributes
    ----------
    step : int
        ``trainer_state.json``'s ``global_step``; else the number in the folder name; else (a
        series by revision without trainer states) the position in the order given, from 1.
    label : str
        The revision as given (series by revision) or the folder name.
    ref : HubRef
        The adapter: repo, commit, folder.
    size : int
        Bytes of its adapter files (as the Hub announced them).
    """

    step: int
    label: str
    ref: hub.HubRef
    size: int


@dataclass(frozen=True)
class HubSeries:
    """What :func:`plan_hub_series` found: the checkpoints, pinned, before any weights are read.

    Attributes
    ----------
    spec : HubSeriesRef
        As asked.
    commits : tuple of str
        The commit of each of ``spec.revisions`` (same order).
    checkpoints : tuple of HubCheckpoint
        In step order.
    notes : tuple of str
    total_bytes : int
        Every adapter file of the series, as announced (checked against ``max_bytes``).
    """

    spec: HubSeriesRef
    commits: tuple[str, ...]
    checkpoints: tuple[HubCheckpoint, ...]
    notes: tuple[str, ...]
    total_bytes: int

    @property
    def pinned(self) -> HubSeriesRef:
        """The same series with every revision replaced by its commit."""
        return replace(self.spec, revisions=self.commits)

    def run(self, *, token: str | None = None, settings: hub.HubSettings | None = None,
            alpha: float | None = None, scale: float | None = None) -> Run:
        """A :class:`Run` whose checkpoints download (into the bounded cache) and read their
        adapter when :func:`lorarank.series.audit_series` asks, one at a time."""
        return Run([Checkpoint(c.step, c.ref.uri, partial(_load_checkpoint, c.ref, token, settings,
                                                          alpha, scale), label=c.label)
                    for c in self.checkpoints], list(self.notes))


def _load_checkpoint(ref: hub.HubRef, token: str | None, settings: hub.HubSettings | None,
                     alpha: float | None, scale: float | None):
    adapter, _ = hub.load_hub_adapter(ref, token=token, settings=settings, alpha=alpha, scale=scale)
    return adapter


def plan_hub_series(spec: HubSeriesRef | str, *, token: str | None = None,
                    settings: hub.HubSettings | None = None,
                    progress: Callable[[int, int], None] | None = None,
                    labels: Sequence[str] | None = None) -> HubSeries:
    """List a Hub series' checkpoints, pin each to its commit and read their steps.

    One API call per revision lists the files (and resolves the revision to a commit); the
    only files downloaded are the small ``trainer_state.json`` of each checkpoint (its
    ``global_step`` orders the series). Adapter weights are not downloaded here, but their
    announced sizes, summed over the whole series, must stay within ``settings.max_bytes``.

    Parameters
    ----------
    spec : HubSeriesRef or str
        A string is parsed by :func:`parse_hub_series`.
    token, settings, progress
        As in :func:`lorarank.hub.fetch_adapter_files` (``progress`` reports revisions listed).
    labels : sequence of str, optional
        Names of the revisions of a series by revision, aligned with ``spec.revisions``
        (default: the revisions as given). A link pinned to commits keeps the names given.

    Returns
    -------
    HubSeries

    Raises
    ------
    HubError
        One sentence: as :func:`lorarank.hub.fetch_adapter_files`, or a folder without ``checkpoint-<step>``
        subfolders (for one revision), a revision without an adapter, a series over the byte
        limit.
    ConfigError
        A malformed reference, or two checkpoints with the same step.
    """
    spec = parse_hub_series(spec) if isinstance(spec, str) else spec
    settings = hub.HubSettings.from_env() if settings is None else settings
    names = [str(r) for r in spec.revisions] if labels is None else [str(x) for x in labels]
    if len(names) != len(spec.revisions):
        raise ConfigError(f"{len(names)} labels for {len(spec.revisions)} revisions")
    # 1. List every revision (resolving it to a commit) and choose each checkpoint's files.
    found = []  # (label, ref pinned, adapter paths, trainer_state path or None, name step)
    commits, sizes = [], {}
    for i, rev in enumerate(spec.revisions):
        ref = hub.HubRef(spec.repo_id, rev, spec.subfolder)
        commit, listing = hub.list_repo(ref, token=token, settings=settings)
        if progress is not None:
            progress(i + 1, len(spec.revisions))
        commits.append(commit)
        sizes.update({(commit, p): n for p, n in listing.items()})
        if spec.by_revision:
            paths = hub.choose_adapter_files(ref, listing)
            state_path = _join(spec.subfolder, _TRAINER_STATE)
            found.append((names[i], ref.with_revision(commit), paths,
                          state_path if state_path in listing else None, None))
            continue
        prefix = spec.subfolder + "/" if spec.subfolder else ""
        folders = sorted({p[len(prefix):].split("/", 1)[0] for p in listing
                          if p.startswith(prefix) and "/" in p[len(prefix):]
                          and _CHECKPOINT_DIR.fullmatch(p[len(prefix):].split("/", 1)[0])},
                         key=step_from_name)
        if not folders:
            raise HubError(f"{ref.uri} holds no checkpoint-<step> folders; for a series of "
                           f"revisions name them: hf://{spec.repo_id}@rev1,rev2,...")
        for folder in folders:
            sub = _join(spec.subfolder, folder)
            paths = hub.choose_adapter_files(hub.HubRef(spec.repo_id, rev, sub), listing)
            state_path = _join(sub, _TRAINER_STATE)
            found.append((folder, hub.HubRef(spec.repo_id, commit, sub), paths,
                          state_path if state_path in listing else None, step_from_name(folder)))
    if len(found) > MAX_CHECKPOINTS:  # before a trainer_state.json per checkpoint is downloaded
        raise ConfigError(f"{spec.uri}: a series holds at most {MAX_CHECKPOINTS} checkpoints, got "
                          f"{len(found):,}")
    # 2. The byte limit holds for the whole series, before any weights are downloaded.
    total = 0
    for _, ref, paths, state_path, _ in found:
        for p in paths + ([state_path] if state_path else []):
            size = sizes[(ref.revision, p)]
            if size is None:
                raise HubError(f"{ref.uri}: the Hub did not report the size of {p}, so the "
                               "download limit cannot be checked; not downloaded")
            if p == state_path and size > MAX_TRAINER_STATE:
                raise HubError(f"{ref.uri}: {p} is {hub.format_bytes(size)}; at most "
                               f"{hub.format_bytes(MAX_TRAINER_STATE)} are read")
            total += int(size)
    if total > settings.max_bytes:
        raise HubError(f"{spec.uri}: its {len(found)} checkpoints are {hub.format_bytes(total)} in "
                       f"all, over this server's limit of {hub.format_bytes(settings.max_bytes)} per "
                       "request (LORARANK_HF_MAX_BYTES); name fewer revisions, or run lorarank locally")
    # 3. Steps: trainer_state.json's global_step (small files, downloaded now).
    steps: list[int | None] = []
    for j, (label, ref, _, state_path, _) in enumerate(found):
        if state_path is not None:
            data = hub.download_file(ref, state_path, token=token, settings=settings)
            steps.append(step_from_trainer_state(data, source=f"{ref.uri} {_TRAINER_STATE}"))
        else:
            steps.append(None)
        if progress is not None:
            progress(j + 1, len(found))
    notes = []
    if spec.by_revision and any(s is None for s in steps):
        missing = [label for (label, *_), s in zip(found, steps) if s is None]
        notes.append(f"No {_TRAINER_STATE} in revision(s) {', '.join(missing[:5])}"
                     f"{' and more' if len(missing) > 5 else ''}: the revisions are taken in the "
                     f"order given, as steps 1 to {len(found)}.")
        steps = list(range(1, len(found) + 1))
    elif not spec.by_revision:
        for i, ((label, *_, name_step), step) in enumerate(zip(found, steps)):
            if step is None:
                steps[i] = name_step
            elif step != name_step:
                notes.append(f"{label}: {_TRAINER_STATE} says global_step {step}, the folder name "
                             f"{name_step}; step {step} is used.")
    checkpoints = sorted((HubCheckpoint(int(step), label, ref,
                                        int(sum(sizes[(ref.revision, p)] for p in paths)))
                          for (label, ref, paths, _, _), step in zip(found, steps)),
                         key=lambda c: c.step)
    for a, b in zip(checkpoints, checkpoints[1:]):
        if a.step == b.step:
            raise ConfigError(f"{a.label} and {b.label} both have step {a.step} "
                              f"({_TRAINER_STATE} global_step); a series needs one checkpoint per step")
    try:
        hub.prune_cache(settings.resolved_cache_dir(), max_bytes=settings.cache_bytes,
                        keep=tuple(commits))
    except OSError:
        pass
    return HubSeries(spec=spec, commits=tuple(commits), checkpoints=tuple(checkpoints),
                     notes=tuple(notes), total_bytes=total)


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name
