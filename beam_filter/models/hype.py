"""HYPE's hyperbolic CLIP as a Beam ModelHandler: Lorentz distance and both specificities.

HYPE (Kim et al., ECCV 2024; naver-ai/hype ``model.py``) is MERU-style CLIP in
open_clip's layout: the same towers and state-dict keys as open_clip's ``CLIP``
(ViT-L/14 image tower, 12-layer 768-wide text tower, 768-d embeddings) plus three
learned scalars, all stored as logarithms:

* ``alpha_img``, ``alpha_txt``: encoder outputs are scaled by ``exp(alpha)``
  (no L2 normalisation) -- tangent vectors at the hyperboloid's origin;
* ``curvature``: ``c = exp(curvature)``.

The handler builds the open_clip architecture (``model``: ``ViT-L-14`` or a model
config JSON), loads the checkpoint (local or gs://: the weights are released on
the authors' page, not on a model hub) over it, and sets every LayerNorm's eps to
float32's machine epsilon, as the authors' ``LayerNorm`` does (open_clip's is
1e-5). Their ``model.py`` loads with ``strict=False``; here keys the checkpoint
lacks are an error (random weights would pass silently), except ``logit_scale``/
``logit_bias``, which no HYPE output uses; extra keys are ignored.

The *reference set* (``reference``: the authors' ``reference.pt`` holding
``{"img": (R, d), "txt": (R, d)}`` tangent features, or an ``.npz`` with the same
arrays) is what specificities are measured against. The geometry itself is
``rules/hyperbolic.py`` (numpy, float64, on the host). Per example::

    {"image_embedding": float32[d], "text_embedding": float32[d]   (scaled tangent features),
     "distance": d_L(image, text), "image_specificity": e_i, "text_specificity": e_t,
     "error": None | "corrupt_image"}

Preprocessing is open_clip's for the architecture (ViT-L-14: bicubic resize to 224,
centre crop, OpenAI mean/std), which is HYPE's ``image_transform``; the tokenizer
is OpenAI CLIP's, as HYPE's ``tokenizer.py``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from beam_filter.errors import UserError
from beam_filter.models.base import local_copy
from beam_filter.models.clip import ClipModelHandler, ClipRunner, clip_provenance
from beam_filter.models.image_prep import normalize_on_device
from beam_filter.rules import hyperbolic

SCALARS = ("curvature", "alpha_img", "alpha_txt")
_UNUSED = ("logit_scale", "logit_bias")


def load_state(path: str) -> dict:
    """A HYPE checkpoint's state dict (plain, or under ``state_dict``; ``module.`` prefixes dropped)."""
    import torch

    obj = torch.load(local_copy(path), map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UserError(f"{path}: not a HYPE checkpoint (expected a state dict)")
    out = {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}
    missing = [k for k in SCALARS if k not in out]
    if missing:
        raise UserError(f"{path}: not a HYPE checkpoint: no {', '.join(missing)} (a plain CLIP checkpoint?)")
    return out


def load_reference(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(reference image features, reference text features): ``reference.pt`` or an ``.npz``."""
    local = local_copy(path)
    if local.endswith(".npz"):
        with np.load(local, allow_pickle=False) as z:
            img, txt = z.get("img"), z.get("txt")
    else:
        import torch

        obj = torch.load(local, map_location="cpu", weights_only=True)
        img, txt = (obj.get("img"), obj.get("txt")) if isinstance(obj, dict) else (None, None)
        img = None if img is None else img.float().numpy()
        txt = None if txt is None else txt.float().numpy()
    if img is None or txt is None or np.ndim(img) != 2 or np.ndim(txt) != 2 or not len(img) or not len(txt):
        raise UserError(f"{path}: a HYPE reference set holds 'img' and 'txt' 2-D feature arrays")
    return np.asarray(img, np.float64), np.asarray(txt, np.float64)


class HypeRunner(ClipRunner):
    """The open_clip towers with HYPE's weights and scalars, and the reference set."""

    def __init__(self, model: str, checkpoint: str, reference: str, device: str, precision: str,
                 draft: bool, decode_threads: int | None, decode: str):
        import torch

        super().__init__(model, None, device, precision, draft, decode_threads, decode, flip=False)
        state = load_state(checkpoint)
        scalars = {k: float(state.pop(k)) for k in SCALARS}
        missing, _ = self.net.load_state_dict(state, strict=False)
        missing = [k for k in missing if k not in _UNUSED]
        if missing:
            raise UserError(f"HYPE checkpoint {checkpoint!r} does not fit model {model!r}: missing "
                            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        for m in self.net.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.eps = torch.finfo(torch.float32).eps
        self.curvature = math.exp(scalars["curvature"])
        self.scale_img = math.exp(scalars["alpha_img"])
        self.scale_txt = math.exp(scalars["alpha_txt"])
        self.ref_img, self.ref_txt = load_reference(reference)
        d = self.net.text_projection.shape[1] if hasattr(self.net, "text_projection") else None
        if d is not None and (self.ref_img.shape[1] != d or self.ref_txt.shape[1] != d):
            raise UserError(f"HYPE reference {reference!r} has dimension {self.ref_img.shape[1]}, "
                            f"the model's embeddings {d}")

    def infer(self, examples: Sequence[tuple[bytes, str]], prepared=None) -> list[dict]:
        torch = self._torch
        captions = [e[1] if isinstance(e[1], str) else ("" if e[1] is None else str(e[1])) for e in examples]
        # prepared: ClipRunner.infer_views' batch (one decode shared, models/shared_decode.py)
        batch = prepared if prepared is not None else self.prep.prepare(
            [bytes(e[0]) if e[0] is not None else b"" for e in examples])
        with self._tok_lock:
            tokens = self.tokenizer(captions)
        with self._model_lock, torch.inference_mode():
            x, _ = normalize_on_device(batch, self.prep_cfg, self.device, self.dtype, False)
            img = self.net.encode_image(x).float() * self.scale_img
            txt = self.net.encode_text(tokens.to(self.device)).float() * self.scale_txt
            host = torch.cat([img, txt], 1).cpu().numpy()
        d = host.shape[1] // 2
        img, txt = host[:, :d], host[:, d:]
        c = self.curvature
        dist = hyperbolic.paired_distance(img, txt, c)
        ispec = hyperbolic.image_specificity(img, self.ref_txt, c)
        tspec = hyperbolic.text_specificity(txt, self.ref_img, c)
        out = []
        for i, err in enumerate(batch.errors):
            if err is None:
                out.append({"image_embedding": img[i], "text_embedding": txt[i], "distance": float(dist[i]),
                            "image_specificity": float(ispec[i]), "text_specificity": float(tspec[i]),
                            "error": None})
            else:
                nan = float("nan")
                out.append({"image_embedding": np.zeros_like(img[i]), "text_embedding": txt[i],
                            "distance": nan, "image_specificity": nan, "text_specificity": float(tspec[i]),
                            "error": err})
        return out


class HypeModelHandler(ClipModelHandler):
    """``(image_bytes, caption)`` -> HYPE's Lorentz distance, specificities and tangent features."""

    def __init__(self, model: str, checkpoint: str, reference: str, device: str = "auto",
                 batch_size: int = 64, precision: str = "auto", draft: bool = False,
                 decode_threads: int | None = None, decode: str = "cpu",
                 share_across_processes: bool = False, model_copies: int = 1):
        if not checkpoint or not reference:
            raise UserError("HYPE needs a checkpoint and a reference set (local paths or gs://)")
        super().__init__(model, checkpoint, device, batch_size, precision, draft, decode_threads, decode,
                         share_across_processes, model_copies, flip=False)
        self.checkpoint, self.reference = checkpoint, reference

    def load_model(self) -> HypeRunner:
        return HypeRunner(self.model, self.checkpoint, self.reference, self.device, self.precision,
                          self.draft, self.decode_threads, self.decode)

    def run_inference(self, batch: Sequence[tuple[bytes, str]], model: HypeRunner,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[dict]:
        return model.infer(list(batch))

    def get_metrics_namespace(self) -> str:
        return "BeamFilterHype"

    def provenance(self) -> dict:
        out = clip_provenance(self.model, self.checkpoint)
        out["reference"] = self.reference
        return out
