"""clip + blip_itm on one decode per image (models/shared_decode.py), with the tiny twins of
``make-test-models``: the local by-shard path (shard_work.apply_models) and the RunInference graph
(transforms/score.RunModelStages) give the scores of separate stages, and decode each image once
(counted by image_prep.DECODES, the decoder's own counter)."""

from __future__ import annotations

import copy
import io
import os

import apache_beam as beam
import numpy as np
import pytest
from PIL import Image

from beam_filter import records as R
from beam_filter import shard_work
from beam_filter.models import image_prep
from beam_filter.models.shared_decode import DecodeGroup
from beam_filter.registry import build_stage

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _image(i: int) -> bytes:
    """Photo-like images of many sizes (several large enough for JPEG draft at the tiny CLIP's
    64 px), a PNG and a grey JPEG."""
    rng = np.random.default_rng(i)
    w, h = [(300, 200), (201, 333), (90, 64), (640, 480), (1000, 701), (64, 300), (250, 250), (513, 129)][i % 8]
    t = np.linspace(0, 1, w)[None, :, None]
    arr = (rng.random(3) * 255 * (1 - t) + rng.random(3) * 255 * t) * np.ones((h, 1, 1))
    arr = np.clip(arr + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    buf = io.BytesIO()
    if i % 11 == 5:
        img.save(buf, "PNG")
    elif i % 13 == 7:
        img.convert("L").save(buf, "JPEG", quality=85)
    else:
        img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


CAPTIONS = ["a red car", "two dogs on a beach", "", "a city at night with many lights " * 6, "text", None]


def _samples(n: int = 23) -> list[R.Sample]:
    out = [R.Sample(shard="s.tar", key=f"{i:04d}", uid=f"{i:032x}", image=_image(i), caption=CAPTIONS[i % 6])
           for i in range(n)]
    out[3].image = b"\xff\xd8\xff not really a jpeg"          # corrupt_image, first member's reason
    out[9].image = out[9].image[: len(out[9].image) // 3]      # truncated JPEG
    out[12].error = "missing_image"                             # unusable before the models
    return out


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from beam_filter.stages.blip_itm import BlipItmStage
    from beam_filter.stages.clip import ClipStage

    d = str(tmp_path_factory.mktemp("tiny"))
    ClipStage.write_test_model(d)
    BlipItmStage.write_test_model(d)
    return d


def _stages(d: str, clip_draft: bool = False, clip_batch: int = 8, blip_batch: int = 5):
    from beam_filter.stages.blip_itm import BlipItmStage
    from beam_filter.stages.clip import ClipStage

    clip = build_stage("clip", "clip", {**ClipStage.test_model_params(d), "batch_size": clip_batch,
                                        "draft": clip_draft, "filter_on": "flipped_score", "fraction": 0.3})
    blip = build_stage("blip_itm", "blip_itm", {**BlipItmStage.test_model_params(d), "batch_size": blip_batch,
                                                "fraction": 0.8})
    return clip, blip


def _run_local(samples, models, window: int = 8):
    samples = copy.deepcopy(samples)
    before = image_prep.DECODES.value
    for i in range(0, len(samples), window):
        shard_work.apply_models(samples[i:i + window], models)
    return samples, image_prep.DECODES.value - before


def _assert_same(a: list[R.Sample], b: list[R.Sample], atol: float = 0.0):
    for x, y in zip(a, b):
        assert x.error == y.error, (x.key, x.error, y.error)
        assert set(x.features) == set(y.features), x.key
        for k, vx in x.features.items():
            vy = y.features[k]
            if isinstance(vx, np.ndarray) or isinstance(vx, float):
                np.testing.assert_allclose(vx, vy, rtol=0, atol=atol, err_msg=f"{x.key} {k}")
                if atol == 0:
                    assert np.asarray(vx).tobytes() == np.asarray(vy).tobytes(), (x.key, k)
            else:
                assert vx == vy, (x.key, k)


def test_local_group_equals_separate_stages_and_decodes_once(models_dir):
    clip, blip = _stages(models_dir)
    samples = _samples()
    group = shard_work.load_models([clip, blip])
    assert len(group) == 1 and isinstance(group[0].stage, DecodeGroup) and group[0].batch_size() == 8
    separate = shard_work.load_models([clip]) + shard_work.load_models([blip])
    shared, n_shared = _run_local(samples, group)
    alone, n_alone = _run_local(samples, separate)
    _assert_same(shared, alone)                        # byte-identical scores, same reasons
    usable = sum(s.error is None for s in samples)     # 22: one was unusable before the models
    corrupt = sum(s.error in ("corrupt_image", "image_too_large") for s in shared)
    assert corrupt == 2 and shared[3].error == "corrupt_image" and shared[12].error == "missing_image"
    assert n_shared == usable                          # once per image
    assert n_alone == 2 * usable - corrupt             # clip and blip each decoded (blip skips the corrupt)
    ok = [s for s in shared if s.error is None]
    assert ok and all(np.isfinite(s.features["blip_itm_score"]) and "clip_flipped_score" in s.features for s in ok)


def test_graph_runinference_equals_local_by_shard_and_decodes_once(models_dir, tmp_path):
    """RunModelStages puts clip+blip_itm in ONE RunInference step; its rows equal the local path's."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from beam_filter.transforms.score import RunModelStages

    clip, blip = _stages(models_dir)
    samples = _samples()
    local, _ = _run_local(samples, shard_work.load_models([clip, blip]))
    out = str(tmp_path / "rows.npz")

    def save(rows):
        flat = {}
        for r in rows:
            flat[f"{r['key']}|read_error"] = np.asarray(str(r[R.READ_ERROR]))
            for name in ("clip_score", "clip_flipped_score", "clip_image_embedding", "blip_itm_score"):
                if name in r:
                    flat[f"{r['key']}|{name}"] = np.asarray(r[name])
        np.savez(out, **flat)

    before = image_prep.DECODES.value
    with beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([])) as p:
        scored = p | beam.Create(copy.deepcopy(samples), reshuffle=False) | RunModelStages([clip, blip])
        (scored | beam.Map(shard_work.score_row) | beam.combiners.ToList() | beam.Map(save))
    decodes = image_prep.DECODES.value - before
    assert "Infer[clip+blip_itm]" in str(p.to_runner_api())
    got = np.load(out, allow_pickle=False)
    assert decodes == sum(s.error is None for s in samples)
    for s in local:
        assert str(got[f"{s.key}|read_error"]) == str(s.error)
        for name in ("clip_score", "clip_flipped_score", "clip_image_embedding", "blip_itm_score"):
            if name in s.features:
                # RunInference forms its own batches: equal to float rounding of the batch (1e-5, as
                # each handler's own batch-independence test)
                np.testing.assert_allclose(got[f"{s.key}|{name}"], s.features[name], rtol=0, atol=1e-5)
            else:
                assert f"{s.key}|{name}" not in got


def test_draft_clip_beside_blip_scores_from_the_larger_decode(models_dir):
    """clip draft=True (64 px) + blip (full size): the shared decode is full size, so clip's scores
    equal clip draft=False run alone, bit for bit; against clip's own draft decode they differ by
    little (measured max, docs/devil_details.md)."""
    draft_clip, blip = _stages(models_dir, clip_draft=True)
    full_clip, _ = _stages(models_dir, clip_draft=False)
    samples = _samples()
    shared, _ = _run_local(samples, shard_work.load_models([draft_clip, blip]))
    full_alone, _ = _run_local(samples, shard_work.load_models([full_clip]) + shard_work.load_models([blip]))
    draft_alone, _ = _run_local(samples, shard_work.load_models([draft_clip]) + shard_work.load_models([blip]))
    _assert_same(shared, full_alone)
    diffs = [abs(a.features[k] - b.features[k]) for a, b in zip(shared, draft_alone) if a.error is None
             for k in ("clip_score", "clip_flipped_score")]
    assert max(diffs) > 0                      # some images here are large enough to be drafted
    assert max(diffs) < 0.03                   # image_prep's draft tolerance on the tiny model
    for a, b in zip(shared, draft_alone):
        assert a.error == b.error
        if a.error is None:
            assert a.features["blip_itm_score"] == b.features["blip_itm_score"]


def test_one_bad_image_never_fails_the_group_batch(models_dir):
    clip, blip = _stages(models_dir, clip_batch=4, blip_batch=4)
    samples = [R.Sample(shard="s.tar", key=f"{i:04d}", uid=f"{i:032x}", image=img, caption="a cat")
               for i, img in enumerate([b"", b"GIF89a", _image(0), None])]
    out, _ = _run_local(samples, shard_work.load_models([clip, blip]))
    assert [s.error for s in out] == ["corrupt_image", "corrupt_image", None, "corrupt_image"]
    assert np.isfinite(out[2].features["blip_itm_score"])


def test_devil_details_order_four_models_one_decode(models_dir):
    """face_area, text_detect, clip, blip_itm (devil_details' model stages, in its order) run as one
    group: the outputs of four separate stages, from one decode per image instead of four (face_area's
    JPEG draft at 640 px does not scale these images, so its boxes are bit-identical too)."""
    clip, blip = _stages(models_dir)
    faces = build_stage("face_area", "face_area", {"max_largest_fraction": 0.25})
    text = build_stage("text_detect", "text_detect", {"rec_min_chars": 1, "batch_size": 3})
    samples = _samples(13)
    group = shard_work.load_models([faces, text, clip, blip])
    assert [m.stage.id for m in group] == ["face_area+text_detect+clip+blip_itm"]
    separate = [m for s in (faces, text, clip, blip) for m in shard_work.load_models([s])]
    shared, n_shared = _run_local(samples, group)
    alone, n_alone = _run_local(samples, separate)
    _assert_same(shared, alone)
    usable = sum(s.error is None for s in samples)
    corrupt = sum(s.error == "corrupt_image" for s in shared)
    assert corrupt == 2 and n_shared == usable and n_alone == 4 * usable - 3 * corrupt
    assert all("face_area_count" in s.features for s in shared if s.error is None)
