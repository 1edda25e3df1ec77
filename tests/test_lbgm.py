"""LBGM: projection identities, reuse on a constant direction, the version protocol,
stacking on top-k, FedAvg equivalence, store backends, config errors and uplink savings."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord

import models
from client_app.app import client_context
from data.federated import dataset_info
from models.training import TrainResult
from server_app.checkpoint import load_checkpoint
from server_app.experiment import run_experiment
from server_app.inprocess import InProcessGrid
from server_app.results import read_metrics
from server_app.settings import ConfigError, build_strategy, compose_config
from strategies.core.cohort import ClientDirectory
from strategies.core.job import ClientJob
from strategies.core.update import CONFIG, METRICS
from strategies.core.wire import ClientState, RecordDict, pack_clients, unpack_clients
from strategies.numeric.arrays import l2_norm
from strategies.numeric.weighted_sum import WeightedSum
from strategies.pseudo_gradient.client import PseudoGradientClient
from strategies.pseudo_gradient.compression import topk_count
from strategies.pseudo_gradient.lbg_book import INDEX, ClientLBGs
from strategies.pseudo_gradient.lbgm import LBGM, projection
from strategies.pseudo_gradient.server import Scaled
from tests.runs import run_and_read

TOY_RUN = [
    "dataset=digits",
    "num_clients=3",
    "clients_per_round=3",
    "num_rounds=3",
    "plots=false",
    "federated_eval=false",
]


# --------------------------------------------------------------------------- projection
def test_rho_is_the_least_squares_multiplier_and_e_its_relative_error() -> None:
    rng = np.random.default_rng(0)
    g, lbg = rng.standard_normal(50_000), rng.standard_normal(50_000)
    g = (0.3 * lbg + g).astype(np.float32)  # e ≈ 0.92: a real direction, not orthogonal noise
    lbg = lbg.astype(np.float32)
    rho, e = projection(g, lbg)
    g64, b64 = g.astype(np.float64), lbg.astype(np.float64)
    best = np.linalg.lstsq(b64[:, None], g64, rcond=None)[0][0]
    assert rho == pytest.approx(best, rel=1e-5)  # float32 dot products
    residual = g64 - best * b64
    assert e == pytest.approx(residual @ residual / (g64 @ g64), rel=1e-5)
    for other in (rho * 0.9, rho * 1.1, rho + 0.01):
        assert np.sum((g64 - other * b64) ** 2) > residual @ residual


def test_projection_guards_zero_vectors() -> None:
    assert projection(np.ones(4, np.float32), np.zeros(4, np.float32)) is None
    assert projection(np.zeros(4, np.float32), np.ones(4, np.float32)) == (0.0, 0.0)
    assert projection(3 * np.ones(4, np.float32), np.ones(4, np.float32)) == (3.0, 0.0)
    huge = np.full(4, 1e30, np.float32)  # finite, but its squares overflow float32
    assert projection(huge, np.ones(4, np.float32)) is None


# ------------------------------------------------------------ direct server/client rounds
class Federation:
    """An Lbgm strategy and its clients wired by hand: clients 'train' by a chosen step."""

    def __init__(self, make_grid, *overrides: str, clients: int = 3) -> None:
        cfg = compose_config(
            [*TOY_RUN, f"num_clients={clients}", f"clients_per_round={clients}", *overrides]
        )
        self.strategy = build_strategy(cfg, ClientDirectory(clients, 1))
        self.grid = make_grid(clients, 1)
        info = dataset_info(self.strategy.job.data_spec())
        torch.manual_seed(0)
        self.model = models.build_model("cnn", info.input_shape, info.num_classes)
        self.arrays = ArrayRecord(self.model.state_dict())
        self.states = {c: RecordDict() for c in range(clients)}
        rng = np.random.default_rng(0)
        self.direction = {
            n: rng.standard_normal(p.shape).astype(np.float32)
            for n, p in self.model.named_parameters()
        }
        self.replies: dict[int, dict] = {}
        self.decoded: dict[int, dict[str, np.ndarray]] = {}  # rebuilt grads, before fold frees them
        fold = self.strategy.fold

        def keep_then_fold(update) -> None:
            grads = update.payload.grads
            self.decoded[update.client_id] = {n: np.asarray(g) for n, g in grads.items()}
            fold(update)

        self.strategy.fold = keep_then_fold

    def round(self, server_round: int, step, deliver=None, tamper=None):
        """One round; client c moves by -step(c) * direction; replies of ``deliver`` arrive."""
        messages = list(self.strategy.configure_train(server_round, self.arrays, None, self.grid))
        replies = []
        for msg in messages:
            job = ClientJob.from_record(msg.content[CONFIG])
            (client_id,) = job.client_ids
            client, state = PseudoGradientClient(), ClientState(self.states[client_id], client_id)
            ctx = client_context(msg.content, job, client_id, state)
            client.receive(ctx, self.model)
            with torch.no_grad():
                for name, p in self.model.named_parameters():
                    p -= step(client_id) * torch.from_numpy(self.direction[name])
            records = client.reply(ctx, self.model, TrainResult(1.0, 1))
            metrics = records.setdefault(METRICS, MetricRecord())
            metrics["num-examples"], metrics["train-loss"] = 10 * (client_id + 1), 1.0
            if tamper is not None:
                tamper(client_id, records)
            self.replies[client_id] = records
            if deliver is None or client_id in deliver:
                replies.append(Message(pack_clients({client_id: records}), reply_to=msg))
        new, _ = self.strategy.aggregate_train(server_round, replies)
        if new is not None:
            self.arrays = new
        return self.strategy.round_metrics(server_round)

    def reused(self, client_id: int) -> int:
        return sum(k.startswith("rho:") for k in self.replies[client_id][LBGM])


def test_constant_direction_reuses_every_layer_after_round_one(make_grid) -> None:
    fed = Federation(make_grid, "strategy=lbgm", "strategy.delta=0.01")
    layers = len(fed.direction)
    before = {n: a.numpy().astype(np.float64) for n, a in fed.arrays.items()}
    total_step = 0.0
    for server_round in (1, 2, 3):
        steps = {c: 0.01 * (server_round + c) for c in range(3)}
        weights = {c: 10 * (c + 1) / 60 for c in range(3)}
        metrics = fed.round(server_round, steps.__getitem__)
        total_step += sum(steps[c] * weights[c] for c in range(3))
        expected_reuse = 0.0 if server_round == 1 else 1.0
        assert metrics["lbgm_reuse_frac"] == expected_reuse
        assert all(fed.reused(c) == (0 if server_round == 1 else layers) for c in range(3))
        if server_round > 1:
            assert set(fed.replies[0]["arrays"].keys()) == set()  # scalars only
            assert metrics["lbgm_lbg_age"] == server_round - 1
            assert metrics["lbgm_phase_error"] == pytest.approx(0.0, abs=1e-6)
        for name, theta in fed.arrays.items():  # the server rebuilt the true pseudo-gradients
            np.testing.assert_allclose(
                theta.numpy(), before[name] - total_step * fed.direction[name], atol=2e-6
            )


def test_monitor_norms_are_the_rebuilt_pseudo_gradients_norms(make_grid) -> None:
    """‖Δ_c‖ = ‖g_c‖ per layer, also in rounds where a client sent only LBGM scalars."""
    fed = Federation(make_grid, "strategy=lbgm", "strategy.delta=0.01")
    for server_round in (1, 2):
        fed.round(server_round, lambda c: 0.01 * (c + 1))
        for update in fed.strategy.last_updates:
            grads = fed.decoded[update.client_id]
            assert update.delta_norms == {n: l2_norm(g) for n, g in grads.items()}
            assert sorted(update.delta_norms) == sorted(fed.direction)
            assert all(value > 0 for value in update.delta_norms.values())


def test_whole_model_granularity_sends_one_scalar(make_grid) -> None:
    fed = Federation(make_grid, "strategy=lbgm", "strategy.granularity=model", clients=2)
    fed.round(1, lambda c: 0.01)
    metrics = fed.round(2, lambda c: 0.02)
    assert metrics["lbgm_reuse_frac"] == 1.0
    assert set(fed.replies[1][LBGM].keys()) == {"rho:model", "version:model"}
    assert fed.replies[1][LBGM]["rho:model"] == pytest.approx(2.0, rel=1e-5)


def test_lost_full_send_forces_a_full_send_not_a_wrong_rho(make_grid) -> None:
    fed = Federation(make_grid, "strategy=lbgm", clients=2)
    fed.round(1, lambda c: 0.01, deliver={0})  # client 1's full send is lost
    fed.round(2, lambda c: 0.01)
    assert fed.reused(0) == len(fed.direction) and fed.reused(1) == 0
    assert fed.strategy.stats.rejected == {}
    fed.round(3, lambda c: 0.01)  # its round-2 full send arrived: now it reuses
    assert fed.reused(1) == len(fed.direction)
    assert fed.strategy.store.version(1, "fc1.weight") == 2


def test_evicted_store_entry_forces_a_full_send(make_grid) -> None:
    fed = Federation(make_grid, "strategy=lbgm", clients=2)
    fed.round(1, lambda c: 0.01)
    fed.strategy.store.evict(0, "conv1.weight")
    fed.round(2, lambda c: 0.01)
    assert fed.reused(0) == len(fed.direction) - 1 and "conv1.weight" in fed.replies[0]["arrays"]
    assert fed.reused(1) == len(fed.direction)


def test_max_age_evicts_and_refreshes(make_grid) -> None:
    fed = Federation(make_grid, "strategy=lbgm", "strategy.max_age=1", clients=1)
    reuse = [fed.round(r, lambda c: 0.01)["lbgm_reuse_frac"] for r in range(1, 6)]
    assert reuse == [0.0, 1.0, 0.0, 1.0, 0.0]


def test_rho_against_a_version_the_server_lacks_is_rejected(make_grid) -> None:
    fed = Federation(make_grid, "strategy=lbgm", clients=2)
    fed.round(1, lambda c: 0.01)

    def stale(client_id: int, records: dict) -> None:
        if client_id == 1:
            records[LBGM] = MetricRecord(
                {k: (99 if k.startswith("version:") else v) for k, v in records[LBGM].items()}
            )

    before = {n: a.numpy().copy() for n, a in fed.arrays.items()}
    fed.round(2, lambda c: 0.01, tamper=stale)
    assert fed.strategy.stats.rejected == {"lbgm-version": 1}
    assert fed.strategy.stats.failures == 1 and fed.strategy.stats.clients == 1
    for name, theta in fed.arrays.items():  # only client 0 (its own step) moved the model
        np.testing.assert_allclose(
            theta.numpy(), before[name] - 0.01 * fed.direction[name], atol=2e-6
        )


def test_layer_sent_twice_or_missing_is_rejected(make_grid) -> None:
    fed = Federation(make_grid, "strategy=lbgm", clients=1)
    fed.round(1, lambda c: 0.01)

    def drop_rho(client_id: int, records: dict) -> None:
        records[LBGM] = MetricRecord(
            {k: v for k, v in records[LBGM].items() if "fc2.bias" not in k}
        )

    fed.round(2, lambda c: 0.01, tamper=drop_rho)
    assert fed.strategy.stats.rejected == {"names": 1}


def test_client_promotes_candidates_only_when_acknowledged(make_grid) -> None:
    fed = Federation(make_grid, "strategy=lbgm", clients=1)
    fed.round(1, lambda c: 0.01, deliver=set())
    book = ClientLBGs(ClientState(fed.states[0], 0))
    assert len(book.candidates) == len(fed.direction) and not book.acked
    fed.round(2, lambda c: 0.01)  # server still holds nothing: candidates replaced, none kept
    book = ClientLBGs(ClientState(fed.states[0], 0))
    assert fed.reused(0) == 0 and not book.acked
    fed.round(3, lambda c: 0.01)
    book = ClientLBGs(ClientState(fed.states[0], 0))
    assert fed.reused(0) == len(fed.direction) and len(book.acked) == len(fed.direction)


def _candidates(state: ClientState) -> dict[str, np.ndarray]:
    """The client's candidate vectors (units sent in full, not yet acknowledged)."""
    book = ClientLBGs(state)
    return {
        unit: vector
        for unit, (_, vector) in book.acknowledged(
            {unit: version for unit, (version, _) in book.candidates.items()}
        ).items()
    }


