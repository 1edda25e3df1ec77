"""KLMS: a FedPM mask sent in about KL(q‖θ_g) bits by importance sampling shared candidates.

Range coding a *sampled* mask against θ_g costs its cross-entropy H(q) + KL(q‖θ_g): the client
pays for its own coin flips. KLMS (Isik, Pase et al., AISTATS 2024) sends only the choice among
candidates both ends can draw: per block of entries, client and server draw the same 2^b
candidate masks from θ_g; the client picks candidate j with probability ∝ Π q(m_j)/θ_g(m_j)
(importance sampling towards its trained q) and sends the b-bit index j; the server regenerates
candidate j. The chosen mask is close in law to a draw from q once a block carries a few bits
less KL than b.

Here:

* **Candidates are integers.** Entry i of candidate j is ``hash(key, j·n + i) >> 16 < q_i`` with
  q the uint16 θ both ends hold (P(1) = q/2¹⁶ exactly) and ``key`` derived from (run seed,
  round, client, layer): a counter-based hash, so the server regenerates only the chosen
  candidate of each block, bit for bit on any machine, and nothing depends on float sums.
* **Blocks are the client's.** It closes a block once the block's KL reaches
  ``kl_per_block`` bits or its length ``max_block``; a block whose KL is below ``fresh_kl`` takes
  candidate 0 and sends no index (a fresh θ_g sample). The lengths and fresh flags travel in
  the stream (zlib-compressed) and count on the wire.
* **numpy or torch, the same bits.** This module hashes and scores candidates in numpy (the
  reference); :mod:`strategies.fedpm.klms_torch` does it in torch on the client's or reducing
  node's device, where :data:`TORCH_FROM_HASHES` finds torch faster (large layers on a CPU, all
  but the smallest on CUDA). Chosen indices, bytes and masks are identical either way.
* **Segment layout** (one per layer, inside the coded reply of :mod:`strategies.mask_codec`):
  ``uint32`` LE length of the compressed block table, the table (per block ``uint16`` LE
  ``length − 1``, top bit = fresh), then the indices of the non-fresh blocks, ``bits`` bits
  each, MSB first, zero padding.
"""

from __future__ import annotations

import functools
import math
import warnings
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from strategies.core.validation import ReplyError
from strategies.fedpm import klms_torch
from strategies.fedpm.mask_codec import (
    KLMS,
    PRIOR_BITS,
    PRIOR_MAX,
    PRIOR_MIN,
    CodedMasks,
    pack_mask,
)

KLMS_STREAM = 0x4B4C  # keeps the candidates' keys apart from every other draw of the run seed
FRESH_BIT = 1 << 15
MAX_BLOCK_LIMIT = FRESH_BIT  # a block length - 1 fits the table's 15 bits
MAX_BITS = 16
CANDIDATE_CHUNK_ENTRIES = 1 << 18  # candidates × entries hashed at once (cache-sized)
# Hashes (candidates × entries) from which torch is used, per device type. On one CPU thread
# torch measured 0.3–0.7× numpy's speed on layers below 2^16 entries (64 candidates), about
# par near 2^18 and 1.1–1.2× from 2^19 (benchmarks/results/fedpm_klms_speed.md): smaller work,
# and so the decode (one hash per entry) of any layer below 2^25 entries, stays in numpy. On
# CUDA, from where kernel launches cost less than numpy's time: an estimate, since no GPU was at
# hand to measure it.
TORCH_FROM_HASHES = {"cpu": 1 << 25, "cuda": 1 << 18}
TABLE_HEADER_BYTES = 4
_M1, _M2 = np.uint32(0x7FEB352D), np.uint32(0x846CA68B)
_S15, _S16 = np.uint32(15), np.uint32(16)


@dataclass(frozen=True)
class KlmsSettings:
    """How a client cuts and codes its masks (``strategy.klms_*``)."""

    bits: int = 6
    kl_per_block: float = 3.0
    max_block: int = 4096
    fresh_kl: float = 0.05

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 1 <= self.bits <= MAX_BITS:
            raise ValueError(f"strategy.klms_bits={self.bits!r}: must be an integer in 1..16")
        if not self.kl_per_block > 0:
            raise ValueError(f"strategy.klms_kl_per_block={self.kl_per_block!r}: must be > 0")
        if not isinstance(self.max_block, int) or not 1 <= self.max_block <= MAX_BLOCK_LIMIT:
            raise ValueError(
                f"strategy.klms_max_block={self.max_block!r}: must be an integer in "
                f"1..{MAX_BLOCK_LIMIT}"
            )
        if not self.fresh_kl >= 0:
            raise ValueError(f"strategy.klms_fresh_kl={self.fresh_kl!r}: must be >= 0")

    def check_layer(self, entries: int, name: str) -> None:
        """Candidate counters j·n + i must fit 32 bits."""
        if (entries << self.bits) > 1 << 32:
            raise ValueError(
                f"layer {name} has {entries} entries: 2^klms_bits × entries must be <= 2^32; "
                "lower strategy.klms_bits"
            )


