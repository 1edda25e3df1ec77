"""Crash-safe checkpoints: written atomically, checksummed, the previous one kept.

A checkpoint is one ``.npz`` (global arrays under ``global/``, strategy state under
``strategy/``, layer-monitor state under ``monitor/``; no pickles) plus ``latest.json``
naming it with its SHA-256, the round and the wall time spent so far. A checkpoint whose
checksum does not match falls back to the previous one; a damaged ``latest.json`` to the newest
checkpoint file that loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord

from strategies.numeric.arrays import to_array_record

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"  # inside a run folder
LATEST = "latest.json"
GLOBAL, STRATEGY, MONITOR = "global/", "strategy/", "monitor/"


@dataclass(frozen=True)
class Checkpoint:
    """Everything needed to continue a run after ``round``."""

    round: int
    arrays: ArrayRecord
    strategy_state: dict[str, np.ndarray]
    wall_s: float
    monitor_state: dict[str, np.ndarray] = field(default_factory=dict)


class CheckpointError(RuntimeError):
    """No usable checkpoint: the message says what was found and what to do."""


def resume_hint(directory: Path) -> str:
    """What a stopped run left in checkpoint ``directory`` to continue from."""
    if (directory / LATEST).exists():
        return f"the last checkpoint is in {directory} (resume=true continues it)"
    return "no round finished, so nothing was checkpointed"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_checkpoint(directory: Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` and point ``latest.json`` at it; keep only it and its predecessor."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {GLOBAL + name: array.numpy() for name, array in checkpoint.arrays.items()}
    arrays.update({STRATEGY + name: value for name, value in checkpoint.strategy_state.items()})
    arrays.update({MONITOR + name: value for name, value in checkpoint.monitor_state.items()})
    pickled = sorted(name for name, value in arrays.items() if value.dtype.hasobject)
    if pickled:
        raise TypeError(f"checkpoint arrays must be plain numeric arrays, not objects: {pickled}")
    path = directory / f"round-{checkpoint.round:05d}.npz"
    _write_atomic(path, lambda handle: np.savez(handle, **arrays))
    previous = _read_meta(directory)
    meta = {
        "round": checkpoint.round,
        "file": path.name,
        "sha256": _sha256(path),
        "wall_s": checkpoint.wall_s,
        "previous": {k: previous[k] for k in ("round", "file", "sha256", "wall_s")}
        if previous and previous["file"] != path.name
        else None,
    }
    _write_atomic(directory / LATEST, lambda handle: handle.write(json.dumps(meta).encode()))
    keep = {path.name, meta["previous"]["file"] if meta["previous"] else None}
    for old in directory.glob("round-*.npz"):
        if old.name not in keep:
            old.unlink()
    return path


def _read_meta(directory: Path) -> dict | None:
    try:
        return json.loads((directory / LATEST).read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{directory / LATEST} is corrupted ({err})") from err


def _load(directory: Path, meta: dict) -> Checkpoint:
    path = directory / meta["file"]
    if not path.exists() or (meta["sha256"] and _sha256(path) != meta["sha256"]):
        raise CheckpointError(f"checkpoint {path} is missing or its checksum does not match")
    try:
        with np.load(path, allow_pickle=False) as stored:
            parts = {
                prefix: {k[len(prefix) :]: stored[k] for k in stored.files if k.startswith(prefix)}
                for prefix in (GLOBAL, STRATEGY, MONITOR)
            }
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"checkpoint {path} cannot be read safely: {err}") from err
    arrays = to_array_record(parts[GLOBAL])
    return Checkpoint(meta["round"], arrays, parts[STRATEGY], meta["wall_s"], parts[MONITOR])


def _newest_readable(directory: Path, damage: CheckpointError) -> Checkpoint:
    """With ``latest.json`` unreadable: the newest ``round-*.npz`` that loads (no checksum to
    check it against, and its wall time unknown: the summary's ``wall_s`` restarts at 0)."""
    for path in sorted(directory.glob("round-*.npz"), reverse=True):
        meta = {"round": int(path.stem.removeprefix("round-")), "file": path.name, "sha256": ""}
        try:
            checkpoint = _load(directory, {**meta, "wall_s": 0.0})
        except CheckpointError as err:
            log.warning("%s", err)
            continue
        log.warning("%s; resuming from %s (wall time restarts at 0)", damage, path.name)
        return checkpoint
    raise CheckpointError(f"{damage}, and no round-*.npz in {directory} can be read") from damage


def load_checkpoint(directory: Path) -> Checkpoint:
    """The latest valid checkpoint in ``directory`` (falling back to the previous one, or with a
    damaged ``latest.json`` to the newest checkpoint file that loads)."""
    try:
        meta = _read_meta(directory)
    except CheckpointError as damage:
        return _newest_readable(directory, damage)
    if meta is None:
        raise CheckpointError(
            f"resume=true but there is no checkpoint in {directory}; pass the run directory of the "
            "run to continue with hydra.run.dir=<that directory>, or drop resume=true"
        )
    try:
        return _load(directory, meta)
    except CheckpointError as err:
        if not meta.get("previous"):
            raise
        log.warning("%s; falling back to round %d", err, meta["previous"]["round"])
        return _load(directory, meta["previous"])
