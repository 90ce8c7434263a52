"""End to end: `beam-filter run` on a generated pool, checked against independent computations."""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import subprocess
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image


def read_decisions(out: str) -> list[dict]:
    rows = []
    for f in sorted(glob.glob(os.path.join(out, "decisions", "*.parquet"))):
        rows.extend(pq.read_table(f).to_pylist())
    return rows


def tar_samples(path: str) -> dict[str, dict[str, bytes]]:
    """Independent reader: every complete sample of a tar; at damage, the sample being read is dropped."""
    out: dict[str, dict[str, bytes]] = {}
    last = None
    try:
        with tarfile.open(path, "r|") as t:
            for m in t:
                if m.isfile():
                    key, ext = m.name.split(".", 1)
                    last = key
                    out.setdefault(key, {})[ext] = t.extractfile(m).read()
        return out
    except (tarfile.TarError, EOFError, OSError):
        out.pop(last, None)
        return out


def fasttext_lang(text: str) -> str:
    import fasttext

    from beam_filter.rules.language import bundled_lid_model_path

    model = fasttext_lang.__dict__.setdefault("model", fasttext.load_model(bundled_lid_model_path()))
    labels, _ = model.predict(text.replace("\n", " "), k=1)
    return labels[0].replace("__label__", "")


def datacomp_basic_keeps(members: dict[str, bytes]) -> bool:
    """DataComp baselines.py basic_filter, written from its rules without beam_filter code."""
    caption = members["txt"].decode("utf-8")
    meta = json.loads(members["json"])
    w, h = meta.get("original_width"), meta.get("original_height")
    if not w or not h:
        w, h = Image.open(io.BytesIO(members["jpg"] if "jpg" in members else
                                     members.get("png") or members.get("webp"))).size
    return (fasttext_lang(caption) == "en" and len(caption.split()) > 2 and len(caption) > 5
            and min(w, h) >= 200 and max(w, h) / min(w, h) <= 3.0)


@pytest.fixture(scope="module")
def basic_run(pool, tmp_path_factory, run_cli):
    pool_dir, _ = pool
    out = str(tmp_path_factory.mktemp("run") / "out")
    assert run_cli("run", "--recipe", "datacomp_basic", "--input", f"{pool_dir}/*.tar", "--output", out,
                   "--shard-size", "50") == 0
    return pool_dir, out


def test_every_sample_has_one_decision_row(basic_run):
    pool_dir, out = basic_run
    rows = read_decisions(out)
    keys = [(os.path.basename(r["shard"]), r["key"]) for r in rows]
    assert len(keys) == len(set(keys))
    expected = set()
    for shard in glob.glob(os.path.join(pool_dir, "*.tar")):
        expected |= {(os.path.basename(shard), k) for k in tar_samples(shard)}
    # every complete sample of every shard has a row; the only extra rows are samples cut by truncation
    assert expected <= set(keys)
    extra = [r for r in rows if (os.path.basename(r["shard"]), r["key"]) not in expected]
    assert all(r["reason"] == "truncated_shard" for r in extra), [(r["key"], r["reason"]) for r in extra]
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["counts"]["samples"] == len(rows)
    assert sum(f["dropped"] for f in report["funnel"]) == report["counts"]["dropped"]


def test_kept_equals_independent_datacomp_basic(basic_run):
    pool_dir, out = basic_run
    rows = {(os.path.basename(r["shard"]), r["key"]): r for r in read_decisions(out)}
    mismatches = []
    for shard in sorted(glob.glob(os.path.join(pool_dir, "*.tar"))):
        for key, members in tar_samples(shard).items():
            row = rows[(os.path.basename(shard), key)]
            if row["reason"] in ("corrupt_image", "missing_caption", "bad_json", "bad_caption_encoding",
                                 "missing_image", "truncated_shard"):
                continue  # unusable samples: dropped with their reason, not judged by the rules
            if datacomp_basic_keeps(members) != row["kept"]:
                mismatches.append((key, row["reason"]))
    assert not mismatches
    kept = [r for r in rows.values() if r["kept"]]
    assert 0 < len(kept) < len(rows)
    uids = np.load(os.path.join(out, "uids.npy"))
    assert uids.dtype == np.dtype("u8,u8")
    assert uids.tolist() == sorted(uids.tolist())
    want = sorted((int(r["uid"][:16], 16), int(r["uid"][16:], 16)) for r in kept)
    assert [tuple(map(int, u)) for u in uids.tolist()] == want


def test_reasons_for_damaged_inputs(basic_run):
    _, out = basic_run
    rows = read_decisions(out)
    reasons = {r["reason"] for r in rows}
    assert "corrupt_image" in reasons
    assert {"not_english", "caption_too_short", "image_too_small"} <= reasons
    report = json.load(open(os.path.join(out, "report.json")))
    kinds = {e["error"] for e in report["file_errors"]}
    assert {"truncated_tar", "not_a_tar"} <= kinds


