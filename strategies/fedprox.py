"""FedProx (Li et al., MLSys 2020): FedAvg whose clients minimise their loss plus the proximal
term (μ/2)·‖w − w_global‖², which keeps each client near the model it started from.

Only the client's loss changes, so the server is FedAvg's, and μ = 0 is FedAvg bit for bit.
Not ported: the paper's tolerance of partial local work (every client here runs the job's
epochs or steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from strategies.api import (
    Algorithm,
    ClientAlgorithm,
    ClientContext,
    FedAvg,
    Params,
    TensorData,
    check_number,
    register_algorithm,
)


@dataclass(frozen=True)
class FedProxParams(Params):
    """The proximal weight μ."""

    mu: float = 0.01

    def check(self) -> None:
        check_number("mu", self.mu, lambda v: v >= 0, "must be a number >= 0 (0 = FedAvg)")


class FedProxClient(ClientAlgorithm[FedProxParams]):
    """FedAvg's client with the proximal term in its loss."""

    def prepare(
        self, ctx: ClientContext[FedProxParams], model: nn.Module, data: TensorData
    ) -> None:
        self.anchor = [p.detach().clone() for p in model.parameters()]

    def loss_term(self, ctx: ClientContext[FedProxParams], model: nn.Module) -> torch.Tensor | None:
        if ctx.params.mu == 0:
            return None
        pairs = zip(model.parameters(), self.anchor, strict=True)
        return ctx.params.mu / 2 * sum((p - start).pow(2).sum() for p, start in pairs)


class FedProx(FedAvg):
    """FedAvg's aggregation; the proximal term lives in the clients' loss."""

    name = "fedprox"
    params_type = FedProxParams


register_algorithm(Algorithm("fedprox", FedProx, FedProxClient))
