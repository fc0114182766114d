"""The Adapter audit page's pieces: URL settings, uploads, cached engine calls, tables, demo.

URL-bound widget keys are readable names (``?rule=sv_ratio&sv_ratio=10&module=...&budget=4``);
the upload itself never enters the URL. Other session-state keys of this page start with
``audit_``. Uploaded bytes are held in memory only (``st.file_uploader`` gives them, the engine
reads them with ``load_adapter_bytes``): nothing is written to disk or logged.

Caching
-------
Every engine call goes through an ``st.cache_data`` wrapper that takes an :class:`Upload`
(the files' names and bytes). Hashing 84 MB of bytes on every rerun costs about 0.15 s per
call, so an :class:`Upload` is hashed by its identity instead: the uploader's ``file_id`` (a
fresh id per uploaded file, whose content never changes) or, for bytes from elsewhere, a
BLAKE2b digest of the content. Cached values are small (spectra, ranks, errors): the factors
themselves are never cached, they are re-read from the bytes (a view, no copy) on a miss.
"""

from __future__ import annotations

import hashlib
import io
import statistics
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import streamlit as st

from lorarank.adapters import Adapter, adapter_files, load_adapter_bytes
from lorarank.adapters import families as registered_families
from lorarank.audit import AuditReport, allocate_budget, audit_adapter, budget_curve
from lorarank.base import open_base_bytes
from lorarank.documents import (MODULE_COLUMNS, audit_document, file_rank, json_text, metadata_items,
                                module_row, short_name)
from lorarank.compare import Comparison, compare_adapters
from lorarank.cost import audit_cost
from lorarank.spectrum import RANK_RULES
from lorarank.synthetic import make_demo_adapter

from . import guard
from .common import Markdown, Setting, error_line, md, md_code, md_escape, notation, progress_bar, setting_widget
from .common import table_height as common_table_height

if TYPE_CHECKING:  # pandas loads with the first table, not with the page (a cold server's first render)
    import pandas as pd

__all__ = [
    "UPLOAD_KEY", "UPLOAD_B_KEY", "DOWNLOAD_KEY", "COMPARE_DOWNLOAD_KEY",
    "RULE", "RULE_VALUES", "MAP_METRIC", "BUDGET", "RESIZE_BY", "ALPHA", "SCALE", "TOP",
    "MODULE_KEY", "COMPARE_KEY", "DEMO_KEY", "ALL_SETTINGS", "MAP_METRICS", "RULE_LABELS",
    "TYPE_COLUMNS", "TYPE_TABLE_KEY", "type_rows", "TABS_OPENED_KEY",
    "Upload", "UPLOAD_HASH", "load_upload", "open_base_weights", "Detected",
    "rule_text", "assumed_scale", "without_alpha", "module_url_error", "COMPARE_MODULE_KEY",
    "detect", "GATE_KEY", "COMPARE_GATE_KEY", "audit_gate", "guarded_compare", "run_audit", "run_budget", "zip_files",
    "run_compare", "demo_files", "demo_upload",
    "COLUMN_HELP", "module_table", "module_records", "table_height", "budget_marks", "cli_json_bytes", "detected_lines", "reading",
    "COMPARE_HELP", "compare_table", "compare_reading",
    "BASE_UPLOAD_KEY", "base_uploader", "BASE_HF_KEY", "base_hub_input", "family_notes", "show_family_details",
    "spectrum_label", "scale_override",
]

# ------------------------------------------------------------------------------ session keys
URL_ERRORS_KEY = "audit_url_errors"  # sentences about bad query parameters, across one rerun
UPLOAD_KEY = "audit_upload"
GATE_KEY = "audit_gate"  # prefix of the work-budget gate's keys (Run, Stop, approval)
COMPARE_GATE_KEY = "audit_compare_gate"  # the same for the comparison
UPLOAD_B_KEY = "audit_upload_b"
BASE_UPLOAD_KEY = "audit_upload_base"
DOWNLOAD_KEY = "audit_download"
COMPARE_DOWNLOAD_KEY = "audit_compare_download"
#: URL-bound keys drawn by the page itself (their options depend on the upload, or booleans).
MODULE_KEY = "module"
COMPARE_MODULE_KEY = "compare_module"  # the compare heatmap's module
COMPARE_KEY = "compare"
DEMO_KEY = "demo"

# ---------------------------------------------------------------------------------- settings
RULE_LABELS: dict[str, str] = {
    "energy": "energy share",
    "sv_ratio": "kohya sv_ratio",
    "sv_fro": "kohya sv_fro",
    "sv_cumulative": "kohya sv_cumulative",
    "entropy": "entropy rank",
}

