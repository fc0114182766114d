"""The Adapter audit page's Resize tab: what a resize keeps, and a download only of a file that
its library loads and that is smaller than the input (issue 22).

The preview is the engine's resize (:func:`lorarank.resize.resize_adapter`) without its factors:
ranks, errors, parameters (the plan's one count, the same the audit's reading states), notes,
the format it writes and, when it cannot write one, why. No download button is drawn for a
resize that changes nothing, that cannot be written (DoRA in a kohya file, resized factors past
the float16 input's range, arrays a .npz cannot keep, ...) or whose plain LoRA form is larger
than the input (LoKr, LoHa): one sentence says why instead. Whether it can be written is the
writer's dry run, made by the resize itself (:attr:`lorarank.resize.ResizeResult.unwritable`),
so a button is drawn only for a file the writer writes: Streamlit 1.67 shows a deferred
download's failure only as "Failed to generate file for download" (streamlit#13466).
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import TYPE_CHECKING

import streamlit as st

from lorarank.adapters import adapter_files
from lorarank.audit import AuditReport
from lorarank.documents import file_rank
from lorarank.resize import ModuleSize, resize_adapter, resize_plan, resized_spectrum
from lorarank.spectrum import numerical_rank

from . import guard
from .audit import (COLUMN_HELP, UPLOAD_HASH, Upload, load_upload, open_base_weights, rule_text,
                    short_name, zip_files)
from .common import Markdown, md, md_text, notation, progress_bar

if TYPE_CHECKING:  # pandas loads with the first table, not with the page (a cold server's first render)
    import pandas as pd

__all__ = ["RESIZE_DOWNLOAD_KEY", "RESIZE_HELP", "FORMAT_TEXT", "ResizeTarget", "ResizePreview",
           "run_resize", "resized_files", "resize_table", "nothing_to_resize",
           "no_download", "section"]

RESIZE_DOWNLOAD_KEY = "audit_resize_download"

#: What each written format is, for the caption under the preview.
FORMAT_TEXT: dict[str, str] = {
    "peft": "a PEFT folder (adapter_model.safetensors + adapter_config.json with rank_pattern and "
            "alpha_pattern)",
    "kohya": "one kohya .safetensors with an alpha per module (the file's training metadata kept, "
             "ss_network_dim / ss_network_alpha updated as kohya's resize_lora.py does)",
    "mlx": "an mlx-lm adapter folder (adapters.safetensors + adapter_config.json; one rank for every "
           "module, as mlx-lm requires)",
    "npz": "lorarank's simple .npz (<module>.A, .B and .alpha per module)",
}


# ---------------------------------------------------------------------------------- engine
@dataclass(frozen=True)
class ResizeTarget:
    """What a resize aims at: the rule's per-module rank, or a global rank budget."""

    by: str = "rule"
    rule: str = "energy"
    value: float = 0.99
    rank_budget: int = 0

    def kwargs(self) -> dict:
        """Keyword arguments of :func:`lorarank.resize.resize_adapter`."""
        if self.by == "budget":
            return {"rank_budget": int(self.rank_budget)}
        return {"rule": self.rule, "value": self.value}

    def describe(self) -> str:
        """``"rule energy share 0.99"`` or ``"global budget of 56 directions"``."""
        if self.by == "budget":
            return f"global budget of {self.rank_budget:,} directions"
        return f"rule {rule_text(self.rule, self.value)}"


@dataclass(frozen=True)
class ResizePreview:
    """What a resize does, without the factors (small, cacheable).

    ``summary`` is :meth:`lorarank.resize.ResizeResult.to_dict`: ranks, errors, parameters per
    module and in all, notes, ``write_format``, ``unwritable``, ``shrinks``, ``dropped``.
    """

    names: tuple[str, ...]
    old_ranks: tuple[int, ...]
    summary: dict

    @property
    def write_format(self) -> str:
        return self.summary["write_format"]


@st.cache_data(show_spinner=False, max_entries=32, hash_funcs=UPLOAD_HASH)
def run_resize(upload: Upload, *, alpha: float | None, scale: float | None,
               target: ResizeTarget, base: Upload | None = None, base_hub: str | None = None) -> ResizePreview:
    """Resize with the engine and keep its numbers: ranks, errors, parameters, energy (and, for
    DoRA with base weights, how far each merged weight moves)."""
    with guard.heavy_work("the resize preview"):
        adapter = load_upload(upload, alpha, scale)
        weights = open_base_weights(adapter, base=base, base_hub=base_hub) if "dora" in adapter.families else None
        with progress_bar("Resizing (best rank-k approximation per module)") as progress:
            result = resize_adapter(adapter, progress=progress, base=weights, **target.kwargs())
    return ResizePreview(names=tuple(m.name for m in adapter.modules),
                         old_ranks=tuple(file_rank(m.family, m.rank, m.stored_rank) for m in adapter.modules),
                         summary=result.to_dict())


