"""BLIP image-text matching (transformers ``BlipForImageTextRetrieval``, ITM head) as a Beam ModelHandler.

Element ``(image_bytes, caption)`` -> ``{"score": P(match), "error": None | reason}``.

"The Devil is in the Details" (2309.15954) scores pairs with BLIP's image-text matching
beside the (flipped) CLIP score. The ITM head is a binary classifier over the text
encoder's [CLS] state, cross-attending to the image: ``softmax(itm_logits)[:, 1]`` is the
probability that caption and image match (as transformers' model card computes it for
``Salesforce/blip-itm-base-coco`` / ``-large-coco``). The text goes through the
checkpoint's own tokenizer exactly as ``BlipProcessor`` does (``[CLS] ... [SEP]``,
truncated at ``max_text_length`` = 35 tokens, BLIP's ITM setting).

Images: the checkpoint's image processor settings (a squashed ``size`` x ``size`` bicubic
resize, mean/std) run through the project's decoder and thread pool
(``image_prep.CpuImagePrep`` with ``resize_mode="squash"``), so a bad image becomes an
``error`` and the batch goes on. Next to ``clip`` (or other image model stages) the stage
shares one decode per image with them (``models/shared_decode.py``: one model step, the
decode at the largest size any member needs, each member cutting its own view from it
through :meth:`BlipItmRunner.views` / :meth:`BlipItmRunner.infer_views`).

``model``: a hub id (with the cache warm), a local or gs:// directory. Precision ``auto``:
fp16 on CUDA, fp32 on CPU. Loading is lazy (``load_model``), once per worker.
"""

from __future__ import annotations

import threading
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from beam_filter.errors import UserError
from beam_filter.models.base import resolve_device, torch_dtype
from beam_filter.models.image_prep import CpuImagePrep, PrepConfig, normalize_on_device



def _size(proc) -> int:
    size = getattr(proc, "size", None) or {}
    if isinstance(size, (int, float)):
        h = w = size
    else:       # a dict, or transformers 5's SizeDict
        h, w = getattr(size, "height", None) or size.get("height"), getattr(size, "width", None) or size.get("width")
    if not h or h != w:
        raise UserError(f"BLIP image processor size {size!r}: a square height/width is expected")
    return int(h)


class BlipItmRunner:
    """The loaded model, tokenizer and image preparation; ``infer(examples)`` -> per-pair dicts."""

    def __init__(self, model: str, device: str = "auto", precision: str = "auto",
                 max_text_length: int = 35, decode_threads: int | None = None):
        import torch
        from transformers import AutoImageProcessor, AutoTokenizer, BlipForImageTextRetrieval

        from beam_filter.models.sentence_encoder import resolve_model_dir

        source = resolve_model_dir(model, "set the blip_itm stage's model parameter (--set blip_itm.model=DIR)")
        self.device = resolve_device(device)
        self.dtype = torch_dtype(precision, self.device)
        self.net = BlipForImageTextRetrieval.from_pretrained(source, dtype=self.dtype).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        proc = AutoImageProcessor.from_pretrained(source)
        self.prep_cfg = PrepConfig(_size(proc), tuple(proc.image_mean), tuple(proc.image_std), "bicubic", "squash")
        self.prep = CpuImagePrep(self.prep_cfg, draft=False, threads=decode_threads,
                                 pin_memory=self.device.type == "cuda")
        self.max_text_length = int(max_text_length)
        self._torch = torch
        self._lock = threading.Lock()

    # ---- one decode shared with the model stages next to it (models/shared_decode.py) ----
    def decode_spec(self):
        return self.prep.decode_spec()

    def views(self, img):
        return self.prep.views(img)

    def infer_views(self, examples: Sequence[tuple[bytes, str]], views: Sequence, errors: Sequence) -> list[dict]:
        """:meth:`infer` of images another caller decoded (``views``: :meth:`views` of each)."""
        return self.infer(examples, self.prep.batch_from_views(views, errors))

    def infer(self, examples: Sequence[tuple[bytes, str]], batch=None) -> list[dict]:
        torch = self._torch
        texts = [e[1] if isinstance(e[1], str) else "" for e in examples]
        if batch is None:
            batch = self.prep.prepare([bytes(e[0]) if e[0] is not None else b"" for e in examples])
        good = [i for i, err in enumerate(batch.errors) if err is None]
        out = [{"score": float("nan"), "error": err} for err in batch.errors]
        if not good:
            return out
        tok = self.tokenizer([texts[i] for i in good], padding="longest", truncation=True,
                             max_length=self.max_text_length, return_tensors="pt")
        with self._lock, torch.inference_mode():
            pixels, _ = normalize_on_device(batch, self.prep_cfg, self.device, self.dtype, with_mirror=False)
            pixels = pixels[torch.tensor(good, device=self.device)]
            logits = self.net(input_ids=tok["input_ids"].to(self.device),
                              attention_mask=tok["attention_mask"].to(self.device),
                              pixel_values=pixels, use_itm_head=True).itm_score
            prob = torch.softmax(logits.float(), dim=-1)[:, 1].cpu().numpy()
        for k, i in enumerate(good):
            out[i] = {"score": float(np.float32(prob[k])), "error": None}
        return out


class BlipItmModelHandler(ModelHandler):
    """Beam ModelHandler: ``(image_bytes, caption)`` -> ``{"score", "error"}`` (module docstring)."""

    def __init__(self, model: str, device: str = "auto", precision: str = "auto", batch_size: int = 32,
                 max_text_length: int = 35):
        if not model:
            raise UserError("blip_itm: model is empty")
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, not {batch_size!r}")
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self.model, self.device, self.precision = model, device, precision
        self.max_text_length = max_text_length

    def load_model(self) -> BlipItmRunner:
        return BlipItmRunner(self.model, self.device, self.precision, self.max_text_length)

    def run_inference(self, batch: Sequence[tuple[bytes, str]], model: BlipItmRunner,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[dict]:
        return model.infer(list(batch))

    def get_num_bytes(self, batch) -> int:
        return sum(len(e[0] or b"") + len((e[1] or "").encode()) for e in batch)

    def get_metrics_namespace(self) -> str:
        return "BeamFilterBlipItm"
