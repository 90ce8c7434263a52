"""Throughput and peak memory of the cluster stages: k-means + assign, SemDeDup, near-dup LSH.

Each measurement runs in its own subprocess so its peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is its own. Inputs are
generated: 512-d embeddings drawn around 2,000 topic centres with 10% planted
near-duplicates, and 64-bit pHashes with 10% planted copies 0-3 bits away.

Scaling choices (what makes growth linear, not quadratic): k-means trains on a
fixed-size sample (bottom-k by uid hash, 50,000 rows, 10 iterations) and the
number of clusters grows with the pool (``n / 1000``), as the SemDeDup reference
sizes it, so SemDeDup's per-cluster quadratic work stays bounded per row.

    python benchmarks/bench_cluster.py                 # 10k and 100k, pure + Beam at 10k
    python benchmarks/bench_cluster.py --sizes 10000 100000 1000000 --beam 100000
    python benchmarks/bench_cluster.py --sizes --beam --select 10000 100000   # `select --scores` only

``--select``: the whole command, ``beam-filter select --scores`` with near_dedup and with semdedup
on a generated scores directory (parts of 10,000 rows: pHash, a quality score, 512-d fp16
embeddings), by part (group stages on slim rows, verdicts back through files) and, with
``--graph``, also on the general graph; peak RSS of the process tree (bench_select.measure).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

DIM = 512
SAMPLE = 50_000
NITER = 10
EPS = 0.05


def _uids(n):
    return [f"{i:032x}" for i in range(n)]


def _embeddings(n, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2000, DIM), dtype=np.float32)
    x = centres[rng.integers(0, 2000, n)]
    for s in range(0, n, 65536):         # float32 noise in blocks: no n x d float64 temporary
        x[s:s + 65536] += 0.8 * rng.standard_normal((min(65536, n - s), DIM), dtype=np.float32)
    ndup = n // 10
    src = rng.integers(0, n - ndup, ndup)
    x[n - ndup:] = x[src] + 0.05 * rng.standard_normal((ndup, DIM), dtype=np.float32)
    return x


def _phashes(n, seed=0):
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**63 - 1, size=n, dtype=np.int64) ^ (rng.integers(0, 2, n).astype(np.int64) << 63)
    ndup = n // 10
    src = rng.integers(0, n - ndup, ndup)
    flips = np.zeros(ndup, dtype=np.uint64)
    for _ in range(3):
        keep = rng.random(ndup) < 0.7
        flips |= np.where(keep, np.uint64(1) << rng.integers(0, 64, ndup).astype(np.uint64), np.uint64(0))
    h[n - ndup:] = (h[src].view(np.uint64) ^ flips).view(np.int64)
    return h


PART_ROWS = 10_000


def _scores_dir(n: int) -> str:
    """A scores directory of ``n`` generated rows (made once per size, like bench_select's metadata)."""
    import os
    import shutil
    import tempfile

    from beam_filter import tables
    from beam_filter.layout import OutputLayout

    root = os.path.join(tempfile.gettempdir(), "bench_cluster_select", f"scores_{n}")
    if os.path.isdir(root):
        return root
    tmp = root + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    layout = OutputLayout(tmp)
    for i, s in enumerate(range(0, n, PART_ROWS)):
        m = min(PART_ROWS, n - s)
        x = _embeddings(m, seed=i)
        h = _phashes(m, seed=i)
        q = np.random.default_rng(i).random(m)
        shard = f"/synthetic/{i:08d}.tar"
        rows = [{"uid": f"{s + j:032x}", "shard": shard, "key": f"{j:08d}", "read_error": None, "warning": None,
                 "caption": f"caption {j % 997}", "phash": int(h[j]), "clip_score": float(q[j]),
                 "clip_image_embedding": x[j]} for j in range(m)]
        tables.write_shard_tables(layout, shard, rows, write_scores=True, write_decisions=False, metadata={})
    os.replace(tmp, root)
    return root


def run_select(kind: str, n: int) -> dict:
    """``select --scores`` of ``n`` rows with one group stage; ``kind``: select_<stage>[_graph]."""
    import os
    import shutil
    import sys
    import tempfile

    from _bench_common import measure_cpu

    stage = kind[len("select_"):].removesuffix("_graph")
    scores = _scores_dir(n)
    recipe = os.path.join(tempfile.gettempdir(), "bench_cluster_select", f"{stage}_{n}.yaml")
    body = ("near_dedup: {tolerance: 4, bands: 4, quality: clip_score}" if stage == "near_dedup" else
            f"semdedup: {{embedding: clip_image_embedding, n_clusters: {max(10, n // 1000)}, eps: {EPS}, "
            f"sample_size: {SAMPLE}, niter: {NITER}}}")
    with open(recipe, "w") as f:
        f.write(f"name: {stage}\nstages:\n  - {body}\n")
    out = os.path.join(tempfile.gettempdir(), "bench_cluster_select", f"out_{kind}_{n}")
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "beam_filter.cli", "select", "--recipe", recipe, "--scores", scores,
           "--output", out, "--no-progress"] + (["--no-fusion"] if kind.endswith("_graph") else [])
    r = measure_cpu(cmd)
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    kept = report.get("kept", report.get("counts", {}).get("kept"))
    shutil.rmtree(out, ignore_errors=True)
    return {"kind": kind, "n": n, "execution": report["timings"]["execution"], "kept": kept,
            "rows_per_s": round(n / r["seconds"]), **r}


