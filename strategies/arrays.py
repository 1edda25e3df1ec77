"""Flower ``Array`` <-> numpy without a ``np.save`` / ``np.load`` per array.

A Flower ``Array`` holds the bytes ``np.save`` writes: an .npy header, then the raw values.
Writing and parsing that header costs more than copying the values of a small array, and a
round at 1,000 clients encodes and decodes several thousand arrays. These helpers build the
header once per (dtype, shape) and copy the values directly: the bytes are identical to
Flower's own, and any payload that is not exactly a C-ordered .npy of its declared dtype and
shape is left to Flower's ``Array.numpy()``.
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


def to_array(values: np.ndarray | torch.Tensor) -> Array:
    """``Array(values)`` with the header from the cache (byte-identical for C-ordered input)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    if not values.flags.c_contiguous:
        values = np.ascontiguousarray(values)
    if values.dtype.hasobject:
        return Array(values)  # Flower refuses object arrays with its own message
    header = npy_header(values.dtype.str, tuple(values.shape))
    return Array(
        dtype=str(values.dtype),
        shape=tuple(values.shape),
        stype=SType.NUMPY,
        data=b"".join((header, values.data)),  # one copy of the values, not two
    )


def to_array_record(values: Mapping[str, np.ndarray | torch.Tensor]) -> ArrayRecord:
    """An ArrayRecord of ``values`` (e.g. a model's ``state_dict()``), in the given order."""
    return ArrayRecord({name: to_array(value) for name, value in values.items()})


def to_numpy(array: Array) -> np.ndarray:
    """``array.numpy()``, read in place (read-only) when the payload is a plain .npy of the
    declared dtype and shape; anything else goes through Flower's parser."""
    if array.stype == SType.NUMPY:
        try:
            dtype = np.dtype(array.dtype)
        except TypeError:
            return array.numpy()
        shape = tuple(int(n) for n in array.shape)
        if not dtype.hasobject:
            header = npy_header(dtype.str, shape)
            data = array.data
            if len(data) == len(header) + dtype.itemsize * math.prod(shape) and data.startswith(
                header
            ):
                return np.frombuffer(data, dtype=dtype, offset=len(header)).reshape(shape)
    return array.numpy()


def l2_norm(values: np.ndarray) -> float:
    """‖values‖ accumulated in the values' own precision (for monitoring, not aggregation)."""
    flat = values.ravel()
    return math.sqrt(float(np.dot(flat, flat)))


def to_numpy_dict(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Every array of ``record`` as numpy (see :func:`to_numpy`)."""
    return {name: to_numpy(array) for name, array in record.items()}


def to_tensors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """``record.to_torch_state_dict()`` through :func:`to_numpy` (tensors own their memory)."""
    return {name: torch.from_numpy(to_numpy(array).copy()) for name, array in record.items()}
