"""Server-side look-back-gradient (LBG) store: each client's last full vector per unit.

LBGM's server must rebuild ρ·LBG for every client that reuses, so it keeps one LBG per
(client, unit) with the version (round) it was sent in. With many clients that is
O(clients × parameters), hence two backends: ``memory`` (a dict) and ``disk`` (one numpy
memmap file per client, preallocated for all units, opened only while read or written), both
optionally in float16. Versions are small and stay in memory.

A resumed run must decode the clients' ρ against the look-back gradients their kept state
refers to, so the store is checkpointed. Within a run (:class:`LBGArchive`, beside the
checkpoint) every vector is written once, when it arrives, and a checkpoint holds only the
versions: each round writes the vectors it received, never the whole store (22 GB at 500
ResNet-18 clients), and nothing store-sized is copied for the checkpoint. Without an archive
(a store used on its own) :meth:`LBGStore.state_dict` holds the vectors themselves.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np

STORES = ("memory", "disk")
STORE_DTYPES = ("float32", "float16")
VECTOR, VERSION = "lbg/", "lbg-version/"  # checkpoint keys: <client>/<unit>
CHECKPOINTS_NAMING = 3
"""Checkpoints whose versions the archive keeps: the one written while the next round trains,
the one before it, and the one a damaged checkpoint falls back to."""
Entry = tuple[int, str, int]  # (client, unit, version)


class LBGArchive:
    """Every LBG a run's store received, one write-once ``.npy`` per (client, unit, version) in
    ``folder``, until no checkpoint that may be resumed from names it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.held: set[Entry] = set()
        for path in folder.glob("*/*.npy") if folder.is_dir() else ():  # a stopped run's
            unit, _, version = unquote(path.stem).rpartition("@")
            self.held.add((int(path.parent.name), unit, int(version)))
        self.named: deque[set[Entry]] = deque(maxlen=CHECKPOINTS_NAMING)

    def _path(self, entry: Entry) -> Path:
        client, unit, version = entry
        return self.folder / str(client) / (quote(f"{unit}@{version}", safe="") + ".npy")

    def write(self, entry: Entry, vector: np.ndarray) -> None:
        path = self._path(entry)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        with temporary.open("wb") as file:
            np.save(file, vector)
        os.replace(temporary, path)
        self.held.add(entry)

    def read(self, entry: Entry) -> np.ndarray:
        return np.load(self._path(entry))

    def checkpointed(self, entries: set[Entry]) -> None:
        """A checkpoint names ``entries`` (the whole store, at the end of a round): the vectors
        no checkpoint that may be resumed from names go."""
        self.named.append(entries)
        keep = set().union(*self.named)
        for entry in self.held - keep:
            self._path(entry).unlink(missing_ok=True)
        self.held &= keep


