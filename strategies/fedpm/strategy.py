"""FedPM's server: the posterior's mode θ down, coded; masks up, decoded and counted; the
sampled-mask evaluation and the exported supermask."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MessageType, RecordDict
from torch import nn

from data.federated import central_test, dataset_info
from models.masked import (
    MaskRNG,
    build_masked,
    sampled_masks,
    save_supermask,
    weight_hash,
)
from models.training import (
    TensorData,
    evaluate,
    resolve_device,
    round_seed,
)
from strategies.core.engine import SAMPLE_TRAIN
from strategies.core.layers import LayerView, is_layer_weight
from strategies.core.strategy import ARRAYS, ClientUpdate, FedSparseStrategy
from strategies.core.wire import (
    Record,
)
from strategies.fedpm import theta_codec
from strategies.fedpm.decode_pool import DecodePool
from strategies.fedpm.mask_codec import (
    packed_size,
    quantize_prior,
)
from strategies.fedpm.posterior import BetaPosterior, MaskCounts, _prefixed
from strategies.fedpm.shared import (
    CODE,
    CODED_UPLINKS,
    DOWNLINK_DTYPES,
    EVAL_STREAM,
    EXPORT_FILE,
    KEEP,
    POOL_MAX_WORKERS,
    POOL_MIN_CLIENTS,
    SCORE_SUFFIX,
    STREAM,
    FedPMParams,
    entropy_bpp,
    job_weight_seed,
    logit,
    masked_model_name,
    seed_theta,
    sigmoid,
)
from strategies.numeric.arrays import to_array_record, to_numpy

# checkpoint keys of the coded downlink's base: its round, θ, holders; the counts behind θ
BASE_ROUND, BASE_THETA, HOLDERS = "theta-base-round", "theta-base/", "theta-holders"
COUNTED, COUNTS = "theta-counted", "theta-counts/"


# ---------------------------------------------------------------------------------- server
class MaskScores(LayerView):
    """The layer view of mask scores: ``<layer>.weight_score`` is reported as ``<layer>.weight``
    and watched as θ = σ(score) (plain weights, if any, as they are)."""

    def monitor_key(self, name: str, values: np.ndarray) -> str | None:
        weight = name.removesuffix(SCORE_SUFFIX)
        if weight != name and is_layer_weight(weight, values):
            return weight
        return super().monitor_key(name, values)

    def monitor_values(self, name: str, values: np.ndarray) -> np.ndarray:
        if name.endswith(SCORE_SUFFIX):
            return sigmoid(values)
        return super().monitor_values(name, values)


class FedPM(MaskScores, FedSparseStrategy):
    """Bayesian aggregation of sampled binary masks over seed-shared frozen weights."""

    name = "fedpm"
    cohort_sum_type = MaskCounts

    params_type = FedPMParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        params = self.params
        self.masked_name = masked_model_name(self.job.model)
        self.posterior = BetaPosterior(
            float(params.lambda0), float(params.eps), params.reset_period
        )
        self.eval_samples = params.eval_samples
        self.downlink_dtype = DOWNLINK_DTYPES[params.downlink_dtype]
        self.downlink_coded = (
            params.downlink_coding == "coded" and params.downlink_dtype == "uint16"
        )
        self.coded = params.uplink_coding in CODED_UPLINKS
        klms = params.klms_settings()
        self.weight_seed = job_weight_seed(self.job)
        info = dataset_info(self.job.data_spec())
        self.input_shape, self.num_classes = tuple(info.input_shape), info.num_classes
        template = build_masked(
            self.masked_name, self.input_shape, self.num_classes, self.weight_seed
        )
        self.weight_hash = weight_hash(template)
        self.shapes = {k: tuple(v.shape) for k, v in template.state_dict().items()}
        self.num_params = sum(math.prod(s) for s in self.shapes.values())
        if params.uplink_coding == "klms":
            for name, shape in self.shapes.items():
                klms.check_layer(math.prod(shape), name)
        self.job = replace(
            self.job,
            params={
                **self.job.params,
                "weight_seed": self.weight_seed,
                "weight_hash": self.weight_hash,
            },
        )
        self._evaluator: MaskEvaluator | None = None
        self._scores: dict[str, np.ndarray] = {}
        self._downlink: tuple[tuple[ArrayRecord, bool] | None, ArrayRecord] = (None, ArrayRecord())
        self._variants: dict[str, ArrayRecord] = {}  # the coded train downlink, per node kind
        self._sent_theta: tuple[int, dict[str, np.ndarray], set[int]] | None = None
        self._base: tuple[int, dict[str, np.ndarray]] | None = None
        self._holders: set[int] = set()
        self._prior: tuple[ArrayRecord | None, dict[str, np.ndarray]] = (None, {})
        self._mean_delta: dict[str, np.ndarray] | None = None
        self._counts: tuple[int, dict[str, np.ndarray]] | None = None  # behind the last θ
        workers = self.decode_workers(params.decode_workers)
        ranged = params.uplink_coding == "range"  # the pool range-decodes; KLMS decodes in place
        self.pool = DecodePool(workers, self.shapes) if workers and ranged else None

    def decode_workers(self, setting: int | str) -> int:
        """Processes that range-decode replies. ``auto``: half the cores, at most
        :data:`POOL_MAX_WORKERS` (the other half trains clients in simulation, and each worker
        holds ~370 MB: it imports what the server imports), once a round has
        :data:`POOL_MIN_CLIENTS` clients, and only when that makes at least two workers; so none
        on a 2-core box. 0 decodes in the server process."""
        if setting != "auto":
            return int(setting)
        workers = min((os.cpu_count() or 1) // 2, POOL_MAX_WORKERS)
        return workers if workers >= 2 and self.clients_per_round >= POOL_MIN_CLIENTS else 0

    def configure_train(self, server_round, arrays, config, grid):
        """Roll the coded downlink's base: the θ of the previous round, held by the clients
        that were asked to keep it and replied (``aggregate`` narrowed them)."""
        sent = self._sent_theta
        if sent is not None and sent[0] == server_round - 1:
            self._base = (sent[0], sent[1])
            self._holders = set(sent[2])
        else:
            self._base, self._holders = None, set()
        self._variants = {}
        if self.downlink_coded:
            self.directory.refresh(grid)
            keep = set(self.engine.sample_clients(server_round + 1, SAMPLE_TRAIN))
            self._sent_theta = (server_round, self.prior(arrays), keep)
        return super().configure_train(server_round, arrays, config, grid)

    def client_records(self, server_round: int, client_id: int) -> dict[str, Record]:
        """Under the coded downlink, the clients sampled again next round keep this θ."""
        sent = self._sent_theta
        if self.downlink_coded and sent and sent[0] == server_round and client_id in sent[2]:
            return {KEEP: ConfigRecord({"round": server_round})}
        return {}

    def node_content(
        self, server_round: int, arrays: ArrayRecord, cohort: list[int], message_type: str
    ) -> RecordDict:
        """A node's coded θ carries the self-contained stream unless its one client holds the
        base (then the delta alone), and the delta when any of its clients holds the base. A
        node that reduces its cohort decodes θ itself, without any client's base, so it always
        gets the self-contained stream too (each client still counts only the stream it
        decodes)."""
        content = super().node_content(server_round, arrays, cohort, message_type)
        if self.downlink_coded and message_type == MessageType.TRAIN:
            full = content[ARRAYS]
            holders = theta_codec.BASE in full and [c for c in cohort if c in self._holders]
            alone = len(cohort) == 1 and not self.job.reduce_cohorts
            kind = "delta" if holders and alone else "full" if holders else "self"
            if kind not in self._variants:
                drop = {"delta": theta_codec.SELF_CONTAINED, "self": theta_codec.DELTA}
                variant = ArrayRecord()
                for name, array in full.items():
                    if name not in drop.get(kind, ()):
                        variant[name] = array
                self._variants[kind] = variant
            content[ARRAYS] = self._variants[kind]
        return content

    def downlink_bytes(self, content: RecordDict, cohort: list[int]) -> int:
        """Each client counts the θ stream it decodes: the delta where it holds the base,
        else the self-contained one."""
        total = super().downlink_bytes(content, cohort)
        record = content.get(ARRAYS)
        if not isinstance(record, ArrayRecord) or theta_codec.CRC not in record:
            return total

        def part(keys: tuple[str, ...]) -> int:
            return sum(len(record[k].data) + len(k) for k in keys if k in record)

        own, delta = part(theta_codec.SELF_CONTAINED), part(theta_codec.DELTA)
        for client in cohort:
            total -= own if client in self._holders and delta else delta
        return total

    def downlink(self, server_round: int, arrays: ArrayRecord, message_type: str) -> ArrayRecord:
        """Only θ travels: coded (``strategies.theta_codec``: the run seed alone while θ is the
        seed's initial θ, else indices of its few values, self-contained and, for train
        messages, against the previous round's θ), as uint16
        fixed point (the coder's prior) or as scores in ``downlink_dtype``; the weights come
        from the seed. Encoded once per global model, however many node messages carry it."""
        train = message_type == MessageType.TRAIN
        delta = train and self._base is not None and bool(self._holders)
        cached, cached_delta = self._downlink[0] or (None, False)
        if cached is not arrays or cached_delta != delta:
            if self.downlink_coded and self.is_seed_theta(self.prior(arrays)):
                encoded = to_array_record(
                    theta_codec.encode_seed(self.prior(arrays), self.job.seed)
                )
            elif self.downlink_coded and theta_codec.codable(self.prior(arrays)):
                coded = theta_codec.encode(self.prior(arrays))
                if delta and self._counts is not None:
                    priors = self.prior(arrays)
                    coded |= theta_codec.encode_delta(priors, self._base, coded, self._counts) or {}
                encoded = to_array_record(coded)
            elif self.downlink_dtype is np.uint16:
                encoded = to_array_record(self.prior(arrays))
            else:
                encoded = to_array_record(
                    {name: to_numpy(a).astype(self.downlink_dtype) for name, a in arrays.items()}
                )
            self._downlink = ((arrays, delta), encoded)
        return self._downlink[1]

    def is_seed_theta(self, priors: Mapping[str, np.ndarray]) -> bool:
        """Whether ``priors`` is the θ every client regenerates from the run seed (the initial
        model's, also after a resume that starts from it): compared entry by entry, so a
        model drawn any other way is sent in full."""
        initial = seed_theta(self.job, self.job.seed)
        return list(initial) == list(priors) and all(
            np.array_equal(initial[name], q) for name, q in priors.items()
        )

    def prior(self, arrays: ArrayRecord) -> dict[str, np.ndarray]:
        """The uint16 θ of the global ``arrays``: the downlink, and the coder's model on both
        ends. Computed once per global model, by the server only."""
        if self._prior[0] is not arrays:
            priors = {name: quantize_prior(sigmoid(to_numpy(a))) for name, a in arrays.items()}
            self._prior = (arrays, priors)
            if self.pool is not None:
                self.pool.set_prior(priors)
        return self._prior[1]

    def begin_aggregation(self, server_round: int) -> None:
        """Decoded masks come from the decoding processes when they took the reply."""
        if self.pool is not None:
            self.running.predecoded = self._pool_result

    def _pool_result(self, client_id: int) -> dict[str, np.ndarray] | None:
        return self.pool.result(client_id) if self.pool.has(client_id) else None

    def prefetch(self, replies: Mapping[int, Mapping[str, Record]]) -> None:
        """Hand a node's coded streams to the decoding processes as the node's reply lands."""
        if self.pool is None:
            return
        self.prior(self.global_arrays)
        for client_id, records in replies.items():
            arrays, header = records.get(ARRAYS), records.get(CODE)
            if (
                isinstance(arrays, ArrayRecord)
                and isinstance(header, ConfigRecord)
                and list(arrays.keys()) == [STREAM]
            ):
                self.pool.submit(client_id, to_numpy(arrays[STREAM]), header)

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> ArrayRecord:
        counts: MaskCounts = self.running
        theta = self.posterior.update(server_round, *counts.result())
        per_entry, clients = counts.result()
        self._counts = (clients, dict(per_entry))  # θ's count model (theta_codec's delta)
        sent = self._sent_theta
        if sent is not None and sent[0] == server_round:  # who holds this round's θ now
            self._sent_theta = (sent[0], sent[1], sent[2] & {u.client_id for u in updates})
        self._mean_delta = {k: v - counts.theta[k] for k, v in self.posterior.mean_clipped.items()}
        self._scores = {k: logit(v).astype(np.float32) for k, v in theta.items()}
        return to_array_record(self._scores)

    def monitor_weights(self) -> list[float]:
        """Every client counts once in the posterior, whatever its num-examples."""
        return [1.0] * len(self.last_updates)

    def mean_client_delta(self) -> dict[str, np.ndarray] | None:
        return self._mean_delta

    def round_metrics(self, server_round: int) -> dict[str, Any]:
        """Per round, mean over clients: the bits per parameter sent (``wire``: every byte of
        the reply; ``stream``: the masks alone), what packing would send, the ones-fraction
        bound H₂(f) and the code length θ_g allows (``ideal``); the coder's overhead over ideal;
        client encode and server decode seconds."""
        stats = [u.stats for u in self.last_updates]
        n = self.num_params

        def mean(values: list[float]) -> float:
            return float(np.mean(values)) if values else float("nan")

        coded_ideal = sum(s["coded_ideal_bits"] for s in stats)
        metrics: dict[str, Any] = {
            "fedpm_bpp_wire": mean([8.0 * s["wire_bytes"] for s in stats]) / n,
            "fedpm_bpp_stream": mean([8.0 * s["stream_bytes"] for s in stats]) / n,
            "fedpm_bpp_packed": 8
            * sum(packed_size(math.prod(s)) for s in self.shapes.values())
            / n,
            "fedpm_bpp_entropy": mean([entropy_bpp(s["ones"], n) for s in stats]),
            "fedpm_bpp_ideal": mean([s["ideal_bits"] for s in stats]) / n,
            "fedpm_bpp_kl": mean([s["kl_bits"] for s in stats]) / n,
            "fedpm_coded_frac": mean([s["coded_entries"] for s in stats]) / n,
            "fedpm_coder_overhead": (
                sum(s["coded_bits"] for s in stats) / coded_ideal - 1.0 if coded_ideal > 0 else None
            ),
            "fedpm_encode_s": mean([s["encode_s"] for s in stats]),
            "fedpm_decode_s": sum(s["decode_s"] for s in stats),
            "fedpm_uplink_density": mean([s["ones"] for s in stats]) / n,
            "fedpm_density": sum(int((s > 0).sum()) for s in self._scores.values()) / n,
            "fedpm_reset": self.posterior.resets(server_round),
        }
        if self.eval_samples:  # the thresholded network's accuracy is the run's `accuracy`
            metrics["fedpm_acc_sampled"] = self.evaluator().sampled_accuracy(
                self.model(),
                self.eval_samples,
                round_seed(self.job.seed, server_round, EVAL_STREAM),
            )
        return metrics

    def progress(self, row: Mapping[str, Any]) -> str:
        return (
            f"bpp {row['fedpm_bpp_wire']:.3f} (ideal {row['fedpm_bpp_ideal']:.3f}, "
            f"KL {row['fedpm_bpp_kl']:.3f}, "
            f"H₂ {row['fedpm_bpp_entropy']:.3f}, packed {row['fedpm_bpp_packed']:.3f})"
        )

    def model(self) -> nn.Module:
        """The current global masked network (weights from the seed, scores from the server)."""
        model = build_masked(self.masked_name, self.input_shape, self.num_classes, self.weight_seed)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in self._scores.items()})
        return model

    def evaluator(self) -> MaskEvaluator:
        if self._evaluator is None:
            spec = self.job.data_spec()
            info = dataset_info(spec)
            device = resolve_device(self.job.device)
            self._evaluator = MaskEvaluator(
                TensorData.from_arrays(central_test(spec), info.mean, info.std, device)
            )
        return self._evaluator

    def export_model(self, path: str | Path) -> int:
        """Write the global model as seed + thresholded mask (see models.masked.save_supermask)."""
        model = self.model()
        return save_supermask(
            path, self.masked_name, self.input_shape, self.num_classes, self.weight_seed, model
        )

    def finish(self, run_dir: Path) -> dict[str, Any]:
        """End-of-run hook: stop the decoding processes, write ``final_model.fedpm``; its size
        goes into summary.json."""
        if self.pool is not None:
            self.pool.close()
        return {
            "exported_model": EXPORT_FILE,
            "exported_model_bytes": self.export_model(run_dir / EXPORT_FILE),
        }

    def state_dict(self) -> dict[str, np.ndarray]:
        """The posterior and scores, and what the next coded downlink is coded against: the θ
        sent this round, the clients that keep it, and the counts behind the new θ."""
        state = {
            **self.posterior.state_dict(),
            **{f"scores/{k}": v for k, v in self._scores.items()},
        }
        if self._sent_theta is not None:
            sent_round, priors, holders = self._sent_theta
            state[BASE_ROUND] = np.array(sent_round, dtype=np.int64)
            state[HOLDERS] = np.array(sorted(holders), dtype=np.int64)
            state.update({f"{BASE_THETA}{k}": v for k, v in priors.items()})
        if self._counts is not None:
            state[COUNTED] = np.array(self._counts[0], dtype=np.int64)
            state.update({f"{COUNTS}{k}": v for k, v in self._counts[1].items()})
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.posterior.load_state_dict(state)
        self._scores = _prefixed(state, "scores/")
        if BASE_ROUND in state:  # clients hold the base only where their state outlived a restart
            kept = self.client_state is not None and not self.client_state.in_context
            holders = {int(c) for c in state[HOLDERS]} if kept else set()
            self._sent_theta = (int(state[BASE_ROUND]), _prefixed(state, BASE_THETA), holders)
        if COUNTED in state:
            self._counts = (int(state[COUNTED]), _prefixed(state, COUNTS))


class MaskEvaluator:
    """Central test accuracy of a masked network with sampled masks."""

    def __init__(self, data: TensorData) -> None:
        self.data = data

    def sampled_accuracy(self, model: nn.Module, samples: int, seed: int) -> float:
        """Mean accuracy over ``samples`` seeded draws (a fresh mask per evaluation batch)."""
        model.to(self.data.x.device)
        with sampled_masks(model, MaskRNG(seed, self.data.x.device)):
            return float(np.mean([evaluate(model, self.data)[1] for _ in range(samples)]))
