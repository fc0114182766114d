"""Rank over training: audit every checkpoint of one run and follow each module over steps.

A run is a list of :class:`lorarank.checkpoints.Checkpoint` (a step, where it came from, and a
function that reads its adapter), found in a folder, a zip, uploads or on the Hub by
:mod:`lorarank.checkpoints`. :func:`audit_series` reads each checkpoint once, in step order,
and keeps

- per checkpoint, the series fields of its modules only (stored rank, ``sigma_1..sigma_r`` of
  ``scale * B @ A``, energy / stable / recommended rank, phi: numpy columns, the output
  itself) and, for :meth:`SeriesReport.report_at` and :meth:`SeriesReport.to_dict`, its whole
  audit (:func:`lorarank.audit.audit_adapter`) pickled and zlib-compressed, about 0.2 kB a
  module (``keep_reports=False`` keeps none: :func:`write_series_json` writes each audit as it
  comes instead);
- for the subspace similarity, the top ``top`` right singular vectors of every module's ``A``
  (``d_in x top`` each), of the previous checkpoint and of the last one only,

so its memory does not grow with the number of checkpoints beyond those small summaries
(``tests/test_series_memory.py``). The last checkpoint is read first (every checkpoint is
compared with it) and not read again.

Per module shared by all checkpoints, over steps:

- ``phi_next[i]``: ``phi(k, k)`` between checkpoint i and checkpoint i + 1 (None for the last),
- ``phi_last[i]``: ``phi(k, k)`` between checkpoint i and the last checkpoint (1 for the last),

with Hu et al.'s ``phi(i, j) = ||U_i^T V_j||_F^2 / min(i, j)`` on the right singular vectors
of the two ``A`` factors, computed as :mod:`lorarank.compare` does (``k = min(top, r_1, r_2)``:
the ``top_overlap`` of a comparison); and ``settled_step``, the first step from which the
recommended rank never changed again up to the last checkpoint.

References
----------
E. J. Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022, section 7.2.
"""

from __future__ import annotations

import json
import math
import pickle
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence, TextIO

import numpy as np

from ._validate import check_int
from .adapters import Adapter
from .audit import ENERGY_THRESHOLDS, AuditReport, check_rule, audit_adapter
from .checkpoints import Checkpoint, Run, check_steps
from .compare import phi_from_overlap, right_singular_vectors
from .documents import name_list
from .errors import AdapterError, ConfigError
from .spectrum import single_threaded_blas

__all__ = [
    "SERIES_METRICS",
    "ModuleSeries",
    "SeriesReport",
    "audit_series",
    "write_series_json",
    "settled_index",
    "top_right_vectors",
]

#: Per-module numbers the rank-over-steps chart can draw: table column -> label.
SERIES_METRICS: dict[str, str] = {
    "recommended_rank": "recommended rank",
    "energy_rank_0.9": "energy rank k(0.9)",
    "energy_rank_0.99": "energy rank k(0.99)",
    "stable_rank": "stable rank",
    "sigma_1": "σ₁",
}

Progress = Callable[[int, int], None]
CheckpointHook = Callable[[int, "Checkpoint", AuditReport], None]


