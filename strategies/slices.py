"""Element-wise server work split into slices of a flat array, run on a few threads.

Aggregating a round at 1,000 clients is a loop over clients for every parameter; each element's
arithmetic (and the order of clients it sums over) does not depend on its neighbours, so cutting
the parameters into slices and running them on threads gives the same bits on more cores.
NumPy releases the GIL inside its loops, so the threads do run in parallel.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache

MIN_SLICE = 1 << 16  # below this many elements a thread costs more than it saves
MAX_THREADS = 8


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=min(os.cpu_count() or 1, MAX_THREADS))


def for_each_slice(size: int, work: Callable[[slice], None]) -> None:
    """Call ``work(s)`` for contiguous slices ``s`` covering ``range(size)`` exactly once each,
    in parallel when ``size`` is large enough; returns when all are done (errors re-raised)."""
    threads = min(os.cpu_count() or 1, MAX_THREADS, max(size // MIN_SLICE, 1))
    if threads == 1:
        work(slice(0, size))
        return
    bounds = [size * i // threads for i in range(threads + 1)]
    futures = [_pool().submit(work, slice(a, b)) for a, b in itertools.pairwise(bounds)]
    for future in futures:
        future.result()
