"""data.generated_cache: a generated data set is made once, then read back with the same bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data.generated_cache import cache_folder, generated_arrays

NAMES = ("x", "y", "stats")


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "x": rng.integers(0, 256, (6, 1, 2, 2), dtype=np.uint8),
        "y": np.arange(6, dtype=np.int64),
        "stats": np.array([0.25, 1 / 3]),
    }


def _counting() -> tuple[list[int], object]:
    calls: list[int] = []

    def generate() -> dict[str, np.ndarray]:
        calls.append(1)
        return _arrays()

    return calls, generate


def test_generated_once_then_read_back_read_only_with_the_same_bytes(tmp_path: Path) -> None:
    folder = cache_folder(tmp_path, "toy", (1, "seed"))
    calls, generate = _counting()
    first = generated_arrays(folder, NAMES, generate)
    second = generated_arrays(folder, NAMES, generate)
    assert len(calls) == 1
    for name, expected in _arrays().items():
        np.testing.assert_array_equal(first[name], expected)
        np.testing.assert_array_equal(second[name], expected)
        assert second[name].dtype == expected.dtype and not second[name].flags.writeable
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no staging left


def test_other_parameters_or_version_name_another_folder(tmp_path: Path) -> None:
    assert cache_folder(tmp_path, "toy", (1, 0)) != cache_folder(tmp_path, "toy", (2, 0))
    assert cache_folder(tmp_path, "toy", (1, 0)) == cache_folder(tmp_path, "toy", (1, 0))


def test_a_damaged_folder_is_regenerated_and_an_unwritable_root_is_no_error(
    tmp_path: Path,
) -> None:
    folder = cache_folder(tmp_path, "toy", (1,))
    folder.mkdir(parents=True)
    (folder / "train_x.npy").write_bytes(b"not an array")
    calls, generate = _counting()
    values = generated_arrays(folder, NAMES, generate)  # cannot replace the folder: in memory
    assert len(calls) == 1
    np.testing.assert_array_equal(values["x"], _arrays()["x"])
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    values = generated_arrays(cache_folder(not_a_folder, "toy", (1,)), NAMES, generate)
    np.testing.assert_array_equal(values["stats"], _arrays()["stats"])
    assert len(calls) == 2
