"""Exact rank-n thresholds over a distributed pool, without gathering the scores: the Beam wiring.

``ExactRankThreshold(column, fraction)`` turns a PCollection of rows into one
:class:`~beam_filter.rules.thresholds.ThresholdInfo` -- the same value
``rules.thresholds.rank_n_info`` computes in memory -- at any scale, by the
multi-pass histogram search of ``rules/exact_rank.py`` (whose docstring states it):
scores become order-preserving uint64 keys in batches, then each of at most four
passes histograms 16 more bits of the keys inside the bucket that holds rank n,
until a bucket is small enough to count its exact keys.

The passes are fixed in the graph; a pass after the answer is known reads its input
and emits nothing. Only the batched keys (8 bytes a row) are read again, never the rows.
"""

from __future__ import annotations

from typing import Any, Callable

import apache_beam as beam
from apache_beam.pvalue import AsSingleton

from beam_filter.rules.exact_rank import (EXACT_LIMIT, MAX_PASSES, Search, as_number, empty_histogram,
                                          key_batch, merge_histograms, pass_histogram, refine,
                                          start_search, to_info)
from beam_filter.rules.thresholds import check_fraction
from beam_filter.rules.fused_score import FusedInfo  # noqa: F401  (pure, so stages build it too; re-exported)


class _MergeHistograms(beam.CombineFn):
    """Sum sparse histograms; the accumulator is compacted so it never holds more than ~2 x 65,536 pairs."""

    def create_accumulator(self):
        return empty_histogram()

    def add_input(self, acc, hist):
        return merge_histograms([acc, hist])

    def add_inputs(self, acc, hists):
        return merge_histograms([acc, *hists])

    def merge_accumulators(self, accs):
        return merge_histograms(accs)

    def extract_output(self, acc):
        return acc


def _value_getter(column: str | Callable[[dict], Any]) -> Callable[[dict], Any]:
    if callable(column):
        return column
    return _ColumnValue(column)


class _ColumnValue:
    """Picklable ``row -> row.get(column)``."""

    def __init__(self, column: str):
        self.column = column

    def __call__(self, row: dict):
        return row.get(self.column)


def _to_key_batch(values):
    return key_batch([as_number(v) for v in values])


class ExactRankThreshold(beam.PTransform):
    """rows -> one ``ThresholdInfo``: DataComp's rank-n threshold of ``column`` over all rows.

    ``column`` is a row key or a picklable ``row -> value`` callable (a stage that
    reads one of several columns). ``float(info)`` / ``info.threshold`` is the score
    to keep at (``>=``); ``info.tie_keep_probability`` serves MLM-Filter's tie-break.
    """

    def __init__(self, column: str | Callable[[dict], Any], fraction: float,
                 label_column: str | None = None, exact_limit: int = EXACT_LIMIT):
        super().__init__()
        self.exact_limit = exact_limit
        self.getter = _value_getter(column)
        self.fraction = check_fraction(fraction)
        self.column = label_column or (column if isinstance(column, str) else None)

    def expand(self, rows):
        batches = (rows
                   | "Values" >> beam.Map(self.getter)
                   | "Batch" >> beam.BatchElements(min_batch_size=1024, max_batch_size=65536)
                   | "Keys" >> beam.Map(_to_key_batch))
        return batches | RankOfKeyBatches(self.fraction, self.column, self.exact_limit)


class RankOfKeyBatches(beam.PTransform):
    """``KeyBatch``es (``rules.exact_rank.key_batch``) -> one ``ThresholdInfo``: the passes of the search.

    ``ExactRankThreshold`` feeds it batches of row values; the fused select feeds it one
    batch per input part (the keys of the rows alive there), so no row moves at all.
    """

    def __init__(self, fraction: float, column: str | None = None, exact_limit: int = EXACT_LIMIT):
        super().__init__()
        self.fraction = check_fraction(fraction)
        self.column = column
        self.exact_limit = exact_limit

    def expand(self, batches):
        fraction, column, limit = self.fraction, self.column, self.exact_limit
        state = None
        for k in range(MAX_PASSES):
            first = k == 0
            side = {} if first else {"state": AsSingleton(state)}
            hist = (batches
                    | f"Pass{k + 1}/Histogram" >> beam.Map(
                        lambda b, state=Search(), first=first: pass_histogram(b, state, first), **side)
                    | f"Pass{k + 1}/Merge" >> beam.CombineGlobally(_MergeHistograms()))
            if first:
                state = (hist | f"Pass{k + 1}/Refine" >> beam.Map(
                    lambda h: refine(start_search(h, fraction), h, limit)))
            else:
                state = (hist | f"Pass{k + 1}/Refine" >> beam.Map(
                    lambda h, s: refine(s, h, limit), AsSingleton(state)))
        return state | "Info" >> beam.Map(to_info, fraction, column)


# ---- fused scores (SIEVE+CLIP, HYPE): min-max over the pool, weighted sum, rank-n ----------------

class _RangesFn(beam.CombineFn):
    """Per-column [min, max] of rows' value tuples (``rules.fused_score``), lifted before the shuffle."""

    def __init__(self, n: int):
        self.n = n

    def create_accumulator(self):
        from beam_filter.rules.fused_score import empty_ranges

        return empty_ranges(self.n)

    def add_input(self, acc, values):
        from beam_filter.rules.fused_score import add_values

        return add_values(acc, values)

    def merge_accumulators(self, accs):
        from beam_filter.rules.fused_score import merge_ranges

        return merge_ranges(list(accs))

    def extract_output(self, acc):
        return acc


class FusedRankThreshold(beam.PTransform):
    """rows -> one :class:`FusedInfo`: min-max of each column over the rows (a CombineGlobally),
    then the fused value of every row, then DataComp's rank-n threshold of it (``ExactRankThreshold``)
    or the fixed ``threshold``. ``values``: picklable ``row -> tuple of floats`` (NaN when missing);
    ``weights`` in the same order."""

    def __init__(self, values: Callable[[dict], tuple], weights: tuple, fraction: float | None = None,
                 threshold: float | None = None, label: str | None = None):
        super().__init__()
        if (fraction is None) == (threshold is None):
            raise ValueError("give fraction or threshold")
        self.values, self.weights = values, tuple(weights)
        self.fraction, self.threshold, self.rank_label = fraction, threshold, label   # not `label`: Beam's

    def expand(self, rows):
        from beam_filter.rules.fused_score import fused_value

        values = rows | "Values" >> beam.Map(self.values)
        ranges = values | "MinMax" >> beam.CombineGlobally(_RangesFn(len(self.weights)))
        if self.fraction is None:
            fixed = self.threshold
            return ranges | "Info" >> beam.Map(lambda r: FusedInfo(r, fixed))
        weights = self.weights
        fused = values | "Fuse" >> beam.Map(lambda v, r: fused_value(v, r, weights), AsSingleton(ranges))
        rank = fused | "Rank" >> ExactRankThreshold(_Identity(), self.fraction, label_column=self.rank_label)
        return rank | "Info" >> beam.Map(lambda t, r: FusedInfo(r, t.threshold, t), AsSingleton(ranges))


class _Identity:
    def __call__(self, v):
        return v
