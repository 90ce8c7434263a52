"""build-centroids on one machine vs as a Beam graph (--distributed, local runner): time and memory.

Synthetic DataComp metadata (``--rows`` rows in parts of ``--part-rows``, L/14 768-d float16
embeddings), then for each mode the real command in a fresh process tree
(``bench_select.measure``: wall seconds, peak RSS of the tree and of its largest process,
plus CPU seconds):

* ``one``: ``beam-filter build-centroids`` (parts read one after another, k-means here);
* ``distributed``: the same with ``--distributed`` (parts sampled by the runner's workers,
  the sample gathered to one worker, k-means there), whose centroids must be the same bytes.

Both with ``--assign`` (the nearest-centroid pass) and a ``--sample-ratio``. On one machine the
distributed graph adds Beam's start-up and the sample's trip through a GroupByKey; its point is
Dataflow, where parts are read on many workers and only the sample reaches the trainer.
Measured on this project's shared 2-core machine (--rows 200000 --part-rows 50000 --clusters 256,
ratio 0.5): one machine 85.8 s wall / 32.9 CPU s / 1519 MB peak; distributed 105.8 s / 38.0 CPU s /
1802 MB peak; the same centroid bytes.

    python benchmarks/bench_build_centroids.py --rows 200000 --part-rows 50000 --clusters 256 \
        --json bench_out/bench_build_centroids.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _bench_common import measure_cpu, metadata_dir  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--part-rows", type=int, default=50_000)
    ap.add_argument("--clusters", type=int, default=1024)
    ap.add_argument("--sample-ratio", type=float, default=0.5)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    os.environ.setdefault("BEAM_FILTER_OFFLINE", "1")
    work = args.workdir or tempfile.mkdtemp(prefix="bench_build_centroids_")
    meta = metadata_dir(work, args.rows, args.part_rows)
    cli = [sys.executable, "-m", "beam_filter.cli", "build-centroids", "--metadata", meta,
           "--num-clusters", str(args.clusters), "--sample-ratio", str(args.sample_ratio)]
    results, outputs = [], {}
    for mode, extra in (("one", []), ("distributed", ["--distributed"])):
        out = os.path.join(work, f"centroids_{mode}.npy")
        assign = os.path.join(work, f"assign_{mode}")
        shutil.rmtree(assign, ignore_errors=True)     # ours, from an earlier run with this --workdir
        if os.path.exists(out):
            os.remove(out)
        r = measure_cpu(cli + ["--output", out, "--assign", assign, *extra])
        with open(out, "rb") as f:
            outputs[mode] = f.read()
        results.append({"mode": mode, "rows": args.rows, "parts": -(-args.rows // args.part_rows),
                        "clusters": args.clusters, "sample_ratio": args.sample_ratio, **r})
        print(json.dumps(results[-1]), flush=True)
    same = outputs["one"] == outputs["distributed"]
    print(json.dumps({"same_centroid_bytes": same}))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"runs": results, "same_centroid_bytes": same}, f, indent=2)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
