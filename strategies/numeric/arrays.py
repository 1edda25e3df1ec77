"""Flower ``Array`` <-> numpy without a ``np.save`` / ``np.load`` per array.

A Flower ``Array`` holds the bytes ``np.save`` writes: an .npy header, then the raw values.
Writing and parsing that header costs more than copying the values of a small array, and a
round at 1,000 clients encodes and decodes several thousand arrays. These helpers build the
header once per (dtype, shape) and copy the values directly: the bytes are identical to
Flower's own, and any payload that is not exactly a C-ordered .npy of its declared dtype and
shape is left to Flower's ``Array.numpy()``.

The bytes are held in a :class:`Payload` rather than a ``bytes`` object. Pickled with protocol 5
(as Ray does with every message of a simulation) a ``bytes`` object is copied into the pickle
stream and copied out again; a numpy buffer travels beside the stream, so a node's reply of
hundreds of client updates reaches the server through Ray's object store without either copy.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from functools import cache

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.common.constant import SType


@cache
def npy_header(dtype_str: str, shape: tuple[int, ...]) -> bytes:
    """The .npy header ``np.save`` writes for a C-ordered array of this dtype and shape."""
    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype_str)), "fortran_order": False}
    np.lib.format.write_array_header_1_0(buffer, {**header, "shape": shape})
    return buffer.getvalue()


def npy_parts(values: np.ndarray) -> tuple[bytes, np.ndarray]:
    """The .npy bytes of ``values`` in two parts: the header ``np.save`` writes, and the values
    in C order (copied only when they are not)."""
    if not values.flags.c_contiguous:
        values = np.ascontiguousarray(values)
    return npy_header(values.dtype.str, tuple(values.shape)), values


class Payload(np.ndarray):
    """An Array's bytes in a flat uint8 array: compared like ``bytes``, pickled like a numpy
    array (out of band under protocol 5, so Ray moves it without copying it into the stream).

    ``len``, ``bytes()``, ``memoryview`` and file writes see exactly the bytes ``np.save`` wrote.
    """

    def __reduce_ex__(self, protocol: int) -> tuple:
        return _as_payload, (self.view(np.ndarray),)  # a plain ndarray pickles out of band

    def __eq__(self, other: object) -> bool:
        try:
            return memoryview(self) == memoryview(other)
        except TypeError:
            return NotImplemented

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None  # mutable, like bytearray


def _as_payload(values: np.ndarray) -> Payload:
    return values.view(Payload)


def to_array(values: np.ndarray | torch.Tensor) -> Array:
    """``Array(values)`` with the header from the cache (byte-identical for C-ordered input),
    its bytes in a :class:`Payload`."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    if values.dtype.hasobject:
        return Array(values)  # Flower refuses object arrays with its own message
    header, values = npy_parts(values)
    payload = np.empty(len(header) + values.nbytes, dtype=np.uint8).view(Payload)
    payload[: len(header)] = np.frombuffer(header, dtype=np.uint8)
    payload[len(header) :] = values.reshape(-1).view(np.uint8)
    array = Array(dtype=str(values.dtype), shape=tuple(values.shape), stype=SType.NUMPY, data=b"")
    array.data = payload  # Flower's constructor insists on bytes; its own inflate assigns too
    return array


def to_array_record(values: Mapping[str, np.ndarray | torch.Tensor]) -> ArrayRecord:
    """An ArrayRecord of ``values`` (e.g. a model's ``state_dict()``), in the given order.
    Filled key by key: ``ArrayRecord({...})`` would rebuild each Array with ``bytes``."""
    record = ArrayRecord()
    for name, value in values.items():
        record[name] = to_array(value)
    return record


def with_bytes(record: ArrayRecord) -> ArrayRecord:
    """``record`` with every :class:`Payload` copied out as ``bytes``, for Flower's
    ``context.state``: a deployed ClientApp sends its context back to the SuperNode as
    protobuf, which takes ``bytes`` only, and Flower drops the whole push (an exception in its
    exit handler, never logged) when an Array holds anything else."""
    if not any(isinstance(array.data, Payload) for array in record.values()):
        return record
    copied = ArrayRecord()
    for name, array in record.items():
        if isinstance(array.data, Payload):
            array = Array(
                dtype=array.dtype,
                shape=tuple(array.shape),
                stype=array.stype,
                data=array.data.tobytes(),
            )
        copied[name] = array
    return copied


def npy_values(
    data: bytes | np.ndarray, dtype_name: str, shape: tuple[int, ...], offset: int, size: int
) -> np.ndarray | None:
    """The values of ``data[offset : offset + size]`` read in place (read-only) when those bytes
    are a plain C-ordered .npy of ``dtype_name`` and ``shape``; None when they are not."""
    try:
        dtype = np.dtype(dtype_name)
    except TypeError:
        return None
    if dtype.hasobject:
        return None
    header = npy_header(dtype.str, shape)
    count = math.prod(shape)
    if size != len(header) + dtype.itemsize * count:
        return None
    if memoryview(data)[offset : offset + len(header)] != header:
        return None
    values = np.frombuffer(data, dtype=dtype, count=count, offset=offset + len(header))
    return values.reshape(shape)


def to_numpy(array: Array) -> np.ndarray:
    """``array.numpy()``, read in place (read-only) when the payload is a plain .npy of the
    declared dtype and shape; anything else goes through Flower's parser."""
    if array.stype == SType.NUMPY:
        shape = tuple(int(n) for n in array.shape)
        values = npy_values(array.data, array.dtype, shape, 0, len(array.data))
        if values is not None:
            return values
    return array.numpy()


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """Σ a·b over all elements, accumulated in the arrays' own precision by numpy itself.

    Not BLAS: OpenBLAS splits a float64 dot product over its threads, so its low bits depend
    on the thread count (1 vs 2 threads differ), and a Ray actor, a test process and a
    SuperNode each run with their own. Numbers that reach results must not depend on that.
    """
    return float(np.einsum("i,i->", a.ravel(), b.ravel()))


def l2_norm(values: np.ndarray) -> float:
    """‖values‖ accumulated in the values' own precision (see :func:`dot`)."""
    return math.sqrt(dot(values, values))


def to_numpy_dict(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Every array of ``record`` as numpy (see :func:`to_numpy`)."""
    return {name: to_numpy(array) for name, array in record.items()}


def to_tensors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """``record.to_torch_state_dict()`` through :func:`to_numpy` (tensors own their memory)."""
    return {name: torch.from_numpy(to_numpy(array).copy()) for name, array in record.items()}
