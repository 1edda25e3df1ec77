"""FedPM's aggregation: the mask counts a round (or a node's cohort) sums, and the Beta
posterior they update."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord

from models.training import resolve_device
from strategies.core.engine import finite_or_zero
from strategies.core.job import ClientJob
from strategies.core.reduction import CohortSum
from strategies.core.strategy import ARRAYS, REPLY_SLACK_BYTES, ClientUpdate
from strategies.core.validation import ReplyError, require_record
from strategies.core.wire import (
    record_bytes,
)
from strategies.fedpm import theta_codec
from strategies.fedpm.klms_codec import (
    decode_layer,
)
from strategies.fedpm.mask_codec import (
    FLAGS_KEY,
    RANGE,
    SIZES_KEY,
    CodeLengths,
    decode_masks,
    packed_size,
    prior_probabilities,
    quantize_prior,
    unpack_mask,
)
from strategies.fedpm.shared import (
    CODE,
    CODED_UPLINKS,
    ENCODE_METRIC,
    KL_METRIC,
    STREAM,
    FedPMParams,
    klms_keys,
    seed_theta,
    sigmoid,
)
from strategies.numeric.arrays import dot, to_numpy, to_numpy_dict


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
            arrays = theta_codec.decode(arrays, initial=functools.partial(seed_theta, job))
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
        # where KLMS candidates are regenerated: the node's (or server's) device
        self.device = resolve_device(job.device) if self.klms else None
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
            return decode_layer(segment, self.priors[name], keys[name], settings, name, self.device)

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
