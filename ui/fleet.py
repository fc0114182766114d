"""The Fleet page's pieces: URL settings, members from uploads and Hub text, cached rows, the
guarded run, tables and downloads.

The link carries the Hub sources (``?q=hf://my-org/*``), the cap (``?cap=16``), the planner's
``keep`` / ``share`` and ``screen``; uploaded files never enter it. Rows are computed one
adapter at a time in this server process, inside one of the server's heavy-work slots
(:func:`ui.guard.heavy_work`), each cached by the adapter's identity (``st.cache_data``), so
Stop keeps the adapters already done and a rerun continues from there. Shared-server limits:
at most :data:`MAX_ADAPTERS` adapters and :data:`MAX_FLEET_BYTES` of adapter files per run,
the work budget of :mod:`ui.guard` (estimated from the headers before anything is audited); a
dropped zip unpacks to at most ``server.maxUploadSize`` (its members are held in memory), a link
asks for at most :data:`MAX_HUB_QUERIES` Hub listings.
Hub listings and downloads read the Hub as the Adapter audit page does (:class:`HubAccess`):
the token from the server's secrets (never from the link; cached results are keyed by a salted
fingerprint of it, not by the token) and :func:`ui.hub.hub_settings`' timeouts and byte cap.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
import zipfile
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import streamlit as st

from lorarank.cost import audit_cost
from lorarank.errors import ConfigError
from lorarank.fleet import (COLUMN_HELP, FleetOptions, Member, cap_files, expand_sources, fleet_csv,
                            fleet_document, fleet_report, flat_row, is_hub_query, load_member,
                            members_from_uploads, slug)
from lorarank.fleet.rows import audit_member

from lorarank.documents import format_seconds, split_list
from lorarank.hub import HubSettings

from . import guard
from .common import Setting
from .hub import hub_settings, hub_token

__all__ = ["SETTINGS", "Q", "KEEP", "SHARE", "SCREEN", "CAP_KEY", "UPLOAD_KEY", "MAX_ADAPTERS",
           "MAX_FLEET_BYTES", "Fleet", "members", "screen_rows", "estimate", "run_rows", "done_rows",
           "table", "COLUMN_CONFIG_HELP", "document_bytes", "csv_bytes", "report_bytes", "zip_bytes",
           "hub_sources", "GATE_KEY"]

URL_ERRORS_KEY = "fleet_url_errors"
UPLOAD_KEY = "fleet_upload"
GATE_KEY = "fleet_gate"
CAP_KEY = "cap"   # the cap slider (URL-bound, drawn by the page)
DOWNLOAD_KEY = "fleet_download"


def _env_int(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


#: Adapters one run of the page may hold, and bytes of adapter files (uploads or Hub).
MAX_ADAPTERS = _env_int("LORARANK_FLEET_MAX_ADAPTERS", 200)
#: Hub queries (listing calls) one link may ask for: a link is not a crawler.
MAX_HUB_QUERIES = 10
MAX_FLEET_BYTES = _env_int("LORARANK_FLEET_MAX_BYTES", 2_000_000_000)

Q = Setting("q", "Hub adapters or a query", "",
            "Comma-separated: hf://owner/name (one adapter), hf://owner/* (every adapter repo of a "
            "user or organisation), or hf://?base_model=owner/name (adapters of a base model; also "
            "author=, search=, limit=). Kept in the link.", kind="text",
            placeholder="hf://my-org/*  or  hf://?base_model=meta-llama/Meta-Llama-3-8B")
KEEP = Setting("keep", "energy to keep", 0.99,
               "The planner's smallest cap keeps at least this share of each adapter's energy "
               "Σσ² ...", kind="float", min_value=0.5, max_value=1.0, step=0.005, format="%.3f")
SHARE = Setting("share", "share of the fleet", 0.9,
                "... for at least this share of the adapters.", kind="float", min_value=0.05,
                max_value=1.0, step=0.05, format="%.2f")
SCREEN = Setting("screen", "read", "audit",
                 "audit: spectra, recommended ranks and the energy at every cap. headers: ranks, "
                 "shapes and dtypes from the safetensors headers only (much faster; no energy).",
                 kind="choice", options=("audit", "headers"))
SETTINGS: tuple[Setting, ...] = (Q, KEEP, SHARE, SCREEN)


@dataclass(frozen=True)
class Fleet:
    """The members of this run and their identities (the cache keys of their rows)."""

    members: tuple[Member, ...]
    idents: tuple[str, ...]
    notes: tuple[str, ...]
    access: HubAccess | None = None

    @property
    def ident(self) -> str:
        """The fleet's identity for the work budget: its members and, when it reads the Hub, how
        (the token's id and the limits: the rows' cache key), so a fleet audited with one token
        is not taken as done, and let past the budget, for another."""
        parts = list(self.idents) + ([repr(self.access.key)] if self.access is not None else [])
        return hashlib.blake2b("|".join(parts).encode(), digest_size=12).hexdigest()


def hub_sources(text: str) -> list[str]:
    """The Hub entries of the ``q`` field: ``hf://...`` as written, ``owner/name`` as ``hf://owner/name``."""
    out = []
    for part in split_list(text.replace("\n", ",")):
        out.append(part if part.startswith("hf://") else f"hf://{part}")
    return out


