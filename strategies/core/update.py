"""One client's reply, checked: what every server strategy, and a node reducing its cohort, runs
on a reply before any algorithm sees it.

The same functions serve both ends, so a node that validates its clients' replies itself drops
exactly the replies the server would have dropped, under the same reasons.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from flwr.app import MetricRecord

from strategies.core.validation import (
    ReplyError,
    check_finite_metric,
    check_num_examples,
    require_record,
)
from strategies.core.wire import Measured, Record, record_bytes

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
STATE_LOST = "state-lost"
"""A reply metric the engine adds (``strategies.core.client_state``): the round of the kept
state a client no longer had. Engine plumbing, like the state rounds the job names: not counted
in the reply's bytes."""
REPLY_SLACK_BYTES = 1 << 16  # room for a reply's keys and metrics beside its arrays


@dataclass
class ClientUpdate:
    """One client's validated reply."""

    client_id: int
    num_examples: int
    metrics: MetricRecord
    records: dict[str, Record]
    payload: Any = None
    delta_norms: dict[str, float] = field(default_factory=dict)  # ‖Δ_c‖ per array (monitor)
    stats: dict[str, float] = field(default_factory=dict)  # what the round's metrics read

    def release(self, keep: Any = None) -> None:
        """Drop the reply's arrays once they are folded into the aggregate; metrics stay, and
        ``keep`` replaces the payload (what the round's metrics still need, or nothing)."""
        self.records = {}
        self.payload = keep


class TrainDecoder(Protocol):
    """What turns a train reply into a payload: a strategy, or its cohort sum on a node."""

    def decode(self, update: ClientUpdate) -> Any: ...

    def delta_norms(self, payload: Any) -> dict[str, float]: ...

    def client_stats(self, update: ClientUpdate) -> dict[str, float]: ...


def reply_bytes(records: Mapping[str, Measured]) -> int:
    """Bytes of one client's reply as its algorithm sent them (without the engine's
    :data:`STATE_LOST` report)."""
    size = record_bytes(records.values())
    metrics = records.get(METRICS)
    if isinstance(metrics, MetricRecord) and STATE_LOST in metrics:
        size -= MetricRecord({STATE_LOST: metrics[STATE_LOST]}).count_bytes()
    return size


def checked_update(
    client_id: int, records: dict[str, Record], size: int, limit: int, min_examples: int
) -> ClientUpdate:
    """The reply of ``size`` bytes as an update, once it is within ``limit`` bytes and carries
    metrics with a valid ``num-examples``; a ReplyError otherwise."""
    if size > limit:
        raise ReplyError("oversize", f"{size} bytes > limit {limit}")
    metrics = require_record(records, METRICS, MetricRecord)
    return ClientUpdate(client_id, check_num_examples(metrics, min_examples), metrics, records)


def decode_train(update: ClientUpdate, decoder: TrainDecoder) -> ClientUpdate:
    """A train update with its payload decoded, its norms and its stats taken."""
    check_finite_metric(update.metrics, "train-loss")
    update.payload = decoder.decode(update)
    update.delta_norms = decoder.delta_norms(update.payload)
    update.stats = decoder.client_stats(update)
    return update