def resized_files(upload: Upload, *, alpha: float | None, scale: float | None,
                  target: ResizeTarget) -> dict[str, bytes]:
    """The resized adapter's files in the input's family (PEFT, kohya, mlx-lm or npz), as bytes.

    Not cached (the bytes can be as large as the upload): the page calls it only when a
    download button is clicked.
    """
    with guard.QUEUE.slot():  # called by a download button, outside the script run: no notice
        adapter = load_upload(upload, alpha, scale)
        result = resize_adapter(adapter, **target.kwargs())
        return adapter_files(result.adapter, format=result.write_format)


# ----------------------------------------------------------------------------------- tables
RESIZE_HELP: dict[str, str] = {
    "module": COLUMN_HELP["module"],
    "new r": "Rank after the resize: the directions kept (0: left out, its update being exactly zero or "
             "given no direction by the budget). A module whose target is at or above its update's rank "
             "is written as it was.",
    "truncation error": "||dW_k - dW||_F / ||dW||_F of this module after the resize (0 when unchanged).",
    "update rank": "The rank of the module's update itself (its singular values above σ₁·max(d_out, d_in)·ε): "
                   "a resize keeps at most this many directions.",
    "r": "The rank the file stores (LoHa: each Hadamard half's rank, the update's rank up to r²; LoKr: the "
         "factorised half's, the update's rank up to rank(W1)·r).",
    "parameters now": "Numbers the file stores for this module now (DoRA: with its magnitude vector).",
    "merged-weight change": "DoRA with base weights: ||W'_k − W'||_F / ||W' − W0||_F, how far the merged "
                            "weight moves when the library renormalises the rows of W0 + s·B_k·A_k with the "
                            "same magnitudes m (only with base weights uploaded).",
    "parameters after": "Numbers the resized file stores for it: new r x (d_out + d_in), plus d_out for a "
                        "DoRA magnitude vector; as now when unchanged; 0 when left out. The same count as "
                        "the reading above the tabs.",
}


def resize_table(preview: ResizePreview, report: AuditReport) -> pd.DataFrame:
    """Per-module ranks and parameters before and after, and the truncation error."""
    import pandas as pd
    s = preview.summary
    by_name = {m.name: m for m in report.modules}
    rows = []
    for n, r in zip(preview.names, preview.old_ranks):
        m = by_name.get(n)
        rows.append({"module": short_name(n), "new r": s["ranks"][n], "truncation error": s["errors"][n],
                     "update rank": None if m is None else numerical_rank(resized_spectrum(m), shape=m.shape),
                     "r": r,
                     "merged-weight change": (s.get("merged_changes") or {}).get(n),
                     "parameters now": None if m is None else m.params, "parameters after": s["params"][n]})
    frame = pd.DataFrame(rows, columns=list(RESIZE_HELP))
    if not s.get("merged_changes"):
        frame = frame.drop(columns="merged-weight change")
    return frame


def nothing_to_resize(report: AuditReport, target: ResizeTarget) -> Markdown:
    """Markdown: the resize changes nothing, and which settings would change something
    (energy shares below the current one, with what they keep; a global budget), counted with
    the same plan as the resize itself."""
    sizes = [ModuleSize.of_report(m) for m in report.modules]
    stored = sum(m.params for m in report.modules)
    options = []
    current = target.value if target.by == "rule" and target.rule == "energy" else 1.0
    for share in ("0.95", "0.9"):
        if float(share) >= current:
            continue
        plan = resize_plan(report.format, sizes, [int(m.energy_rank[share]) for m in report.modules])
        params = sum(plan.params)
        if params < stored:
            kept = [k for k in plan.kept if k]
            span = str(min(kept)) if min(kept) == max(kept) else f"{min(kept)}..{max(kept)}"
            options.append(md("energy share {} keeps {} directions per module ({:.1f} % of the "
                              "parameters)", share, span, 100 * params / stored))
    top = max(m.rank for m in report.modules)
    options.append(md("resize by the global budget with a mean rank below {} (set it in the Budget "
                      "tab)", top))
    return md("**Nothing to resize:** under {} every module keeps its stored rank, so the resized "
              "adapter would be the one you have; there is no file to download. What would shrink "
              "it: {}.", target.describe(), Markdown("; ").join(options))


def no_download(preview: ResizePreview) -> Markdown | None:
    """Markdown: why the resized adapter is not offered for download, or None when it is."""
    s = preview.summary
    if s["unwritable"]:
        return md("**No download:** {}.", notation(s["unwritable"]))
    if not s["shrinks"]:
        before, after = s["params_before"], s["params_after"]
        return md("**No download: the LoRA form is larger.** Written as plain LoRA factors B·A, this "
                  "adapter would hold {after:,} parameters against the file's {before:,} ({ratio:.1f}x): "
                  "its own factors store the update more compactly than any B·A of the rank it needs. "
                  "`python -m lorarank resize` still writes that LoRA form, for loaders that read only LoRA.",
                  after=after, before=before, ratio=after / before)
    return None


