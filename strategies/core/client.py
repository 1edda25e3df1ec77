"""The client half of an algorithm, and what the runtime tells it about the client it serves.

The generic ClientApp builds one :class:`ClientContext` per client and round and calls the
algorithm's hooks in order: ``receive`` (the downlink into the model), ``prepare`` (a last change
before training), ``train`` (the local loop: by default today's mini-batch SGD, with the
algorithm's ``optimizer``, ``loss_term`` and ``before_step``), ``reply`` (the records sent up).
The defaults are FedAvg's client: load the global arrays, train, send the trained arrays back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

import torch
from flwr.app import RecordDict
from torch import nn

from models.training import TensorData, TrainResult, load_weights, train_epochs
from strategies.core.job import ClientJob
from strategies.core.params import Params
from strategies.core.tensor_arrays import ReplyRecord, TensorArrays
from strategies.core.update import ARRAYS
from strategies.core.wire import ClientState, Record, decoded_tensors

P = TypeVar("P", bound=Params)
"""An algorithm's parameter dataclass: ``ClientContext[FedProxParams]`` makes ``ctx.params.mu``
a checked attribute."""


@dataclass(frozen=True)
class ClientContext(Generic[P]):
    """One client in one round: who it is, its job and typed parameters, the state it keeps
    across rounds, where it trains, and the node message it arrived in."""

    client_id: int
    job: ClientJob
    params: P
    state: ClientState
    device: torch.device
    seed: int
    """This client's seed for this round (batches, masks: every draw of its round)."""
    content: RecordDict
    """The node message: the shared downlink records, and each hosted client's own."""
    records: dict[str, Record]
    """The downlink records addressed to this client alone (``client_records`` on the server
    side)."""


class ClientAlgorithm(Generic[P]):
    """Client half of a protocol: read the payload into a model, train, encode the reply.

    One instance serves one client for one round, so it may keep what ``receive`` saw for
    ``reply``; what must outlive the round goes to ``ctx.state``. Subclass it as
    ``ClientAlgorithm[MyParams]`` and its hooks' ``ctx.params`` is a ``MyParams``.
    """

    keeps_state: ClassVar[bool] = False
    """Whether the numbers depend on what this client keeps in ``ctx.state`` across rounds.
    True: the engine versions it by round (``strategies.core.client_state``), so a dropped
    reply or a resume rolls it back to what the server's aggregate saw. False: ``ctx.state``
    is a cache the engine may lose at any restart, for what no number depends on."""

    def receive(self, ctx: ClientContext[P], model: nn.Module) -> None:
        """Load the downlink payload into ``model`` (default: the dense global arrays)."""
        load_weights(model, decoded_tensors(ctx.content[ARRAYS]))

    def prepare(self, ctx: ClientContext[P], model: nn.Module, data: TensorData) -> None:
        """Last change to the received model before local training (default: none)."""

    def optimizer(self, ctx: ClientContext[P], model: nn.Module) -> torch.optim.Optimizer:
        """The local optimizer, fresh every round (default: SGD with the job's settings)."""
        job = ctx.job
        return torch.optim.SGD(
            model.parameters(), lr=job.lr, momentum=job.momentum, weight_decay=job.weight_decay
        )

    def loss_term(self, ctx: ClientContext[P], model: nn.Module) -> torch.Tensor | None:
        """A term added to each mini-batch's loss before the backward pass (default: none)."""
        return None

    def before_step(self, ctx: ClientContext[P], model: nn.Module) -> None:
        """Called after each backward pass, before the optimizer step: the place to change
        gradients (default: nothing)."""

    def train(self, ctx: ClientContext[P], model: nn.Module, data: TensorData) -> TrainResult:
        """Local training: the job's epochs (or ``local_steps``) of seeded mini-batches, with
        this algorithm's optimizer and hooks."""
        job = ctx.job
        return train_epochs(
            model,
            data,
            self.optimizer(ctx, model),
            job.local_epochs,
            job.batch_for(len(data)),
            ctx.seed,
            steps=job.local_steps,
            loss_term=lambda trained: self.loss_term(ctx, trained),
            before_step=lambda trained: self.before_step(ctx, trained),
        )

    def reply(
        self, ctx: ClientContext[P], model: nn.Module, trained: TrainResult
    ) -> dict[str, ReplyRecord]:
        """The records this client sends up after training (default: the trained arrays, as
        :class:`TensorArrays`: a node that reduces its cohort checks and adds them where they
        were trained; anywhere else they travel as the ArrayRecord of ``model.state_dict()``)."""
        return {ARRAYS: TensorArrays(model.state_dict())}
