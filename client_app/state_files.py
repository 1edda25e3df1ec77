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
from pathlib import Path
from typing import BinaryIO

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from strategies.wire import ClientState, Record

FILE_KEY = "state-file"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


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
        stem = _UNSAFE.sub("_", name)
        path = self.folder / f"{stem}.{uuid.uuid4().hex}.arrays"
        arrays = list(record.items())
        with _create(path) as file:
            for _, array in arrays:
                file.write(array.data)
        reference: dict = {FILE_KEY: path.name, "count": len(arrays)}
        if arrays:  # Flower cannot count the bytes of an empty list
            reference |= {
                "names": [n for n, _ in arrays],
                "dtypes": [a.dtype for _, a in arrays],
                "shapes": [repr(tuple(a.shape)) for _, a in arrays],
                "stypes": [a.stype for _, a in arrays],
                "sizes": [len(a.data) for _, a in arrays],
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
        path = self.folder / str(reference[FILE_KEY])
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise MissingStateFileError(
                f"client state file {path} is missing: engine.client_state_dir must be a folder "
                "every Ray worker sees (a shared file system on a Ray cluster), or null to keep "
                "client state in Flower's context"
            ) from None
        arrays, offset = {}, 0
        for i in range(int(reference["count"])):
            size = int(reference["sizes"][i])
            arrays[str(reference["names"][i])] = Array(
                dtype=str(reference["dtypes"][i]),
                shape=tuple(ast.literal_eval(str(reference["shapes"][i]))),
                stype=str(reference["stypes"][i]),
                data=data[offset : offset + size],
            )
            offset += size
        return ArrayRecord(arrays)


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
