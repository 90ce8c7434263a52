"""`beam-filter select --metadata` at several pool sizes: wall time, rows/s and peak memory.

Issue 14 asks for memory flat in the pool size and speed at least DataComp's own
baselines.py. This measures our side: synthetic DataComp-layout metadata
(``devtools.synthetic_metadata``: parquet + npz parts of ``--part-rows`` rows,
as DataComp ships a pool in fixed-size parts) at each ``--rows`` size, then each
recipe as a real ``beam-filter select`` in a subprocess. Memory is the peak of
the summed RSS of the command's whole process tree (launcher, fork server and
pool workers), sampled from /proc every 0.2 s, plus the largest single process.

    python benchmarks/bench_select.py --rows 20000 320000 --recipes datacomp_basic datacomp_clip_l14_30pct \\
        --workdir /tmp/bench_select --json bench_out/bench_select.json

Metadata is written once per size under --workdir and reused.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np


def tree_rss_kb(root: int, per_process: dict) -> int:
    """Summed VmRSS of ``root`` and its descendants (kB); updates each pid's peak in ``per_process``."""
    children: dict[int, list[int]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        kb = int(line.split()[1])
                        total += kb
                        per_process[pid] = max(per_process.get(pid, 0), kb)
                        break
        except OSError:
            pass
        stack.extend(children.get(pid, []))
    return total


def measure(cmd: list[str]) -> dict:
    per: dict[int, int] = {}
    peak = 0
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        peak = max(peak, tree_rss_kb(proc.pid, per))
        time.sleep(0.2)
    seconds = time.perf_counter() - t0
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {err.strip()[-2000:]}")
    return {"seconds": round(seconds, 2), "peak_tree_mb": round(peak / 1024), "peak_process_mb":
            round(max(per.values(), default=0) / 1024)}


def metadata_dir(workdir: str, rows: int, part_rows: int) -> str:
    from beam_filter.devtools.synthetic_metadata import write_synthetic_metadata

    path = os.path.join(workdir, f"metadata_{rows}_{part_rows}")
    if not os.path.isdir(path):
        # One part at a time (seed = part index): the generator holds its whole output in memory.
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for i in range(max(1, math.ceil(rows / part_rows))):
            n = min(part_rows, rows - i * part_rows)
            one = os.path.join(tmp, f"part{i}")
            write_synthetic_metadata(one, n, seed=i, parts=1)
            for ext in (".parquet", ".npz"):
                os.replace(os.path.join(one, "00000000" + ext), os.path.join(tmp, f"{i:08d}{ext}"))
            shutil.rmtree(one)
        os.replace(tmp, path)
    return path


def image_based_files(workdir: str) -> list[str]:
    """Random L/14-sized centroids and every other one as a target (the rule's cost, not its quality)."""
    rng = np.random.default_rng(0)
    cents, targets = os.path.join(workdir, "centroids.npy"), os.path.join(workdir, "targets.npy")
    np.save(cents, rng.standard_normal((1024, 768)).astype(np.float32))
    np.save(targets, np.arange(0, 1024, 2, dtype=np.int64))
    return ["--set", f"image_based.centroids={cents}", "--set", f"image_based.targets={targets}"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[20000, 200000])
    ap.add_argument("--part-rows", type=int, default=50000)
    ap.add_argument("--recipes", nargs="+", default=["datacomp_basic", "datacomp_clip_l14_30pct"])
    ap.add_argument("--workdir", default="/tmp/bench_select")
    ap.add_argument("--json")
    ap.add_argument("--row-path", action="store_true",
                    help="decide by rows (BEAM_FILTER_COLUMNAR=0, docs/columnar_select.md): before/after figures")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    if args.row_path:
        os.environ["BEAM_FILTER_COLUMNAR"] = "0"        # the select subprocesses inherit it
    env_cli = [sys.executable, "-m", "beam_filter.cli"]
    results = []
    for rows in args.rows:
        meta = metadata_dir(args.workdir, rows, args.part_rows)
        for recipe in args.recipes:
            out = os.path.join(args.workdir, f"out_{recipe}_{rows}")
            shutil.rmtree(out, ignore_errors=True)          # this benchmark's own directory
            extra = image_based_files(args.workdir) if recipe.startswith("image_based") else []
            r = measure(env_cli + ["select", "--recipe", recipe, "--metadata", meta, "--output", out,
                                   "--no-progress", *extra])
            r.update(recipe=recipe, rows=rows, part_rows=args.part_rows,
                     rows_per_s=round(rows / r["seconds"]), cores=os.cpu_count(), columnar=not args.row_path)
            with open(os.path.join(out, "report.json")) as f:      # the pool work, without launcher/finalize
                r["select_phase_s"] = json.load(f).get("timings", {}).get("phases", {}).get("select")
            print(json.dumps(r), flush=True)
            results.append(r)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("BEAM_FILTER_OFFLINE", "1")
    sys.exit(main())