RULE = Setting(
    "rule", "rank rule", "energy",
    "How each module's recommended rank is chosen. " + " ".join(
        f"{RULE_LABELS[k]} ({k}): {v}." for k, v in RANK_RULES.items()),
    kind="choice", options=tuple(RANK_RULES), select=True)

#: The value widget of each rule (entropy has none); its key is the rule's name.
RULE_VALUES: dict[str, Setting] = {
    "energy": Setting("energy", "energy share t", 0.99,
                      "Keep the smallest k with Σ_{i≤k} σᵢ² ≥ t·Σσ².",
                      kind="float", min_value=0.001, max_value=1.0, step=0.01, format="%.4f"),
    "sv_ratio": Setting("sv_ratio", "ratio R", 10.0,
                        "kohya sv_ratio: keep every σᵢ > σ₁ / R.",
                        kind="float", min_value=1.0, max_value=1e6, step=1.0, format="%.3f"),
    "sv_fro": Setting("sv_fro", "Frobenius share t", 0.9,
                      "kohya sv_fro: keep the smallest k whose Frobenius norm share reaches t "
                      "(energy share t^2).",
                      kind="float", min_value=0.001, max_value=1.0, step=0.01, format="%.4f"),
    "sv_cumulative": Setting("sv_cumulative", "L1 share t", 0.9,
                             "kohya sv_cumulative: keep the smallest k with "
                             "Σ_{i≤k} σᵢ ≥ t·Σσ.",
                             kind="float", min_value=0.001, max_value=1.0, step=0.01, format="%.4f"),
}

#: Rank-map metrics: table column -> label.
MAP_METRICS: dict[str, str] = {
    "recommended_rank": "recommended rank",
    "energy_rank_0.99": "energy rank k(0.99)",
    "energy_rank_0.95": "energy rank k(0.95)",
    "energy_rank_0.9": "energy rank k(0.9)",
    "stable_rank": "stable rank",
    "entropy_rank": "entropy rank",
    "truncation_error": "truncation error",
}
MAP_METRIC = Setting("map", "rank map shows", "recommended_rank",
                     "The per-module number the rank map colours (definitions under the table).",
                     kind="choice", options=tuple(MAP_METRICS), select=True,
                     labels=tuple(MAP_METRICS.items()))
BUDGET = Setting("budget", "global budget: mean rank per module", 4,
                 "A budget of (this x number of modules) directions for the whole adapter, "
                 "spent on the directions with the largest σ² first, wherever they are. "
                 "By Eckart-Young no allocation of that many directions keeps more energy.",
                 min_value=0, max_value=4096)
RESIZE_BY = Setting("resize_by", "resize by", "rule",
                    "rule: every module to its recommended rank. budget: the global budget's "
                    "allocation (largest σ² first across modules).",
                    kind="choice", options=("rule", "budget"))
ALPHA = Setting("alpha", "alpha", None,
                "The file has no alpha for some modules, so scale 1 was assumed there. Set the "
                "lora_alpha you trained with: scale = alpha / r for every module.",
                kind="float", min_value=1e-6, max_value=1e6, step=1.0, format="%.6g",
                placeholder="scale 1 assumed")
SCALE = Setting("scale", "scale", None,
                "The mlx-lm adapter has no adapter_config.json with lora_parameters.scale, so "
                "scale 1 was assumed. Set the scale you trained with.",
                kind="float", min_value=1e-6, max_value=1e6, step=1.0, format="%.6g",
                placeholder="scale 1 assumed")
TOP = Setting("top", "top directions k", 4,
              "The summary overlap is phi(k, k) with k = min(this, r_A, r_B).",
              min_value=1, max_value=4096)

#: Every URL-bound setting built from :class:`Setting` (checked against the URL first).
ALL_SETTINGS: tuple[Setting, ...] = (RULE, *RULE_VALUES.values(), MAP_METRIC, BUDGET, RESIZE_BY,
                                     ALPHA, SCALE, TOP)

def rule_text(rule: str, value: float | None) -> str:
    """``"energy share 0.99"``, ``"kohya sv_ratio 10"``, ``"entropy rank"``."""
    if rule == "entropy" or value is None:
        return RULE_LABELS.get(rule, rule)
    return f"{RULE_LABELS.get(rule, rule)} {value:g}"


