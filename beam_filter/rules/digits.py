"""Digits in an image, from its OCR text (pure): the add-back selector of "The Devil is in the Details".

The paper adds images containing digits back to the final set (they help digit and
counting tasks that CLIP-score filters starve). Which images contain digits is read
from the recognised text of the OCR stage (``text_detect`` writes ``ocr_text``, ""
when nothing was read): an image "has digits" when that text holds at least
``min_digits`` decimal digits (Unicode category Nd, so "٣" counts as well as "3").
"""

from __future__ import annotations

NO_DIGITS_REASON = "no_digits_in_image"


def digit_count(text) -> int:
    """Number of decimal digits in ``text`` (0 for None)."""
    return sum(ch.isdecimal() for ch in text) if isinstance(text, str) else 0


def digits_reason(ocr_text, min_digits: int = 1) -> str | None:
    """None when the OCR text holds at least ``min_digits`` digits, else why not."""
    return None if digit_count(ocr_text) >= min_digits else NO_DIGITS_REASON
