"""Tests for FedAvg and the cohort-aware base strategy, driven through a fake Grid."""

from __future__ import annotations

import random

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
)

from strategies.core.cohort import ClientDirectory
from strategies.core.job import ClientJob
from strategies.core.strategy import ClientUpdate
from strategies.core.validation import ReplyError, all_finite, arrays_like
from strategies.core.wire import (
    pack_clients,
    record_bytes,
    shared_payload_bytes,
    unpack_clients,
)
from strategies.fedavg import FedAvg
from strategies.numeric import slices
from strategies.numeric.arrays import l2_norm
from tests.test_weighted_sum import weighted_mean

NPY_HEADER_MAX = 256  # generous bound on the .npy header + key length per array


def test_for_each_slice_covers_every_element_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slices, "MIN_SLICE", 3)
    monkeypatch.setattr(slices, "THREADS", 4)
    for size in (0, 1, 5, 12, 13, 1000):
        seen = np.zeros(size, dtype=int)

        def mark(part: slice, seen: np.ndarray = seen) -> None:
            seen[part] += 1

        slices.for_each_slice(size, mark)
        assert (seen == 1).all(), size


def test_for_each_slice_reraises_errors() -> None:
    def fail(part: slice) -> None:
        raise KeyError(part)

    with pytest.raises(KeyError):
        slices.for_each_slice(1 << 20, fail)


