"""Caption rules: length bounds, junk captions, repetition and code-like captions.

``caption_words`` is DataComp's ``basic_filter`` count (``len(text.split())``)
and ``caption_chars`` its character count. Every stage and the reader use these
two, so a "word" means the same thing in every filter and report. (DataComp's
image_based pre-filter counts fastText tokens instead: see
``language.fasttext_token_count``.)

The Open-Qwen2VL rules (Victorwz/Open-Qwen2VL, data_filtering/baselines/
additional_text_filter.py and apply_filter.py) are reproduced rule for rule:

* high-frequency junk captions: ``caption.lower()[:1000]`` is one of ~900
  captions that occur tens of thousands of times in DataComp-medium ("image",
  "nan", "untitled image", "avatar", ...); the list is data, stored in
  ``data/open_qwen2vl_high_freq_captions.json`` with its source;
* unique-token ratio: ``len(set(c.split(' '))) / len(c.split(' ')) > 0.5``
  (note: split on single spaces, not ``str.split()``);
* code-like captions (file names, camera codes, ids): see ``is_code_like``.
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources

from beam_filter.errors import UserError


def caption_chars(text: str | None) -> int:
    """Number of characters (``len``); 0 for a missing caption."""
    return len(text) if text else 0


def caption_words(text: str | None) -> int:
    """Number of whitespace-separated words (``len(text.split())``), as DataComp counts them."""
    return len(text.split()) if text else 0


# ---- length bounds ------------------------------------------------------------

def caption_length_reason(text: str | None, min_chars: int | None = None,
                          max_chars: int | None = None, min_words: int | None = None,
                          max_words: int | None = None) -> str | None:
    """Why a caption fails inclusive length bounds, or None. ``None`` bounds are not checked."""
    chars, words = caption_chars(text), caption_words(text)
    if (min_chars is not None and chars < min_chars) or (min_words is not None and words < min_words):
        return "caption_too_short"
    if (max_chars is not None and chars > max_chars) or (max_words is not None and words > max_words):
        return "caption_too_long"
    return None


# ---- high-frequency junk captions ------------------------------------------------

JUNK_LIST_FILE = "open_qwen2vl_high_freq_captions.json"
_JUNK_PREFIX_CHARS = 1000   # the reference compares only the first 1000 lowercased chars


@functools.lru_cache(maxsize=1)
def builtin_junk_captions() -> frozenset[str]:
    """Open-Qwen2VL's high-frequency caption list (keys exactly as published)."""
    text = resources.files("beam_filter.rules").joinpath("data", JUNK_LIST_FILE).read_text("utf-8")
    return frozenset(json.loads(text)["captions"])


