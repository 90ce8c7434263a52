"""ClipModelHandler (tiny CLIP) against open_clip's own preprocess + encode, inside a real Beam
pipeline and on its own; loading errors. The image preparation alone: tests/unit/test_image_prep.py.
"""

from __future__ import annotations

import io
import os
import pickle

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.testing.util import assert_that
from PIL import Image, ImageOps

from beam_filter.devtools.tiny_models import write_tiny_clip
from beam_filter.errors import UserError
from beam_filter.models import image_prep
from beam_filter.models.clip import ClipModelHandler, clip_provenance, load_clip

# Stated in image_prep's docstring, measured by benchmarks/bench_clip.py --measure-draft.
DRAFT_TOLERANCE = 0.03


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_clip(str(tmp_path_factory.mktemp("tiny_clip")), like="ViT-B-32", seed=0)


@pytest.fixture(scope="module")
def reference(tiny):
    """open_clip's own model + eval transform, built without beam_filter's loader."""
    import open_clip

    cfg_path, ckpt = tiny
    open_clip.add_model_config(cfg_path)
    name = os.path.splitext(os.path.basename(cfg_path))[0]
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=ckpt)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(name)


def reference_scores(reference, data: bytes, caption: str):
    import torch

    model, preprocess, tok = reference
    img = Image.open(io.BytesIO(data))
    with torch.no_grad():
        x = torch.stack([preprocess(img), preprocess(ImageOps.mirror(img))])
        fi = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        ft = torch.nn.functional.normalize(model.encode_text(tok([caption])), dim=-1)[0]
    return float(fi[0] @ ft), float(fi[1] @ ft), fi[0].numpy(), ft.numpy()


CAPTIONS = ["a red ball on the grass", "a photo of a dog", "", "stock photo 1234", "sunset"]


def run_pipeline(handler, examples, check):
    """beam.Create -> RunInference(KeyedModelHandler(handler)) -> assert_that(check(by_key))."""

    def matcher(results):
        got = dict(results)
        assert sorted(got) == list(range(len(examples))), sorted(got)
        check(got)

    with beam.Pipeline(runner=BundleBasedDirectRunner(),
                       options=PipelineOptions(["--direct_num_workers=1"])) as p:
        out = (p | beam.Create(list(enumerate(examples)))
                 | RunInference(KeyedModelHandler(handler)))
        assert_that(out, matcher)


def test_pipeline_matches_open_clip_exactly_without_draft(tiny, reference, clip_images):
    cfg_path, ckpt = tiny
    examples = [(b, CAPTIONS[i % len(CAPTIONS)]) for i, b in enumerate(clip_images)]
    n_good = len(examples)
    examples.append((b"\xff\xd8\xff\xe0 not really a jpeg", "broken"))
    examples.append((b"", "empty"))
    expected = [reference_scores(reference, data, caption) for data, caption in examples[:n_good]]

    def check(got):
        for i, (score, flipped, img_emb, txt_emb) in enumerate(expected):
            out = got[i]
            assert out["error"] is None
            assert out["score"] == pytest.approx(score, abs=1e-4)
            assert out["flipped_score"] == pytest.approx(flipped, abs=1e-4)
            np.testing.assert_allclose(out["image_embedding"], img_emb, atol=1e-4)
            np.testing.assert_allclose(out["text_embedding"], txt_emb, atol=1e-4)
            assert out["image_embedding"].dtype == np.float32
            assert np.linalg.norm(out["image_embedding"]) == pytest.approx(1.0, abs=1e-5)
            assert np.linalg.norm(out["text_embedding"]) == pytest.approx(1.0, abs=1e-5)
        for i in range(n_good, len(examples)):
            out = got[i]
            assert out["error"] == "corrupt_image"
            assert np.isnan(out["score"]) and np.isnan(out["flipped_score"])
            assert np.linalg.norm(out["text_embedding"]) == pytest.approx(1.0, abs=1e-5)
        # the flip is not a no-op: some image must score differently mirrored
        assert any(abs(got[i]["score"] - got[i]["flipped_score"]) > 1e-3 for i in range(n_good))

    handler = ClipModelHandler(cfg_path, ckpt, device="cpu", batch_size=4, draft=False,
                               decode_threads=2)
    run_pipeline(handler, examples, check)


