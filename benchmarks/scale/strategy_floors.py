"""The floors of LIPS, top-k, signSGD, LBGM and FedPM (see ``floor.py``): each client's work and
the server's arithmetic of a fedsparse round, with the project's own functions.

- lips: on LIPS's sparse rounds each client first prunes the received model as
  ``LipsClient.prepare`` does (the score on one seeded local batch, each middle layer's top d_r
  kept); then dense training and FedAvg's averaging.
- topk, signsgd, lbgm: each client sends its pseudo-gradient (received − trained parameters)
  through the strategy's codec, with error feedback, as ``PseudoGradientClient`` does; under LBGM
  a unit whose look-back gradient (LBG) still fits (phase error ≤ δ) goes as its ρ, any other in
  full, which becomes the LBG at both ends. Under LBGM the parent decodes every reply (with its
  own copy of every client's LBGs); top-k and signSGD replies are decoded and summed in the
  worker that made them (as a reducing fedsparse node does), the parent adds the partial sums.
  Then θ ← θ − server_lr·v. Every reply arrives, so LBGM's version protocol (for lost replies)
  has nothing to do: a unit's LBG is its last full send.
- fedpm: each client trains the masked network's scores from the θ it received (Adam), draws one
  mask from σ(scores) and range-codes it against the uint16 θ (or, under KLMS, picks a
  candidate, hashed in torch on the work's device), as ``FedPMClient`` does; the worker decodes
  its clients' masks and counts their ones (as a reducing fedsparse node does), the parent adds
  the counts and updates the Beta posterior. The central evaluation is of the thresholded
  network (eval mode), fedsparse's FedPM ``accuracy``.

On a GPU (``floor.py --device cuda``) only FedAvg's and FedPM's floors run: the others' client
halves read their tensors as numpy arrays, on the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from benchmarks.scale.floor import FedAvgFloor, Floor, Setup, State, train_share
from benchmarks.scale.work import BATCH_SIZE, SEED
from data.federated import dataset_info
from models.masked import MaskRNG, build_masked, draw_bool_mask, set_estimator, set_mask_rng
from models.training import TensorData, round_seed
from strategies.fedpm.klms_codec import KlmsSettings, decode_layer, encode_masks_klms, layer_key
from strategies.fedpm.mask_codec import (
    decode_masks,
    encode_masks,
    prior_probabilities,
    quantize_prior,
)
from strategies.fedpm.posterior import BetaPosterior
from strategies.fedpm.shared import (
    MASK_STREAM,
    TRAIN_MASK_STREAM,
    derived_weight_seed,
    logit,
    masked_model_name,
    sigmoid,
)
from strategies.lips import SCORE_STREAM, layer_scores, lips_density, prunable_layers, prune_top
from strategies.numeric.weighted_sum import WeightedSum, cast_like
from strategies.pseudo_gradient.compression import Codec, make_codec
from strategies.pseudo_gradient.lbgm import projection, units_of
from strategies.pseudo_gradient.server import Scaled

Arrays = dict[str, np.ndarray]
# A worker process's clients' own arrays across rounds, by client id.
RESIDUALS: dict[int, Arrays] = {}  # error feedback: what the codec dropped, per layer
LBGS: dict[int, Arrays] = {}  # LBGM: the look-back gradient per unit


# ------------------------------------------------------------------------------------ LIPS
def lips_prune(setup: Setup, model: nn.Module, client_id: int, server_round: int) -> None:
    """On a sparse round, keep each prunable layer's top ⌊d_r·numel⌋ entries by score."""
    params = setup.params
    horizon = params["horizon"] or setup.rounds
    density = lips_density(server_round, params["period"], params["d0"], horizon)
    if density >= 1.0:
        return
    train = setup.work.train_set(client_id)
    seed = round_seed(SEED, server_round, client_id) ^ SCORE_STREAM
    generator = torch.Generator().manual_seed(seed)
    batch = torch.randperm(len(train), generator=generator)[:BATCH_SIZE]
    layers = prunable_layers(model, params["include_shortcuts"])
    data = TensorData(train.x[batch], train.y[batch])
    prune_top(model, layer_scores(model, layers, params["score"], data, generator), density)


def lips_share(
    setup: Setup, client_ids: list[int], state: State, server_round: int
) -> tuple[State, int]:
    """FedAvg's share, each received model pruned first."""
    return train_share(setup, client_ids, state, server_round, prepare=lips_prune)


