"""CLIP image preprocessing that matches open_clip's eval transform, but fast.

open_clip's eval transform is, on a PIL image: ``Resize(S)`` (shortest side to S,
BICUBIC, long side ``int(S * long / short)``), ``CenterCrop(S)`` (offsets
``round((size - S) / 2)``), ``convert("RGB")``, ``ToTensor`` (/255) and
``Normalize(mean, std)``. It runs per image in the Python thread that called it,
decodes every JPEG at full resolution and does the float maths on the CPU. For a
GPU worker that is the bottleneck (clip-retrieval reports ViT-B/32 throughput
"limited by image resizing"). Here:

* the PIL steps are the *same* PIL calls in the same order (so ``draft=False`` is
  bit-exact with open_clip), run in a thread pool: Pillow releases the GIL while it
  decodes and resamples, so N threads give close to N cores;
* ``draft=True`` asks libjpeg to decode a JPEG already scaled down by 1/2, 1/4 or
  1/8 in the DCT domain (``Image.draft("RGB", (S, S))``), never below S on the short
  side, which cuts decode time several fold for large photos at the price of a
  slightly different image (measured below);
* pixels stay uint8 HWC until they reach the device; the /255 and mean/std
  normalisation run there (:func:`normalize_on_device`), 4x less to copy than fp32;
* the horizontally mirrored view ("The Devil is in the Details" flipped CLIP score)
  comes from the same resized array, not a second decode. Resizing commutes with a
  mirror, but the centre crop does not when the resized width exceeds S by an odd
  number of pixels (``round`` sends the extra column to one side), so for those
  images the mirrored crop is taken one column over, exactly as
  ``preprocess(ImageOps.mirror(img))`` would;
* several models can share one decode (``models/shared_decode.py``): each says what it needs
  (:class:`DecodeSpec`, :meth:`CpuImagePrep.decode_spec`), :func:`merge_specs` picks the one
  decode that serves all, and each cuts its views from it (:meth:`CpuImagePrep.views`,
  :meth:`CpuImagePrep.batch_from_views`); :data:`DECODES` counts decodes;
* an image that fails to decode becomes a black placeholder and an error string, so
  one bad JPEG never fails a batch: ``image_too_large`` when it has more pixels than
  Pillow's ``Image.MAX_IMAGE_PIXELS`` (a decompression bomb; Pillow's
  DecompressionBombError and its warning both count, checked before any pixel is
  decoded), ``corrupt_image`` for any other failure.

Draft vs reference, measured with ``benchmarks/bench_clip.py --measure-draft --n 120 --images large``
(120 generated photo-like JPEGs, short side 128-1600 px, aspect 0.5-2, quality 75-95;
fp32; |cosine difference| over score and flipped score, same weights both ways):

    ViT-B-32-shaped random model (S=224): max 0.0023, mean 0.00021 (score std over images 0.034)
    tiny test model (S=64):               max 0.0206, mean 0.0020  (score std over images 0.070)

Images whose sides are both below 2S cannot be DCT-scaled and come out identical. The
error grows with the scale factor, so small models (S=64, decoded at up to 1/8) see
more of it; at CLIP's usual 224 px the largest change is under 7% of the spread of
scores across images. The tests hold draft to 0.03 on the tiny model. Decoding at a 2S target instead
cut the pixel error 4x but the decode speed-up from 2.8x to 1.8x (2 CPU cores), so
the target is S.

``decode="gpu"`` (:class:`GpuJpegPrep`) decodes JPEGs with nvJPEG through
``torchvision.io.decode_jpeg(device="cuda")`` and resizes with torch's antialiased
bicubic (the same a=-0.5 kernel as PIL, but one float pass where PIL rounds to
uint8 between its horizontal and vertical passes); anything nvJPEG refuses
(PNG, GIF, CMYK or corrupt JPEGs) falls back per image to the CPU path above.
"""

from __future__ import annotations

import dataclasses
import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from beam_filter.errors import UserError
from beam_filter.rules.image_header import TOO_LARGE, probe_image