# ------------------------------------------------------------------------------------ report
@dataclass(frozen=True)
class ModuleSeries:
    """One module (present in every checkpoint) over steps; lists are aligned with ``steps``.

    Attributes
    ----------
    name : str
    layer : int or None
    module_type : str
    steps : list of int
    rank : list of int
        Stored rank r per checkpoint.
    singular_values : ndarray of shape (n, q), or list of ndarray
        sigma_1..sigma_r of ``scale * B @ A`` per checkpoint, descending: row i is checkpoint
        i (a list of arrays only when q changes between checkpoints).
    energy_rank : list of dict
        ``{"0.9": k, "0.95": k, "0.99": k}`` per checkpoint (read-only: equal entries are one
        shared dict, so a long series costs a pointer per step).
    stable_rank : list of float
    recommended_rank : list of int
        Under the series' rule.
    phi_next : list of float or None
        ``phi(k, k)`` with the next checkpoint; None for the last.
    phi_last : list of float
        ``phi(k, k)`` with the last checkpoint.
    chance : float
        ``k / d_in`` with ``k = min(top, r)`` at the last checkpoint: what two random subspaces
        would give on average.
    settled_step : int
        First step from which ``recommended_rank`` stays as it is at the last checkpoint.
    """

    name: str
    layer: int | None
    module_type: str
    steps: list[int]
    rank: list[int]
    singular_values: np.ndarray | list[np.ndarray]
    energy_rank: list[dict]
    stable_rank: list[float]
    recommended_rank: list[int]
    phi_next: list[float | None]
    phi_last: list[float]
    chance: float
    settled_step: int

    def to_dict(self) -> dict:
        """JSON-friendly (PRODUCT.md's series module plus rank, sigma, recommended rank)."""
        return {
            "name": self.name, "steps": list(self.steps),
            "energy_rank": [dict(k) for k in self.energy_rank],
            "stable_rank": list(self.stable_rank),
            "phi_next": list(self.phi_next), "phi_last": list(self.phi_last),
            "rank": list(self.rank),
            "singular_values": [[float(x) for x in s] for s in self.singular_values],
            "recommended_rank": list(self.recommended_rank),
            "chance": self.chance, "settled_step": self.settled_step,
        }


