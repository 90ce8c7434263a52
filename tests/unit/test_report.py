"""report.html: counts equal the decisions, bytes are stable (rendered in Chromium: tests/e2e/test_run.py).

The fixture is a small but complete output dir built here: real WebDataset
tars with real JPEGs, decisions parquet shaped like the pipeline's (read
errors, rule drops, a thresholded CLIP score, near-duplicate reasons with
uids, a cluster column), a report.json, a missing shard and a damaged one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections import Counter
from html.parser import HTMLParser

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from beam_filter.errors import UserError
from beam_filter.report import scan, write_report
from beam_filter.report.data import reason_class, uid_hashes
from beam_filter.report.thumbnails import fetch_thumbnails, make_thumbnail

EVIL = '<script>alert("x")</script> & <b>bold</b>'
STAGES = [("datacomp_basic", "datacomp_basic"), ("clip_l14", "clip"), ("near_dedup", "near_dedup")]
THRESHOLD = 0.25


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, size=(40 + seed % 30, 50, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def build_output(root: str, shards: int = 4, per_shard: int = 30, seed: int = 0) -> dict:
    """Write source tars + decisions + report.json; return the expected counts."""
    rng = np.random.default_rng(seed)
    pool = os.path.join(root, "pool")
    out = os.path.join(root, "out")
    os.makedirs(pool, exist_ok=True)
    os.makedirs(os.path.join(out, "decisions"), exist_ok=True)
    exp = {"total": 0, "kept": 0, "copies": 0, "stage": Counter(), "reason": Counter(), "shard": {}}
    for s in range(shards):
        shard = os.path.join(pool, f"{s:08d}.tar")
        rows = []
        with tarfile.open(shard, "w") as tar:
            for i in range(per_shard):
                key = f"{s:04d}{i:04d}"
                uid = hashlib.md5(key.encode()).hexdigest()
                caption = EVIL if i == 3 else f"sample {key} of a photo"
                _add(tar, f"{key}.jpg", _jpeg(s * 1000 + i) if i != 5 else b"not a jpeg at all")
                _add(tar, f"{key}.txt", caption.encode())
                _add(tar, f"{key}.json", json.dumps({"uid": uid}).encode())
                score = float(rng.uniform(0.05, 0.45))
                row = {"uid": uid, "shard": shard, "key": key, "caption": caption,
                       "caption_chars": len(caption), "caption_words": len(caption.split()),
                       "width": 50, "height": 40 + (s * 1000 + i) % 30, "read_error": None,
                       "clip_l14_score": score, "clip_l14_flipped_score": score - 0.01,
                       "lang_score": float(rng.uniform(0.5, 1.0)),
                       "cluster": int(rng.integers(0, 7)), "failed": []}
                if i == 5:
                    row.update(read_error="corrupt_image", clip_l14_score=None, clip_l14_flipped_score=None,
                               cluster=None)
                    decision = ("corrupt_image", "read")
                elif i % 7 == 1:
                    decision = ("caption_too_short", "datacomp_basic")
                elif score < THRESHOLD:
                    decision = ("clip_score_below_threshold", "clip_l14")
                elif i % 5 == 2:
                    decision = (f"near_duplicate_of:{uid[::-1]}", "near_dedup")
                else:
                    decision = (None, None)
                reason, stage = decision
                kept = reason is None
                copies = (2 if i % 4 == 0 else 1) if kept else 0
                row.update(kept=kept, copies=copies, reason=reason, stage=stage)
                rows.append(row)
                exp["total"] += 1
                exp["kept"] += kept
                exp["copies"] += copies
                if not kept:
                    exp["stage"][stage] += 1
                    exp["reason"][reason_class(reason)] += 1
                k, d = exp["shard"].get(shard, (0, 0))
                exp["shard"][shard] = (k + kept, d + (not kept))
        for r in rows:
            del r["failed"]
        pq.write_table(pa.Table.from_pylist(sorted(rows, key=lambda r: r["key"])),
                       os.path.join(out, "decisions", f"{s:08d}.parquet"))
    funnel, n = [], exp["total"]
    for sid, typ in [("read", "read")] + STAGES:
        d = exp["stage"][sid]
        funnel.append({"stage": sid, "type": typ, "in": n, "dropped": d, "out": n - d})
        n -= d
    report = {
        "version": 1, "command": "run",
        "recipe": {"name": "test_<recipe>", "hash": "ab" * 32, "text": "name: test\nstages: []\n",
                   "stages": [{"id": i, "type": t, "params": {"fraction": 0.3} if t == "clip" else {}}
                              for i, t in STAGES]},
        "inputs": {"globs": [os.path.join(pool, "*.tar")], "shards": shards},
        "counts": {"samples": exp["total"], "kept": exp["kept"], "kept_with_copies": exp["copies"],
                   "dropped": exp["total"] - exp["kept"]},
        "funnel": funnel, "reasons": dict(exp["reason"]),
        "thresholds": {"clip_l14": {"column": "clip_l14_score", "fraction": 0.3, "threshold": THRESHOLD,
                                    "n": 10, "N": 100}},
        "file_errors": [{"shard": "gone.tar", "error": "not_a_tar", "detail": "<bad> header"}],
        "timings": {"phases": {"score": 12.5, "select": 1.25, "reshard": 3.0, "total": 16.75},
                    "stages": {"clip_l14": {"seconds": 10.0, "samples": exp["total"]},
                               "datacomp_basic": {"seconds": 0.5, "samples": exp["total"]}}},
        "provenance": {"beam_filter": "0.1.0", "python": "3.11", "packages": {"apache-beam": "2.77.0"},
                       "models": {"clip_l14": {"model": "ViT-L-14", "sha256": "cd" * 32}}},
        "outputs": {"shards": 1, "samples_written": exp["copies"], "uids": "uids.npy"},
    }
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f)
    return {"out": out, "pool": pool, **exp}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("report"))
    exp = build_output(root)
    # Damage the sources after the decisions were made: one shard gone, one cut short.
    os.remove(os.path.join(exp["pool"], "00000001.tar"))
    p2 = os.path.join(exp["pool"], "00000002.tar")
    with open(p2, "r+b") as f:
        f.truncate(os.path.getsize(p2) // 3)
    path = write_report(exp["out"])
    with open(path, "rb") as f:
        exp["html"] = f.read().decode("utf-8")
    exp["path"] = path
    return exp


class _Collect(HTMLParser):
    """Every start tag with its attributes, and the page's visible text."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(html: str) -> _Collect:
    p = _Collect()
    p.feed(html)
    return p


