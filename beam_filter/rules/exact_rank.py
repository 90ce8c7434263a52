"""Exact rank-n thresholds over a distributed pool, without gathering the scores: the pure steps.

``transforms/thresholds.ExactRankThreshold(column, fraction)`` runs these steps as a
Beam graph and turns a PCollection of rows into one
:class:`~beam_filter.rules.thresholds.ThresholdInfo` -- the same value
``rules.thresholds.rank_n_info`` computes in memory -- at any scale:

1. every score becomes a uint64 key whose order is the float order
   (``rules.thresholds.float_keys``), in batches (:func:`key_batch`);
2. pass 1 histograms the top 16 bits of the keys (at most 65,536 buckets, one
   small combine) and counts N and NaNs; the bucket holding rank n is found from
   the cumulative counts (:func:`start_search`, :func:`refine`);
3. each later pass looks only at keys inside the chosen bucket: while it still
   holds more than ``exact_limit`` keys, it histograms the next 16 bits; once it is
   small it counts the exact keys, which gives the threshold and its tie count.

After at most four passes (4 x 16 = 64 bits) the answer is exact whatever the
data: heavy ties only make a bucket's count large, never its number of distinct
keys, and no worker ever holds more than 65,536 (key, count) pairs per pass.
:func:`info_from_batches` is the whole algorithm in a loop, without Beam.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import numpy as np

from beam_filter.rules.thresholds import (ThresholdInfo, as_float_array, float_keys, key_to_float,
                                          rank_of)

BUCKET_BITS = 16
KEY_BITS = 64
EXACT_LIMIT = 1 << 16     # a bucket this small is finished by counting its exact keys
MAX_PASSES = KEY_BITS // BUCKET_BITS


class KeyBatch(NamedTuple):
    """Sorted order-preserving keys of a batch's non-NaN scores, plus its size and NaN count."""

    keys: np.ndarray
    total: int
    n_nan: int


class Histogram(NamedTuple):
    """Sparse counts: ``keys`` ascending unique uint64, ``counts`` int64; plus pool totals (pass 1)."""

    keys: np.ndarray
    counts: np.ndarray
    total: int = 0
    n_nan: int = 0


class Search(NamedTuple):
    """Where the rank-n key is known to be after some passes.

    The target is the key of 0-based descending ``rank`` among the keys whose top
    ``bits`` bits equal ``prefix`` (``count`` of them); ``above`` keys lie above that
    bucket. ``exact`` = the next pass counts whole keys. ``key`` is set once found.
    """

    prefix: int = 0
    bits: int = 0
    rank: int = 0
    count: int = 0
    above: int = 0
    exact: bool = False
    total: int = 0
    n: int = 0
    n_nan: int = 0
    key: int | None = None
    n_equal: int = 0
    done: bool = False


def as_number(v):
    """A row's rank value as a float (None stays None: ranked like NaN); one clear error otherwise."""
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ValueError(f"rank threshold: score {v!r} is not a number") from None


def key_batch(values: Iterable) -> KeyBatch:
    arr = as_float_array(values)
    finite = arr[~np.isnan(arr)]
    return KeyBatch(np.sort(float_keys(finite)), int(arr.size), int(arr.size - finite.size))


def empty_histogram() -> Histogram:
    return Histogram(np.zeros(0, np.uint64), np.zeros(0, np.int64))


def _in_bucket(keys: np.ndarray, state: Search) -> np.ndarray:
    if state.bits == 0:
        return keys
    shift = np.uint64(KEY_BITS - state.bits)
    return keys[(keys >> shift) == np.uint64(state.prefix)]


def pass_histogram(batch: KeyBatch, state: Search, first: bool) -> Histogram:
    """One batch's contribution to a pass: counts of the next 16 bits (or exact keys) in the bucket."""
    totals = (batch.total, batch.n_nan) if first else (0, 0)
    if state.done:
        return Histogram(np.zeros(0, np.uint64), np.zeros(0, np.int64), *totals)
    keys = _in_bucket(batch.keys, state)
    if not state.exact:
        shift = np.uint64(KEY_BITS - state.bits - BUCKET_BITS)
        keys = (keys >> shift) & np.uint64((1 << BUCKET_BITS) - 1)
    uniq, counts = np.unique(keys, return_counts=True)
    return Histogram(uniq.astype(np.uint64), counts.astype(np.int64), *totals)


