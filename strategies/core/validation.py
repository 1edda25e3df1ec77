"""Checks applied to every client reply before it can touch the global model."""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
from flwr.app import ArrayRecord, MetricRecord

from strategies.core.wire import Record
from strategies.numeric.arrays import to_numpy
from strategies.numeric.slices import map_arrays

R = TypeVar("R", bound=Record)


class ReplyError(ValueError):
    """A client reply that must be dropped; ``reason`` is the counter it is reported under."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def require_record(records: dict[str, Record], name: str, kind: type[R]) -> R:
    """The record ``name`` of type ``kind``, or a ReplyError."""
    record = records.get(name)
    if not isinstance(record, kind):
        found = type(record).__name__ if record is not None else "nothing"
        raise ReplyError("missing-record", f"expected {kind.__name__} {name!r}, got {found}")
    return record


def check_num_examples(metrics: MetricRecord, minimum: int = 1) -> int:
    """The reply's ``num-examples`` as an int >= ``minimum``."""
    value = metrics.get("num-examples")
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value != int(value)
    ):
        raise ReplyError("num-examples", f"num-examples must be an integer, got {value!r}")
    if value < minimum:
        raise ReplyError("num-examples", f"num-examples must be >= {minimum}, got {value}")
    return int(value)


def check_finite_metric(metrics: MetricRecord, key: str) -> float:
    """A finite float metric, or a ReplyError."""
    value = metrics.get(key)
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise ReplyError("metrics", f"{key} must be a finite number, got {value!r}")
    return float(value)


def all_finite(values: np.ndarray) -> bool:
    """``np.isfinite(values).all()``, mostly without its boolean copy: a sum is finite only if
    every term is (NaN and ±Inf propagate), and a sum that overflowed is checked entry by entry."""
    with np.errstate(over="ignore", invalid="ignore"):
        if math.isfinite(float(np.sum(values))):
            return True
    return bool(np.isfinite(values).all())


def check_names(names: list[str], template: ArrayRecord) -> None:
    """A ReplyError unless ``names`` are the template's, in its order."""
    if names != list(template.keys()):
        missing = sorted(set(template.keys()) - set(names))
        extra = sorted(set(names) - set(template.keys()))
        raise ReplyError("names", f"array names differ (missing {missing}, unexpected {extra})")


def check_finite(finite: dict[str, bool]) -> None:
    """A ReplyError naming the first array whose ``finite`` flag is False."""
    for name, ok in finite.items():
        if not ok:
            raise ReplyError("non-finite", f"{name} holds NaN or Inf")


def arrays_like(received: ArrayRecord, template: ArrayRecord) -> dict[str, np.ndarray]:
    """Decode ``received`` after checking it has exactly the template's names, shapes and dtypes
    and only finite values."""
    check_names(list(received.keys()), template)
    decoded: dict[str, np.ndarray] = {}
    for name, expected in template.items():
        array = received[name]
        if tuple(array.shape) != tuple(expected.shape):
            raise ReplyError("shape", f"{name}: shape {array.shape} != {expected.shape}")
        if array.dtype != expected.dtype:
            raise ReplyError("dtype", f"{name}: dtype {array.dtype} != {expected.dtype}")
        values = to_numpy(array)
        if values.shape != tuple(expected.shape):
            raise ReplyError("shape", f"{name}: payload shape {values.shape} != {expected.shape}")
        decoded[name] = values
    floats = {name: values.size for name, values in decoded.items() if values.dtype.kind == "f"}
    check_finite(map_arrays(lambda name: all_finite(decoded[name]), floats))
    return decoded
