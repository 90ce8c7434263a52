"""Copies from a duplication stage end up as repeated uids in uids.npy and `{uid}-{j}` keys in shards."""

from __future__ import annotations

import collections
import glob
import json

import numpy as np
import pyarrow.parquet as pq


RECIPE = """
name: dup_test
stages:
  - datacomp_basic: {min_side: 32}
  - quality_duplication: {score: caption_chars, per_cluster: false, fractions: [0.25], copies: [3]}
"""


def test_copies_reach_uids_and_shards(clean_pool, tmp_path, run_cli):
    import webdataset as wds

    pool_dir, _ = clean_pool
    recipe = tmp_path / "dup.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    assert run_cli("run", "--recipe", recipe, "--input", f"{pool_dir}/*.tar", "--output", out,
                   "--shard-size", "16") == 0
    rows = [r for f in sorted(glob.glob(str(out / "decisions" / "*.parquet"))) for r in pq.read_table(f).to_pylist()]
    kept = [r for r in rows if r["kept"]]
    tripled = [r for r in kept if r["copies"] == 3]
    assert tripled and all(r["copies"] in (1, 3) for r in kept)

    uids = np.load(out / "uids.npy")
    as_hex = collections.Counter(f"{int(a):016x}{int(b):016x}" for a, b in uids.tolist())
    assert as_hex == collections.Counter({r["uid"]: r["copies"] for r in kept})

    keys = collections.Counter()
    for sample in wds.WebDataset(sorted(glob.glob(str(out / "shards" / "*.tar"))), shardshuffle=False):
        keys[sample["__key__"]] += 1
    for r in tripled:
        assert all(keys[f"{r['uid']}-{j}"] == 1 for j in range(3))
    assert sum(keys.values()) == sum(r["copies"] for r in kept)
    assert json.load(open(out / "shards" / "meta.json"))["samples"] == len(uids)
