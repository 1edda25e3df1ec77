"""A real deployment on loopback: SuperLink (TLS, node authentication) + two SuperNodes.

Runs ``fedsparse-deploy`` against it the way docs/deployment.md does, without ``num_clients``
(the run counts the nodes), and checks the output contract; then what a user meets when things
go wrong: too few nodes (progress lines, one line after ``deployment.node_wait_s``), Ctrl-C (the
run stopped on the SuperLink too, resumed from its checkpoint), a device of the wrong shape and a
client-only node asked for the shipped partition (one line each, no traceback); and nodes that
come and go (a node joining after the start, a SuperNode killed and restarted with its key).
Node 1 is an edge device: its Python cannot import the server's packages (a client-only
install) and it trains on its own folder of PNGs (``data-root``), so it cannot load the
configured data set (digits needs scikit-learn) and must take the set's shape, classes and
statistics from the job. Every process started here is killed by process group in ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
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
from server_app.results import read_metrics, without_wall_clock
from server_app.settings import ConfigError
from tests.processes import client_only_env, descendants, kill_tree, run_command

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
CONNECTION = "test-tls"
RUN = [
    "dataset=digits",
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
    """What the fixture started; ``nodes[i]`` (running ones only) hosts client i."""

    root: Path
    env: dict[str, str]
    superlink: subprocess.Popen
    port: int
    nodes: dict[int, subprocess.Popen] = field(default_factory=dict)
    edge_env: dict[str, str] = field(default_factory=dict)
    edge_data: Path | None = None
    shipped_on_edge: bool = False  # node 1 started without data-root (asked for the partition)


NODE_UP = "SuperNode ID:"  # a SuperNode's log line once the SuperLink took it
NODE_REFUSED = "Failed to activate SuperNode"
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
    with log.open("a") as out:  # a restarted node adds to its log
        return subprocess.Popen(
            args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _start_node(fed: Federation, partition: int, own_data: bool = True) -> subprocess.Popen:
    """Node 0 trains on its partition of digits; node 1 is the edge device (module docstring),
    on its own images unless ``own_data`` is false. Both start with their registered key."""
    node_config = f"partition-id={partition} num-partitions=2"
    if partition == 1 and own_data:
        node_config += f' data-root="{fed.edge_data}"'
    args = [
        "flower-supernode",
        "--superlink",
        f"127.0.0.1:{fed.port}",
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
    fed.nodes[partition] = _start(args, fed.root / f"node{partition}.log", env, fed.root)
    if partition == 1:
        fed.shipped_on_edge = not own_data
    return fed.nodes[partition]


def _stop_node(fed: Federation, partition: int) -> None:
    """Stop a node as its operator would (SIGTERM): it signs off, so its key may connect again
    at once (a killed node's key is refused until the SuperLink misses its heartbeats)."""
    proc = fed.nodes.pop(partition)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    finally:
        kill_tree(proc)


def _edge_node(fed: Federation, running: bool, own_data: bool = True) -> None:
    """Node 1 as a test needs it: stopped, or running on its own images or the partition."""
    if 1 in fed.nodes and (not running or fed.shipped_on_edge == own_data):
        _stop_node(fed, 1)
    if running and 1 not in fed.nodes:
        _start_node(fed, 1, own_data)


def _rejoin(fed: Federation, partition: int, timeout: float = 150) -> None:
    """Restart a killed node with its key until the SuperLink takes it (it refuses the key while
    it still counts the dead node as connected: Flower's heartbeat patience, up to 60 s), as a
    service manager restarting it would."""
    log = fed.root / f"node{partition}.log"
    deadline = time.monotonic() + timeout
    while True:
        before = log.read_text()
        up, refused = before.count(NODE_UP), before.count(NODE_REFUSED)
        proc = _start_node(fed, partition)
        while True:
            text = log.read_text()
            if text.count(NODE_UP) > up:
                return
            if text.count(NODE_REFUSED) > refused or proc.poll() is not None:
                break
            assert time.monotonic() < deadline, "the restarted node was refused until the timeout"
            time.sleep(0.5)
        kill_tree(fed.nodes.pop(partition))  # the refused node and its SuperExec
        time.sleep(1)


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
    fed = Federation(root, env, superlink, port)
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
        for partition in (0, 1):
            _start_node(fed, partition)
        yield fed
    finally:
        for proc in [*fed.nodes.values(), superlink]:
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


def _deploy_result(fed: Federation, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``fedsparse-deploy`` run to its end against the test federation, output captured."""
    return subprocess.run(
        _deploy_args(run_dir, *overrides),
        cwd=REPO,
        env=fed.env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _deploy(fed: Federation, run_dir: Path, *overrides: str) -> str:
    result = _deploy_result(fed, run_dir, *overrides)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def _check_contract(run_dir: Path, strategy: str, failures: list[int], rounds: int = 2) -> None:
    assert f"num_rounds: {rounds}" in (run_dir / "config.yaml").read_text()
    rows = read_metrics(run_dir)
    assert [r["round"] for r in rows] == list(range(1, rounds + 1))
    assert [r["failures"] for r in rows] == failures
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == rounds and summary["strategy"] == strategy


def _failed_in_one_line(result: subprocess.CompletedProcess, run_dir: Path) -> str:
    """The reason ``fedsparse-deploy`` gave, once sure it ended the output alone: a non-zero
    exit, its last line, no traceback or Flower exit notice on the terminal."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-4000:]
    assert "Traceback" not in output and "Exit Code" not in output, output[-4000:]
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"fedsparse-deploy: run \d+ failed: .+", last), result.stderr[-2000:]
    return last


def _wait_for_round(run_dir: Path, rounds: int, deploy: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 240
    while len(read_metrics(run_dir)) < rounds:
        assert deploy.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, f"round {rounds} did not finish in time"
        time.sleep(0.2)


def _wait_for_no_server_app(fed: Federation, timeout: float = 60) -> None:
    """Until no ``flwr-serverapp`` process runs under the SuperLink."""
    deadline = time.monotonic() + timeout
    while True:
        commands = []
        for pid in descendants(fed.superlink.pid):
            with contextlib.suppress(OSError):
                commands.append(Path(f"/proc/{pid}/cmdline").read_bytes().decode())
        if not any("flwr-serverapp" in command for command in commands):
            return
        assert time.monotonic() < deadline, "the stopped run's ServerApp is still running"
        time.sleep(0.5)


def _runs_by_status(fed: Federation) -> dict[str, str]:
    """Run id -> status of every run the SuperLink knows (``flwr ls``)."""
    result = subprocess.run(
        ["flwr", "ls", CONNECTION, "--format", "json"],
        env=fed.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    runs = json.loads(result.stdout[result.stdout.index("{") :])["runs"]
    return {run["run-id"]: run["status"] for run in runs}


@pytest.mark.slow
@needs_tools
@pytest.mark.parametrize("strategy", ["fedavg", "lbgm"])
def test_deployed_run_writes_the_output_contract(
    federation: Federation, tmp_path: Path, strategy: str
) -> None:
    """No num_clients: the run counts the two SuperNodes and starts without a grace period
    (both declare num-partitions=2 and both are there)."""
    if strategy not in strategies.available_algorithms():
        pytest.skip(f"strategy {strategy!r} is not registered in strategies/ yet")
    _edge_node(federation, running=True)
    run_dir = tmp_path / strategy
    output = _deploy(federation, run_dir, f"strategy={strategy}")
    _check_contract(run_dir, strategy, failures=[0, 0])
    assert all(r["clients"] == 2 for r in read_metrics(run_dir))
    assert "num_clients=auto: 2 SuperNodes connected -> 2 clients" in output
    assert f"[fedsparse] {strategy} on digits (dirichlet), 2 clients" in output


@pytest.mark.slow
@needs_tools
def test_an_edge_node_trains_fedpm_on_its_own_images(federation: Federation, tmp_path: Path):
    """FedPM (its masked model sized from the job) trains on both nodes, the edge node
    included; the edge node's Python really cannot import the server's packages."""
    _edge_node(federation, running=True)
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
    """The ServerApp refuses a run dir that holds a run: ``fedsparse-deploy`` says so in one
    line; the traceback is in the run folder's log."""
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n')  # a run that finished a round
    result = subprocess.run(
        _deploy_args(tmp_path),
        cwd=REPO,
        env=federation.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "already holds a run" in _failed_in_one_line(result, tmp_path)
    assert "ConfigError" in (tmp_path / "fedsparse.log").read_text()


@pytest.mark.slow
def test_bad_overrides_fail_before_anything_is_sent(tmp_path: Path) -> None:
    result = run_command(_deploy_args(tmp_path / "bad", "num_rounds=-1"), REPO, timeout=120)
    assert result.returncode != 0 and "num_rounds=-1" in result.stdout
    assert "Successfully started run" not in result.stdout
    assert not (tmp_path / "bad").exists()


NODE_WAIT_S = 10


@pytest.mark.slow
@needs_tools
def test_too_few_nodes_report_progress_then_stop_in_one_line(
    federation: Federation, tmp_path: Path
) -> None:
    """num_clients=3 with 2 SuperNodes: a progress line every 5 s, then one line when
    deployment.node_wait_s is over."""
    _edge_node(federation, running=True)
    args = _deploy_args(tmp_path, "num_clients=3", f"deployment.node_wait_s={NODE_WAIT_S}")
    proc = subprocess.Popen(
        args, cwd=REPO, env=federation.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        progress = []
        assert proc.stdout is not None
        for line in proc.stdout:
            if "waiting for SuperNodes: 2 of 3 connected" in line:
                progress.append(time.monotonic())
        stderr = proc.stderr.read() if proc.stderr else ""
        ended = time.monotonic()
        proc.wait(timeout=120)
    finally:
        kill_tree(proc)
    result = subprocess.CompletedProcess(args, proc.returncode, "", stderr)
    line = _failed_in_one_line(result, tmp_path)
    assert f"only 2 of 3 SuperNodes connected within {NODE_WAIT_S} s" in line
    assert "num_clients=auto" in line
    assert len(progress) >= NODE_WAIT_S // 5
    assert ended - progress[0] < NODE_WAIT_S + 15  # the stated timeout, plus the way back


@pytest.mark.slow
@needs_tools
def test_ctrl_c_stops_the_run_on_the_superlink_and_it_resumes(
    federation: Federation, tmp_path: Path
) -> None:
    """SIGINT after round 1: one line naming the resume command, exit 130, no run left
    running; the printed command finishes the run from round 1's checkpoint."""
    _edge_node(federation, running=True)
    run_dir = tmp_path / "stopped"
    log = tmp_path / "deploy.log"
    deploy = _start(_deploy_args(run_dir, "num_rounds=3"), log, federation.env, REPO)
    try:
        _wait_for_round(run_dir, 1, deploy, log)
        os.kill(deploy.pid, signal.SIGINT)
        assert deploy.wait(timeout=120) == 130, log.read_text()[-4000:]
    finally:
        kill_tree(deploy)
    output = log.read_text()
    last = output.strip().splitlines()[-1]
    assert "Traceback" not in output, output[-4000:]
    resume = f"fedsparse-deploy {CONNECTION} --run-dir {run_dir} resume=true"
    assert re.fullmatch(
        rf"\[fedsparse-deploy\] SIGINT: stopped run \d+; continue with: {resume}", last
    )
    assert "running" not in _runs_by_status(federation).values()
    _wait_for_no_server_app(federation)  # the stopped run's ServerApp process is gone too
    before = read_metrics(run_dir)
    assert 1 <= len(before) < 3
    command = [sys.executable, "-m", "server_app.deploy", *shlex.split(resume)[1:]]
    result = subprocess.run(
        command, cwd=REPO, env=federation.env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    _check_contract(run_dir, "fedavg", failures=[0, 0, 0], rounds=3)
    after = read_metrics(run_dir)
    assert [without_wall_clock(r) for r in after[: len(before)]] == [
        without_wall_clock(r) for r in before
    ]
    assert f"rounds {len(before) + 1}..3" in result.stdout  # from the checkpoint on


@pytest.mark.slow
@needs_tools
def test_a_device_of_the_wrong_shape_ends_the_run_in_one_line(
    federation: Federation, tmp_path: Path
) -> None:
    """mnist5k is 28×28, the edge node holds 8×8 images: with both replies required, round 1
    fails, and the line says why."""
    _edge_node(federation, running=True)
    result = _deploy_result(
        federation, tmp_path, "dataset=mnist5k", "min_replies=2", "local_steps=2"
    )
    line = _failed_in_one_line(result, tmp_path)
    assert "round 1: only 1 valid replies, fewer than min_replies=2" in line
    assert f"data-root {federation.edge_data} holds images of shape (C, H, W) = (1, 8, 8)" in line
    assert "but the run's data set has (1, 28, 28)" in line


@pytest.mark.slow
@needs_tools
def test_a_client_only_node_asked_for_the_shipped_partition_says_what_it_needs(
    federation: Federation, tmp_path: Path
) -> None:
    """The edge node without data-root: digits needs scikit-learn, which it lacks."""
    _edge_node(federation, running=True, own_data=False)
    result = _deploy_result(federation, tmp_path, "min_replies=2")
    line = _failed_in_one_line(result, tmp_path)
    assert "this node cannot load client 1's partition of dataset=digits" in line
    assert "lacks the package 'scikit-learn'" in line and "data-root=" in line


@pytest.mark.slow
@needs_tools
def test_a_node_that_joins_after_the_start_trains_from_the_next_round(
    federation: Federation, tmp_path: Path
) -> None:
    """Only node 0 is there: after the grace period the run starts with the 2 clients the node
    declares; node 1, started then, trains from a later round on."""
    _edge_node(federation, running=False)
    run_dir = tmp_path / "late"
    log = tmp_path / "deploy.log"
    args = _deploy_args(run_dir, "num_rounds=3", "deployment.node_grace_s=2")
    deploy = _start(args, log, federation.env, REPO)
    try:
        deadline = time.monotonic() + 240
        while "join when their nodes connect" not in log.read_text():
            assert deploy.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.2)
        _edge_node(federation, running=True)
        assert deploy.wait(timeout=300) == 0, log.read_text()[-4000:]
    finally:
        kill_tree(deploy)
    assert "1 SuperNode connected -> 2 clients (clients [1] join" in log.read_text()
    clients = [r["clients"] for r in read_metrics(run_dir)]
    assert clients[0] == 1 and clients[-1] == 2, clients
    _check_contract(run_dir, "fedavg", failures=[0, 0, 0], rounds=3)


@pytest.mark.slow
@needs_tools
def test_a_killed_supernode_rejoins_with_its_key_and_trains_again(
    federation: Federation, tmp_path: Path
) -> None:
    """SIGKILL node 1 after round 1 and restart it at once with its key: the run goes on with
    node 0 (node 1's client counted in failures once the SuperLink misses it) and node 1 trains
    again in the last round."""
    _edge_node(federation, running=True)
    run_dir = tmp_path / "fault"
    log = tmp_path / "deploy.log"
    deploy = _start(_deploy_args(run_dir, "num_rounds=4"), log, federation.env, REPO)
    try:
        _wait_for_round(run_dir, 1, deploy, log)
        kill_tree(federation.nodes.pop(1))
        _rejoin(federation, 1)
        assert deploy.wait(timeout=400) == 0, log.read_text()[-4000:]
    finally:
        kill_tree(deploy)
    rows = read_metrics(run_dir)
    clients = [r["clients"] for r in rows]
    assert clients[0] == 2 and clients[-1] == 2 and 1 in clients[1:], clients
    assert sum(r["failures"] for r in rows) >= 1  # the round that lost node 1 counts it
    assert NODE_REFUSED in (federation.root / "node1.log").read_text()
