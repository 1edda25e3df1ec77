"""An edge device's round, measured: one SuperNode without the server packages, on its own images.

    python benchmarks/edge_round.py                       # 5 rounds of the default model
    python benchmarks/edge_round.py --rounds 3 --images 200

A SuperLink and one SuperNode on loopback (insecure, this machine), the SuperNode's Python unable
to import the server side (ray, hydra, omegaconf, matplotlib, scikit-learn, mlxtend, torchvision:
a client-only install) and training on a folder of ``--images`` 28×28 PNGs (``data-root``) for
the default experiment (cnn, mnist5k configured on the server), one client, ``fedsparse-deploy``
submitting the run. Measured: the SuperNode's process tree peak RSS (sampled every 0.1 s), the
server's seconds per round (``round_s``), the client's training seconds (``client_train_s``),
a fresh ClientApp process's start (interpreter + ``import client_app.app`` in the client-only
environment, timed apart), the device data load (``load_device_data`` of the folder, timed
apart, first load); messaging and Flower's own work are what remains of the round. Writes
``benchmarks/results/edge_round.md``.
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
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.processes import client_only_env, descendants, kill_tree  # noqa: E402

OVERRIDES = ["num_clients=1", "clients_per_round=1", "federated_eval=false", "plots=false"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _images(folder: Path, count: int) -> Path:
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (count, 28, 28), dtype=np.uint8)
    for i, image in enumerate(pixels):
        (folder / str(i % 10)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / str(i % 10) / f"{i}.png")
    return folder


def _timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, timeout=120)
    return time.perf_counter() - started


def measure(args: argparse.Namespace, root: Path) -> dict:
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
    edge_env = client_only_env(env, root / "client-only")
    data = _images(root / "images", args.images)
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

    try:
        start(
            [
                "flower-superlink",
                "--insecure",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            "superlink.log",
            env,
        )
        time.sleep(3)
        node = start(
            [
                "flower-supernode",
                "--insecure",
                "--superlink",
                f"127.0.0.1:{port}",
                "--port",
                str(_free_port()),
                "--node-config",
                f'partition-id=0 num-partitions=1 data-root="{data}"',
            ],
            "supernode.log",
            edge_env,
        )
        run_dir = root / "run"
        deploy = start(
            [
                sys.executable,
                "-m",
                "server_app.deploy",
                "edge",
                *OVERRIDES,
                f"num_rounds={args.rounds}",
                "--run-dir",
                str(run_dir),
            ],
            "deploy.log",
            env,
        )
        peak, apps = 0.0, set()
        while deploy.poll() is None:
            tree = descendants(node.pid)
            peak = max(peak, _rss_mb([node.pid, *tree]))
            apps.update(pid for pid in tree if "clientapp" in _cmdline(pid))
            time.sleep(0.1)
        if deploy.returncode != 0:
            raise SystemExit((root / "deploy.log").read_text()[-3000:])
    finally:
        for proc in started:
            kill_tree(proc)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    clientapp_start = statistics.median(
        _timed([sys.executable, "-c", "import client_app.app"], edge_env) for _ in range(3)
    )
    load = (
        "import time; from data.device import load_device_data; t = time.perf_counter(); "
        f"load_device_data({str(data)!r}, (1, 28, 28), 10); print(time.perf_counter() - t)"
    )
    data_load = float(
        subprocess.run(
            [sys.executable, "-c", load],
            cwd=REPO,
            env=edge_env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    later = rows[1:] or rows
    return {
        "rounds": len(rows),
        "clientapp_processes": len(apps),
        "images": args.images,
        "peak_rss_mb": peak,
        "round_s": statistics.median(r["round_s"] for r in later),
        "first_round_s": rows[0]["round_s"],
        "train_s": statistics.median(r["client_train_s"] for r in later),
        "clientapp_start_s": clientapp_start,
        "data_load_s": data_load,
    }


def report(result: dict) -> str:
    rest = (
        result["round_s"] - result["train_s"] - result["clientapp_start_s"] - result["data_load_s"]
    )
    return "\n".join(
        [
            "# An edge device's round",
            "",
            f"One SuperNode on loopback without the server packages (client-only), training the "
            f"default experiment's cnn on its own {result['images']} PNGs (28×28, `data-root`), "
            f"one client, {result['rounds']} rounds, `federated_eval=false`; the 2-core box. "
            "Written by `benchmarks/edge_round.py`. Median over rounds 2+.",
            "",
            "| what | seconds per round |",
            "|---|---|",
            f"| server's round (`round_s`) | {result['round_s']:.2f} (round 1: "
            f"{result['first_round_s']:.2f}) |",
            f"| ClientApp process start (interpreter + imports, timed apart) | "
            f"{result['clientapp_start_s']:.2f} |",
            f"| device data load (the PNG folder, timed apart) | {result['data_load_s']:.2f} |",
            f"| local training (`client_train_s`) | {result['train_s']:.2f} |",
            f"| messaging, Flower and the server's own work (the rest) | {rest:.2f} |",
            "",
            f"The SuperNode started {result['clientapp_processes']} ClientApp processes for "
            f"{result['rounds']} rounds (a process per message pays the start and loads the data "
            "each time).",
            "",
            f"Peak RSS of the SuperNode's process tree (SuperNode + ClientApp processes): "
            f"**{result['peak_rss_mb']:.0f} MB**.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        result = measure(args, Path(root))
    text = report(result)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "edge_round.md").write_text(text)
    (args.results / "edge_round.json").write_text(json.dumps(result, indent=1))
    print(text, end="")


if __name__ == "__main__":
    main()
