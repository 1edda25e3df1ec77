"""Tests for strategies.core.job: the ClientJob wire form."""

from __future__ import annotations

import dataclasses

import pytest
from flwr.app import ConfigRecord

from data.federated import DataSpec
from strategies.core.job import DATA_INFO_KEYS, FULL_BATCH, STRATEGY_PREFIX, ClientJob


def _job(**changes) -> ClientJob:
    values = dict(
        algorithm="fedavg",
        model="cnn",
        dataset="digits",
        partition="dirichlet",
        num_clients=12,
        seed=3,
        alpha=0.3,
        min_size=4,
        classes_per_client=3,
        local_test_fraction=0.1,
        dataset_root="/data/root",
        download=True,
        local_epochs=2,
        local_steps=4,
        batch_size=16,
        lr=0.01,
        momentum=0.9,
        weight_decay=1e-4,
        device="cpu",
        threads=2,
        clients_per_node=3,
        state_dir="/srv/fedsparse/state",
        server_round=5,
        client_ids=(3, 4, 5),
        state_rounds=(4, -1, 2),
        state_floors=(1, -1, 2),
        params={"beta": 0.25, "rank": 4, "enabled": True, "mode": "topk"},
    )
    values.update(changes)
    return ClientJob(**values)


def test_round_trip_with_params_and_client_ids() -> None:
    job = _job()
    record = job.to_record()
    assert isinstance(record, ConfigRecord)
    assert record["client_ids"] == [3, 4, 5]
    assert record[STRATEGY_PREFIX + "beta"] == 0.25
    assert record[STRATEGY_PREFIX + "mode"] == "topk"
    assert "params" not in record
    rebuilt = ClientJob.from_record(record)
    assert rebuilt == job
    assert rebuilt.client_ids == (3, 4, 5) and isinstance(rebuilt.client_ids, tuple)
    assert rebuilt.params == {"beta": 0.25, "rank": 4, "enabled": True, "mode": "topk"}


def test_every_field_but_params_is_on_the_wire() -> None:
    """Every field travels; the data set's description only when the job carries one."""
    described = _job(input_shape=(1, 8, 8), num_classes=10, data_mean=(0.5,), data_std=(0.25,))
    names = {f.name for f in dataclasses.fields(ClientJob)} - {"params"}
    for job, sent in ((described, names), (_job(), names - set(DATA_INFO_KEYS))):
        record = job.to_record()
        assert set(record.keys()) - {k for k in record if k.startswith(STRATEGY_PREFIX)} == sent
        assert ClientJob.from_record(record) == job


def test_empty_strings_are_not_sent_and_come_back_empty() -> None:
    job = _job(
        dataset_root="", state_dir="", params={}, client_ids=(), state_rounds=(), state_floors=()
    )
    record = job.to_record()
    assert "dataset_root" not in record and "state_dir" not in record
    assert "state_rounds" not in record and "state_floors" not in record  # clients keep no state
    assert record["client_ids"] == []
    assert not any(k.startswith(STRATEGY_PREFIX) for k in record)
    # Countable once addressed: Flower cannot count the bytes of an empty string.
    assert job.for_round(1, [0]).to_record().count_bytes() > 0
    rebuilt = ClientJob.from_record(record)
    assert rebuilt == job and rebuilt.dataset_root == "" and rebuilt.state_dir == ""


def test_no_local_steps_is_not_sent_and_comes_back_none() -> None:
    """ConfigRecord holds no None: an unset ``local_steps`` is left out, its default stands."""
    record = _job(local_steps=None).to_record()
    assert "local_steps" not in record
    assert ClientJob.from_record(record).local_steps is None


def test_full_batch_travels_and_means_the_whole_split() -> None:
    job = ClientJob.from_record(_job(batch_size=FULL_BATCH).to_record())
    assert job.batch_size == FULL_BATCH
    assert (job.batch_for(37), job.batch_for(0)) == (37, 1)
    assert _job(batch_size=16).batch_for(37) == 16


def test_unknown_key_raises() -> None:
    record = _job().to_record()
    record["bogus"] = 1
    with pytest.raises(ValueError, match="unknown key 'bogus'"):
        ClientJob.from_record(record)


def test_params_key_itself_is_unknown() -> None:
    record = _job().to_record()
    record["params"] = "x"
    with pytest.raises(ValueError, match="unknown key 'params'"):
        ClientJob.from_record(record)


@pytest.mark.parametrize("missing", ["algorithm", "num_clients", "seed"])
def test_missing_required_key_raises(missing: str) -> None:
    record = _job().to_record()
    del record[missing]
    with pytest.raises(ValueError, match="incomplete client job") as info:
        ClientJob.from_record(record)
    assert missing in str(info.value)


def test_missing_optional_key_takes_default() -> None:
    record = _job().to_record()
    del record["lr"]
    assert ClientJob.from_record(record).lr == ClientJob.__dataclass_fields__["lr"].default


def test_for_round_sets_round_and_ids_only() -> None:
    job = _job(server_round=0, client_ids=())
    addressed = job.for_round(9, [7, 8])
    assert addressed.server_round == 9
    assert addressed.client_ids == (7, 8)
    assert dataclasses.replace(addressed, server_round=0, client_ids=()) == job
    assert job.server_round == 0 and job.client_ids == ()  # the original is untouched


def test_data_spec_maps_fields() -> None:
    spec = _job().data_spec()
    assert spec == DataSpec(
        dataset="digits",
        partition="dirichlet",
        num_clients=12,
        seed=3,
        alpha=0.3,
        min_size=4,
        classes_per_client=3,
        local_test_fraction=0.1,
        root="/data/root",
        download=True,
    )
    assert _job(dataset_root="").data_spec().root is None


def test_data_spec_ignores_round_and_cohort() -> None:
    job = _job()
    assert job.for_round(1, [0]).data_spec() == job.for_round(2, [5, 6]).data_spec()
