"""The fast Array codec: byte-identical to Flower's, and never wrong on odd payloads; dot
products that do not depend on the BLAS thread count."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from models import build_model
from strategies.numeric.arrays import (
    to_array,
    to_array_record,
    to_numpy,
    to_numpy_dict,
    to_tensors,
)

ARRAYS = [
    np.arange(10, dtype=np.float32),
    np.zeros((3, 4, 5), dtype=np.float16),
    np.array(5, dtype=np.int64),
    np.ones((0, 3), dtype=np.uint8),
    np.random.default_rng(0).random((7, 3)).astype(">f8"),
    np.packbits(np.ones(13, dtype=bool)),
]


@pytest.mark.parametrize("values", ARRAYS, ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_encoding_is_byte_identical_to_flower(values: np.ndarray) -> None:
    ours, flowers = to_array(values), Array(values)
    assert ours.data == flowers.data
    assert (ours.dtype, tuple(ours.shape), ours.stype) == (
        flowers.dtype,
        tuple(flowers.shape),
        flowers.stype,
    )


@pytest.mark.parametrize("values", ARRAYS, ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_decoding_round_trips(values: np.ndarray) -> None:
    decoded = to_numpy(Array(values))
    assert decoded.dtype == values.dtype and decoded.shape == values.shape
    assert np.array_equal(decoded, values)


def test_non_contiguous_and_fortran_inputs_keep_their_values() -> None:
    fortran = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    strided = np.arange(20.0)[::2]
    for values in (fortran, strided):
        assert np.array_equal(to_numpy(to_array(values)), values)
        assert np.array_equal(to_numpy(Array(values)), values)  # Flower's own bytes too


def test_a_payload_that_lies_about_its_shape_is_decoded_by_what_it_holds() -> None:
    real = Array(np.arange(6, dtype=np.float32))
    liar = Array(dtype=real.dtype, shape=(2, 2), stype=real.stype, data=real.data)
    assert to_numpy(liar).shape == (6,)  # falls back to Flower's parser; validation then rejects


def test_torch_state_dict_round_trip() -> None:
    state = build_model("cnn", (1, 28, 28), 10).state_dict()
    record = to_array_record(state)
    assert record.keys() == ArrayRecord(state).keys()
    assert all(record[k].data == ArrayRecord(state)[k].data for k in state)
    tensors = to_tensors(record)
    assert all(torch.equal(tensors[k], v) for k, v in state.items())
    assert all(np.array_equal(v, state[k].numpy()) for k, v in to_numpy_dict(record).items())


def test_pickling_carries_the_values_beside_the_stream() -> None:
    """Protocol 5 (Ray's) hands the payload over as one out-of-band buffer, not inside the
    stream, and the copy reads back byte for byte."""
    array = to_array(np.arange(100_000, dtype=np.float32))
    buffers: list[pickle.PickleBuffer] = []
    stream = pickle.dumps(array, protocol=5, buffer_callback=buffers.append)
    assert len(stream) < 1_000
    assert [b.raw().nbytes for b in buffers] == [len(array.data)]
    back = pickle.loads(stream, buffers=buffers)
    assert back.data == array.data and back == array
    assert np.array_equal(to_numpy(back), np.arange(100_000, dtype=np.float32))


@pytest.mark.parametrize("copy_", [copy.deepcopy, lambda a: pickle.loads(pickle.dumps(a))])
def test_in_band_copies_keep_the_bytes(copy_) -> None:
    array = to_array(np.arange(10, dtype=np.int16))
    assert copy_(array).data == array.data == Array(np.arange(10, dtype=np.int16)).data


def test_payload_compares_like_bytes() -> None:
    data = to_array(np.arange(4, dtype=np.uint8)).data
    assert data == bytes(data) and bytes(data) == data and len(data) == len(bytes(data))
    assert data != b"other" and (data != bytes(data)) is False
    assert data != 3


def test_flowers_network_encoding_round_trips_our_arrays() -> None:
    """Deployment sends Arrays as Flower's inflatable objects; ours deflate and inflate to the
    same bytes and values."""
    values = np.random.default_rng(0).random((300, 7)).astype(np.float32)
    array = to_array(values)
    back = Array.inflate(array.deflate(), children=array.children)
    assert back.data == array.data and back.object_id == Array(values).object_id
    assert np.array_equal(back.numpy(), values)


_DOTS = """
import numpy as np
from server_app.monitor import aggregation_effectiveness
from strategies.numeric.arrays import dot, l2_norm
from strategies.pseudo_gradient.lbgm import projection
rng = np.random.default_rng(0)
a, b = rng.standard_normal(1_000_003), rng.standard_normal(1_000_003)
values = [dot(a, b), l2_norm(a), *projection(a.astype(np.float32), b.astype(np.float32))]
mean = {"l.weight": a.reshape(1000003, 1)}
values += aggregation_effectiveness(mean, [{"l.weight": 1.0}], [1]).values()
print(" ".join(float(v).hex() for v in values))
"""


@pytest.mark.slow
def test_dot_products_that_reach_results_do_not_depend_on_the_blas_thread_count() -> None:
    """OpenBLAS splits float64 dot products over its threads (1 vs 2 threads differ in the low
    bits); LBGM's projection and the monitor must give the same bits in any process."""
    outputs = set()
    for threads in ("1", "2", "4"):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads}
        run = subprocess.run(
            [sys.executable, "-c", _DOTS],
            env=env,
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            check=True,
        )
        outputs.add(run.stdout)
    assert len(outputs) == 1, outputs
