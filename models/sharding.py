"""Device mesh and logical-axis sharding, as data.
Tensors name their dimensions with logical axes (``batch``, ``embed``, ``heads``, ...); rules map
them onto mesh axes (``data``, ``fsdp``, ``tensor``), so parallelism is a config edit, not a model
edit.  GSPMD does the rest, with constraints placed while :func:`activation_sharding` is active."""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import jax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from chinchax.errors import ModelError


MESH_AXES = ("data", "fsdp", "tensor")
LOGICAL_AXES = ("batch", "seq", "embed", "heads", "kv", "mlp", "vocab", "layers")

# [logical axis, mesh axes joined by commas ("" = replicated)]: FSDP shards every weight on
# its model dimension, tensor parallelism shards the wide (heads / kv / mlp / vocab) side,
# and the batch is split over both data-like axes.
DEFAULT_RULES: Tuple[Tuple[str, str], ...] = (
    ("batch", "data,fsdp"),
    ("seq", ""),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", ""),
)

Rules = Sequence[Sequence[str]]
"""Logical→mesh rules as plain data: ``[[logical, "axis" | "axis,axis" | ""], ...]``."""


def parse_rules(rules: Rules) -> Dict[str, Tuple[str, ...]]:
    """Validate rules and return ``{logical: (mesh axes...)}``."""
    parsed: Dict[str, Tuple[str, ...]] = {}
    for rule in rules:
        if isinstance(rule, str) or len(rule) != 2:
            raise ModelError(
                f"sharding rule {rule!r} is not a [logical, mesh-axes] pair",
                hint='write each rule as ["embed", "fsdp"]; "" replicates, "data,fsdp" splits over both',
            )
        logical, mesh_axes = rule
        if logical not in LOGICAL_AXES:
            raise ModelError(
                f"unknown logical axis {logical!r} in sharding rules",
                hint=f"logical axes are: {', '.join(LOGICAL_AXES)}",
            )
        if logical in parsed:
            raise ModelError(
                f"logical axis {logical!r} has two sharding rules", hint="keep one rule per axis"
            )
        axes = tuple(a.strip() for a in (mesh_axes or "").split(",") if a.strip())
        for axis in axes:
            if axis not in MESH_AXES:
                raise ModelError(
                    f"sharding rule for {logical!r} names unknown mesh axis {axis!r}",
                    hint=f"mesh axes are: {', '.join(MESH_AXES)} (comma-separated, or empty to replicate)",
                )
        parsed[logical] = axes
    return parsed


@dataclass(frozen=True)
class MeshConfig:
    """Mesh sizes per axis (``-1``: the rest of the devices) and the logical→mesh rules.
    ``data``/``fsdp``/``tensor`` are per slice (ICI); ``dcn_*`` multiply them across slices."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    dcn_data: int = 1
    dcn_fsdp: int = 1
    dcn_tensor: int = 1
    rules: List[List[str]] = field(default_factory=lambda: [list(rule) for rule in DEFAULT_RULES])

    def __post_init__(self) -> None:
        ici = (self.data, self.fsdp, self.tensor)
        for name, size in zip(MESH_AXES, ici):
            if not isinstance(size, int) or (size <= 0 and size != -1):
                raise ModelError(
                    f"mesh.{name}={size!r} must be a positive integer or -1",
                    hint="-1 means 'all the devices the other axes leave'",
                )
        if sum(size == -1 for size in ici) > 1:
            raise ModelError(
                f"more than one of mesh.data/fsdp/tensor is -1 ({ici})",
                hint="at most one axis can take 'the rest of the devices'",
            )
        for name in ("dcn_data", "dcn_fsdp", "dcn_tensor"):
            size = getattr(self, name)
            if not isinstance(size, int) or size <= 0:
                raise ModelError(
                    f"mesh.{name}={size!r} must be a positive integer",
                    hint=f"set mesh.{name}=1 on one slice",
                )
        parse_rules(self.rules)

    @property
    def dcn_shape(self) -> Tuple[int, int, int]:
        return (self.dcn_data, self.dcn_fsdp, self.dcn_tensor)

    def ici_shape(self, n_devices: int) -> Tuple[int, int, int]:
        """Per-slice axis sizes for ``n_devices`` devices in total, with ``-1`` resolved."""
        n_slices = math.prod(self.dcn_shape)
        ici = [self.data, self.fsdp, self.tensor]
        known = math.prod(s for s in ici if s != -1)
        if n_devices % n_slices or (n_devices // n_slices) % known:
            raise ModelError(
                f"mesh data={self.data} fsdp={self.fsdp} tensor={self.tensor} × dcn {self.dcn_shape} "
                f"does not fit {n_devices} devices",
                hint=f"choose sizes whose product (with dcn_*) divides {n_devices}, and set one of them to -1",
            )
        per_slice = n_devices // n_slices
        if -1 in ici:
            ici[ici.index(-1)] = per_slice // known
        if math.prod(ici) != per_slice:
            raise ModelError(
                f"mesh sizes {tuple(ici)} × dcn {self.dcn_shape} use {math.prod(ici) * n_slices} devices, "
                f"but {n_devices} are present",
                hint="make the sizes multiply to the device count, or set one axis to -1",
            )
        return (ici[0], ici[1], ici[2])


def make_mesh(cfg: MeshConfig, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh with Auto axis types (GSPMD constraints allowed); with
    ``dcn_*`` above 1 only the DCN-sized axes cross slices (off TPU each process is a slice)."""
    devices = list(jax.devices() if devices is None else devices)
    ici = cfg.ici_shape(len(devices))
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if math.prod(cfg.dcn_shape) == 1:
        return jax.make_mesh(ici, MESH_AXES, axis_types=axis_types, devices=devices)
    from jax.experimental import mesh_utils

    try:
        device_array = mesh_utils.create_hybrid_device_mesh(
            ici, cfg.dcn_shape, devices, process_is_granule=not hasattr(devices[0], "slice_index")
        )
    except (ValueError, AttributeError) as err:
        raise ModelError(
            f"cannot build a multi-slice mesh ici={ici} dcn={cfg.dcn_shape}: {err}",
            hint="dcn_* must multiply to the number of TPU slices (or processes); use dcn_*=1 on one slice",
        ) from err
    return Mesh(device_array, MESH_AXES, axis_types=axis_types)