def test_topk_stacking_feeds_lbgm_the_sparse_vector(make_grid) -> None:
    fed = Federation(
        make_grid, "strategy=lbgm", "strategy.compressor=topk", "strategy.topk_ratio=0.1"
    )
    fed.round(1, lambda c: 0.01)
    store = fed.strategy.store
    for name, direction in fed.direction.items():
        k = topk_count(direction.size, 0.1)
        candidate = _candidates(ClientState(fed.states[0], 0))[name]
        assert np.count_nonzero(candidate) == k  # the LBG is sparse, not g + residual
        assert np.array_equal(store.get(0, name, 1), candidate)
    # the constant direction: round 2's top-k (of g + residual) differs, so LBGM decides on it
    fed.round(2, lambda c: 0.01)
    sent = fed.replies[0]["arrays"]
    for name in fed.direction:
        if f"rho:{name}" in fed.replies[0][LBGM]:
            assert f"{name}:indices" not in sent  # a reused layer sends no indices
        else:
            assert sent[f"{name}:indices"].numpy().dtype == np.int32


def test_topk_residual_plus_sent_is_the_pseudo_gradient(make_grid) -> None:
    fed = Federation(make_grid, "strategy=topk", "strategy.topk_ratio=0.25", clients=1)
    fed.round(1, lambda c: 0.01)
    residual = ClientState(fed.states[0], 0).get("compress-residual")
    decoded = fed.decoded[0]
    for name, direction in fed.direction.items():
        np.testing.assert_allclose(
            decoded[name] + residual[name].numpy(), 0.01 * direction, atol=1e-7
        )