@dataclass(frozen=True)
class SeriesReport:
    """Every checkpoint's audit plus each shared module over steps.

    Attributes
    ----------
    steps : list of int
        Ascending.
    paths : list of str
        Where each checkpoint came from.
    modules : list of ModuleSeries
        The modules present in every checkpoint with the same (d_out, d_in), in the last
        checkpoint's order.
    settled_step : int
        The largest ``settled_step`` of the modules: from it on no module's recommended rank
        changed. Equal to the last step when something still changed there.
    adapter : list of dict
        The whole adapter (over the shared modules) per checkpoint: directions kept by the
        rule, median recommended rank, mean energy ranks, mean stable rank, mean phi.
    notes : list of str
        Modules left out of the series, rank changes, steps taken from trainer_state.json.
    rule, value : str, float
        The rank rule of ``recommended_rank``.
    top : int
        phi is ``phi(k, k)`` with ``k = min(top, r_1, r_2)``.
    labels : list of (str or None)
        Each checkpoint's label (a Hub revision as given), None where it has only its step.
    packed : tuple of bytes
        Each checkpoint's whole audit (all its modules, shared or not), pickled and
        zlib-compressed by :func:`audit_series` (``keep_reports=True``); empty when it kept
        none. Read through :meth:`report_at` and :attr:`reports`.
    """

    steps: list[int]
    paths: list[str]
    modules: list[ModuleSeries]
    settled_step: int
    adapter: list[dict]
    notes: list[str]
    rule: str
    value: float
    top: int
    labels: list[str | None] = field(default_factory=list)
    packed: tuple[bytes, ...] = field(default=(), repr=False)

    def label(self, i: int) -> str:
        """Checkpoint ``i``'s name for display: its label (a Hub revision), else its step."""
        given = self.labels[i] if i < len(self.labels) else None
        return given if given is not None else str(self.steps[i])

    @property
    def labelled(self) -> bool:
        """True when some checkpoint has a label (then every checkpoint document carries one)."""
        return any(x is not None for x in self.labels)

    @property
    def reports(self) -> list[AuditReport]:
        """Every checkpoint's audit, unpacked (all of them in memory at once: prefer
        :meth:`report_at` for one)."""
        return [self._report(i) for i in range(len(self.steps))]

    def _report(self, i: int) -> AuditReport:
        if len(self.packed) != len(self.steps):
            raise ConfigError("this series kept no per-checkpoint audits (audit_series was called "
                              "with keep_reports=False)")
        return _unpack(self.packed[i])

    def checkpoint_document(self, i: int, report: AuditReport | None = None) -> dict:
        """``{"step", "path", ["label"], **audit document}`` of checkpoint ``i`` (``report``:
        its audit, when the caller has it; else the kept one)."""
        report = self._report(i) if report is None else report
        return _checkpoint_doc(self.steps[i], self.paths[i], self.label(i) if self.labelled else None, report)

    def series_document(self) -> dict:
        """The ``"series"`` part of :meth:`to_dict`."""
        return {"modules": [m.to_dict() for m in self.modules], **self._series_rest()}

    def _series_rest(self) -> dict:
        series_extra = {"labels": [self.label(i) for i in range(len(self.steps))]} if self.labelled else {}
        return {
            "settled_step": self.settled_step,
            "steps": list(self.steps),
            "adapter": [dict(a) for a in self.adapter],
            "rule": self.rule, "value": self.value, "top": self.top,
            "notes": list(self.notes), **series_extra,
        }

    def to_dict(self) -> dict:
        """``{"checkpoints": [{"step", "path", "modules", ...}], "series": {"modules", "settled_step", ...}}``.

        A checkpoint with a label (a Hub revision) also carries ``"label"``, and the series
        ``"labels"`` (aligned with ``steps``). Needs the kept audits (``keep_reports=True``);
        :func:`write_series_json` writes the same document as the audits come."""
        return {"checkpoints": [self.checkpoint_document(i) for i in range(len(self.steps))],
                "series": self.series_document()}

    def table(self) -> list[dict]:
        """One flat row per (step, shared module), for CSV / JSON downloads and charts.

        Columns: step (and label, for a series with labels), module, layer, module_type, rank,
        sigma_1, energy_rank_0.9 / 0.95 / 0.99, stable_rank, recommended_rank, phi_next,
        phi_last, then sigma_1..sigma_q.
        """
        width = max((len(s) for m in self.modules for s in m.singular_values), default=0)
        labelled = self.labelled
        rows = []
        for i, step in enumerate(self.steps):
            for m in self.modules:
                s = m.singular_values[i]
                rows.append({
                    "step": step, **({"label": self.label(i)} if labelled else {}), "module": m.name, "layer": m.layer, "module_type": m.module_type,
                    "rank": m.rank[i], "sigma_1": float(s[0]) if s.size else 0.0,
                    **{f"energy_rank_{t}": k for t, k in m.energy_rank[i].items()},
                    "stable_rank": m.stable_rank[i], "recommended_rank": m.recommended_rank[i],
                    "phi_next": m.phi_next[i], "phi_last": m.phi_last[i],
                    **{f"sigma_{j + 1}": (float(s[j]) if j < s.size else None) for j in range(width)},
                })
        return rows

    def report_at(self, step: int) -> AuditReport:
        """The audit of the checkpoint at ``step``."""
        if step not in self.steps:
            raise ConfigError(f"no checkpoint at step {step!r}; steps are {', '.join(map(str, self.steps))}")
        return self._report(self.steps.index(step))


def settled_index(values: Sequence[object]) -> int:
    """Smallest i with ``values[j] == values[-1]`` for every j >= i (0 for an empty list)."""
    i = len(values) - 1
    while i > 0 and values[i - 1] == values[-1]:
        i -= 1
    return max(i, 0)


# -------------------------------------------------------------------------------- the audit
def _bases(adapter: Adapter, top: int) -> dict[str, np.ndarray]:
    """Top-``top`` right singular vectors of every module's A, ``(d_in, min(top, r))`` each."""
    return {m.name: top_right_vectors(m.A, top) for m in adapter.modules}


