"""``resume=true`` continues a run with the run's own settings (server_app/resume.py), and every
shipped strategy resumes bit-identically (strategies/core/client_state.py keeps client state)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from server_app.checkpoint import load_checkpoint
from server_app.experiment import run_experiment, starting_point
from server_app.inprocess import InProcessGrid
from server_app.results import read_metrics, without_wall_clock
from server_app.resume import resumed_config, rounds_note
from server_app.settings import ConfigError, compose_config
from tests.runs import SHIPPED_STRATEGIES, run_and_read

RUN = ["dataset=digits", "num_clients=3", "partition=iid", "federated_eval=false", "plots=false"]


def _stored_run(run_dir: Path, *overrides: str) -> None:
    """A run folder's config.yaml as a run with ``overrides`` wrote it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = compose_config([*RUN, *overrides])
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def _resume(run_dir: Path, *given: str):
    """What ``fedsparse <given> resume=true hydra.run.dir=<run_dir>`` resumes with."""
    overrides = [*given, "resume=true"]
    return resumed_config(compose_config(overrides), run_dir, overrides)


def test_settings_not_given_keep_the_runs_values(tmp_path: Path) -> None:
    """The printed hint gives no num_rounds, lr, data set...: the run's own values stand, not
    the defaults (num_rounds=20 used to replace a 10-round run's)."""
    _stored_run(tmp_path, "num_rounds=10", "lr=0.2", "strategy=lips", "strategy.d0=0.3")
    cfg = _resume(tmp_path)
    assert (cfg.num_rounds, cfg.lr, cfg.dataset.name) == (10, 0.2, "digits")
    assert (cfg.strategy.name, cfg.strategy.d0, cfg.resume) == ("lips", 0.3, True)
    assert rounds_note(tmp_path, cfg.num_rounds) == ""


def test_num_rounds_given_extends_the_run_and_says_so(tmp_path: Path) -> None:
    _stored_run(tmp_path, "num_rounds=10")
    cfg = _resume(tmp_path, "num_rounds=20")
    assert cfg.num_rounds == 20
    assert rounds_note(tmp_path, 20) == "extending 10 → 20 rounds"


@pytest.mark.parametrize(
    ("given", "key", "run_value", "new_value"),
    [
        ("lr=0.1", "lr", "0.2", "0.1"),
        ("strategy=fedpm", "strategy.name", "'fedavg'", "'fedpm'"),
        ("partition.alpha=0.1", "partition.alpha", "None", "0.1"),
    ],
)
def test_a_given_setting_that_changes_the_numbers_is_refused_by_name(
    tmp_path: Path, given: str, key: str, run_value: str, new_value: str
) -> None:
    _stored_run(tmp_path, "lr=0.2")
    with pytest.raises(ConfigError) as refused:
        _resume(tmp_path, given)
    message = str(refused.value)
    assert "\n" not in message and key in message
    assert f"the run has {run_value}" in message and f"given {new_value}" in message


def test_number_neutral_keys_may_change(tmp_path: Path) -> None:
    _stored_run(tmp_path, "engine.clients_per_node=1")
    cfg = _resume(tmp_path, "engine.clients_per_node=3", "tracking=tensorboard")
    assert cfg.engine.clients_per_node == 3 and cfg.tracking == "tensorboard"


def test_the_printed_command_continues_a_finished_run_as_it_was(tmp_path: Path) -> None:
    """A 2-round run of non-default settings: `resume=true` alone composes to exactly the
    stored config, which starting_point accepts (here: nothing left to run)."""
    run_dir = tmp_path / "run"
    cfg = compose_config([*RUN, "num_rounds=2", "lr=0.1", "seed=4"])
    run_experiment(InProcessGrid(cfg.num_clients), cfg, run_dir)
    resumed = _resume(run_dir)
    assert OmegaConf.to_container(resumed) == {
        **OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml")),
        "resume": True,
        "engine": OmegaConf.to_container(resumed.engine),
    }
    assert starting_point(run_dir, resumed).round == 2


