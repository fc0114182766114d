"""``python -m lorarank``: the engine from a terminal, for scripts and CI.

Exit 0 on success. On bad input: exit 2 and one line ``lorarank: error: <what>`` on stderr,
no traceback. ``--json`` prints one JSON document to stdout (no NaN or inf).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Sequence

from .errors import LoraRankError

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse with PRODUCT.md's error line: ``lorarank: error: ...`` and exit 2."""

    def error(self, message: str):  # type: ignore[override]
        command = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        _fail(f"{command}{message}")


class _Failure(Exception):
    """Raised by the parser so that main() prints the one error line."""


def _fail(message: str):
    raise _Failure(message)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one whole number, got {text!r}")
    return values


def _float_list(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one number, got {text!r}")
    return values


def _str_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _add_target_options(p: argparse.ArgumentParser, *, d: int = 64) -> None:
    g = p.add_argument_group("synthetic target")
    g.add_argument("--d-out", type=int, default=d, help="output features (default %(default)s)")
    g.add_argument("--d-in", type=int, default=d, help="input features (default %(default)s)")
    g.add_argument("--true-rank", type=int, default=4, help="intrinsic rank k (default %(default)s)")
    g.add_argument("--noise", type=float, default=0.01,
                   help="std of the Gaussian noise floor per entry (default %(default)s)")
    g.add_argument("--spectrum", default="linear", help="flat, linear or geometric (default %(default)s)")
    g.add_argument("--sigma-max", type=float, default=38.0,
                   help="largest planted singular value (default %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="seed of target and init (default %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    parser = _Parser(prog="lorarank", description="What LoRA rank do you need, and what did your adapter learn?")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("sweep", help="fit LoRA at several ranks to a synthetic low-rank target")
    _add_target_options(p)
    p.add_argument("--ranks", type=_int_list, default=[2, 4, 16], help="comma-separated ranks (default 2,4,16)")
    p.add_argument("--optimizer", default="sgd", help="sgd or adam (default %(default)s)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: 0.02 for sgd, 0.01 for adam)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default 2000)")
    p.add_argument("--rule", default="alpha-eq-r",
                   help="scaling rule: fixed-alpha, alpha-eq-r, alpha-eq-2r, rslora (default %(default)s)")
    p.add_argument("--alpha", type=float, default=16.0, help="lora_alpha for fixed-alpha and rslora (default %(default)s)")
    p.add_argument("--tol", type=float, default=None, help="stop a rank once its loss fell by less than TOL over 50 steps")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(handler=_cmd_sweep)

    p = sub.add_parser("stability", help="scaling rule x rank x learning rate: where training diverges")
    _add_target_options(p, d=256)
    p.add_argument("--ranks", type=_int_list, default=[4, 8, 32, 128], help="comma-separated ranks (default 4,8,32,128)")
    p.add_argument("--rules", type=_str_list, default=["fixed-alpha", "alpha-eq-r", "alpha-eq-2r", "rslora"],
                   help="comma-separated scaling rules (default all four)")
    p.add_argument("--alpha", type=float, default=16.0, help="lora_alpha for fixed-alpha and rslora (default %(default)s)")
    p.add_argument("--lrs", type=_float_list, default=[0.003, 0.01, 0.03], help="comma-separated learning rates")
    p.add_argument("--optimizer", default="sgd", help="sgd or adam (default %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per run")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(handler=_cmd_stability)

    p = sub.add_parser("audit", help="per-module effective rank of trained adapters")
    p.add_argument("paths", nargs="+", metavar="PATH", help=".npz / .safetensors file or a PEFT folder")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(handler=_cmd_audit)

    p = sub.add_parser("resize", help="write the best lower-rank approximation of an adapter")
    p.add_argument("path", metavar="PATH")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--rank", type=int, help="new rank of every module")
    target.add_argument("--energy", type=float, help="keep this share of each module's energy (e.g. 0.99)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file or folder")
    p.set_defaults(handler=_cmd_resize)

    p = sub.add_parser("compare", help="subspace similarity of two adapters on their shared modules")
    p.add_argument("path_a", metavar="PATH_A")
    p.add_argument("path_b", metavar="PATH_B")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(handler=_cmd_compare)
    return parser


def _print_json(doc: dict) -> None:
    sys.stdout.write(json.dumps(doc, allow_nan=False) + "\n")


def _fmt_values(values: Sequence[float], n: int = 8) -> str:
    return "  ".join(f"{v:8.3f}" for v in list(values)[:n])


# ----------------------------------------------------------------------------------- sweep
def _cmd_sweep(args: argparse.Namespace) -> int:
    from .fit import DEFAULT_STEPS, fit_lora
    from .synthetic import make_target

    steps = DEFAULT_STEPS if args.steps is None else args.steps
    started = time.perf_counter()
    target = make_target(args.d_out, args.d_in, true_rank=args.true_rank, spectrum=args.spectrum,
                         sigma_max=args.sigma_max, noise=args.noise, seed=args.seed)
    results = fit_lora(target, args.ranks, optimizer=args.optimizer, lr=args.lr, steps=steps,
                       rule=args.rule, alpha=args.alpha, seed=args.seed, tol=args.tol)
    seconds = time.perf_counter() - started
    if args.json:
        config = {k: v for k, v in vars(args).items() if k not in ("handler", "json", "command")}
        config["steps"] = steps
        config["lr"] = _lr_used(args)
        _print_json({"config": config, "results": [r.to_dict() for r in results], "seconds": seconds})
        return 0
    print(f"target {target.shape[0]} x {target.shape[1]}, intrinsic rank {target.true_rank}, "
          f"noise {target.noise:g}; {args.optimizer} lr {_lr_used(args):g}, {steps} steps, "
          f"rule {args.rule}")
    print(f"top singular values of the target: {_fmt_values(target.singular_values)}")
    print()
    print(f"{'r':>5} | {'rel err':>9} | {'optimum':>9} | {'eff. rank':>9} | top-8 singular values of trained s*B@A")
    print("-" * 104)
    for r in results:
        if r.diverged:
            print(f"{r.rank:>5} | {'diverged at step ' + str(r.diverged_at):>33} |")
            continue
        print(f"{r.rank:>5} | {r.rel_err:>9.4f} | {r.optimal_rel_err:>9.4f} | {r.effective_rank:>9} | "
              f"{_fmt_values(r.singular_values)}")
    print()
    print("rel err = ||s B A - T||_F / ||T||_F after training; optimum = best any rank-r matrix can do "
          "(Eckart-Young);")
    print("eff. rank = trained directions above the noise floor (Gavish-Donoho threshold).")
    print(f"({seconds:.2f} s)")
    return 0


def _lr_used(args: argparse.Namespace) -> float:
    from .fit import DEFAULT_LR

    return DEFAULT_LR.get(args.optimizer, 0.0) if args.lr is None else args.lr


# ------------------------------------------------------------------------------- stability
def _cmd_stability(args: argparse.Namespace) -> int:
    from .stability import DEFAULT_STEPS, run_stability, stability_findings
    from .synthetic import make_target

    steps = DEFAULT_STEPS if args.steps is None else args.steps
    target = make_target(args.d_out, args.d_in, true_rank=args.true_rank, spectrum=args.spectrum,
                         sigma_max=args.sigma_max, noise=args.noise, seed=args.seed)
    grid = run_stability(target, ranks=args.ranks, rules=args.rules, lrs=args.lrs,
                         optimizer=args.optimizer, steps=steps, alpha=args.alpha, seed=args.seed)
    if args.json:
        _print_json(grid.to_dict())
        return 0
    cfg = grid.config
    print(f"target {cfg['d_out']} x {cfg['d_in']}, intrinsic rank {cfg['true_rank']}, "
          f"sigma_max {cfg['sigma_max']:g}, noise {cfg['noise']:g}; {cfg['optimizer']}, "
          f"{cfg['steps']} steps, alpha {cfg['alpha']:g}")
    for rule in cfg["rules"]:
        print()
        _stability_table(grid, rule)
    print()
    print("cells: final relative error ||s B A - T||_F / ||T||_F; 'div@t' = diverged at step t "
          "(loss non-finite or 1e4 x its start).")
    print("s = the LoRA multiplier under the rule; SGD is stable for roughly lr < 1 / (s * sigma_max).")
    print()
    for sentence in stability_findings(grid).sentences:
        print(sentence)
    print(f"({grid.seconds:.2f} s)")
    return 0


def _stability_table(grid, rule: str) -> None:
    """Print one rule's block: a row per rank, a column per learning rate."""
    lrs = grid.config["lrs"]
    heads = [f"lr {lr:g}" for lr in lrs]
    width = max(10, *(len(h) for h in heads))
    print(f"{rule}")
    print(f"{'r':>5} | {'s':>7} | " + " | ".join(f"{h:>{width}}" for h in heads))
    print("-" * (18 + (width + 3) * len(lrs)))
    for rank in grid.config["ranks"]:
        cells = [grid.cell(rule, rank, lr) for lr in lrs]
        text = [f"div@{c.diverged_at}" if c.diverged else f"{c.rel_err:.4f}" for c in cells]
        print(f"{rank:>5} | {cells[0].scale:>7.3g} | " + " | ".join(f"{t:>{width}}" for t in text))


# ----------------------------------------------------------------------------------- audit
def _cmd_audit(args: argparse.Namespace) -> int:
    raise LoraRankError("the audit command is not available yet")


# ---------------------------------------------------------------------------------- resize
def _cmd_resize(args: argparse.Namespace) -> int:
    raise LoraRankError("the resize command is not available yet")


# --------------------------------------------------------------------------------- compare
def _cmd_compare(args: argparse.Namespace) -> int:
    raise LoraRankError("the compare command is not available yet")


# ------------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code."""
    try:
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except _Failure as exc:
        message = str(exc)
    except LoraRankError as exc:
        message = str(exc)
    except FileNotFoundError as exc:
        message = f"no such file or folder: {exc.filename}"
    except IsADirectoryError as exc:
        message = f"expected a file, got a folder: {exc.filename}"
    except PermissionError as exc:
        message = f"permission denied: {exc.filename}"
    except MemoryError:
        message = "out of memory"
    except BrokenPipeError:
        return 0
    print(f"lorarank: error: {message}", file=sys.stderr)
    return 2
