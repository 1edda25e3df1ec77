"""Evaluation every N rounds (``eval_every``), the central evaluation overlapped with the next
round's training (``central_eval_overlap``), and the per-round phase seconds (``phase_s``),
on in-process runs (digits, 4 clients, 5 rounds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import MessageType

from server_app.checkpoint import load_checkpoint
from server_app.evaluation import CentralEvaluator, is_evaluated
from server_app.experiment import run_experiment
from server_app.inprocess import InProcessGrid
from server_app.phases import ALL_PHASES, LOOP_PHASES, PHASES
from server_app.plots import PLOTS
from server_app.results import read_metrics, without_wall_clock
from server_app.settings import compose_config, validate
from tests.runs import run_and_read

RUN = ["dataset=digits", "num_clients=4", "num_rounds=5", "partition.min_size=20"]
EVALUATED = ("accuracy", "loss", "fed_accuracy", "fed_loss")
FED_EXTRA = ("local_accuracy_mean", "local_accuracy_std")  # only when clients evaluated


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[dict]]]:
    """The same run evaluated every round, every 3rd round, and every 3rd round without
    overlapping the central evaluation: (run folder, rows) each."""
    root = tmp_path_factory.mktemp("eval")
    settings = {  # plots only where a test looks at them: they are most of the writing
        "every": ["eval_every=1", "plots=false"],
        "third": ["eval_every=3"],
        "third_sequential": ["eval_every=3", "central_eval_overlap=false", "plots=false"],
    }
    return {
        name: (root / name, run_and_read([*RUN, *extra], root / name))
        for name, extra in settings.items()
    }


def test_the_rule_is_every_nth_round_and_the_last() -> None:
    assert [r for r in range(1, 11) if is_evaluated(r, 3, 10)] == [3, 6, 9, 10]
    assert [r for r in range(1, 6) if is_evaluated(r, 1, 5)] == [1, 2, 3, 4, 5]
    assert [r for r in range(1, 3) if is_evaluated(r, 7, 2)] == [2]


def test_every_third_round_evaluates_rounds_3_and_5_only(runs) -> None:
    run_dir, rows = runs["third"]
    for row in rows:
        evaluated = row["round"] in (3, 5)
        assert all((row[key] is not None) == evaluated for key in EVALUATED), row["round"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_accuracy"] == rows[-1]["accuracy"]
    assert summary["best_accuracy"] == max(rows[2]["accuracy"], rows[4]["accuracy"])
    assert summary["final_loss"] == rows[-1]["loss"]
    assert all((run_dir / "plots" / name).exists() for name in PLOTS)


def test_skipping_evaluations_changes_no_other_number(runs) -> None:
    """Every round's training numbers, and the evaluated rounds' accuracies, are those of the
    run evaluated every round: evaluation reads the model and feeds nothing back. A round not
    evaluated has null accuracies and no other evaluation keys."""
    _, every = runs["every"]
    _, third = runs["third"]
    assert all(row[key] is not None for row in every for key in EVALUATED)
    expected = [row if row["round"] in (3, 5) else _not_evaluated(row) for row in every]
    assert [without_wall_clock(r) for r in third] == [without_wall_clock(r) for r in expected]


def _not_evaluated(row: dict) -> dict:
    kept = {k: v for k, v in row.items() if k not in FED_EXTRA}
    return {**kept, **dict.fromkeys(EVALUATED)}


def test_overlapped_and_sequential_evaluation_give_the_same_rows(runs) -> None:
    _, overlapped = runs["third"]
    _, sequential = runs["third_sequential"]
    assert [without_wall_clock(r) for r in overlapped] == [
        without_wall_clock(r) for r in sequential
    ]


@pytest.mark.parametrize("name", ["every", "third", "third_sequential"])
def test_phases_are_there_non_negative_and_within_the_round(runs, name: str) -> None:
    _, rows = runs[name]
    for row in rows:
        phases = row[PHASES]
        assert set(phases) == set(ALL_PHASES)
        assert all(seconds >= 0 for seconds in phases.values())
        assert sum(phases[p] for p in LOOP_PHASES) <= row["round_s"]
        assert phases["clients_train_sum"] == pytest.approx(row["client_train_s"])
        assert (phases["central_eval"] > 0) == (row["accuracy"] is not None)
    assert rows[0][PHASES]["write"] == 0  # nothing was written before round 1
    assert all(row[PHASES]["write"] > 0 for row in rows[1:])  # the previous round's files


def test_the_sequential_round_waits_for_its_evaluation(runs) -> None:
    """Without overlap the round loop waits for the central evaluation: it is inside
    ``record_wait``; with overlap the loop goes on."""
    _, rows = runs["third_sequential"]
    for row in rows:
        assert row[PHASES]["record_wait"] >= row[PHASES]["central_eval"]


class StoppingGrid(InProcessGrid):
    """An in-process grid whose ``stop_at``-th train push fails, as a crash mid-round would."""

    def __init__(self, num_nodes: int, stop_at: int) -> None:
        super().__init__(num_nodes)
        self.train_pushes, self.stop_at = 0, stop_at

    def push_messages(self, messages):
        messages = list(messages)
        if any(m.metadata.message_type == MessageType.TRAIN for m in messages):
            self.train_pushes += 1
            if self.train_pushes == self.stop_at:
                raise ConnectionError("the grid went away")
        return super().push_messages(messages)


def test_a_run_stopped_mid_round_resumes_to_the_same_rows(tmp_path: Path, runs) -> None:
    """Stopped in round 4 (every 3rd round evaluated): the rounds before it are recorded, the
    checkpoint is the last recorded row's, and the resumed run equals the uninterrupted one."""
    _, straight = runs["third"]
    cfg = compose_config([*RUN, "eval_every=3"])
    with pytest.raises(ConnectionError):
        run_experiment(StoppingGrid(cfg.num_clients, stop_at=4), cfg, tmp_path)
    recorded = read_metrics(tmp_path)
    assert [r["round"] for r in recorded] == [1, 2, 3]
    assert load_checkpoint(tmp_path / "checkpoint").round == 3
    resumed = run_and_read([*RUN, "eval_every=3", "resume=true"], tmp_path)
    assert [without_wall_clock(r) for r in resumed] == [without_wall_clock(r) for r in straight]


def test_a_failing_evaluation_stops_the_run_in_one_line(tmp_path: Path, monkeypatch) -> None:
    """The evaluation of round 2 raises: the run stops with one line naming the round, round 1
    stays recorded and checkpointed."""
    evaluate = CentralEvaluator.__call__
    calls = []

    def failing(self, arrays):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("the test set is gone")
        return evaluate(self, arrays)

    monkeypatch.setattr(CentralEvaluator, "__call__", failing)
    cfg = compose_config([*RUN, "num_rounds=3", "federated_eval=false", "plots=false"])
    validate(cfg)
    with pytest.raises(RuntimeError) as info:
        run_experiment(InProcessGrid(cfg.num_clients), cfg, tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("round 2: ") and "ValueError: the test set is gone" in message
    assert "resume=true" in message
    assert [r["round"] for r in read_metrics(tmp_path)] == [1]
    assert load_checkpoint(tmp_path / "checkpoint").round == 1
