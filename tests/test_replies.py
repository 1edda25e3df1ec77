"""Replies are handed over as they arrive, and a timeout ends the wait."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from server_app import replies
from server_app.replies import stream_replies


class _TrickleGrid:
    """Answers message ``i`` at pull number ``arrival[i]`` (never if None)."""

    def __init__(self, arrival: list[int | None]) -> None:
        self.arrival, self.pulls, self.pulled_with = arrival, 0, []

    def push_messages(self, messages):
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids):
        self.pulls += 1
        self.pulled_with.append(set(ids))
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=f"m{i}"))
            for i, at in enumerate(self.arrival)
            if at == self.pulls and f"m{i}" in ids
        ]


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replies, "PULL_INTERVAL_S", 0.0)


def test_each_reply_is_yielded_once_in_arrival_order() -> None:
    grid = _TrickleGrid([3, 1, 3, 2])
    stream = stream_replies(grid, ["a", "b", "c", "d"])
    assert next(stream).metadata.reply_to_message_id == "m1"
    assert grid.pulls == 1  # handed over before the others arrived
    rest = [r.metadata.reply_to_message_id for r in stream]
    assert rest == ["m3", "m0", "m2"]
    assert grid.pulled_with[-1] == {"m0", "m2"}  # answered messages are not asked for again


def test_timeout_ends_the_wait_without_the_missing_replies() -> None:
    grid = _TrickleGrid([1, None])
    got = [r.metadata.reply_to_message_id for r in stream_replies(grid, ["a", "b"], timeout=0.05)]
    assert got == ["m0"]


def test_nothing_pushed_means_nothing_pulled() -> None:
    grid = _TrickleGrid([])
    assert list(stream_replies(grid, [])) == [] and grid.pulls == 0
