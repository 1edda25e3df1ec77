"""Replies handed over one by one as they arrive, so the server checks and decodes them while
the nodes are still training (``Grid.send_and_receive`` returns only once the last one is in)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from flwr.app import Message
from flwr.serverapp import Grid

PULL_INTERVAL_S = 0.05


def stream_replies(
    grid: Grid, messages: Iterable[Message], timeout: float | None = None
) -> Iterator[Message]:
    """Push ``messages``, then yield each reply as soon as it is pulled.

    Stops when every message has its reply, or ``timeout`` seconds after the push (the
    missing replies are then simply not yielded, as with ``send_and_receive``).
    """
    waiting = set(grid.push_messages(messages))
    deadline = None if timeout is None else time.monotonic() + timeout
    while waiting:
        arrived = list(grid.pull_messages(waiting))
        for reply in arrived:
            waiting.discard(reply.metadata.reply_to_message_id)
            yield reply
        if not waiting or (deadline is not None and time.monotonic() >= deadline):
            return
        if not arrived:
            time.sleep(PULL_INTERVAL_S)
