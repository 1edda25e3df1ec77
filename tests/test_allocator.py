"""The allocator keeps freed memory: a second round of model-sized arrays faults no pages."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here starts a Python subprocess

ROUND_TWICE = """
import resource, sys
import numpy as np
if sys.argv[1] == "tuned":
    from client_app.allocator import keep_freed_memory
    assert keep_freed_memory()
def one_round():  # a server round: hold 100 decoded 1.6 MB updates, then free them all
    held = [np.ones(401408, np.float32) for _ in range(100)]
    del held
one_round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
one_round()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", ROUND_TWICE, mode],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_second_round_reuses_the_first_rounds_pages() -> None:
    plain, tuned = _page_faults("plain"), _page_faults("tuned")
    assert plain > 10_000  # 160 MB handed back to the kernel and faulted in again
    assert tuned < plain / 20
