"""DataComp's no_filter baseline: `select --metadata` lists every uid (DataComp's load_uids, written
here from apply_filter.py: every parquet's uid column as u8,u8, sorted), and `run` reshards every
readable sample of a pool unchanged."""

from __future__ import annotations

import collections
import glob
import json
import os
import tarfile

import numpy as np
import pyarrow.parquet as pq


def test_no_filter_select_lists_every_uid(datacomp_meta, run_cli, tmp_path):
    meta = os.path.join(datacomp_meta.dir, "metadata")
    assert run_cli("select", "--metadata", meta, "--recipe", "no_filter", "--output", str(tmp_path / "o")) == 0
    uids = [u for p in sorted(glob.glob(f"{meta}/*.parquet")) for u in pq.read_table(p, columns=["uid"]).column(0).to_pylist()]
    want = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids], np.dtype("u8,u8"))
    want.sort()
    assert np.array_equal(np.load(tmp_path / "o" / "uids.npy"), want) and len(want) == datacomp_meta.rows


def test_no_filter_run_reshards_every_readable_sample(clean_pool, run_cli, tmp_path):
    pool_dir, _ = clean_pool
    out = tmp_path / "out"
    assert run_cli("run", "--recipe", "no_filter", "--input", f"{pool_dir}/*.tar", "--output", str(out),
                   "--shard-size", "50") == 0
    report = json.loads((out / "report.json").read_text())
    decided = [r for f in sorted(glob.glob(str(out / "decisions" / "*.parquet"))) for r in pq.read_table(f).to_pylist()]
    assert len(decided) == report["counts"]["samples"] == 120
    dropped = collections.Counter(r["reason"] for r in decided if not r["kept"])
    assert set(dropped) <= {"corrupt_image", "missing_image", "missing_caption", "bad_json", "bad_uid",
                            "bad_caption_encoding", "unsafe_member_name", "no_regular_members",
                            "image_too_large", "unreadable_sample"}, dropped
    written = 0
    for path in sorted(glob.glob(str(out / "shards" / "*.tar"))):
        with tarfile.open(path) as tar:
            written += len({m.name.rsplit(".", 1)[0] for m in tar.getmembers()})
    assert written == report["counts"]["kept"] == sum(r["kept"] for r in decided) > 100
    meta = json.loads((out / "shards" / "meta.json").read_text())
    assert meta["samples"] == written
