"""Documents: what the CLI prints, the pages download and the report embeds, built one way.

One home for the pieces every output shares:

- JSON: :func:`json_clean` (what JSON can hold: non-finite numbers become null, other objects
  strings), :func:`json_text` (the exact bytes ``--json`` prints, which the pages' JSON downloads
  reuse) and :func:`json_bytes` (an indented download); :func:`audit_document`, the
  ``audit --json`` document of one or several audits.
- CSV: :func:`csv_text`, the only CSV writer (every CSV download goes through it); text that
  a spreadsheet would run as a formula is neutralised there (:func:`csv_safe_cell`).
- Rows: :func:`module_row`, one row per audited module (the page's table, the HTML report's
  table and the CLI's text table read it), with :data:`MODULE_COLUMNS` defining each column, and
  :func:`short_name`, a module's name for display.
- Lists typed by people: :func:`split_list` and :func:`parse_numbers` (``"2, 4,16"``).
- Durations in progress lines and estimates: :func:`format_seconds` (``"about 3 min"``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Iterable, Mapping, Sequence

from .errors import ConfigError

__all__ = ["json_clean", "json_text", "json_bytes", "audit_document", "csv_text", "csv_safe_cell",
           "FORMULA_STARTS", "short_name",
           "MODULE_COLUMNS", "module_row", "file_rank", "metadata_items", "split_list", "parse_numbers", "name_list",
           "format_seconds", "PEFT_PREFIX"]


# ------------------------------------------------------------------------------------- JSON
def json_clean(value: Any) -> Any:
    """``value`` as strict JSON can hold it, recursively.

    Mappings get string keys, tuples become lists, non-finite floats become None (JSON has no
    NaN or infinity), strings, whole numbers, booleans and None stay, and any other object
    becomes its ``str``.
    """
    if isinstance(value, Mapping):
        return {str(k): json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_clean(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def json_text(doc: Any) -> str:
    """The exact text ``--json`` prints: one line of strict JSON and a newline (the pages' JSON
    downloads of the same documents use it too, so a download and the CLI's output are the
    same bytes). Raises ValueError on NaN or infinity: clean with :func:`json_clean` first."""
    return json.dumps(doc, allow_nan=False) + "\n"


def json_bytes(doc: Any, *, indent: int = 2) -> bytes:
    """Strict JSON (no NaN/inf), indented, UTF-8: a table's JSON download."""
    return json.dumps(doc, indent=indent, allow_nan=False).encode("utf-8")


def audit_document(reports: Sequence[Any]) -> dict:
    """The ``audit --json`` document of one or several :class:`~lorarank.audit.AuditReport`:
    the report's own document for one, ``{"adapters": [...]}`` for several."""
    docs = [r.to_dict() for r in reports]
    return docs[0] if len(docs) == 1 else {"adapters": docs}


