"""How many CPU threads torch gets: the cores this process can actually use now.

Torch's thread pool assumes it owns every core; when another process keeps one of two cores busy,
two torch threads take turns with it and a chunk costs several times more (measured in issue 23:
10.1 -> 2.7 frames/s with 2 threads, 6.4 with 1). The rule here (Linux; elsewhere the count stays
as torch set it): the cores this process may run on (its affinity) minus the cores other
processes kept busy over the last interval, rounded, at least 1. Other processes' load is the
machine's busy time (``/proc/stat``) minus this process's own CPU time
(``/proc/self/stat``), so it is measured while generating, without pausing. The counters tick
in 10 ms steps (``SC_CLK_TCK`` 100), so an interval shorter than ``min_interval_s`` (a chunk of
a fast model: 30 ms) is not judged alone but joined to the next ones; over 30 ms, one tick more
or less moves the estimate by a third of a core and a busy core read as 0 or 2 by turns, which
never agree. To avoid flapping, a new count is applied only when ``patience`` intervals in a row
agree on it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from worldsim.core.errors import WorldsimError


@dataclass(frozen=True)
class CpuSample:
    """One reading: wall time (s), the machine's busy and total CPU time (s, summed over cores)
    and this process's CPU time (s)."""

    wall: float
    busy: float
    total: float
    own: float


def read_cpu() -> CpuSample | None:
    """The counters of :class:`CpuSample` now; None where ``/proc`` cannot be read."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
        return CpuSample(time.perf_counter(), (total - idle) / tick, total / tick, (int(own[11]) + int(own[12])) / tick)
    except (OSError, ValueError, IndexError):
        return None


def allowed_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def free_cores(before: CpuSample, after: CpuSample, allowed: int) -> float:
    """Cores left to this process between two readings: ``allowed`` minus what the other
    processes kept busy, in cores (their busy CPU time over the wall time), never below 0."""
    wall = after.wall - before.wall
    if wall <= 0:
        return float(allowed)
    others = max(0.0, (after.busy - before.busy) - (after.own - before.own)) / wall
    return max(0.0, allowed - others)


class ThreadGovernor:
    """Keeps torch's thread count at the cores free to this process (module docstring), or at
    ``threads`` when pinned. ``observe()`` after each chunk re-reads the counters over the
    interval since the last judged one, once it spans ``min_interval_s`` seconds. ``read`` and
    ``set_threads`` are for tests."""

    def __init__(
        self,
        threads: int | None = None,
        patience: int = 3,
        read: Callable[[], CpuSample | None] = read_cpu,
        set_threads: Callable[[int], None] = torch.set_num_threads,
        allowed: int | None = None,
        min_interval_s: float = 0.25,
    ):
        if threads is not None and threads < 1:
            raise WorldsimError(f"threads must be >= 1 (or null: chosen for the free cores), got {threads}")
        self.pinned, self.patience, self.min_interval_s = threads, patience, min_interval_s
        self.read, self.set_threads = read, set_threads
        self.allowed = allowed or allowed_cores()
        self.current = threads or self.allowed
        self.set_threads(self.current)
        self.last = read()
        self.proposal, self.agreed = self.current, 0

    def observe(self) -> int:
        """Re-measure over the interval since the last judged one (none before it spans
        ``min_interval_s``); change the count once ``patience`` intervals in a row asked for the
        same new one -> the count in force."""
        now = self.read()
        if self.pinned is not None or now is None or self.last is None:
            self.last = now
            return self.current
        if now.wall - self.last.wall < self.min_interval_s:  # too few counter ticks to judge yet
            return self.current
        want = max(1, min(self.allowed, round(free_cores(self.last, now, self.allowed))))
        self.last = now
        if want == self.current:
            self.agreed = 0
            return self.current
        self.agreed = self.agreed + 1 if want == self.proposal else 1
        self.proposal = want
        if self.agreed >= self.patience:
            self.current, self.agreed = want, 0
            self.set_threads(want)
        return self.current
