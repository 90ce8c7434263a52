"""Throughput of the "Devil is in the Details" pieces added in issue 17, on this machine's CPU.

    python benchmarks/bench_devil.py --n 64 --json out.json

* ``face_img_per_s``: the face_area handler (models/faces.py: decode, shrink to 640 px, OpenCV
  Haar cascade) on DataComp-sized (200-512 px sides) photo-like JPEGs, a quarter of them with
  matplotlib's real portrait pasted in; ``faces_found`` says the cascade worked.
* ``blur_img_per_s``: output_blur.blur_faces (decode, blur, JPEG re-encode) on the same images
  with one face box each: the cost --apply-blur adds per blurred sample in the reshard writer.
* ``caption_count_rows_per_s``: cluster/caption_freq.count_captions (normalise + count) in one
  process: the per-row work of the distributed count.
The machine (CPU count, platform) is named in the output.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time

import numpy as np


def images(n: int, seed: int) -> list[bytes]:
    import matplotlib.cbook as cbook
    from PIL import Image

    with open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), "rb") as f:
        face = Image.open(io.BytesIO(f.read())).convert("RGB")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = int(rng.integers(200, 513)), int(rng.integers(200, 513))
        small = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
        if i % 4 == 0:
            s = min(w, h) / max(face.size)
            img.paste(face.resize((int(face.width * s), int(face.height * s))), (0, 0))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    os.environ.setdefault("BEAM_FILTER_OFFLINE", "1")

    from beam_filter.cluster.caption_freq import count_captions
    from beam_filter.models.faces import FaceModelHandler
    from beam_filter.output_blur import blur_faces

    jpegs = images(args.n, args.seed)
    runner = FaceModelHandler().load_model()
    runner.infer(jpegs[:4])                                            # warm-up
    t0 = time.perf_counter()
    outs = runner.infer(jpegs)
    face_rate = len(jpegs) / (time.perf_counter() - t0)
    found = sum(bool(o["boxes"]) for o in outs)

    t0 = time.perf_counter()
    for j in jpegs:
        blur_faces(j, [[0.2, 0.2, 0.5, 0.6]], "jpg")
    blur_rate = len(jpegs) / (time.perf_counter() - t0)

    rng = np.random.default_rng(args.seed)
    caps = [f"  A photo of item {int(v)} " if v % 3 else "Click to enlarge" for v in rng.integers(10_000, size=args.rows)]
    t0 = time.perf_counter()
    count_captions(caps)
    count_rate = args.rows / (time.perf_counter() - t0)

    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "images": len(jpegs),
              "face_img_per_s": round(face_rate, 1), "faces_found": found, "with_portrait": (args.n + 3) // 4,
              "blur_img_per_s": round(blur_rate, 1), "caption_count_rows_per_s": round(count_rate)}
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
