"""Tracking backends, read back with their own readers: TensorBoard's EventAccumulator and
MLflow's client. Runs are in-process (InProcessGrid): digits, 4 clients, 2 rounds."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from server_app import tracking
from server_app.settings import ConfigError, compose_config, validate
from tests.processes import run_command
from tests.runs import TOY_BASE, run_and_read

REPO = Path(__file__).resolve().parents[1]
TOY_RUN = [*TOY_BASE, "num_rounds=2"]
BOTH = "tracking=[tensorboard,mlflow]"


def _run(run_dir: Path, *overrides: str) -> list[dict]:
    return run_and_read([*TOY_RUN, *overrides], run_dir)


def _events(logdir: Path) -> EventAccumulator:
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def _store(root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{root / tracking.MLFLOW_DB}")


def _only_run(client: MlflowClient, experiment: str):
    found = client.get_experiment_by_name(experiment)
    assert found is not None, experiment
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """A 2-round run logging to TensorBoard and MLflow in its own folder."""
    run_dir = tmp_path_factory.mktemp("tracking") / "run"
    return run_dir, _run(run_dir, BOTH)


def test_tensorboard_has_every_round_of_every_series(both: tuple[Path, list[dict]]) -> None:
    run_dir, rows = both
    events = _events(run_dir / "tensorboard" / run_dir.name)
    accuracy = events.Scalars("accuracy")
    assert [e.step for e in accuracy] == [1, 2]
    assert [e.value for e in accuracy] == pytest.approx([r["accuracy"] for r in rows])
    assert [e.value for e in events.Scalars("uplink_bytes")] == [r["uplink_bytes"] for r in rows]
    for layer, value in rows[-1]["layer_rel_update"].items():
        series = events.Scalars(f"layer_rel_update/{layer}")
        assert [e.step for e in series] == [1, 2]
        assert series[-1].value == pytest.approx(value)
    assert "round" not in events.Tags()["scalars"]
    images = events.Tags()["images"]
    assert {"plots/accuracy_vs_round", "plots/accuracy_vs_uplink"} <= set(images)
    hparams = {}
    for content in events.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            hparams = dict(data.session_start_info.hparams)
    assert hparams["strategy.name"].string_value == "fedavg"
    assert hparams["num_rounds"].number_value == 2


def test_mlflow_has_the_run_its_params_and_history(both: tuple[Path, list[dict]]) -> None:
    run_dir, rows = both
    client = _store(run_dir)
    run = _only_run(client, tracking.SINGLE_RUN_EXPERIMENT)
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    params = run.data.params
    assert params["strategy.name"] == "fedavg" and params["dataset.name"] == "digits"
    assert params["num_rounds"] == "2" and params["local_steps"] == "null"
    run_id = run.info.run_id
    assert _history(client, run_id, "accuracy") == [(r["round"], r["accuracy"]) for r in rows]
    layer = next(iter(rows[0]["layer_rel_update"]))
    assert [s for s, _ in _history(client, run_id, f"layer_rel_update/{layer}")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {"summary.json", "config.yaml", "plots"} <= artifacts
    assert "plots/accuracy_vs_round.png" in plots


def test_resume_continues_the_same_runs_at_the_next_round(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _run(run_dir, BOTH, "num_rounds=1", "plots=false")
    rows = _run(run_dir, BOTH, "num_rounds=2", "resume=true", "plots=false")
    run = _only_run(_store(run_dir), tracking.SINGLE_RUN_EXPERIMENT)
    expected = [(r["round"], r["accuracy"]) for r in rows]
    assert _history(_store(run_dir), run.info.run_id, "accuracy") == expected
    assert run.data.params["resume"] == "False"  # params keep the first leg's values
    events = _events(run_dir / "tensorboard" / run_dir.name)
    assert [e.step for e in events.Scalars("accuracy")] == [1, 2]


MULTIRUN = """
import sys
from server_app import cli, launch
from server_app.experiment import run_experiment
from server_app.inprocess import InProcessGrid

def in_process(cfg, run_dir, sweep=None):
    run_experiment(InProcessGrid(cfg.num_clients), cfg, run_dir, sweep)

launch.run_simulation = in_process  # Hydra's own sweep, without the Ray start of each job
sys.argv[0] = "fedsparse"
cli.main()
"""


@pytest.mark.slow
def test_multirun_jobs_are_runs_of_one_experiment(tmp_path: Path) -> None:
    """`fedsparse --multirun seed=0,1` (clients in-process): one MLflow experiment named after
    the sweep folder with two runs, one TensorBoard logdir with one sub-folder per run."""
    sweep = tmp_path / "sweep"
    args = [*TOY_RUN, "num_rounds=1", "plots=false", BOTH, f"hydra.sweep.dir={sweep}"]
    result = run_command(
        [sys.executable, "-c", MULTIRUN, "--multirun", "seed=0,1", *args], REPO, timeout=300
    )
    assert result.returncode == 0, result.stdout[-4000:]
    jobs = sorted(p for p in sweep.iterdir() if (p / "metrics.jsonl").exists())
    assert len(jobs) == 2
    client = _store(sweep)
    experiment = client.get_experiment_by_name(str(sweep))
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == [job.name for job in jobs]
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    for job in jobs:
        assert [e.step for e in _events(sweep / "tensorboard" / job.name).Scalars("loss")] == [1]


def test_a_backend_that_raises_is_reported_once_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(tracking.TensorBoard, "log_round", broken)
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="server_app.tracking"):
        rows = _run(run_dir, BOTH, "plots=false")
    assert [r["round"] for r in rows] == [1, 2] and (run_dir / "summary.json").exists()
    warnings = [r.getMessage() for r in caplog.records if r.name == "server_app.tracking"]
    assert len(warnings) == 1 and "tracking=tensorboard failed" in warnings[0]
    assert "disk full" in warnings[0]
    run = _only_run(_store(run_dir), tracking.SINGLE_RUN_EXPERIMENT)  # MLflow went on
    assert [s for s, _ in _history(_store(run_dir), run.info.run_id, "loss")] == [1, 2]


def test_round_scalars_are_the_finite_numbers_with_layers_grouped() -> None:
    row = {
        "round": 3,
        "accuracy": 0.5,
        "uplink_bytes": 1200,
        "fed_loss": None,
        "fedpm_bpp_wire": math.nan,
        "lbgm_reuse_frac": 0.25,
        "flag": True,
        "strategy": "fedavg",
        "layer_rel_update": {"conv1.weight": 0.1, "fc.weight": None},
    }
    assert tracking.round_scalars(row) == {
        "accuracy": 0.5,
        "uplink_bytes": 1200.0,
        "lbgm_reuse_frac": 0.25,
        "layer_rel_update/conv1.weight": 0.1,
    }


@pytest.mark.parametrize("value", ["wandb", "[tensorboard,wandb]", "1"])
def test_an_unknown_backend_names_the_key_and_the_choices(value: str) -> None:
    with pytest.raises(ConfigError, match=r"tracking=.*choose none, one of tensorboard, mlflow"):
        validate(compose_config([*TOY_RUN, f"tracking={value}"]))


def test_a_missing_extra_names_its_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(
        tracking.importlib.util, "find_spec", lambda name: None if name == "mlflow" else real(name)
    )
    with pytest.raises(ConfigError, match=r"tracking=mlflow: .*pip install -e '\.\[mlflow\]'"):
        validate(compose_config([*TOY_RUN, BOTH]))
    validate(compose_config([*TOY_RUN, "tracking=tensorboard"]))
