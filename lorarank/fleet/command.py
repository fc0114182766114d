"""``lorarank fleet SOURCE ...``: the fleet from a terminal (parser and handler).

Kept apart from :mod:`lorarank.cli` so that building the parser imports nothing heavy: the
handler imports the engine when it runs. Exit codes: 0 when every member is ok, 1 when some
failed (their rows say why), 2 for bad options (one line ``lorarank: error: ...``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

__all__ = ["add_parser", "run"]

_DEFAULT_CAPS = "8,16,32,64,128"


def add_parser(sub, parser_class) -> None:
    """Register the ``fleet`` subcommand on ``sub`` (argparse subparsers)."""
    p = sub.add_parser(
        "fleet", help="audit many adapters at once; the serving rank cap that fits them",
        description="One row per adapter: stored and recommended ranks, the energy kept at serving "
                    "caps, parameters and bytes; the rank-cap planner; shrunk or padded copies. "
                    "Exit 0 when every adapter is ok, 1 when some failed, 2 for bad options.")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="a file or folder (every adapter under it), a quoted glob, "
                        "hf://owner/name[@rev][/sub], hf://owner/* (every adapter repo of a user or "
                        "organisation), or \"hf://?author=ORG&base_model=OWNER/NAME&search=TEXT&limit=N\"")
    p.add_argument("--screen", action="store_true",
                   help="ranks, shapes and dtypes from the safetensors headers alone (on the Hub: "
                        "the header's byte range); no spectra, no energy")
    p.add_argument("--rule", default="energy",
                   help="rank rule: energy, sv_ratio, sv_fro, sv_cumulative, entropy (default %(default)s)")
    p.add_argument("--value", type=float, default=0.99, help="the rule's value (default %(default)s)")
    p.add_argument("--caps", default=_DEFAULT_CAPS,
                   help="serving caps whose kept energy each row reports (default %(default)s)")
    p.add_argument("--cap", type=int, default=None, metavar="N",
                   help="the serving cap to plan for (vLLM max_lora_rank): which fit, what the rest keep")
    p.add_argument("--keep", type=float, default=None, metavar="T",
                   help="energy share an adapter must keep for the smallest-cap answer (default 0.99)")
    p.add_argument("--share", type=float, default=None, metavar="P",
                   help="share of the fleet that must keep it, 0-1 (default 0.9)")
    p.add_argument("--apply", metavar="OUT", default=None,
                   help="write each adapter's copy into OUT/<name>/: shrunk to --cap with the "
                        "existing resize, and/or padded to --pad-to")
    p.add_argument("--pad-to", type=int, default=None, metavar="R",
                   help="with --apply: pad every module to rank R with zeros (the update unchanged "
                        "bit for bit), for servers that hot-swap adapters of one rank")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=None, metavar="N",
                       help="local worker processes (default: one per core; 1 = this process)")
    where.add_argument("--ray", metavar="ADDR", default=None,
                       help="run on a Ray cluster (auto, ray://head:10001; pip install 'lorarank[ray]')")
    where.add_argument("--dask", metavar="ADDR", default=None,
                       help="run on Dask distributed (tcp://scheduler:8786; pip install 'lorarank[dask]')")
    p.add_argument("--cache", metavar="DIR", default=None,
                   help="keep rows by content hash in DIR: a rerun audits only what changed")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON document")
    out.add_argument("--csv", action="store_true", help="print the table as CSV")
    p.add_argument("--html", metavar="OUT", default=None, help="also write the self-contained HTML report")
    p.add_argument("--force", action="store_true", help="replace files that exist (--html, --apply)")
    p.set_defaults(handler=run)


def _caps(text: str) -> list[int]:
    from ..errors import ConfigError

    try:
        caps = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--caps should be comma-separated whole numbers, got {text!r}") from None
    if not caps:
        raise ConfigError(f"--caps should list at least one cap, got {text!r}")
    return caps


def _check(args) -> None:
    """Every option checked before any file is read or any Hub request made."""
    from pathlib import Path

    from ..errors import ConfigError

    if args.pad_to is not None and args.apply is None:
        raise ConfigError("--pad-to writes padded copies: give --apply OUT too")
    if args.apply is not None and args.cap is None and args.pad_to is None:
        raise ConfigError("--apply needs --cap N (shrink to the cap) and/or --pad-to R (pad)")
    if args.apply is not None and args.screen:
        raise ConfigError("--apply writes resized copies, which needs the full audit: drop --screen")
    for flag, value in (("--cap", args.cap), ("--pad-to", args.pad_to)):
        if value is not None and not 1 <= value <= 65_536:
            raise ConfigError(f"{flag} should be a rank from 1 to 65536, got {value}")
    if args.cap is not None and args.pad_to is not None and args.cap > args.pad_to:
        raise ConfigError(f"--cap {args.cap} is above --pad-to {args.pad_to}; pad to at least the cap")
    if args.html is not None:
        out = Path(args.html)
        if out.is_dir():
            raise ConfigError(f"--html {args.html} is a folder; give a file name such as fleet.html")
        if out.exists() and not args.force:
            raise ConfigError(f"--html {args.html} exists; pass --force to replace it")
        if not out.parent.is_dir():
            raise ConfigError(f"--html {args.html}: no such folder {out.parent}")


def _progress_printer():
    """Progress on stderr: a rewritten line on a terminal, a line every 10 s otherwise."""
    tty = sys.stderr.isatty()
    last = [time.monotonic()]

    def show(p) -> None:
        now = time.monotonic()
        final = p.done == p.total
        if tty:
            if final or now - last[0] > 0.2:
                last[0] = now
                sys.stderr.write(f"\rfleet: {p.text()}\033[K" + ("\n" if final else ""))
                sys.stderr.flush()
        elif p.done and not final and now - last[0] > 10:
            last[0] = now
            print(f"fleet: {p.text()}", file=sys.stderr, flush=True)

    return show


def _line(text: object, limit: int = 100_000) -> str:
    """Text from files and folder names as one terminal-safe line: control characters (ANSI
    escapes, OSC 8 links, carriage returns) become spaces (:func:`lorarank.bounded.clip`)."""
    from ..bounded import clip

    return clip(text, limit)


def _print_table(rows, caps, plan) -> None:
    rows = [{**r, "source": _line(r["source"]), "format": _line(r.get("format") or ""),
             "family": _line(r.get("family") or ""), "error": _line(r.get("error") or "", 1000)} for r in rows]
    width = min(60, max([10, *(len(r["source"]) for r in rows)]))
    heads = [f"e@{c}" for c in caps]
    print(f"{'source':<{width}} | {'format':<9} | {'family':<12} | {'max r':>5} | {'rec. med':>8} | "
          + " | ".join(f"{h:>6}" for h in heads) + f" | {'params':>11} | status")
    print("-" * (width + 70 + 9 * len(caps)))
    for r in rows:
        src = r["source"] if len(r["source"]) <= width else "…" + r["source"][-(width - 1):]
        if not r["ok"]:
            print(f"{src:<{width}} | error: {r['error']}")
            continue
        rec = r["recommended_rank"].get("median") if r["recommended_rank"] else None
        energies = []
        for c in caps:
            e = r["energy_at_cap"].get(str(c)) if r["energy_at_cap"] else None
            energies.append(f"{'-' if e is None else format(e, '.4f'):>6}")
        print(f"{src:<{width}} | {r['format']:<9} | {r['family'][:12]:<12} | {r['max_rank'] or 0:>5} | "
              f"{'-' if rec is None else format(rec, 'g'):>8} | " + " | ".join(energies)
              + f" | {r['params']:>11,} | {'screened' if r['screened'] else 'ok'}"
              + (f" ({len(r['warnings'])} warning{'s' if len(r['warnings']) != 1 else ''})"
                 if r["warnings"] else ""))
    print()
    print(_line(plan.sentence()))
    print("max r = the largest module rank (what a server's max_lora_rank must allow); rec. med = median "
          "recommended rank; e@c = share of sum sigma^2 kept with every module cut to rank c.")


def run(args: argparse.Namespace) -> int:
    """The ``fleet`` handler: exit 0 (all ok), 1 (some failed)."""
    from ..errors import ConfigError
    from . import (ResultCache, apply_caps, expand_sources, fleet_csv, fleet_document, fleet_report,
                   plan_caps, run_fleet)
    from .plan import DEFAULT_KEEP, DEFAULT_SHARE
    from .rows import FleetOptions

    _check(args)
    options = FleetOptions(rule=args.rule, value=args.value, caps=tuple(_caps(args.caps)),
                           screen=args.screen)
    keep = DEFAULT_KEEP if args.keep is None else args.keep
    share = DEFAULT_SHARE if args.share is None else args.share
    plan_caps([], cap=args.cap, keep=keep, share=share)   # checks --keep / --share now
    if args.workers is not None and not 1 <= args.workers <= 1024:
        raise ConfigError(f"--workers should be from 1 to 1024, got {args.workers}")
    cache = ResultCache(args.cache) if args.cache else None
    expansion = expand_sources(args.sources)
    for note in expansion.notes:
        print(_line(f"note: {note}", 2000), file=sys.stderr)
    shown = _progress_printer()
    last = []

    def progress(p) -> None:
        last[:] = [p]
        shown(p)

    try:
        result = run_fleet(expansion.members, options, workers=args.workers, ray=args.ray, dask=args.dask,
                           cache=cache, progress=progress, notes=expansion.notes)
    except KeyboardInterrupt:
        done = last[0].done if last else 0
        kept = (f"; their rows are kept in {args.cache} (a rerun continues from there)" if cache is not None
                else "; with --cache DIR a rerun would continue from there")
        print(f"\nlorarank: stopped after {done} of {len(expansion.members)} adapters{kept}", file=sys.stderr)
        return 130
    if cache is not None and cache.write_error:
        print(f"note: the cache could not be written, so a rerun audits again ({cache.write_error})",
              file=sys.stderr)
    plan = plan_caps(result.rows, cap=args.cap, keep=keep, share=share, caps=options.caps)
    doc = fleet_document(result, plan, options=options)
    print(f"fleet: {len(result.rows)} adapters, {result.audited} {'screened' if options.screen else 'audited'}"
          f" ({result.executor}, {result.workers} worker{'s' if result.workers != 1 else ''}"
          f"{f', {result.tasks} tasks' if result.executor != 'serial' else ''}), "
          f"{result.cached} from the cache, {result.failed} failed, {result.seconds:.2f} s",
          file=sys.stderr)
    if args.apply is not None:
        records = apply_caps(expansion.members, result.rows, args.apply, cap=args.cap, pad_to=args.pad_to,
                             overwrite=args.force)
        doc["applied"] = records
        written = sum(1 for r in records if r["ok"])
        print(f"fleet: wrote {written} of {len(records)} adapters into {args.apply}", file=sys.stderr)
        for r in records:
            if not r["ok"] and r["error"] and not r["error"].startswith("not written"):
                print(_line(f"fleet: {r['source']}: {r['error']}", 2000), file=sys.stderr)
    if args.html is not None:
        from pathlib import Path

        from ..bounded import clip, write_text

        write_text(Path(args.html), fleet_report(doc))  # whole or nothing (a temporary file, renamed)
        print(clip(f"wrote {args.html}"), file=sys.stderr)
    if args.json:
        sys.stdout.write(json.dumps(doc, allow_nan=False) + "\n")
    elif args.csv:
        sys.stdout.write(fleet_csv(result.rows, options.caps))
    else:
        _print_table(result.rows, options.caps, plan)
    failed = result.failed or (args.apply is not None and any(not r["ok"] for r in doc["applied"]))
    return 1 if failed else 0