class LipsFloor(FedAvgFloor):
    share = staticmethod(lips_share)


# -------------------------------------------------------------------- pseudo-gradients, LBGM
def codec_of(setup: Setup) -> Codec:
    """The strategy's compressor: top-k, scaled sign, or LBGM's (none by default)."""
    name = {"topk": "topk", "signsgd": "sign"}.get(setup.strategy, setup.params.get("compressor"))
    return make_codec(name, float(setup.params.get("topk_ratio", 1.0)))


def lbgm_units(setup: Setup, model: nn.Module) -> dict[str, list[str]]:
    """LBGM's decision units over the parameters; none without LBGM."""
    if setup.strategy != "lbgm":
        return {}
    return units_of([name for name, _ in model.named_parameters()], setup.params["granularity"])


def flat(arrays: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    """The unit's vector: its layers flattened, in order."""
    parts = [arrays[name].reshape(-1) for name in names]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


@dataclass
class PseudoGradientReply:
    """One client's uplink: the wire arrays of the layers sent in full, the ρ of the LBGM units
    reused, the buffers (BatchNorm statistics, averaged like FedAvg) and its example count."""

    client_id: int
    examples: int
    wires: dict[str, Arrays]
    rhos: dict[str, float]
    buffers: Arrays


def compress(
    codec: Codec, grads: Arrays, residual: Arrays | None
) -> tuple[dict[str, Arrays], Arrays]:
    """Per layer, the wire arrays of x and the dense C(x) the server rebuilds: x = g plus the
    error-feedback ``residual``, which becomes x − C(x) (in place; None: no error feedback)."""
    wires, sent = {}, {}
    for name, g in grads.items():
        x = g + residual[name] if residual is not None and name in residual else g
        wires[name] = codec.encode(name, x)
        sent[name] = codec.decode(name, wires[name], x.shape, x.dtype)
        if residual is not None:
            residual[name] = x - sent[name]
    return wires, sent


def lbgm_reuse(
    sent: Arrays, units: dict[str, list[str]], delta: float, lbgs: Arrays
) -> dict[str, float]:
    """ρ of each unit whose LBG fits (phase error ≤ δ); every other unit is sent in full and
    becomes the unit's LBG in ``lbgs``."""
    rhos = {}
    for unit, names in units.items():
        vector = flat(sent, names)
        fit = projection(vector, lbgs[unit]) if unit in lbgs else None
        if fit is not None and fit[1] <= delta:
            rhos[unit] = fit[0]
        else:
            lbgs[unit] = vector.astype(np.float32, copy=False)
    return rhos


@dataclass
class PartialSums:
    """A worker's Σ n_c·g_c and Σ n_c·b_c over its clients' decoded replies, and Σ n_c."""

    grads: Arrays
    buffers: Arrays
    examples: int


def pseudo_gradient_share(
    setup: Setup, client_ids: list[int], state: State, server_round: int
) -> list[PseudoGradientReply] | PartialSums:
    """Each client's reply after dense training from the received ``state``; without LBGM
    (the aggregate is then a plain sum) decoded and summed here."""
    model = setup.work.new_model()
    codec = codec_of(setup)
    feedback = codec.name != "none" and bool(setup.params["error_feedback"])
    units = lbgm_units(setup, model)
    replies = []
    for client_id in client_ids:
        model.load_state_dict(state)
        start = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
        examples = setup.work.train_client(model, client_id, server_round)
        grads = {n: start[n] - p.detach().numpy() for n, p in model.named_parameters()}
        residual = RESIDUALS.setdefault(client_id, {}) if feedback else None
        wires, sent = compress(codec, grads, residual)
        rhos: dict[str, float] = {}
        if units:
            rhos = lbgm_reuse(sent, units, setup.params["delta"], LBGS.setdefault(client_id, {}))
        reused = {name for unit in rhos for name in units[unit]}
        buffers = {
            n: b.detach().numpy().copy() for n, b in model.state_dict().items() if n not in grads
        }
        full = {name: wire for name, wire in wires.items() if name not in reused}
        replies.append(PseudoGradientReply(client_id, examples, full, rhos, buffers))
    if units:
        return replies
    grads, buffers = WeightedSum(), WeightedSum()
    dtype = np.dtype(np.float32)
    for reply in replies:
        decoded = {
            name: codec.decode(name, wire, tuple(state[name].shape), dtype)
            for name, wire in reply.wires.items()
        }
        grads.add(decoded, reply.examples)
        buffers.add(reply.buffers, reply.examples)
    return PartialSums(grads.partial(), buffers.partial(), grads.weight)


class PseudoGradientFloor:
    """The server of top-k, signSGD and LBGM: decode, sum weighted by examples, step."""

    share = staticmethod(pseudo_gradient_share)

    def __init__(self, setup: Setup) -> None:
        self.model = setup.work.new_model()
        self.codec = codec_of(setup)
        self.units = lbgm_units(setup, self.model)
        self.layers = {n: tuple(p.shape) for n, p in self.model.named_parameters()}
        self.dtype = np.dtype(np.float32)  # the parameters', so their pseudo-gradients'
        self.server_lr = float(setup.params["server_lr"])
        self.server_momentum = float(setup.params["server_momentum"])
        self.velocity: Arrays = {}
        self.lbgs: dict[tuple[int, str], np.ndarray] = {}  # (client, unit): the client's LBG
        self.grads, self.buffers = WeightedSum(), WeightedSum()

    def payload(self) -> State:
        return self.model.state_dict()

    def decode(self, reply: PseudoGradientReply) -> dict[str, np.ndarray | Scaled]:
        """The client's pseudo-gradient per layer; full units become its LBGs."""
        grads: dict[str, np.ndarray | Scaled] = {
            name: self.codec.decode(name, wire, self.layers[name], self.dtype)
            for name, wire in reply.wires.items()
        }
        for unit, names in self.units.items():
            if unit not in reply.rhos:
                self.lbgs[reply.client_id, unit] = flat(grads, names)
                continue
            lbg, offset = self.lbgs[reply.client_id, unit], 0
            for name in names:
                size = math.prod(self.layers[name])
                part = lbg[offset : offset + size].reshape(self.layers[name])
                grads[name] = Scaled(reply.rhos[unit], part)
                offset += size
        return grads

    def fold(self, replies: list[PseudoGradientReply] | PartialSums) -> None:
        if isinstance(replies, PartialSums):
            self.grads.merge(replies.grads, replies.examples)
            self.buffers.merge(replies.buffers, replies.examples)
            return
        for reply in replies:
            self.grads.add(self.decode(reply), reply.examples)
            self.buffers.add(reply.buffers, reply.examples)

    def step(self, server_round: int) -> None:
        """θ ← θ − server_lr·v, v ← server_momentum·v + ḡ; buffers averaged."""
        state = {n: v.numpy() for n, v in self.model.state_dict().items()}
        new = cast_like(self.buffers.mean(), state)
        for name, mean in self.grads.mean().items():
            if self.server_momentum:
                mean += self.server_momentum * self.velocity.get(name, 0.0)
                self.velocity[name] = mean
            new[name] = (state[name] - self.server_lr * mean).astype(state[name].dtype)
        self.model.load_state_dict({n: torch.from_numpy(v) for n, v in new.items()})
        self.grads, self.buffers = WeightedSum(), WeightedSum()


# ----------------------------------------------------------------------------------- FedPM
def fedpm_model(setup: Setup) -> nn.Module:
    """The masked network: frozen weights from the weight seed, scores seeded as the server's;
    on the work's device."""
    info = dataset_info(setup.work.spec)
    weight_seed = setup.params["weight_seed"]
    torch.manual_seed(SEED)
    model = build_masked(
        masked_model_name(setup.work.model),
        info.input_shape,
        info.num_classes,
        derived_weight_seed(SEED) if weight_seed is None else weight_seed,
    )
    return model.to(setup.work.device)


def fedpm_share(
    setup: Setup, client_ids: list[int], priors: Arrays, server_round: int
) -> tuple[Arrays, int]:
    """Each client's mask, range-coded against the uint16 θ it received (``priors``), or under
    ``uplink_coding=klms`` chosen among candidates drawn from it and sent as indices; then
    decoded again (KLMS: the chosen candidates regenerated) and counted: the ones per entry over
    these clients, and how many."""
    model = fedpm_model(setup)
    device = torch.device(setup.work.device)  # where KLMS hashes its candidates, as fedsparse
    set_estimator(model, setup.params["estimator"])
    params = setup.params
    klms = None
    if params.get("uplink_coding") == "klms":
        klms = KlmsSettings(
            params["klms_bits"],
            params["klms_kl_per_block"],
            params["klms_max_block"],
            params["klms_fresh_kl"],
        )
    scores = {  # the scores to train from: logit(q / 2¹⁶), decoded once for every client
        k: torch.from_numpy(logit(prior_probabilities(q)).astype(np.float32)).view(q.shape)
        for k, q in priors.items()
    }
    replies = []
    for client_id in client_ids:
        model.load_state_dict(scores)
        seed = round_seed(SEED, server_round, client_id)
        set_mask_rng(model, MaskRNG(seed ^ TRAIN_MASK_STREAM, setup.work.device))
        optimizer = torch.optim.Adam(model.parameters(), lr=setup.params["local_lr"], fused=True)
        setup.work.train_client(model, client_id, server_round, optimizer)
        set_mask_rng(model, None)
        trained = {name: score.detach().cpu() for name, score in model.state_dict().items()}
        if klms is None:
            rng = MaskRNG(seed ^ MASK_STREAM)
            masks = {
                name: draw_bool_mask(torch.sigmoid(score), rng).numpy()
                for name, score in trained.items()
            }
            replies.append((client_id, encode_masks(masks, priors)))
        else:
            probabilities = {k: sigmoid(v.numpy()) for k, v in trained.items()}
            keys = _klms_keys(server_round, client_id, list(priors))
            generator = np.random.default_rng(seed ^ MASK_STREAM)
            coded, _ = encode_masks_klms(probabilities, priors, keys, klms, generator, device)
            replies.append((client_id, coded))
    shapes = {k: tuple(q.shape) for k, q in priors.items()}
    counts: Arrays = {}
    for client_id, coded in replies:
        decoder = None
        if klms is not None:
            keys = _klms_keys(server_round, client_id, list(priors))

            def decoder(name: str, segment: np.ndarray, keys=keys) -> np.ndarray:
                return decode_layer(segment, priors[name], keys[name], klms, name, device)

        masks = decode_masks(coded.stream, coded.header(), shapes, priors, decoder)
        for name, mask in masks.items():
            count = counts.setdefault(name, np.zeros(mask.shape, np.int32))
            np.add(count, mask, out=count)
    return counts, len(replies)


def _klms_keys(server_round: int, client_id: int, names: list[str]) -> dict[str, np.uint32]:
    return {name: layer_key(SEED, server_round, client_id, i) for i, name in enumerate(names)}


class FedPMFloor:
    """FedPM's server: θ down as uint16, every mask decoded, the Beta posterior's mode back."""

    share = staticmethod(fedpm_share)

    def __init__(self, setup: Setup) -> None:
        self.model = fedpm_model(setup)
        params = setup.params
        self.posterior = BetaPosterior(
            float(params["lambda0"]), float(params["eps"]), params["reset_period"]
        )
        self.priors: Arrays = {}
        self.counts: dict[str, np.ndarray] = {}  # Σ_c m_c per entry: the posterior's evidence
        self.clients = 0

    def payload(self) -> Arrays:
        """θ = σ(scores) as uint16 fixed point: the downlink and the coder's prior."""
        self.priors = {
            k: quantize_prior(sigmoid(v.cpu().numpy())) for k, v in self.model.state_dict().items()
        }
        return self.priors

    def fold(self, share: tuple[Arrays, int]) -> None:
        """Add a worker's counts of ones, every client once."""
        counts, clients = share
        for name, count in counts.items():
            total = self.counts.setdefault(name, np.zeros(count.shape, np.int32))
            np.add(total, count, out=total)
        self.clients += clients

    def step(self, server_round: int) -> None:
        theta = self.posterior.update(server_round, self.counts, self.clients)
        self.model.load_state_dict(
            {k: torch.from_numpy(logit(v).astype(np.float32)) for k, v in theta.items()}
        )
        self.counts, self.clients = {}, 0


FLOORS: dict[str, Callable[[Setup], Floor]] = {
    "lips": LipsFloor,
    "topk": PseudoGradientFloor,
    "signsgd": PseudoGradientFloor,
    "lbgm": PseudoGradientFloor,
    "fedpm": FedPMFloor,
}
