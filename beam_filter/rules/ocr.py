"""Pure OCR rules: text-box storage, area fraction, recogniser confirmation, masking, caption-vs-OCR.

Used by the ``text_detect`` stage (T-MARS, Maini et al. 2023), the CLIP stage's masked
view and the "OCR and naive English filtering" rules; no Beam, no model here.

* **Boxes** are polygons in the pixel frame of the decoded image as stored in the shard
  (not the json ``original_width``: img2dataset resized those). They are stored compactly as
  one string, ``"x,y,x,y,x,y,x,y;x,y,..."`` (integer vertices, polygons separated by ``;``,
  ``""`` for none): a string column has one parquet type in every shard, and a 1-D numpy
  array would be taken for an embedding (registry.py).
* **Area fraction** is the area of the *union* of the polygons (rasterised with Pillow's
  polygon fill, the same pixels the mask fills) over ``width * height``, so overlapping
  boxes are not counted twice and the value stays in [0, 1].
* **Confirmation**: a detected box counts only when the recogniser reads at least
  ``min_chars`` letters/digits in it with confidence >= ``min_score``. On elongated text-free shapes PP-OCR's detector alone
  fires (4 of 10 text-free images in the issue's measurement); the recogniser does not read
  those as text with confidence.
* **Fill**: T-MARS' authors fill text regions with the mean colour before CLIP scoring
  (locuslab/T-MARS issue #4); where the mean is taken is not in their code, so it is a rule:
  ``polygon_mean`` (each polygon filled with the mean of its own pixels, the default) or
  ``box_mean`` (each axis-aligned bounding box filled with its own mean, as a third-party
  port does).
* **Caption vs OCR**: the share of the caption's words that the OCR read in the image; a
  caption that is "mostly the OCR'd text" reaches a threshold (DataComp leaderboard's "OCR
  and naive English filtering" family).
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np

FILLS = ("polygon_mean", "box_mean")
TEXT_AREA_REASON = "text_area_above_max"
CAPTION_IS_OCR_REASON = "caption_mostly_ocr_text"
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


# ---------------------------------------------------------------- storage

def encode_boxes(polygons: Iterable[Sequence]) -> str:
    """Polygons (each (k, 2) x/y vertices) -> ``"x,y,...;x,y,..."`` with integer vertices."""
    parts = []
    for poly in polygons:
        pts = np.rint(np.asarray(poly, dtype=np.float64).reshape(-1, 2)).astype(np.int64)
        if len(pts) >= 3:
            parts.append(",".join(str(int(v)) for v in pts.ravel()))
    return ";".join(parts)


def decode_boxes(text: str | None) -> list[np.ndarray]:
    """``encode_boxes`` back to a list of (k, 2) int64 arrays; ``""``/None -> []."""
    if not text:
        return []
    out = []
    for part in str(text).split(";"):
        vals = [int(v) for v in part.split(",") if v.strip()]
        if len(vals) < 6 or len(vals) % 2:
            raise ValueError(f"malformed text box {part!r}: need an even number (>= 6) of integers")
        out.append(np.asarray(vals, dtype=np.int64).reshape(-1, 2))
    return out


# ---------------------------------------------------------------- geometry

def region_mask(polygons: Sequence, width: int, height: int) -> np.ndarray:
    """(height, width) bool mask of the union of ``polygons`` (Pillow's polygon fill, outline included)."""
    from PIL import Image, ImageDraw

    mask = Image.new("1", (int(width), int(height)), 0)
    draw = ImageDraw.Draw(mask)
    for poly in polygons:
        pts = [(float(x), float(y)) for x, y in np.asarray(poly).reshape(-1, 2)]
        if len(pts) >= 3:
            draw.polygon(pts, fill=1, outline=1)
    return np.asarray(mask, dtype=bool)


def area_fraction(polygons: Sequence, width: int, height: int) -> float:
    """Share of the image (0..1) covered by the union of ``polygons``."""
    if not polygons or width <= 0 or height <= 0:
        return 0.0
    return float(region_mask(polygons, width, height).mean())


def polygon_area(poly) -> float:
    """Shoelace area of one polygon, in pixels squared."""
    p = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    x, y = p[:, 0], p[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


# ---------------------------------------------------------------- recogniser confirmation

def confirmed(texts: Sequence[str], scores: Sequence[float], min_score: float,
              min_chars: int = 2) -> list[bool]:
    """Per box: the recogniser read at least ``min_chars`` letters/digits with confidence >= ``min_score``.

    ``min_chars``: a single stroke-like character is what the recogniser reads in a bar or
    stripe (PP-OCR reads a horizontal bar as "一"/"二"/"三", often with confidence > 0.9), so
    one character alone does not confirm a box by default.
    """
    return [sum(ch.isalnum() for ch in (t or "")) >= min_chars and float(s) >= min_score
            for t, s in zip(texts, scores)]


def join_ocr_text(texts: Iterable[str]) -> str:
    """Recognised texts joined with single spaces (inner whitespace collapsed), ``""`` when none."""
    return " ".join(" ".join(t.split()) for t in texts if t and t.strip())


# ---------------------------------------------------------------- masking

def fill_regions(rgb: np.ndarray, polygons: Sequence, fill: str = "polygon_mean") -> np.ndarray:
    """A copy of ``rgb`` (H, W, 3 uint8) with each region filled by its mean colour.

    Means are taken on the unmasked image (rounded to the nearest integer), so the
    order of overlapping boxes only decides which of two means their overlap gets:
    the later box's.
    """
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}: use one of {', '.join(FILLS)}")
    src = np.asarray(rgb)
    out = src.copy()
    h, w = src.shape[:2]
    for poly in polygons:
        pts = np.asarray(poly).reshape(-1, 2)
        if fill == "box_mean":
            x0, y0 = max(int(pts[:, 0].min()), 0), max(int(pts[:, 1].min()), 0)
            x1, y1 = min(int(pts[:, 0].max()), w - 1), min(int(pts[:, 1].max()), h - 1)
            if x1 < x0 or y1 < y0:
                continue
            region = src[y0:y1 + 1, x0:x1 + 1].reshape(-1, src.shape[2])
            out[y0:y1 + 1, x0:x1 + 1] = np.rint(region.mean(0)).astype(src.dtype)
        else:
            m = region_mask([pts], w, h)
            if m.any():
                out[m] = np.rint(src[m].mean(0)).astype(src.dtype)
    return out


# ---------------------------------------------------------------- rules

def words(text: str | None) -> list[str]:
    """Lower-cased letter/digit runs: what caption and OCR text are compared on."""
    return _WORD.findall(text.lower()) if text else []


def caption_ocr_overlap(caption: str | None, ocr_text: str | None) -> float:
    """Share (0..1) of the caption's words that the OCR read in the image; 0 without caption words."""
    cap = words(caption)
    if not cap:
        return 0.0
    seen = set(words(ocr_text))
    return sum(1 for w in cap if w in seen) / len(cap)


def text_area_reason(fraction, max_fraction: float) -> str | None:
    """Drop when text covers more than ``max_fraction`` of the image."""
    if fraction is None or (isinstance(fraction, float) and np.isnan(fraction)):
        return None
    return TEXT_AREA_REASON if float(fraction) > max_fraction else None


def caption_is_ocr_reason(caption: str | None, ocr_text: str | None, max_overlap: float,
                          min_ocr_words: int = 1) -> str | None:
    """Drop when at least ``max_overlap`` of the caption's words are OCR'd text of the image
    (and the OCR read at least ``min_ocr_words`` words)."""
    if len(words(ocr_text)) < min_ocr_words:
        return None
    return CAPTION_IS_OCR_REASON if caption_ocr_overlap(caption, ocr_text) >= max_overlap else None
