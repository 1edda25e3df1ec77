"""Where a deployed round's time goes, with Flower's defaults and with the settings that cut it.

    python benchmarks/edge_round.py                        # cnn and resnet18, every mode
    python benchmarks/edge_round.py --models cnn --rounds 3 --modes flower-default warm-executor

A SuperLink and ``--nodes`` SuperNodes on loopback (insecure, this machine), each SuperNode's
Python unable to import the server side (a client-only install; plus torchvision for
resnet18, which models/resnet.py builds from torchvision's) and training on its own folder
of ``--images`` 28×28 PNGs (``data-root``), for the default experiment (mnist5k configured on
the server) with each ``--models``, one client per node, ``federated_eval=false`` (one message
per node and round) unless ``--federated-eval``; ``fedsparse-deploy`` submits the run. The
SuperNodes run in each of the modes (``MODES``), one deployment after another:

- ``flower-default``: ``flower-supernode`` as Flower ships it (a new ``flwr-clientapp``
  interpreter per message, Flower's polls);
- ``flower-tuned``: the same with Flower's own knobs (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``,
  ``FLWR_TELEMETRY_ENABLED=0``);
- ``warm-executor``: ``fedsparse-supernode`` with Flower's polls kept
  (``FEDSPARSE_FLEET_POLL_S=3``): only the warm ClientApp executor;
- ``fedsparse-supernode``: the warm executor and the short polls.

Measured per mode, median over rounds 2+: the server's round (``round_s``), its ``wait`` for the
replies (``phase_s``), each client's training (``client_train_s`` over the clients: they train
at the same time), the bytes each client moves per round; the ClientApp processes started and
the SuperNodes' peak PSS (process trees, sampled every 0.1 s); apart, a fresh ClientApp
interpreter's start (``import client_app.app`` and Flower's runner, client-only). Writes
``benchmarks/results/edge_round.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.processes import SERVER_PACKAGES, client_only_env, descendants, kill_tree  # noqa: E402

OVERRIDES = ["plots=false"]
NEEDS_TORCHVISION = {"resnet18"}  # models/resnet.py builds it from torchvision's ResNet-18
FLOWER_SUPERNODE = ["flower-supernode"]
FEDSPARSE_SUPERNODE = [sys.executable, "-m", "client_app.supernode"]


@dataclass(frozen=True)
class Mode:
    """How the SuperNodes run: the command and the environment it adds."""

    command: list[str]
    env: dict[str, str]
    what: str


MODES = {
    "flower-default": Mode(FLOWER_SUPERNODE, {}, "`flower-supernode`, Flower's defaults"),
    "flower-tuned": Mode(
        FLOWER_SUPERNODE,
        {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.05", "FLWR_TELEMETRY_ENABLED": "0"},
        "`flower-supernode`, `FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.05 FLWR_TELEMETRY_ENABLED=0`",
    ),
    "warm-executor": Mode(
        FEDSPARSE_SUPERNODE,
        {"FEDSPARSE_FLEET_POLL_S": "3", "FLWR_TELEMETRY_ENABLED": "0"},
        "`fedsparse-supernode`, `FEDSPARSE_FLEET_POLL_S=3` (Flower's polls)",
    ),
    "fedsparse-supernode": Mode(
        FEDSPARSE_SUPERNODE,
        {"FLWR_TELEMETRY_ENABLED": "0"},
        "`fedsparse-supernode` (warm executor, polls 0.2 s while busy)",
    ),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise SystemExit(f"no SuperLink on port {port} after {timeout} s")


def _pss_mb(pids: list[int]) -> float:
    """Proportional set size: pages a fork shares with its parent count once, not twice."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _images(folder: Path, count: int, seed: int) -> Path:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (count, 28, 28), dtype=np.uint8)
    for i, image in enumerate(pixels):
        (folder / str(i % 10)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / str(i % 10) / f"{i}.png")
    return folder


def _timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, timeout=120)
    return time.perf_counter() - started


