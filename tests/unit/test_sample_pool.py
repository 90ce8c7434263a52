"""The generated sample pool: determinism, format, ground truth, and that its categories are real.

Checks use independent tools where they exist: ``tarfile`` and the
``webdataset`` library for the format, pyarrow for the parquet, fastText lid.176
for languages, ``imagehash`` pHash for near-duplicates, and the project's caption
rules for junk / code-like captions (so the pool exercises what the filters test).
"""

from __future__ import annotations

import glob
import hashlib
import io
import itertools
import json
import os
import re
import tarfile

import numpy as np
import pytest
from PIL import Image

from beam_filter.devtools.sample_pool import (CATEGORY_SHARES, CORRUPT_KINDS, _other_language_sentences,
                                              category_quotas, make_sample)
from beam_filter.errors import UserError
from beam_filter.uids import stable_uid

IMAGE_EXTS = ("jpg", "png", "webp")
ENGLISH_CATEGORIES = ("clean_en", "tiny", "extreme_aspect", "exact_dup_of", "near_dup_of")


def tar_members(path: str) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as t:
        return t.getmembers()


def read_tar(path: str) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as t:
        for m in t.getmembers():
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {})[ext] = t.extractfile(m).read()
    return out


def all_files(d: str) -> dict[str, bytes]:
    return {os.path.relpath(p, d): open(p, "rb").read() for p in sorted(glob.glob(os.path.join(d, "*")))}


@pytest.fixture(scope="module")
def members(pool):
    pool_dir, manifest = pool
    return {name: read_tar(os.path.join(pool_dir, name)) for name in manifest["shards"]}


@pytest.fixture(scope="module")
def records(pool):
    return pool[1]["records"]


def image_of(sample_members: dict[str, bytes]) -> bytes:
    return next(sample_members[e] for e in IMAGE_EXTS if e in sample_members)


# ---- determinism ---------------------------------------------------------------------------

def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    a, b, c, d = (str(tmp_path / n) for n in "abcd")
    make_sample(a, samples=70, seed=5, shard_size=30, broken_shards=True)
    make_sample(b, samples=70, seed=5, shard_size=30, broken_shards=True)
    make_sample(c, samples=70, seed=6, shard_size=30, broken_shards=True)
    make_sample(d, samples=70, seed=5, shard_size=30, broken_shards=False)
    fa, fb, fc, fd = all_files(a), all_files(b), all_files(c), all_files(d)
    assert len(fa) == 3 * 3 + 3 + 1 + 1          # 3 good + 1 truncated (tar, stats, parquet), non-tar, truth
    assert fa == fb
    assert fa.keys() == fc.keys()
    for name in fa:
        # stats hold only counts, and the non-tar is the same fixed error page
        if not name.endswith("_stats.json") and name != "00000004.tar":
            assert fa[name] != fc[name], name
    # broken shards only add files: the good shards do not depend on the flag
    for name, data in fd.items():
        if name != "ground_truth.json":
            assert fa[name] == data, name


def test_bad_arguments_are_user_errors(tmp_path):
    for kwargs in ({"samples": 0}, {"shard_size": 0}, {"seed": -1}):
        with pytest.raises(UserError):
            make_sample(str(tmp_path / "x"), **kwargs)


@pytest.mark.parametrize("n", [1, 2, 7, 59, 60, 240, 2000])
def test_quotas_sum_and_cover_every_category_from_60(n):
    q = category_quotas(n)
    assert sum(q.values()) == n
    if n >= 60:
        wanted = {c for c in CATEGORY_SHARES if c != "corrupt"} | {f"corrupt_{k}" for k in CORRUPT_KINDS}
        assert set(q) == wanted
    if n >= 240:
        corrupt = sum(v for k, v in q.items() if k.startswith("corrupt_"))
        assert abs(corrupt / n - CATEGORY_SHARES["corrupt"]) < 0.02
        assert abs(q["clean_en"] / n - CATEGORY_SHARES["clean_en"]) < 0.02


