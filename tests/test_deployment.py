"""A real deployment on loopback: SuperLink (TLS, node authentication) + two SuperNodes.

Runs ``fedsparse-deploy`` against it the way docs/deployment.md does, checks the output
contract, then kills one SuperNode mid-run: the run must finish on the other node with the loss
counted in ``failures``. Node 1 is an edge device: its Python cannot import the server's
packages (a client-only install) and it trains on its own folder of PNGs (``data-root``), so it
cannot load the configured data set (digits needs scikit-learn) and must take the set's shape,
classes and statistics from the job. Every process started here is killed by process group in
``finally``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

import strategies
from server_app import deploy
from server_app.results import read_metrics
from server_app.settings import ConfigError
from tests.processes import client_only_env, kill_tree, run_command

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
CONNECTION = "test-tls"
RUN = [
    "dataset=digits",
    "num_clients=2",
    "clients_per_round=2",
    "num_rounds=2",
    "federated_eval=false",  # one ClientApp process per node and round: keeps the test short
    "plots=false",
]

needs_tools = pytest.mark.skipif(
    shutil.which("openssl") is None or shutil.which("ssh-keygen") is None,
    reason="needs openssl (certificates) and ssh-keygen (node keys)",
)


def test_run_config_carries_overrides_and_an_absolute_run_dir(tmp_path: Path) -> None:
    overrides = ["strategy=lips", "hydra.run.dir=rel/dir", 'model.name="cnn"', "seed=1"]
    run_dir = deploy.resolve_run_dir(overrides, None)
    assert run_dir == Path("rel/dir").absolute()
    parsed = tomllib.loads(deploy.run_config_toml(overrides, run_dir))
    assert parsed["run-dir"] == str(run_dir)
    assert shlex.split(parsed["overrides"]) == ["strategy=lips", 'model.name="cnn"', "seed=1"]
    assert deploy.resolve_run_dir(overrides, str(tmp_path)) == tmp_path


@pytest.mark.parametrize(
    "argv",
    [
        ["fed", "--run-dir", "/r", "--app", "/a", "strategy=lips", "seed=1"],
        ["fed", "strategy=lips", "--run-dir", "/r", "seed=1", "--app", "/a"],
        ["fed", "strategy=lips", "seed=1", "--app", "/a", "--run-dir", "/r"],
    ],
)
def test_options_go_anywhere_among_the_overrides(argv: list[str]) -> None:
    args = deploy.parse_args(argv)
    assert (args.connection, args.run_dir, args.app) == ("fed", "/r", Path("/a"))
    assert args.overrides == ["strategy=lips", "seed=1"]


def test_missing_data_for_the_local_check_is_one_line(tmp_path: Path) -> None:
    root = tmp_path / "data"
    argv = ["fed", "strategy=fedpm", "dataset=cifar10", f"dataset.root={root}"]
    with pytest.raises(SystemExit) as info:
        deploy.main(argv)
    message = str(info.value.code)
    assert "not found" in message and str(root) in message and "readable here too" in message


def test_overrides_are_checked_like_the_server_app_does() -> None:
    deploy.check_overrides(["dataset=digits", "num_clients=2", "clients_per_round=2"])
    with pytest.raises(ConfigError, match="partition/nope"):
        deploy.check_overrides(["partition=nope"])
    with pytest.raises(ConfigError, match="num_rounds=0"):
        deploy.check_overrides(["num_rounds=0"])


@dataclass
class Federation:
    """What the fixture started; ``nodes[i]`` hosts client i."""

    root: Path
    env: dict[str, str]
    superlink: subprocess.Popen
    nodes: list[subprocess.Popen] = field(default_factory=list)
    edge_env: dict[str, str] = field(default_factory=dict)
    edge_data: Path | None = None


EDGE_IMAGES = 40  # node 1's own 8×8 grayscale PNGs, labels 0..9


def _edge_images(folder: Path) -> Path:
    """A device's own data: ``<folder>/<class index>/<i>.png``, 1×8×8 like digits."""
    from PIL import Image

    pixels = np.random.default_rng(1).integers(0, 256, (EDGE_IMAGES, 8, 8), dtype=np.uint8)
    for i, image in enumerate(pixels):
        (folder / str(i % 10)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / str(i % 10) / f"{i}.png")
    return folder


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"SuperLink exited:\n{log.read_text()[-3000:]}"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"SuperLink not listening on {port} after {timeout} s")


