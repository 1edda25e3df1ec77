"""``np.add.reduceat`` over float32 segments, in torch, rounded exactly as numpy rounds it.

KLMS scores candidates by float32 sums over blocks and takes an argmax (``klms_codec``); a sum
rounded differently can flip a near tie, so the torch scores must be numpy's to the bit. Float
addition is exact per operation (IEEE 754), so the same additions in the same order give the
same bits: this module reproduces numpy's order.

numpy's ``reduceat`` copies a segment's first element to the output and adds the pairwise sum
of the rest (numpy's ``pairwise_sum``, ``loops_utils.h.src``): below 8 elements a running sum
from −0.0; up to 128, eight lane accumulators over groups of 8 elements, combined as
((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7)), then the remainder added one by one; above 128, the sums
of two halves (the first half rounded down to a multiple of 8), recursively.

:class:`PairwisePlan` lays the elements out once per set of segment lengths (numpy, integer
work) so that every step of that order is one vectorised torch operation across all segments
and candidates: the segments' first elements, then the lane groups (leaves sorted by how many
groups they have, so group g of every leaf that has one is one contiguous slice), then the
remainders (sorted likewise), and the halves combined level by level, deepest first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

LANES = 8
BLOCK = 128  # numpy's PW_BLOCKSIZE: longer runs are split in two
GROUPS = BLOCK // LANES
NEG_ZERO = -0.0  # numpy's running sum starts here; x + (−0.0) == x for every x


@dataclass(frozen=True)
class _Level:
    """One level of half-sums: buffer[dst:dst+n] = buffer[left] + buffer[right]."""

    dst: int
    left: torch.Tensor
    right: torch.Tensor


@dataclass(frozen=True)
class PairwisePlan:
    """Where each element of the segments goes (``order``) and the additions, as slices."""

    order: np.ndarray  # layout position -> element index (a permutation of arange(total))
    segments: int
    lane_counts: tuple[int, ...]  # leaves with more than g groups, g = 0..15
    rest_counts: tuple[int, ...]  # leaves with more than t remainder elements, t = 0..6
    leaves: int
    to_rest_order: torch.Tensor  # leaf in remainder order -> its rank in lane order
    levels: tuple[_Level, ...]
    roots: torch.Tensor  # per segment, its pairwise sum's buffer column (the −0.0 one if none)

    @classmethod
    def of(cls, lengths: np.ndarray, device: torch.device) -> PairwisePlan:
        """The plan for segments of ``lengths`` (each >= 1) laid end to end."""
        lengths = np.asarray(lengths, np.int64)
        starts = np.cumsum(lengths) - lengths
        leaf_start, leaf_size, leaf_node, splits, segment_root = _split(starts + 1, lengths - 1)
        groups, rest = leaf_size // LANES, leaf_size % LANES
        by_groups = np.argsort(-groups, kind="stable")
        by_rest = np.argsort(-rest, kind="stable")
        lane_counts = tuple(int(np.count_nonzero(groups > g)) for g in range(GROUPS))
        rest_counts = tuple(int(np.count_nonzero(rest > t)) for t in range(LANES - 1))
        parts = [starts]
        for g, count in enumerate(lane_counts):
            first = leaf_start[by_groups[:count]] + LANES * g
            parts.append((first[:, None] + np.arange(LANES)).ravel())
        for t, count in enumerate(rest_counts):
            leaves = by_rest[:count]
            parts.append(leaf_start[leaves] + LANES * groups[leaves] + t)
        order = np.concatenate(parts)
        # buffer columns: leaves in remainder order, then the half-sums deepest level first
        column = np.empty(len(leaf_node) + sum(len(s[0]) for s in splits), np.int64)
        column[leaf_node[by_rest]] = np.arange(leaf_node.size)
        levels, next_column = [], leaf_node.size
        for node, left, right in reversed(splits):
            column[node] = np.arange(next_column, next_column + node.size)
            levels.append(
                _Level(
                    next_column,
                    torch.from_numpy(column[left]).to(device),
                    torch.from_numpy(column[right]).to(device),
                )
            )
            next_column += node.size
        empty = next_column  # the −0.0 column: the sum of a segment's nothing after its first
        roots = np.full(lengths.size, empty, np.int64)
        has_rest = segment_root >= 0
        roots[has_rest] = column[segment_root[has_rest]]
        rank = np.empty(leaf_node.size, np.int64)
        rank[by_groups] = np.arange(leaf_node.size)
        return cls(
            order=order,
            segments=int(lengths.size),
            lane_counts=lane_counts,
            rest_counts=rest_counts,
            leaves=int(leaf_node.size),
            to_rest_order=torch.from_numpy(rank[by_rest]).to(device),
            levels=tuple(levels),
            roots=torch.from_numpy(roots).to(device),
        )

    def reduce(self, values: torch.Tensor) -> torch.Tensor:
        """Per row, the float32 sum of every segment: ``values`` is (rows, total) in
        :attr:`order`'s layout; the result is (rows, segments), numpy's bits."""
        rows = values.shape[0]
        first = values[:, : self.segments]
        at = self.segments
        lanes = values.new_full((rows, self.leaves, LANES), NEG_ZERO)
        for g, count in enumerate(self.lane_counts):
            group = values[:, at : at + LANES * count].view(rows, count, LANES)
            if g == 0:
                lanes[:, :count] = group
            else:
                lanes[:, :count] += group
            at += LANES * count
        sums = ((lanes[..., 0] + lanes[..., 1]) + (lanes[..., 2] + lanes[..., 3])) + (
            (lanes[..., 4] + lanes[..., 5]) + (lanes[..., 6] + lanes[..., 7])
        )
        levels = sum(level.left.numel() for level in self.levels)
        buffer = values.new_empty((rows, self.leaves + levels + 1))
        buffer[:, : self.leaves] = sums.index_select(1, self.to_rest_order)
        buffer[:, -1] = NEG_ZERO
        for count in self.rest_counts:
            buffer[:, :count] += values[:, at : at + count]
            at += count
        for level in self.levels:
            end = level.dst + level.left.numel()
            buffer[:, level.dst : end] = buffer.index_select(1, level.left) + buffer.index_select(
                1, level.right
            )
        return first + buffer.index_select(1, self.roots)


def _split(
    start: np.ndarray, size: np.ndarray
) -> tuple[
    np.ndarray, np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray, np.ndarray]], np.ndarray
]:
    """numpy's recursive halving of runs (``start``, ``size``; size 0 = no run): the leaves
    (start, size, node), the splits per depth (node, left child, right child) and each run's
    root node (−1 for none). Nodes are numbered as they are made."""
    present = np.flatnonzero(size > 0)
    root = np.full(size.size, -1, np.int64)
    root[present] = np.arange(present.size)
    start, size, node = start[present], size[present], root[present]
    made = present.size
    leaf_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    splits = []
    while size.size:
        big = size > BLOCK
        leaf_parts.append((start[~big], size[~big], node[~big]))
        start, size, node = start[big], size[big], node[big]
        if not size.size:
            break
        half = size // 2
        half -= half % LANES
        left = np.arange(made, made + node.size)
        right = left + node.size
        made += 2 * node.size
        splits.append((node, left, right))
        start = np.concatenate([start, start + half])
        size = np.concatenate([half, size - half])
        node = np.concatenate([left, right])
    leaf_start, leaf_size, leaf_node = (
        np.concatenate([p[i] for p in leaf_parts]) if leaf_parts else np.zeros(0, np.int64)
        for i in range(3)
    )
    return leaf_start, leaf_size, leaf_node, splits, root
