"""A client's trained arrays kept as tensors on its device until they leave the node.

The default client reply is the model's ``state_dict()``. Turning it into an ``ArrayRecord``
copies every tensor to the host and into .npy bytes; a node that reduces its cohort then reads
those bytes back, checks them and adds them. :class:`TensorArrays` lets that node skip the round
trip: it measures exactly the bytes the record would have (:meth:`TensorArrays.count_bytes`),
is checked like one (:func:`checked_tensors`, same reasons and details as
:func:`strategies.core.validation.arrays_like`), and becomes a record only where a reply
travels per client (:func:`wire_records`). On the CPU the checked values are zero-copy numpy
views, so every number is the one the record's path gives; on a GPU they stay tensors, summed
on the device (:class:`strategies.numeric.weighted_sum.TensorWeightedSum`).

The tensors alias the live model: a reply must be folded, or turned into a record, before the
node trains its next client (the runtime does both at once).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

import numpy as np
import torch
from flwr.app import ArrayRecord

from strategies.core.validation import ReplyError, all_finite, check_finite, check_names
from strategies.core.wire import Record
from strategies.numeric.arrays import npy_header, to_array_record
from strategies.numeric.slices import map_arrays

HOST_DEVICES = frozenset({"cpu"})
"""Device types whose tensors are checked and summed as numpy views (no copy)."""


@cache
def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype a tensor of ``dtype`` becomes on the host."""
    return torch.empty((), dtype=dtype).numpy().dtype


class TensorArrays:
    """A reply's arrays as tensors: counted like, checked like and turned into an ArrayRecord."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.tensors = {name: tensor.detach() for name, tensor in tensors.items()}

    def count_bytes(self) -> int:
        """``self.to_record().count_bytes()``, without building the record."""
        total = 0
        for name, tensor in self.tensors.items():
            dtype = numpy_dtype(tensor.dtype)
            header = npy_header(dtype.str, tuple(tensor.shape))
            total += len(name) + len(header) + tensor.numel() * dtype.itemsize
        return total

    def to_record(self) -> ArrayRecord:
        """The ArrayRecord the reply travels as."""
        return to_array_record(self.tensors)


ReplyRecord = Record | TensorArrays


def wire_records(records: Mapping[str, ReplyRecord]) -> dict[str, Record]:
    """``records`` as they travel: every :class:`TensorArrays` turned into its ArrayRecord."""
    return {
        name: record.to_record() if isinstance(record, TensorArrays) else record
        for name, record in records.items()
    }


def checked_tensors(
    received: TensorArrays, template: ArrayRecord
) -> dict[str, np.ndarray] | dict[str, torch.Tensor]:
    """The received arrays after the checks of ``arrays_like`` (the template's names, shapes and
    dtypes; finite values): numpy views on a host device, else the tensors themselves."""
    tensors = received.tensors
    check_names(list(tensors), template)
    for name, expected in template.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != tuple(expected.shape):
            raise ReplyError("shape", f"{name}: shape {tuple(tensor.shape)} != {expected.shape}")
        dtype = str(numpy_dtype(tensor.dtype))
        if dtype != expected.dtype:
            raise ReplyError("dtype", f"{name}: dtype {dtype} != {expected.dtype}")
    on_host = all(t.device.type in HOST_DEVICES for t in tensors.values())
    if on_host:
        values = {name: tensor.numpy() for name, tensor in tensors.items()}
        floats = {n: v.size for n, v in values.items() if v.dtype.kind == "f"}
        finite = map_arrays(lambda name: all_finite(values[name]), floats)
    else:
        finite = {
            n: bool(torch.isfinite(t).all()) for n, t in tensors.items() if t.is_floating_point()
        }
    check_finite(finite)
    return values if on_host else dict(tensors)
