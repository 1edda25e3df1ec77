"""The shape every algorithm follows: a server strategy and a client half.

``FedSparseStrategy`` is a ``flwr.serverapp.strategy.Strategy`` that works on *clients*, not
messages: it samples clients, sends one message per hosting node, validates each client's
reply on its own, counts bytes per client, and hands each valid update to the algorithm's
``fold`` in client-id order (so float sums are reproducible) as soon as the replies of every
earlier client are in, then asks ``aggregate`` for the new global arrays. A strategy that sums
as it folds never holds a round's updates together. A strategy whose aggregate is a sum names
its :class:`~strategies.protocol.reduction.CohortSum` (``cohort_sum_type``): it decodes and
folds every reply, and lets nodes that host several clients send one partial sum, merged in
the same place of the order, with each client's bytes, verdict and metrics beside it.
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
from strategies.protocol.arrays import to_array_record, to_numpy
from strategies.protocol.cohort import ClientDirectory
from strategies.protocol.job import ClientJob, ConfigScalar
from strategies.protocol.layers import LayerView
from strategies.protocol.reduction import (
    CohortSum,
    is_reduced,
    reported_partial,
    reported_size,
    reported_update,
)
from strategies.protocol.update import (
    ARRAYS,
    CONFIG,
    REPLY_SLACK_BYTES,
    ClientUpdate,
    checked_update,
    decode_train,
)
from strategies.protocol.validation import ReplyError, check_finite_metric
from strategies.protocol.wire import (
    ClientState,
    Record,
    decoded_tensors,
    pack_clients,
    record_bytes,
    shared_payload_bytes,
    unpack_clients,
)

log = logging.getLogger(__name__)

SAMPLE_TRAIN, SAMPLE_EVALUATE = 0, 1


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
            "sampled": self.sampled,
            "clients": self.clients,
            "failures": self.failures,
            "uplink_bytes": self.uplink_bytes,
            "downlink_bytes": self.downlink_bytes,
            "train_loss": self.train_loss,
            "client_train_s": self.client_train_s,
            "rejected": dict(self.rejected),
        }


class _InOrder:
    """Runs each node's fold work in the nodes' given order, holding back the work of nodes
    that reply before an earlier node (nothing is run or held without a fold). Only a node's
    first arrival counts."""

    def __init__(self, nodes: list[int], folding: bool) -> None:
        self.nodes, self.expected, self.folding = nodes, set(nodes), folding
        self.next = 0
        self.waiting: dict[int, Callable[[], None]] = {}

    def arrived(self, node_id: int, work: Callable[[], None]) -> None:
        if not self.folding or node_id not in self.expected:
            return
        self.expected.discard(node_id)
        self.waiting[node_id] = work
        while self.next < len(self.nodes) and self.nodes[self.next] in self.waiting:
            self.waiting.pop(self.nodes[self.next])()
            self.next += 1


def _nothing() -> None:
    """The fold work of a node that contributed nothing."""


class FedSparseStrategy(Strategy, LayerView):
    """Cohort-aware base strategy; subclasses define the payload codec and the aggregation."""

    name = "base"
    cohort_sum_type: type[CohortSum] | None = None
    """The hook of cohort reduction: when the round's aggregate is a sum over clients, the
    :class:`~strategies.protocol.reduction.CohortSum` that decodes, measures and adds each
    reply, built from ``(train job, train downlink)`` on the server and, when the job says so,
    on each node (None: every reply travels and is decoded on its own)."""
    nodes_decode = True
    """Whether a node can decode its clients' replies with the cohort sum alone (False: the
    server's decoding needs per-client state it keeps, and every reply travels)."""

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
        self.job = replace(job, reduce_cohorts=self.reduces_cohorts(job, max_client_weight))
        self.running: CohortSum | None = None
        self.stats = RoundStats()
        self.evaluate_stats = RoundStats()
        self.last_updates: list[ClientUpdate] = []
        self._sent: dict[int, list[int]] = {}
        self._global: ArrayRecord | None = None

    @classmethod
    def reduces_cohorts(cls, job: ClientJob, max_client_weight: float | None) -> bool:
        """Whether nodes reduce their cohorts: asked for, more than one client per node, a
        cohort sum to reduce with, and no weight cap (it judges every claim against the
        round's median before anything is added)."""
        return (
            job.reduce_cohorts
            and job.clients_per_node > 1
            and max_client_weight is None
            and cls.cohort_sum_type is not None
            and cls.nodes_decode
        )

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
            stats.downlink_bytes += self.downlink_bytes(content, cohort)
            messages.append(Message(content, dst_node_id=node_id, message_type=message_type))
        if message_type == MessageType.TRAIN:
            self.stats = stats
        else:
            self.evaluate_stats = stats
        return messages

    def downlink_bytes(self, content: RecordDict, cohort: list[int]) -> int:
        """Bytes a node message sends, counted per client as if each had its own link: the
        shared records once per client, plus each client's own records."""
        private = unpack_clients(content)
        return shared_payload_bytes(content) * len(cohort) + sum(
            record_bytes(records.values()) for records in private.values()
        )

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
        if message_type == MessageType.TRAIN:
            job = self.train_job(server_round, cohort)
        else:
            job = self.job.for_round(server_round, cohort)
        content[CONFIG] = job.to_record()
        return content

    def train_job(self, server_round: int, cohort: list[int]) -> ClientJob:
        """The train job of ``server_round`` addressed to ``cohort``, with the round's
        algorithm parameters."""
        job = self.job.for_round(server_round, cohort)
        return replace(job, params={**job.params, **self.round_params(server_round)})

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
        messages = self._messages(server_round, arrays, grid, MessageType.TRAIN, SAMPLE_TRAIN)
        kind = self.cohort_sum_type
        self.running = None
        if kind is not None:  # built from the same job and downlink the nodes receive
            downlink = self.downlink(server_round, arrays, MessageType.TRAIN)
            self.running = kind(self.train_job(server_round, []), downlink)
        return messages

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
        """Most bytes one client's reply may carry: the cohort sum's limit, else twice the
        dense model plus slack."""
        if self.running is not None:
            return self.running.reply_limit()
        return 2 * self.global_arrays.count_bytes() + REPLY_SLACK_BYTES

    def _decode_train(self, update: ClientUpdate) -> ClientUpdate:
        return decode_train(update, self)

    def decode(self, update: ClientUpdate) -> Any:
        """Validate and decode one client's payload; raise ReplyError to drop it (default: the
        round's cohort sum decodes it)."""
        if self.running is None:
            raise NotImplementedError(f"{type(self).__name__} needs decode() or cohort_sum_type")
        return self.running.decode(update)

    def client_stats(self, update: ClientUpdate) -> dict[str, float]:
        """Numbers of one decoded reply the round's metrics read, kept in ``update.stats``
        (default: the cohort sum's, or none)."""
        return {} if self.running is None else self.running.client_stats(update)

    def prefetch(self, replies: Mapping[int, Mapping[str, Record]]) -> None:
        """A node's train replies, by client id, as they arrive and before :meth:`decode` sees
        any of them: a strategy whose decoding is costly may start it elsewhere here (default:
        nothing). Nothing here is validated yet."""

    def begin_aggregation(self, server_round: int) -> None:
        """Start a round's running aggregate (default: none, ``aggregate`` sees every payload)."""

    def fold(self, update: ClientUpdate) -> None:
        """Add one valid update to the running aggregate, in client-id order, as soon as every
        earlier client's reply is in; may release its arrays (default: the cohort sum adds it;
        without one it is kept for ``aggregate``)."""
        if self.running is not None:
            self.running.add(update)

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
        accuracies = [u.metrics["accuracy"] for u in updates]
        return MetricRecord(
            {
                "fed_loss": float(
                    np.average([u.metrics["loss"] for u in updates], weights=weights)
                ),
                "fed_accuracy": float(np.average(accuracies, weights=weights)),
                # the LIPS paper's metric: each client counts once, whatever its test set's size
                "local_accuracy_mean": float(np.mean(accuracies)),
                "local_accuracy_std": float(np.std(accuracies)),
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
        A node's reduced reply is merged whole in that same place.
        """
        updates: list[ClientUpdate] = []
        pending = _InOrder(list(self._sent), fold is not None)
        for reply in replies:
            node_id = reply.metadata.src_node_id
            cohort = self._sent.pop(node_id, [])
            if reply.has_error():
                log.warning("node %d failed: %s", node_id, reply.error.reason)
                stats.failures += len(cohort)
                pending.arrived(node_id, _nothing)
                continue
            if is_reduced(reply.content):
                node_updates, work = self._reduced(node_id, reply.content, cohort, stats, fold)
            else:
                node_updates = self._per_client(
                    reply.content, cohort, stats, decode, min_examples, prefetch
                )

                def work(node_updates: list[ClientUpdate] = node_updates) -> None:
                    for update in node_updates:
                        fold(update)

            updates.extend(node_updates)
            pending.arrived(node_id, work)
        for node_id, cohort in self._sent.items():
            log.warning("node %d did not reply (clients %s)", node_id, cohort)
            stats.failures += len(cohort)
            pending.arrived(node_id, _nothing)
        self._sent = {}
        stats.clients = len(updates)
        return sorted(updates, key=lambda u: u.client_id)

    def _per_client(
        self,
        content: RecordDict,
        cohort: list[int],
        stats: RoundStats,
        decode,
        min_examples: int,
        prefetch,
    ) -> list[ClientUpdate]:
        """The valid updates of a node's reply that carries every client's records."""
        per_client = unpack_clients(content)
        if prefetch is not None:
            prefetch({c: per_client[c] for c in cohort if c in per_client})
        updates, limit = [], self.reply_limit()
        for client_id in cohort:
            records = per_client.get(client_id, {})
            size = record_bytes(records.values())
            stats.uplink_bytes += size
            try:
                updates.append(
                    decode(checked_update(client_id, records, size, limit, min_examples))
                )
            except ReplyError as err:
                _dropped(client_id, err, stats)
        return updates

    def _reduced(
        self, node_id: int, content: RecordDict, cohort: list[int], stats: RoundStats, fold
    ) -> tuple[list[ClientUpdate], Callable[[], None]]:
        """The valid updates of a node's reduced reply (as the node judged them, without
        arrays), and the work that merges its partial sum."""
        try:
            if fold is None or not self.job.reduce_cohorts:
                raise ReplyError("reduction", "this round aggregates every reply on its own")
            partial, weight = reported_partial(content, self.running)
        except ReplyError as err:
            log.warning("node %d reply dropped (clients %s): %s", node_id, cohort, err)
            stats.rejected[err.reason] += len(cohort)
            stats.failures += len(cohort)
            return [], _nothing
        per_client = unpack_clients(content)
        updates = []
        for client_id in cohort:
            records = per_client.get(client_id, {})
            stats.uplink_bytes += reported_size(records)
            try:
                updates.append(reported_update(client_id, records))
            except ReplyError as err:
                _dropped(client_id, err, stats)
        running = self.running
        return updates, lambda: running.merge(partial, weight)

    def delta_norms(self, payload: Any) -> dict[str, float]:
        """‖Δ_c‖ per float array of one client's decoded payload, Δ_c being its change to the
        global weights, for the layer monitor ({}: unknown; default: the cohort sum's). Taken
        as each reply arrives, while other clients still train, so the monitor never revisits
        the updates."""
        return {} if self.running is None else self.running.delta_norms(payload)

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


def _dropped(client_id: int, err: ReplyError, stats: RoundStats) -> None:
    log.warning("client %d reply dropped: %s", client_id, err)
    stats.rejected[err.reason] += 1
    stats.failures += 1


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
