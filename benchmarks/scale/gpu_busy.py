"""How busy the GPU was during a run's timed rounds: ``nvidia-smi``'s ``utilization.gpu``.

``utilization.gpu`` is the share of the driver's last sample period (1/6 s to 1 s by product)
in which at least one kernel ran on the device. A thread reads it every ``INTERVAL_S``, with the
reading's time; the busy share of a stretch of the run is the mean of the readings inside it.
Read with ``nvidia-smi`` (a process per reading, a few ms) rather than NVML in-process, so the
benchmark that watches a fedsparse run from outside and the floor that runs in-process measure
the same way, and neither touches the CUDA context of what it measures.
"""

from __future__ import annotations

import math
import subprocess
import threading
import time
from collections.abc import Callable

INTERVAL_S = 0.2
SOURCE = f"nvidia-smi utilization.gpu every {INTERVAL_S} s"
Reader = Callable[[], float | None]


def nvidia_smi(field: str) -> list[float]:
    """``nvidia-smi``'s ``field`` of every GPU (empty without a GPU or nvidia-smi)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return [float(line) for line in out.split()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return []


def nvidia_smi_utilization() -> float | None:
    """The GPUs' ``utilization.gpu`` in % (the mean over the GPUs), or None without a GPU."""
    values = nvidia_smi("utilization.gpu")
    return sum(values) / len(values) if values else None


def busy_share(samples: list[tuple[float, float]], start: float, end: float) -> float:
    """Mean of the (time, %) ``samples`` taken in [start, end], as a share in [0, 1]; NaN
    when none was."""
    inside = [percent for at, percent in samples if start <= at <= end]
    return sum(inside) / len(inside) / 100 if inside else math.nan


class BusySampler:
    """Reads ``read`` every ``interval`` seconds in a thread, from ``start()`` to ``stop()``;
    ``samples`` holds (``time.perf_counter()``, %) of every reading that gave a value."""

    def __init__(self, read: Reader = nvidia_smi_utilization, interval: float = INTERVAL_S):
        self.read, self.interval = read, interval
        self.samples: list[tuple[float, float]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            value = self.read()
            if value is None:
                return  # no GPU: nothing to sample
            self.samples.append((time.perf_counter(), value))
            self._done.wait(self.interval)

    def start(self) -> BusySampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def share(self, start: float, end: float) -> float:
        """The busy share between ``start`` and ``end`` (``time.perf_counter()`` times)."""
        return busy_share(list(self.samples), start, end)
