"""Density-Based Pruning, pure: the closed-form allocation equals a QP solved another way, and the
per-cluster rank search picks the same rows as sorting."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from beam_filter.cluster import dbp
from beam_filter.rules.exact_rank import KeyBatch, merge_histograms, pass_histogram, refine, MAX_PASSES


def _qp_scipy(p, lb, ub, n):
    """The reference QP, min 1/2|x|^2 - (pN).x s.t. sum x = N, lb <= x <= ub, by SLSQP
    (solved for y = x / N, which has the same minimiser and a well-scaled objective)."""
    lo, hi = lb / n, ub / n
    y0 = np.full(len(p), 1.0 / len(p))
    res = minimize(lambda y: 0.5 * y @ y - p @ y, y0, jac=lambda y: y - p, method="SLSQP",
                   bounds=list(zip(lo, hi)),
                   constraints=[{"type": "eq", "fun": lambda y: y.sum() - 1.0, "jac": lambda y: np.ones_like(y)}],
                   options={"ftol": 1e-15, "maxiter": 1000})
    assert res.success, res.message
    return res.x * n


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closed_form_allocation_solves_the_qp(seed):
    rng = np.random.default_rng(seed)
    k = 12
    counts = rng.integers(0, 300, k)
    counts[3] = 1                           # a singleton: lb = 0
    d = rng.random(k)
    p = dbp.softmax(d, 0.5)
    n = int(0.6 * counts.sum())
    lb, ub = dbp.bounds(counts, n, k, 0.5)
    x = dbp.allocate(p, lb, ub, n)
    assert abs(x.sum() - n) < 1e-6
    assert np.allclose(x, _qp_scipy(p, lb, ub, n), atol=1e-3)
    # KKT: one multiplier lambda explains every coordinate that is strictly inside its bounds.
    inside = (x > lb + 1e-9) & (x < ub - 1e-9)
    lam = p[inside] * n - x[inside]
    assert inside.any() and np.ptp(lam) < 1e-6
    assert np.all(p[x <= lb + 1e-9] * n - lam[0] <= lb[x <= lb + 1e-9] + 1e-6)
    assert np.all(p[x >= ub - 1e-9] * n - lam[0] >= ub[x >= ub - 1e-9] - 1e-6)
    r = dbp.round_to_total(x, lb, ub, n)
    assert r.sum() == n and np.all(r >= lb) and np.all(r <= ub)
    assert np.all(np.abs(r - np.rint(x)) <= 1)      # the reference rounds with np.rint


def test_bounds_and_degenerate_cases():
    lb, ub = dbp.bounds([0, 1, 5, 100], 80, 4, 0.5)      # min_samples = int(80/4*0.5) = 10
    assert lb.tolist() == [0, 0, 4, 10] and ub.tolist() == [0, 1, 5, 100]
    assert dbp.allocate([0.25] * 4, lb, ub, 106).tolist() == ub.tolist()
    assert dbp.complexity([np.nan, 0.2, 0.4], [1.0, 1.0, 1.0]).tolist() == pytest.approx([0.3, 0.2, 0.4])
    assert dbp.complexity([np.nan], [np.nan]).tolist() == [1.0]
    assert np.isnan(dbp.inter_distances(np.ones((1, 4)))).all()


def test_inter_distance_is_the_reference_faiss_search():
    import faiss

    rng = np.random.default_rng(3)
    c = rng.normal(size=(30, 8)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(8)
    index.add(c)
    dist, _ = index.search(c, 21)                        # the reference: num_NNs + 1, drop self
    assert np.allclose(dbp.inter_distances(c, 20), np.mean(1 - dist[:, 1:], axis=1), atol=1e-5)


def test_plan_matches_a_direct_computation():
    rng = np.random.default_rng(4)
    cents = rng.normal(size=(6, 5))
    labels = rng.integers(0, 6, 400)
    sims = rng.uniform(0.2, 0.9, 400)
    counts, sums = dbp.cluster_sums(labels, sims, 6)
    pl = dbp.plan(cents, counts, sums, ratio=0.5, temperature=0.5, n_neighbors=3)
    d_intra = np.array([np.mean(1 - sims[labels == j]) for j in range(6)])
    assert np.allclose(pl.d_intra, d_intra, atol=1e-9)
    assert pl.n_keep == 200 and pl.alloc.sum() == 200
    assert np.allclose(pl.prob, np.exp(pl.complexity / 0.5) / np.exp(pl.complexity / 0.5).sum())


def test_order_keys_are_hardest_first():
    sims = np.array([0.9, 0.1, 0.5, -0.3, 0.0, -0.0, 0.5], dtype=np.float32)
    uids = [f"u{i}" for i in range(len(sims))]
    keys = dbp.order_keys(sims, uids)
    order = np.argsort(-keys.astype(np.float64), kind="stable")
    assert order[0] == 3 and order[1] in (4, 5)
    assert float(sims[order[-1]]) == pytest.approx(0.9)
    assert (keys[4] >> np.uint64(32)) == (keys[5] >> np.uint64(32))          # -0.0 == 0.0


def _search(keys_by_batch, count, keep, limit):
    """The per-cluster rank search in a loop (what transforms/dbp.py runs as passes)."""
    state = dbp.initial_search(count, keep)
    for _ in range(MAX_PASSES):
        if state.done:
            break
        hist = merge_histograms([pass_histogram(KeyBatch(np.sort(b), len(b), 0), state, False)
                                 for b in keys_by_batch])
        state = refine(state, hist, limit)
    return state


@pytest.mark.parametrize("limit", [2, 1 << 16])
def test_rank_search_selects_what_sorting_selects(limit):
    rng = np.random.default_rng(5)
    n = 500
    sims = rng.choice(np.linspace(-1, 1, 40), n).astype(np.float32)     # many equal similarities
    uids = [f"{i % 450:032x}" for i in range(n)]                          # and some equal uids
    tokens = [f"{u}\ts{i}\tk" for i, u in enumerate(uids)]
    keys = dbp.order_keys(sims, uids)
    for keep in (0, 1, 37, 250, 499, 500):
        want = dbp.select_in_memory(np.zeros(n, int), sims, uids, tokens, [keep])
        state = _search(np.array_split(keys, 7), n, keep, limit)
        got, tied = set(), []
        for i in range(n):
            d = dbp.row_decision(int(keys[i]), keep, n, state)
            if d is None:
                tied.append(tokens[i])
            elif d:
                got.add(tokens[i])
        if tied:
            got |= dbp.tie_keep(tied, dbp.tie_needed(keep, state))
        assert got == want and len(got) == keep