def test_counts_in_html_equal_decisions(built):
    p = _parse(built["html"])
    by_id = {a["id"]: a for _, a in p.tags if "id" in a}
    assert int(by_id["count-samples"]["data-value"]) == built["total"]
    assert int(by_id["count-kept"]["data-value"]) == built["kept"]
    assert int(by_id["count-kept-with-copies"]["data-value"]) == built["copies"]
    assert int(by_id["count-dropped"]["data-value"]) == built["total"] - built["kept"]

    funnel = [a for t, a in p.tags if a.get("class") == "funnel-step"]
    assert [a["data-stage"] for a in funnel] == ["read", "datacomp_basic", "clip_l14", "near_dedup"]
    n = built["total"]
    for a in funnel:
        d = built["stage"][a["data-stage"]]
        assert (int(a["data-in"]), int(a["data-dropped"]), int(a["data-out"])) == (n, d, n - d)
        n -= d
    reasons = {a["data-reason"]: int(a["data-count"]) for t, a in p.tags if a.get("class") == "reason"}
    assert reasons == dict(built["reason"])
    assert "near_duplicate_of" in reasons
    shards = {a["data-shard"]: (int(a["data-kept"]), int(a["data-dropped"]))
              for t, a in p.tags if a.get("class") == "shard"}
    assert shards == built["shard"]
    assert "warnings" not in by_id, "report.json agrees with the decisions: no warning expected"


