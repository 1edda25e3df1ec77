"""The scale benchmark's GPU rows (benchmarks/scale/__main__.py): the one-process floor on the
device beside each fedsparse row, × GPU floor, GPU busy and the issue's GPU targets."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from benchmarks.scale.__main__ import GPU_PRESET, Row, commands, floor_command, report


def gpu_args(tmp_path: Path, **changes) -> argparse.Namespace:
    settings = {
        **GPU_PRESET,
        "local_steps": None,
        "floors": False,
        "small_rounds": 12,
        "resident_rounds": None,
        "runs": tmp_path / "runs",
        "results": tmp_path,
        **changes,
    }
    return argparse.Namespace(**settings)


def test_gpu_preset_runs_each_rows_own_floor_on_the_device_last(tmp_path: Path) -> None:
    args = gpu_args(tmp_path, model="conv6", strategies="fedpm-klms", resident_rounds=2)
    (fedsparse, fedsparse_cmd), (floor, floor_cmd) = commands(args, 500)
    assert (floor.kind, floor.strategy, floor.device) == ("floor-resident", "fedpm-klms", "cuda")
    assert floor.rounds == 2 and floor_cmd[floor_cmd.index("--rounds") + 1] == "2"
    assert floor.label == "PyTorch fedpm-klms, 1 process on cuda"
    assert floor_cmd[floor_cmd.index("--device") + 1] == "cuda" and "--resident" in floor_cmd
    assert floor_cmd[floor_cmd.index("--strategy") + 1] == "fedpm"
    assert "--set=uplink_coding=klms" in floor_cmd and "--processes" not in floor_cmd
    assert floor_cmd[floor_cmd.index("--model") + 1] == "conv6"
    assert fedsparse.kind == "fedsparse" and "engine.client_gpus=0.1" in fedsparse_cmd


def test_two_process_floor_command_is_unchanged(tmp_path: Path) -> None:
    args = gpu_args(tmp_path, model="cnn", dataset="mnist5k")
    command = floor_command(args, Row("floor-2", 100, "fedavg", rounds=12))
    assert command[command.index("--processes") + 1] == "2"
    assert "--device" not in command and "--resident" not in command


def test_report_holds_each_row_against_its_gpu_floor(tmp_path: Path) -> None:
    rows = [
        Row(
            "floor-resident",
            1000,
            "fedavg",
            rounds=3,
            round_s=[12.0, 12.0],
            device="cuda",
            gpu_peak_mb=3000,
            gpu_busy=0.9,
        ),
        Row(
            "fedsparse",
            1000,
            "fedavg",
            "auto=25",
            3,
            round_s=[6.0, 6.0],
            gpu_peak_mb=14000,
            gpu_busy=0.75,
        ),
        Row("fedsparse", 500, "fedpm-klms", "auto=13", 3, round_s=[43.0, 43.0], gpu_peak_mb=12000),
    ]
    data = {"machine": "test", "setup": {"client_gpus": 0.1, "actors": 10}}
    (tmp_path / "gpu.json").write_text(json.dumps({**data, "rows": [asdict(r) for r in rows]}))
    report(gpu_args(tmp_path, name="gpu"))
    text = (tmp_path / "gpu.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| clients | row |"))
    assert "| × GPU floor |" in header and header.endswith("| peak GPU MB | GPU busy |")
    fedavg = next(line for line in text.splitlines() if "| fedsparse fedavg |" in line)
    assert "| 0.50× |" in fedavg and fedavg.endswith("| 14000 | 75% |")
    fedpm = next(line for line in text.splitlines() if "| fedsparse fedpm-klms |" in line)
    assert fedpm.endswith("| 12000 | – |")
    assert "| fedavg K=auto ≤ 1.5× its GPU floor | 1000 | auto | 0.50× | yes |" in text
    assert "| fedavg on the GPU ≤ 8 s a round | 1000 | auto=25 | 6.00 s | yes |" in text
    assert "| fedpm-klms on the GPU ≤ 12 s a round | 500 | auto=13 | 43.00 s | no |" in text
