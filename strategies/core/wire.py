"""Cohort wire format and byte accounting.

A node may host several clients, so one reply carries one update per client. Each client's
records live under the key ``"<client_id>/<name>"`` in the reply's RecordDict; records without
a slash are shared by the whole message (e.g. the global ``arrays`` and the ``config``).
Bytes are counted per client payload, as if every client had its own link.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import ClassVar, Protocol

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from strategies.numeric.arrays import to_array_record, to_numpy_dict, to_tensors, with_bytes

Record = ArrayRecord | ConfigRecord | MetricRecord
SEPARATOR = "/"
CLIENT_IDS_KEY = "client_ids"
STATE_DIR_KEY = "state_dir"
STATE_ROUND_KEYS = ("state_rounds", "state_floors")  # which version of its state each client uses
PLUMBING_KEYS = (CLIENT_IDS_KEY, STATE_DIR_KEY, *STATE_ROUND_KEYS)  # the engine's, not counted


def client_key(client_id: int, name: str) -> str:
    """Key of a client's record ``name`` inside a cohort message."""
    return f"{client_id}{SEPARATOR}{name}"


def pack_clients(per_client: Mapping[int, Mapping[str, Record]]) -> RecordDict:
    """Put each client's records under its own key prefix."""
    content = RecordDict()
    for client_id, records in per_client.items():
        for name, record in records.items():
            content[client_key(client_id, name)] = record
    return content


def unpack_clients(content: RecordDict) -> dict[int, dict[str, Record]]:
    """Inverse of :func:`pack_clients`; keys without a client prefix are ignored."""
    per_client: dict[int, dict[str, Record]] = {}
    for key, record in content.items():
        prefix, sep, name = key.partition(SEPARATOR)
        if not sep:
            continue
        if not prefix.isdigit():
            raise ValueError(f"malformed client record key {key!r}: expected '<client_id>/<name>'")
        per_client.setdefault(int(prefix), {})[name] = record
    return per_client


class Measured(Protocol):
    """Anything that counts its serialised bytes as a record does (a record, TensorArrays)."""

    def count_bytes(self) -> int: ...


def record_bytes(records: Iterable[Measured]) -> int:
    """Bytes of the serialised payload of ``records`` (array data, keys and scalar values)."""
    return sum(record.count_bytes() for record in records)


def shared_payload_bytes(content: RecordDict) -> int:
    """Bytes every client of a cohort message receives: shared records minus the engine's
    plumbing (the routing list and the client-state folder, which a client with its own link
    would not need)."""
    total = 0
    for key, record in content.items():
        if SEPARATOR in key:
            continue
        total += record.count_bytes()
        if isinstance(record, ConfigRecord):
            plumbing = {k: record[k] for k in PLUMBING_KEYS if k in record}
            if plumbing:
                total -= ConfigRecord(plumbing).count_bytes()
    return total


class _LastDecoded:
    """The most recently decoded downlink record and its tensors (one slot is enough: a cohort's
    clients are trained one after another from the same message)."""

    record: ClassVar[ArrayRecord | None] = None
    tensors: ClassVar[dict[str, torch.Tensor]] = {}


def decoded_tensors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """``record.to_torch_state_dict()``, decoded once however many clients of a cohort read it.

    Callers must not modify the returned tensors in place (``load_state_dict`` copies them).
    """
    if _LastDecoded.record is not record:
        _LastDecoded.record, _LastDecoded.tensors = record, to_tensors(record)
    return _LastDecoded.tensors


class ClientState:
    """One client's slice of a node's ``context.state`` (records persist across rounds)."""

    def __init__(self, node_state: RecordDict, client_id: int) -> None:
        self._node_state = node_state
        self._client_id = client_id

    def get(self, name: str) -> Record | None:
        return self._node_state.get(client_key(self._client_id, name))

    def set(self, name: str, record: Record) -> None:
        if isinstance(record, ArrayRecord):  # Flower serialises the context: bytes only
            record = with_bytes(record)
        self._node_state[client_key(self._client_id, name)] = record

    def delete(self, name: str) -> None:
        """Forget the record ``name`` (nothing happens when there is none)."""
        self._node_state.pop(client_key(self._client_id, name), None)

    def get_arrays(self, name: str) -> dict[str, np.ndarray] | None:
        """The ArrayRecord ``name`` as read-only numpy arrays, or None when there is none."""
        record = self.get(name)
        if record is None:
            return None
        if not isinstance(record, ArrayRecord):
            raise TypeError(f"client state {name!r} is a {type(record).__name__}, not arrays")
        return to_numpy_dict(record)

    def set_arrays(self, name: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Store ``arrays`` as the ArrayRecord ``name`` (read back by :meth:`get_arrays`)."""
        self.set(name, to_array_record(arrays))

    def release_superseded(self) -> None:
        """Free what this message's writes replaced once it has succeeded (nothing: the context
        holds the records themselves)."""
