"""Per-client state as a facility of the engine: what a client keeps across rounds, kept
consistent with the server's checkpoints and with the replies the server accepted.

A client half that sets ``keeps_state = True`` (or any run with ``bn_policy=local``) gets a
:class:`KeptState` as ``ctx.state``. Everything it writes there in round s becomes *version s*
of that client's state; what it reads is the version the server names. The server names, per
client, the round of its last accepted reply (:class:`StateRounds`, checkpointed with the
run), so:

- a reply the server dropped (invalid, lost, its node failed) leaves the client's newer version
  unnamed: next time the client starts again from the version the server's aggregate saw;
- a run resumed from the round-t checkpoint names each client's version as of round t, so a
  client that trained past the checkpoint before the interrupt rolls back;
- a client whose named version is gone (state in Flower's context after a restart, a node that
  lost its disk) starts from empty state and says so in its reply (``state-lost``, engine
  plumbing not counted as the reply's bytes); the server logs one line and the run goes on.

Versions share unchanged records (a version maps each name to the round that wrote it), and a
client keeps only the versions a checkpoint may still name: from the one named three rounds ago
(a resume may fall back to the checkpoint before the last, and the last may still be in
flight) to the one named now. Where the state lives, the engine decides: in Flower's context
(a restart empties it) or, with ``engine.client_state_dir``, in files on the node that outlive
the run's process (``client_app.state_files.FolderStore``). The round numbers travel as engine
plumbing in the job, beside the routing list, and are not counted as the algorithm's bytes.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from strategies.core.job import ClientJob
from strategies.core.update import STATE_LOST, ClientUpdate
from strategies.core.wire import ClientState, Record, client_key
from strategies.numeric.arrays import to_array_record, to_numpy_dict, with_bytes

log = logging.getLogger(__name__)

HISTORY = 3
"""Rounds of named versions a client keeps: the checkpoint being written while the next round
trains, the one before it, and the one a damaged checkpoint falls back to."""
NONE = -1  # the named round of a client with no accepted reply: empty state
STATE_PREFIX = "client-state/"  # checkpoint keys of the server's bookkeeping
ROUNDS_KEY, RUN_KEY = "rounds", "run-key"

Versions = dict[int, dict[str, int]]
"""A client's versions: round -> {record name: the round whose write holds it}."""


def data_key(name: str, written: int) -> str:
    """The stored key of record ``name`` as written in round ``written``."""
    return f"{name}@{written}"


class RecordStore(Protocol):
    """Where one client's versioned records live (Flower's context, or files on the node)."""

    def read_index(self) -> Versions: ...

    def write_index(self, versions: Versions) -> None: ...

    def get(self, key: str) -> Record | None: ...

    def get_arrays(self, key: str) -> dict[str, np.ndarray] | None: ...

    def put(self, key: str, record: Record) -> None: ...

    def put_arrays(self, key: str, arrays: Mapping[str, np.ndarray]) -> None: ...

    def remove(self, key: str) -> None: ...

    def held(self) -> set[str]: ...


def encode_versions(versions: Versions) -> str:
    """The index as JSON text (rounds as strings: JSON object keys)."""
    return json.dumps({str(v): names for v, names in sorted(versions.items())}, sort_keys=True)


def decode_versions(text: str) -> Versions:
    return {int(v): {n: int(r) for n, r in names.items()} for v, names in json.loads(text).items()}


class ContextStore:
    """A client's versioned records in the node's ``context.state`` (a restart empties it)."""

    INDEX = "kept-index"
    PREFIX = "kept:"

    def __init__(self, node_state: RecordDict, client_id: int) -> None:
        self.node_state = node_state
        self.client_id = client_id

    def _key(self, key: str) -> str:
        return client_key(self.client_id, self.PREFIX + key)

    def read_index(self) -> Versions:
        record = self.node_state.get(client_key(self.client_id, self.INDEX))
        return decode_versions(str(record["versions"])) if isinstance(record, ConfigRecord) else {}

    def write_index(self, versions: Versions) -> None:
        index = ConfigRecord({"versions": encode_versions(versions)})
        self.node_state[client_key(self.client_id, self.INDEX)] = index

    def get(self, key: str) -> Record | None:
        return self.node_state.get(self._key(key))

    def get_arrays(self, key: str) -> dict[str, np.ndarray] | None:
        record = self.get(key)
        return to_numpy_dict(record) if isinstance(record, ArrayRecord) else None

    def put(self, key: str, record: Record) -> None:
        if isinstance(record, ArrayRecord):  # Flower serialises the context: bytes only
            record = with_bytes(record)
        self.node_state[self._key(key)] = record

    def put_arrays(self, key: str, arrays: Mapping[str, np.ndarray]) -> None:
        self.put(key, to_array_record(arrays))

    def remove(self, key: str) -> None:
        self.node_state.pop(self._key(key), None)

    def held(self) -> set[str]:
        prefix = client_key(self.client_id, self.PREFIX)
        return {k[len(prefix) :] for k in self.node_state if k.startswith(prefix)}


