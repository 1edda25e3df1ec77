"""FedPM's coded downlink: the uint16 θ as entropy-coded indices into its few distinct values.

The server's θ is the Beta posterior's mode, a function of each entry's count of ones: with
``reset_period=1`` and n clients it takes at most n + 1 distinct uint16 values. So θ travels as
those values (``levels``) and one index per entry, range-coded (``constriction``'s categorical
model, its probabilities built from integers that travel with the stream, so both ends build
the same model on any machine):

* **self-contained**: indices coded with the histogram of this round's levels
  (≈ H(level) bits per entry);
* **seed**: θ is the run's initial θ, which both ends regenerate from the run seed
  (:func:`strategies.fedpm.shared.seed_theta`): the stream is the seed, the shapes and the CRC
  (the first round's downlink);
* **delta**: indices coded against the θ of round ``base`` that the client kept, each entry
  under :mod:`strategies.fedpm.count_model`'s prediction of its count from its base value (a
  binomial or beta-binomial over the round's n masks; ≈ the round's sampling noise in bits
  per entry, whatever n): n, each level's count and the spread travel with it, no table.

Every stream carries the CRC32 of θ, so a wrong base or a damaged stream never gives a wrong θ
silently. A client's decoded θ is the server's uint16 θ bit for bit. ``DownlinkError`` says
why a stream could not be decoded.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping

import constriction
import numpy as np

from strategies.fedpm import count_model

LEVELS, COUNTS, WORDS, CRC = "theta.levels", "theta.counts", "theta.words", "theta.crc"
BASE, DELTA_WORDS = "theta.base", "theta.delta.words"
TRIALS, LEVEL_COUNTS, SPREAD = "theta.trials", "theta.level-counts", "theta.spread"
SEED = "theta.seed"
SHAPE_PREFIX = "theta.shape."
SELF_CONTAINED = (COUNTS, WORDS)  # beside the shapes, CRC and levels every stream needs
DELTA = (BASE, TRIALS, LEVEL_COUNTS, SPREAD, DELTA_WORDS)
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


def encode(priors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The coded θ: shapes, CRC, levels and the self-contained stream (indices coded with the
    histogram of the levels)."""
    levels, index = np.unique(_flat(priors), return_inverse=True)
    arrays = _header(priors)
    arrays[LEVELS] = levels
    counts = np.bincount(index, minlength=levels.size).astype(np.uint32)
    encoder = RangeEncoder()
    encoder.encode(index.astype(np.int32), _model(counts))
    arrays[COUNTS], arrays[WORDS] = counts, encoder.get_compressed()
    return arrays


def encode_delta(
    priors: Mapping[str, np.ndarray],
    base: tuple[int, Mapping[str, np.ndarray]],
    own: Mapping[str, np.ndarray],
    counts: tuple[int, Mapping[str, np.ndarray]],
) -> dict[str, np.ndarray] | None:
    """The delta stream's arrays for clients holding ``base`` = (round, θ they kept), given
    ``counts`` = (n masks, each entry's count of ones) behind ``priors``; None when the counts
    do not name θ's levels one to one (a posterior kept over rounds), are too many, or the
    delta would not be smaller than ``own``, the self-contained encoding."""
    trials, per_entry = counts
    flat, count_flat = _flat(priors), np.concatenate([np.ravel(per_entry[k]) for k in priors])
    levels, index = np.unique(flat, return_inverse=True)
    level_counts = np.zeros(levels.size, np.int64)
    level_counts[index] = count_flat
    base_flat = _flat(base[1])
    if (
        not 1 <= trials <= count_model.MAX_TRIALS
        or base_flat.size != flat.size
        or not np.array_equal(level_counts[index], count_flat)
        or level_counts.min() < 0
        or level_counts.max() > trials
    ):
        return None
    context, u = count_model.contexts(base_flat)
    joint = np.bincount(context * levels.size + index, minlength=u.size * levels.size)
    spread, _ = count_model.best_spread(u, trials, level_counts, joint.reshape(u.size, levels.size))
    weights = count_model.level_probabilities(u, trials, spread, level_counts)
    order = np.argsort(context, kind="stable")  # entries grouped by context, in entry order
    grouped = np.split(index[order].astype(np.int32), np.cumsum(np.bincount(context))[:-1])
    encoder = RangeEncoder()
    for c, symbols in enumerate(grouped):
        if symbols.size:
            encoder.encode(symbols, _model(weights[c]))
    delta = {
        BASE: np.array([base[0]], np.int64),
        TRIALS: np.array([trials], np.int64),
        LEVEL_COUNTS: level_counts.astype(np.uint16),
        SPREAD: np.array([spread], np.int64),
        DELTA_WORDS: encoder.get_compressed(),
    }
    if _bytes(delta, DELTA) >= _bytes(own, SELF_CONTAINED):
        return None
    return delta


def _bytes(arrays: Mapping[str, np.ndarray], keys: tuple[str, ...]) -> int:
    return sum(arrays[k].nbytes for k in keys)


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
    trials, spread = _scalar(arrays, TRIALS), _scalar(arrays, SPREAD)
    level_counts = np.asarray(arrays[LEVEL_COUNTS]).astype(np.int64)
    if not 1 <= trials <= count_model.MAX_TRIALS or spread not in count_model.SPREADS:
        raise DownlinkError(
            f"delta model: {trials} trials (1..{count_model.MAX_TRIALS}), spread {spread} "
            f"(one of {count_model.SPREADS})"
        )
    if level_counts.shape != (levels,) or level_counts.max(initial=0) > trials:
        raise DownlinkError(
            f"delta model: level counts {level_counts.shape}, need ({levels},) within 0..{trials}"
        )
    context, u = count_model.contexts(base_flat)
    weights = count_model.level_probabilities(u, trials, spread, level_counts)
    sizes = np.bincount(context, minlength=u.size)
    used = [c for c in range(u.size) if sizes[c]]
    symbols = _decode_symbols(
        arrays[DELTA_WORDS], [weights[c] for c in used], [int(sizes[c]) for c in used], levels
    )
    index = np.empty(total, np.int64)
    order = np.argsort(context, kind="stable")  # entries grouped by context, in entry order
    index[order] = symbols
    return index


def _scalar(arrays: Mapping[str, np.ndarray], key: str) -> int:
    value = np.asarray(arrays[key])
    if value.shape != (1,):
        raise DownlinkError(f"{key} of shape {value.shape}, need (1,)")
    return int(value[0])


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