@pytest.fixture(params=[1, 1 << 30], ids=["threaded", "serial"])
def four_cpus(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four CPUs, and arrays handed to threads from one element on, or never."""
    monkeypatch.setattr(slices, "MIN_SLICE", request.param)
    monkeypatch.setattr(slices, "MIN_MAPPED", request.param)
    monkeypatch.setattr(slices, "THREADS", 4)


def test_map_arrays_gives_every_result_in_the_given_order(four_cpus: None) -> None:
    sizes = {"small": 1, "big": 100, "mid": 10, "empty": 0}
    result = slices.map_arrays(lambda name: (name, sizes[name] * 2), sizes)
    assert list(result) == list(sizes)
    assert result == {name: (name, size * 2) for name, size in sizes.items()}


def test_map_arrays_raises_the_first_error_in_order_after_all_ran(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(slices, "MIN_MAPPED", 1)
    monkeypatch.setattr(slices, "THREADS", 4)
    ran: list[str] = []

    def work(name: str) -> None:
        ran.append(name)
        if name != "a":
            raise KeyError(name)

    with pytest.raises(KeyError, match="b"):
        slices.map_arrays(work, {"a": 5, "b": 1, "c": 9})
    assert sorted(ran) == ["a", "b", "c"]


# ------------------------------------------------------------------------------ strategy helpers
def _strategy(job: ClientJob, clients_per_round: int, min_replies: int = 1) -> FedAvg:
    directory = ClientDirectory(job.num_clients, job.clients_per_node, timeout_s=5)
    return FedAvg(job, directory, clients_per_round, num_rounds=3, min_replies=min_replies)


def _client_arrays(template: ArrayRecord, client_id: int) -> dict[str, np.ndarray]:
    """A plausible trained model of ``client_id``: the template moved by a client-specific step."""
    rng = np.random.default_rng(100 + client_id)
    out = {}
    for name, array in template.items():
        values = array.numpy()
        if values.dtype.kind == "f":
            out[name] = (values + rng.standard_normal(values.shape)).astype(values.dtype)
        else:
            out[name] = np.asarray(values + client_id)
    return out


def _reply(msg: Message, per_client: dict[int, dict]) -> Message:
    return Message(pack_clients(per_client), reply_to=msg)


def _good_records(template: ArrayRecord, client_id: int) -> dict:
    arrays = _client_arrays(template, client_id)
    return {
        "arrays": ArrayRecord({n: Array(v) for n, v in arrays.items()}),
        "metrics": MetricRecord(
            {
                "num-examples": 10 * (client_id + 1),
                "train-loss": 0.1 * client_id,
                "train-s": 0.5 if client_id else float("nan"),  # a bogus time counts as 0
            }
        ),
    }


def _cohort(msg: Message) -> list[int]:
    return list(ClientJob.from_record(msg.content["config"]).client_ids)


def _replies(
    messages: list[Message], template: ArrayRecord, records=_good_records
) -> list[Message]:
    return [_reply(m, {c: records(template, c) for c in _cohort(m)}) for m in messages]


def _expected(template: ArrayRecord, client_ids: list[int]) -> dict[str, np.ndarray]:
    return weighted_mean(
        [_client_arrays(template, c) for c in sorted(client_ids)],
        [10 * (c + 1) for c in sorted(client_ids)],
    )


def _assert_record_equals(record: ArrayRecord, expected: dict[str, np.ndarray]) -> None:
    assert list(record.keys()) == list(expected)
    for name, values in expected.items():
        got = record[name].numpy()
        assert got.dtype == values.dtype and got.shape == values.shape
        np.testing.assert_array_equal(got, values)


# ------------------------------------------------------------------------------- configure_train
@pytest.mark.parametrize(
    ("num_clients", "per_node", "per_round"), [(6, 1, 4), (10, 3, 7), (5, 2, 5)]
)
def test_configure_train_one_message_per_node(
    make_grid, make_job, model_arrays, num_clients: int, per_node: int, per_round: int
) -> None:
    job = make_job(num_clients, per_node, params={})
    strategy = _strategy(job, per_round)
    grid = make_grid(num_clients, per_node)
    arrays = model_arrays(0)
    messages = list(strategy.configure_train(3, arrays, ConfigRecord(), grid))

    sampled = strategy.engine.sample_clients(3, 0)
    assert len(sampled) == per_round
    groups = strategy.directory.group_by_node(sampled)
    assert sorted(m.metadata.dst_node_id for m in messages) == sorted(groups)
    shared_total = 0
    for msg in messages:
        assert msg.metadata.message_type == MessageType.TRAIN
        assert msg.content["arrays"] is arrays
        sent_job = ClientJob.from_record(msg.content["config"])
        assert sent_job == job.for_round(3, groups[msg.metadata.dst_node_id])
        assert unpack_clients(msg.content) == {}  # FedAvg sends nothing client-specific
        shared = shared_payload_bytes(msg.content)
        config = {k: v for k, v in msg.content["config"].items() if k != "client_ids"}
        assert shared == arrays.count_bytes() + ConfigRecord(config).count_bytes()
        shared_total += shared * len(sent_job.client_ids)
    assert strategy.stats.sampled == per_round
    assert strategy.stats.downlink_bytes == shared_total
    # Every client pays for the same shared payload.
    assert shared_total == per_round * shared_payload_bytes(messages[0].content)


def test_configure_evaluate_uses_an_independent_sample(make_grid, make_job, model_arrays) -> None:
    strategy = _strategy(make_job(20, 1), 5)
    grid = make_grid(20, 1)
    train = list(strategy.configure_train(1, model_arrays(0), ConfigRecord(), grid))
    evaluate = list(strategy.configure_evaluate(1, model_arrays(0), ConfigRecord(), grid))
    assert all(m.metadata.message_type == MessageType.EVALUATE for m in evaluate)
    assert strategy.evaluate_stats.sampled == 5 and strategy.stats.sampled == 5
    assert sorted(c for m in evaluate for c in _cohort(m)) == strategy.engine.sample_clients(1, 1)
    assert sorted(c for m in train for c in _cohort(m)) == strategy.engine.sample_clients(1, 0)


# ------------------------------------------------------------------------------- sample_clients
def test_sample_clients_deterministic_varies_and_sized(make_grid, make_job) -> None:
    job = make_job(30, 1)
    first, second = _strategy(job, 8), _strategy(job, 8)
    for strategy in (first, second):
        strategy.directory.refresh(make_grid(30, 1))
    rounds = [first.engine.sample_clients(r, 0) for r in range(1, 6)]
    assert rounds == [second.engine.sample_clients(r, 0) for r in range(1, 6)]
    assert rounds[0] == first.engine.sample_clients(1, 0)
    assert len({tuple(r) for r in rounds}) == 5  # differs across rounds
    for sample in rounds:
        assert len(sample) == 8 == len(set(sample))
        assert sample == sorted(sample)
        assert set(sample) <= set(range(30))
    other_seed = _strategy(make_job(30, 1, seed=8), 8)
    other_seed.directory.refresh(make_grid(30, 1))
    assert [other_seed.engine.sample_clients(r, 0) for r in range(1, 6)] != rounds


def test_sample_clients_capped_by_availability(make_grid, make_job) -> None:
    strategy = _strategy(make_job(4, 1), 10)
    strategy.directory.refresh(make_grid(4, 1))
    assert strategy.engine.sample_clients(1, 0) == [0, 1, 2, 3]


# ------------------------------------------------------------------------------ aggregate_train
@pytest.fixture
def round_setup(make_grid, make_job, model_arrays):
    """A configured round: 6 clients, 2 per node, all 6 sampled."""

    def build(min_replies: int = 1):
        strategy = _strategy(make_job(6, 2), 6, min_replies=min_replies)
        template = model_arrays(0)
        messages = list(strategy.configure_train(1, template, ConfigRecord(), make_grid(6, 2)))
        return strategy, template, messages

    return build


def test_aggregate_train_is_the_weighted_mean(round_setup) -> None:
    strategy, template, messages = round_setup()
    assert len(messages) == 3
    replies = _replies(messages, template)
    arrays, metrics = strategy.aggregate_train(1, replies)
    _assert_record_equals(arrays, _expected(template, list(range(6))))
    assert metrics["clients"] == 6
    stats = strategy.stats
    assert (stats.clients, stats.failures, sum(stats.rejected.values())) == (6, 0, 0)
    weights = [10 * (c + 1) for c in range(6)]
    losses = [0.1 * c for c in range(6)]
    assert stats.train_loss == pytest.approx(np.dot(weights, losses) / sum(weights), rel=1e-12)
    metrics_line = stats.to_metrics()
    assert metrics_line["clients"] == 6 and metrics_line["rejected"] == {}
    assert metrics_line["client_train_s"] == pytest.approx(2.5)


def test_monitor_inputs_are_each_clients_delta_norm_and_their_weighted_mean(round_setup) -> None:
    strategy, template, messages = round_setup()
    strategy.aggregate_train(1, _replies(messages, template))
    base = {n: a.numpy() for n, a in template.items()}
    floats = [n for n, v in base.items() if v.dtype.kind == "f"]
    deltas = [{n: _client_arrays(template, c)[n] - base[n] for n in floats} for c in range(6)]
    for update, delta in zip(strategy.last_updates, deltas, strict=True):
        assert update.delta_norms == {n: l2_norm(delta[n]) for n in floats}
    shares = np.array([10 * (c + 1) for c in range(6)]) / sum(10 * (c + 1) for c in range(6))
    mean = strategy.mean_client_delta()
    assert sorted(mean) == sorted(floats)
    for name in floats:
        by_hand = sum(s * d[name].astype(np.float64) for s, d in zip(shares, deltas, strict=True))
        np.testing.assert_allclose(mean[name], by_hand, rtol=1e-5, atol=1e-6)


def test_uplink_bytes_are_counted_per_client(round_setup) -> None:
    strategy, template, messages = round_setup()
    replies = _replies(messages, template)
    expected = sum(
        record_bytes(records.values())
        for reply in replies
        for records in unpack_clients(reply.content).values()
    )
    strategy.aggregate_train(1, replies)
    assert strategy.stats.uplink_bytes == expected
    raw = sum(a.numpy().nbytes for a in template.values())
    arrays_bytes = sum(
        records["arrays"].count_bytes()
        for reply in replies
        for records in unpack_clients(reply.content).values()
    )
    assert 6 * raw <= arrays_bytes <= 6 * (raw + NPY_HEADER_MAX * len(template))
    assert strategy.stats.uplink_bytes > arrays_bytes  # metrics are counted too


def test_uplink_counts_bytes_of_rejected_replies(round_setup) -> None:
    strategy, template, messages = round_setup()

    def nan_loss(template: ArrayRecord, cid: int) -> dict:
        records = _good_records(template, cid)
        records["metrics"]["train-loss"] = float("nan")
        return records

    replies = _replies(messages, template, nan_loss)
    expected = sum(
        record_bytes(r.values()) for m in replies for r in unpack_clients(m.content).values()
    )
    assert strategy.aggregate_train(1, replies).arrays is None
    assert strategy.stats.uplink_bytes == expected
    assert strategy.stats.rejected == {"metrics": 6}


def _with_nan(template, cid):
    records = _good_records(template, cid)
    values = records["arrays"]["fc.weight"].numpy().copy()
    values[0, 0] = np.nan
    records["arrays"]["fc.weight"] = Array(values)
    return records


def _with_wrong_shape(template, cid):
    records = _good_records(template, cid)
    records["arrays"]["fc.weight"] = Array(np.zeros((4, 3), dtype=np.float32))
    return records


def _with_wrong_dtype(template, cid):
    records = _good_records(template, cid)
    records["arrays"]["fc.weight"] = Array(np.zeros((3, 4), dtype=np.float64))
    return records


def _without_num_examples(template, cid):
    records = _good_records(template, cid)
    del records["metrics"]["num-examples"]
    return records


def _with_zero_examples(template, cid):
    records = _good_records(template, cid)
    records["metrics"]["num-examples"] = 0
    return records


def _with_fractional_examples(template, cid):
    records = _good_records(template, cid)
    records["metrics"]["num-examples"] = 2.5
    return records


def _without_arrays(template, cid):
    records = _good_records(template, cid)
    del records["arrays"]
    return records


def _without_metrics(template, cid):
    records = _good_records(template, cid)
    del records["metrics"]
    return records


def _with_extra_array(template, cid):
    records = _good_records(template, cid)
    records["arrays"]["extra"] = Array(np.zeros(1, dtype=np.float32))
    return records


def _with_infinite_loss(template, cid):
    records = _good_records(template, cid)
    records["metrics"]["train-loss"] = float("inf")
    return records


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (_with_nan, "non-finite"),
        (_with_wrong_shape, "shape"),
        (_with_wrong_dtype, "dtype"),
        (_without_num_examples, "num-examples"),
        (_with_zero_examples, "num-examples"),
        (_with_fractional_examples, "num-examples"),
        (_without_arrays, "missing-record"),
        (_without_metrics, "missing-record"),
        (_with_extra_array, "names"),
        (_with_infinite_loss, "metrics"),
    ],
)
def test_bad_reply_is_dropped_and_counted(round_setup, corrupt, reason: str) -> None:
    strategy, template, messages = round_setup()
    bad = 3

    def records(template: ArrayRecord, cid: int) -> dict:
        return corrupt(template, cid) if cid == bad else _good_records(template, cid)

    arrays, metrics = strategy.aggregate_train(1, _replies(messages, template, records))
    good = [c for c in range(6) if c != bad]
    _assert_record_equals(arrays, _expected(template, good))
    assert all(np.isfinite(a.numpy()).all() for a in arrays.values())
    assert metrics["clients"] == 5
    assert strategy.stats.failures == 1
    assert strategy.stats.rejected == {reason: 1}
    assert np.isfinite(strategy.stats.train_loss)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_num_examples_is_dropped(round_setup, value: float) -> None:
    strategy, template, messages = round_setup()

    def records(template: ArrayRecord, cid: int) -> dict:
        out = _good_records(template, cid)
        if cid == 0:
            out["metrics"]["num-examples"] = value
        return out

    arrays, _ = strategy.aggregate_train(1, _replies(messages, template, records))
    _assert_record_equals(arrays, _expected(template, [1, 2, 3, 4, 5]))
    assert strategy.stats.rejected == {"num-examples": 1}


def test_error_reply_fails_its_whole_cohort(round_setup) -> None:
    strategy, template, messages = round_setup()
    failed = messages[1]
    lost = _cohort(failed)
    assert len(lost) == 2
    replies = _replies(messages, template)
    replies[1] = Message(Error(code=0, reason="boom"), reply_to=failed)
    assert replies[1].has_error()
    arrays, _ = strategy.aggregate_train(1, replies)
    _assert_record_equals(arrays, _expected(template, [c for c in range(6) if c not in lost]))
    assert strategy.stats.failures == 2
    assert strategy.stats.clients == 4
    assert strategy.stats.rejected == {}


def test_missing_node_reply_counts_as_failures(round_setup) -> None:
    strategy, template, messages = round_setup()
    replies = _replies(messages, template)
    lost = _cohort(messages[0])
    arrays, _ = strategy.aggregate_train(1, replies[1:])
    _assert_record_equals(arrays, _expected(template, [c for c in range(6) if c not in lost]))
    assert strategy.stats.failures == len(lost) == 2
    assert strategy.stats.clients == 4


def test_client_missing_from_its_node_reply_is_a_failure(round_setup) -> None:
    strategy, template, messages = round_setup()
    cohort = _cohort(messages[0])
    replies = _replies(messages, template)
    replies[0] = _reply(messages[0], {cohort[0]: _good_records(template, cohort[0])})
    strategy.aggregate_train(1, replies)
    assert strategy.stats.failures == 1
    assert strategy.stats.rejected == {"missing-record": 1}


def test_unsolicited_records_are_ignored(round_setup) -> None:
    strategy, template, messages = round_setup()
    replies = _replies(messages, template)
    # A node also answers for a client it was not asked about (and a duplicate reply comes in).
    stray = {
        99: _good_records(template, 99),
        **{c: _good_records(template, c) for c in _cohort(messages[0])},
    }
    replies[0] = _reply(messages[0], stray)
    replies.append(_reply(messages[0], stray))
    arrays, metrics = strategy.aggregate_train(1, replies)
    _assert_record_equals(arrays, _expected(template, list(range(6))))
    assert metrics["clients"] == 6 and strategy.stats.failures == 0


def test_too_few_replies_returns_none(round_setup) -> None:
    strategy, template, messages = round_setup(min_replies=5)
    replies = _replies(messages, template)
    assert strategy.aggregate_train(1, replies[1:]).arrays is None
    assert strategy.stats.clients == 4 and strategy.stats.failures == 2

    strategy, template, messages = round_setup(min_replies=6)
    arrays, _ = strategy.aggregate_train(1, _replies(messages, template))
    assert arrays is not None


def test_reply_order_does_not_change_the_aggregate(round_setup) -> None:
    results = []
    for seed in range(4):
        strategy, template, messages = round_setup()
        replies = _replies(messages, template)
        random.Random(seed).shuffle(replies)
        arrays, _ = strategy.aggregate_train(1, replies)
        results.append({n: a.numpy() for n, a in arrays.items()})
    for other in results[1:]:
        for name, values in results[0].items():
            assert values.tobytes() == other[name].tobytes()


def _logged(strategy: FedAvg, replies: list[Message]) -> tuple[list, object]:
    """A log of replies handed over and clients folded, and the replies as a logging stream."""
    log: list = []
    fold = strategy.fold

    def logging_fold(update) -> None:
        log.append(update.client_id)
        fold(update)

    strategy.fold = logging_fold

    def stream():
        for reply in replies:
            log.append(f"node {reply.metadata.src_node_id - 1000}")
            yield reply

    return log, stream()


def test_updates_are_folded_in_client_order_as_soon_as_earlier_nodes_are_in(round_setup) -> None:
    strategy, template, messages = round_setup()  # nodes 0, 1, 2 host clients 0-1, 2-3, 4-5
    replies = _replies(messages, template)
    log, stream = _logged(strategy, [replies[2], replies[0], replies[1]])
    arrays, _ = strategy.aggregate_train(1, stream)
    assert log == ["node 2", "node 0", 0, 1, "node 1", 2, 3, 4, 5]
    _assert_record_equals(arrays, _expected(template, list(range(6))))
    assert all(u.payload is None and u.records == {} for u in strategy.last_updates)
    assert [u.client_id for u in strategy.last_updates] == list(range(6))  # metrics stay


def test_a_failed_silent_or_repeated_node_does_not_hold_back_the_others(round_setup) -> None:
    strategy, template, messages = round_setup()
    replies = _replies(messages, template)
    failed = Message(Error(code=0, reason="boom"), reply_to=messages[1])
    log, stream = _logged(strategy, [replies[2], failed, replies[2]])  # node 0 never replies
    arrays, _ = strategy.aggregate_train(1, stream)
    assert log == ["node 2", "node 1", "node 2", 4, 5]  # node 0 given up when the round ends
    _assert_record_equals(arrays, _expected(template, [4, 5]))
    assert strategy.stats.failures == 4


def test_with_a_weight_cap_every_update_is_held_then_folded_alike(round_setup) -> None:
    streamed, template, messages = round_setup()
    expected, _ = streamed.aggregate_train(1, _replies(messages, template))
    capped, template, messages = round_setup()
    capped.engine.max_client_weight = 100.0  # needs every claim's median before folding
    log, stream = _logged(capped, _replies(messages, template))
    arrays, _ = capped.aggregate_train(1, stream)
    assert log == ["node 0", "node 1", "node 2", 0, 1, 2, 3, 4, 5]
    for name, values in expected.items():
        assert values.numpy().tobytes() == arrays[name].numpy().tobytes()


@pytest.mark.parametrize(
    ("claims", "kept"),
    [([288, 288, 288_000, 288_000], [0, 1]), ([288, 300, 310, 288_000, 288_000], [0, 1, 2])],
)
def test_weight_cap_holds_while_inflated_claims_are_at_most_half(
    make_job, claims: list[int], kept: list[int]
) -> None:
    """Against the lower median: two honest and two inflated claims (the mean of the middle
    two, 144,144, would make each inflated claim look 2x) still drop the inflated ones."""
    strategy = _strategy(make_job(len(claims), 1), len(claims))
    strategy.engine.max_client_weight = 5.0
    updates = [ClientUpdate(c, n, None, {}) for c, n in enumerate(claims)]
    assert [u.client_id for u in strategy.engine.drop_heavy(updates, strategy.stats)] == kept
    assert strategy.stats.rejected["weight"] == 2


def test_fedavg_aggregates_a_batchnorm_counter(make_grid, make_job) -> None:
    strategy = _strategy(make_job(2, 1), 2)
    template = ArrayRecord(
        {
            "bn.weight": Array(np.ones(2, dtype=np.float32)),
            "bn.num_batches_tracked": Array(np.array(0, dtype=np.int64)),
        }
    )
    messages = list(strategy.configure_train(1, template, ConfigRecord(), make_grid(2, 1)))
    arrays, _ = strategy.aggregate_train(1, _replies(messages, template))
    _assert_record_equals(arrays, _expected(template, [0, 1]))


def test_aggregate_before_configure_has_no_template(make_job) -> None:
    strategy = _strategy(make_job(4, 1), 4)
    with pytest.raises(RuntimeError, match="no round configured"):
        _ = strategy.global_arrays


def test_aggregate_evaluate_weighted(make_grid, make_job, model_arrays) -> None:
    strategy = _strategy(make_job(4, 2), 4)
    messages = list(
        strategy.configure_evaluate(2, model_arrays(0), ConfigRecord(), make_grid(4, 2))
    )

    def metrics(cid: int) -> dict:
        return {
            "metrics": MetricRecord(
                {"num-examples": cid + 1, "loss": float(cid), "accuracy": 0.25 * cid}
            )
        }

    replies = [_reply(m, {c: metrics(c) for c in _cohort(m)}) for m in messages]
    result = strategy.aggregate_evaluate(2, replies)
    # weights 1..4: loss = (0*1 + 1*2 + 2*3 + 3*4) / 10 = 2.0, accuracy = 0.25 * 2.0
    assert result["fed_loss"] == pytest.approx(2.0)
    assert result["fed_accuracy"] == pytest.approx(0.5)
    assert strategy.evaluate_stats.clients == 4


def test_unknown_strategy_parameter_is_rejected(make_job) -> None:
    with pytest.raises(TypeError, match="bogus"):
        FedAvg(make_job(), ClientDirectory(6, 1), 2, num_rounds=3, bogus=1)


@pytest.mark.parametrize(
    ("values", "finite"),
    [
        (np.array([1.0, -2.0, 3.5], dtype=np.float32), True),
        (np.array([1.0, np.nan], dtype=np.float32), False),
        (np.array([np.inf, -np.inf], dtype=np.float64), False),  # the sum is NaN
        (np.array([-np.inf, 1.0], dtype=np.float16), False),
        (np.full(4, 3e38, dtype=np.float32), True),  # the sum overflows, every entry is finite
        (np.full(3, 6e4, dtype=np.float16), True),
        (np.zeros((0, 3), dtype=np.float32), True),
    ],
)
def test_all_finite_agrees_with_isfinite(values: np.ndarray, finite: bool) -> None:
    assert all_finite(values) is finite
    assert finite == bool(np.isfinite(values).all())


def test_arrays_like_names_the_first_non_finite_array_on_threads_or_not(four_cpus: None) -> None:
    names = ["a", "b", "c", "d"]
    template = ArrayRecord({n: Array(np.zeros(50, dtype=np.float32)) for n in names})
    good = {n: np.full(50, i, dtype=np.float32) for i, n in enumerate(names)}
    decoded = arrays_like(ArrayRecord({n: Array(v) for n, v in good.items()}), template)
    assert list(decoded) == names
    for name in names:
        np.testing.assert_array_equal(decoded[name], good[name])
    bad = {**good, "b": np.full(50, np.nan, dtype=np.float32), "d": np.full(50, np.inf, np.float32)}
    with pytest.raises(ReplyError, match="b holds NaN or Inf"):
        arrays_like(ArrayRecord({n: Array(v) for n, v in bad.items()}), template)
