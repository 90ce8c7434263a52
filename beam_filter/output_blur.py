"""Face blurring of output images (``--apply-blur``), as DataComp's resharder offers it.

DataComp releases face boxes rather than blurred pixels and lets its resharder blur
them when writing shards (``--apply-blur``). Here the reshard writer calls
:meth:`FaceBlur.members` for every sample it writes; faces come from

1. the sample's own json ``face_bboxes`` (DataComp shards carry them), else
2. the scores file of its source shard: the first column named ``*_bboxes`` (what the
   ``face_area`` stage writes, JSON text of normalised boxes), or ``column`` when given.

A sample with no face is copied unchanged; one with faces has its image re-encoded
(JPEG at ``quality``, PNG stays PNG), so blurring is off by default and recorded in
``shards/meta.json`` (finalize.py). The blur: each box is grown by 10% of its longer side
on every side (detectors box the face tightly; hair and ears identify too), the image
is Gaussian-blurred with a radius of a fifth of the largest face's longer side (so a
large face is unrecognisable and a small one is not smeared over its surroundings), and
the blurred image is pasted through the boxes' mask, feathered by half that radius so no
hard edge marks the spot. Pure Pillow; same bytes on every run.
"""

from __future__ import annotations

import io
import json
from typing import Any

from beam_filter.rules.faces import decode_boxes

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
METADATA_KEY = "face_bboxes"
GROW = 0.1


def blur_faces(data: bytes, boxes, ext: str = "jpg", quality: int = 95) -> bytes:
    """``data`` with the (normalised) ``boxes`` blurred, re-encoded; unchanged when there is no box."""
    from PIL import Image, ImageDraw, ImageFilter

    boxes = decode_boxes(boxes)
    if not boxes:
        return data
    img = Image.open(io.BytesIO(data))
    img.load()
    fmt = "PNG" if ext == "png" else "WEBP" if ext == "webp" else "JPEG"
    mode = "RGBA" if fmt != "JPEG" and img.mode in ("RGBA", "LA", "P") else "RGB"
    img = img.convert(mode)
    w, h = img.size
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    largest = 1.0
    for x0, y0, x1, y1 in boxes:
        bw, bh = (x1 - x0) * w, (y1 - y0) * h
        grow = GROW * max(bw, bh)
        largest = max(largest, bw, bh)
        draw.rectangle([max(0, int(x0 * w - grow)), max(0, int(y0 * h - grow)),
                        min(w - 1, int(x1 * w + grow)), min(h - 1, int(y1 * h + grow))], fill=255)
    radius = max(2.0, largest / 5)
    blurred = img.filter(ImageFilter.GaussianBlur(radius))
    mask = mask.filter(ImageFilter.GaussianBlur(radius / 2))
    out = Image.composite(blurred, img, mask)
    buf = io.BytesIO()
    if fmt == "JPEG":
        out.save(buf, "JPEG", quality=quality)
    else:
        out.save(buf, fmt)
    return buf.getvalue()


def face_blur(job) -> "FaceBlur | None":
    """The reshard writer's --apply-blur hook for ``job`` (job.Job), or None when not asked.

    Boxes not in a sample's json come from the scores beside the decisions: for ``run`` this
    output's scores/, for ``reshard`` the scores/ next to ``--decisions``' decisions/."""
    if not getattr(job, "apply_blur", False):
        return None
    if job.command == "reshard" and job.decision_files:
        root = job.decision_files[0].rsplit("/", 2)[0]
    else:
        root = job.output
    return FaceBlur(root)


class FaceBlur:
    """What the reshard writer calls per sample: ``members(shard, key, members) -> members``.

    Picklable (it travels to reshard workers); the face boxes of one source shard's scores
    file are read once, when its first sample is written, and kept until the next shard.
    """

    def __init__(self, scores_root: str | None, column: str | None = None, quality: int = 95):
        self.scores_root, self.column, self.quality = scores_root, column, quality
        self.score_boxes = ScoreBoxes(scores_root, column)

    def describe(self) -> dict:
        """What meta.json says about the blur."""
        return {"apply_blur": True, "boxes": f"sample json {METADATA_KEY}, else the scores column "
                f"{self.column or '*_bboxes (face_area stage)'}", "jpeg_quality": self.quality,
                "grow": GROW}

    def members(self, shard: str, key: str, members: dict) -> dict:
        boxes = None
        if "json" in members:
            try:
                meta = json.loads(members["json"])
                boxes = meta.get(METADATA_KEY) if isinstance(meta, dict) else None
            except ValueError:
                boxes = None
        if boxes is None:
            boxes = self.score_boxes.get(shard, key)
        if not decode_boxes(boxes):
            return members
        out = dict(members)
        for ext in IMAGE_EXTS:
            if ext in out:
                try:
                    out[ext] = blur_faces(out[ext], boxes, ext, self.quality)
                except Exception:  # noqa: BLE001 - an image that does not decode is written as it is
                    return members
                break
        return out


class ScoreBoxes:
    """The face boxes of a source shard's samples from its scores file, read when the shard's first
    sample is written and kept until the next shard (the writer goes shard by shard). Picklable:
    the cache stays behind when it travels to reshard workers."""

    def __init__(self, scores_root: str | None, column: str | None = None):
        self.scores_root, self.column = scores_root, column
        self._shard: str | None = None
        self._boxes: dict[str, Any] = {}

    def __getstate__(self):
        return {"scores_root": self.scores_root, "column": self.column, "_shard": None, "_boxes": {}}

    def get(self, shard: str, key: str) -> Any:
        if shard != self._shard:
            self._shard, self._boxes = shard, {}
            if self.scores_root:
                self._boxes = read_score_boxes(self.scores_root, shard, self.column)
        return self._boxes.get(key)


def read_score_boxes(scores_root: str, shard: str, column: str | None = None) -> dict[str, Any]:
    """{key: boxes} from the scores file of ``shard`` under ``scores_root`` ({} when there is none)."""
    from beam_filter import fsio, tables
    from beam_filter.layout import OutputLayout

    path = OutputLayout(scores_root).scores(shard)
    if not fsio.exists(path):
        return {}
    names = tables.parquet_metadata(path).schema.to_arrow_schema().names
    col = column or next((n for n in sorted(names) if n.endswith("_bboxes")), None)
    if col is None or col not in names:
        return {}
    table = tables.read_table(path, ["key", col]).to_pydict()
    return dict(zip(table["key"], table[col]))

