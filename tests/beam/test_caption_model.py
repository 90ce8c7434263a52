"""The captioner handler (tiny BLIP and BLIP-2 twins): N captions per image, the same for a sample in any
batch, in any order, through RunInference and on a rerun."""

from __future__ import annotations

import io

import numpy as np
import pytest

from beam_filter.models.captioner import Captioner, CaptionerModelHandler, SeededNucleus, uniform_draws


def _jpeg(seed: int, size=(50, 40)) -> bytes:
    from PIL import Image

    arr = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    from beam_filter.devtools.tiny_models import write_tiny_blip, write_tiny_blip2

    root = tmp_path_factory.mktemp("captioners")
    return {"blip": write_tiny_blip(str(root / "blip")), "blip-2": write_tiny_blip2(str(root / "blip2"))}


UIDS = [f"{i:032x}" for i in range(6)]
IMAGES = [_jpeg(i) for i in range(6)]


@pytest.mark.parametrize("family", ["blip", "blip-2"])
def test_captions_do_not_depend_on_the_batch_nor_on_a_rerun(twins, family):
    cap = Captioner(twins[family], device="cpu", precision="fp32", num_captions=3, image_size=0)
    assert cap.family == family
    full = cap.caption(UIDS, IMAGES)
    assert all(err is None and len(caps) == 3 for caps, err in full)
    assert any(c for caps, _ in full for c in caps), "the tiny twin should say something"
    reordered = cap.caption(UIDS[::-1], IMAGES[::-1])[::-1]
    singles = [cap.caption([u], [im])[0] for u, im in zip(UIDS, IMAGES)]
    assert reordered == full and singles == full
    again = Captioner(twins[family], device="cpu", precision="fp32", num_captions=3, image_size=0)
    assert again.caption(UIDS[2:4], IMAGES[2:4]) == full[2:4]
    # the seed is per sample: another uid on the same image samples other captions
    other = cap.caption(["f" * 32], [IMAGES[0]])[0][0]
    assert other != full[0][0]
    # more captions per image: the first three are the same stream
    five = Captioner(twins[family], device="cpu", precision="fp32", num_captions=5, image_size=0)
    assert five.caption(UIDS[:1], IMAGES[:1])[0][0][:3] == full[0][0]


def test_a_corrupt_image_is_an_error_for_that_sample_only(twins):
    cap = Captioner(twins["blip"], device="cpu", precision="fp32", num_captions=2, image_size=0)
    out = cap.caption(UIDS[:3], [IMAGES[0], b"not an image", IMAGES[2]])
    assert out[1] == ([], "corrupt_image")
    assert out[0] == cap.caption(UIDS[:1], IMAGES[:1])[0] and out[2][1] is None


def test_an_input_size_other_than_the_checkpoints_interpolates_positions(twins):
    cap = Captioner(twins["blip"], device="cpu", precision="fp32", num_captions=2, image_size=48)
    assert cap.interpolate and cap.prep_cfg.size == 48
    assert cap.caption(UIDS[:2], IMAGES[:2]) == cap.caption(UIDS[:2][::-1], IMAGES[:2][::-1])[::-1]


def test_seeded_nucleus_is_the_inverse_cdf_of_the_top_p_set():
    import torch

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    chosen = []
    for u in (0.0, 0.62, 0.63, 0.99):
        proc = SeededNucleus(torch.tensor([[u]], dtype=torch.float64), top_p=0.7)
        out = proc(torch.zeros((1, 3), dtype=torch.long), logits.clone())
        assert torch.isinf(out).sum() == 3
        chosen.append(int(out.argmax()))
    # nucleus {0.5, 0.3} (0.5 < 0.7 before the second token), renormalised: 0.625 / 0.375
    assert chosen == [0, 0, 1, 1]
    greedy = SeededNucleus(torch.tensor([[0.99]], dtype=torch.float64), top_p=1e-9)
    assert int(greedy(torch.zeros((1, 1), dtype=torch.long), logits.clone()).argmax()) == 0
    assert np.array_equal(uniform_draws(0, "u", 1, 5), uniform_draws(0, "u", 1, 5))
    assert not np.array_equal(uniform_draws(0, "u", 1, 5), uniform_draws(0, "u", 2, 5))


def test_run_inference_gives_the_same_captions_for_any_batch_size(twins):
    import apache_beam as beam
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from apache_beam.testing.util import assert_that, equal_to

    direct = Captioner(twins["blip"], device="cpu", precision="fp32", num_captions=2, image_size=0)
    want = [(u, tuple(c)) for u, (c, _) in zip(UIDS, direct.caption(UIDS, IMAGES))]
    for size in (1, 4):
        handler = CaptionerModelHandler(twins["blip"], batch_size=size, device="cpu", precision="fp32",
                                        num_captions=2, image_size=0)
        with beam.Pipeline() as p:
            got = (p | beam.Create(list(zip(UIDS, zip(UIDS, IMAGES))))
                   | RunInference(KeyedModelHandler(handler))
                   | beam.MapTuple(lambda uid, r: (uid, tuple(r["captions"]))))
            assert_that(got, equal_to(want))
