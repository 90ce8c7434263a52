"""ExactRankThreshold, the Beam transform of the exact rank-n rule, equals the pure rule.

The pure rule itself is checked against DataComp's formula in tests/unit/test_thresholds.py.
"""

from __future__ import annotations

import json
import math
import os

import apache_beam as beam
import numpy as np

from beam_filter.rules.thresholds import keep_at_rank, rank_n_info, tiebreak_keep_mask
from beam_filter.transforms.thresholds import ExactRankThreshold


def _run(build, tmp_path):
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    with beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([])) as p:
        build(p)
    out = {}
    for name in sorted(os.listdir(tmp_path)):
        with open(tmp_path / name) as f:
            out[name[:-5]] = json.load(f)
    return out


def _dump(directory, name):
    def write(value):
        with open(os.path.join(directory, f"{name}.json"), "w") as f:
            json.dump(value, f)
    return write


def test_transform_equals_pure_rule(tmp_path):
    rng = np.random.default_rng(5)
    heavy = rng.integers(-3, 3, 5000).astype(float)
    mixed = rng.normal(size=3000)
    mixed[::17] = np.nan
    cases = {
        "heavy_ties": (heavy, 0.3, 0), "heavy_ties_exact": (heavy, 0.3, 1 << 16),
        "negative_nan": (mixed, 0.05, 3), "tiny": (np.array([0.5, -1.0]), 0.5, 0),
        "single": (np.array([2.0]), 0.9, 0), "ints_as_scores": (rng.integers(0, 100, 999), 0.2, 0),
        "empty": (np.zeros(0), 0.3, 0), "all_nan": (np.full(4, np.nan), 0.5, 0),
    }

    def build(p):
        for name, (values, f, limit) in cases.items():
            rows = [{"uid": str(i), "s": (None if isinstance(v, float) and math.isnan(v) else v.item())}
                    for i, v in enumerate(values)]
            (p | f"Create[{name}]" >> beam.Create(rows, reshuffle=False)
             | f"Threshold[{name}]" >> ExactRankThreshold("s", f, exact_limit=limit)
             | f"Dump[{name}]" >> beam.Map(lambda info: info._asdict())
             | f"Write[{name}]" >> beam.Map(_dump(str(tmp_path), name)))

    got = _run(build, tmp_path)
    assert sorted(got) == sorted(cases)
    for name, (values, f, _) in cases.items():
        want = rank_n_info(values, f, column="s")._asdict()
        assert got[name] == want, name


def test_transform_with_getter_and_tiebreak_side_input(tmp_path):
    """The info as a side input drives MLM-Filter's tie-break exactly as the pure mask."""
    rng = np.random.default_rng(6)
    scores = rng.integers(0, 20, 2000)
    uids = [f"{i:032x}" for i in range(len(scores))]
    rows = [{"uid": u, "mlm": int(s)} for u, s in zip(uids, scores)]
    directory = str(tmp_path)

    def build(p):
        pc = p | beam.Create(rows, reshuffle=False)
        info = pc | ExactRankThreshold(_Getter(), 0.25)
        (pc | beam.Filter(lambda r, i: keep_at_rank(r["mlm"], i, r["uid"], 3), beam.pvalue.AsSingleton(info))
         | beam.Map(lambda r: r["uid"]) | beam.combiners.ToList()
         | beam.Map(lambda kept: sorted(kept)) | beam.Map(_dump(directory, "kept")))

    got = _run(build, tmp_path)
    want = [u for u, k in zip(uids, tiebreak_keep_mask(scores, uids, 0.25, seed=3)) if k]
    assert got["kept"] == want


class _Getter:
    def __call__(self, row):
        return row["mlm"]