def _start(args: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _start_node(fed: Federation, partition: int, port: int) -> subprocess.Popen:
    """Node 0 trains on its partition of digits; node 1 is the edge device (module docstring)."""
    node_config = f"partition-id={partition} num-partitions=2"
    if partition == 1:
        node_config += f' data-root="{fed.edge_data}"'
    args = [
        "flower-supernode",
        "--superlink",
        f"127.0.0.1:{port}",
        "--root-certificates",
        str(fed.root / "certs" / "ca.crt"),
        "--auth-supernode-private-key",
        str(fed.root / "keys" / f"node{partition}"),
        "--port",
        str(_free_port()),
        "--node-config",
        node_config,
    ]
    env = fed.edge_env if partition == 1 else fed.env
    return _start(args, fed.root / f"node{partition}.log", env, fed.root)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("deploy")
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "FLWR_HOME": str(root / "flwr-home"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    port = _free_port()
    subprocess.run([DEPLOY / "make-certs.sh", "-o", root / "certs", "127.0.0.1"], check=True)
    (root / "flwr-home").mkdir()
    (root / "flwr-home" / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{port}"\nroot-certificates = "{root / "certs" / "ca.crt"}"\n'
    )
    certs = root / "certs"
    superlink = _start(
        [
            "flower-superlink",
            "--ssl-ca-certfile",
            str(certs / "ca.crt"),
            "--ssl-certfile",
            str(certs / "server.pem"),
            "--ssl-keyfile",
            str(certs / "server.key"),
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        root / "superlink.log",
        env,
        root,
    )
    fed = Federation(root, env, superlink)
    fed.edge_env = client_only_env(env, root / "client-only")
    fed.edge_data = _edge_images(root / "edge-data")
    try:
        _wait_for_port(port, superlink, root / "superlink.log")
        subprocess.run(
            [DEPLOY / "node-keys.sh", "-o", root / "keys", "-c", CONNECTION, "node0", "node1"],
            check=True,
            env=env,
            cwd=root,
            capture_output=True,
            timeout=120,
        )
        fed.nodes = [_start_node(fed, partition, port) for partition in (0, 1)]
        yield fed
    finally:
        for proc in [*fed.nodes, superlink]:
            kill_tree(proc)


def _deploy_args(run_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "server_app.deploy",
        CONNECTION,
        *RUN,
        *overrides,
        "--run-dir",
        str(run_dir),
    ]


def _deploy(fed: Federation, run_dir: Path, *overrides: str) -> str:
    result = subprocess.run(
        _deploy_args(run_dir, *overrides),
        cwd=REPO,
        env=fed.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def _check_contract(run_dir: Path, strategy: str, failures: list[int]) -> None:
    assert "num_rounds: 2" in (run_dir / "config.yaml").read_text()
    rows = read_metrics(run_dir)
    assert [r["round"] for r in rows] == [1, 2]
    assert [r["failures"] for r in rows] == failures
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["strategy"] == strategy


@pytest.mark.slow
@needs_tools
@pytest.mark.parametrize("strategy", ["fedavg", "lbgm"])
def test_deployed_run_writes_the_output_contract(
    federation: Federation, tmp_path: Path, strategy: str
) -> None:
    if strategy not in strategies.available_algorithms():
        pytest.skip(f"strategy {strategy!r} is not registered in strategies/ yet")
    run_dir = tmp_path / strategy
    output = _deploy(federation, run_dir, f"strategy={strategy}")
    _check_contract(run_dir, strategy, failures=[0, 0])
    assert all(r["clients"] == 2 for r in read_metrics(run_dir))
    assert f"[fedsparse] {strategy} on digits" in output


@pytest.mark.slow
@needs_tools
def test_an_edge_node_trains_fedpm_on_its_own_images(federation: Federation, tmp_path: Path):
    """FedPM (its masked model sized from the job) trains on both nodes, the edge node
    included; the edge node's Python really cannot import the server's packages."""
    run_dir = tmp_path / "edge"
    _deploy(federation, run_dir, "strategy=fedpm", "strategy.eval_samples=0")
    _check_contract(run_dir, "fedpm", failures=[0, 0])
    assert all(r["clients"] == 2 for r in read_metrics(run_dir))
    probe = subprocess.run(
        [sys.executable, "-c", "import client_app.app; import sklearn"],
        cwd=REPO,
        env=federation.edge_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 1 and "ModuleNotFoundError" in probe.stderr
    assert "sklearn" in probe.stderr and "client_app" not in probe.stderr.split("\n")[-2]
    assert "Traceback" not in (federation.root / "node1.log").read_text()


@pytest.mark.slow
@needs_tools
def test_failed_run_gives_a_nonzero_exit(federation: Federation, tmp_path: Path) -> None:
    """The ServerApp refuses a run dir that holds a run: ``fedsparse-deploy`` must say so."""
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n')  # a run that finished a round
    result = subprocess.run(
        _deploy_args(tmp_path),
        cwd=REPO,
        env=federation.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "ended finished:failed" in result.stderr and "already holds a run" in result.stderr


@pytest.mark.slow
def test_bad_overrides_fail_before_anything_is_sent(tmp_path: Path) -> None:
    result = run_command(_deploy_args(tmp_path / "bad", "num_rounds=-1"), REPO, timeout=120)
    assert result.returncode != 0 and "num_rounds=-1" in result.stdout
    assert "Successfully started run" not in result.stdout
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
@needs_tools
def test_run_survives_a_killed_supernode(federation: Federation, tmp_path: Path) -> None:
    """SIGKILL node 1 after round 1: round 2 finishes on node 0 with one failure (runs last)."""
    run_dir = tmp_path / "fault"
    log = tmp_path / "deploy.log"
    deploy = _start(_deploy_args(run_dir), log, federation.env, REPO)
    try:
        deadline = time.monotonic() + 240
        while not read_metrics(run_dir):
            assert deploy.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, "round 1 did not finish in time"
            time.sleep(0.2)
        kill_tree(federation.nodes[1])
        assert deploy.wait(timeout=240) == 0, log.read_text()[-4000:]
    finally:
        kill_tree(deploy)
    _check_contract(run_dir, "fedavg", failures=[0, 1])
    assert [r["clients"] for r in read_metrics(run_dir)] == [2, 1]
