"""Adaptive federated optimisation (Reddi et al., ICLR 2021): FedAdam, FedYogi, FedAdagrad.

The clients are FedAvg's. The server takes the change of FedAvg's weighted mean,
Δ = Σ n_c θ_c / Σ n_c − x, as a pseudo-gradient and steps with an adaptive optimiser:
m ← β₁·m + (1 − β₁)·Δ, then v by the variant (Adam: β₂·v + (1 − β₂)·Δ²; Yogi:
v − (1 − β₂)·Δ²·sign(v − Δ²); Adagrad: v + Δ²), then x ← x + η·m / (√v + τ).

This is the paper's Algorithm 2 as written, without Adam's bias correction: m starts at 0 and
v at τ² (the paper asks v₋₁ ≥ τ²). Why: the paper's tuned η and τ are for this form, and the
three variants then differ in v's update alone. (Flower's FedAdam divides by bias-correction
terms, so its numbers differ from these.) A first step moves every parameter by about η, so
η = 0.01 by default: on digits (6 clients, 10 rounds) Flower's η = 0.1 kept FedAdam at chance
for 2 rounds and FedAdagrad for 5 (η = 0.01: 0.85 and 0.87 after 10 rounds, FedAvg 0.89).
Only the parameters step; buffers (BatchNorm statistics) take the mean. The moments are
float64, 16 bytes a parameter on the server, checkpointed by ``state_dict``, so a resumed run
equals the uninterrupted one. Nodes still reduce their cohorts: the step starts from FedAvg's
weighted mean.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from strategies.api import (
    Algorithm,
    ClientUpdate,
    FedAvg,
    Params,
    check_number,
    parameter_shapes,
    register_algorithm,
    to_array_record,
    to_numpy_dict,
)


@dataclass(frozen=True)
class FedOptParams(Params):
    """The server's learning rate η, momentum β₁ and adaptivity τ (FedAdagrad's)."""

    eta: float = 0.01
    beta_1: float = 0.0
    tau: float = 1e-3

    def check(self) -> None:
        check_number("eta", self.eta, lambda v: v > 0, "must be a number > 0")
        check_number("beta_1", self.beta_1, lambda v: 0 <= v < 1, "must be in [0, 1)")
        check_number("tau", self.tau, lambda v: v > 0, "must be a number > 0")


@dataclass(frozen=True)
class FedAdamParams(FedOptParams):
    """FedAdagrad's, with momentum on and v's decay β₂ (FedAdam's and FedYogi's)."""

    beta_1: float = 0.9
    beta_2: float = 0.99

    def check(self) -> None:
        super().check()
        check_number("beta_2", self.beta_2, lambda v: 0 <= v < 1, "must be in [0, 1)")


class FedOpt(FedAvg):
    """FedAvg's weighted mean, then one adaptive step of the server on its pseudo-gradient;
    a subclass says how v moves."""

    params: FedOptParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first: dict[str, np.ndarray] = {}  # m per parameter, float64
        self.second: dict[str, np.ndarray] = {}  # v per parameter, float64

    @cached_property
    def parameters(self) -> dict[str, tuple[int, ...]]:
        """The arrays that step (those with a gradient); the others take the mean."""
        return parameter_shapes(self.job)

    @abstractmethod
    def second_moment(self, v: np.ndarray, squared: np.ndarray) -> np.ndarray:
        """v's update from this round's Δ²."""

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> ArrayRecord:
        mean = to_numpy_dict(super().aggregate(server_round, updates))
        eta, beta_1, tau = self.params.eta, self.params.beta_1, self.params.tau
        stepped = {}
        for name, x in to_numpy_dict(self.global_arrays).items():
            if name not in self.parameters:
                stepped[name] = mean[name]
                continue
            delta = mean[name].astype(np.float64) - x
            m = beta_1 * self.first.get(name, 0.0) + (1 - beta_1) * delta
            v = self.second_moment(self.second.get(name, np.full_like(delta, tau**2)), delta**2)
            self.first[name], self.second[name] = m, v
            stepped[name] = (x + eta * m / (np.sqrt(v) + tau)).astype(x.dtype)
        return to_array_record(stepped)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {
            **{f"m/{name}": m for name, m in self.first.items()},
            **{f"v/{name}": v for name, v in self.second.items()},
        }

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.first = {k[2:]: np.asarray(v) for k, v in state.items() if k.startswith("m/")}
        self.second = {k[2:]: np.asarray(v) for k, v in state.items() if k.startswith("v/")}


class FedAdagrad(FedOpt):
    """v sums every round's Δ²."""

    name = "fedadagrad"
    params_type = FedOptParams

    def second_moment(self, v: np.ndarray, squared: np.ndarray) -> np.ndarray:
        return v + squared


class FedAdam(FedOpt):
    """v is an exponential average of Δ²."""

    name = "fedadam"
    params_type = FedAdamParams
    params: FedAdamParams

    def second_moment(self, v: np.ndarray, squared: np.ndarray) -> np.ndarray:
        return self.params.beta_2 * v + (1 - self.params.beta_2) * squared


class FedYogi(FedAdam):
    """v moves towards Δ² by (1 − β₂)·Δ² a round, whatever its distance."""

    name = "fedyogi"

    def second_moment(self, v: np.ndarray, squared: np.ndarray) -> np.ndarray:
        return v - (1 - self.params.beta_2) * squared * np.sign(v - squared)


register_algorithm(Algorithm("fedadagrad", FedAdagrad))
register_algorithm(Algorithm("fedadam", FedAdam))
register_algorithm(Algorithm("fedyogi", FedYogi))
