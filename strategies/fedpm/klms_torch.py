"""KLMS candidates and their scores in torch, on the client's device, to the bit as
:mod:`strategies.fedpm.klms_codec` computes them in numpy.

Why: hashing and scoring 2^bits candidates per entry is most of a KLMS client's coding time;
on a GPU it belongs beside the model. On one CPU core torch is at par with numpy, faster only
on large layers (``benchmarks/results/fedpm_klms_speed.md``): ``klms_codec.TORCH_FROM_HASHES``
says where each runs.

The candidates' hash is uint32 arithmetic; torch has no usable uint32 (no shifts, comparisons
or additions on CPU), so the same bits live in int32:

* additions and multiplications keep the low 32 bits: two's complement wraps modulo 2³² (the
  low 32 bits of a product are the same signed or unsigned), as torch's integer kernels do on
  CPU and CUDA; ``tests/test_klms_torch.py`` checks it on the device it runs on;
* a logical shift right is the arithmetic one with the copied sign bits masked off;
* a candidate bit reads only the hash's top 16 bits (hash < q·2¹⁶ ⟺ top16 < q), which the
  hash's last step (x ^= x >> 16) leaves as they are, so that step is skipped; flipping the
  sign bit of y = x·M2 (y + 2³¹, one fused 2³¹ + M2·x) makes the arithmetic shift by 16 give
  top16 − 2¹⁵, compared with q − 2¹⁵ without overflow.

Scores are float32 sums over each block of d_i where a candidate's bit is 1 and 0·d_i where it
is 0, added in numpy's order (:mod:`strategies.fedpm.pairwise`), so the argmax is numpy's; the
Gumbel noise and the argmax stay in numpy, on the very same float32 scores.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from strategies.fedpm.pairwise import PairwisePlan

_M1, _M2 = 0x7FEB352D, 0x846CA68B  # klms_codec._mix's multipliers
SIGN = 1 << 31
HALF = 1 << 15  # top16 − 2¹⁵ and q − 2¹⁵ compare as top16 and q
# candidates × entries hashed at once (in a CPU's L2 cache), and summed at once (fewer calls)
CHUNK_ENTRIES = {"cpu": (1 << 18, 1 << 22), "cuda": (1 << 24, 1 << 24)}


def int32_bits(value: int) -> int:
    """The int32 with the bits of the uint32 ``value``."""
    return value - (1 << 32) if value >= SIGN else value


def _to_device(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """Integers below 2³² as int32 bits on ``device``."""
    return torch.from_numpy(values.astype(np.uint32).view(np.int32)).to(device)


def _chunks(device: torch.device) -> tuple[int, int]:
    return CHUNK_ENTRIES["cpu" if device.type == "cpu" else "cuda"]


def _pieces(rows: int, columns: int, budget: int) -> Iterator[tuple[slice, slice]]:
    """Contiguous pieces of a (rows, columns) array of about ``budget`` elements: whole rows,
    or one row in runs of columns."""
    if columns <= budget:
        step = budget // columns
        for row in range(0, rows, step):
            yield slice(row, min(row + step, rows)), slice(None)
        return
    for row in range(rows):
        for column in range(0, columns, budget):
            yield slice(row, row + 1), slice(column, column + budget)


def _high_bits(x: torch.Tensor, key_mix: int, scratch: torch.Tensor) -> torch.Tensor:
    """In place: top16 − 2¹⁵ of ``klms_codec._mix(counter ^ key_mix)``, for the uint32
    counters ``x`` holds as int32 bits (``scratch``: a buffer of its shape)."""
    x ^= int32_bits(key_mix)
    torch.bitwise_right_shift(x, 16, out=scratch)
    x ^= scratch.bitwise_and_(0xFFFF)
    x *= int32_bits(_M1)
    torch.bitwise_right_shift(x, 15, out=scratch)
    x ^= scratch.bitwise_and_(0x1FFFF)
    torch.add(x.new_full((), -SIGN), x, alpha=int32_bits(_M2), out=x)  # x·M2 ^ sign bit
    x >>= 16
    return x


def log_weights(
    key_mix: int,
    prior: np.ndarray,
    entries: np.ndarray,
    d: np.ndarray,
    lengths: np.ndarray,
    bits: int,
    device: torch.device,
) -> np.ndarray:
    """(2^bits, blocks) float32: per candidate, Σ d_i over its ones in each block of
    ``lengths`` laid end to end over ``entries``: ``np.add.reduceat(hits * d)``, bit for bit.

    A candidate's term is d_i where its bit is 1 and 0·d_i (±0, as numpy's product) where it is
    0, made from the bits of d: d & (hit ? all ones : the sign bit)."""
    plan = PairwisePlan.of(lengths, device)
    placed = entries[plan.order]
    column = _to_device(placed, device)
    prior_half = torch.from_numpy(np.ravel(prior)[placed].astype(np.int32) - HALF).to(device)
    d_bits = torch.from_numpy(d[plan.order].view(np.int32)).to(device)
    candidates = 1 << bits
    out = torch.empty((candidates, lengths.size), dtype=torch.float32, device=device)
    hashed, summed = _chunks(device)
    summed = min(max(1, summed // placed.size), candidates)
    terms = torch.empty((summed, placed.size), dtype=torch.int32, device=device)
    scratch = torch.empty(min(hashed, summed * placed.size), dtype=torch.int32, device=device)
    for first in range(0, candidates, summed):
        count = min(summed, candidates - first)
        for rows, cols in _pieces(count, placed.size, hashed):
            offsets = np.arange(first + rows.start, first + rows.stop, dtype=np.int64) * prior.size
            term = terms[rows, cols]
            torch.add(column[cols], _to_device(offsets[:, None], device), out=term)  # < 2³²
            spare = scratch[: term.numel()].view(term.shape)
            _high_bits(term, key_mix, spare).sub_(prior_half[cols])  # < 0 ⟺ the bit is 1
            term >>= 31
            term |= -SIGN
            term &= d_bits[cols]
        out[first : first + count] = plan.reduce(terms[:count].view(torch.float32))
    return out.cpu().numpy()


def chosen_mask(
    key_mix: int,
    prior: np.ndarray,
    lengths: np.ndarray,
    choice: np.ndarray,
    device: torch.device,
) -> np.ndarray:
    """The flat uint8 mask of the chosen candidate of every block (``decode_choice``)."""
    size = int(prior.size)
    counter = torch.repeat_interleave(
        _to_device(choice.astype(np.int64) * size, device),
        torch.from_numpy(np.asarray(lengths, np.int64)).to(device),
        output_size=size,
    )
    counter += torch.arange(size, dtype=torch.int32, device=device)  # j·n + i < 2³²
    high = _high_bits(counter, key_mix, torch.empty_like(counter))
    prior_half = torch.from_numpy(np.ravel(prior).astype(np.int32) - HALF).to(device)
    return (high < prior_half).view(torch.uint8).cpu().numpy()