# ------------------------------------------------------------------------------------ uploads
@dataclass(frozen=True)
class Upload:
    """The files of one upload: ``(name, bytes)`` pairs and an identity used as cache key.

    Build it with :meth:`from_uploaded` (``st.file_uploader``'s files) or :meth:`from_files`.
    The bytes never leave memory and never enter a URL or a log.
    """

    files: tuple[tuple[str, bytes], ...]
    ident: str
    label: str = ""

    @classmethod
    def from_uploaded(cls, uploaded: Sequence[Any] | None) -> "Upload | None":
        """From the uploader's ``UploadedFile`` list (None or empty: None)."""
        if not uploaded:
            return None
        files = tuple((f.name, f.getvalue()) for f in uploaded)
        ident = "|".join(f"{f.file_id}:{f.name}:{f.size}" for f in uploaded)
        return cls(files, "upload:" + ident, " + ".join(f.name for f in uploaded))

    @classmethod
    def from_files(cls, files: Mapping[str, bytes] | Iterable[tuple[str, bytes]], *,
                   label: str = "") -> "Upload":
        """From names and bytes; the identity is a BLAKE2b digest of names and contents."""
        items = tuple(files.items()) if isinstance(files, Mapping) else tuple(files)
        digest = hashlib.blake2b(digest_size=16)
        for name, data in items:
            digest.update(name.encode() + b"\0" + len(data).to_bytes(8, "little"))
            digest.update(data)
        return cls(items, "digest:" + digest.hexdigest(), label or " + ".join(n for n, _ in items))

    @property
    def size(self) -> int:
        """Total bytes."""
        return sum(len(b) for _, b in self.files)


#: ``st.cache_data`` hash functions: an :class:`Upload` is hashed by its identity.
UPLOAD_HASH = {Upload: lambda u: u.ident}


def load_upload(upload: Upload, alpha: float | None = None, scale: float | None = None) -> Adapter:
    """The upload read as an :class:`~lorarank.adapters.Adapter` (in memory, with the scale override)."""
    return load_adapter_bytes(list(upload.files), alpha=alpha, scale=scale)


def assumed_scale(adapter: Adapter) -> str | None:
    """Which override the user should be offered: ``"alpha"``, ``"scale"`` (mlx-lm) or None.

    PEFT without ``adapter_config.json``, kohya / diffusers / npz modules without an alpha
    entry, and mlx-lm without ``lora_parameters.scale`` all run with an assumed scale of 1.
    """
    if adapter.format == "mlx":
        params = (adapter.config or {}).get("lora_parameters")
        return None if isinstance(params, dict) and "scale" in params else "scale"
    if adapter.format == "peft":
        return "alpha" if adapter.config is None else None
    # A module whose scale 1 is the library's rule (a LyCORIS LoKr with both halves full) has
    # nothing assumed, as the scaling line says.
    return "alpha" if any(m.alpha is None and not m.unit_scale_by_design
                          for m in adapter.modules) else None


def without_alpha(adapter: Adapter) -> int:
    """How many modules run with an assumed scale of 1 for want of an alpha (all of them for a
    PEFT adapter without its config; mlx-lm's scale is one number: 0)."""
    if adapter.format == "mlx":
        return 0
    if adapter.format == "peft":
        return len(adapter.modules) if adapter.config is None else 0
    return sum(1 for m in adapter.modules if m.alpha is None and not m.unit_scale_by_design)


@dataclass(frozen=True)
class Detected:
    """What was detected in an upload as stored (no alpha override)."""

    describe: dict
    assumed: str | None
    names: tuple[str, ...]
    size: int
    shapes: tuple[tuple[int, int, int], ...] = ()  # (d_out, d_in, r) per module
    without_alpha: int = 0  # modules with s = 1 assumed for want of an alpha


@st.cache_data(show_spinner=False, max_entries=16, hash_funcs=UPLOAD_HASH)
def detect(upload: Upload) -> Detected:
    """Read the upload as stored: format, orientation, scaling, dtypes, modules, parameters."""
    with guard.heavy_work("reading the upload"):
        adapter = load_upload(upload)
    return Detected(describe=adapter.describe(), assumed=assumed_scale(adapter),
                    names=tuple(m.name for m in adapter.modules), size=upload.size,
                    shapes=tuple((*m.shape, m.rank) for m in adapter.modules),
                    without_alpha=without_alpha(adapter))


def audit_gate(upload: Upload, detected: Detected) -> Callable[[], None] | None:
    """Whether the page's work on ``upload`` may run within the server's work budget.

    Estimated from the detected module shapes (:func:`lorarank.cost.audit_cost`, once for the
    audit and once for the resize preview): short work runs, long work waits for Run, past the
    server's cap one sentence (:func:`ui.guard.gate`).

    Returns
    -------
    callable or None
        None: do not run (the gate drew why). Otherwise ``finish``, for the page to call when
        its work on the upload is done: long work draws a Stop button here (pressing it
        interrupts the audit, the budget or the resize preview at the next module and shows
        Run again), and ``finish`` removes it.
    """
    seconds = 2 * audit_cost(detected.shapes).seconds if detected.shapes else 0.0
    ident = ("audit", upload.ident)
    if not guard.gate(seconds, key=GATE_KEY, what=f"audit of {len(detected.shapes):,} modules",
                      ident=ident, kept=False,
                      hint="Audit a smaller adapter, or run `python -m lorarank audit` on your "
                           "own machine."):
        return None
    if seconds <= guard.ASK_SECONDS:
        return lambda: None
    return guard.stop_button(GATE_KEY, ident, kept="nothing of it is kept")


