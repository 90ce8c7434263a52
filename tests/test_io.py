"""Tar reading, reshard planning and atomic writes, without Beam."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from beam_filter.reading import FileError, build_sample, read_shard
from beam_filter.resharding import expand_kept, plan_output_shards, write_output_shard
from beam_filter.tar_io import AtomicWriter, split_member_name


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
