"""Where a round's seconds go: the server's phases, timed where they run, and the clients' own
seconds, summed over the round's valid replies.

Every metrics.jsonl row carries them as one object, ``phase_s`` (seconds, all >= 0):

- the round loop, one after another (together at most ``round_s``): ``send`` (the strategy
  builds the train messages), ``wait`` (waiting for train replies: messaging, and the clients'
  training itself on an in-process grid), ``aggregate`` (checking, decoding, folding and
  aggregating the replies), ``monitor`` (the layer monitor), ``fed_eval`` (federated
  evaluation, there and back), ``strategy_metrics`` (the strategy's round metrics),
  ``snapshot`` (copying the state the checkpoint will hold) and ``record_wait`` (waiting for the
  background recorder: the previous round's evaluation and writing, and with
  ``central_eval_overlap=false`` this round's central evaluation);
- the background recorder: ``central_eval`` (the central evaluation itself; 0 when the round
  is not evaluated) and ``write`` (writing the *previous* round's metrics line, tracking,
  checkpoint and plots: a row is written before its own writing can be timed);
- the clients, summed over the round's valid replies (they ran in parallel, so a sum can exceed
  ``round_s``): ``clients_train_sum`` (local training), ``clients_encode_sum`` (the algorithm's
  reply encoding) and ``clients_reduce_sum`` (a reducing node checking, decoding and adding a
  client's reply); a key a client does not report counts 0.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from strategies.core.engine import CLIENT_SECONDS

PHASES = "phase_s"
# per-client reply metric (train-s, ...) -> its sum over the round's clients in ``phase_s``
CLIENT_PHASES = {metric: f"clients_{metric.removesuffix('-s')}_sum" for metric in CLIENT_SECONDS}
LOOP_PHASES = (
    "send",
    "wait",
    "aggregate",
    "monitor",
    "fed_eval",
    "strategy_metrics",
    "snapshot",
    "record_wait",
)
BACKGROUND_PHASES = ("central_eval", "write")
ALL_PHASES = (*LOOP_PHASES, *BACKGROUND_PHASES, *CLIENT_PHASES.values())


class PhaseClock:
    """Seconds per phase of one round; every phase of :data:`ALL_PHASES` starts at 0."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(ALL_PHASES, 0.0)

    @contextmanager
    def measure(self, phase: str) -> Iterator[None]:
        """Add the seconds the ``with`` block takes to ``phase``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - start)

    def add(self, phase: str, seconds: float) -> None:
        if phase not in self.seconds:
            raise KeyError(f"unknown phase {phase!r}; phases: {', '.join(ALL_PHASES)}")
        self.seconds[phase] += max(seconds, 0.0)

    def add_clients(self, client_seconds: Mapping[str, float]) -> None:
        """The clients' summed seconds, keyed by their reply metric (``train-s``, ...)."""
        for metric, phase in CLIENT_PHASES.items():
            self.add(phase, client_seconds.get(metric, 0.0))
