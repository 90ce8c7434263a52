"""A sample is (source shard, key), never its uid alone: verdicts, reshard and uids.npy.

Regression tests for issue 12 cases 4 and 7: a verdict meant for one sample
must not land on another that shares its uid, and reshard must never write
samples from shards or pools its decisions were not made from.
"""

from __future__ import annotations

import glob
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.e2e


UID_HIGH = "f" * 32          # sorts after UID_LOW: exact dedup's survivor is the smallest uid
UID_LOW = "0" * 31 + "1"


def _jpeg(color) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (256, 256), color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _write_tar(path, samples):
    with tarfile.open(path, "w") as t:
        for key, uid, image, caption in samples:
            meta = json.dumps({"uid": uid, "original_width": 256, "original_height": 256}).encode()
            for ext, data in (("jpg", image), ("txt", caption.encode()), ("json", meta)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))


def _decisions(out):
    rows = []
    for f in sorted(glob.glob(os.path.join(out, "decisions", "*.parquet"))):
        rows += pq.read_table(f).to_pylist()
    return {r["key"]: r for r in rows}


def _shard_keys(out):
    keys = []
    for f in sorted(glob.glob(os.path.join(out, "shards", "*.tar"))):
        with tarfile.open(f) as t:
            keys += [m.name for m in t.getmembers()]
    return keys


def test_shared_uid_does_not_share_a_dedup_verdict(tmp_path, run_cli):
    red, blue = _jpeg((220, 20, 20)), _jpeg((20, 20, 220))
    pool = tmp_path / "pool"
    pool.mkdir()
    _write_tar(str(pool / "00000000.tar"), [
        ("a", UID_HIGH, red, "a red square photographed on a white table"),
        ("b", UID_HIGH, blue, "a blue square photographed on a white table"),   # same uid, unique image
        ("c", UID_LOW, red, "the same red square photographed again today"),   # same image as a
    ])
    out = str(tmp_path / "out")
    assert run_cli("run", "--recipe", "quickstart", "--input", f"{pool}/*.tar", "--output", out) == 0
    rows = _decisions(out)
    assert rows["a"]["reason"] == f"exact_duplicate_of:{UID_LOW}"
    assert rows["b"]["kept"], rows["b"]          # before: dropped with a's verdict (joined by uid)
    assert rows["c"]["kept"]
    assert sorted(k.split(".")[0] for k in _shard_keys(out)) == ["b"] * 3 + ["c"] * 3


def test_two_kept_samples_sharing_a_uid_are_both_written_and_reported(tmp_path, run_cli):
    pool = tmp_path / "pool"
    pool.mkdir()
    _write_tar(str(pool / "00000000.tar"), [
        ("a", UID_HIGH, _jpeg((220, 20, 20)), "a red square photographed on a white table"),
        ("b", UID_HIGH, _jpeg((20, 20, 220)), "a blue square photographed on a white table"),
    ])
    out = str(tmp_path / "out")
    assert run_cli("run", "--recipe", "quickstart", "--input", f"{pool}/*.tar", "--output", out) == 0
    assert all(r["kept"] for r in _decisions(out).values())
    assert len(_shard_keys(out)) == 6
    assert len(np.load(os.path.join(out, "uids.npy"))) == 2
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["warnings"]["kept_samples_sharing_a_uid"] == 2


@pytest.fixture(scope="module")
def two_pools(tmp_path_factory, run_cli):
    """Two pools with the same shard and key names but different samples, and decisions for the first."""
    from beam_filter.devtools.sample_pool import make_sample

    base = tmp_path_factory.mktemp("two_pools")
    first, second = str(base / "first"), str(base / "second")
    make_sample(first, samples=80, seed=1, shard_size=40)
    make_sample(second, samples=80, seed=2, shard_size=40)
    out = str(base / "decided")
    assert run_cli("run", "--recipe", "datacomp_basic", "--input", f"{first}/*.tar", "--output", out) == 0
    return first, second, out


def _cli(*args):
    """The real command in a subprocess: exit code and stderr lines."""
    proc = subprocess.run([sys.executable, "-m", "beam_filter.cli", *args, "--no-progress"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "BEAM_FILTER_OFFLINE": "1"})
    return proc.returncode, [line for line in proc.stderr.splitlines() if line.strip()]


def test_reshard_refuses_decisions_of_another_pool(two_pools, tmp_path):
    first, second, decided = two_pools
    assert sorted(os.listdir(first)) == sorted(os.listdir(second))      # same shard names
    out = str(tmp_path / "resharded")
    code, err = _cli("reshard", "--decisions", decided, "--input", f"{second}/*.tar", "--output", out)
    assert code == 2, err
    assert len(err) == 1 and "another pool" in err[0], err
    assert not glob.glob(os.path.join(out, "shards", "*.tar"))


def test_reshard_reads_only_the_given_inputs(two_pools, tmp_path):
    first, _, decided = two_pools
    one = sorted(glob.glob(f"{first}/*.tar"))[0]
    code, err = _cli("reshard", "--decisions", decided, "--input", one, "--output", str(tmp_path / "r"))
    assert code == 2, err
    assert len(err) == 1 and "among --input" in err[0], err


def test_reshard_of_its_own_pool_still_writes_every_kept_sample(two_pools, tmp_path, run_cli):
    first, _, decided = two_pools
    out = str(tmp_path / "resharded")
    assert run_cli("reshard", "--decisions", decided, "--input", f"{first}/*.tar", "--output", out,
                   "--shard-size", "25") == 0
    kept = sum(pq.read_table(f, columns=["copies"]).column("copies").to_numpy().sum()
               for f in glob.glob(os.path.join(decided, "decisions", "*.parquet")))
    stats = [json.load(open(p)) for p in glob.glob(os.path.join(out, "shards", "*_stats.json"))]
    assert sum(s["count"] for s in stats) == kept and sum(s["missing"] for s in stats) == 0
