"""Pool-frequency captions: normalise captions and count them over the pool (pure).

"The Devil is in the Details" (2309.15954) removes high-frequency captions: alt-texts
that thousands of images share ("image", "photo", "click to enlarge", a shop's product
template) say nothing about their image. A fixed list (``junk_caption``) misses the
templates of a given pool, so here the pool itself is counted: captions are normalised
(:func:`normalize_caption`), counted over every row the stage sees, and a row whose
normalised caption occurs more than ``max_count`` times is dropped. The Beam wiring
(a distributed count: ``transforms/cluster.CaptionCounts``) calls these functions.

The paper gives no cut-off; ``max_count`` is a parameter (see the devil_details preset).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Iterable

from beam_filter.records import Verdict

FREQUENT_REASON = "frequent_caption"
_SPACE = re.compile(r"\s+")


def normalize_caption(caption) -> str:
    """NFKC, case-folded, whitespace runs collapsed to one space, stripped; ``""`` for None.

    Punctuation and digits are kept: "Photo 1" and "Photo 2" are different templates'
    instances, not one caption (counting them together is a prefix rule, not this one).
    """
    if not isinstance(caption, str):
        return ""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", caption).casefold()).strip()


def count_captions(captions: Iterable) -> Counter:
    """Count of each non-empty normalised caption (what the Beam combine computes, in one process)."""
    return Counter(n for n in map(normalize_caption, captions) if n)


def frequency_verdict(count: int, max_count: int, column: str) -> Verdict:
    """A row's verdict given how often its normalised caption occurs; the count is always recorded."""
    reason = FREQUENT_REASON if count > max_count else None
    return Verdict(reason=reason, columns={column: int(count)})
