"""The fused_rank stage in a real Beam select (ApplyStages): min-max over the pool, weighted sum, rank-n,
equal to a pandas computation; metadata-column alternatives; a fixed threshold."""

from __future__ import annotations

import json
import os

import apache_beam as beam
import numpy as np
import pandas as pd

from beam_filter.registry import build_stage
from beam_filter.transforms.select import ApplyStages


def _select(rows, stages, tmp_path, name):
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    path = tmp_path / f"{name}.jsonl"
    info_dir = tmp_path / f"info_{name}"
    os.makedirs(info_dir, exist_ok=True)

    def write(decided):
        with open(path, "w") as f:
            for r in decided:
                f.write(json.dumps({k: r[k] for k in ("uid", "kept", "reason")}) + "\n")

    with beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([])) as p:
        (p | beam.Create(rows, reshuffle=True) | ApplyStages(stages, info_dir=str(info_dir))
         | beam.combiners.ToList() | beam.Map(write))
    got = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            got[r["uid"]] = r
    return got, info_dir


def _rows(n, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    b = rng.gamma(2.0, size=n)
    c = rng.integers(0, 5, n).astype(float)         # heavy ties
    a[::37] = np.nan
    rows = []
    for i in range(n):
        row = {"uid": f"{i:032x}", "shard": "s.tar", "key": f"{i:09d}", "read_error": None,
               "a": None if np.isnan(a[i]) else float(a[i]), "c": float(c[i])}
        if i % 2:
            row["b"] = float(b[i])                  # shards' column
        else:
            row["b_meta"] = float(b[i])             # "metadata" column of the same score
        rows.append(row)
    return rows, pd.DataFrame({"uid": [r["uid"] for r in rows], "a": a, "b": b, "c": c})


def test_fused_rank_equals_pandas(tmp_path):
    rows, df = _rows(3000)
    weights = {"a": 0.5, "b|b_meta": 0.3, "c": 0.2}
    stage = build_stage("fused", "fused_rank", {"weights": weights, "fraction": 0.25})
    got, info_dir = _select(rows, [stage], tmp_path, "fraction")

    cols = ["a", "b", "c"]
    norm = (df[cols] - df[cols].min()) / (df[cols].max() - df[cols].min())
    fused = 0.5 * norm["a"] + 0.3 * norm["b"] + 0.2 * norm["c"]      # NaN where a is NaN
    n = int(len(df) * 0.25)
    threshold = fused.sort_values(ascending=False, na_position="last").iloc[n]
    want = set(df.loc[fused >= threshold, "uid"])
    assert {u for u, r in got.items() if r["kept"]} == want
    assert len(want) >= n + 1
    assert {r["reason"] for r in got.values() if not r["kept"]} == {"fused_below_threshold"}
    info = json.loads((info_dir / "fused.json").read_text())
    assert info["threshold"] == threshold
    assert info["ranges"] == [[df[c].min(), df[c].max()] for c in cols]
    assert info["rank"]["N"] == len(df) and info["rank"]["n"] == n


def test_fused_rank_with_a_fixed_threshold_and_after_an_earlier_stage(tmp_path):
    rows, df = _rows(400, seed=1)
    first = build_stage("c_min", "fused_rank", {"weights": {"c": 1.0}, "threshold": 0.25})   # c >= 1
    stage = build_stage("fused", "fused_rank", {"weights": {"a": 0.5, "b|b_meta": 0.5}, "threshold": 0.6})
    got, _ = _select(rows, [first, stage], tmp_path, "fixed")
    alive = df[df["c"] >= 1]                                   # min-max over the rows alive at the stage
    norm = (alive[["a", "b"]] - alive[["a", "b"]].min()) / (alive[["a", "b"]].max() - alive[["a", "b"]].min())
    fused = 0.5 * norm["a"] + 0.5 * norm["b"]
    want = set(alive.loc[fused >= 0.6, "uid"])
    assert {u for u, r in got.items() if r["kept"]} == want
    dropped = {r["reason"] for u, r in got.items() if not r["kept"]}
    assert dropped == {"c_min_below_threshold", "fused_below_threshold"}
