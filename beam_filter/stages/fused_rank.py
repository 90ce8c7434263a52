"""The ``fused_rank`` stage: several score columns, min-max normalised over the pool, weighted, ranked.

SIEVE+CLIP (Mahmoud et al.: SIEVE and CLIP L/14 scores, 0.5/0.5, keep the top
fraction by DataComp's rank-n rule) and HYPE's composite score are this one rule
(``rules/fused_score.py``). Select phase only: ``transforms/thresholds.FusedRankThreshold``
takes each column's min and max over the rows alive when the stage is reached (a
CombineGlobally: exact at any scale, nothing gathered), fuses every row, and finds
the rank-n threshold with the exact distributed search (``ExactRankThreshold``).
The per-row decision recomputes the same fused value from the row and the ranges,
so it needs no join. ``thresholds/<id>.json`` records the ranges and the threshold.
The by-part select computes the same value from ``summary_spec()`` (registry.SummarySpec,
transforms/part_ranges.py): each part's alive rows' ranges, merged, then the fused
score's rank keys per part under them -- the same functions, so the same floats.

Parameters: ``weights`` (column -> weight, >= 0, summing to 1; a key ``a|b`` reads
column ``a`` where rows have it, else ``b`` -- e.g. a clip stage's score on shards,
DataComp's ``clip_l14_similarity_score`` on metadata), ``fraction`` (keep the top
fraction) or ``threshold`` (keep fused >= it, on the 0..1 fused scale). Columns are
declared through ``needs()``, so ``columns.py`` checks them before any work: any
numeric column of an earlier stage or of DataComp metadata.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from beam_filter.columns import need
from beam_filter.errors import UserError
from beam_filter.registry import Param, ScoredStage, SummarySpec, register
from beam_filter.rules.fused_score import (FusedInfo, add_values, as_number, check_weights, empty_ranges,
                                           fused_value, merge_ranges)


def _fraction_ok(v) -> bool:
    return v is None or 0 < v <= 1


class FusedValues:
    """Picklable ``row -> tuple of floats``, one per weighted column (first alternative present)."""

    def __init__(self, alternatives: tuple[tuple[str, ...], ...]):
        self.alternatives = alternatives

    def __call__(self, row: dict) -> tuple:
        out = []
        for names in self.alternatives:
            value = None
            for name in names:
                if name in row:
                    value = row[name]
                    break
            out.append(as_number(value))
        return tuple(out)


class PartRanges:
    """Picklable ``alive rows of one part -> per-column [min, max]`` (``rules.fused_score``'s accumulator):
    the summary each part sends in the by-part select, folded exactly as the general graph's combine."""

    def __init__(self, values: FusedValues, n: int):
        self.values, self.n = values, n

    def __call__(self, rows) -> list:
        ranges = empty_ranges(self.n)
        for row in rows:
            add_values(ranges, self.values(row))
        return ranges


class MergeRanges:
    """Picklable ``list of per-part ranges -> the pool's`` (min of mins, max of maxes: exact in any order)."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, parts) -> list:
        parts = list(parts)
        return merge_ranges(parts) if parts else empty_ranges(self.n)


class FusedOf:
    """Picklable ``(row, pool ranges) -> fused score``: the value ranked, as ``FusedRank.fused``."""

    def __init__(self, values: FusedValues, weights: tuple):
        self.values, self.weights = values, weights

    def __call__(self, row: dict, ranges) -> float:
        return fused_value(self.values(row), ranges, self.weights)


class FusedInfoOf:
    """Picklable ``(pool ranges, ThresholdInfo | None) -> FusedInfo``: what ``FusedRankThreshold``
    returns, so ``reason`` and ``thresholds/<id>.json`` are the same on both paths."""

    def __init__(self, threshold: float | None):
        self.threshold = threshold

    def __call__(self, ranges, rank=None):
        if rank is None:
            return FusedInfo(ranges, self.threshold)
        return FusedInfo(ranges, rank.threshold, rank)


# ---- columnar twins (columnar.py): the same floats from a part's columns, or None --------------

class FusedColumns:
    """Picklable ``columnar part -> one float64 array per weighted column``, or None. Only where each
    weight's first alternative is a numeric column of the part: every row then has it (as the row
    path's first pick), and ``floats`` gives ``as_number`` of it (None -> NaN). Otherwise (a fallback
    column, a bool or text column) the part builds rows."""

    def __init__(self, alternatives: tuple[tuple[str, ...], ...]):
        self.alternatives = alternatives

    def __call__(self, part) -> list | None:
        out = []
        for names in self.alternatives:
            values = part.floats(names[0]) if part.has(names[0]) else None
            if values is None:
                return None
            out.append(values)
        return out


def _first_extreme(values: np.ndarray, extreme: float) -> float:
    """The first of ``values`` equal to ``extreme``: what ``add_values``' strict compare keeps (0.0 vs -0.0)."""
    return float(values[np.argmax(values == extreme)])


