"""CLIP image preparation (models/image_prep) without a model: geometry, and the GPU path's
bookkeeping and pixel values with a CPU-run decoder.

Bit-exactness against open_clip's own transform needs the tiny model's preprocess:
tests/beam/test_clip_model.py.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from beam_filter.errors import UserError
from beam_filter.models import image_prep


def test_geometry_follows_torchvision():
    cfg = image_prep.PrepConfig(224, (0.5,) * 3, (0.5,) * 3)
    g = image_prep.geometry(1000, 667, cfg)          # landscape: 336 x 224
    assert (g.new_w, g.new_h, g.top, g.left) == (335, 224, 0, 56)
    assert g.mirror_left == 335 - 56 - 224 == 55     # odd excess: mirror window one column over
    g = image_prep.geometry(224, 300, cfg)
    assert (g.new_w, g.new_h, g.top, g.left, g.mirror_left) == (224, 300, 38, 0, 0)
    sq = image_prep.PrepConfig(224, (0.5,) * 3, (0.5,) * 3, resize_mode="squash")
    assert image_prep.geometry(1000, 10, sq) == image_prep.Geometry(224, 224, 0, 0, 0)


def test_gpu_prep_falls_back_per_image(clip_images):
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
    blobs = clip_images + [b"\xff\xd8\xff garbage"]
    batch = gpu.prepare(blobs)
    n_jpeg = sum(image_prep.is_jpeg(b) for b in blobs)
    assert calls[0] == n_jpeg and calls[1:] == [1] * n_jpeg      # batch, then singly
    assert batch.errors == [None] * len(clip_images) + ["corrupt_image"]
    ref = cpu.prepare(blobs)
    for i, data in enumerate(clip_images):
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
    for i, data in enumerate(clip_images):
        img = Image.open(io.BytesIO(data))
        if not image_prep.is_jpeg(data) or img.mode == "CMYK" or img.info.get("progressive"):
            assert torch.equal(x[i], rx[i]) and torch.equal(xf[i], rxf[i]), i


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_gpu_prep_pixels_are_rounded_float_resize(clip_images, interpolation):
    """The GPU path's values, pinned: torch's antialiased float resize of the decoded
    image, rounded and clamped like uint8, then cropped (and mirrored) per geometry()."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(tensors, device):
        return [decode_jpeg(t, mode=ImageReadMode.RGB) for t in tensors]

    cfg = image_prep.PrepConfig(64, (0.5,) * 3, (0.5,) * 3, interpolation=interpolation)
    cpu = image_prep.CpuImagePrep(cfg, draft=False, threads=1)
    jpegs = [b for b in clip_images if image_prep.is_jpeg(b)
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
