"""The round loop: configure -> send -> aggregate -> monitor -> federated evaluation; the central
evaluation, the records and the checkpoint on the recorder's thread (``server_app.recorder``),
every ``eval_every``-th round evaluated. Each phase is timed into the row's ``phase_s``.

Engine-agnostic: it only needs a Flower ``Grid`` and the composed config, so the simulation
CLI and a deployed ServerApp run the same code.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from omegaconf import DictConfig, OmegaConf

import strategies
from client_app.allocator import keep_freed_memory
from data.federated import dataset_info
from server_app.checkpoint import (
    CHECKPOINT_DIR,
    LATEST,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    resume_hint,
)
from server_app.engine import with_clients_per_node
from server_app.evaluation import is_evaluated
from server_app.federation import node_error_text
from server_app.monitor import LayerMonitor
from server_app.phases import PHASES, PhaseClock
from server_app.recorder import FinishedRound, RoundRecorder, frozen_arrays, snapshot
from server_app.replies import stream_replies
from server_app.results import (
    METRICS_FILE,
    NUMBER_NEUTRAL_KEYS,
    SUMMARY_FILE,
    MetricsLog,
    link_bpp,
    summarize,
    total_bpp,
    write_summary,
)
from server_app.resume import CONFIG_FILE, added_settings, rounds_note
from server_app.settings import ConfigError, build_strategy, client_job, strategy_params
from server_app.tracking import Tracker
from server_app.tracking import start as start_tracking
from strategies.core.cohort import ClientDirectory
from strategies.core.engine import RoundResult
from strategies.core.strategy import FedSparseStrategy
from strategies.numeric.arrays import to_array_record

log = logging.getLogger(__name__)

RESUMABLE_KEYS = ("num_rounds", "resume", *NUMBER_NEUTRAL_KEYS)


class TooFewReplies(RuntimeError):
    """A round ended with fewer valid train replies than ``min_replies``: the run stops."""


def initial_arrays(cfg: DictConfig) -> ArrayRecord:
    """The round-0 global model, a pure function of the seed and the model/data choice."""
    job = client_job(cfg)
    info = dataset_info(job.data_spec())
    torch.manual_seed(cfg.seed)
    return to_array_record(
        strategies.build_job_model(job, info.input_shape, info.num_classes).state_dict()
    )


def starting_point(run_dir: Path, cfg: DictConfig) -> Checkpoint | None:
    """The checkpoint to resume from (None for a fresh run), checked before anything starts.

    A fresh run never overwrites an earlier run's results, and a resumed run must be the same
    experiment: either would mix two runs in one directory. A run that stopped before finishing
    any round left nothing to keep: the folder is reused as if empty, resumed or not.
    """
    finished = _finished_any_round(run_dir)
    if not cfg.resume:
        if finished:
            raise ConfigError(
                f"{run_dir} already holds a run; continue it with resume=true or choose another "
                "hydra.run.dir"
            )
        return None
    if not (run_dir / CONFIG_FILE).exists():
        raise CheckpointError(
            f"resume=true but {run_dir} holds no run; pass the directory of the run to continue "
            "with hydra.run.dir=<that directory>, or drop resume=true"
        )
    if not finished:
        log.info("%s holds no finished round: starting from round 1", run_dir)
        return None
    stored = OmegaConf.load(run_dir / CONFIG_FILE)
    started_with = int(stored.num_rounds)
    current = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key in [*RESUMABLE_KEYS, *added_settings(stored, current)]:
        stored.pop(key, None)
        current.pop(key, None)
    if stored != current:
        old, new = OmegaConf.to_container(stored), OmegaConf.to_container(current)
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        raise ConfigError(
            f"resume=true but the config differs from the run in {run_dir} in {changed}; only "
            f"{list(RESUMABLE_KEYS)} may change when resuming"
        )
    algorithm = strategies.get_algorithm(cfg.strategy.name)
    if started_with != cfg.num_rounds and algorithm.server.schedule_spans_num_rounds(
        strategy_params(cfg)
    ):
        raise ConfigError(
            f"resume=true with num_rounds={cfg.num_rounds}, but strategy={cfg.strategy.name} "
            f"schedules its rounds over num_rounds ({started_with} in {run_dir}): the resumed "
            f"rounds would follow another schedule. Resume with num_rounds={started_with}, or "
            "start a new run (a fixed strategy.horizon lets a LIPS run be extended)"
        )
    checkpoint = load_checkpoint(run_dir / CHECKPOINT_DIR)
    if checkpoint.round > cfg.num_rounds:
        raise ConfigError(
            f"resume=true with num_rounds={cfg.num_rounds}, but the run in {run_dir} has "
            f"finished {checkpoint.round} rounds; pass num_rounds={checkpoint.round} or more"
        )
    return checkpoint


def _finished_any_round(run_dir: Path) -> bool:
    """Whether a run in ``run_dir`` finished a round: it checkpointed, or logged metrics."""
    metrics = run_dir / METRICS_FILE
    return (run_dir / CHECKPOINT_DIR / LATEST).exists() or (
        metrics.exists() and metrics.stat().st_size > 0
    )


def final_line(rows: list[dict], wall_s: float, run_dir: Path) -> str:
    """The run's one-line result: final and best accuracy of the evaluated rounds, bytes both
    ways, time, folder."""
    evaluated = [r for r in rows if r["accuracy"] is not None]
    best = max(evaluated, key=lambda r: r["accuracy"], default=None)
    final = f"{evaluated[-1]['accuracy']:.4f}" if evaluated else "-"
    best_text = f"{best['accuracy']:.4f} (round {best['round']})" if best else "-"
    up = sum(r["uplink_bytes"] for r in rows) / 1e6
    down = sum(r["downlink_bytes"] for r in rows) / 1e6
    return (
        f"[fedsparse] done: {len(rows)} rounds, final acc {final}, best {best_text}, "
        f"up {up:.2f} MB, down {down:.2f} MB, {wall_s:.1f} s -> {run_dir}"
    )


def _restore(
    cfg: DictConfig, run_dir: Path, strategy: FedSparseStrategy, monitor: LayerMonitor
) -> tuple[ArrayRecord, int, float, str]:
    """Where the run starts: (arrays, first round, wall seconds so far, the rounds note), from
    the checkpoint when resuming (the strategy's and the monitor's state restored too)."""
    checkpoint = starting_point(run_dir, cfg)
    if checkpoint is None:
        return initial_arrays(cfg), 1, 0.0, ""
    note = rounds_note(run_dir, cfg.num_rounds)
    strategy.restore_checkpoint_state(checkpoint.strategy_state)
    monitor.load_state_dict(checkpoint.monitor_state)
    log.info("resuming %s after round %d", run_dir, checkpoint.round)
    return checkpoint.arrays, checkpoint.round + 1, checkpoint.wall_s, note


def _train(
    grid: Grid,
    cfg: DictConfig,
    strategy: FedSparseStrategy,
    arrays: ArrayRecord,
    server_round: int,
    run_dir: Path,
    clock: PhaseClock,
) -> RoundResult:
    """Send the round's train messages and aggregate the replies (timed as ``send``, ``wait``
    and ``aggregate``); a round with too few valid replies stops the run."""
    with clock.measure("send"):
        messages = strategy.configure_train(server_round, arrays, ConfigRecord(), grid)
    started = time.perf_counter()
    node_errors: Counter[str] = Counter()
    replies = stream_replies(grid, messages, timeout=cfg.round_timeout_s)
    result = strategy.aggregate_train(server_round, _noting_errors(replies, node_errors))
    stats = result.stats
    clock.add("wait", stats.reply_wait_s)
    clock.add("aggregate", time.perf_counter() - started - stats.reply_wait_s)
    clock.add_clients(stats.client_seconds)
    if result.arrays is None:
        raise TooFewReplies(
            f"round {server_round}: only {stats.clients} valid replies, fewer than "
            f"min_replies={cfg.min_replies} (failures {stats.failures}, rejected "
            f"{dict(stats.rejected)}){_said(node_errors)}; "
            f"{resume_hint(run_dir / CHECKPOINT_DIR)}"
        )
    return result


def _noting_errors(replies: Iterable[Message], errors: Counter[str]) -> Iterator[Message]:
    """``replies`` as they come, counting the nodes' error reasons."""
    for reply in replies:
        if reply.has_error():
            errors[node_error_text(reply.error.reason)] += 1
        yield reply


