"""Fault injection: every kind of bad reply is dropped and counted; the model stays finite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client_app.faults import plan_faults
from server_app.checkpoint import load_checkpoint
from server_app.experiment import run_experiment, starting_point
from server_app.inprocess import InProcessGrid
from server_app.results import read_metrics
from server_app.settings import client_job, compose_config
from tests.runs import SMALL_RUN

RUN = [*SMALL_RUN, "num_rounds=4", "plots=false", "federated_eval=false"]
RATE = 0.3


def _run(tmp_path: Path, *overrides: str) -> tuple[list[dict], list[list[int]], object]:
    cfg = compose_config([*RUN, *overrides])
    run_experiment(InProcessGrid(cfg.num_clients), cfg, tmp_path / "run")
    rows = read_metrics(tmp_path / "run")
    job = client_job(cfg)
    faulty = [
        [c for c in range(cfg.num_clients) if _hit(plan_faults(job.for_round(r, [c]), c))]
        for r in range(1, cfg.num_rounds + 1)
    ]
    return rows, faulty, load_checkpoint(tmp_path / "run" / "checkpoint")


def _hit(plan) -> bool:
    return plan.error or plan.corrupt is not None


def _check_survived(rows: list[dict], checkpoint) -> None:
    assert all(np.isfinite(a.numpy()).all() for a in checkpoint.arrays.values())
    assert rows[-1]["accuracy"] > 0.2  # 10 classes: chance is 0.1


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("non-finite", "non-finite"),
        ("shape", "shape"),
        ("dtype", "dtype"),
        ("oversize", "oversize"),
    ],
)
def test_corrupt_replies_are_dropped_and_counted(tmp_path: Path, kind: str, reason: str) -> None:
    rows, faulty, checkpoint = _run(
        tmp_path, f"faults.corrupt_rate={RATE}", f"faults.corrupt_kind={kind}"
    )
    assert sum(map(len, faulty)) > 0
    for row, bad in zip(rows, faulty, strict=True):
        assert row["failures"] == len(bad)
        assert row["clients"] == 5 - len(bad)
        assert row["rejected"] == ({reason: len(bad)} if bad else {})
    _check_survived(rows, checkpoint)


def test_inflated_num_examples_is_capped_by_max_client_weight(tmp_path: Path) -> None:
    rows, faulty, checkpoint = _run(
        tmp_path,
        f"faults.corrupt_rate={RATE}",
        "faults.corrupt_kind=weight",
        "max_client_weight=20",
    )
    assert sum(map(len, faulty)) > 0
    for row, bad in zip(rows, faulty, strict=True):
        assert row["rejected"] == ({"weight": len(bad)} if bad else {})
        assert row["failures"] == len(bad)
    _check_survived(rows, checkpoint)


def test_raising_clients_are_counted_and_the_round_goes_on(tmp_path: Path) -> None:
    rows, faulty, checkpoint = _run(tmp_path, f"faults.error_rate={RATE}")
    assert sum(map(len, faulty)) > 0
    for row, bad in zip(rows, faulty, strict=True):
        assert row["failures"] == len(bad) and row["clients"] == 5 - len(bad)
        assert row["rejected"] == {}
    _check_survived(rows, checkpoint)


def test_a_round_without_enough_valid_replies_fails_clearly(tmp_path: Path) -> None:
    """...and a run that finished no round leaves a folder the next try may use, fresh or with
    resume=true (before, the first was refused as holding a run, the second found no
    checkpoint)."""
    faults = ["faults.corrupt_rate=1.0", "faults.corrupt_kind=non-finite"]
    cfg = compose_config([*RUN, *faults])
    with pytest.raises(RuntimeError, match=r"round 1: only 0 valid replies.*min_replies=1") as info:
        run_experiment(InProcessGrid(cfg.num_clients), cfg, tmp_path / "run")
    assert "no round finished" in str(info.value)
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == ""
    assert starting_point(tmp_path / "run", compose_config(RUN)) is None
    assert starting_point(tmp_path / "run", compose_config([*RUN, "resume=true"])) is None


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("non-finite", "metrics"),
        ("shape", "mask-length"),
        ("dtype", "mask-dtype"),
        ("truncate", "mask-length"),
        ("extend", "mask-length"),
        ("flag", "mask-flag"),
        ("garble", "mask-crc|mask-stream"),  # the coder refuses it, or the CRC does
    ],
)
def test_corrupt_fedpm_masks_are_rejected_not_crashing(
    tmp_path: Path, kind: str, reason: str
) -> None:
    """FedPM replies hold one uint8 byte stream (range-coded or packed masks) and its header;
    every corruption lands as a rejection."""
    rows, faulty, _ = _run(
        tmp_path,
        "strategy=fedpm",
        "num_rounds=2",
        "faults.corrupt_rate=0.5",
        f"faults.corrupt_kind={kind}",
    )
    assert sum(map(len, faulty)) > 0
    for row, bad in zip(rows, faulty, strict=True):
        assert sum(row["rejected"].values()) == len(bad)
        assert set(row["rejected"]) <= set(reason.split("|"))