def test_a_run_from_before_eval_every_resumes_with_the_old_behaviour(tmp_path: Path) -> None:
    """A run folder written before ``eval_every`` and ``central_eval_overlap`` existed: the
    resumed run takes their defaults (every round evaluated, as it was) and is accepted; giving
    another ``eval_every`` is refused like any other change."""
    run_dir = tmp_path / "run"
    cfg = compose_config([*RUN, "num_rounds=2"])
    run_experiment(InProcessGrid(cfg.num_clients), cfg, run_dir)
    old = OmegaConf.load(run_dir / "config.yaml")
    for key in ("eval_every", "central_eval_overlap"):
        old.pop(key)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(old))
    resumed = _resume(run_dir, "num_rounds=3")
    assert (resumed.eval_every, resumed.central_eval_overlap) == (1, True)
    assert starting_point(run_dir, resumed).round == 2
    with pytest.raises(ConfigError, match="eval_every"):
        _resume(run_dir, "eval_every=2")


STATE_SETTINGS = {  # settings that exercise a strategy's state; the rest run as shipped
    "fedprox": ["strategy.mu=0.1"],
    "lbgm": ["strategy.delta=0.9"],  # look-back gradients reused from round 2 on
}
RESUMED_STRATEGIES = {s: STATE_SETTINGS.get(s, []) for s in SHIPPED_STRATEGIES}
"""Every shipped strategy (a new yaml in conf/strategy joins by itself)."""
INTERRUPTED_RUN = [
    "dataset=digits",
    "num_clients=6",
    "clients_per_round=4",  # clients skip rounds: their state is named from older rounds
    "partition.min_size=20",
    "engine.clients_per_node=2",
    "plots=false",
    "num_rounds=4",
]


class Interrupted(Exception):
    """Stands for Ctrl-C or kill -9 in the middle of a round."""


class StopsMidRound(InProcessGrid):
    """An in-process grid whose run stops in ``server_round``'s training after the first node
    trained its clients (their state then holds a version the checkpoint never saw)."""

    def __init__(self, num_nodes: int, server_round: int) -> None:
        super().__init__(num_nodes)
        self.server_round = server_round

    def push_messages(self, messages):
        ids = []
        for message in messages:
            ids.extend(super().push_messages([message]))
            job = message.content.get("config")
            if (
                message.metadata.message_type == "train"
                and job["server_round"] == self.server_round
            ):
                raise Interrupted(f"stopped in round {self.server_round}")
        return ids


def _final_bytes(run_dir: Path) -> dict[str, bytes]:
    return {
        k: v.numpy().tobytes() for k, v in load_checkpoint(run_dir / "checkpoint").arrays.items()
    }


@pytest.mark.parametrize("strategy", sorted(RESUMED_STRATEGIES))
def test_a_run_stopped_mid_round_and_resumed_equals_the_uninterrupted_one(
    tmp_path: Path, strategy: str
) -> None:
    """Stopped in round 3 after the first node's clients trained (and kept round-3 state),
    resumed from the round-2 checkpoint: every metrics row but the wall-clock keys, and the
    final model's bytes, equal the uninterrupted run's. Client state in files
    (engine.client_state_dir) outlives the stopped process, as it does on a local Ray."""
    run = [f"strategy={strategy}", *RESUMED_STRATEGIES[strategy], *INTERRUPTED_RUN]
    straight = run_and_read(
        [*run, f"engine.client_state_dir={tmp_path / 'state-a'}"], tmp_path / "a"
    )
    stopped = [*run, f"engine.client_state_dir={tmp_path / 'state-b'}"]
    cfg = compose_config(stopped)
    with pytest.raises(Interrupted):
        run_experiment(StopsMidRound(3, server_round=3), cfg, tmp_path / "b")
    assert len(read_metrics(tmp_path / "b")) == 2
    resumed = run_and_read([*stopped, "resume=true"], tmp_path / "b")
    assert [without_wall_clock(r) for r in resumed] == [without_wall_clock(r) for r in straight]
    assert _final_bytes(tmp_path / "b") == _final_bytes(tmp_path / "a")
