"""``chinchax`` command line: one sub-command per module, every error one line plus a hint."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence

from chinchax.errors import ChinchaxError
from launch.args import Parser
from launch.runtime_env import reexec_with_allocator


def build_parser() -> argparse.ArgumentParser:
    # Imported after a possible re-execution, not twice; JAX stays inside the commands so
    # ``--help`` starts fast.
    from launch import (cmd_allocate, cmd_compile, cmd_export, cmd_fit, cmd_grow, cmd_ladder,
                        cmd_sample, cmd_tokenize, cmd_tpu, cmd_train, multihost_local)

    parser = Parser(
        prog="chinchax",
        description="Turn a compute budget into a trained language model, and runs into scaling laws.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in (cmd_allocate, cmd_train, cmd_fit, cmd_ladder, cmd_tpu, multihost_local, cmd_compile,
                   cmd_grow, cmd_sample, cmd_export, cmd_tokenize):
        module.register(sub)
    return parser


def _error(command: str, message: str, hint: Optional[str]) -> None:
    print(f"chinchax {command}: error: {message}", file=sys.stderr)
    if hint:
        print(f"  hint: {hint}", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    if argv is None:  # the real command line: maybe come back once under a faster allocator
        reexec_with_allocator(sys.argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        if isinstance(exc, ChinchaxError):
            _error(args.command, str(exc).splitlines()[0] if str(exc) else type(exc).__name__, exc.hint)
            return 2
        if isinstance(exc, OSError):  # a path named by a config or flag: missing, too long, not allowed
            what = f"{exc.strerror or type(exc).__name__}: {str(exc.filename or '')[:120]}"
            _error(args.command, what, "check the paths in the config and on the command line")
            return 2
        # A bug or an unforeseen failure: one line, the traceback on request.
        first = (str(exc).splitlines() or [""])[0][:300]
        _error(args.command, f"unexpected {type(exc).__name__}: {first}",
               "run again with --debug (chinchax --debug ...) for the traceback, and report it")
        return 1


if __name__ == "__main__":
    sys.exit(main())