def logical_to_mesh_spec(names: Sequence[Optional[str]], rules: Rules) -> PartitionSpec:
    """One tensor's logical axis names as a PartitionSpec.  A mesh axis used by an earlier
    dimension is dropped from later ones, so ``(batch, seq, embed)`` activations stay batch-sharded
    while ``embed`` weights are fsdp-sharded under the same rules."""
    table = parse_rules(rules)
    used: set = set()
    spec: List[object] = []
    for name in names:
        if name is None:
            spec.append(None)
            continue
        if name not in LOGICAL_AXES:
            raise ModelError(
                f"unknown logical axis {name!r}",
                hint=f"logical axes are: {', '.join(LOGICAL_AXES)}",
            )
        axes = tuple(a for a in table.get(name, ()) if a not in used)
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def _logical_names(variable: nnx.Variable) -> Optional[Tuple[Optional[str], ...]]:
    names = variable.get_metadata().get("out_sharding")
    return tuple(names) if names else None


def state_shardings(abstract_state: nnx.State, mesh: Mesh, rules: Rules):
    """NamedShardings shaped like ``abstract_state`` (e.g. ``nnx.state(model)``): usable as
    ``jax.jit`` in/out shardings.  Variables without logical names are replicated."""

    def to_sharding(variable: nnx.Variable) -> nnx.Variable:
        names = _logical_names(variable)
        spec = logical_to_mesh_spec(names, rules) if names else PartitionSpec()
        return variable.replace(NamedSharding(mesh, spec))

    return jax.tree.map(to_sharding, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def vocab_is_sharded(mesh: Mesh, rules: Rules) -> bool:
    """Whether the rules split the vocabulary over a mesh axis of size > 1 (then the
    vocab-parallel cross-entropy avoids gathering full logits)."""
    spec = logical_to_mesh_spec(("vocab",), rules)
    axes = spec[0] if len(spec) else None
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return any(mesh.shape[name] > 1 for name in names)


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
    return NamedSharding(mesh, logical_to_mesh_spec(("batch", "seq"), rules))


_ACTIVE: contextvars.ContextVar[Optional[Tuple[Mesh, Tuple[Tuple[str, str], ...]]]] = (
    contextvars.ContextVar("chinchax_activation_sharding", default=None)
)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """While tracing in this block, :func:`constrain` pins activations to ``rules``.  It also sets
    JAX's current mesh (jitted functions retrace inside); the rules are not in JAX's cache key, so use
    one set of rules per mesh."""
    parse_rules(rules)
    token = _ACTIVE.set((mesh, tuple((r[0], r[1]) for r in rules)))
    try:
        with jax.set_mesh(mesh):
            yield
    finally:
        _ACTIVE.reset(token)


def active_mesh_and_rules() -> Optional[Tuple[Mesh, Tuple[Tuple[str, str], ...]]]:
    """``(mesh, rules)`` of the innermost :func:`activation_sharding`, or None."""
    return _ACTIVE.get()


def target_platform() -> str:
    """The platform the traced program is for: the active mesh's devices (ahead-of-time
    compilation for a TPU from a CPU host), else where JAX computes."""
    active = _ACTIVE.get()
    if active is None:
        return jax.default_backend()
    return active[0].devices.flat[0].platform


def constrain(x: jax.Array, names: Sequence[Optional[str]]) -> jax.Array:
    """Sharding constraint from logical names; a no-op outside :func:`activation_sharding`."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(
        x, NamedSharding(mesh, logical_to_mesh_spec(names, rules))
    )
