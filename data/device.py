"""A SuperNode's own data (``--node-config 'data-root="/path"'``) instead of a shipped partition.

Two layouts are accepted, both holding images of the run's configured data set shape:

* a folder ``<root>/<label>/<image>.png|jpg|jpeg`` where each ``<label>`` is a class index
  (``0`` .. ``num_classes-1``); indices, not names, because a device often holds only a few of
  the classes and must still agree with the server on what each label means;
* an ``.npz`` file with ``images`` uint8 (N, H, W) or (N, C, H, W) and ``labels`` int (N,).

The client's local train/test split uses the run's ``local_test_fraction`` and the same seeding
as the shipped partitions.
"""

from __future__ import annotations

import stat
from functools import cache
from pathlib import Path
from typing import Protocol

import numpy as np

from data.datasets import ArrayDataset


class _Described(Protocol):
    input_shape: tuple[int, int, int]
    num_classes: int


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LAYOUT = (
    "expected a folder <root>/<class index>/<image>.png|jpg|jpeg (class index 0..num_classes-1) "
    "or an .npz file with 'images' uint8 (N, H, W) or (N, C, H, W) and 'labels' int (N,)"
)


class DeviceDataError(ValueError):
    """The node's ``data-root`` is missing or not in a layout this module reads."""


def check_data_root(data_root: object) -> Path:
    """The absolute path of ``data-root`` once it is a non-empty string naming a folder or .npz."""
    if not isinstance(data_root, str) or not data_root.strip():
        raise DeviceDataError(
            f"node config data-root={data_root!r} must be a non-empty path string, e.g. "
            "--node-config 'data-root=\"/srv/fedsparse/data\"'"
        )
    path = Path(data_root).expanduser().resolve()
    if not path.exists():
        raise DeviceDataError(f"data-root {path} does not exist; {LAYOUT}")
    mode = path.stat().st_mode
    if stat.S_ISDIR(mode):
        return path
    if stat.S_ISREG(mode) and path.suffix == ".npz":
        return path
    raise DeviceDataError(f"data-root {path} is neither a folder nor an .npz file; {LAYOUT}")


@cache
def load_device_data(data_root: str, shape: tuple[int, int, int], num_classes: int) -> ArrayDataset:
    """All of the node's samples, checked against the run's input ``shape`` and classes."""
    path = check_data_root(data_root)
    data = _read_npz(path) if path.is_file() else _read_folder(path, shape[0])
    if len(data) == 0:
        raise DeviceDataError(f"data-root {path} holds no samples; {LAYOUT}")
    if data.x.shape[1:] != shape:
        raise DeviceDataError(
            f"data-root {path} holds images of shape (C, H, W) = {data.x.shape[1:]}, but the "
            f"run's data set has {shape}; resize the images or choose the matching dataset=..."
        )
    bad = data.y[(data.y < 0) | (data.y >= num_classes)]
    if bad.size:
        raise DeviceDataError(
            f"data-root {path} has label {int(bad[0])}, outside the run's {num_classes} classes "
            f"(0..{num_classes - 1}); relabel the data or choose the matching dataset=..."
        )
    return data


def device_split(
    data: ArrayDataset, test_fraction: float, seed: int, client_id: int
) -> tuple[ArrayDataset, ArrayDataset]:
    """(local train, local test): a random ``test_fraction`` (rounded down) is held out."""
    order = np.random.default_rng([seed, client_id]).permutation(len(data))
    num_test = int(len(order) * test_fraction)
    train, test = np.sort(order[num_test:]), np.sort(order[:num_test])
    return ArrayDataset(data.x[train], data.y[train]), ArrayDataset(data.x[test], data.y[test])


def device_data(
    data_root: str, info: _Described, test_fraction: float, seed: int, client_id: int
) -> tuple[ArrayDataset, ArrayDataset]:
    """The node's (train, test) sets, checked against the configured data set's ``info``
    (its ``input_shape`` and ``num_classes``)."""
    data = load_device_data(data_root, info.input_shape, info.num_classes)
    return device_split(data, test_fraction, seed, client_id)


def _read_npz(path: Path) -> ArrayDataset:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            names = list(arrays.files)
            found = {name: arrays[name] for name in ("images", "labels") if name in names}
    except (OSError, ValueError, EOFError) as err:
        raise DeviceDataError(f"{path} is not a readable .npz file ({err}); {LAYOUT}") from err
    if len(found) < 2:
        raise DeviceDataError(f"{path} holds arrays {names}; {LAYOUT}")
    images, labels = found["images"], found["labels"]
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DeviceDataError(
            f"{path}: 'images' is {images.dtype} {images.shape}, not uint8 (N, H, W) or "
            f"(N, C, H, W); {LAYOUT}"
        )
    if labels.dtype.kind not in "iu" or labels.shape != (images.shape[0],):
        raise DeviceDataError(
            f"{path}: 'labels' is {labels.dtype} {labels.shape}, not int ({images.shape[0]},); "
            f"{LAYOUT}"
        )
    if images.ndim == 3:
        images = images[:, None]
    return ArrayDataset(np.ascontiguousarray(images), labels.astype(np.int64))


def _read_folder(root: Path, channels: int) -> ArrayDataset:
    from PIL import Image, UnidentifiedImageError

    files: list[tuple[Path, int]] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir() or not entry.name.isdigit():
            raise DeviceDataError(f"unexpected {entry} in data-root {root}; {LAYOUT}")
        for image in sorted(entry.iterdir()):
            if image.name.startswith("."):
                continue
            if not image.is_file() or image.suffix.lower() not in IMAGE_SUFFIXES:
                raise DeviceDataError(f"unexpected {image} in data-root {root}; {LAYOUT}")
            files.append((image, int(entry.name)))
    mode = "L" if channels == 1 else "RGB"
    images = []
    for path, _ in files:
        try:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert(mode), dtype=np.uint8))
        except (OSError, UnidentifiedImageError) as err:
            raise DeviceDataError(f"cannot read image {path} ({err}); {LAYOUT}") from err
    if not images:
        return ArrayDataset(np.zeros((0, channels, 1, 1), np.uint8), np.zeros(0, np.int64))
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise DeviceDataError(f"images in data-root {root} differ in size {sorted(shapes)}")
    x = np.stack(images)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    labels = np.array([label for _, label in files], dtype=np.int64)
    return ArrayDataset(np.ascontiguousarray(x), labels)