def guarded_compare(upload_a: Upload, upload_b: Upload, *, top: int) -> Comparison | None:
    """:func:`run_compare` within the server's work budget, with Stop when long; None when it
    does not run (the gate drew why)."""
    shapes = detect(upload_a).shapes + detect(upload_b).shapes
    return guard.guarded_run(
        audit_cost(shapes).seconds, key=COMPARE_GATE_KEY,
        what=f"comparison of {len(shapes):,} modules", ident=("compare", upload_a.ident,
                                                              upload_b.ident, top),
        hint="Compare smaller adapters, or run `python -m lorarank compare` on your own machine.",
        run=lambda: run_compare(upload_a, upload_b, top=top), kept=False)


def open_base_weights(adapter: Adapter, *, base: Upload | None, base_hub: str | None) -> Any:
    """The base weights for ``adapter``'s modules: an uploaded ``.safetensors`` (or its shards),
    or a pinned ``hf://owner/name@commit`` read by byte ranges; None without either."""
    if base is not None:
        return open_base_bytes(list(base.files))
    if base_hub:
        from .hub_models import base_weights

        return base_weights(base_hub, [m.name for m in adapter.modules])
    return None


@st.cache_data(show_spinner=False, max_entries=32, hash_funcs=UPLOAD_HASH)
def run_audit(upload: Upload, *, alpha: float | None, scale: float | None, rule: str,
              value: float, base: Upload | None = None, base_hub: str | None = None) -> AuditReport:
    """Every module's spectrum and metrics (progress bar per module on a cache miss).

    With ``base`` (the base model's weights, uploaded) or ``base_hub`` (a pinned
    ``hf://owner/name@commit``, read by byte ranges: only the adapted modules' weights), every
    module also gets ``||dW||_F / ||W0||_F`` and DoRA modules the exact spectrum of ``merged - W0``.
    """
    with guard.heavy_work("the audit"):
        adapter = load_upload(upload, alpha, scale)
        weights = open_base_weights(adapter, base=base, base_hub=base_hub)
        with progress_bar(f"Auditing {len(adapter.modules):,} modules (factored SVDs)") as progress:
            report = audit_adapter(adapter, rule=rule, value=value, progress=progress,
                                   base=weights)
    guard.mark_done(("audit", upload.ident))
    return report


@st.cache_data(show_spinner=False, max_entries=32, hash_funcs=UPLOAD_HASH)
def run_budget(upload: Upload, *, alpha: float | None, scale: float | None, rule: str,
               value: float, mean_rank: int) -> tuple[dict, dict]:
    """``(budget curve, allocation of mean_rank x modules directions)`` as JSON-friendly dicts."""
    # the same arguments as the page's own call (no base): a cache hit, not a second audit
    report = run_audit(upload, alpha=alpha, scale=scale, rule=rule, value=value, base=None, base_hub=None)
    curve = budget_curve(report)
    allocation = allocate_budget(report, rank_budget=int(mean_rank) * len(report.modules))
    return curve, allocation.to_dict()


def zip_files(files: Mapping[str, bytes], *, folder: str = "") -> bytes:
    """A zip of ``files`` (inside ``folder/`` when given), deflated."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(f"{folder}/{name}" if folder else name, data)
    return buf.getvalue()


@st.cache_data(show_spinner=False, max_entries=16, hash_funcs=UPLOAD_HASH)
def run_compare(upload_a: Upload, upload_b: Upload, *, top: int) -> Comparison:
    """Subspace similarity of the two adapters' A factors on their shared modules.

    phi uses the right singular vectors of A only, so no scale or alpha is involved.
    """
    with guard.heavy_work("the comparison"):
        a, b = load_upload(upload_a), load_upload(upload_b)
        with progress_bar("Comparing shared modules") as progress:
            comparison = compare_adapters(a, b, top=top, progress=progress)
    guard.mark_done(("compare", upload_a.ident, upload_b.ident, top))
    return comparison


def module_url_error(options: Sequence[str]) -> Markdown | None:
    """One sentence when the URL's ``module`` is not a module of the upload (checked first)."""
    if MODULE_KEY not in st.query_params:
        return None
    raw = st.query_params[MODULE_KEY]
    if raw in options:
        return None
    return md("The link sets {param!c}, but this adapter has no such module; the first module, "
              "{first!c}, is shown instead.", param=f"module={raw}", first=options[0])