# ------------------------------------------------------------------------------------ page
def _downloads(upload: Upload, preview: ResizePreview, *, alpha: float | None, scale: float | None,
               target: ResizeTarget) -> None:
    def deferred(name: str):
        return lambda: resized_files(upload, alpha=alpha, scale=scale, target=target)[name]

    fmt = preview.write_format
    stem = next((n for n, _ in upload.files if not n.lower().endswith(".json")), "adapter")
    stem = stem.rsplit(".", 1)[0] or "adapter"
    if fmt in ("peft", "mlx"):
        files = (["adapter_model.safetensors", "adapter_config.json"] if fmt == "peft"
                 else ["adapters.safetensors", "adapter_config.json"])
        row = st.container(horizontal=True)
        row.download_button(
            "Download resized adapter (.zip)", key=f"{RESIZE_DOWNLOAD_KEY}_zip",
            data=lambda: zip_files(resized_files(upload, alpha=alpha, scale=scale, target=target),
                                   folder="resized_adapter"),
            file_name="lorarank-resized-adapter.zip", mime="application/zip", on_click="ignore",
            icon=":material/download:",
            help=f"{' + '.join(files)} in a folder {'PEFT' if fmt == 'peft' else 'mlx-lm'} loads.")
        row.download_button(files[0], data=deferred(files[0]), file_name=files[0],
                            mime="application/octet-stream", key=f"{RESIZE_DOWNLOAD_KEY}_weights",
                            on_click="ignore", icon=":material/download:")
        row.download_button(files[1], data=deferred(files[1]), file_name=files[1], mime="application/json",
                            key=f"{RESIZE_DOWNLOAD_KEY}_config", on_click="ignore", icon=":material/download:")
    else:
        inner = "adapter.safetensors" if fmt == "kohya" else "adapter.npz"
        suffix = inner.rsplit(".", 1)[1]
        st.download_button(f"Download resized adapter (.{suffix})", data=deferred(inner),
                           file_name=f"{stem}-resized.{suffix}", mime="application/octet-stream",
                           key=f"{RESIZE_DOWNLOAD_KEY}_file", on_click="ignore", icon=":material/download:")


def section(upload: Upload, report: AuditReport, target: ResizeTarget, *, alpha: float | None,
            scale: float | None, base: Upload | None = None, base_hub: str | None = None) -> ResizePreview:
    """Draw the Resize tab's results (its widgets are the page's): the figures, what the resize
    keeps, the download or why there is none, the per-module table."""
    preview = run_resize(upload, alpha=alpha, scale=scale, target=target, base=base, base_hub=base_hub)
    s = preview.summary
    if not s["changed"]:  # no "0.0 %" and no download of the very same adapter
        st.info(nothing_to_resize(report, target), icon=":material/info:")
    else:
        before, after = s["params_before"], s["params_after"]
        # a row that wraps (two by two on a phone) rather than four columns stacked one per line
        m1 = m2 = m3 = m4 = st.container(horizontal=True, gap="medium")
        m1.metric("parameters before", f"{before:,}", help=RESIZE_HELP["parameters now"], width="content")
        m2.metric("parameters after", f"{after:,}", help=RESIZE_HELP["parameters after"], width="content",
                  delta=f"{100 * (after / before - 1):+.1f} %" if before else None, delta_color="off")
        m3.metric("retained energy", f"{100 * s['retained_energy']:.2f} %", width="content",
                  help="Σ of the kept σ² over Σσ², over the whole adapter.")
        m4.metric("largest truncation error", f"{s['max_error']:.3g}", width="content",
                  help="max over modules of ||dW_k − dW||_F / ||dW||_F.")
        why = no_download(preview)
        if why is None:
            _downloads(upload, preview, alpha=alpha, scale=scale, target=target)
        else:
            st.warning(why, icon=":material/block:")
        st.caption(md("Resize by {target}: each module becomes the best rank-k approximation of its update "
                      "s·B·A (B_k = U_k·sqrt(S_k), A_k = sqrt(S_k)·V_kᵀ, scale folded in, alpha = k); a module "
                      "already at or below k is left as it is, one whose update is exactly zero is left out. "
                      "Written as {fmt}.", target=target.describe(), fmt=FORMAT_TEXT[preview.write_format]))
        for note in s.get("notes", []):
            if why is not None and "does not shrink the file" in note:
                continue  # the sentence above says it
            st.info(md_text(notation(note)), icon=":material/info:")
    with st.expander("Per-module ranks, parameters and truncation errors"):
        st.dataframe(resize_table(preview, report), hide_index=True, key="audit_resize_table",
                     column_config={
                         **{n: st.column_config.Column(n, help=t) for n, t in RESIZE_HELP.items()},
                         "module": st.column_config.Column("module", help=RESIZE_HELP["module"], pinned=True),
                         **{n: st.column_config.NumberColumn(n, help=RESIZE_HELP[n], format="%.4g")
                            for n in ("truncation error", "merged-weight change")}})
    return preview
