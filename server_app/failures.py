"""A deployed run that fails for a reason fedsparse can name ends in that one line.

Flower logs a ServerApp's exception with its traceback into the run's log stream (which
``flwr run --stream`` prints on the user's terminal) and adds an "Exit Code: 201" notice. For
the failures fedsparse names itself (a bad config, a missing checkpoint or data set, SuperNodes
that do not make up the federation, a round without enough valid replies) the ServerApp raises
:class:`RunFailed` with the reason instead: the traceback goes to the run folder's
``fedsparse.log``, a filter keeps Flower's copy of it and the exit notice off the stream, and
the reason is the run's status details (``flwr ls``), which ``fedsparse-deploy`` prints as its
last line. Any other exception keeps Flower's traceback: it is a bug to look at.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from data.datasets import DataNotFoundError
from server_app.checkpoint import CheckpointError
from server_app.experiment import TooFewReplies
from server_app.federation import FederationError
from server_app.settings import ConfigError

LOG_FILE = "fedsparse.log"  # the run's log file, as the simulation's Hydra job names it
EXIT_NOTICE = "Exit Code: "
# what Flower puts before the exception's text in a failed run's status details
DETAILS_PREFIX = "ServerApp failed with exception: "
NAMED_FAILURES = (
    ConfigError,
    CheckpointError,
    DataNotFoundError,
    FederationError,
    TooFewReplies,
    TimeoutError,  # the client directory: nodes that never answered its query
)


class RunFailed(Exception):
    """A deployed run stopped for the reason in its message (one line)."""


class _QuietFailure(logging.Filter):
    """Drops Flower's log records of a :class:`RunFailed`: its traceback and exit notice."""

    failed = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], RunFailed):
            _QuietFailure.failed = True
            return False
        return not (_QuietFailure.failed and record.getMessage().startswith(EXIT_NOTICE))


def _log_traceback(run_dir: Path, err: BaseException) -> None:
    """Append ``err``'s traceback to the run's log file, when the run folder exists."""
    if not run_dir.is_dir():
        return
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    text = "".join(traceback.format_exception(err))
    with (run_dir / LOG_FILE).open("a") as log:
        log.write(f"[{stamp}] the deployed run failed:\n{text}")


@contextmanager
def one_line_failures(run_dir: Path) -> Iterator[None]:
    """Turn a named failure inside into :class:`RunFailed` (its reason, one line), its
    traceback into ``run_dir``'s log file."""
    flower = logging.getLogger("flwr")
    if not any(isinstance(f, _QuietFailure) for f in flower.filters):
        flower.addFilter(_QuietFailure())
    try:
        yield
    except NAMED_FAILURES as err:
        _log_traceback(run_dir, err)
        raise RunFailed(" ".join(str(err).split())) from None


def reason_of(details: str) -> str:
    """A failed run's reason from its status details (Flower's prefix dropped)."""
    return details.removeprefix(DETAILS_PREFIX).strip()