# --------------------------------------------------------------------------------------- demo
@st.cache_data(show_spinner=False, max_entries=4)
def demo_files(variant: str = "a") -> dict[str, bytes]:
    """The synthetic demo adapter (:func:`lorarank.synthetic.make_demo_adapter`) as PEFT files,
    written by the engine's own PEFT writer and read back like any upload."""
    return adapter_files(make_demo_adapter(variant), format="peft")


def demo_upload(variant: str = "a") -> Upload:
    """The synthetic demo as an :class:`Upload` (as if its two files were uploaded)."""
    files = demo_files(variant)
    return Upload.from_files(files, label=f"synthetic demo {variant.upper()} (r = "
                                          f"{16 if variant == 'a' else 8})")


# ------------------------------------------------------------------------------------- tables
#: The module table's columns and their definitions (every per-module column but sigma_1, which
#: the table lists among the top singular values).
#: The answer sits next to the module: a phone shows both without scrolling sideways.
_FIRST_COLUMNS = ("module", "recommended rank", "update rank", "r")
COLUMN_HELP: dict[str, str] = {
    **{k: MODULE_COLUMNS[k] for k in _FIRST_COLUMNS},
    **{k: v for k, v in MODULE_COLUMNS.items() if k not in _FIRST_COLUMNS and k != "sigma_1"}}


def module_table(report: AuditReport, *, top: int = 4) -> pd.DataFrame:
    """The table shown on the page: one row per module, numbers as numbers."""
    import pandas as pd
    rows = [module_row(m, top=top) for m in report.modules]
    frame = pd.DataFrame(rows, columns=list(COLUMN_HELP))
    if frame["|dW|/|W0|"].isna().all():
        frame = frame.drop(columns="|dW|/|W0|")
    return frame


#: Session-state key: the page's tabs opened so far (:func:`ui.layout.opened`).
TABS_OPENED_KEY = "audit_tabs_opened"

#: The per-module-type summary above the full table (:func:`type_rows`): column -> definition.
TYPE_COLUMNS: dict[str, str] = {
    "module type": "the module's name without its layer (q_proj, down_proj, ...)",
    "modules": "how many modules of this type the adapter has",
    "r": "the stored rank, as in the table below (lowest..highest over the modules)",
    "recommended rank": "what the chosen rule keeps, lowest..highest over the modules (median)",
    "stable rank": "Σσ² / σ₁², lowest..highest over the modules",
    "truncation error": "√(Σ_{i>k} σᵢ² / Σσ²) at the recommended rank k, the largest over the modules",
}
#: The container of the summary (a page's first result: ``benchmarks/bench_app.py`` finds its table).
TYPE_TABLE_KEY = "audit_summary"


def _range_text(values: Sequence[float | None], *, fmt: str = "{:g}", median: bool = False) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    if lo == hi:
        return lo
    text = f"{lo}..{hi}"
    if median:
        text += f" (median {statistics.median(values):g})"
    return text


def type_rows(report: AuditReport) -> list[dict[str, Any]]:
    """One row per module type (:data:`TYPE_COLUMNS`, cells as text), in the order the types
    first appear: the page's first table, read at a glance above the full per-module grid."""
    groups: dict[str, list[Any]] = {}
    for m in report.modules:
        groups.setdefault(m.module_type or short_name(m.name), []).append(m)
    rows = []
    for kind, modules in groups.items():
        rows.append({
            "module type": kind,
            "modules": len(modules),
            "r": _range_text([file_rank(m.family, m.rank, m.stored_rank) for m in modules]),
            "recommended rank": _range_text([m.recommended_rank for m in modules], median=True),
            "stable rank": _range_text([m.stable_rank for m in modules], fmt="{:.3g}"),
            "truncation error": f"{max(m.truncation_error for m in modules):.3g}",
        })
    return rows


def table_height(rows: int, *, max_rows: int = 16) -> int:
    """Pixel height of a data frame showing ``min(rows, max_rows)`` rows without scrolling."""
    return common_table_height(rows, max_rows=max_rows)


def budget_marks(report: AuditReport, allocation: Mapping[str, Any], *, budget: int) -> list[dict]:
    """The points marked on the budget curve: the chosen budget, the rule, the stored adapter."""
    from lorarank.charts.report import budget_marks as _budget_marks
    return _budget_marks(report, allocation, budget=budget,
                         rule_text=rule_text(report.rule, report.value))


def module_records(report: AuditReport) -> pd.DataFrame:
    """The CSV download: the engine's flat rows plus every singular value (space-separated)."""
    import pandas as pd
    frame = pd.DataFrame(report.table())
    frame["singular_values"] = [" ".join(f"{x:.9g}" for x in m.singular_values)
                                for m in report.modules]
    if "layer" in frame:
        frame["layer"] = frame["layer"].astype("Int64")
    return frame


