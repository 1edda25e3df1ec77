"""FedPM's constants, parameters, model choice and measures: what server and clients compute
alike."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.masked import (
    ESTIMATORS,
    build_masked,
)
from strategies.core.job import ClientJob
from strategies.core.params import Params, check_choice, check_count, check_number
from strategies.fedpm.klms_codec import (
    KlmsSettings,
    layer_key,
)
from strategies.fedpm.mask_codec import quantize_prior

MASKED_FORMS = {name: f"masked_{name}" for name in ("cnn", "conv4", "conv6", "conv10")}
DOWNLINK_DTYPES = {"uint16": np.uint16, "float32": np.float32, "float16": np.float16}
UPLINK_CODINGS = ("range", "klms", "packed")
CODED_UPLINKS = ("range", "klms")  # both send one byte stream coded against the uint16 θ
DOWNLINK_CODINGS = ("coded", "plain")  # coded: strategies.theta_codec; plain: downlink_dtype
KEEP = "fedpm-keep"  # per-client downlink record: keep this θ, the next round codes against it
BASE_STATE, BASE_ROUND_STATE = "fedpm-base", "fedpm-base-round"  # the kept θ in client state
CODE = "fedpm-code"  # the coded reply's header record (strategies.mask_codec)
STREAM = "masks"  # the coded reply's one array: every layer's segment in score order
POOL_MIN_CLIENTS = 16  # decode_workers=auto uses the pool from this many clients per round
POOL_MAX_WORKERS = 4
WEIGHT_STREAM = 0x57E1  # keeps the weight seed apart from every other draw of the run seed
MASK_STREAM = 0x3A5C  # the uplink mask draw, apart from the batch-order stream
TRAIN_MASK_STREAM = 0x7D2B  # the masks of every local training forward pass
EVAL_STREAM = 0xE7A1  # the server's sampled-mask evaluation
ENCODE_METRIC = "fedpm-encode-s"
KL_METRIC = "fedpm-kl-bits"  # Σ KL(q‖θ_g) of the client's trained q: the KLMS bound, not sent
EXPORT_FILE = "final_model.fedpm"
SCORE_SUFFIX = "_score"  # models.masked names a layer's mask scores `<its weight's name>_score`


# ------------------------------------------------------------------------------ model choice
def masked_model_name(model: str) -> str:
    """The masked twin of ``model=``; other architectures are a config error."""
    try:
        return MASKED_FORMS[model]
    except KeyError:
        raise ValueError(
            f"model={model!r} has no masked form under strategy=fedpm; choose model= one of: "
            f"{', '.join(MASKED_FORMS)}"
        ) from None


def derived_weight_seed(seed: int) -> int:
    """The default weight seed: a fixed function of the run seed."""
    return int(np.random.SeedSequence([seed, WEIGHT_STREAM]).generate_state(1, np.uint32)[0])


def job_weight_seed(job: ClientJob) -> int:
    """``strategy.weight_seed`` when set, else derived from the run seed."""
    value = job.params.get("weight_seed")
    return derived_weight_seed(job.seed) if value is None else int(value)


def klms_keys(job: ClientJob, client_id: int, names: list[str]) -> dict[str, np.uint32]:
    """Each layer's candidate key for ``client_id`` in the job's round."""
    return {
        name: layer_key(job.seed, job.server_round, client_id, layer)
        for layer, name in enumerate(names)
    }


def build_fedpm_model(
    job: ClientJob, input_shape: tuple[int, int, int], num_classes: int
) -> nn.Module:
    """The masked network a FedPM job trains (registered as the algorithm's model builder)."""
    return build_masked(
        masked_model_name(job.model), input_shape, num_classes, job_weight_seed(job)
    )


_SEED_THETA: dict[tuple, dict[str, np.ndarray]] = {}  # one run's initial θ per process


def seed_theta(job: ClientJob, seed: int) -> dict[str, np.ndarray]:
    """The uint16 θ of the initial scores of ``job``'s network drawn from ``seed`` the way
    ``server_app.experiment.initial_arrays`` draws them (``torch.manual_seed(seed)``, then the
    masked network): the round-1 downlink names the run seed instead of sending θ. Built once
    per process and run; the global torch generator is left as it was."""
    info = job.data_info()
    shape = tuple(int(d) for d in info.input_shape)
    key = (seed, job.model, job_weight_seed(job), shape, int(info.num_classes))
    if key not in _SEED_THETA:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_fedpm_model(job, shape, int(info.num_classes))
        _SEED_THETA.clear()
        _SEED_THETA[key] = {
            name: quantize_prior(sigmoid(score.detach().numpy()))
            for name, score in model.state_dict().items()
        }
    return _SEED_THETA[key]


# ---------------------------------------------------------------------------- bpp measures
def binary_entropy(f: float) -> float:
    """H₂(f) in bits (0 at f ∈ {0, 1})."""
    if f <= 0.0 or f >= 1.0:
        return 0.0
    return -f * math.log2(f) - (1.0 - f) * math.log2(1.0 - f)


def entropy_bpp(ones: int, total: int) -> float:
    """Bits per parameter of an adaptive binary coder: H₂(ones/total) + log₂(N)/N."""
    return binary_entropy(ones / total) + math.log2(total) / total


def logit(theta: np.ndarray) -> np.ndarray:
    return np.log(theta) - np.log1p(-theta)


def sigmoid(scores: np.ndarray) -> np.ndarray:
    """θ = σ(score) = 1 / (1 + e^{−s}) in float64, the inverse of :func:`logit`; e^{−s} = inf
    below s ≈ −709 gives θ = 0 exactly, without a warning."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(scores, dtype=np.float64)))


@dataclass(frozen=True)
class FedPMParams(Params):
    """FedPM's posterior, local training, links and decoding (conf/strategy/fedpm.yaml)."""

    reset_period: int = 1
    lambda0: float = 1.0
    eps: float = 0.01
    estimator: str = "scaled"
    eval_samples: int = 5
    weight_seed: int | None = None
    downlink_dtype: str = "uint16"
    downlink_coding: str = "coded"
    uplink_coding: str = "range"
    klms_bits: int = KlmsSettings.bits
    klms_kl_per_block: float = KlmsSettings.kl_per_block
    klms_max_block: int = KlmsSettings.max_block
    klms_fresh_kl: float = KlmsSettings.fresh_kl
    decode_workers: int | str = "auto"
    local_lr: float = 0.1

    def check(self) -> None:
        check_count("reset_period", self.reset_period)
        check_number(
            "lambda0", self.lambda0, lambda v: v >= 1, "must be >= 1 (Beta mode undefined)"
        )
        check_number("eps", self.eps, lambda v: 0 < v < 0.5, "must be in (0, 0.5)")
        check_choice("estimator", self.estimator, ESTIMATORS)
        if (
            isinstance(self.eval_samples, bool)
            or not isinstance(self.eval_samples, int)
            or self.eval_samples < 0
        ):
            raise ValueError(
                f"strategy.eval_samples={self.eval_samples!r}: must be an integer >= 0"
            )
        if self.weight_seed is not None and (
            isinstance(self.weight_seed, bool)
            or not isinstance(self.weight_seed, int)
            or self.weight_seed < 0
        ):
            raise ValueError(f"strategy.weight_seed={self.weight_seed!r}: must be null or >= 0")
        check_number("local_lr", self.local_lr, lambda v: v > 0, "must be > 0")
        self._check_links()

    def _check_links(self) -> None:
        check_choice("downlink_dtype", self.downlink_dtype, DOWNLINK_DTYPES)
        check_choice("downlink_coding", self.downlink_coding, DOWNLINK_CODINGS)
        check_choice("uplink_coding", self.uplink_coding, UPLINK_CODINGS)
        if self.uplink_coding in CODED_UPLINKS and self.downlink_dtype != "uint16":
            raise ValueError(
                f"strategy.downlink_dtype={self.downlink_dtype!r}: strategy.uplink_coding="
                f"{self.uplink_coding} needs uint16 (the coder's model must be the same integers "
                "on both ends); set strategy.downlink_dtype=uint16 or strategy.uplink_coding=packed"
            )
        workers = self.decode_workers
        if workers != "auto" and (
            isinstance(workers, bool) or not isinstance(workers, int) or workers < 0
        ):
            raise ValueError(
                f"strategy.decode_workers={workers!r}: must be auto or an integer >= 0 "
                "(0 = decode in the server process)"
            )
        self.klms_settings()

    def klms_settings(self) -> KlmsSettings:
        """The ``klms_*`` settings (the same on both ends)."""
        return KlmsSettings(
            self.klms_bits, self.klms_kl_per_block, self.klms_max_block, self.klms_fresh_kl
        )
