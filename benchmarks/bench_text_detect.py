"""Throughput of the text_detect handler (PP-OCR ONNX detector + recogniser), and its precision/recall.

    python benchmarks/bench_text_detect.py --n 48 --json out.json
    python benchmarks/bench_text_detect.py --n 256 --batch-size 32 --device cuda   # onnxruntime-gpu only

Images are generated with PIL the way the tests make them (tests/conftest.py ``text_images``):
half rendered words on textured backgrounds, half text-free elongated shapes, DataComp-sized
(200-512 px sides). The figures: images/s of the whole handler (decode, square pad, one
detector call per batch, recognition of every box), of the detector alone (``recognize``
off), and detection recall / false positives per image with and without the recogniser's
confirmation (>= 2 letters/digits read with confidence >= 0.5) -- the measurement behind
the text_detect default. The machine (CPU count, ONNX Runtime providers, GPU name) is named
in the output. The share of a CLIP ViT-L/14 pipeline it adds is
``l14_img_per_s / text_detect_img_per_s`` with ``--l14-img-per-s`` from bench_clip.py on the
same machine (README: 0.1-0.2 img/s on the 2-core CPU VM, 710-818 on an H100).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def images(n: int, seed: int):
    """(jpegs, has_text, word boxes): the tests' generators (tests/conftest.py), imported by path."""
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    import conftest  # noqa: E402 - the generator of the tests, not a test helper import between tests

    rng = np.random.default_rng(seed)
    out, has_text, words = [], [], []
    for i in range(n):
        w, h = int(rng.integers(200, 513)), int(rng.integers(200, 513))
        if i % 2 == 0:
            img, boxes, _ = conftest._text_image(rng, w, h)
        else:
            img, boxes = conftest._shape_image(rng, w, h), []
        out.append(conftest._jpeg(img, 90))
        has_text.append(i % 2 == 0)
        words.append(boxes)
    return out, has_text, words


def box_level(outs, words, min_score: float, min_chars: int) -> dict:
    """Precision/recall of the confirmation rule over detected boxes: a box is text when at least
    half of its bounding box lies on rendered words."""
    from beam_filter.rules.ocr import confirmed

    tp = fp = fn = tn = 0
    for o, gt in zip(outs, words):
        for box, ok in zip(o["boxes"], confirmed(o["texts"], o["rec_scores"], min_score, min_chars)):
            x0, y0 = box.min(0)
            x1, y1 = box.max(0)
            area = max(1, (x1 - x0) * (y1 - y0))
            inter = sum(max(0, min(x1, c) - max(x0, a)) * max(0, min(y1, d) - max(y0, b)) for a, b, c, d in gt)
            is_text = inter >= 0.5 * area
            tp += ok and is_text
            fp += ok and not is_text
            fn += (not ok) and is_text
            tn += (not ok) and not is_text
    tp, fp, fn, tn = int(tp), int(fp), int(fn), int(tn)
    return {"boxes": tp + fp + fn + tn, "text_boxes": tp + fn, "precision": round(tp / max(1, tp + fp), 3),
            "recall": round(tp / max(1, tp + fn), 3), "rejected_non_text": tn}


def run(runner, jpegs, batch_size):
    """(outputs, images/s wall, CPU seconds per image over all threads: steadier on a shared box)."""
    outs, t0, c0 = [], time.perf_counter(), time.process_time()
    for i in range(0, len(jpegs), batch_size):
        outs.extend(runner.infer(jpegs[i:i + batch_size]))
    return outs, len(jpegs) / (time.perf_counter() - t0), (time.process_time() - c0) / len(jpegs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--det-size", type=int, default=None)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--l14-img-per-s", type=float, default=None,
                    help="ViT-L-14 handler img/s on this machine (bench_clip.py), for the added share")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    os.environ.setdefault("BEAM_FILTER_OFFLINE", "1")

    import onnxruntime as ort

    from beam_filter.models.text_detect import TextDetectHandler
    from beam_filter.stages.ocr import detection_columns

    jpegs, has_text, words = images(args.n, args.seed)
    kw = dict(device=args.device, batch_size=args.batch_size, det_size=args.det_size)
    full = TextDetectHandler(**kw).load_model()
    run(full, jpegs[: args.batch_size], args.batch_size)                 # warm-up
    outs, full_rate, full_cpu = run(full, jpegs, args.batch_size)
    det_only = TextDetectHandler(recognize=False, **kw).load_model()
    run(det_only, jpegs[: args.batch_size], args.batch_size)
    _, det_rate, det_cpu = run(det_only, jpegs, args.batch_size)

    def rates(confirm):
        found = [detection_columns(o, confirm, 0.5, 2)["text_box_count"] > 0 for o in outs]
        tp = sum(f and t for f, t in zip(found, has_text))
        fp = sum(f and not t for f, t in zip(found, has_text))
        return {"recall": tp / max(1, sum(has_text)), "false_positive_images": fp,
                "text_free_images": len(has_text) - sum(has_text),
                "precision": tp / max(1, tp + fp)}

    gpu = None
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - naming the GPU is best effort
        pass
    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "gpu": gpu,
                          "providers": full.detector.session.get_providers()},
              "onnxruntime": ort.__version__, "n": args.n, "batch_size": args.batch_size,
              "det_size": full.side, "img_per_s": round(full_rate, 2),
              "detector_only_img_per_s": round(det_rate, 2),
              "cpu_s_per_image": round(full_cpu, 3), "detector_only_cpu_s_per_image": round(det_cpu, 3),
              "confirmed": rates(True), "detector_alone": rates(False),
              "confirmation_per_box": box_level(outs, words, 0.5, 2)}
    if args.l14_img_per_s:
        report["share_of_l14_pipeline"] = round(args.l14_img_per_s / full_rate, 3)
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
