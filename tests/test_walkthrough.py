"""docs/deployment.md's step-by-step walkthrough, run as written on loopback.

Every bash block marked ``<!-- terminal N -->`` runs, in document order, in terminal N's own
bash (its variables and background jobs kept from block to block, ``set -e``): terminal 1's
SuperLink, terminal 2's connection, node keys, two SuperNodes and first run, the devices' keys
copied into their folders, terminal 3's client-only devices on their own images, and the run
on them. What the test changes, and only that (each substitution must match): the ports (free
ones instead of 9091 and 9094..9097), ``$FLWR_HOME`` (a temporary folder instead of the
checkout's ``.flwr-home``), the venv it activates (this interpreter's), and the devices' venv
line: instead of a fresh ``pip install -e .`` (which downloads torch, minutes) terminal 3 uses
this venv with the server packages made unimportable (tests/processes.client_only_env), as a
client-only install has them. Every process the terminals started is killed by process group.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from server_app.results import read_metrics
from tests.processes import client_only_env, kill_tree

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "deployment.md"
BLOCK = re.compile(r"<!-- terminal (\d)[^>]*-->\n```bash\n(.*?)```", re.S)
DEVICE_VENV = (
    "python3 -m venv $FLWR_HOME/device-venv && . $FLWR_HOME/device-venv/bin/activate && "
    "pip install -e ."
)
COMPLETED = re.compile(r"\[fedsparse-deploy\] run \d+ completed; results in (\S+)")
RESULTS = re.compile(r"\[fedsparse-deploy\] results on the SuperLink host in (\S+)")
BLOCK_TIMEOUT_S = 600

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("openssl") is None or shutil.which("ssh-keygen") is None,
        reason="needs openssl (certificates) and ssh-keygen (node keys)",
    ),
]


def walkthrough_blocks(text: str) -> list[tuple[int, str]]:
    """(terminal, bash block) pairs of the document, in order."""
    return [(int(terminal), block) for terminal, block in BLOCK.findall(text)]


def _free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _ports() -> tuple[int, int]:
    """A free port for the SuperLink and a prefix P with P4..P7 free (the nodes' 909$((4 + i)))."""
    rng = random.Random()
    while True:
        superlink, prefix = rng.randrange(20000, 30000), rng.randrange(2000, 6000)
        if all(_free(p) for p in (superlink, *(prefix * 10 + d for d in range(4, 8)))):
            return superlink, prefix


def _substitute(block: str, old: str, new: str, uses: dict[str, int]) -> str:
    uses[old] = uses.get(old, 0) + block.count(old)
    return block.replace(old, new)


@dataclass
class Terminal:
    """One bash reading the blocks it is sent; its output goes to ``log``."""

    proc: subprocess.Popen
    log: Path

    def run(self, script: Path, timeout: float) -> None:
        """Source ``script`` in this bash and wait until it is done."""
        marker = f"__block_done__ {script.name}"
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"source {script} < /dev/null\necho '{marker}'\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while marker not in self.log.read_text():
            assert self.proc.poll() is None, f"{script.name} failed:\n{self.output()}"
            assert time.monotonic() < deadline, f"{script.name} timed out:\n{self.output()}"
            time.sleep(0.5)

    def output(self) -> str:
        return self.log.read_text()[-4000:]


def _start_terminal(root: Path, number: int, env: dict[str, str]) -> Terminal:
    log = root / f"terminal{number}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["bash", "-e"],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    return Terminal(proc, log)


def _wait_for_port(port: int, terminal: Terminal, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while _free(port):
        assert terminal.proc.poll() is None, f"the SuperLink exited:\n{terminal.output()}"
        assert time.monotonic() < deadline, f"no SuperLink on {port}:\n{terminal.output()}"
        time.sleep(0.3)


def test_the_walkthrough_blocks_are_the_expected_ones() -> None:
    """The doc has the blocks the test below runs: SuperLink, first run, device keys, devices,
    device run; each run command and the devices' venv line is there once."""
    blocks = walkthrough_blocks(DOC.read_text())
    assert [terminal for terminal, _ in blocks] == [1, 2, 2, 3, 2]
    text = "".join(block for _, block in blocks)
    assert text.count("fedsparse-deploy local-tls") == 2
    assert text.count(DEVICE_VENV) == 1
    assert 'data-root=\\"$FLWR_HOME/device$i/images\\"' in blocks[3][1]


def test_the_walkthrough_runs_as_written(tmp_path: Path) -> None:
    superlink_port, node_prefix = _ports()
    home = tmp_path / "flwr-home"
    client_only = client_only_env({}, tmp_path / "client-only")["PYTHONPATH"]
    venv = Path(sys.prefix)
    uses: dict[str, int] = {}
    env = {k: v for k, v in os.environ.items() if k not in ("FLWR_HOME", "VIRTUAL_ENV")}
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    terminals: dict[int, Terminal] = {}
    try:
        for index, (number, block) in enumerate(walkthrough_blocks(DOC.read_text())):
            block = _substitute(block, "9091", str(superlink_port), uses)
            block = _substitute(block, "909$((", f"{node_prefix}$((", uses)
            block = _substitute(block, "$PWD/.flwr-home", str(home), uses)
            block = _substitute(block, ". .venv/bin/activate", f". {venv}/bin/activate", uses)
            device_venv = f". {venv}/bin/activate && export PYTHONPATH={client_only}"
            block = _substitute(block, DEVICE_VENV, device_venv, uses)
            script = tmp_path / f"block{index}-terminal{number}.sh"
            script.write_text(block)
            if number not in terminals:
                terminals[number] = _start_terminal(tmp_path, number, env)
            if number == 1:  # the SuperLink runs in the foreground of terminal 1
                assert terminals[1].proc.stdin is not None
                terminals[1].proc.stdin.write(f"source {script} < /dev/null\n")
                terminals[1].proc.stdin.flush()
                _wait_for_port(superlink_port, terminals[1])
                continue
            terminals[number].run(script, BLOCK_TIMEOUT_S)
        assert uses == {
            "9091": 4,
            "909$((": 2,
            "$PWD/.flwr-home": 3,
            ". .venv/bin/activate": 2,
            DEVICE_VENV: 1,
        }
        results = [Path(m) for m in COMPLETED.findall(terminals[2].log.read_text())]
        assert len(results) == 2, terminals[2].output()  # the first run, then the devices'
        rows = [read_metrics(run_dir) for run_dir in results]
        assert [[r["round"] for r in run] for run in rows] == [[1, 2, 3], [1, 2]]  # as the doc
        assert all(r["clients"] == 2 and r["failures"] == 0 for run in rows for r in run), rows
        device_logs = "".join((home / f"device{i}.log").read_text() for i in (0, 1))
        assert "Sent successfully" in device_logs
    finally:
        for terminal in terminals.values():
            kill_tree(terminal.proc)
        made = RESULTS.findall(terminals[2].log.read_text()) if 2 in terminals else []
        for run_dir in map(Path, made):  # the doc's runs write under the checkout's outputs/
            if run_dir.is_relative_to(REPO / "outputs"):
                shutil.rmtree(run_dir, ignore_errors=True)
                with contextlib.suppress(OSError):  # its date folder, when nothing else is there
                    run_dir.parent.rmdir()
