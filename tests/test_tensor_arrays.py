"""TensorArrays: a reply kept as tensors is counted, checked and summed exactly as its record."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from strategies.core import tensor_arrays
from strategies.core.tensor_arrays import TensorArrays, checked_tensors, wire_records
from strategies.core.update import ARRAYS, ClientUpdate
from strategies.core.validation import ReplyError, arrays_like
from strategies.fedavg import WeightedArrays
from strategies.numeric.arrays import to_array_record
from strategies.numeric.weighted_sum import TensorWeightedSum, WeightedSum


def _state(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=generator),
        "fc.weight": torch.randn(5, 7, generator=generator).t(),  # not C-contiguous
        "bn.running_mean": torch.randn(4, generator=generator).double(),
        "bn.num_batches_tracked": torch.tensor(seed + 3),
        "scalar": torch.tensor(1.5),
    }


def _template(seed: int = 0) -> ArrayRecord:
    return to_array_record(_state(seed))


def test_counted_bytes_are_the_records_and_the_record_is_the_same() -> None:
    arrays = TensorArrays(_state(1))
    record = arrays.to_record()
    assert arrays.count_bytes() == record.count_bytes() == _template(1).count_bytes()
    assert wire_records({ARRAYS: arrays, "other": record})[ARRAYS].count_bytes() == len(
        b"".join(bytes(a.data) for a in record.values())
    ) + sum(map(len, record.keys()))
    for name, values in checked_tensors(arrays, _template()).items():
        np.testing.assert_array_equal(values, record[name].numpy())


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda s: s.pop("scalar"), "names"),
        (lambda s: s.update({"conv.weight": s["conv.weight"][:3]}), "shape"),
        (lambda s: s.update({"conv.weight": s["conv.weight"].double()}), "dtype"),
        (lambda s: s["fc.weight"].__setitem__((0, 0), float("nan")), "non-finite"),
        (lambda s: s["bn.running_mean"].__setitem__(1, float("-inf")), "non-finite"),
    ],
)
@pytest.mark.parametrize("on_host", [True, False])
def test_a_bad_reply_is_refused_with_the_records_reason_and_detail(
    damage, reason: str, on_host: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not on_host:  # take the device path with CPU tensors
        monkeypatch.setattr(tensor_arrays, "HOST_DEVICES", frozenset())
    state = _state(2)
    damage(state)
    with pytest.raises(ReplyError) as as_tensors:
        checked_tensors(TensorArrays(state), _template())
    with pytest.raises(ReplyError) as as_record:
        arrays_like(to_array_record(state), _template())
    assert as_tensors.value.reason == as_record.value.reason == reason
    assert as_tensors.value.detail == as_record.value.detail


def _fold(replies: list[dict], device_path: bool, monkeypatch: pytest.MonkeyPatch):
    """A node's WeightedArrays over ``replies`` (records of TensorArrays or ArrayRecords)."""
    if device_path:
        monkeypatch.setattr(tensor_arrays, "HOST_DEVICES", frozenset())
    running = WeightedArrays(None, _template())  # reads nothing of the job
    norms = []
    for client_id, records in enumerate(replies):
        update = ClientUpdate(client_id, 3 + client_id, None, records)
        update.payload = running.decode(update)
        norms.append(running.delta_norms(update.payload))
        running.add(update)
    return running, norms


def test_tensor_replies_sum_to_the_records_bits_on_host_and_device_paths(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Same partial sums bit for bit (host and device path), same norms on the host path and
    within float32 rounding on the device path; a record among tensor replies keeps order."""
    states = [_state(seed) for seed in range(4)]
    records = [{ARRAYS: to_array_record(s)} for s in states]
    as_records, record_norms = _fold(records, False, monkeypatch)
    mixed = [{ARRAYS: TensorArrays(s)} for s in states]
    mixed[2] = {ARRAYS: to_array_record(states[2])}
    on_host, host_norms = _fold(mixed, False, monkeypatch)
    on_device, device_norms = _fold(mixed, True, monkeypatch)
    assert isinstance(on_host.sum, WeightedSum) and isinstance(on_device.sum, TensorWeightedSum)
    assert host_norms == record_norms
    for expected, got in zip(record_norms, device_norms, strict=True):
        assert got.keys() == expected.keys()
        for name in expected:
            assert got[name] == pytest.approx(expected[name], rel=1e-6)
    expected = as_records.partial()
    for running in (on_host, on_device):
        assert running.weight == as_records.weight
        partial = running.partial()
        assert partial.keys() == expected.keys()
        for name in expected:
            np.testing.assert_array_equal(partial[name], expected[name])
            assert partial[name].dtype == np.float64 and partial[name].shape == expected[name].shape


def test_tensor_weighted_sum_merges_and_means_like_the_host_sum() -> None:
    rng = np.random.default_rng(0)
    parts = [{"w": rng.standard_normal((3, 2)).astype(np.float32)} for _ in range(3)]
    host, device = WeightedSum(), TensorWeightedSum(torch.device("cpu"))
    for weight, values in enumerate(parts, start=1):
        host.add(values, weight)
        device.add({"w": torch.from_numpy(values["w"])}, weight)
    host.merge(host.partial(), host.weight)
    device.merge(device.partial(), device.weight)
    np.testing.assert_array_equal(device.mean()["w"], host.mean()["w"])
    assert device.weight == host.weight == 12