def test_float16_store_reconstructs_within_tolerance(make_grid) -> None:
    grads = {}
    for dtype in ("float32", "float16"):
        fed = Federation(make_grid, "strategy=lbgm", f"strategy.store_dtype={dtype}", clients=1)
        fed.round(1, lambda c: 0.01)
        fed.round(2, lambda c: 0.02)
        grads[dtype] = fed.strategy.last_updates[0].payload.grads
    for name, g in grads["float32"].items():
        np.testing.assert_allclose(grads["float16"][name], g, rtol=2e-3, atol=1e-5)


def test_server_momentum_is_heavy_ball_and_checkpointed(make_grid) -> None:
    fed = Federation(make_grid, "strategy=lbgm", "strategy.server_momentum=0.5", clients=1)
    start = {n: a.numpy().astype(np.float64) for n, a in fed.arrays.items()}
    fed.round(1, lambda c: 0.01)
    fed.round(2, lambda c: 0.01)  # v1 = g, v2 = 0.5 g + g: total 2.5 g
    for name, theta in fed.arrays.items():
        np.testing.assert_allclose(
            theta.numpy(), start[name] - 0.025 * fed.direction[name], atol=2e-6
        )
    state = fed.strategy.state_dict()
    other = Federation(make_grid, "strategy=lbgm", "strategy.server_momentum=0.5", clients=1)
    other.strategy.load_state_dict(state)
    assert all(
        np.array_equal(other.strategy.velocity[n], v) for n, v in fed.strategy.velocity.items()
    )


