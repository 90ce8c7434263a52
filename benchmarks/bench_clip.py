"""Throughput of the CLIP handler: decode/preprocess alone, and decode + preprocess + model.

    python benchmarks/bench_clip.py --arch ViT-B-32 --n 256 --json out.json
    python benchmarks/bench_clip.py --arch ViT-B-32,ViT-L-14 --n 64 --device cpu
    python benchmarks/bench_clip.py --measure-draft --n 120 --images large --json draft.json
    python benchmarks/bench_clip.py --prep-only --n 512 --images datacomp
    python benchmarks/bench_clip.py --tokenizer --n 20000

Models have RANDOM weights (``create_model(arch, pretrained=None)`` through a config
file), so nothing is downloaded; throughput does not depend on the weights. Images
are photo-like JPEGs generated with PIL, sizes drawn from 128 to 1600 px on the short
side with aspect ratios 0.5-2 (DataComp pools hold mostly a few hundred px). On CUDA
it also names the GPU and samples its busy fraction with nvidia-smi (the share of
time a kernel was running) while the full handler runs.

``--measure-draft`` gives the score difference of ``draft=True`` (and, on CUDA, of
``decode=gpu``) against the exact open_clip preprocessing, for the tiny test model and
a ViT-B-32-shaped random model: the figures quoted in ``beam_filter/models/image_prep.py``.

Measured on one H100 80GB HBM3 with 16 CPU cores (full handler, flipped pass on,
fp16, batch 128, 8 decode threads, 1536 images, images/s with GPU busy fraction;
best of 1, 2 and 4 concurrent callers; "before" is the previous commit run by
``--code-root`` on the same images in the same session):

                         before                  after (per-thread CUDA streams, batched GPU crops)
    ViT-B-32 decode=cpu  880 (busy 12%)          852 (busy 12%)
    ViT-B-32 decode=gpu  1744 (busy 31%)         2015 (busy 33%); 2172 with 3 callers
    ViT-L-14 decode=cpu  600 (busy 62%)          710 (busy 65%)
    ViT-L-14 decode=gpu  756 (busy 71%)          818 (busy 80%); 797 (busy 80%) with 3 callers
    preprocess only (batch 64): cpu draft 895-960, nvJPEG 2247-4427

Batch 256 did not help (B/32 gpu 1998, L/14 gpu 820). Scores are bit-identical to the
previous commit in every mode (fp32 and fp16, cpu draft/exact, gpu). The B/32 GPU path
is bound by Python/GIL work around nvJPEG (decode call, per-image resize launches,
tokenizer), not by the GPU: its forward pass on 256 images takes 10 ms of a ~60 ms batch.

The table above used six fixed captions; the handler benchmark now pairs images with
alt-text-like captions (:func:`web_captions`), which cost open_clip's tokenizer far more
(``--tokenizer``, 2-core VM, 20,000 captions of 16.5 words: open_clip 138 us per caption
warm / 190 cold, the cached tokenizer the handler uses 34 / 91). GPU figures with
these captions have not been taken yet.

All figures above used large web photos (now ``--images large``); the default profile is
DataComp-sized images (longer side <= 512). On this project's 2-core CPU box, preprocess only
(``--prep-only --n 512``): DataComp-sized 666 img/s with draft, 628 without; large 417 and
201 (an earlier, busier run of the large profile: 120-270 and 80-90); full handler fp32 ViT-B-32 1.7-1.9 img/s,
ViT-L-14 0.1-0.2 img/s.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

# --code-root benchmarks another copy of beam_filter (say the previous commit's) on the same images.
_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if "--code-root" in sys.argv:
    _root = os.path.abspath(sys.argv[sys.argv.index("--code-root") + 1])
sys.path.insert(0, _root)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CAPTIONS = ["a photo of a dog on the beach", "red car parked in the street", "stock photo",
            "delicious pasta with tomato sauce", "mountain landscape at sunset", "logo"]


def web_captions(n: int, seed: int = 0, vocab: int = 200_000) -> list[str]:
    """Alt-text-like captions: 2-30 words drawn by Zipf's law (s=1.1) from ``vocab``
    made-up words, some capitalised, some numbers and punctuation, about one in ten
    with accented or non-Latin letters. Word frequencies matter to the tokenizer's
    cache, so they are web-like rather than a handful of fixed captions."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    lengths = rng.integers(2, 11, vocab)
    words = ["".join(rng.choice(letters, int(k))) for k in lengths]
    ranks = np.minimum(rng.zipf(1.1, size=n * 30), vocab) - 1
    accents = ["caf\u00e9", "\u00fcber", "\u4e2d\u6587", "\u0440\u0443\u0441", "ni\u00f1o", "\u00e9t\u00e9"]
    out, pos = [], 0
    for i in range(n):
        k = int(rng.integers(2, 31))
        ws = [words[r] for r in ranks[pos:pos + k]]
        pos += k
        if rng.random() < 0.3:
            ws[0] = ws[0].capitalize()
        if rng.random() < 0.2:
            ws.append(str(int(rng.integers(1, 5000))))
        if rng.random() < 0.1:
            ws.insert(int(rng.integers(0, len(ws))), accents[int(rng.integers(0, len(accents)))])
        out.append(" ".join(ws) + (" - stock photo" if rng.random() < 0.1 else ""))
    return out


