"""Face area: how much of an image faces cover, from normalised boxes (pure, no model).

"The Devil is in the Details" (2309.15954) drops images where faces cover a large
area (portraits and crowds say little about the caption and raise privacy risk).
Boxes are DataComp's metadata ``face_bboxes`` format, the one img2dataset's blurrer
reads: ``[x0, y0, x1, y1]`` per face, each coordinate a fraction of the image's
width (x) or height (y). The face detector (models/faces.py) writes its boxes in the
same format, so one function serves the metadata and the shards.

* **largest** -- the area of the largest single box, as a fraction of the image;
* **total**   -- the area of the *union* of the boxes (overlapping detections of one
  face are not counted twice), so it stays in [0, 1].

Boxes are clipped to the image first; a box with no area (x1 <= x0 or y1 <= y0) or
with a non-finite coordinate counts as nothing.
"""

from __future__ import annotations

import json
import math
from typing import Iterable, Sequence

FACE_AREA_REASON = "face_area_above_max"


def clean_boxes(boxes: Iterable[Sequence[float]] | None) -> list[tuple[float, float, float, float]]:
    """Boxes clipped to [0, 1], without empty or malformed ones."""
    out = []
    for box in boxes if boxes is not None else ():
        try:
            x0, y0, x1, y1 = (float(v) for v in box)
        except (TypeError, ValueError):
            continue
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            continue
        x0, x1 = max(0.0, min(1.0, x0)), max(0.0, min(1.0, x1))
        y0, y1 = max(0.0, min(1.0, y0)), max(0.0, min(1.0, y1))
        if x1 > x0 and y1 > y0:
            out.append((x0, y0, x1, y1))
    return out


def largest_face_fraction(boxes) -> float:
    """Area of the largest box, as a fraction of the image (0.0 without faces)."""
    return max(((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in clean_boxes(boxes)), default=0.0)


def total_face_fraction(boxes) -> float:
    """Area of the union of the boxes, as a fraction of the image (0.0 without faces).

    Exact: the plane is cut at every box edge and each cell covered by some box is
    added once (n faces -> at most (2n)^2 cells; images hold a handful).
    """
    cleaned = clean_boxes(boxes)
    if not cleaned:
        return 0.0
    xs = sorted({v for b in cleaned for v in (b[0], b[2])})
    ys = sorted({v for b in cleaned for v in (b[1], b[3])})
    area = 0.0
    for i in range(len(xs) - 1):
        cx = (xs[i] + xs[i + 1]) / 2
        cols = [b for b in cleaned if b[0] <= cx <= b[2]]
        if not cols:
            continue
        for j in range(len(ys) - 1):
            cy = (ys[j] + ys[j + 1]) / 2
            if any(b[1] <= cy <= b[3] for b in cols):
                area += (xs[i + 1] - xs[i]) * (ys[j + 1] - ys[j])
    return min(1.0, area)


def face_fractions(boxes) -> tuple[float, float, int]:
    """(largest, total, number of faces) of ``boxes``."""
    return largest_face_fraction(boxes), total_face_fraction(boxes), len(clean_boxes(boxes))


def face_area_reason(largest: float | None, total: float | None, max_largest: float | None,
                     max_total: float | None) -> str | None:
    """Drop when the largest face or all faces together cover MORE than the bound (None: unchecked)."""
    if max_largest is not None and largest is not None and largest > max_largest:
        return FACE_AREA_REASON
    if max_total is not None and total is not None and total > max_total:
        return FACE_AREA_REASON
    return None


def encode_boxes(boxes) -> str:
    """Boxes as a compact JSON string column (``"[]"`` for none): one parquet type in every shard,
    and not a 1-D array (which the pipeline would take for an embedding)."""
    return json.dumps([[round(v, 6) for v in b] for b in clean_boxes(boxes)], separators=(",", ":"))


def decode_boxes(value) -> list[tuple[float, float, float, float]]:
    """Boxes from :func:`encode_boxes` text, a DataComp ``face_bboxes`` list, or None."""
    if value is None:
        return []
    if isinstance(value, (bytes, str)):
        try:
            value = json.loads(value or "[]")
        except ValueError:
            return []
    try:
        return clean_boxes(list(value))
    except TypeError:
        return []