def layer_key(seed: int, server_round: int, client_id: int, layer: int) -> np.uint32:
    """The candidates' key of one client's layer in one round: integers only."""
    state = np.random.SeedSequence([seed, server_round, client_id, layer, KLMS_STREAM])
    return np.uint32(state.generate_state(1, np.uint32)[0])


def _mix(x: np.ndarray) -> np.ndarray:
    """A bijective 32-bit integer hash (xor-shift-multiply), in place on a uint32 array."""
    x ^= x >> _S16
    x *= _M1
    x ^= x >> _S15
    x *= _M2
    x ^= x >> _S16
    return x


def hashing_device(device: torch.device | None, hashes: int) -> torch.device | None:
    """Where ``hashes`` candidate entries are hashed: in torch on ``device`` when that is
    faster (:data:`TORCH_FROM_HASHES`) and torch there gives numpy's bits, else in numpy
    (None)."""
    if device is None or hashes < TORCH_FROM_HASHES.get(device.type, TORCH_FROM_HASHES["cuda"]):
        return None
    return device if torch_agrees(device) else None


@functools.cache
def torch_agrees(device: torch.device) -> bool:
    """Whether torch on ``device`` reproduces numpy's candidates and scores on a probe (once
    per process and device): counters past 2³¹, blocks of every summation shape, float32
    terms of many magnitudes. A platform that does not (integer overflow that does not wrap,
    subnormals flushed to zero) keeps numpy, with a warning, rather than send other bytes."""
    rng = np.random.default_rng(0x4B4C)
    key = np.uint32(0x9E3779B9)
    size = (1 << 16) + 1  # candidate 2^16 − 1 counts past 2³¹
    prior = rng.integers(PRIOR_MIN, PRIOR_MAX + 1, size).astype(np.uint16)
    lengths = np.array([1, 7, 8, 9, 127, 128, 129, 300, 4096, size - 4805])
    choice = rng.integers(0, 1 << MAX_BITS, lengths.size)
    choice[-1] = (1 << MAX_BITS) - 1
    d = (rng.standard_normal(size) * np.exp(rng.uniform(-90, 40, size))).astype(np.float32)
    d[::7] = 0.0
    mixed = int(key_mix(key))
    same = np.array_equal(
        klms_torch.chosen_mask(mixed, prior, lengths, choice, device),
        candidate_bits(key, prior, np.repeat(choice, lengths), np.arange(size)).astype(np.uint8),
    ) and np.array_equal(
        klms_torch.log_weights(mixed, prior, np.arange(size), d, lengths, 4, device).view(
            np.uint32
        ),
        _log_weights(key, prior, np.arange(size), d, lengths, 4).view(np.uint32),
    )
    if not same:
        warnings.warn(
            f"KLMS in torch on {device} differs from numpy on a probe; hashing in numpy there",
            RuntimeWarning,
            stacklevel=2,
        )
    return same


def key_mix(key: np.uint32) -> np.uint32:
    """The hashed key every counter of a layer is xored with."""
    return _mix(np.full(1, key, np.uint32))[0]


def candidate_bits(
    key: np.uint32, prior: np.ndarray, candidate: np.ndarray, entries: np.ndarray
) -> np.ndarray:
    """Entry ``entries`` of candidate ``candidate`` (broadcast together) under the uint16
    ``prior``: True where the hash's top 16 bits fall below q."""
    counter = candidate.astype(np.uint32) * np.uint32(prior.size) + entries.astype(np.uint32)
    counter ^= key_mix(key)
    # top 16 bits of the hash < q  ⟺  hash < q·2¹⁶ (one comparison, no shifted copy)
    return _mix(counter) < prior[entries].astype(np.uint32) << _S16


