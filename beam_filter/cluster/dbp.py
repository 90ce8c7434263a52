"""Density-Based Pruning (Abbas et al., ICLR 2024; amro-kamal/effective_pruning): pure numpy.

DBP keeps more samples from *complex* concept clusters. Given k-means centroids
and, per cluster, its size ``n_j`` and mean cosine distance to its centroid:

1. complexity ``d_j = d_inter_j * d_intra_j``: ``d_intra`` is the mean cosine
   distance of the cluster's members to its centroid, ``d_inter`` the mean
   ``1 - cos`` to the ``n_neighbors`` (20) nearest *other* centroids; NaN (an
   empty cluster) becomes the mean of the others (the reference's ``nanmean``);
2. ``p = softmax(d / T)`` with ``T = 0.5``;
3. ``N = int(ratio * total)`` samples are kept; per-cluster counts ``x`` solve
   ``min 1/2 |x|^2 - (pN).x  s.t.  sum x = N,  lb_j <= x_j <= ub_j`` with
   ``ub_j = n_j``, ``lb_j = min(int(N / k * balance), n_j - 1)`` (``balance`` 0.5).
   The reference calls a QP solver (osqp); the KKT conditions give the closed
   form ``x_j = clip(p_j N - lambda, lb_j, ub_j)`` where ``lambda`` makes the sum
   ``N`` -- a monotone function of ``lambda``, so bisection finds it exactly to
   float precision (:func:`allocate`);
4. the reference rounds with ``np.rint`` (the sum can then miss ``N`` by a few);
   we round by largest remainder so exactly ``N`` are kept (ties: lower cluster
   id first), never leaving ``[lb_j, ub_j]`` (:func:`round_to_total`);
5. each cluster keeps its ``x_j`` *hardest* members: farthest from the centroid
   (lowest cosine), ties by uid hash then row token (:func:`order_keys`).

Differences from the reference, all deliberate: ``lb_j`` is floored at 0 (an
empty cluster would otherwise get ``lb = -1``); exact-``N`` rounding (above);
``k = 1`` or every complexity NaN gives the uniform ``p``.

The selection in step 5 is a per-cluster rank: :func:`order_keys` turns
(similarity, uid) into one uint64 whose descending order is "hardest first",
so the Beam wiring (``transforms/dbp.py``) finds each cluster's cut with the
multi-pass histogram search of ``rules/exact_rank.py`` -- never gathering a
cluster -- and :func:`row_decision` tells a row from its key and the cut.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from beam_filter.cluster.sampling import uid_hash64
from beam_filter.rules.exact_rank import Search

DBP_REASON = "dbp_pruned"
DEFAULT_K = 100             # DataComp medium (reference)
DEFAULT_NEIGHBORS = 20
DEFAULT_TEMPERATURE = 0.5
DEFAULT_RATIO = 0.8
DEFAULT_BALANCE = 0.5       # reference cls_bal_ratio: min_samples = int(N / k * 0.5)
DIST_SCALE = 1 << 40        # fixed-point distance sums: exact and order-independent
_TIE_SALT = "dbp"


class Plan(NamedTuple):
    """Per-cluster statistics and the allocation: what the report shows and verdicts use."""

    counts: np.ndarray          # n_j (int64)
    d_intra: np.ndarray         # mean cosine distance to the centroid (NaN when empty)
    d_inter: np.ndarray         # mean 1 - cos to the nearest other centroids
    complexity: np.ndarray      # d_j after the NaN fill
    prob: np.ndarray            # softmax(d / T)
    alloc: np.ndarray           # kept per cluster (int64), sums to n_keep
    n_keep: int
    total: int


# ---- complexity and allocation ---------------------------------------------------

def inter_distances(centroids, n_neighbors: int = DEFAULT_NEIGHBORS) -> np.ndarray:
    """Mean ``1 - cos`` from each centroid to its ``n_neighbors`` nearest others (NaN when k = 1)."""
    c = np.asarray(centroids, dtype=np.float64)
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    k = len(c)
    m = min(int(n_neighbors), k - 1)
    if m <= 0:
        return np.full(k, np.nan)
    sims = c @ c.T
    np.fill_diagonal(sims, -np.inf)          # exclude self by index, not by position
    top = -np.sort(-sims, axis=1)[:, :m]
    return np.mean(1.0 - top, axis=1)


def intra_distances(counts, dist_sums) -> np.ndarray:
    """Mean distance to the centroid from fixed-point sums (:func:`dist_fixed`); NaN when empty."""
    counts = np.asarray(counts, dtype=np.float64)
    sums = np.asarray([float(s) for s in dist_sums], dtype=np.float64) / DIST_SCALE
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def dist_fixed(sim: float) -> int:
    """A member's cosine distance ``1 - sim`` as an integer, so per-cluster sums are exact."""
    return int(round((1.0 - float(sim)) * DIST_SCALE))


