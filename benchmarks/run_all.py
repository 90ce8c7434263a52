"""`make bench`: every benchmark of the project, figures written under --output as JSON.

Each harness is a script of its own (runnable alone, see its docstring); this runs
the ones that exist with sizes that finish in minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# (output name, script, arguments, whether it takes --json; the others print JSON lines,
# saved as <name>.jsonl)
BENCHES = [
    ("bench_pipeline", "bench_pipeline.py", ["--samples", "4000", "--replicate", "16"], True),
    ("bench_clip_vitb32", "bench_clip.py", ["--arch", "ViT-B-32", "--n", "256"], True),
    ("bench_clip_vitl14", "bench_clip.py", ["--arch", "ViT-L-14", "--n", "48"], True),
    ("bench_clip_tokenizer", "bench_clip.py", ["--tokenizer", "--n", "20000"], True),
    ("bench_cluster", "bench_cluster.py", ["--sizes", "10000", "100000", "1000000", "--beam", "100000",
                                           "--select", "10000", "100000"], True),     # docs/memory.md
    ("bench_mlm", "bench_mlm.py", [], False),
    # Issue 14's sizes: 20k, 320k and 1.28M metadata rows, every DataComp baseline (~15 min on 2 cores).
    ("bench_select", "bench_select.py", ["--rows", "20000", "320000", "1280000", "--recipes", "datacomp_basic",
                                         "datacomp_clip_l14_30pct", "datacomp_b32_th025", "image_based",
                                         "image_based_intersect_clip_score"], True),
    ("bench_dbp", "bench_dbp.py", ["--sizes", "100000", "1000000", "--beam", "100000"], True),
    ("bench_uid_subset", "bench_uid_subset.py", ["--uids", "20000000", "--lookups", "200000"], True),
    # issue 14: the launcher's work after the pool (uids.npy, report.json, report.html) at 20k-1.28M rows
    ("bench_finalize", "bench_finalize.py", ["--rows", "20000", "320000", "1280000"], True),
    # issue 19: build-centroids on one machine vs --distributed (local runner), same centroid bytes
    ("bench_build_centroids", "bench_build_centroids.py", ["--rows", "200000", "--part-rows", "50000",
                                                           "--clusters", "256"], True),
    ("bench_text_detect", "bench_text_detect.py", ["--n", "48"], True),
    ("bench_devil", "bench_devil.py", ["--n", "64"], True),
    # issue 14 side by side; full sizes: docs/benchmarks_vs_peers.md. Skipped (a JSON line says so)
    # without a DataComp checkout and the peer's virtualenv.
    ("bench_vs_datacomp", "bench_vs_datacomp.py", ["--rows", "20000"], True),
    # issue 14: a rule recipe and a model recipe (the tiny CLIP twin) at 2k, 20k and 100k samples
    ("bench_score_vs_loop_rules", "bench_score_vs_loop.py", ["--samples", "2000", "20000", "100000",
                                                             "--kinds", "rules", "--repeat", "1"], True),
    ("bench_score_tiny_clip", "bench_score_vs_loop.py", ["--samples", "2000", "20000", "100000",
                                                         "--kinds", "tiny_clip", "--repeat", "1"], True),
    ("bench_score_vs_loop_clip", "bench_score_vs_loop.py", ["--samples", "256", "--kinds", "clip",
                                                            "--repeat", "1", "--shard-size", "128"], True),
    # issue 16: captions/s (tiny twin and a random blip-base-shaped BLIP) and SIEVE pairs/s (real MiniLM)
    ("bench_captions", "bench_captions.py", ["--n", "8", "--sieve-samples", "256"], True),
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--output", default="bench_out")
    ap.add_argument("--only", help="run only this script (e.g. bench_pipeline.py)")
    args = ap.parse_args()
    os.makedirs(args.output, exist_ok=True)
    failed = []
    for tag, script, extra, takes_json in BENCHES:
        if args.only and script != args.only:
            continue
        path = os.path.join(HERE, script)
        cmd = [sys.executable, path, *extra]
        if takes_json:
            cmd += ["--json", os.path.join(args.output, f"{tag}.json")]
        if script == "bench_pipeline.py":
            cmd += ["--pool", os.path.join(args.output, "pool"), "--work", os.path.join(args.output, "pipeline")]
        print("+", " ".join(cmd), flush=True)
        if takes_json:
            code = subprocess.run(cmd).returncode
        else:
            with open(os.path.join(args.output, f"{tag}.jsonl"), "w") as out:
                code = subprocess.run(cmd, stdout=out).returncode
        if code != 0:
            failed.append(script)
    if failed:
        print("failed:", ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
