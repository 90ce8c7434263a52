"""The ``hype`` stage: HYPE's hyperbolic CLIP scores (models/hype.py) and an optional cut on one.

Score phase: one RunInference of ``HypeModelHandler`` over ``(image bytes, caption)``;
columns ``{id}_score`` (the negative Lorentz distance between image and caption,
HYPE's similarity ``-d_L``), ``{id}_image_specificity_score`` (e_i),
``{id}_text_specificity_score`` (e_t), ``{id}_image_embedding`` and
``{id}_text_embedding`` (the scaled tangent features). An image that does not
decode sets ``read_error=corrupt_image``.

Select phase: usually none here -- the ``hype`` preset ranks HYPE's composite score
(e_i + e_t - d_L + cos, each min-max normalised) with a ``fused_rank`` stage; a
``threshold`` or top ``fraction`` on one column (``filter_on``) is there for
single-term selections (the paper's image-only induction uses e_i alone).

Weights and the reference set are released on the authors' page, not on a model hub:
``checkpoint`` and ``reference`` are paths (local or gs://), with no default.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from beam_filter.errors import UserError
from beam_filter.records import READ_ERROR
from beam_filter.registry import Param, ScoredStage, register
from beam_filter.stages.score_cut import ScoreCut, cut_params

TINY_DIR = "hype_tiny"
_FILTER_ON = {"score": "score", "image_specificity": "image_specificity_score",
              "text_specificity": "text_specificity_score"}


@register
class HypeStage(ScoreCut, ScoredStage):
    """HYPE (Kim et al., ECCV 2024): Lorentz distance and image/text specificity from a hyperbolic CLIP."""

    name = "hype"
    description = "HYPE hyperbolic CLIP: negative Lorentz distance, image and text specificity (entailment cones)"
    params = {
        "model": Param(str, "ViT-L-14", "open_clip architecture of the towers (HYPE: ViT-L-14) or a "
                       "model-config JSON"),
        "checkpoint": Param(str, None, "HYPE weights (the authors' ckpt.pt; local or gs://); needed to run"),
        "reference": Param(str, None, "HYPE reference set (the authors' reference.pt, or an .npz with "
                           "img/txt arrays); needed to run"),
        "device": Param(str, "auto", "auto, cpu, cuda or cuda:N"),
        "batch_size": Param(int, 64, "images per forward pass", check=lambda v: v >= 1, check_msg="must be >= 1"),
        "precision": Param(str, "auto", "auto (fp16 on GPU, fp32 on CPU), fp32, fp16, bf16",
                           choices=("auto", "fp32", "fp16", "bf16")),
        "draft": Param(bool, False, "reduced-size JPEG decoding (models/image_prep.py)"),
        "decode": Param(str, "cpu", "JPEG decoding on cpu or gpu (nvJPEG)", choices=("cpu", "gpu")),
        "share_across_processes": Param(bool, False, "one model per machine for all SDK processes"),
        **cut_params("keep rows whose filter_on column is >= this",
                     "keep this top fraction by filter_on (DataComp rank-n rule)"),
        "filter_on": Param(str, "score", "column the threshold/fraction applies to",
                           choices=tuple(_FILTER_ON)),
    }
    score_params = ("model", "checkpoint", "reference", "precision", "draft", "decode")

    def __init__(self, stage_id: str, params: dict[str, Any]):
        super().__init__(stage_id, params)
        p = self.p
        self.check_cut()
        self.score_column = f"{stage_id}_score"
        self.image_spec_column = f"{stage_id}_image_specificity_score"
        self.text_spec_column = f"{stage_id}_text_specificity_score"
        self.image_column = f"{stage_id}_image_embedding"
        self.text_column = f"{stage_id}_text_embedding"
        self.filter_column = self.cut_column = f"{stage_id}_{_FILTER_ON[p.filter_on]}"
        self.below = f"{stage_id}_{p.filter_on}_below_threshold"

    def check_weights(self) -> None:
        """Checked when the CLI loads the recipe: both paths given, local ones present."""
        from beam_filter.fsio import is_remote

        for key in ("checkpoint", "reference"):
            path = getattr(self.p, key)
            if not path:
                raise UserError(f"stage {self.id!r} (hype): set {key}=PATH (released on the HYPE authors' "
                                f"page, not on a model hub), e.g. --set {self.id}.{key}=/models/hype/"
                                f"{'ckpt.pt' if key == 'checkpoint' else 'reference.pt'}")
            if not is_remote(path) and not os.path.isfile(path):
                raise UserError(f"stage {self.id!r}: {key}={path!r}: no such file")

    # ---- columns -------------------------------------------------------------
    def score_columns(self) -> tuple[str, ...]:
        return (self.score_column, self.image_spec_column, self.text_spec_column,
                self.image_column, self.text_column)

    def needs(self):
        return self.cut_needs(f"the HYPE {self.p.filter_on} filtered on")

    # ---- score phase --------------------------------------------------------
    def model_handler(self):
        from beam_filter.models.hype import HypeModelHandler

        self.check_weights()
        p = self.p
        return HypeModelHandler(p.model, p.checkpoint, p.reference, device=p.device, batch_size=p.batch_size,
                                precision=p.precision, draft=p.draft, decode=p.decode,
                                share_across_processes=p.share_across_processes)

    def shares_decode(self) -> bool:
        return self.p.decode == "cpu"     # one decode with the model stages next to it (not nvJPEG)

    def model_input(self, sample):
        return (sample.image, sample.caption)

    def model_columns(self, inference) -> dict:
        out = getattr(inference, "inference", inference)
        if out.get("error"):
            return {READ_ERROR: out["error"]}
        return {self.score_column: -float(out["distance"]),
                self.image_spec_column: float(out["image_specificity"]),
                self.text_spec_column: float(out["text_specificity"]),
                self.image_column: np.asarray(out["image_embedding"], dtype=np.float32).ravel(),
                self.text_column: np.asarray(out["text_embedding"], dtype=np.float32).ravel()}

    # ---- offline smoke tests ------------------------------------------------------
    @classmethod
    def write_test_model(cls, directory: str) -> bool:
        from beam_filter.devtools.tiny_models import write_tiny_hype

        write_tiny_hype(os.path.join(directory, TINY_DIR))
        return True

    @classmethod
    def test_model_params(cls, directory: str) -> dict:
        d = os.path.join(directory, TINY_DIR)
        return {"model": os.path.join(d, "tiny-ViT-L-14.json"), "checkpoint": os.path.join(d, "tiny-hype.pt"),
                "reference": os.path.join(d, "reference.pt"), "device": "cpu", "precision": "fp32"}

    def provenance(self) -> dict:
        from beam_filter.models.provenance import clip_provenance   # no torch import

        p = self.p
        out = {"type": self.name, "params": self.config, "model": clip_provenance(p.model, p.checkpoint),
               "reference": p.reference,
               "columns": [self.score_column, self.image_spec_column, self.text_spec_column,
                           self.image_column, self.text_column]}
        return self.cut_provenance(out)
