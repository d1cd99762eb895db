"""One exception family, a subclass per layer: every user-facing failure names the problem and,
in ``hint``, the fix, which the command line prints as two short lines instead of a traceback.
"""

from __future__ import annotations


class ChinchaxError(Exception):
    """Base of all user-facing errors: a message that names the problem, and a hint."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:  # str(e) stays the plain message; the CLI prints the hint
        return self.args[0] if self.args else ""


class ConfigError(ChinchaxError, ValueError):
    """A config file, override or command-line value that cannot be used."""


class ModelError(ChinchaxError, ValueError):
    """A model shape, mesh or growth that cannot be built."""


class ScalingError(ChinchaxError, ValueError):
    """Observations, laws, fits, allocations, predictions or ladders that do not hold up."""


class DataError(ChinchaxError, ValueError):
    """A data source, tokenizer or corpus that cannot be read."""


class CheckpointError(ChinchaxError, RuntimeError):
    """A checkpoint that cannot be saved or restored."""


class TrainingError(ChinchaxError, RuntimeError):
    """A run that cannot start or go on (optimiser settings, init, non-finite loss, ...)."""


class LaunchError(ChinchaxError, RuntimeError):
    """Processes, hosts, topologies or cloud commands that fail."""