def _said(errors: Counter[str]) -> str:
    """What the failed nodes said, most frequent first (empty when none failed)."""
    said = [f"{reason} ({n} node{'s' if n > 1 else ''})" for reason, n in errors.most_common(3)]
    return f"; the nodes said: {'; '.join(said)}" if said else ""


def _federated_evaluation(
    grid: Grid, cfg: DictConfig, strategy: FedSparseStrategy, server_round: int, arrays: ArrayRecord
) -> dict:
    """The clients' evaluation of ``arrays`` on their local test splits (nulls when none)."""
    messages = strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid)
    fed = strategy.aggregate_evaluate(
        server_round, stream_replies(grid, messages, timeout=cfg.round_timeout_s)
    )
    return dict(fed) if fed else {"fed_loss": None, "fed_accuracy": None}


def _round(
    grid: Grid,
    cfg: DictConfig,
    strategy: FedSparseStrategy,
    monitor: LayerMonitor,
    recorder: RoundRecorder,
    arrays: ArrayRecord,
    server_round: int,
    run_dir: Path,
    num_params: int,
) -> ArrayRecord:
    """One round: train and aggregate; when the round is due (``eval_every``), the central
    evaluation starts on the recorder's thread and the clients evaluate; the finished row goes
    to the recorder. Returns the new global arrays."""
    start, clock = time.perf_counter(), PhaseClock()
    result = _train(grid, cfg, strategy, arrays, server_round, run_dir, clock)
    due = is_evaluated(server_round, cfg.eval_every, cfg.num_rounds)
    with clock.measure("snapshot"):
        frozen = frozen_arrays(result.arrays)
    evaluation = recorder.evaluate(frozen) if due else None
    if evaluation is not None and not cfg.central_eval_overlap:
        with clock.measure("record_wait"):
            recorder.await_evaluation(server_round, evaluation)
    row = {"round": server_round, **result.stats.to_metrics()}
    row.update(link_bpp(row, num_params))
    with clock.measure("monitor"):
        norms = [u.delta_norms for u in result.updates]
        row.update(
            monitor.observe(
                server_round, arrays, result.arrays, result.mean_delta, norms, result.weights
            )
        )
    if cfg.federated_eval:
        with clock.measure("fed_eval"):
            row.update(
                _federated_evaluation(grid, cfg, strategy, server_round, result.arrays)
                if due
                else {"fed_loss": None, "fed_accuracy": None}
            )
    row["loss"] = row["accuracy"] = None  # filled in by the recorder when the round is due
    with clock.measure("strategy_metrics"):
        row.update(strategy.round_metrics(server_round))
    with clock.measure("record_wait"):
        clock.add("write", recorder.wait())
    with clock.measure("snapshot"):
        state = snapshot(server_round, frozen, strategy.checkpoint_state(), monitor.state_dict())
    note = strategy.progress(row) if row["clients"] else ""
    row["round_s"] = time.perf_counter() - start
    row[PHASES] = clock.seconds
    recorder.record(FinishedRound(row, state, note, evaluation))
    return result.arrays


