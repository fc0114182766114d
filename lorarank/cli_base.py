"""The command line against a base model: ``audit --intruders``, ``mitigate``, ``convert``.

:mod:`lorarank.cli` owns the parser and the commands; this module adds their options and
prints what they found, so the shared CLI module stays small. Nothing heavy is imported at
parse time.
"""

from __future__ import annotations

import argparse
from typing import Callable

from .errors import ConfigError

__all__ = ["add_audit_options", "add_commands", "audit_options", "svd_cache", "print_against_base",
           "print_mitigation", "print_conversion"]


def _add_cache_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", metavar="DIR", default=None,
                   help="folder of the base-SVD cache, shared by every run on the same base (default: "
                        "$LORARANK_CACHE_DIR, else ~/.cache/lorarank; bounded by LORARANK_CACHE_DISK_MB, 8192)")
    p.add_argument("--no-cache", action="store_true", help="keep the base's SVDs in memory only")


def _add_definition_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="top directions of W0 + dW tested for intruders (default 10, PEFT's)")
    p.add_argument("--epsilon", type=float, default=None,
                   help="an intruder's largest |cos| with W0's left singular vectors is below this (default 0.5)")


def add_audit_options(p: argparse.ArgumentParser) -> None:
    """``audit``'s options against the base besides ``--base``, ``--intruders``, ``--top-k`` and
    ``--epsilon`` (:mod:`lorarank.cli` defines those, shared with ``--finetuned``)."""
    g = p.add_argument_group("adapters against the base (with --base; --intruders, --top-k and --epsilon above)")
    g.add_argument("--replay", choices=("float64", "torch"), default="float64",
                   help="how a PiSSA / OLoRA init is recomputed from the base: exactly in float64 (default), "
                        "or with torch in float32 as PEFT does it (needs torch)")
    _add_cache_options(g)


