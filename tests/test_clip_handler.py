"""ClipModelHandler against open_clip's own preprocess + encode, inside a real Beam pipeline."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import apache_beam as beam  # noqa: E402
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner  # noqa: E402
from apache_beam.testing.util import assert_that  # noqa: E402
from PIL import Image, ImageDraw, ImageOps  # noqa: E402

from beam_filter.devtools.tiny_models import write_tiny_clip  # noqa: E402
from beam_filter.errors import UserError  # noqa: E402
from beam_filter.models import image_prep  # noqa: E402
from beam_filter.models.clip import (ClipModelHandler, ClipRunner, clip_provenance,  # noqa: E402
                                     load_clip)

# Stated in image_prep's docstring, measured by benchmarks/bench_clip.py --measure-draft.
DRAFT_TOLERANCE = 0.03


def photo(rng, w, h, mode="RGB"):
    """A photo-like image: smooth gradient, a few shapes, mild noise (JPEG-friendly)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255], -1)
    base = base * rng.uniform(0.3, 1.0, 3) + rng.uniform(0, 80, 3)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        x1, y1 = x0 + rng.integers(w // 8 + 1, w // 2 + 2), y0 + rng.integers(h // 8 + 1, h // 2 + 2)
        d.ellipse((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    arr = np.asarray(img).astype(np.int16) + rng.integers(-8, 9, (h, w, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return img.convert(mode) if mode != "RGB" else img


def encode(img, fmt="JPEG", **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


@pytest.fixture(scope="module")
def images():
    """Encoded images covering sizes (small, odd crop excess, large enough for draft) and modes."""
    rng = np.random.default_rng(7)
    out = []
    for w, h in [(64, 64), (97, 64), (300, 201), (201, 300), (640, 427), (1031, 700), (90, 40)]:
        out.append(encode(photo(rng, w, h), quality=90))
    out.append(encode(photo(rng, 400, 301), quality=85, progressive=True))
    out.append(encode(photo(rng, 260, 180, "L"), quality=90))
    out.append(encode(photo(rng, 333, 250, "CMYK"), quality=90))
    out.append(encode(photo(rng, 150, 123).convert("RGBA"), "PNG"))
    out.append(encode(photo(rng, 120, 77).convert("P"), "GIF"))
    return out


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


def test_pipeline_matches_open_clip_exactly_without_draft(tiny, reference, images):
    cfg_path, ckpt = tiny
    examples = [(b, CAPTIONS[i % len(CAPTIONS)]) for i, b in enumerate(images)]
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


def test_draft_within_stated_tolerance(tiny, reference, images):
    cfg_path, ckpt = tiny
    runner = ClipModelHandler(cfg_path, ckpt, device="cpu", draft=True, decode_threads=2).load_model()
    outs = runner.infer([(b, "a photo") for b in images])
    diffs = []
    for data, out in zip(images, outs):
        score, flipped, _, _ = reference_scores(reference, data, "a photo")
        diffs += [abs(out["score"] - score), abs(out["flipped_score"] - flipped)]
    assert max(diffs) < DRAFT_TOLERANCE
    # draft really changes large JPEGs (1031x700 at S=64 decodes at 1/8 scale)
    assert max(diffs) > 0
    # flip=False: same scores, no mirrored pass
    noflip = ClipModelHandler(cfg_path, ckpt, device="cpu", draft=True, decode_threads=2,
                              flip=False).load_model().infer([(b, "a photo") for b in images])
    for a, b in zip(outs, noflip):
        assert b["score"] == pytest.approx(a["score"], abs=1e-5) and np.isnan(b["flipped_score"])


def test_prepare_is_bit_exact_with_open_clip_transform(reference, images):
    import torch

    _, preprocess, _ = reference
    cfg = image_prep.PrepConfig(64, (0.48145466, 0.4578275, 0.40821073),
                                (0.26862954, 0.26130258, 0.27577711))
    prep = image_prep.CpuImagePrep(cfg, draft=False, threads=2)
    batch = prep.prepare(images)
    assert batch.errors == [None] * len(images)
    assert batch.mirrors, "an odd crop excess (97x64) must need its own mirrored crop"
    x, xf = image_prep.normalize_on_device(batch, cfg, torch.device("cpu"), torch.float32)
    for i, data in enumerate(images):
        img = Image.open(io.BytesIO(data))
        assert torch.equal(x[i], preprocess(img)), i
        torch.testing.assert_close(xf[i], preprocess(ImageOps.mirror(img)), atol=0.02, rtol=0)


def test_geometry_follows_torchvision():
    cfg = image_prep.PrepConfig(224, (0.5,) * 3, (0.5,) * 3)
    g = image_prep.geometry(1000, 667, cfg)          # landscape: 336 x 224
    assert (g.new_w, g.new_h, g.top, g.left) == (335, 224, 0, 56)
    assert g.mirror_left == 335 - 56 - 224 == 55     # odd excess: mirror window one column over
    g = image_prep.geometry(224, 300, cfg)
    assert (g.new_w, g.new_h, g.top, g.left, g.mirror_left) == (224, 300, 38, 0, 0)
    sq = image_prep.PrepConfig(224, (0.5,) * 3, (0.5,) * 3, resize_mode="squash")
    assert image_prep.geometry(1000, 10, sq) == image_prep.Geometry(224, 224, 0, 0, 0)


def test_gpu_prep_falls_back_per_image(reference, images):
    """GpuJpegPrep's bookkeeping with a CPU-run decoder: nvJPEG refusals go to the CPU path."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    calls = []

    def picky_decode(tensors, device):
        # behaves like nvJPEG: refuses CMYK and progressive files (whole batch fails)
        calls.append(len(tensors))
        for t in tensors:
            data = bytes(t.numpy())
            img = Image.open(io.BytesIO(data))
            if img.mode == "CMYK" or img.info.get("progressive"):
                raise RuntimeError("nvjpeg: unsupported")
        return [decode_jpeg(t, mode=ImageReadMode.RGB) for t in tensors]

    cfg = image_prep.PrepConfig(64, (0.48145466, 0.4578275, 0.40821073),
                                (0.26862954, 0.26130258, 0.27577711))
    cpu = image_prep.CpuImagePrep(cfg, draft=False, threads=1)
    gpu = image_prep.GpuJpegPrep(cfg, torch.device("cpu"), cpu, decode_fn=picky_decode)
    blobs = images + [b"\xff\xd8\xff garbage"]
    batch = gpu.prepare(blobs)
    n_jpeg = sum(image_prep.is_jpeg(b) for b in blobs)
    assert calls[0] == n_jpeg and calls[1:] == [1] * n_jpeg      # batch, then singly
    assert batch.errors == [None] * len(images) + ["corrupt_image"]
    ref = cpu.prepare(blobs)
    for i, data in enumerate(images):
        img = Image.open(io.BytesIO(data))
        on_cpu = not image_prep.is_jpeg(data) or img.mode == "CMYK" or img.info.get("progressive")
        diff = (batch.pixels[i].int() - torch.from_numpy(ref.pixels[i]).int()).abs()
        if on_cpu:
            assert int(diff.max()) == 0, i              # fell back: identical to the CPU path
        else:
            assert float(diff.float().mean()) < 3.0, i  # decoded + resized by torch: close
    x, xf = image_prep.normalize_on_device(batch, cfg, torch.device("cpu"), torch.float32)
    assert x.shape == xf.shape == (len(blobs), 3, 64, 64)
    # Images that fell back keep the CPU path's exact mirrored crops (incl. odd-excess ones).
    rx, rxf = image_prep.normalize_on_device(ref, cfg, torch.device("cpu"), torch.float32)
    for i, data in enumerate(images):
        img = Image.open(io.BytesIO(data))
        if not image_prep.is_jpeg(data) or img.mode == "CMYK" or img.info.get("progressive"):
            assert torch.equal(x[i], rx[i]) and torch.equal(xf[i], rxf[i]), i


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_gpu_prep_pixels_are_rounded_float_resize(images, interpolation):
    """The GPU path's values, pinned: torch's antialiased float resize of the decoded
    image, rounded and clamped like uint8, then cropped (and mirrored) per geometry()."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(tensors, device):
        return [decode_jpeg(t, mode=ImageReadMode.RGB) for t in tensors]

    cfg = image_prep.PrepConfig(64, (0.5,) * 3, (0.5,) * 3, interpolation=interpolation)
    cpu = image_prep.CpuImagePrep(cfg, draft=False, threads=1)
    jpegs = [b for b in images if image_prep.is_jpeg(b)
             and Image.open(io.BytesIO(b)).mode == "RGB" and not Image.open(io.BytesIO(b)).info.get("progressive")]
    assert len(jpegs) >= 3
    batch = image_prep.GpuJpegPrep(cfg, torch.device("cpu"), cpu, decode_fn=decode).prepare(jpegs)
    for i, data in enumerate(jpegs):
        chw = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        geo = image_prep.geometry(chw.shape[2], chw.shape[1], cfg)
        x = torch.nn.functional.interpolate(chw.float()[None], size=(geo.new_h, geo.new_w), mode=interpolation,
                                            antialias=True, align_corners=False)[0].round().clamp(0, 255)
        crop = x[:, geo.top:geo.top + 64, geo.left:geo.left + 64].permute(1, 2, 0)
        window = x[:, geo.top:geo.top + 64, geo.mirror_left:geo.mirror_left + 64].permute(1, 2, 0)
        assert torch.equal(batch.pixels[i], crop), i
        assert torch.equal(batch.mirror_windows[i], window), i


def test_gpu_prep_without_torchvision_decoder_is_user_error(monkeypatch):
    """A torchvision without decode_jpeg (deprecated since 0.29) fails at load, not by
    silently sending every image down the CPU fallback."""
    import torch
    import torchvision.io

    monkeypatch.delattr(torchvision.io, "decode_jpeg")
    cfg = image_prep.PrepConfig(64, (0.5,) * 3, (0.5,) * 3)
    cpu = image_prep.CpuImagePrep(cfg, threads=1)
    with pytest.raises(UserError, match="decode_jpeg"):
        image_prep.GpuJpegPrep(cfg, torch.device("cpu"), cpu)


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
    assert isinstance(ClipRunner, type)
