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
    ("bench_cluster", "bench_cluster.py", ["--sizes", "10000", "100000", "1000000", "--beam", "100000"], True),
    ("bench_mlm", "bench_mlm.py", [], False),
    ("bench_select", "bench_select.py", ["--rows", "20000", "200000", "--recipes", "datacomp_basic",
                                         "datacomp_clip_l14_30pct", "image_based"], True),
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
