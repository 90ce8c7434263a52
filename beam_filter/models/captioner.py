"""Image captioners (transformers BLIP and BLIP-2) as a Beam ModelHandler: N captions per image.

Element ``(uid, image_bytes)`` -> ``{"captions": [str] * N, "error": None | reason}``.

**Deterministic per sample.** Nucleus sampling normally draws from one global RNG, so
a caption depends on which other images shared its batch and in what order. Here the
randomness of caption ``j`` of sample ``uid`` is a fixed stream of uniforms drawn from
``numpy.random.default_rng(sha256(seed, uid, j))``; at step ``t`` the token is the
inverse CDF of the (repetition-penalised, temperature-scaled, top-p truncated)
distribution at ``u[t]`` (:class:`SeededNucleus`, a logits processor that leaves only
that token, so ``generate`` runs greedily). The caption is therefore a function of
(weights, image, prompt, seed, uid, j) alone: any batch, any worker, any rerun. (On
the same hardware: a different GPU, or fp16 vs fp32, can move a probability across
a draw.)

**SIEVE's settings** (facebookresearch/SIEVE, BLIP ViT-B ``model_base_14M``): input
224 with CLIP's resize / centre crop / normalisation (``resize_mode="shortest"``,
the CLIP preprocessing of :mod:`image_prep`, reused), prompt ``"a picture of "``,
top_p 0.9, 8 captions, max_length 20 and min_length 5 counting the prompt tokens
(transformers' ``max_length``/``min_length`` count them too), repetition penalty
1.1; the prompt is cut from the decoded text as BLIP does (``caption[len(prompt):]``).
An input size other than the checkpoint's (224 on the 384-px COCO captioner)
interpolates the position embeddings (``interpolate_pos_encoding``).

**Families**, chosen from ``config.json``'s ``model_type``: ``blip``
(``BlipForConditionalGeneration``: the image is encoded once and its embeddings
repeated N times for the text decoder) and ``blip-2``
(``Blip2ForConditionalGeneration``: prompt after ``num_query_tokens`` image tokens;
the N copies of an image go through the model, the language model dominates
anyway). ``model``: a hub id, a local directory or a gs:// directory.

Precision: ``auto`` = fp16 on CUDA, fp32 on CPU; ``bf16``/``fp16`` need CUDA.
Loading is lazy: constructing the handler imports neither torch nor transformers.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from beam_filter.errors import UserError
from beam_filter.models.base import resolve_device, torch_dtype
from beam_filter.models.image_prep import CpuImagePrep, PrepConfig, normalize_on_device

FAMILIES = ("blip", "blip-2")
SIEVE_PROMPT = "a picture of "


def caption_seed(seed: int, uid: str, index: int) -> int:
    """The RNG seed of caption ``index`` of sample ``uid``: a hash, so no two samples share a stream."""
    digest = hashlib.sha256(f"{int(seed)}:{uid}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def uniform_draws(seed: int, uid: str, index: int, steps: int) -> np.ndarray:
    """The ``steps`` uniforms in [0, 1) that decide caption ``index`` of ``uid``, one per generated token."""
    return np.random.default_rng(caption_seed(seed, uid, index)).random(steps)


class SeededNucleus:
    """Logits processor: nucleus sampling with a given uniform per row and step.

    Applied last (after transformers' repetition penalty and min-length rule, which
    ``generate`` adds itself), it scales by ``temperature``, keeps the smallest set of
    most likely tokens whose probability reaches ``top_p`` (transformers' TopP rule,
    ties broken by token id), and picks the token where the cumulative probability of
    that set, in descending order, first exceeds ``u * total``. Every other logit
    becomes -inf, so greedy decoding takes the chosen token.
    """

    def __init__(self, draws, top_p: float, temperature: float = 1.0):
        self.draws = draws            # torch float64 (rows, steps)
        self.top_p = float(top_p)
        self.temperature = float(temperature)
        self.start = None

    def __call__(self, input_ids, scores):
        import torch

        if self.start is None:
            self.start = input_ids.shape[1]
        step = min(input_ids.shape[1] - self.start, self.draws.shape[1] - 1)
        logits = scores.double() / max(self.temperature, 1e-6)
        probs = torch.softmax(logits, dim=-1)
        # Descending by probability, ties by token id (a stable sort of -p).
        order = torch.sort(-probs, dim=-1, stable=True).indices
        sorted_p = torch.gather(probs, -1, order)
        before = sorted_p.cumsum(-1) - sorted_p           # mass strictly before each token
        keep = before < self.top_p                        # smallest prefix reaching top_p (>= 1 token)
        kept_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
        cum = kept_p.cumsum(-1)
        u = self.draws[:, step].to(cum.device).unsqueeze(1) * cum[:, -1:]
        pos = torch.searchsorted(cum, u, right=True).clamp(max=cum.shape[1] - 1)
        # never land on a token outside the nucleus (u * total == total is impossible, but be safe)
        pos = torch.minimum(pos, keep.sum(-1, keepdim=True) - 1)
        chosen = torch.gather(order, -1, pos)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(-1, chosen, 0.0)
        return out


def _family(directory: str) -> str:
    path = os.path.join(directory, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            kind = json.load(f).get("model_type")
    except (OSError, ValueError) as e:
        raise UserError(f"{directory}: no readable config.json ({e})") from None
    if kind == "blip_2":
        kind = "blip-2"
    if kind not in FAMILIES:
        raise UserError(f"{directory}: model_type {kind!r} is not a captioner this stage runs "
                        f"(supported: {', '.join(FAMILIES)})")
    return kind


class Captioner:
    """A loaded BLIP / BLIP-2 with its tokenizer and CLIP-style image preparation.

    ``caption(uids, images) -> [(captions, error)]``; the settings are fixed at load.
    """

    def __init__(self, model: str, *, device: str = "auto", precision: str = "auto",
                 num_captions: int = 8, prompt: str | None = None, max_length: int = 20,
                 min_length: int = 5, top_p: float = 0.9, temperature: float = 1.0,
                 repetition_penalty: float = 1.1, image_size: int = 0, resize_mode: str = "shortest",
                 seed: int = 0, decode_threads: int | None = None):
        import torch
        from transformers import AutoImageProcessor, AutoTokenizer

        from beam_filter.models.sentence_encoder import resolve_model_dir

        self.source = resolve_model_dir(model, "set the captioner stage's model parameter "
                                               "(--set captioner.model=DIR)")
        self.family = _family(self.source)
        self.device = resolve_device(device)
        self.dtype = torch_dtype(precision, self.device)
        if self.family == "blip":
            from transformers import BlipForConditionalGeneration as cls
        else:
            from transformers import Blip2ForConditionalGeneration as cls
        self.net = cls.from_pretrained(self.source, dtype=self.dtype).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(self.source)
        proc = AutoImageProcessor.from_pretrained(self.source)
        native = int(self.net.config.vision_config.image_size)
        size = int(image_size) or native
        self.interpolate = size != native
        self.prep_cfg = PrepConfig(size, tuple(proc.image_mean), tuple(proc.image_std), "bicubic", resize_mode)
        self.prep = CpuImagePrep(self.prep_cfg, draft=False, threads=decode_threads,
                                 pin_memory=self.device.type == "cuda")
        self.n = int(num_captions)
        self.prompt = (SIEVE_PROMPT if self.family == "blip" else "") if prompt is None else prompt
        self.max_length, self.min_length = int(max_length), int(min_length)
        self.top_p, self.temperature = float(top_p), float(temperature)
        self.repetition_penalty = float(repetition_penalty)
        self.seed = int(seed)
        self.prompt_ids = self._prompt_ids()
        self._torch = torch
        self._lock = threading.Lock()

    def _prompt_ids(self) -> list[int]:
        tok = self.tokenizer
        if self.family == "blip":
            ids = list(tok(self.prompt)["input_ids"])
            bos = self.net.config.text_config.bos_token_id
            return [bos] + ids[1:-1]              # BLIP: [CLS] -> [DEC], trailing [SEP] dropped
        cfg = self.net.config
        image = [cfg.image_token_id] * cfg.num_query_tokens
        text = list(tok(self.prompt)["input_ids"]) if self.prompt else []
        bos = cfg.text_config.bos_token_id
        if bos is not None and text[:1] != [bos]:
            text = [bos] + text
        return image + text

    def _generate_kwargs(self, draws):
        from transformers import LogitsProcessorList

        return dict(max_length=self.max_length + (self.net.config.num_query_tokens
                                                  if self.family == "blip-2" else 0),
                    min_length=self.min_length + (self.net.config.num_query_tokens
                                                  if self.family == "blip-2" else 0),
                    repetition_penalty=self.repetition_penalty, do_sample=False, num_beams=1,
                    logits_processor=LogitsProcessorList([SeededNucleus(draws, self.top_p, self.temperature)]))

    def caption(self, uids: Sequence[str], images: Sequence[bytes]) -> list[tuple[list[str], str | None]]:
        torch = self._torch
        batch = self.prep.prepare([bytes(b) if b is not None else b"" for b in images])
        good = [i for i, e in enumerate(batch.errors) if e is None]
        out: list[tuple[list[str], str | None]] = [([], e) for e in batch.errors]
        if not good:
            return out
        steps = self.max_length + 1
        draws = torch.from_numpy(np.stack([uniform_draws(self.seed, uids[i], j, steps)
                                           for i in good for j in range(self.n)]))
        with self._lock, torch.inference_mode():
            pixels, _ = normalize_on_device(batch, self.prep_cfg, self.device, self.dtype, with_mirror=False)
            pixels = pixels[torch.tensor(good, device=self.device)]
            rows = len(good) * self.n
            ids = torch.tensor([self.prompt_ids] * rows, dtype=torch.long, device=self.device)
            kwargs = self._generate_kwargs(draws.to(self.device))
            if self.family == "blip":
                embeds = self.net.vision_model(pixel_values=pixels,
                                               interpolate_pos_encoding=self.interpolate)[0]
                embeds = embeds.repeat_interleave(self.n, dim=0)
                mask = torch.ones(embeds.shape[:-1], dtype=torch.long, device=self.device)
                tc = self.net.config.text_config
                seqs = self.net.text_decoder.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), eos_token_id=tc.sep_token_id,
                    pad_token_id=tc.pad_token_id, encoder_hidden_states=embeds,
                    encoder_attention_mask=mask, **kwargs)
            else:
                seqs = self.net.generate(pixel_values=pixels.repeat_interleave(self.n, dim=0), input_ids=ids,
                                         attention_mask=torch.ones_like(ids),
                                         interpolate_pos_encoding=self.interpolate, **kwargs)
            seqs = seqs.cpu()
        texts = self._decode(seqs)
        for k, i in enumerate(good):
            out[i] = (texts[k * self.n:(k + 1) * self.n], None)
        return out

    def _decode(self, seqs) -> list[str]:
        if self.family == "blip":
            texts = self.tokenizer.batch_decode(seqs, skip_special_tokens=True)
            cut, head = len(self.prompt), self.prompt.strip().lower()
            # BLIP cuts len(prompt) characters off the decoded text, whatever they are
            return [t[cut:].strip() if head and t.lower().startswith(head) else t.strip() for t in texts]
        new = seqs[:, len(self.prompt_ids):] if seqs.shape[1] > len(self.prompt_ids) else seqs[:, :0]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]


class CaptionerModelHandler(ModelHandler):
    """Beam ModelHandler: ``(uid, image_bytes)`` -> ``{"captions": [...], "error": ...}``.

    ``batch_size`` counts images (each gives ``num_captions`` sequences). The settings
    are :class:`Captioner`'s keyword arguments.
    """

    def __init__(self, model: str, batch_size: int = 16, **settings):
        if not model:
            raise UserError("captioner model is empty")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise UserError(f"batch_size must be a positive integer, not {batch_size!r}")
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self.model = model
        self.batch_size = batch_size
        self.settings = dict(settings)

    def load_model(self) -> Captioner:
        return Captioner(self.model, **self.settings)

    def run_inference(self, batch: Sequence[tuple[str, bytes]], model: Captioner,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[dict]:
        uids = [e[0] for e in batch]
        results = model.caption(uids, [e[1] for e in batch])
        return [{"captions": caps, "error": err} for caps, err in results]

    def get_num_bytes(self, batch) -> int:
        return sum(len(e[1] or b"") for e in batch)

    def get_metrics_namespace(self) -> str:
        return "BeamFilterCaptioner"
