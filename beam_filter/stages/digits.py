"""The ``has_digits`` rule: keep images whose OCR text holds digits (rules/digits.py).

Used as the add-back selector of ``devil_details`` (``add_back: [has_digits]``: dropped
images with digits are kept again), it can also filter on its own. It reads the
recognised text another stage wrote (``text_detect``'s ``ocr_text`` by default) and
computes nothing in the score phase.
"""

from __future__ import annotations

from typing import Any

from beam_filter.columns import need
from beam_filter.registry import Param, RuleStage, register
from beam_filter.rules.digits import digits_reason

OCR_TEXT = "ocr_text"


@register
class HasDigits(RuleStage):
    """Keep rows whose OCR text has at least ``min_digits`` digits."""

    name = "has_digits"
    description = "keep images whose recognised text (OCR) holds digits; the Devil's add-back selector"
    params = {
        "column": Param(str, OCR_TEXT, "the recognised-text column (text_detect writes ocr_text)"),
        "min_digits": Param(int, 1, "digits needed", check=lambda v: v >= 1, check_msg="must be >= 1"),
    }

    def needs(self):
        return (need(self.p.column, what="the recognised text of the image (run text_detect first)"),)

    def reason(self, row: dict, info: Any = None) -> str | None:
        return digits_reason(row.get(self.p.column), self.p.min_digits)
