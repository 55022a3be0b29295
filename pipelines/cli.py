"""`m3w build | extract | inspect | export | train | eval | demo`: a thin dispatcher.

Each command lives in its own module, which exposes `register(subparsers)` (adds its parser and sets
`func`). Modules are imported only when their command runs, so `m3w extract` never imports Ray or torch.

This is the one place where errors become messages (m3w_builder/errors.py): a `UserError` from any
command prints one line and exits 2; Ctrl-C exits 130 (a build says how to resume; `m3w train`
saves a checkpoint at the next step boundary and says so itself). `--debug`, or `--log-level DEBUG`,
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# command name → module defining `register(subparsers)`; help text shown without importing the module
COMMANDS: dict[str, tuple[str, str]] = {
    "build": ("pipelines.build.job", "build WebDataset shards from WARC/HTML/URL inputs on Ray"),
    "extract": ("pipelines.extract", "show the Document m3w makes of an HTML page or WARC file"),
    "inspect": (
        "pipelines.inspect.command",
        "stats | show | verify | grep | html | codes over shards",
    ),
    "export": ("pipelines.export", "write a job as a Hugging Face dataset (parquet or jsonl)"),
    "train": ("pipelines.train.loop", "stream shards into a Flamingo model"),
    "eval": ("pipelines.train.eval", "does a trained model use the images? ablations and few-shot"),
    "demo": ("pipelines.demo.run", "build, inspect and train a tiny model end to end on CPU"),
}


INTERRUPTED = {
    "build": "interrupted; run the same command again to resume",
    "train": "interrupted before a checkpoint was saved",
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("m3w")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def _unknown_arguments(
    parser: argparse.ArgumentParser,
    sub: argparse._SubParsersAction,
    args: argparse.Namespace,
    unknown: list[str],
) -> None:
    """A mistyped flag: the error and usage of the (sub)command it was given to, with the
    closest real flag. argparse would print the top-level usage, which does not list it."""
    import difflib

    target = sub.choices.get(args.command) if args.command else parser
    nested = getattr(args, "inspect_command", None)  # `m3w inspect stats --jsn`
    for action in getattr(target, "_actions", []):
        if isinstance(action, argparse._SubParsersAction) and nested in action.choices:
            target = action.choices[nested]
    flags = [o for a in target._actions for o in a.option_strings]
    hint = ""
    for arg in unknown:
        close = difflib.get_close_matches(arg.split("=", 1)[0], flags, n=1, cutoff=0.6)
        if close:
            hint = f" (did you mean {close[0]}?)"
            break
    target.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="m3w", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="console log level, also of the Ray workers (default: WARNING)",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks instead of one-line errors"
    )
    parser.add_argument("--version", action="version", version=f"m3w {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    name = next((a for a in argv if a in COMMANDS), None)
    for command, (module, help_text) in COMMANDS.items():
        if command == name:
            importlib.import_module(module).register(sub)
        else:
            sub.add_parser(command, help=help_text, add_help=False)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _unknown_arguments(parser, sub, args, unknown)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(
        level=getattr(logging, args.log_level, logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from m3w_builder.errors import UserError

    debug = args.debug or args.log_level == "DEBUG"
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        if debug:
            raise
        print(f"m3w {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `m3w inspect codes | head`: stop quietly, like other Unix filters
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        if debug:
            raise
        print(
            f"\nm3w {args.command}: {INTERRUPTED.get(args.command, 'interrupted')}", file=sys.stderr
        )
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