# ---------------------------------------------------------------------- whole experiments
def _run(tmp_path: Path, name: str, *overrides: str) -> Path:
    run_and_read([*TOY_RUN, *overrides], tmp_path / name)
    return tmp_path / name


def test_lbgm_that_never_reuses_is_fedavg(tmp_path: Path) -> None:
    """The same arithmetic in another order (x + the mean of deltas vs the mean of weights):
    after one round the models agree to float32 rounding; over three rounds training amplifies
    that rounding, so the metrics agree closely but not bit for bit."""
    fedavg = _run(tmp_path, "fedavg", "strategy=fedavg")
    lbgm = _run(tmp_path, "lbgm", "strategy=lbgm", "strategy.delta=-1")
    for a, b in zip(read_metrics(fedavg), read_metrics(lbgm), strict=True):
        assert abs(a["accuracy"] - b["accuracy"]) <= 0.01
        assert abs(a["loss"] - b["loss"]) <= 1e-3
    assert all(r["lbgm_reuse_frac"] == 0.0 for r in read_metrics(lbgm))
    one_round = [
        _run(tmp_path, f"{name}-1", *overrides, "num_rounds=1")
        for name, overrides in (
            ("lbgm", ["strategy=lbgm", "strategy.delta=-1"]),
            ("fedavg", ["strategy=fedavg"]),
        )
    ]
    ours, theirs = (load_checkpoint(run / "checkpoint").arrays for run in one_round)
    for name, array in theirs.items():
        np.testing.assert_allclose(ours[name].numpy(), array.numpy(), atol=1e-6)


