"""open_clip's byte-level BPE tokenizer, same ids, about 4x less Python per caption.

On a GPU worker scoring ViT-B-32 the CLIP forward pass is a small part of a batch;
most of the wall time is Python holding the GIL, and open_clip's
``SimpleTokenizer`` was one of the largest pieces: about 120 us per caption on a
2-core VM (``benchmarks/bench_clip.py --tokenizer``), against a budget of 400 us
per image at 2,500 img/s. Per caption it runs ftfy, two ``html.unescape`` calls,
a regex split, and then, per word, a byte-to-unicode join and a BPE cache lookup
whose result is split and mapped to ids again.

:class:`CachedClipTokenizer` produces the same ids (tested on ASCII, Unicode,
HTML entities, mojibake, control characters, special tokens and captions longer
than the context) with two changes that leave the result alone:

* a word -> ids cache in front of open_clip's own ``bpe``; a word's ids depend on
  the word alone, so a hit is exact. The cache stops growing at ``max_words``
  (web captions follow Zipf's law: a few hundred thousand words cover most
  tokens), so memory stays bounded on any pool;
* for open_clip's default ``clean='lower'``, captions made only of printable
  ASCII other than ``&`` skip ftfy and ``html.unescape``: ftfy's fixes need
  non-ASCII characters, control characters, escapes or line breaks, and
  ``html.unescape`` needs ``&``, so for such text both return it unchanged; what
  is left is whitespace collapsing and lower-casing, done the same way. Every
  other caption goes through open_clip's own clean function.

Anything but a plain ``SimpleTokenizer`` (Hugging Face tokenizers of SigLIP or
XLM-R towers, a reduction mask) is returned unwrapped by :func:`fast_tokenizer`.
"""

from __future__ import annotations

import re

import numpy as np

_PLAIN_ASCII = re.compile(r"[\x20-\x25\x27-\x7e]*")   # printable ASCII except '&'


class CachedClipTokenizer:
    """Callable like open_clip's tokenizer: ``tok(list_of_str) -> LongTensor (n, context_length)``."""

    def __init__(self, simple, max_words: int = 262_144):
        from open_clip import tokenizer as oct

        self.simple = simple
        self.context_length = simple.context_length
        self.max_words = max_words
        self._ids: dict[str, list[int]] = {}
        self._ascii_shortcut = simple.clean_fn is oct._clean_lower

    def _clean(self, text: str) -> str:
        if self._ascii_shortcut and _PLAIN_ASCII.fullmatch(text):
            return " ".join(text.split()).lower()
        return self.simple.clean_fn(text)

    def _word_ids(self, word: str) -> list[int]:
        """open_clip's per-word step for a cache miss: utf-8 bytes -> byte-unicode -> BPE -> ids."""
        s = self.simple
        encoded = "".join(s.byte_encoder[b] for b in word.encode("utf-8"))
        ids = [s.encoder[piece] for piece in s.bpe(encoded).split(" ")]
        if len(self._ids) < self.max_words:
            self._ids[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end tokens (``SimpleTokenizer.encode``)."""
        ids: list[int] = []
        cached = self._ids.get
        for word in self.simple.pat.findall(self._clean(text)):
            ids += cached(word) or self._word_ids(word)   # every word has >= 1 id, so a hit is truthy
        return ids

    def __call__(self, texts, context_length: int | None = None):
        import torch

        if isinstance(texts, str):
            texts = [texts]
        ctx = context_length or self.context_length
        sot, eot = self.simple.sot_token_id, self.simple.eot_token_id
        out = np.zeros((len(texts), ctx), np.int64)
        for i, text in enumerate(texts):
            ids = [sot] + self.encode(text) + [eot]
            if len(ids) > ctx:            # open_clip truncates and ends on the end token
                ids = ids[:ctx]
                ids[-1] = eot
            out[i, :len(ids)] = ids
        return torch.from_numpy(out)


def fast_tokenizer(tokenizer):
    """``tokenizer`` wrapped in :class:`CachedClipTokenizer` when that gives the same ids, else itself."""
    from open_clip.tokenizer import SimpleTokenizer

    if type(tokenizer) is SimpleTokenizer and tokenizer.reduction_fn is None:
        return CachedClipTokenizer(tokenizer)
    return tokenizer
