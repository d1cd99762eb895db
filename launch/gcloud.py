"""Running ``gcloud`` argv lists, echoed shell-quoted so they paste into a shell.

SSH to many TPU workers fails now and then for passing reasons (exit 255, "Connection closed"),
so only those are retried, with exponential backoff.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import List, Sequence, TextIO

from chinchax.errors import LaunchError


SSH_FAILURE_EXIT_CODE = 255
INSTALL_HINT = ("install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install), then run "
                "`gcloud auth login` and `gcloud config set project PROJECT`")
LOGIN_HINT = ("run `gcloud auth login` (or `gcloud auth activate-service-account --key-file=KEY.json`), "
              "then check with `gcloud auth list`")

# Lower-case fragments of messages meaning the network hiccuped and a retry may work.
TRANSIENT_MARKERS = (
    "connection closed",
    "connection reset",
    "connection timed out",
    "connection refused",
    "broken pipe",
    "kex_exchange_identification",
    "ssh_exchange_identification",
    "operation timed out",
    "network is unreachable",
    "temporary failure in name resolution",
    "could not resolve hostname",
    "service unavailable",
)


_FLAG = re.compile(r"^--[a-z][a-z0-9-]*=")


def _quote_token(token: str) -> str:
    match = _FLAG.match(token)
    if match:  # --command='...' reads better than '--command=...' and means the same
        return match.group(0) + shlex.quote(token[match.end():])
    return shlex.quote(token)


def format_command(argv: Sequence[str]) -> str:
    return " ".join(_quote_token(token) for token in argv)


def is_transient_failure(returncode: int, output: str) -> bool:
    if returncode == 0:
        return False
    if returncode == SSH_FAILURE_EXIT_CODE:
        return True
    text = output.lower()
    return any(marker in text for marker in TRANSIENT_MARKERS)


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all, with exponential backoff capped at ``max_delay_s``."""

    attempts: int = 4
    first_delay_s: float = 5.0
    factor: float = 2.0
    max_delay_s: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise LaunchError(f"retry attempts={self.attempts} must be at least 1", hint="use --retries 0 or more")
        if self.first_delay_s < 0 or self.factor < 1 or self.max_delay_s < 0:
            raise LaunchError("retry delays must be non-negative and grow", hint="first delay >= 0, factor >= 1")

    def delays(self) -> List[float]:
        return [min(self.first_delay_s * self.factor ** i, self.max_delay_s) for i in range(self.attempts - 1)]


def require_gcloud(timeout_s: float = 60.0) -> str:
    """Path of a logged-in ``gcloud``, or a :class:`LaunchError` that says how to get one."""
    path = shutil.which("gcloud")
    if path is None:
        raise LaunchError("gcloud (the Google Cloud CLI) is not on PATH", hint=INSTALL_HINT)
    try:
        result = subprocess.run([path, "auth", "list", "--filter=status:ACTIVE", "--format=value(account)"],
                                capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"`gcloud auth list` did not answer within {timeout_s:.0f} s", hint=LOGIN_HINT) from None
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise LaunchError(f"`gcloud auth list` failed with exit code {result.returncode}: {detail}",
                          hint=INSTALL_HINT)
    if not result.stdout.strip():
        raise LaunchError("gcloud is not logged in (no active account)", hint=LOGIN_HINT)
    return path


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str = ""
    output_tail: str = ""


def _pump(stream, sink: TextIO, tail: deque) -> None:
    """Raw reads, so prompts without a newline show; the tail feeds errors and the retry check."""
    fd = stream.fileno()
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        text = chunk.decode(errors="replace")
        sink.write(text)
        sink.flush()
        tail.append(text)


class Gcloud:
    def __init__(self, *, dry_run: bool = False, retry: RetryPolicy = RetryPolicy()) -> None:
        self.dry_run = dry_run
        self.retry = retry
        self.out: TextIO = sys.stdout
        self.err: TextIO = sys.stderr
        self._ready = False

    def wait(self, seconds: float) -> None:
        """A method so tests can skip the waiting."""
        time.sleep(seconds)

    def ensure_ready(self) -> None:
        if not self.dry_run and not self._ready:
            require_gcloud()
            self._ready = True

    def note(self, text: str) -> None:
        """Printed as a shell comment so dry-run output stays pasteable."""
        print(f"# {text}", file=self.out if self.dry_run else self.err, flush=True)

    def run(self, argv: Sequence[str], *, retry: bool = True, capture: bool = False,
            check: bool = True, quiet: bool = False) -> CommandResult:
        """``capture`` keeps stdout; ``quiet`` hides stderr (for probes whose failure is an answer)."""
        line = format_command(argv)
        if self.dry_run:
            print(line, file=self.out, flush=True)
            return CommandResult(0)
        self.ensure_ready()
        delays = self.retry.delays() if retry else []
        attempt = 0
        while True:
            attempt += 1
            print(f"+ {line}", file=self.err, flush=True)
            result = self._run_once(argv, capture, io.StringIO() if quiet else self.err)
            if result.returncode == 0:
                return result
            if attempt <= len(delays) and is_transient_failure(result.returncode, result.output_tail):
                delay = delays[attempt - 1]
                print(f"# transient failure (exit code {result.returncode}); retrying in {delay:g} s "
                      f"(attempt {attempt + 1} of {len(delays) + 1})", file=self.err, flush=True)
                self.wait(delay)
                continue
            if not check:
                return result
            what = " ".join(argv[:5]) + (" ..." if len(argv) > 5 else "")
            last = (result.output_tail.strip().splitlines() or ["(no output)"])[-1]
            tries = f" after {attempt} attempts" if attempt > 1 else ""
            raise LaunchError(f"`{what}` failed with exit code {result.returncode}{tries}: {last}",
                              hint="read gcloud's message above; run with --dry-run to see every command, "
                              "and paste one into a shell to try it alone")

    def _run_once(self, argv: Sequence[str], capture: bool, err: TextIO) -> CommandResult:
        tail: deque = deque(maxlen=64)
        try:
            proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE if capture else None,
                                    stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise LaunchError(f"{argv[0]} is not on PATH", hint=INSTALL_HINT) from None
        pump = threading.Thread(target=_pump, args=(proc.stderr, err, tail), daemon=True)
        pump.start()
        stdout = proc.stdout.read().decode(errors="replace") if capture and proc.stdout else ""
        returncode = proc.wait()
        pump.join()
        return CommandResult(returncode, stdout, "".join(tail)[-4096:])
