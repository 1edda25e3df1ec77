"""strategies.core.wire: the cohort key layout, byte accounting and per-client state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from strategies.core.wire import (
    ClientState,
    client_key,
    decoded_tensors,
    pack_clients,
    record_bytes,
    shared_payload_bytes,
    unpack_clients,
)


def _records(client_id: int) -> dict:
    return {
        "arrays": ArrayRecord({"w": Array(np.full((2, 3), client_id, dtype=np.float32))}),
        "metrics": MetricRecord({"num-examples": 10 + client_id, "train-loss": 0.5 * client_id}),
        "config": ConfigRecord({"tag": f"c{client_id}", "flags": [1, 2, client_id]}),
    }


def test_client_key_layout() -> None:
    assert client_key(12, "arrays") == "12/arrays"


def test_pack_unpack_round_trip() -> None:
    per_client = {cid: _records(cid) for cid in (0, 3, 17)}
    content = pack_clients(per_client)
    assert sorted(content.keys()) == sorted(
        f"{cid}/{name}" for cid in (0, 3, 17) for name in ("arrays", "metrics", "config")
    )
    unpacked = unpack_clients(content)
    assert set(unpacked) == {0, 3, 17}
    for cid, records in per_client.items():
        assert set(unpacked[cid]) == set(records)
        for name, record in records.items():
            assert unpacked[cid][name] is record  # the very same record object, not a copy
    np.testing.assert_array_equal(unpacked[17]["arrays"]["w"].numpy(), np.full((2, 3), 17.0))


def test_pack_of_nothing_is_empty() -> None:
    assert len(pack_clients({})) == 0
    assert unpack_clients(RecordDict()) == {}


def test_unpack_ignores_shared_keys() -> None:
    content = pack_clients({5: _records(5)})
    content["arrays"] = ArrayRecord({"w": Array(np.zeros(4, dtype=np.float32))})
    content["config"] = ConfigRecord({"client_ids": [5]})
    unpacked = unpack_clients(content)
    assert list(unpacked) == [5]
    assert set(unpacked[5]) == {"arrays", "metrics", "config"}
    assert unpacked[5]["arrays"] is content["5/arrays"]


def test_unpack_keeps_the_rest_of_the_name_after_the_first_separator() -> None:
    record = MetricRecord({"x": 1.0})
    assert unpack_clients(RecordDict({"4/a/b": record})) == {4: {"a/b": record}}


@pytest.mark.parametrize("key", ["abc/arrays", "-1/arrays", "/arrays", "1x/metrics"])
def test_unpack_rejects_malformed_prefix(key: str) -> None:
    content = RecordDict({key: MetricRecord({"x": 1.0})})
    with pytest.raises(ValueError, match="malformed client record key"):
        unpack_clients(content)


def test_record_bytes_is_sum_of_count_bytes() -> None:
    records = list(_records(2).values())
    assert record_bytes(records) == sum(r.count_bytes() for r in records)
    assert record_bytes([]) == 0
    arrays = records[0]
    # Array data is the serialised .npy buffer: the raw 24 bytes plus its header, plus the key.
    assert arrays.count_bytes() >= 2 * 3 * 4 + len("w")


def _shared_content(client_ids: list[int]) -> RecordDict:
    arrays = ArrayRecord({"w": Array(np.arange(12, dtype=np.float32).reshape(3, 4))})
    config = ConfigRecord({"lr": 0.1, "algorithm": "fedavg", "client_ids": client_ids})
    content = pack_clients({c: {"mask": MetricRecord({"m": 1.0})} for c in client_ids})
    content["arrays"] = arrays
    content["config"] = config
    return content


def test_shared_payload_excludes_routing_list_and_private_records() -> None:
    three, one = _shared_content([1, 2, 3]), _shared_content([9])
    assert shared_payload_bytes(three) == shared_payload_bytes(one)
    expected = (
        three["arrays"].count_bytes()
        + ConfigRecord({"lr": 0.1, "algorithm": "fedavg"}).count_bytes()
    )
    assert shared_payload_bytes(three) == expected
    # The routing list itself does cost bytes, and grows with the cohort.
    assert three["config"].count_bytes() > one["config"].count_bytes()


def test_shared_payload_counts_config_without_client_ids_fully() -> None:
    config = ConfigRecord({"lr": 0.1})
    assert shared_payload_bytes(RecordDict({"config": config})) == config.count_bytes()


def test_shared_payload_excludes_the_client_state_folder() -> None:
    """Where a node keeps client state is engine plumbing: it does not move the byte count."""
    plain = RecordDict({"config": ConfigRecord({"lr": 0.1, "client_ids": [1]})})
    with_folder = RecordDict(
        {"config": ConfigRecord({"lr": 0.1, "client_ids": [1], "state_dir": "/tmp/x/y/z"})}
    )
    assert shared_payload_bytes(with_folder) == shared_payload_bytes(plain)


def test_client_state_isolates_clients_and_persists() -> None:
    node_state = RecordDict()
    one, two = ClientState(node_state, 1), ClientState(node_state, 2)
    record = ArrayRecord({"residual": Array(np.ones(3, dtype=np.float32))})
    one.set("residual", record)
    assert one.get("residual") is record
    assert two.get("residual") is None
    assert node_state["1/residual"] is record
    assert "2/residual" not in node_state
    # A new view on the same node state (next round) sees what was stored.
    assert ClientState(node_state, 1).get("residual") is record
    two.set("residual", MetricRecord({"x": 2.0}))
    assert isinstance(one.get("residual"), ArrayRecord)
    assert unpack_clients(node_state)[2]["residual"]["x"] == 2.0


def test_decoded_tensors_decodes_each_record_once() -> None:
    first = ArrayRecord({"w": Array(np.arange(6, dtype=np.float32).reshape(2, 3))})
    second = ArrayRecord({"w": Array(np.ones((2, 3), dtype=np.float32))})
    tensors = decoded_tensors(first)
    assert decoded_tensors(first) is tensors
    assert torch.equal(tensors["w"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    assert torch.equal(decoded_tensors(second)["w"], torch.ones(2, 3))
    assert torch.equal(decoded_tensors(first)["w"], tensors["w"])
