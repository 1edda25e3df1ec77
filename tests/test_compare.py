"""fedsparse-compare: grouping over seeds, mean ± std, and the files it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from server_app.compare import compare, find_runs, group_runs


def _run(root: Path, name: str, strategy: dict, seed: int, accuracies: list[float | None]) -> None:
    run = root / name
    run.mkdir(parents=True)
    config = {"seed": seed, "num_rounds": len(accuracies), "strategy": strategy, "lr": 0.05}
    # engine settings differ per run (client_state_dir=auto resolves into the run dir)
    config["engine"] = {"client_state_dir": str(run / "client-state"), "clients_per_node": seed + 1}
    (run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    rows = [
        {"round": i + 1, "accuracy": a, "uplink_bytes": 1_000_000, "downlink_bytes": 2_000_000}
        for i, a in enumerate(accuracies)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {
        "final_accuracy": accuracies[-1],
        "best_accuracy": max(a for a in accuracies if a is not None),
        "seed": seed,
        "uplink_bytes_total": 1_000_000 * len(rows),
        "downlink_bytes_total": 2_000_000 * len(rows),
    }
    (run / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    _run(tmp_path, "0_fedavg_s0", {"name": "fedavg"}, 0, [0.5, 0.7])
    _run(tmp_path, "1_fedavg_s1", {"name": "fedavg"}, 1, [0.5, 0.9])
    _run(tmp_path, "2_lips_s0", {"name": "lips", "d0": 0.5}, 0, [0.6, 0.8])
    _run(tmp_path, "3_lips_s1", {"name": "lips", "d0": 0.5}, 1, [0.4, 0.8])
    return tmp_path


def test_runs_are_grouped_over_seeds(sweep: Path) -> None:
    groups = {g.label: g for g in group_runs(find_runs(sweep))}
    assert set(groups) == {"strategy.name=fedavg", "strategy.name=lips"}  # d0 never varies
    assert [s["seed"] for s in groups["strategy.name=fedavg"].summaries] == [0, 1]
    assert groups["strategy.name=lips"].curves == [[0.6, 0.8], [0.4, 0.8]]


def test_table_reports_mean_and_sample_std(sweep: Path) -> None:
    table = compare(sweep)
    fedavg = next(line for line in table.splitlines() if "fedavg" in line)
    assert "0.8000 ± 0.1414" in fedavg  # final accuracies 0.7 and 0.9
    assert "| 2.00 | 4.00 |" in fedavg  # uplink / downlink MB
    lips = next(line for line in table.splitlines() if "lips" in line)
    assert "0.8000 ± 0.0000" in lips  # two seeds that agree
    assert (sweep / "compare.md").read_text() == table
    assert (sweep / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_a_single_run_shows_no_spread(tmp_path: Path) -> None:
    _run(tmp_path, "0_fedavg_s0", {"name": "fedavg"}, 0, [0.5, 0.7])
    _run(tmp_path, "1_lips_s0", {"name": "lips"}, 0, [0.6, 0.8])
    lines = compare(tmp_path).splitlines()[2:]
    assert len(lines) == 2 and all("±" not in line for line in lines)
    assert "| 0.7000 | 0.7000 |" in lines[0] or "| 0.7000 | 0.7000 |" in lines[1]


def test_no_runs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no finished runs"):
        compare(tmp_path)


def test_the_phases_table_gives_each_groups_mean_seconds_per_round(sweep: Path) -> None:
    """Rows with ``phase_s`` add a second table: per group, the mean over its runs of each
    run's mean per round (older runs without phases show none)."""
    for name, wait in (("0_fedavg_s0", 1.0), ("1_fedavg_s1", 3.0)):
        path = sweep / name / "metrics.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for row in rows:
            row["round_s"] = wait + 0.5
            row["phase_s"] = {"wait": wait, "central_eval": 0.25, "clients_train_sum": 4.0}
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = compare(sweep)
    header, _, *lines = text.split("by phase (phase_s):\n\n", 1)[1].splitlines()
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[:4] == ["config", "round_s", "send", "wait"]
    fedavg = dict(zip(columns, (c.strip() for c in lines[0].strip("|").split("|")), strict=True))
    assert fedavg["config"] == "strategy.name=fedavg"
    assert (fedavg["round_s"], fedavg["wait"], fedavg["send"]) == ("2.500", "2.000", "0.000")
    assert (fedavg["central_eval"], fedavg["clients_train_sum"]) == ("0.250", "4.000")
    assert lines[1].startswith("| strategy.name=lips | - |")
    assert (sweep / "compare.md").read_text() == text


def test_null_accuracies_of_rounds_not_evaluated_do_not_break_compare(tmp_path: Path) -> None:
    _run(tmp_path, "0_fedavg_s0", {"name": "fedavg"}, 0, [None, None, 0.5, None, 0.7])
    _run(tmp_path, "1_fedavg_s1", {"name": "fedavg"}, 1, [None, None, 0.6, None, 0.9])
    assert "0.8000 ± 0.1414" in compare(tmp_path)
    assert (tmp_path / "compare.png").read_bytes()[:4] == b"\x89PNG"