CORRUPT_IMAGE = "corrupt_image"
IMAGE_TOO_LARGE = "image_too_large"


class ImageTooLarge(ValueError):
    """The image has more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` (a decompression bomb)."""


def decode_error(exc: BaseException) -> str:
    """The reason an image that raised ``exc`` while decoding is dropped with."""
    from PIL import Image

    if isinstance(exc, (ImageTooLarge, Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return IMAGE_TOO_LARGE
    return CORRUPT_IMAGE

_JPEG_MAGIC = b"\xff\xd8\xff"


class _Count:
    """A thread-safe counter of calls (a real statistic, not a mock: tests and benchmarks read it)."""

    def __init__(self):
        self._n = 0
        self._lock = threading.Lock()

    def add(self, n: int = 1) -> None:
        with self._lock:
            self._n += n

    @property
    def value(self) -> int:
        return self._n


# Images opened by :func:`decode` in this process: what proves a shared decode decodes once
# (models/shared_decode.py; tests/unit/test_shared_decode.py, benchmarks/bench_devil.py).
DECODES = _Count()


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """The decode a model's image preparation needs from :func:`decode`.

    ``draft_size``: JPEGs may be decoded at DCT scale down to this short side (the model's
    ``draft=True``); None: at full resolution. Several models share one decode at the
    largest need (:func:`merge_specs`), and each resizes/crops from it.
    """

    draft_size: int | None = None


def merge_specs(specs) -> DecodeSpec:
    """One decode that serves every spec: full size when any needs it, else the largest draft target
    (libjpeg then keeps both sides >= that target, so every smaller target is served too)."""
    specs = list(specs)
    if not specs or any(s.draft_size is None for s in specs):
        return DecodeSpec(None)
    return DecodeSpec(max(s.draft_size for s in specs))


def decode_for(data: bytes, spec: DecodeSpec):
    """:func:`decode` as ``spec`` says (raises on undecodable bytes, like :func:`decode`)."""
    if spec.draft_size is None:
        return decode(data, None, draft=False)
    return decode(data, PrepConfig(spec.draft_size, (0.0,) * 3, (1.0,) * 3), draft=True)


@dataclasses.dataclass(frozen=True)
class PrepConfig:
    """What the eval transform needs: square size, interpolation and normalisation."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"   # open_clip: 'bicubic' | 'bilinear' ('random' means bicubic)
    resize_mode: str = "shortest"    # 'shortest' (resize + centre crop) | 'squash'

    @classmethod
    def from_open_clip(cls, cfg: dict) -> "PrepConfig":
        """Build from ``model.visual.preprocess_cfg`` (open_clip's PreprocessCfg as a dict)."""
        size = cfg.get("size", 224)
        if isinstance(size, (tuple, list)):
            if len(set(size)) != 1:
                raise UserError(f"non-square CLIP input size {tuple(size)} is not supported")
            size = size[0]
        mean = _triple(cfg.get("mean"))
        std = _triple(cfg.get("std"))
        interpolation = cfg.get("interpolation") or "bicubic"
        if interpolation == "random":
            interpolation = "bicubic"
        if interpolation not in ("bicubic", "bilinear"):
            raise UserError(f"CLIP preprocess interpolation {interpolation!r} is not supported")
        mode = cfg.get("resize_mode") or "shortest"
        if mode not in ("shortest", "squash"):
            raise UserError(f"CLIP preprocess resize_mode {mode!r} is not supported "
                            "(supported: shortest, squash)")
        return cls(int(size), mean, std, interpolation, mode)


def _triple(v) -> tuple[float, float, float]:
    from open_clip.constants import OPENAI_DATASET_MEAN

    if v is None:
        v = OPENAI_DATASET_MEAN
    if isinstance(v, (int, float)):
        v = (v,) * 3
    return tuple(float(x) for x in v)


# ---------------------------------------------------------------- geometry

@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where the resized image is cropped: the plain crop and the mirrored crop."""

    new_w: int
    new_h: int
    top: int
    left: int
    mirror_left: int   # left offset of the crop window in the *unmirrored* array for the mirror


def geometry(width: int, height: int, cfg: PrepConfig) -> Geometry:
    """torchvision ``Resize(S)`` + ``CenterCrop(S)`` arithmetic for a ``width x height`` image."""
    s = cfg.size
    if cfg.resize_mode == "squash":
        return Geometry(s, s, 0, 0, 0)
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(s * long / short)
    new_w, new_h = (s, new_long) if width <= height else (new_long, s)
    top = int(round((new_h - s) / 2.0))
    left = int(round((new_w - s) / 2.0))
    # Crop of mirror(R) at `left` == mirror of the crop of R at new_w - left - s.
    return Geometry(new_w, new_h, top, left, new_w - left - s)


# ---------------------------------------------------------------- CPU path

def _pil_filter(cfg: PrepConfig):
    from PIL import Image

    return Image.Resampling.BILINEAR if cfg.interpolation == "bilinear" else Image.Resampling.BICUBIC


# PIL resizes these modes with NEAREST, whose tie-breaking does not commute with a mirror.
_NEAREST_MODES = ("P", "1")


def decode(data: bytes, cfg: PrepConfig, draft: bool = True):
    """Open and decode ``data`` (raises on undecodable bytes); JPEGs at DCT scale when ``draft``.

    Raises :class:`ImageTooLarge` (or Pillow's DecompressionBombError) before decoding
    an image with more than ``Image.MAX_IMAGE_PIXELS`` pixels.
    """
    from PIL import Image

    DECODES.add()
    if probe_image(data).error == TOO_LARGE:     # the header says so: do not even open it
        raise ImageTooLarge("header claims more than MAX_PIXELS pixels")
    img = Image.open(io.BytesIO(data))
    limit = Image.MAX_IMAGE_PIXELS
    if limit and img.width * img.height > limit:
        raise ImageTooLarge(f"{img.width}x{img.height} pixels")
    if draft and img.format == "JPEG":
        # Largest DCT scale 1/k that keeps both sides >= S (Pillow picks k so).
        img.draft("RGB", (cfg.size, cfg.size))
    img.load()
    return img


def resize_rgb(img, geo: Geometry, cfg: PrepConfig) -> np.ndarray:
    """open_clip's order: resize in the file's own mode, then ``convert("RGB")``; uint8 HWC."""
    if (img.width, img.height) != (geo.new_w, geo.new_h):
        img = img.resize((geo.new_w, geo.new_h), _pil_filter(cfg))
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def crop_pair(arr, geo: Geometry, size: int):
    """Centre crop of ``arr`` and, when it differs from ``crop[:, ::-1]``, the mirrored crop.

    Works on numpy HWC arrays and torch HWC tensors alike.
    """
    rows = slice(geo.top, geo.top + size)
    crop = arr[rows, geo.left:geo.left + size]
    if geo.mirror_left == geo.left:
        return crop, None
    mirror = arr[rows, geo.mirror_left:geo.mirror_left + size]
    return crop, (mirror[:, ::-1] if isinstance(mirror, np.ndarray) else mirror.flip(1))


def prepare_image(data: bytes, cfg: PrepConfig, draft: bool = True):
    """One image -> (crop uint8 SxSx3, mirrored crop or None when it is ``crop[:, ::-1]``).

    With ``draft=False`` both are bit-identical to open_clip's eval transform of the
    image and of ``ImageOps.mirror(image)`` (before ToTensor/Normalize).
    """
    return _views(decode(data, cfg, draft), cfg)


def _views(img, cfg: PrepConfig):
    """(crop, mirror or None) of a decoded image: :func:`prepare_image` after the decode."""
    from PIL import Image

    geo = geometry(img.width, img.height, cfg)
    crop, mirror = crop_pair(resize_rgb(img, geo, cfg), geo, cfg.size)
    if img.mode in _NEAREST_MODES:
        flipped = resize_rgb(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), geo, cfg)
        mirror = flipped[geo.top:geo.top + cfg.size, geo.left:geo.left + cfg.size]
    return crop, mirror


def prepare_image_masked(data: bytes, cfg: PrepConfig, draft: bool, regions, fill: str):
    """One decode -> (crop, mirror or None, masked crop): the views of :func:`prepare_image` plus
    the image with ``regions`` (polygons in the full-size pixel frame, e.g. text boxes) filled
    by ``rules.ocr.fill_regions`` before the same resize and crop (T-MARS' masked view).

    The masked view is filled on the RGB image, then resized: with ``draft=False`` it equals
    open_clip's eval transform of ``fill_regions(image.convert("RGB"))``. Under ``draft`` the
    polygons are scaled to the reduced decode.
    """
    from PIL import Image

    from beam_filter.rules.ocr import fill_regions

    img = decode(data, cfg, draft)
    crop, mirror = _views(img, cfg)
    full = probe_image(data)
    sx = img.width / full.width if full.width else 1.0
    sy = img.height / full.height if full.height else 1.0
    polys = [np.asarray(p, dtype=np.float64).reshape(-1, 2) * (sx, sy) for p in regions]
    filled = Image.fromarray(fill_regions(np.asarray(img.convert("RGB")), polys, fill))
    geo = geometry(filled.width, filled.height, cfg)
    masked = resize_rgb(filled, geo, cfg)[geo.top:geo.top + cfg.size, geo.left:geo.left + cfg.size]
    return crop, mirror, masked


@dataclasses.dataclass
class PreparedBatch:
    """A batch of images ready for :func:`normalize_on_device`.

    ``pixels``: (B, S, S, 3) pixel values 0..255 -- uint8 numpy on the host, a uint8
    torch tensor (pinned host memory on the CUDA CPU path), or, from
    :class:`GpuJpegPrep`, a float32 tensor of whole numbers already on the device
    (skipping a uint8 round trip changes no value). ``mirrors``: index -> uint8
    (S, S, 3) mirrored crop for the images whose mirror is not simply
    ``pixels[i, :, ::-1]``. ``mirror_windows``: when set, (B, S, S, 3) like
    ``pixels`` such that the mirrored crops are ``mirror_windows[:, :, ::-1]``
    (``mirrors`` is then unused). ``errors``: per image None, ``"corrupt_image"`` or
    ``"image_too_large"`` (its pixels are a black placeholder). ``masked``: index -> masked
    crop, for the images given regions to fill (:func:`prepare_image_masked`).
    """

    pixels: object
    mirrors: dict
    errors: list
    mirror_windows: object = None
    masked: dict | None = None     # index -> uint8 (S, S, 3) masked crop (CpuImagePrep with regions)


def default_threads() -> int:
    """One decode thread per core, up to 8. On a 16-core H100 VM 16 threads made the
    ViT-B-32 draft path 1.1x faster but the ViT-L-14 one 0.7-0.8x (the decode threads
    then compete with the thread launching the forward pass), so the cap stays 8."""
    return max(1, min(8, os.cpu_count() or 1))


class CpuImagePrep:
    """Decode + resize + crop a list of encoded images in a thread pool (PIL releases the GIL).

    One instance is shared by all threads of a worker (it lives in the loaded model
    object); ThreadPoolExecutor is thread-safe, and each ``prepare`` call only waits
    for its own futures. The workers write their crops straight into the batch array,
    so the calling thread (which holds the GIL others need) copies nothing. With
    ``pin_memory`` the batch is a page-locked torch tensor, ready for an asynchronous
    copy to the GPU (no extra staging copy in :func:`normalize_on_device`).
    """

    def __init__(self, cfg: PrepConfig, draft: bool = True, threads: int | None = None,
                 pin_memory: bool = False):
        self.cfg = cfg
        self.draft = draft
        self.threads = threads or default_threads()
        self.pin_memory = pin_memory
        self._pool = None
        self._lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="clip-decode")
            return self._pool

    def prepare_one(self, data: bytes):
        """(crop, mirror, error) for one image; never raises for bad bytes."""
        try:
            crop, mirror = prepare_image(data, self.cfg, self.draft)
            return crop, mirror, None
        except Exception as e:  # untrusted bytes: any decoder failure is a reason, never a crash
            return None, None, decode_error(e)

    # ---- one decode shared with other models (models/shared_decode.py) ----
    def decode_spec(self) -> DecodeSpec:
        """The decode :meth:`prepare` does: full size, or JPEG draft at this size."""
        return DecodeSpec(self.cfg.size if self.draft else None)

    def views(self, img):
        """(crop, mirror or None) from an image another caller decoded: :meth:`prepare_one` after
        its decode (so from a decode like :meth:`decode_spec`'s, the same pixels)."""
        return _views(img, self.cfg)

    def batch_from_views(self, views: Sequence, errors: Sequence) -> PreparedBatch:
        """A :class:`PreparedBatch` of :meth:`views` results (None where ``errors`` has a reason:
        black placeholder), as :meth:`prepare` would have assembled it."""
        pixels, out = self._alloc(len(views))
        mirrors = {}
        for i, (v, err) in enumerate(zip(views, errors)):
            if err is None:
                out[i] = v[0]
                if v[1] is not None:
                    mirrors[i] = v[1]
            else:
                out[i] = 0
        return PreparedBatch(pixels, mirrors, list(errors))

    def prepare_masked(self, images: Sequence[bytes], regions: Sequence, fill: str) -> PreparedBatch:
        """:meth:`prepare` plus, for each image whose ``regions`` entry is non-empty, its masked
        crop in ``masked`` (one decode per image for all three views)."""
        pixels, out = self._alloc(len(images))

        def one(i: int):
            try:
                if regions[i]:
                    crop, mirror, masked = prepare_image_masked(images[i], self.cfg, self.draft,
                                                                regions[i], fill)
                else:
                    (crop, mirror), masked = prepare_image(images[i], self.cfg, self.draft), None
                out[i] = crop
                return mirror, masked, None
            except Exception as e:  # untrusted bytes: any decoder failure is a reason, never a crash
                out[i] = 0
                return None, None, decode_error(e)

        if self.threads > 1 and len(images) > 1:
            results = list(self._executor().map(one, range(len(images))))
        else:
            results = [one(i) for i in range(len(images))]
        mirrors, masked, errors = {}, {}, []
        for i, (mirror, m, err) in enumerate(results):
            errors.append(err)
            if mirror is not None:
                mirrors[i] = mirror
            if m is not None:
                masked[i] = m
        return PreparedBatch(pixels, mirrors, errors, masked=masked)

    def _alloc(self, n: int):
        s = self.cfg.size
        if self.pin_memory:
            import torch

            t = torch.empty((n, s, s, 3), dtype=torch.uint8, pin_memory=True)
            return t, t.numpy()
        arr = np.empty((n, s, s, 3), np.uint8)
        return arr, arr

    def prepare(self, images: Sequence[bytes]) -> PreparedBatch:
        pixels, out = self._alloc(len(images))

        def one(i: int):
            crop, mirror, err = self.prepare_one(images[i])
            if err is None:
                out[i] = crop
            else:
                out[i] = 0
            return mirror, err

        if self.threads > 1 and len(images) > 1:
            results = list(self._executor().map(one, range(len(images))))
        else:
            results = [one(i) for i in range(len(images))]
        mirrors, errors = {}, []
        for i, (mirror, err) in enumerate(results):
            errors.append(err)
            if mirror is not None:
                mirrors[i] = mirror
        return PreparedBatch(pixels, mirrors, errors)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


# ---------------------------------------------------------------- GPU path

def is_jpeg(data: bytes) -> bool:
    return bytes(data[:3]) == _JPEG_MAGIC


class GpuJpegPrep:
    """nvJPEG decode + torch resize on the GPU, with the CPU path for what nvJPEG refuses.

    ``decode_fn(list_of_uint8_cpu_tensors, device) -> list_of_CHW_uint8_tensors`` is
    torchvision's batched ``decode_jpeg`` by default; it is a parameter so the
    fallback bookkeeping can be tested on a CPU-only machine.
    """

    def __init__(self, cfg: PrepConfig, device, cpu: CpuImagePrep, decode_fn=None):
        self.cfg = cfg
        self.device = device
        self.cpu = cpu
        self.decode_fn = decode_fn or _torchvision_decoder()

    def _decode_all(self, blobs: list) -> list:
        """Decode JPEGs on the device: a batch call, then one by one if the batch fails."""
        import torch

        tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        try:
            return list(self.decode_fn(tensors, self.device))
        except Exception:  # one bad file fails nvJPEG's batch; retry singly to isolate it
            out = []
            for t in tensors:
                try:
                    out.append(self.decode_fn([t], self.device)[0])
                except Exception:
                    out.append(None)
            return out

    def prepare(self, images: Sequence[bytes]) -> PreparedBatch:
        """Decode, resize and crop; the batch is assembled with one ``stack`` per output.

        Per image this launches two kernels (to float, resize) and no copies: the
        crop and the mirror window are views that ``torch.stack`` gathers for the
        whole batch at once, and the rounding and clamping a uint8 result implies run
        once on each stacked batch (element-wise, so the values are those of rounding
        each resized image; the first version's per-image copies, uint8 conversions,
        rounds and clamps were two thirds of the launches, which the one Python thread
        issuing them pays for under the GIL).
        """
        import torch

        s = self.cfg.size
        n = len(images)
        # A JPEG whose header claims too many pixels never reaches nvJPEG (it would allocate
        # them on the device); the CPU path refuses it as image_too_large. ~2 us per image.
        jpeg_idx = [i for i, b in enumerate(images) if is_jpeg(b) and probe_image(b).error != TOO_LARGE]
        decoded = dict(zip(jpeg_idx, self._decode_all([images[i] for i in jpeg_idx]))) if jpeg_idx else {}
        crops: list = [None] * n      # float (3, S, S) views
        windows: list = [None] * n    # mirror windows: flipped, they are the mirrored crops
        errors: list = [None] * n
        fallback = []
        for i in range(n):
            chw = decoded.get(i)
            if chw is None or chw.ndim != 3 or chw.shape[0] != 3:
                fallback.append(i)
                continue
            x, geo = _resize_on_device(chw, self.cfg)
            rows = slice(geo.top, geo.top + s)
            crops[i] = x[:, rows, geo.left:geo.left + s]
            windows[i] = x[:, rows, geo.mirror_left:geo.mirror_left + s]
        if fallback:
            cpu = self.cpu.prepare([images[i] for i in fallback])
            host = torch.as_tensor(cpu.pixels)
            host_win = host
            if cpu.mirrors:
                host_win = host.clone()
                for j, m in cpu.mirrors.items():
                    host_win[j] = torch.from_numpy(np.ascontiguousarray(m[:, ::-1]))
            dev = host.to(self.device).permute(0, 3, 1, 2).float()
            dev_win = dev if host_win is host else host_win.to(self.device).permute(0, 3, 1, 2).float()
            for j, i in enumerate(fallback):
                errors[i] = cpu.errors[j]
                crops[i], windows[i] = dev[j], dev_win[j]
        pixels = _as_uint8_values(torch.stack(crops)).permute(0, 2, 3, 1)
        mirror_windows = _as_uint8_values(torch.stack(windows)).permute(0, 2, 3, 1)
        return PreparedBatch(pixels, {}, errors, mirror_windows)


def _torchvision_decoder():
    """torchvision's batched nvJPEG ``decode_jpeg``, or a clear error where it is gone.

    torchvision deprecated its image decoders in 0.29 in favour of TorchCodec. Were
    ``decode_jpeg`` missing, every batch would fail, fall back to the CPU path image
    by image and run slower with no error, so its absence is said at load time.
    """
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError as e:
        raise UserError("decode=gpu needs torchvision.io.decode_jpeg, which this torchvision "
                        f"does not have ({e}); use decode=cpu or a torchvision that has it") from e

    def decode(tensors: list, device) -> list:
        return decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)

    return decode


def _resize_on_device(chw, cfg: PrepConfig):
    """uint8 CHW -> float32 CHW resized like :func:`geometry` says, not yet rounded.

    Antialiased with PIL's kernel in one float pass; :func:`_as_uint8_values` then
    rounds and clamps the stacked batch as a uint8 result would be (the values of
    the uint8 version, without the conversion kernel).
    """
    geo = geometry(int(chw.shape[2]), int(chw.shape[1]), cfg)
    x = chw.float()
    if (geo.new_h, geo.new_w) != tuple(chw.shape[1:]):
        x = _antialiased_resize(x[None], (geo.new_h, geo.new_w), cfg.interpolation)[0]
    return x, geo


def _antialiased_resize(x, size: tuple[int, int], interpolation: str):
    """``F.interpolate(x, size, mode, antialias=True, align_corners=False)``, minus its
    Python argument checks (about 7 us per call, once per image on the GPU path): the
    aten op F.interpolate itself calls, with the same arguments."""
    import torch

    op = getattr(torch._C._nn, f"_upsample_{interpolation}2d_aa", None)
    if op is None:   # a torch without the private op: the public call gives the same values
        return torch.nn.functional.interpolate(x, size=size, mode=interpolation,
                                               antialias=True, align_corners=False)
    return op(x, list(size), False, None)


def _as_uint8_values(x):
    """Round and clamp to 0..255 in place: float whole numbers, as a uint8 image would hold."""
    return x.round_().clamp_(0, 255)


# ---------------------------------------------------------------- on the device

def _to_device(t, device):
    """Host numpy/tensor or device tensor -> tensor on ``device`` (pinned, asynchronous on CUDA)."""
    import torch

    if isinstance(t, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(t))
    if t.device.type == "cpu" and device.type == "cuda" and not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def normalize_on_device(batch: PreparedBatch, cfg: PrepConfig, device, dtype, with_mirror: bool = True):
    """(B,S,S,3) pixels 0..255 -> normalised (B,3,S,S) ``dtype`` tensor(s) on ``device``.

    The maths is ToTensor's ``x.float() / 255`` then Normalize's ``(x - mean) / std``
    in fp32 (bit-identical to open_clip's CPU transform), cast to the model dtype last.
    Returns ``(images, mirrored_images or None)``. The mirrored crops that are not a
    plain flip (``batch.mirrors``) go to the device in one copy and one indexed write.
    """
    import torch

    px = _to_device(batch.pixels, device)
    mean = torch.tensor(cfg.mean, device=device, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=device, dtype=torch.float32).view(1, 3, 1, 1)

    def norm(p):
        x = p.permute(0, 3, 1, 2).float().div(255)   # out of place: p may be the batch's own tensor
        return x.sub_(mean).div_(std).to(dtype).contiguous(memory_format=torch.contiguous_format)

    images = norm(px)
    if not with_mirror:
        return images, None
    if batch.mirror_windows is not None:
        return images, norm(_to_device(batch.mirror_windows, device).flip(2))
    flipped = px.flip(2)
    if batch.mirrors:
        idx = sorted(batch.mirrors)
        ms = [batch.mirrors[i] for i in idx]
        if all(isinstance(m, np.ndarray) for m in ms):
            stacked = _to_device(np.stack(ms), device)
        else:
            stacked = torch.stack([torch.as_tensor(np.ascontiguousarray(m) if isinstance(m, np.ndarray)
                                                   else m).to(device) for m in ms])
        flipped[torch.tensor(idx, device=device)] = stacked.to(flipped.dtype)
    return images, norm(flipped)
