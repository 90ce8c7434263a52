"""Pool-frequency captions: normalisation and counts (cluster/caption_freq.py) against pandas."""

from __future__ import annotations

import numpy as np
import pandas as pd

from beam_filter.cluster.caption_freq import (FREQUENT_REASON, count_captions, frequency_verdict,
                                              normalize_caption)


def test_normalisation():
    assert normalize_caption("  Click  to\tENLARGE\n") == "click to enlarge"
    assert normalize_caption("Ｐｈｏｔｏ") == "photo"                 # NFKC full-width
    assert normalize_caption("STRASSE") == normalize_caption("straße")  # casefold
    assert normalize_caption("Photo 1") != normalize_caption("Photo 2")
    assert normalize_caption(None) == "" and normalize_caption(3) == ""


def _captions(n=3000, seed=4):
    rng = np.random.default_rng(seed)
    templates = ["Image", "image ", "click to enlarge", "Stock Photo", "a red car", "photo 1", None, ""]
    out = []
    for _ in range(n):
        if rng.random() < 0.4:
            t = templates[int(rng.integers(len(templates)))]
            if isinstance(t, str) and rng.random() < 0.3:
                t = "  " + t.upper() + "\n"
        else:
            t = f"a {rng.choice(['dog', 'cat', 'man'])} on the {rng.choice(['beach', 'road'])} {rng.integers(50)}"
        out.append(t)
    return out


def test_counts_equal_pandas_value_counts():
    captions = _captions()
    mine = count_captions(captions)
    # independent: pandas string methods, not normalize_caption
    s = pd.Series([c for c in captions if isinstance(c, str)])
    s = s.str.normalize("NFKC").str.casefold().str.replace(r"\s+", " ", regex=True).str.strip()
    ref = s[s != ""].value_counts()
    assert dict(mine) == ref.to_dict()
    assert mine["image"] > 100


def test_verdict_drops_above_max_count_and_records_the_count():
    assert frequency_verdict(5, 5, "c") .reason is None
    v = frequency_verdict(6, 5, "c")
    assert v.reason == FREQUENT_REASON and v.columns == {"c": 6}
