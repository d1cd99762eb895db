"""SIGTERM as a flag: a TPU VM gets one before maintenance or spot reclaim.  Installed before
JAX is imported, so a signal during start-up or compilation is remembered."""

from __future__ import annotations

import signal
import threading
from typing import Any


class PreemptionGuard:
    """Turns SIGTERM into :attr:`requested`; main thread only (elsewhere a no-op)."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._previous: Any = None
        self._depth = 0

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested.set()

    def __enter__(self) -> "PreemptionGuard":
        if self._depth == 0 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        self._depth += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        self._depth -= 1
        if self._depth == 0 and self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