def photo_jpeg(rng, w: int, h: int, quality: int) -> bytes:
    """A photo-like JPEG: smooth gradients, a few shapes, mild noise."""
    from PIL import Image, ImageDraw

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], -1) * 255
    base = base * rng.uniform(0.3, 1.0, 3) + rng.uniform(0, 80, 3)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(8):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        d.ellipse((x0, y0, x0 + int(rng.integers(8, w // 2 + 9)), y0 + int(rng.integers(8, h // 2 + 9))),
                  fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    arr = np.asarray(img).astype(np.int16) + rng.integers(-10, 11, (h, w, 3), dtype=np.int16)
    out = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=quality)
    return out.getvalue()


# Image size profiles. "large": short side 128-1600 px (log-uniform), aspect 0.5-2, as
# photos come from the web. "datacomp": the same photos as DataComp's downloader stores
# them (img2dataset image_size=512, resize_mode=keep_ratio_largest,
# resize_only_if_bigger: the longer side at most 512 px), the images a DataComp pool holds.
IMAGE_PROFILES = ("datacomp", "large")
DATACOMP_MAX_SIDE = 512


def _one_image(seed: int, i: int, profile: str = "datacomp") -> bytes:
    rng = np.random.default_rng([seed, i])
    short = int(np.exp(rng.uniform(np.log(128), np.log(1600))))
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    w, h = (int(short * aspect), short) if aspect >= 1 else (short, int(short / aspect))
    if profile == "datacomp" and max(w, h) > DATACOMP_MAX_SIDE:
        scale = DATACOMP_MAX_SIDE / max(w, h)
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
    return photo_jpeg(rng, w, h, int(rng.integers(75, 96)))


def make_images(n: int, seed: int = 0, profile: str = "datacomp") -> list[bytes]:
    """``n`` JPEGs, image i from its own generator (seed, i): the same set on any core count."""
    from concurrent.futures import ProcessPoolExecutor

    if profile not in IMAGE_PROFILES:
        raise SystemExit(f"unknown image profile {profile!r}: use one of {', '.join(IMAGE_PROFILES)}")
    if n < 32 or (os.cpu_count() or 1) < 4:
        return [_one_image(seed, i, profile) for i in range(n)]
    with ProcessPoolExecutor(min(16, os.cpu_count())) as pool:
        return list(pool.map(_one_image, [seed] * n, range(n), [profile] * n, chunksize=8))


def random_arch_config(arch: str, directory: str) -> str:
    """open_clip config of ``arch`` written to a file, so the handler builds it with random weights."""
    import open_clip

    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise SystemExit(f"unknown arch {arch}")
    path = os.path.join(directory, f"random-{arch}.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


class GpuBusySampler:
    """Samples nvidia-smi utilization.gpu every 50 ms in the background."""

    def __init__(self):
        self.samples: list[float] = []
        self._proc = None
        self._thread = None

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 "-lms", "50"], stdout=subprocess.PIPE, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self):
        for line in self._proc.stdout:
            try:
                self.samples.append(float(line.strip().split(",")[0]) / 100)
            except ValueError:
                pass

    def __exit__(self, *exc):
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()
            self._thread.join(1)

    @property
    def busy(self):
        return round(float(np.mean(self.samples)), 3) if self.samples else None


def batches(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


def bench_prep(images, cfg, draft, threads, decode="cpu", device=None):
    from beam_filter.models.image_prep import CpuImagePrep, GpuJpegPrep

    prep = CpuImagePrep(cfg, draft=draft, threads=threads)
    if decode == "gpu":
        prep = GpuJpegPrep(cfg, device, prep)
    prep.prepare(images[:8])
    t = time.perf_counter()
    for b in batches(images, 64):
        out = prep.prepare(b)
    if decode == "gpu":
        import torch
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    assert all(e is None for e in out.errors)
    return round(len(images) / dt, 1)


def bench_handler(runner, images, batch_size, concurrency):
    """images/s of ClipRunner.infer; ``concurrency`` threads share it like Beam's worker threads."""
    from concurrent.futures import ThreadPoolExecutor

    examples = list(zip(images, web_captions(len(images))))
    runner.infer(examples[:batch_size])        # warm-up (allocations, kernels)
    work = batches(examples, batch_size)
    t = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(runner.infer, work))
    return round(len(examples) / (time.perf_counter() - t), 1)


def bench_arch(arch, images, args, tmp):
    import torch

    from beam_filter.models.clip import ClipModelHandler

    cfg_path = random_arch_config(arch, tmp)
    res = {"arch": arch, "weights": "random", "batch_size": args.batch_size}
    variants = [v for v in args.variants if v != "gpu" or (args.device != "cpu" and torch.cuda.is_available())]
    for variant in variants:
        decode, draft = {"cpu_draft": ("cpu", True), "cpu_exact": ("cpu", False),
                         "gpu": ("gpu", False)}[variant]
        runner = ClipModelHandler(cfg_path, None, device=args.device, batch_size=args.batch_size,
                                  precision=args.precision, draft=draft, decode=decode,
                                  decode_threads=args.threads).load_model()
        key = f"decode_{decode}" + ("_draft" if draft else "")
        res["device"] = str(runner.device)
        res["precision"] = str(runner.dtype).replace("torch.", "")
        res["image_size"] = runner.prep_cfg.size
        res[f"prep_only_{key}_img_s"] = bench_prep(images, runner.prep_cfg, draft, args.threads,
                                                   decode, runner.device)
        for conc in ([] if args.prep_only else args.concurrency):
            with GpuBusySampler() as busy:
                res[f"handler_{key}_c{conc}_img_s"] = bench_handler(runner, images,
                                                                   args.batch_size, conc)
            if runner.device.type == "cuda":
                res[f"handler_{key}_c{conc}_gpu_busy"] = busy.busy
        print(json.dumps(res), flush=True)
        del runner
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return res


def measure_draft(images, args, tmp):
    """Score differences draft vs exact preprocessing (and nvJPEG vs exact on CUDA)."""
    import torch

    from beam_filter.devtools.tiny_models import write_tiny_clip
    from beam_filter.models.clip import ClipModelHandler
    from beam_filter.models.image_prep import CpuImagePrep, GpuJpegPrep

    tiny_cfg, tiny_ckpt = write_tiny_clip(tmp, like="ViT-B-32", seed=0)
    models = {"tiny-ViT-B-32": (tiny_cfg, tiny_ckpt),
              "random-ViT-B-32": (random_arch_config("ViT-B-32", tmp), None)}
    variants = [("draft", "cpu", True)]
    if torch.cuda.is_available():
        variants.append(("gpu_decode", "gpu", False))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    examples = [(b, CAPTIONS[i % len(CAPTIONS)]) for i, b in enumerate(images)]
    out = {}
    for name, (cfg, ckpt) in models.items():
        # One runner (one set of weights) for every variant: only its preprocessing changes.
        runner = ClipModelHandler(cfg, ckpt, device=device, precision="fp32", draft=False,
                                  decode_threads=args.threads).load_model()

        def scores(prep):
            runner.prep = prep
            res = [o for b in batches(examples, args.batch_size) for o in runner.infer(b)]
            return np.array([o["score"] for o in res]), np.array([o["flipped_score"] for o in res])

        exact = CpuImagePrep(runner.prep_cfg, draft=False, threads=args.threads)
        ref_s, ref_f = scores(exact)
        for vname, decode, draft in variants:
            prep = CpuImagePrep(runner.prep_cfg, draft=draft, threads=args.threads)
            if decode == "gpu":
                prep = GpuJpegPrep(runner.prep_cfg, runner.device, exact)
            s, f = scores(prep)
            d = np.abs(np.concatenate([s - ref_s, f - ref_f]))
            out[f"{name}_{vname}"] = {
                "image_size": runner.prep_cfg.size, "n_images": len(images),
                "max_abs_diff": round(float(d.max()), 5), "mean_abs_diff": round(float(d.mean()), 6),
                "score_std_over_images": round(float(ref_s.std()), 5)}
            print(json.dumps({f"{name}_{vname}": out[f"{name}_{vname}"]}), flush=True)
    return out


def measure_tokenizer(args):
    """us per caption: open_clip's SimpleTokenizer vs the cached one, on web-like captions.

    The first pass starts from an empty cache (every new word misses); later passes
    over the same captions show the warm rate a long-running worker settles at.
    """
    import open_clip

    from beam_filter.models.clip_tokenizer import CachedClipTokenizer

    texts = web_captions(args.n)
    ref = open_clip.get_tokenizer("ViT-B-32")
    cached = CachedClipTokenizer(open_clip.get_tokenizer("ViT-B-32"))

    def us_per_caption(tok):
        t = time.perf_counter()
        for chunk in batches(texts, 128):
            tok(chunk)
        return round((time.perf_counter() - t) / len(texts) * 1e6, 1)

    out = {"n_captions": len(texts), "mean_words": round(float(np.mean([len(t.split()) for t in texts])), 1),
           "open_clip_us": us_per_caption(ref), "cached_cold_us": us_per_caption(cached),
           "cached_words": len(cached._ids)}
    out["cached_warm_us"] = us_per_caption(cached)
    out["open_clip_warm_us"] = us_per_caption(ref)
    out["speedup_warm"] = round(out["open_clip_warm_us"] / out["cached_warm_us"], 1)
    print(json.dumps(out), flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="ViT-B-32", help="comma-separated open_clip architectures")
    ap.add_argument("--n", type=int, default=256, help="number of generated JPEGs")
    ap.add_argument("--images", default="datacomp", choices=IMAGE_PROFILES,
                    help="image sizes: as a DataComp pool stores them (longer side <= 512, the "
                         "default) or large web photos (short side 128-1600 px)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="decode threads (default min(8, cpus))")
    ap.add_argument("--concurrency", default="1,2",
                    help="comma-separated numbers of threads calling the handler at once")
    ap.add_argument("--variants", default="cpu_draft,cpu_exact,gpu",
                    help="comma-separated preprocessing variants: cpu_draft, cpu_exact, gpu")
    ap.add_argument("--code-root", default=None,
                    help="directory holding the beam_filter package to benchmark (default: this checkout)")
    ap.add_argument("--prep-only", action="store_true",
                    help="time decoding/preprocessing alone, not the model (for CPU-only machines)")
    ap.add_argument("--measure-draft", action="store_true")
    ap.add_argument("--tokenizer", action="store_true",
                    help="only time open_clip's tokenizer against the cached one (--n captions)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    args.concurrency = [int(c) for c in str(args.concurrency).split(",")]
    args.variants = [v for v in args.variants.split(",") if v]

    import torch

    if args.tokenizer:
        report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                  "tokenizer": measure_tokenizer(args)}
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
        return

    t = time.perf_counter()
    images = make_images(args.n, profile=args.images)
    sizes = [len(b) for b in images]
    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                          "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
              "images": {"n": len(images), "profile": args.images,
                         "mean_kb": round(float(np.mean(sizes)) / 1024, 1),
                         "generated_s": round(time.perf_counter() - t, 1)}}
    with tempfile.TemporaryDirectory() as tmp:
        if args.measure_draft:
            report["draft"] = measure_draft(images, args, tmp)
        else:
            report["results"] = [bench_arch(a, images, args, tmp) for a in args.arch.split(",")]
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
