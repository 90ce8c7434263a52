"""Helpers the side-by-side benchmarks share (bench_vs_datacomp.py, bench_score_vs_loop.py).

``measure`` is bench_select's (one way to measure a command's process tree in this
project); this adds CPU time, the figure that stays readable on a shared machine.
"""

from __future__ import annotations

import os
import resource
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_select import measure, metadata_dir  # noqa: E402  (re-exported for the benchmarks)

__all__ = ["measure", "measure_cpu", "metadata_dir"]


def _descendant_ticks(root: int, ticks: dict[int, int]) -> None:
    """Update ``ticks[pid]`` with utime + stime (clock ticks) of every descendant of ``root``."""
    children: dict[int, list[int]] = {}
    stats: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
        stats[int(name)] = int(fields[11]) + int(fields[12])
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        ticks[pid] = max(ticks.get(pid, 0), stats.get(pid, 0))
        stack.extend(children.get(pid, []))


def measure_cpu(cmd: list[str]) -> dict:
    """bench_select.measure plus ``cpu_seconds``: user + system time of the command's whole tree.

    On a shared machine wall time follows the load; CPU time much less. Two counts, the larger
    kept: getrusage of the children this process reaped (exact, but blind to processes nobody
    waited for, such as a fork server's workers) and /proc sampled every 0.2 s (sees every
    descendant, misses at most the last 0.2 s of each)."""
    ticks: dict[int, int] = {}
    stop = threading.Event()

    def sample():
        while not stop.wait(0.2):
            _descendant_ticks(os.getpid(), ticks)

    sampler = threading.Thread(target=sample, daemon=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    sampler.start()
    try:
        r = measure(cmd)
    finally:
        stop.set()
        sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    waited = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    sampled = sum(ticks.values()) / os.sysconf("SC_CLK_TCK")
    r["cpu_seconds"] = round(max(waited, sampled), 2)
    return r