class LBGStore(ABC):
    """Versioned per-(client, unit) flat vectors of fixed per-unit sizes."""

    def __init__(self, sizes: Mapping[str, int], dtype: str = "float32") -> None:
        if dtype not in STORE_DTYPES:
            raise ValueError(f"store dtype {dtype!r}; choose one of: {', '.join(STORE_DTYPES)}")
        self.sizes = dict(sizes)
        self.dtype = np.dtype(dtype)
        self._versions: dict[int, dict[str, int]] = {}
        self.archive: LBGArchive | None = None
        """Where each received vector is also written once, for checkpoints (None: nowhere)."""

    def version(self, client_id: int, unit: str) -> int:
        """Version held for (client, unit); -1 when none."""
        return self._versions.get(client_id, {}).get(unit, -1)

    def put(self, client_id: int, unit: str, version: int, vector: np.ndarray) -> None:
        """Store ``vector`` (cast to the store dtype) as the client's LBG for ``unit``; the store
        may keep ``vector`` itself, so the caller must not modify it afterwards."""
        if vector.shape != (self.sizes[unit],):
            raise ValueError(f"{unit}: vector shape {vector.shape} != ({self.sizes[unit]},)")
        stored = vector.astype(self.dtype, copy=False)
        self._write(client_id, unit, stored)
        self._versions.setdefault(client_id, {})[unit] = version
        if self.archive is not None:
            self.archive.write((client_id, unit, version), stored)

    def get(self, client_id: int, unit: str, version: int) -> np.ndarray | None:
        """The LBG of (client, unit) as float32 if its version is ``version``, else None
        (read-only use: a float32 memory store returns its own array)."""
        if version < 0 or self.version(client_id, unit) != version:
            return None
        return self._read(client_id, unit).astype(np.float32, copy=False)

    def evict(self, client_id: int, unit: str) -> None:
        """Forget one LBG; the client must then send that unit in full."""
        self._versions.get(client_id, {}).pop(unit, None)

    @property
    def nbytes(self) -> int:
        """Bytes of LBG data held (entries with a version), the same for both backends."""
        return sum(
            self.sizes[unit] * self.dtype.itemsize
            for units in self._versions.values()
            for unit in units
        )

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every held LBG's version, keyed by client and unit, and its vector (in the store's
        dtype) unless the archive holds it."""
        state = {}
        for client_id, units in self._versions.items():
            for unit, version in units.items():
                state[f"{VERSION}{client_id}/{unit}"] = np.array(version, dtype=np.int64)
                if self.archive is None:
                    state[f"{VECTOR}{client_id}/{unit}"] = self._read(client_id, unit)
        if self.archive is not None:
            self.archive.checkpointed(self._entries())
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Hold exactly the LBGs :meth:`state_dict` saved (other keys are ignored)."""
        for client_id, units in list(self._versions.items()):
            for unit in list(units):
                self.evict(client_id, unit)
        archive, self.archive = self.archive, None  # restored vectors are archived already
        for key, version in state.items():
            if key.startswith(VERSION):
                client, unit = key.removeprefix(VERSION).split("/", 1)
                entry = (int(client), unit, int(version))
                saved = state.get(f"{VECTOR}{client}/{unit}")
                vector = archive.read(entry) if saved is None else saved
                self.put(*entry[:2], entry[2], np.asarray(vector, dtype=self.dtype))
        self.archive = archive
        if archive is not None:  # the checkpoint resumed from may be fallen back to again
            archive.named.append(self._entries())

    def _entries(self) -> set[Entry]:
        return {(c, u, v) for c, units in self._versions.items() for u, v in units.items()}

    @abstractmethod
    def _write(self, client_id: int, unit: str, vector: np.ndarray) -> None: ...

    @abstractmethod
    def _read(self, client_id: int, unit: str) -> np.ndarray: ...


class MemoryStore(LBGStore):
    """LBGs in a dict in RAM."""

    def __init__(self, sizes: Mapping[str, int], dtype: str = "float32") -> None:
        super().__init__(sizes, dtype)
        self._vectors: dict[tuple[int, str], np.ndarray] = {}

    def _write(self, client_id: int, unit: str, vector: np.ndarray) -> None:
        self._vectors[client_id, unit] = vector

    def _read(self, client_id: int, unit: str) -> np.ndarray:
        return self._vectors[client_id, unit]

    def evict(self, client_id: int, unit: str) -> None:
        super().evict(client_id, unit)
        self._vectors.pop((client_id, unit), None)


class DiskStore(LBGStore):
    """LBGs in one preallocated memmap file per client under ``directory`` (a temp dir if None)."""

    def __init__(
        self, sizes: Mapping[str, int], dtype: str = "float32", directory: str | None = None
    ) -> None:
        super().__init__(sizes, dtype)
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="lbgm-store-")
        self.directory = Path(directory or self._tmp.name)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._offsets: dict[str, int] = {}
        offset = 0
        for unit, size in self.sizes.items():
            self._offsets[unit] = offset
            offset += size
        self._total = offset

    def _file(self, client_id: int, write: bool) -> np.memmap:
        path = self.directory / f"client-{client_id}.lbg"
        mode = "r+" if path.exists() or not write else "w+"
        return np.memmap(path, dtype=self.dtype, mode=mode, shape=(self._total,))

    def _write(self, client_id: int, unit: str, vector: np.ndarray) -> None:
        start = self._offsets[unit]
        mapped = self._file(client_id, write=True)
        mapped[start : start + vector.size] = vector
        mapped.flush()
        del mapped

    def _read(self, client_id: int, unit: str) -> np.ndarray:
        start = self._offsets[unit]
        mapped = self._file(client_id, write=False)
        vector = np.array(mapped[start : start + self.sizes[unit]])
        del mapped
        return vector


def make_store(
    kind: str, sizes: Mapping[str, int], dtype: str = "float32", directory: str | None = None
) -> LBGStore:
    """The ``kind`` backend (one of STORES)."""
    if kind == "memory":
        return MemoryStore(sizes, dtype)
    if kind == "disk":
        return DiskStore(sizes, dtype, directory)
    raise ValueError(f"unknown store {kind!r}; choose one of: {', '.join(STORES)}")
