"""Image-size rules over header dimensions (no pixels needed)."""

from __future__ import annotations

from fractions import Fraction

# How the ends of a width/height interval are treated: "()" open at both ends, "[]" closed,
# "[)" / "(]" half-open. "The Devil is in the Details" keeps w/h in the open (0.33, 3.33).
ASPECT_ENDS = ("()", "[]", "[)", "(]")


def aspect_ratio(width: int | None, height: int | None) -> float | None:
    """max(w, h) / min(w, h); inf for a zero side, None when a side is unknown."""
    if width is None or height is None:
        return None
    lo, hi = min(width, height), max(width, height)
    return float("inf") if lo <= 0 else hi / lo


def image_size_reason(width: int | None, height: int | None, min_side: int | None = None,
                      max_side: int | None = None, max_aspect: float | None = None) -> str | None:
    """Why an image fails inclusive size bounds, or None.

    Keep when ``min(w, h) >= min_side``, ``max(w, h) <= max_side`` and
    ``max/min <= max_aspect`` (``None`` bounds are not checked). An unknown or
    zero size fails every bound that is set, as ``image_too_small``: a row
    whose size nobody could read cannot be shown to pass a size rule.
    """
    if min_side is None and max_side is None and max_aspect is None:
        return None
    if width is None or height is None or min(width, height) <= 0:
        return "image_too_small"
    if min_side is not None and min(width, height) < min_side:
        return "image_too_small"
    if max_side is not None and max(width, height) > max_side:
        return "image_too_large"
    if max_aspect is not None and max(width, height) / min(width, height) > max_aspect:
        return "aspect_ratio_too_extreme"
    return None


def image_size_reasons(width, height, min_side: int | None = None, max_side: int | None = None,
                       max_aspect: float | None = None):
    """:func:`image_size_reason` over whole columns (columnar select): ``width``/``height`` float64
    arrays of whole numbers with NaN for a missing side; an object array of reasons."""
    import numpy as np

    out = np.full(len(width), None, dtype=object)
    if min_side is None and max_side is None and max_aspect is None:
        return out
    with np.errstate(invalid="ignore", divide="ignore"):
        lo, hi = np.fmin(width, height), np.fmax(width, height)
        undecided = ~(np.isnan(width) | np.isnan(height) | (lo <= 0))
        out[~undecided] = "image_too_small"
        rules = []
        if min_side is not None:
            rules.append((lo < min_side, "image_too_small"))
        if max_side is not None:
            rules.append((hi > max_side, "image_too_large"))
        if max_aspect is not None:
            rules.append((hi / lo > max_aspect, "aspect_ratio_too_extreme"))
        for fails, why in rules:       # the first failing bound names the reason, as above
            hit = undecided & fails
            out[hit] = why
            undecided &= ~hit
    return out


def _exact(bound: float) -> Fraction:
    """A bound as the decimal the user wrote (0.33 is 33/100, not the nearest binary float)."""
    return Fraction(repr(float(bound)))


def width_height_reason(width: int | None, height: int | None, min_ratio: float | None = None,
                        max_ratio: float | None = None, ends: str = "[]") -> str | None:
    """Why ``width / height`` falls outside ``[min_ratio, max_ratio]`` with the given ``ends``, or None.

    Unlike ``max_aspect`` (``max/min``, symmetric), the lower bound speaks of tall images and
    the upper of wide ones, and each end can be open or closed: Devil's (0.33, 3.33) keeps a
    333 x 100 image but drops 100 x 303 (h/w = 3.03 > 1/0.33). The comparison is exact in
    rational arithmetic on the bounds as written (``Fraction("0.33")``), so an image sitting
    exactly on a bound is decided by ``ends`` alone, never by float rounding. A missing or
    zero side fails (``image_too_small``), as in :func:`image_size_reason`.
    """
    if min_ratio is None and max_ratio is None:
        return None
    if ends not in ASPECT_ENDS:
        raise ValueError(f"ends must be one of {ASPECT_ENDS}, not {ends!r}")
    if width is None or height is None or min(width, height) <= 0:
        return "image_too_small"
    ratio = Fraction(int(width), int(height))
    if min_ratio is not None:
        lo = _exact(min_ratio)
        if ratio < lo or (ends[0] == "(" and ratio == lo):
            return "aspect_ratio_too_extreme"
    if max_ratio is not None:
        hi = _exact(max_ratio)
        if ratio > hi or (ends[1] == ")" and ratio == hi):
            return "aspect_ratio_too_extreme"
    return None
