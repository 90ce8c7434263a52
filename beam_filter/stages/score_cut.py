"""The cut scored stages share: keep ``score >= threshold``, or the top ``fraction`` of the alive rows.

clip (and clip_generated), blip_itm, hype and sieve each filter one number per row the
same way, so the rule is written once, here:

* ``cut_params(...)``: the ``threshold`` and ``fraction`` parameters (the stage gives the
  help lines ``beam-filter recipes`` shows, and a range for the threshold when it has one);
* :class:`ScoreCut`, a mixin listed before ``ScoredStage``: "give threshold or fraction, not
  both", ``needs_global_info``/``rank_spec`` (a fraction is DataComp's exact rank-n threshold,
  ``transforms/thresholds.ExactRankThreshold``, ties kept), ``reason`` and its columnar twin
  ``reason_array`` (a missing or NaN score, or a fraction without its threshold, is dropped with
  the stage's ``below`` reason), and the ``threshold_applied`` line of ``provenance``.
  Neither parameter given: the stage only scores and drops nothing.

A stage sets ``cut_column`` (the column filtered on) and ``below`` (its drop reason) in
``__init__`` and calls ``check_cut()``; clip overrides ``cut_value``/``cut_columns``/``cut_ranked``
to read DataComp's metadata column where rows have no score of their own. Stages whose cut
differs on purpose keep their own: mlm (a seeded tie-break, several metrics), face_area (higher
is worse), fused_rank (min-max ranges over the pool), laion2b (a rule with a fixed number).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from beam_filter.columns import need
from beam_filter.errors import UserError
from beam_filter.registry import Param, RankSpec
from beam_filter.rules.thresholds import passes_threshold


def fraction_ok(v) -> bool:
    """A top fraction: in (0, 1], or not given."""
    return v is None or 0 < v <= 1


def unit_ok(v) -> bool:
    """A probability or an area fraction: in [0, 1], or not given."""
    return v is None or 0 <= v <= 1


def cut_params(threshold_help: str, fraction_help: str, threshold_check: Callable[[Any], bool] | None = None,
               threshold_check_msg: str = "") -> dict[str, Param]:
    """The ``threshold`` and ``fraction`` parameters, in that order (recipes list them so)."""
    return {"threshold": Param(float, None, threshold_help, check=threshold_check, check_msg=threshold_check_msg),
            "fraction": Param(float, None, fraction_help, check=fraction_ok, check_msg="must be in (0, 1]")}


class ScoreCut:
    """Mixin for a ``ScoredStage`` whose select phase is a threshold or a top fraction on one column."""

    cut_column: str           # set by the stage: the column filtered on
    below: str                # set by the stage: the drop reason

    def check_cut(self) -> None:
        if self.p.threshold is not None and self.p.fraction is not None:
            raise UserError(f"stage {self.id!r}: give threshold or fraction, not both")

    def cuts(self) -> bool:
        """Whether the stage filters at all (else it only scores: other stages read its columns)."""
        return self.p.threshold is not None or self.p.fraction is not None

    # ---- what is cut: overridden by a stage with a fallback column (clip) ----------
    def cut_value(self, row: dict):
        return row.get(self.cut_column)

    def cut_columns(self) -> tuple[str, ...]:
        """The columns the value may come from, in order (a columnar part reads the first it has)."""
        return (self.cut_column,)

    def cut_ranked(self, fraction: float) -> RankSpec:
        return RankSpec(self.cut_column, fraction, self.cut_column)

    def cut_needs(self, what: str) -> tuple:
        """``needs()`` of the cut: its column(s) when the stage filters, else nothing."""
        return (need(*self.cut_columns(), what=what),) if self.cuts() else ()

    # ---- select phase ------------------------------------------------------------
    def needs_global_info(self) -> bool:
        return self.p.fraction is not None

    def rank_spec(self) -> RankSpec | None:
        return None if self.p.fraction is None else self.cut_ranked(self.p.fraction)

    def cut_threshold(self, info) -> float | None:
        """The threshold applied: the fixed one, or the fraction's rank-n threshold from ``info``."""
        if self.p.fraction is not None:
            return None if info is None else info.threshold
        return self.p.threshold

    def reason(self, row: dict, info: Any = None) -> str | None:
        if not self.cuts():
            return None
        value = self.cut_value(row)         # first: clip's getter names a missing column in one line
        return None if passes_threshold(value, self.cut_threshold(info)) else self.below

    def reason_array(self, part, alive, info: Any = None):
        out = np.full(part.n, None, dtype=object)
        if not self.cuts():
            return out
        column = next((c for c in self.cut_columns() if part.has(c)), None)
        values = None if column is None else part.floats(column)
        if values is None:
            return None         # no such column, or not numbers: the row path decides (and says why)
        threshold = self.cut_threshold(info)
        if threshold is None:
            out[:] = self.below
        else:
            out[~(values >= threshold)] = self.below      # NaN (a missing score) fails too
        return out

    def cut_provenance(self, out: dict) -> dict:
        """Add the ``threshold_applied`` line to a stage's provenance (nothing when it only scores)."""
        if self.p.threshold is not None:
            out["threshold_applied"] = self.p.threshold
        elif self.p.fraction is not None:
            out["threshold_applied"] = f"rank-n over alive rows: see thresholds/{self.id}.json"
        return out
