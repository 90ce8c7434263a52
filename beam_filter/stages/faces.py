"""The ``face_area`` stage: drop images where faces cover a large area ("The Devil is in the Details").

Score phase (shards): the face detector (models/faces.py, OpenCV's Haar cascade by
default, an SCRFD ONNX by path) finds boxes; columns ``{id}_largest_fraction``,
``{id}_total_fraction`` (union of the boxes), ``{id}_count`` and ``{id}_bboxes`` (the
boxes as JSON text, DataComp's normalised [x0, y0, x1, y1]; the output blur reads them).

Select phase: drop when the largest face covers more than ``max_largest_fraction`` or all
faces together more than ``max_total_fraction`` (rules/faces.py). Rows of DataComp metadata
(``select --metadata``) were never scored: the fractions then come from the released
``face_bboxes`` column (SCRFD-10G boxes), so one recipe runs on both inputs.
"""

from __future__ import annotations

from typing import Any

from beam_filter.columns import need
from beam_filter.errors import UserError
from beam_filter.records import READ_ERROR
from beam_filter.registry import Param, ScoredStage, register
from beam_filter.rules import faces
from beam_filter.stages.score_cut import unit_ok

METADATA_BOXES = "face_bboxes"       # DataComp metadata column (REFERENCE.md)


@register
class FaceArea(ScoredStage):
    """Largest and total face area fraction, from a detector or DataComp's face_bboxes."""

    name = "face_area"
    description = "drop images whose largest face / all faces cover more than a fraction of the image"
    params = {
        "detector": Param(str, "haar", "haar (OpenCV's frontal-face cascade, shipped in opencv-python "
                          "4.x), a cascade .xml path, or an SCRFD/RetinaFace .onnx path"),
        "max_side": Param(int, 640, "images are shrunk to this longer side before detection",
                          check=lambda v: v >= 32, check_msg="must be >= 32"),
        "min_face": Param(float, 0.03, "haar: smallest face side, as a fraction of the shorter image side",
                          check=lambda v: 0 < v < 1, check_msg="must be in (0, 1)"),
        "min_neighbors": Param(int, 5, "haar: detections needed to confirm a face (OpenCV's default 3 "
                               "fires more on textures)", check=lambda v: v >= 0, check_msg="must be >= 0"),
        "score_threshold": Param(float, 0.5, "onnx: face score cut (insightface's default)",
                                 check=unit_ok, check_msg="must be in [0, 1]"),
        "device": Param(str, "cpu", "onnx: cpu or cuda (onnxruntime provider)"),
        "batch_size": Param(int, 32, "images per detector call", check=lambda v: v >= 1,
                            check_msg="must be >= 1"),
        "max_largest_fraction": Param(float, None, "drop when the largest face covers MORE than this "
                                      "fraction of the image", check=unit_ok, check_msg="must be in [0, 1]"),
        "max_total_fraction": Param(float, None, "drop when all faces together (union) cover MORE than this",
                                    check=unit_ok, check_msg="must be in [0, 1]"),
    }
    score_params = ("detector", "max_side", "min_face", "min_neighbors", "score_threshold")

    def __init__(self, stage_id: str, params: dict[str, Any]):
        super().__init__(stage_id, params)
        self.largest_column = f"{stage_id}_largest_fraction"
        self.total_column = f"{stage_id}_total_fraction"
        self.count_column = f"{stage_id}_count"
        self.boxes_column = f"{stage_id}_bboxes"

    def check_weights(self) -> None:
        """A detector path must exist: checked when the CLI loads the recipe, not in a worker later."""
        import os

        from beam_filter.fsio import is_remote

        d = self.p.detector
        if d != "haar" and not is_remote(d) and not os.path.isfile(d):
            raise UserError(f"stage {self.id!r}: detector={d!r}: no such file; use 'haar', a cascade .xml "
                            "or an SCRFD .onnx path")

    # ---- columns -------------------------------------------------------------
    def score_columns(self) -> tuple[str, ...]:
        return (self.largest_column, self.total_column, self.count_column, self.boxes_column)

    def needs(self):
        if self.p.max_largest_fraction is None and self.p.max_total_fraction is None:
            return ()
        return (need(self.largest_column, METADATA_BOXES, what="face areas (or DataComp's face_bboxes)"),)

    # ---- score phase ---------------------------------------------------------
    def model_handler(self):
        from beam_filter.models.faces import FaceModelHandler

        p = self.p
        return FaceModelHandler(p.detector, max_side=p.max_side, batch_size=p.batch_size,
                                min_face=p.min_face, min_neighbors=p.min_neighbors,
                                score_threshold=p.score_threshold, device=p.device)

    def shares_decode(self) -> bool:
        return True     # the sample's image alone: one decode with the model stages next to it

    def model_input(self, sample):
        return sample.image

    def model_columns(self, inference) -> dict:
        out = getattr(inference, "inference", inference)
        if out.get("error"):
            return {READ_ERROR: out["error"]}
        largest, total, count = faces.face_fractions(out["boxes"])
        return {self.largest_column: largest, self.total_column: total, self.count_column: count,
                self.boxes_column: faces.encode_boxes(out["boxes"])}

    # ---- select phase ----------------------------------------------------------
    def needs_global_info(self) -> bool:
        return False

    def fractions(self, row: dict) -> tuple[float | None, float | None]:
        """(largest, total) from the stage's columns, else from metadata ``face_bboxes``."""
        if self.largest_column in row:
            return row.get(self.largest_column), row.get(self.total_column)
        if METADATA_BOXES in row:
            boxes = faces.decode_boxes(row[METADATA_BOXES])
            return faces.largest_face_fraction(boxes), faces.total_face_fraction(boxes)
        raise UserError(f"face_area stage {self.id!r}: rows have neither {self.largest_column!r} nor "
                        f"DataComp's {METADATA_BOXES!r}; score the shards with this stage first")

    def reason(self, row: dict, info: Any = None) -> str | None:
        p = self.p
        if p.max_largest_fraction is None and p.max_total_fraction is None:
            return None
        largest, total = self.fractions(row)
        return faces.face_area_reason(largest, total, p.max_largest_fraction, p.max_total_fraction)

    def provenance(self) -> dict:
        out = {"type": self.name, "params": self.config, "detector": self.p.detector,
               "columns": list(self.score_columns()), "metadata_fallback": METADATA_BOXES}
        if self.p.detector == "haar":
            try:
                import cv2

                out["opencv"] = cv2.__version__
            except ImportError:
                pass
        return out
