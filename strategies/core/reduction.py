"""Cohort reduction: a node hosting many clients sends one partial sum instead of one update each.

Where a round's aggregate is a sum over clients (FedAvg's weighted sum and so LIPS's, FedPM's
mask counts, top-k and sign pseudo-gradients), the strategy names a :class:`CohortSum`, built on
either end from what both hold: the job and the round's train downlink. The server folds every
per-client reply through it. A node asked to reduce (``engine.reduce_cohorts``, simulation only,
more than one client per node) checks, decodes and adds its clients' replies through the same
class, as each client finishes training, and replies with a :class:`CohortReducer` message: per
client a verdict (the bytes its reply had, or why it was dropped), its metrics, its monitor norms
and stats; and the cohort's partial sum once. So the server receives O(nodes × model) bytes and
holds nothing per client, while the round's measures stay per client: bytes, ``rejected``
counters, losses and norms are those of each client's own reply.

Tolerance: weighted sums travel as float64 partial sums, so the only change to unreduced
aggregation is the order of float64 additions (relative error below ~1e-15 per entry, far under
float32's resolution): the float32 global model is the same or one unit in the last place away
per entry. Integer sums (FedPM's counts) are exact.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from strategies.core.tensor_arrays import ReplyRecord
from strategies.core.update import (
    METRICS,
    ClientUpdate,
    checked_update,
    decode_train,
    reply_bytes,
)
from strategies.core.validation import ReplyError, check_num_examples, require_record
from strategies.core.wire import Record, pack_clients
from strategies.numeric.arrays import to_array_record, to_numpy_dict

VERDICT = "verdict"  # per client: the bytes its reply had; why it was dropped, if it was
NORMS = "norms"  # per client: ‖Δ_c‖ per array, for the layer monitor
STATS = "stats"  # per client: what the strategy's round metrics read
PARTIAL = "partial"  # once per reply: the cohort's partial sum
PARTIAL_WEIGHT = "partial-weight"  # once per reply: the weight in it


class ReplyDecoder(ABC):
    """Reads one client's reply: checks it, decodes its payload, measures it."""

    @abstractmethod
    def reply_limit(self) -> int:
        """Most bytes one client's reply may carry."""

    @abstractmethod
    def decode(self, update: ClientUpdate) -> Any:
        """Validate and decode one client's payload; raise ReplyError to drop it."""

    def delta_norms(self, payload: Any) -> dict[str, float]:
        """‖Δ_c‖ per array of one decoded payload, for the layer monitor (default: none)."""
        return {}

    def client_stats(self, update: ClientUpdate) -> dict[str, float]:
        """Numbers of one decoded reply the strategy's round metrics read (default: none)."""
        return {}


