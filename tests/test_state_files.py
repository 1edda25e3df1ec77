"""Client array state in files: byte-exact, crash-consistent, and invisible in the results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from client_app.state_files import FileClientState, MissingStateFileError, client_state
from server_app.engine import client_state_folder
from server_app.results import without_wall_clock
from server_app.settings import client_job, compose_config, validate
from strategies.core.wire import ClientState, client_key
from tests.runs import run_and_read


def _record(seed: int) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    return ArrayRecord(
        {
            "w": Array(rng.standard_normal((3, 4)).astype(np.float32)),
            "scalar": Array(np.array(seed, dtype=np.int64)),
            "empty": Array(np.zeros((0, 2), dtype=np.float16)),
            "mask": Array(rng.integers(0, 2, size=5).astype(bool)),
        }
    )


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.arrays"))


def test_arrays_round_trip_byte_for_byte_and_only_a_reference_stays_inline(tmp_path) -> None:
    node_state = RecordDict()
    state = FileClientState(node_state, 7, tmp_path, run_id=3)
    record = _record(1)
    state.set("lbg", record)
    state.set("meta", ConfigRecord({"versions": [1, 2]}))
    inline = node_state[client_key(7, "lbg")]
    assert isinstance(inline, ConfigRecord) and inline.count_bytes() < 600
    assert node_state[client_key(7, "meta")] == ConfigRecord({"versions": [1, 2]})
    back = FileClientState(node_state, 7, tmp_path, run_id=3).get("lbg")
    assert list(back.keys()) == list(record.keys())
    for name, array in record.items():
        got = back[name]
        assert (got.dtype, tuple(got.shape), got.stype, got.data) == (
            array.dtype,
            tuple(array.shape),
            array.stype,
            array.data,
        )
    assert _files(tmp_path / "run-3" / "client-7") and state.get("missing") is None


def _values(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal((3, 4)).astype(np.float32),
        "scalar": np.array(seed, dtype=np.int64),
        "empty": np.zeros((0, 2), dtype=np.float16),
        "mask": rng.integers(0, 2, size=5).astype(bool),
        "strided": rng.standard_normal((4, 6))[:, ::2],  # not C-ordered: stored as a copy
    }


@pytest.mark.parametrize("in_files", [True, False])
def test_set_arrays_is_set_of_an_array_record_and_get_arrays_reads_it_back(
    tmp_path, in_files: bool
) -> None:
    node_state = RecordDict()

    def state(client_id: int) -> ClientState:
        if in_files:
            return FileClientState(node_state, client_id, tmp_path, 3)
        return ClientState(node_state, client_id)

    values = _values(2)
    state(1).set_arrays("lbg", values)
    state(2).set("lbg", ArrayRecord({k: Array(v) for k, v in values.items()}))
    for client_id in (1, 2):
        back = state(client_id).get_arrays("lbg")
        assert list(back) == list(values)
        for name, value in values.items():
            assert back[name].dtype == value.dtype and np.array_equal(back[name], value)
        record = state(client_id).get("lbg")  # the same bytes as Flower's own Array(values)
        assert [bytes(a.data) for a in record.values()] == [Array(v).data for v in values.values()]
    assert state(1).get_arrays("missing") is None
    with pytest.raises(ValueError, match=r"[Oo]bject array"):  # never pointers in a file
        state(1).set_arrays("objects", {"o": np.array([object()], dtype=object)})
    state(1).set("meta", ConfigRecord({"k": 1}))
    with pytest.raises(TypeError, match="'meta' is a ConfigRecord"):
        state(1).get_arrays("meta")


def test_get_arrays_reads_a_payload_it_cannot_view_through_flower(tmp_path) -> None:
    node_state = RecordDict()
    fortran = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    record = ArrayRecord({"f": Array(fortran), "c": Array(np.arange(3.0))})
    assert b"'fortran_order': True" in bytes(record["f"].data)  # not a plain C-ordered .npy
    FileClientState(node_state, 1, tmp_path, 1).set("odd", record)
    back = FileClientState(node_state, 1, tmp_path, 1).get_arrays("odd")
    assert np.array_equal(back["f"], fortran) and np.array_equal(back["c"], np.arange(3.0))


def test_an_empty_record_round_trips(tmp_path) -> None:
    node_state = RecordDict()
    FileClientState(node_state, 0, tmp_path, 1).set("residual", ArrayRecord())
    assert len(FileClientState(node_state, 0, tmp_path, 1).get("residual")) == 0


def test_old_files_go_but_the_committed_one_survives_a_failed_message(tmp_path) -> None:
    """Flower drops the context of a message whose ClientApp raised: the reference it keeps must
    still resolve, and the failed message's file is cleaned up by the next write."""
    node_state = RecordDict()
    folder = tmp_path / "run-1" / "client-0"
    FileClientState(node_state, 0, tmp_path, 1).set("lbg", _record(1))  # message 1 commits
    committed = dict(node_state)
    FileClientState(node_state, 0, tmp_path, 1).set("lbg", _record(2))  # message 2 then fails
    assert len(_files(folder)) == 2
    rolled_back = RecordDict(committed)
    assert FileClientState(rolled_back, 0, tmp_path, 1).get("lbg")["scalar"].numpy() == 1
    state = FileClientState(rolled_back, 0, tmp_path, 1)  # message 3 writes twice
    state.set("lbg", _record(3))
    state.set("lbg", _record(4))
    assert len(_files(folder)) == 2  # message 1's (still committed) and message 3's last
    assert FileClientState(rolled_back, 0, tmp_path, 1).get("lbg")["scalar"].numpy() == 4
    FileClientState(rolled_back, 0, tmp_path, 1).set("lbg", _record(5))  # message 4
    assert len(_files(folder)) == 2


