"""What ``benchmarks/mfu.py`` times: shapes, variants of one shape's step, and presets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from trainer_step import BenchmarkError

from models.config import ModelConfig


@dataclass(frozen=True)
class BenchShape:
    """One model to time (batch in sequences per device); ``remat_fallbacks`` are tried in order,
    after ``model.remat``, when the step does not fit."""

    name: str = "tiny"
    model: ModelConfig = field(default_factory=ModelConfig)
    seq_len: int = 256
    batch_per_device: int = 8
    remat_fallbacks: List[str] = field(default_factory=list)
    grad_accum_steps: int = 1

    def __post_init__(self) -> None:
        if self.seq_len <= 0 or self.batch_per_device <= 0:
            raise BenchmarkError(f"shape {self.name!r}: seq_len and batch_per_device must be positive",
                                 hint="use e.g. seq_len=2048, batch_per_device=8")


@dataclass(frozen=True)
class Variant:
    """A change to every shape's step: model fields, batch per device, accumulation."""

    name: str = "as_configured"
    model: Dict[str, Any] = field(default_factory=dict)
    batch_per_device: Optional[int] = None
    grad_accum_steps: int = 1

    def apply(self, shape: BenchShape) -> BenchShape:
        return BenchShape(shape.name, shape.model.replace(**self.model), shape.seq_len,
                          self.batch_per_device or shape.batch_per_device,
                          [] if self.model.get("remat") else list(shape.remat_fallbacks),
                          self.grad_accum_steps)


AS_CONFIGURED = [Variant()]
# One lease on one GPU: the shipped step, then one change at a time (cheapest memory first).
GPU_VARIANTS = [
    Variant("current", {"remat": "dots_no_batch", "head_backward": "float32"}),
    Variant("bf16_head", {"remat": "dots_no_batch"}),
    Variant("attention_dots", {"remat": "attention_dots"}),
    Variant("remat_none", {"remat": "none"}),
    Variant("remat_none_no_scan", {"remat": "none", "scan_layers": False}),
    Variant("remat_none_batch16_accum2", {"remat": "none"}, batch_per_device=16, grad_accum_steps=2),
]


@dataclass(frozen=True)
class Preset:
    """A sweep: shapes (smallest first, so a process-wide memory peak belongs to the shape just
    run) × variants, and the timing plan (warm-up steps, then ``repeats`` × ``steps``)."""

    shapes: List[BenchShape] = field(default_factory=list)
    warmup: int = 2
    steps: int = 5
    repeats: int = 3
    description: str = ""
    variants: List[Variant] = field(default_factory=lambda: list(AS_CONFIGURED))
    compiler_options: Dict[str, Any] = field(default_factory=dict)


def _gpu_model(d_model: int, n_layers: int, n_heads: int, d_ff: int, remat: str,
               attention: str) -> ModelConfig:
    return ModelConfig(vocab_size=32768, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                       d_ff=d_ff, compute_dtype="bfloat16", remat=remat, attention=attention)


def _accelerator_shapes(attention: str) -> List[BenchShape]:
    """≈125M, 350M and 1B SwiGLU decoders at T = 2048 with a 32k vocabulary.  By estimate each
    fits one H100 (75% of 80 GB) without remat (1B: 15 GB of parameters and AdamW state, ~30 GB of
    activations); the fallbacks save only the weight matmuls' outputs, then nothing."""
    fallbacks = ["dots_no_batch", "full"]
    return [
        BenchShape("125m", _gpu_model(768, 12, 6, 2048, "none", attention), 2048, 16, fallbacks),
        BenchShape("350m", _gpu_model(1024, 24, 8, 2816, "none", attention), 2048, 8, fallbacks),
        BenchShape("1b", _gpu_model(2048, 16, 16, 5632, "none", attention), 2048, 8, fallbacks),
    ]