def test_overlap_matrix_counts_threshold_failures_of_rows_dropped_earlier(built):
    data = scan(built["out"], samples_per_group=0)
    ov = data.overlap
    i, j = ov.stages.index("datacomp_basic"), ov.stages.index("clip_l14")
    tbl = pa.concat_tables(pq.read_table(os.path.join(built["out"], "decisions", f))
                           for f in sorted(os.listdir(os.path.join(built["out"], "decisions"))))
    rows = tbl.to_pylist()
    both = sum(1 for r in rows if r["stage"] == "datacomp_basic"
               and r["clip_l14_score"] is not None and r["clip_l14_score"] < THRESHOLD)
    assert both > 0
    assert ov.matrix[i, j] == ov.matrix[j, i] == both
    clip_fail = sum(1 for r in rows if r["clip_l14_score"] is not None and r["clip_l14_score"] < THRESHOLD)
    assert ov.matrix[j, j] == clip_fail
    assert not ov.complete
    cells = {(a["data-a"], a["data-b"]): int(a["data-count"])
             for t, a in _parse(built["html"]).tags if a.get("class") == "cell"}
    assert cells[("datacomp_basic", "clip_l14")] == both


def test_failed_stages_column_makes_overlap_exact(tmp_path):
    exp = build_output(str(tmp_path), shards=1, per_shard=12)
    path = os.path.join(exp["out"], "decisions", "00000000.parquet")
    tbl = pq.read_table(path)
    failed = [["datacomp_basic", "near_dedup"] if i % 2 else (["read"] if i == 4 else [])
              for i in range(tbl.num_rows)]
    pq.write_table(tbl.append_column("failed_stages", pa.array(failed, pa.list_(pa.string()))), path)
    data = scan(exp["out"], samples_per_group=0)
    ov = data.overlap
    assert ov.complete and data.warnings == []
    a, b = ov.stages.index("datacomp_basic"), ov.stages.index("near_dedup")
    assert ov.matrix[a, b] >= tbl.num_rows // 2


