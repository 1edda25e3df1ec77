"""CPU seconds and peak memory of everything one command started, Ray's daemons included.

A command's processes are its descendants, and every process whose environment carries the
command's tag (an environment variable set for it alone and inherited by everything it starts):
Ray's GCS, raylet and workers can leave the process tree and session when they are reparented,
but keep the environment. :class:`TreeMeter` samples them with psutil; call
:meth:`TreeMeter.sample` every fraction of a second and at the moments to bracket.

CPU is counted so that no process is missed or counted twice between samples: a live process
adds its own user + system seconds and those of the children it has already reaped (the
kernel's ``cutime``/``cstime``: a child's whole time moves into its parent's when reaped). A
process that is gone keeps its last-seen seconds only if no tracked process was its parent
(it was reaped outside the tree, e.g. by init after reparenting); otherwise its parent already
holds them. What a process reaped by init used after its last sample is lost (at most one
sampling interval of it). The root itself should be sampled once more after it exits and before
it is reaped (:func:`wait_unreaped`), so its final seconds and its reaped children count.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field

import psutil

MB = 1024 * 1024
GONE = (psutil.NoSuchProcess, psutil.AccessDenied)


@dataclass
class _Seen:
    """A tracked process at its last sample."""

    process: psutil.Process
    ppid: int
    name: str = ""
    own_s: float = 0.0  # user + system
    reaped_s: float = 0.0  # its reaped children's user + system

    @property
    def total_s(self) -> float:
        return self.own_s + self.reaped_s


@dataclass
class TreeMeter:
    """Samples the processes of the command rooted at ``root`` (tagged ``tag``: NAME=VALUE in
    their environment); thread-safe."""

    root: int
    tag: tuple[str, str] | None = None
    peak_rss_mb: float = 0.0
    nice: dict[str, int] = field(default_factory=dict)  # process name -> highest niceness seen
    processes: int = 0  # how many processes were tracked
    _seen: dict[int, _Seen] = field(default_factory=dict)
    _ignored: set[int] = field(default_factory=set)
    # by process name: last-seen CPU of tracked processes that no tracked parent reaped
    _departed: dict[str, float] = field(default_factory=dict)
    # parent pid -> (its reaped seconds before tracked children vanished, theirs by name)
    _pending: dict[int, tuple[float, dict[str, float]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def by_name(self) -> dict[str, float]:
        """CPU seconds so far by process name (a process's reaped children count as its own),
        as of the last sample."""
        with self._lock:
            found = dict(self._departed)
            for seen in self._seen.values():
                found[seen.name] = found.get(seen.name, 0.0) + seen.total_s
            return found

    def sample(self) -> float:
        """Look at every process of the command once; returns its CPU seconds so far."""
        with self._lock:
            self._discover()
            before = {pid: seen.reaped_s for pid, seen in self._seen.items()}
            rss, gone = 0, {}
            for pid, seen in self._seen.items():
                try:
                    with seen.process.oneshot():
                        times = seen.process.cpu_times()
                        seen.ppid = seen.process.ppid()
                        rss += seen.process.memory_info().rss
                        seen.name = seen.process.name()  # Ray's workers rename themselves
                        nice = seen.process.nice()
                        self.nice[seen.name] = max(self.nice.get(seen.name, -20), nice)
                except GONE:
                    gone[pid] = seen
                    continue
                seen.own_s = times.user + times.system
                seen.reaped_s = times.children_user + times.children_system
            for pid in gone:
                del self._seen[pid]
            self._settle(gone)
            for seen in gone.values():
                if seen.ppid in self._seen:  # its parent reaped it: check that on the next sample
                    held = self._pending.setdefault(seen.ppid, (before[seen.ppid], {}))[1]
                    held[seen.name] = held.get(seen.name, 0.0) + seen.total_s
                else:
                    self._depart({seen.name: seen.total_s})
            self.peak_rss_mb = max(self.peak_rss_mb, rss / MB)
            live = sum(seen.total_s for seen in self._seen.values())
            return sum(self._departed.values()) + live

    def live(self) -> list[int]:
        """The tracked processes still there at the last sample."""
        with self._lock:
            return list(self._seen)

    def _settle(self, gone: dict[int, _Seen]) -> None:
        """Count the children that vanished at the previous sample for the part their parent's
        reaped seconds did not take in (none when it waited for them; all when they were
        reaped without a wait, e.g. under SIGCHLD ignored)."""
        for ppid, (base, held) in self._pending.items():
            parent = self._seen.get(ppid) or gone.get(ppid)
            taken = parent.reaped_s - base if parent is not None else 0.0
            share = max(0.0, 1.0 - taken / sum(held.values())) if sum(held.values()) else 0.0
            self._depart({name: seconds * share for name, seconds in held.items()})
        self._pending = {}

    def _depart(self, seconds: dict[str, float]) -> None:
        for name, value in seconds.items():
            self._departed[name] = self._departed.get(name, 0.0) + value

    def _discover(self) -> None:
        for pid in psutil.pids():
            if pid in self._seen or pid in self._ignored:
                continue
            try:
                process = psutil.Process(pid)
                ppid = process.ppid()
                if pid == self.root or ppid in self._seen or self._tagged(process):
                    self._seen[pid] = _Seen(process, ppid)
                    self.processes += 1
                else:
                    self._ignored.add(pid)
            except GONE:
                continue

    def _tagged(self, process: psutil.Process) -> bool:
        if self.tag is None:
            return False
        name, value = self.tag
        try:
            return process.environ().get(name) == value
        except (*GONE, psutil.ZombieProcess, OSError):
            return False


def wait_unreaped(pid: int) -> None:
    """Block until child ``pid`` has exited, leaving it unreaped (its final times readable)."""
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def kill(pids: list[int]) -> None:
    """SIGKILL each of ``pids`` that is still there."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
