"""Tests for server_app.checkpoint: atomic, checksummed checkpoints with one fallback."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from server_app.checkpoint import (
    LATEST,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)


def _arrays(round_: int) -> ArrayRecord:
    rng = np.random.default_rng(round_)
    return ArrayRecord(
        {
            "conv.weight": Array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32)),
            "fc.bias": Array(rng.standard_normal(5)),  # float64
            "bn.num_batches_tracked": Array(np.array(round_ * 7, dtype=np.int64)),
            "mask": Array(rng.integers(0, 2, size=(4,), dtype=np.uint8)),
        }
    )


def _state(round_: int) -> dict[str, np.ndarray]:
    return {
        "step": np.array(round_, dtype=np.int64),
        "momentum": np.full((3, 2), 0.5 * round_, dtype=np.float32),
        "flags": np.array([True, False, round_ % 2 == 0]),
    }


def _checkpoint(round_: int) -> Checkpoint:
    return Checkpoint(round_, _arrays(round_), _state(round_), wall_s=12.25 * round_ + 0.1)


def _assert_same(loaded: Checkpoint, saved: Checkpoint) -> None:
    assert loaded.round == saved.round
    assert loaded.wall_s == saved.wall_s
    assert list(loaded.arrays.keys()) == list(saved.arrays.keys())
    for name, array in saved.arrays.items():
        want, got = array.numpy(), loaded.arrays[name].numpy()
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()
        assert loaded.arrays[name].dtype == array.dtype
    assert set(loaded.strategy_state) == set(saved.strategy_state)
    for name, value in saved.strategy_state.items():
        got = loaded.strategy_state[name]
        assert got.dtype == value.dtype and got.shape == value.shape
        assert got.tobytes() == value.tobytes()


def test_round_trip_is_bitwise(tmp_path: Path) -> None:
    saved = _checkpoint(3)
    path = save_checkpoint(tmp_path / "ckpt", saved)
    assert path.name == "round-00003.npz" and path.exists()
    loaded = load_checkpoint(tmp_path / "ckpt")
    _assert_same(loaded, saved)
    assert int(loaded.arrays["bn.num_batches_tracked"].numpy()) == 21
    assert loaded.arrays["bn.num_batches_tracked"].shape == ()


def test_round_trip_with_empty_strategy_state(tmp_path: Path) -> None:
    saved = Checkpoint(1, _arrays(1), {}, 0.0)
    save_checkpoint(tmp_path, saved)
    _assert_same(load_checkpoint(tmp_path), saved)


def test_latest_json_names_file_and_previous(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _checkpoint(1))
    save_checkpoint(tmp_path, _checkpoint(2))
    meta = json.loads((tmp_path / LATEST).read_text())
    assert meta["round"] == 2 and meta["file"] == "round-00002.npz"
    assert len(meta["sha256"]) == 64
    assert meta["previous"]["round"] == 1 and meta["previous"]["file"] == "round-00001.npz"
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporaries behind


def test_only_latest_and_previous_are_kept(tmp_path: Path) -> None:
    for round_ in (1, 2, 3):
        save_checkpoint(tmp_path, _checkpoint(round_))
    assert sorted(p.name for p in tmp_path.glob("round-*.npz")) == [
        "round-00002.npz",
        "round-00003.npz",
    ]
    _assert_same(load_checkpoint(tmp_path), _checkpoint(3))


def _flip_bytes(path: Path, offset: int = 100, count: int = 8) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_latest_falls_back_to_previous(tmp_path: Path) -> None:
    for round_ in (1, 2, 3):
        save_checkpoint(tmp_path, _checkpoint(round_))
    _flip_bytes(tmp_path / "round-00003.npz")
    _assert_same(load_checkpoint(tmp_path), _checkpoint(2))


def test_missing_latest_file_falls_back_to_previous(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _checkpoint(1))
    save_checkpoint(tmp_path, _checkpoint(2))
    (tmp_path / "round-00002.npz").unlink()
    _assert_same(load_checkpoint(tmp_path), _checkpoint(1))


def test_both_corrupted_raises(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _checkpoint(1))
    save_checkpoint(tmp_path, _checkpoint(2))
    _flip_bytes(tmp_path / "round-00001.npz")
    _flip_bytes(tmp_path / "round-00002.npz")
    with pytest.raises(CheckpointError, match=r"round-00001\.npz"):
        load_checkpoint(tmp_path)


def test_corrupted_single_checkpoint_has_no_fallback(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _checkpoint(1))
    _flip_bytes(tmp_path / "round-00001.npz")
    with pytest.raises(CheckpointError, match="checksum does not match"):
        load_checkpoint(tmp_path)


def test_corrupted_latest_json_falls_back_to_the_newest_readable_file(tmp_path: Path) -> None:
    for round_ in (1, 2):
        save_checkpoint(tmp_path, _checkpoint(round_))
    (tmp_path / LATEST).write_text('{"round": 2, "fi')
    _assert_same(load_checkpoint(tmp_path), replace(_checkpoint(2), wall_s=0.0))
    _flip_bytes(tmp_path / "round-00002.npz")
    assert load_checkpoint(tmp_path).round == 1


def test_corrupted_latest_json_and_files_raise(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _checkpoint(1))
    (tmp_path / LATEST).write_text("{not json")
    _flip_bytes(tmp_path / "round-00001.npz")
    with pytest.raises(CheckpointError, match=r"corrupted.*no round-\*\.npz"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("make_dir", [True, False])
def test_no_checkpoint_names_hydra_run_dir(tmp_path: Path, make_dir: bool) -> None:
    directory = tmp_path / "checkpoint"
    if make_dir:
        directory.mkdir()
    with pytest.raises(CheckpointError, match=r"hydra\.run\.dir") as info:
        load_checkpoint(directory)
    assert str(directory) in str(info.value)


def test_resaving_the_same_round_overwrites_it(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _checkpoint(1))
    again = Checkpoint(1, _arrays(5), _state(5), 99.0)
    save_checkpoint(tmp_path, again)
    _assert_same(load_checkpoint(tmp_path), again)
    assert [p.name for p in tmp_path.glob("round-*.npz")] == ["round-00001.npz"]


def test_object_arrays_are_refused_at_save(tmp_path: Path) -> None:
    """Object arrays would be pickled into the checkpoint; they are refused before writing."""
    save_checkpoint(tmp_path, _checkpoint(1))
    state = {"anything": np.array([{"a": 1}, None], dtype=object)}
    with pytest.raises(TypeError, match="strategy/anything"):
        save_checkpoint(tmp_path, Checkpoint(2, _arrays(2), state, 1.0))
    assert load_checkpoint(tmp_path).round == 1


def test_a_pickled_checkpoint_is_not_loaded_and_falls_back(tmp_path: Path) -> None:
    """A checkpoint file holding a pickle (written by someone else) is never unpickled."""
    save_checkpoint(tmp_path, _checkpoint(1))
    save_checkpoint(tmp_path, _checkpoint(2))
    latest = tmp_path / "round-00002.npz"
    with latest.open("wb") as handle:
        np.savez(handle, **{"strategy/evil": np.array([{"a": 1}], dtype=object)})
    meta = json.loads((tmp_path / "latest.json").read_text())
    meta["sha256"] = hashlib.sha256(latest.read_bytes()).hexdigest()
    (tmp_path / "latest.json").write_text(json.dumps(meta))
    assert load_checkpoint(tmp_path).round == 1
