"""Per-client array state kept in files on the node, with only a reference in ``context.state``.

Flower ships a node's whole ``context.state`` to the ClientApp and back with every message. A
cohort of LBGM clients holds one or two models' worth of look-back gradients each, so at 1,000
clients several GB would cross the simulation engine every round. With a state directory, each
ArrayRecord a client stores is written to a file there and ``context.state`` keeps a small
ConfigRecord naming it; the arrays round-trip byte for byte, so results do not change.

Files are never overwritten. Flower discards the updated ``context.state`` of a message whose
ClientApp raised, so the references it holds must keep pointing at files that still exist: a new
write removes the client's older files for that record except the one the node's last committed
state refers to, and that one goes only once the whole message has succeeded
(:meth:`FileClientState.release_superseded`). Between messages a client has one file per record.
"""

from __future__ import annotations

import ast
import json
import os
import re
import uuid
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, unquote

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.constant import SType

from strategies.core.client_state import (
    ContextStore,
    KeptState,
    RecordStore,
    Versions,
    decode_versions,
    encode_versions,
    kept_state,
)
from strategies.core.job import ClientJob
from strategies.core.wire import ClientState, Record
from strategies.numeric.arrays import (
    npy_parts,
    npy_values,
    to_array_record,
    to_numpy,
    to_numpy_dict,
)

FILE_KEY = "state-file"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_Written = tuple[str, str, tuple[int, ...], str, tuple[bytes | np.ndarray, ...]]
"""An array as written: name, dtype, shape, stype, and the chunks of its bytes."""


class MissingStateFileError(RuntimeError):
    """A client's state refers to a file that is not there."""


class FileClientState(ClientState):
    """:class:`ClientState` whose ArrayRecords live in ``directory`` (other records stay inline)."""

    def __init__(
        self, node_state: RecordDict, client_id: int, directory: str | Path, run_id: int
    ) -> None:
        super().__init__(node_state, client_id)
        self.folder = Path(directory) / f"run-{run_id}" / f"client-{client_id}"
        self._committed: dict[str, str | None] = {}

    def get(self, name: str) -> Record | None:
        record = super().get(name)
        if isinstance(record, ConfigRecord) and FILE_KEY in record:
            return self._read(record)
        return record

    def set(self, name: str, record: Record) -> None:
        self._remember_committed(name)
        if not isinstance(record, ArrayRecord):
            super().set(name, record)
            return
        arrays = record.items()
        self._write(name, [(k, a.dtype, tuple(a.shape), a.stype, (a.data,)) for k, a in arrays])

    def set_arrays(self, name: str, arrays: Mapping[str, np.ndarray]) -> None:
        """As ``set(name, to_array_record(arrays))`` (the same file and reference), written
        straight from the arrays' memory."""
        self._remember_committed(name)
        entries = []
        for key, values in arrays.items():
            if values.dtype.hasobject:  # raw bytes of an object array are pointers
                raise ValueError(f"client state {name!r}: {key!r} is an object array")
            header, values = npy_parts(values)
            entries.append((key, str(values.dtype), values.shape, SType.NUMPY, (header, values)))
        self._write(name, entries)

    def get_arrays(self, name: str) -> dict[str, np.ndarray] | None:
        """The arrays of ``name``, read with one file read and viewed in place (read-only)."""
        reference = super().get(name)
        if not (isinstance(reference, ConfigRecord) and FILE_KEY in reference):
            return super().get_arrays(name)
        data = self._read_file(reference)
        arrays = {}
        for key, dtype, shape, stype, offset, size in _entries(reference):
            values = npy_values(data, dtype, shape, offset, size) if stype == SType.NUMPY else None
            if values is None:
                values = to_numpy(_array(data, dtype, shape, stype, offset, size))
            arrays[key] = values
        return arrays

    def _write(self, name: str, entries: list[_Written]) -> None:
        """Write ``entries`` to a new file of ``name`` and keep only a reference to it inline."""
        path = self.folder / f"{_UNSAFE.sub('_', name)}.{uuid.uuid4().hex}.arrays"
        with _create(path) as file:
            for *_, chunks in entries:
                for chunk in chunks:
                    file.write(chunk)
        reference: dict = {FILE_KEY: path.name, "count": len(entries)}
        if entries:  # Flower cannot count the bytes of an empty list
            reference |= {
                "names": [key for key, *_ in entries],
                "dtypes": [dtype for _, dtype, *_ in entries],
                "shapes": [repr(tuple(shape)) for _, _, shape, *_ in entries],
                "stypes": [stype for *_, stype, _ in entries],
                "sizes": [sum(memoryview(c).nbytes for c in chunks) for *_, chunks in entries],
            }
        super().set(name, ConfigRecord(reference))
        self._remove_uncommitted(name, keep=path.name)

    def delete(self, name: str) -> None:
        """Forget ``name``; a file the node's committed state refers to goes only with
        :meth:`release_superseded`, one written by this message at once."""
        self._remember_committed(name)
        super().delete(name)
        self._remove_uncommitted(name, keep=None)

    def _remember_committed(self, name: str) -> None:
        if name not in self._committed:
            self._committed[name] = _file_of(super().get(name))

    def _remove_uncommitted(self, name: str, keep: str | None) -> None:
        """Remove ``name``'s files but ``keep`` and the one the committed state refers to."""
        for old in self.folder.glob(f"{_UNSAFE.sub('_', name)}.*.arrays"):
            if old.name not in (keep, self._committed[name]):
                old.unlink(missing_ok=True)

    def release_superseded(self) -> None:
        """Remove the files this message's writes replaced. Call once the whole message has
        succeeded: the node's state then refers to the new files only."""
        for committed in self._committed.values():
            if committed is not None:
                (self.folder / committed).unlink(missing_ok=True)
        self._committed.clear()

    def _read(self, reference: ConfigRecord) -> ArrayRecord:
        data = self._read_file(reference)
        return ArrayRecord({entry[0]: _array(data, *entry[1:]) for entry in _entries(reference)})

    def _read_file(self, reference: ConfigRecord) -> bytes:
        path = self.folder / str(reference[FILE_KEY])
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise MissingStateFileError(
                f"client state file {path} is missing: engine.client_state_dir must be a folder "
                "every Ray worker sees (a shared file system on a Ray cluster), or null to keep "
                "client state in Flower's context"
            ) from None


