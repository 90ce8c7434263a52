"""The ``clip`` stage: CLIP score (and flipped-image score, embeddings) and a threshold on it.

Score phase: one RunInference of ``ClipModelHandler`` over ``(image bytes, caption)``;
columns ``{id}_score``, ``{id}_flipped_score``, ``{id}_image_embedding``,
``{id}_text_embedding`` (1-D float32: the pipeline stores them in embeddings/).
An image that does not decode sets ``read_error=corrupt_image``.

Select phase (``score_cut.py``): keep ``score >= threshold`` (a fixed number), or the top ``fraction``
of the rows still alive when the stage is reached, by DataComp's exact rank-n rule
(``transforms/thresholds.ExactRankThreshold``; ties kept). ``filter_on:
flipped_score`` filters on the score of the mirrored image instead ("The Devil is
in the Details": scene text stops inflating the score). With neither threshold
nor fraction the stage only scores (other stages read its columns).

T-MARS (``masked: true``): the stage also scores the image with the ``text_boxes`` of the
same sample filled with their mean colour (``mask_fill``), written as
``{id}_masked_score`` and filtered with ``filter_on: masked_score``. The boxes come from
a ``text_detect`` stage placed *before* this one in the recipe (model stages run in
recipe order on the same sample, so the clip stage reads that sample's column); the
masked view is cut from the same decode and encoded in the same forward pass as the
plain and mirrored views. An image without boxes is its own masked view.

DataComp metadata (``select --metadata``): the rows have no ``{id}_score``; the
stage then reads DataComp's own column for its model, computed with OpenAI
weights -- ``ViT-L-14`` -> ``clip_l14_similarity_score`` (embeddings ``l14_img``/
``l14_txt``), ``ViT-B-32`` -> ``clip_b32_similarity_score`` (``b32_img``/``b32_txt``)
-- so one recipe runs on shards and on metadata. Other models, or
``filter_on: flipped_score``, have no metadata column: a clear error.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from beam_filter.errors import UserError
from beam_filter.records import READ_ERROR
from beam_filter.columns import need
from beam_filter.registry import Param, RankSpec, ScoredStage, register
from beam_filter.rules.ocr import decode_boxes
from beam_filter.stages.score_cut import ScoreCut, cut_params

TEXT_BOXES = "text_boxes"     # written by the text_detect stage (stages/ocr.py)

TINY_DIR = "clip_tiny"
# DataComp metadata columns by open_clip model name (all computed with OpenAI weights).
METADATA_COLUMNS = {
    "ViT-L-14": ("clip_l14_similarity_score", "l14_img", "l14_txt"),
    "ViT-B-32": ("clip_b32_similarity_score", "b32_img", "b32_txt"),
}


def metadata_columns(model: str) -> tuple[str, str, str] | None:
    """(score, image embedding, text embedding) columns of DataComp metadata for ``model``, or None."""
    name = (model or "").replace("/", "-")
    for suffix in ("-quickgelu",):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return METADATA_COLUMNS.get(name)


class ScoreGetter:
    """Picklable ``row -> score`` for ExactRankThreshold and ``reason``: the stage's own
    column when the row has it, else the DataComp metadata column for the model."""

    def __init__(self, stage_id: str, column: str, fallback: str | None, model: str):
        self.stage_id, self.column, self.fallback, self.model = stage_id, column, fallback, model

    def __call__(self, row: dict):
        if self.column in row:
            return row[self.column]
        if self.fallback is not None and self.fallback in row:
            return row[self.fallback]
        if self.fallback is None:
            raise UserError(f"clip stage {self.stage_id!r}: rows have no {self.column!r} and DataComp "
                            f"metadata has no column for model {self.model!r} with this filter_on; "
                            "score the shards with this stage first")
        raise UserError(f"clip stage {self.stage_id!r}: rows have neither {self.column!r} nor "
                        f"DataComp's {self.fallback!r}")


@register
class ClipStage(ScoreCut, ScoredStage):
    """CLIP image-text similarity (open_clip) and a fixed or top-fraction threshold on it."""

    name = "clip"
    description = "CLIP score / flipped-image CLIP score with a threshold or exact top fraction"
    params = {
        "model": Param(str, "ViT-B-32", "open_clip model name (ViT-L-14, ViT-B-32, ...), hf-hub:..., "
                       "or an open_clip model-config JSON path"),
        "pretrained": Param(str, "openai", "pretrained tag (openai, dfn2b, ...) or checkpoint path"),
        "device": Param(str, "auto", "auto, cpu, cuda or cuda:N (cuda without a GPU is an error)"),
        "batch_size": Param(int, 64, "images per forward pass", check=lambda v: v >= 1,
                            check_msg="must be >= 1"),
        "precision": Param(str, "auto", "auto (fp16 on GPU, fp32 on CPU), fp32, fp16, bf16",
                           choices=("auto", "fp32", "fp16", "bf16")),
        "draft": Param(bool, False, "let libjpeg decode large JPEGs at reduced size: 2x faster "
                       "preprocessing on large photos, little on DataComp's <=512 px images; scores "
                       "differ by up to ~0.003 (models/image_prep.py). Off: scores equal open_clip's"),
        "decode": Param(str, "cpu", "JPEG decoding on cpu or gpu (nvJPEG)", choices=("cpu", "gpu")),
        "share_across_processes": Param(bool, False, "one model per machine for all SDK processes"),
        "flip": Param(bool, True, "also score the mirrored image ({id}_flipped_score); false halves "
                      "the image-tower work"),
        **cut_params("keep rows with score >= this",
                     "keep this top fraction of the alive rows (DataComp rank-n rule)"),
        "filter_on": Param(str, "score", "which score the threshold applies to",
                           choices=("score", "flipped_score", "masked_score")),
        "masked": Param(bool, False, "T-MARS: also score the image with the text_boxes of an earlier "
                        "text_detect stage filled ({id}_masked_score), in the same forward pass",
                        hash_at_default=False),
        "mask_fill": Param(str, "polygon_mean", "how masked regions are filled: polygon_mean (each "
                           "polygon with its own mean colour) or box_mean (each bounding box with its mean)",
                           choices=("polygon_mean", "box_mean"), hash_at_default=False),
    }
    score_params = ("model", "pretrained", "precision", "draft", "decode", "flip")

    def __init__(self, stage_id: str, params: dict[str, Any]):
        super().__init__(stage_id, params)
        p = self.p
        self.check_cut()
        if p.filter_on == "flipped_score" and not p.flip:
            raise UserError(f"stage {stage_id!r}: filter_on=flipped_score needs flip=true")
        if p.filter_on == "masked_score" and not p.masked:
            raise UserError(f"stage {stage_id!r}: filter_on=masked_score needs masked=true")
        if p.masked and p.decode == "gpu":
            raise UserError(f"stage {stage_id!r}: masked=true prepares the views on the CPU; use decode=cpu")
        self.masked_column = f"{stage_id}_masked_score"
        self.score_column = f"{stage_id}_score"
        self.flipped_column = f"{stage_id}_flipped_score"
        self.image_column = f"{stage_id}_image_embedding"
        self.text_column = f"{stage_id}_text_embedding"
        meta = metadata_columns(p.model) if p.pretrained == "openai" else None
        filtered = {"score": self.score_column, "flipped_score": self.flipped_column,
                    "masked_score": self.masked_column}[p.filter_on]
        fallback = meta[0] if meta and p.filter_on == "score" else None
        self.getter = ScoreGetter(stage_id, filtered, fallback, p.model)
        self.below = f"{stage_id}_{p.filter_on}_below_threshold"

    def check_weights(self) -> None:
        """Local model/checkpoint paths must exist: checked when the CLI loads the recipe,
        so a typo fails in the first second, naming the parameter, not in a worker later."""
        from beam_filter.fsio import is_remote
        from beam_filter.models.clip import is_checkpoint_path

        p = self.p
        if p.model.endswith(".json") and not is_remote(p.model) and not os.path.isfile(p.model):
            raise UserError(f"stage {self.id!r}: model={p.model!r}: no such model-config file; "
                            f"set --set {self.id}.model=PATH.json or an open_clip model name")
        if is_checkpoint_path(p.pretrained) and not is_remote(p.pretrained) and not os.path.isfile(p.pretrained):
            raise UserError(f"stage {self.id!r}: pretrained={p.pretrained!r}: no such checkpoint file; "
                            f"set --set {self.id}.pretrained=PATH or a pretrained tag (openai, ...)")

    def score_config(self) -> dict | None:
        """The masked view changes what is scored only when it is on: recipes without it keep
        the score hash (and the scores on disk) they had before the mode existed."""
        cfg = super().score_config()
        if self.p.masked:
            cfg.update(masked=True, mask_fill=self.p.mask_fill)
        return cfg

    # ---- columns -------------------------------------------------------------
    def score_columns(self) -> tuple[str, ...]:
        flipped = (self.flipped_column,) if self.p.flip else ()
        masked = (self.masked_column,) if self.p.masked else ()
        return (self.score_column,) + flipped + masked + (self.image_column, self.text_column)

    def needs(self):
        # masked: the text boxes of the same sample, from a text_detect stage earlier in the recipe.
        boxes = (need(TEXT_BOXES, what="text regions to mask, from a text_detect stage before this one"),) \
            if self.p.masked else ()
        return boxes + self.cut_needs(f"the {self.p.filter_on} filtered on")   # () when it only scores

    # ---- score phase --------------------------------------------------------
    def model_handler(self):
        from beam_filter.models.clip import ClipModelHandler

        p = self.p
        kwargs = dict(device=p.device, batch_size=p.batch_size, precision=p.precision, draft=p.draft,
                      decode=p.decode, share_across_processes=p.share_across_processes)
        if not p.flip:
            kwargs["flip"] = False
        if p.masked:
            kwargs["mask_fill"] = p.mask_fill
        return ClipModelHandler(p.model, p.pretrained, **kwargs)

    def shares_decode(self) -> bool:
        """The CPU decode of a plain clip stage can be shared (models/shared_decode.py); not the
        masked view (its input reads text_detect's boxes) nor nvJPEG decoding on the GPU."""
        return not self.p.masked and self.p.decode == "cpu"

    def model_input(self, sample):
        if self.p.masked:
            boxes = sample.features.get(TEXT_BOXES) or ""
            decode_boxes(boxes)         # malformed boxes fail this sample here, not the batch
            return (sample.image, sample.caption, boxes)
        return (sample.image, sample.caption)

    def model_columns(self, inference) -> dict:
        out = getattr(inference, "inference", inference)   # a dict, or a PredictionResult around it
        if out.get("error"):
            return {READ_ERROR: out["error"]}
        cols = {self.score_column: float(out["score"]),
                self.image_column: np.asarray(out["image_embedding"], dtype=np.float32).ravel(),
                self.text_column: np.asarray(out["text_embedding"], dtype=np.float32).ravel()}
        if self.p.flip:
            cols[self.flipped_column] = float(out["flipped_score"])
        if self.p.masked:
            cols[self.masked_column] = float(out["masked_score"])
        return cols

    # ---- select phase (score_cut.ScoreCut): its column, else DataComp's, as ScoreGetter picks it ----
    @property
    def cut_column(self) -> str:
        return self.getter.column

    def cut_value(self, row: dict):
        return self.getter(row)

    def cut_columns(self) -> tuple[str, ...]:
        g = self.getter
        return tuple(c for c in (g.column, g.fallback) if c)

    def cut_ranked(self, fraction: float) -> RankSpec:
        g = self.getter
        label = g.column if g.fallback is None else f"{g.column} (metadata rows: {g.fallback})"
        return RankSpec(g, fraction, label, self.cut_columns())

    # ---- offline smoke tests ------------------------------------------------------
    @classmethod
    def write_test_model(cls, directory: str) -> bool:
        from beam_filter.devtools.tiny_models import write_tiny_clip

        write_tiny_clip(os.path.join(directory, TINY_DIR), like="ViT-B-32")
        return True

    @classmethod
    def test_model_params(cls, directory: str) -> dict:
        d = os.path.join(directory, TINY_DIR)
        return {"model": os.path.join(d, "tiny-ViT-B-32.json"), "pretrained": os.path.join(d, "tiny-ViT-B-32.pt"),
                "device": "cpu", "precision": "fp32"}

    def provenance(self) -> dict:
        from beam_filter.models.provenance import clip_provenance   # no torch import

        p = self.p
        out = {"type": self.name, "params": self.config, "model": clip_provenance(p.model, p.pretrained),
               "columns": [self.score_column, self.flipped_column, self.image_column, self.text_column]
               + ([self.masked_column] if p.masked else []),
               "filter_on": p.filter_on}
        meta = metadata_columns(p.model) if p.pretrained == "openai" else None
        if meta:
            out["metadata_fallback"] = {"score": meta[0], "image_embedding": meta[1], "text_embedding": meta[2]}
        return self.cut_provenance(out)
