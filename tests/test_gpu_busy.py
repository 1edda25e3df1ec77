"""The GPU busy-share sampler of the scale benchmark (benchmarks/scale/gpu_busy.py)."""

from __future__ import annotations

import math
import time

from benchmarks.scale.gpu_busy import BusySampler, busy_share


def test_busy_share_is_the_mean_of_the_readings_inside_the_window() -> None:
    samples = [(0.0, 100.0), (1.0, 20.0), (2.0, 40.0), (3.0, 90.0)]
    assert busy_share(samples, 1.0, 2.0) == 0.3
    assert busy_share(samples, 0.0, 3.0) == 0.625
    assert math.isnan(busy_share(samples, 4.0, 5.0))


def test_sampler_reads_until_stopped() -> None:
    readings = iter([10.0, 30.0] * 1000)
    sampler = BusySampler(read=lambda: next(readings), interval=0.001).start()
    time.sleep(0.05)
    sampler.stop()
    count = len(sampler.samples)
    assert count >= 2
    assert {percent for _, percent in sampler.samples} == {10.0, 30.0}
    times = [at for at, _ in sampler.samples]
    assert times == sorted(times)
    assert 0.1 <= sampler.share(times[0], times[-1]) <= 0.3
    time.sleep(0.01)
    assert len(sampler.samples) == count  # stopped: no more readings


def test_sampler_without_a_gpu_stops_at_once() -> None:
    sampler = BusySampler(read=lambda: None, interval=0.001).start()
    sampler._thread.join(timeout=1)
    assert not sampler._thread.is_alive()
    sampler.stop()
    assert sampler.samples == []
    assert math.isnan(sampler.share(0.0, math.inf))
