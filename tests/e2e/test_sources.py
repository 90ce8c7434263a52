"""Mixing sources (DataComp's BYOD track): two img2dataset-like pools whose shards share names
(both 00000000.tar, 00000001.tar) go into one output with distinct uids, the configured keep
fraction (by uid hash) and copy count, per-source accounting, decontamination of external sources,
and a reshard that finds each source's decisions again. The rules are written out here from
their specification (docs/datacomp_files.md), not imported."""

from __future__ import annotations

import collections
import glob
import hashlib
import json
import os
import tarfile

import pyarrow.parquet as pq
import pytest


def _keep_by_fraction(uid: str, source: str, fraction: float) -> bool:
    h = hashlib.blake2b(f"source:{source}/{uid}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / float(1 << 64) < fraction


@pytest.fixture(scope="module")
def two_pools(tmp_path_factory):
    from beam_filter.devtools.sample_pool import make_sample

    d = tmp_path_factory.mktemp("sources")
    make_sample(str(d / "pool"), samples=80, seed=3, shard_size=40)
    make_sample(str(d / "cc12m"), samples=80, seed=4, shard_size=40)
    names = lambda p: sorted(os.path.basename(x) for x in glob.glob(str(d / p / "*.tar")))   # noqa: E731
    assert names("pool") == names("cc12m")          # the case that used to be refused
    return d


def _decisions(out) -> list[dict]:
    rows = [r for f in sorted(glob.glob(str(out / "decisions" / "*.parquet"))) for r in pq.read_table(f).to_pylist()]
    for r in rows:
        r["source"] = r["shard"].rsplit("#", 1)[1] if r.get("source") is None else r["source"]
    return rows


def _written(out) -> dict[str, bytes]:
    return {os.path.basename(p): open(p, "rb").read() for p in sorted(glob.glob(str(out / "shards" / "*.tar")))}


def _uids_written(out) -> collections.Counter:
    """uid -> samples written, from the {uid}-{j} sample names (--uid-keys)."""
    c = collections.Counter()
    for p in sorted(glob.glob(str(out / "shards" / "*.tar"))):
        with tarfile.open(p) as tar:
            c.update(m.name[:-5].rsplit("-", 1)[0] for m in tar.getmembers() if m.name.endswith(".txt"))
    return c


def test_two_sources_with_the_same_shard_names_mix_with_fraction_and_copies(two_pools, run_cli, tmp_path):
    out = tmp_path / "out"
    inputs = ["--input", f"pool={two_pools}/pool/*.tar:external=false",
              "--input", f"cc12m={two_pools}/cc12m/*.tar:fraction=0.5:copies=2"]
    assert run_cli("run", "--recipe", "no_filter", *inputs, "--output", str(out), "--shard-size", "30",
                   "--uid-keys") == 0
    rows = _decisions(out)
    by_source = collections.defaultdict(list)
    for r in rows:      # the shard's tag names the source; readable samples also carry a source column
        tagged = r["shard"].rsplit("#", 1)[1]
        assert r["source"] in (tagged, None) and (r["source"] or r["reason"])
        r["source"] = tagged
        by_source[tagged].append(r)
    assert {k: len(v) for k, v in by_source.items()} == {"pool": 80, "cc12m": 80}     # one row per sample
    # uids unique across sources, also those made up for samples without a json uid
    assert not {r["uid"] for r in by_source["pool"]} & {r["uid"] for r in by_source["cc12m"]}
    for r in by_source["cc12m"]:
        expect_kept = r["reason"] in (None, "not_in_source_fraction") and _keep_by_fraction(r["uid"], "cc12m", 0.5)
        if r["reason"] in (None, "not_in_source_fraction"):
            assert r["kept"] == expect_kept, r
            assert r["copies"] == (2 if expect_kept else 0)
    kept_b = [r for r in by_source["cc12m"] if r["kept"]]
    assert 20 <= len(kept_b) <= 55
    assert all(r["copies"] == 1 for r in by_source["pool"] if r["kept"])
    written = _uids_written(out)
    for r in by_source["pool"]:
        if r["kept"]:
            assert written[r["uid"]] == 1
    for r in kept_b:
        assert written[r["uid"]] == 2
    report = json.loads((out / "report.json").read_text())
    src = report["sources"]
    assert src["cc12m"]["samples"] == 80 and src["cc12m"]["kept"] == len(kept_b)
    assert src["cc12m"]["kept_with_copies"] == 2 * len(kept_b)
    assert src["cc12m"]["not_in_source_fraction"] == sum(r["reason"] == "not_in_source_fraction" for r in rows)
    assert src["cc12m"]["fraction"] == 0.5 and src["cc12m"]["copies"] == 2 and src["pool"]["external"] is False
    meta = json.loads((out / "shards" / "meta.json").read_text())
    assert meta["sources"] == src and meta["output_count"] == sum(written.values())
    # reshard finds each source's decisions by its tagged shard names and writes the same bytes
    again = tmp_path / "again"
    assert run_cli("reshard", "--decisions", str(out), *inputs, "--output", str(again), "--shard-size", "30",
                   "--uid-keys") == 0
    assert _written(again) == _written(out)


def test_samples_without_uid_get_distinct_uids_per_source(two_pools, run_cli, tmp_path):
    out = tmp_path / "out"
    assert run_cli("run", "--recipe", "no_filter", "--input", f"a={two_pools}/pool/*.tar",
                   "--input", f"b={two_pools}/pool/*.tar", "--output", str(out)) == 0     # the same pool twice
    rows = _decisions(out)
    made_up = {}
    for r in rows:
        base = os.path.basename(r["shard"])            # 00000000.tar#a
        made_up[(r["source"], r["key"])] = hashlib.sha256(f"{base}/{r['key']}".encode()).hexdigest()[:32]
    a = {r["key"]: r["uid"] for r in rows if r["source"] == "a"}
    b = {r["key"]: r["uid"] for r in rows if r["source"] == "b"}
    shared = [k for k in a if a[k] != b[k]]
    assert shared and all(a[k] == made_up[("a", k)] and b[k] == made_up[("b", k)] for k in shared)


def test_external_sources_are_decontaminated(two_pools, run_cli, tmp_path):
    evals = tmp_path / "eval"
    evals.mkdir()
    taken = {}
    for name in ("pool", "cc12m"):
        with tarfile.open(f"{two_pools}/{name}/00000000.tar") as tar:
            jpgs = [m for m in tar.getmembers() if m.name.endswith(".jpg")]
            for m in jpgs[:3]:
                (evals / f"{name}_{m.name}").write_bytes(tar.extractfile(m).read())
                taken.setdefault(name, []).append(m.name[:-4])
    out = tmp_path / "out"
    assert run_cli("run", "--recipe", "no_filter", "--input", f"pool={two_pools}/pool/*.tar:external=false",
                   "--input", f"cc12m={two_pools}/cc12m/*.tar", "--decontaminate", str(evals),
                   "--output", str(out)) == 0
    rows = {(r["source"], r["key"]): r for r in _decisions(out)}
    hit = [rows[("cc12m", k)] for k in taken["cc12m"]]
    assert all(not r["kept"] and r["reason"].startswith("eval_contamination:") for r in hit)
    assert not any(str(r["reason"]).startswith("eval_contamination") for (s, _), r in rows.items() if s == "pool")
    report = json.loads((out / "report.json").read_text())
    assert report["sources"]["cc12m"]["decontaminated"] is True and report["sources"]["pool"]["decontaminated"] is False
    assert report["sources"]["cc12m"]["eval_contamination"] >= 3


def test_an_unfiltered_source_skips_the_recipe(two_pools, run_cli, tmp_path):
    """BYOD: a filtered pool plus CC12M added whole (filter=false) at 50%, twice."""
    out = tmp_path / "out"
    assert run_cli("run", "--recipe", "datacomp_basic", "--input", f"pool={two_pools}/pool/*.tar:external=false",
                   "--input", f"cc12m={two_pools}/cc12m/*.tar:fraction=0.5:copies=2:filter=false",
                   "--output", str(out)) == 0
    rows = _decisions(out)
    pool = [r for r in rows if r["source"] == "pool"]
    ext = [r for r in rows if r["source"] == "cc12m" and r["reason"] in (None, "unfiltered_source",
                                                                         "not_in_source_fraction")]
    assert any(r["stage"] == "datacomp_basic" for r in pool)            # the pool is filtered
    assert len(ext) > 60 and all(r["kept"] == _keep_by_fraction(r["uid"], "cc12m", 0.5) for r in ext)
    assert all(r["copies"] == 2 and r["reason"] == "unfiltered_source" for r in ext if r["kept"])
    report = json.loads((out / "report.json").read_text())
    assert report["sources"]["cc12m"]["kept"] == sum(r["kept"] for r in ext)
    assert report["sources"]["cc12m"]["filtered"] is False and report["sources"]["pool"]["filtered"] is True
