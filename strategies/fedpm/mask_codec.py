"""FedPM's mask codec: binary masks bit-packed, or range-coded against the global probabilities.

Both ends of a FedPM round hold the global mask probabilities θ_g, so a client's sampled mask m
can be coded entry by entry with the model P(m_i = 1) = θ_g,i: it costs Σ −log₂ p_g(m_i) bits,
far below one bit per entry once θ_g polarises. Decoding breaks on a one-ulp difference in the
model, so θ_g travels as 16-bit fixed-point integers q (θ = q / 2¹⁶, q ∈ [1, 2¹⁶ − 1]) and both
ends feed the coder the same exactly representable q / 2¹⁶, never their own ``exp``.

The coder is ``constriction``'s range coder with its ``Bernoulli(perfect=False)`` family (24-bit
fixed-point probabilities). A coded reply is one byte stream: per layer, either the packed bits
(flag 0) or the coder's 32-bit words in little-endian order (flag 1, only where that is
smaller), plus a header with the flags, each segment's byte length and the CRC32 of every layer's
packed mask, so a stream that decodes to anything but the client's mask is caught. A third flag
marks a layer sent as a KLMS choice among shared candidates (``strategies.klms_codec``), which
the caller decodes.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import constriction
import numpy as np
from flwr.app import ConfigRecord

from strategies.core.validation import ReplyError

PRIOR_BITS = 16
PRIOR_SCALE = 1 << PRIOR_BITS  # θ = q / 2¹⁶ exactly, as float64
PRIOR_MIN, PRIOR_MAX = 1, PRIOR_SCALE - 1  # no entry gets probability 0 or 1
PACKED, RANGE, KLMS = 0, 1, 2  # per-layer flags of a coded reply (KLMS: strategies.klms_codec)
WORD_BYTES = 4
FLAGS_KEY, SIZES_KEY, CRC_KEY = "flags", "sizes", "crc32"
# constriction's submodules exist only as attributes of its native module (no import by path).
_FAMILY = constriction.stream.model.Bernoulli(perfect=False)  # `perfect=True` quantises otherwise
RangeEncoder, RangeDecoder = (
    constriction.stream.queue.RangeEncoder,
    constriction.stream.queue.RangeDecoder,
)


# ----------------------------------------------------------------------------- packed bits
def pack_mask(mask: np.ndarray) -> np.ndarray:
    """A binary mask as ⌈N/8⌉ uint8 bytes (row-major, zero padding bits)."""
    return np.packbits(mask.astype(bool, copy=False).ravel())


def unpack_mask(packed: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Inverse of :func:`pack_mask`; a wrong dtype or length is a ReplyError."""
    size = math.prod(shape)
    expected = packed_size(size)
    if packed.dtype != np.uint8:
        raise ReplyError("mask-dtype", f"{name}: dtype {packed.dtype}, expected uint8")
    if packed.shape != (expected,):
        raise ReplyError(
            "mask-length", f"{name}: shape {packed.shape}, expected ({expected},) = ⌈{size}/8⌉"
        )
    return np.unpackbits(packed, count=size).reshape(shape)


def packed_size(entries: int) -> int:
    """Bytes of ``entries`` packed bits."""
    return (entries + 7) // 8


# ------------------------------------------------------------------------------ the prior
def quantize_prior(theta: np.ndarray) -> np.ndarray:
    """θ as uint16 fixed point q = round(θ·2¹⁶), clipped to [1, 2¹⁶ − 1] (the downlink form)."""
    scaled = np.rint(np.asarray(theta, dtype=np.float64) * PRIOR_SCALE)
    return np.clip(scaled, PRIOR_MIN, PRIOR_MAX).astype(np.uint16)


def prior_probabilities(prior: np.ndarray) -> np.ndarray:
    """P(m = 1) = q / 2¹⁶ per entry, flat float64: exact, the same bits on every machine."""
    return np.ravel(prior).astype(np.float64) / PRIOR_SCALE


@dataclass(frozen=True)
class CodeLengths:
    """Per-entry ideal code lengths under a prior: −log₂(1 − p) and −log₂ p − (−log₂(1 − p))."""

    zeros_bits: float
    ones_gain: np.ndarray

    @classmethod
    def of(cls, prior: np.ndarray) -> CodeLengths:
        p = prior_probabilities(prior)
        cost_zero = -np.log2(1.0 - p)
        return cls(float(cost_zero.sum()), -np.log2(p) - cost_zero)

    def bits(self, mask: np.ndarray) -> float:
        """Σ −log₂ p(m_i): the code length of ``mask`` the prior allows."""
        return self.zeros_bits + float(np.dot(np.ravel(mask).astype(np.float64), self.ones_gain))


