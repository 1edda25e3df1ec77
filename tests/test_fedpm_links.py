"""FedPM on both links: the coded downlink (strategies.fedpm.theta_codec) is lossless and falls back
to a self-contained stream, and the KLMS uplink works through runs, cohorts and bad streams."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType

from server_app.experiment import initial_arrays
from server_app.inprocess import InProcessGrid
from server_app.replies import stream_replies
from server_app.settings import build_strategy, compose_config
from strategies.core.cohort import ClientDirectory
from strategies.core.job import ClientJob
from strategies.fedpm import theta_codec
from strategies.fedpm.client import received_theta
from strategies.fedpm.klms_codec import encode_masks_klms
from strategies.fedpm.mask_codec import quantize_prior
from strategies.fedpm.shared import EXPORT_FILE, FedPMParams, klms_keys, seed_theta
from tests.fedpm_replies import coded_replies
from tests.runs import FEDPM_TOY_BASE, run_and_read

TOY_RUN = [*FEDPM_TOY_BASE, "strategy.eval_samples=0"]
SAME = ("accuracy", "loss", "fedpm_density", "fedpm_bpp_ideal", "fedpm_bpp_kl", "uplink_bytes")


def _run(tmp_path: Path, name: str, *overrides: str) -> list[dict]:
    return run_and_read([*TOY_RUN, *overrides], tmp_path / name)


# --------------------------------------------------------------------------- the codec
def _theta(seed: int, levels: int = 5, shape=(30, 40)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = quantize_prior(np.linspace(0.02, 0.98, levels))
    return {"w": values[rng.integers(0, levels, shape)], "b": values[rng.integers(0, levels, 7)]}


def _next_round(
    base: dict[str, np.ndarray], seed: int, clients: int = 10
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """θ of a round whose ``clients`` masks were drawn from the kept ``base``, and its counts."""
    rng = np.random.default_rng(seed)
    counts = {k: rng.binomial(clients, v / 65536.0) for k, v in base.items()}
    theta = {k: quantize_prior(0.01 + 0.98 * c / clients) for k, c in counts.items()}
    return theta, counts


def _delta_message(clients: int = 10):
    base, _ = _next_round(_theta(1), 1, clients)
    theta, counts = _next_round(base, 2, clients)
    own = theta_codec.encode(theta)
    delta = theta_codec.encode_delta(theta, (4, base), own, (clients, counts))
    assert delta is not None
    return base, theta, own, delta


@pytest.mark.parametrize("clients", [3, 10, 100, 500])
def test_delta_theta_round_trips_from_the_kept_base_and_is_smaller(clients: int) -> None:
    base, theta, own, delta = _delta_message(clients)
    message = own | delta
    for name, value in theta_codec.decode(message, (4, base)).items():
        np.testing.assert_array_equal(value, theta[name])
    size = sum(message[k].nbytes for k in theta_codec.DELTA)
    assert size < sum(message[k].nbytes for k in theta_codec.SELF_CONTAINED)
    # a fresh client and one holding an older θ decode the self-contained stream
    for held in (None, (2, _theta(9))):
        for name, value in theta_codec.decode(message, held).items():
            np.testing.assert_array_equal(value, theta[name])


def test_delta_alone_needs_the_right_base() -> None:
    base, _, own, delta = _delta_message()
    delta_only = {k: v for k, v in own.items() if k not in theta_codec.SELF_CONTAINED} | delta
    for held in (None, (3, base)):
        with pytest.raises(theta_codec.DownlinkError, match="round 4"):
            theta_codec.decode(delta_only, held)
    other = _theta(5)  # the right round, another θ: the CRC catches it
    with pytest.raises(theta_codec.DownlinkError):
        theta_codec.decode(delta_only, (4, other))


def test_no_delta_without_counts_that_name_the_levels() -> None:
    base, _ = _next_round(_theta(1), 1)
    theta, counts = _next_round(base, 2)
    own = theta_codec.encode(theta)
    shuffled = {k: np.random.default_rng(0).permutation(c) for k, c in counts.items()}
    assert theta_codec.encode_delta(theta, (1, base), own, (10, shuffled)) is None
    assert theta_codec.encode_delta(theta, (1, base), own, (1 << 16, counts)) is None
    assert theta_codec.encode_delta(theta, (1, base), own, (10, counts)) is not None


@pytest.mark.parametrize(
    "damage", ["words", "trials", "spread", "level counts", "level shape", "scalar shape"]
)
def test_a_damaged_delta_theta_is_a_downlink_error(damage: str) -> None:
    base, _, own, delta = _delta_message()
    coded = {k: v for k, v in own.items() if k not in theta_codec.SELF_CONTAINED} | delta
    if damage == "words":
        coded[theta_codec.DELTA_WORDS] = coded[theta_codec.DELTA_WORDS][:-3]
    elif damage == "trials":
        coded[theta_codec.TRIALS] = np.array([0], np.int64)
    elif damage == "spread":
        coded[theta_codec.SPREAD] = np.array([7], np.int64)
    elif damage == "level counts":
        coded[theta_codec.LEVEL_COUNTS] = coded[theta_codec.LEVEL_COUNTS][::-1].copy()
    elif damage == "level shape":
        coded[theta_codec.LEVEL_COUNTS] = coded[theta_codec.LEVEL_COUNTS][:-1]
    else:
        coded[theta_codec.TRIALS] = np.array([10, 10], np.int64)
    with pytest.raises(theta_codec.DownlinkError):
        theta_codec.decode(coded, (4, base))


@pytest.mark.parametrize("damage", ["words", "counts", "crc", "levels", "shape"])
def test_a_damaged_theta_is_a_downlink_error(damage: str) -> None:
    coded = theta_codec.encode(_theta(0))
    if damage == "words":
        coded[theta_codec.WORDS] = coded[theta_codec.WORDS][:-2]
    elif damage == "counts":
        coded[theta_codec.COUNTS] = coded[theta_codec.COUNTS][::-1].copy()
    elif damage == "crc":
        coded[theta_codec.CRC] = coded[theta_codec.CRC] ^ np.uint32(1)
    elif damage == "levels":
        coded[theta_codec.LEVELS] = coded[theta_codec.LEVELS][:-1]
    else:
        coded[theta_codec.SHAPE_PREFIX + "w"] = np.array([30, 41])
    with pytest.raises(theta_codec.DownlinkError):
        theta_codec.decode(coded)


def _first_round(*overrides: str):
    """A toy FedPM server and its round-1 train downlink."""
    cfg = compose_config([*TOY_RUN, *overrides])
    strategy = build_strategy(cfg, ClientDirectory(cfg.num_clients, 1))
    arrays = initial_arrays(cfg)
    return strategy, arrays, strategy.downlink(1, arrays, MessageType.TRAIN)


def test_round_one_sends_the_seed_and_both_ends_hold_the_same_theta() -> None:
    strategy, arrays, record = _first_round()
    assert theta_codec.SEED in record and theta_codec.LEVELS not in record
    assert 8 * record.count_bytes() <= strategy.num_params  # ≤ 1 bit per parameter
    initial = functools.partial(seed_theta, strategy.job)
    received, _ = received_theta(record, None, initial)
    server = strategy.prior(arrays)
    assert list(received) == list(server)
    for name, q in server.items():
        np.testing.assert_array_equal(received[name], q)
    # a model that is not the seed's goes in full (here as uint16: too many distinct values)
    scores = {k: a.numpy().copy() for k, a in arrays.items()}
    first = next(iter(scores))
    scores[first].flat[0] += 1.0
    moved = strategy.downlink(2, ArrayRecord({k: Array(v) for k, v in scores.items()}), "train")
    assert theta_codec.SEED not in moved and moved[first].numpy().dtype == np.uint16


@pytest.mark.parametrize(
    "damage", ["other seed", "no initial", "seed shape", "shape", "crc", "cut"]
)
def test_a_damaged_seed_theta_is_a_downlink_error(damage: str) -> None:
    strategy, _, record = _first_round()
    coded = {k: a.numpy().copy() for k, a in record.items()}
    initial = functools.partial(seed_theta, strategy.job)
    if damage == "other seed":
        coded[theta_codec.SEED] = coded[theta_codec.SEED] + 1
    elif damage == "no initial":
        initial = None
    elif damage == "seed shape":
        coded[theta_codec.SEED] = np.zeros(2, np.int64)
    elif damage == "shape":
        key = next(k for k in coded if k.startswith(theta_codec.SHAPE_PREFIX))
        coded[key] = coded[key] + 1
    elif damage == "crc":
        coded[theta_codec.CRC] = coded[theta_codec.CRC] ^ np.uint32(1)
    else:
        del coded[theta_codec.SEED]
    with pytest.raises(theta_codec.DownlinkError):
        theta_codec.decode(coded, None, initial)


# ------------------------------------------------------------------------------- runs
def test_coded_downlink_gives_the_uint16_run_bit_for_bit_in_fewer_bytes(tmp_path) -> None:
    coded = _run(tmp_path, "coded", "num_rounds=4")
    plain = _run(tmp_path, "plain", "num_rounds=4", "strategy.downlink_coding=plain")
    assert [[r[k] for k in SAME] for r in coded] == [[r[k] for k in SAME] for r in plain]
    assert (tmp_path / "coded" / EXPORT_FILE).read_bytes() == (
        tmp_path / "plain" / EXPORT_FILE
    ).read_bytes()
    assert coded[0]["downlink_bpp"] <= 1 < 16 <= plain[0]["downlink_bpp"]  # the seed alone
    for a, b in zip(coded[1:], plain[1:], strict=True):
        assert a["downlink_bytes"] < b["downlink_bytes"] / 3
        assert a["downlink_bpp"] < 5 < 16 <= b["downlink_bpp"]


def test_a_resumed_run_decodes_every_theta_and_gives_the_same_model(tmp_path) -> None:
    """Resumed after round 2, no client holds a kept θ (self-contained streams, no failure):
    the same numbers as the run without a stop, round 1 the seed alone."""
    klms = "strategy.uplink_coding=klms"
    straight = _run(tmp_path, "straight", "num_rounds=4", klms)
    _run(tmp_path, "split", "num_rounds=2", klms)
    resumed = _run(tmp_path, "split", "num_rounds=4", klms, "resume=true")
    assert [r["failures"] for r in resumed] == [0] * 4
    assert [[r[k] for k in SAME] for r in resumed] == [[r[k] for k in SAME] for r in straight]
    assert resumed[0]["downlink_bpp"] <= 1


def test_klms_runs_reduce_in_cohorts_to_the_same_numbers(tmp_path) -> None:
    """KLMS with nodes of two clients that decode and count their masks equals one client per
    node: the counts are exact, so the whole run is bit for bit the same."""
    keys = (*SAME, "downlink_bytes", "fedpm_bpp_wire")
    single = _run(tmp_path, "k1", "num_rounds=3", "strategy.uplink_coding=klms")
    paired = _run(
        tmp_path, "k2", "num_rounds=3", "strategy.uplink_coding=klms", "engine.clients_per_node=2"
    )
    assert [[r[k] for k in keys] for r in single] == [[r[k] for k in keys] for r in paired]
    for row in single:
        assert row["fedpm_bpp_wire"] < 0.25 * row["fedpm_bpp_ideal"] + 0.1
        assert 0 < row["fedpm_bpp_kl"] < row["fedpm_bpp_ideal"]
    summary = json.loads((tmp_path / "k1" / "summary.json").read_text())
    assert summary["total_bpp"] == pytest.approx(summary["uplink_bpp"] + summary["downlink_bpp"])


@pytest.mark.parametrize("uplink", ["range", "klms"])
def test_reducing_nodes_under_partial_participation_decode_the_coded_theta(
    tmp_path, uplink: str
) -> None:
    """Clients sampled in turn, nodes of two that reduce: a node whose only sampled client
    holds last round's θ used to get the delta alone, which the node's own mask counter
    cannot decode without a client's base (every such round failed). Now no round fails and
    the run equals one client per node, downlink bytes included (each client counts only the
    stream it decodes)."""
    partial = ["num_clients=6", "clients_per_round=3", "num_rounds=5", "partition=iid"]
    coding = f"strategy.uplink_coding={uplink}"
    single = _run(tmp_path, "k1", *partial, coding, "engine.clients_per_node=1")
    paired = _run(tmp_path, "k2", *partial, coding, "engine.clients_per_node=2")
    assert [r["failures"] for r in paired] == [0] * 5
    keys = (*SAME, "downlink_bytes", "clients")
    assert [[r[k] for k in keys] for r in single] == [[r[k] for k in keys] for r in paired]


def test_a_client_that_lost_its_base_fails_once_then_gets_a_self_contained_theta() -> None:
    cfg = compose_config([*TOY_RUN, "num_rounds=4"])
    grid = InProcessGrid(cfg.num_clients)
    strategy = build_strategy(cfg, ClientDirectory(cfg.num_clients, 1))
    arrays, rows = initial_arrays(cfg), []
    for server_round in range(1, 5):
        if server_round == 3:
            grid.restart_node(partition_id=2)  # client 2's kept θ is gone
        messages = strategy.configure_train(server_round, arrays, ConfigRecord(), grid)
        arrays, _ = strategy.aggregate_train(server_round, stream_replies(grid, messages, 60))
        rows.append((strategy.stats.clients, strategy.stats.failures))
    assert rows == [(4, 0), (4, 0), (3, 1), (4, 0)]


# ---------------------------------------------------------------------------- bad streams
def _klms_coded(job: ClientJob, client: int, priors: dict, rng: np.random.Generator):
    """The client's q = θ nudged, KLMS-coded against θ."""
    q = {k: np.clip(p / 65536 + rng.normal(0, 0.05, p.shape), 0, 1) for k, p in priors.items()}
    coded, _ = encode_masks_klms(
        q,
        priors,
        klms_keys(job, client, list(priors)),
        FedPMParams.from_job(job).klms_settings(),
        rng,
    )
    return coded


