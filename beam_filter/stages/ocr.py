"""Scene-text stages: ``text_detect`` (T-MARS' detector, columns other stages read) and two OCR rules.

``text_detect`` (scored kind, no threshold of its own): one RunInference of
``models/text_detect.TextDetectHandler`` over the image bytes, in the score phase.
Columns (plain names: other stages and helpers read them):

* ``text_boxes``: the confirmed polygons, in the pixel frame of the image as stored in the
  shard, compactly as ``"x,y,...;x,y,..."`` (``rules/ocr.encode_boxes``; ``""`` = none);
* ``text_area_fraction``: area of their union / image area (0..1);
* ``text_box_count``: how many; ``text_candidate_count``: boxes the detector found before
  the recogniser's confirmation;
* ``ocr_text``: the recognised text of the confirmed boxes joined with single spaces
  (``""`` when none).

Confirmation (``confirm``, on by default): a box counts only when the recogniser reads at
least ``rec_min_chars`` letters/digits in it with confidence >= ``rec_min_score``. Measured on
generated images (docs/tmars.md, benchmarks/bench_text_detect.py): PP-OCR detection alone put
boxes on 27 of 32 text-free images with elongated shapes; with confirmation on 1 of 32, and
all 32 text images kept their text (per box: precision 0.985, recall 1.0).

The CLIP stage's ``masked`` mode reads ``text_boxes`` of the same sample (T-MARS), so
``text_detect`` must come before that ``clip`` stage in the recipe (checked with the columns).

``text_area`` (rule): drop when ``text_area_fraction > max_fraction``.
``caption_ocr`` (rule): drop when the caption is mostly the OCR'd text
(``rules/ocr.caption_ocr_overlap >= max_overlap``). Both are the DataComp leaderboard's
"OCR and naive English filtering" family.
"""

from __future__ import annotations

import os
from typing import Any

from beam_filter.columns import need
from beam_filter.records import CAPTION, READ_ERROR
from beam_filter.registry import Param, RuleStage, ScoredStage, register
from beam_filter.rules import ocr
from beam_filter.stages.score_cut import unit_ok

TEXT_BOXES = "text_boxes"
TEXT_AREA_FRACTION = "text_area_fraction"
TEXT_BOX_COUNT = "text_box_count"
TEXT_CANDIDATE_COUNT = "text_candidate_count"
OCR_TEXT = "ocr_text"
FAST_TINY_DIR = "fast_tiny"


@register
class TextDetectStage(ScoredStage):
    """Text regions per image (PP-OCR or FAST), confirmed by the recogniser; columns only, no drop."""

    name = "text_detect"
    description = ("scene-text boxes, their area fraction, count and OCR text (PP-OCR ONNX by default, "
                   "FAST optional); the masked CLIP score and the OCR rules read them")
    params = {
        "detector": Param(str, "ppocr", "ppocr (PP-OCRv4 ONNX from rapidocr-onnxruntime) or fast "
                          "(T-MARS' FAST, needs fast_checkpoint)", choices=("ppocr", "fast")),
        "fast_checkpoint": Param(str, None, "TorchScript export of FAST (detector=fast)"),
        "device": Param(str, "auto", "auto, cpu or cuda (ONNX Runtime CUDA provider / torch for FAST)"),
        "batch_size": Param(int, 16, "images per detector call", check=lambda v: v >= 1,
                            check_msg="must be >= 1"),
        "det_size": Param(int, None, "side of the square the image is padded and resized to; default: "
                          "512 for both (T-MARS feeds FAST 512)",
                          check=lambda v: v is None or (v >= 32 and v % 32 == 0),
                          check_msg="must be a multiple of 32"),
        "det_min_score": Param(float, None, "detector box score threshold; default: 0.5 for ppocr "
                               "(rapidocr), 0.85 for fast (T-MARS)", check=unit_ok, check_msg="must be in [0, 1]"),
        "min_area": Param(float, None, "smallest box area kept, px^2; default 0 for ppocr (original frame), "
                          "200 for fast (512 frame, T-MARS)", check=lambda v: v is None or v >= 0,
                          check_msg="must be >= 0"),
        "confirm": Param(bool, True, "count a box only when the recogniser reads text in it"),
        "rec_min_score": Param(float, 0.5, "recogniser confidence that confirms a box", check=unit_ok,
                               check_msg="must be in [0, 1]"),
        "rec_min_chars": Param(int, 2, "letters/digits the recogniser must read to confirm a box",
                               check=lambda v: v >= 0, check_msg="must be >= 0"),
        "rec_batch_size": Param(int, 16, "text crops per recogniser call", check=lambda v: v >= 1,
                                check_msg="must be >= 1"),
        "threads": Param(int, None, "ONNX Runtime intra-op threads per worker process (default: its own "
                         "choice, all cores); lower it when several SDK processes share a VM",
                         check=lambda v: v is None or v >= 1, check_msg="must be >= 1"),
    }

    # What changes the columns; device, batch sizes and threads do not (batches are bit-identical
    # to single images on the CPU provider), so changing them reuses the scores on disk.
    score_params = ("detector", "fast_checkpoint", "det_size", "det_min_score", "min_area", "confirm",
                    "rec_min_score", "rec_min_chars")

    def __init__(self, stage_id: str, params: dict[str, Any]):
        super().__init__(stage_id, params)
        from beam_filter.errors import UserError

        if self.p.detector == "fast" and not self.p.fast_checkpoint:
            raise UserError(f"stage {stage_id!r}: detector=fast needs fast_checkpoint (a TorchScript "
                            "export of T-MARS' FAST model; see docs/tmars.md)")

    def check_weights(self) -> None:
        from beam_filter.errors import UserError
        from beam_filter.fsio import is_remote

        ck = self.p.fast_checkpoint
        if self.p.detector == "fast" and ck and not is_remote(ck) and not os.path.isfile(ck):
            raise UserError(f"stage {self.id!r}: fast_checkpoint={ck!r}: no such file")

    # ---- columns -------------------------------------------------------------
    def score_columns(self) -> tuple[str, ...]:
        return (TEXT_BOXES, TEXT_AREA_FRACTION, TEXT_BOX_COUNT, TEXT_CANDIDATE_COUNT, OCR_TEXT)

    # ---- score phase --------------------------------------------------------
    def model_handler(self):
        from beam_filter.models.text_detect import TextDetectHandler

        p = self.p
        return TextDetectHandler(detector=p.detector, device=p.device, batch_size=p.batch_size,
                                 det_size=p.det_size, det_min_score=p.det_min_score, min_area=p.min_area,
                                 rec_batch_size=p.rec_batch_size, threads=p.threads,
                                 fast_checkpoint=p.fast_checkpoint)

    def shares_decode(self) -> bool:
        return True     # the sample's image alone: one decode with the model stages next to it

    def model_input(self, sample):
        return sample.image

    def model_columns(self, inference) -> dict:
        out = getattr(inference, "inference", inference)
        if out.get("error"):
            return {READ_ERROR: out["error"]}
        return detection_columns(out, self.p.confirm, self.p.rec_min_score, self.p.rec_min_chars)

    # ---- select phase: nothing to drop --------------------------------------
    def needs_global_info(self) -> bool:
        return False

    def reason(self, row: dict, info: Any = None) -> str | None:
        return None

    # ---- offline smoke tests --------------------------------------------------
    @classmethod
    def write_test_model(cls, directory: str) -> bool:
        """The default detector's real weights ship with rapidocr-onnxruntime, so presets keep
        PP-OCR under ``--test-models``; the FAST twin is written for ``detector: fast`` recipes."""
        from beam_filter.devtools.tiny_models import write_tiny_fast

        write_tiny_fast(os.path.join(directory, FAST_TINY_DIR))
        return True

    @classmethod
    def test_model_params(cls, directory: str) -> dict:
        return {"device": "cpu"}

    def provenance(self) -> dict:
        from beam_filter.fsio import file_sha256, is_remote

        out = {"type": self.name, "params": self.config, "detector": self.p.detector,
               "columns": list(self.score_columns())}
        ck = self.p.fast_checkpoint
        if self.p.detector == "fast" and ck and not is_remote(ck) and os.path.isfile(ck):
            out["fast_checkpoint_sha256"] = file_sha256(ck)
        if self.p.detector == "ppocr":
            out["ppocr_models"] = ["ch_PP-OCRv4_det_infer.onnx", "ch_PP-OCRv4_rec_infer.onnx"]
        return out


