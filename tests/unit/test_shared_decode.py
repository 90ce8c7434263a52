"""One image decode shared by consecutive model stages (models/shared_decode.py, image_prep's
DecodeSpec/views): which stages group, which decode serves them, and the pixels each gets."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from beam_filter import records as R
from beam_filter.models import image_prep
from beam_filter.models.image_prep import (CpuImagePrep, DecodeSpec, PrepConfig, decode, decode_for,
                                           merge_specs)
from beam_filter.models.shared_decode import DecodeGroup, plan
from beam_filter.registry import build_stage
from beam_filter.shard_work import FEATURE_ERROR, merge_model_output

CLIP_CFG = PrepConfig(224, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28))
BLIP_CFG = PrepConfig(384, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28), "bicubic", "squash")


def _photo(w: int, h: int, seed: int = 0, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, w)[None, :, None]
    arr = (rng.random(3) * 255 * (1 - t) + rng.random(3) * 255 * t) * np.ones((h, 1, 1))
    arr += rng.normal(0, 20, (h, w, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


# ---- which decode serves a group ---------------------------------------------------------------

def test_merged_spec_is_full_size_when_any_member_needs_it_else_the_largest_draft():
    assert merge_specs([DecodeSpec(224), DecodeSpec(None)]) == DecodeSpec(None)
    assert merge_specs([DecodeSpec(224), DecodeSpec(384), DecodeSpec(64)]) == DecodeSpec(384)
    assert merge_specs([]) == DecodeSpec(None)
    assert CpuImagePrep(CLIP_CFG, draft=True).decode_spec() == DecodeSpec(224)
    assert CpuImagePrep(BLIP_CFG, draft=False).decode_spec() == DecodeSpec(None)


def test_draft_decode_at_the_larger_size_serves_both_sizes():
    """libjpeg's DCT scaling keeps both sides >= the target: a decode for 384 is also >= 224, and
    it is the decode a 384-px model would do alone."""
    data = _photo(1600, 1200)
    big = decode_for(data, DecodeSpec(384))
    small = decode_for(data, DecodeSpec(224))
    assert min(big.size) >= 384 and min(small.size) >= 224 and big.size[0] > small.size[0]
    assert np.array_equal(np.asarray(big), np.asarray(decode(data, PrepConfig(384, (0,) * 3, (1,) * 3), True)))
    full = decode_for(data, DecodeSpec(None))
    assert full.size == (1600, 1200)


def test_decodes_are_counted_once_per_call():
    data = _photo(120, 90)
    before = image_prep.DECODES.value
    decode_for(data, DecodeSpec(None))
    CpuImagePrep(CLIP_CFG, draft=False, threads=1).prepare([data, data])
    assert image_prep.DECODES.value - before == 3


# ---- each member's pixels from a decode another caller made --------------------------------------

@pytest.mark.parametrize("cfg,draft", [(CLIP_CFG, False), (BLIP_CFG, False), (CLIP_CFG, True)])
def test_views_of_a_shared_decode_equal_the_members_own_preparation(cfg, draft):
    """From a decode like the member's own, its views are bit-identical to ``prepare`` (odd
    widths, so the mirrored crop is not a plain flip; a palette PNG; a grey JPEG)."""
    images = [_photo(301, 200, 1), _photo(200, 455, 2), _photo(1000, 751, 3),
              _photo(97, 131, 4, "PNG", "P"), _photo(150, 150, 5, "JPEG", "L")]
    prep = CpuImagePrep(cfg, draft=draft, threads=1)
    want = prep.prepare(images + [b"junk"])
    views, errors = [], []
    for data in images:
        views.append(prep.views(decode_for(data, prep.decode_spec())))
        errors.append(None)
    got = prep.batch_from_views(views + [None], errors + ["corrupt_image"])
    assert np.array_equal(got.pixels, want.pixels)
    assert got.errors == want.errors == [None] * 5 + ["corrupt_image"]
    assert sorted(got.mirrors) == sorted(want.mirrors) and got.mirrors     # some are not plain flips
    for i in want.mirrors:
        assert np.array_equal(got.mirrors[i], want.mirrors[i])


def test_clip_crop_from_a_blip_sized_draft_is_close_to_its_own_draft():
    """A draft CLIP beside a member that needs more gets the pixels of the larger decode: close to,
    not equal to, its own smaller draft (the measured score difference is in docs/devil_details.md)."""
    data = _photo(1800, 1350, 7)
    prep = CpuImagePrep(CLIP_CFG, draft=True, threads=1)
    own = prep.prepare([data]).pixels[0].astype(np.float64)
    shared = prep.views(decode_for(data, DecodeSpec(384)))[0].astype(np.float64)
    full = prep.views(decode_for(data, DecodeSpec(None)))[0].astype(np.float64)
    assert not np.array_equal(own, shared)
    assert np.abs(own - shared).mean() < 4 and np.abs(full - shared).mean() < 4


# ---- which stages share ---------------------------------------------------------------------------

def _clip(**kw):
    return build_stage(kw.pop("id", "clip"), "clip", kw)


def _blip(**kw):
    return build_stage(kw.pop("id", "blip_itm"), "blip_itm", kw)


def test_plan_groups_runs_of_two_or_more_sharing_stages_in_order():
    clip, blip = _clip(), _blip()
    faces = build_stage("face_area", "face_area", {})
    text = build_stage("text_detect", "text_detect", {})
    groups = plan([clip, blip])
    assert len(groups) == 1 and isinstance(groups[0], DecodeGroup)
    assert groups[0].stages == [clip, blip] and groups[0].id == "clip+blip_itm"
    # one image model alone: exactly as before, no group
    assert plan([clip]) == [clip] and plan([blip]) == [blip]
    # a stage that does not share splits the run (the masked clip reads text_detect's boxes)
    masked = _clip(id="masked_clip", masked=True)
    assert [getattr(u, "id", None) for u in plan([faces, text, masked, clip])] == [
        "face_area+text_detect", "masked_clip", "clip"]
    # a stage reading a column a member makes starts a new run
    gen = build_stage("clip_generated", "clip_generated", {"captions": "blip_itm_score"})
    assert [getattr(u, "id", None) for u in plan([clip, blip, gen])] == ["clip+blip_itm", "clip_generated"]
    devil = plan([faces, text, clip, blip])         # devil_details' order: one decode for four models
    assert len(devil) == 1 and devil[0].id == "face_area+text_detect+clip+blip_itm"


def test_masked_or_gpu_decoding_clip_does_not_share():
    blip = _blip()
    masked = _clip(masked=True)
    gpu = _clip(decode="gpu")
    assert not masked.shares_decode() and not gpu.shares_decode()
    assert plan([masked, blip]) == [masked, blip] and plan([gpu, blip]) == [gpu, blip]
    assert _clip(draft=True).shares_decode() and blip.shares_decode()


# ---- reasons are those of separate stages ----------------------------------------------------------

def _sample(image=b"x", caption="a cat") -> R.Sample:
    return R.Sample(shard="s.tar", key="0001", uid="0" * 32, image=image, caption=caption)


def _fail(stage, sample):
    sample.error = f"{FEATURE_ERROR}:{stage.id}"
    return sample


def _clip_out(score=0.25):
    return {"image_embedding": np.ones(4, np.float32), "text_embedding": np.ones(4, np.float32),
            "score": score, "flipped_score": score, "error": None}


def test_first_member_error_is_the_reason_and_later_members_are_not_merged():
    group = DecodeGroup([_clip(), _blip()])
    s = _sample()
    element = group.model_input(s)
    assert element[0] is s.image and element[2] == -1
    group.merge_group_output(s, ([{**_clip_out(float("nan")), "error": "corrupt_image"},
                                  {"score": float("nan"), "error": "corrupt_image"}], -1),
                             merge_model_output, _fail)
    assert s.error == "corrupt_image" and "blip_itm_score" not in s.features
    ok = _sample()
    group.merge_group_output(ok, ([_clip_out(0.3), {"score": 0.9, "error": None}], -1), merge_model_output, _fail)
    assert ok.error is None and ok.features["clip_score"] == 0.3 and ok.features["blip_itm_score"] == 0.9


def test_a_member_whose_input_fails_gets_feature_error_after_the_members_before_it():
    boom = _blip(id="second")
    boom.model_input = lambda sample: (sample.image, sample.caption.upper())   # caption None: raises
    group = DecodeGroup([_clip(), boom])
    s = _sample(caption=None)
    element = group.model_input(s)
    assert element[2] == 1 and element[1][1] is None and element[1][0] is not None
    group.merge_group_output(s, ([_clip_out(), None], element[2]), merge_model_output, _fail)
    assert s.error == "feature_error:second" and s.features["clip_score"] == 0.25
    # ... unless the member before it already dropped the sample
    t = _sample(caption=None)
    group.merge_group_output(t, ([{**_clip_out(), "error": "image_too_large"}, None], 1), merge_model_output, _fail)
    assert t.error == "image_too_large"