def cli_json_bytes(report: AuditReport) -> bytes:
    """The JSON download: exactly the bytes ``python -m lorarank audit PATH --json`` prints."""
    return json_text(audit_document([report])).encode("utf-8")


def detected_lines(detected: Detected, report: AuditReport) -> list[tuple[str, Markdown]]:
    """``(label, text)`` pairs of what was detected, for the page's summary box (the texts are
    markdown: file names and the file's own strings escaped)."""
    d = detected.describe
    scales = sorted({round(m.scale, 6) for m in report.modules})
    scale_txt = ", ".join(f"{s:g}" for s in scales[:6]) + (", ..." if len(scales) > 6 else "")
    families = report.summary.get("families") or d.get("families") or ["lora"]
    lines = [
        ("format", md("{} ({})", d["format"], d["source"])),  # source: file names
        ("family", md_escape(", ".join(families))),
        ("spectrum of", md_escape(spectrum_label(report))),
        ("orientation", md_escape(d["orientation"])),
        ("scaling", md("{}; s = {}", report.scaling, scale_txt)),
        ("dtype", md_escape(", ".join(d["dtypes"]))),
        ("modules", md("{n:,} (ranks {ranks})", n=d["modules"], ranks=", ".join(map(str, d["ranks"])))),
        ("parameters", md("{n:,} in the factors", n=d["params"])),
        ("other tensors", md("{n:,} kept as they are (not LoRA factors, not audited)", n=d["ignored_tensors"])),
    ]
    if d.get("name"):
        lines.insert(1, ("named adapter", md_escape(d["name"])))
    kept = [m for m in report.modules if m.kept_rank is not None]
    if kept:
        lines.append(("AdaLoRA kept rank", md("{}{} (nonzero E entries per module)",
                                              ", ".join(str(m.kept_rank) for m in kept[:12]),
                                              ", ..." if len(kept) > 12 else "")))
    mags = [m.magnitude for m in report.modules if m.magnitude]
    if mags:
        lines.append(("DoRA magnitude m", md("{low:.4g} .. {high:.4g} over {n} modules",
                                             low=min(x["min"] for x in mags),
                                             high=max(x["max"] for x in mags), n=len(mags))))
    if report.summary.get("base"):
        lines.append(("base weights", md_escape(report.summary["base"])))
    return lines


#: What the file's r means for a family whose update can have another rank (the reading says it),
#: as each family registered it (:attr:`lorarank.adapters.Family.rank_note`).
FAMILY_RANKS: dict[str, str] = {name: f.rank_note for name, f in registered_families().items() if f.rank_note}


def _span(lo: float, hi: float) -> Markdown:
    return md("**{:g}**", lo) if lo == hi else md("**{:g}** to **{:g}**", lo, hi)


def reading(report: AuditReport) -> Markdown:
    """One plain-words sentence read off the summary (markdown).

    For LoHa, LoKr, AdaLoRA and LoCon Tucker it says what the file's r means and what rank the
    updates have, so "need rank 9 to 15" beside "r = 3" is not read as a contradiction, and
    when the LoRA form of the recommended ranks is larger than the file, it says so plainly.
    The parameter counts are the resize's own (:func:`lorarank.resize.resize_plan`).
    """
    s = report.summary
    recs = s.get("recommended_rank") or {}
    if not recs:
        return Markdown("The adapter has no modules.")
    if s.get("spectrum_is_update") is False:  # a PiSSA / OLoRA file read without its base
        return Markdown("**This file alone does not hold the adapter's update:** its init was cut out of the "
                        "base weights, so ranks read off its B@A would be wrong (the note below says why). "
                        "Upload the original base weights to audit the exact update.")
    files = sorted({file_rank(m.family, m.rank, m.stored_rank) for m in report.modules})
    stored = md("r = {}", files[0]) if len(files) == 1 else md("r = {}..{}", files[0], files[-1])
    share = s["params_after"] / s["params"] if s["params"] else 1.0
    rule = rule_text(report.rule, report.value)
    families = [f for f in dict.fromkeys(m.family for m in report.modules) if f in FAMILY_RANKS]
    # DoRA without its base: the spectra (and so the energy kept) are the directional part's
    whose = ("the directional part's" if any("directional part" in m.spectrum_of for m in report.modules)
             else "the update's")
    resize = md("resizing every module to its recommended rank keeps **{kept:.2f} %** of {whose} "
                "energy (Σσ²) with **{share:.1f} %** of the parameters ({before:,} -> {after:,})",
                kept=100 * s["retained_energy"], whose=Markdown(whose), share=100 * share, before=s["params"],
                after=s["params_after"])
    if not families:
        need = (md("**{}** each, against the stored {}", recs["min"], stored) if recs["min"] == recs["max"]
                else md("**{}** to **{}** (median {:g}) of the stored {}", recs["min"], recs["max"],
                        recs["median"], stored))  # not "8 to 8 (median 8)"
        uniform = (Markdown("") if report.format != "mlx" or recs["min"] == recs["max"] else
                   md(" An mlx-lm adapter holds one rank for every module, so a resize keeps {} in each.",
                      recs["max"]))
        return md("Under **{rule}** the modules need rank {need}: {resize}.{uniform}", rule=rule, need=need,
                  resize=resize, uniform=uniform)
    updates = [m.update_rank for m in report.modules if m.update_rank is not None]
    need = _span(recs["min"], recs["max"])
    if recs["min"] != recs["max"]:
        need = md("{} (median {:g})", need, recs["median"])
    ranks = md("; their updates have rank {}", _span(min(updates), max(updates))) if updates else Markdown("")
    text = md("Under **{rule}** the modules' updates need rank {need}{ranks}, against the file's {stored}: "
              "{why}.", rule=rule, need=need, ranks=ranks, stored=stored,
              why="; ".join(FAMILY_RANKS[f] for f in families))
    if share <= 1:
        return md("{} Written as plain LoRA factors, {}.", text, resize)
    return md("{text} Written as plain LoRA factors B·A of those ranks it would take **{after:,}** "
              "parameters, **{ratio:.1f}x** the file's {before:,}: the file's own factors are the more "
              "compact form, so a resize to these ranks would not shrink it.",
              text=text, after=s["params_after"], ratio=share, before=s["params"])


