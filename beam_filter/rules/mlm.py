"""MLM-Filter's select rules on its scores (Wang et al. 2024): fixed thresholds and the rank-n fraction.

A filtered metric keeps a row when its score >= the threshold; several metrics are
ANDed, checked in the reference's metric order (``models.mlm_prompts.METRICS``). A
score that is None (an answer ``int()`` refuses), or NaN (how a parquet float column
brings a None back), drops the row with ``mlm_unparsable``; a low one with
``mlm_<metric>_below_threshold``. The fraction rule keeps rows above the pool's rank-n
threshold and ties with a seeded probability (``rules.thresholds.keep_at_rank``).
"""

from __future__ import annotations

import math

from beam_filter.errors import UserError
from beam_filter.models.mlm_prompts import METRICS
from beam_filter.rules.thresholds import ThresholdInfo, keep_at_rank

UNPARSABLE = "mlm_unparsable"


def below_reason(metric: str) -> str:
    return f"mlm_{metric}_below_threshold"


def is_missing(value) -> bool:
    """None, or NaN (how a parquet float column may bring a None score back)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def threshold_reason(row: dict, columns: dict[str, str], thresholds: dict[str, float]) -> str | None:
    """Why ``row`` fails fixed thresholds (metrics in reference order), or None to keep."""
    for metric in METRICS:
        if metric not in thresholds:
            continue
        col = columns[metric]
        if col not in row:
            raise UserError(f"mlm: column {col!r} is missing; score these rows with the mlm stage "
                            "(metadata rows carry no MLM-Filter scores)")
        value = row[col]
        if is_missing(value):
            return UNPARSABLE
        if value < thresholds[metric]:
            return below_reason(metric)
    return None


def rank_reason(value, info: ThresholdInfo | None, uid, seed: int, metric: str) -> str | None:
    """The fraction rule for one row's ``metric`` score: kept above the threshold, ties kept with
    probability (n - #above) / #equal by a hash of (seed, uid) (as MLM-Filter)."""
    if is_missing(value):
        return UNPARSABLE
    if keep_at_rank(value, info, uid, seed):
        return None
    return below_reason(metric)
