"""First-reason-wins bookkeeping (selection.py) and the any_of / all_of combinators, without Beam."""

from __future__ import annotations

import yaml

from beam_filter import records as R
from beam_filter.recipe import parse_recipe
from beam_filter.records import Verdict
from beam_filter.selection import (FAILED_STAGES, apply_stage, apply_verdict, decide_locally,
                                   finish_decision, start_decision)


def _stages(text: str):
    return parse_recipe(yaml.safe_load(text), source="test").stages


def _row(caption="a small brown dog runs on the beach", width=640, height=480, **extra):
    return {R.UID: "0" * 32, R.SHARD: "s.tar", R.KEY: "k", R.CAPTION: caption, R.WIDTH: width,
            R.HEIGHT: height, R.READ_ERROR: None, **extra}


RULES = """
stages:
  - words: {type: caption_length, min_words: 5}
  - size: {type: image_size, min_side: 300}
  - chars: {type: caption_length, max_chars: 20}
"""


def test_first_reason_wins_and_every_failed_stage_is_listed():
    row = decide_locally(_row(caption="tiny dog", width=100), _stages(RULES))
    assert row[R.KEPT] is False and row[R.COPIES] == 0
    assert row[R.STAGE] == "words" and row[R.REASON] == "caption_too_short"
    assert row[FAILED_STAGES] == ["words", "size"]       # evaluated after the first drop, for overlaps


def test_a_row_passing_every_stage_is_kept_once():
    row = decide_locally(_row(caption="a dog on the beach"), _stages(RULES.replace("max_chars: 20",
                                                                                  "max_chars: 200")))
    assert row[R.KEPT] is True and row[R.COPIES] == 1 and row[R.REASON] is None and row[FAILED_STAGES] == []


def test_a_read_error_is_the_reason_and_no_stage_overrides_it():
    row = decide_locally(_row(caption="tiny", **{R.READ_ERROR: "corrupt_image"}), _stages(RULES))
    assert (row[R.REASON], row[R.STAGE], row[FAILED_STAGES]) == ("corrupt_image", "read", ["read"])


def test_all_of_drops_on_the_first_failing_child_and_any_of_keeps_on_one_passing_child():
    all_of = _stages("stages:\n  - all_of:\n      stages: [ {caption_length: {min_words: 5}}, "
                     "{image_size: {min_side: 300}} ]\n")
    any_of = _stages("stages:\n  - any_of:\n      stages: [ {caption_length: {min_words: 5}}, "
                     "{image_size: {min_side: 300}} ]\n")
    short_big, short_small = _row(caption="tiny dog"), _row(caption="tiny dog", width=100)
    assert decide_locally(dict(short_big), all_of)[R.REASON] == "caption_too_short"
    assert decide_locally(dict(_row(width=100)), all_of)[R.REASON] == "image_too_small"
    assert decide_locally(dict(short_big), any_of)[R.KEPT] is True
    row = decide_locally(dict(short_small), any_of)
    assert row[R.REASON] == "none_of:caption_too_short|image_too_small" and row[R.STAGE] == "any_of"


def test_verdicts_apply_only_to_rows_still_alive():
    dead = start_decision(_row())
    dead[R.REASON], dead[R.STAGE] = "caption_too_short", "words"
    apply_verdict("dedup", dead, Verdict("exact_duplicate_of:x"))
    assert dead[R.REASON] == "caption_too_short"
    alive = start_decision(_row())
    apply_verdict("dedup", alive, Verdict("exact_duplicate_of:x"))
    assert (alive[R.REASON], alive[R.STAGE], alive[FAILED_STAGES]) == ("exact_duplicate_of:x", "dedup", ["dedup"])


def test_copies_from_a_verdict_and_zero_copies_is_a_drop():
    up = finish_decision(apply_verdict("dup", start_decision(_row()), Verdict(None, 3)))
    assert up[R.KEPT] is True and up[R.COPIES] == 3
    gone = finish_decision(apply_verdict("bal", start_decision(_row()), Verdict(None, 0)))
    assert gone[R.KEPT] is False and gone[R.REASON] == "bal_not_sampled"


def test_apply_stage_keeps_the_first_reason_of_an_earlier_drop():
    stages = _stages(RULES)
    row = start_decision(_row(caption="tiny dog", width=100))
    for s in stages:
        apply_stage(s, row)
    assert row[R.STAGE] == "words"


def test_which_recipes_select_runs_inside_each_part():
    from beam_filter.recipe import load_recipe
    from beam_filter.selection import is_partwise

    image = ["image_based.centroids=c.npy", "image_based.targets=t.npy"]
    partwise = {"datacomp_basic": [], "datacomp_b32_th025": [], "image_based": image, "quickstart": []}
    for name, sets in partwise.items():
        stages = load_recipe(name, sets).stages
        assert all(is_partwise(s) for s in stages) == (name != "quickstart"), name   # quickstart: exact dedup
    for name in ("datacomp_clip_l14_30pct", "semdedup", "near_dedup"):          # a top fraction, groups
        assert not all(is_partwise(s) for s in load_recipe(name).stages), name
