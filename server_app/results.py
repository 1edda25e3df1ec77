"""The run directory's record: ``metrics.jsonl`` (one line per round) and ``summary.json``."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
# top-level settings that never change a run's numbers: they may change on resume, and runs that
# differ only in them are the same experiment
NUMBER_NEUTRAL_KEYS = ("engine", "tracking", "tracking_dir", "central_eval_overlap", "deployment")


def is_wall_clock(key: str) -> bool:
    """Whether a metrics key holds wall-clock seconds (``round_s``, ``client_train_s``,
    ``phase_s``, a strategy's ``*_s``), which differ between runs of the same numbers."""
    return key.endswith("_s")


def without_wall_clock(row: Mapping[str, Any]) -> dict[str, Any]:
    """A metrics row without its wall-clock keys: what two runs of the same seed share."""
    return {k: v for k, v in row.items() if not is_wall_clock(k)}


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"strategy.name": "fedavg", ...}`` (leaves kept as they are)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _json_safe(value: Any) -> Any:
    """NaN/Inf become null so every line is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All rows of a run's ``metrics.jsonl`` (empty when there is none yet).

    A last line cut short by a crash mid-write is ignored; any other bad line is an error.
    """
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = [json.loads(line) for line in lines[:-1]]
    if lines:
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(lines[-1]))
    return rows


class MetricsLog:
    """Appends one JSON object per round; on resume, drops rows after the checkpoint."""

    def __init__(self, run_dir: Path, keep_through_round: int = 0) -> None:
        self.path = run_dir / METRICS_FILE
        self.rows = [r for r in read_metrics(run_dir) if r["round"] <= keep_through_round]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))

    def append(self, row: dict[str, Any]) -> None:
        row = _json_safe(row)
        self.rows.append(row)
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()


def link_bpp(row: dict[str, Any], num_params: int) -> dict[str, float | None]:
    """Bits per model parameter per sampled client of one round, each way (measured bytes)."""
    per_client = row.get("sampled", 0) * num_params
    return {
        f"{link}_bpp": 8 * row[f"{link}_bytes"] / per_client if per_client else None
        for link in ("uplink", "downlink")
    }


def total_bpp(rows: list[dict[str, Any]], num_params: int) -> dict[str, float | None]:
    """Up, down and up + down bits per parameter per client-round over the whole run."""
    client_rounds = sum(r.get("sampled", 0) for r in rows) * num_params
    if not client_rounds:
        return {"uplink_bpp": None, "downlink_bpp": None, "total_bpp": None}
    up = 8 * sum(r["uplink_bytes"] for r in rows) / client_rounds
    down = 8 * sum(r["downlink_bytes"] for r in rows) / client_rounds
    return {"uplink_bpp": up, "downlink_bpp": down, "total_bpp": up + down}


def summarize(rows: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """The headline numbers of a run, from its metrics rows: final and best of the evaluated
    rounds (the last round always is one)."""
    evaluated = [r for r in rows if r.get("accuracy") is not None]
    return {
        "final_accuracy": evaluated[-1]["accuracy"] if evaluated else None,
        "best_accuracy": max(r["accuracy"] for r in evaluated) if evaluated else None,
        "final_loss": evaluated[-1]["loss"] if evaluated else None,
        "uplink_bytes_total": sum(r["uplink_bytes"] for r in rows),
        "downlink_bytes_total": sum(r["downlink_bytes"] for r in rows),
        "rounds": rows[-1]["round"] if rows else 0,
        "failures_total": sum(r["failures"] for r in rows),
        **fields,
    }


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    (run_dir / SUMMARY_FILE).write_text(json.dumps(_json_safe(summary), indent=2) + "\n")
