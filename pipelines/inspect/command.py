"""`m3w inspect stats|show|verify|grep|html TARGET`, `m3w inspect codes`: look inside shards before
spending GPU days on them, and read what each reason code of a report means.

TARGET is a shard file, a brace pattern (`shards/{000000..000099}.tar`) or a job directory (DESIGN §3).
Everything streams: about one sample's bytes in memory at a time. Each handler below parses its arguments and
makes one library call (pipelines/inspect_*.py); exit status is non-zero when the command found a
problem (a broken shard, a failed verification, no match, an unknown key).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from m3w_builder.errors import OutputError, UserError
from pipelines.cli_help import DefaultsFormatter
from pipelines.inspect.read import Target, resolve_target


def _target(args: argparse.Namespace) -> Target | None:
    try:
        return resolve_target(args.target)
    except FileNotFoundError as e:
        print(f"m3w inspect: {e}", file=sys.stderr)
        return None


def _progress(args: argparse.Namespace) -> bool:
    """A progress bar only for a person watching: not with --no-progress, not into a log file."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def cmd_stats(args: argparse.Namespace) -> int:
    from pipelines.inspect.stats import compute_stats, format_table, plot_histograms

    if args.plot:
        _require_matplotlib()  # before the whole read, not after it
    target = _target(args)
    if target is None:
        return 2
    try:
        stats = compute_stats(target, tokenizer=args.tokenizer, progress=_progress(args))
    except ValueError as e:  # a tokenizer that cannot be loaded (offline, typo)
        print(f"m3w inspect stats: {e}", file=sys.stderr)
        return 2
    print(json.dumps(stats.to_json(), indent=1) if args.json else format_table(stats))
    if args.plot:
        plot_histograms(stats, args.plot)
        print(f"histograms written to {args.plot}", file=sys.stderr)
    return 1 if stats.errors else 0


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError(
            "--plot needs matplotlib, which is not installed: pip install 'm3w[plot]'"
        ) from None


def cmd_codes(args: argparse.Namespace) -> int:
    from m3w_builder.reasons import format_registry

    print(format_registry(kind=args.kind))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from pipelines.inspect.verify import verify

    target = _target(args)
    if target is None:
        return 2
    report = verify(target, jobs=args.jobs, progress=_progress(args), decode=not args.no_decode)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        for problem in report.problems[: args.max_problems]:
            print(problem)
        if len(report.problems) > args.max_problems:
            print(f"... and {len(report.problems) - args.max_problems} more problems")
        counts = ", ".join(f"{c} {n}" for c, n in report.counts().items())
        status = "OK" if report.ok else f"FAILED: {len(report.problems)} problems ({counts})"
        print(
            f"verified {report.shards} shards, {report.docs:,} docs, {report.images:,} images, "
            f"{report.bytes:,} bytes: {status}"
        )
    return 0 if report.ok else 1


def cmd_show(args: argparse.Namespace) -> int:
    from pipelines.inspect.show import show

    if (args.key is None) == (args.index is None):
        print("m3w inspect show: give a KEY or --index N (not both)", file=sys.stderr)
        return 2
    target = _target(args)
    if target is None:
        return 2
    found = show(
        target,
        key=args.key,
        index=args.index,
        images_dir=Path(args.images) if args.images else None,
        width=args.width,
        out=sys.stdout,
        as_json=args.json,
    )
    if not found:
        what = f"key {args.key}" if args.key else f"index {args.index}"
        print(f"m3w inspect show: no document with {what} in {args.target}", file=sys.stderr)
    return 0 if found else 1


def cmd_grep(args: argparse.Namespace) -> int:
    from pipelines.inspect.show import grep

    try:
        re.compile(args.pattern)
    except re.error as e:
        print(f"m3w inspect grep: bad pattern {args.pattern!r}: {e}", file=sys.stderr)
        return 2
    target = _target(args)
    if target is None:
        return 2
    n, broken = grep(
        target,
        args.pattern,
        ignore_case=args.ignore_case,
        url_only=args.url_only,
        max_results=args.max,
        out=sys.stdout,
    )
    return 2 if broken else (0 if n else 1)  # as grep(1): 2 means an error occurred


def cmd_html(args: argparse.Namespace) -> int:
    from pipelines.inspect.html import write_gallery

    out = Path(args.out)
    if out.is_dir():
        raise OutputError(
            f"{out} is a folder; give the gallery's file name, e.g. {out / 'gallery.html'}"
        )
    if not out.parent.is_dir():
        raise OutputError(f"{out.parent} does not exist; create it or write the gallery elsewhere")
    target = _target(args)
    if target is None:
        return 2
    summary = write_gallery(
        target,
        args.out,
        n=args.n,
        sample=args.sample,
        seed=args.seed,
        progress=_progress(args),
    )
    print(f"wrote {args.out}: {summary}", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect", help="stats | show | verify | grep | html | codes over shards"
    )
    sub = parser.add_subparsers(dest="inspect_command", metavar="SUBCOMMAND", required=True)

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            formatter_class=DefaultsFormatter,
        )
        p.add_argument("target", help="a shard, a brace pattern or a job directory")
        p.set_defaults(func=func)
        return p

    p = add("stats", cmd_stats, "documents, images, tokens, sizes, formats, languages, drops")
    p.add_argument("--tokenizer", help="a transformers tokenizer id or path (default: whitespace)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--plot", metavar="FILE.png", help="write histograms (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = add("show", cmd_show, "one document in reading order, images as placeholders")
    p.add_argument("key", nargs="?", help="the document key (32 hex chars)")
    p.add_argument("--index", type=int, help="the N-th document of the target (from 0)")
    p.add_argument("--images", metavar="DIR", help="also write the document's images to DIR")
    p.add_argument("--width", type=int, help="wrap width (default: the terminal's)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the shard record as stored (schema m3w/2 or m3w/1)",
    )

    p = add("verify", cmd_verify, "schema, members, images, manifest and tar integrity")
    p.add_argument("--jobs", type=int, default=1, help="verify shards in N processes")
    p.add_argument(
        "--no-decode",
        action="store_true",
        help="check image headers only, not every pixel (fast; misses cut-off image data)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--max-problems", type=int, default=50, help="problems listed (all counted)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = add("grep", cmd_grep, "documents whose URL or text matches a regex")
    p.add_argument("pattern", help="a Python regular expression")
    p.add_argument("-i", "--ignore-case", action="store_true", help="match case-insensitively")
    p.add_argument("--url-only", action="store_true", help="match URLs only")
    p.add_argument(
        "--limit", "--max", dest="max", type=int, default=0, help="stop after N documents (0: all)"
    )

    p = add("html", cmd_html, "a self-contained HTML gallery of documents and stats")
    p.add_argument("out", metavar="OUT.html", help="the gallery file to write")
    p.add_argument("--limit", "--n", dest="n", type=int, default=50, help="documents to include")
    p.add_argument("--sample", action="store_true", help="a uniform random sample, not the first N")
    p.add_argument("--seed", type=int, default=0, help="seed for --sample")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "codes",
        help="every reason code a report can hold: kind, funnel step, meaning",
        description="The registry of reason codes (m3w_builder/reasons.py): input counters, "
        "progress counters and drop reasons, each with its funnel step and one-line meaning.",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("--kind", choices=("input", "progress", "drop"), help="only codes of this kind")
    p.set_defaults(func=cmd_codes)