def measure(args: argparse.Namespace, model: str, mode: Mode, root: Path) -> dict:
    """One deployment in ``mode``: a SuperLink, the nodes, one run; its numbers."""
    port = _free_port()
    home = root / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "edge"\n\n[superlink.edge]\naddress = "127.0.0.1:{port}"\n'
        "insecure = true\n"
    )
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    edge_env = {**client_only_env(env, root / "client-only"), **mode.env}
    if model in NEEDS_TORCHVISION:  # the device installs torchvision beside the core install
        blocked = tuple(p for p in SERVER_PACKAGES if p != "torchvision")
        (root / "client-only" / "sitecustomize.py").write_text(
            f"import sys\n\nsys.modules.update(dict.fromkeys({blocked!r}))\n"
        )
    started: list[subprocess.Popen] = []

    def start(command: list[str], log: str, environment: dict[str, str]) -> subprocess.Popen:
        with (root / log).open("w") as out:
            proc = subprocess.Popen(
                command,
                cwd=root,
                env=environment,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(proc)
        return proc

    superlink = [
        "flower-superlink",
        "--insecure",
        "--disable-runtime-dependency-installation",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    try:
        start(superlink, "superlink.log", env)
        _wait_for_port(port)
        nodes = []
        for i in range(args.nodes):
            data = _images(root / f"images{i}", args.images, seed=i)
            node_config = f'partition-id={i} num-partitions={args.nodes} data-root="{data}"'
            command = [*mode.command, "--insecure", "--superlink", f"127.0.0.1:{port}"]
            command += ["--port", str(_free_port()), "--node-config", node_config]
            nodes.append(start(command, f"node{i}.log", edge_env))
        run_dir = root / "run"
        overrides = [*OVERRIDES, f"model={model}", f"num_rounds={args.rounds}"]
        overrides += [f"num_clients={args.nodes}", f"clients_per_round={args.nodes}"]
        overrides += [f"federated_eval={str(args.federated_eval).lower()}"]
        command = [sys.executable, "-m", "server_app.deploy", "edge", *overrides]
        deploy = start([*command, "--run-dir", str(run_dir)], "deploy.log", env)
        peak, apps = 0.0, set()
        while deploy.poll() is None:
            trees = [[node.pid, *descendants(node.pid)] for node in nodes]
            peak = max(peak, sum(_pss_mb(tree) for tree in trees))
            for tree in trees:  # Flower's flwr-clientapp processes, or the warm executor's forks
                apps.update(p for p in tree if "flwr-clientapp" in _cmdline(p))
                warm = [p for p in tree if "client_app.warm_executor" in _cmdline(p)]
                apps.update(child for w in warm for child in descendants(w))
            time.sleep(0.1)
        if deploy.returncode != 0:
            raise SystemExit((root / "deploy.log").read_text()[-3000:])
    finally:
        for proc in started:
            kill_tree(proc)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    later = rows[1:] or rows
    return {
        "rounds": len(rows),
        "clientapp_processes": len(apps),
        "peak_pss_mb": peak,
        "round_s": statistics.median(r["round_s"] for r in later),
        "first_round_s": rows[0]["round_s"],
        "wait_s": statistics.median(r["phase_s"]["wait"] for r in later),
        "train_s": statistics.median(r["client_train_s"] / r["clients"] for r in later),
        "bytes_per_client": statistics.median(
            (r["uplink_bytes"] + r["downlink_bytes"]) / r["clients"] for r in later
        ),
    }


def fresh_clientapp_start(root: Path) -> float:
    """Seconds a new client-only ClientApp interpreter takes to import what it runs."""
    env = client_only_env(dict(os.environ), root / "client-only-start")
    imports = "import client_app.app, flwr.supernode.runtime.run_clientapp"
    return statistics.median(_timed([sys.executable, "-c", imports], env) for _ in range(3))


def report(results: dict, args: argparse.Namespace) -> str:
    eval_note = "federated evaluation on" if args.federated_eval else "`federated_eval=false`"
    counts = {r["rounds"] for modes in results["models"].values() for r in modes.values()}
    rounds = " or ".join(str(c) for c in sorted(counts))
    load = (
        f", under other work (load average {results['load_average']})"
        if "load_average" in results
        else ""
    )
    lines = [
        "# A deployed round: where the time goes, and the settings that cut it",
        "",
        f"{args.nodes} SuperNodes on loopback without the server packages (client-only; "
        "resnet18's nodes have torchvision, which its model needs), each "
        f"training on its own {args.images} PNGs (28×28, `data-root`), one client per node, "
        f"{rounds} rounds, {eval_note}, the default experiment otherwise (mnist5k "
        "configured on the server, central evaluation every round); the shared 2-core box, "
        f"`nice -n 10`{load}. Written by `benchmarks/edge_round.py`. Median over rounds 2+; a "
        "client's training is `client_train_s` over the clients (they train at the same time); "
        "loopback itself carries a round's bytes in well under a second, so the "
        "training is the work a round cannot avoid, and `round / training` is the ratio to "
        "training + transfer; how Flower moves the bytes (serialised objects pushed and pulled "
        "through the SuperNode's and the SuperLink's stores) is part of the rest of the wait. "
        "A fresh ClientApp interpreter (client-only: `import client_app.app` "
        f"and Flower's runner), timed apart: {results['fresh_clientapp_start_s']:.2f} s.",
        "",
        "| model | mode | round (s) | wait (s) | client training (s) | round / training | "
        "rest of the wait (s) | server's own (s) | ClientApp processes | peak PSS, nodes (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, modes in results["models"].items():
        for name, r in modes.items():
            lines.append(
                f"| {model} | {name} | {r['round_s']:.2f} (round 1: {r['first_round_s']:.2f}) | "
                f"{r['wait_s']:.2f} | {r['train_s']:.2f} | **{r['round_s'] / r['train_s']:.1f}×** "
                f"| {r['wait_s'] - r['train_s']:.2f} | {r['round_s'] - r['wait_s']:.2f} | "
                f"{r['clientapp_processes']} | {r['peak_pss_mb']:.0f} |"
            )
    lines += ["", "Modes:", ""]
    lines += [f"- `{name}`: {MODES[name].what}" for name in results["modes"]]
    lines += [
        "",
        "The rest of the wait is messaging: the server's message waiting for the SuperNode's "
        "next pull, the task waiting to be picked up, a new ClientApp interpreter's start "
        "(none with the warm executor), the reply waiting for the SuperNode's next check, "
        "and the transfer itself. The server's own work is `round_s` minus the wait "
        "(building the messages, aggregating, the central evaluation's overlap). Bytes per "
        "client and round (up + down): "
        + ", ".join(
            f"{model} {next(iter(modes.values()))['bytes_per_client'] / 1e6:.2f} MB"
            for model, modes in results["models"].items()
        )
        + ".",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet18"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--federated-eval", action="store_true")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    results: dict = {"modes": args.modes, "models": {}, "settings": vars(args) | {}}
    results["settings"]["results"] = str(args.results)
    loads: list[float] = []  # the box's 1-minute load average: how quiet the measurement was
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            results["models"][model] = {}
            for name in args.modes:
                root = Path(tmp) / f"{model}-{name}"
                root.mkdir()
                loads.append(os.getloadavg()[0])
                result = measure(args, model, MODES[name], root)
                loads.append(os.getloadavg()[0])
                results["models"][model][name] = result
                print(model, name, json.dumps(result), flush=True)
        results["fresh_clientapp_start_s"] = fresh_clientapp_start(Path(tmp))
    results["load_average"] = f"{min(loads):.1f}-{max(loads):.1f} before and after each mode"
    text = report(results, args)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "edge_round.md").write_text(text)
    (args.results / "edge_round.json").write_text(json.dumps(results, indent=1))
    print(text, end="")


if __name__ == "__main__":
    main()
