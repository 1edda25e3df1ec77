"""Generated data sets kept on disk: made once per machine, then mapped by every process.

A simulation loads its data set in the server and again in every Ray actor. For a data set
that is *generated* (``cifar10_synthetic``: 60,000 images from a fixed seed) that is ~2.5 CPU-s
per process on the 2-core box, each time the same bytes. The first process writes the arrays
as ``.npy`` files under the data root; later ones map them read-only (``np.load(mmap_mode)``),
so the pages are shared through the OS page cache instead of copied per process.

The folder name carries the generator's parameters and its version, so a change to either
makes a new folder and never reuses stale bytes. A root that cannot be written is no error: the
arrays are then generated in memory as before.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

Arrays = dict[str, np.ndarray]


def cache_folder(root: Path, name: str, parameters: Sequence[object]) -> Path:
    """The folder of data set ``name`` made with ``parameters`` (its generator's version among
    them): a different tuple gives a different folder."""
    digest = hashlib.sha256(repr(tuple(parameters)).encode()).hexdigest()[:16]
    return root / "generated" / f"{name}-{digest}"


def _read(folder: Path, names: Sequence[str]) -> Arrays | None:
    try:
        return {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in names}
    except (OSError, ValueError):
        return None


def _write(folder: Path, arrays: Arrays) -> None:
    """Write the parts into a fresh sibling folder, then rename it into place: a reader sees a
    complete folder or none, and of two writers racing the first rename wins."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for name, values in arrays.items():
            np.save(staging / f"{name}.npy", values, allow_pickle=False)
        os.rename(staging, folder)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not folder.is_dir():
            raise


def generated_arrays(folder: Path, names: Sequence[str], generate: Callable[[], Arrays]) -> Arrays:
    """``generate()``'s arrays ``names``, read from ``folder`` when an earlier process wrote
    them there, else generated and written there for the next one (kept in memory when it
    cannot write)."""
    cached = _read(folder, names)
    if cached is not None:
        return cached
    arrays = generate()
    try:
        _write(folder, arrays)
    except OSError:
        return arrays
    return _read(folder, names) or arrays
