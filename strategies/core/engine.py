"""The round engine every strategy owns: who trains, what travels, what came back.

:class:`RoundEngine` samples clients from the run seed, sends one message per hosting node,
counts bytes per client as if each had its own link, validates each client's reply on its own,
drops the invalid ones with their reason, and hands each valid update to a ``fold`` callback in
client-id order (so float sums are reproducible) as soon as the replies of every earlier client
are in. A node that reduced its cohort sends one partial sum, merged in that same place of the
order. None of this depends on the algorithm: a strategy supplies the node messages' content and
the decoding, the engine does the rest and reports it as :class:`RoundStats`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from strategies.core.cohort import ClientDirectory
from strategies.core.reduction import (
    CohortSum,
    is_reduced,
    reported_partial,
    reported_size,
    reported_update,
)
from strategies.core.update import ClientUpdate, checked_update, reply_bytes
from strategies.core.validation import ReplyError
from strategies.core.wire import Record, record_bytes, shared_payload_bytes, unpack_clients

log = logging.getLogger(__name__)

SAMPLE_TRAIN, SAMPLE_EVALUATE = 0, 1
Decode = Callable[[ClientUpdate], ClientUpdate]
Fold = Callable[[ClientUpdate], None]
Prefetch = Callable[[Mapping[int, Mapping[str, Record]]], None]
CLIENT_SECONDS = ("train-s", "encode-s", "reduce-s")
"""Per-client reply metrics that are wall-clock seconds (training, the algorithm's encoding of
the reply, a reducing node's check + decode + add), summed over a round's valid replies."""


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
    client_seconds: dict[str, float] = field(default_factory=dict)
    """:data:`CLIENT_SECONDS` summed over the valid replies (a metric no client reports: 0)."""
    reply_wait_s: float = 0.0
    """Seconds :meth:`RoundEngine.collect` spent waiting for the next reply (not handling one)."""

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

    def add_training(self, updates: list[ClientUpdate]) -> None:
        """The clients' mean training loss (weighted by examples) and summed seconds."""
        self.client_seconds = {
            key: float(sum(finite_or_zero(u.metrics.get(key, 0.0)) for u in updates))
            for key in CLIENT_SECONDS
        }
        if not updates:
            return
        losses = [u.metrics["train-loss"] for u in updates]
        weights = [u.num_examples for u in updates]
        self.train_loss = float(np.average(losses, weights=weights))
        self.client_train_s = self.client_seconds["train-s"]


@dataclass
class RoundResult:
    """What a round of training produced, as the experiment loop reads it.

    ``arrays`` is None when fewer than ``min_replies`` valid replies came back. ``updates`` are
    the valid replies by client id (arrays released, norms and stats kept), ``mean_delta`` is
    Σ_c s_c Δ_c with ``weights`` s_c (None: the strategy does not know it). Unpacks as Flower's
    ``(arrays, metrics)`` pair, so it is what ``Strategy.aggregate_train`` returns.
    """

    arrays: ArrayRecord | None
    stats: RoundStats
    updates: list[ClientUpdate] = field(default_factory=list)
    mean_delta: dict[str, np.ndarray] | None = None
    weights: list[float] = field(default_factory=list)

    def __iter__(self):
        metrics = None if self.arrays is None else MetricRecord({"clients": self.stats.clients})
        return iter((self.arrays, metrics))


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


def _timed(replies: Iterable[Message], stats: RoundStats) -> Iterator[Message]:
    """``replies``, adding the seconds spent waiting for each one to ``stats.reply_wait_s``."""
    iterator = iter(replies)
    while True:
        start = time.perf_counter()
        reply = next(iterator, None)
        stats.reply_wait_s += time.perf_counter() - start
        if reply is None:
            return
        yield reply


def _dropped(client_id: int, err: ReplyError, stats: RoundStats) -> None:
    log.warning("client %d reply dropped: %s", client_id, err)
    stats.rejected[err.reason] += 1
    stats.failures += 1


class RoundEngine:
    """Sampling, node messages, byte accounting and reply collection for one strategy."""

    def __init__(
        self,
        seed: int,
        directory: ClientDirectory,
        clients_per_round: int,
        max_client_weight: float | None = None,
    ) -> None:
        self.seed = seed
        self.directory = directory
        self.clients_per_round = clients_per_round
        self.max_client_weight = max_client_weight
        self.train_stats = RoundStats()
        self.evaluate_stats = RoundStats()
        self._sent: dict[int, list[int]] = {}

    @property
    def streaming(self) -> bool:
        """Whether updates are folded as they arrive (the weight cap needs every claim first)."""
        return self.max_client_weight is None

    def sample_clients(self, server_round: int, purpose: int) -> list[int]:
        """Clients for this round, drawn from the run seed, the round and the purpose."""
        available = self.directory.available_clients()
        count = min(self.clients_per_round, len(available))
        rng = np.random.default_rng([self.seed, server_round, purpose])
        return sorted(int(c) for c in rng.choice(available, size=count, replace=False))

    def messages(
        self,
        server_round: int,
        grid: Grid,
        message_type: str,
        content: Callable[[list[int]], RecordDict],
        downlink_bytes: Callable[[RecordDict, list[int]], int],
    ) -> list[Message]:
        """One message per node hosting sampled clients, with ``content(cohort)``; starts the
        round's stats (train or evaluate) with the sampled count and the downlink bytes."""
        self.directory.refresh(grid)
        purpose = SAMPLE_TRAIN if message_type == MessageType.TRAIN else SAMPLE_EVALUATE
        clients = self.sample_clients(server_round, purpose)
        stats = RoundStats(sampled=len(clients))
        self._sent = self.directory.group_by_node(clients)
        messages = []
        for node_id, cohort in self._sent.items():
            body = content(cohort)
            stats.downlink_bytes += downlink_bytes(body, cohort)
            messages.append(Message(body, dst_node_id=node_id, message_type=message_type))
        if message_type == MessageType.TRAIN:
            self.train_stats = stats
        else:
            self.evaluate_stats = stats
        return messages

    def collect(
        self,
        replies: Iterable[Message],
        stats: RoundStats,
        decode: Decode,
        reply_limit: int,
        min_examples: int = 1,
        fold: Fold | None = None,
        prefetch: Prefetch | None = None,
        running: CohortSum | None = None,
    ) -> list[ClientUpdate]:
        """Validate every client's reply; count failures and rejections; never raise.

        ``fold`` gets each valid update in client-id order as soon as every node hosting
        earlier clients has replied (or failed): nodes host consecutive client ids, so a node's
        updates wait only for the nodes before it, and the order never depends on cohort size.
        A node's reduced reply is merged whole into ``running`` in that same place.
        """
        updates: list[ClientUpdate] = []
        pending = _InOrder(list(self._sent), fold is not None)
        for reply in _timed(replies, stats):
            node_id = reply.metadata.src_node_id
            cohort = self._sent.pop(node_id, [])
            if reply.has_error():
                log.warning("node %d failed: %s", node_id, reply.error.reason)
                stats.failures += len(cohort)
                pending.arrived(node_id, _nothing)
                continue
            if is_reduced(reply.content):
                node_updates, work = self._reduced(node_id, reply.content, cohort, stats, running)
            else:
                node_updates = self._per_client(
                    reply.content, cohort, stats, decode, reply_limit, min_examples, prefetch
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
        decode: Decode,
        limit: int,
        min_examples: int,
        prefetch: Prefetch | None,
    ) -> list[ClientUpdate]:
        """The valid updates of a node's reply that carries every client's records."""
        per_client = unpack_clients(content)
        if prefetch is not None:
            prefetch({c: per_client[c] for c in cohort if c in per_client})
        updates = []
        for client_id in cohort:
            records = per_client.get(client_id, {})
            size = reply_bytes(records)
            stats.uplink_bytes += size
            try:
                updates.append(
                    decode(checked_update(client_id, records, size, limit, min_examples))
                )
            except ReplyError as err:
                _dropped(client_id, err, stats)
        return updates

    def _reduced(
        self,
        node_id: int,
        content: RecordDict,
        cohort: list[int],
        stats: RoundStats,
        running: CohortSum | None,
    ) -> tuple[list[ClientUpdate], Callable[[], None]]:
        """The valid updates of a node's reduced reply (as the node judged them, without
        arrays), and the work that merges its partial sum."""
        try:
            if running is None or not self.streaming:
                raise ReplyError("reduction", "this round aggregates every reply on its own")
            partial, weight = reported_partial(content, running)
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
        return updates, lambda: running.merge(partial, weight)

    def drop_heavy(self, updates: list[ClientUpdate], stats: RoundStats) -> list[ClientUpdate]:
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
                stats.rejected["weight"] += 1
                stats.failures += 1
            else:
                kept.append(update)
        stats.clients = len(kept)
        return kept


def per_client_downlink_bytes(content: RecordDict, cohort: list[int]) -> int:
    """Bytes a node message sends, counted per client as if each had its own link: the shared
    records once per client, plus each client's own records."""
    private = unpack_clients(content)
    return shared_payload_bytes(content) * len(cohort) + sum(
        record_bytes(records.values()) for records in private.values()
    )
