"""Server work on large arrays run on a few threads: slices of one flat array, or whole arrays.

Aggregating a round at 1,000 clients is a loop over clients for every parameter; each element's
arithmetic (and the order of clients it sums over) does not depend on its neighbours, so cutting
the parameters into slices and running them on threads gives the same bits on more cores.
Checking and measuring one client's reply is independent work per array (:func:`map_arrays`).
NumPy releases the GIL inside its loops, so the threads do run in parallel.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import TypeVar

R = TypeVar("R")

MIN_SLICE = 1 << 16  # below this many elements a thread costs more than it saves
# map_arrays: below this many elements in all, the calling thread does the work. Checking one
# client's reply (finiteness, ‖Δ‖) on the pool cost more than alone on the 2-core box: cnn
# (421k) 0.47 vs 0.27 ms of CPU and 0.46 vs 0.27 ms of wall per reply, conv4 (2.4M) 1.63 vs
# 1.34 ms of CPU for the same wall; ResNet-18 (11M) stays on the pool, where more cores help.
MIN_MAPPED = 1 << 22
MAX_THREADS = 8
THREADS = min(os.cpu_count() or 1, MAX_THREADS)
"""Threads the server's array work may use: the machine's cores, at most ``MAX_THREADS``."""


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=THREADS)


def for_each_slice(size: int, work: Callable[[slice], None]) -> None:
    """Call ``work(s)`` for contiguous slices ``s`` covering ``range(size)`` exactly once each,
    in parallel when ``size`` is large enough; returns when all are done (errors re-raised)."""
    threads = min(THREADS, max(size // MIN_SLICE, 1))
    if threads == 1:
        work(slice(0, size))
        return
    bounds = [size * i // threads for i in range(threads + 1)]
    futures = [_pool().submit(work, slice(a, b)) for a, b in itertools.pairwise(bounds)]
    for future in futures:
        future.result()


def map_arrays(work: Callable[[str], R], sizes: Mapping[str, int]) -> dict[str, R]:
    """``{name: work(name)}`` for every name of ``sizes`` (element counts), in that order; on
    the pool's threads, largest arrays first, when there are enough elements to pay for them.
    The first error in ``sizes`` order is re-raised once all are done."""
    threads = THREADS
    if threads == 1 or sum(sizes.values()) < MIN_MAPPED:
        return {name: work(name) for name in sizes}
    largest_first = sorted(sizes, key=sizes.__getitem__, reverse=True)
    futures = {name: _pool().submit(work, name) for name in largest_first}
    for future in futures.values():
        future.exception()  # wait for every task before raising any error
    return {name: futures[name].result() for name in sizes}