def test_output_shards_are_byte_identical_samples(basic_run):
    pool_dir, out = basic_run
    import webdataset as wds

    rows = read_decisions(out)
    uid_of = {(os.path.basename(r["shard"]), r["key"]): r["uid"] for r in rows}
    source = {}
    for shard in glob.glob(os.path.join(pool_dir, "*.tar")):
        for key, members in tar_samples(shard).items():
            source[uid_of[(os.path.basename(shard), key)]] = members
    kept = {r["uid"] for r in rows if r["kept"]}
    key_to_uid = {r["key"]: r["uid"] for r in rows}
    shards = sorted(glob.glob(os.path.join(out, "shards", "*.tar")))
    assert shards and all(os.path.exists(s[:-4] + "_stats.json") for s in shards)
    seen = set()
    for sample in wds.WebDataset(shards, shardshuffle=False):
        uid = key_to_uid[sample["__key__"]]      # copies == 1 here: output keys are the source keys
        seen.add(uid)
        for ext, data in source[uid].items():
            assert sample[ext] == data
    assert seen == kept
    counts = [json.load(open(s[:-4] + "_stats.json"))["count"] for s in shards]
    assert all(c == 50 for c in counts[:-1]) and 0 < counts[-1] <= 50
    meta = json.load(open(os.path.join(out, "shards", "meta.json")))
    assert meta["samples"] == len(kept)


def test_second_run_is_byte_identical(basic_run, tmp_path, run_cli):
    pool_dir, out = basic_run
    out2 = str(tmp_path / "again")
    assert run_cli("run", "--recipe", "datacomp_basic", "--input", f"{pool_dir}/*.tar", "--output", out2,
                   "--shard-size", "50", "--no-fusion") == 0
    names = sorted(os.path.relpath(p, out) for p in glob.glob(os.path.join(out, "**", "*"), recursive=True)
                   if os.path.isfile(p) and not p.endswith(("report.json", "report.html")) and "report_" not in p)
    names2 = sorted(os.path.relpath(p, out2) for p in glob.glob(os.path.join(out2, "**", "*"), recursive=True)
                    if os.path.isfile(p) and not p.endswith(("report.json", "report.html")) and "report_" not in p)
    assert names == names2
    for name in names:
        with open(os.path.join(out, name), "rb") as a, open(os.path.join(out2, name), "rb") as b:
            assert a.read() == b.read(), name


def test_resume_reuses_scores(basic_run, tmp_path, run_cli):
    pool_dir, out = basic_run
    work = str(tmp_path / "resume")
    shutil.copytree(out, work)
    before = {f: os.stat(f).st_mtime_ns for f in glob.glob(os.path.join(work, "scores", "*.parquet"))}
    assert run_cli("run", "--recipe", "datacomp_basic", "--input", f"{pool_dir}/*.tar", "--output", work,
                   "--shard-size", "50", "--resume") == 0
    after = {f: os.stat(f).st_mtime_ns for f in glob.glob(os.path.join(work, "scores", "*.parquet"))}
    assert before == after            # no shard was scored again
    for f in glob.glob(os.path.join(out, "decisions", "*.parquet")):
        assert open(f, "rb").read() == open(os.path.join(work, "decisions", os.path.basename(f)), "rb").read()


def test_pool_with_no_readable_shard_reports_file_errors(tmp_path, run_cli):
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "00000000.tar").write_bytes(b"<html>403 Forbidden</html>" * 40)
    out = tmp_path / "out"
    assert run_cli("run", "--recipe", "datacomp_basic", "--input", f"{pool}/*.tar", "--output", out) == 0
    report = json.load(open(out / "report.json"))
    assert report["counts"]["samples"] == 0
    assert [e["error"] for e in report["file_errors"]] == ["not_a_tar"]
    assert len(np.load(out / "uids.npy")) == 0
    assert json.load(open(out / "shards" / "meta.json"))["samples"] == 0


def test_score_fused_per_shard_equals_the_general_graph(pool, tmp_path, run_cli):
    """`score` of a recipe without a model runs fused per shard (features only, a process pool);
    its files are the general graph's, byte for byte, for a recipe with a group stage too."""
    pool_dir, _ = pool
    grouped = tmp_path / "grouped.yaml"
    grouped.write_text("name: grouped\nstages:\n  - datacomp_basic: {}\n  - near_dedup: {}\n")
    for recipe in ("datacomp_basic", str(grouped)):
        name = os.path.basename(recipe)
        fused, general = str(tmp_path / f"{name}_fused"), str(tmp_path / f"{name}_general")
        assert run_cli("score", "--recipe", recipe, "--input", f"{pool_dir}/*.tar", "--output", fused) == 0
        assert run_cli("score", "--recipe", recipe, "--input", f"{pool_dir}/*.tar", "--output", general,
                       "--no-fusion") == 0
        names = sorted(os.path.relpath(p, fused) for p in glob.glob(os.path.join(fused, "**", "*"), recursive=True)
                       if os.path.isfile(p) and "report" not in os.path.basename(p))
        assert any(n.startswith("scores/") for n in names) and any(n.startswith("file_errors/") for n in names)
        for name in names:
            with open(os.path.join(fused, name), "rb") as a, open(os.path.join(general, name), "rb") as b:
                assert a.read() == b.read(), (recipe, name)
        assert not os.path.exists(os.path.join(fused, "decisions"))


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (make install installs it)")
def test_report_renders_in_headless_chromium(basic_run, tmp_path):
    """The run's report.html (thumbnails, plots and all) renders in a real browser, offline."""
    _, out = basic_run
    shot = str(tmp_path / "shot.png")
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
           "file://" + os.path.abspath(os.path.join(out, "report.html"))]
    subprocess.run(cmd, check=False, timeout=120, capture_output=True)
    assert os.path.exists(shot), "chromium wrote no screenshot"
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert img.shape == (2000, 1280)
    assert img.std() > 20, "screenshot is blank"
    # the dark header band is drawn at the top, the light page below it
    assert img[:150].mean() < 120 < img[600:].mean()