def merge_histograms(parts: Iterable[Histogram]) -> Histogram:
    parts = [p for p in parts]
    total = sum(p.total for p in parts)
    n_nan = sum(p.n_nan for p in parts)
    parts = [p for p in parts if len(p.keys)]
    if not parts:
        return Histogram(np.zeros(0, np.uint64), np.zeros(0, np.int64), total, n_nan)
    keys = np.concatenate([p.keys for p in parts])
    counts = np.concatenate([p.counts for p in parts])
    uniq, inverse = np.unique(keys, return_inverse=True)
    summed = np.bincount(inverse.ravel(), weights=counts, minlength=len(uniq)).astype(np.int64)
    return Histogram(uniq, summed, total, n_nan)


def start_search(hist: Histogram, fraction: float) -> Search:
    """After pass 1: N, n, and the target rank among the non-NaN keys."""
    total, n_nan = hist.total, hist.n_nan
    n = rank_of(total, fraction)
    finite = total - n_nan
    if finite == 0:
        return Search(total=total, n=n, n_nan=n_nan, done=True)
    # n past the last number (fraction 1.0 or NaNs at rank n): the smallest number.
    rank = min(n, finite - 1)
    return Search(rank=rank, count=finite, total=total, n=n, n_nan=n_nan)


def refine(state: Search, hist: Histogram, exact_limit: int = EXACT_LIMIT) -> Search:
    """Narrow ``state`` with the pass histogram of its bucket.

    ``exact_limit``: a bucket with at most this many keys is finished by counting exact
    keys in the next pass (tests lower it to exercise every pass on small data).
    """
    if state.done:
        return state
    order = np.argsort(hist.keys)[::-1]              # descending buckets
    keys, counts = hist.keys[order], hist.counts[order]
    cum = np.cumsum(counts)
    if cum.size == 0 or cum[-1] != state.count:
        raise RuntimeError(f"rank threshold: bucket count changed between passes "
                           f"({state.count} -> {int(cum[-1]) if cum.size else 0}); "
                           "the input collection must be deterministic")
    i = int(np.searchsorted(cum, state.rank, side="right"))
    before = int(cum[i - 1]) if i else 0
    bucket, count = int(keys[i]), int(counts[i])
    above = state.above + before
    if state.exact:
        return state._replace(key=bucket, n_equal=count, above=above, done=True)
    bits = state.bits + BUCKET_BITS
    prefix = (state.prefix << BUCKET_BITS) | bucket
    if bits == KEY_BITS:
        return state._replace(key=prefix, n_equal=count, above=above, done=True, bits=bits,
                              prefix=prefix)
    return state._replace(prefix=prefix, bits=bits, rank=state.rank - before, count=count,
                          above=above, exact=count <= exact_limit)


def to_info(state: Search, fraction: float, column: str | None = None) -> ThresholdInfo:
    if state.key is None:
        return ThresholdInfo(None, state.n, state.total, float(fraction), 0, 0, state.n_nan, column)
    return ThresholdInfo(key_to_float(state.key), state.n, state.total, float(fraction),
                         int(state.above), int(state.n_equal), state.n_nan, column)


def info_from_batches(batches: list[KeyBatch], fraction: float, column: str | None = None,
                      exact_limit: int | None = None) -> ThresholdInfo:
    """The whole multi-pass algorithm in a loop: what the transform computes, without Beam."""
    limit = EXACT_LIMIT if exact_limit is None else exact_limit
    state = Search()
    for k in range(MAX_PASSES):
        hist = merge_histograms(pass_histogram(b, state, first=k == 0) for b in batches)
        if k == 0:
            state = start_search(hist, fraction)
        state = refine(state, hist, limit)
    assert state.done
    return to_info(state, fraction, column)