def test_tiny_pool_has_no_dangling_duplicates(tmp_path):
    m = make_sample(str(tmp_path / "p"), samples=3, seed=1)
    uids = {r["uid"] for r in m["records"]}
    assert len(m["records"]) == 3
    assert all(r["duplicate_of"] in uids for r in m["records"] if r["duplicate_of"])


# ---- format ---------------------------------------------------------------------------------

def test_files_and_tar_layout(pool):
    pool_dir, manifest = pool
    n_good = len(manifest["shards"])
    assert manifest["shards"] == [f"{i:08d}.tar" for i in range(n_good)]
    assert n_good == -(-manifest["samples"] // manifest["shard_size"])
    for i, name in enumerate(manifest["shards"]):
        infos = tar_members(os.path.join(pool_dir, name))
        names = [m.name for m in infos]
        split = [n.split(".", 1) for n in names]
        assert split == sorted(split), "members sorted by key then extension"
        for m in infos:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)
            assert m.isfile()
        keys = sorted({k for k, _ in split})
        assert all(re.fullmatch(rf"{i:05d}\d{{4}}", k) for k in keys)
        assert keys == [f"{i:05d}{j:04d}" for j in range(len(keys))]


def test_webdataset_library_reads_every_good_shard(pool, records):
    import webdataset as wds

    pool_dir, manifest = pool
    urls = [os.path.join(pool_dir, s) for s in manifest["shards"]]
    seen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False):
        seen[sample["__key__"]] = {k for k in sample if not k.startswith("__")}
    assert len(seen) == manifest["samples"] == len(records)
    for r in records:
        exts = seen[r["key"]]
        assert "json" in exts and r["ext"] in exts
        assert ("txt" in exts) == (r["category"] != "corrupt_missing_txt")


def test_stats_parquet_and_json_agree_with_the_tar(pool, members, records):
    import pyarrow.parquet as pq

    pool_dir, manifest = pool
    truth = {(r["shard"], r["key"]): r for r in records}
    json_ok = 0
    for name, samples in members.items():
        stem = name[:-4]
        stats = json.load(open(os.path.join(pool_dir, stem + "_stats.json")))
        assert stats["count"] == stats["successes"] == len(samples)
        table = pq.read_table(os.path.join(pool_dir, stem + ".parquet"))
        assert table.column_names == ["uid", "url", "text", "original_width", "original_height", "sha256", "key"]
        rows = table.to_pylist()
        assert [r["key"] for r in rows] == sorted(samples)
        for row in rows:
            m, r = samples[row["key"]], truth[(name, row["key"])]
            image = image_of(m)
            assert row["sha256"] == r["sha256"] == hashlib.sha256(image).hexdigest()
            assert row["uid"] == r["uid"] and re.fullmatch(r"[0-9a-f]{32}", r["uid"])
            assert row["text"] == r["caption"]
            if r["caption"] is not None:
                assert m["txt"].decode("utf-8") == r["caption"]
            if r["category"] == "corrupt_bad_json":
                continue
            meta = json.loads(m["json"])
            json_ok += 1
            assert meta["key"] == row["key"] and meta["status"] == "success" and meta["face_bboxes"] == []
            assert meta["url"] == row["url"] and meta["url"].startswith("http")
            assert meta["sha256"] == row["sha256"]
            assert meta.get("uid", r["uid"]) == r["uid"]
            assert (meta["original_width"], meta["original_height"]) == (row["original_width"],
                                                                         row["original_height"])
            assert meta["original_width"] >= meta["width"] and meta["original_height"] >= meta["height"]
            if not r["category"].startswith("corrupt_"):
                with Image.open(io.BytesIO(image)) as img:
                    assert img.size == (meta["width"], meta["height"]) == (r["width"], r["height"])
                    assert img.format.lower() == {"jpg": "jpeg"}.get(r["ext"], r["ext"])
    assert json_ok == len(records) - 1
    uids = [r["uid"] for r in records]
    assert len(set(uids)) == len(uids)


# ---- content and categories -------------------------------------------------------------------

