"""FedPM's client half: rebuild the frozen weights, train mask scores from logit(θ), send one
sampled mask coded against θ."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import ClassVar

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from torch import nn

from models.masked import (
    MaskRNG,
    draw_bool_mask,
    set_estimator,
    set_mask_rng,
    weight_hash,
)
from models.training import (
    TensorData,
    TrainResult,
    load_weights,
)
from strategies.core.client import ClientAlgorithm, ClientContext
from strategies.core.strategy import ARRAYS
from strategies.core.update import METRICS
from strategies.core.wire import (
    ClientState,
    Record,
    decoded_tensors,
)
from strategies.fedpm import theta_codec
from strategies.fedpm.klms_codec import (
    encode_masks_klms,
    kl_bits,
)
from strategies.fedpm.mask_codec import (
    encode_masks,
    pack_mask,
    prior_probabilities,
)
from strategies.fedpm.shared import (
    BASE_ROUND_STATE,
    BASE_STATE,
    CODE,
    ENCODE_METRIC,
    KEEP,
    KL_METRIC,
    MASK_STREAM,
    STREAM,
    TRAIN_MASK_STREAM,
    job_weight_seed,
    klms_keys,
    logit,
    seed_theta,
    sigmoid,
)
from strategies.numeric.arrays import to_array_record, to_numpy_dict


# ---------------------------------------------------------------------------------- client
class WeightMismatchError(RuntimeError):
    """The client's rebuilt frozen weights differ from the server's."""


class FedPMClient(ClientAlgorithm):
    """Trains mask scores from logit(θ_global), then sends one sampled mask, range-coded
    against θ_global or bit-packed."""

    keeps_state = True  # the θ the next coded downlink's delta is taken against

    local_hashes: ClassVar[dict[tuple[str, int], str]] = {}
    """Hash of the frozen weights per (model, weight seed), computed once per process: the same
    seed rebuilds the same weights, so every later client of the process would hash the same."""

    def __init__(self) -> None:
        self.priors: dict[str, np.ndarray] = {}
        self.coded_downlink = False
        self.keep = False

    def receive(self, ctx: ClientContext, model: nn.Module) -> None:
        job, client_id = ctx.job, ctx.client_id
        expected = job.params.get("weight_hash")
        key = (job.model, job_weight_seed(job))
        if key not in self.local_hashes:
            self.local_hashes[key] = weight_hash(model)
        local = self.local_hashes[key]
        if local != expected:
            raise WeightMismatchError(
                f"client {client_id}: frozen weights from weight_seed={job_weight_seed(job)} hash "
                f"to {local}, the server's hash is {expected!r}; numpy/torch versions differ?"
            )
        self.coded_downlink = theta_codec.CRC in ctx.content[ARRAYS]
        base = stored_base(ctx.state) if self.coded_downlink else None
        initial = functools.partial(seed_theta, job)
        self.priors, scores = received_theta(ctx.content[ARRAYS], base, initial)
        load_weights(model, scores)
        self.keep = ctx.records.get(KEEP) is not None
        set_estimator(model, ctx.params.estimator)

    def prepare(self, ctx: ClientContext, model: nn.Module, data: TensorData) -> None:
        """Every mask of this client's training draws from its own stream of the run seed."""
        set_mask_rng(model, MaskRNG(ctx.seed ^ TRAIN_MASK_STREAM, data.x.device))

    def optimizer(self, ctx: ClientContext, model: nn.Module) -> torch.optim.Optimizer:
        """Adam on the scores only (the frozen weights are buffers); the fused kernel, a quarter
        of the per-tensor loop's time on CPU."""
        return torch.optim.Adam(model.parameters(), lr=float(ctx.params.local_lr), fused=True)

    def reply(
        self, ctx: ClientContext, model: nn.Module, trained: TrainResult
    ) -> dict[str, Record]:
        job, client_id = ctx.job, ctx.client_id
        set_mask_rng(model, None)  # training is over: the working model forgets its stream
        if self.coded_downlink:
            keep_base(ctx.state, job.server_round, self.priors if self.keep else None)
        seed = ctx.seed ^ MASK_STREAM
        scores = {name: score.detach().cpu() for name, score in model.state_dict().items()}
        uplink = ctx.params.uplink_coding
        metrics = MetricRecord()
        if self.priors:
            probabilities = {name: sigmoid(s.numpy()) for name, s in scores.items()}
            metrics[KL_METRIC] = float(
                sum(kl_bits(q, self.priors[name]).sum() for name, q in probabilities.items())
            )
        if uplink == "packed":
            rng = MaskRNG(seed)
            packed = {
                k: pack_mask(draw_bool_mask(torch.sigmoid(s), rng).numpy())
                for k, s in scores.items()
            }
            return {ARRAYS: to_array_record(packed), METRICS: metrics}
        if not self.priors:
            raise RuntimeError(
                f"strategy.uplink_coding={uplink} needs the uint16 θ downlink "
                "(strategy.downlink_dtype=uint16): no prior to code the masks against"
            )
        if uplink == "range":
            rng = MaskRNG(seed)
            masks = {k: draw_bool_mask(torch.sigmoid(s), rng).numpy() for k, s in scores.items()}
        started = time.perf_counter()
        if uplink == "klms":
            coded, _ = encode_masks_klms(
                probabilities,
                self.priors,
                klms_keys(job, client_id, list(scores)),
                ctx.params.klms_settings(),
                np.random.default_rng(seed),
                ctx.device,
            )
        else:
            coded = encode_masks(masks, self.priors)
        metrics[ENCODE_METRIC] = time.perf_counter() - started
        return {
            ARRAYS: to_array_record({STREAM: coded.stream}),
            CODE: coded.header(),
            METRICS: metrics,
        }