def test_histograms_and_clusters(built):
    data = scan(built["out"], samples_per_group=0)
    hist = {h.column: h for h in data.histograms}
    assert set(hist) == {"clip_l14_score", "clip_l14_flipped_score", "lang_score"}
    h = hist["clip_l14_score"]
    readable = built["total"] - built["stage"]["read"]
    assert int(h.kept.sum() + h.dropped.sum()) == readable
    assert h.missing == built["stage"]["read"]
    assert h.thresholds == [("clip_l14", THRESHOLD)]
    # every kept row passed the threshold: no kept mass in bins entirely below it
    below = h.edges[1:] <= THRESHOLD
    assert h.kept[below].sum() == 0
    (c,) = data.clusters
    assert c.column == "cluster" and c.sizes.sum() == readable and list(c.sizes) == sorted(c.sizes)[::-1]
    for name in ("report_hist_clip_l14_score.png", "report_clusters_cluster.png", "report_shards.png",
                 "report_timings_phases.png", "report_timings_stages.png"):
        with open(os.path.join(built["out"], name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name


def test_thumbnails_placeholders_and_escaping(built):
    html = built["html"]
    p = _parse(html)
    figs = [a for t, a in p.tags if t == "figure" and "thumb" in a.get("class", "")]
    groups = Counter(a["data-group"] for a in figs)
    assert groups["kept"] == 8
    assert set(groups) == {"kept"} | set(built["reason"])
    jpegs = [a for t, a in p.tags if t == "img" and a.get("src", "").startswith("data:image/jpeg;base64,")]
    assert len(jpegs) >= 5
    text = "".join(p.text)
    assert "shard unavailable" in text            # the deleted shard
    assert "undecodable image" in text            # the corrupt jpg member
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert EVIL in text                            # shown to people as written
    # chosen by the smallest uid hash per group, whichever file a uid is in
    data = scan(built["out"])
    kept_rows = data.samples["kept"]
    hashes = [r["uid_hash"] for r in kept_rows]
    assert hashes == sorted(hashes)
    tbl = pa.concat_tables(pq.read_table(os.path.join(built["out"], "decisions", f), columns=["uid", "kept"])
                           for f in sorted(os.listdir(os.path.join(built["out"], "decisions"))))
    kept = np.asarray(tbl.column("kept").to_numpy(zero_copy_only=False), bool)
    all_kept = sorted(f"{h:016x}" for h in uid_hashes(tbl.column("uid").filter(pa.array(kept))).tolist())
    assert hashes == all_kept[:8]


def test_self_contained_and_deterministic(built):
    html = built["html"]
    assert not re.search(r"""(src|href)=["'](https?:|//)""", html)
    assert "<link" not in html and "<script" not in html
    assert "@import" not in html and "url(" not in html
    pngs = {f: open(os.path.join(built["out"], f), "rb").read()
            for f in os.listdir(built["out"]) if f.startswith("report_")}
    write_report(built["out"])
    with open(built["path"], "rb") as f:
        assert f.read().decode("utf-8") == html
    for name, data in pngs.items():
        with open(os.path.join(built["out"], name), "rb") as f:
            assert f.read() == data, name


def test_missing_report_json_and_mismatch_warn(tmp_path):
    exp = build_output(str(tmp_path), shards=1, per_shard=8)
    meta_path = os.path.join(exp["out"], "report.json")
    meta = json.load(open(meta_path))
    meta["counts"]["kept"] += 1
    json.dump(meta, open(meta_path, "w"))
    data = scan(exp["out"], samples_per_group=0)
    assert any("counts.kept" in w for w in data.warnings)
    os.remove(meta_path)
    data = scan(exp["out"], samples_per_group=0)   # stage order now comes from the data alone
    assert data.funnel[0].stage == "read" and data.funnel[-1].n_out == exp["kept"]
    assert sum(s.dropped for s in data.funnel) == exp["total"] - exp["kept"]
    path = write_report(exp["out"], samples_per_group=2)
    html = open(path).read()
    assert 'id="warnings"' in html and "report.json not found" in html
    assert f'data-value="{exp["total"]}"' in html


def test_no_decisions_is_a_user_error(tmp_path):
    with pytest.raises(UserError):
        write_report(str(tmp_path))


def test_thumbnail_reader_stops_on_damage(tmp_path):
    shard = str(tmp_path / "s.tar")
    with tarfile.open(shard, "w") as tar:
        for i in range(4):
            _add(tar, f"k{i}.jpg", _jpeg(i))
    with tarfile.open(shard) as tar:
        cut = tar.getmember("k3.jpg").offset_data + 100   # inside the last image
    with open(shard, "r+b") as f:
        f.truncate(cut)
    got = fetch_thumbnails([(shard, "k0"), (shard, "k3"), (str(tmp_path / "nope.tar"), "k0")])
    assert got[(shard, "k0")].uri.startswith("data:image/jpeg;base64,")
    assert got[(shard, "k3")].uri is None and got[(shard, "k3")].note
    assert got[(str(tmp_path / "nope.tar"), "k0")].note.startswith("shard unavailable")
    thumb = Image.open(io.BytesIO(make_thumbnail(_jpeg(1), 32)))
    assert max(thumb.size) == 32 and thumb.format == "JPEG"


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_thumbnail_reader_handles_tar_flavours(tmp_path, fmt):
    """Flat, nested and >100-char member names; pax/GNU long names go through tarfile."""
    shard = str(tmp_path / "s.tar")
    long_dir = "d" * 60 + "/" + "e" * 50
    keys = ["flat", "sub/dir/k", f"{long_dir}/k2"] if fmt != tarfile.USTAR_FORMAT else ["flat", "sub/dir/k"]
    with tarfile.open(shard, "w", format=fmt) as tar:
        for i, k in enumerate(keys):
            _add(tar, f"{k}.txt", b"caption")
            _add(tar, f"{k}.JPG", _jpeg(i))
    got = fetch_thumbnails([(shard, k) for k in keys] + [(shard, "absent")])
    for k in keys:
        assert got[(shard, k)].uri and got[(shard, k)].uri.startswith("data:image/jpeg;base64,"), k
    assert got[(shard, "absent")].uri is None and got[(shard, "absent")].note == "image not found in shard"
    not_tar = str(tmp_path / "x.tar")
    with open(not_tar, "wb") as f:
        f.write(b"hello" * 300)
    assert fetch_thumbnails([(not_tar, "flat")])[(not_tar, "flat")].note.startswith("shard is not a readable tar")
