"""Range-decoding FedPM masks on every core: a process pool fed through shared memory.

``constriction`` holds the GIL while it codes (threads gave no speed-up here, processes did), and
a mask of N entries costs ~45 ns per entry to decode, ~20 ms for a 421k-parameter CNN: at a
thousand clients that is ~20 s of one core per round. The pool decodes a node's replies while the
server checks the next ones. The round's prior (one uint16 per mask entry) is written once per
round to a shared-memory block every worker maps; a task carries only the client's stream and
header. Decoding is exact, so pooled and inline decoding give the same masks.
"""

from __future__ import annotations

import atexit
import math
import multiprocessing
from collections.abc import Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import resource_tracker, shared_memory

import numpy as np
from flwr.app import ConfigRecord

from strategies.core.validation import ReplyError
from strategies.fedpm.mask_codec import decode_masks, pack_mask, unpack_mask

Layout = tuple[tuple[str, tuple[int, ...]], ...]  # mask names and shapes, in score order

_attached: dict[str, tuple[shared_memory.SharedMemory, dict[str, np.ndarray]]] = {}


def _priors_in(block: str, layout: Layout) -> dict[str, np.ndarray]:
    """The priors in shared block ``block`` (a worker keeps only the latest block mapped)."""
    if block not in _attached:
        for memory, _ in _attached.values():
            memory.close()
        _attached.clear()
        memory = shared_memory.SharedMemory(name=block)
        # Python < 3.13 tracks an attached block as if this process owned it, and would unlink
        # it when the worker exits: the server owns and unlinks it.
        resource_tracker.unregister(memory._name, "shared_memory")
        flat = np.ndarray((sum(math.prod(s) for _, s in layout),), np.uint16, memory.buf)
        priors, start = {}, 0
        for name, shape in layout:
            size = math.prod(shape)
            priors[name] = flat[start : start + size].reshape(shape)
            start += size
        _attached[block] = (memory, priors)
    return _attached[block][1]


def _decode_task(
    block: str, layout: Layout, stream: np.ndarray, header: dict
) -> dict[str, np.ndarray] | tuple[str, str]:
    """One reply's masks as packed bits per layer, or the ReplyError's (reason, detail)."""
    try:
        masks = decode_masks(stream, ConfigRecord(header), dict(layout), _priors_in(block, layout))
    except ReplyError as err:
        return err.reason, str(err)
    return {name: pack_mask(mask) for name, mask in masks.items()}


class DecodePool:
    """Worker processes that range-decode replies against the round's prior."""

    def __init__(self, workers: int, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.layout: Layout = tuple((name, tuple(shape)) for name, shape in shapes.items())
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        self._block: shared_memory.SharedMemory | None = None
        self._pending: dict[int, Future] = {}
        atexit.register(self.close)

    def set_prior(self, priors: Mapping[str, np.ndarray]) -> None:
        """Publish this round's prior; replies submitted later decode against it."""
        flat = np.concatenate([np.ravel(priors[name]) for name, _ in self.layout])
        block = shared_memory.SharedMemory(create=True, size=max(flat.nbytes, 1))
        np.ndarray(flat.shape, np.uint16, block.buf)[:] = flat
        self._release_block()
        self._block = block
        self._pending = {}

    def submit(self, client_id: int, stream: np.ndarray, header: ConfigRecord) -> None:
        """Start decoding one client's reply."""
        if self._block is None:
            raise RuntimeError("DecodePool.set_prior must come before submit")
        if self._executor is None:  # spawn: the server process runs threads (Ray, Flower)
            context = multiprocessing.get_context("spawn")
            self._executor = ProcessPoolExecutor(self.workers, mp_context=context)
        self._pending[client_id] = self._executor.submit(
            _decode_task, self._block.name, self.layout, stream, dict(header)
        )

    def has(self, client_id: int) -> bool:
        return client_id in self._pending

    def result(self, client_id: int) -> dict[str, np.ndarray]:
        """The decoded uint8 masks of a submitted reply; a bad one raises its ReplyError."""
        outcome = self._pending.pop(client_id).result()
        if isinstance(outcome, tuple):
            reason, detail = outcome
            raise ReplyError(reason, detail.removeprefix(f"{reason}: "))
        return {name: unpack_mask(outcome[name], shape, name) for name, shape in self.layout}

    def _release_block(self) -> None:
        if self._block is not None:
            self._block.close()
            self._block.unlink()
            self._block = None

    def close(self) -> None:
        """Stop the workers and free the shared prior (also at interpreter exit)."""
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
            self._executor = None
        self._release_block()
        self._pending = {}
