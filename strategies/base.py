"""The shape every algorithm follows: a server strategy and a client half.

``FedSparseStrategy`` is a ``flwr.serverapp.strategy.Strategy`` that works on *clients*, not
messages: it samples clients, sends one message per hosting node, validates each client's
reply on its own, counts bytes per client, and hands each valid update to the algorithm's
``fold`` in client-id order (so float sums are reproducible) as soon as the replies of every
earlier client are in, then asks ``aggregate`` for the new global arrays. A strategy that sums
as it folds never holds a round's updates together.
``ClientAlgorithm`` is the client half the generic ClientApp runtime calls.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import nn

from models.training import TensorData, load_weights
from strategies.arrays import to_array_record, to_numpy
from strategies.cohort import ClientDirectory
from strategies.job import ClientJob, ConfigScalar
from strategies.layers import LayerView
from strategies.validation import (
    ReplyError,
    check_finite_metric,
    check_num_examples,
    require_record,
)
from strategies.wire import (
    ClientState,
    Record,
    decoded_tensors,
    pack_clients,
    record_bytes,
    shared_payload_bytes,
    unpack_clients,
)

log = logging.getLogger(__name__)

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
SAMPLE_TRAIN, SAMPLE_EVALUATE = 0, 1
REPLY_SLACK_BYTES = 1 << 16


def check_number(key: str, value: Any, ok: Callable[[float], bool], requirement: str) -> None:
    """A ValueError naming ``strategy.<key>`` unless ``value`` is a number (not a bool) for
    which ``ok`` holds; ``ok`` is asked only once ``value`` is a number, so a string gets this
    message rather than a comparison's TypeError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not ok(value):
        raise ValueError(f"strategy.{key}={value!r}: {requirement}")


def finite_or_zero(value: object) -> float:
    """A client-reported number, or 0 when it is missing or not a finite number."""
    return float(value) if isinstance(value, int | float) and np.isfinite(value) else 0.0


@dataclass
class ClientUpdate:
    """One client's validated reply."""

    client_id: int
    num_examples: int
    metrics: MetricRecord
    records: dict[str, Record]
    payload: Any = None
    delta_norms: dict[str, float] = field(default_factory=dict)  # ‖Δ_c‖ per array (monitor)

    def release(self, keep: Any = None) -> None:
        """Drop the reply's arrays once they are folded into the aggregate; metrics stay, and
        ``keep`` replaces the payload (what the round's metrics still need, or nothing)."""
        self.records = {}
        self.payload = keep


@dataclass
class RoundStats:
    """What one round of training cost and how many replies made it."""

    sampled: int = 0
    clients: int = 0
    failures: int = 0
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    train_loss: float = float("nan")
    client_train_s: float = 0.0
    rejected: Counter[str] = field(default_factory=Counter)

    def to_metrics(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "failures": self.failures,
            "uplink_bytes": self.uplink_bytes,
            "downlink_bytes": self.downlink_bytes,
            "train_loss": self.train_loss,
            "client_train_s": self.client_train_s,
            "rejected": dict(self.rejected),
        }


class _InOrder:
    """Hands nodes' updates to ``fold`` in the nodes' given order, holding back those that
    arrive before an earlier node's (nothing is held without a ``fold``). Only a node's first
    arrival counts."""

    def __init__(self, nodes: list[int], fold) -> None:
        self.nodes, self.expected, self.fold = nodes, set(nodes), fold
        self.next = 0
        self.waiting: dict[int, list[ClientUpdate]] = {}

    def arrived(self, node_id: int, updates: list[ClientUpdate]) -> None:
        if self.fold is None or node_id not in self.expected:
            return
        self.expected.discard(node_id)
        self.waiting[node_id] = updates
        while self.next < len(self.nodes) and self.nodes[self.next] in self.waiting:
            for update in self.waiting.pop(self.nodes[self.next]):
                self.fold(update)
            self.next += 1