def spectrum_label(report: AuditReport) -> str:
    """What the reported singular values are of, over all modules (plain text, the pages'
    notation: the JSON field says ``update s*B@A``, the page ``update s·B·A``)."""
    return notation("; ".join(dict.fromkeys(m.spectrum_of for m in report.modules))) or "-"


def family_notes(report: AuditReport) -> list[str]:
    """Sentences a reader must not miss (zero, collapsed, DoRA without base), plain text in
    the pages' notation."""
    return [notation(w) for w in report.summary.get("warnings", [])]


def scale_override(detected: Detected) -> tuple[float | None, float | None]:
    """The alpha (or mlx-lm scale) input when the file has none, under a message that says
    what is in use: "s = 1 assumed" until the user sets a value, then the value set.

    Returns ``(alpha, scale)``; both None when the file states its scale.
    """
    if detected.assumed not in ("alpha", "scale"):
        return None, None
    message = st.empty()  # above the input, written once its value is known
    setting = ALPHA if detected.assumed == "alpha" else SCALE
    value = setting_widget(setting, st.columns(4)[0])
    if detected.assumed == "alpha":
        modules, missing = len(detected.names), detected.without_alpha
        if detected.describe.get("format") == "peft":
            which, there = "No adapter_config.json, so no alpha for any module", "for every module"
        elif missing >= modules:
            which, there = "No module of the file has an alpha", "for every module"
        else:
            which, there = (f"No alpha for {missing:,} of the {modules:,} modules",
                            "for that one" if missing == 1 else f"for those {missing:,}")
        if value is None:
            message.warning(md("{}: **scale s = 1 assumed** {}. Set the alpha you trained with to "
                               "get the real update s·B·A.", which, there),
                            icon=":material/warning:")
        else:
            message.info(md("{}: using **alpha = {:g}** as set below {} (s = alpha / r, see the "
                            "scaling line). Clear the input to go back to s = 1.", which, value, there),
                         icon=":material/tune:")
        return value, None
    if value is None:
        message.warning("No `lora_parameters.scale` found: **scale s = 1 assumed**. Set the "
                        "scale you trained with.", icon=":material/warning:")
    else:
        message.info(f"No `lora_parameters.scale` in the file: using **scale s = {value:g}** as "
                     f"set below. Clear the input to go back to s = 1.", icon=":material/tune:")
    return None, value


def base_uploader(container: Any = None) -> Upload | None:
    """The optional base-weights upload (``.safetensors``: a file or its shards)."""
    where = container if container is not None else st
    files = where.file_uploader(
        "Base model weights (optional)", type=["safetensors"], accept_multiple_files=True,
        key=BASE_UPLOAD_KEY,
        help="The base model's .safetensors (or its shards). Only the adapted modules' weights "
             "are used: DoRA's exact update merged - W0 and every module's ||dW||_F / ||W0||_F. "
             "Read in memory only.")
    return Upload.from_uploaded(files)


#: The base model on the Hub, in the link (``?base_hf=owner/name[@revision]``, pinned once read).
BASE_HF_KEY = "base_hf"


def _use_named_base(named: str) -> None:
    st.session_state[BASE_HF_KEY] = named.removeprefix("hf://")


