"""``python -m lorarank``: the engine from a terminal, for scripts and CI.

Exit 0 on success. On bad input: exit 2 and one line ``lorarank: error: <what>`` on stderr,
no traceback. ``--json`` prints one JSON document to stdout (no NaN or inf).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Sequence

from . import cli_base, finetune_cli
from .documents import (audit_document, json_text, metadata_items, module_row, parse_numbers,
                        short_name, split_list)
from .bounded import clip, write_text
from .errors import ConfigError, LoraRankError

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


def _number_list(whole: bool, what: str):
    """An argparse type for comma-separated numbers (whole numbers, or any)."""
    def parse(text: str) -> list:
        if not split_list(text):
            raise argparse.ArgumentTypeError(f"expected at least one {what[:-1]}, got {text!r}")
        try:
            return list(parse_numbers(text, name=what, whole=whole, finite=False, item=what,
                                      example=""))
        except ConfigError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
    return parse


_int_list = _number_list(True, "whole numbers")
_float_list = _number_list(False, "numbers")
_str_list = split_list


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


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("finite data (data mode: fit n pairs y = T x + noise instead of T itself)")
    g.add_argument("--samples", type=int, default=None, metavar="N",
                   help="training pairs n; turns the data mode on (default: the exact target)")
    g.add_argument("--label-noise", type=float, default=None, metavar="X",
                   help="std of the label noise in y = T x + X e (default 1.0)")
    g.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="pairs per optimiser step (default: full batch)")
    g.add_argument("--heldout", type=int, default=None, metavar="M",
                   help="held-out pairs the fit is judged on (default 1000)")
    g.add_argument("--epochs", type=int, default=None, metavar="E",
                   help="train for E passes over the pairs: ceil(N / B) * E optimiser steps, "
                        "instead of --steps")


def _data_config(args: argparse.Namespace):
    """The DataConfig the options ask for, or None in the exact mode."""
    from .data import DEFAULT_HELDOUT, DEFAULT_LABEL_NOISE, DataConfig

    if args.samples is None:
        given = [f"--{name.replace('_', '-')}" for name in ("label_noise", "batch_size", "heldout",
                                                           "epochs")
                 if getattr(args, name) is not None]
        if given:
            _fail(f"{args.command}: {' and '.join(given)} need{'s' if len(given) == 1 else ''} --samples N (the data mode)")
        return None
    return DataConfig(samples=args.samples,
                      label_noise=DEFAULT_LABEL_NOISE if args.label_noise is None else args.label_noise,
                      batch_size=args.batch_size,
                      heldout=DEFAULT_HELDOUT if args.heldout is None else args.heldout)


def _steps(args: argparse.Namespace, data, default: int) -> int:
    """Optimiser steps: ``--steps``, or ``--epochs`` passes over the pairs, or ``default``."""
    if args.epochs is None:
        return default if args.steps is None else args.steps
    steps = data.steps_for_epochs(args.epochs)
    if args.steps is not None:
        _fail(f"{args.command}: give --steps or --epochs, not both")
    return steps


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    parser = _Parser(prog="lorarank", description="What LoRA rank do you need, and what did your adapter learn?")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("sweep", help="fit LoRA at several ranks to a synthetic low-rank target")
    _add_target_options(p)
    p.add_argument("--ranks", type=_int_list, default=[2, 4, 16], help="comma-separated ranks (default 2,4,16)")
    p.add_argument("--optimizer", default="sgd", help="sgd or adam (default %(default)s)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: 0.02 for sgd, 0.01 for adam; data mode 0.005 for sgd)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default 2000)")
    p.add_argument("--rule", default="alpha-eq-r",
                   help="scaling rule: fixed-alpha, alpha-eq-r, alpha-eq-2r, rslora (default %(default)s)")
    p.add_argument("--alpha", type=float, default=16.0, help="lora_alpha for fixed-alpha and rslora (default %(default)s)")
    p.add_argument("--tol", type=float, default=None, help="stop a rank once its loss fell by less than TOL over 50 steps")
    _add_data_options(p)
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
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per run (default 200)")
    _add_data_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(handler=_cmd_stability)

    p = sub.add_parser("audit", help="per-module effective rank of trained adapters")
    p.add_argument("paths", nargs="*", metavar="PATH", help=".npz / .safetensors file, a PEFT folder, or "
                   "hf://owner/name[@revision][/subfolder] (Hugging Face Hub)")
    p.add_argument("--series", metavar="DIR",
                   help="audit every checkpoint-<step> subfolder of a training run's folder, "
                        "and each module's rank and subspace similarity over steps; or a run on "
                        "the Hub: hf://owner/name@rev1,rev2,...[/subfolder] (one checkpoint per "
                        "revision) or hf://owner/name[@revision][/subfolder] (its checkpoint-<step> "
                        "folders)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--alpha", type=float, default=None,
                   help="alpha for files that carry none (scale = alpha / r per module)")
    p.add_argument("--scale", type=float, default=None, help="the scale s itself, for files that carry none")
    p.add_argument("--base", default=None, metavar="BASE",
                   help="base model weights (.safetensors file, folder of shards, or "
                        "hf://owner/name[@rev], read by byte ranges; hf:// alone: the Hub repo "
                        "the adapter's config names): DoRA's exact merged - W0 and every module's "
                        "||dW|| / ||W0||")
    p.add_argument("--html", metavar="OUT", default=None,
                   help="also write a self-contained HTML report (tables and interactive charts; "
                        "opens offline) to OUT; one adapter only")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    g = p.add_argument_group("against the base (with --base)")
    g.add_argument("--intruders", action="store_true",
                   help="count intruder dimensions: top-k left singular vectors of W0 + dW whose "
                        "largest |cos| with every left singular vector of W0 is below epsilon "
                        "(PEFT's definition)")
    g.add_argument("--top-k", type=int, default=10, metavar="K",
                   help="top directions tested for --intruders (default %(default)s)")
    g.add_argument("--epsilon", type=float, default=0.5,
                   help="the |cos| threshold of --intruders (default %(default)s)")
    finetune_cli.add_audit_options(p)
    cli_base.add_audit_options(p)
    p.set_defaults(handler=_cmd_audit)

    p = sub.add_parser("resize", help="write the best lower-rank approximation of an adapter")
    p.add_argument("path", metavar="PATH", help="as in audit (a file, a folder or hf://...)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--rank", type=int, help="new rank of every module")
    target.add_argument("--energy", type=float, help="keep this share of each module's energy (e.g. 0.99)")
    target.add_argument("--sv-ratio", type=float, metavar="R",
                        help="kohya's rule: keep sigma_i > sigma_1 / R (exactly those; kohya's own "
                             "resize_lora.py keeps one more)")
    target.add_argument("--sv-fro", type=float, metavar="T",
                        help="kohya's rule: keep the smallest k whose Frobenius-norm share reaches T "
                             "(energy share T^2)")
    target.add_argument("--sv-cumulative", type=float, metavar="T",
                        help="kohya's rule: keep the smallest k with sum_{i<=k} sigma_i >= T sum sigma")
    p.add_argument("--max-rank", type=int, default=None, metavar="N",
                   help="cap every module's rank (kohya's --new_rank with a dynamic method)")
    p.add_argument("--base", default=None, metavar="BASE",
                   help="base model weights (as in audit): a DoRA adapter's note then says how far "
                        "the merged weights move")
    p.add_argument("--dtype", default=None, choices=("float32", "float64", "float16", "bfloat16"),
                   help="store the factors in this dtype (default: each module's own, as read)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file or folder")
    p.add_argument("--force", action="store_true", help="replace output files that already exist")
    p.set_defaults(handler=_cmd_resize)

    p = sub.add_parser("compare", help="subspace similarity of two adapters on their shared modules")
    p.add_argument("path_a", metavar="PATH_A")
    p.add_argument("path_b", metavar="PATH_B")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(handler=_cmd_compare)

    finetune_cli.add_extract_parser(sub, _cmd_extract)

    from .fleet.command import add_parser as add_fleet_parser

    add_fleet_parser(sub, _Parser)
    cli_base.add_commands(sub, mitigate=_cmd_mitigate, convert=_cmd_convert)
    return parser


def _print_json(doc: dict) -> None:
    sys.stdout.write(json_text(doc))


def _fmt_values(values: Sequence[float], n: int = 8) -> str:
    return "  ".join(f"{v:8.3f}" for v in list(values)[:n])


# ----------------------------------------------------------------------------------- sweep
def _cmd_sweep(args: argparse.Namespace) -> int:
    from .fit import DEFAULT_STEPS, fit_lora
    from .synthetic import make_target

    data = _data_config(args)
    steps = _steps(args, data, DEFAULT_STEPS)
    started = time.perf_counter()
    target = make_target(args.d_out, args.d_in, true_rank=args.true_rank, spectrum=args.spectrum,
                         sigma_max=args.sigma_max, noise=args.noise, seed=args.seed)
    if data is None:
        results = fit_lora(target, args.ranks, optimizer=args.optimizer, lr=args.lr, steps=steps,
                           rule=args.rule, alpha=args.alpha, seed=args.seed, tol=args.tol)
    else:
        from .data import fit_data

        results = fit_data(target, args.ranks, data=data, optimizer=args.optimizer, lr=args.lr,
                           steps=steps, rule=args.rule, alpha=args.alpha, seed=args.seed, tol=args.tol)
    seconds = time.perf_counter() - started
    if args.json:
        config = {k: v for k, v in vars(args).items() if k not in ("handler", "json", "command")}
        config["steps"] = steps
        config["lr"] = _lr_used(args)
        if data is not None:
            config.update(data.to_dict())
            config["epochs"] = data.epochs(steps)
            config["steps_per_epoch"] = data.steps_per_epoch
            config["noise_floor"] = results[0].noise_floor
        _print_json({"config": config, "results": [r.to_dict() for r in results], "seconds": seconds})
        return 0
    print(f"target {target.shape[0]} x {target.shape[1]}, intrinsic rank {target.true_rank}, "
          f"noise {target.noise:g}; {args.optimizer} lr {_lr_used(args):g}, {steps} steps, "
          f"rule {args.rule}")
    print(f"top singular values of the target: {_fmt_values(target.singular_values)}")
    if data is not None:
        _data_header(data, steps, results[0].noise_floor)
        _data_table(results)
        from .data import data_findings

        print()
        for sentence in data_findings({data.samples: results}, true_rank=target.true_rank,
                                      d_out=target.shape[0], label_noise=data.label_noise):
            print(sentence.replace("**", ""))
        print(f"({seconds:.2f} s)")
        return 0
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
    print()
    from .fit import sweep_findings

    for sentence in sweep_findings(results, target_values=target.singular_values, shape=target.shape,
                                   noise=target.noise, true_rank=target.true_rank):
        print(sentence.replace("**", ""))
    print(f"({seconds:.2f} s)")
    return 0


def _data_header(data, steps: int, floor: float | None) -> None:
    batch = "full batch" if data.full_batch else f"batches of {data.batch}"
    print(f"data mode: {data.samples} training pairs y = T x + {data.label_noise:g} e, {batch} "
          f"({data.epochs(steps):.4g} epochs of {data.steps_per_epoch} step"
          f"{'s' if data.steps_per_epoch != 1 else ''} = {steps} steps), "
          f"{data.heldout} held-out pairs")


def _data_table(results) -> None:
    from .data import DataConfig  # noqa: F401  (the table's definitions follow the data module)

    print()
    print(f"{'r':>5} | {'train loss':>10} | {'RRR bound':>10} | {'held-out':>10} | {'rel err':>9} | "
          f"{'optimum':>9} | {'eff. rank':>9} | top-6 singular values of trained s*B@A")
    print("-" * 120)
    for r in results:
        if r.diverged:
            print(f"{r.rank:>5} | {'diverged at step ' + str(r.diverged_at):>36} | {r.optimal_train_loss:>10.4g} |")
            continue
        eff = "-" if r.effective_rank is None else str(r.effective_rank)
        print(f"{r.rank:>5} | {r.train_loss:>10.4g} | {r.optimal_train_loss:>10.4g} | {r.heldout_loss:>10.4g} | "
              f"{r.rel_err:>9.4f} | {r.optimal_rel_err:>9.4f} | {eff:>9} | {_fmt_values(r.singular_values, 6)}")
    print()
    print("losses = mean over pairs of 0.5 ||s B A x - y||^2 (expected: 0.5 ||s B A - T||_F^2 + "
          "0.5 d_out noise^2); RRR bound = the smallest")
    print("training loss any rank-r matrix reaches on these pairs (reduced-rank regression); "
          "rel err = ||s B A - T||_F / ||T||_F;")
    floor = results[0].noise_floor
    print("optimum = Eckart-Young on T; eff. rank = trained directions above the noise floor for this n "
          + (f"({floor:.4g})." if floor is not None else "(none: n <= d_in + 1 does not determine T)."))


def _lr_used(args: argparse.Namespace) -> float:
    from .fit import DEFAULT_LR

    if args.lr is not None:
        return args.lr
    if getattr(args, "samples", None) is not None:
        from .data import DATA_DEFAULT_LR

        return DATA_DEFAULT_LR.get(args.optimizer, 0.0)
    return DEFAULT_LR.get(args.optimizer, 0.0)


# ------------------------------------------------------------------------------- stability
def _cmd_stability(args: argparse.Namespace) -> int:
    from .stability import DEFAULT_STEPS, run_stability, stability_findings
    from .synthetic import make_target

    data = _data_config(args)
    steps = _steps(args, data, DEFAULT_STEPS)
    target = make_target(args.d_out, args.d_in, true_rank=args.true_rank, spectrum=args.spectrum,
                         sigma_max=args.sigma_max, noise=args.noise, seed=args.seed)
    grid = run_stability(target, ranks=args.ranks, rules=args.rules, lrs=args.lrs,
                         optimizer=args.optimizer, steps=steps, alpha=args.alpha, seed=args.seed,
                         data=data)
    if args.json:
        doc = grid.to_dict()
        if data is not None:
            doc["config"].update(epochs=data.epochs(steps), steps_per_epoch=data.steps_per_epoch)
        _print_json(doc)
        return 0
    cfg = grid.config
    print(f"target {cfg['d_out']} x {cfg['d_in']}, intrinsic rank {cfg['true_rank']}, "
          f"sigma_max {cfg['sigma_max']:g}, noise {cfg['noise']:g}; {cfg['optimizer']}, "
          f"{cfg['steps']} steps, alpha {cfg['alpha']:g}")
    if data is not None:
        _data_header(data, steps, None)
        print("cells: relative error against T; the data's noise and minibatches move where runs diverge.")
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
def _audit_load(paths: Sequence[str], *, alpha: float | None = None, scale: float | None = None,
                many: bool = False, pinned: list | None = None) -> list:
    """Adapters named on the command line: weights files or folders, plus at most one config;
    or ``hf://`` adapters from the Hub (their pinned references are appended to ``pinned``).

    With ``many``, a folder of several named adapters gives all of them (audit); otherwise it
    is an error naming them (resize, compare take one adapter per path).
    """
    from . import adapters
    from .hub import is_hub_uri, load_hub_adapter

    hub = [p for p in paths if is_hub_uri(p)]
    if hub and len(paths) > len(hub):
        raise LoraRankError("an hf:// adapter brings its own config; give it without local files")
    if hub:
        loaded = [load_hub_adapter(p, alpha=alpha, scale=scale) for p in hub]
        if pinned is not None:
            pinned.extend(fetched.pinned.uri for _, fetched in loaded)
        return [adapter for adapter, _ in loaded]
    configs = [p for p in paths if p.lower().endswith(".json")]
    weights = [p for p in paths if not p.lower().endswith(".json")]
    if len(configs) > 1:
        raise LoraRankError(f"give at most one adapter_config.json, got {len(configs)}")
    if not weights:
        raise LoraRankError(f"{configs[0]} is a config; give the weights file or folder too")
    if configs and len(weights) != 1:
        raise LoraRankError(f"{configs[0]} can go with one weights file, got {len(weights)}")
    out = []
    for w in weights:
        load_many = getattr(adapters, "load_adapters", None)
        if many and not configs and load_many is not None and os.path.isdir(w):
            out.extend(load_many(w, alpha=alpha, scale=scale) if (alpha, scale) != (None, None) else load_many(w))
        else:
            out.append(adapters.load_adapter(w, config=configs[0] if configs else None, alpha=alpha, scale=scale))
    return out


#: Widest module name in the text tables: a longer name is cut in its middle (a 1 MiB name
#: padded every row to 1 MiB: an 8.4 GB table). ``--json`` keeps every name whole.
NAME_COLUMN = 60


def _name(name: str) -> str:
    """A module name for the text tables: :func:`short_name`, at most :data:`NAME_COLUMN` wide."""
    return clip(short_name(name), NAME_COLUMN)


def _audit_print(report) -> None:
    detected = report.detected
    name = f" [{detected['name']}]" if detected.get("name") else ""
    families = ", ".join(report.summary.get("families", []))
    print(clip(f"{report.source}{name}: {detected['format']}, {detected['modules']} modules ({families}), "
               f"{detected['params']:,} parameters, dtype {', '.join(detected['dtypes'])}, "
               f"rank {', '.join(map(str, detected['ranks']))}"))
    print(clip(f"scaling: {report.scaling}"))
    print(f"orientation: {detected['orientation']}")
    if detected.get("base"):
        print(clip(f"base weights: {detected['base']}"))
    for key, value in metadata_items(detected.get("metadata") or {}, limit=120, one_line=True):
        print(clip(f"metadata {key}: {value}", 200))
    if detected["ignored_tensors"]:
        print(f"kept {detected['ignored_tensors']} tensors that are not LoRA factors (not audited)")
    kinds = list(dict.fromkeys(m.spectrum_of for m in report.modules))
    print(clip("spectrum of: " + "; ".join(kinds)))
    for warning in report.summary.get("warnings", []):
        print(clip(f"warning: {warning}"))
    rows = [{**module_row(m), "module": _name(m.name)} for m in report.modules]
    width = max(12, *(len(row["module"]) for row in rows))
    with_base = any(row["|dW|/|W0|"] is not None for row in rows)
    print()
    print(f"{'module':<{width}} | {'d_out x d_in':>13} | {'r':>4} | {'scale':>7} | {'sigma_1':>9} | "
          f"{'k(.90)':>6} | {'k(.95)':>6} | {'k(.99)':>6} | {'stable':>6} | {'entropy':>7} | "
          f"{'rec.':>4} | {'trunc err':>9}" + (f" | {'|dW|/|W0|':>9}" if with_base else "") + " | flags")
    print("-" * (width + 122 + (12 if with_base else 0)))
    for row in rows:
        rank = f"{row['r']}" if row["kept rank"] is None else f"{row['kept rank']}/{row['r']}"
        size = row["|dW|/|W0|"]
        rel = (f" | {size:>9.4g}" if size is not None else f" | {'-':>9}") if with_base else ""
        print(f"{row['module']:<{width}} | {row['shape']:>13} | {rank:>4} | "
              f"{row['scale s']:>7.4g} | {row['sigma_1']:>9.4g} | {row['k(0.9)']:>6} | "
              f"{row['k(0.95)']:>6} | {row['k(0.99)']:>6} | {row['stable rank']:>6.2f} | "
              f"{row['entropy rank']:>7.2f} | {row['recommended rank']:>4} | "
              f"{row['truncation error']:>9.4f}{rel} | {row['flags'].replace(', ', ',')}")
    s = report.summary
    print()
    if s["recommended_rank"]:
        print(f"recommended ({s['rule']} {s['value']:g}): rank {s['recommended_rank']['min']}.."
              f"{s['recommended_rank']['max']} (median {s['recommended_rank']['median']:g}), "
              f"{s['params']:,} -> {s['params_after']:,} parameters ({s['compression']:.1%}), "
              f"retained energy {s['retained_energy']:.4f}")
    print("sigma = singular values of the update (see 'spectrum of'); k(t) = smallest k keeping share t of "
          "sum sigma^2; stable = sum sigma^2 / sigma_1^2;")
    print("entropy = exp(-sum p log p), p = sigma / sum sigma; trunc err = relative Frobenius error "
          "of keeping rec. directions; r a/b = AdaLoRA kept a of b;")
    print("flags: zero = the update is exactly 0, collapsed = sigma_2 <= 1e-6 sigma_1"
          + ("; |dW|/|W0| = ||dW||_F / ||W0||_F with the base weights." if with_base else "."))


def _cmd_audit(args: argparse.Namespace) -> int:
    from .audit import audit_adapter

    if args.finetuned is not None:
        return finetune_cli.run_audit_finetuned(args, print_json=_print_json, check_output=_check_output)
    ignored = [flag for flag, given in (("--csv", args.csv), ("--top", args.top is not None),
                                        ("--max-rank", args.max_rank is not None),
                                        ("--tol", args.tol is not None),
                                        ("--method", args.method is not None),
                                        ("--no-embeddings", args.no_embeddings)) if given]
    if ignored:
        _fail(f"audit: {ignored[0]} applies to --finetuned MODEL")
    if args.series is not None:
        if args.paths:
            _fail("audit: give either PATH ... or --series DIR, not both")
        return _cmd_audit_series(args)
    if not args.paths:
        _fail("audit: give at least one PATH, or --series DIR")
    if args.html is not None:
        _check_output(args.html, force=args.force)
    against = cli_base.audit_options(args)
    base = None
    if args.base is not None and args.base != "hf://":
        from .base import open_base

        base = open_base(args.base)
    pinned: list[str] = []
    adapters = _audit_load(args.paths, alpha=args.alpha, scale=args.scale, many=True, pinned=pinned)
    if args.html is not None and len(adapters) != 1:
        raise LoraRankError(f"--html writes the report of one adapter, got {len(adapters)}")
    if args.base is not None:
        base = finetune_cli.hub_base(args.base, base, adapters)
    reports = [audit_adapter(a, base=base, **against) for a in adapters]
    if args.html is not None:
        _write_audit_html(reports[0], args.html, source=pinned[0] if pinned else reports[0].source)
    if args.json:
        _print_json(audit_document(reports))
        return 0
    for i, report in enumerate(reports):
        if i:
            print()
        if pinned:
            print(clip(f"from {pinned[i]}"))
        _audit_print(report)
        cli_base.print_against_base(report)
    return 0


def _cmd_audit_series(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from .adapters import check_override
    from .checkpoints import find_checkpoints, plan_hub_series
    from .hub import is_hub_uri
    from .series import audit_series, write_series_json

    # Every option is checked before anything is read or any Hub request is made.
    for flag, given in (("--base", args.base is not None), ("--html", args.html is not None)):
        if given:
            _fail(f"audit: {flag} applies to one adapter, not to --series")
    alpha, scale = check_override(args.alpha, args.scale)
    pinned = None
    if is_hub_uri(args.series):
        plan = plan_hub_series(args.series)
        run, pinned = plan.run(alpha=alpha, scale=scale), plan.pinned.uri
    else:
        run = find_checkpoints(args.series, alpha=alpha, scale=scale)
    if args.json:
        # Each checkpoint's audit is written to a temporary file as soon as it is computed
        # (memory flat in the number of checkpoints), then copied out once the whole series
        # has succeeded, so a failure half way prints nothing but the error line.
        with tempfile.TemporaryFile("w+", encoding="utf-8", prefix="lorarank-series-") as spool:
            write_series_json(run, spool)
            spool.seek(0)
            shutil.copyfileobj(spool, sys.stdout)
        return 0
    result = audit_series(run, keep_reports=False)
    if pinned:
        print(clip(f"from {pinned}"))
    _series_print(result, args.series)
    return 0


def _series_print(result, folder: str) -> None:
    """``audit --series``: the whole adapter per step, then each module's ranks over steps."""
    steps = result.steps
    print(clip(f"{folder}: {len(steps)} checkpoints (steps {', '.join(map(str, steps))}), "
               f"{len(result.modules)} modules in every checkpoint"))
    if any(x is not None for x in result.labels):
        print(clip("labels: " + ", ".join(f"step {s} = {result.label(i)}" for i, s in enumerate(steps))))
    print()
    print(f"{'step':>8} | {'directions':>10} | {'rec. median':>11} | {'k(.90) mean':>11} | "
          f"{'k(.99) mean':>11} | {'stable mean':>11} | {'phi next':>8} | {'phi last':>8}")
    print("-" * 100)
    def cell(row: dict, key: str, fmt: str) -> str:
        value = row.get(key)
        return "-" if value is None else format(value, fmt)

    for row in result.adapter:
        print(f"{row['step']:>8} | {row['directions']:>10} | {cell(row, 'recommended_rank_median', 'g'):>11} | "
              f"{cell(row, 'energy_rank_0.9_mean', '.2f'):>11} | {cell(row, 'energy_rank_0.99_mean', '.2f'):>11} | "
              f"{cell(row, 'stable_rank_mean', '.2f'):>11} | {cell(row, 'phi_next_mean', '.4f'):>8} | "
              f"{cell(row, 'phi_last_mean', '.4f'):>8}")
    width = max(12, *(len(_name(m.name)) for m in result.modules)) if result.modules else 12
    print()
    print(f"{'module':<{width}} | recommended rank per step{'':<{max(0, 4 * len(steps) - 25)}} | "
          f"{'phi first->last':>15} | {'settled at':>10}")
    print("-" * (width + 4 * len(steps) + 40))
    for m in result.modules:
        ranks = " ".join(f"{k:>3}" for k in m.recommended_rank)
        print(f"{_name(m.name):<{width}} | {ranks:<{max(25, 4 * len(steps))}} | "
              f"{m.phi_last[0]:>15.4f} | {m.settled_step:>10}")
    print()
    print(f"settled at step {result.settled_step}: from there on no module's recommended rank "
          f"({result.rule} {result.value:g}) changed" + (
              " (it still changed at the last checkpoint)" if result.settled_step == steps[-1] and len(steps) > 1
              else ""))
    for note in result.notes:
        print(f"note: {note}")
    print(f"directions = sum of recommended ranks; k(t) = smallest k keeping share t of sum sigma^2 "
          f"of scale * B @ A; stable = sum sigma^2 / sigma_1^2;")
    print(f"phi = phi(k,k), k = min({result.top}, r), on the right singular vectors of the A factors "
          f"(Hu et al. 2022, sec. 7.2) with the next / the last checkpoint.")


