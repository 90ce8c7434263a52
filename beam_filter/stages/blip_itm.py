"""The ``blip_itm`` stage: BLIP image-text matching probability and a threshold or top fraction on it.

Score phase: ``models/blip_itm.BlipItmModelHandler`` over ``(image bytes, caption)``;
column ``{id}_score`` = P(match) from BLIP's ITM head. An image that does not decode
sets ``read_error``. Select phase (``score_cut.py``): keep ``score >= threshold``, or the top ``fraction``
of the rows alive when the stage is reached (DataComp's exact rank-n rule,
``transforms/thresholds.ExactRankThreshold``; ties kept). Neither: it only scores.
"""

from __future__ import annotations

import os
from typing import Any

from beam_filter.errors import UserError
from beam_filter.records import READ_ERROR
from beam_filter.registry import Param, ScoredStage, register
from beam_filter.stages.score_cut import ScoreCut, cut_params, unit_ok

TINY_DIR = "blip_itm_tiny"


@register
class BlipItmStage(ScoreCut, ScoredStage):
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
        **cut_params("keep rows with P(match) >= this", "keep this top fraction of the alive rows (rank-n rule)",
                     unit_ok, "must be in [0, 1]"),
    }
    score_params = ("model", "precision", "max_text_length")

    def __init__(self, stage_id: str, params: dict[str, Any]):
        super().__init__(stage_id, params)
        self.check_cut()
        self.score_column = self.cut_column = f"{stage_id}_score"
        self.below = f"{stage_id}_score_below_threshold"

    def check_weights(self) -> None:
        """A local model directory must exist (a hub id ``owner/name`` is fetched by the worker)."""
        from beam_filter.fsio import is_remote

        m = self.p.model
        if not is_remote(m) and m.startswith((".", "/", "~")) and not os.path.isdir(m):
            raise UserError(f"stage {self.id!r}: model={m!r}: no such directory; set "
                            f"--set {self.id}.model=DIR or a hub id")

    def score_columns(self) -> tuple[str, ...]:
        return (self.score_column,)

    def needs(self):
        return self.cut_needs("the BLIP ITM score")

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

    @classmethod
    def write_test_model(cls, directory: str) -> bool:
        from beam_filter.devtools.tiny_models import write_tiny_blip_itm

        write_tiny_blip_itm(os.path.join(directory, TINY_DIR))
        return True

    @classmethod
    def test_model_params(cls, directory: str) -> dict:
        return {"model": os.path.join(directory, TINY_DIR), "device": "cpu", "precision": "fp32"}

    def provenance(self) -> dict:
        return self.cut_provenance({"type": self.name, "params": self.config, "model": self.p.model,
                                    "columns": [self.score_column]})
