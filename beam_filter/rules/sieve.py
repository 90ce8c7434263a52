"""SIEVE's rule (Mahmoud et al., CVPR 2024): do captions generated for an image agree with its alt-text?

Facts from the authors' code (facebookresearch/SIEVE), reproduced exactly here:

* before comparing, "medium phrases" are removed from the alt-text *and* from every
  generated caption, in this order, case-insensitively, as plain substrings (not
  words: "photography" loses its "photo"): :data:`MEDIUM_PHRASES`;
* both sides are embedded by a sentence encoder (all-MiniLM-L6-v2: mean pooling over
  the attention mask, L2-normalised; ``models/sentence_encoder.py``);
* the SIEVE score is the largest cosine between the alt-text and the generated
  captions, and 0 when the caption that gives it is empty after masking (an empty
  string still embeds to *something*; the authors treat that as no evidence).

Pure numpy and strings: the stage (``stages/captions.py``) only feeds it.
"""

from __future__ import annotations

import json
import re
from typing import Sequence

import numpy as np

MEDIUM_PHRASES = ("an image of", "a photo of", "stock photo", "photo stock",
                  "a photo", "an image", "image", "photo")

_PATTERNS = tuple(re.compile(re.escape(p), re.IGNORECASE) for p in MEDIUM_PHRASES)


def mask_phrases(text: str | None, phrases: Sequence[str] = MEDIUM_PHRASES) -> str:
    """``text`` with every medium phrase removed (in order, case-insensitively), stripped.

    Removal is sequential, so "a photo of" goes before "a photo" and "photo" can no
    longer match inside it. Whitespace left behind is collapsed: the tokenizer would
    ignore it anyway, and an all-space result must read as empty.
    """
    if not text:
        return ""
    patterns = _PATTERNS if phrases is MEDIUM_PHRASES else tuple(
        re.compile(re.escape(p), re.IGNORECASE) for p in phrases)
    for pat in patterns:
        text = pat.sub("", text)
    return " ".join(text.split())


def sieve_score(alt_embedding: np.ndarray, caption_embeddings: np.ndarray,
                masked_captions: Sequence[str]) -> tuple[float, int]:
    """(score, index of the best caption) from L2-normalised embeddings.

    ``caption_embeddings``: (N, d), row i the embedding of ``masked_captions[i]``.
    No captions: (0.0, -1). The best caption is the first one with the largest
    cosine; when it is empty after masking the score is 0.0.
    """
    caps = np.asarray(caption_embeddings, dtype=np.float32)
    if caps.ndim != 2 or caps.shape[0] == 0:
        return 0.0, -1
    cos = caps @ np.asarray(alt_embedding, dtype=np.float32)
    best = int(np.argmax(cos))
    if not masked_captions[best].strip():
        return 0.0, best
    return float(cos[best]), best


def as_caption_list(value) -> list[str]:
    """Captions as stored in a column: a list, a JSON list in a string, or one plain caption.

    Generated captions are stored as a JSON list string (one parquet type for any N);
    released caption tables (Nguyen et al.'s BLIP2 captions) hold one plain string.
    """
    if value is None:
        return []
    if isinstance(value, float) and value != value:       # NaN from pandas
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value if v is not None]
    text = str(value)
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except ValueError:
            return [text]
        if isinstance(parsed, list):
            return [str(v) for v in parsed if v is not None]
    return [text]


def dump_captions(captions: Sequence[str]) -> str:
    """The stored form of a caption list: compact JSON, non-ASCII kept (deterministic bytes)."""
    return json.dumps(list(captions), ensure_ascii=False, separators=(",", ":"))