def test_state_persists_on_the_node_and_reuse_cuts_uplink(tmp_path: Path) -> None:
    fedavg = read_metrics(_run(tmp_path, "fedavg", "strategy=fedavg", "num_rounds=2"))
    cfg = compose_config([*TOY_RUN, "num_rounds=2", "strategy=lbgm", "strategy.delta=0.9"])
    grid = InProcessGrid(cfg.num_clients)
    run_experiment(grid, cfg, tmp_path / "lbgm")
    rows = read_metrics(tmp_path / "lbgm")
    # round 2 reuses most layers (0.75 of them since clients train on all their data)
    assert rows[0]["lbgm_reuse_frac"] == 0.0 and rows[1]["lbgm_reuse_frac"] > 0.5
    assert rows[1]["uplink_bytes"] < 0.2 * fedavg[1]["uplink_bytes"]
    for context in grid.contexts.values():  # the node keeps the LBGs of its client, by round
        assert any(key.endswith(f"/kept:{INDEX}@2") for key in context.state)


def test_disk_store_run_equals_memory_store_run(tmp_path: Path) -> None:
    keys = ("accuracy", "loss", "uplink_bytes", "lbgm_reuse_frac", "lbgm_store_bytes")
    memory = _run(tmp_path, "memory", "strategy=lbgm", "strategy.delta=0.6")
    disk = _run(
        tmp_path,
        "disk",
        "strategy=lbgm",
        "strategy.delta=0.6",
        "strategy.store=disk",
        f"strategy.store_dir={tmp_path / 'store'}",
    )
    assert [[r[k] for k in keys] for r in read_metrics(memory)] == [
        [r[k] for k in keys] for r in read_metrics(disk)
    ]
    assert len(list((tmp_path / "store").iterdir())) == 3


@pytest.mark.parametrize(("store", "warned"), [("memory", True), ("disk", False)])
def test_a_store_dir_without_the_disk_store_is_warned_about(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, store: str, warned: bool
) -> None:
    cfg = compose_config(
        ["strategy=lbgm", f"strategy.store={store}", f"strategy.store_dir={tmp_path}"]
    )
    with caplog.at_level(logging.WARNING, logger="strategies.core.strategy"):
        build_strategy(cfg, ClientDirectory(cfg.num_clients, 1))
    assert any("store_dir" in r.getMessage() for r in caplog.records) == warned


@pytest.mark.parametrize(("ratio", "warned"), [(0.49, False), (0.5, True), (1.0, True)])
def test_a_top_k_ratio_that_sends_more_than_dense_is_warned_about(
    caplog: pytest.LogCaptureFixture, ratio: float, warned: bool
) -> None:
    """Each kept value goes with its int32 index: from half the entries on, top-k sends as many
    bytes as the dense layer or more (measured: ratio 1 sent 1.71 MB against FedAvg's 0.85)."""
    cfg = compose_config(["strategy=topk", f"strategy.topk_ratio={ratio}"])
    with caplog.at_level(logging.WARNING, logger="strategies.core.strategy"):
        build_strategy(cfg, ClientDirectory(cfg.num_clients, 1))
    assert any("int32 index" in r.getMessage() for r in caplog.records) == warned


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("strategy.delta=1.0", "strategy.delta"),
        ("strategy.delta=1.5", "strategy.delta"),
        ("strategy.compressor=atomo", "strategy.compressor"),
        ("strategy.topk_ratio=0", "strategy.topk_ratio"),
        ("strategy.topk_ratio=1.5", "strategy.topk_ratio"),
        ("strategy.store=redis", "strategy.store"),
        ("strategy.store_dtype=bfloat16", "strategy.store_dtype"),
        ("strategy.granularity=block", "strategy.granularity"),
        ("strategy.server_momentum=1.0", "strategy.server_momentum"),
        ("strategy.server_lr=0", "strategy.server_lr"),
        ("strategy.max_age=0", "strategy.max_age"),
    ],
)
def test_bad_lbgm_parameters_name_the_key(override: str, key: str) -> None:
    cfg = compose_config(["strategy=lbgm", override])
    with pytest.raises(ConfigError, match=key):
        build_strategy(cfg, ClientDirectory(cfg.num_clients, 1))


