"""Aspect ratio with separate width/height bounds and open/closed ends (rules/image.py, image_size)."""

from __future__ import annotations

import pytest

from beam_filter.errors import UserError
from beam_filter.recipe import parse_recipe
from beam_filter.rules.image import width_height_reason

BAD = "aspect_ratio_too_extreme"


@pytest.mark.parametrize("ends,low_edge,high_edge", [("()", BAD, BAD), ("[]", None, None),
                                                      ("[)", None, BAD), ("(]", BAD, None)])
def test_ends_decide_rows_exactly_on_the_bounds(ends, low_edge, high_edge):
    # 33 x 100 is exactly 0.33 and 333 x 100 exactly 3.33: no float rounding may move them
    assert width_height_reason(33, 100, 0.33, 3.33, ends) == low_edge
    assert width_height_reason(333, 100, 0.33, 3.33, ends) == high_edge
    assert width_height_reason(330, 1000, 0.33, 3.33, ends) == low_edge      # same ratio, other sides
    # one pixel inside / outside each bound
    assert width_height_reason(331, 1000, 0.33, 3.33, ends) is None
    assert width_height_reason(329, 1000, 0.33, 3.33, ends) == BAD
    assert width_height_reason(3329, 1000, 0.33, 3.33, ends) is None
    assert width_height_reason(3331, 1000, 0.33, 3.33, ends) == BAD


def test_lower_and_upper_bounds_are_not_symmetric():
    # the case: a tall image with h/w in (3.03, 3.33] passes max_aspect 3.33 but not (0.33, 3.33)
    assert width_height_reason(100, 320, 0.33, 3.33, "()") == BAD          # w/h = 0.3125
    assert width_height_reason(320, 100, 0.33, 3.33, "()") is None         # w/h = 3.2
    assert width_height_reason(100, 320, 0.2, None) is None
    assert width_height_reason(400, 10, None, 50) is None
    assert width_height_reason(501, 10, None, 50) == BAD
    assert width_height_reason(None, 10, 0.33, 3.33) == "image_too_small"
    assert width_height_reason(0, 10, 0.33, 3.33) == "image_too_small"
    assert width_height_reason(None, None) is None                         # no bound: nothing checked
    with pytest.raises(ValueError):
        width_height_reason(1, 1, 0.5, 2, "{}")


def _stage(**params):
    return parse_recipe({"stages": [{"image_size": params}]}).stages[0]


def test_image_size_stage_keeps_max_aspect_and_adds_the_new_bounds():
    old = _stage(max_aspect=3.33)
    assert old.reason({"width": 100, "height": 320}) is None               # symmetric, inclusive
    assert old.reason({"width": 100, "height": 334}) == BAD
    devil = _stage(min_width_height=0.33, max_width_height=3.33, width_height_ends="()")
    rows = [(33, 100), (34, 100), (332, 100), (333, 100), (100, 320), (200, 200)]
    assert [devil.reason({"width": w, "height": h}) for w, h in rows] == [BAD, None, None, BAD, BAD, None]
    both = _stage(min_side=50, min_width_height=0.5)
    assert both.reason({"width": 40, "height": 60}) == "image_too_small"
    assert both.reason({"width": 60, "height": 130}) == BAD
    with pytest.raises(UserError, match="width_height_ends"):
        _stage(width_height_ends="(")