def _klms_replies(corrupt: dict[int, str], absent: frozenset[int] = frozenset()):
    return coded_replies(_klms_coded, corrupt, absent)


@pytest.mark.parametrize("kind", ["truncate", "extend", "garble", "flag"])
def test_a_bad_klms_stream_is_counted_and_never_aggregated(make_grid, kind: str) -> None:
    results = {}
    for label, handler in (
        ("damaged", _klms_replies({1: kind})),
        ("without", _klms_replies({}, frozenset({1}))),
    ):
        cfg = compose_config([*TOY_RUN, "strategy.uplink_coding=klms"])
        strategy = build_strategy(cfg, ClientDirectory(cfg.num_clients, 1))
        rng = np.random.default_rng(9)
        arrays = ArrayRecord(
            {
                k: Array(rng.normal(scale=3, size=s).astype(np.float32))
                for k, s in strategy.shapes.items()
            }
        )
        grid = make_grid(4, 1, handler)
        replies = grid.send_and_receive(strategy.configure_train(1, arrays, ConfigRecord(), grid))
        new, _ = strategy.aggregate_train(1, replies)
        results[label] = ({k: a.numpy() for k, a in new.items()}, strategy.stats)
    (damaged, stats), (without, reference) = results["damaged"], results["without"]
    for name in damaged:
        np.testing.assert_array_equal(damaged[name], without[name], err_msg=name)
    assert stats.clients == reference.clients == 3 and stats.failures == 1
    assert sum(stats.rejected.values()) == 1
    assert set(stats.rejected) <= {
        "mask-length",
        "mask-flag",
        "mask-crc",
        "klms-blocks",
        "klms-index",
    }