#: Salt of :func:`_token_id` (per process: the fingerprint means nothing outside it).
_TOKEN_SALT = os.urandom(16)


def _token_id(token: str | None) -> str:
    """Which token the server reads the Hub with, as a salted fingerprint: a cache key that
    separates rows read with and without a token (or with a new one) and cannot give it back."""
    if not token:
        return ""
    return hashlib.blake2b(token.encode(), key=_TOKEN_SALT, digest_size=12).hexdigest()


@dataclass(frozen=True)
class HubAccess:
    """How this server reads the Hub: the secrets' token (never the link's) and the app's limits
    (:func:`ui.hub.hub_settings`: timeouts, the per-request byte cap at most an upload's)."""

    token: str | None = field(repr=False)
    settings: HubSettings

    @classmethod
    def of_app(cls) -> "HubAccess":
        return cls(hub_token(), hub_settings())

    @property
    def key(self) -> tuple[str, str]:
        """What the cached results depend on, without the token itself."""
        return _token_id(self.token), repr(self.settings)


@st.cache_data(show_spinner=False, ttl=600, max_entries=64)
def _expand_hub(sources: tuple[str, ...], access_key: tuple[str, str], _access: HubAccess
                ) -> tuple[tuple[Member, ...], tuple[str, ...]]:
    expansion = expand_sources(list(sources), token=_access.token, settings=_access.settings,
                               max_members=MAX_ADAPTERS)
    return expansion.members, expansion.notes


#: URL-bound key of the switch that adds the real example adapters (``?examples=true``).
EXAMPLES_KEY = "examples"


def example_sources() -> list[str]:
    """The real example adapters shipped in ``examples/`` (one of every family), as fleet
    sources: a PEFT / mlx folder, or the weights file itself."""
    from .examples import EXAMPLES, FOLDER

    out = []
    for ex in EXAMPLES:
        first = FOLDER / ex.files[0]
        out.append(str(first.parent if len(ex.files) > 1 else first))
    return out


def members(uploaded: Sequence[Any] | None, text: str, *, examples: bool = False) -> Fleet | None:
    """The fleet of uploads, the real examples (``examples``) and Hub text (None when all are
    empty).

    Raises
    ------
    ConfigError
        A bad Hub text, an unreadable zip, more than :data:`MAX_ADAPTERS` adapters.
    """
    found: list[Member] = []
    idents: list[str] = []
    notes: list[str] = []
    if uploaded:
        files = [(f.name, f.getvalue()) for f in uploaded]
        # A zip's members are held in memory: at most what one upload could hold, unpacked.
        expansion = members_from_uploads(files, max_zip_bytes=int(st.get_option("server.maxUploadSize")) * 2**20)
        upload_id = "|".join(f"{f.file_id}:{f.name}:{f.size}" for f in uploaded)
        found.extend(expansion.members)
        idents.extend(f"upload:{upload_id}:{m.source}" for m in expansion.members)
        notes.extend(expansion.notes)
    if examples:   # named as in the repository (rows never show the server's own paths)
        from .examples import FOLDER

        shipped = [replace(m, source="examples/" + os.path.relpath(m.path or m.source, FOLDER))
                   for m in expand_sources(example_sources()).members]
        found.extend(shipped)
        idents.extend(f"example:{m.source}" for m in shipped)
    sources = hub_sources(text)
    queries = sum(1 for src in sources if is_hub_query(src))
    if queries > MAX_HUB_QUERIES:   # each is a listing call: refused before the first
        raise ConfigError(f"the link names {queries:,} Hub queries; this shared server lists at most "
                          f"{MAX_HUB_QUERIES} per run; run lorarank fleet locally for more")
    access = HubAccess.of_app() if sources else None
    if access is not None:
        try:
            hub_members, hub_notes = _expand_hub(tuple(sources), access.key, access)
        except ConfigError as exc:
            if not str(exc).startswith("the fleet holds more than"):
                raise
            raise ConfigError(f"the fleet holds more than {MAX_ADAPTERS:,} adapters; this shared server audits "
                              f"at most {MAX_ADAPTERS:,} per run (LORARANK_FLEET_MAX_ADAPTERS); run lorarank "
                              "fleet locally for more") from None
        found.extend(hub_members)
        idents.extend(f"hub:{m.hub}" for m in hub_members)
        notes.extend(hub_notes)
    if not found:
        return None
    if len(found) > MAX_ADAPTERS:
        raise ConfigError(f"the fleet holds {len(found):,} adapters; this shared server audits at most "
                          f"{MAX_ADAPTERS:,} per run (LORARANK_FLEET_MAX_ADAPTERS); run lorarank fleet "
                          "locally for more")
    return Fleet(tuple(found), tuple(idents), tuple(notes), access)


