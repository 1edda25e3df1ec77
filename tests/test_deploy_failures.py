"""A deployed run's failures in one line (``server_app.failures``), the round's node errors in
that line, and a node's one line when it cannot load the shipped partition."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import client_app.app as client_app
from data.federated import DataSpec
from server_app.experiment import TooFewReplies, run_experiment
from server_app.failures import LOG_FILE, RunFailed, one_line_failures, reason_of
from server_app.inprocess import InProcessGrid
from server_app.settings import ConfigError, compose_config
from tests.runs import SMALL_RUN


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def flower_log():
    """What Flower's logger lets through (the stream ``flwr run --stream`` prints)."""
    handler = Records()
    flower = logging.getLogger("flwr")
    flower.addHandler(handler)
    yield handler.lines
    flower.removeHandler(handler)


def test_a_named_failure_is_one_line_its_traceback_in_the_run_log(tmp_path: Path, flower_log):
    with pytest.raises(RunFailed) as info, one_line_failures(tmp_path):
        raise ConfigError("invalid config: num_rounds=0:\n  must be an integer >= 1")
    assert str(info.value) == "invalid config: num_rounds=0: must be an integer >= 1"
    log = (tmp_path / LOG_FILE).read_text()
    assert "Traceback (most recent call last)" in log and "ConfigError" in log
    flower = logging.getLogger("flwr")
    flower.error("ServerApp raised an exception", exc_info=info.value)
    flower.error("Exit Code: 201\nAn unhandled exception occurred in the ServerApp.")
    flower.info("other news")
    assert flower_log == ["other news"]  # Flower's traceback and exit notice are gone


def test_other_exceptions_keep_their_traceback(tmp_path: Path) -> None:
    with pytest.raises(KeyError), one_line_failures(tmp_path):
        raise KeyError("a bug")
    assert not (tmp_path / LOG_FILE).exists()


def test_no_run_folder_is_made_for_a_failure_before_the_run(tmp_path: Path) -> None:
    with pytest.raises(RunFailed), one_line_failures(tmp_path / "never"):
        raise ConfigError("bad")
    assert not (tmp_path / "never").exists()


def test_status_details_give_the_reason() -> None:
    assert reason_of("ServerApp failed with exception: only 2 of 3") == "only 2 of 3"


def test_a_round_without_valid_replies_names_what_the_nodes_said(tmp_path: Path) -> None:
    cfg = compose_config([*SMALL_RUN, "num_rounds=1", "plots=false", "faults.error_rate=1.0"])
    with pytest.raises(TooFewReplies) as info:
        run_experiment(InProcessGrid(cfg.num_clients), cfg, tmp_path / "run")
    message = str(info.value)
    assert "round 1: only 0 valid replies" in message and "the nodes said: " in message
    assert "injected failure of client" in message and "\n" not in message


@pytest.mark.parametrize(
    ("error", "named"),
    [
        (ModuleNotFoundError("No module named 'sklearn'", name="sklearn"), "'scikit-learn'"),
        (ModuleNotFoundError("No module named 'mlxtend'", name="mlxtend"), "'mlxtend'"),
        (
            ModuleNotFoundError("No module named 'sklearn.datasets'", name="sklearn.datasets"),
            "'scikit-learn'",
        ),
    ],
)
def test_a_node_without_the_data_sets_package_names_it_and_data_root(
    monkeypatch: pytest.MonkeyPatch, error: Exception, named: str
) -> None:
    def missing(*_args: object) -> None:
        raise error

    monkeypatch.setattr(client_app, "client_data", missing)
    spec = DataSpec(dataset="digits", partition="iid", num_clients=2, seed=0)
    with pytest.raises(client_app.ShippedDataError) as info:
        client_app._shipped_partition(spec, 1)
    message = str(info.value)
    assert "client 1's partition of dataset=digits" in message and named in message
    assert "pip install -e '.[server]'" in message and 'data-root="/path/to/images"' in message
