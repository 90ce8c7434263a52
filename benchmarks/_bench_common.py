"""Helpers the benchmarks share (bench_vs_datacomp.py, bench_score_vs_loop.py, bench_cluster.py, bench_dbp.py).

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

__all__ = ["measure", "measure_cpu", "metadata_dir", "run_jobs_isolated"]


def run_jobs_isolated(script: str, jobs: list[tuple[str, int]], json_path: str | None = None) -> list[dict]:
    """Run ``script --one KIND N`` in a fresh process per job (so each peak RSS is its own), collect the
    JSON after its ``RESULT `` line, print each as it comes and write them all to ``json_path``."""
    import json
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results = []
    for kind, n in jobs:
        proc = subprocess.run([sys.executable, script, "--one", kind, str(n)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": root})
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"{kind} n={n} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(line[7:])
        results.append(r)
        print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
    return results


def replicate_shards(pool: str, copies: int) -> int:
    """Copy the pool's generated ``.tar`` shards ``copies - 1`` more times under new names
    (``%08d.tar`` after the originals): a large pool cheaply, since the sample generator
    (~100 samples/s) is the slow part and not what is measured. Returns the shard count."""
    import shutil

    originals = sorted(f for f in os.listdir(pool) if f.endswith(".tar"))
    index = len(originals)
    for _ in range(copies - 1):
        for name in originals:
            shutil.copyfile(os.path.join(pool, name), os.path.join(pool, f"{index:08d}.tar"))
            index += 1
    return index


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