# ------------------------------------------------------------------------------ the coder
def range_encode(mask: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """The range coder's uint32 words for ``mask`` under the prior ``q``."""
    encoder = RangeEncoder()
    encoder.encode(np.ravel(mask).astype(np.int32), _FAMILY, prior_probabilities(prior))
    return encoder.get_compressed()


def range_decode(words: np.ndarray, prior: np.ndarray, name: str) -> np.ndarray:
    """The flat uint8 mask ``words`` code under ``q``; a stream the coder refuses is a
    ReplyError. Decoding costs one step per entry whatever the stream holds."""
    try:
        symbols = RangeDecoder(words).decode(_FAMILY, prior_probabilities(prior))
    except Exception as err:  # the coder asserts on streams invalid for the model
        raise ReplyError("mask-stream", f"{name}: {err}") from None
    return symbols.astype(np.uint8)


@dataclass(frozen=True)
class CodedMasks:
    """A reply's masks as one byte stream and the header that splits and checks it."""

    stream: np.ndarray
    flags: bytes
    sizes: list[int]
    crc32: int

    def header(self) -> ConfigRecord:
        return ConfigRecord({FLAGS_KEY: self.flags, SIZES_KEY: self.sizes, CRC_KEY: self.crc32})


def encode_masks(masks: Mapping[str, np.ndarray], priors: Mapping[str, np.ndarray]) -> CodedMasks:
    """Each layer range-coded against its prior, or packed where the code is no smaller."""
    segments, flags, checksum = [], bytearray(), 0
    for name, mask in masks.items():
        packed = pack_mask(mask)
        checksum = zlib.crc32(packed, checksum)
        coded = range_encode(mask, priors[name]).astype("<u4").view(np.uint8)
        if coded.size < packed.size:
            segments.append(coded)
            flags.append(RANGE)
        else:
            segments.append(packed)
            flags.append(PACKED)
    return CodedMasks(
        np.concatenate(segments) if segments else np.zeros(0, np.uint8),
        bytes(flags),
        [int(s.size) for s in segments],
        checksum,
    )


def _header_fields(
    header: ConfigRecord, layers: int, allowed: set[int]
) -> tuple[bytes, list[int], int]:
    """The header's flags, segment sizes and CRC, each checked for type and count."""
    flags, sizes, crc = header.get(FLAGS_KEY), header.get(SIZES_KEY), header.get(CRC_KEY)
    if not isinstance(flags, bytes) or len(flags) != layers or set(flags) - allowed:
        raise ReplyError(
            "mask-flag", f"flags {flags!r}: expected {layers} bytes, each one of {sorted(allowed)}"
        )
    if (
        not isinstance(sizes, list)
        or len(sizes) != layers
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sizes)
    ):
        raise ReplyError("mask-length", f"segment sizes {sizes!r}: expected {layers} integers")
    if not isinstance(crc, int) or isinstance(crc, bool) or not 0 <= crc < 1 << 32:
        raise ReplyError("mask-crc", f"crc32 {crc!r}: expected an unsigned 32-bit integer")
    return flags, sizes, crc


def decode_masks(
    stream: np.ndarray,
    header: ConfigRecord,
    shapes: Mapping[str, tuple[int, ...]],
    priors: Mapping[str, np.ndarray],
    klms: Callable[[str, np.ndarray], np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The uint8 masks of a coded reply, after every check; any defect is a ReplyError.
    ``klms(name, segment)`` decodes a KLMS layer's flat mask; without it such a layer is one."""
    allowed = {PACKED, RANGE} if klms is None else {PACKED, RANGE, KLMS}
    flags, sizes, crc = _header_fields(header, len(shapes), allowed)
    if stream.dtype != np.uint8 or stream.ndim != 1:
        raise ReplyError("mask-dtype", f"stream {stream.dtype}{stream.shape}, expected uint8 (n,)")
    if stream.size != sum(sizes):
        raise ReplyError("mask-length", f"stream of {stream.size} bytes, header says {sum(sizes)}")
    masks, checksum, start = {}, 0, 0
    for (name, shape), flag, size in zip(shapes.items(), flags, sizes, strict=True):
        segment = stream[start : start + size]
        start += size
        entries = math.prod(shape)
        if flag == PACKED:
            mask = unpack_mask(segment, shape, name)
        elif flag == KLMS:
            mask = klms(name, segment).reshape(shape)
        else:
            if size % WORD_BYTES or not WORD_BYTES <= size < packed_size(entries):
                raise ReplyError(
                    "mask-length",
                    f"{name}: coded segment of {size} bytes, expected a multiple of "
                    f"{WORD_BYTES} below the packed {packed_size(entries)}",
                )
            words = segment.view("<u4").astype(np.uint32)
            mask = range_decode(words, priors[name], name).reshape(shape)
        masks[name] = mask
        checksum = zlib.crc32(pack_mask(mask), checksum)
    if checksum != crc:
        raise ReplyError(
            "mask-crc", f"the decoded masks' CRC32 {checksum:#010x} != the client's {crc:#010x}"
        )
    return masks
