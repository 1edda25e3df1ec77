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
import re
import uuid
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.common.constant import SType

from strategies.core.wire import ClientState, Record
from strategies.numeric.arrays import npy_parts, npy_values, to_numpy

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


def _create(path: Path) -> BinaryIO:
    """``path`` opened for writing, its folder made on the first write (not a mkdir per write)."""
    try:
        return path.open("xb")
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("xb")


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
