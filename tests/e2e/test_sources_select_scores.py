"""`select --scores` of a mixed-source score run decides like `run` of the same sources and recipe,
without the sources stage written into the recipe: the score run records its sources (report.json)
and select applies the same per-source fraction, copies, filter=false and decontamination. Also the
per-source table of report.html. Fractions are checked against the rule written out here from
docs/datacomp_files.md (a blake2b hash of "source:<name>/<uid>"), not imported."""

from __future__ import annotations

import glob
import hashlib
import html
import json
import os
import re
import tarfile

import pyarrow.parquet as pq
import pytest

COLUMNS = ("uid", "shard", "key", "kept", "copies", "reason", "stage")


def _keep_by_fraction(uid: str, source: str, fraction: float) -> bool:
    h = hashlib.blake2b(f"source:{source}/{uid}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / float(1 << 64) < fraction


def _decisions(out) -> list[tuple]:
    rows = [r for f in sorted(glob.glob(os.path.join(out, "decisions", "*.parquet")))
            for r in pq.read_table(f).to_pylist()]
    return sorted(tuple(r.get(c) for c in COLUMNS) for r in rows)


def _written(out) -> dict[str, bytes]:
    return {os.path.basename(p): open(p, "rb").read() for p in sorted(glob.glob(os.path.join(out, "shards", "*.tar")))}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Two pools with the same shard names and one evaluation set; run, score and select of one mix."""
    from beam_filter import cli
    from beam_filter.devtools.sample_pool import make_sample

    d = tmp_path_factory.mktemp("mix")
    make_sample(str(d / "pool"), samples=80, seed=3, shard_size=40)
    make_sample(str(d / "cc12m"), samples=80, seed=4, shard_size=40)
    evals = d / "eval"
    evals.mkdir()
    with tarfile.open(d / "cc12m" / "00000000.tar") as tar:
        for m in [m for m in tar.getmembers() if m.name.endswith(".jpg")][:4]:
            (evals / m.name).write_bytes(tar.extractfile(m).read())
    inputs = ["--input", f"pool={d}/pool/*.tar:external=false",
              "--input", f"cc12m={d}/cc12m/*.tar:fraction=0.5:copies=2",
              "--input", f"whole={d}/pool/*.tar:fraction=0.6:copies=3:filter=false:decontaminate=false",
              "--decontaminate", str(evals)]
    out = {k: str(d / k) for k in ("run", "scores", "select", "reshard", "eval")}
    main = lambda *a: cli.main([str(x) for x in a] + ["--no-progress"])     # noqa: E731
    assert main("run", "--recipe", "datacomp_basic", *inputs, "--output", out["run"], "--shard-size", "25") == 0
    assert main("score", "--recipe", "datacomp_basic", *inputs, "--output", out["scores"]) == 0
    assert main("select", "--recipe", "datacomp_basic", "--scores", out["scores"], "--output", out["select"]) == 0
    assert main("reshard", "--decisions", out["select"], *inputs[:6], "--output", out["reshard"],
                "--shard-size", "25") == 0
    return out


def test_select_of_mixed_scores_decides_as_run(mixed):
    run, sel = _decisions(mixed["run"]), _decisions(mixed["select"])
    assert len(run) == 240 and sel == run
    with open(os.path.join(mixed["run"], "uids.npy"), "rb") as a, open(os.path.join(mixed["select"], "uids.npy"),
                                                                       "rb") as b:
        assert a.read() == b.read()
    # the per-source rules really applied (not a vacuous equality of two unfiltered runs)
    by = {}
    for uid, shard, _, kept, copies, reason, _ in sel:
        by.setdefault(shard.rsplit("#", 1)[1], []).append((uid, kept, copies, reason))
    cc = [r for r in by["cc12m"] if r[3] in (None, "not_in_source_fraction")]
    assert cc and all((r[3] is None) == _keep_by_fraction(r[0], "cc12m", 0.5) for r in cc)
    assert all(r[2] == 2 for r in by["cc12m"] if r[1])
    assert sum(str(r[3]).startswith("eval_contamination") for r in by["cc12m"]) >= 2
    whole = [r for r in by["whole"] if r[3] in ("unfiltered_source", "not_in_source_fraction")]
    assert len(whole) > 60 and all(r[1] == _keep_by_fraction(r[0], "whole", 0.6) for r in whole)
    assert all(r[2] == 3 for r in whole if r[1])


def test_select_reports_each_source_like_run(mixed):
    run = json.load(open(os.path.join(mixed["run"], "report.json")))
    sel = json.load(open(os.path.join(mixed["select"], "report.json")))
    assert sel["sources"] == run["sources"] and sel["counts"] == run["counts"]
    assert sel["sources"]["cc12m"]["fraction"] == 0.5 and sel["sources"]["whole"]["filtered"] is False
    scored = json.load(open(os.path.join(mixed["scores"], "report.json")))
    assert set(scored["sources"]) == {"pool", "cc12m", "whole"}       # what the score run recorded


def test_reshard_of_the_select_writes_the_run_shards(mixed):
    assert _written(mixed["reshard"]) == _written(mixed["run"]) != {}


def test_report_html_has_the_per_source_table(mixed):
    report = json.load(open(os.path.join(mixed["run"], "report.json")))
    page = open(os.path.join(mixed["run"], "report.html")).read()
    assert 'href="#sources"' in page
    rows = re.findall(r'<tr class="source" data-source="([^"]+)" data-samples="(\d+)" data-kept="(\d+)" '
                      r'data-kept-with-copies="(\d+)">(.*?)</tr>', page)
    src = report["sources"]
    assert sorted(r[0] for r in rows) == sorted(src)
    written = sum(v["kept_with_copies"] for v in src.values())
    assert written == report["counts"]["kept_with_copies"]
    for name, n_in, kept, out, cells in rows:
        v = src[html.unescape(name)]
        assert (int(n_in), int(kept), int(out)) == (v["samples"], v["kept"], v["kept_with_copies"])
        share = re.search(r'class="num share">([\d.]+)%<', cells).group(1)
        assert float(share) == pytest.approx(100.0 * v["kept_with_copies"] / written, abs=0.05)
        assert html.escape(v["input"]) in cells
    assert {r[0] for r in rows} == {"pool", "cc12m", "whole"}


def test_a_recipe_with_its_own_sources_stage_is_left_alone(mixed, tmp_path):
    """A sources stage written in the select recipe wins over the recorded one (no second stage)."""
    from beam_filter import cli

    recipe = tmp_path / "own.yaml"
    recipe.write_text("name: own\nstages:\n  - sources: {sources: {cc12m: {fraction: 0.25}}, "
                      f"decontaminate: '{mixed['eval']}'}}\n  - datacomp_basic: {{}}\n")
    out = str(tmp_path / "own")
    assert cli.main(["select", "--recipe", str(recipe), "--scores", mixed["scores"], "--output", out,
                     "--no-progress"]) == 0
    rows = _decisions(out)
    cc = [r for r in rows if r[1].endswith("#cc12m") and r[5] in (None, "not_in_source_fraction")]
    assert cc and all((r[5] is None) == _keep_by_fraction(r[0], "cc12m", 0.25) for r in cc)
    assert not any(str(r[5]).startswith("eval_contamination") for r in rows)
