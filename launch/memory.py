"""Will the run fit? A per-device lower bound, checked before compiling: float32 params, grads and
AdamW moments (16 B/param) over fsdp × tensor, one micro-batch's logits (unless chunked) and one
residual per layer. A refusal is never wrong; XLA's own check after compile judges a pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from chinchax.errors import ConfigError
from scaling.flops import count_params
from training.config import RunConfig

STATE_BYTES_PER_PARAM = 16
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GIB = 1024 ** 3


@dataclass(frozen=True)
class MemoryEstimate:
    state_bytes: float
    activation_bytes: float

    @property
    def total_bytes(self) -> float:
        return self.state_bytes + self.activation_bytes


def estimate_memory(run: RunConfig, n_devices: int) -> MemoryEstimate:
    data, fsdp, tensor = run.mesh.ici_shape(n_devices)
    dcn_data, dcn_fsdp, dcn_tensor = run.mesh.dcn_shape
    model = run.model
    state = STATE_BYTES_PER_PARAM * count_params(model) / (fsdp * tensor * dcn_fsdp * dcn_tensor)
    batch_shards = data * fsdp * dcn_data * dcn_fsdp
    tokens = run.global_batch / run.train.grad_accum_steps / batch_shards * run.train.seq_len
    width = DTYPE_BYTES.get(model.compute_dtype, 2)
    logits = 0 if model.loss_chunk else tokens * model.vocab_size / (tensor * dcn_tensor) * width
    residuals = tokens * model.d_model * model.n_layers * width
    return MemoryEstimate(state, logits + residuals)


def host_memory_bytes() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def device_memory_bytes() -> Optional[int]:
    """The runtime's limit, else the host's share on CPU."""
    import jax

    device = jax.local_devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # some backends do not implement it
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    host = host_memory_bytes()
    if device.platform == "cpu" and host:
        return host // jax.local_device_count()
    return None


def check_fits(run: RunConfig, n_devices: int, capacity: Optional[int]) -> MemoryEstimate:
    need = estimate_memory(run, n_devices)
    if capacity is not None and need.total_bytes > capacity:
        raise ConfigError(
            f"the model needs at least {need.total_bytes / GIB:.3g} GiB per device "
            f"({need.state_bytes / GIB:.3g} GiB parameters and optimiser, "
            f"{need.activation_bytes / GIB:.3g} GiB activations); a device has {capacity / GIB:.3g} GiB",
            hint="shrink model.vocab_size, d_model or n_layers, raise train.grad_accum_steps, "
            "or shard over more devices (mesh.fsdp)")
    return need


def check_memory(run: RunConfig) -> MemoryEstimate:
    """Call after JAX's distributed start."""
    import jax

    return check_fits(run, jax.device_count(), device_memory_bytes())
