"""What a command costs after its pool is done: finalize (uids.npy, report.json, report.html).

Issue 14 measured finalize at 17.3 s of a 1.28M-row ``select --metadata`` (decision_summary
8 s, report.html 5.5 s, a torch import to describe a CLIP stage 3.7 s). This writes
decisions shaped like that run's (``--rows`` rows in 50k-row files: uid, shard, key, kept,
copies, reason, stage, caption, url, sizes, two CLIP scores, failed_stages), then times, in
this process with ``apache_beam`` already imported (as in the launcher after ``run_job``):

* ``finalize_s`` / ``finalize_cpu_s``: ``finalize.finalize`` for ``datacomp_b32_th025``
  (wall, and CPU of all threads);
* ``decision_summary_s``, ``scan_s``: its two passes over the decisions alone (wall);
* ``imports_torch``: whether finalize imported torch (describing a model stage must not).

Each size runs in a fresh process (``run_jobs_isolated``), paying its own imports as a
command does.

    python benchmarks/bench_finalize.py --rows 20000 320000 1280000 --json bench_out/bench_finalize.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PART_ROWS = 50_000
WORDS = np.array("a the red old dog cat boat barn light morning close-up of in on photo".split(), dtype=object)


def write_decisions(out: str, rows: int, seed: int = 0) -> None:
    """``rows`` decision rows of a DataComp-metadata ``select`` (about 77% kept), 50k per file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from beam_filter import records as R

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out, "decisions"), exist_ok=True)
    for part, start in enumerate(range(0, rows, PART_ROWS)):
        n = min(PART_ROWS, rows - start)
        hexes = rng.integers(0, 256, size=(n, 16), dtype=np.uint8).tobytes().hex()
        uids = [hexes[i:i + 32] for i in range(0, 32 * n, 32)]
        b32 = np.round(rng.normal(0.29, 0.05, n), 3)
        l14 = np.round(b32 - rng.random(n) * 0.05, 3)
        short = rng.random(n) < 0.05
        kept = (b32 >= 0.25) & ~short
        reason = np.where(kept, None, np.where(short, "caption_too_short", "clip_b32_score_below_threshold"))
        stage = np.where(kept, None, np.where(short, "basic", "clip_b32"))
        failed = [[] if k else [s] for k, s in zip(kept, stage)]
        words = rng.integers(2, 12, size=n)
        caption = [" ".join(rng.choice(WORDS, size=w)) for w in words]
        shard = f"/data/metadata/{part:08d}.parquet"
        table = pa.table({
            R.UID: uids, R.SHARD: [shard] * n, R.KEY: uids, R.KEPT: kept, R.COPIES: kept.astype(np.int64),
            R.REASON: pa.array(reason.tolist(), pa.string()), R.STAGE: pa.array(stage.tolist(), pa.string()),
            R.READ_ERROR: pa.nulls(n), R.CAPTION: caption,
            "clip_b32_similarity_score": b32, "clip_l14_similarity_score": l14,
            "failed_stages": pa.array(failed, pa.list_(pa.string())),
            R.HEIGHT: rng.choice([256, 512, 1024], size=n), R.WIDTH: rng.choice([256, 512, 1024], size=n),
            R.URL: [f"https://example.com/{u[:12]}.jpg" for u in uids],
        })
        pq.write_table(table, os.path.join(out, "decisions", f"{part:08d}.parquet"))


def measure(rows: int, workdir: str) -> dict:
    import importlib

    importlib.import_module("apache_beam")      # loaded in the launcher when finalize runs
    from beam_filter import finalize as F
    from beam_filter.cli import _load_recipe
    from beam_filter.job import Job
    from beam_filter.layout import OutputLayout
    from beam_filter.report.data import scan

    out = os.path.join(workdir, f"out_{rows}")
    write_decisions(out, rows)
    job = Job(command="select", output=out, recipe=_load_recipe("datacomp_b32_th025", [], None),
              input_globs=["/data/metadata"], metadata_dir="/data/metadata", execution="by_part")
    torch_before = "torch" in sys.modules
    w, c = time.perf_counter(), time.process_time()
    report = F.finalize(job, None, 1.0, None)
    fin_s, fin_cpu = time.perf_counter() - w, time.process_time() - c
    files = OutputLayout(out).decision_files()
    w = time.perf_counter()
    F.decision_summary(files)
    ds_s = time.perf_counter() - w
    w = time.perf_counter()
    scan(out)
    scan_s = time.perf_counter() - w
    return {"rows": rows, "files": len(files), "kept": report["counts"]["kept"],
            "finalize_s": round(fin_s, 3), "finalize_cpu_s": round(fin_cpu, 3),
            "decision_summary_s": round(ds_s, 3), "scan_s": round(scan_s, 3),
            "imports_torch": (not torch_before) and "torch" in sys.modules}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[20_000, 320_000, 1_280_000])
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--one", nargs=2, metavar=("KIND", "ROWS"), help=argparse.SUPPRESS)   # one size, this process
    args = ap.parse_args()
    os.environ.setdefault("BEAM_FILTER_OFFLINE", "1")
    if args.one:
        with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
            print("RESULT " + json.dumps(measure(int(args.one[1]), workdir)), flush=True)
        return 0
    from _bench_common import run_jobs_isolated

    # A fresh process per size: each pays its own imports, as a command does.
    run_jobs_isolated(__file__, [("finalize", n) for n in args.rows], args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