def _peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(kind: str, n: int) -> dict:
    from beam_filter.cluster import kmeans, near_dup, semdedup

    if kind.startswith("select_"):
        return run_select(kind, n)
    uids = _uids(n)
    out = {"kind": kind, "n": n}
    if kind == "kmeans_semdedup":
        x = kmeans.normalize(_embeddings(n))
        base_mb = _peak_mb()            # input generation; the stages' own use is peak - this
        k = max(10, n // 1000)
        t0 = time.perf_counter()
        sample = kmeans.sample_by_uid(uids, SAMPLE)
        t1 = time.perf_counter()
        cents = kmeans.train_kmeans(x[sample], k, niter=NITER, normalized=True)
        t2 = time.perf_counter()
        labels, sims = kmeans.assign(x, cents, normalized=True)
        t3 = time.perf_counter()
        order = np.argsort(labels, kind="stable")
        bounds = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1], True])
        dropped = 0
        largest = 0
        for s, e in zip(bounds[:-1], bounds[1:]):
            idx = order[s:e]
            largest = max(largest, len(idx))
            recs = [(uids[i], float(sims[i]), x[i]) for i in idx]
            dropped += len(semdedup.semdedup_slices(recs, EPS, "farthest", 20_000))
        t4 = time.perf_counter()
        out.update(k=k, sample_s=t1 - t0, train_s=t2 - t1, assign_s=t3 - t2, semdedup_s=t4 - t3,
                   assign_rows_per_s=n / (t3 - t2), semdedup_rows_per_s=n / (t4 - t3),
                   dropped=dropped, largest_cluster=largest, input_peak_mb=base_mb)
    elif kind == "near_dup":
        h = _phashes(n)
        t0 = time.perf_counter()
        dropped = near_dup.near_duplicates(uids, h, bands=4, tolerance=4)
        t1 = time.perf_counter()
        out.update(near_dup_s=t1 - t0, rows_per_s=n / (t1 - t0), dropped=len(dropped))
    elif kind in ("beam_semdedup", "beam_near_dup"):
        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        from beam_filter.transforms.cluster import NearDedup, SemDeDup

        chunk = 1000            # rows are generated inside the pipeline: beam.Create would pickle them all

        if kind == "beam_semdedup":
            def gen(i):
                x = _embeddings(chunk, seed=i)
                return [{"uid": f"{i * chunk + j:032x}", "emb": x[j]} for j in range(chunk)]
            tr = SemDeDup("emb", n_clusters=max(10, n // 1000), eps=EPS, sample_size=SAMPLE, niter=NITER)
        else:
            def gen(i):
                h = _phashes(chunk, seed=i)
                return [{"uid": f"{i * chunk + j:032x}", "phash": int(h[j])} for j in range(chunk)]
            tr = NearDedup(bands=4, tolerance=4)
        t0 = time.perf_counter()
        with beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([])) as p:
            (p | beam.Create(list(range(n // chunk))) | beam.FlatMap(gen) | tr
             | beam.combiners.Count.Globally() | beam.Map(lambda c: print("VERDICTS", c, flush=True)))
        t1 = time.perf_counter()
        out.update(beam_s=t1 - t0, rows_per_s=n / (t1 - t0))
    out["peak_rss_mb"] = _peak_mb()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--beam", type=int, nargs="*", default=[10_000], help="sizes for the Beam runs")
    ap.add_argument("--select", type=int, nargs="*", default=[], help="sizes for `select --scores` runs")
    ap.add_argument("--graph", action="store_true", help="--select also on the general graph (--no-fusion)")
    ap.add_argument("--one", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one[0], int(args.one[1]))), flush=True)
        return
    jobs = [(k, n) for n in args.sizes for k in ("kmeans_semdedup", "near_dup")]
    jobs += [(k, n) for n in args.beam for k in ("beam_semdedup", "beam_near_dup")]
    kinds = ("select_near_dedup", "select_semdedup")
    jobs += [(k + g, n) for n in args.select for k in kinds for g in ("", "_graph")[:1 + args.graph]]
    from _bench_common import run_jobs_isolated

    run_jobs_isolated(__file__, jobs, args.json)


if __name__ == "__main__":
    main()