def top_right_vectors(A: np.ndarray, top: int, *, min_ratio: float = 1e-2) -> np.ndarray:
    """The top ``k = min(top, r, d_in)`` right singular vectors of ``A`` (r, d_in), as columns.

    The span of the first j columns, for every j <= k, is that of the first j columns of
    :func:`lorarank.compare.right_singular_vectors` (which phi compares), without a QR of the
    ``d_in x r`` matrix ``A^T``, which is most of the series' cost after the audit itself:

    1. the Gram matrix of the rows ``A A^T = U S^2 U^T`` (r x r) and its eigen-decomposition;
    2. ``V_k = A^T U_k S_k^{-1}``, the top k right singular vectors;
    3. one QR of the ``d_in x k`` ``V_k`` restores orthonormality lost to rounding.

    Squaring doubles the condition number's exponent, so this path is taken only when
    ``sigma_k >= min_ratio * sigma_1`` (then the vectors agree with the SVD route to about
    ``eps / min_ratio^2``, tested); a more ill-conditioned or rank-deficient A, and an all-zero
    one, use :func:`right_singular_vectors` itself.
    """
    A = np.asarray(A, dtype=np.float64)
    peak = float(np.max(np.abs(A))) if A.size else 0.0
    k = min(top, *A.shape)
    if peak == 0.0 or k == 0:
        return right_singular_vectors(A)[:, :top]
    a = A / peak  # unit scale: no overflow for factors near 1e160
    w, u = np.linalg.eigh(a @ a.T)
    w, u = w[::-1], u[:, ::-1]  # descending: w = sigma^2
    if not w[k - 1] >= w[0] * min_ratio**2:
        return right_singular_vectors(A)[:, :top]
    q, _ = np.linalg.qr(a.T @ (u[:, :k] / np.sqrt(w[:k])))
    return q


def _phi(u1: np.ndarray | None, u2: np.ndarray | None) -> float | None:
    """``phi(k, k)``, ``k = min(top, r_1, r_2)``, as :func:`lorarank.compare.compare_adapters`."""
    if u1 is None or u2 is None or u1.shape[0] != u2.shape[0]:
        return None
    phi = phi_from_overlap(u1.T @ u2)
    k = min(phi.shape)
    return float(phi[k - 1, k - 1])


def _load(checkpoint: Checkpoint) -> Adapter:
    try:
        return checkpoint.load()
    except AdapterError as exc:
        raise type(exc)(f"{checkpoint.path}: {exc}") from exc


