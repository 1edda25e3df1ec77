"""The pseudo-gradient family's client half: train like FedAvg, then send g = θ_start − θ_end,
compressed with error feedback, and under LBGM a scalar ρ per unit whose look-back gradient
still fits (``lbgm.py``)."""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, MetricRecord
from torch import nn

from models.training import TrainResult
from strategies.core.client import ClientAlgorithm, ClientContext
from strategies.core.strategy import ARRAYS
from strategies.core.update import METRICS
from strategies.core.wire import ClientState, Record
from strategies.numeric.arrays import to_array_record
from strategies.pseudo_gradient.compression import Codec
from strategies.pseudo_gradient.lbg_book import ClientLBGs
from strategies.pseudo_gradient.lbgm import CLIENT_COUNTS, LBGM, VERSIONS, projection, units_of
from strategies.pseudo_gradient.server import job_codec

RESIDUAL = "compress-residual"  # client state: error-feedback residual per layer


class PseudoGradientClient(ClientAlgorithm):
    """Trains like FedAvg, then sends the (compressed, LBGM-reduced) pseudo-gradient."""

    keeps_state = True  # the error-feedback residual and LBGM's look-back gradients

    def __init__(self) -> None:
        self.start: dict[str, np.ndarray] = {}
        self.server_versions: list[int] | None = None

    def receive(self, ctx: ClientContext, model: nn.Module) -> None:
        super().receive(ctx, model)
        self.start = {n: p.detach().cpu().numpy().copy() for n, p in model.named_parameters()}
        versions = ctx.records.get(VERSIONS)
        if isinstance(versions, ConfigRecord):
            self.server_versions = [int(v) for v in versions["versions"]]

    def reply(
        self, ctx: ClientContext, model: nn.Module, trained: TrainResult
    ) -> dict[str, Record]:
        job = ctx.job
        codec = job_codec(job)
        params = {n: p.detach().cpu().numpy() for n, p in model.named_parameters()}
        grads = {n: self.start[n] - params[n] for n in params}
        wires, sent = self._compress(codec, grads, ctx.params.error_feedback, ctx.state)
        arrays = {n: v for n, v in model.state_dict().items() if n not in params}
        records: dict[str, Record] = {}
        counts = dict.fromkeys(CLIENT_COUNTS, 0)
        full = list(params)
        if job.params.get("lbgm"):
            lbgm, full, counts = self._lbgm(sent, ctx)
            records[LBGM] = lbgm
        for name in full:
            arrays.update(wires[name])
        records[ARRAYS] = to_array_record(arrays)
        if job.params.get("lbgm"):
            records[METRICS] = MetricRecord(counts)
        return records

    @staticmethod
    def _compress(
        codec: Codec, grads: dict[str, np.ndarray], error_feedback: bool, state: ClientState
    ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """Per layer: the wire arrays and the dense vector the server will rebuild from them.

        With error feedback the compressor's residual x − C(x) is added to the next round's g.
        """
        feedback = codec.name != "none" and error_feedback
        residual = state.get_arrays(RESIDUAL) if feedback else None
        wires, sent, left = {}, {}, {}
        for name, g in grads.items():
            x = g + residual[name] if residual is not None else g
            wires[name] = codec.encode(name, x)
            sent[name] = codec.decode(name, wires[name], x.shape, x.dtype)
            if feedback:
                left[name] = x - sent[name]
        if feedback:
            state.set_arrays(RESIDUAL, left)
        return wires, sent

    def _lbgm(
        self, sent: dict[str, np.ndarray], ctx: ClientContext
    ) -> tuple[MetricRecord, list[str], dict[str, int | float]]:
        """Decide per unit: ρ against an acknowledged LBG (e ≤ δ) or a full send (new candidate)."""
        units = units_of(list(sent), ctx.params.granularity)
        if self.server_versions is None or len(self.server_versions) != len(units):
            raise ValueError(
                f"lbgm: expected {len(units)} LBG versions from the server, got "
                f"{self.server_versions!r}"
            )
        book = ClientLBGs(ctx.state)
        lbgs = book.acknowledged(dict(zip(units, self.server_versions, strict=True)))
        delta = float(ctx.params.delta)
        lbgm: dict[str, int | float] = {}
        full: list[str] = []
        candidates: dict[str, np.ndarray] = {}
        counts: dict[str, int | float] = dict.fromkeys(CLIENT_COUNTS, 0)
        counts["lbgm-units"] = len(units)
        for unit, names in units.items():
            flat = [sent[n].reshape(-1) for n in names]
            vector = flat[0] if len(flat) == 1 else np.concatenate(flat)
            fit = projection(vector, lbgs[unit][1]) if unit in lbgs else None
            if fit is not None:
                counts["lbgm-checked"] += 1
                counts["lbgm-phase-error-sum"] += fit[1]
            if fit is not None and fit[1] <= delta:
                lbgm[f"rho:{unit}"] = fit[0]
                lbgm[f"version:{unit}"] = lbgs[unit][0]
                counts["lbgm-reused"] += 1
            else:
                full.extend(names)
                candidates[unit] = vector.astype(np.float32, copy=False)
        book.commit(ctx.job.server_round, candidates)
        return MetricRecord(lbgm), full, counts
