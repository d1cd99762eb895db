"""orbax checkpoints: keep-last-k plus every-N, async saves, restores onto any mesh (the
abstract tree's shardings), and a fallback past a damaged newest step, which is moved aside
(``corrupt-<step>-<time>``) rather than deleted.  Paths are ``etils.epath`` (``gs://`` works)."""

from __future__ import annotations

import os

import logging
import threading
import time
import warnings
from typing import Any, NamedTuple, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

from chinchax.errors import CheckpointError
from training.config import CheckpointConfig
from training.optim import key_name

log = logging.getLogger("chinchax.checkpoint")

STATE_ITEM = "state"
EXTRA_ITEM = "extra"
QUARANTINE_PREFIX = "corrupt-"


class CheckpointFallbackWarning(UserWarning):
    """The newest checkpoint could not be read; an older one was restored instead."""


class Restored(NamedTuple):
    state: Any
    extra: dict
    step: int


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``"a/b/c" -> stored shape`` for every leaf (typed PRNG keys as their key data)."""
    shapes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = getattr(leaf, "dtype", None)
        shape = tuple(getattr(leaf, "shape", ()))
        if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            shape = tuple(jax.eval_shape(jax.random.key_data, leaf).shape)
        shapes["/".join(key_name(k) for k in path)] = shape
    return shapes


def has_steps(directory: epath.Path) -> bool:
    """Whether ``directory`` holds a checkpoint step folder."""
    return directory.is_dir() and any(child.name.isdigit() for child in directory.iterdir())


def _mismatch_hint() -> str:
    return ("the checkpoint was written by a run with another model or optimiser config: start a "
            "new run directory, or restore the config.yaml the run was started with")


class Checkpointer:
    """``(state pytree, extra JSON)`` per step under one directory."""

    def __init__(self, directory: epath.PathLike, cfg: CheckpointConfig = CheckpointConfig()) -> None:
        path = str(directory)
        # orbax wants absolute paths
        self.directory = epath.Path(path if "://" in path else os.path.abspath(path))
        self.cfg = cfg
        policies: list[Any] = [ocp.checkpoint_managers.LatestN(n=cfg.keep_last)]
        if cfg.keep_every is not None:
            policies.append(ocp.checkpoint_managers.EveryNSteps(interval_steps=cfg.keep_every))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=cfg.async_save,
            cleanup_tmp_directories=True,  # unfinished saves of a killed run are not steps
            create=True,
        )
        try:
            self._manager = ocp.CheckpointManager(
                self.directory, options=options,
                item_handlers={STATE_ITEM: ocp.StandardCheckpointHandler(),
                               EXTRA_ITEM: ocp.JsonCheckpointHandler()})
        except Exception as error:  # permissions, unreachable bucket, a file where a dir should be
            raise CheckpointError(f"cannot open checkpoint directory {self.directory}: {error}",
                                  hint="check the path exists and is writable (for gs:// also the "
                                  "credentials), or choose another run directory") from error

    def due(self, step: int) -> bool:
        return step > 0 and step % self.cfg.every_steps == 0

    def save(self, step: int, state: Any, extra: Optional[dict] = None, *, force: bool = False) -> bool:
        """Returns once the arrays are off the device (safe to donate); with ``async_save`` the
        write goes on in the background.  An existing step is left as it is."""
        if not (force or self.due(step)):
            return False
        if step in self._manager.all_steps():
            log.debug("checkpoint step %d already exists in %s; not saving again", step, self.directory)
            return False
        args = ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state),
                                     EXTRA_ITEM: ocp.args.JsonSave(dict(extra or {}))})
        try:
            saved = self._manager.save(step, args=args, force=True)
        except Exception as error:
            raise CheckpointError(f"saving checkpoint step {step} to {self.directory} failed: {error}",
                                  hint="check free space and write access to the run directory; "
                                  "extra must be a JSON-serialisable dict") from error
        return bool(saved)

    def wait(self) -> None:
        """Block until background saves commit, at most ``save_timeout_s``."""
        _bounded(self._manager.wait_until_finished, self.cfg.save_timeout_s,
                 f"a background checkpoint save in {self.directory}")

    def all_steps(self) -> list[int]:
        """Committed steps, oldest first."""
        return sorted(self._manager.all_steps())

    def last_good_step(self) -> Optional[int]:
        """Read from the folder, not the manager, so it works after a failed save."""
        try:
            names = [p.name for p in self.directory.iterdir()]
        except OSError:
            return None
        remote = "://" in os.fspath(self.directory)
        steps = [int(n) for n in names if n.isdigit()
                 and (not remote or (self.directory / n / "commit_success.txt").exists())]
        return max(steps, default=None)

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def restore(self, step: Optional[int], abstract_state: Any, *, fallback: bool = True,
                require: tuple[str, ...] = ()) -> Restored:
        """``step`` None: the newest.  With ``fallback`` an unreadable step (or one whose ``extra``
        lacks a ``require`` key) is moved aside for the next older one; a tree or shape mismatch
        is a config error, not damage, and raises at once."""
        self.wait()
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}",
                                  hint="start the run without resuming, or point at the run "
                                  "directory that holds its checkpoints/")
        if step is None:
            step = steps[0]
        elif step not in steps:
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; it has "
                                  f"{sorted(steps)}", hint="choose one of the saved steps")
        candidates = [s for s in steps if s <= step]
        if not fallback:
            candidates = candidates[:1]

        expected = _leaf_shapes(abstract_state)
        failures: list[tuple[int, BaseException]] = []
        for candidate in candidates:
            try:
                metadata = self._manager.item_metadata(candidate)[STATE_ITEM]
                stored = _leaf_shapes(metadata.tree)
            except Exception as error:
                failures.append((candidate, error))
                continue
            self._check_compatible(candidate, stored, expected)
            try:
                restored = self._manager.restore(candidate, args=ocp.args.Composite(**{
                    STATE_ITEM: ocp.args.StandardRestore(abstract_state),
                    EXTRA_ITEM: ocp.args.JsonRestore()}))
            except Exception as error:
                failures.append((candidate, error))
                continue
            extra = dict(restored[EXTRA_ITEM] or {})
            missing = [key for key in require if key not in extra]
            if missing:
                failures.append((candidate, KeyError(f"extra/metadata lacks {missing}")))
                continue
            if failures:
                self._set_aside(failures, restored_step=candidate)
            return Restored(restored[STATE_ITEM], extra, candidate)

        damaged = ", ".join(f"step {s} ({type(e).__name__}: {str(e)[:200]})" for s, e in failures)
        raise CheckpointError(f"no readable checkpoint in {self.directory}: {damaged}",
                              hint="the files are damaged; start a new run directory, or restore "
                              "the checkpoints/ folder from a backup")

    def _check_compatible(self, step: int, stored: dict[str, tuple[int, ...]],
                          expected: dict[str, tuple[int, ...]]) -> None:
        for name, shape in expected.items():
            if name not in stored:
                raise CheckpointError(
                    f"checkpoint step {step} in {self.directory} has no leaf {name!r} "
                    f"that this run expects", hint=_mismatch_hint())
            if tuple(stored[name]) != tuple(shape):
                raise CheckpointError(
                    f"checkpoint step {step} in {self.directory} stores {name!r} with shape "
                    f"{tuple(stored[name])} but this run expects {tuple(shape)}", hint=_mismatch_hint())
        surplus = sorted(set(stored) - set(expected))
        if surplus:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} holds {len(surplus)} leaves this run "
                f"does not have, first {surplus[0]!r}", hint=_mismatch_hint())

    def _set_aside(self, failures: list[tuple[int, BaseException]], restored_step: int) -> None:
        """Damaged steps leave orbax's view so later saves can reuse their numbers."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for step, error in failures:
            warnings.warn(
                f"checkpoint step {step} in {self.directory} is unreadable "
                f"({type(error).__name__}: {str(error)[:200]}); restored step {restored_step} "
                f"instead and moved the damaged one to {QUARANTINE_PREFIX}{step}-{stamp}",
                CheckpointFallbackWarning, stacklevel=3)
        if jax.process_index() == 0:
            for step, _ in failures:
                source = self.directory / str(step)
                if source.exists():
                    source.rename(self.directory / f"{QUARANTINE_PREFIX}{step}-{stamp}")
        if jax.process_count() > 1:
            ocp.multihost.sync_global_processes("chinchax_checkpoint_set_aside")
        self._manager.reload()

    def close(self) -> None:
        """Finish background saves, at most ``save_timeout_s``."""
        _bounded(self._manager.close, self.cfg.save_timeout_s,
                 f"finishing checkpoint saves in {self.directory}")

    def abandon(self, timeout_s: float = 5.0) -> None:
        """After a failed save: give the manager ``timeout_s`` to close, then leave it."""
        try:
            _bounded(self._manager.close, timeout_s, "closing checkpoints")
        except CheckpointError as error:
            log.debug("checkpoint manager abandoned: %s", error)

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _bounded(fn: Any, timeout_s: float, what: str) -> None:
    """Run ``fn`` in a daemon thread; a failure or a wait past ``timeout_s`` is a CheckpointError."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    worker = threading.Thread(target=target, name="chinchax-checkpoint-wait", daemon=True)
    worker.start()
    worker.join(timeout_s)
    hint = "check free space and write access to the run directory"
    if worker.is_alive():
        raise CheckpointError(f"{what} did not finish within {timeout_s:g} s", hint=hint)
    if errors:
        raise CheckpointError(f"{what} failed: {errors[0]}", hint=hint) from errors[0]