def test_category_mix_and_image_sizes(pool, records):
    _, manifest = pool
    counts = manifest["counts"]
    assert sum(counts.values()) == manifest["samples"]
    assert counts == {c: sum(r["category"] == c for r in records) for c in counts}
    assert {"clean_en", "other_lang", "junk", "code_like", "short", "tiny", "extreme_aspect",
            "exact_dup_of", "near_dup_of"} | {f"corrupt_{k}" for k in CORRUPT_KINDS} == set(counts)
    by = {c: [r for r in records if r["category"] == c] for c in counts}
    assert all(min(r["original_width"], r["original_height"]) < 200 for r in by["tiny"])
    for r in by["extreme_aspect"]:
        w, h = r["original_width"], r["original_height"]
        assert max(w, h) / min(w, h) > 3 and min(w, h) >= 200
    for r in by["clean_en"]:
        w, h = r["width"], r["height"]
        assert 200 <= min(w, h) and max(w, h) <= 1024 and max(w, h) / min(w, h) <= 3
    sizes = [(r["width"], r["height"]) for r in records]
    assert min(min(s) for s in sizes) < 100 and max(max(s) for s in sizes) >= 700
    assert len(set(sizes)) > 0.8 * len(sizes)
    upscaled = [r for r in records if r["original_width"] > r["width"]]
    assert 0.1 * len(records) < len(upscaled) < 0.5 * len(records)
    exts = [r["ext"] for r in records]
    assert {"png", "webp"} <= set(exts) and exts.count("jpg") > 0.75 * len(exts)


def test_caption_categories_match_the_caption_rules(records):
    from beam_filter.rules.caption import is_code_like, is_junk_caption, unique_token_ratio

    for r in records:
        cat, cap = r["category"], r["caption"]
        if cat == "junk":
            assert is_junk_caption(cap), cap
        elif cat == "code_like":
            assert is_code_like(cap), cap
        elif cat == "short":
            assert len(cap.split()) <= 2 or len(cap) <= 5
        elif cat in ENGLISH_CATEGORIES:
            assert not is_junk_caption(cap) and not is_code_like(cap), cap
            assert len(cap.split()) > 2 and unique_token_ratio(cap) > 0.5, cap
    english = [r["caption"] for r in records if r["category"] == "clean_en"]
    assert len(set(english)) > 0.95 * len(english)           # a generator, not a short list
    lengths = [len(c.split()) for c in english]
    assert min(lengths) <= 5 and max(lengths) >= 20


def test_fasttext_agrees_with_language_categories(pool, tmp_path):
    from beam_filter.rules.language import detect_language

    other = make_sample(str(tmp_path / "heldout"), samples=300, seed=11)["records"] + pool[1]["records"]
    foreign = [r for r in other if r["category"] == "other_lang"]
    english = [r for r in other if r["category"] in ENGLISH_CATEGORIES]
    assert len({r["lang"] for r in foreign}) >= 8
    assert np.mean([detect_language(r["caption"])[0] == r["lang"] for r in foreign]) >= 0.95
    assert np.mean([detect_language(r["caption"])[0] == "en" for r in english]) >= 0.95


def test_every_foreign_sentence_and_pair_is_recognised():
    from beam_filter.rules.language import detect_language

    for lang, sentences in _other_language_sentences().items():
        assert all(detect_language(s)[0] == lang for s in sentences), lang
        pairs = list(itertools.permutations(sentences, 2))
        sep = "" if lang in ("zh", "ja") else " "
        assert np.mean([detect_language(a + sep + b)[0] == lang for a, b in pairs]) >= 0.98, lang


