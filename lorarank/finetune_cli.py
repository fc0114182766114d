"""The command line of full fine-tunes: ``audit --finetuned MODEL --base BASE`` and ``extract``.

Wired into :mod:`lorarank.cli` (same error contract: exit 2 and one ``lorarank: error:`` line).
Ctrl-C during the work stops it at the next module and prints what was done (exit 130).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

from .errors import LoraRankError

__all__ = ["add_audit_options", "add_extract_parser", "run_audit_finetuned", "run_extract",
           "INTERRUPTED"]

#: Exit code after Ctrl-C (the work done so far is printed).
INTERRUPTED = 130


def add_audit_options(p: argparse.ArgumentParser) -> None:
    """The ``audit`` options of a full fine-tune."""
    g = p.add_argument_group("full fine-tune (audit --finetuned MODEL --base BASE)")
    g.add_argument("--finetuned", metavar="MODEL", default=None,
                   help="a fully fine-tuned model (.safetensors file, folder of shards or "
                        "hf://owner/name[@rev]): the spectrum of W_ft - W0 per module against "
                        "--base, and the LoRA rank each module would need")
    g.add_argument("--top", type=int, default=None, metavar="K",
                   help="singular values reported per module (default 64)")
    g.add_argument("--max-rank", type=int, default=None, metavar="K",
                   help="singular values computed at most per module for the energy ranks "
                        "(default 256; an energy rank above it is reported as '> K')")
    g.add_argument("--tol", type=float, default=None,
                   help="error bound of every reported singular value, relative to sigma_1 "
                        "(default 1e-6)")
    g.add_argument("--method", default=None, help="auto, randomized or dense (default auto)")
    g.add_argument("--no-embeddings", action="store_true",
                   help="do not audit the embedding matrices (they are large)")
    g.add_argument("--csv", action="store_true", help="print one CSV row per module")


def add_extract_parser(sub, handler) -> None:
    """``extract MODEL --base BASE (--rank K | --energy T) -o OUT``, run by ``handler(args)``."""
    p = sub.add_parser("extract", help="extract a LoRA adapter from a full fine-tune (W_ft - W0)")
    p.add_argument("model", metavar="MODEL", help="the fine-tuned model (.safetensors file, folder "
                   "of shards or hf://owner/name[@rev])")
    p.add_argument("--base", required=True, metavar="BASE", help="the base model it was fine-tuned from")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--rank", type=int, help="the same rank for every module")
    target.add_argument("--energy", type=float,
                        help="per module, the smallest rank keeping this share of ||W_ft - W0||_F^2 "
                             "(e.g. 0.9); ranks go to rank_pattern")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (PEFT adapter)")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    p.add_argument("--tol", type=float, default=None, help="as in audit --finetuned")
    p.add_argument("--method", default=None, help="as in audit --finetuned")
    p.add_argument("--force", action="store_true", help="replace output files that already exist")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(handler=handler)


def _settings(args: argparse.Namespace):
    from .finetune import FinetuneSettings

    given = {k: v for k, v in (("top", getattr(args, "top", None)),
                               ("max_rank", getattr(args, "max_rank", None)),
                               ("tol", args.tol), ("method", args.method)) if v is not None}
    if getattr(args, "no_embeddings", False):
        given["embeddings"] = False
    if getattr(args, "intruders", False):
        given.update(intruders=True, top_k=args.top_k, epsilon=args.epsilon)
    return FinetuneSettings(**given)


@contextmanager
def _interruptible() -> Iterator[threading.Event]:
    """An Event set by Ctrl-C (SIGINT) while the block runs (the work stops at the next module)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):  # noqa: ANN001 - signal API
        if stop.is_set():  # a second Ctrl-C: stop now
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        stop.set()
        print("\nlorarank: stopping after the module under way (Ctrl-C again to quit now)",
              file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _progress(what: str):
    """Progress on stderr when it is a terminal: count and time left."""
    if not sys.stderr.isatty():
        return None
    from .finetune import format_left

    def show(done: int, total: int, left: float | None) -> None:
        print(f"\r{what}: {done} of {total} modules{format_left(left)}   ", end="", file=sys.stderr,
              flush=True)
        if done == total:
            print(file=sys.stderr)

    return show


def _open(source: str):
    from .weights import open_model

    return open_model(source)


def run_audit_finetuned(args: argparse.Namespace, *, print_json, check_output) -> int:
    """``audit --finetuned MODEL --base BASE [--json | --csv] [--html OUT]``."""
    from .finetune import ENERGY_THRESHOLDS, ERROR_RANKS, audit_finetune, finetune_reading

    if args.paths or args.series is not None:
        raise LoraRankError("audit: give either PATH ... (adapters) or --finetuned MODEL, not both")
    if args.base is None:
        raise LoraRankError("audit: --finetuned MODEL needs --base BASE (the model it was fine-tuned from)")
    for flag, given in (("--alpha", args.alpha is not None), ("--scale", args.scale is not None)):
        if given:
            raise LoraRankError(f"audit: {flag} applies to adapters, not to --finetuned")
    if args.json and args.csv:
        raise LoraRankError("audit: give --json or --csv, not both")
    settings = _settings(args)
    if args.html is not None:
        check_output(args.html, force=args.force)
    ft, base = _open(args.finetuned), _open(args.base)
    with _interruptible() as stop:
        report = audit_finetune(ft, base, settings=settings, progress=_progress("auditing"),
                                stop=stop.is_set)
    if args.html is not None:
        from .finetune_html import finetune_html

        html = finetune_html(report)
        from pathlib import Path

        from .bounded import clip, write_text

        written = write_text(Path(args.html), html)  # whole or nothing (a temporary file, renamed)
        print(clip(f"wrote {args.html} ({written / 1e6:.1f} MB)"), file=sys.stderr)
    code = INTERRUPTED if report.stopped else 0
    if args.json:
        print_json(report.to_dict())
        return code
    if args.csv:
        from .documents import csv_text

        rows = report.table()
        sys.stdout.write(csv_text(rows, columns=list(rows[0]) if rows else []))
        return code
    from .bounded import clip

    print(f"fine-tuned: {report.finetuned}; base: {report.base}; {report.total} weight matrices "
          f"in common" + (f" (stopped after {len(report.modules)})" if report.stopped else ""))
    names = {m.name: clip(m.name, 60) for m in report.modules}  # a 1 MiB name would pad every row
    width = max([12] + [len(n) for n in names.values()])
    head = (f"{'module':<{width}} | {'d_out x d_in':>13} | "
            + " | ".join(f"{f'k({t:g})':>7}" for t in ENERGY_THRESHOLDS) + " | "
            + " | ".join(f"{f'err@{k}':>6}" for k in ERROR_RANKS)
            + f" | {'sigma_1':>9} | {'|dW|/|W0|':>9} | {'stable':>7} | flags")
    print()
    print(head)
    print("-" * len(head))
    for m in report.modules:
        rel = "-" if m.relative_size is None else f"{m.relative_size:.4g}"
        s1 = float(m.singular_values[0]) if m.singular_values.size else 0.0
        print(f"{names[m.name]:<{width}} | {f'{m.shape[0]} x {m.shape[1]}':>13} | "
              + " | ".join(f"{m.needs(t):>7}" for t in ENERGY_THRESHOLDS) + " | "
              + " | ".join(f"{m.lora_error[str(k)]:>6.3f}" for k in ERROR_RANKS)
              + f" | {s1:>9.4g} | {rel:>9} | {m.stable_rank:>7.2f} | {','.join(m.flags) or '-'}")
    if report.settings.intruders:
        print()
        print(f"intruder dimensions (top {report.settings.top_k} left singular vectors of W_ft whose "
              f"largest |cos| with W0's is below {report.settings.epsilon:g}):")
        for m in report.modules:
            if m.intruders and m.intruders["count"]:
                print(clip(f"  {names[m.name]}: {m.intruders['count']} at {m.intruders['indices']} "
                           f"(share of ||W_ft||_F^2 {m.intruders['share']:.4f})"))
    print()
    for sentence in finetune_reading(report):
        print(clip(sentence.replace("**", "")))
    changed = [o for o in report.others if o.changed]
    if report.others:
        print()
        print(clip(f"not audited: {len(report.others)} tensors ({len(changed)} changed by the fine-tune)"
                   + (": " + ", ".join(f"{clip(o.name, 60)} ({o.kind})" for o in changed[:8])
                      + (" ..." if len(changed) > 8 else "") if changed else "")))
    print()
    print("k(t) = smallest k with sum_{i<=k} sigma_i^2 >= t ||dW||_F^2 ('> K': more than the K values "
          "computed); err@k = ||dW - best rank-k||_F / ||dW||_F;")
    print(f"sigma = singular values of dW = W_ft - W0, each within {report.summary['max_sv_bound']:.1g} "
          "sigma_1 of the true one; stable = ||dW||_F^2 / sigma_1^2.")
    if report.stopped:
        print("stopped (Ctrl-C): the modules above are those finished.")
    return code


def run_extract(args: argparse.Namespace, *, print_json) -> int:
    """``extract MODEL --base BASE (--rank K | --energy T) -o OUT``."""
    from pathlib import Path

    from .adapters import save_adapter
    from .finetune import extract_lora

    if args.dtype not in ("float32", "bfloat16", "float16"):
        raise LoraRankError(f"extract: --dtype should be float32, bfloat16 or float16, got {args.dtype!r}")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise LoraRankError(f"extract: {args.output} exists and is not a folder; -o names the adapter's folder")
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        if (out / name).exists() and not args.force:
            raise LoraRankError(f"extract: {out / name} exists; pass --force to replace it")
    settings = _settings(args)
    ft, base = _open(args.model), _open(args.base)
    base_name = _base_name(args.base)
    with _interruptible() as stop:
        ex = extract_lora(ft, base, rank=args.rank, energy=args.energy, settings=settings,
                          base_model=base_name, progress=_progress("extracting"), stop=stop.is_set)
    if not ex.modules:
        raise LoraRankError("extract: no module changed, so there is nothing to extract"
                            if not ex.stopped else "extract: stopped before any module was done")
    written = save_adapter(ex.adapter, out, dtype=args.dtype, overwrite=args.force)
    s = ex.summary()
    code = INTERRUPTED if ex.stopped else 0
    if args.json:
        print_json({**ex.to_dict(), "written": [str(p) for p in written]})
        return code
    target = f"rank {args.rank}" if args.rank is not None else f"energy {args.energy:g} per module"
    print(f"extracted {s['modules']} of {s['of']} modules at {target}: ranks {s['ranks']['min']}.."
          f"{s['ranks']['max']} (median {s['ranks']['median']:g}), {s['params']:,} parameters")
    print(f"keeps {100 * s['kept_energy']['all']:.2f} % of sum ||W_ft - W0||_F^2 over these modules "
          f"(each module at least {100 * s['kept_energy']['min']:.2f} %); largest relative error "
          f"{s['error']['max']:.4f}")
    from .bounded import clip

    if ex.unchanged:
        print(clip(f"unchanged (no LoRA needed): {', '.join(ex.unchanged)}"))
    changed = [o for o in ex.others if o.changed]
    unknown = [o for o in ex.others if o.changed is None and o.kind in ("embedding", "norm", "bias", "vector")]
    if changed:
        print(clip(f"left out, changed by the fine-tune ({len(changed)}): "
                   + ", ".join(f"{o.name} ({o.kind})" for o in changed)))
    if unknown:
        print(clip(f"left out, not compared ({len(unknown)}): " + ", ".join(o.name for o in unknown)))
    if ex.stopped:
        print("stopped (Ctrl-C): the adapter holds the modules finished.")
    print(clip("wrote " + ", ".join(str(p) for p in written)))
    return code


def hub_base(given: str, base, adapters):
    """The adapter audit's base: ``base`` as opened, or for ``--base hf://`` the Hub repo the
    adapters' config names (all must name the same); a base on the Hub is checked against its
    byte limit for the adapted modules before any tensor is read."""
    if given == "hf://":
        from .base import open_base
        from .hub_ranges import base_from_config

        named = {base_from_config(a.config, source=a.source) for a in adapters}
        if len(named) > 1:
            raise LoraRankError(f"audit: --base hf:// takes the base the adapters name, and they name "
                                f"{len(named)}: {', '.join(sorted(named)[:3])}")
        base = open_base(named.pop())
    model = getattr(base, "model", None)
    if getattr(model, "remote", False):
        model.check_plan(sorted({base.key_for(m.name) for a in adapters for m in a.modules}))
    return base


def _base_name(base: str) -> str:
    """``base_model_name_or_path`` for the adapter: the repo id of ``hf://``, else the path."""
    from .hub import is_hub_uri, parse_hub_uri

    if is_hub_uri(base):
        return parse_hub_uri(base).repo_id
    return base