def test_draft_within_stated_tolerance(tiny, reference, clip_images):
    cfg_path, ckpt = tiny
    runner = ClipModelHandler(cfg_path, ckpt, device="cpu", draft=True, decode_threads=2).load_model()
    outs = runner.infer([(b, "a photo") for b in clip_images])
    diffs = []
    for data, out in zip(clip_images, outs):
        score, flipped, _, _ = reference_scores(reference, data, "a photo")
        diffs += [abs(out["score"] - score), abs(out["flipped_score"] - flipped)]
    assert max(diffs) < DRAFT_TOLERANCE
    # draft really changes large JPEGs (1031x700 at S=64 decodes at 1/8 scale)
    assert max(diffs) > 0
    # flip=False: same scores, no mirrored pass
    noflip = ClipModelHandler(cfg_path, ckpt, device="cpu", draft=True, decode_threads=2,
                              flip=False).load_model().infer([(b, "a photo") for b in clip_images])
    for a, b in zip(outs, noflip):
        assert b["score"] == pytest.approx(a["score"], abs=1e-5) and np.isnan(b["flipped_score"])


def test_prepare_is_bit_exact_with_open_clip_transform(reference, clip_images):
    import torch

    _, preprocess, _ = reference
    cfg = image_prep.PrepConfig(64, (0.48145466, 0.4578275, 0.40821073),
                                (0.26862954, 0.26130258, 0.27577711))
    prep = image_prep.CpuImagePrep(cfg, draft=False, threads=2)
    batch = prep.prepare(clip_images)
    assert batch.errors == [None] * len(clip_images)
    assert batch.mirrors, "an odd crop excess (97x64) must need its own mirrored crop"
    x, xf = image_prep.normalize_on_device(batch, cfg, torch.device("cpu"), torch.float32)
    for i, data in enumerate(clip_images):
        img = Image.open(io.BytesIO(data))
        assert torch.equal(x[i], preprocess(img)), i
        torch.testing.assert_close(xf[i], preprocess(ImageOps.mirror(img)), atol=0.02, rtol=0)


def test_decode_gpu_without_cuda_is_user_error(tiny):
    import torch

    if torch.cuda.is_available():
        pytest.skip("machine has CUDA")
    cfg_path, ckpt = tiny
    with pytest.raises(UserError, match="decode=gpu"):
        ClipModelHandler(cfg_path, ckpt, device="auto", decode="gpu").load_model()


def test_cuda_or_half_precision_on_cpu_is_user_error(tiny):
    import torch

    cfg_path, ckpt = tiny
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA"):
            ClipModelHandler(cfg_path, ckpt, device="cuda").load_model()
    with pytest.raises(UserError, match="precision=fp16"):
        load_clip(cfg_path, ckpt, device="cpu", precision="fp16")
    with pytest.raises(UserError, match="unknown precision"):
        ClipModelHandler(cfg_path, ckpt, precision="fp8")
    with pytest.raises(UserError, match="pretrained tag"):
        load_clip("ViT-B-32", "no-such-tag", device="cpu")
    with pytest.raises(UserError, match="not found"):
        load_clip(cfg_path, "/no/such/checkpoint.pt", device="cpu")


def test_handler_is_light_and_batches_fixed(tiny):
    cfg_path, ckpt = tiny
    h = ClipModelHandler(cfg_path, ckpt, batch_size=16, share_across_processes=True)
    assert h.batch_elements_kwargs() == {"min_batch_size": 16, "max_batch_size": 16}
    assert h.share_model_across_processes() and h.model_copies() == 1
    assert not ClipModelHandler(cfg_path, ckpt).share_model_across_processes()
    assert len(pickle.dumps(h)) < 4096                  # no model inside the pickled handler
    assert h.get_num_bytes([(b"abc", "de")]) == 5


def test_checkpoint_loads_and_tiny_is_deterministic(tiny, tmp_path):
    import torch

    cfg_path, ckpt = tiny
    net, pcfg, tok = load_clip(cfg_path, ckpt, device="cpu")
    assert tuple(pcfg["size"]) == (64, 64) and not net.training
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    for k, v in net.state_dict().items():
        assert torch.equal(v, saved[k]), k
    again = write_tiny_clip(str(tmp_path), like="ViT-B-32", seed=0)
    other = torch.load(again[1], weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], other[k]) for k in saved)
    prov = clip_provenance(cfg_path, ckpt)
    assert prov["name"] == cfg_path and len(prov["checkpoint_sha256"]) == 64