def test_duplicates_exact_and_perceptual(members, records):
    import imagehash

    by_uid = {r["uid"]: r for r in records}
    stored = {r["uid"]: members[r["shard"]][r["key"]] for r in records}
    exact = [r for r in records if r["category"] == "exact_dup_of"]
    assert exact
    for r in exact:
        src = by_uid[r["duplicate_of"]]
        assert src["category"] == "clean_en" and src["uid"] != r["uid"]
        assert image_of(stored[r["uid"]]) == image_of(stored[src["uid"]])
        assert stored[r["uid"]]["txt"] == stored[src["uid"]]["txt"]

    def phash(uid):
        with Image.open(io.BytesIO(image_of(stored[uid]))) as img:
            return imagehash.phash(img)

    near = [r for r in records if r["category"] == "near_dup_of"]
    assert near and all(r["transform"] and 0.5 <= r["transform"]["scale"] <= 0.9 for r in near)
    for r in near:
        crop = r["transform"].get("crop")
        src = by_uid[r["duplicate_of"]]
        if crop:
            assert crop[0] + crop[2] <= 0.05 * src["width"] + 1 and crop[1] + crop[3] <= 0.05 * src["height"] + 1
        assert image_of(stored[r["uid"]]) != image_of(stored[src["uid"]])
    near_d = [phash(r["uid"]) - phash(r["duplicate_of"]) for r in near]
    assert np.mean(np.array(near_d) <= 10) >= 0.9

    originals = [r["uid"] for r in records if r["category"] in
                 ("clean_en", "other_lang", "junk", "code_like", "short", "tiny", "extreme_aspect")]
    hashes = [phash(u) for u in originals]
    far = [a - b > 20 for a, b in itertools.combinations(hashes, 2)]
    assert np.mean(far) >= 0.95


def test_corrupt_members(members, records):
    for r in records:
        cat = r["category"]
        if not cat.startswith("corrupt_"):
            continue
        m = members[r["shard"]][r["key"]]
        image = image_of(m)
        if cat == "corrupt_truncated_jpeg":
            assert image[:2] == b"\xff\xd8" and not image.endswith(b"\xff\xd9")
        elif cat == "corrupt_zero_byte":
            assert image == b""
        elif cat == "corrupt_random_bytes":
            assert len(image) >= 2000
            with pytest.raises(Exception):
                Image.open(io.BytesIO(image)).load()
        elif cat == "corrupt_missing_txt":
            assert "txt" not in m
        elif cat == "corrupt_bad_utf8":
            with pytest.raises(UnicodeDecodeError):
                m["txt"].decode("utf-8")
        elif cat == "corrupt_bad_json":
            with pytest.raises(ValueError):
                json.loads(m["json"])
            assert r["uid"] == stable_uid(r["shard"], r["key"])
        elif cat == "corrupt_no_uid":
            assert "uid" not in json.loads(m["json"])
            assert r["uid"] == stable_uid(r["shard"], r["key"])
        if cat not in ("corrupt_truncated_jpeg", "corrupt_zero_byte", "corrupt_random_bytes"):
            Image.open(io.BytesIO(image)).load()      # damage elsewhere: the image itself is fine


def test_broken_shards(pool):
    pool_dir, manifest = pool
    broken = {b["kind"]: b for b in manifest["broken_shards"]}
    assert set(broken) == {"truncated_tar", "not_a_tar"}
    assert {b["shard"] for b in broken.values()}.isdisjoint(manifest["shards"])

    trunc = broken["truncated_tar"]
    complete, error = [], None
    with open(os.path.join(pool_dir, trunc["shard"]), "rb") as f:
        try:
            with tarfile.open(fileobj=f, mode="r|") as t:
                for m in t:
                    data = t.extractfile(m).read()
                    if len(data) != m.size:
                        raise EOFError("member cut short")
                    complete.append(m.name.split(".", 1)[0])
        except (tarfile.ReadError, EOFError) as e:
            error = e
    assert error is not None
    keys = sorted(set(complete))
    assert keys == trunc["complete_keys"] and trunc["cut_key"] > keys[-1]
    assert [r["key"] for r in trunc["records"]] == keys

    with pytest.raises(tarfile.ReadError):
        tarfile.open(os.path.join(pool_dir, broken["not_a_tar"]["shard"])).getmembers()


def test_ground_truth_file_is_the_returned_manifest(pool):
    pool_dir, manifest = pool
    assert json.load(open(os.path.join(pool_dir, "ground_truth.json"), encoding="utf-8")) == manifest
