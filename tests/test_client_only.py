"""A client-only install (core dependencies, no ``[server]`` extra) runs the ClientApp: the
server's packages made unimportable, a node with its own images trains a described job."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.processes import SERVER_PACKAGES, client_only_env

pytestmark = pytest.mark.slow  # every test here starts a Python subprocess

REPO = Path(__file__).resolve().parents[1]
TRAIN_ON_OWN_DATA = """
import sys
import numpy as np
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

import strategies
from client_app.app import train
from strategies.numeric.arrays import to_array_record
from strategies.core.job import ClientJob
from strategies.core.wire import unpack_clients

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # as a SuperNode sets
images = np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8)
np.savez(sys.argv[1], images=images, labels=np.arange(40) % 10)
job = ClientJob(
    algorithm=sys.argv[2], model="cnn", dataset="digits", partition="iid", num_clients=2, seed=0,
    input_shape=(1, 8, 8), num_classes=10, data_mean=(0.3,), data_std=(0.4,),
)
model = strategies.build_job_model(job, (1, 8, 8), 10)
content = RecordDict(
    {"arrays": to_array_record(model.state_dict()), "config": job.for_round(1, [1]).to_record()}
)
node_config = {"partition-id": 1, "num-partitions": 2, "data-root": sys.argv[1]}
node = Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})
reply = unpack_clients(train(Message(content, dst_node_id=7, message_type=MessageType.TRAIN),
                             node).content)
print("trained", reply[1]["metrics"]["num-examples"])
for name in ("sklearn", "hydra"):
    try:
        __import__(name)
    except ModuleNotFoundError:
        print("blocked", name)
loaded = sorted(n for n in sys.argv[3].split(",") if sys.modules.get(n) is not None)
print("server packages loaded:", loaded)
"""


def test_the_client_app_needs_no_server_package(tmp_path: Path) -> None:
    """A FedAvg client trains on a device's .npz with ray, hydra, omegaconf,
    matplotlib, scikit-learn, mlxtend and torchvision unimportable (digits, the configured
    set, cannot load there: its loader needs scikit-learn)."""
    env = client_only_env(dict(os.environ), tmp_path / "site")
    for algorithm in ("fedavg",):
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                TRAIN_ON_OWN_DATA,
                str(tmp_path / f"{algorithm}.npz"),
                algorithm,
                ",".join(SERVER_PACKAGES),
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        lines = result.stdout.splitlines()
        assert "trained 32" in lines  # 40 samples, local_test_fraction 0.2 held out
        assert "blocked sklearn" in lines and "blocked hydra" in lines
        assert "server packages loaded: []" in lines


SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
CALL_SCRIPT = (
    "import importlib, sys; module, name = sys.argv[1].split(':'); "
    "sys.argv[1:] = sys.argv[2:]; getattr(importlib.import_module(module), name)()"
)


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("fedsparse", ["num_rounds=1"]),
        ("fedsparse-deploy", ["--help"]),
        ("fedsparse-deploy", ["local-tls", "num_rounds=1"]),
        ("fedsparse-compare", ["multirun"]),
    ],
)
def test_the_commands_say_the_server_side_is_missing(
    tmp_path: Path, command: str, args: list[str]
) -> None:
    """Each installed command, called the way its console script calls it (pyproject's
    entry point), answers a client-only install with one line."""
    env = client_only_env(dict(os.environ), tmp_path / "site")
    result = subprocess.run(
        [sys.executable, "-c", CALL_SCRIPT, SCRIPTS[command], *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"{command}: the server side is not installed here (")
    assert "fedsparse[server]" in line
