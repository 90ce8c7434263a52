"""Fusing several score columns into one: min-max normalise each over the pool, then a weighted sum.

SIEVE+CLIP (Mahmoud et al.) and HYPE's composite score rank samples by
``sum_i w_i * (x_i - min_i) / (max_i - min_i)``, the min and max taken over the
whole pool, weights summing to 1, and keep the top fraction with DataComp's rank-n
rule (``rules/thresholds.py``). The pieces are pure here; ``transforms/thresholds``
computes the pool's min/max as a distributed combine and ranks the fused values.

Edge cases decided here: a column whose min equals its max contributes 0 (it cannot
order anything); a row with a missing or NaN value in any weighted column fuses to
NaN, which ranks below every number and is never kept; a column with no number at
all in the pool has min/max None, and every row fuses to NaN.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

WEIGHT_SUM_TOLERANCE = 1e-6


class FusedInfo(NamedTuple):
    """The pool's per-column [min, max], the fused score kept at (``>=``; None: nothing to keep), and
    the rank-n ``ThresholdInfo`` when a fraction was asked. Pure, so the stage and the by-part select
    build it where Beam is not loaded; ``transforms/thresholds`` re-exports it."""

    ranges: list
    threshold: float | None
    rank: Any = None


def check_weights(weights: dict) -> str | None:
    """Why ``weights`` (column -> weight) is unusable, or None."""
    if not isinstance(weights, dict) or not weights:
        return "must be a non-empty mapping of column name to weight"
    for name, w in weights.items():
        if not isinstance(name, str) or not name:
            return f"has a column name {name!r} that is not a string"
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            return f"has weight {w!r} for {name!r}: weights are finite numbers >= 0"
    total = sum(float(w) for w in weights.values())
    if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
        return f"sums to {total:g}; weights must sum to 1"
    return None


def as_number(value) -> float:
    """A score as float; None, NaN, bools and non-numbers are NaN."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def empty_ranges(n: int) -> list:
    """The min/max accumulator of ``n`` columns: [min, max] each, None before any number."""
    return [[None, None] for _ in range(n)]


def add_values(ranges: list, values: Sequence[float]) -> list:
    """Fold one row's values (NaN skipped) into ``ranges`` in place; returns it."""
    for r, v in zip(ranges, values):
        if v != v:                     # NaN
            continue
        if r[0] is None or v < r[0]:
            r[0] = v
        if r[1] is None or v > r[1]:
            r[1] = v
    return ranges


def merge_ranges(parts: Sequence[list]) -> list:
    """Combine accumulators of the same columns."""
    parts = list(parts)
    out = empty_ranges(len(parts[0])) if parts else []
    for p in parts:
        for r, (lo, hi) in zip(out, p):
            if lo is not None:
                add_values([r], [lo])
            if hi is not None:
                add_values([r], [hi])
    return out


def fused_value(values: Sequence[float], ranges: Sequence, weights: Sequence[float]) -> float:
    """``sum_i w_i * (x_i - min_i) / (max_i - min_i)``, summed in column order; NaN when any x_i is NaN."""
    total = 0.0
    for v, (lo, hi), w in zip(values, ranges, weights):
        if v != v or lo is None:
            return math.nan
        span = hi - lo
        total += w * ((v - lo) / span if span > 0 else 0.0)
    return total