class FedSparseStrategy(Strategy, LayerView):
    """Cohort-aware base strategy; subclasses define the payload codec and the aggregation."""

    name = "base"

    def __init__(
        self,
        job: ClientJob,
        directory: ClientDirectory,
        clients_per_round: int,
        num_rounds: int,
        min_replies: int = 1,
        max_client_weight: float | None = None,
        **params: Any,
    ) -> None:
        if params:
            raise TypeError(f"strategy {self.name!r} got unknown parameters {sorted(params)}")
        self.job = job
        self.directory = directory
        self.clients_per_round = clients_per_round
        self.num_rounds = num_rounds
        self.min_replies = min_replies
        self.max_client_weight = max_client_weight
        self.stats = RoundStats()
        self.evaluate_stats = RoundStats()
        self.last_updates: list[ClientUpdate] = []
        self._sent: dict[int, list[int]] = {}
        self._global: ArrayRecord | None = None

    # ----------------------------------------------------------------- sampling and routing
    def sample_clients(self, server_round: int, purpose: int) -> list[int]:
        """Clients for this round, drawn from the run seed, the round and the purpose."""
        available = self.directory.available_clients()
        count = min(self.clients_per_round, len(available))
        rng = np.random.default_rng([self.job.seed, server_round, purpose])
        return sorted(int(c) for c in rng.choice(available, size=count, replace=False))

    def _messages(
        self, server_round: int, arrays: ArrayRecord, grid: Grid, message_type: str, purpose: int
    ) -> list[Message]:
        self.directory.refresh(grid)
        self._global = arrays
        clients = self.sample_clients(server_round, purpose)
        stats = RoundStats(sampled=len(clients))
        self._sent = self.directory.group_by_node(clients)
        messages = []
        for node_id, cohort in self._sent.items():
            content = self.node_content(server_round, arrays, cohort, message_type)
            private = unpack_clients(content)
            stats.downlink_bytes += shared_payload_bytes(content) * len(cohort) + sum(
                record_bytes(records.values()) for records in private.values()
            )
            messages.append(Message(content, dst_node_id=node_id, message_type=message_type))
        if message_type == MessageType.TRAIN:
            self.stats = stats
        else:
            self.evaluate_stats = stats
        return messages

    def node_content(
        self, server_round: int, arrays: ArrayRecord, cohort: list[int], message_type: str
    ) -> RecordDict:
        """One node's message: the downlink payload, the job, and any per-client records."""
        content = pack_clients(
            {c: self.client_records(server_round, c) for c in cohort}
            if message_type == MessageType.TRAIN
            else {}
        )
        content[ARRAYS] = self.downlink(server_round, arrays, message_type)
        job = self.job.for_round(server_round, cohort)
        if message_type == MessageType.TRAIN:
            job = replace(job, params={**job.params, **self.round_params(server_round)})
        content[CONFIG] = job.to_record()
        return content

    def round_params(self, server_round: int) -> dict[str, ConfigScalar]:
        """Per-round algorithm parameters for the train job (default: none)."""
        return {}

    @classmethod
    def schedule_spans_num_rounds(cls, params: Mapping[str, Any]) -> bool:
        """Whether, with these strategy parameters, a schedule stretches over ``num_rounds``
        itself, so a resumed run given another ``num_rounds`` would switch schedules mid-run
        (default: no)."""
        return False

    def downlink(self, server_round: int, arrays: ArrayRecord, message_type: str) -> ArrayRecord:
        """What the global model looks like on the wire (default: the dense arrays)."""
        return arrays

    def client_records(self, server_round: int, client_id: int) -> dict[str, Record]:
        """Records addressed to one client only (default: none)."""
        return {}

    # -------------------------------------------------------------------------- train
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._messages(server_round, arrays, grid, MessageType.TRAIN, SAMPLE_TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.begin_aggregation(server_round)
        streaming = self.max_client_weight is None  # the weight cap needs every claim first
        updates = self._collect(
            replies,
            self.stats,
            self._decode_train,
            fold=self.fold if streaming else None,
            prefetch=self.prefetch,
        )
        updates = self._drop_heavy(updates)
        if not streaming:
            for update in updates:
                self.fold(update)
        self.last_updates = updates
        if updates:
            losses = [u.metrics["train-loss"] for u in updates]
            weights = [u.num_examples for u in updates]
            self.stats.train_loss = float(np.average(losses, weights=weights))
            self.stats.client_train_s = float(
                sum(finite_or_zero(u.metrics.get("train-s", 0.0)) for u in updates)
            )
        if len(updates) < self.min_replies:
            log.error(
                "round %d: %d valid replies < min_replies=%d",
                server_round,
                len(updates),
                self.min_replies,
            )
            return None, None
        arrays = self.aggregate(server_round, updates)
        if not all(
            np.isfinite(to_numpy(a)).all() for a in arrays.values() if a.dtype.startswith("float")
        ):
            log.error(
                "round %d: the aggregate is not finite; the global model is kept", server_round
            )
            self.stats.rejected["non-finite-aggregate"] += 1
            return self.global_arrays, MetricRecord({"clients": self.stats.clients})
        return arrays, MetricRecord({"clients": self.stats.clients})

    def _drop_heavy(self, updates: list[ClientUpdate]) -> list[ClientUpdate]:
        """Drop replies claiming more than ``max_client_weight`` times the median num-examples.

        Judged against the lower median claim, not the total, so inflated replies cannot hide
        behind each other while they are at most half the round (the mean of the two middle
        claims would let an even split of honest and inflated claims through).
        """
        if self.max_client_weight is None or len(updates) < 2:
            return updates
        claims = sorted(u.num_examples for u in updates)
        median = float(claims[(len(claims) - 1) // 2])
        kept = []
        for update in updates:
            ratio = update.num_examples / median
            if ratio > self.max_client_weight:
                log.warning(
                    "client %d reply dropped: weight: claims %.1f x the median num-examples"
                    " > max_client_weight=%s",
                    update.client_id,
                    ratio,
                    self.max_client_weight,
                )
                self.stats.rejected["weight"] += 1
                self.stats.failures += 1
            else:
                kept.append(update)
        self.stats.clients = len(kept)
        return kept

    def reply_limit(self) -> int:
        """Most bytes one client's reply may carry: twice the dense model plus slack."""
        return 2 * self.global_arrays.count_bytes() + REPLY_SLACK_BYTES

    def _decode_train(self, update: ClientUpdate) -> ClientUpdate:
        check_finite_metric(update.metrics, "train-loss")
        update.payload = self.decode(update)
        update.delta_norms = self.delta_norms(update.payload)
        return update

    @abstractmethod
    def decode(self, update: ClientUpdate) -> Any:
        """Validate and decode one client's payload; raise ReplyError to drop it."""

    def prefetch(self, replies: Mapping[int, Mapping[str, Record]]) -> None:
        """A node's train replies, by client id, as they arrive and before :meth:`decode` sees
        any of them: a strategy whose decoding is costly may start it elsewhere here (default:
        nothing). Nothing here is validated yet."""

    def begin_aggregation(self, server_round: int) -> None:
        """Start a round's running aggregate (default: none, ``aggregate`` sees every payload)."""

    def fold(self, update: ClientUpdate) -> None:
        """Add one valid update to the running aggregate, in client-id order, as soon as every
        earlier client's reply is in; may release its arrays (default: keep it for
        ``aggregate``)."""

    @abstractmethod
    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> ArrayRecord:
        """New global arrays from the folded aggregate or the decoded updates (sorted by
        client id)."""

    @property
    def global_arrays(self) -> ArrayRecord:
        """The global arrays sent this round (the template replies are checked against)."""
        if self._global is None:
            raise RuntimeError("no round configured yet")
        return self._global

    # ------------------------------------------------------------------------ evaluate
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._messages(server_round, arrays, grid, MessageType.EVALUATE, SAMPLE_EVALUATE)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        updates = self._collect(replies, self.evaluate_stats, self._decode_evaluate, min_examples=0)
        updates = [u for u in updates if u.num_examples > 0]  # clients without a local test split
        if not updates:
            return None
        weights = [u.num_examples for u in updates]
        return MetricRecord(
            {
                "fed_loss": float(
                    np.average([u.metrics["loss"] for u in updates], weights=weights)
                ),
                "fed_accuracy": float(
                    np.average([u.metrics["accuracy"] for u in updates], weights=weights)
                ),
            }
        )

    @staticmethod
    def _decode_evaluate(update: ClientUpdate) -> ClientUpdate:
        check_finite_metric(update.metrics, "loss")
        check_finite_metric(update.metrics, "accuracy")
        return update

    # ------------------------------------------------------------------------ plumbing
    def _collect(
        self,
        replies: Iterable[Message],
        stats: RoundStats,
        decode,
        min_examples: int = 1,
        fold=None,
        prefetch=None,
    ) -> list[ClientUpdate]:
        """Validate every client's reply; count failures and rejections; never raise.

        ``fold`` gets each valid update in client-id order as soon as every node hosting
        earlier clients has replied (or failed): nodes host consecutive client ids, so a node's
        updates wait only for the nodes before it, and the order never depends on cohort size.
        """
        updates: list[ClientUpdate] = []
        pending = _InOrder(list(self._sent), fold)
        for reply in replies:
            node_id = reply.metadata.src_node_id
            cohort = self._sent.pop(node_id, [])
            node_updates: list[ClientUpdate] = []
            if reply.has_error():
                log.warning("node %d failed: %s", node_id, reply.error.reason)
                stats.failures += len(cohort)
                pending.arrived(node_id, node_updates)
                continue
            per_client = unpack_clients(reply.content)
            if prefetch is not None:
                prefetch({c: per_client[c] for c in cohort if c in per_client})
            for client_id in cohort:
                records = per_client.get(client_id, {})
                size = record_bytes(records.values())
                stats.uplink_bytes += size
                try:
                    if size > self.reply_limit():
                        raise ReplyError("oversize", f"{size} bytes > limit {self.reply_limit()}")
                    metrics = require_record(records, METRICS, MetricRecord)
                    update = ClientUpdate(
                        client_id, check_num_examples(metrics, min_examples), metrics, records
                    )
                    node_updates.append(decode(update))
                except ReplyError as err:
                    log.warning("client %d reply dropped: %s", client_id, err)
                    stats.rejected[err.reason] += 1
                    stats.failures += 1
            updates.extend(node_updates)
            pending.arrived(node_id, node_updates)
        for node_id, cohort in self._sent.items():
            log.warning("node %d did not reply (clients %s)", node_id, cohort)
            stats.failures += len(cohort)
            pending.arrived(node_id, [])
        self._sent = {}
        stats.clients = len(updates)
        return sorted(updates, key=lambda u: u.client_id)

    def delta_norms(self, payload: Any) -> dict[str, float]:
        """‖Δ_c‖ per float array of one client's decoded payload, Δ_c being its change to the
        global weights, for the layer monitor ({}: unknown). Taken as each reply arrives, while
        other clients still train, so the monitor never revisits the updates."""
        return {}

    def mean_client_delta(self) -> dict[str, np.ndarray] | None:
        """Σ_c s_c Δ_c of the last aggregated round (s_c = the :meth:`monitor_weights` shares),
        for the layer monitor (None: unknown)."""
        return None

    def monitor_weights(self) -> list[float]:
        """The weight of each of the last round's updates in :meth:`mean_client_delta`, as the
        aggregation weighs them: num-examples, unless a strategy counts clients otherwise."""
        return [float(u.num_examples) for u in self.last_updates]

    def finish(self, run_dir: Path) -> dict[str, Any]:
        """End-of-run hook: write the algorithm's artefacts; returns extra summary fields."""
        return {}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Server-side algorithm state to checkpoint (default: none)."""
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` saved."""

    def round_metrics(self, server_round: int) -> dict[str, Any]:
        """Algorithm-specific keys for this round's metrics line (default: none)."""
        return {}

    def progress(self, row: Mapping[str, Any]) -> str:
        """A short note on this round's metrics ``row`` for the round's progress line, e.g. the
        bits per parameter a compressing strategy sent (default: none)."""
        return ""

    def summary(self) -> None:
        log.info("strategy %s: %d clients per round", self.name, self.clients_per_round)


class ClientAlgorithm:
    """Client half of a protocol: read the payload into a model, train, encode the reply.

    The default is plain dense training (FedAvg's client): load the global arrays, run local
    SGD, send the trained arrays back.
    """

    def receive(
        self,
        model: nn.Module,
        content: RecordDict,
        client_id: int,
        job: ClientJob,
        state: ClientState,
    ) -> None:
        """Load the downlink payload into ``model`` before local training."""
        load_weights(model, decoded_tensors(content[ARRAYS]))

    def prepare(
        self,
        model: nn.Module,
        train: TensorData,
        client_id: int,
        job: ClientJob,
        state: ClientState,
    ) -> None:
        """Last change to the received model before local training (default: none)."""

    def optimizer(self, model: nn.Module, job: ClientJob) -> torch.optim.Optimizer:
        """The local optimizer (fresh every round)."""
        return torch.optim.SGD(
            model.parameters(), lr=job.lr, momentum=job.momentum, weight_decay=job.weight_decay
        )

    def reply(
        self, model: nn.Module, client_id: int, job: ClientJob, state: ClientState
    ) -> dict[str, Record]:
        """The records this client sends up after training."""
        return {ARRAYS: to_array_record(model.state_dict())}
