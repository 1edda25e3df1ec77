"""The algorithm API: what a strategy decides, apart from the round engine that runs it.

``FedSparseStrategy`` is a ``flwr.serverapp.strategy.Strategy`` that works on *clients*, not
messages. Its :class:`~strategies.core.engine.RoundEngine` samples clients, sends one message
per hosting node, counts bytes, validates each reply and folds the valid ones in client-id
order; the algorithm says what goes down (``downlink``, ``client_records``, ``round_params``),
how a reply is read and summed (``cohort_sum_type``, or ``decode`` / ``fold``) and what the new
global model is (``aggregate``). A strategy whose aggregate is a sum names its
:class:`~strategies.core.reduction.CohortSum`: it decodes and adds every reply, and lets
nodes that host several clients send one partial sum. The optional hooks are grouped below by
concern: sending, receiving, monitoring, checkpointing, reporting.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from strategies.core.client_state import StateRounds, keeps_state, split_state
from strategies.core.cohort import ClientDirectory
from strategies.core.engine import (
    RoundEngine,
    RoundResult,
    RoundStats,
    per_client_downlink_bytes,
)
from strategies.core.job import ClientJob, ConfigScalar
from strategies.core.layers import LayerView
from strategies.core.params import Params
from strategies.core.reduction import CohortSum
from strategies.core.update import (
    ARRAYS,
    CONFIG,
    REPLY_SLACK_BYTES,
    ClientUpdate,
    decode_train,
)
from strategies.core.validation import check_finite_metric
from strategies.core.wire import Record, pack_clients
from strategies.numeric.arrays import to_numpy

log = logging.getLogger(__name__)


def reduces_cohorts(
    job: ClientJob, max_client_weight: float | None, cohort_sum: type[CohortSum] | None
) -> bool:
    """Whether nodes reduce their cohorts: asked for, more than one client per node, a cohort
    sum nodes can decode with (``cohort_sum``: the algorithm's, None when it has none or its
    decoding needs server state), and no weight cap (it judges every claim against the round's
    median before anything is added). The one place this is decided."""
    return (
        job.reduce_cohorts
        and job.clients_per_node > 1
        and max_client_weight is None
        and cohort_sum is not None
    )


def unreduced_because(
    job: ClientJob, max_client_weight: float | None, strategy: type[FedSparseStrategy]
) -> str | None:
    """Why nodes hosting several clients send every client's update under ``job`` (None: they
    reduce their cohorts, or host one client each), in words a run's start line can show."""
    if job.clients_per_node <= 1:
        return None
    if not job.reduce_cohorts:
        return "engine.reduce_cohorts=false"
    if max_client_weight is not None:
        return "max_client_weight judges every claim against the round's median first"
    if strategy.node_sum() is None:
        return f"{strategy.name}: {strategy.unreduced_reason}"
    return None


