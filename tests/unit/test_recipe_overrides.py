"""--set STAGE.PARAM=VALUE: by stage id, through combinators, and by a stage type named once."""

from __future__ import annotations

import pytest

from beam_filter.errors import UserError
from beam_filter.recipe import load_recipe, parse_recipe

TWO_CLIPS = {
    "name": "two_clips",
    "stages": [
        {"clip_b32": {"type": "clip", "model": "ViT-B-32", "threshold": 0.25}},
        {"clip_l14": {"type": "clip", "model": "ViT-L-14", "fraction": 0.3}},
    ],
}


def _stage(recipe, stage_id):
    for s in recipe.stages:
        if s.id == stage_id:
            return s
        for c in getattr(s, "children", []):
            if c.id == stage_id:
                return c
    raise KeyError(stage_id)


def test_stage_type_names_the_single_stage_of_that_type():
    """The README's example works on a preset whose CLIP stage has another id."""
    r = load_recipe("datacomp_b32_th025", ["clip.model=ViT-S-32-alt", "clip.pretrained=/ckpt/s32.pt"])
    clip = _stage(r, "clip_b32")
    assert (clip.p.model, clip.p.pretrained) == ("ViT-S-32-alt", "/ckpt/s32.pt")
    assert clip.p.threshold == 0.25


def test_stage_type_reaches_into_combinators():
    r = load_recipe("open_qwen2vl", ["uid_subset.path=dfn.npy", "mlm.threshold=80"])
    assert _stage(r, "dfn").p.path == "dfn.npy"
    assert _stage(r, "mlm").p.threshold == 80


def test_id_paths_still_work_and_win_over_types():
    r = load_recipe("open_qwen2vl", ["dfn_or_mlm.dfn.path=a.npy", "dfn_or_mlm.mlm.threshold=70"])
    assert _stage(r, "dfn").p.path == "a.npy"
    assert _stage(r, "mlm").p.threshold == 70
    # a stage whose id is another stage's type: the id is meant
    raw = {"name": "x", "stages": [{"clip": {"type": "clip", "threshold": 0.2}},
                                   {"other": {"type": "clip", "threshold": 0.3}}]}
    r = parse_recipe(raw, overrides=["clip.threshold=0.5"])
    assert _stage(r, "clip").p.threshold == 0.5 and _stage(r, "other").p.threshold == 0.3


def test_two_stages_of_a_type_must_be_named_by_id():
    with pytest.raises(UserError, match=r"2 stages of type 'clip' \(clip_b32, clip_l14\); name one by its id"):
        parse_recipe(TWO_CLIPS, overrides=["clip.model=ViT-S-32"])
    r = parse_recipe(TWO_CLIPS, overrides=["clip_l14.fraction=0.2"])
    assert _stage(r, "clip_l14").p.fraction == 0.2 and _stage(r, "clip_b32").p.threshold == 0.25


def test_unknown_stage_name_lists_the_ids():
    with pytest.raises(UserError, match=r"no stage 'nostage' in the recipe \(stages: clip_b32\)"):
        load_recipe("datacomp_b32_th025", ["nostage.x=1"])