def test_a_succeeded_message_leaves_one_file_per_record(tmp_path) -> None:
    node_state = RecordDict()
    folder = tmp_path / "run-1" / "client-0"
    for value in (1, 2, 3):
        state = FileClientState(node_state, 0, tmp_path, 1)
        state.set("lbg", _record(value))
        state.set("residual", _record(10 * value))
        assert len(_files(folder)) == (2 if value == 1 else 4)  # until the message succeeds
        state.release_superseded()
        assert len(_files(folder)) == 2
        reread = FileClientState(node_state, 0, tmp_path, 1)
        assert reread.get("lbg")["scalar"].numpy() == value
        assert reread.get("residual")["scalar"].numpy() == 10 * value


def test_a_deleted_record_keeps_its_committed_file_until_the_message_succeeds(tmp_path) -> None:
    node_state = RecordDict()
    folder = tmp_path / "run-1" / "client-0"
    FileClientState(node_state, 0, tmp_path, 1).set("old", _record(1))  # message 1 commits
    committed = dict(node_state)
    state = FileClientState(node_state, 0, tmp_path, 1)  # message 2
    state.set("new", _record(2))
    state.delete("new")  # written and deleted within the message: gone at once
    state.delete("old")
    assert state.get("old") is None and state.get("new") is None
    assert len(_files(folder)) == 1  # "old" still backs the committed state
    assert FileClientState(RecordDict(committed), 0, tmp_path, 1).get("old") is not None
    state.release_superseded()
    assert _files(folder) == []
    state.delete("never-written")  # no record: nothing to do


def test_a_missing_state_file_says_what_to_configure(tmp_path) -> None:
    node_state = RecordDict()
    FileClientState(node_state, 0, tmp_path, 1).set("lbg", _record(1))
    for path in (tmp_path / "run-1" / "client-0").iterdir():
        path.unlink()
    with pytest.raises(MissingStateFileError, match=r"engine.client_state_dir .*shared"):
        FileClientState(node_state, 0, tmp_path, 1).get("lbg")


def test_without_a_folder_state_stays_in_the_context() -> None:
    node_state = RecordDict()
    state = client_state(node_state, 0, "", run_id=1)
    assert type(state) is ClientState
    state.set("m", MetricRecord({"x": 1.0}))
    assert client_key(0, "m") in node_state


def test_auto_is_in_the_run_dir_on_local_ray_and_the_context_on_a_cluster(tmp_path) -> None:
    cfg = compose_config(["engine.client_state_dir=auto"])
    validate(cfg)
    assert client_job(cfg).state_dir == ""  # in-process and deployment: the context
    kept = tmp_path / "client-state" / "run-1" / "client-0"
    kept.mkdir(parents=True)  # left by a stopped run: a resumed run continues from it
    resumed = compose_config(["engine.client_state_dir=auto", "resume=true"])
    with pytest.raises(KeyboardInterrupt), client_state_folder(resumed, tmp_path) as local:
        folder = Path(local.engine.client_state_dir)
        assert folder == tmp_path / "client-state" and client_job(local).state_dir == str(folder)
        assert kept.is_dir()
        raise KeyboardInterrupt  # stopped again: its state stays for the next resume
    assert kept.is_dir()
    with client_state_folder(cfg, tmp_path):  # a fresh run starts its clients afresh
        assert folder.is_dir() and not kept.exists()
    assert not folder.exists()  # a run that ended leaves no client state behind
    cluster = compose_config(["engine.client_state_dir=auto", "engine.ray_address=10.0.0.1:6379"])
    with client_state_folder(cluster, tmp_path) as resolved:
        assert resolved.engine.client_state_dir is None
    given = compose_config(["engine.client_state_dir=/srv/state"])
    with client_state_folder(given, tmp_path) as resolved:
        assert resolved is given


@pytest.mark.parametrize("strategy", ["lbgm", "topk"])
def test_state_in_files_gives_the_same_metrics_as_state_in_the_context(
    tmp_path: Path, strategy: str
) -> None:
    """LBGM's look-back gradients and top-k's residuals moved to files: the same numbers."""
    runs = {}
    for where in ("null", str(tmp_path / "state")):
        run_dir = tmp_path / ("context" if where == "null" else "files")
        rows = run_and_read(
            [
                f"strategy={strategy}",
                "dataset=digits",
                "num_clients=6",
                "clients_per_round=4",
                "num_rounds=3",
                "plots=false",
                "federated_eval=false",
                "engine.clients_per_node=2",
                f"engine.client_state_dir={where}",
            ],
            run_dir,
        )
        runs[where] = [without_wall_clock(row) for row in rows]
    assert runs[str(tmp_path / "state")] == runs["null"]
    assert _files(tmp_path / "state")  # the files path was really taken
