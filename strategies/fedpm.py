"""FedPM: federated probabilistic masks over frozen random weights (Isik et al., ICLR 2023).

Server and clients rebuild the same frozen ±c weights from ``weight_seed``; only the mask
probabilities go down and one sampled binary mask per client comes up. The downlink carries θ as
16-bit fixed point (``downlink_dtype=uint16``, 2 bytes per parameter; float32/float16 scores
logit θ are the alternatives under packed coding). The uplink (``uplink_coding``) is the mask
range-coded against those same θ (``strategies.mask_codec``: Σ −log₂ p_g(m) bits, well below one
bit per parameter once θ polarises, with a CRC32 and per-layer fallback to packed bits) or
``packed`` with ``np.packbits`` (exactly 1 bit per parameter). The server keeps a Beta(α, β)
posterior per mask entry, reset to Beta(λ0, λ0) every ``reset_period`` rounds, adds the
ε-clipped masks and sends the mode θ = (α−1)/(α+β−2) back.

Local training: Adam on the scores with ``strategy.local_lr`` (default 0.1, the paper's); epochs
and batch size are the top-level ``local_epochs`` / ``batch_size`` (paper: 3 and 128). Documented
deviations from the authors' code: Adam state is fresh every round (as in the Flower port), the
aggregation is an unweighted count (as in the authors' code, not the port's batch-count
weighting), and the bpp entropy uses the true (unclipped) ones fraction.

Layer monitor (``server_app.monitor``): its layer view (:class:`MaskScores`) reports each
``<layer>.weight_score`` as ``<layer>.weight`` with θ = σ(score) as the watched values. It
supplies each client's Δ_c = clip(m_c, ε, 1−ε) − θ_{t−1} (its norm as the reply arrives) and
their unweighted mean (the posterior's own count), for ``layer_agg_eff``; θ_{t−1} is what the
clients received and trained from (the uint16 θ under the default downlink).

Cohort reduction (:class:`MaskCounts`): the aggregate is a count of ones per entry, so a node
hosting several clients decodes their masks (it holds the same θ) and sends the counts: exact,
and the range decoding spreads over the nodes.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MessageType, MetricRecord, RecordDict
from torch import nn

from data.federated import central_test, dataset_info
from models.masked import (
    ESTIMATORS,
    MaskRNG,
    build_masked,
    draw_bool_mask,
    sampled_masks,
    save_supermask,
    set_estimator,
    set_mask_rng,
    weight_hash,
)
from models.training import (
    TensorData,
    TrainResult,
    evaluate,
    load_weights,
    resolve_device,
    round_seed,
)
from strategies import theta_codec
from strategies.decode_pool import DecodePool
from strategies.klms_codec import KlmsSettings, decode_layer, encode_masks_klms, kl_bits, layer_key
from strategies.mask_codec import (
    FLAGS_KEY,
    RANGE,
    SIZES_KEY,
    CodeLengths,
    decode_masks,
    encode_masks,
    pack_mask,
    packed_size,
    prior_probabilities,
    quantize_prior,
    unpack_mask,
)
from strategies.protocol.arrays import dot, to_array_record, to_numpy, to_numpy_dict
from strategies.protocol.base import ARRAYS, REPLY_SLACK_BYTES, ClientUpdate, FedSparseStrategy
from strategies.protocol.client import ClientAlgorithm, ClientContext
from strategies.protocol.engine import SAMPLE_TRAIN, finite_or_zero
from strategies.protocol.job import ClientJob
from strategies.protocol.layers import LayerView, is_layer_weight
from strategies.protocol.params import Params, check_choice, check_count, check_number
from strategies.protocol.reduction import CohortSum
from strategies.protocol.registry import Algorithm, register_algorithm
from strategies.protocol.update import METRICS
from strategies.protocol.validation import ReplyError, require_record
from strategies.protocol.wire import (
    ClientState,
    Record,
    decoded_tensors,
    record_bytes,
)

MASKED_FORMS = {name: f"masked_{name}" for name in ("cnn", "conv4", "conv6", "conv10")}
DOWNLINK_DTYPES = {"uint16": np.uint16, "float32": np.float32, "float16": np.float16}
UPLINK_CODINGS = ("range", "klms", "packed")
CODED_UPLINKS = ("range", "klms")  # both send one byte stream coded against the uint16 θ
DOWNLINK_CODINGS = ("coded", "plain")  # coded: strategies.theta_codec; plain: downlink_dtype
KEEP = "fedpm-keep"  # per-client downlink record: keep this θ, the next round codes against it
BASE_STATE, BASE_ROUND_STATE = "fedpm-base", "fedpm-base-round"  # the kept θ in client state
CODE = "fedpm-code"  # the coded reply's header record (strategies.mask_codec)
STREAM = "masks"  # the coded reply's one array: every layer's segment in score order
POOL_MIN_CLIENTS = 16  # decode_workers=auto uses the pool from this many clients per round
POOL_MAX_WORKERS = 4
WEIGHT_STREAM = 0x57E1  # keeps the weight seed apart from every other draw of the run seed
MASK_STREAM = 0x3A5C  # the uplink mask draw, apart from the batch-order stream
TRAIN_MASK_STREAM = 0x7D2B  # the masks of every local training forward pass
EVAL_STREAM = 0xE7A1  # the server's sampled-mask evaluation
ENCODE_METRIC = "fedpm-encode-s"
KL_METRIC = "fedpm-kl-bits"  # Σ KL(q‖θ_g) of the client's trained q: the KLMS bound, not sent
EXPORT_FILE = "final_model.fedpm"
SCORE_SUFFIX = "_score"  # models.masked names a layer's mask scores `<its weight's name>_score`


# ------------------------------------------------------------------------------ model choice
def masked_model_name(model: str) -> str:
    """The masked twin of ``model=``; other architectures are a config error."""
    try:
        return MASKED_FORMS[model]
    except KeyError:
        raise ValueError(
            f"model={model!r} has no masked form under strategy=fedpm; choose model= one of: "
            f"{', '.join(MASKED_FORMS)}"
        ) from None


def derived_weight_seed(seed: int) -> int:
    """The default weight seed: a fixed function of the run seed."""
    return int(np.random.SeedSequence([seed, WEIGHT_STREAM]).generate_state(1, np.uint32)[0])


def job_weight_seed(job: ClientJob) -> int:
    """``strategy.weight_seed`` when set, else derived from the run seed."""
    value = job.params.get("weight_seed")
    return derived_weight_seed(job.seed) if value is None else int(value)


def klms_keys(job: ClientJob, client_id: int, names: list[str]) -> dict[str, np.uint32]:
    """Each layer's candidate key for ``client_id`` in the job's round."""
    return {
        name: layer_key(job.seed, job.server_round, client_id, layer)
        for layer, name in enumerate(names)
    }


def build_fedpm_model(
    job: ClientJob, input_shape: tuple[int, int, int], num_classes: int
) -> nn.Module:
    """The masked network a FedPM job trains (registered as the algorithm's model builder)."""
    return build_masked(
        masked_model_name(job.model), input_shape, num_classes, job_weight_seed(job)
    )


# ---------------------------------------------------------------------------- bpp measures
def binary_entropy(f: float) -> float:
    """H₂(f) in bits (0 at f ∈ {0, 1})."""
    if f <= 0.0 or f >= 1.0:
        return 0.0
    return -f * math.log2(f) - (1.0 - f) * math.log2(1.0 - f)


def entropy_bpp(ones: int, total: int) -> float:
    """Bits per parameter of an adaptive binary coder: H₂(ones/total) + log₂(N)/N."""
    return binary_entropy(ones / total) + math.log2(total) / total


def logit(theta: np.ndarray) -> np.ndarray:
    return np.log(theta) - np.log1p(-theta)


def sigmoid(scores: np.ndarray) -> np.ndarray:
    """θ = σ(score) = 1 / (1 + e^{−s}) in float64, the inverse of :func:`logit`; e^{−s} = inf
    below s ≈ −709 gives θ = 0 exactly, without a warning."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(scores, dtype=np.float64)))


# ------------------------------------------------------------------------------ aggregation
def _prefixed(state: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The entries of a checkpointed state under ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: np.array(v) for k, v in state.items() if k.startswith(prefix)}


class BetaPosterior:
    """Beta(α, β) per mask entry; the prior Beta(λ0, λ0) returns every ``reset_period`` rounds."""

    def __init__(self, lambda0: float, eps: float, reset_period: int) -> None:
        self.lambda0, self.eps, self.reset_period = lambda0, eps, reset_period
        self.alpha: dict[str, np.ndarray] = {}
        self.beta: dict[str, np.ndarray] = {}
        self.mean_clipped: dict[str, np.ndarray] = {}  # the last update's mean of clip(m, ε, 1−ε)

    def resets(self, server_round: int) -> bool:
        """Rounds 1, 1+ρ, 1+2ρ, … start from the prior."""
        return (server_round - 1) % self.reset_period == 0

    def update(
        self, server_round: int, counts: Mapping[str, np.ndarray], clients: int
    ) -> dict[str, np.ndarray]:
        """Add ``clients`` ε-clipped masks (unweighted), given as the count of ones per entry,
        and return the mode θ per entry."""
        theta: dict[str, np.ndarray] = {}
        for name, count in counts.items():
            if self.resets(server_round) or name not in self.alpha:
                self.alpha[name] = np.full(count.shape, self.lambda0)
                self.beta[name] = np.full(count.shape, self.lambda0)
            # Σ clip(m, ε, 1−ε) over binary masks, from the count of ones: exact, no float sum
            ones = count * (1.0 - 2.0 * self.eps) + clients * self.eps
            self.mean_clipped[name] = ones / clients
            self.alpha[name] = self.alpha[name] + ones
            self.beta[name] = self.beta[name] + (clients - ones)
            mode_num = self.alpha[name] - 1.0
            mode_den = self.alpha[name] + self.beta[name] - 2.0
            # 0/0 only when nothing was added to a flat prior: no evidence, θ = 1/2.
            theta[name] = np.divide(
                mode_num, mode_den, out=np.full(mode_num.shape, 0.5), where=mode_den > 0
            )
        return theta

    def state_dict(self) -> dict[str, np.ndarray]:
        return {
            **{f"alpha/{k}": v for k, v in self.alpha.items()},
            **{f"beta/{k}": v for k, v in self.beta.items()},
        }

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.alpha = _prefixed(state, "alpha/")
        self.beta = _prefixed(state, "beta/")


class MaskCounts(CohortSum):
    """Σ_c m_c per mask entry, every client counting once (the posterior's evidence); each reply
    decoded and measured against the θ the clients received in the round's downlink.

    A client's monitor update is Δ_c = clip(m_c, ε, 1−ε) − θ: the ε-clipped mask it sampled
    (what the posterior adds) minus the probabilities it trained from.
    """

    def __init__(self, job: ClientJob, downlink: ArrayRecord) -> None:
        arrays = to_numpy_dict(downlink)
        if theta_codec.is_coded(arrays):
            arrays = theta_codec.decode(arrays)
        if all(a.dtype == np.uint16 for a in arrays.values()):
            self.priors = arrays
            self.theta = {k: prior_probabilities(q).reshape(q.shape) for k, q in arrays.items()}
        else:
            self.theta = {k: sigmoid(v) for k, v in arrays.items()}
            self.priors = {k: quantize_prior(t) for k, t in self.theta.items()}
        self.shapes = {k: tuple(a.shape) for k, a in arrays.items()}
        packed = sum(packed_size(math.prod(s)) for s in self.shapes.values())
        self.limit = packed + REPLY_SLACK_BYTES  # a coded reply falls back to packed at worst
        self.lengths = {k: CodeLengths.of(q) for k, q in self.priors.items()}
        params = FedPMParams.from_job(job)
        self.coded = params.uplink_coding in CODED_UPLINKS
        self.job = job
        self.klms = params.klms_settings() if params.uplink_coding == "klms" else None
        eps = float(params.eps)
        self.norm_terms = {  # ‖Δ_c‖² = Σ (ε−θ)² + Σ m_c·((1−ε−θ)² − (ε−θ)²)
            name: (dot(eps - theta, eps - theta), (1.0 - 2.0 * eps) * (1.0 - 2.0 * theta))
            for name, theta in self.theta.items()
        }
        self.counts: dict[str, np.ndarray] = {}
        self.clients = 0
        self.predecoded: Callable[[int], dict[str, np.ndarray] | None] | None = None
        self._stats: dict[int, dict[str, float]] = {}

    @property
    def weight(self) -> int:
        return self.clients

    def reply_limit(self) -> int:
        """Packed bits of every mask plus slack."""
        return self.limit

    def decode(self, update: ClientUpdate) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        record = require_record(update.records, ARRAYS, ArrayRecord)
        if self.coded:
            header = require_record(update.records, CODE, ConfigRecord)
            if list(record.keys()) != [STREAM]:
                raise ReplyError(
                    "names", f"coded reply arrays {list(record.keys())} != [{STREAM!r}]"
                )
            stream = to_numpy(record[STREAM])
            masks = self.predecoded(update.client_id) if self.predecoded else None
            if masks is None:
                masks = decode_masks(
                    stream, header, self.shapes, self.priors, self._klms_decoder(update.client_id)
                )
            stream_bytes = int(stream.size)
            layers = zip(masks, header[FLAGS_KEY], header[SIZES_KEY], strict=True)
            coded = [(name, size) for name, flag, size in layers if flag == RANGE]
        else:
            if list(record.keys()) != list(self.shapes):
                raise ReplyError(
                    "names", f"mask names {list(record.keys())} != score names {list(self.shapes)}"
                )
            masks = {
                name: unpack_mask(to_numpy(record[name]), self.shapes[name], name)
                for name in record
            }
            stream_bytes = sum(int(record[name].numpy().size) for name in record)
            coded = []
        decode_s = time.perf_counter() - started
        ideal = {name: self.lengths[name].bits(m) for name, m in masks.items()}
        self._stats[update.client_id] = {
            "ones": sum(int(np.count_nonzero(m)) for m in masks.values()),
            "ideal_bits": sum(ideal.values()),
            "coded_bits": sum(8 * size for _, size in coded),
            "coded_ideal_bits": sum(ideal[name] for name, _ in coded),
            "coded_entries": sum(math.prod(self.shapes[name]) for name, _ in coded),
            "stream_bytes": stream_bytes,
            "wire_bytes": record_bytes(update.records.values()),
            "encode_s": finite_or_zero(
                update.metrics.get(ENCODE_METRIC) if update.metrics else None
            ),
            "decode_s": decode_s,
            "kl_bits": finite_or_zero(update.metrics.get(KL_METRIC) if update.metrics else None),
        }
        return masks

    def _klms_decoder(self, client_id: int) -> Callable[[str, np.ndarray], np.ndarray] | None:
        """Decodes a client's KLMS layers (regenerating its chosen candidates); None unless
        the uplink is KLMS."""
        if self.klms is None:
            return None
        keys = klms_keys(self.job, client_id, list(self.shapes))
        settings = self.klms

        def decode(name: str, segment: np.ndarray) -> np.ndarray:
            return decode_layer(segment, self.priors[name], keys[name], settings, name)

        return decode

    def delta_norms(self, payload: dict[str, np.ndarray]) -> dict[str, float]:
        """‖clip(m_c, ε, 1−ε) − θ‖ per mask array: one dot product of the mask with a per-round
        array, no model-sized temporary per client."""
        norms = {}
        for name, mask in payload.items():
            zeros_part, ones_gain = self.norm_terms[name]
            norms[name] = math.sqrt(max(zeros_part + dot(mask, ones_gain), 0.0))
        return norms

    def client_stats(self, update: ClientUpdate) -> dict[str, float]:
        """What the reply cost: ones, ideal and coded bits, bytes, encode and decode seconds."""
        return self._stats.pop(update.client_id)

    def add(self, update: ClientUpdate) -> None:
        self.merge(update.payload, 1)  # one client's mask is its own count of ones
        update.release()

    def partial(self) -> dict[str, np.ndarray]:
        return self.counts

    def layout(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return {name: (shape, np.dtype(np.int32)) for name, shape in self.shapes.items()}

    def merge(self, partial: Mapping[str, np.ndarray], weight: int) -> None:
        for name, count in partial.items():
            if name not in self.counts:
                self.counts[name] = np.zeros(count.shape, np.int32)
            np.add(self.counts[name], count, out=self.counts[name])
        self.clients += weight

    def result(self) -> tuple[dict[str, np.ndarray], int]:
        """The count of ones per mask entry, and the number of clients counted."""
        return self.counts, self.clients


@dataclass(frozen=True)
class FedPMParams(Params):
    """FedPM's posterior, local training, links and decoding (conf/strategy/fedpm.yaml)."""

    reset_period: int = 1
    lambda0: float = 1.0
    eps: float = 0.01
    estimator: str = "scaled"
    eval_samples: int = 5
    weight_seed: int | None = None
    downlink_dtype: str = "uint16"
    downlink_coding: str = "coded"
    uplink_coding: str = "range"
    klms_bits: int = KlmsSettings.bits
    klms_kl_per_block: float = KlmsSettings.kl_per_block
    klms_max_block: int = KlmsSettings.max_block
    klms_fresh_kl: float = KlmsSettings.fresh_kl
    decode_workers: int | str = "auto"
    local_lr: float = 0.1

    def check(self) -> None:
        check_count("reset_period", self.reset_period)
        check_number(
            "lambda0", self.lambda0, lambda v: v >= 1, "must be >= 1 (Beta mode undefined)"
        )
        check_number("eps", self.eps, lambda v: 0 < v < 0.5, "must be in (0, 0.5)")
        check_choice("estimator", self.estimator, ESTIMATORS)
        if (
            isinstance(self.eval_samples, bool)
            or not isinstance(self.eval_samples, int)
            or self.eval_samples < 0
        ):
            raise ValueError(
                f"strategy.eval_samples={self.eval_samples!r}: must be an integer >= 0"
            )
        if self.weight_seed is not None and (
            isinstance(self.weight_seed, bool)
            or not isinstance(self.weight_seed, int)
            or self.weight_seed < 0
        ):
            raise ValueError(f"strategy.weight_seed={self.weight_seed!r}: must be null or >= 0")
        check_number("local_lr", self.local_lr, lambda v: v > 0, "must be > 0")
        self._check_links()

    def _check_links(self) -> None:
        check_choice("downlink_dtype", self.downlink_dtype, DOWNLINK_DTYPES)
        check_choice("downlink_coding", self.downlink_coding, DOWNLINK_CODINGS)
        check_choice("uplink_coding", self.uplink_coding, UPLINK_CODINGS)
        if self.uplink_coding in CODED_UPLINKS and self.downlink_dtype != "uint16":
            raise ValueError(
                f"strategy.downlink_dtype={self.downlink_dtype!r}: strategy.uplink_coding="
                f"{self.uplink_coding} needs uint16 (the coder's model must be the same integers "
                "on both ends); set strategy.downlink_dtype=uint16 or strategy.uplink_coding=packed"
            )
        workers = self.decode_workers
        if workers != "auto" and (
            isinstance(workers, bool) or not isinstance(workers, int) or workers < 0
        ):
            raise ValueError(
                f"strategy.decode_workers={workers!r}: must be auto or an integer >= 0 "
                "(0 = decode in the server process)"
            )
        self.klms_settings()

    def klms_settings(self) -> KlmsSettings:
        """The ``klms_*`` settings (the same on both ends)."""
        return KlmsSettings(
            self.klms_bits, self.klms_kl_per_block, self.klms_max_block, self.klms_fresh_kl
        )


# ---------------------------------------------------------------------------------- server
class MaskScores(LayerView):
    """The layer view of mask scores: ``<layer>.weight_score`` is reported as ``<layer>.weight``
    and watched as θ = σ(score) (plain weights, if any, as they are)."""

    def monitor_key(self, name: str, values: np.ndarray) -> str | None:
        weight = name.removesuffix(SCORE_SUFFIX)
        if weight != name and is_layer_weight(weight, values):
            return weight
        return super().monitor_key(name, values)

    def monitor_values(self, name: str, values: np.ndarray) -> np.ndarray:
        if name.endswith(SCORE_SUFFIX):
            return sigmoid(values)
        return super().monitor_values(name, values)


class FedPM(MaskScores, FedSparseStrategy):
    """Bayesian aggregation of sampled binary masks over seed-shared frozen weights."""

    name = "fedpm"
    cohort_sum_type = MaskCounts

    params_type = FedPMParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        params = self.params
        self.masked_name = masked_model_name(self.job.model)
        self.posterior = BetaPosterior(
            float(params.lambda0), float(params.eps), params.reset_period
        )
        self.eval_samples = params.eval_samples
        self.downlink_dtype = DOWNLINK_DTYPES[params.downlink_dtype]
        self.downlink_coded = (
            params.downlink_coding == "coded" and params.downlink_dtype == "uint16"
        )
        self.coded = params.uplink_coding in CODED_UPLINKS
        klms = params.klms_settings()
        self.weight_seed = job_weight_seed(self.job)
        info = dataset_info(self.job.data_spec())
        self.input_shape, self.num_classes = tuple(info.input_shape), info.num_classes
        template = build_masked(
            self.masked_name, self.input_shape, self.num_classes, self.weight_seed
        )
        self.weight_hash = weight_hash(template)
        self.shapes = {k: tuple(v.shape) for k, v in template.state_dict().items()}
        self.num_params = sum(math.prod(s) for s in self.shapes.values())
        if params.uplink_coding == "klms":
            for name, shape in self.shapes.items():
                klms.check_layer(math.prod(shape), name)
        self.job = replace(
            self.job,
            params={
                **self.job.params,
                "weight_seed": self.weight_seed,
                "weight_hash": self.weight_hash,
            },
        )
        self._evaluator: MaskEvaluator | None = None
        self._scores: dict[str, np.ndarray] = {}
        self._downlink: tuple[tuple[ArrayRecord, bool] | None, ArrayRecord] = (None, ArrayRecord())
        self._variants: dict[str, ArrayRecord] = {}  # the coded train downlink, per node kind
        self._sent_theta: tuple[int, dict[str, np.ndarray], set[int]] | None = None
        self._base: tuple[int, dict[str, np.ndarray]] | None = None
        self._holders: set[int] = set()
        self._prior: tuple[ArrayRecord | None, dict[str, np.ndarray]] = (None, {})
        self._mean_delta: dict[str, np.ndarray] | None = None
        workers = self.decode_workers(params.decode_workers)
        ranged = params.uplink_coding == "range"  # the pool range-decodes; KLMS decodes in place
        self.pool = DecodePool(workers, self.shapes) if workers and ranged else None

    def decode_workers(self, setting: int | str) -> int:
        """Processes that range-decode replies. ``auto``: half the cores, at most
        :data:`POOL_MAX_WORKERS` (the other half trains clients in simulation, and each worker
        holds ~370 MB: it imports what the server imports), once a round has
        :data:`POOL_MIN_CLIENTS` clients, and only when that makes at least two workers; so none
        on a 2-core box. 0 decodes in the server process."""
        if setting != "auto":
            return int(setting)
        workers = min((os.cpu_count() or 1) // 2, POOL_MAX_WORKERS)
        return workers if workers >= 2 and self.clients_per_round >= POOL_MIN_CLIENTS else 0

    def configure_train(self, server_round, arrays, config, grid):
        """Roll the coded downlink's base: the θ of the previous round, held by the clients
        that were asked to keep it and replied."""
        sent = self._sent_theta
        if sent is not None and sent[0] == server_round - 1:
            self._base = (sent[0], sent[1])
            self._holders = {u.client_id for u in self.last_updates} & sent[2]
        else:
            self._base, self._holders = None, set()
        self._variants = {}
        if self.downlink_coded:
            self.directory.refresh(grid)
            keep = set(self.engine.sample_clients(server_round + 1, SAMPLE_TRAIN))
            self._sent_theta = (server_round, self.prior(arrays), keep)
        return super().configure_train(server_round, arrays, config, grid)

    def client_records(self, server_round: int, client_id: int) -> dict[str, Record]:
        """Under the coded downlink, the clients sampled again next round keep this θ."""
        sent = self._sent_theta
        if self.downlink_coded and sent and sent[0] == server_round and client_id in sent[2]:
            return {KEEP: ConfigRecord({"round": server_round})}
        return {}

    def node_content(
        self, server_round: int, arrays: ArrayRecord, cohort: list[int], message_type: str
    ) -> RecordDict:
        """A node's coded θ carries the self-contained stream unless its one client holds the
        base (then the delta alone), and the delta when any of its clients holds the base. A
        node that reduces its cohort decodes θ itself, without any client's base, so it always
        gets the self-contained stream too (each client still counts only the stream it
        decodes)."""
        content = super().node_content(server_round, arrays, cohort, message_type)
        if self.downlink_coded and message_type == MessageType.TRAIN:
            full = content[ARRAYS]
            holders = theta_codec.BASE in full and [c for c in cohort if c in self._holders]
            alone = len(cohort) == 1 and not self.job.reduce_cohorts
            kind = "delta" if holders and alone else "full" if holders else "self"
            if kind not in self._variants:
                drop = {"delta": theta_codec.SELF_CONTAINED, "self": theta_codec.DELTA}
                variant = ArrayRecord()
                for name, array in full.items():
                    if name not in drop.get(kind, ()):
                        variant[name] = array
                self._variants[kind] = variant
            content[ARRAYS] = self._variants[kind]
        return content

    def downlink_bytes(self, content: RecordDict, cohort: list[int]) -> int:
        """Each client counts the θ stream it decodes: the delta where it holds the base,
        else the self-contained one."""
        total = super().downlink_bytes(content, cohort)
        record = content.get(ARRAYS)
        if not isinstance(record, ArrayRecord) or theta_codec.CRC not in record:
            return total

        def part(keys: tuple[str, ...]) -> int:
            return sum(len(record[k].data) + len(k) for k in keys if k in record)

        own, delta = part(theta_codec.SELF_CONTAINED), part(theta_codec.DELTA)
        for client in cohort:
            total -= own if client in self._holders and delta else delta
        return total

    def downlink(self, server_round: int, arrays: ArrayRecord, message_type: str) -> ArrayRecord:
        """Only θ travels: coded (``strategies.theta_codec``: indices of its few values,
        self-contained and, for train messages, against the previous round's θ), as uint16
        fixed point (the coder's prior) or as scores in ``downlink_dtype``; the weights come
        from the seed. Encoded once per global model, however many node messages carry it."""
        train = message_type == MessageType.TRAIN
        delta = train and self._base is not None and bool(self._holders)
        cached, cached_delta = self._downlink[0] or (None, False)
        if cached is not arrays or cached_delta != delta:
            if self.downlink_coded and theta_codec.codable(self.prior(arrays)):
                coded = theta_codec.encode(self.prior(arrays))
                if delta:
                    coded |= theta_codec.encode_delta(self.prior(arrays), self._base, coded) or {}
                encoded = to_array_record(coded)
            elif self.downlink_dtype is np.uint16:
                encoded = to_array_record(self.prior(arrays))
            else:
                encoded = to_array_record(
                    {name: to_numpy(a).astype(self.downlink_dtype) for name, a in arrays.items()}
                )
            self._downlink = ((arrays, delta), encoded)
        return self._downlink[1]

    def prior(self, arrays: ArrayRecord) -> dict[str, np.ndarray]:
        """The uint16 θ of the global ``arrays``: the downlink, and the coder's model on both
        ends. Computed once per global model, by the server only."""
        if self._prior[0] is not arrays:
            priors = {name: quantize_prior(sigmoid(to_numpy(a))) for name, a in arrays.items()}
            self._prior = (arrays, priors)
            if self.pool is not None:
                self.pool.set_prior(priors)
        return self._prior[1]

    def begin_aggregation(self, server_round: int) -> None:
        """Decoded masks come from the decoding processes when they took the reply."""
        if self.pool is not None:
            self.running.predecoded = self._pool_result

    def _pool_result(self, client_id: int) -> dict[str, np.ndarray] | None:
        return self.pool.result(client_id) if self.pool.has(client_id) else None

    def prefetch(self, replies: Mapping[int, Mapping[str, Record]]) -> None:
        """Hand a node's coded streams to the decoding processes as the node's reply lands."""
        if self.pool is None:
            return
        self.prior(self.global_arrays)
        for client_id, records in replies.items():
            arrays, header = records.get(ARRAYS), records.get(CODE)
            if (
                isinstance(arrays, ArrayRecord)
                and isinstance(header, ConfigRecord)
                and list(arrays.keys()) == [STREAM]
            ):
                self.pool.submit(client_id, to_numpy(arrays[STREAM]), header)

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> ArrayRecord:
        counts: MaskCounts = self.running
        theta = self.posterior.update(server_round, *counts.result())
        self._mean_delta = {k: v - counts.theta[k] for k, v in self.posterior.mean_clipped.items()}
        self._scores = {k: logit(v).astype(np.float32) for k, v in theta.items()}
        return to_array_record(self._scores)

    def monitor_weights(self) -> list[float]:
        """Every client counts once in the posterior, whatever its num-examples."""
        return [1.0] * len(self.last_updates)

    def mean_client_delta(self) -> dict[str, np.ndarray] | None:
        return self._mean_delta

    def round_metrics(self, server_round: int) -> dict[str, Any]:
        """Per round, mean over clients: the bits per parameter sent (``wire``: every byte of
        the reply; ``stream``: the masks alone), what packing would send, the ones-fraction
        bound H₂(f) and the code length θ_g allows (``ideal``); the coder's overhead over ideal;
        client encode and server decode seconds."""
        stats = [u.stats for u in self.last_updates]
        n = self.num_params

        def mean(values: list[float]) -> float:
            return float(np.mean(values)) if values else float("nan")

        coded_ideal = sum(s["coded_ideal_bits"] for s in stats)
        metrics: dict[str, Any] = {
            "fedpm_bpp_wire": mean([8.0 * s["wire_bytes"] for s in stats]) / n,
            "fedpm_bpp_stream": mean([8.0 * s["stream_bytes"] for s in stats]) / n,
            "fedpm_bpp_packed": 8
            * sum(packed_size(math.prod(s)) for s in self.shapes.values())
            / n,
            "fedpm_bpp_entropy": mean([entropy_bpp(s["ones"], n) for s in stats]),
            "fedpm_bpp_ideal": mean([s["ideal_bits"] for s in stats]) / n,
            "fedpm_bpp_kl": mean([s["kl_bits"] for s in stats]) / n,
            "fedpm_coded_frac": mean([s["coded_entries"] for s in stats]) / n,
            "fedpm_coder_overhead": (
                sum(s["coded_bits"] for s in stats) / coded_ideal - 1.0 if coded_ideal > 0 else None
            ),
            "fedpm_encode_s": mean([s["encode_s"] for s in stats]),
            "fedpm_decode_s": sum(s["decode_s"] for s in stats),
            "fedpm_uplink_density": mean([s["ones"] for s in stats]) / n,
            "fedpm_density": sum(int((s > 0).sum()) for s in self._scores.values()) / n,
            "fedpm_reset": self.posterior.resets(server_round),
        }
        if self.eval_samples:  # the thresholded network's accuracy is the run's `accuracy`
            metrics["fedpm_acc_sampled"] = self.evaluator().sampled_accuracy(
                self.model(),
                self.eval_samples,
                round_seed(self.job.seed, server_round, EVAL_STREAM),
            )
        return metrics

    def progress(self, row: Mapping[str, Any]) -> str:
        return (
            f"bpp {row['fedpm_bpp_wire']:.3f} (ideal {row['fedpm_bpp_ideal']:.3f}, "
            f"KL {row['fedpm_bpp_kl']:.3f}, "
            f"H₂ {row['fedpm_bpp_entropy']:.3f}, packed {row['fedpm_bpp_packed']:.3f})"
        )

    def model(self) -> nn.Module:
        """The current global masked network (weights from the seed, scores from the server)."""
        model = build_masked(self.masked_name, self.input_shape, self.num_classes, self.weight_seed)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in self._scores.items()})
        return model

    def evaluator(self) -> MaskEvaluator:
        if self._evaluator is None:
            spec = self.job.data_spec()
            info = dataset_info(spec)
            device = resolve_device(self.job.device)
            self._evaluator = MaskEvaluator(
                TensorData.from_arrays(central_test(spec), info.mean, info.std, device)
            )
        return self._evaluator

    def export_model(self, path: str | Path) -> int:
        """Write the global model as seed + thresholded mask (see models.masked.save_supermask)."""
        model = self.model()
        return save_supermask(
            path, self.masked_name, self.input_shape, self.num_classes, self.weight_seed, model
        )

    def finish(self, run_dir: Path) -> dict[str, Any]:
        """End-of-run hook: stop the decoding processes, write ``final_model.fedpm``; its size
        goes into summary.json."""
        if self.pool is not None:
            self.pool.close()
        return {
            "exported_model": EXPORT_FILE,
            "exported_model_bytes": self.export_model(run_dir / EXPORT_FILE),
        }

    def state_dict(self) -> dict[str, np.ndarray]:
        return {
            **self.posterior.state_dict(),
            **{f"scores/{k}": v for k, v in self._scores.items()},
        }

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.posterior.load_state_dict(state)
        self._scores = _prefixed(state, "scores/")


class MaskEvaluator:
    """Central test accuracy of a masked network with sampled masks."""

    def __init__(self, data: TensorData) -> None:
        self.data = data

    def sampled_accuracy(self, model: nn.Module, samples: int, seed: int) -> float:
        """Mean accuracy over ``samples`` seeded draws (a fresh mask per evaluation batch)."""
        model.to(self.data.x.device)
        with sampled_masks(model, MaskRNG(seed, self.data.x.device)):
            return float(np.mean([evaluate(model, self.data)[1] for _ in range(samples)]))


# ---------------------------------------------------------------------------------- client
class WeightMismatchError(RuntimeError):
    """The client's rebuilt frozen weights differ from the server's."""


class FedPMClient(ClientAlgorithm):
    """Trains mask scores from logit(θ_global), then sends one sampled mask, range-coded
    against θ_global or bit-packed."""

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
        self.priors, scores = received_theta(ctx.content[ARRAYS], base)
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
    record: ArrayRecord, base: tuple[int, dict[str, np.ndarray]] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]:
    """The downlink as (uint16 priors, float32 scores to train from): a coded or uint16 θ gives
    both (scores = logit(q / 2¹⁶)); float scores give no prior. A coded θ is rebuilt from the
    self-contained stream or against ``base``, the θ the client kept (every client that can
    rebuild it gets the same θ bit for bit); decoded once per record and base, so a client
    that could not decode it alone fails here as it would on its own device."""
    base_round = None if base is None else base[0]
    if _LastTheta.record is not record or _LastTheta.base_round != base_round:
        arrays = to_numpy_dict(record)
        if theta_codec.is_coded(arrays):
            arrays = theta_codec.decode(arrays, base)
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


register_algorithm(Algorithm("fedpm", FedPM, FedPMClient, model_builder=build_fedpm_model))
