"""T-MARS masked CLIP score: ClipModelHandler(mask_fill=...) against a direct computation --
fill the same boxes with their mean colour (an independent fill, written here), open_clip's own
eval transform and encoders -- with a held-out tiny checkpoint (seed 7, never used elsewhere),
inside a real Beam pipeline."""

from __future__ import annotations

import io
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.testing.util import assert_that
from PIL import Image, ImageDraw

from beam_filter.devtools.tiny_models import write_tiny_clip
from beam_filter.errors import UserError
from beam_filter.models.clip import ClipModelHandler
from beam_filter.rules.ocr import encode_boxes

TOL = 2e-5


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    return write_tiny_clip(str(tmp_path_factory.mktemp("tiny_clip_heldout")), like="ViT-B-32", seed=7)


@pytest.fixture(scope="module")
def reference(held_out):
    import open_clip

    cfg_path, ckpt = held_out
    open_clip.add_model_config(cfg_path)
    name = os.path.splitext(os.path.basename(cfg_path))[0]
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=ckpt)
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


def direct_fill(img: Image.Image, polys, per_box: bool) -> Image.Image:
    """Each region filled with the rounded mean colour of its own pixels, taken on the unfilled image."""
    src = np.asarray(img.convert("RGB"))
    out = src.copy()
    for poly in polys:
        if per_box:
            xs, ys = [p[0] for p in poly], [p[1] for p in poly]
            m = np.zeros(src.shape[:2], bool)
            m[min(ys):max(ys) + 1, min(xs):max(xs) + 1] = True
        else:
            mask = Image.new("L", img.size, 0)
            ImageDraw.Draw(mask).polygon([tuple(p) for p in poly], fill=255, outline=255)
            m = np.asarray(mask) > 0
        out[m] = np.rint(src[m].mean(0)).astype(np.uint8)
    return Image.fromarray(out)


def direct_scores(reference, data: bytes, caption: str, polys, per_box=False):
    import torch

    model, preprocess, tok = reference
    img = Image.open(io.BytesIO(data))
    with torch.no_grad():
        x = torch.stack([preprocess(img), preprocess(direct_fill(img, polys, per_box))])
        fi = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        ft = torch.nn.functional.normalize(model.encode_text(tok([caption])), dim=-1)[0]
    return float(fi[0] @ ft), float(fi[1] @ ft)


@pytest.fixture(scope="module")
def examples(text_images):
    """(jpeg, caption, polygons): text images with their word boxes as quads and as a rotated
    polygon, an image of another size and aspect, one with no boxes, and a corrupt one."""
    rng = np.random.default_rng(21)
    out = []
    for i, (w, h) in enumerate([(320, 240), (180, 300), (400, 160)]):
        img, boxes, words = text_images.text_image(rng, w, h)
        polys = [[(a, b), (c, b), (c, d), (a, d)] for a, b, c, d in boxes]
        if i == 1:      # a non-rectangular polygon
            a, b, c, d = boxes[0]
            polys[0] = [(a, b + 3), (c, b), (c - 2, d), (a + 4, d - 1), (a - 1, (b + d) // 2)]
        out.append((text_images.jpeg(img, 90), " ".join(words), polys))
    out.append((text_images.jpeg(text_images.shape_image(rng), 90), "stripes", []))
    out.append((b"\xff\xd8broken", "nothing", [[(0, 0), (5, 0), (5, 5)]]))
    return out


def run_pipeline(handler, elements, check):
    def matcher(results):
        got = dict(results)
        assert sorted(got) == list(range(len(elements)))
        check(got)

    with beam.Pipeline(runner=BundleBasedDirectRunner(),
                       options=PipelineOptions(["--direct_num_workers=1"])) as p:
        out = p | beam.Create(list(enumerate(elements))) | RunInference(KeyedModelHandler(handler))
        assert_that(out, matcher)


@pytest.mark.parametrize("fill", ["polygon_mean", "box_mean"])
def test_masked_score_equals_direct_fill_and_encode(held_out, reference, examples, fill):
    cfg_path, ckpt = held_out
    handler = ClipModelHandler(cfg_path, ckpt, device="cpu", batch_size=8, precision="fp32",
                               mask_fill=fill, flip=True)
    elements = [(data, cap, encode_boxes(polys)) for data, cap, polys in examples]

    def check(got):
        for i, (data, cap, polys) in enumerate(examples[:-1]):
            plain, masked = direct_scores(reference, data, cap, polys, per_box=fill == "box_mean")
            out = getattr(got[i], "inference", got[i])
            assert out["error"] is None
            assert abs(out["score"] - plain) < TOL, (i, out["score"], plain)
            assert abs(out["masked_score"] - masked) < TOL, (i, out["masked_score"], masked)
            if polys:
                assert abs(out["masked_score"] - out["score"]) > 1e-4, i   # masking changed the image
            else:
                assert out["masked_score"] == out["score"]                  # its own masked view
        bad = got[len(examples) - 1]
        bad = getattr(bad, "inference", bad)
        assert bad["error"] == "corrupt_image" and np.isnan(bad["masked_score"])

    run_pipeline(handler, elements, check)


def test_masked_mode_leaves_the_other_views_unchanged(held_out, examples):
    cfg_path, ckpt = held_out
    plain = ClipModelHandler(cfg_path, ckpt, device="cpu", batch_size=8, precision="fp32").load_model()
    masked = ClipModelHandler(cfg_path, ckpt, device="cpu", batch_size=8, precision="fp32",
                              mask_fill="polygon_mean").load_model()
    a = plain.infer([(d, c) for d, c, _ in examples])
    b = masked.infer([(d, c, encode_boxes(p)) for d, c, p in examples])
    for x, y in zip(a[:-1], b[:-1]):
        assert abs(x["score"] - y["score"]) < 1e-5 and abs(x["flipped_score"] - y["flipped_score"]) < 1e-5
        assert "masked_score" not in x


def test_masked_mode_refuses_gpu_decode_and_unknown_fills(held_out):
    cfg_path, ckpt = held_out
    with pytest.raises(UserError, match="unknown mask_fill"):
        ClipModelHandler(cfg_path, ckpt, device="cpu", mask_fill="blur")
    with pytest.raises(UserError, match="decode=cpu"):
        ClipModelHandler(cfg_path, ckpt, device="cpu", decode="gpu", mask_fill="polygon_mean").load_model()