class PartRangesArray:
    """Picklable ``(columnar part, alive mask) -> per-column [min, max]``, equal to :class:`PartRanges`
    of the alive rows in read order; None when the part's columns do not allow it."""

    def __init__(self, columns: FusedColumns):
        self.columns = columns

    def __call__(self, part, alive) -> list | None:
        cols = self.columns(part)
        if cols is None:
            return None
        ranges = []
        for values in cols:
            v = values[alive]
            v = v[~np.isnan(v)]
            ranges.append([None, None] if v.size == 0
                          else [_first_extreme(v, v.min()), _first_extreme(v, v.max())])
        return ranges


class FusedArray:
    """Picklable ``(columnar part, pool ranges) -> float64 fused score per row`` (NaN as ``fused_value``
    gives it), the same operations in the same order, elementwise; None when the columns do not allow it."""

    def __init__(self, columns: FusedColumns, weights: tuple):
        self.columns, self.weights = columns, weights

    def __call__(self, part, ranges) -> np.ndarray | None:
        cols = self.columns(part)
        if cols is None:
            return None
        total = np.zeros(part.n, dtype=np.float64)
        missing = np.zeros(part.n, dtype=bool)
        for v, (lo, hi), w in zip(cols, ranges, self.weights):
            if lo is None:
                return np.full(part.n, np.nan)
            missing |= np.isnan(v)
            span = hi - lo
            total = total + (w * ((v - lo) / span) if span > 0 else w * 0.0)
        total[missing] = np.nan
        return total


@register
class FusedRank(ScoredStage):
    """Weighted sum of min-max-normalised score columns, ranked with DataComp's rank-n rule."""

    name = "fused_rank"
    description = "min-max normalise score columns over the pool, weighted sum, keep the top fraction"
    params = {
        "weights": Param(dict, None, "column -> weight (>= 0, summing to 1); 'a|b' = column a, else b",
                         required=True),
        "fraction": Param(float, None, "keep this top fraction of the alive rows by fused score (rank-n)",
                          check=_fraction_ok, check_msg="must be in (0, 1]"),
        "threshold": Param(float, None, "keep rows whose fused score (0..1) is >= this"),
    }
    score_params = ()

    def __init__(self, stage_id: str, params: dict[str, Any]):
        super().__init__(stage_id, params)
        p = self.p
        problem = check_weights(p.weights)
        if problem:
            raise UserError(f"stage {stage_id!r}: weights {problem}")
        if (p.fraction is None) == (p.threshold is None):
            raise UserError(f"stage {stage_id!r}: give fraction or threshold (one of them)")
        self.alternatives = tuple(tuple(a for a in str(k).split("|") if a) for k in p.weights)
        self.weights = tuple(float(w) for w in p.weights.values())
        self.values = FusedValues(self.alternatives)
        self.fused_array = FusedArray(FusedColumns(self.alternatives), self.weights)
        self.below = f"{stage_id}_below_threshold"

    @property
    def is_model_stage(self) -> bool:
        return False          # select only: it reads columns other stages computed

    def needs(self):
        return tuple(need(*names, what=f"weighted {w:g} in the fused score")
                     for names, w in zip(self.alternatives, self.weights))

    def needs_global_info(self) -> bool:
        return True           # min/max over the pool, even for a fixed threshold

    def global_info(self, alive_rows):
        from beam_filter.transforms.thresholds import FusedRankThreshold

        return alive_rows | f"{self.id}/FusedRank" >> FusedRankThreshold(
            self.values, self.weights, fraction=self.p.fraction, threshold=self.p.threshold,
            label=self._label())

    def _label(self) -> str:
        label = " + ".join(f"{w:g}*{'|'.join(a)}" for a, w in zip(self.alternatives, self.weights))
        return f"fused({label})"

    def summary_spec(self) -> SummarySpec:
        """The by-part select's recipe for :meth:`global_info`'s value: each part's alive rows' ranges,
        merged, then the fused score's rank-n threshold (a fraction) under the pool's ranges."""
        n = len(self.weights)
        return SummarySpec(summarize=PartRanges(self.values, n), combine=MergeRanges(n),
                           finish=FusedInfoOf(self.p.threshold), value=FusedOf(self.values, self.weights),
                           fraction=self.p.fraction, label=self._label(),
                           summarize_array=PartRangesArray(self.fused_array.columns),
                           value_array=self.fused_array)

    def fused(self, row: dict, info) -> float:
        """The row's fused score under the pool's ranges (NaN when a value is missing)."""
        return fused_value(self.values(row), info.ranges, self.weights)

    def reason(self, row: dict, info: Any = None) -> str | None:
        if info is None or info.threshold is None:
            return self.below
        value = self.fused(row, info)
        if math.isnan(value) or value < info.threshold:
            return self.below
        return None

    def reason_array(self, part, alive, info: Any = None):
        out = np.full(part.n, None, dtype=object)
        if info is None or info.threshold is None:
            out[:] = self.below
            return out
        fused = self.fused_array(part, info.ranges)
        if fused is None:
            return None
        out[~(fused >= info.threshold)] = self.below          # NaN fails too, as in ``reason``
        return out

    def provenance(self) -> dict:
        return {"type": self.name, "params": self.config,
                "threshold_applied": (self.p.threshold if self.p.fraction is None
                                      else f"rank-n of the fused score: see thresholds/{self.id}.json")}
