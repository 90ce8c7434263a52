"""CachedClipTokenizer gives open_clip's SimpleTokenizer ids exactly."""

from __future__ import annotations

import random
import string

import open_clip
import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer, _clean_lower

from beam_filter.models.clip_tokenizer import CachedClipTokenizer, fast_tokenizer

TRICKY = [
    "", " ", "a photo of a dog", "A PHOTO Of A Dog!!", "  leading and   inner   spaces  ",
    "tabs\tand\nnew\r\nlines", "Fish &amp; Chips &amp;amp; more", "&lt;b&gt;bold&lt;/b&gt;",
    "&", "AT&T", "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e", "Caf\u00c3\u00a9 mojibake", "\u201ccurly quotes\u201d",
    "\uff26\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48", "\ufb01ne ligature", "emoji \U0001f436\U0001f3d6\ufe0f",
    "\u4e2d\u6587\u6807\u9898 \u65e5\u672c\u8a9e \ud55c\uad6d\uc5b4", "\u0639\u0631\u0628\u064a", "\x1b[31mred\x1b[0m",
    "ctrl\x00chars\x07here", "nbsp\u00a0here", "don't it's we're they've I'm we'll he'd",
    "<start_of_text> inside <end_of_text>", "<START_OF_TEXT>", "numbers 12345 3.14 1,000,000",
    "x" * 500, " ".join(["word"] * 100), "\u0130stanbul \u00df \u1e9e", "e\u0301 combining",
    "http://example.com/a?b=c&d=e", "#hashtag @user $100 50% ~tilde^ `back` {brace} [b] |p|",
]


@pytest.fixture(scope="module")
def simple():
    return open_clip.get_tokenizer("ViT-B-32")


def _random_texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    ascii_chars = string.printable            # includes \t \n \r \x0b \x0c and '&'
    extra = "\u00e9\u00c3\u00a9\u201c\u201d\u00a0\u4e2d\U0001f436\u0301\ufb01\x00\x85"
    out = []
    for i in range(n):
        pool = ascii_chars if i % 3 else ascii_chars + extra
        out.append("".join(rng.choice(pool) for _ in range(rng.randint(0, 60))))
    return out


def test_same_ids_as_open_clip(simple):
    fast = CachedClipTokenizer(simple)
    texts = TRICKY + _random_texts(0, 3000)
    for start in range(0, len(texts), 128):        # batches, as the handler calls it
        chunk = texts[start:start + 128]
        assert torch.equal(fast(chunk), simple(chunk)), chunk
    # second pass: every word now comes from the cache
    assert torch.equal(fast(texts), simple(texts))


def test_truncation_and_context_length(simple):
    fast = CachedClipTokenizer(simple)
    long = " ".join(f"w{i}" for i in range(200))
    got = fast([long, "short"])
    assert got.shape == (2, 77) and got.dtype == torch.long
    assert got[0, -1].item() == simple.eot_token_id
    assert torch.equal(got, simple([long, "short"]))
    assert torch.equal(fast("one caption", context_length=16), simple("one caption", context_length=16))


def test_plain_ascii_shortcut_equals_open_clip_clean():
    """The shortcut skips ftfy/html only where they change nothing: checked on random ASCII."""
    rng = random.Random(1)
    chars = [c for c in string.printable if c not in "&\t\n\r\x0b\x0c"]
    tok = SimpleTokenizer()
    fast = CachedClipTokenizer(tok)
    for _ in range(5000):
        text = "".join(rng.choice(chars) for _ in range(rng.randint(0, 80)))
        assert fast._clean(text) == _clean_lower(text), text


def test_cache_is_bounded(simple):
    fast = CachedClipTokenizer(simple, max_words=10)
    texts = [f"token{i} other{i}" for i in range(50)]
    assert torch.equal(fast(texts), simple(texts))
    assert len(fast._ids) == 10


def test_other_tokenizers_are_not_wrapped(simple):
    assert isinstance(fast_tokenizer(simple), CachedClipTokenizer)
    masked = SimpleTokenizer(reduction_mask="simple")
    assert fast_tokenizer(masked) is masked
    # a non-default clean function still gives the same ids, without the ASCII shortcut
    canon = SimpleTokenizer(clean="canonicalize")
    wrapped = fast_tokenizer(canon)
    assert not wrapped._ascii_shortcut
    texts = TRICKY + _random_texts(2, 300)
    assert torch.equal(wrapped(texts), canon(texts))
