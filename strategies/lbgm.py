"""LBGM: look-back gradient multiplier (Azam et al., ICLR 2022), plus top-k and signSGD.

Every client sends its pseudo-gradient g = θ_start − θ_end, optionally compressed per layer
(top-k or scaled sign, with error feedback). Under LBGM each *unit* (a parameter tensor, or
the whole model with ``granularity=model``) is compared with the client's look-back gradient
(LBG), the last vector of that unit it sent in full: ρ = ⟨g, LBG⟩/‖LBG‖² and the phase error
e = 1 − cos²(g, LBG) = ‖g − ρ·LBG‖²/‖g‖². If e ≤ δ only ρ travels, else the unit goes in full
and becomes the new LBG. Stacked on a compressor, LBGM works on the compressed (sparse)
vector, never on the dense one. Non-parameter buffers (BatchNorm statistics) go in full and
are averaged like FedAvg does.

The server keeps each client's LBGs (``lbg_store``), rebuilds ρ·LBG, averages the
pseudo-gradients weighted by ``num-examples`` over the replies received, and steps
θ ← θ − server_lr·v with v ← server_momentum·v + ḡ (server_lr=1, momentum 0 is FedAvg).

Version protocol (so a lost reply never causes a wrong reconstruction): an LBG's version is
the round it was sent in. Each round the server tells every sampled client the version it
holds per unit (−1: none). A client reuses only an LBG whose version equals the server's; a
unit it sends in full is kept as a *candidate* and promoted only once the server advertises
that version, otherwise discarded. The server rejects a ρ against a version it does not hold.

Deviations from the public code (see the project's LBGM spec): multi-step local training
(pseudo-gradient, not one full-batch gradient); weights renormalised over the replies; no
LBGM residual (only the compressor keeps one); top-k + LBGM stores the sparse vector.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from torch import nn

from models.training import TrainResult
from strategies.compression import COMPRESSORS, Codec, CodecError, make_codec
from strategies.protocol.arrays import dot, l2_norm, to_array_record, to_numpy, to_numpy_dict
from strategies.protocol.base import ARRAYS, ClientUpdate, FedSparseStrategy
from strategies.protocol.client import ClientAlgorithm, ClientContext
from strategies.protocol.job import ClientJob, ConfigScalar
from strategies.protocol.lbg_book import ClientLBGs
from strategies.protocol.lbg_store import STORE_DTYPES, STORES, make_store
from strategies.protocol.params import (
    Params,
    check_choice,
    check_count,
    check_flag,
    check_number,
)
from strategies.protocol.reduction import CohortSum
from strategies.protocol.registry import Algorithm, parameter_shapes, register_algorithm
from strategies.protocol.update import METRICS, REPLY_SLACK_BYTES
from strategies.protocol.validation import (
    ReplyError,
    all_finite,
    check_finite_metric,
    require_record,
)
from strategies.protocol.weighted_sum import WeightedSum, cast_like
from strategies.protocol.wire import ClientState, Record

log = logging.getLogger(__name__)

GRANULARITIES = ("layer", "model")
MODEL_UNIT = "model"
VERSIONS = "lbgm-versions"  # downlink, per client: ConfigRecord {"versions": [int per unit]}
TOPK_BREAK_EVEN = 0.5  # float32 value + int32 index per kept entry: 8 bytes against 4 dense
LBGM = "lbgm"  # uplink: MetricRecord {"rho:<unit>": float, "version:<unit>": int} (reused units)
RESIDUAL = "compress-residual"  # client state: error-feedback residual per layer
CLIENT_COUNTS = ("lbgm-reused", "lbgm-units", "lbgm-checked", "lbgm-phase-error-sum")


def units_of(layers: list[str], granularity: str) -> dict[str, list[str]]:
    """Decision units: one per layer, or one (``"model"``) holding every layer in order."""
    if granularity == "layer":
        return {name: [name] for name in layers}
    if granularity == "model":
        return {MODEL_UNIT: list(layers)}
    raise ValueError(f"unknown granularity {granularity!r}; choose one of: {GRANULARITIES}")


def projection(g: np.ndarray, lbg: np.ndarray) -> tuple[float, float] | None:
    """(ρ, e): least-squares multiplier of ``lbg`` for ``g`` and the phase error 1 − cos².

    None when ``lbg`` is zero (no direction to reuse) or a product overflows. A zero ``g``
    gives (0, 0): ρ·LBG = g. The three dot products run in the vectors' own precision (float32
    for a model's gradients, :func:`~strategies.protocol.arrays.dot`): casting both to float64
    first cost
    ~4× more, and ρ and e differ from the float64 values by ~1e-6 relative, far finer than any
    useful δ.
    """
    with np.errstate(over="ignore"):  # an overflow is answered below: no fit
        bb, gb, gg = dot(lbg, lbg), dot(g, lbg), dot(g, g)
    if not bb > 0 or not all(map(math.isfinite, (bb, gb, gg))):
        return None
    if gg == 0:
        return 0.0, 0.0
    return gb / bb, min(max(1.0 - gb * gb / (gg * bb), 0.0), 1.0)


@dataclass(frozen=True)
class Scaled:
    """A reused layer's pseudo-gradient ρ·LBG, rebuilt slice by slice where it is summed.

    A round where most clients reuse would otherwise hold a rebuilt model per client until the
    aggregation; this holds ρ and a view of the stored LBG. Each slice is computed exactly as
    the whole product would be (elementwise, in the LBG's float32), so sums are bit for bit the
    same.
    """

    rho: float
    lbg: np.ndarray  # the layer's part of the stored LBG, in the layer's shape (read-only)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.lbg.shape

    @property
    def size(self) -> int:
        return self.lbg.size

    def reshape(self, *shape: int) -> Scaled:
        return Scaled(self.rho, self.lbg.reshape(*shape))

    def __getitem__(self, part: slice) -> np.ndarray:
        return self.lbg[part] * self.rho

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        values = self.lbg * self.rho
        return values if dtype is None else values.astype(dtype, copy=False)


@dataclass
class Decoded:
    """One client's reply decoded: pseudo-gradient per layer, buffers, and LBGM bookkeeping."""

    grads: dict[str, np.ndarray | Scaled]
    buffers: dict[str, np.ndarray]
    units: int = 0
    ages: list[int] = field(default_factory=list)


GRAD, BUFFER = "grad:", "buffer:"  # the two sums of a reduced cohort's partial


class PseudoGradients(CohortSum):
    """Σ_c n_c·g_c over the clients' decoded pseudo-gradients and Σ_c n_c·b_c over their
    buffers, each reply checked to be exactly the buffers plus every layer's codec arrays."""

    def __init__(self, job: ClientJob, downlink: ArrayRecord) -> None:
        self.template = downlink
        self.limit = 2 * downlink.count_bytes() + REPLY_SLACK_BYTES
        self.layers = parameter_shapes(job)
        self.codec = make_codec(
            str(job.params.get("compressor", "none")), float(job.params.get("topk_ratio", 0.1))
        )
        self.grads, self.buffers = WeightedSum(), WeightedSum()

    @property
    def weight(self) -> int:
        return self.grads.weight

    def reply_limit(self) -> int:
        """Twice the dense model plus slack."""
        return self.limit

    def wire(self, update: ClientUpdate, full_layers: list[str]) -> dict[str, np.ndarray]:
        """The reply's arrays, checked to be exactly the buffers plus the full layers' codec keys,
        with finite values and buffers shaped like the global ones."""
        received = require_record(update.records, ARRAYS, ArrayRecord)
        buffers = [name for name in self.template if name not in self.layers]
        expected = set(buffers) | {k for name in full_layers for k in self.codec.keys(name)}
        if set(received.keys()) != expected:
            missing = sorted(expected - set(received.keys()))
            extra = sorted(set(received.keys()) - expected)
            raise ReplyError("names", f"array names differ (missing {missing}, unexpected {extra})")
        wire = to_numpy_dict(received)
        for name, values in wire.items():
            if values.dtype.kind == "f" and not all_finite(values):
                raise ReplyError("non-finite", f"{name} holds NaN or Inf")
        for name in buffers:
            template = self.template[name]
            if wire[name].shape != tuple(template.shape) or wire[name].dtype != template.dtype:
                raise ReplyError(
                    "shape",
                    f"{name}: {wire[name].dtype} {wire[name].shape}, expected {template.dtype} "
                    f"{tuple(template.shape)}",
                )
        return wire

    def layer(self, wire: dict[str, np.ndarray], name: str) -> np.ndarray:
        """One full layer's pseudo-gradient from its codec arrays."""
        template = self.template[name]
        try:
            return self.codec.decode(name, wire, tuple(template.shape), np.dtype(template.dtype))
        except CodecError as err:
            raise ReplyError("codec", str(err)) from None

    def buffer_values(self, wire: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The reply's buffers (every array that is not a parameter)."""
        return {name: wire[name] for name in self.template if name not in self.layers}

    def decode(self, update: ClientUpdate) -> Decoded:
        wire = self.wire(update, list(self.layers))
        grads = {name: self.layer(wire, name) for name in self.layers}
        return Decoded(grads, self.buffer_values(wire), units=len(grads))

    def delta_norms(self, payload: Decoded) -> dict[str, float]:
        return {name: l2_norm(np.asarray(g)) for name, g in payload.grads.items()}  # ‖Δ_c‖ = ‖g_c‖

    def add(self, update: ClientUpdate) -> None:
        self.grads.add(update.payload.grads, update.num_examples)
        self.buffers.add(update.payload.buffers, update.num_examples)
        update.release(keep=replace(update.payload, grads={}, buffers={}))  # units, ages stay

    def partial(self) -> dict[str, np.ndarray]:
        return {
            **{GRAD + name: v for name, v in self.grads.partial().items()},
            **{BUFFER + name: v for name, v in self.buffers.partial().items()},
        }

    def layout(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        float64 = np.dtype(np.float64)
        return {
            **{GRAD + name: (shape, float64) for name, shape in self.layers.items()},
            **{
                BUFFER + name: (tuple(a.shape), float64)
                for name, a in self.template.items()
                if name not in self.layers
            },
        }

    def merge(self, partial: Mapping[str, np.ndarray], weight: int) -> None:
        for prefix, total in ((GRAD, self.grads), (BUFFER, self.buffers)):
            part = {k[len(prefix) :]: v for k, v in partial.items() if k.startswith(prefix)}
            total.merge(part, weight)

    def result(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The weighted means of the pseudo-gradients and of the buffers, in float64."""
        return self.grads.mean(), self.buffers.mean()


@dataclass(frozen=True)
class ServerStepParams(Params):
    """The server's step on the mean pseudo-gradient, and the compressor's error feedback."""

    error_feedback: bool = True
    server_lr: float = 1.0
    server_momentum: float = 0.0

    def check(self) -> None:
        check_flag("error_feedback", self.error_feedback)
        check_number("server_lr", self.server_lr, lambda v: v > 0, "must be a number > 0")
        check_number(
            "server_momentum", self.server_momentum, lambda v: 0 <= v < 1, "must be in [0, 1)"
        )


@dataclass(frozen=True)
class TopKParams(ServerStepParams):
    """Top-k's kept share per layer, beside the server step."""

    topk_ratio: float = 0.1

    def check(self) -> None:
        super().check()
        check_number("topk_ratio", self.topk_ratio, lambda v: 0 < v <= 1, "must be in (0, 1]")

    def warnings(self) -> list[str]:
        if self.topk_ratio < TOPK_BREAK_EVEN:
            return []
        return [
            f"strategy.topk_ratio={self.topk_ratio}: every kept value travels with its int32 "
            f"index, so from {TOPK_BREAK_EVEN} on top-k sends at least the dense layer's bytes; "
            "lower it, or send dense"
        ]


@dataclass(frozen=True)
class LbgmParams(TopKParams):
    """LBGM's threshold, unit, optional compressor and server-side LBG store."""

    delta: float = 0.2
    granularity: str = "layer"
    compressor: str = "none"
    store: str = "memory"
    store_dtype: str = "float32"
    store_dir: str | None = None
    max_age: int | None = None

    def check(self) -> None:
        super().check()
        check_number(
            "delta",
            self.delta,
            lambda v: v < 1,
            "must be a number < 1 (a phase error is at most 1, so at δ ≥ 1 every look-back "
            "gradient would be reused forever and no layer sent again after round 1)",
        )
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("compressor", self.compressor, COMPRESSORS)
        check_choice("store", self.store, STORES)
        check_choice("store_dtype", self.store_dtype, STORE_DTYPES)
        check_count("max_age", self.max_age, optional="never")

    def warnings(self) -> list[str]:
        found = super().warnings() if self.compressor == "topk" else []
        if self.compressor != "topk" and self.topk_ratio != TopKParams.topk_ratio:
            found.append(
                f"strategy.topk_ratio={self.topk_ratio} changes nothing: "
                f"strategy.compressor={self.compressor} keeps every entry (top-k needs "
                "strategy.compressor=topk)"
            )
        if self.store_dir is not None and self.store != "disk":
            found.append(
                f"strategy.store_dir={self.store_dir} is unused: it applies to store=disk only"
            )
        return found


class PseudoGradient(FedSparseStrategy):
    """Clients send compressed pseudo-gradients; the server averages them and takes a step."""

    name = "pseudo-gradient"
    params_type = ServerStepParams
    compressor = "none"
    uses_lbgm = False
    cohort_sum_type = PseudoGradients
    _mean_delta: dict[str, np.ndarray] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        params = self.params
        ratio = float(getattr(params, "topk_ratio", TopKParams.topk_ratio))
        self.codec: Codec = make_codec(getattr(params, "compressor", self.compressor), ratio)
        self.server_lr, self.server_momentum = (
            float(params.server_lr),
            float(params.server_momentum),
        )
        self.velocity: dict[str, np.ndarray] = {}
        self.server_round = 0

    @cached_property
    def layers(self) -> dict[str, tuple[int, ...]]:
        """Parameter tensors (pseudo-gradient layers); every other array is a buffer."""
        return parameter_shapes(self.job)

    def round_params(self, server_round: int) -> dict[str, ConfigScalar]:
        return {"compressor": self.codec.name, "lbgm": self.uses_lbgm}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.server_round = server_round  # the version of the LBGs sent in this round
        return super().configure_train(server_round, arrays, config, grid)

    # --------------------------------------------------------------- aggregation
    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> ArrayRecord:
        means, buffer_means = self.running.result()
        buffers = cast_like(buffer_means, to_numpy_dict(self.global_arrays))
        self._mean_delta = {name: -mean for name, mean in means.items()}  # Δ_c = −g_c
        new: dict[str, np.ndarray] = {}
        for name, array in self.global_arrays.items():
            if name not in self.layers:
                new[name] = buffers[name]
                continue
            mean = means[name]
            if self.server_momentum:
                mean += self.server_momentum * self.velocity.get(name, 0.0)
                self.velocity[name] = mean
            theta = to_numpy(array)
            new[name] = (theta - self.server_lr * mean).astype(theta.dtype)
        return to_array_record(new)

    def mean_client_delta(self) -> dict[str, np.ndarray] | None:
        return self._mean_delta

    def state_dict(self) -> dict[str, np.ndarray]:
        return {f"velocity/{name}": v for name, v in self.velocity.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.velocity = {
            k.removeprefix("velocity/"): np.asarray(v)
            for k, v in state.items()
            if k.startswith("velocity/")
        }


class TopK(PseudoGradient):
    """Top-k sparsified pseudo-gradients with error feedback (baseline)."""

    name = "topk"
    params_type = TopKParams
    compressor = "topk"


class SignSGD(PseudoGradient):
    """Scaled-sign pseudo-gradients (1 bit per entry + one scale per layer), error feedback."""

    name = "signsgd"
    compressor = "sign"


class Lbgm(PseudoGradient):
    """LBGM: per unit, a scalar ρ instead of the full vector when the LBG still fits."""

    name = "lbgm"
    uses_lbgm = True
    nodes_decode = False  # decoding needs the server's look-back gradients of each client

    params_type = LbgmParams

    @cached_property
    def units(self) -> dict[str, list[str]]:
        return units_of(list(self.layers), self.params.granularity)

    @cached_property
    def store(self):
        """The server's LBG store (built on first use: it needs the model's layer sizes)."""
        params = self.params
        sizes = {
            unit: sum(math.prod(self.layers[name]) for name in names)
            for unit, names in self.units.items()
        }
        return make_store(params.store, sizes, params.store_dtype, params.store_dir)

    def client_records(self, server_round: int, client_id: int) -> dict[str, Record]:
        versions = []
        for unit in self.units:
            version = self.store.version(client_id, unit)
            max_age = self.params.max_age
            if max_age is not None and 0 <= version < server_round - max_age:
                self.store.evict(client_id, unit)
                version = -1
            versions.append(version)
        return {VERSIONS: ConfigRecord({"versions": versions})}

    def decode(self, update: ClientUpdate) -> Decoded:
        for key in CLIENT_COUNTS:
            check_finite_metric(update.metrics, key)
        record = require_record(update.records, LBGM, MetricRecord)
        known = {f"{kind}:{unit}" for unit in self.units for kind in ("rho", "version")}
        if set(record.keys()) - known:
            raise ReplyError("lbgm", f"unknown lbgm keys {sorted(set(record.keys()) - known)}")
        reused: dict[str, tuple[float, int]] = {}
        for unit in self.units:
            if f"rho:{unit}" not in record:
                continue
            rho, version = record[f"rho:{unit}"], record.get(f"version:{unit}")
            if not isinstance(rho, float) or not math.isfinite(rho):
                raise ReplyError("lbgm", f"{unit}: rho must be a finite float, got {rho!r}")
            held = self.store.version(update.client_id, unit)
            if not isinstance(version, int) or version < 0 or held != version:
                raise ReplyError(
                    "lbgm-version",
                    f"{unit}: rho against version {version!r}, the server holds {held}",
                )
            reused[unit] = (rho, version)
        full_layers = [n for unit, names in self.units.items() if unit not in reused for n in names]
        sums: PseudoGradients = self.running
        wire = sums.wire(update, full_layers)
        grads: dict[str, np.ndarray | Scaled] = {
            name: sums.layer(wire, name) for name in full_layers
        }
        ages = []
        for unit, (rho, version) in reused.items():
            lbg = self.store.get(update.client_id, unit, version)
            offset = 0
            for name in self.units[unit]:
                shape = self.layers[name]
                grads[name] = Scaled(rho, lbg[offset : offset + math.prod(shape)].reshape(shape))
                offset += math.prod(shape)
            ages.append(self.server_round - version)
        for unit, names in self.units.items():  # the reply is valid: commit its full units
            if unit not in reused:
                flat = [grads[n].reshape(-1) for n in names]
                vector = flat[0] if len(flat) == 1 else np.concatenate(flat)  # never written to
                self.store.put(update.client_id, unit, self.server_round, vector)
        return Decoded(grads, sums.buffer_values(wire), units=len(self.units), ages=ages)

    def round_metrics(self, server_round: int) -> dict[str, Any]:
        payloads = [u.payload for u in self.last_updates]
        units = sum(p.units for p in payloads)
        ages = [a for p in payloads for a in p.ages]
        checked = sum(u.metrics["lbgm-checked"] for u in self.last_updates)
        error_sum = sum(u.metrics["lbgm-phase-error-sum"] for u in self.last_updates)
        return {
            "lbgm_reuse_frac": len(ages) / units if units else None,
            "lbgm_phase_error": error_sum / checked if checked else None,
            "lbgm_lbg_age": float(np.mean(ages)) if ages else None,
            "lbgm_store_bytes": self.store.nbytes,
        }


# ------------------------------------------------------------------------- client half
class PseudoGradientClient(ClientAlgorithm):
    """Trains like FedAvg, then sends the (compressed, LBGM-reduced) pseudo-gradient."""

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
        codec = make_codec(str(job.params["compressor"]), float(job.params.get("topk_ratio", 0.1)))
        params = {n: p.detach().cpu().numpy() for n, p in model.named_parameters()}
        grads = {n: self.start[n] - params[n] for n in params}
        wires, sent = self._compress(codec, grads, job, ctx.state)
        arrays = {n: v for n, v in model.state_dict().items() if n not in params}
        records: dict[str, Record] = {}
        counts = dict.fromkeys(CLIENT_COUNTS, 0)
        full = list(params)
        if job.params.get("lbgm"):
            lbgm, full, counts = self._lbgm(sent, job, ctx.state)
            records[LBGM] = lbgm
        for name in full:
            arrays.update(wires[name])
        records[ARRAYS] = to_array_record(arrays)
        if job.params.get("lbgm"):
            records[METRICS] = MetricRecord(counts)
        return records

    @staticmethod
    def _compress(
        codec: Codec, grads: dict[str, np.ndarray], job: ClientJob, state: ClientState
    ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """Per layer: the wire arrays and the dense vector the server will rebuild from them.

        With error feedback the compressor's residual x − C(x) is added to the next round's g.
        """
        feedback = codec.name != "none" and bool(job.params.get("error_feedback", True))
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
        self, sent: dict[str, np.ndarray], job: ClientJob, state: ClientState
    ) -> tuple[MetricRecord, list[str], dict[str, int | float]]:
        """Decide per unit: ρ against an acknowledged LBG (e ≤ δ) or a full send (new candidate)."""
        units = units_of(list(sent), str(job.params.get("granularity", "layer")))
        if self.server_versions is None or len(self.server_versions) != len(units):
            raise ValueError(
                f"lbgm: expected {len(units)} LBG versions from the server, got "
                f"{self.server_versions!r}"
            )
        book = ClientLBGs(state)
        lbgs = book.acknowledged(dict(zip(units, self.server_versions, strict=True)))
        delta = float(job.params["delta"])
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
        book.commit(job.server_round, candidates)
        return MetricRecord(lbgm), full, counts


register_algorithm(Algorithm("lbgm", Lbgm, PseudoGradientClient))
register_algorithm(Algorithm("topk", TopK, PseudoGradientClient))
register_algorithm(Algorithm("signsgd", SignSGD, PseudoGradientClient))
