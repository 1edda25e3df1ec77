"""What a client holding θ_{t−1} expects of θ_t: the coded downlink's model of a round's counts.

With the prior reset every round, θ_t is a function of each entry's count of ones among the
round's n masks, and every client drew its mask from scores trained from θ_{t−1}. So an entry
whose θ_{t−1} is p gets a count close to Binomial(n, p); learning moves the clients' q away from
p together and widens that, which a beta-binomial with concentration ``spread`` (a = p·spread,
b = (1 − p)·spread; 0 = the binomial) follows. No table travels: only n, the count of each θ_t
level and the spread, all integers.

Both ends must build the same probabilities bit for bit (the range coder's model): the pmf is
built from its ratios pmf(x+1)/pmf(x) with +, −, ×, ÷ only (correctly rounded on every IEEE
machine; no exp or log) and exact power-of-two rescaling, and normalised by its row maximum.
The stream's CRC still refuses a θ decoded under a different model.
"""

from __future__ import annotations

import numpy as np

PRIOR_SCALE = 1 << 16  # θ = u / 2¹⁶ (strategies.fedpm.mask_codec's fixed point)
MAX_CONTEXTS = 1024  # base values are bucketed (by dropping low bits) to at most this many
MAX_TRIALS = (1 << 16) - 1  # level counts travel as uint16
SPREADS = (0, 8, 32, 128, 512, 2048, 8192)  # candidates the encoder picks from (0 = binomial)
_HUGE, _RESCALE = 2.0**600, 2.0**-600


def contexts(base_flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each entry's context index and, per context, the uint16-scale probability u its model
    uses (p = u / 2¹⁶): the base's distinct values, bucketed by their high bits when there are
    more than :data:`MAX_CONTEXTS` of them (u = the bucket's middle)."""
    base = base_flat.astype(np.int64)
    shift = 0
    while np.unique(base >> shift).size > MAX_CONTEXTS:
        shift += 1
    buckets, context = np.unique(base >> shift, return_inverse=True)
    middle = (1 << shift) >> 1
    return context.astype(np.int64), (buckets << shift) + middle


def pmf_rows(u: np.ndarray, trials: int, spread: int) -> np.ndarray:
    """(contexts, trials + 1) float64: per context, the pmf of the count over 0..trials up to a
    positive factor (each row's maximum is 1)."""
    p = u.astype(np.float64)[:, None] / PRIOR_SCALE
    q = 1.0 - p
    x = np.arange(trials, dtype=np.float64)[None, :]
    if spread == 0:
        ratio = (trials - x) / (x + 1.0) * (p / q)
    else:
        a, b = p * spread, q * spread
        ratio = (trials - x) / (x + 1.0) * ((x + a) / (trials - x - 1.0 + b))
    rows = np.empty((u.size, trials + 1))
    rows[:, 0] = 1.0
    for k in range(trials):
        rows[:, k + 1] = rows[:, k] * ratio[:, k]
        large = np.flatnonzero(rows[:, k + 1] > _HUGE)
        if large.size:
            rows[large, : k + 2] *= _RESCALE
    return rows / rows.max(axis=1, keepdims=True)


def level_probabilities(
    u: np.ndarray, trials: int, spread: int, level_counts: np.ndarray
) -> np.ndarray:
    """(contexts, levels): the model's weight of each θ_t level (its count) per context."""
    return pmf_rows(u, trials, spread)[:, level_counts.astype(np.int64)]


def best_spread(
    u: np.ndarray, trials: int, level_counts: np.ndarray, joint: np.ndarray
) -> tuple[int, float]:
    """The spread of :data:`SPREADS` that codes the (context, level) histogram ``joint`` in the
    fewest ideal bits, and those bits (the encoder's choice; the decoder reads it)."""
    best = (SPREADS[0], np.inf)
    for spread in SPREADS:
        weights = level_probabilities(u, trials, spread, level_counts)
        weights = weights / weights.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore"):
            bits = -np.where(joint > 0, joint * np.log2(np.maximum(weights, 2.0**-24)), 0.0).sum()
        if bits < best[1]:
            best = (spread, float(bits))
    return best