def complexity(d_intra, d_inter) -> np.ndarray:
    d = np.asarray(d_inter, dtype=np.float64) * np.asarray(d_intra, dtype=np.float64)
    nan = np.isnan(d)
    if nan.all():
        return np.ones_like(d)
    if nan.any():
        d = np.where(nan, np.nanmean(d), d)
    return d


def softmax(d, temperature: float = DEFAULT_TEMPERATURE) -> np.ndarray:
    z = np.asarray(d, dtype=np.float64) / float(temperature)
    z = np.exp(z - z.max())
    return z / z.sum()


def bounds(counts, n_keep: int, k: int, balance: float = DEFAULT_BALANCE):
    """``(lb, ub)`` of the reference QP (``lb`` floored at 0)."""
    counts = np.asarray(counts, dtype=np.int64)
    min_samples = int(n_keep / k * balance) if balance > 0 else 1
    lb = np.maximum(np.minimum(min_samples, counts - 1), 0)
    return lb.astype(np.float64), counts.astype(np.float64)


def allocate(prob, lb, ub, n_keep: int, iters: int = 200) -> np.ndarray:
    """Real solution of the QP: ``clip(p N - lambda, lb, ub)``, ``lambda`` by bisection."""
    target = np.asarray(prob, dtype=np.float64) * n_keep
    lb, ub = np.asarray(lb, dtype=np.float64), np.asarray(ub, dtype=np.float64)
    if n_keep >= ub.sum():
        return ub.copy()
    if n_keep <= lb.sum():
        return lb.copy()
    lo, hi = float(np.min(target - ub)) - 1.0, float(np.max(target - lb)) + 1.0   # sum(lo) >= N >= sum(hi)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if np.clip(target - mid, lb, ub).sum() > n_keep:
            lo = mid
        else:
            hi = mid
    return np.clip(target - 0.5 * (lo + hi), lb, ub)


def round_to_total(x, lb, ub, n_keep: int) -> np.ndarray:
    """Integers within ``[lb, ub]`` summing to ``n_keep``: floor, then +1 by largest remainder
    (lower cluster id first on equal remainders); a float shortfall is undone by smallest."""
    x = np.asarray(x, dtype=np.float64)
    lb_i, ub_i = np.ceil(lb).astype(np.int64), np.floor(ub).astype(np.int64)
    out = np.clip(np.floor(x + 1e-9).astype(np.int64), lb_i, ub_i)
    frac = x - out
    rest = int(n_keep - out.sum())
    idx = np.arange(len(x))
    if rest > 0:
        order = np.lexsort((idx, -frac))
        for j in order:
            if rest == 0:
                break
            if out[j] < ub_i[j]:
                out[j] += 1
                rest -= 1
    elif rest < 0:
        order = np.lexsort((idx, frac))
        for j in order:
            if rest == 0:
                break
            if out[j] > lb_i[j]:
                out[j] -= 1
                rest += 1
    return out