def _check_output(path: str, *, force: bool) -> None:
    from pathlib import Path

    out = Path(path)
    if out.is_dir():
        raise LoraRankError(f"--html {path} is a folder; give a file name such as report.html")
    if out.exists() and not force:
        raise LoraRankError(f"--html {path} exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise LoraRankError(f"--html {path}: no such folder {out.parent}")


def _write_audit_html(report, path: str, *, source: str) -> None:
    """The report the Adapter audit page downloads, for the page's default settings."""
    from pathlib import Path

    from .charts.report import audit_charts
    from .report import audit_report

    rule_text = f"{report.rule} {report.value:g}" if report.rule != "entropy" else "entropy rank"
    detected = report.detected
    facts = [("format", f"{detected['format']} ({detected.get('source', report.source)})"),
             ("orientation", detected["orientation"]), ("scaling", report.scaling),
             ("dtype", ", ".join(detected["dtypes"])),
             ("modules", f"{detected['modules']:,} (ranks {', '.join(map(str, detected['ranks']))})"),
             ("parameters", f"{detected['params']:,} in the factors")]
    from .against_base import report_blocks

    html = audit_report(audit_document([report]), source=source, facts=facts,
                        charts=audit_charts(report, rule_text=rule_text), extra=report_blocks(report))
    written = write_text(Path(path), html)  # whole or nothing; undecodable names as \udcXX
    print(clip(f"wrote {path} ({written / 1e6:.1f} MB)"), file=sys.stderr)


# ---------------------------------------------------------------------------------- resize
def _cmd_resize(args: argparse.Namespace) -> int:
    from .adapters import save_adapter
    from .resize import resize_adapter

    (adapter,) = _audit_load([args.path])
    base = None
    if args.base is not None:
        from .base import open_base

        base = open_base(args.base)
    rules = {"energy": args.energy, "sv_ratio": args.sv_ratio, "sv_fro": args.sv_fro,
             "sv_cumulative": args.sv_cumulative}
    rule = next((r for r, v in rules.items() if v is not None), None)
    if args.rank is not None:
        result = resize_adapter(adapter, rank=args.rank, max_rank=args.max_rank, base=base, dtype=args.dtype)
    else:
        result = resize_adapter(adapter, rule=rule, value=rules[rule], max_rank=args.max_rank, base=base,
                                dtype=args.dtype)
    fmt = "npz" if args.output.lower().endswith(".npz") else None
    written = save_adapter(result.adapter, args.output, format=fmt, dtype=args.dtype, overwrite=args.force)
    worst = max(result.errors.items(), key=lambda kv: kv[1])
    print(f"resized {result.changed} of {len(adapter.modules)} modules; {result.params_before:,} -> "
          f"{result.params_after:,} parameters; retained energy {result.retained_energy:.4f}; "
          f"largest truncation error {worst[1]:.4f} ({_name(worst[0])})")
    for note in result.notes:
        print(clip(f"note: {note}"))
    if rule in ("sv_ratio", "sv_fro", "sv_cumulative"):
        print(clip(f"note: {_kohya_difference(adapter, result, rule, rules[rule], args.max_rank)}"))
    print(clip("wrote " + ", ".join(str(p) for p in written)))
    return 0


def _kohya_difference(adapter, result, rule: str, value: float, max_rank: int | None) -> str:
    """What kohya's own resize_lora.py (main) would keep under the same rule, in one sentence."""
    from .audit import module_spectrum
    from .resize import kohya_main_rank

    more = extra = 0
    for m in adapter.modules:
        if result.ranks.get(m.name, 0) == 0 or m.scale == 0:
            continue
        s = module_spectrum(m) / abs(m.scale)  # kohya's rules see up @ down, without the scale
        k = kohya_main_rank(s, rule=rule, value=value, min_dim=min(m.shape),
                            new_rank=max_rank if max_rank is not None else m.rank)
        if k > result.ranks[m.name]:
            more += 1
            extra += (k - result.ranks[m.name]) * sum(m.shape)
    cap = f"--new_rank {max_rank}" if max_rank is not None else "--new_rank at the stored rank"
    return (f"kohya's resize_lora.py (sd-scripts main) with --dynamic_method {rule} --dynamic_param {value:g} "
            f"and {cap} would keep one direction more in {more} of {len(adapter.modules)} modules "
            f"({extra:,} more parameters); lorarank keeps exactly the rule's k (sd-scripts PR #2194 does too "
            f"for sv_fro and sv_cumulative)")


# --------------------------------------------------------------------------------- extract
def _cmd_extract(args: argparse.Namespace) -> int:
    return finetune_cli.run_extract(args, print_json=_print_json)


# ------------------------------------------------------------------------ mitigate, convert
def _cmd_mitigate(args: argparse.Namespace) -> int:
    from .adapters import save_adapter
    from .base import open_base
    from .mitigate import mitigate_adapter

    cache = cli_base.svd_cache(args)
    base = open_base(args.base)
    (adapter,) = _audit_load([args.path])
    result = mitigate_adapter(adapter, base, mitigation_lambda=args.mitigation_lambda, cache=cache,
                              **{k: v for k, v in (("top_k", args.top_k), ("epsilon", args.epsilon)) if v is not None})
    fmt = "npz" if args.output.lower().endswith(".npz") else None
    written = save_adapter(result.adapter, args.output, format=fmt, overwrite=args.force)
    if args.json:
        _print_json({**result.to_dict(), "written": [str(p) for p in written]})
        return 0
    cli_base.print_mitigation(result, written)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .adapters import save_adapter
    from .base import open_base
    from .inits import convert_adapter

    base = open_base(args.base)
    (adapter,) = _audit_load([args.path])
    converted = convert_adapter(adapter, base, replay=args.replay)
    written = save_adapter(converted, args.output, format="peft", overwrite=args.force)
    cli_base.print_conversion(adapter, converted, written)
    return 0


# --------------------------------------------------------------------------------- compare
def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_adapters

    (a,) = _audit_load([args.path_a])
    (b,) = _audit_load([args.path_b])
    result = compare_adapters(a, b)
    if args.json:
        _print_json(result.to_dict())
        return 0
    print(clip(f"A: {a.source} (rank {', '.join(map(str, a.ranks))}), B: {b.source} "
               f"(rank {', '.join(map(str, b.ranks))}); {len(result.modules)} shared modules, "
               f"{len(result.only_a)} only in A, {len(result.only_b)} only in B"))
    if result.undefined:
        print(f"not compared: {len(result.undefined)} shared modules are exactly zero in A or B (a zero "
              f"update has no directions; phi is undefined), e.g. {_name(result.undefined[0])}")
    width = max(12, *(len(_name(m.name)) for m in result.modules))
    print()
    print(f"{'module':<{width}} | {'r_a':>4} | {'r_b':>4} | {'phi(1,1)':>8} | {'phi(k,k)':>8} | {'k':>2} | "
          f"{'chance':>7} | {'min angle':>9}")
    print("-" * (width + 66))
    for m in result.modules:
        angle = math.degrees(m.angles[0]) if m.angles.size else 90.0
        print(f"{_name(m.name):<{width}} | {m.rank_a:>4} | {m.rank_b:>4} | {m.phi[0, 0]:>8.4f} | "
              f"{m.top_overlap:>8.4f} | {m.top:>2} | {m.chance:>7.4f} | {angle:>8.2f}d")
    s = result.summary
    print()
    print(f"top-direction overlap phi(k,k): mean {s['top_overlap']['mean']:.4f} (min "
          f"{s['top_overlap']['min']:.4f}, max {s['top_overlap']['max']:.4f}); chance level "
          f"{s['chance_mean']:.4f}")
    print("phi(i,j) = ||U_i^T V_j||_F^2 / min(i,j) on the right singular vectors of the A factors "
          "(Hu et al. 2022, sec. 7.2): 1 = same directions, chance = k / d_in.")
    return 0


# ------------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code."""
    for stream in (sys.stdout, sys.stderr):
        # A file name that is not UTF-8 (kept by Python as surrogates) prints as \udcXX
        # instead of raising UnicodeEncodeError half way through a table.
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # pragma: no cover - a stream that cannot change
                pass
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
    except FileExistsError as exc:
        message = f"{exc.filename} already exists; choose another output (or --force)"
    except MemoryError:
        message = "out of memory"
    except BrokenPipeError:
        return 0
    except OSError as exc:
        message = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    except RecursionError:  # never expected: every parser bounds its nesting
        message = "the input nests too deeply to read"
    print(f"lorarank: error: {clip(message)}", file=sys.stderr)
    return 2


def main_exit() -> None:
    """Console-script entry point (``lorarank ...`` after ``pip install .``)."""
    sys.exit(main())