def run_experiment(
    grid: Grid,
    cfg: DictConfig,
    run_dir: Path,
    sweep: Path | None = None,
    seated: Mapping[int, list[int]] | None = None,
) -> dict:
    """Run (or resume) the configured experiment on ``grid``; returns the summary. ``sweep`` is
    the folder of the ``--multirun`` this run is a job of (its tracking experiment). With
    ``seated`` (a deployed run sized by its nodes: the clients of the nodes it knows) the first
    round takes the clients whose nodes are connected, the others join when their nodes do;
    without, the run waits until every client's node has answered."""
    started = time.perf_counter()
    keep_freed_memory()  # every round decodes and frees model-sized arrays per client
    cfg = with_clients_per_node(cfg, actors=None)  # auto without an actor pool: 1 per node
    run_dir.mkdir(parents=True, exist_ok=True)
    directory = ClientDirectory(
        cfg.num_clients, cfg.engine.clients_per_node, timeout_s=cfg.round_timeout_s
    )
    strategy = build_strategy(cfg, directory)
    strategy.keep_files_in(run_dir / CHECKPOINT_DIR)
    monitor = LayerMonitor(cfg.monitor.ref_round, strategy)
    arrays, first_round, wall_before, note = _restore(cfg, run_dir, strategy, monitor)
    (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    metrics = MetricsLog(run_dir, keep_through_round=first_round - 1)
    tracker = start_tracking(cfg, run_dir, sweep, first_round)
    recorder = RoundRecorder(
        cfg, run_dir, metrics, tracker, lambda: wall_before + time.perf_counter() - started
    )
    num_params = sum(math.prod(a.shape) for a in arrays.values())
    if seated is None:
        directory.wait_for_nodes(grid)
    else:
        for node_id, client_ids in seated.items():
            directory.seat(node_id, client_ids)
        directory.refresh(grid)
    print(
        f"[fedsparse] {cfg.strategy.name} on {cfg.dataset.name} ({cfg.partition.name}), "
        f"{cfg.num_clients} clients, {cfg.clients_per_round} per round, rounds "
        f"{first_round}..{cfg.num_rounds}" + (f" ({note})" if note else "") + f" -> {run_dir}",
        flush=True,
    )
    try:
        for server_round in range(first_round, cfg.num_rounds + 1):
            arrays = _round(
                grid, cfg, strategy, monitor, recorder, arrays, server_round, run_dir, num_params
            )
        recorder.wait()  # the last round's evaluation and records, before the summary
    finally:
        recorder.close()
    wall_s = wall_before + time.perf_counter() - started
    return _finish(cfg, run_dir, strategy, metrics.rows, wall_s, num_params, tracker)


def _finish(
    cfg: DictConfig,
    run_dir: Path,
    strategy: FedSparseStrategy,
    rows: list[dict],
    wall_s: float,
    num_params: int,
    tracker: Tracker,
) -> dict:
    """Write the summary and the tracking artefacts; print the run's last line."""
    summary = summarize(
        rows,
        wall_s=wall_s,
        strategy=cfg.strategy.name,
        seed=cfg.seed,
        dataset=cfg.dataset.name,
        model=cfg.model.name,
        partition=cfg.partition.name,
        num_clients=cfg.num_clients,
        num_params=num_params,
        **total_bpp(rows, num_params),
        **strategy.finish(run_dir),
    )
    write_summary(run_dir, summary)
    print(final_line(rows, summary["wall_s"], run_dir), flush=True)
    plots = sorted((run_dir / "plots").glob("*.png"))
    tracker.finish([run_dir / SUMMARY_FILE, run_dir / CONFIG_FILE, *plots])
    return summary