def detection_columns(out: dict, confirm: bool, rec_min_score: float, rec_min_chars: int) -> dict:
    """The ``text_detect`` columns of one handler output (``models/text_detect``)."""
    boxes, texts = out["boxes"], out["texts"]
    if confirm:
        keep = ocr.confirmed(texts, out["rec_scores"], rec_min_score, rec_min_chars)
    else:
        keep = [True] * len(boxes)
    polys = [b for b, k in zip(boxes, keep) if k]
    return {TEXT_BOXES: ocr.encode_boxes(polys),
            TEXT_AREA_FRACTION: ocr.area_fraction(polys, out["width"], out["height"]),
            TEXT_BOX_COUNT: len(polys),
            TEXT_CANDIDATE_COUNT: len(boxes),
            OCR_TEXT: ocr.join_ocr_text(t for t, k in zip(texts, keep) if k)}


@register
class TextAreaStage(RuleStage):
    """Drop images whose text covers more than a fraction of the image (reads ``text_detect``)."""

    name = "text_area"
    description = "drop when detected text covers more than max_fraction of the image (needs text_detect)"
    params = {
        "max_fraction": Param(float, None, "drop when text_area_fraction > this", required=True,
                              check=unit_ok, check_msg="must be in [0, 1]"),
    }

    def needs(self):
        return (need(TEXT_AREA_FRACTION, what="text area from a text_detect stage"),)

    def reason(self, row: dict, info: Any = None) -> str | None:
        return ocr.text_area_reason(row.get(TEXT_AREA_FRACTION), self.p.max_fraction)

    def fixed_cut(self) -> tuple[str, float]:
        return (TEXT_AREA_FRACTION, float(self.p.max_fraction))


@register
class CaptionOcrStage(RuleStage):
    """Drop samples whose caption is mostly the text written in the image (reads ``ocr_text``)."""

    name = "caption_ocr"
    description = "drop when the caption is mostly the OCR'd text of the image (needs text_detect)"
    params = {
        "max_overlap": Param(float, 0.5, "drop when this share of the caption's words was read in the image",
                             check=lambda v: 0 < v <= 1, check_msg="must be in (0, 1]"),
        "min_ocr_words": Param(int, 1, "only when the OCR read at least this many words",
                               check=lambda v: v >= 1, check_msg="must be >= 1"),
    }

    def needs(self):
        return (need(OCR_TEXT, what="OCR text from a text_detect stage"),)

    def reason(self, row: dict, info: Any = None) -> str | None:
        return ocr.caption_is_ocr_reason(row.get(CAPTION), row.get(OCR_TEXT), self.p.max_overlap,
                                         self.p.min_ocr_words)
