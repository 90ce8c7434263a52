"""The ``fused_rank`` stage: several score columns, min-max normalised over the pool, weighted, ranked.

SIEVE+CLIP (Mahmoud et al.: SIEVE and CLIP L/14 scores, 0.5/0.5, keep the top
fraction by DataComp's rank-n rule) and HYPE's composite score are this one rule
(``rules/fused_score.py``). Select phase only: ``transforms/thresholds.FusedRankThreshold``
takes each column's min and max over the rows alive when the stage is reached (a
CombineGlobally: exact at any scale, nothing gathered), fuses every row, and finds
the rank-n threshold with the exact distributed search (``ExactRankThreshold``).
The per-row decision recomputes the same fused value from the row and the ranges,
so it needs no join. ``thresholds/<id>.json`` records the ranges and the threshold.

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

from beam_filter.columns import need
from beam_filter.errors import UserError
from beam_filter.registry import Param, ScoredStage, register
from beam_filter.rules.fused_score import as_number, check_weights, fused_value


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

        label = " + ".join(f"{w:g}*{'|'.join(a)}" for a, w in zip(self.alternatives, self.weights))
        return alive_rows | f"{self.id}/FusedRank" >> FusedRankThreshold(
            self.values, self.weights, fraction=self.p.fraction, threshold=self.p.threshold,
            label=f"fused({label})")

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

    def provenance(self) -> dict:
        return {"type": self.name, "params": self.config,
                "threshold_applied": (self.p.threshold if self.p.fraction is None
                                      else f"rank-n of the fused score: see thresholds/{self.id}.json")}
