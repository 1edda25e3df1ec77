"""A client's look-back gradients (LBGs) and unacknowledged candidates, stored in blocks.

Under LBGM's version protocol a client keeps, per unit, the LBG the server acknowledged and the
*candidate* it last sent in full, which becomes the LBG once the server advertises its version.
Every vector is written once, into the block of the round that produced it (one record with
every unit sent in full that round); an index record says, per unit, which version is
acknowledged and which is a candidate, and in which block each lives. Promoting a candidate
only rewrites the index, never the vector: with client state in files that halves the bytes a
client writes per round (before, each round wrote its candidates, then the same vectors again
as LBGs the round after).

A block goes once no unit refers to it. Blocks that hold mostly superseded vectors (units that
since sent newer ones) are compacted: when the blocks kept hold more than twice the bytes of
the live vectors, the live LBGs are copied into this round's block and the old blocks dropped,
so the state stays within four models' worth of bytes (two live vectors per unit at most).
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord

from strategies.core.wire import ClientState

INDEX = "lbgm-index"
BLOCK = "lbgm-block:"
ACKED, CANDIDATE, BYTES = "acked:", "candidate:", "bytes:"
COMPACT_FACTOR = 2  # compact when the blocks kept hold more than this times the live bytes

Entry = tuple[int, int]  # (version, block)


def _block_name(block: int) -> str:
    return f"{BLOCK}{block}"


def _key(unit: str, version: int) -> str:
    return f"{unit}@{version}"


class ClientLBGs:
    """One client's LBG book over its :class:`ClientState` (read at construction)."""

    def __init__(self, state: ClientState) -> None:
        self.state = state
        index = state.get(INDEX)
        index = index if isinstance(index, ConfigRecord) else ConfigRecord()
        self.acked: dict[str, Entry] = self._entries(index, ACKED)
        self.candidates: dict[str, Entry] = self._entries(index, CANDIDATE)
        self.block_bytes: dict[int, int] = {
            int(key.removeprefix(BYTES)): int(value)
            for key, value in index.items()
            if key.startswith(BYTES)
        }
        self._vectors: dict[str, np.ndarray] = {}  # acknowledged vectors read this round

    @staticmethod
    def _entries(index: ConfigRecord, prefix: str) -> dict[str, Entry]:
        return {
            key.removeprefix(prefix): (int(value[0]), int(value[1]))
            for key, value in index.items()
            if key.startswith(prefix)
        }

    def acknowledged(self, server_versions: dict[str, int]) -> dict[str, tuple[int, np.ndarray]]:
        """The LBGs the client may reuse: those whose version the server advertises.

        A candidate is promoted when its version is advertised; every other entry the server
        does not hold (a lost reply, an evicted entry) is dropped. Reads only the blocks needed.
        """
        acked: dict[str, Entry] = {}
        for unit, version in server_versions.items():
            for entry in (self.candidates.get(unit), self.acked.get(unit)):
                if entry is not None and entry[0] >= 0 and entry[0] == version:
                    acked[unit] = entry
                    break
        self.acked, self.candidates = acked, {}
        blocks: dict[int, dict[str, np.ndarray]] = {}
        for unit, (version, block) in acked.items():
            if block not in blocks:
                vectors = self.state.get_arrays(_block_name(block))
                if vectors is None:
                    raise ValueError(f"lbgm: the client's block {block} of LBGs is missing")
                blocks[block] = vectors
            self._vectors[unit] = blocks[block][_key(unit, version)]
        return {unit: (version, self._vectors[unit]) for unit, (version, _) in acked.items()}

    def commit(self, server_round: int, candidates: dict[str, np.ndarray]) -> None:
        """Keep ``candidates`` (the units sent in full this round) and store the book: one new
        block, an index, and the removal of blocks no longer referred to. Called after
        :meth:`acknowledged`, whose vectors a compaction copies."""
        vectors = {_key(unit, server_round): v for unit, v in candidates.items()}
        self.candidates = {unit: (server_round, server_round) for unit in candidates}
        if self._fragmented(vectors):
            for unit, (version, _) in self.acked.items():
                vectors[_key(unit, version)] = self._vectors[unit]
                self.acked[unit] = (version, server_round)
        if vectors:
            self.state.set_arrays(_block_name(server_round), vectors)
            self.block_bytes[server_round] = sum(v.nbytes for v in vectors.values())
        live = {block for _, block in [*self.acked.values(), *self.candidates.values()]}
        for block in set(self.block_bytes) - live:
            self.state.delete(_block_name(block))
            del self.block_bytes[block]
        index: dict[str, list[int] | int] = {
            **{ACKED + unit: list(entry) for unit, entry in self.acked.items()},
            **{CANDIDATE + unit: list(entry) for unit, entry in self.candidates.items()},
            **{f"{BYTES}{block}": size for block, size in self.block_bytes.items()},
        }
        self.state.set(INDEX, ConfigRecord(index))

    def _fragmented(self, new: dict[str, np.ndarray]) -> bool:
        """Whether the old blocks the acknowledged LBGs live in hold more than
        ``COMPACT_FACTOR`` times the live bytes (this round's block included)."""
        kept = {block for _, block in self.acked.values()}
        held = sum(self.block_bytes.get(block, 0) for block in kept)
        fresh = sum(v.nbytes for v in new.values())
        live = sum(self._vectors[unit].nbytes for unit in self.acked) + fresh
        return held + fresh > COMPACT_FACTOR * live
