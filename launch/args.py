"""``CONFIG [key=value ...]`` for every sub-command, overrides accepted after flags too."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Optional, Sequence

_INTERMIXED = "_chinchax_intermixed"


class Parser(argparse.ArgumentParser):
    """Parses intermixed when asked; ``add_parser`` uses the parent's class, so this reaches every
    sub-command."""

    _parsing_intermixed = False

    def parse_known_args(self, args: Optional[Sequence[str]] = None,  # type: ignore[override]
                         namespace: Optional[argparse.Namespace] = None) -> Any:
        if not getattr(self, _INTERMIXED, False) or self._parsing_intermixed:
            return super().parse_known_args(args, namespace)
        self._parsing_intermixed = True  # parse_known_intermixed_args calls us back
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._parsing_intermixed = False


def add_config_arguments(parser: argparse.ArgumentParser, *,
                         config_help: str = "experiment YAML, e.g. configs/cpu_tiny.yaml",
                         overrides_help: str = "dotted overrides, e.g. train.steps=300 model.d_model=256",
                         ) -> None:
    parser.add_argument("config", help=config_help)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=overrides_help)
    setattr(parser, _INTERMIXED, True)


def configure_logging() -> None:
    """Our own notices at INFO; JAX's backend probing and orbax's per-save chatter only when they
    warn (a ladder trains many runs in one process)."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    for name in ("chinchax", "launch", "training", "scaling", "models"):
        logging.getLogger(name).setLevel(logging.INFO)