def base_hub_input(detected: Detected, container: Any = None, notices: Any = None) -> str | None:
    """The base model on the Hub (read by byte ranges), with a button for the repo the adapter's
    config names (``base_model_name_or_path``); returns ``hf://owner/name@commit`` or None.

    The link's ``base_hf`` is pinned to the commit once read. An error is one sentence in
    ``notices``.
    """
    from lorarank.errors import LoraRankError
    from lorarank.hub_ranges import base_from_config

    where = container if container is not None else st
    try:
        named = base_from_config(detected.describe.get("metadata") or {})
    except LoraRankError:
        named = None
    with where:
        cols = st.columns([3, 2], vertical_alignment="bottom")
        text = cols[0].text_input(
            "…or the base model on the Hub", key=BASE_HF_KEY, bind="query-params", max_chars=300,
            placeholder=(named or "hf://owner/name").removeprefix("hf://") + "[@revision]",
            help="Read by byte ranges: the safetensors headers, then only the adapted modules' "
                 "weights, never the whole model, within this server's download limit.")
        if named and (text or "").strip() != named.removeprefix("hf://"):
            cols[1].button(f"Use the base the adapter names: {named.removeprefix('hf://')}",
                           key="audit_base_hf_named", on_click=_use_named_base, args=(named,))
    text = (text or "").strip()
    if not text:
        return None
    from .hub_models import pin

    try:
        uri = pin(text)
    except LoraRankError as exc:
        (notices if notices is not None else st).error(error_line(exc), icon=":material/error:")
        return None
    return uri


def show_family_details(report: AuditReport) -> None:
    """Family warnings, what the spectra are of, and the file's own training metadata."""
    for note in family_notes(report):
        st.warning(md_escape(note), icon=":material/warning:")
    meta = metadata_items(report.detected.get("metadata") or {}, limit=400)
    if meta:
        # st.json, not a data frame or markdown: the values come from the file and render as text,
        # and the page's first data frame stays the per-module table (no pandas before the first table)
        with st.expander(f"What the file says about its training ({len(meta)} entries, as stated, not checked)"):
            st.json(dict(meta), expanded=True)


COMPARE_HELP: dict[str, str] = {
    "module": COLUMN_HELP["module"],
    # the answer next to the module: a phone shows these two without scrolling sideways
    "phi(k, k)": "phi(i, j) = ||U_i^T V_j||_F^2 / min(i, j) on the right singular vectors of "
                 "the two A factors (Hu et al. 2022, section 7.2), at i = j = k: 1 = the "
                 "same k directions, 0 = orthogonal.",
    "k": "k = min(top directions, r_A, r_B).",
    "phi(1, 1)": "Overlap of the single top direction of A's row space with B's: "
                 "|u_1^T v_1|^2.",
    "r_A": "Rank of the module in adapter A.",
    "r_B": "Rank of the module in adapter B.",
    "chance": "What two random k-dimensional subspaces of R^d_in give on average: k / d_in.",
    "smallest angle (deg)": "The smallest principal angle between the two row spaces.",
}


def compare_table(comparison: Comparison) -> pd.DataFrame:
    """One row per shared module."""
    import pandas as pd
    rows = [{"module": short_name(r["name"]), "r_A": r["rank_a"], "r_B": r["rank_b"],
             "phi(1, 1)": r["phi_1_1"], "k": r["top"], "phi(k, k)": r["top_overlap"],
             "chance": r["chance"], "smallest angle (deg)": r["smallest_angle_deg"]}
            for r in comparison.table()]
    return pd.DataFrame(rows, columns=list(COMPARE_HELP))


def compare_reading(comparison: Comparison) -> Markdown:
    """One plain-words sentence on how much the top directions overlap."""
    s = comparison.summary
    t, chance = s["top_overlap"], s["chance_mean"]
    verdict = ("they learned largely the same input directions" if t["mean"] >= 0.7 else
               "they share some input directions" if t["mean"] >= max(0.2, 3 * chance) else
               "their top directions are about as related as random subspaces")
    extra = ""
    if comparison.only_a or comparison.only_b or comparison.mismatched:
        extra = (f" {len(comparison.only_a)} modules are only in A, {len(comparison.only_b)} only in B"
                 f" and {len(comparison.mismatched)} differ in input size (not compared).")
    if comparison.undefined:
        extra += (f" {len(comparison.undefined)} shared modules are exactly zero in A or B: a zero update has "
                  "no directions, so phi is undefined there (not compared).")
    return md("Over {n} shared modules the top-direction overlap phi(k, k) is **{mean:.3f}** on average "
              "(min {low:.3f}, max {high:.3f}) against a chance level of {chance:.3f}: {verdict}.{extra}",
              n=s["shared_modules"], mean=t["mean"], low=t["min"], high=t["max"], chance=chance,
              verdict=verdict, extra=extra)

