"""``fedsparse-supernode`` (client_app/supernode.py): the polls it shortens, the installed
Flower it patches, its command line. The whole command runs in tests/test_walkthrough.py (the
devices) and benchmarks/edge_round.py."""

from __future__ import annotations

import inspect
import shlex
import sys
import time
import tomllib
from pathlib import Path

import pytest
from flwr.supernode import start_client_internal

from client_app import supernode
from client_app.supernode import (
    FLOWER_IDLE_POLL_S,
    BusyPolls,
    poll_seconds,
    runtime_api_address,
    shorten_polls,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The seconds each ``time.sleep`` was asked for (nothing actually sleeps)."""
    seconds: list[float] = []
    monkeypatch.setattr(time, "sleep", seconds.append)
    return seconds


def test_polls_are_short_while_busy_and_flower_s_when_idle(slept: list[float]) -> None:
    polls = BusyPolls(poll_s=0.2, busy_window_s=60)
    polls.sleep(FLOWER_IDLE_POLL_S)  # never busy yet: Flower's idle poll
    polls.sleep(0.5)  # the reply wait is always a poll
    polls.mark_busy()
    polls.sleep(FLOWER_IDLE_POLL_S)
    polls.last_busy -= 61  # the last message was a minute ago: idle again
    polls.sleep(FLOWER_IDLE_POLL_S)
    polls.sleep(0.1)
    assert slept == [3.0, 0.2, 0.2, 3.0, 0.1]
    assert polls.monotonic is time.monotonic  # everything else is the time module's


def test_the_installed_flower_has_the_loop_that_is_patched() -> None:
    """flwr.supernode.start_client_internal sleeps 3 s after an empty pull and looks the time
    module and the pull and push steps up by name: what shorten_polls replaces."""
    source = inspect.getsource(start_client_internal)
    assert f"time.sleep({FLOWER_IDLE_POLL_S:g})" in source
    assert source.count("time.sleep(") == 3  # the idle poll and two waits for the reply
    loop = inspect.getsource(start_client_internal.start_client_internal)
    assert all(f"{name}(" in loop for name in supernode.PATCHED_STEPS)


def test_the_patched_steps_mark_the_node_busy(slept: list[float]) -> None:
    loop = type(sys)("fake_loop")
    loop.time = time
    loop._pull_and_store_message = lambda found: found
    loop._push_messages = lambda: None
    polls = BusyPolls(poll_s=0.2)
    told: list[int] = []
    polls.message_in = lambda: told.append(1)  # fedsparse-supernode: a byte to the executor
    shorten_polls(loop, polls)
    assert loop.time is polls
    assert loop._pull_and_store_message(None) is None and not polls.busy()  # an empty pull
    assert not told
    assert loop._pull_and_store_message(7) == 7 and polls.busy()  # a message of run 7
    assert told == [1]
    polls.last_busy -= 61
    loop._push_messages()  # a reply sent
    assert polls.busy()


def test_a_flower_without_the_loop_is_refused_in_one_line() -> None:
    loop = type(sys)("flwr.supernode.start_client_internal")
    loop.time = time
    with pytest.raises(SystemExit, match="has no _pull_and_store_message, _push_messages"):
        shorten_polls(loop, BusyPolls(0.2))


@pytest.mark.parametrize("raw", ["0", "abc", "5", "nan"])
def test_a_bad_poll_setting_is_one_line(raw: str) -> None:
    with pytest.raises(SystemExit, match=f"FEDSPARSE_FLEET_POLL_S={raw} must be seconds"):
        poll_seconds({"FEDSPARSE_FLEET_POLL_S": raw})
    assert poll_seconds({}) == 0.2 and poll_seconds({"FEDSPARSE_FLEET_POLL_S": "3"}) == 3.0


@pytest.mark.parametrize(
    ("args", "address"),
    [
        ([], "127.0.0.1:9094"),
        (["--port", "9096", "--superlink", "x:9091"], "127.0.0.1:9096"),
        (["--host=0.0.0.0", "--port=9100"], "127.0.0.1:9100"),
        (["--host", "192.0.2.7"], "192.0.2.7:9094"),
    ],
)
def test_the_executor_dials_the_supernode_s_runtime_api(args: list[str], address: str) -> None:
    assert runtime_api_address(args) == address


@pytest.mark.parametrize("option", ["--isolation", "--ssl-certfile=x"])
def test_options_it_cannot_honour_are_refused(monkeypatch: pytest.MonkeyPatch, option: str) -> None:
    monkeypatch.setattr(sys, "argv", ["fedsparse-supernode", "--insecure", option, "subprocess"])
    with pytest.raises(SystemExit, match="is not supported here"):
        supernode.main()


def test_the_systemd_unit_runs_fedsparse_supernode_with_options_it_takes() -> None:
    unit = (REPO / "deploy" / "fedsparse-supernode.service").read_text()
    exec_start = unit.split("ExecStart=", 1)[1].split("\nRestart", 1)[0].replace("\\\n", " ")
    command, *args = shlex.split(exec_start)
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert Path(command).name in scripts
    assert not [a for a in args if a.split("=", 1)[0] in supernode.UNSUPPORTED]
    assert "Environment=FLWR_TELEMETRY_ENABLED=0" in unit
    poll = next(line for line in unit.splitlines() if "FEDSPARSE_FLEET_POLL_S=" in line)
    assert poll_seconds(dict([poll.removeprefix("Environment=").split("=", 1)])) == 0.2
