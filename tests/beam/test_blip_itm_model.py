"""BLIP ITM handler (models/blip_itm.py) with the tiny twin: P(match) equals transformers' own pipeline."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image


def _jpeg(seed, size=(80, 60)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_itm_probability_matches_transformers_reference(tmp_path):
    import torch
    from transformers import BlipForImageTextRetrieval, BlipImageProcessor, BertTokenizerFast

    from beam_filter.devtools.tiny_models import write_tiny_blip_itm
    from beam_filter.models.blip_itm import BlipItmModelHandler

    d = write_tiny_blip_itm(str(tmp_path / "blip"))
    images = [_jpeg(i, (80 + 13 * i, 60)) for i in range(4)]
    captions = ["a red car on the street", "dog", "", "a man sitting at a table with food " * 8]
    handler = BlipItmModelHandler(d, device="cpu", precision="fp32", batch_size=8)
    runner = handler.load_model()
    got = list(handler.run_inference(list(zip(images, captions)) + [(b"broken", "x")], runner))
    assert got[-1]["error"] == "corrupt_image" and np.isnan(got[-1]["score"])

    # reference: transformers' image processor + tokenizer + model, as its model card does it
    net = BlipForImageTextRetrieval.from_pretrained(d).eval()
    proc = BlipImageProcessor.from_pretrained(d)
    tok = BertTokenizerFast.from_pretrained(d)
    for img, cap, out in zip(images, captions, got):
        pix = proc(Image.open(io.BytesIO(img)).convert("RGB"), return_tensors="pt")["pixel_values"]
        t = tok([cap], truncation=True, max_length=35, return_tensors="pt")
        with torch.no_grad():
            logits = net(input_ids=t["input_ids"], attention_mask=t["attention_mask"], pixel_values=pix,
                         use_itm_head=True).itm_score
        ref = torch.softmax(logits, -1)[0, 1].item()
        assert out["error"] is None and out["score"] == pytest.approx(ref, abs=2e-3)
    # a batch answer does not depend on the batch it came in
    alone = handler.run_inference([(images[1], captions[1])], runner)[0]["score"]
    assert alone == pytest.approx(got[1]["score"], abs=1e-5)
