"""caption_frequency in a real Beam pipeline: the distributed count equals pandas value_counts."""

from __future__ import annotations

import numpy as np
import pandas as pd

from beam_filter.cluster.caption_freq import FREQUENT_REASON
from beam_filter.registry import GroupStage, build_stage


def _rows(n=1200, seed=9):
    rng = np.random.default_rng(seed)
    pool = ["Image", "IMAGE ", "click  to enlarge", "stock photo", "a dog", None, ""]
    rows = []
    for i in range(n):
        if rng.random() < 0.5:
            cap = pool[int(rng.integers(len(pool)))]
        else:
            cap = f"caption {int(rng.integers(300))}"
        rows.append({"uid": f"{i:032x}", "shard": f"s{i % 3}.tar", "key": f"{i:09d}", "caption": cap})
    return rows


def test_counts_and_verdicts_match_pandas():
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
    from apache_beam.testing.util import assert_that, equal_to

    from beam_filter.identity import row_token

    rows = _rows()
    # independent reference: pandas over the same normalisation spelled with pandas string methods
    df = pd.DataFrame(rows)
    norm = (df.caption.dropna().str.normalize("NFKC").str.casefold()
            .str.replace(r"\s+", " ", regex=True).str.strip())
    norm = norm[norm != ""]
    counts = norm.value_counts()
    expected = []
    for idx, text in norm.items():
        n = int(counts[text])
        expected.append((row_token(rows[idx]), (FREQUENT_REASON if n > 40 else None, n)))
    assert any(r is not None for _, (r, _n) in expected) and any(r is None for _, (r, _n) in expected)

    s = build_stage("caption_frequency", "caption_frequency", {"max_count": 40})
    assert isinstance(s, GroupStage) and s.verdict_columns() == ("caption_frequency_count",)
    with beam.Pipeline(runner=BundleBasedDirectRunner(),
                       options=PipelineOptions(["--runner=DirectRunner"])) as p:
        out = (s.verdicts(p | beam.Create(rows))
               | beam.MapTuple(lambda t, v: (t, (v.reason, v.columns["caption_frequency_count"]))))
        assert_that(out, equal_to(expected))
