"""Throughput and peak memory of Density-Based Pruning (cluster/dbp.py, transforms/dbp.py).

Two measurements, each in its own subprocess so its peak RSS is its own:

* ``stream`` -- the algorithm the Beam graph runs, as a loop over chunks of 65,536
  rows that are generated, assigned and turned into keys one at a time (like
  workers reading parts): k-means on a 50,000-row uid-hash sample, assignment,
  exact per-cluster distance sums, the allocation, then the per-cluster rank
  search (at most four passes of 16-bit histograms, each re-reading the chunks'
  keys from a spill file, as the Beam passes re-read their key batches) and the
  final decision. ``rows_per_s`` leaves out the time spent generating the input
  (``input_gen_s``: each chunk is made twice, for the k-means sample and for assignment). Nothing holds more than one chunk plus per-cluster state, so
  peak memory should stay flat from 100k to 1M rows (bounded by k, not n);
* ``beam`` -- ``DensityPrune`` on the FnApiRunner, rows generated in the pipeline.

Inputs: 512-d embeddings around 2,000 topic centres; k = 100 (the reference's
DataComp-medium setting), ratio 0.8.

    python benchmarks/bench_dbp.py                           # stream 100k, 1M; beam 100k
    python benchmarks/bench_dbp.py --sizes 100000 --beam 20000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time

import numpy as np

DIM = 512
K = 100
SAMPLE = 50_000
NITER = 10
CHUNK = 65_536
RATIO = 0.8
_GEN = [0.0]            # seconds spent generating input chunks (not DBP's work)


def _chunk(i: int, n: int) -> np.ndarray:
    """Chunk ``i`` of the pool: deterministic, generated on demand (never the whole pool)."""
    t = time.perf_counter()
    try:
        return _make_chunk(i, n)
    finally:
        _GEN[0] += time.perf_counter() - t


def _make_chunk(i: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(1000 + i)
    m = min(CHUNK, n - i * CHUNK)
    centres = np.random.default_rng(0).standard_normal((2000, DIM), dtype=np.float32)
    x = centres[rng.integers(0, 2000, m)]
    x += rng.uniform(0.4, 1.2, (m, 1)).astype(np.float32) * rng.standard_normal((m, DIM), dtype=np.float32)
    return x


def _uids(i: int, n: int) -> list[str]:
    s = i * CHUNK
    return [f"{j:032x}" for j in range(s, min(n, s + CHUNK))]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_stream(n: int) -> dict:
    from beam_filter.cluster import dbp, kmeans
    from beam_filter.rules.exact_rank import MAX_PASSES, KeyBatch, merge_histograms, pass_histogram, refine

    chunks = (n + CHUNK - 1) // CHUNK
    base_mb = _peak_mb()
    t0 = time.perf_counter()
    # k-means sample: the rows with the smallest uid hash (what Centroids' BottomK keeps), chunk by chunk.
    from beam_filter.cluster.sampling import uid_hash64

    best: list[tuple[int, int, int]] = []
    for i in range(chunks):
        hs = sorted((uid_hash64(u, "kmeans0"), i, j) for j, u in enumerate(_uids(i, n)))[:SAMPLE]
        best = sorted(best + hs)[:SAMPLE]
    picked: dict[int, list[int]] = {}
    for _, i, j in best:
        picked.setdefault(i, []).append(j)
    sample = np.concatenate([_chunk(i, n)[sorted(js)] for i, js in sorted(picked.items())])
    cents = kmeans.train_kmeans(sample, K, niter=NITER, seed=0)
    del sample
    t1 = time.perf_counter()
    counts = np.zeros(K, np.int64)
    sums = [0] * K
    spill = tempfile.mkdtemp(prefix="bench_dbp_")
    for i in range(chunks):
        labels, sims = kmeans.assign(_chunk(i, n), cents)
        c, s = dbp.cluster_sums(labels, sims, K)
        counts += c
        sums = [a + b for a, b in zip(sums, s)]
        keys = dbp.order_keys(sims, _uids(i, n))
        np.save(os.path.join(spill, f"{i}_labels.npy"), labels)
        np.save(os.path.join(spill, f"{i}_keys.npy"), keys)
    t2 = time.perf_counter()
    plan = dbp.plan(cents, counts, sums, ratio=RATIO)
    states = {j: dbp.initial_search(counts[j], plan.alloc[j]) for j in range(K) if counts[j]}
    passes = 0
    for _ in range(MAX_PASSES):
        if all(s.done for s in states.values()):
            break
        passes += 1
        hists: dict[int, list] = {}
        for i in range(chunks):
            labels = np.load(os.path.join(spill, f"{i}_labels.npy"))
            keys = np.load(os.path.join(spill, f"{i}_keys.npy"))
            for j in np.unique(labels):
                s = states.get(int(j))
                if s is not None and not s.done:
                    kj = np.sort(keys[labels == j])
                    h = pass_histogram(KeyBatch(kj, len(kj), 0), s, False)
                    hists[int(j)] = merge_histograms([hists[int(j)], h]) if int(j) in hists else h
        states = {j: refine(s, hists.get(j, merge_histograms([])), 1 << 16) if not s.done else s
                  for j, s in states.items()}
    kept = 0
    ties = 0
    for i in range(chunks):
        labels = np.load(os.path.join(spill, f"{i}_labels.npy"))
        keys = np.load(os.path.join(spill, f"{i}_keys.npy"))
        for lab, key in zip(labels.tolist(), keys.tolist()):
            d = dbp.row_decision(key, int(plan.alloc[lab]), int(counts[lab]), states.get(lab))
            kept += d is True
            ties += d is None
    t3 = time.perf_counter()
    for f in os.listdir(spill):
        os.unlink(os.path.join(spill, f))
    os.rmdir(spill)
    return {"kind": "stream", "n": n, "k": K, "kmeans_s": t1 - t0, "assign_keys_s": t2 - t1,
            "search_decide_s": t3 - t2, "passes": passes, "total_s": t3 - t0, "input_gen_s": _GEN[0],
            "rows_per_s": n / (t3 - t0 - _GEN[0]),
            "kept": kept, "ties": ties, "n_keep": plan.n_keep, "base_mb": base_mb}


def run_beam(n: int) -> dict:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from beam_filter.transforms.dbp import DensityPrune

    chunk = 1000

    def gen(i):
        rng = np.random.default_rng(i)
        centres = np.random.default_rng(0).standard_normal((2000, DIM), dtype=np.float32)
        x = centres[rng.integers(0, 2000, chunk)] + rng.standard_normal((chunk, DIM), dtype=np.float32)
        return [{"uid": f"{i * chunk + j:032x}", "shard": "s", "key": str(i * chunk + j), "emb": x[j]}
                for j in range(chunk)]

    tr = DensityPrune("emb", ratio=RATIO, cent_args=dict(n_clusters=K, sample_size=SAMPLE, seed=0,
                                                         niter=NITER, spherical=True, path=None))
    t0 = time.perf_counter()
    with beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([])) as p:
        (p | beam.Create(list(range(n // chunk))) | beam.FlatMap(gen) | tr
         | beam.Filter(lambda kv: kv[1].reason is None) | beam.combiners.Count.Globally()
         | beam.Map(lambda c: print("KEPT", c, flush=True)))
    t1 = time.perf_counter()
    return {"kind": "beam", "n": n, "k": K, "beam_s": t1 - t0, "rows_per_s": n / (t1 - t0)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    ap.add_argument("--beam", type=int, nargs="*", default=[100_000], help="sizes for the Beam runs")
    ap.add_argument("--one", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args(argv)
    if args.one:
        kind, n = args.one[0], int(args.one[1])
        r = run_stream(n) if kind == "stream" else run_beam(n)
        r["peak_rss_mb"] = _peak_mb()
        print("RESULT " + json.dumps(r), flush=True)
        return
    jobs = [("stream", n) for n in args.sizes] + [("beam", n) for n in args.beam]
    from _bench_common import run_jobs_isolated

    run_jobs_isolated(__file__, jobs, args.json)


if __name__ == "__main__":
    main()
