"""DataComp's filtering baselines as plain functions: basic_filter, laion2b, text_based,
and image_based's caption pre-filter (its centroid test is ``cluster/centroids.py``).

Each rule is stated once, exactly as DataComp applies it (mlfoundations/datacomp,
baselines.py and baselines/apply_filter.py); ``stages/rules.py`` and
``stages/datacomp.py`` only adapt them to the score and select phases.

* ``basic_filter``: keep a sample when all hold:

  * fastText lid.176 top-1 language is ``en`` (newlines -> spaces, no threshold);
  * ``len(caption.split()) > 2`` and ``len(caption) > 5``;
  * ``min(width, height) >= 200`` and ``max/min <= 3.0``.

* ``laion2b``: CLIP ViT-B/32 score >= 0.28 AND gcld3 language ``en``
  (``NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)``, newlines -> spaces).
* ``text_based``: fastText lid.176 ``en`` AND some caption word's first WordNet
  synset is an ImageNet-21k synset (``rules/wordnet.py``).
* ``image_based`` pre-filter: fastText ``en``, more than 1 fastText token, more
  than 5 characters.

DataComp ANDs masks and has no notion of *which* test failed; beam_filter
reports the first failing test in the order written above.
"""

from __future__ import annotations

import math

from beam_filter.rules.caption import caption_chars, caption_words
from beam_filter.rules.image import image_size_reason
from beam_filter.rules.language import fasttext_token_count

LAION_THRESHOLD = 0.28


def basic_filter_reason(caption: str | None, lang: str | None, width: int | None,
                        height: int | None, *, english: str = "en", min_words: int = 2,
                        min_chars: int = 5, min_side: int = 200,
                        max_aspect: float = 3.0) -> str | None:
    """First reason a sample fails basic_filter, or None to keep it.

    ``min_words``/``min_chars`` are exclusive (keep if MORE than), ``min_side``
    and ``max_aspect`` inclusive, exactly as DataComp.
    """
    if lang != english:
        return "not_english"
    if caption_words(caption) <= min_words or caption_chars(caption) <= min_chars:
        return "caption_too_short"
    return image_size_reason(width, height, min_side=min_side, max_aspect=max_aspect)


def basic_filter_reasons(langs, words, chars, width, height, *, english: str = "en", min_words: int = 2,
                         min_chars: int = 5, min_side: int = 200, max_aspect: float = 3.0):
    """:func:`basic_filter_reason` over whole columns (columnar select): ``langs`` an object array,
    ``words``/``chars`` the caption counts, ``width``/``height`` float64 with NaN for a missing side
    (``image_size_reasons``); an object array of reasons, the first failing test's, as above."""
    import numpy as np

    from beam_filter.rules.image import image_size_reasons

    out = image_size_reasons(width, height, min_side=min_side, max_aspect=max_aspect)
    out[(np.asarray(words) <= min_words) | (np.asarray(chars) <= min_chars)] = "caption_too_short"
    out[np.asarray(langs, dtype=object) != english] = "not_english"
    return out


def laion2b_reason(score, cld3_lang: str | None, threshold: float = LAION_THRESHOLD) -> str | None:
    """DataComp laion2b: keep when B/32 score >= threshold and gcld3 says ``en``."""
    if score is None or (isinstance(score, float) and math.isnan(score)) or float(score) < threshold:
        return "clip_score_below_threshold"
    if cld3_lang != "en":
        return "not_english"
    return None


def image_based_caption_reason(caption: str | None, lang: str | None) -> str | None:
    """DataComp image_based pre-filter: fastText ``en``, > 1 fastText token, > 5 characters."""
    if lang != "en":
        return "not_english"
    if fasttext_token_count(caption) <= 1 or caption_chars(caption) <= 5:
        return "caption_too_short"
    return None


def text_based_reason(caption: str | None, lang: str | None, wordnet_dir: str | None = None) -> str | None:
    """DataComp text_based: fastText ``en`` and an ImageNet-21k concept among the caption's words."""
    from beam_filter.rules.wordnet import caption_has_in21k_synset

    if lang != "en":
        return "not_english"
    if not caption_has_in21k_synset(caption, wordnet_dir):
        return "no_imagenet21k_concept"
    return None