def audit_series(run: Run | Sequence[Checkpoint], *, rule: str = "energy", value: float = 0.99,
                 top: int = 4, progress: Progress | None = None, keep_reports: bool = True,
                 on_checkpoint: CheckpointHook | None = None) -> SeriesReport:
    """Audit every checkpoint of a run and follow each shared module over steps.

    Parameters
    ----------
    run : Run or sequence of Checkpoint
        From :func:`find_checkpoints`, :func:`checkpoints_from_files`, or built by hand (e.g.
        one Hub revision per step). Ordered by step here.
    rule : str, default="energy"
    value : float, default=0.99
        The rank rule of ``recommended_rank`` and ``settled_step``
        (:data:`lorarank.spectrum.RANK_RULES`).
    top : int, default=4
        phi is ``phi(k, k)`` with ``k = min(top, r_1, r_2)``, as in :func:`compare_adapters`.
    progress : callable(done, total), optional
        Called after each checkpoint is read and audited (and with ``(0, n)`` first).
    keep_reports : bool, default=True
        Keep each checkpoint's whole audit, packed (pickled and zlib-compressed: about 40 kB
        for 224 modules of r = 16), for :meth:`SeriesReport.report_at` and
        :meth:`SeriesReport.to_dict`. False: only the series fields are kept (a caller that
        writes each audit as it comes, through ``on_checkpoint``, needs nothing more).
    on_checkpoint : callable(index, checkpoint, report), optional
        Called with each checkpoint's :class:`~lorarank.audit.AuditReport` in step order, as
        soon as it is known (the last checkpoint's, read first, comes last), so a caller can
        write it out and drop it.

    Returns
    -------
    SeriesReport

    Notes
    -----
    Each checkpoint is read once: the last one first (every checkpoint is compared with it),
    then the others in step order. Kept in memory at any time: one adapter being read and its
    audit, the top-``top`` right singular vectors of A (``d_in x top`` per module) of the
    previous and of the last checkpoint, the last checkpoint's audit, and per checkpoint only
    the series fields of its modules (ranks, sigma, energy / stable / recommended rank, phi:
    numpy columns, ``(q + 8) x 8`` bytes a module) plus, with ``keep_reports``, its packed
    audit. Nothing ``d_out x d_in`` is formed.
    """
    rule, value = check_rule(rule, value)
    top = check_int("top", top, minimum=1)
    notes = list(run.notes) if isinstance(run, Run) else []
    order = sorted(run.checkpoints if isinstance(run, Run) else list(run), key=lambda c: c.step)
    if not order:
        raise ConfigError("a series needs at least one checkpoint")
    check_steps(order)
    n = len(order)
    if progress is not None:
        progress(0, n)
    slims: list[_Slim] = []
    packed: list[bytes] = []
    interned: dict[tuple[str, ...], tuple[str, ...]] = {}
    with single_threaded_blas():
        # 1. The last checkpoint first: everything is compared with it.
        adapter = _load(order[-1])
        last_report = audit_adapter(adapter, rule=rule, value=value)
        last_bases = _bases(adapter, top)
        del adapter
        previous: dict[str, np.ndarray] | None = None
        # 2. Every checkpoint in step order; the last one is not read again.
        for i, checkpoint in enumerate(order):
            if i == n - 1:
                report, bases = last_report, last_bases
            else:
                adapter = _load(checkpoint)
                report = audit_adapter(adapter, rule=rule, value=value)
                bases = _bases(adapter, top)
                del adapter
            if previous is not None:
                slims[-1].set_phi_next([_phi(previous[name], bases.get(name)) for name in slims[-1].names])
            slim = _Slim.of(report, interned)
            slim.phi_last[:] = _nan_for_none([_phi(bases[name], last_bases.get(name)) for name in slim.names])
            slims.append(slim)
            if keep_reports:
                packed.append(_pack(report))
            if on_checkpoint is not None:
                on_checkpoint(i, checkpoint, report)
            del report
            previous = bases
            if progress is not None:
                progress(i + 1, n)
    del previous, bases, last_bases
    modules, more_notes = _module_series(order, slims, last_report, top)
    notes.extend(more_notes)
    steps = [c.step for c in order]
    settled = max((m.settled_step for m in modules), default=steps[-1])
    return SeriesReport(steps=steps, paths=[c.path for c in order], modules=modules,
                        settled_step=settled, adapter=_adapter_rows(steps, modules), notes=notes,
                        rule=rule, value=value, top=top, labels=[c.label for c in order],
                        packed=tuple(packed))


def write_series_json(run: Run | Sequence[Checkpoint], out: TextIO, *, rule: str = "energy",
                      value: float = 0.99, top: int = 4, progress: Progress | None = None) -> SeriesReport:
    """Audit a run and write its :meth:`SeriesReport.to_dict` document as it goes.

    The text written is exactly ``json.dumps(audit_series(run, ...).to_dict(), allow_nan=False)``
    followed by a newline (what ``audit --series DIR --json`` prints), but each checkpoint's
    audit document is written as soon as that checkpoint is audited and then dropped, and each
    series module as it is encoded: memory holds one adapter, its audit, and the series fields,
    whatever the number of checkpoints.

    Parameters
    ----------
    run, rule, value, top, progress
        As in :func:`audit_series`.
    out : text file
        Where to write (the CLI gives a temporary file and copies it to stdout when the whole
        series has succeeded, so a failure prints nothing).

    Returns
    -------
    SeriesReport
        Without the per-checkpoint audits (``keep_reports=False``).
    """
    order = sorted(run.checkpoints if isinstance(run, Run) else list(run), key=lambda c: c.step)
    labelled = any(c.label is not None for c in order)
    out.write('{"checkpoints": [')

    def write_checkpoint(i: int, checkpoint: Checkpoint, report: AuditReport) -> None:
        label = (checkpoint.label if checkpoint.label is not None else str(checkpoint.step)) if labelled else None
        doc = _checkpoint_doc(checkpoint.step, checkpoint.path, label, report)
        out.write((", " if i else "") + json.dumps(doc, allow_nan=False))

    result = audit_series(run, rule=rule, value=value, top=top, progress=progress, keep_reports=False,
                          on_checkpoint=write_checkpoint)
    out.write('], "series": {"modules": [')
    for j, module in enumerate(result.modules):
        out.write((", " if j else "") + json.dumps(module.to_dict(), allow_nan=False))
    out.write("], " + json.dumps(result._series_rest(), allow_nan=False)[1:] + "}\n")
    return result