def add_commands(sub, *, mitigate: Callable, convert: Callable) -> None:
    """The ``mitigate`` and ``convert`` subcommands (handlers from :mod:`lorarank.cli`)."""
    p = sub.add_parser("mitigate", help="reduce an adapter's intruder dimensions (PEFT's "
                                        "reduce_intruder_dimension, without torch)")
    p.add_argument("path", metavar="PATH", help="as in audit (a file, a folder or hf://...)")
    p.add_argument("--base", required=True, metavar="BASE", help="the base model's weights (.safetensors file "
                                                                  "or folder of shards)")
    p.add_argument("--lambda", dest="mitigation_lambda", type=float, default=0.75, metavar="L",
                   help="share of each intruder direction kept: 1 changes nothing, 0 removes them (default 0.75)")
    _add_definition_options(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file or folder (the input's format)")
    p.add_argument("--force", action="store_true", help="replace output files that already exist")
    p.add_argument("--json", action="store_true", help="print one JSON document (what changed)")
    _add_cache_options(p)
    p.set_defaults(handler=mitigate)

    p = sub.add_parser("convert", help="a PiSSA / OLoRA adapter saved without conversion -> the plain LoRA of "
                                       "rank 2r PEFT's conversion writes")
    p.add_argument("path", metavar="PATH", help="a PEFT folder (or weights file plus adapter_config.json)")
    p.add_argument("--base", required=True, metavar="BASE", help="the ORIGINAL base model's weights")
    p.add_argument("--replay", choices=("float64", "torch"), default="float64",
                   help="recompute the init exactly in float64 (default) or as PEFT does, torch float32")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (PEFT format)")
    p.add_argument("--force", action="store_true", help="replace output files that already exist")
    p.set_defaults(handler=convert)


def _check_definition(args: argparse.Namespace) -> dict:
    from .intruders import DEFAULT_EPSILON, DEFAULT_TOP_K

    top_k = DEFAULT_TOP_K if args.top_k is None else args.top_k
    epsilon = DEFAULT_EPSILON if args.epsilon is None else args.epsilon
    if top_k < 1:
        raise ConfigError(f"--top-k should be at least 1, got {top_k}")
    if not 0.0 <= epsilon <= 1.0:
        raise ConfigError(f"--epsilon should be between 0 and 1, got {epsilon:g}")
    return {"top_k": top_k, "epsilon": epsilon}


def svd_cache(args: argparse.Namespace):
    """The base-SVD cache the options ask for (disk by default for the CLI)."""
    from .base_svd import shared_cache

    if args.no_cache:
        if args.cache is not None:
            raise ConfigError("give --cache DIR or --no-cache, not both")
        return shared_cache(disk=False)
    return shared_cache(directory=args.cache, disk=True)


def audit_options(args: argparse.Namespace) -> dict:
    """``audit_adapter`` keyword arguments from ``audit``'s options (checked first)."""
    if args.intruders and args.base is None:
        raise ConfigError("audit: --intruders compares the update with the base weights: give --base BASE")
    out: dict = {"replay": args.replay}
    if args.intruders:
        out.update(intruders=True, svd_cache=svd_cache(args), **_check_definition(args))
    return out


def _short(name: str) -> str:
    return name[len("base_model.model."):] if name.startswith("base_model.model.") else name


def print_against_base(report) -> None:
    """The intruders table of one audited adapter (when it has one)."""
    mods = [m for m in report.modules if m.intruders is not None]
    if not mods:
        return
    s = report.summary.get("intruders", {})
    width = max(12, *(len(_short(m.name)) for m in mods))
    print()
    print(f"intruder dimensions (top {s.get('top_k')} left singular vectors of W0 + dW, epsilon {s.get('epsilon')}): "
          f"{s.get('total', 0)} in {s.get('modules_with_intruders', 0)} of {s.get('modules', 0)} modules")
    print(f"{'module':<{width}} | {'count':>5} | {'indices':<20} | {'min max|cos|':>12} | {'share W':>8} | "
          f"{'share dW':>8} | {'amplif.':>8}")
    print("-" * (width + 80))
    for m in mods:
        t = m.intruders
        if t.get("count") is None:
            print(f"{_short(m.name):<{width}} | {'-':>5} | {t.get('error', '')}")
            continue
        idx = ",".join(map(str, t["indices"])) or "-"
        low = min(t["max_cos"]) if t["max_cos"] else float("nan")
        upd = "-" if t["share_of_update"] is None else f"{t['share_of_update']:.4f}"
        amp = "-" if m.amplification is None else f"{m.amplification:.3g}"
        print(f"{_short(m.name):<{width}} | {t['count']:>5} | {idx:<20} | {low:>12.4f} | {t['share']:>8.4f} | "
              f"{upd:>8} | {amp:>8}")
    print("an intruder is one of the top-k left singular vectors of W0 + dW whose largest |cos| with every left "
          "singular vector of W0 is below epsilon (PEFT's reduce_intruder_dimension);")
    print("share W = the intruders' part of ||W0 + dW||_F^2; share dW = ||U_I^T dW||_F^2 / ||dW||_F^2; "
          "amplif. = ||dW||_F / ||U_r^T W0 V_r||_F (Hu et al. 2021, sec. 7.3).")


def print_mitigation(result, written) -> None:
    """What ``mitigate`` changed."""
    d = result.to_dict()
    worst = max(result.truncation.items(), key=lambda kv: kv[1]) if result.truncation else None
    print(f"reduced {d['intruders_total']} intruder dimensions in {d['changed']} of {d['modules']} modules "
          f"(lambda {d['mitigation_lambda']:g}, top_k {d['top_k']}, epsilon {d['epsilon']:g})"
          + (f"; keeping rank r loses at most {worst[1]:.4f} of the mitigated update ({_short(worst[0])})"
             if worst else ""))
    for name, why in list(result.skipped.items())[:3]:
        print(f"note: {_short(name)} left as it is ({why})")
    if len(result.skipped) > 3:
        print(f"note: {len(result.skipped) - 3} more modules left as they are")
    print("wrote " + ", ".join(str(p) for p in written))


def print_conversion(adapter, converted, written) -> None:
    """What ``convert`` wrote."""
    ranks = sorted({m.rank for m in converted.modules})
    print(f"converted {adapter.source}: init replayed from the base; {len(converted.modules)} modules, "
          f"rank {', '.join(map(str, ranks))} (A' = [A; A0], B' = [B, -B0]), init_lora_weights true: loads on the "
          "original base")
    print("wrote " + ", ".join(str(p) for p in written))
