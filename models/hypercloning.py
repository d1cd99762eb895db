"""HyperCloning (Samragh et al. 2024, "Scaling Smart", arXiv 2409.12903): widen a trained decoder
by an integer factor ``n`` so that, before its first step, it computes exactly the narrow model's
logits.  Hidden vectors become ``n`` side-by-side copies; the ``noisy`` variant adds noise that
cancels in the forward pass but not in the gradient, so the copies train apart."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from chinchax.errors import ModelError
from models.config import ModelConfig
from models.grow_shape import DEFAULT_NOISE_SCALE, check_factor, check_variant, grow_config

BLOCK_KERNELS = ("q", "k", "v", "o", "gate", "up", "down")
BLOCK_NORMS = ("attn_norm", "mlp_norm")

ParamName = Tuple[str, ...]


def param_name(path: Sequence[Any]) -> ParamName:
    """A leaf's name without layer indices and Variable wrappers: ``("blocks", "q", "kernel")``."""
    names: List[str] = []
    for key in path:
        name = getattr(key, "key", getattr(key, "name", None))
        if isinstance(name, str) and name != "value":
            names.append(name)
    return tuple(names)


def expected_shapes(cfg: ModelConfig) -> Dict[ParamName, List[Tuple[int, ...]]]:
    """Parameter name → shapes (one per layer when unscanned) of the model ``cfg`` builds."""
    from flax import nnx

    from models.build import abstract_model

    abstract = nnx.state(abstract_model(cfg), nnx.Param)
    shapes: Dict[ParamName, List[Tuple[int, ...]]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
        shapes.setdefault(param_name(path), []).append(tuple(leaf.shape))
    return shapes


def _check_params_match(params: Any, cfg: ModelConfig) -> None:
    """Every leaf of ``params`` has the name and shape the model ``cfg`` would build."""
    want = expected_shapes(cfg)
    have: Dict[ParamName, List[Tuple[int, ...]]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        have.setdefault(param_name(path), []).append(tuple(jnp.shape(leaf)))
    hint = ("the parameters come from a model of another shape: grow them with the ModelConfig "
            "they were trained with (the source run's config.yaml)")
    for name in sorted(set(want) | set(have)):
        if name not in have:
            raise ModelError(f"parameter {'/'.join(name)} is missing", hint=hint)
        if name not in want:
            raise ModelError(f"parameter {'/'.join(name)} is not part of this model "
                                    f"(tie_embeddings={cfg.tie_embeddings}, use_bias={cfg.use_bias})",
                                    hint=hint)
        if sorted(have[name]) != sorted(want[name]):
            raise ModelError(f"parameter {'/'.join(name)} has shape {have[name][0]} but the "
                                    f"config gives {want[name][0]}", hint=hint)


def _tile(x: jax.Array, n: int, axes: Sequence[int]) -> jax.Array:
    reps = [1] * x.ndim
    for axis in axes:
        reps[axis] = n
    return jnp.tile(x, reps)


def _cancelling_noise(key: jax.Array, w: jax.Array, n: int, scale: float,
                      grow_output: bool) -> jax.Array:
    """Noise shaped like the wide kernel whose ``n`` input blocks sum to zero per output block, so
    ``Σ_i x η_ij = 0`` on identical input copies; std ``scale × std(W/n)`` per layer."""
    *lead, d_in, d_out = w.shape
    copies_out = (n,) if grow_output else ()
    shape = (*lead, n, d_in, *copies_out, d_out)
    eta = jax.random.normal(key, shape, jnp.float32)
    eta = (eta - eta.mean(axis=len(lead), keepdims=True)) * math.sqrt(n / (n - 1))
    block_std = jnp.std(w.astype(jnp.float32), axis=(-2, -1), keepdims=True) / n
    block_std = block_std.reshape(*lead, *([1] * (len(shape) - len(lead))))
    eta = eta * (scale * block_std)
    return eta.reshape(*lead, n * d_in, (n if grow_output else 1) * d_out)


def _grow_leaf(name: ParamName, x: jax.Array, cfg: ModelConfig, n: int,
               noise: Optional[Callable[[jax.Array, bool], jax.Array]]) -> jax.Array:
    """One parameter, widened so that the function is unchanged."""
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    leaf = name[-1]
    if name == ("embed",):  # [V, D]: the residual stream starts as n exact copies
        wide = _tile(x32, n, [-1])
    elif name == ("head", "kernel"):  # [D, V]: input grown only, output (vocabulary) kept
        wide = _tile(x32, n, [-2]) / n
        if noise is not None:
            wide = wide + noise(x32, False)
    elif leaf == "kernel" and len(name) >= 2 and name[-2] in BLOCK_KERNELS:  # n copies × W/n = x W
        wide = _tile(x32, n, [-2, -1]) / n
        if noise is not None:
            wide = wide + noise(x32, True)
    elif leaf == "bias" and len(name) >= 2 and name[-2] in BLOCK_KERNELS:
        wide = _tile(x32, n, [-1])
    elif leaf == "scale" and len(name) >= 2 and name[-2] in BLOCK_NORMS:  # n copies: same RMS
        wide = _tile(x32, n, [-1])
    elif name == ("final_norm", "scale"):  # a tied head sums over n embedding copies
        wide = _tile(x32, n, [-1]) / (n if cfg.tie_embeddings else 1)
    else:
        raise ModelError(f"no HyperCloning rule for parameter {'/'.join(name)}",
                                hint="grow_params knows the layout in models/config.py; "
                                "a new parameter needs its own rule in models/hypercloning.py")
    return wide.astype(dtype)


def grow_params(params: Any, cfg: ModelConfig, factor: int, *, variant: str = "symmetric",
                noise_scale: float = DEFAULT_NOISE_SCALE, rng: Optional[jax.Array] = None,
                out_shardings: Any = None) -> Any:
    """The parameters of ``grow_config(cfg, factor)`` computing the same logits as ``params``, written
    straight into ``out_shardings``.  ``symmetric`` copies get equal gradients and updates, so they
    never separate; ``noisy`` adds cancelling noise (``noise_scale`` × each block's std) so they do."""
    n = check_factor(factor)
    check_variant(variant, noise_scale)
    _check_params_match(params, cfg)
    if out_shardings is not None:  # bring the narrow arrays onto the target mesh, sharded alike
        params = jax.device_put(params, jax.tree.map(
            lambda x, target: narrow_sharding(target, jnp.shape(x)), params, out_shardings))
    noisy = variant == "noisy" and noise_scale > 0
    key = jax.random.key(0) if rng is None else rng

    def grow(tree: Any, key: jax.Array) -> Any:
        leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
        keys = jax.random.split(key, max(len(leaves), 1))
        out = []
        for (path, x), leaf_key in zip(leaves, keys):
            noise = ((lambda w, grow_out, k=leaf_key: _cancelling_noise(k, w, n, noise_scale, grow_out))
                     if noisy else None)
            out.append(_grow_leaf(param_name(path), x, cfg, n, noise))
        return jax.tree_util.tree_unflatten(treedef, out)

    return jax.jit(grow, out_shardings=out_shardings, compiler_options=_compiler_options())(params, key)


def _compiler_options() -> Optional[Dict[str, Any]]:
    """Less LLVM effort on CPU: growth runs once, and XLA:CPU takes tens of seconds to optimise
    a dozen random-number generators (one per noisy kernel) at its default level."""
    if jax.default_backend() != "cpu":
        return None
    return {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def narrow_sharding(sharding: Any, shape: Tuple[int, ...]) -> Any:
    """A wide parameter's sharding applied to the narrow parameter's ``shape``: mesh axes that
    do not divide a narrow dimension are dropped from it (that dimension is replicated)."""
    if not isinstance(sharding, NamedSharding):
        return sharding
    mesh = sharding.mesh
    padded = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
    spec = []
    for dim, axes in zip(shape, padded):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        ways = math.prod(mesh.shape[name] for name in names)
        spec.append(axes if names and dim % ways == 0 else None)
    return NamedSharding(mesh, PartitionSpec(*spec))


def copy_blocks(x: jax.Array, n: int, axis: int) -> jax.Array:
    """``x`` with ``axis`` split into its ``n`` copies (a new axis of size ``n``), for inspection."""
    axis = axis % x.ndim
    return x.reshape(*x.shape[:axis], n, x.shape[axis] // n, *x.shape[axis + 1:])
