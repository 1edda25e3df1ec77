"""Completes and records each round on one background thread: the central evaluation of the
round's model, then its metrics line, tracking, checkpoint, plots and progress line.

Why: the central evaluation only reads the round's model and no client ever sees its result, so
it can run while the next round's clients train (``central_eval_overlap``); the writing (plots
alone take ~0.5 s a round on the 2-core box) always can. One thread, so rounds are recorded in
round order, each round's checkpoint after its row (a checkpoint never stands for a round whose
row is not written) and from a snapshot taken when the round ended, since the strategy moves on.
The round loop hands round t over only after round t − 1 is recorded, so at most one round is in
flight, and a failure of the background thread stops the run at the next hand-over as one line
naming the round. The thread evaluates with the torch threads of the thread that starts the
run (on a private local Ray, the cores the actors leave free: ``server_app.engine``), the same
number whether it overlaps or not, so both give the same numbers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from omegaconf import DictConfig

from server_app.checkpoint import CHECKPOINT_DIR, Checkpoint, resume_hint, save_checkpoint
from server_app.evaluation import CentralEvaluator
from server_app.phases import PHASES
from server_app.plots import plot_run
from server_app.results import MetricsLog
from server_app.tracking import Tracker
from strategies.numeric.arrays import to_array_record, to_numpy_dict

log = logging.getLogger(__name__)

Evaluation = Future  # of (loss, accuracy, seconds)


@dataclass(frozen=True)
class FinishedRound:
    """A round the loop is done with: its row (``loss`` and ``accuracy`` still None), the
    checkpoint to write after the row, the progress line's strategy note, and its central
    evaluation (None: the round is not evaluated)."""

    row: dict[str, Any]
    checkpoint: Checkpoint
    note: str
    evaluation: Evaluation | None


def frozen_arrays(arrays: ArrayRecord) -> ArrayRecord:
    """A copy of ``arrays`` for the background thread: nothing the next round does to the
    global arrays can reach what it evaluates and checkpoints."""
    return to_array_record(to_numpy_dict(arrays))


def snapshot(
    server_round: int,
    arrays: ArrayRecord,
    strategy_state: dict[str, np.ndarray],
    monitor_state: dict[str, np.ndarray],
) -> Checkpoint:
    """Round ``server_round``'s checkpoint: ``arrays`` (a :func:`frozen_arrays` copy) and copies
    of the states, which the next round may change in place (the wall time is filled in when
    it is written)."""
    return Checkpoint(
        server_round,
        arrays,
        {k: np.array(v, copy=True) for k, v in strategy_state.items()},
        0.0,
        {k: np.array(v, copy=True) for k, v in monitor_state.items()},
    )


def _bpp(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def progress_line(num_rounds: int, row: dict[str, Any], note: str) -> str:
    """The round's one line; ``acc -  loss -`` for a round that is not evaluated."""
    return (
        f"[fedsparse] round {row['round']}/{num_rounds}  acc {_number(row['accuracy'])}  "
        f"loss {_number(row['loss'])}  up {row['uplink_bytes'] / 1e6:.2f} MB "
        f"({_bpp(row['uplink_bpp'])} bpp)  down {row['downlink_bytes'] / 1e6:.2f} MB "
        f"({_bpp(row['downlink_bpp'])} bpp)  clients {row['clients']}  "
        f"failures {row['failures']}  {row['round_s']:.1f} s" + (f"  {note}" if note else "")
    )


class RoundRecorder:
    """The background thread that evaluates and records finished rounds, in round order."""

    def __init__(
        self,
        cfg: DictConfig,
        run_dir: Path,
        metrics: MetricsLog,
        tracker: Tracker,
        wall_s: Callable[[], float],
    ) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.metrics, self.tracker, self.wall_s = metrics, tracker, wall_s
        self.checkpoints = run_dir / CHECKPOINT_DIR
        self.evaluator = CentralEvaluator(cfg)
        self._thread = ThreadPoolExecutor(
            1,
            thread_name_prefix="fedsparse-recorder",
            initializer=torch.set_num_threads,
            initargs=(torch.get_num_threads(),),
        )
        self._pending: tuple[int, Future[float]] | None = None

    def evaluate(self, arrays: ArrayRecord) -> Evaluation:
        """Start the central evaluation of ``arrays`` on the background thread."""
        return self._thread.submit(self._evaluate, arrays)

    def _evaluate(self, arrays: ArrayRecord) -> tuple[float, float, float]:
        start = time.perf_counter()
        loss, accuracy = self.evaluator(arrays)
        return loss, accuracy, time.perf_counter() - start

    def await_evaluation(self, server_round: int, evaluation: Evaluation) -> None:
        """Block until ``evaluation`` of ``server_round`` is done; its failure as one line."""
        self._outcome(server_round, evaluation, "evaluating it")

    def record(self, finished: FinishedRound) -> None:
        """Hand ``finished`` to the background thread (after :meth:`wait`)."""
        if self._pending is not None:
            raise RuntimeError("record() before the previous round was waited for")
        self._pending = (finished.row["round"], self._thread.submit(self._record, finished))

    def wait(self) -> float:
        """Block until the round handed over last is recorded; return the seconds its writing
        took (0 when none is pending). Its failure is a RuntimeError of one line."""
        if self._pending is None:
            return 0.0
        (server_round, pending), self._pending = self._pending, None
        return self._outcome(server_round, pending, "evaluating or recording it")

    def close(self) -> None:
        """Let a round still in flight finish recording (its failure is logged: an error
        is already on its way), then stop the thread."""
        if self._pending is not None:
            try:
                self.wait()
            except RuntimeError as err:
                log.error("%s", err)
        self._thread.shutdown(wait=True)

    def _outcome(self, server_round: int, future: Future, what: str) -> Any:
        try:
            return future.result()
        except Exception as err:
            raise RuntimeError(
                f"round {server_round}: {what} failed ({type(err).__name__}: {err}); "
                f"{resume_hint(self.checkpoints)}"
            ) from err

    def _record(self, finished: FinishedRound) -> float:
        """Evaluation into the row, then the row, tracking, checkpoint, plots, progress line;
        returns the seconds the writing took (the next row's ``write`` phase)."""
        row = finished.row
        if finished.evaluation is not None:
            row["loss"], row["accuracy"], seconds = finished.evaluation.result()
            row[PHASES]["central_eval"] = seconds
        start = time.perf_counter()
        self.metrics.append(row)
        self.tracker.log_round(self.metrics.rows[-1])
        save_checkpoint(self.checkpoints, replace(finished.checkpoint, wall_s=self.wall_s()))
        if self.cfg.plots:
            title = f"{self.cfg.strategy.name} on {self.cfg.dataset.name}"
            plot_run(self.metrics.rows, self.run_dir / "plots", title)
        print(progress_line(self.cfg.num_rounds, row, finished.note), flush=True)
        return time.perf_counter() - start