class KeptState(ClientState):
    """One client's state as of the round the server names (``ctx.state`` of a client half
    that keeps state): reads see that version, writes make this round's version, and
    :meth:`release_superseded` (once the node's message succeeded) commits it."""

    def __init__(
        self, store: RecordStore, named: int, floor: int, server_round: int, writable: bool
    ) -> None:
        self.store = store
        self.server_round = server_round
        self.writable = writable
        versions = store.read_index()
        self.lost = named if named != NONE and named not in versions else None
        """The round of the named version when the client no longer has it (None: it has)."""
        self.view = dict(versions.get(named, {}))
        self.versions = {v: names for v, names in versions.items() if floor <= v <= named}
        if writable:  # versions no checkpoint can name any more, and records none refers to
            referenced = {
                data_key(n, r) for names in self.versions.values() for n, r in names.items()
            }
            for key in store.held() - referenced:
                store.remove(key)

    def _written(self, name: str) -> str:
        if not self.writable:
            raise RuntimeError(
                f"client state {name!r} written during evaluation: only training keeps state"
            )
        self.view[name] = self.server_round
        return data_key(name, self.server_round)

    def get(self, name: str) -> Record | None:
        written = self.view.get(name)
        return None if written is None else self.store.get(data_key(name, written))

    def set(self, name: str, record: Record) -> None:
        self.store.put(self._written(name), record)

    def get_arrays(self, name: str) -> dict[str, np.ndarray] | None:
        written = self.view.get(name)
        if written is None:
            return None
        arrays = self.store.get_arrays(data_key(name, written))
        if arrays is None:
            raise TypeError(f"client state {name!r} is not arrays")
        return arrays

    def set_arrays(self, name: str, arrays: Mapping[str, np.ndarray]) -> None:
        self.store.put_arrays(self._written(name), arrays)

    def delete(self, name: str) -> None:
        written = self.view.pop(name, None)
        if written == self.server_round:  # written this round: no other version refers to it
            self.store.remove(data_key(name, written))

    def release_superseded(self) -> None:
        """Commit this round's version (the node's message succeeded; whether the server
        accepts the reply decides whether it is ever named)."""
        if self.writable:
            self.store.write_index({**self.versions, self.server_round: self.view})


def kept_state(job: ClientJob, position: int, store: RecordStore, writable: bool) -> KeptState:
    """The state of the job's ``position``-th client, as the job names it."""
    return KeptState(
        store, job.state_rounds[position], job.state_floors[position], job.server_round, writable
    )


def keeps_state(keeps: bool, job: ClientJob) -> bool:
    """Whether a run's clients keep state: their algorithm says so, or BatchNorm stays local."""
    return keeps or job.bn_policy == "local"


class StateRounds:
    """The server's side: per client, the round of its last accepted reply at the end of each
    of the last :data:`HISTORY` rounds (its named version, and the oldest one a checkpoint may
    still name), and the key of the run's state folder on the nodes. Checkpointed with the run."""

    def __init__(self, num_clients: int, in_context: bool) -> None:
        self.rounds = np.full((HISTORY, num_clients), NONE, dtype=np.int64)
        self.in_context = in_context
        self.run_key = uuid.uuid4().hex[:16]  # names a folder, changes no number of the run
        self.restart_announced = False

    def job_for(self, job: ClientJob) -> ClientJob:
        """``job`` (addressed to its clients) naming each client's version, its state folder
        inside the run's own."""
        ids = list(job.client_ids)
        state_dir = f"{job.state_dir.rstrip('/')}/run-{self.run_key}" if job.state_dir else ""
        return replace(
            job,
            state_rounds=tuple(int(r) for r in self.rounds[0, ids]),
            state_floors=tuple(int(r) for r in self.rounds[-1, ids]),
            state_dir=state_dir,
        )

    def accepted(self, server_round: int, updates: Iterable[ClientUpdate]) -> None:
        """End of a training round: the clients of ``updates`` now hold this round's version;
        the clients that reported a lost version are named in one line."""
        updates = list(updates)
        self.rounds[1:] = self.rounds[:-1].copy()
        self.rounds[0, [u.client_id for u in updates]] = server_round
        lost = [u.client_id for u in updates if STATE_LOST in u.metrics]
        if lost and not self.restart_announced:
            log.warning(
                "round %d: clients %s no longer had the state the server names (a node that "
                "lost its disk or restarted); they start again from empty state",
                server_round,
                lost,
            )

    def state_dict(self) -> dict[str, np.ndarray]:
        return {
            STATE_PREFIX + ROUNDS_KEY: self.rounds.copy(),
            STATE_PREFIX + RUN_KEY: np.frombuffer(self.run_key.encode(), dtype=np.uint8).copy(),
        }

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore the checkpoint's rounds (a checkpoint without them: every client empty)."""
        rounds = state.get(STATE_PREFIX + ROUNDS_KEY)
        if rounds is not None:
            if rounds.shape != self.rounds.shape:
                raise ValueError(
                    f"checkpoint client-state rounds of shape {rounds.shape}, expected "
                    f"{self.rounds.shape} (num_clients changed?)"
                )
            self.rounds = np.asarray(rounds, dtype=np.int64).copy()
            self.run_key = bytes(np.asarray(state[STATE_PREFIX + RUN_KEY])).decode()
        if self.in_context and (self.rounds != NONE).any():
            self.restart_announced = True
            log.warning(
                "resuming with client state in Flower's context, which a restart empties: "
                "clients start again from empty state, so the run goes on consistently but not "
                "bit-identically (engine.client_state_dir keeps client state on disk)"
            )


def split_state(state: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
    """A checkpoint's strategy part split into (the algorithm's state, the engine's client-state
    bookkeeping)."""
    ours = {k: v for k, v in state.items() if k.startswith(STATE_PREFIX)}
    return {k: v for k, v in state.items() if k not in ours}, ours