def _checkpoint_doc(step: int, path: str, label: str | None, report: AuditReport) -> dict:
    """One entry of ``"checkpoints"``: step, path, the label when the series has labels, the audit."""
    return {"step": step, "path": path, **({"label": label} if label is not None else {}), **report.to_dict()}


def _pack(report: AuditReport) -> bytes:
    return zlib.compress(pickle.dumps(report, protocol=pickle.HIGHEST_PROTOCOL), 1)


def _unpack(data: bytes) -> AuditReport:
    # Only ever bytes this module packed from its own AuditReport objects (never user input).
    return pickle.loads(zlib.decompress(data))


def _nan_for_none(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _none_for_nan(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


@dataclass
class _Slim:
    """One checkpoint's series fields, one numpy column per field, aligned with ``names``."""

    names: tuple[str, ...]
    shapes: np.ndarray  # (M, 2) int64
    rank: np.ndarray  # (M,) int64
    recommended: np.ndarray  # (M,) int64
    energy: np.ndarray  # (M, len(ENERGY_THRESHOLDS)) int64
    stable: np.ndarray  # (M,) float64
    sv: np.ndarray  # every module's sigma, concatenated
    offsets: np.ndarray  # (M + 1,) int64: module j's sigma is sv[offsets[j]:offsets[j + 1]]
    phi_last: np.ndarray  # (M,) float64, NaN for None
    phi_next: np.ndarray | None = None  # (M,) float64, NaN for None; None at the last checkpoint

    @classmethod
    def of(cls, report: AuditReport, interned: dict) -> "_Slim":
        mods = report.modules
        names = tuple(m.name for m in mods)
        names = interned.setdefault(names, names)  # one tuple of names for all equal checkpoints
        lengths = [m.singular_values.size for m in mods]
        return cls(
            names=names,
            shapes=np.array([m.shape for m in mods], dtype=np.int64).reshape(len(mods), 2),
            rank=np.array([m.rank for m in mods], dtype=np.int64),
            recommended=np.array([m.recommended_rank for m in mods], dtype=np.int64),
            energy=np.array([[m.energy_rank[_key(t)] for t in ENERGY_THRESHOLDS] for m in mods],
                            dtype=np.int64).reshape(len(mods), len(ENERGY_THRESHOLDS)),
            stable=np.array([m.stable_rank for m in mods], dtype=np.float64),
            sv=(np.concatenate([np.asarray(m.singular_values, dtype=np.float64) for m in mods])
                if mods else np.zeros(0)),
            offsets=np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64),
            phi_last=np.full(len(mods), np.nan))

    def set_phi_next(self, values: Sequence[float | None]) -> None:
        self.phi_next = _nan_for_none(values)

    def index(self) -> dict[str, int]:
        return {name: j for j, name in enumerate(self.names)}


def _key(t: float) -> str:
    return f"{t:g}"


def _module_series(order, slims: Sequence[_Slim], last_report: AuditReport,
                   top: int) -> tuple[list[ModuleSeries], list[str]]:
    steps = [c.step for c in order]
    indexes: dict[int, dict[str, int]] = {}  # one name -> position map per distinct names tuple
    by_step = [indexes.setdefault(id(s.names), s.index()) for s in slims]
    last = last_report.modules
    everywhere = [m.name for m in last if all(m.name in b for b in by_step)]
    same_shape = [name for name in everywhere
                  if len({tuple(s.shapes[b[name]]) for s, b in zip(slims, by_step)}) == 1]
    notes = []
    all_names = list(dict.fromkeys(name for s in slims for name in s.names))
    partial_names = [name for name in all_names if name not in everywhere]
    if partial_names:
        notes.append(f"{len(partial_names)} module(s) are not in every checkpoint and are left out of "
                     f"the series (each checkpoint's own audit still lists them): {name_list(partial_names)}.")
    reshaped = [name for name in everywhere if name not in same_shape]
    if reshaped:
        notes.append(f"{len(reshaped)} module(s) change shape between checkpoints and are left out of "
                     f"the series: {name_list(reshaped)}.")
    keys = [_key(t) for t in ENERGY_THRESHOLDS]
    energy_dicts: dict[tuple[int, ...], dict] = {}  # one dict per distinct (k(0.9), k(0.95), k(0.99))
    last_by_name = {m.name: m for m in last}
    modules, rank_changes = [], []
    for name in same_shape:
        at = [(s, b[name]) for s, b in zip(slims, by_step)]
        ranks = [int(s.rank[j]) for s, j in at]
        if len(set(ranks)) > 1:
            rank_changes.append(name)
        recommended = [int(s.recommended[j]) for s, j in at]
        final = last_by_name[name]
        k = min(top, ranks[-1], final.shape[1])
        modules.append(ModuleSeries(
            name=name, layer=final.layer, module_type=final.module_type, steps=steps, rank=ranks,
            singular_values=_rows([s.sv[s.offsets[j]:s.offsets[j + 1]] for s, j in at]),
            energy_rank=[_shared(energy_dicts, keys, tuple(map(int, s.energy[j]))) for s, j in at],
            stable_rank=[float(s.stable[j]) for s, j in at], recommended_rank=recommended,
            phi_next=[None if s.phi_next is None else _none_for_nan(s.phi_next[j]) for s, j in at],
            phi_last=[_none_for_nan(s.phi_last[j]) for s, j in at],
            chance=k / final.shape[1], settled_step=steps[settled_index(recommended)]))
    if rank_changes:
        notes.append(f"{len(rank_changes)} module(s) change their stored rank r between checkpoints "
                     f"(phi compares the top min({top}, r_1, r_2) directions): {name_list(rank_changes)}.")
    return modules, notes


def _rows(values: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """One (n, q) array when every checkpoint has q values (no per-step array objects kept)."""
    return np.stack(values) if len({v.size for v in values}) == 1 else [v.copy() for v in values]


def _shared(cache: dict, keys: Sequence[str], ranks: tuple[int, ...]) -> dict:
    found = cache.get(ranks)
    if found is None:
        found = cache[ranks] = dict(zip(keys, ranks))
    return found


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(kept)) if kept else None


def _adapter_rows(steps: Sequence[int], modules: Sequence[ModuleSeries]) -> list[dict]:
    rows = []
    for i, step in enumerate(steps):
        rec = [m.recommended_rank[i] for m in modules]
        rows.append({
            "step": step, "modules": len(modules),
            "directions": int(sum(rec)),
            "recommended_rank_median": float(np.median(rec)) if rec else None,
            **{f"energy_rank_{t}_mean": _mean(m.energy_rank[i][t] for m in modules)
               for t in (modules[0].energy_rank[i] if modules else {})},
            "stable_rank_mean": _mean(m.stable_rank[i] for m in modules),
            "energy": float(sum(float(np.sum(m.singular_values[i] ** 2)) for m in modules)),
            "phi_next_mean": _mean(m.phi_next[i] for m in modules),
            "phi_last_mean": _mean(m.phi_last[i] for m in modules),
        })
    return rows
