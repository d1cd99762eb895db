"""Scaling laws as values: published ones by name, fitted ones from a JSON law file.

:class:`ParametricLaw` predicts a loss (``gamma > 0``: Zheng et al. 2024's CPT law);
:class:`PowerLawAllocation` (approaches 1 and 2) only allocates. Plain float math with the
papers' ``C = 6 N D``; the allocator corrects to the exact counter when it picks a shape.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from chinchax.errors import ScalingError


@dataclass(frozen=True)
class Allocation:

    flops: float
    n_params: float
    tokens: float
    loss: float | None

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.n_params


@dataclass(frozen=True)
class ParametricLaw:
    """``L(N, D) = E + A / N**alpha + B / (D**beta * N**gamma)``.

    ``samples``: optional bootstrap rows ``(E, A, B, alpha, beta, gamma)``, for intervals.
    """

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    gamma: float = 0.0
    name: str = "custom"
    source: str = ""
    samples: tuple[tuple[float, ...], ...] = field(default=(), repr=False, compare=False)

    form = "parametric"

    def loss(self, n_params: Any, tokens: Any) -> Any:
        n = np.asarray(n_params, dtype=np.float64)
        d = np.asarray(tokens, dtype=np.float64)
        out = self.E + self.A / n**self.alpha + self.B / (d**self.beta * n**self.gamma)
        return float(out) if np.ndim(out) == 0 else out

    @property
    def _exponent_sum(self) -> float:
        return self.alpha + self.beta - self.gamma

    def optimal_params(self, flops: float) -> float:
        """``N_opt = (alpha A / ((beta - gamma) B))**(1/s) (C/6)**(beta/s)``, ``s = alpha + beta - gamma``."""
        if self.beta <= self.gamma:
            raise ScalingError(
                f"law {self.name!r} has beta={self.beta} <= gamma={self.gamma}: loss falls "
                "forever with model size at fixed compute, so there is no optimum",
                hint="check the law's coefficients",
            )
        s = self._exponent_sum
        g = (self.alpha * self.A / ((self.beta - self.gamma) * self.B)) ** (1.0 / s)
        return g * (flops / 6.0) ** (self.beta / s)

    def allocate(self, flops: float) -> Allocation:
        n = self.optimal_params(flops)
        d = flops / (6.0 * n)
        return Allocation(flops=flops, n_params=n, tokens=d, loss=self.loss(n, d))

    @property
    def params_exponent(self) -> float:
        """``a`` in ``N_opt ∝ C**a``."""
        return self.beta / self._exponent_sum

    @property
    def tokens_exponent(self) -> float:
        """``b`` in ``D_opt ∝ C**b``."""
        return 1.0 - self.params_exponent

    def with_coefficients(self, row: Any) -> "ParametricLaw":
        values = list(row) + [self.gamma] * (6 - len(row))
        e, a, b, alpha, beta, gamma = (float(v) for v in values[:6])
        return ParametricLaw(e, a, b, alpha, beta, gamma, name=self.name, source=self.source)

    def sample_laws(self) -> list["ParametricLaw"]:
        return [self.with_coefficients(row) for row in self.samples]

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "samples"}
        out["form"] = self.form
        if self.samples:
            out["samples"] = [list(r) for r in self.samples]
        return out


@dataclass(frozen=True)
class PowerLawAllocation:
    """``N_opt = n_coef * C**a``, ``D_opt = d_coef * C**b``; under C = 6 N D only ``n_coef``, ``a`` free."""

    a: float
    n_coef: float
    name: str = "custom-power"
    source: str = ""

    form = "power"

    @property
    def b(self) -> float:
        return 1.0 - self.a

    @property
    def d_coef(self) -> float:
        return 1.0 / (6.0 * self.n_coef)

    @property
    def params_exponent(self) -> float:
        return self.a

    @property
    def tokens_exponent(self) -> float:
        return self.b

    def optimal_params(self, flops: float) -> float:
        return self.n_coef * flops**self.a

    def allocate(self, flops: float) -> Allocation:
        n = self.optimal_params(flops)
        return Allocation(flops=flops, n_params=n, tokens=flops / (6.0 * n), loss=None)

    def loss(self, n_params: Any, tokens: Any) -> Any:
        raise ScalingError(
            f"law {self.name!r} is an allocation power law and predicts no loss",
            hint="use a parametric law such as 'chinchilla' or 'epoch-2024' for loss predictions",
        )

    def to_dict(self) -> dict[str, Any]:
        return {"form": self.form, "a": self.a, "n_coef": self.n_coef, "name": self.name,
                "source": self.source}


Law = Union[ParametricLaw, PowerLawAllocation]

_HOFFMANN = "Hoffmann et al. 2022 (Chinchilla)"

# Approach-1 and approach-2 exponents are Table 2's; their coefficients are the geometric mean
# of N / C**a over the rows of Table 3 (approach 1) and Table A3 (approach 2).
PUBLISHED_LAWS: dict[str, Law] = {
    "chinchilla": ParametricLaw(
        E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, name="chinchilla",
        source=f"{_HOFFMANN}, approach 3, rounded coefficients as printed (eq. 10)",
    ),
    "chinchilla-unrounded": ParametricLaw(
        E=1.6934, A=406.4, B=410.7, alpha=0.33917, beta=0.28491, name="chinchilla-unrounded",
        source=f"{_HOFFMANN}, approach 3 with unrounded E, alpha, beta (Besiroglu et al. 2024); "
        "reproduces Table A3 within 5% up to 67B parameters (7% at 10T), where the rounded law is 18-30% low",
    ),
    "epoch-2024": ParametricLaw(
        E=1.8169, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658, name="epoch-2024",
        source="Besiroglu et al. 2024, 'Chinchilla Scaling: A replication attempt'",
    ),
    "zheng-2024": ParametricLaw(
        E=1.55, A=420.0, B=718.54, alpha=0.40, beta=0.300525, name="zheng-2024",
        source="Zheng et al. 2024, from scratch: E, A, alpha as printed; B, beta derived from "
        "their N_opt = 0.324 C^0.429 (see scaling/cpt.py)",
    ),
    "zheng-2024-cpt": ParametricLaw(
        E=1.55, A=420.0, B=433.3, alpha=0.40, beta=0.20, gamma=0.08, name="zheng-2024-cpt",
        source="Zheng et al. 2024, continual pre-training law as printed (D = continual-training tokens)",
    ),
    "chinchilla-approach1": PowerLawAllocation(
        a=0.50, n_coef=0.090153, name="chinchilla-approach1",
        source=f"{_HOFFMANN}, approach 1 (Table 2 exponent, Table 3 coefficient)",
    ),
    "chinchilla-approach2": PowerLawAllocation(
        a=0.49, n_coef=0.143721, name="chinchilla-approach2",
        source=f"{_HOFFMANN}, approach 2 (Table 2 exponent, Table A3 coefficient)",
    ),
}


def law_from_dict(data: dict[str, Any], name: str = "file") -> Law:
    """Accepts the ``law`` object of a law file or the file itself."""
    body = data.get("law", data) if isinstance(data, dict) else data
    if not isinstance(body, dict):
        raise ScalingError(f"law {name!r} is a JSON {type(body).__name__}, not an object",
                           hint="a law file holds an object with E, A, B, alpha, beta (chinchax fit --out)")
    form = body.get("form", "parametric")
    try:
        if form == "parametric":
            _require_finite(body, ("E", "A", "B", "alpha", "beta", "gamma"), name)
            samples = tuple(tuple(float(v) for v in row) for row in body.get("samples", ()))
            return ParametricLaw(**{key: float(body[key]) for key in ("E", "A", "B", "alpha", "beta")},
                                 gamma=float(body.get("gamma", 0.0)), name=str(body.get("name", name)),
                                 source=str(body.get("source", "")), samples=samples)
        if form == "power":
            _require_finite(body, ("a", "n_coef"), name)
            return PowerLawAllocation(
                a=float(body["a"]), n_coef=float(body["n_coef"]),
                name=str(body.get("name", name)), source=str(body.get("source", "")),
            )
    except (TypeError, ValueError) as exc:
        raise ScalingError(f"law {name!r} has a coefficient that is not a number ({exc})",
                           hint="regenerate it with 'chinchax fit --out'") from None
    except KeyError as missing:
        raise ScalingError(
            f"law {name!r} lacks the coefficient {missing.args[0]!r}",
            hint="a parametric law needs E, A, B, alpha, beta (gamma optional); "
            "a power law needs a and n_coef",
        ) from None
    raise ScalingError(f"law {name!r} has unknown form {form!r}", hint="use 'parametric' or 'power'")


def _require_finite(body: dict[str, Any], keys: tuple[str, ...], name: str) -> None:
    for key in keys:
        if key in body and not math.isfinite(float(body[key])):
            raise ScalingError(f"law {name!r} has a non-finite coefficient {key}={body[key]!r}",
                               hint="refit the law on more data, or fix that coefficient by hand")


# Laws fitted by chinchax itself and shipped in the package, by name (see law_files/README.md).
LAW_FILES_DIR = Path(__file__).with_name("law_files")
SHIPPED_LAWS: dict[str, Path] = {"embedded-byte": LAW_FILES_DIR / "embedded_byte.json"}


def law_file_data(name_or_path: str | Path) -> dict[str, Any] | None:
    """The JSON of a law file (shipped by name, or a path); ``None`` for a published law."""
    key = str(name_or_path)
    if key in PUBLISHED_LAWS:
        return None
    path = SHIPPED_LAWS.get(key, Path(key))
    if path.suffix != ".json" and not path.exists():
        raise ScalingError(
            f"unknown law {key!r}",
            hint="published laws: " + ", ".join(law_names()) + "; or a path to a law .json")
    if not path.is_file():
        raise ScalingError(f"law file {key} does not exist",
                           hint="pass a published law name or the JSON written by 'chinchax fit'")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScalingError(f"law file {key} is not valid UTF-8 JSON ({type(exc).__name__})",
                           hint="regenerate it with 'chinchax fit --out'") from None
    if not isinstance(data, dict):
        raise ScalingError(f"law file {key} is a JSON {type(data).__name__}, not an object",
                           hint="a law file holds an object with E, A, B, alpha, beta (chinchax fit --out)")
    return data


def get_law(name_or_path: str | Path) -> Law:
    key = str(name_or_path)
    if key in PUBLISHED_LAWS:
        return PUBLISHED_LAWS[key]
    data = law_file_data(key)
    assert data is not None
    return law_from_dict(data, name=key if key in SHIPPED_LAWS else Path(key).stem)


def law_names() -> list[str]:
    return sorted([*PUBLISHED_LAWS, *SHIPPED_LAWS])
