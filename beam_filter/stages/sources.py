"""The ``sources`` stage: each named source's keep fraction, copy count and decontamination.

Put first in the recipe by the CLI when an ``--input`` names a source (``beam_filter/sources.py``
says how inputs are named); not meant to be written in a recipe by hand. A row's source is
the tag of its shard (``sources.source_of``), also stored as the ``source`` column.

* fraction f: kept when ``uid_unit(uid, "source:<name>") < f`` (sampling.py: a hash of
  the uid, so the same rows are kept on any runner), else ``not_in_source_fraction``;
* decontamination: the existing ``decontaminate`` stage (stages/cluster.py), built inside
  this one, checks the rows of the sources it is on for (pHash) near-duplicates of the
  evaluation images;
* copies: a kept row of the source is written ``copies`` times (``RuleStage.copies``);
* filter false: a row that passes is decided here, kept with reason ``unfiltered_source``
  (``selection.finish_decision`` keeps it), so the recipe's later stages skip it.
"""

from __future__ import annotations

from typing import Any

from beam_filter.cluster.sampling import uid_unit
from beam_filter.errors import UserError
from beam_filter.records import SHARD, UID
from beam_filter.registry import Param, RuleStage, build_stage, register
from beam_filter.sources import NOT_SAMPLED, SOURCE_COLUMN, UNFILTERED, source_of


def _check_sources(value) -> bool:
    if not isinstance(value, dict):
        return False
    for cfg in value.values():
        if not isinstance(cfg, dict) or set(cfg) - {"fraction", "copies", "decontaminate", "filter"}:
            return False
        if not isinstance(cfg.get("filter", True), bool):
            return False
        f, c = cfg.get("fraction", 1.0), cfg.get("copies", 1)
        if not (isinstance(f, (int, float)) and 0 < f <= 1 and isinstance(c, int) and c >= 1):
            return False
    return True


@register
class SourcesStage(RuleStage):
    """Per-source keep fraction (by uid hash), copies and decontamination of a mixed input."""

    name = "sources"
    description = ("mixed inputs (--input NAME=GLOB:fraction=F:copies=K): per-source keep fraction by "
                   "uid hash, copies, and decontamination of external sources")
    params = {
        "sources": Param(dict, {}, "{name: {fraction, copies, decontaminate, filter}} (set by the CLI)",
                         check=_check_sources, check_msg="must map source names to fraction in (0, 1], "
                         "copies >= 1, decontaminate and filter true/false"),
        "decontaminate": Param(str, None, "evaluation images (dir, glob, .npy of pHashes) that the rows of "
                               "decontaminated sources must not near-duplicate"),
        "tolerance": Param(int, 4, "max pHash Hamming distance of a near-duplicate (decontaminate stage)",
                           check=lambda v: v is not None and 0 <= v < 64, check_msg="must be in [0, 64)"),
        "bands": Param(int, 4, "LSH bands of the eval index", choices=(1, 2, 4, 8, 16)),
    }
    score_params = ("decontaminate",)      # the features: source tag, and pHash when decontaminating

    def __init__(self, stage_id: str, params: dict[str, Any]):
        super().__init__(stage_id, params)
        self._decon = None
        if self.p.decontaminate:
            self._decon = build_stage(f"{stage_id}.decontaminate", "decontaminate",
                                      {"path": self.p.decontaminate, "tolerance": self.p.tolerance,
                                       "bands": self.p.bands})
        elif any(c.get("decontaminate") for c in self.p.sources.values()):
            raise UserError(f"stage {stage_id!r}: a source is to be decontaminated but no evaluation "
                            "images were given (--decontaminate PATH)")

    def feature_columns(self) -> tuple[str, ...]:
        return (SOURCE_COLUMN,) + (self._decon.feature_columns() if self._decon else ())

    def features(self, sample) -> dict:
        out = {SOURCE_COLUMN: source_of(sample.shard)}
        if self._decon is not None:
            out.update(self._decon.features(sample) or {})
        return out

    def needs(self):
        return self._decon.needs() if self._decon is not None else ()

    def _config(self, row: dict) -> tuple[dict | None, str | None]:
        name = row.get(SOURCE_COLUMN) or source_of(row.get(SHARD) or "")
        return self.p.sources.get(name) if name else None, name

    def reason(self, row: dict, info: Any = None) -> str | None:
        cfg, name = self._config(row)
        if cfg is None:
            return None
        fraction = float(cfg.get("fraction", 1.0))
        if fraction < 1 and uid_unit(str(row.get(UID)), f"source:{name}") >= fraction:
            return NOT_SAMPLED
        if cfg.get("decontaminate") and self._decon is not None:
            why = self._decon.reason(row)
            if why is not None:
                return why
        return UNFILTERED if cfg.get("filter") is False else None

    def copies(self, row: dict) -> int | None:
        cfg, _ = self._config(row)
        n = int(cfg.get("copies", 1)) if cfg else 1
        return n if n > 1 else None