class Accumulator(ABC):
    """Sums decoded updates, or other cohorts' partial sums, into the round's aggregate."""

    @property
    @abstractmethod
    def weight(self) -> int:
        """The total weight added so far (examples, or clients)."""

    @abstractmethod
    def add(self, update: ClientUpdate) -> None:
        """Add one decoded update and release its arrays."""

    @abstractmethod
    def partial(self) -> dict[str, np.ndarray]:
        """The sum so far, as arrays that :meth:`merge` adds back."""

    @abstractmethod
    def layout(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Name, shape and dtype of every array of a non-empty :meth:`partial`."""

    @abstractmethod
    def merge(self, partial: Mapping[str, np.ndarray], weight: int) -> None:
        """Add another cohort's :meth:`partial` and its weight."""

    @abstractmethod
    def result(self) -> Any:
        """What the strategy's ``aggregate`` reads: the sum, or the mean, of everything added."""


class CohortSum(ReplyDecoder, Accumulator):
    """A round's aggregate as a sum over clients: each reply checked and decoded, then added;
    or a node's partial sum merged whole. Built from ``(train job, train downlink)``, what
    both the server and a reducing node hold."""


class CohortReducer:
    """A node's side: check, decode and add each client's reply as it is made, then reply once."""

    def __init__(self, running: CohortSum) -> None:
        self.running = running
        self.limit = running.reply_limit()
        self.per_client: dict[int, dict[str, Record]] = {}

    def add(self, client_id: int, records: dict[str, ReplyRecord], encode_s: float = 0.0) -> None:
        """Judge one client's reply exactly as the server would, and add it when it is valid.

        Its metrics gain the seconds its node spent on it (``encode-s``: the reply's encoding,
        ``reduce-s``: this check, decode and add) once its size is measured: they inform the
        round's phase times and are not part of the client's reply bytes."""
        started = time.perf_counter()
        size = reply_bytes(records)
        try:
            update = checked_update(client_id, records, size, self.limit, 1)
            decode_train(update, self.running)
        except ReplyError as err:
            verdict = {"bytes": size, "rejected": err.reason, "detail": err.detail or "-"}
            self.per_client[client_id] = {VERDICT: ConfigRecord(verdict)}
            return
        self.running.add(update)
        metrics = MetricRecord(dict(update.metrics))
        metrics.update({"encode-s": encode_s, "reduce-s": time.perf_counter() - started})
        self.per_client[client_id] = {
            VERDICT: ConfigRecord({"bytes": size}),
            METRICS: metrics,
            NORMS: MetricRecord(update.delta_norms),
            STATS: MetricRecord(update.stats),
        }

    def content(self) -> RecordDict:
        """The reply: every client's verdict and measures, and the cohort's partial sum."""
        content = pack_clients(self.per_client)
        content[PARTIAL] = to_array_record(self.running.partial())
        content[PARTIAL_WEIGHT] = ConfigRecord({"weight": self.running.weight})
        return content


def is_reduced(content: RecordDict) -> bool:
    """Whether a node's reply is a reduced cohort."""
    return PARTIAL in content


def reported_size(records: Mapping[str, Record]) -> int:
    """The bytes a client's reply had, as its node reported them (0: no verdict)."""
    verdict = records.get(VERDICT)
    size = verdict.get("bytes") if isinstance(verdict, ConfigRecord) else None
    return size if isinstance(size, int) and size >= 0 else 0


def reported_update(client_id: int, records: dict[str, Record]) -> ClientUpdate:
    """A client's update as its node judged it, without arrays; the node's ReplyError when the
    node dropped it."""
    verdict = require_record(records, VERDICT, ConfigRecord)
    if "rejected" in verdict:
        raise ReplyError(str(verdict["rejected"]), str(verdict.get("detail", "")))
    metrics = require_record(records, METRICS, MetricRecord)
    norms = require_record(records, NORMS, MetricRecord)
    stats = require_record(records, STATS, MetricRecord)
    return ClientUpdate(
        client_id,
        check_num_examples(metrics, 1),
        metrics,
        {},
        delta_norms={k: float(v) for k, v in norms.items()},
        stats=dict(stats),
    )


def reported_partial(content: RecordDict, running: CohortSum) -> tuple[dict[str, np.ndarray], int]:
    """A reduced reply's partial sum and its weight, checked against ``running``'s layout
    (nothing at weight 0, else exactly its arrays); ReplyError when they do not fit."""
    arrays, weight = content.get(PARTIAL), content.get(PARTIAL_WEIGHT)
    if not isinstance(arrays, ArrayRecord) or not isinstance(weight, ConfigRecord):
        raise ReplyError("partial", "a reduced reply needs its partial sum and its weight")
    total = weight.get("weight")
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ReplyError("partial", f"partial weight must be an integer >= 0, got {total!r}")
    expected = running.layout() if total else {}
    if set(arrays.keys()) != set(expected):
        raise ReplyError("partial", f"partial arrays {sorted(arrays.keys())} != {sorted(expected)}")
    partial = to_numpy_dict(arrays)
    for name, (shape, dtype) in expected.items():
        if partial[name].shape != shape or partial[name].dtype != dtype:
            raise ReplyError(
                "partial",
                f"{name}: {partial[name].dtype} {partial[name].shape}, expected {dtype} {shape}",
            )
    return partial, total
