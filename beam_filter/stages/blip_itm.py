"""The ``blip_itm`` stage: BLIP image-text matching probability and a threshold or top fraction on it.

Score phase: ``models/blip_itm.BlipItmModelHandler`` over ``(image bytes, caption)``;
column ``{id}_score`` = P(match) from BLIP's ITM head. An image that does not decode
sets ``read_error``. Select phase: keep ``score >= threshold``, or the top ``fraction``
of the rows alive when the stage is reached (DataComp's exact rank-n rule,
``transforms/thresholds.ExactRankThreshold``; ties kept). Neither: it only scores.
"""

from __future__ import annotations

import math
import os
from typing import Any

from beam_filter.columns import need
from beam_filter.errors import UserError
from beam_filter.records import READ_ERROR
from beam_filter.registry import Param, RankSpec, ScoredStage, register

TINY_DIR = "blip_itm_tiny"


@register
class BlipItmStage(ScoredStage):
    """BLIP ITM P(match) ("The Devil is in the Details" cross-modality filter)."""

    name = "blip_itm"
    description = "BLIP image-text matching probability (ITM head) with a threshold or exact top fraction"
    params = {
        "model": Param(str, "Salesforce/blip-itm-base-coco", "BlipForImageTextRetrieval checkpoint: hub id "
                       "(cache warm), local or gs:// directory"),
        "device": Param(str, "auto", "auto, cpu, cuda or cuda:N"),
        "precision": Param(str, "auto", "auto (fp16 on GPU, fp32 on CPU), fp32, fp16, bf16",
                           choices=("auto", "fp32", "fp16", "bf16")),
        "batch_size": Param(int, 32, "pairs per forward pass", check=lambda v: v >= 1, check_msg="must be >= 1"),
        "max_text_length": Param(int, 35, "caption tokens kept (BLIP's ITM setting)",
                                 check=lambda v: v >= 4, check_msg="must be >= 4"),
        "threshold": Param(float, None, "keep rows with P(match) >= this",
                           check=lambda v: v is None or 0 <= v <= 1, check_msg="must be in [0, 1]"),
        "fraction": Param(float, None, "keep this top fraction of the alive rows (rank-n rule)",
                          check=lambda v: v is None or 0 < v <= 1, check_msg="must be in (0, 1]"),
    }
    score_params = ("model", "precision", "max_text_length")

    def __init__(self, stage_id: str, params: dict[str, Any]):
        super().__init__(stage_id, params)
        if self.p.threshold is not None and self.p.fraction is not None:
            raise UserError(f"stage {stage_id!r}: give threshold or fraction, not both")
        self.score_column = f"{stage_id}_score"
        self.below = f"{stage_id}_score_below_threshold"

    def check_weights(self) -> None:
        """A local model directory must exist (a hub id ``owner/name`` is fetched by the worker)."""
        from beam_filter.fsio import is_remote

        m = self.p.model
        if not is_remote(m) and m.startswith((".", "/", "~")) and not os.path.isdir(m):
            raise UserError(f"stage {self.id!r}: model={m!r}: no such directory; set "
                            f"--set {self.id}.model=DIR or a hub id")

    def _filters(self) -> bool:
        return self.p.threshold is not None or self.p.fraction is not None

    def score_columns(self) -> tuple[str, ...]:
        return (self.score_column,)

    def needs(self):
        return (need(self.score_column, what="the BLIP ITM score"),) if self._filters() else ()

    def model_handler(self):
        from beam_filter.models.blip_itm import BlipItmModelHandler

        p = self.p
        return BlipItmModelHandler(p.model, device=p.device, precision=p.precision, batch_size=p.batch_size,
                                   max_text_length=p.max_text_length)

    def shares_decode(self) -> bool:
        return True     # (image, caption) from the sample alone: one decode with clip (models/shared_decode.py)

    def model_input(self, sample):
        return (sample.image, sample.caption)

    def model_columns(self, inference) -> dict:
        out = getattr(inference, "inference", inference)
        if out.get("error"):
            return {READ_ERROR: out["error"]}
        return {self.score_column: float(out["score"])}

    def needs_global_info(self) -> bool:
        return self.p.fraction is not None

    def rank_spec(self) -> RankSpec | None:
        if self.p.fraction is None:
            return None
        return RankSpec(self.score_column, self.p.fraction, self.score_column)

    def reason(self, row: dict, info: Any = None) -> str | None:
        if not self._filters():
            return None
        value = row.get(self.score_column)
        threshold = self.p.threshold if self.p.fraction is None else (None if info is None else info.threshold)
        if value is None or (isinstance(value, float) and math.isnan(value)) or threshold is None \
                or float(value) < threshold:
            return self.below
        return None

    @classmethod
    def write_test_model(cls, directory: str) -> bool:
        from beam_filter.devtools.tiny_models import write_tiny_blip_itm

        write_tiny_blip_itm(os.path.join(directory, TINY_DIR))
        return True

    @classmethod
    def test_model_params(cls, directory: str) -> dict:
        return {"model": os.path.join(directory, TINY_DIR), "device": "cpu", "precision": "fp32"}

    def provenance(self) -> dict:
        out = {"type": self.name, "params": self.config, "model": self.p.model, "columns": [self.score_column]}
        if self.p.threshold is not None:
            out["threshold_applied"] = self.p.threshold
        elif self.p.fraction is not None:
            out["threshold_applied"] = f"rank-n over alive rows: see thresholds/{self.id}.json"
        return out
