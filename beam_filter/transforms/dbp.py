"""Density-Based Pruning as a Beam graph: the wiring of ``cluster/dbp.py`` (whose docstring states the rule).

Only small records cross a shuffle, and no step holds more than the k centroids
plus per-cluster summaries:

1. centroids (``transforms.cluster.Centroids``: a bottom-k uid-hash sample, or a
   ``.npy``) and assignment (``AssignClusters``) are reused from the cluster stages;
2. per cluster, the count and the exact fixed-point sum of distances to the
   centroid (a combiner) -> the allocation ``Plan`` (one element: k numbers);
3. each cluster's cut -- the key of its ``x_j``-th hardest member -- is found by the
   multi-pass histogram search of ``rules/exact_rank.py``, run per cluster: every
   pass histograms 16 more bits of the (similarity, uid-hash) keys inside each
   cluster's current bucket (at most 65,536 pairs per cluster and pass), so no
   worker ever holds a cluster's rows;
4. each row is decided against its cluster's cut; rows that share the exact cut key
   (same float32 similarity and same 32-bit uid hash: rare) are grouped by cluster
   and the smallest row tokens fill the remaining places.

Every row with the embedding gets a verdict carrying its cluster, the cluster's
complexity and allocation (the report's per-cluster table); pruned rows also get
``dbp_pruned``. Rows without the embedding get none and stay as they were.
"""

from __future__ import annotations

from typing import NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.pvalue import AsDict, AsSingleton

from beam_filter.cluster import dbp
from beam_filter.identity import token_uid
from beam_filter.records import Verdict
from beam_filter.rules.exact_rank import (EXACT_LIMIT, MAX_PASSES, KeyBatch, merge_histograms,
                                          pass_histogram, refine)
from beam_filter.transforms.cluster import AssignClusters, Centroids
from beam_filter.transforms.thresholds import _MergeHistograms


class Keyed(NamedTuple):
    """A row reduced to what the selection needs (about 100 bytes)."""

    cluster: int
    key: int            # cluster/dbp.order_keys: larger = harder
    token: str


class _ClusterSums(beam.CombineFn):
    """(count, exact fixed-point distance sum) per cluster: integers, so any merge order agrees."""

    def create_accumulator(self):
        return (0, 0)

    def add_input(self, acc, d):
        return (acc[0] + 1, acc[1] + d)

    def merge_accumulators(self, accs):
        n = s = 0
        for a, b in accs:
            n, s = n + a, s + b
        return (n, s)

    def extract_output(self, acc):
        return acc


def _keyed_batch(batch):
    """Assigned records -> Keyed records, the keys computed for the whole batch at once."""
    keys = dbp.order_keys(np.array([r.sim for r in batch], dtype=np.float32),
                          [token_uid(r.token) for r in batch])
    return [Keyed(r.cluster, int(k), r.token) for r, k in zip(batch, keys)]


def _cluster_key_batches(batch):
    """A batch of Keyed -> [(cluster, KeyBatch)]: the sorted keys of each cluster in the batch."""
    clusters = np.array([r.cluster for r in batch], dtype=np.int64)
    keys = np.array([r.key for r in batch], dtype=np.uint64)
    order = np.lexsort((keys, clusters))
    clusters, keys = clusters[order], keys[order]
    cut = np.flatnonzero(np.r_[True, clusters[1:] != clusters[:-1], True])
    return [(int(clusters[s]), KeyBatch(keys[s:e], int(e - s), 0)) for s, e in zip(cut[:-1], cut[1:])]


def _plan(_, cents, sums, params):
    if cents is None:
        return None
    k = len(cents)
    counts = np.zeros(k, dtype=np.int64)
    dist = [0] * k
    for c, (n, s) in sums.items():
        counts[c], dist[c] = n, s
    return dbp.plan(cents, counts, dist, **params)


def _initial_states(plan):
    if plan is None:
        return {}
    return {j: dbp.initial_search(plan.counts[j], plan.alloc[j]) for j in range(len(plan.counts))
            if plan.counts[j] > 0}


def _refine_all(states, hists, limit):
    """One pass's histograms (cluster -> Histogram) refine every cluster's search."""
    empty = merge_histograms([])
    return {j: refine(s, hists.get(j, empty), limit) if not s.done else s for j, s in states.items()}


