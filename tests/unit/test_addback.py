"""The add-back construct (addback.py): recipe section, decisions, report counts."""

from __future__ import annotations

from collections import Counter

import pytest
import yaml

from beam_filter import records as R
from beam_filter.addback import REASON_PREFIX, is_added_back
from beam_filter.errors import UserError
from beam_filter.finalize import funnel
from beam_filter.recipe import AddBackSection, parse_recipe
from beam_filter.selection import decide_locally, decide_rows, is_local

RECIPE = """
stages:
  - caption_length: {min_words: 4}
  - image_size: {min_side: 100}
add_back:
  - digits: {type: has_digits, min_digits: 2}
  - short: {type: caption_length, max_chars: 3}
"""


def _row(key, caption, w=200, h=200, ocr="", err=None):
    return {R.UID: f"{key:032x}", R.SHARD: "s.tar", R.KEY: str(key), R.CAPTION: caption, R.WIDTH: w,
            R.HEIGHT: h, "ocr_text": ocr, R.READ_ERROR: err}


def test_section_is_last_and_round_trips():
    r = parse_recipe(yaml.safe_load(RECIPE))
    assert isinstance(r.stages[-1], AddBackSection) and [c.id for c in r.stages[-1].children] == ["digits", "short"]
    assert [s.id for s in r.leaf_stages()] == ["caption_length", "image_size", "digits", "short"]
    assert is_local(r.stages[-1])
    again = parse_recipe(yaml.safe_load(r.text))
    assert again.text == r.text and again.hash == r.hash
    plain = parse_recipe({"stages": [{"caption_length": {"min_words": 4}}, {"image_size": {"min_side": 100}}]})
    assert plain.hash != r.hash and "add_back" not in plain.text
    over = parse_recipe(yaml.safe_load(RECIPE), overrides=["add_back.digits.min_digits=3", "add_back.short.max_chars=1"])
    assert over.stages[-1].children[0].p.min_digits == 3 and over.stages[-1].children[1].p.max_chars == 1


@pytest.mark.parametrize("bad,match", [
    ("add_back: []", "non-empty list"),
    ("add_back: [{exact_dedup: {}}]", "grouping stage"),
    ("add_back: [{clip: {fraction: 0.5}}]", "top fraction"),
    ("add_back: [{caption_length: {}}]", "used twice"),
])
def test_bad_sections_are_one_line_errors(bad, match):
    with pytest.raises(UserError, match=match):
        parse_recipe(yaml.safe_load("stages: [{caption_length: {min_words: 4}}]\n" + bad))


def test_dropped_rows_chosen_by_a_section_stage_are_kept_with_their_reason():
    r = parse_recipe(yaml.safe_load(RECIPE))
    rows = [_row(0, "four words are here"),                     # kept by the main stages
            _row(1, "too short", ocr="price 12"),               # dropped, 2 digits: added by digits
            _row(2, "too short", ocr="7"),                      # dropped, one digit only: stays dropped
            _row(3, "abc"),                                     # dropped, caption <= 3 chars: added by short
            _row(4, "four words are here", w=50, ocr="2024"),   # dropped by image_size, added by digits
            _row(5, "x", ocr="99", err="corrupt_image")]        # unreadable: never added back
    out = [decide_locally(dict(x), r.stages) for x in rows]
    assert [(o[R.KEPT], o[R.REASON], o[R.STAGE], o[R.COPIES]) for o in out] == [
        (True, None, None, 1),
        (True, REASON_PREFIX + "digits", "caption_length", 1),
        (False, "caption_too_short", "caption_length", 0),
        (True, REASON_PREFIX + "short", "caption_length", 1),
        (True, REASON_PREFIX + "digits", "image_size", 1),
        (False, "corrupt_image", "read", 0)]
    assert [o[R.REASON] for o in decide_rows([dict(x) for x in rows], r.stages)] == [o[R.REASON] for o in out]
    assert is_added_back(out[1][R.REASON]) and not is_added_back("caption_too_short")
    # the funnel counts an added-back row dropped at its stage and added at add_back
    counts = Counter({"added_back:digits": 2, "added_back:short": 1})
    by_stage = Counter({"read": 1, "caption_length": 3, "image_size": 1})
    steps = funnel([(s.id, s.name) for s in r.stages], 6, by_stage, counts)
    assert steps[-1] == {"stage": "add_back", "type": "add_back", "in": 1, "dropped": 0, "added": 3, "out": 4}
    assert steps[-1]["out"] == sum(o[R.KEPT] for o in out)