def _entries(reference: ConfigRecord) -> list[tuple[str, str, tuple[int, ...], str, int, int]]:
    """(name, dtype, shape, stype, offset, size) of each array in a state file, in file order."""
    entries, offset = [], 0
    for i in range(int(reference["count"])):
        size = int(reference["sizes"][i])
        shape = _shape(str(reference["shapes"][i]))
        dtype, stype = str(reference["dtypes"][i]), str(reference["stypes"][i])
        entries.append((str(reference["names"][i]), dtype, shape, stype, offset, size))
        offset += size
    return entries


@lru_cache(maxsize=1024)
def _shape(text: str) -> tuple[int, ...]:
    return tuple(ast.literal_eval(text))


def _array(
    data: bytes, dtype: str, shape: tuple[int, ...], stype: str, offset: int, size: int
) -> Array:
    return Array(dtype=dtype, shape=shape, stype=stype, data=data[offset : offset + size])


def _create(path: Path, overwrite: bool = False) -> BinaryIO:
    """``path`` opened for writing (a new file unless ``overwrite``), its folder made on the
    first write (not a mkdir per write)."""
    mode = "wb" if overwrite else "xb"
    try:
        return path.open(mode)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open(mode)


def _file_of(record: Record | None) -> str | None:
    if isinstance(record, ConfigRecord) and FILE_KEY in record:
        return str(record[FILE_KEY])
    return None


def client_state(
    node_state: RecordDict, client_id: int, directory: str, run_id: int
) -> ClientState:
    """The client's state: in files under ``directory``, or inline when it is empty."""
    if directory:
        return FileClientState(node_state, client_id, directory, run_id)
    return ClientState(node_state, client_id)


ARRAYS_SUFFIX, RECORD_SUFFIX, INDEX_FILE = ".arrays", ".record", "index.json"
_HEADER_LENGTH = 8  # bytes of the little-endian length of a kept arrays file's JSON header


