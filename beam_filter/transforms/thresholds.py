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

from beam_filter.rules.exact_rank import (EXACT_LIMIT, MAX_PASSES, Search, empty_histogram, key_batch,
                                          merge_histograms, pass_histogram, refine, start_search,
                                          to_info)
from beam_filter.rules.thresholds import check_fraction


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
    return key_batch([_numeric(v) for v in values])


def _numeric(v):
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ValueError(f"rank threshold: score {v!r} is not a number") from None


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
        fraction, column, limit = self.fraction, self.column, self.exact_limit
        batches = (rows
                   | "Values" >> beam.Map(self.getter)
                   | "Batch" >> beam.BatchElements(min_batch_size=1024, max_batch_size=65536)
                   | "Keys" >> beam.Map(_to_key_batch))
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