def stored_base(state: ClientState) -> tuple[int, dict[str, np.ndarray]] | None:
    """The θ this client kept for the coded downlink, with its round (None: none kept)."""
    base, meta = state.get_arrays(BASE_STATE), state.get(BASE_ROUND_STATE)
    if base is None or not isinstance(meta, ConfigRecord):
        return None
    return int(meta["round"]), base


def keep_base(state: ClientState, server_round: int, priors: dict[str, np.ndarray] | None) -> None:
    """Keep this round's θ as the next coded downlink's base, or forget any kept one."""
    if priors is None:
        state.delete(BASE_STATE)
        state.delete(BASE_ROUND_STATE)
        return
    state.set_arrays(BASE_STATE, priors)
    state.set(BASE_ROUND_STATE, ConfigRecord({"round": server_round}))


class _LastTheta:
    """The most recent θ downlink and what it decodes to (a cohort's clients share one)."""

    record: ClassVar[ArrayRecord | None] = None
    base_round: ClassVar[int | None] = None  # a client without this base decodes for itself
    decoded: ClassVar[tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]] = ({}, {})


def received_theta(
    record: ArrayRecord,
    base: tuple[int, dict[str, np.ndarray]] | None = None,
    initial: Callable[[int], Mapping[str, np.ndarray]] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]:
    """The downlink as (uint16 priors, float32 scores to train from): a coded or uint16 θ gives
    both (scores = logit(q / 2¹⁶)); float scores give no prior. A coded θ is regenerated from
    the run seed by ``initial`` (the first round's), or rebuilt from the self-contained stream
    or against ``base``, the θ the client kept (every client that can rebuild it gets the same
    θ bit for bit); decoded once per record and base, so a client that could not decode it
    alone fails here as it would on its own device."""
    base_round = None if base is None else base[0]
    if _LastTheta.record is not record or _LastTheta.base_round != base_round:
        arrays = to_numpy_dict(record)
        if theta_codec.is_coded(arrays):
            arrays = theta_codec.decode(arrays, base, initial)
        if all(a.dtype == np.uint16 for a in arrays.values()):
            scores = {
                k: torch.from_numpy(logit(prior_probabilities(q)).astype(np.float32)).view(q.shape)
                for k, q in arrays.items()
            }
            _LastTheta.decoded = (arrays, scores)
        else:
            _LastTheta.decoded = ({}, {k: v.float() for k, v in decoded_tensors(record).items()})
        _LastTheta.record, _LastTheta.base_round = record, base_round
    return _LastTheta.decoded