def cpu_model(d_model: int, n_layers: int, n_heads: int, d_ff: int, **changes: Any) -> ModelConfig:
    return ModelConfig(**{"vocab_size": 256, "d_model": d_model, "n_layers": n_layers,
                          "n_heads": n_heads, "d_ff": d_ff, **changes})


PRESETS: Dict[str, Preset] = {
    "h100": Preset(_accelerator_shapes("cudnn")[-1:], warmup=2, steps=5, repeats=3,
                   description="one GPU, 1B, bf16, cuDNN attention, seq 2048: the step's variants",
                   variants=GPU_VARIANTS),
    "h100-sizes": Preset(_accelerator_shapes("cudnn"), warmup=3, steps=10, repeats=5,
                         description="one GPU, bf16, cuDNN flash attention, seq 2048"),
    # Vocabulary 251: prime, so no other dimension of the program shares its size.
    "h100-toy": Preset([BenchShape("toy", cpu_model(32, 2, 2, 64, vocab_size=251,
                                                     compute_dtype="bfloat16"), 32, 4)],
                       warmup=1, steps=1, repeats=2, variants=GPU_VARIANTS,
                       description="the h100 variants at toy size, on any device (tests)",
                       compiler_options={"xla_backend_optimization_level": 0,
                                         "xla_llvm_disable_expensive_passes": True}),
    "tpu": Preset(_accelerator_shapes("splash"), warmup=3, steps=10, repeats=5,
                  description="TPU, bf16, Pallas splash attention, seq 2048, FSDP over the chips"),
    "cpu": Preset([BenchShape("cpu-0.9m", cpu_model(128, 4, 4, 512), 256, 16),
                   BenchShape("cpu-3.4m", cpu_model(256, 4, 4, 1024), 256, 8),
                   BenchShape("cpu-12m", cpu_model(512, 4, 8, 1536), 256, 4)],
                  warmup=2, steps=3, repeats=5, description="host CPU, float32, XLA attention"),
    # Vocabulary-heavy (the head is 90% of the parameters): compare --loss-chunk 0 and 128.
    "cpu-vocab": Preset([BenchShape("cpu-vocab-9m", ModelConfig(vocab_size=32768, d_model=128,
                                                                n_layers=2, n_heads=4, d_ff=512),
                                    512, 4)],
                        warmup=1, steps=2, repeats=3, description="host CPU, 32k vocabulary"),
    "test": Preset([BenchShape("cpu-test", cpu_model(64, 2, 2, 128), 64, 4)],
                   warmup=1, steps=2, repeats=2, description="the smallest run, for the test suite"),
}
PRESETS["tiny"] = PRESETS["cpu"]


def _pick(known: Dict[str, Any], names: Optional[Sequence[str]], what: str) -> List[Any]:
    if not names:
        return list(known.values())
    missing = [n for n in names if n not in known]
    if missing:
        raise BenchmarkError(f"unknown {what}(s) {', '.join(missing)}",
                             hint=f"this preset has: {', '.join(known)}")
    return [known[n] for n in names]


def select_variants(preset: Preset, names: Optional[Sequence[str]] = None) -> List[Variant]:
    return _pick({v.name: v for v in preset.variants}, names, "variant")


def select_shapes(preset: Preset, names: Optional[Sequence[str]] = None, *,
                  batch: Optional[int] = None, remat: Optional[str] = None,
                  attention: Optional[str] = None, loss_chunk: Optional[int] = None,
                  compute_dtype: Optional[str] = None) -> List[BenchShape]:
    """The preset's shapes, filtered by name and with command-line overrides applied."""
    out = []
    for shape in _pick({s.name: s for s in preset.shapes}, names, "shape"):
        model_changes = {k: v for k, v in (("remat", remat), ("attention", attention),
                                           ("loss_chunk", loss_chunk),
                                           ("compute_dtype", compute_dtype)) if v is not None}
        out.append(BenchShape(shape.name, shape.model.replace(**model_changes), shape.seq_len,
                              batch or shape.batch_per_device,
                              [] if remat is not None else list(shape.remat_fallbacks)))
    return out
