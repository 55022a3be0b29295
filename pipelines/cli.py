"""`m3w build | extract | inspect | train | demo`: a thin dispatcher.

Each command lives in its own module, which exposes `register(subparsers)` (adds its parser and sets
`func`). Modules are imported only when their command runs, so `m3w extract` never imports Ray or torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# command name → module defining `register(subparsers)`; help text shown without importing the module
COMMANDS: dict[str, tuple[str, str]] = {
    "build": ("pipelines.build", "build WebDataset shards from WARC/HTML/URL inputs on Ray"),
    "extract": ("pipelines.extract", "show the Document m3w makes of an HTML page or WARC file"),
    "inspect": ("pipelines.inspect", "stats | show | verify | grep | html over shards"),
    "train": ("pipelines.train", "stream shards into a Flamingo model"),
    "demo": ("pipelines.demo", "build, inspect and train a tiny model end to end on CPU"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="m3w", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    name = next((a for a in argv if a in COMMANDS), None)
    for command, (module, help_text) in COMMANDS.items():
        if command == name:
            importlib.import_module(module).register(sub)
        else:
            sub.add_parser(command, help=help_text, add_help=False)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
