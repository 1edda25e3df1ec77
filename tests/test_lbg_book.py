"""The client's LBG book: promotion without rewriting, stale entries dropped, bounded blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from client_app.state_files import FileClientState
from strategies.core.wire import ClientState, Record
from strategies.pseudo_gradient.lbg_book import BLOCK, INDEX, ClientLBGs

SIZES = {"conv.weight": 300, "conv.bias": 6, "fc.weight": 1000, "fc.bias": 10}
MODEL_BYTES = 4 * sum(SIZES.values())


class CountingState(ClientState):
    """A ClientState that records every ArrayRecord written (name, array keys)."""

    def __init__(self, node_state: RecordDict) -> None:
        super().__init__(node_state, 0)
        self.writes: list[tuple[str, list[str]]] = []

    def set(self, name: str, record: Record) -> None:
        if isinstance(record, ArrayRecord):
            self.writes.append((name, list(record.keys())))
        super().set(name, record)


def _vectors(server_round: int, units) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(server_round)
    return {u: rng.standard_normal(SIZES[u]).astype(np.float32) for u in units}


def _blocks(node_state: RecordDict) -> set[str]:
    return {key.split("/", 1)[1] for key in node_state if key.split("/", 1)[1].startswith(BLOCK)}


def test_promotion_rewrites_the_index_not_the_vectors() -> None:
    node_state = RecordDict()
    sent = {}
    for server_round in range(1, 6):
        state = CountingState(node_state)
        book = ClientLBGs(state)
        held = book.acknowledged({u: server_round - 1 if server_round > 1 else -1 for u in SIZES})
        if server_round > 1:  # last round's candidates, promoted, read back bit for bit
            assert {u: v for u, (_, v) in held.items()}.keys() == SIZES.keys()
            for unit, (version, vector) in held.items():
                assert version == server_round - 1
                assert np.array_equal(vector, sent[unit])
        sent = _vectors(server_round, SIZES)
        book.commit(server_round, sent)
        # one block a round, holding this round's vectors only
        assert state.writes == [(f"{BLOCK}{server_round}", [f"{u}@{server_round}" for u in SIZES])]
        assert _blocks(node_state) == {f"{BLOCK}{server_round}"} | (
            {f"{BLOCK}{server_round - 1}"} if server_round > 1 else set()
        )


def test_unadvertised_candidates_are_dropped_and_held_lbgs_kept() -> None:
    node_state = RecordDict()
    ClientLBGs(ClientState(node_state, 0)).commit(1, _vectors(1, SIZES))
    book = ClientLBGs(ClientState(node_state, 0))
    held = book.acknowledged(dict.fromkeys(SIZES, 1))
    assert set(held) == set(SIZES)
    book.commit(2, _vectors(2, ["fc.weight"]))  # round 2's full send of fc.weight is lost
    book = ClientLBGs(ClientState(node_state, 0))
    held = book.acknowledged(dict.fromkeys(SIZES, 1))  # the server still holds version 1
    assert {u: version for u, (version, _) in held.items()} == dict.fromkeys(SIZES, 1)
    assert np.array_equal(held["fc.weight"][1], _vectors(1, SIZES)["fc.weight"])
    book.commit(3, {})
    book = ClientLBGs(ClientState(node_state, 0))
    assert book.acknowledged({**dict.fromkeys(SIZES, 1), "fc.bias": -1}).keys() == (
        set(SIZES) - {"fc.bias"}  # evicted on the server: dropped here too
    )


def test_blocks_stay_bounded_and_match_the_index_under_random_reuse(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    node_state = RecordDict()
    server = dict.fromkeys(SIZES, -1)
    reference = {}  # what the server holds: (version, vector) per unit
    for server_round in range(1, 60):
        state = FileClientState(node_state, 0, tmp_path, 1)
        book = ClientLBGs(state)
        held = book.acknowledged(server)
        assert {u: v for u, (v, _) in held.items()} == {u: v for u, v in server.items() if v >= 0}
        for unit, (_, vector) in held.items():
            assert np.array_equal(vector, reference[unit][1])
        full = [u for u in SIZES if u not in held or rng.random() < 0.3]
        vectors = _vectors(server_round, full)
        book.commit(server_round, vectors)
        state.release_superseded()
        if rng.random() < 0.8:  # the reply arrives: the server keeps the full units
            for unit in full:
                server[unit] = server_round
                reference[unit] = (server_round, vectors[unit])
        if rng.random() < 0.05:
            server[str(rng.choice(list(SIZES)))] = -1  # an eviction
        sizes = {
            key: int(value) for key, value in node_state["0/" + INDEX].items() if "bytes:" in key
        }
        live = [*book.acked, *book.candidates]
        assert sum(sizes.values()) <= 2 * 4 * sum(SIZES[u] for u in live) <= 4 * MODEL_BYTES
        assert {f"{BLOCK}{key.split(':')[1]}" for key in sizes} == _blocks(node_state)
        files = list((tmp_path / "run-1" / "client-0").glob("*.arrays"))
        assert len(files) == len(_blocks(node_state))


def test_lbgs_scattered_over_old_blocks_are_compacted_into_one() -> None:
    """A reused unit pins the block it was sent in: a staircase of reuse pins four blocks
    holding ten vectors, four of them live, until the live ones are copied together."""
    units = {name: 100 for name in "abcd"}
    node_state = RecordDict()
    server: dict[str, int] = dict.fromkeys(units, -1)
    for server_round, full in enumerate(["abcd", "bcd", "cd", "d", ""], start=1):
        book = ClientLBGs(ClientState(node_state, 0))
        book.acknowledged(server)
        rng = np.random.default_rng(server_round)
        book.commit(server_round, {u: rng.standard_normal(100).astype(np.float32) for u in full})
        server.update(dict.fromkeys(full, server_round))
    book = ClientLBGs(ClientState(node_state, 0))
    assert {u: v for u, (v, _) in book.acknowledged(server).items()} == {
        "a": 1,
        "b": 2,
        "c": 3,
        "d": 4,
    }
    assert _blocks(node_state) == {f"{BLOCK}5"}
    assert sum(book.block_bytes.values()) == 4 * 100 * 4
