"""The ``dbp`` stage in real Beam pipelines: kept uids equal an independent implementation of the
published allocation (numpy + faiss + a scipy QP, the reference's np.rint rounding)."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.testing.util import assert_that
from scipy.optimize import minimize

from beam_filter.cluster import kmeans
from beam_filter.records import Verdict
from beam_filter.registry import build_stage
from beam_filter.transforms.dbp import DensityPrune

K, D = 8, 16


def _collect(rows, make):
    """The pipeline's output, brought back through a file (the check runs on a pickled copy)."""
    import pickle
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/out.pkl"

        def check(items):
            with open(path, "wb") as f:
                pickle.dump([(t, tuple(v)) for t, v in items], f)

        with beam.Pipeline(runner=BundleBasedDirectRunner(),
                           options=PipelineOptions(["--runner=DirectRunner"])) as p:
            assert_that(p | beam.Create(rows, reshuffle=False) | make(), check)
        with open(path, "rb") as f:
            return [(t, Verdict(*v)) for t, v in pickle.load(f)]


def _held_out(n=700, seed=11):
    """Embeddings around K centres of different spreads (so complexities differ), and the centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(K, D))
    spread = np.linspace(0.3, 1.5, K)
    which = rng.integers(0, K, n)
    x = centres[which] + spread[which, None] * rng.normal(size=(n, D))
    rows = [{"uid": f"{i:032x}", "shard": "s0", "key": f"{i:05d}", "emb": x[i].astype(np.float32)}
            for i in range(n)]
    return rows, centres


def _reference_kept(rows, centres, ratio, temperature=0.5, n_nn=20, balance=0.5):
    """The published method written out again: assignment, d_intra, d_inter (faiss, num_NNs+1 minus
    self), softmax, the QP (scipy SLSQP instead of osqp), np.rint, then the hardest of each cluster."""
    import faiss

    x = np.stack([r["emb"] for r in rows]).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    sims = x @ c.T
    labels = sims.argmax(1)
    dist = 1 - sims[np.arange(len(x)), labels]
    k = len(c)
    counts = np.bincount(labels, minlength=k)
    d_intra = np.array([dist[labels == j].mean() if counts[j] else np.nan for j in range(k)])
    index = faiss.IndexFlatIP(c.shape[1])
    index.add(c.astype(np.float32))
    dd, _ = index.search(c.astype(np.float32), min(n_nn, k - 1) + 1)
    d = np.mean(1 - dd[:, 1:], axis=1) * d_intra
    d[np.isnan(d)] = np.nanmean(d)
    p = np.exp(d / temperature) / np.exp(d / temperature).sum()
    n_keep = int(ratio * len(x))
    min_samples = int(n_keep / k * balance)
    lb = np.array([min(min_samples, counts[j] - 1) for j in range(k)], dtype=float) / n_keep
    ub = counts / n_keep
    res = minimize(lambda y: 0.5 * y @ y - p @ y, np.full(k, 1 / k), jac=lambda y: y - p, method="SLSQP",
                   bounds=list(zip(lb, ub)), options={"ftol": 1e-15, "maxiter": 1000},
                   constraints=[{"type": "eq", "fun": lambda y: y.sum() - 1, "jac": lambda y: np.ones(k)}])
    assert res.success
    alloc = np.rint(res.x * n_keep).astype(int)
    ranked = {j: [rows[i]["uid"] for i in sorted(np.flatnonzero(labels == j), key=lambda i: -dist[i])]
              for j in range(k)}
    return ranked, alloc, n_keep, labels


def _kept(verdicts):
    return {t.split("\t")[0] for t, v in verdicts if v.reason is None}


def _check_against_reference(verdicts, rows, centres, ratio):
    ranked, alloc, n_keep, labels = _reference_kept(rows, centres, ratio)
    assert len(verdicts) == len(rows) and len({t for t, _ in verdicts}) == len(rows)
    kept = _kept(verdicts)
    assert len(kept) == n_keep                              # exactly N (the reference's rint may miss by a few)
    assert {v.reason for _, v in verdicts} == {None, "dbp_pruned"}
    for j, uids in ranked.items():
        mine = [u for u in uids if u in kept]
        assert abs(len(mine) - alloc[j]) <= 1, (j, len(mine), alloc[j])   # the reference's rounding
        assert mine == uids[:len(mine)]                     # the hardest of the cluster, none skipped
    by_uid = {t.split("\t")[0]: v.columns for t, v in verdicts}
    assert all(by_uid[r["uid"]]["dbp_cluster"] == labels[i] for i, r in enumerate(rows))
    return kept


def test_dbp_stage_keeps_what_the_published_allocation_keeps(tmp_path):
    rows, centres = _held_out()
    path = str(tmp_path / "c.npy")
    kmeans.save_centroids(path, centres.astype(np.float32))
    stage = build_stage("dbp", "dbp", {"embedding": "emb", "centroids": path, "ratio": 0.6})
    got = _collect(rows, lambda: _StageVerdicts(stage))
    kept = _check_against_reference(got, rows, centres, 0.6)
    # Allocation differs across clusters: complex clusters keep a larger share.
    per = {}
    for t, v in got:
        c = v.columns
        per[c["dbp_cluster"]] = (c["dbp_complexity"], c["dbp_allocation"])
    assert len(set(a for _, a in per.values())) > 1 and sum(a for _, a in per.values()) == len(kept)
    # The multi-pass search with tiny exact buckets (every pass used) gives the same set.
    deep = _collect(rows, lambda: DensityPrune("emb", ratio=0.6, cent_args=dict(
        n_clusters=K, sample_size=10_000, seed=0, niter=5, spherical=True, path=path), exact_limit=2))
    assert _kept(deep) == kept


def test_dbp_exact_ties_fill_the_budget_exactly(tmp_path):
    # The same uid and embedding in several shards: identical keys; exactly N still kept.
    rows, centres = _held_out(n=200, seed=3)
    rows = [dict(r, shard=f"s{s}") for r in rows[:40] for s in range(5)]
    path = str(tmp_path / "c.npy")
    kmeans.save_centroids(path, centres.astype(np.float32))
    got = _collect(rows, lambda: DensityPrune("emb", ratio=0.37, cent_args=dict(
        n_clusters=K, sample_size=10_000, seed=0, niter=5, spherical=True, path=path)))
    assert len(got) == 200 and sum(v.reason is None for _, v in got) == int(0.37 * 200)
    again = _collect(list(reversed(rows)), lambda: DensityPrune("emb", ratio=0.37, cent_args=dict(
        n_clusters=K, sample_size=10_000, seed=0, niter=5, spherical=True, path=path)))
    assert sorted(got) == sorted(again)


def test_dbp_trains_its_own_centroids_and_skips_rows_without_embedding():
    rows, _ = _held_out(n=300, seed=5)
    rows.append({"uid": "f" * 32, "shard": "s0", "key": "none", "emb": None})
    stage = build_stage("d", "dbp", {"embedding": "emb", "n_clusters": 4, "niter": 5, "ratio": 0.5})
    got = _collect(rows, lambda: _StageVerdicts(stage))
    assert len(got) == 300 and sum(v.reason is None for _, v in got) == 150
    assert all(0 <= v.columns["d_cluster"] < 4 for _, v in got)


class _StageVerdicts(beam.PTransform):
    def __init__(self, stage):
        super().__init__()
        self.stage = stage

    def expand(self, rows):
        return self.stage.verdicts(rows)
