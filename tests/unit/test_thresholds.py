"""Exact rank-n thresholds: the pure rule and the multi-pass algorithm (the Beam transform:
tests/beam/test_threshold_transform.py).

The reference for every comparison is DataComp's own formula written out here
(``-np.sort(-scores)[int(N * f)]``), not the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from beam_filter.errors import UserError
from beam_filter.rules.thresholds import (ThresholdInfo, float_keys, keep_at_rank, key_to_float,
                                          passes_threshold, rank_n_info, rank_n_threshold,
                                          rank_n_with_tiebreak, tiebreak_keep_mask)
from beam_filter.rules.exact_rank import info_from_batches, key_batch


def datacomp_threshold(scores, f):
    """baselines.py: n = int(N * f); threshold = n-th of the descending sort."""
    scores = np.asarray(scores, dtype=np.float64)
    return float(-np.sort(-scores)[int(len(scores) * f)])


def _random_case(rng, i):
    n = int(rng.choice([1, 2, 3, 5, 17, 64, 300]))
    kind = i % 5
    if kind == 0:
        v = rng.normal(size=n)
    elif kind == 1:
        v = rng.integers(-2, 3, size=n).astype(float)            # heavy ties, negatives
    elif kind == 2:
        v = np.round(rng.random(n), 2) * rng.choice([-1.0, 1.0], n)
    elif kind == 3:
        v = rng.choice([0.0, -0.0, 1e-300, -1e-300, np.inf, -np.inf, 5.0], size=n)
    else:
        v = np.full(n, 0.25)                                     # all equal
    f = float(rng.choice([0.001, 0.1, 0.3, 0.5, 0.99, rng.uniform(0.001, 0.999)]))
    return v, f


def test_pure_rule_equals_datacomp_formula():
    rng = np.random.default_rng(0)
    for i in range(2000):
        v, f = _random_case(rng, i)
        if int(len(v) * f) >= len(v):
            continue
        info = rank_n_info(v, f)
        assert info.threshold == datacomp_threshold(v, f), (v, f)
        kept = int(np.count_nonzero(v >= info.threshold))
        assert info.kept == kept and kept >= info.n + 1
        assert info.n_above == int(np.count_nonzero(v > info.threshold))


def test_edge_cases_are_defined():
    assert rank_n_info([], 0.3) == ThresholdInfo(None, 0, 0, 0.3)
    assert rank_n_threshold([3.0, 1.0, 2.0], 1.0) == 1.0       # n == N: keep everything
    nan = float("nan")
    # NaN counts in N, ranks last, is never kept; at rank n it falls back to the smallest number.
    info = rank_n_info([nan, 2.0, nan, 1.0], 0.5)
    assert (info.threshold, info.n, info.N, info.n_nan, info.kept) == (1.0, 2, 4, 2, 2)
    assert rank_n_info([nan, None], 0.5).threshold is None
    assert rank_n_info([5.0, nan, 4.0, 3.0], 0.25).threshold == 4.0
    assert rank_n_threshold([-0.0, 0.0, 0.0], 0.1) == 0.0
    assert not passes_threshold(nan, 0.0) and not passes_threshold(1.0, None)
    assert passes_threshold(-0.0, 0.0)
    for bad in (0, 1.5, -0.1, True, "0.3"):
        with pytest.raises(UserError):
            rank_n_info([1.0], bad)


def test_float_keys_preserve_order():
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.normal(size=500) * 10.0 ** rng.integers(-300, 300, 500),
                        [np.inf, -np.inf, 0.0, 5e-324, -5e-324, np.finfo(float).max]])
    order = np.argsort(v, kind="stable")
    keys = float_keys(v)
    assert np.all(np.diff(keys[order].astype(object)) >= 0)
    assert all(key_to_float(int(k)) == x for k, x in zip(keys, v))


def test_multipass_algorithm_equals_pure_rule():
    """Every pass path: exact counting at once, after 1-3 refinements, or all four 16-bit passes."""
    rng = np.random.default_rng(2)
    for i in range(1500):
        v, f = _random_case(rng, i)
        if i % 7 == 0:
            v = v.copy()
            v[rng.random(len(v)) < 0.3] = np.nan
        want = rank_n_info(v, f)
        parts = [key_batch(p) for p in np.array_split(v, int(rng.integers(1, 4)))]
        for limit in (0, 2, 1 << 16):
            assert info_from_batches(parts, f, exact_limit=limit) == want, (v, f, limit)


def test_multipass_on_a_million_near_equal_scores():
    """1M scores packed in a tiny range (one top-16-bit bucket) plus 300k exact ties."""
    rng = np.random.default_rng(3)
    v = 0.3 + rng.integers(0, 2 ** 20, 1_000_000) * 2.0 ** -52
    v[:300_000] = v[0]
    want = rank_n_info(v, 0.3)
    assert want.threshold == datacomp_threshold(v, 0.3)
    batches = [key_batch(p) for p in np.array_split(v, 10)]
    assert info_from_batches(batches, 0.3) == want


def test_tiebreak_keeps_n_in_expectation_deterministically():
    rng = np.random.default_rng(4)
    scores = rng.integers(0, 101, 20_000)            # MLM-Filter style integer scores
    uids = [f"{i:032x}" for i in range(len(scores))]
    thr, p = rank_n_with_tiebreak(scores, 0.1)
    info = rank_n_info(scores, 0.1)
    assert thr == datacomp_threshold(scores, 0.1)
    assert p == pytest.approx((info.n - np.count_nonzero(scores > thr)) / np.count_nonzero(scores == thr))
    mask = tiebreak_keep_mask(scores, uids, 0.1, seed=7)
    assert np.array_equal(mask, tiebreak_keep_mask(scores, uids, 0.1, seed=7))
    assert not np.array_equal(mask, tiebreak_keep_mask(scores, uids, 0.1, seed=8))
    assert np.all(mask[scores > thr]) and not np.any(mask[scores < thr])
    ties = int(np.count_nonzero(scores == thr))
    assert abs(int(mask.sum()) - info.n) < 4 * math.sqrt(ties * p * (1 - p)) + 1
    assert not keep_at_rank(float("nan"), info, "a") and not keep_at_rank(None, info, "a")
