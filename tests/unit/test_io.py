"""Tar reading, reshard planning and atomic writes, without Beam."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from beam_filter.fsio import AtomicWriter
from beam_filter.reading import FileError, build_sample, read_shard
from beam_filter.resharding import expand_kept, plan_output_shards, write_output_shard
from beam_filter.tar_io import split_member_name


def make_tar(path, samples):
    with tarfile.open(path, "w") as t:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))


def jpeg(w=64, h=48):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(buf, "JPEG")
    return buf.getvalue()


def test_split_member_name_matches_webdataset():
    assert split_member_name("a/b/000001.seg.jpg") == ("a/b/000001", "seg.jpg")
    assert split_member_name("000001.JPG") == ("000001", "jpg")


def test_read_shard_reasons(tmp_path):
    good = jpeg()
    path = str(tmp_path / "00000000.tar")
    make_tar(path, [
        ("k1", {"jpg": good, "txt": b"a red square on white", "json": b'{"uid": "00ff", "original_width": 640, "original_height": 480}'}),
        ("k2", {"jpg": good[: len(good) // 2], "txt": b"cut image", "json": b"{}"}),
        ("k3", {"jpg": good, "json": b"{}"}),
        ("k4", {"jpg": good, "txt": b"\xff\xfe bad", "json": b"{}"}),
        ("k5", {"jpg": good, "txt": b"fine caption", "json": b"{not json"}),
        ("k6", {"txt": b"no image", "json": b"{}"}),
    ])
    samples = list(read_shard(path))
    by_key = {s.key: s for s in samples}
    assert by_key["k1"].error is None
    assert by_key["k1"].uid == "00ff"
    assert (by_key["k1"].features["width"], by_key["k1"].features["height"]) == (640, 480)   # json original size
    assert by_key["k2"].error == "corrupt_image"
    assert by_key["k3"].error == "missing_caption"
    assert by_key["k4"].error == "bad_caption_encoding"
    assert by_key["k5"].error == "bad_json"
    assert by_key["k6"].error == "missing_image"
    assert len(by_key["k5"].uid) == 32              # derived from shard + key
    assert by_key["k3"].features["width"] == 64     # header size when the json has none


def test_truncated_and_not_a_tar(tmp_path):
    path = str(tmp_path / "00000001.tar")
    make_tar(path, [(f"k{i}", {"jpg": jpeg(), "txt": b"some caption here"}) for i in range(5)])
    data = open(path, "rb").read()
    cut = str(tmp_path / "cut.tar")
    open(cut, "wb").write(data[: len(data) // 2 + 100])
    items = list(read_shard(cut))
    assert isinstance(items[-1], FileError) and items[-1].error == "truncated_tar"
    assert all(not isinstance(i, FileError) for i in items[:-1]) and len(items) >= 3
    junk = str(tmp_path / "junk.tar")
    open(junk, "wb").write(b"hello" * 300)
    items = list(read_shard(junk))
    assert len(items) == 1 and items[0].error == "not_a_tar"


def test_expand_and_plan():
    assert expand_kept((("a", "u1", 1), ("b", "u2", 3))) == [("a", "a", "u1"), ("b", "u2-0", "u2"),
                                                              ("b", "u2-1", "u2"), ("b", "u2-2", "u2")]
    plan = plan_output_shards([("s2", 5), ("s1", 4), ("s3", 0)], 3)
    assert [[(s.shard, s.start, s.end) for s in o.segments] for o in plan] == [
        [("s1", 0, 3)], [("s1", 3, 4), ("s2", 0, 2)], [("s2", 2, 5)]]
    with pytest.raises(ValueError):
        plan_output_shards([("s", 1)], 0)


def test_write_output_shard_copies_and_missing(tmp_path):
    src = str(tmp_path / "src.tar")
    make_tar(src, [("k1", {"jpg": b"\xff\xd8x\xff\xd9", "txt": b"one"}), ("k2", {"jpg": b"\xff\xd8y\xff\xd9", "txt": b"two"})])
    out = str(tmp_path / "00000000.tar")
    stats = write_output_shard(out, [(src, [("k2", "u2-0"), ("k2", "u2-1"), ("k9", "k9")])])
    assert stats["count"] == 2 and stats["missing"] == 1
    with tarfile.open(out) as t:
        names = t.getnames()
        assert names == ["u2-0.jpg", "u2-0.txt", "u2-1.jpg", "u2-1.txt"]
        assert t.extractfile("u2-1.txt").read() == b"two"
        assert all(m.mtime == 0 and m.uid == 0 for m in t.getmembers())


def test_atomic_writer_leaves_nothing_on_failure(tmp_path):
    path = str(tmp_path / "x.tar")
    with pytest.raises(RuntimeError):
        with AtomicWriter(path) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    with AtomicWriter(path) as f:
        f.write(b"whole")
    assert open(path, "rb").read() == b"whole" and os.listdir(tmp_path) == ["x.tar"]


def test_build_sample_keeps_members_when_asked():
    s = build_sample("/p/00000000.tar", "k", {"jpg": jpeg(), "txt": b"hello there friend"}, keep_members=True)
    assert set(s.members) == {"jpg", "txt"} and s.caption == "hello there friend"


# ---- fsio: the one I/O module, and the output layout ---------------------------------------

def test_fsio_join_and_listing(tmp_path):
    from beam_filter import fsio

    assert fsio.join("gs://b/out/", "shards", "/00000000.tar") == "gs://b/out/shards/00000000.tar"
    assert fsio.join(str(tmp_path), "a", "b.json") == os.path.join(str(tmp_path), "a", "b.json")
    fsio.write_bytes_atomic(str(tmp_path / "d" / "1.json"), b'{"a": 1}')      # parent created
    (tmp_path / "d" / ".tmp-9-ff-2.json").write_bytes(b"half")                # never listed
    (tmp_path / "d" / "sub.json").mkdir()                                     # not a file
    (tmp_path / "d" / "x.txt").write_bytes(b"")
    assert fsio.list_files(str(tmp_path / "d"), "*.json") == [str(tmp_path / "d" / "1.json")]
    assert fsio.read_json(fsio.list_files(str(tmp_path / "d"), "*.json")[0]) == {"a": 1}
    assert fsio.list_files(str(tmp_path / "missing"), "*") == []
    assert [f.size for f in fsio.list_dir(str(tmp_path / "d"), "*")] == [8, 0]


def test_load_npy_errors_are_one_line(tmp_path):
    import numpy as np

    from beam_filter import fsio
    from beam_filter.errors import UserError

    good = str(tmp_path / "a.npy")
    np.save(good, np.arange(6, dtype=np.float32).reshape(2, 3))
    assert fsio.load_npy(good).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert fsio.load_npy(good, mmap=True).shape == (2, 3)
    with pytest.raises(UserError, match=r"^target embeddings file not found: .*nope\.npy$"):
        fsio.load_npy(str(tmp_path / "nope.npy"), "target embeddings")
    bad = {"text.npy": b"hello, not numpy\n", "empty.npy": b"", "cut.npy": open(good, "rb").read()[:70]}
    pickled = str(tmp_path / "pickled.npy")
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    for path in [str(tmp_path / n) for n in bad] + [pickled, str(tmp_path)]:
        with pytest.raises(UserError) as info:
            fsio.load_npy(path, "centroids")
        msg = str(info.value)
        assert msg.startswith(f"{path}: not a .npy file of centroids") and "\n" not in msg, msg
    raw = str(tmp_path / "raw.bin")
    np.arange(4, dtype="u8").tofile(raw)
    assert fsio.load_npy(raw, raw_dtype=np.dtype("u8,u8"), mmap=True).shape == (2,)


def test_file_sha256(tmp_path):
    import hashlib

    from beam_filter import fsio

    p = tmp_path / "w.bin"
    p.write_bytes(b"x" * 3_000_000)
    assert fsio.file_sha256(str(p)) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    assert fsio.file_sha256(str(p), limit=1) == hashlib.sha256(b"x" * (1 << 20)).hexdigest()


def test_remote_call_runs_local_calls_directly_and_bounds_remote_ones(monkeypatch):
    import time

    from beam_filter import fsio

    assert fsio.remote_call(lambda: 7, "/local/path") == 7
    monkeypatch.setenv(fsio.IO_TIMEOUT_ENV, "0.2")
    with pytest.raises(fsio.RemoteIOError, match=r"^gs://b/x: cannot list: no answer within 0.2 s"):
        fsio.remote_call(lambda: time.sleep(5), "gs://b/x", "cannot list")
    with pytest.raises(fsio.RemoteIOError, match=r"^gs://b/x: cannot access \(KeyError: 'k'\); check credentials"):
        fsio.remote_call(lambda: {}["k"], "gs://b/x")


def test_output_layout_names_every_output():
    from beam_filter import output_dir
    from beam_filter.layout import OUTPUT_FILES, OutputLayout, embeddings_beside, shard_stem

    lay = OutputLayout("gs://b/out")
    assert lay.scores("gs://b/pool/00000007.tar") == "gs://b/out/scores/00000007.parquet"
    assert lay.embeddings("/p/00000007.tar") == "gs://b/out/embeddings/00000007.npz"
    assert lay.decisions("00000007") == "gs://b/out/decisions/00000007.parquet"
    assert lay.file_error("/p/00000007.tar") == "gs://b/out/file_errors/00000007.json"
    assert lay.threshold("clip_l14") == "gs://b/out/thresholds/clip_l14.json"
    assert (lay.uids, lay.report_json, lay.report_html, lay.report_png("shards")) == (
        "gs://b/out/uids.npy", "gs://b/out/report.json", "gs://b/out/report.html", "gs://b/out/report_shards.png")
    assert (lay.shard_tar(12), lay.shard_stats(12), lay.shards_meta) == (
        "gs://b/out/shards/00000012.tar", "gs://b/out/shards/00000012_stats.json", "gs://b/out/shards/meta.json")
    assert (lay.marker, lay.lock) == ("gs://b/out/" + output_dir.MARKER, "gs://b/out/" + output_dir.LOCK)
    assert OutputLayout("/o").scores("/p/a.tar") == os.path.join("/o", "scores", "a.parquet")
    assert shard_stem("gs://b/md/0001.parquet") == "0001"
    # output_dir deletes (on --overwrite) exactly what the layout names
    assert output_dir.KINDS[output_dir.OUTPUT] == OUTPUT_FILES
    assert set(output_dir.RESUME_CLEARS) == {"decisions", "shards", "thresholds", "file_errors", "verdicts",
                                             "work_rows"}
    assert lay.verdicts_dir == "gs://b/out/verdicts"      # group stages' verdicts by part (work files)
    # `run`'s scored rows before a select that writes the scores files (work files, npz beside)
    assert (lay.work_rows("/p/00000007.tar"), lay.work_embeddings("/p/00000007.tar")) == (
        "gs://b/out/work_rows/00000007.parquet", "gs://b/out/work_rows/00000007.npz")
    assert embeddings_beside(lay.work_rows("/p/00000007.tar")) == lay.work_embeddings("/p/00000007.tar")
    assert embeddings_beside(lay.scores("/p/00000007.tar")) == lay.embeddings("/p/00000007.tar")