@functools.lru_cache(maxsize=8)
def load_caption_list(path: str) -> frozenset[str]:
    """A user list of junk captions: one caption per line (UTF-8), matched lowercased.

    Lines are lowercased here (the match is on the lowercased caption) and
    empty lines are ignored. gs:// paths work too (fsio).
    """
    from beam_filter import fsio

    try:
        data = fsio.read_bytes(path).decode("utf-8")
    except (OSError, IOError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read caption list {path}: {e}") from None
    return frozenset(line.lower() for line in data.splitlines() if line.strip())


def is_junk_caption(text: str | None, extra: frozenset[str] = frozenset()) -> bool:
    """True when the lowercased caption (first 1000 chars) is a known junk caption."""
    key = (text or "").lower()[:_JUNK_PREFIX_CHARS]
    return key in builtin_junk_captions() or key in extra


# ---- repetition -------------------------------------------------------------------

def unique_token_ratio(text: str | None) -> float:
    """Distinct / total tokens with tokens from ``text.split(' ')`` (empty tokens count)."""
    tokens = (text or "").split(" ")
    return len(set(tokens)) / len(tokens)


def junk_caption_reason(text: str | None, extra: frozenset[str] = frozenset(),
                        min_unique_token_ratio: float | None = 0.5) -> str | None:
    """Open-Qwen2VL's two text filters, first failing one wins: a high-frequency junk caption
    (``high_frequency_caption``), then a unique-token ratio not above ``min_unique_token_ratio``
    (``repetitive_caption``; None disables it)."""
    if is_junk_caption(text, extra):
        return "high_frequency_caption"
    if min_unique_token_ratio is not None and unique_token_ratio(text) <= min_unique_token_ratio:
        return "repetitive_caption"
    return None


# ---- code-like captions -------------------------------------------------------------

# Whole (lowercased) captions that are markup or UI junk rather than descriptions.
_BAD_WHOLE_CAPTIONS = frozenset({
    "cleanup image.jpg", "image.assetalttext", "window display", "usericon", "top",
    "windows 10 icon",
    "{{.firstitem.brand.name}}({{.firstitem.brand.namekana}})の「{{.firstitem.name}}」"
    "を使った{{.posttype}}",
    "list icon", "favicon icon", "menu", "tinyurl.com", "gmail", "房屋?#35745;?", "user_icon",
    "message icon", "videothumbnail", "<img src=", "linkedin-icon", "google.site", "flag",
    "image module", "header", "page-header", "alttext", "userimage", "instagram-icon", "tiktok",
    "pagetop", "floorplan.alttag", "header2", "user-avatar", "filtr icon", "users icon",
    "rss icon", "menu-icon", "secret code", "flag icon", "heading icon", "web template",
    "unused", "header_img",
})
# File extensions removed anywhere in the caption.
_EXTENSIONS = (".jpeg", ".jpg", ".png", ".gif")
# Prefixes: only the FIRST one (in this order) that the caption starts with is removed.
_PREFIXES = (
    "phone number", "error_codes", "no_photo", "wechat", "facebook", "wikidata", "youtube",
    "[image", "ngc", "unnamed", "thumbnail", "mls:", "picture", "id", "guest", "tumblr", "logo",
    "qr", "blog", "default", "image", "imag", "imgp", "img", "asset", "iso", "apple", "table",
    "item", "dscn", "dsc", "微信用户", "微信图片", "icon", "video", "user", "scan", "fc2", "ref",
    "photo", "\\frac", "isbn", "slide", "unknown", "fifa", "bnsf", "cimg", "page",
)
# Suffixes: only the first one that matches is removed.
_SUFFIXES = ("datasheet", "@gmail.com", "icon", "thumbnail")
_ROMAN = frozenset({"ii", "iii", "iv", "vi", "vii", "viii", "ix"})
_SPLIT = re.compile(r"\s|-|_|[.]|,")


def _is_word_token(token: str) -> bool:
    """A token that reads like a word: >= 2 ASCII letters and not a letters/digits code.

    Codes rejected: tokens of <= 1 char, Roman numerals, <= 1 letter, <= 2 letters
    with >= 3 other chars ("sd345"), and tokens of >= 4 chars that switch between
    digit and non-digit at least twice ("e4yf", "4a68").
    """
    if len(token) <= 1 or token in _ROMAN:
        return False
    letters = sum(1 for c in token if "a" <= c <= "z")
    if letters <= 1:
        return False
    if letters <= 2 and len(token) - letters >= 3:
        return False
    kinds = [c.isnumeric() for c in token]
    switches = sum(1 for a, b in zip(kinds, kinds[1:]) if a != b)
    return not (switches >= 2 and len(token) >= 4)


def is_code_like(text: str | None) -> bool:
    """True when the caption is a file name, camera code, id or UI label, not a description.

    Open-Qwen2VL's rule: lowercase; drop known junk whole captions; remove image
    file extensions; remove the first matching known prefix (img, dsc, photo, ...)
    and suffix; split on whitespace, '-', '_', '.', ','; the caption is kept only
    if some token reads like a word (``_is_word_token``). Captions without two
    ASCII letters in a token (e.g. all-CJK captions) count as code-like, as there.
    """
    x = (text or "").lower()
    if x in _BAD_WHOLE_CAPTIONS:
        return True
    for ext in _EXTENSIONS:
        x = x.replace(ext, "")
    for prefix in _PREFIXES:
        if x.startswith(prefix):
            x = x[len(prefix):]
            break
    for suffix in _SUFFIXES:
        if x.endswith(suffix):
            x = x[:-len(suffix)]
            break
    return not any(_is_word_token(tok) for tok in _SPLIT.split(x))


def code_like_reason(text: str | None) -> str | None:
    """``code_like_caption`` when the caption is code-like (``is_code_like``), else None."""
    return "code_like_caption" if is_code_like(text) else None
