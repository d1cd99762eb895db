"""``chinchax`` command line: one sub-command per module, errors as one line plus a hint."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Sequence

from chinchax.errors import ChinchaxError


# Each module exposes ``register(subparsers)`` which adds its sub-command(s) and sets
# ``func`` on the parser to a callable taking the parsed namespace and returning an exit code.
COMMAND_MODULES = (
    "launch.cmd_allocate",
    "launch.cmd_train",
    "launch.cmd_fit",
    "launch.cmd_ladder",
    "launch.cmd_tpu",
    "launch.multihost_local",
    "launch.cmd_compile",
    "launch.cmd_grow",
    "launch.cmd_tokenize",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chinchax",
        description="Turn a compute budget into a trained language model, and runs into scaling laws.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # a sub-command not installed in this build
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args) or 0)
    except ChinchaxError as exc:
        if args.debug:
            raise
        print(f"chinchax {args.command}: error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {exc.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