# -------------------------------------------------------------------------------------- CSV
def csv_text(rows: Iterable[Mapping[str, Any] | Sequence[Any]], *,
             columns: Sequence[str]) -> str:
    """CSV with a header row: ``columns``, then one line per row.

    Parameters
    ----------
    rows : iterable of mappings or sequences
        A mapping is read by column name (a missing key is an empty cell); a sequence gives the
        cells in ``columns`` order.
    columns : sequence of str

    Returns
    -------
    str
        Comma-separated, ``\\n`` line ends, fields quoted only when they need it; None and NaN
        are empty cells, numbers are written as Python writes them (``repr`` of a float). The
        same bytes pandas' ``DataFrame.to_csv(index=False)`` writes for such a table, except
        that a text cell a spreadsheet would run as a formula is neutralised
        (:func:`csv_safe_cell`).
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([csv_safe_cell(c) for c in columns])
    for row in rows:
        cells = [row.get(c) for c in columns] if isinstance(row, Mapping) else list(row)
        writer.writerow(["" if _is_missing(v) else csv_safe_cell(v) for v in cells])
    return out.getvalue()


#: What starts a formula in Excel, LibreOffice and Google Sheets (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")


def csv_safe_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: a string starting with ``=``, ``+``, ``-``,
    ``@``, a tab or a line break (a module name such as ``=HYPERLINK(...)`` in an uploaded
    file) gets a leading ``'``, as OWASP advises, so it is never run as a formula; numbers
    (``-0.5``) and other strings are unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# ------------------------------------------------------------------------------------- rows
#: PEFT's wrapper prefix on every module name (``base_model.model.``), dropped for display.
PEFT_PREFIX = "base_model.model."


def short_name(name: str) -> str:
    """A module name for display and URLs: PEFT's ``base_model.model.`` prefix dropped, and
    ``"(unnamed)"`` for the one nameless pair of a simple ``.npz`` (``A`` / ``B``)."""
    return name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else (name or "(unnamed)")


#: The per-module table's columns, each with its definition (tooltips, report header help).
MODULE_COLUMNS: dict[str, str] = {
    "module": "Module path without the factor suffix (and without PEFT's base_model.model.).",
    "shape": "d_out x d_in of the update dW = s·B·A.",
    "r": "The rank the file stores. LoRA, DoRA, AdaLoRA, LoCon: the width of B and A (r x d_in, d_out x r), "
         "the update's rank at most; LoHa: each Hadamard half's rank (the update has rank up to r²); LoKr: the "
         "rank of the factorised half W2 (the update kron(W1, W2) has rank rank(W1)·rank(W2)).",
    "update rank": "The rank of the update itself: its singular values above σ₁·max(d_out, d_in)·ε. The "
                   "recommended rank is at most this; for LoHa and LoKr it can exceed the file's r.",
    "recommended rank": "The rank the chosen rule keeps.",
    "truncation error": "Relative Frobenius error of keeping only the recommended k directions: "
                        "√(Σ_{i>k} σᵢ² / Σσ²) (Eckart-Young: no rank-k "
                        "matrix does better).",
    "k(0.9)": "Energy rank: smallest k with Σ_{i≤k} σᵢ² ≥ 0.9·Σσ².",
    "k(0.95)": "Energy rank: smallest k with Σ_{i≤k} σᵢ² ≥ 0.95·Σσ².",
    "k(0.99)": "Energy rank: smallest k with Σ_{i≤k} σᵢ² ≥ 0.99·Σσ².",
    "stable rank": "Σσ² / σ₁²: how many directions of full strength the energy "
                   "would fill.",
    "entropy rank": "Entropy effective rank (Roy and Vetterli 2007): exp(−Σ p log p), "
                    "pᵢ = σᵢ / Σσ.",
    "top singular values": "Largest singular values σᵢ of the update (DoRA without base weights: "
                           "of its directional part s·B·A; see 'spectrum of' above), descending, "
                           "from the factors (QR of B and A^T, SVD of the r x r core), never the dense dW.",
    "family": "lora, dora, adalora, loha, lokr or locon-tucker: how the file builds the update.",
    "flags": "zero: the update is exactly zero (never trained, or scale 0); collapsed: "
             "σ₂ ≤ 10⁻⁶·σ₁, a single direction.",
    "|dW|/|W0|": "||dW||_F / ||W0||_F: the update's size relative to the base weight "
                 "(only with base weights uploaded).",
    "alpha": "lora_alpha / alpha as stored or configured; empty when the file has none.",
    "scale s": "The multiplier of B·A the format applies (PEFT alpha/r, rsLoRA alpha/sqrt(r), "
               "kohya alpha/r, mlx-lm scale; 1 when assumed).",
    "sigma_1": "Largest singular value σ₁ of the update (see 'top singular values').",
}


def _field(module: Any, name: str) -> Any:
    return module.get(name) if isinstance(module, Mapping) else getattr(module, name, None)


def file_rank(family: str | None, rank: int | None, stored_rank: int | None) -> int | None:
    """The r a file states for a module, as its family registered it
    (:attr:`lorarank.adapters.Family.file_rank`): its stored rank (a LoHa half's rank, whose
    exact factors are r² wide; a PiSSA / OLoRA module's own r when its exact update, rank 2r,
    is audited), else the width of its factors (LoKr: the factorised half's rank)."""
    from .adapters import family as family_info

    by_stored = family is not None and family_info(family).file_rank == "stored"
    return stored_rank if by_stored and stored_rank else rank


def module_row(module: Any, *, top: int = 4) -> dict[str, Any]:
    """One audited module as a row keyed by :data:`MODULE_COLUMNS` (numbers as numbers).

    Parameters
    ----------
    module : ModuleReport or mapping
        A :class:`~lorarank.audit.ModuleReport`, or its ``audit --json`` document
        (:meth:`~lorarank.audit.ModuleReport.to_dict`), which has no truncation error (None).
    top : int, default 4
        How many singular values ``"top singular values"`` lists (``", ..."`` when there are
        more).

    Returns
    -------
    dict
        Every column of :data:`MODULE_COLUMNS` (``"|dW|/|W0|"`` is None without base weights),
        plus ``"kept rank"`` (AdaLoRA's nonzero E entries, else None).
    """
    sv = [float(s) for s in (_field(module, "singular_values") if _field(module, "singular_values")
                              is not None else [])]
    k = _field(module, "energy_rank") or {}
    shape = _field(module, "shape")
    flags = _field(module, "flags") or ()
    listed = ", ".join(f"{x:.3g}" for x in sv[:top]) + (", ..." if len(sv) > top else "")
    return {
        "module": short_name(str(_field(module, "name") or "")),
        "shape": f"{shape[0]} x {shape[1]}",
        "r": file_rank(_field(module, "family"), _field(module, "rank"), _field(module, "stored_rank")),
        "update rank": _field(module, "update_rank"),
        "alpha": _field(module, "alpha"),
        "scale s": _field(module, "scale"),
        "sigma_1": sv[0] if sv else 0.0,
        "top singular values": listed or "-",
        "k(0.9)": k.get("0.9"), "k(0.95)": k.get("0.95"), "k(0.99)": k.get("0.99"),
        "stable rank": _field(module, "stable_rank"),
        "entropy rank": _field(module, "entropy_rank"),
        "recommended rank": _field(module, "recommended_rank"),
        "truncation error": _field(module, "truncation_error"),
        "family": _field(module, "family"),
        "flags": ", ".join(flags) or "-",
        "|dW|/|W0|": _field(module, "relative_size"),
        "kept rank": _field(module, "kept_rank"),
    }


def metadata_items(metadata: Mapping[str, Any], *, limit: int,
                   one_line: bool = False) -> list[tuple[str, str]]:
    """What a file says about its training as ``(key, text)`` pairs: strings as they are, other
    values as JSON; ``one_line`` folds white space; texts over ``limit`` characters are cut
    with ``"..."``."""
    out = []
    for key, value in metadata.items():
        text = value if isinstance(value, str) else json.dumps(json_clean(value))
        if one_line:
            text = " ".join(text.split())
        out.append((str(key), text if len(text) <= limit else text[:limit - 3] + "..."))
    return out


# ------------------------------------------------------------------------------------ lists
def name_list(names: Sequence[str], limit: int = 5) -> str:
    """``"a, b, c and 4 more"``: the first ``limit`` names, then how many were left out."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def format_seconds(seconds: float) -> str:
    """``"about 40 s"``, ``"about 3 min"``, ``"about 2.5 h"`` (never below ``"about 1 s"``)."""
    if seconds < 90:
        return f"about {max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"


def split_list(text: str, *, separators: str = ",;") -> list[str]:
    """The entries of a list typed as text (``"2, 4;16"``): split at any of ``separators``,
    stripped, empties dropped."""
    text = str(text)
    for sep in separators[1:]:
        text = text.replace(sep, separators[0])
    return [p.strip() for p in text.split(separators[0]) if p.strip()]


def parse_numbers(text: str, *, name: str, whole: bool, low: float | None = None,
                  high: float | None = None, positive: bool = False, finite: bool = True,
                  item: str,
                  example: str, max_count: int | None = None, too_many: str = "") -> tuple:
    """A list of numbers typed as text, checked entry by entry.

    Parameters
    ----------
    text : str
        Entries separated by commas (or semicolons).
    name : str
        The setting's name, quoted in errors (``ranks``).
    whole : bool
        Entries must be whole numbers (returned as int); else floats.
    low, high : float, optional
        Inclusive bounds of every entry.
    positive : bool, default False
        Entries must be above 0.
    finite : bool, default True
        Refuse NaN and infinities here (False: left to the caller's own check, which names the
        entry's position).
    item : str
        One entry in words, for the empty-list error (``"rank"``).
    example : str
        A valid text, for the empty-list error (``"2,4,16"``).
    max_count : int, optional
        At most this many entries; ``too_many`` is the error's end (``"ranks; the app fits at
        most 12"``), after ``"`name` lists N "``.

    Returns
    -------
    tuple of int or float
        In the order typed.

    Raises
    ------
    ConfigError
        Naming the bad entry and the whole text.
    """
    parts = split_list(text)
    if not parts:
        raise ConfigError(f"`{name}` should list at least one {item}, e.g. {example}")
    rule = ("whole numbers" if whole else "numbers") if not positive else "positive numbers"
    if low is not None and high is not None:
        rule += f" from {low:,} to {high:,}"
    elif low is not None:
        rule += f" of at least {low:,}"
    out = []
    for part in parts:
        try:
            value, parsed = float(part), True
        except ValueError:
            value, parsed = math.nan, False
        ok = (parsed and (math.isfinite(value) or not finite)
              and (not whole or value.is_integer())
              and (low is None or value >= low) and (high is None or value <= high)
              and (not positive or value > 0))
        if not ok:
            raise ConfigError(f"`{name}` should be {rule} separated by commas, got {part!r} in "
                              f"{text!r}")
        out.append(int(value) if whole else value)
    if max_count is not None and len(out) > max_count:
        raise ConfigError(f"`{name}` lists {len(out)} {too_many}")
    return tuple(out)
