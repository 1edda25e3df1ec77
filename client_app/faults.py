"""Fault injection for tests and drills: clients that raise, stall, or send corrupt replies.

Active only when a ``faults.*`` rate is set. Whether a client faults in a round is drawn from
(seed, round, client), so a run's faults are reproducible and a test can predict them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

from strategies.core.job import ClientJob
from strategies.core.wire import Record

STREAM_KINDS = ("truncate", "extend", "garble", "flag")  # byte streams and their header
CORRUPT_KINDS = ("non-finite", "shape", "dtype", "oversize", "weight", *STREAM_KINDS)
FAULT_STREAM = 0xFA17
INFLATION = 1000
OVERSIZE_FACTOR = 4


class InjectedFault(RuntimeError):
    """A client failure requested by ``faults.error_rate``."""


@dataclass(frozen=True)
class FaultPlan:
    """What goes wrong for one client in one round."""

    error: bool = False
    corrupt: str | None = None
    slow_s: float = 0.0


def plan_faults(job: ClientJob, client_id: int) -> FaultPlan:
    """The faults of ``client_id`` in ``job.server_round`` (none unless a rate is set).

    With every rate at zero nothing is drawn: seeding a generator per client costs ~10 µs,
    work every client would pay for nothing.
    """
    if not (job.fault_error_rate or job.fault_corrupt_rate or job.fault_slow_rate):
        return FaultPlan()
    draws = np.random.default_rng([job.seed, job.server_round, client_id, FAULT_STREAM]).random(3)
    return FaultPlan(
        error=bool(draws[0] < job.fault_error_rate),
        corrupt=job.fault_corrupt_kind if draws[1] < job.fault_corrupt_rate else None,
        slow_s=job.fault_slow_s if draws[2] < job.fault_slow_rate else 0.0,
    )


def corrupt_stream(records: dict[str, Record], kind: str) -> None:
    """Damage a reply's byte stream (its first integer array, e.g. FedPM's coded masks) or the
    header beside it (its first ConfigRecord's bytes field, e.g. FedPM's per-layer flags):
    ``truncate`` drops the last byte, ``extend`` appends four zero bytes, ``garble`` flips one
    bit in the middle, ``flag`` sets the header's first byte to 0xFF."""
    if kind == "flag":
        name, header = next((k, r) for k, r in records.items() if isinstance(r, ConfigRecord))
        key = next(k for k, v in header.items() if isinstance(v, bytes))
        records[name] = ConfigRecord({**header, key: b"\xff" + header[key][1:]})
        return
    name, arrays = next((k, r) for k, r in records.items() if isinstance(r, ArrayRecord))
    values = {key: array.numpy() for key, array in arrays.items()}
    target = next(k for k, v in values.items() if v.dtype.kind in "iu")
    stream = values[target].ravel()
    if kind == "truncate":
        stream = stream[:-1]
    elif kind == "extend":
        stream = np.concatenate([stream, np.zeros(4, stream.dtype)])
    else:
        stream = stream.copy()
        stream[stream.size // 2] ^= 1 << 3
    values[target] = stream
    records[name] = ArrayRecord({key: Array(np.ascontiguousarray(v)) for key, v in values.items()})


def corrupt_reply(records: dict[str, Record], kind: str) -> None:
    """Damage a finished reply in place the way ``kind`` names."""
    if kind in STREAM_KINDS:
        corrupt_stream(records, kind)
        return
    if kind == "weight":
        metrics = records["metrics"]
        records["metrics"] = MetricRecord(
            {**metrics, "num-examples": int(metrics["num-examples"]) * INFLATION}
        )
        return
    name, arrays = next((k, r) for k, r in records.items() if isinstance(r, ArrayRecord))
    values = {key: array.numpy() for key, array in arrays.items()}
    floats = [k for k, v in values.items() if v.dtype.kind == "f"]
    target = floats[0] if floats else next(iter(values))  # e.g. FedPM's packed uint8 masks
    if kind == "non-finite" and not floats:
        metrics = records["metrics"]
        records["metrics"] = MetricRecord({**metrics, "train-loss": float("nan")})
        return
    if kind == "non-finite":
        values[target] = np.full_like(values[target], np.nan)
    elif kind == "shape":
        values[target] = values[target].reshape(-1)[:-1]
    elif kind == "dtype":
        values[target] = values[target].astype(np.float64 if floats else np.float32)
    elif kind == "oversize":
        total = sum(v.size for v in values.values())
        values["padding"] = np.zeros(OVERSIZE_FACTOR * total, dtype=np.float32)
    else:
        raise ValueError(
            f"unknown corrupt kind {kind!r}; choose one of: {', '.join(CORRUPT_KINDS)}"
        )
    records[name] = ArrayRecord({key: Array(np.ascontiguousarray(v)) for key, v in values.items()})