class FolderStore:
    """A client's versioned records (:class:`~strategies.core.client_state.KeptState`) in its own
    folder on the node, which outlives the run's process: each record one file, never read
    while written (a version's records are written in its round and only read later), and an
    index of the versions replaced atomically when a round's version is committed."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, key: str, suffix: str) -> Path:
        return self.folder / (quote(key, safe="") + suffix)

    def read_index(self) -> Versions:
        try:
            return decode_versions((self.folder / INDEX_FILE).read_text())
        except FileNotFoundError:
            return {}

    def write_index(self, versions: Versions) -> None:
        path = self.folder / INDEX_FILE
        temporary = path.with_name(f"{INDEX_FILE}.{uuid.uuid4().hex}.tmp")
        with _create(temporary) as file:
            file.write(encode_versions(versions).encode())
        os.replace(temporary, path)

    def get(self, key: str) -> Record | None:
        arrays = self.get_arrays(key)
        if arrays is not None:
            return to_array_record(arrays)
        try:
            stored = json.loads(self._path(key, RECORD_SUFFIX).read_text())
        except FileNotFoundError:
            return None
        kind = ConfigRecord if stored["kind"] == "config" else MetricRecord
        return kind(stored["values"])

    def get_arrays(self, key: str) -> dict[str, np.ndarray] | None:
        try:
            data = self._path(key, ARRAYS_SUFFIX).read_bytes()
        except FileNotFoundError:
            return None
        length = int.from_bytes(data[:_HEADER_LENGTH], "little")
        header = json.loads(data[_HEADER_LENGTH : _HEADER_LENGTH + length])
        offset, arrays = _HEADER_LENGTH + length, {}
        for name, dtype, shape, size in zip(
            header["names"], header["dtypes"], header["shapes"], header["sizes"], strict=True
        ):
            arrays[name] = npy_values(data, dtype, tuple(shape), offset, size)
            offset += size
        return arrays

    def put(self, key: str, record: Record) -> None:
        if isinstance(record, ArrayRecord):
            self.put_arrays(key, to_numpy_dict(record))
            return
        kind = "config" if isinstance(record, ConfigRecord) else "metrics"
        values = dict(record.items())
        if any(isinstance(v, bytes) for v in values.values()):
            raise TypeError(f"client state {key!r}: bytes values cannot be kept; use arrays")
        with _create(self._path(key, RECORD_SUFFIX), overwrite=True) as file:
            file.write(json.dumps({"kind": kind, "values": values}).encode())

    def put_arrays(self, key: str, arrays: Mapping[str, np.ndarray]) -> None:
        parts = []
        for name, values in arrays.items():
            if values.dtype.hasobject:
                raise ValueError(f"client state {key!r}: {name!r} is an object array")
            parts.append((name, *npy_parts(values)))
        header = json.dumps(
            {
                "names": [name for name, *_ in parts],
                "dtypes": [values.dtype.str for *_, values in parts],
                "shapes": [list(values.shape) for *_, values in parts],
                "sizes": [len(head) + values.nbytes for _, head, values in parts],
            }
        ).encode()
        with _create(self._path(key, ARRAYS_SUFFIX), overwrite=True) as file:
            file.write(len(header).to_bytes(_HEADER_LENGTH, "little"))
            file.write(header)
            for _, head, values in parts:
                file.write(head)
                file.write(values)

    def remove(self, key: str) -> None:
        for suffix in (ARRAYS_SUFFIX, RECORD_SUFFIX):
            self._path(key, suffix).unlink(missing_ok=True)

    def held(self) -> set[str]:
        if not self.folder.is_dir():
            return set()
        return {
            unquote(path.name.removesuffix(suffix))
            for suffix in (ARRAYS_SUFFIX, RECORD_SUFFIX)
            for path in self.folder.glob("*" + suffix)
        }


def client_states(
    node_state: RecordDict, job: ClientJob, run_id: int, training: bool
) -> dict[int, ClientState]:
    """Each client's state for one message of ``job``: versioned (:class:`KeptState`, in its
    folder under ``job.state_dir`` or in Flower's context) when the job names the versions its
    clients keep, else :func:`client_state`. Only training writes."""
    if not job.state_rounds:
        return {c: client_state(node_state, c, job.state_dir, run_id) for c in job.client_ids}
    states: dict[int, ClientState] = {}
    for position, client_id in enumerate(job.client_ids):
        store: RecordStore = (
            FolderStore(Path(job.state_dir) / f"client-{client_id}")
            if job.state_dir
            else ContextStore(node_state, client_id)
        )
        states[client_id] = kept_state(job, position, store, writable=training)
    return states


def lost_version(state: ClientState) -> int | None:
    """The round of the kept version a client no longer had (None: it had it, or keeps none)."""
    return state.lost if isinstance(state, KeptState) else None