class FedSparseStrategy(Strategy, LayerView):
    """The server half of an algorithm. A subclass implements ``aggregate`` and either names a
    ``cohort_sum_type`` or implements ``decode`` (and ``fold`` to sum as replies arrive); every
    other hook has a default. Its ``params`` is its ``params_type``, built from the config."""

    name = "base"
    params_type: type[Params] = Params
    """The algorithm's parameters (``self.params``), built from the ``strategy`` config group."""
    cohort_sum_type: type[CohortSum] | None = None
    """The hook of cohort reduction: when the round's aggregate is a sum over clients, the
    :class:`~strategies.core.reduction.CohortSum` that decodes, measures and adds each
    reply, built from ``(train job, train downlink)`` on the server and, when the job says so,
    on each node (None: ``decode`` and ``fold`` read every reply on its own)."""
    nodes_decode = True
    """Whether a node can decode its clients' replies with the cohort sum alone (False: the
    server's decoding needs per-client state it keeps, and every reply travels)."""
    unreduced_reason = "its server reads every reply on its own (no cohort_sum_type)"
    """Why its nodes cannot reduce, said at a run's start when they would otherwise (set it
    beside ``nodes_decode = False`` or when there is no ``cohort_sum_type``)."""

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
        self.params = self.params_type.from_values(params, self.name)
        for warning in self.params.warnings():
            log.warning(warning)
        self.num_rounds = num_rounds
        self.min_replies = min_replies
        reduces = reduces_cohorts(job, max_client_weight, self.node_sum())
        self.job = replace(job, reduce_cohorts=reduces)
        self.engine = RoundEngine(job.seed, directory, clients_per_round, max_client_weight)
        self.client_state = (
            StateRounds(job.num_clients, in_context=not job.state_dir)
            if keeps_state(_client_keeps_state(job.algorithm), job)
            else None
        )
        """Which version of its kept state each client starts from (None: clients keep none)."""
        self.running: CohortSum | None = None
        self.last_updates: list[ClientUpdate] = []
        self._global: ArrayRecord | None = None

    @classmethod
    def node_sum(cls) -> type[CohortSum] | None:
        """The cohort sum a node can reduce with: the algorithm's, unless decoding needs
        state only the server keeps."""
        return cls.cohort_sum_type if cls.nodes_decode else None

    @property
    def directory(self) -> ClientDirectory:
        return self.engine.directory

    @property
    def num_clients(self) -> int:
        """Clients in the federation, sampled this round or not (the config's ``num_clients``)."""
        return self.job.num_clients

    @property
    def clients_per_round(self) -> int:
        return self.engine.clients_per_round

    @property
    def stats(self) -> RoundStats:
        """The current (or last) training round's counts."""
        return self.engine.train_stats

    @property
    def evaluate_stats(self) -> RoundStats:
        """The current (or last) evaluation round's counts."""
        return self.engine.evaluate_stats

    @property
    def global_arrays(self) -> ArrayRecord:
        """The global arrays sent this round (the template replies are checked against)."""
        if self._global is None:
            raise RuntimeError("no round configured yet")
        return self._global

    # ------------------------------------------------------------ Flower's Strategy hooks
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = self._messages(server_round, arrays, grid, MessageType.TRAIN)
        kind = self.cohort_sum_type
        self.running = None
        if kind is not None:  # built from the same job and downlink the nodes receive
            downlink = self.downlink(server_round, arrays, MessageType.TRAIN)
            self.running = kind(self.train_job(server_round, []), downlink)
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> RoundResult:
        """The round's new global arrays and what it took (unpacks as Flower's pair)."""
        self.begin_aggregation(server_round)
        engine, stats = self.engine, self.engine.train_stats
        updates = engine.collect(
            replies,
            stats,
            self._decode_train,
            self.reply_limit(),
            fold=self.fold if engine.streaming else None,
            prefetch=self.prefetch,
            running=self.running if self.job.reduce_cohorts else None,
        )
        updates = engine.drop_heavy(updates, stats)
        if not engine.streaming:
            for update in updates:
                self.fold(update)
        self.last_updates = updates
        if self.client_state is not None:
            self.client_state.accepted(server_round, updates)
        stats.add_training(updates)
        if len(updates) < self.min_replies:
            log.error(
                "round %d: %d valid replies < min_replies=%d",
                server_round,
                len(updates),
                self.min_replies,
            )
            return RoundResult(None, stats, updates)
        arrays = self.aggregate(server_round, updates)
        if not all(
            np.isfinite(to_numpy(a)).all() for a in arrays.values() if a.dtype.startswith("float")
        ):
            log.error(
                "round %d: the aggregate is not finite; the global model is kept", server_round
            )
            stats.rejected["non-finite-aggregate"] += 1
            arrays = self.global_arrays
        return RoundResult(arrays, stats, updates, self.mean_client_delta(), self.monitor_weights())

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._messages(server_round, arrays, grid, MessageType.EVALUATE)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        updates = self.engine.collect(
            replies, self.engine.evaluate_stats, _checked_evaluation, self.reply_limit(), 0
        )
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

    def summary(self) -> None:
        log.info("strategy %s: %d clients per round", self.name, self.clients_per_round)

    # ------------------------------------------------------------------------ sending
    def _messages(
        self, server_round: int, arrays: ArrayRecord, grid: Grid, message_type: str
    ) -> list[Message]:
        self._global = arrays
        return self.engine.messages(
            server_round,
            grid,
            message_type,
            lambda cohort: self.node_content(server_round, arrays, cohort, message_type),
            self.downlink_bytes,
        )

    def downlink_bytes(self, content: RecordDict, cohort: list[int]) -> int:
        """Bytes a node message sends, counted per client as if each had its own link."""
        return per_client_downlink_bytes(content, cohort)

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
        if self.client_state is not None:
            job = self.client_state.job_for(job)
        content[CONFIG] = job.to_record()
        return content

    def train_job(self, server_round: int, cohort: list[int]) -> ClientJob:
        """The train job of ``server_round`` addressed to ``cohort``, with the round's
        algorithm parameters."""
        job = self.job.for_round(server_round, cohort)
        return replace(job, params={**job.params, **self.round_params(server_round)})

    def round_params(self, server_round: int) -> dict[str, ConfigScalar]:
        """Per-round values for the train job beside the parameters (default: none)."""
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

    # ---------------------------------------------------------------------- receiving
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

    # --------------------------------------------------------------------- monitoring
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

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, np.ndarray]:
        """Server-side algorithm state to checkpoint (default: none)."""
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` saved."""

    def keep_files_in(self, folder: Path) -> None:
        """The run's checkpoint folder, told before any round or restore: a strategy whose
        checkpointed state is too large to write whole every round may keep write-once files
        there (default: it keeps none)."""

    def checkpoint_state(self) -> dict[str, np.ndarray]:
        """What a checkpoint keeps of the server: :meth:`state_dict`, and which version of its
        kept state each client is at."""
        state = self.state_dict()
        if self.client_state is not None:
            state = {**state, **self.client_state.state_dict()}
        return state

    def restore_checkpoint_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`checkpoint_state` saved."""
        algorithm, clients = split_state(state)
        self.load_state_dict(algorithm)
        if self.client_state is not None:
            self.client_state.load_state_dict(clients)

    # ----------------------------------------------------------------------- reporting
    def finish(self, run_dir: Path) -> dict[str, Any]:
        """End-of-run hook: write the algorithm's artefacts; returns extra summary fields."""
        return {}

    def round_metrics(self, server_round: int) -> dict[str, Any]:
        """Algorithm-specific keys for this round's metrics line (default: none)."""
        return {}

    def progress(self, row: Mapping[str, Any]) -> str:
        """A short note on this round's metrics ``row`` for the round's progress line, e.g. the
        bits per parameter a compressing strategy sent (default: none)."""
        return ""


def _client_keeps_state(algorithm: str) -> bool:
    """Whether ``algorithm``'s client half declares ``keeps_state``."""
    from strategies.core.registry import get_algorithm  # the registry imports this module

    return get_algorithm(algorithm).client.keeps_state


def _checked_evaluation(update: ClientUpdate) -> ClientUpdate:
    check_finite_metric(update.metrics, "loss")
    check_finite_metric(update.metrics, "accuracy")
    return update
