"""HypeModelHandler on a held-out tiny HYPE checkpoint, inside RunInference: distances and
specificities equal open_clip's own towers + the authors' scalars + the formulas computed directly."""

from __future__ import annotations

import io
import math
import os
import pickle

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.testing.util import assert_that
from PIL import Image

from beam_filter.devtools.tiny_models import write_tiny_hype
from beam_filter.errors import UserError
from beam_filter.models.hype import HypeModelHandler

CAPTIONS = ["a red ball on the grass", "a photo of a dog", "", "stock photo 1234", "sunset over the sea"]


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    return write_tiny_hype(str(tmp_path_factory.mktemp("hype_held_out")), seed=5, n_reference=9)


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        arr = rng.integers(0, 255, (40 + 7 * i, 50 + 3 * i, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=92)
        out.append(buf.getvalue())
    return out


def _direct(held_out, images, captions):
    """open_clip's towers and transform, the checkpoint loaded as the authors' model_init does
    (strict=False, LayerNorm eps = float32 eps), then the formulas one pair at a time."""
    import open_clip
    import torch

    cfg_path, ckpt, ref_path = held_out
    open_clip.add_model_config(cfg_path)
    name = os.path.splitext(os.path.basename(cfg_path))[0]
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    state = torch.load(ckpt, weights_only=True)
    model.load_state_dict(state, strict=False)
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = torch.finfo(torch.float32).eps
    model.eval()
    c = math.exp(float(state["curvature"]))
    ref = torch.load(ref_path, weights_only=True)
    with torch.no_grad():
        x = torch.stack([preprocess(Image.open(io.BytesIO(b))) for b in images])
        img = (model.encode_image(x) * state["alpha_img"].exp()).double().numpy()
        txt = (model.encode_text(open_clip.get_tokenizer(name)(captions)) * state["alpha_txt"].exp()).double().numpy()

    def lift(v):
        n = math.sqrt(c) * np.linalg.norm(v)
        s = math.sinh(n) * v / n
        return s, math.sqrt(1 / c + s @ s)

    def dist(a, b):
        (as_, at), (bs, bt) = lift(a), lift(b)
        return math.acosh(-c * (as_ @ bs - at * bt)) / math.sqrt(c)

    def ent(a, b):          # ext(a, b) - aperture(a)
        (as_, at), (bs, bt) = lift(a), lift(b)
        inner = as_ @ bs - at * bt
        na = np.linalg.norm(as_)
        return (math.acos((bt + at * c * inner) / (na * math.sqrt((c * inner) ** 2 - 1)))
                - math.asin(0.2 / (math.sqrt(c) * na)))

    rimg, rtxt = ref["img"].double().numpy(), ref["txt"].double().numpy()
    return [{"distance": dist(img[i], txt[i]),
             "image_specificity": np.mean([ent(t, img[i]) for t in rtxt]),
             "text_specificity": np.mean([ent(txt[i], r) for r in rimg]),
             "image_embedding": img[i], "text_embedding": txt[i]} for i in range(len(images))]


def test_handler_in_runinference_equals_the_direct_computation(held_out, tmp_path):
    cfg_path, ckpt, ref = held_out
    images = _images(5)
    examples = [(images[i], CAPTIONS[i]) for i in range(5)] + [(b"not an image", "broken")]
    handler = HypeModelHandler(cfg_path, ckpt, ref, device="cpu", batch_size=4, precision="fp32")
    out_path = str(tmp_path / "out.pkl")

    def save(results):
        with open(out_path, "wb") as f:
            pickle.dump(list(results), f)

    with beam.Pipeline(runner=BundleBasedDirectRunner(), options=PipelineOptions([])) as p:
        assert_that(p | beam.Create([(e[1], e) for e in examples], reshuffle=False)
                    | RunInference(KeyedModelHandler(handler)), save)
    with open(out_path, "rb") as f:
        got = dict(pickle.load(f))
    want = _direct(held_out, images, CAPTIONS)
    for cap, w in zip(CAPTIONS, want):
        g = got[cap]
        assert g["error"] is None
        for k in ("distance", "image_specificity", "text_specificity"):
            assert g[k] == pytest.approx(w[k], rel=1e-4, abs=1e-4), (cap, k)
        assert np.allclose(g["image_embedding"], w["image_embedding"], atol=1e-4)
        assert np.allclose(g["text_embedding"], w["text_embedding"], atol=1e-4)
    assert len({round(w["image_specificity"], 6) for w in want}) == 5        # the values vary
    broken = got["broken"]
    assert broken["error"] == "corrupt_image" and math.isnan(broken["distance"])
    assert not np.any(broken["image_embedding"])


def test_loading_errors_are_one_line(held_out, tmp_path):
    cfg_path, ckpt, ref = held_out
    import torch

    plain = str(tmp_path / "plain.pt")
    state = torch.load(ckpt, weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "curvature"}, plain)
    with pytest.raises(UserError, match="not a HYPE checkpoint"):
        HypeModelHandler(cfg_path, plain, ref, device="cpu").load_model()
    partial = str(tmp_path / "partial.pt")
    torch.save({k: v for k, v in state.items() if not k.startswith("visual.conv1")}, partial)
    with pytest.raises(UserError, match="missing visual.conv1"):
        HypeModelHandler(cfg_path, partial, ref, device="cpu").load_model()
    bad_ref = str(tmp_path / "ref.npz")
    np.savez(bad_ref, img=np.zeros((3, 7)), txt=np.zeros((3, 7)))
    with pytest.raises(UserError, match="dimension"):
        HypeModelHandler(cfg_path, ckpt, bad_ref, device="cpu").load_model()
    with pytest.raises(UserError, match="checkpoint and a reference"):
        HypeModelHandler(cfg_path, ckpt, None)