class DensityPrune(beam.PTransform):
    """rows -> (token, Verdict) for every row with ``column``: DBP's kept set (cluster/dbp.py)."""

    def __init__(self, column: str, *, ratio: float = dbp.DEFAULT_RATIO,
                 temperature: float = dbp.DEFAULT_TEMPERATURE, n_neighbors: int = dbp.DEFAULT_NEIGHBORS,
                 balance: float = dbp.DEFAULT_BALANCE, cent_args: dict, prefix: str = "dbp",
                 exact_limit: int = EXACT_LIMIT):
        """``prefix``: verdict columns are ``{prefix}_cluster``, ``_complexity``, ``_allocation``."""
        super().__init__()
        self.column, self.cent_args, self.prefix, self.limit = column, cent_args, prefix, exact_limit
        self.params = dict(ratio=ratio, temperature=temperature, n_neighbors=n_neighbors, balance=balance)

    def expand(self, rows):
        limit, prefix = self.limit, self.prefix
        cents = rows | "Centroids" >> Centroids(self.column, **self.cent_args)
        assigned = rows | "Assign" >> AssignClusters(self.column, cents)
        recs = (assigned | "BatchKeys" >> beam.BatchElements(min_batch_size=256, max_batch_size=8192)
                | "Keys" >> beam.FlatMap(_keyed_batch))
        sums = (assigned | "DistKey" >> beam.Map(lambda r: (r.cluster, dbp.dist_fixed(r.sim)))
                | "ClusterSums" >> beam.CombinePerKey(_ClusterSums()))
        plan = (rows.pipeline | "One" >> beam.Create([None])
                | "Plan" >> beam.Map(_plan, cents=AsSingleton(cents), sums=AsDict(sums), params=self.params))

        batches = (recs | "BatchSearch" >> beam.BatchElements(min_batch_size=1024, max_batch_size=65536)
                   | "ByCluster" >> beam.FlatMap(_cluster_key_batches))
        states = plan | "Start" >> beam.Map(_initial_states)
        for k in range(MAX_PASSES):
            def hist(kb, states):
                j, b = kb
                s = states.get(j)
                if s is not None and not s.done:
                    yield j, pass_histogram(b, s, first=False)

            hists = (batches | f"Pass{k + 1}/Histogram" >> beam.FlatMap(hist, states=AsSingleton(states))
                     | f"Pass{k + 1}/Merge" >> beam.CombinePerKey(_MergeHistograms())
                     | f"Pass{k + 1}/AsDict" >> beam.combiners.ToDict())
            states = (states | f"Pass{k + 1}/Refine" >> beam.Map(
                lambda s, h: _refine_all(s, h, limit), AsSingleton(hists, default_value={})))

        def columns(j, p):
            return {f"{prefix}_cluster": int(j), f"{prefix}_complexity": float(p.complexity[j]),
                    f"{prefix}_allocation": int(p.alloc[j])}

        def decide(r, p, states):
            keep = dbp.row_decision(r.key, int(p.alloc[r.cluster]), int(p.counts[r.cluster]),
                                    states.get(r.cluster))
            if keep is None:
                yield beam.pvalue.TaggedOutput("tie", (r.cluster, r.token))
                return
            yield r.token, Verdict(None if keep else dbp.DBP_REASON, None, columns(r.cluster, p))

        decided = recs | "Decide" >> beam.FlatMap(
            decide, p=AsSingleton(plan), states=AsSingleton(states)).with_outputs("tie", main="rows")

        def ties(kv, p, states):
            j, tokens = kv
            kept = dbp.tie_keep(list(tokens), dbp.tie_needed(int(p.alloc[j]), states[j]))
            for t in sorted(tokens):
                yield t, Verdict(None if t in kept else dbp.DBP_REASON, None, columns(j, p))

        tied = (decided.tie | "GroupTies" >> beam.GroupByKey()
                | "Ties" >> beam.FlatMap(ties, p=AsSingleton(plan), states=AsSingleton(states)))
        return (decided.rows, tied) | "All" >> beam.Flatten()