@pytest.mark.parametrize("strategy", ["topk", "signsgd"])
def test_baselines_build_and_refuse_bad_values(strategy: str) -> None:
    cfg = compose_config([f"strategy={strategy}"])
    assert build_strategy(cfg, ClientDirectory(cfg.num_clients, 1)).round_params(1)["lbgm"] is False
    cfg = compose_config([f"strategy={strategy}", "strategy.server_lr=-1"])
    with pytest.raises(ConfigError, match=r"strategy\.server_lr"):
        build_strategy(cfg, ClientDirectory(cfg.num_clients, 1))


def test_downlink_versions_record_is_per_client(make_grid) -> None:
    fed = Federation(make_grid, "strategy=lbgm", clients=2)
    fed.round(1, lambda c: 0.01, deliver={1})
    messages = fed.strategy.configure_train(2, fed.arrays, None, fed.grid)
    versions = {
        c: records["lbgm-versions"]["versions"]
        for m in messages
        for c, records in unpack_clients(m.content).items()
    }
    assert versions[0] == [-1] * len(fed.direction) and versions[1] == [1] * len(fed.direction)
    assert isinstance(fed.replies[0][LBGM], MetricRecord)
    assert isinstance(messages[0].content["config"], ConfigRecord)


class _RestartingGrid(InProcessGrid):
    """Restarts the node of partition 1 (new node id, empty state) after the second train round."""

    def __init__(self, num_nodes: int) -> None:
        super().__init__(num_nodes)
        self.train_rounds = 0

    def push_messages(self, messages):
        messages = list(messages)
        ids = super().push_messages(messages)  # the in-process grid replies right away
        if any(m.metadata.message_type == MessageType.TRAIN for m in messages):
            self.train_rounds += 1
            if self.train_rounds == 2:
                self.restart_node(1)
        return ids


def test_a_restarted_node_full_sends_and_nothing_is_rejected(tmp_path: Path) -> None:
    """The node of client 1 restarts after round 2 with empty state: its next exchange is a full
    send (more uplink than the uninterrupted run), never a wrong reconstruction (no rejection)."""
    overrides = [
        "dataset=digits",
        "num_clients=3",
        "clients_per_round=3",
        "num_rounds=4",
        "plots=false",
        "federated_eval=false",
        "strategy=lbgm",
        "strategy.delta=0.9",
    ]
    cfg = compose_config(overrides)
    run_experiment(InProcessGrid(3), cfg, tmp_path / "steady")
    run_experiment(_RestartingGrid(3), cfg, tmp_path / "restarted")
    steady, restarted = read_metrics(tmp_path / "steady"), read_metrics(tmp_path / "restarted")
    assert [r["rejected"] for r in restarted] == [{}, {}, {}, {}]
    assert [r["failures"] for r in restarted] == [0, 0, 0, 0]
    assert [r["accuracy"] for r in restarted[:2]] == [r["accuracy"] for r in steady[:2]]
    assert restarted[2]["uplink_bytes"] > steady[2]["uplink_bytes"]
    assert restarted[2]["lbgm_reuse_frac"] < steady[2]["lbgm_reuse_frac"]
    assert restarted[3]["lbgm_reuse_frac"] > 0


def test_a_lazily_rebuilt_layer_sums_bit_for_bit_like_the_rebuilt_one() -> None:
    rng = np.random.default_rng(0)
    lbgs = [rng.standard_normal((300, 700)).astype(np.float32) for _ in range(3)]  # > 2 slices
    rhos = [0.3, -1.7, 2.0 / 3.0]
    lazy = [{"w": Scaled(rho, lbg)} for rho, lbg in zip(rhos, lbgs, strict=True)]
    built = [{"w": rho * lbg} for rho, lbg in zip(rhos, lbgs, strict=True)]
    assert built[0]["w"].dtype == np.float32
    sums = WeightedSum(), WeightedSum()
    for total, updates in zip(sums, (lazy, built), strict=True):
        for update, weight in zip(updates, [5, 11, 2], strict=True):
            total.add(update, weight)
    assert np.array_equal(sums[0].mean()["w"], sums[1].mean()["w"])
    assert np.array_equal(np.asarray(lazy[2]["w"]), built[2]["w"])
