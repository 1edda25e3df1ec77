"""Server-side look-back-gradient (LBG) store: each client's last full vector per unit.

LBGM's server must rebuild ρ·LBG for every client that reuses, so it keeps one LBG per
(client, unit) with the version (round) it was sent in. With many clients that is
O(clients × parameters), hence two backends: ``memory`` (a dict) and ``disk`` (one numpy
memmap file per client, preallocated for all units, opened only while read or written), both
optionally in float16. Versions are small and stay in memory. The store is checkpointed whole
(:meth:`LBGStore.state_dict`, its ``nbytes`` per checkpoint), so a resumed run decodes the
clients' ρ against the look-back gradients their kept state still refers to.
"""

from __future__ import annotations

import tempfile
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path

import numpy as np

STORES = ("memory", "disk")
STORE_DTYPES = ("float32", "float16")
VECTOR, VERSION = "lbg/", "lbg-version/"  # checkpoint keys: <client>/<unit>


class LBGStore(ABC):
    """Versioned per-(client, unit) flat vectors of fixed per-unit sizes."""

    def __init__(self, sizes: Mapping[str, int], dtype: str = "float32") -> None:
        if dtype not in STORE_DTYPES:
            raise ValueError(f"store dtype {dtype!r}; choose one of: {', '.join(STORE_DTYPES)}")
        self.sizes = dict(sizes)
        self.dtype = np.dtype(dtype)
        self._versions: dict[int, dict[str, int]] = {}

    def version(self, client_id: int, unit: str) -> int:
        """Version held for (client, unit); -1 when none."""
        return self._versions.get(client_id, {}).get(unit, -1)

    def put(self, client_id: int, unit: str, version: int, vector: np.ndarray) -> None:
        """Store ``vector`` (cast to the store dtype) as the client's LBG for ``unit``; the store
        may keep ``vector`` itself, so the caller must not modify it afterwards."""
        if vector.shape != (self.sizes[unit],):
            raise ValueError(f"{unit}: vector shape {vector.shape} != ({self.sizes[unit]},)")
        self._write(client_id, unit, vector.astype(self.dtype, copy=False))
        self._versions.setdefault(client_id, {})[unit] = version

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
        """Every held LBG (in the store's dtype) and its version, keyed by client and unit."""
        state = {}
        for client_id, units in self._versions.items():
            for unit, version in units.items():
                state[f"{VECTOR}{client_id}/{unit}"] = self._read(client_id, unit)
                state[f"{VERSION}{client_id}/{unit}"] = np.array(version, dtype=np.int64)
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Hold exactly the LBGs :meth:`state_dict` saved (other keys are ignored)."""
        for client_id, units in list(self._versions.items()):
            for unit in list(units):
                self.evict(client_id, unit)
        for key, version in state.items():
            if key.startswith(VERSION):
                client, unit = key.removeprefix(VERSION).split("/", 1)
                vector = np.asarray(state[f"{VECTOR}{client}/{unit}"], dtype=self.dtype)
                self.put(int(client), unit, int(version), vector)

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
