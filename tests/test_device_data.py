"""A SuperNode's own data (``data-root``): both layouts, the split, and every refusal."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message, MessageType, RecordDict
from PIL import Image

from client_app.app import _client_tensors, evaluate_global, train
from data import federated
from data.device import (
    DeviceDataError,
    check_data_root,
    device_split,
    load_device_data,
)
from server_app.experiment import initial_arrays
from server_app.settings import client_job, compose_config
from strategies.core import job as job_module
from strategies.core.job import DATA_INFO_KEYS, ClientJob
from strategies.core.wire import unpack_clients

SHAPE = (1, 8, 8)


@pytest.fixture(autouse=True)
def fresh_cache():
    load_device_data.cache_clear()


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8), dtype=np.uint8)


def _folder(root: Path, labels: list[int]) -> Path:
    for i, (label, image) in enumerate(zip(labels, _images(len(labels)), strict=True)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(root / str(label) / f"{i}.png")
    return root


def test_image_folder_labels_are_folder_indices(tmp_path: Path) -> None:
    _folder(tmp_path, [3, 3, 7, 9])
    data = load_device_data(str(tmp_path), SHAPE, 10)
    assert data.x.shape == (4, 1, 8, 8) and data.x.dtype == np.uint8
    assert data.y.tolist() == [3, 3, 7, 9]
    assert np.array_equal(data.x[:, 0], _images(4))  # PNG is lossless


def test_npz_with_and_without_channel_axis(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", images=_images(5), labels=np.arange(5, dtype=np.int32))
    np.savez(tmp_path / "b.npz", images=_images(5)[:, None], labels=np.arange(5))
    for name in ("a.npz", "b.npz"):
        data = load_device_data(str(tmp_path / name), SHAPE, 10)
        assert data.x.shape == (5, 1, 8, 8) and data.y.dtype == np.int64


def test_split_holds_out_the_local_test_fraction(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", images=_images(10), labels=np.arange(10) % 10)
    data = load_device_data(str(tmp_path / "d.npz"), SHAPE, 10)
    train, test = device_split(data, 0.2, seed=0, client_id=1)
    assert (len(train), len(test)) == (8, 2)
    assert sorted(train.y.tolist() + test.y.tolist()) == list(range(10))
    again, _ = device_split(data, 0.2, seed=0, client_id=1)
    assert np.array_equal(train.y, again.y)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: _touch(p / "data.txt"), "neither a folder nor an .npz"),
        (lambda p: _save(p / "x.npz", imgs=_images(2)), "holds arrays ['imgs']"),
        (lambda p: _save(p / "x.npz", images=_images(2).astype(np.float32), labels=[0, 1]),
         "not uint8"),
        (lambda p: _save(p / "x.npz", images=_images(2), labels=[0.0, 1.0]), "not int"),
        (lambda p: _save(p / "x.npz", images=_images(2), labels=[0, 12]), "label 12"),
        (lambda p: _save(p / "x.npz", images=np.zeros((2, 9, 9), np.uint8), labels=[0, 1]),
         "(1, 9, 9)"),
        (lambda p: _touch(p / "x.npz"), "not a readable .npz"),
        (lambda p: _folder(p / "d", [1]) and _touch(p / "d" / "notes.txt"), "unexpected"),
        (lambda p: _folder(p / "d", [1]) and _touch(p / "d" / "1" / "x.gif"), "unexpected"),
        (lambda p: _folder(p / "d", [1]) and (p / "d" / "cat").mkdir(), "unexpected"),
        (lambda p: _touch(p / "d" / "1" / "x.png"), "cannot read image"),
        (lambda p: (p / "d").mkdir(), "no samples"),
    ],
)  # fmt: skip
def test_bad_data_root_names_the_path_and_the_layout(tmp_path: Path, make, message: str) -> None:
    make(tmp_path)
    root = next(
        (tmp_path / n for n in ("d", "x.npz", "data.txt") if (tmp_path / n).exists()),
        tmp_path / "missing",
    )
    with pytest.raises(DeviceDataError) as err:
        load_device_data(str(root), SHAPE, 10)
    assert message in str(err.value)
    assert str(root.resolve()) in str(err.value) or str(root) in str(err.value)


@pytest.mark.parametrize("value", ["", "   ", 3, None])
def test_data_root_must_be_a_path_string(value: object) -> None:
    with pytest.raises(DeviceDataError, match="non-empty path string"):
        check_data_root(value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_special_files_are_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.npz")
    with pytest.raises(DeviceDataError, match=r"neither a folder nor an \.npz"):
        check_data_root(str(tmp_path / "pipe.npz"))


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _save(path: Path, **arrays) -> Path:
    np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})
    return path


def _node(node_config: dict) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def _job_message(message_type: str, *overrides: str) -> Message:
    cfg = compose_config(["dataset=digits", "num_clients=2", "clients_per_round=2", *overrides])
    job, arrays = client_job(cfg), initial_arrays(cfg)
    content = RecordDict({"arrays": arrays, "config": job.for_round(1, [1]).to_record()})
    return Message(content, dst_node_id=7, message_type=message_type)


def test_client_app_trains_and_evaluates_on_the_node_data(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", images=_images(50), labels=np.arange(50) % 10)
    node = _node({"partition-id": 1, "num-partitions": 2, "data-root": str(tmp_path / "d.npz")})
    trained = unpack_clients(train(_job_message(MessageType.TRAIN), node).content)
    assert trained[1]["metrics"]["num-examples"] == 40  # local_test_fraction 0.2 held out
    evaluated = unpack_clients(evaluate_global(_job_message(MessageType.EVALUATE), node).content)
    assert evaluated[1]["metrics"]["num-examples"] == 10


def test_client_app_refuses_a_node_data_of_another_shape(tmp_path: Path) -> None:
    np.savez(
        tmp_path / "d.npz", images=np.zeros((4, 28, 28), np.uint8), labels=np.zeros(4, np.int64)
    )
    node = _node({"partition-id": 1, "data-root": str(tmp_path / "d.npz")})
    with pytest.raises(DeviceDataError, match=r"\(1, 28, 28\).*\(1, 8, 8\)"):
        train(_job_message(MessageType.TRAIN), node)


def test_a_described_job_needs_no_configured_data_set_on_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In deployment the job carries the data set's shape, classes and statistics: a node with
    data-root= trains and evaluates with the data set unloadable there, normalised exactly as
    with the statistics it would have computed."""
    np.savez(tmp_path / "d.npz", images=_images(50), labels=np.arange(50) % 10)
    node = _node({"partition-id": 1, "num-partitions": 2, "data-root": str(tmp_path / "d.npz")})
    described = _job_message(MessageType.TRAIN, "engine.describe_data=true")
    evaluate = _job_message(MessageType.EVALUATE, "engine.describe_data=true")
    expected = unpack_clients(train(_job_message(MessageType.TRAIN), node).content)

    def unloadable(*_args, **_kwargs):
        raise AssertionError("the node loaded the configured data set")

    monkeypatch.setattr(federated, "load_dataset", unloadable)
    monkeypatch.setattr(job_module, "dataset_info", unloadable)
    _client_tensors.cache_clear()
    trained = unpack_clients(train(described, Context(**_fresh(node))).content)
    assert trained[1]["metrics"]["train-loss"] == expected[1]["metrics"]["train-loss"]
    assert unpack_clients(evaluate_global(evaluate, node).content)[1]["metrics"]["num-examples"]


def _fresh(node: Context) -> dict:
    return {
        "run_id": node.run_id,
        "node_id": node.node_id,
        "node_config": node.node_config,
        "state": RecordDict(),
        "run_config": {},
    }


def test_the_description_travels_only_when_asked_and_round_trips() -> None:
    """Simulation jobs stay as they were (same bytes); a described job rebuilds exactly."""
    plain = client_job(compose_config(["dataset=digits"]))
    described = client_job(compose_config(["dataset=digits", "engine.describe_data=true"]))
    assert not set(DATA_INFO_KEYS) & set(plain.to_record())
    assert ClientJob.from_record(described.to_record()) == described
    info = described.data_info()
    assert (info.input_shape, info.num_classes) == ((1, 8, 8), 10)
    assert info == plain.data_info()
