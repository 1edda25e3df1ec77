"""LBG store: memory and disk backends agree; versions gate reads; float16 stays close; a
checkpoint holds the versions and the archive each vector once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server_app.checkpoint import load_checkpoint
from strategies.pseudo_gradient.lbg_store import (
    VECTOR,
    VERSION,
    DiskStore,
    LBGArchive,
    LBGStore,
    make_store,
)
from tests.runs import run_and_read

SIZES = {"a": 5, "b": 3}


def _stores(tmp_path: Path, dtype: str = "float32") -> list[LBGStore]:
    return [
        make_store("memory", SIZES, dtype),
        make_store("disk", SIZES, dtype, str(tmp_path / dtype)),
    ]


def _fill(store: LBGStore) -> dict[tuple[int, str], np.ndarray]:
    rng = np.random.default_rng(1)
    written = {}
    for client in (0, 7, 999):
        for unit, size in SIZES.items():
            written[client, unit] = rng.standard_normal(size).astype(np.float32)
            store.put(client, unit, client + 1, written[client, unit])
    return written


def test_backends_return_what_was_put_under_its_version(tmp_path: Path) -> None:
    for store in _stores(tmp_path):
        written = _fill(store)
        for (client, unit), vector in written.items():
            assert np.array_equal(store.get(client, unit, client + 1), vector)
            assert store.get(client, unit, client + 2) is None  # other version: nothing
            assert store.version(client, unit) == client + 1
        assert store.version(3, "a") == -1 and store.get(3, "a", -1) is None
        assert store.nbytes == 3 * 8 * 4


def test_overwrite_and_evict(tmp_path: Path) -> None:
    for store in _stores(tmp_path):
        _fill(store)
        store.put(7, "b", 20, np.full(3, 2.0, np.float32))
        assert np.array_equal(store.get(7, "b", 20), np.full(3, 2.0))
        assert store.get(7, "b", 8) is None
        assert store.get(7, "a", 8) is not None  # the other unit of that client is untouched
        store.evict(7, "b")
        assert store.version(7, "b") == -1 and store.get(7, "b", 20) is None
        assert store.nbytes == (3 * 8 - 3) * 4


def test_disk_store_writes_one_preallocated_file_per_client(tmp_path: Path) -> None:
    store = make_store("disk", SIZES, "float16", str(tmp_path))
    _fill(store)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["client-0.lbg", "client-7.lbg", "client-999.lbg"]
    assert all((tmp_path / f).stat().st_size == 8 * 2 for f in files)


def test_disk_store_without_a_directory_cleans_up_its_temp_dir() -> None:
    store = DiskStore(SIZES)
    directory = store.directory
    store.put(0, "a", 1, np.ones(5, np.float32))
    assert directory.exists()
    del store
    assert not directory.exists()


def test_float16_store_is_close_and_half_the_bytes(tmp_path: Path) -> None:
    full, half = make_store("memory", SIZES), make_store("disk", SIZES, "float16", str(tmp_path))
    written = _fill(full)
    _fill(half)
    for (client, unit), vector in written.items():
        got = half.get(client, unit, client + 1)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, vector, rtol=1e-3, atol=1e-4)
    assert half.nbytes * 2 == full.nbytes


def test_bad_store_choices_are_named() -> None:
    with pytest.raises(ValueError, match="memory, disk"):
        make_store("redis", SIZES)
    with pytest.raises(ValueError, match="float32, float16"):
        make_store("memory", SIZES, "bfloat16")
    with pytest.raises(ValueError, match="shape"):
        make_store("memory", SIZES).put(0, "a", 1, np.ones(4, np.float32))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_checkpointed_store_holds_exactly_what_it_held(tmp_path: Path, dtype: str) -> None:
    """state_dict -> load_state_dict into a store holding other LBGs: the same versions and the
    same stored bits (float16 stays float16), nothing else."""
    for store in _stores(tmp_path / "saved", dtype):
        _fill(store)
        store.evict(7, "b")
        for other in _stores(tmp_path / f"restored-{type(store).__name__}", dtype):
            other.put(5, "a", 1, np.ones(5, np.float32))
            other.load_state_dict(store.state_dict())
            assert other.version(5, "a") == -1 and other.version(7, "b") == -1
            assert other.nbytes == store.nbytes
            for client in (0, 7, 999):
                for unit in SIZES:
                    held = store.get(client, unit, client + 1)
                    back = other.get(client, unit, client + 1)
                    assert (held is None and back is None) or held.tobytes() == back.tobytes()


def test_with_an_archive_a_checkpoint_holds_versions_and_vectors_are_written_once(
    tmp_path: Path,
) -> None:
    """Each vector goes to the archive when it arrives; state_dict names versions only; a store
    restored from it and the archive holds the same bits; a vector no checkpoint of the last
    three names is removed."""
    archive = tmp_path / "lbg"
    store = make_store("memory", SIZES)
    store.archive = LBGArchive(archive)
    written = _fill(store)
    state = store.state_dict()
    assert not any(key.startswith(VECTOR) for key in state)
    restored = make_store("disk", SIZES, directory=str(tmp_path / "disk"))
    restored.archive = LBGArchive(archive)  # a resumed run finds the stopped run's files
    restored.load_state_dict(state)
    for (client, unit), vector in written.items():
        assert restored.get(client, unit, client + 1).tobytes() == vector.tobytes()
    first = archive / "0" / "a%401.npy"
    assert first.exists()
    for version in (10, 11, 12):  # client 0's unit a replaced in three checkpointed rounds
        store.put(0, "a", version, np.full(5, version, np.float32))
        store.state_dict()
    assert not first.exists() and (archive / "0" / "a%4010.npy").exists()


def test_a_runs_checkpoint_names_versions_and_its_archive_holds_the_vectors(
    tmp_path: Path,
) -> None:
    rows = run_and_read(
        [
            "strategy=lbgm",
            "strategy.delta=0.9",
            "dataset=digits",
            "num_clients=3",
            "num_rounds=3",
            "federated_eval=false",
            "plots=false",
        ],
        tmp_path,
    )
    state = load_checkpoint(tmp_path / "checkpoint").strategy_state
    versions = [k for k in state if k.startswith(VERSION)]
    assert versions and not any(k.startswith(VECTOR) for k in state)
    archived = sorted((tmp_path / "checkpoint" / "lbg").glob("*/*.npy"))
    assert len(archived) >= len(versions)
    assert sum(p.stat().st_size for p in archived) >= rows[-1]["lbgm_store_bytes"]
