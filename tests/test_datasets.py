"""Tests for data.datasets: offline loaders, error messages, caching. Nothing is downloaded."""

import importlib.resources
import io
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.datasets import (
    ANIMAL_MNIST_INSTALL,
    DATASETS,
    DEFAULT_ROOT,
    DataNotFoundError,
    _channel_stats,
    _first_occurrences,
    _generate_synthetic_cifar10,
    _load_animal_mnist,
    _load_cached,
    _NumpyArrayUnpickler,
    load_dataset,
)

TORCHVISION_FOLDERS = {
    "mnist": "MNIST/raw",
    "fashion_mnist": "FashionMNIST/raw",
    "emnist": "EMNIST/raw",
    "cifar10": "cifar-10-batches-py",
    "cifar100": "cifar-100-python",
}


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) in the idx format that torchvision's MNIST readers parse."""
    type_code, ndim = 0x08, array.ndim
    header = bytes([0, 0, type_code, ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize(
    ("name", "train_size", "test_size", "shape"),
    [("digits", 1438, 359, (1, 8, 8)), ("mnist5k", 4000, 1000, (1, 28, 28))],
)
def test_offline_datasets(name: str, train_size: int, test_size: int, shape: tuple) -> None:
    splits = load_dataset(name)
    assert splits.name == name
    assert splits.num_classes == 10
    assert splits.input_shape == shape
    assert (len(splits.train), len(splits.test)) == (train_size, test_size)
    for part in (splits.train, splits.test):
        assert part.x.dtype == np.uint8 and part.x.shape[1:] == shape
        assert part.y.dtype == np.int64
        assert set(np.unique(part.y).tolist()) == set(range(10))
        assert part.x.max() > 200  # scaled to 0-255, not left at 0-16
    # Stratified: every class contributes its 20 % share (to within one) to the test set.
    counts_all = np.bincount(np.concatenate([splits.train.y, splits.test.y]))
    assert np.all(np.abs(np.bincount(splits.test.y) - 0.2 * counts_all) <= 1)
    assert len(splits.mean) == len(splits.std) == 1
    assert 0.0 < splits.mean[0] < 1.0 and 0.0 < splits.std[0] < 1.0


def test_mnist5k_matches_known_statistics() -> None:
    splits = load_dataset("mnist5k")
    np.testing.assert_array_equal(np.bincount(splits.test.y), np.full(10, 100))
    assert splits.mean[0] == pytest.approx(0.1307, abs=0.01)
    assert splits.std[0] == pytest.approx(0.3081, abs=0.01)


def test_animal_mnist_loads_offline_without_duplicates_or_a_missing_class() -> None:
    """The package's 10,000 images hold 284 exact duplicates; dropped before the split, no test
    image is also a training image."""
    splits = load_dataset("animal_mnist")
    assert (splits.num_classes, splits.input_shape) == (10, (1, 28, 28))
    assert (len(splits.train), len(splits.test)) == (7773, 1943)
    images = np.concatenate([splits.train.x, splits.test.x]).reshape(9716, -1)
    assert len(np.unique(images, axis=0)) == 9716
    for part in (splits.train, splits.test):
        assert part.x.dtype == np.uint8 and part.x.shape[1:] == (1, 28, 28)
        assert (part.x.min(), part.x.max()) == (0, 255)
        assert part.y.dtype == np.int64
        assert set(np.unique(part.y).tolist()) == set(range(10))
    counts_all = np.bincount(np.concatenate([splits.train.y, splits.test.y]))
    assert counts_all.sum() == 9716 and counts_all.max() == 1000  # some classes lost copies
    assert np.all(np.abs(np.bincount(splits.test.y) - 0.2 * counts_all) <= 1)
    assert 0.0 < splits.mean[0] < 1.0 and 0.0 < splits.std[0] < 1.0
    train, test = _load_animal_mnist()  # the same split on every load
    np.testing.assert_array_equal(test.x, splits.test.x)
    np.testing.assert_array_equal(train.y, splits.train.y)


def test_first_occurrences_keep_the_first_copy_in_order() -> None:
    a, b, c = (np.full((1, 2, 2), v, dtype=np.uint8) for v in (1, 2, 3))
    x = np.stack([b, a, b, c, a, a])
    np.testing.assert_array_equal(_first_occurrences(x), [0, 1, 3])


class _RunsCode:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned",))


def test_the_data_unpickler_takes_numpy_arrays_and_refuses_anything_else() -> None:
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    restored = _NumpyArrayUnpickler(io.BytesIO(pickle.dumps(array))).load()
    np.testing.assert_array_equal(restored, array)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing (posix|nt)\.system"):
        _NumpyArrayUnpickler(io.BytesIO(pickle.dumps(_RunsCode()))).load()


def test_missing_animal_mnist_package_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_files = importlib.resources.files

    def files(package: str):  # as if animal-mnist were not installed
        if package == "animal_mnist":
            raise ModuleNotFoundError("No module named 'animal_mnist'")
        return real_files(package)

    monkeypatch.setattr(importlib.resources, "files", files)
    _load_cached.cache_clear()
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("animal_mnist")
    message = str(info.value)
    assert "\n" not in message and message.endswith(f"Run `{ANIMAL_MNIST_INSTALL}`.")
    assert ANIMAL_MNIST_INSTALL == "pip install --no-deps animal-mnist==0.4"


def test_synthetic_cifar10_has_cifar10_shapes_and_the_same_bytes_every_time() -> None:
    splits = load_dataset("cifar10_synthetic")
    assert (splits.num_classes, splits.input_shape) == (10, (3, 32, 32))
    assert (len(splits.train), len(splits.test)) == (50_000, 10_000)
    for part in (splits.train, splits.test):
        np.testing.assert_array_equal(np.bincount(part.y), np.full(10, len(part) // 10))
        assert np.isin(part.x[:1000], (0, 255)).mean() < 0.05  # pixels rarely clipped
    train_x, _, _, test_y = _generate_synthetic_cifar10()  # not the disk cache's copy
    np.testing.assert_array_equal(train_x, splits.train.x)
    np.testing.assert_array_equal(test_y, splits.test.y)
    assert (splits.mean, splits.std) == _channel_stats(train_x)  # the kept stats, bit for bit
    assert not np.array_equal(train_x[:1000], splits.test.x[:1000])


def test_synthetic_cifar10_classes_are_learnable_but_not_trivial() -> None:
    """A nearest-class-mean classifier is far above chance and clearly below perfect."""
    splits = load_dataset("cifar10_synthetic")
    x = splits.train.x[:20_000].reshape(20_000, -1).astype(np.float32)
    y = splits.train.y[:20_000]
    means = np.stack([x[y == c].mean(axis=0) for c in range(10)])
    test = splits.test.x[:1000].reshape(1000, -1).astype(np.float32)
    distances = ((test[:, None, :] - means[None]) ** 2).sum(axis=-1)
    accuracy = float((distances.argmin(axis=1) == splits.test.y[:1000]).mean())
    assert 0.5 < accuracy < 0.99


def test_split_is_fixed_across_loads() -> None:
    first = load_dataset("digits")
    _load_cached.cache_clear()
    second = load_dataset("digits")
    assert first is not second
    np.testing.assert_array_equal(first.test.x, second.test.x)
    np.testing.assert_array_equal(first.test.y, second.test.y)
    np.testing.assert_array_equal(first.train.y, second.train.y)


def test_loads_are_cached_and_read_only() -> None:
    splits = load_dataset("digits")
    assert load_dataset("digits") is splits
    assert load_dataset("digits", root=DEFAULT_ROOT) is splits
    assert not splits.train.x.flags.writeable
    with pytest.raises(ValueError):
        splits.test.y[0] = 3


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError, match="'imagenet'") as info:
        load_dataset("imagenet")
    assert all(name in str(info.value) for name in DATASETS)


@pytest.mark.parametrize("name", sorted(TORCHVISION_FOLDERS))
def test_missing_torchvision_files_raise_actionable_error(name: str, tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        load_dataset(name, root=str(tmp_path), download=False)
    message = str(info.value)
    assert str(tmp_path / TORCHVISION_FOLDERS[name]) in message
    assert "dataset.download" in message and "dataset.root" in message
    assert isinstance(info.value, FileNotFoundError)


def test_emnist_is_loaded_upright(tmp_path: Path) -> None:
    raw = tmp_path / "EMNIST" / "raw"
    raw.mkdir(parents=True)
    upright = np.zeros((3, 28, 28), dtype=np.uint8)
    upright[:, 0, :] = 255  # a bar along the top row
    for split, labels in (("train", [0, 5, 46]), ("test", [1, 2, 3])):
        # The EMNIST files store every image transposed.
        _write_idx(raw / f"emnist-balanced-{split}-images-idx3-ubyte", upright.transpose(0, 2, 1))
        _write_idx(raw / f"emnist-balanced-{split}-labels-idx1-ubyte", np.array(labels))
    splits = load_dataset("emnist", root=str(tmp_path))
    assert splits.input_shape == (1, 28, 28)
    assert splits.num_classes == 47
    np.testing.assert_array_equal(splits.train.x[:, 0], upright)
    np.testing.assert_array_equal(splits.test.y, [1, 2, 3])


def test_images_of_another_shape_than_the_data_set_has_are_refused(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", np.zeros((3, 20, 20)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\(1, 20, 20\).*expected \(1, 28, 28\)"):
        load_dataset("mnist", root=str(tmp_path))


def test_missing_tiny_imagenet_explains_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("tiny_imagenet", root=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path / "tiny-imagenet-200") in message
    assert "tiny-imagenet-200.zip" in message and "dataset.root" in message


def _make_tiny_imagenet(root: Path, wnids: list[str], per_class: int) -> None:
    """A miniature Tiny ImageNet folder with the real layout (one grayscale image included)."""
    folder = root / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    annotations = []
    for c, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (64, 64), (c * 40, i * 10, 0)).save(images / f"{wnid}_{i}.JPEG")
        Image.new("L", (64, 64), c * 40).save(folder / "val" / "images" / f"val_{c}.JPEG")
        annotations.append(f"val_{c}.JPEG\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")


def test_tiny_imagenet_from_folder_then_from_cache(tmp_path: Path) -> None:
    wnids = ["n02", "n01", "n03"]
    _make_tiny_imagenet(tmp_path, wnids, per_class=2)
    splits = load_dataset("tiny_imagenet", root=str(tmp_path))
    assert splits.input_shape == (3, 64, 64)
    assert (len(splits.train), len(splits.test)) == (6, 3)
    assert splits.num_classes == 3
    # Classes are numbered in sorted wnid order: val_0 belongs to n02, i.e. class 1.
    np.testing.assert_array_equal(splits.test.y, [1, 0, 2])
    assert len(splits.mean) == 3
    assert (tmp_path / "tiny-imagenet-200.npz").is_file()

    # A fresh process (cleared cache) reads the .npz, even without the folder.
    shutil.rmtree(tmp_path / "tiny-imagenet-200")
    _load_cached.cache_clear()
    again = load_dataset("tiny_imagenet", root=str(tmp_path))
    np.testing.assert_array_equal(again.train.x, splits.train.x)
    np.testing.assert_array_equal(again.test.y, splits.test.y)