def kl_bits(q: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """KL(q_i ‖ p_i) in bits per entry, p = prior / 2¹⁶ (q clipped away from 0 and 1)."""
    p = prior.astype(np.float64) / (1 << PRIOR_BITS)
    q = np.clip(np.asarray(q, dtype=np.float64), 1e-12, 1.0 - 1e-12)
    return q * np.log2(q / p) + (1.0 - q) * np.log2((1.0 - q) / (1.0 - p))


def logit_gap(q: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """d = logit(q) − logit(p) per entry as float32, p = prior / 2¹⁶ (q clipped away from 0
    and 1): a candidate's log weight is Σ d over its ones."""
    p = prior.astype(np.float64) / (1 << PRIOR_BITS)
    qa = np.clip(q.astype(np.float64), 1e-12, 1.0 - 1e-12)
    return ((np.log(qa) - np.log1p(-qa)) - (np.log(p) - np.log1p(-p))).astype(np.float32)


def block_starts(kl: np.ndarray, kl_per_block: float, max_block: int) -> np.ndarray:
    """Where each block starts: a new block once the KL before an entry crosses the next
    multiple of ``kl_per_block``, and every ``max_block`` entries within such a block."""
    before = np.cumsum(kl) - kl
    group = np.floor(before / kl_per_block).astype(np.int64)
    group_start = np.flatnonzero(np.diff(group, prepend=-1))
    first = np.repeat(group_start, np.diff(np.append(group_start, kl.size)))
    return np.flatnonzero((np.arange(kl.size) - first) % max_block == 0)


def encode_layer(
    q: np.ndarray,
    prior: np.ndarray,
    key: np.uint32,
    settings: KlmsSettings,
    rng: np.random.Generator,
    device: torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One layer's (segment bytes, chosen flat uint8 mask); candidates hashed and scored in
    numpy, or in torch on ``device`` (the same bytes)."""
    prior = np.ravel(prior)
    kl = kl_bits(np.ravel(q), prior)
    starts = block_starts(kl, settings.kl_per_block, settings.max_block)
    lengths = np.diff(np.append(starts, prior.size))
    fresh = np.add.reduceat(kl, starts) < settings.fresh_kl
    choice = np.zeros(starts.size, np.int64)
    active = np.flatnonzero(~fresh)
    if active.size:
        choice[active] = _importance_choice(
            q, prior, key, settings.bits, starts, active, rng, device
        )
    mask = decode_choice(key, prior, starts, lengths, choice, device)
    table = ((lengths - 1) | np.where(fresh, FRESH_BIT, 0)).astype("<u2").tobytes()
    packed_table = zlib.compress(table, 9)
    index_bits = (choice[active, None] >> np.arange(settings.bits - 1, -1, -1)) & 1
    segment = np.concatenate(
        [
            np.frombuffer(len(packed_table).to_bytes(TABLE_HEADER_BYTES, "little"), np.uint8),
            np.frombuffer(packed_table, np.uint8),
            np.packbits(index_bits.astype(np.uint8).ravel()),
        ]
    )
    return segment, mask


def _importance_choice(
    q: np.ndarray,
    prior: np.ndarray,
    key: np.uint32,
    bits: int,
    starts: np.ndarray,
    active: np.ndarray,
    rng: np.random.Generator,
    device: torch.device | None = None,
) -> np.ndarray:
    """Per active block, a candidate index drawn ∝ Π q(m)/p(m) (Gumbel-max over log weights).

    log w_j = Σ_i m_ij·d_i + const with d_i = logit(q_i) − logit(p_i): only the entries of
    active blocks are hashed, in chunks of candidates, in numpy or (``device``) in torch."""
    lengths = np.diff(np.append(starts, prior.size))
    is_active = np.zeros(starts.size, bool)
    is_active[active] = True
    entries = np.flatnonzero(np.repeat(is_active, lengths))
    d = logit_gap(np.ravel(q)[entries], prior[entries])
    device = hashing_device(device, entries.size << bits)
    if device is None:
        log_w = _log_weights(key, prior, entries, d, lengths[active], bits)
    else:
        mixed = int(key_mix(key))
        log_w = klms_torch.log_weights(mixed, prior, entries, d, lengths[active], bits, device)
    return np.argmax(log_w.astype(np.float64) + rng.gumbel(size=log_w.shape), axis=0)


def _log_weights(
    key: np.uint32,
    prior: np.ndarray,
    entries: np.ndarray,
    d: np.ndarray,
    lengths: np.ndarray,
    bits: int,
) -> np.ndarray:
    """(2^bits, blocks) float32: per candidate, Σ d_i over its ones in each block of
    ``lengths`` laid end to end over ``entries``."""
    local_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    candidates = 1 << bits
    log_w = np.empty((candidates, lengths.size), np.float32)
    chunk = max(1, CANDIDATE_CHUNK_ENTRIES // max(entries.size, 1))
    for first in range(0, candidates, chunk):
        rows = np.arange(first, min(first + chunk, candidates))[:, None]
        hits = candidate_bits(key, prior, rows, entries[None, :])
        log_w[first : first + rows.shape[0]] = np.add.reduceat(hits * d, local_starts, axis=1)
    return log_w


def decode_choice(
    key: np.uint32,
    prior: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    choice: np.ndarray,
    device: torch.device | None = None,
) -> np.ndarray:
    """The flat uint8 mask of the chosen candidate of every block, regenerated in numpy or
    (``device``) in torch."""
    device = hashing_device(device, prior.size)
    if device is not None:
        return klms_torch.chosen_mask(int(key_mix(key)), prior, lengths, choice, device)
    per_entry = np.repeat(choice, lengths)
    return candidate_bits(key, prior, per_entry, np.arange(prior.size)).astype(np.uint8)


def decode_layer(
    segment: np.ndarray,
    prior: np.ndarray,
    key: np.uint32,
    settings: KlmsSettings,
    name: str,
    device: torch.device | None = None,
) -> np.ndarray:
    """The flat uint8 mask a layer's segment names, regenerated in numpy or (``device``) in
    torch; every defect is a ReplyError."""
    prior = np.ravel(prior)
    if segment.size < TABLE_HEADER_BYTES:
        raise ReplyError("klms-blocks", f"{name}: segment of {segment.size} bytes, no table")
    table_bytes = int.from_bytes(segment[:TABLE_HEADER_BYTES].tobytes(), "little")
    table_end = TABLE_HEADER_BYTES + table_bytes
    if table_end > segment.size:
        raise ReplyError(
            "klms-blocks", f"{name}: block table of {table_bytes} bytes overruns the segment"
        )
    table = _inflate(segment[TABLE_HEADER_BYTES:table_end].tobytes(), 2 * prior.size, name)
    if len(table) % 2:
        raise ReplyError("klms-blocks", f"{name}: block table of odd length {len(table)}")
    entries = np.frombuffer(table, "<u2").astype(np.int64)
    fresh = (entries & FRESH_BIT) != 0
    lengths = (entries & (FRESH_BIT - 1)) + 1
    if lengths.max(initial=0) > settings.max_block or int(lengths.sum()) != prior.size:
        raise ReplyError(
            "klms-blocks",
            f"{name}: {lengths.size} blocks covering {int(lengths.sum())} entries "
            f"(longest {lengths.max(initial=0)}), expected {prior.size} entries in blocks of "
            f"<= {settings.max_block}",
        )
    active = int(np.count_nonzero(~fresh))
    index_bytes = segment[table_end:]
    if index_bytes.size != math.ceil(active * settings.bits / 8):
        raise ReplyError(
            "klms-index",
            f"{name}: {index_bytes.size} index bytes for {active} blocks of {settings.bits} bits",
        )
    bits = np.unpackbits(index_bytes)
    if bits[active * settings.bits :].any():
        raise ReplyError("klms-index", f"{name}: non-zero padding after the last index")
    weights = 1 << np.arange(settings.bits - 1, -1, -1)
    indices = bits[: active * settings.bits].reshape(active, settings.bits) @ weights
    choice = np.zeros(lengths.size, np.int64)
    choice[~fresh] = indices
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return decode_choice(key, prior, starts, lengths, choice, device)


def _inflate(data: bytes, limit: int, name: str) -> bytes:
    """zlib-decompress at most ``limit`` bytes; anything else is a ReplyError."""
    inflater = zlib.decompressobj()
    try:
        table = inflater.decompress(data, limit)
    except zlib.error as err:
        raise ReplyError("klms-blocks", f"{name}: block table: {err}") from None
    if inflater.unconsumed_tail or not inflater.eof or inflater.unused_data:
        raise ReplyError("klms-blocks", f"{name}: block table is longer or shorter than its data")
    return table


def encode_masks_klms(
    probabilities: Mapping[str, np.ndarray],
    priors: Mapping[str, np.ndarray],
    keys: Mapping[str, np.uint32],
    settings: KlmsSettings,
    rng: np.random.Generator,
    device: torch.device | None = None,
) -> tuple[CodedMasks, dict[str, np.ndarray]]:
    """Every layer KLMS-coded: the coded reply (flag KLMS per layer, CRC32 of the chosen
    masks) and the chosen masks, shaped like the priors; ``device``: hashed in torch there."""
    segments, masks, checksum = [], {}, 0
    for name, q in probabilities.items():
        segment, mask = encode_layer(q, priors[name], keys[name], settings, rng, device)
        masks[name] = mask.reshape(priors[name].shape)
        checksum = zlib.crc32(pack_mask(mask), checksum)
        segments.append(segment)
    coded = CodedMasks(
        np.concatenate(segments) if segments else np.zeros(0, np.uint8),
        bytes([KLMS] * len(segments)),
        [int(s.size) for s in segments],
        checksum,
    )
    return coded, masks
