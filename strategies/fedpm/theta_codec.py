"""FedPM's coded downlink: the uint16 θ as entropy-coded indices into its few distinct values.

The server's θ is the Beta posterior's mode, a function of each entry's count of ones: with
``reset_period=1`` and n clients it takes at most n + 1 distinct uint16 values. So θ travels as
those values (``levels``) and one index per entry, range-coded (``constriction``'s categorical
model, probabilities from integer counts that travel with the stream, so both ends build the
same model on any machine):

* **self-contained**: indices coded with the histogram of this round's levels
  (≈ H(level) bits per entry);
* **seed**: θ is the run's initial θ, which both ends regenerate from the run seed
  (:func:`strategies.fedpm.shared.seed_theta`): the stream is the seed, the shapes and the CRC
  (the first round's downlink);
* **delta**: indices coded per context, the context being the entry's level in the θ of round
  ``base`` that the client kept (≈ H(level_t | level_base) bits per entry); the table of
  context × level counts travels with it.

Every stream carries the CRC32 of θ, so a wrong base or a damaged stream never gives a wrong θ
silently. A client's decoded θ is the server's uint16 θ bit for bit. ``DownlinkError`` says
why a stream could not be decoded.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping

import constriction
import numpy as np

LEVELS, COUNTS, WORDS, CRC = "theta.levels", "theta.counts", "theta.words", "theta.crc"
BASE, TABLE, DELTA_WORDS = "theta.base", "theta.delta.counts", "theta.delta.words"
SEED = "theta.seed"
SHAPE_PREFIX = "theta.shape."
SELF_CONTAINED = (COUNTS, WORDS)  # beside the shapes, CRC and levels every stream needs
DELTA = (BASE, TABLE, DELTA_WORDS)
MAX_LEVELS = 4096  # more distinct values than this: plain uint16 is as small
Categorical = constriction.stream.model.Categorical
RangeEncoder, RangeDecoder = (
    constriction.stream.queue.RangeEncoder,
    constriction.stream.queue.RangeDecoder,
)


class DownlinkError(ValueError):
    """A coded θ that cannot be rebuilt here (no or another base, damaged stream)."""


def is_coded(arrays: Mapping[str, np.ndarray]) -> bool:
    return CRC in arrays


def _flat(priors: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.ravel(q) for q in priors.values()]).astype(np.uint16)


def _crc(flat: np.ndarray) -> np.ndarray:
    return np.array([zlib.crc32(flat.astype("<u2").tobytes())], np.uint32)


def _model(counts: np.ndarray):
    return Categorical(counts.astype(np.float64), perfect=False)


def encode_seed(priors: Mapping[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """The seed form of ``priors``, the initial θ of the run seeded ``seed``: shapes, CRC and
    the seed, no θ."""
    arrays = _header(priors)
    arrays[SEED] = np.array([seed], np.int64)
    return arrays


def _header(priors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {
        SHAPE_PREFIX + name: np.array(q.shape, np.int64) for name, q in priors.items()
    }
    arrays[CRC] = _crc(_flat(priors))
    return arrays


def codable(priors: Mapping[str, np.ndarray]) -> bool:
    """Whether θ has few enough distinct values for the level code to pay."""
    return np.unique(_flat(priors)).size <= MAX_LEVELS


def encode(
    priors: Mapping[str, np.ndarray],
    base: tuple[int, Mapping[str, np.ndarray]] | None = None,
) -> dict[str, np.ndarray]:
    """The coded θ: shapes, CRC and the self-contained stream; with ``base`` = (round, θ kept
    by the clients) the delta stream instead of the self-contained one."""
    flat = _flat(priors)
    levels, index = np.unique(flat, return_inverse=True)
    arrays = _header(priors)
    arrays[LEVELS] = levels
    index = index.astype(np.int32)
    if base is None:
        counts = np.bincount(index, minlength=levels.size).astype(np.uint32)
        encoder = RangeEncoder()
        encoder.encode(index, _model(counts))
        arrays[COUNTS], arrays[WORDS] = counts, encoder.get_compressed()
        return arrays
    base_round, base_priors = base
    context, contexts = _contexts(_flat(base_priors))
    table = np.zeros((contexts, levels.size), np.uint32)
    np.add.at(table, (context, index), 1)
    encoder = RangeEncoder()
    for c in range(contexts):
        symbols = index[context == c]
        if symbols.size:
            encoder.encode(symbols, _model(table[c]))
    arrays[BASE] = np.array([base_round], np.int64)
    arrays[TABLE], arrays[DELTA_WORDS] = table, encoder.get_compressed()
    return arrays


def encode_delta(
    priors: Mapping[str, np.ndarray],
    base: tuple[int, Mapping[str, np.ndarray]],
    own: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray] | None:
    """The delta stream's arrays, or None when it would not be smaller than ``own``, the
    self-contained encoding of ``priors`` (e.g. a base with many distinct values makes a
    large table)."""
    if not codable(base[1]):
        return None
    delta = encode(priors, base)
    if _bytes(delta, DELTA) >= _bytes(own, SELF_CONTAINED):
        return None
    return {k: delta[k] for k in DELTA}


def _bytes(arrays: Mapping[str, np.ndarray], keys: tuple[str, ...]) -> int:
    return sum(arrays[k].nbytes for k in keys)


def _contexts(base_flat: np.ndarray) -> tuple[np.ndarray, int]:
    """Each entry's context: the index of its base value among the base's distinct values."""
    values, context = np.unique(base_flat, return_inverse=True)
    return context, values.size


def decode(
    arrays: Mapping[str, np.ndarray],
    base: tuple[int, Mapping[str, np.ndarray]] | None = None,
    initial: Callable[[int], Mapping[str, np.ndarray]] | None = None,
) -> dict[str, np.ndarray]:
    """The uint16 θ per layer: the seed form regenerated by ``initial(seed)``; the delta
    stream when present and ``base`` is its round's θ, else the self-contained one. A stream
    that cannot be decoded is a DownlinkError."""
    try:
        shapes = {
            key[len(SHAPE_PREFIX) :]: tuple(int(d) for d in value)
            for key, value in arrays.items()
            if key.startswith(SHAPE_PREFIX)
        }
        sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes.values()]
        total = sum(sizes)
        if SEED in arrays:
            flat = _regenerated(arrays, initial, shapes)
        else:
            flat = _decode_levels(arrays, base, total)
    except (KeyError, IndexError, TypeError, ValueError) as err:
        if isinstance(err, DownlinkError):
            raise
        raise DownlinkError(f"coded θ is damaged: {err!r}") from None
    if not np.array_equal(_crc(flat), np.asarray(arrays[CRC])):
        raise DownlinkError("coded θ does not match its CRC32 (wrong base or damaged stream)")
    bounds = np.cumsum(sizes)[:-1]
    return {
        name: part.reshape(shape)
        for (name, shape), part in zip(shapes.items(), np.split(flat, bounds), strict=True)
    }


def _regenerated(
    arrays: Mapping[str, np.ndarray],
    initial: Callable[[int], Mapping[str, np.ndarray]] | None,
    shapes: Mapping[str, tuple[int, ...]],
) -> np.ndarray:
    """The seed form's θ, regenerated here: its layers must be the stream's."""
    seed = np.asarray(arrays[SEED])
    if seed.shape != (1,):
        raise DownlinkError(f"seed form: seed array of shape {seed.shape}, need (1,)")
    if initial is None:
        raise DownlinkError(
            f"the downlink is the initial θ of seed {int(seed[0])} and this end cannot "
            "regenerate it; pass the job's seed_theta"
        )
    priors = initial(int(seed[0]))
    held = {name: tuple(q.shape) for name, q in priors.items()}
    if held != dict(shapes):
        raise DownlinkError(f"seed form: layers {dict(shapes)}, the regenerated θ has {held}")
    return _flat(priors)


def _decode_levels(
    arrays: Mapping[str, np.ndarray],
    base: tuple[int, Mapping[str, np.ndarray]] | None,
    total: int,
) -> np.ndarray:
    """The flat θ of a self-contained or delta stream."""
    levels = np.asarray(arrays[LEVELS])
    if BASE in arrays and base is not None and int(arrays[BASE][0]) == base[0]:
        index = _decode_delta(arrays, _flat(base[1]), total, levels.size)
    elif WORDS in arrays:
        index = _decode_symbols(arrays[WORDS], [arrays[COUNTS]], [total], levels.size)
    else:
        held = "no θ" if base is None else f"the θ of round {base[0]}"
        raise DownlinkError(
            f"the downlink is coded against round {int(arrays[BASE][0])}'s θ and this client "
            f"holds {held}; the server sends a self-contained θ once it has not heard back"
        )
    return levels.astype(np.uint16)[index]


def _decode_delta(
    arrays: Mapping[str, np.ndarray], base_flat: np.ndarray, total: int, levels: int
) -> np.ndarray:
    if base_flat.size != total:
        raise DownlinkError(f"base θ has {base_flat.size} entries, the stream {total}")
    context, contexts = _contexts(base_flat)
    table = np.asarray(arrays[TABLE])
    if table.shape != (contexts, levels):
        raise DownlinkError(f"delta table {table.shape}, expected {(contexts, levels)}")
    sizes = np.bincount(context, minlength=contexts)
    used = [c for c in range(contexts) if sizes[c]]
    symbols = _decode_symbols(
        arrays[DELTA_WORDS], [table[c] for c in used], [int(sizes[c]) for c in used], levels
    )
    index = np.empty(total, np.int64)
    order = np.argsort(context, kind="stable")  # entries grouped by context, in entry order
    index[order] = symbols
    return index


def _decode_symbols(
    words: np.ndarray, counts: list[np.ndarray], sizes: list[int], levels: int
) -> np.ndarray:
    """Symbols coded group by group, each group with its own counts model."""
    decoder = RangeDecoder(np.asarray(words, np.uint32))
    parts = []
    for group_counts, size in zip(counts, sizes, strict=True):
        if np.asarray(group_counts).shape != (levels,):
            raise DownlinkError(f"level counts of shape {np.shape(group_counts)}, need {levels}")
        try:
            parts.append(decoder.decode(_model(np.asarray(group_counts)), size))
        except Exception as err:  # the coder asserts on streams invalid for the model
            raise DownlinkError(f"coded θ stream: {err}") from None
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