def plan(centroids, counts, dist_sums, *, ratio: float = DEFAULT_RATIO,
         temperature: float = DEFAULT_TEMPERATURE, n_neighbors: int = DEFAULT_NEIGHBORS,
         balance: float = DEFAULT_BALANCE) -> Plan:
    """The whole allocation from k centroids and per-cluster (count, fixed-point distance sum)."""
    counts = np.asarray(counts, dtype=np.int64)
    k = len(counts)
    total = int(counts.sum())
    n_keep = int(ratio * total)
    d_intra = intra_distances(counts, dist_sums)
    d_inter = inter_distances(centroids, n_neighbors)
    d = complexity(d_intra, d_inter)
    p = softmax(d, temperature)
    lb, ub = bounds(counts, n_keep, k, balance)
    alloc = round_to_total(allocate(p, lb, ub, n_keep), lb, ub, n_keep)
    return Plan(counts, d_intra, d_inter, d, p, alloc, n_keep, total)


def cluster_sums(labels, sims, k: int):
    """Per-cluster counts and fixed-point distance sums of in-memory rows (the combiner's result)."""
    counts = np.bincount(np.asarray(labels), minlength=k).astype(np.int64)
    sums = [0] * k
    for c, s in zip(np.asarray(labels).tolist(), np.asarray(sims).tolist()):
        sums[c] += dist_fixed(s)
    return counts, sums


# ---- hardest-first selection -----------------------------------------------------

def _sim_keys32(sims) -> np.ndarray:
    """uint32 keys whose order is *descending* float32 similarity (farthest first = largest)."""
    neg = -np.asarray(sims, dtype=np.float32)
    neg = np.where(neg == 0, np.float32(0), neg)          # -0.0 and 0.0 are one key
    bits = np.ascontiguousarray(neg, dtype=np.float32).view(np.uint32)
    sign = np.uint32(1 << 31)
    return np.where((bits & sign) != 0, ~bits, bits | sign)


def order_keys(sims, uids: Sequence[str]) -> np.ndarray:
    """One uint64 per row; larger = kept first: (lower float32 cosine, then larger uid hash)."""
    hi = _sim_keys32(sims).astype(np.uint64) << np.uint64(32)
    lo = np.array([uid_hash64(u, _TIE_SALT) >> 32 for u in uids], dtype=np.uint64)
    return hi | lo


def initial_search(count: int, keep: int) -> Search:
    """The rank search of one cluster: the key at 0-based descending rank ``keep - 1``."""
    count, keep = int(count), int(keep)
    if keep <= 0 or keep >= count:
        return Search(total=count, n=keep, done=True)
    return Search(rank=keep - 1, count=count, total=count, n=keep)


def row_decision(key: int, keep: int, count: int, state: Search | None):
    """True (kept), False (pruned) or None (an exact tie on the cut key: :func:`tie_keep` decides)."""
    if keep >= count:
        return True
    if keep <= 0 or state is None or state.key is None:
        return False
    if key > state.key:
        return True
    if key < state.key:
        return False
    return True if state.above + state.n_equal <= keep else None


def tie_needed(keep: int, state: Search) -> int:
    """How many rows sharing the cut key are kept."""
    return int(keep) - int(state.above)


def tie_keep(tokens: Sequence[str], need: int) -> set:
    """Among rows with the same full key: the ``need`` smallest row tokens."""
    return set(sorted(tokens)[:max(0, int(need))])


def select_in_memory(labels, sims, uids, tokens, alloc) -> set:
    """Tokens kept: per cluster, the ``alloc[j]`` largest :func:`order_keys` (then smallest token).

    The whole selection without a search; the Beam path must give the same set.
    """
    labels = np.asarray(labels)
    keys = order_keys(sims, uids)
    kept = set()
    for j in np.unique(labels):
        idx = np.flatnonzero(labels == j)
        ranked = sorted(idx.tolist(), key=lambda i: (-int(keys[i]), tokens[i]))
        kept.update(tokens[i] for i in ranked[:int(alloc[j])])
    return kept