def options(screen: str) -> FleetOptions:
    return FleetOptions(screen=screen == "headers")


@st.cache_data(show_spinner=False, max_entries=4096, ttl=3600)
def _cached_row(ident: str, _member: Member, options: FleetOptions, access_key: tuple[str, str] | None,
                _access: HubAccess | None) -> dict:
    """One adapter's row, cached by its identity and, for the Hub, how it was read (the member
    and the token are not hashed)."""
    if _access is None or not _member.hub:
        return audit_member(_member, options)
    return audit_member(_member, options, token=_access.token, settings=_access.settings)


def _row(fleet: Fleet, ident: str, member: Member, options: FleetOptions) -> dict:
    access = fleet.access if member.hub else None
    return _cached_row(ident, member, options, None if access is None else access.key, access)


def screen_rows(fleet: Fleet) -> list[dict]:
    """Header rows of every member (cheap): sizes and shapes for the estimate."""
    return [_row(fleet, ident, m, FleetOptions(screen=True)) for ident, m in zip(fleet.idents, fleet.members)]


def estimate(fleet: Fleet, screened: list[dict], opts: FleetOptions) -> tuple[float, int]:
    """``(seconds, bytes)`` of auditing the fleet, from the headers (audit_cost of the shapes
    plus reading the bytes at ~200 MB/s); 0 seconds for screening."""
    size = sum(r.get("bytes") or 0 for r in screened)
    if opts.screen:
        return 0.0, size
    seconds = 0.0
    for r in screened:
        n, rank = r.get("modules") or 0, r.get("max_rank") or 1
        if r.get("ok") and n:
            per = max(1, (r.get("params") or 0) // max(n * rank, 1))
            seconds += audit_cost([(per // 2, per - per // 2, rank)] * n).seconds
        seconds += (r.get("bytes") or 0) / 2e8
    return seconds, size


def _row_ident(fleet: Fleet, ident: str, opts: FleetOptions) -> tuple:
    """What the server remembers as done for one row: its identity, the options and, for a Hub
    adapter, how it was read (the row cache's key, so a row done with one token is not taken
    as done for a session with another, which would then compute it outside the work slot)."""
    access = fleet.access.key if fleet.access is not None and ident.startswith("hub:") else None
    return ("fleet_row", ident, opts.key(), access)


def done_rows(fleet: Fleet, opts: FleetOptions) -> list[dict] | None:
    """Rows already computed on this server (after a Stop), or None when none are."""
    done = [guard.is_done(_row_ident(fleet, i, opts)) for i in fleet.idents]
    if not any(done):
        return None
    return [_row(fleet, i, m, opts) for i, m, d in zip(fleet.idents, fleet.members, done) if d]


def run_rows(fleet: Fleet, opts: FleetOptions) -> list[dict]:
    """Every row, one adapter at a time in a heavy-work slot, with count, rate and time left."""
    todo = [not guard.is_done(_row_ident(fleet, i, opts)) for i in fleet.idents]
    if not any(todo):
        return [_row(fleet, i, m, opts) for i, m in zip(fleet.idents, fleet.members)]
    rows = []
    with guard.heavy_work("the fleet audit"):
        bar = st.progress(0.0, text="Auditing the fleet")
        start = time.perf_counter()
        audited = 0
        total = len(fleet.members)
        try:
            for k, (ident, member) in enumerate(zip(fleet.idents, fleet.members)):
                guard.check_alive()
                rows.append(_row(fleet, ident, member, opts))
                guard.mark_done(_row_ident(fleet, ident, opts))
                audited += todo[k]
                elapsed = time.perf_counter() - start
                left = sum(todo[k + 1:])
                rate = audited / elapsed if elapsed > 0 and audited else 0.0
                eta = f", {format_seconds(left / rate)} left" if rate and left else ""
                bar.progress((k + 1) / total, text=f"Auditing the fleet: {k + 1:,} of {total:,} adapters"
                             + (f", {rate:.3g}/s" if rate else "") + eta)
        finally:
            bar.empty()
    return rows


# --------------------------------------------------------------------------------- tables
COLUMN_CONFIG_HELP = {**COLUMN_HELP}


def table(rows: Sequence[dict], caps: Sequence[int], cap: int):
    """The page's table: one row per adapter, the energy kept at ``cap`` beside the usual caps."""
    import pandas as pd

    from lorarank.fleet import energy_at

    records = []
    for r in rows:
        flat = flat_row(r, caps)
        flat[f"energy at {cap}"] = energy_at(r, cap) if r.get("ok") and not r.get("screened") else None
        flat["fits cap"] = None if not r.get("ok") else bool((r.get("max_rank") or 0) <= cap)
        records.append(flat)
    frame = pd.DataFrame(records)
    first = ["source", "ok", "fits cap", "max_rank", "rec_median", "rec_max", f"energy at {cap}"]
    rest = [c for c in frame.columns if c not in first and c != "revision"]
    return frame[[c for c in first if c in frame.columns] + rest]


def document_bytes(rows: Sequence[dict], plan, opts: FleetOptions, notes: Sequence[str]) -> bytes:
    """The download: exactly ``lorarank fleet --json``'s document for these rows."""
    return (json.dumps(fleet_document(list(rows), plan, options=opts, notes=notes), allow_nan=False)
            + "\n").encode()


def csv_bytes(rows: Sequence[dict], opts: FleetOptions) -> bytes:
    return fleet_csv(rows, opts.caps).encode()


def report_bytes(rows: Sequence[dict], plan, opts: FleetOptions, notes: Sequence[str]) -> bytes:
    """The HTML report of what the page shows (the plan at the page's cap, its charts)."""
    doc = fleet_document(list(rows), plan, options=opts, notes=notes)
    return fleet_report(doc).encode()


def zip_bytes(fleet: Fleet, rows: Sequence[dict], *, cap: int, pad_to: int | None) -> bytes:
    """A zip with one folder per adapter: shrunk to ``cap`` and padded to ``pad_to``
    (:func:`lorarank.fleet.cap_files`), built when the download is clicked."""
    buf = io.BytesIO()
    used: set[str] = set()
    lines = []
    with guard.heavy_work("the resized adapters"), zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, row in zip(fleet.members, rows):
            name = slug(member.source)
            while name in used:
                name += "_"
            used.add(name)
            if not row.get("ok"):
                lines.append(f"{member.source}: not written ({row.get('error')})")
                continue
            try:
                access = fleet.access if member.hub else None
                adapter = (load_member(member) if access is None else
                           load_member(member, token=access.token, settings=access.settings))
                files, summary = cap_files(adapter, cap=cap, pad_to=pad_to)
            except Exception as exc:  # noqa: BLE001 - one adapter's failure is a line of the README
                lines.append(f"{member.source}: not written ({' '.join(str(exc).split())[:300]})")
                continue
            for fname, data in files.items():
                archive.writestr(f"{name}/{fname}", data)
            lines.append(f"{member.source}: {name}/ (energy kept {100 * summary['retained_energy']:.2f} %"
                         + (f", padded to {pad_to}" if pad_to else "") + ")")
        archive.writestr("README.txt", "\n".join([f"lorarank fleet: copies at cap {cap}"
                                                  + (f", padded to rank {pad_to}" if pad_to else ""), "",
                                                  *lines]) + "\n")
    return buf.getvalue()


def fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} bytes"


def cap_range(rows: Sequence[dict]) -> int:
    """The cap slider's top: the fleet's largest rank, at least 256, a power of two."""
    top = max([256, *((r.get("max_rank") or 0) for r in rows if r.get("ok"))])
    return int(2 ** math.ceil(math.log2(top)))
