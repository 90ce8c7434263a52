"""One hostile record never crashes a job, and never goes unaccounted (issue 12, "Trust").

Every case builds its hostile tar with ``tarfile`` and runs the real pipeline
(``beam-filter run``, both the general graph of ``quickstart`` and the fused
per-shard path of ``datacomp_basic``) and/or the real reader, then checks the
decision rows and the output shards. The numbered cases are those of the
issue's per-record list:

1. json uid not 1-32 hex chars        -> bad_uid, stable uid (finalize used to crash)
2. json original_width 1e400 (inf)    -> ignored, header size used (OverflowError)
3. json nested 100,000 deep           -> bad_json; safety nets unreadable_sample, feature_error:<id>
4. unsafe / non-UTF-8 member names    -> unsafe_member_name, never written (parquet crash, path escape)
5. keys made only of non-regular members -> a row (no_regular_members), nothing written
6. member-name case                   -> KEY.JPG stays KEY.JPG in output shards
7. duplicate keys in one shard        -> second one renamed key#1, both written, warning=duplicate_key
8. decompression bomb                 -> image_too_large (probe and CLIP decode)
9. disk full while writing            -> no .tmp-* file left, the error propagates
10. a 10 MB caption                   -> report.html stays small
"""

from __future__ import annotations

import errno
import glob
import hashlib
import io
import json
import logging
import os
import struct
import tarfile
import zlib

import numpy as np
import pyarrow.parquet as pq
import pytest


SHARDS = {  # case -> source shard name
    "uid": "00000001.tar",
    "size": "00000002.tar",
    "deep": "00000003.tar",
    "names": "00000004.tar",
    "irregular": "00000005.tar",
    "case": "00000006.tar",
    "dups": "00000007.tar",
    "bomb": "00000008.tar",
}
RECIPES = ("quickstart", "datacomp_basic")   # general graph (exact dedup) and the fused per-shard path


# ---------------------------------------------------------------- building hostile tars

class _Maker:
    """Distinct, valid, English samples (every one passes quickstart's rules unless made hostile)."""

    def __init__(self):
        self.n = 0

    def image(self) -> bytes:
        from PIL import Image

        self.n += 1
        rng = np.random.default_rng(self.n)
        small = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        buf = io.BytesIO()
        small.resize((256, 256), Image.Resampling.NEAREST).save(buf, "JPEG", quality=90)
        return buf.getvalue()

    def caption(self) -> bytes:
        self.n += 1
        return f"a photo of a small brown dog playing in the park on a sunny day, picture {self.n}".encode()

    def uid(self) -> str:
        self.n += 1
        return hashlib.sha256(f"uid{self.n}".encode()).hexdigest()[:32]

    def meta(self, uid: str | None = None, **extra) -> bytes:
        d = {"uid": self.uid() if uid is None else uid, "url": f"https://example.com/{self.n}.jpg",
             "original_width": 256, "original_height": 256}
        d.update(extra)
        return json.dumps(d).encode()

    def sample(self, key: str, **over) -> list[tuple[str, bytes]]:
        """[(member name, bytes)] of a normal sample; ``over`` replaces a member's bytes (None drops it)."""
        members = {"jpg": self.image(), "txt": self.caption(), "json": self.meta()}
        members.update(over)
        return [(f"{key}.{ext}", data) for ext, data in members.items() if data is not None]


def _regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def write_tar(path: str, members, format=tarfile.GNU_FORMAT) -> None:
    """``members``: (name, bytes) pairs and (TarInfo, None) pairs, written in order."""
    with tarfile.open(path, "w", format=format, encoding="utf-8", errors="surrogateescape") as t:
        for item, data in members:
            if isinstance(item, tarfile.TarInfo):
                t.addfile(item, io.BytesIO(data) if data is not None else None)
            else:
                info, payload = _regular(item, data)
                t.addfile(info, io.BytesIO(payload))


def png_header_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG (signature, IHDR, a tiny IDAT, IEND) whose header claims width x height."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


NOT_UTF8_KEY = b"bytes\xff\xfe".decode("utf-8", "surrogateescape")
UNSAFE_KEYS = ("../../escape", "/abs/olute", "a/../b", "back\\slash", "ctl\x1bchar", "new\nline",
               NOT_UTF8_KEY, "long" * 30 + "\x00nul")    # a NUL survives only in a pax path record
DEEP_JSON = b'{"uid": "' + b"d" * 32 + b'", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def _build_pool(d: str) -> dict:
    """One shard per case (shards are independent), plus a plain control sample in each."""
    mk = _Maker()
    expect: dict = {}

    def shard(case: str, members, format=tarfile.GNU_FORMAT) -> str:
        path = os.path.join(d, SHARDS[case])
        write_tar(path, mk.sample(f"control_{case}") + members, format)
        return path

    # 1. uids
    shard("uid", mk.sample("short", json=mk.meta(uid="00FF"))
          + mk.sample("not_hex", json=mk.meta(uid="zz-not-hex"))
          + mk.sample("too_long", json=mk.meta(uid="a" * 40))
          + mk.sample("not_str", json=json.dumps({"uid": 12345}).encode())
          + mk.sample("empty", json=mk.meta(uid="")))
    # 2. absurd json sizes (1e400 parses as inf; NaN, true and 1e12 are as wrong)
    shard("size", mk.sample("inf", json=b'{"uid": "' + mk.uid().encode()
                            + b'", "original_width": 1e400, "original_height": 256}')
          + mk.sample("nan", json=b'{"original_width": NaN, "original_height": 256}')
          + mk.sample("bool", json=b'{"original_width": true, "original_height": true}')
          + mk.sample("huge", json=b'{"original_width": 1000000000000, "original_height": 256}'))
    # 3. a json nested 100,000 deep
    shard("deep", mk.sample("deep", json=DEEP_JSON))
    # 4. unsafe member names; "mixed" has a safe key but one member name with a backslash
    names = []
    for key in UNSAFE_KEYS:
        names += mk.sample(key)
    names += mk.sample("mixed") + [("mixed.x\\y", b"payload")]
    expect["names"] = shard("names", names, tarfile.PAX_FORMAT)
    # 5. keys made only of non-regular members; a folder entry (not a sample); a half-regular key
    shard("irregular", [
        _special("links.jpg", tarfile.SYMTYPE, "control_irregular.jpg"),
        _special("links.txt", tarfile.SYMTYPE, "/etc/passwd"),
        _special("links.json", tarfile.LNKTYPE, "control_irregular.json"),
        _special("devices.jpg", tarfile.CHRTYPE),
        _special("devices.txt", tarfile.FIFOTYPE),
        _special("dirs.jpg", tarfile.DIRTYPE),
        _special("a_folder", tarfile.DIRTYPE),
    ] + mk.sample("half", jpg=None) + [_special("half.jpg", tarfile.SYMTYPE, "control_irregular.jpg")])
    # 6. extension case: KEY.JPG must be written as KEY.JPG; k.jpg + k.JPG: the first is the image
    first, second = mk.image(), mk.image()
    expect["both_first"] = first
    shard("case", [("upper.JPG", mk.image()), ("upper.Txt", mk.caption()), ("upper.JSON", mk.meta())]
          + mk.sample("both", jpg=first) + [("both.JPG", second)])
    # 7. duplicate keys: not adjacent (dup), adjacent with a repeated ext (adj), a real "z#1" first
    shard("dups", mk.sample("dup") + mk.sample("other") + mk.sample("dup")
          + mk.sample("adj") + mk.sample("adj")
          + mk.sample("z#1") + mk.sample("z") + mk.sample("z"))
    # 8. decompression bombs: far over Pillow's error limit, and between its warning and error limits
    shard("bomb", mk.sample("bomb", jpg=None, png=png_header_claiming(100_000, 100_000))
          + mk.sample("big", jpg=None, png=png_header_claiming(10_000, 10_000)))
    return expect


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, run_cli):
    d = str(tmp_path_factory.mktemp("hostile_pool"))
    expect = _build_pool(d)
    outs = {}
    for recipe in RECIPES:
        out = str(tmp_path_factory.mktemp(f"hostile_{recipe}") / "out")
        assert run_cli("run", "--recipe", recipe, "--input", f"{d}/*.tar", "--output", out) == 0
        outs[recipe] = out
    return d, outs, expect


def _rows(out: str, shard: str) -> list[dict]:
    return pq.read_table(os.path.join(out, "decisions", shard.replace(".tar", ".parquet"))).to_pylist()


def _by_key(out: str, shard: str) -> dict[str, dict]:
    rows = _rows(out, shard)
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)), keys      # one row per sample, never two for a key
    return {r["key"]: r for r in rows}


def _output_members(out: str) -> dict[str, bytes]:
    members = {}
    for f in sorted(glob.glob(os.path.join(out, "shards", "*.tar"))):
        with tarfile.open(f, encoding="utf-8", errors="surrogateescape") as t:
            for m in t.getmembers():
                assert m.isfile(), m.name
                assert m.name not in members, m.name
                members[m.name] = t.extractfile(m).read()
    return members


def _source_members(path: str) -> list[tuple[str, bytes | None]]:
    with tarfile.open(path, encoding="utf-8", errors="surrogateescape") as t:
        return [(m.name, t.extractfile(m).read() if m.isfile() else None) for m in t.getmembers()]


@pytest.mark.e2e
@pytest.mark.parametrize("recipe", RECIPES)
def test_every_row_of_the_hostile_pool(hostile, recipe):
    """The job finished; every shard has its control row kept; parquet has the warning column."""
    _, outs, _ = hostile
    out = outs[recipe]
    for case, shard in SHARDS.items():
        rows = _by_key(out, shard)
        assert rows[f"control_{case}"]["kept"], (shard, rows[f"control_{case}"]["reason"])
        assert "warning" in pq.read_schema(os.path.join(out, "scores", shard.replace(".tar", ".parquet"))).names
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["counts"]["samples"] == sum(len(_rows(out, s)) for s in SHARDS.values())


# ---------------------------------------------------------------- 1. uids

@pytest.mark.e2e
@pytest.mark.parametrize("recipe", RECIPES)
def test_1_bad_uid_is_a_reason_with_a_stable_uid(hostile, recipe):
    from beam_filter.uids import stable_uid, uid_to_pair

    d, outs, _ = hostile
    shard = os.path.join(d, SHARDS["uid"])
    rows = _by_key(outs[recipe], SHARDS["uid"])
    for key in ("not_hex", "too_long", "not_str", "empty"):
        assert (rows[key]["reason"], rows[key]["kept"]) == ("bad_uid", False), key
        assert rows[key]["uid"] == stable_uid(shard, key)
        uid_to_pair(rows[key]["uid"])                       # finalize can pair every uid
    assert rows["short"]["kept"] and rows["short"]["uid"] == "00ff"   # < 32 hex chars is valid
    kept = np.load(os.path.join(outs[recipe], "uids.npy"))
    assert (0, 0xFF) in [tuple(map(int, u)) for u in kept.tolist()]


# ---------------------------------------------------------------- 2. absurd sizes

@pytest.mark.e2e
@pytest.mark.parametrize("recipe", RECIPES)
def test_2_non_finite_or_absurd_original_size_falls_back_to_the_header(hostile, recipe):
    _, outs, _ = hostile
    rows = _by_key(outs[recipe], SHARDS["size"])
    for key in ("inf", "nan", "bool", "huge"):
        assert (rows[key]["width"], rows[key]["height"]) == (256, 256), key
        assert rows[key]["kept"], (key, rows[key]["reason"])


@pytest.mark.unit
def test_2_reader_ignores_implausible_sizes():
    from beam_filter.reading import build_sample

    mk = _Maker()
    for raw in (b'{"original_width": 1e400, "original_height": 1e400}',
                b'{"original_width": -5, "original_height": 300}',
                b'{"original_width": 4294967296, "original_height": 300}',
                b'{"original_width": "640", "original_height": 300}'):
        s = build_sample("/p/00000000.tar", "k", {"jpg": mk.image(), "txt": mk.caption(), "json": raw})
        assert s.error is None and (s.features["width"], s.features["height"]) == (256, 256), raw
    s = build_sample("/p/00000000.tar", "k", {"jpg": mk.image(), "txt": mk.caption(),
                                               "json": b'{"original_width": 640.0, "original_height": 480}'})
    assert (s.features["width"], s.features["height"]) == (640, 480)


# ---------------------------------------------------------------- 3. deep json, safety nets

@pytest.mark.e2e
@pytest.mark.parametrize("recipe", RECIPES)
def test_3_deep_json_is_bad_json(hostile, recipe):
    from beam_filter.uids import stable_uid

    d, outs, _ = hostile
    row = _by_key(outs[recipe], SHARDS["deep"])["deep"]
    assert (row["reason"], row["kept"]) == ("bad_json", False)
    assert row["uid"] == stable_uid(os.path.join(d, SHARDS["deep"]), "deep")


@pytest.mark.unit
def test_3_reader_deep_json_direct(tmp_path):
    from beam_filter.reading import read_shard

    path = str(tmp_path / "00000000.tar")
    write_tar(path, _Maker().sample("deep", json=DEEP_JSON) + _Maker().sample("after"))
    samples = {s.key: s for s in read_shard(path)}
    assert samples["deep"].error == "bad_json" and samples["after"].error is None


@pytest.mark.unit
def test_3_unexpected_failure_while_building_a_sample_is_unreadable_sample():
    from beam_filter.reading import build_sample
    from beam_filter.uids import stable_uid

    # Members that are not bytes: nothing a tar yields, so nothing the reader expects.
    s = build_sample("/p/00000009.tar", "odd", {"jpg": _Maker().image(), "txt": 12345, "json": b"{}"})
    assert s.error == "unreadable_sample" and s.uid == stable_uid("/p/00000009.tar", "odd")
    assert s.key == "odd" and s.features["sha256"] is None


@pytest.mark.unit
def test_3_a_stage_features_hook_that_raises_becomes_feature_error(tmp_path, caplog):
    """Through shard_work.process_shard: the function the fused pipeline runs per shard."""
    from beam_filter.recipe import load_recipe
    from beam_filter.registry import RuleStage
    from beam_filter.layout import OutputLayout
    from beam_filter.shard_work import process_shard

    class Fragile(RuleStage):
        name = "fragile_for_test"

        def feature_columns(self):
            return ("fragile_len",)

        def reason(self, row, info=None):
            return None

        def features(self, sample):
            if "BOOM" in sample.caption:
                raise ValueError("cannot parse this caption")
            return {"fragile_len": len(sample.caption)}

    mk = _Maker()
    path = str(tmp_path / "00000000.tar")
    write_tar(path, mk.sample("a") + mk.sample("b", txt=b"a photo of a dog BOOM in the park today")
              + mk.sample("c") + mk.sample("d", txt=b"another photo of a cat BOOM on the sofa"))
    recipe = load_recipe("datacomp_basic")
    fragile = Fragile("fragile", {})
    stages = [s for s in recipe.leaf_stages() if s.feature_columns()] + [fragile]
    out = str(tmp_path / "out")
    with caplog.at_level(logging.WARNING):
        result = process_shard(path, stages, list(recipe.stages) + [fragile], OutputLayout(out), {})
    rows = {r["key"]: r for r in pq.read_table(os.path.join(out, "decisions", "00000000.parquet")).to_pylist()}
    assert set(rows) == {"a", "b", "c", "d"} and result.counts["samples_read"] == 4
    for key in ("b", "d"):
        assert (rows[key]["reason"], rows[key]["kept"]) == ("feature_error:fragile", False)
    assert rows["a"]["kept"] and rows["c"]["kept"] and rows["c"]["fragile_len"] > 0
    warned = [r for r in caplog.records if "fragile" in r.getMessage()]
    assert len(warned) == 1 and "cannot parse this caption" in warned[0].getMessage()


# ---------------------------------------------------------------- 4. unsafe member names

@pytest.mark.e2e
@pytest.mark.parametrize("recipe", RECIPES)
def test_4_unsafe_member_names_are_dropped_and_never_written(hostile, recipe):
    from beam_filter.tar_io import printable_name, unsafe_name_reason

    d, outs, _ = hostile
    rows = _by_key(outs[recipe], SHARDS["names"])
    for key in UNSAFE_KEYS:
        shown = printable_name(key)
        assert shown in rows, (key, sorted(rows))
        assert (rows[shown]["reason"], rows[shown]["kept"]) == ("unsafe_member_name", False)
        shown.encode("utf-8")                                   # parquet stored it
    assert rows[printable_name(NOT_UTF8_KEY)]["key"] == "bytes\\xff\\xfe"
    assert (rows["mixed"]["reason"], rows["mixed"]["kept"]) == ("unsafe_member_name", False)
    written = _output_members(outs[recipe])
    assert written and all(unsafe_name_reason(n) is None for n in written), sorted(written)
    hostile_bytes = {data for name, data in _source_members(os.path.join(d, SHARDS["names"]))
                     if not name.startswith("control_")}
    assert not hostile_bytes & set(written.values())


@pytest.mark.unit
def test_4_unsafe_name_reason():
    from beam_filter.tar_io import printable_name, unsafe_name_reason

    assert unsafe_name_reason("dir/000001.seg.jpg") is None
    assert unsafe_name_reason("..a.jpg") is None and unsafe_name_reason("é.jpg") is None
    for name in ("../../x.jpg", "a/../x.jpg", "/abs/x.jpg", "C:x.jpg", "a\\b.jpg", "a\x00b.jpg",
                 "a\nb.jpg", "a\x85.jpg", NOT_UTF8_KEY + ".jpg"):
        assert unsafe_name_reason(name) is not None, name
        assert printable_name(name).isprintable(), name
    # one-to-one: a literal backslash-x never prints like an escaped byte
    assert printable_name("k\\xff") != printable_name(b"k\xff".decode("utf-8", "surrogateescape"))


# ---------------------------------------------------------------- 5. non-regular members

@pytest.mark.e2e
@pytest.mark.parametrize("recipe", RECIPES)
def test_5_keys_of_only_non_regular_members_get_a_row(hostile, recipe):
    _, outs, _ = hostile
    rows = _by_key(outs[recipe], SHARDS["irregular"])
    for key in ("links", "devices", "dirs"):
        assert (rows[key]["reason"], rows[key]["kept"]) == ("no_regular_members", False), key
    assert rows["half"]["reason"] == "missing_image"          # a symlink is not an image
    assert "a_folder" not in rows                             # a plain folder entry is not a sample
    assert set(rows) == {"control_irregular", "links", "devices", "dirs", "half"}
    written = _output_members(outs[recipe])                   # only regular files (checked inside)
    assert not [n for n in written if n.split(".")[0] in ("links", "devices", "dirs", "half")]


# ---------------------------------------------------------------- 6. member-name case

@pytest.mark.e2e
@pytest.mark.parametrize("recipe", RECIPES)
def test_6_member_names_keep_their_case(hostile, recipe):
    d, outs, expect = hostile
    rows = _by_key(outs[recipe], SHARDS["case"])
    assert rows["upper"]["kept"] and rows["upper"]["width"] == 256
    assert rows["both"]["sha256"] == hashlib.sha256(expect["both_first"]).hexdigest()   # first match wins
    written = _output_members(outs[recipe])
    source = dict(_source_members(os.path.join(d, SHARDS["case"])))
    for name in ("upper.JPG", "upper.Txt", "upper.JSON", "both.jpg", "both.JPG"):
        assert written[name] == source[name], name
    assert "upper.jpg" not in written and "upper.txt" not in written


# ---------------------------------------------------------------- 7. duplicate keys

@pytest.mark.e2e
@pytest.mark.parametrize("recipe", RECIPES)
def test_7_duplicate_keys_are_renamed_and_all_written(hostile, recipe):
    d, outs, _ = hostile
    shard = os.path.join(d, SHARDS["dups"])
    rows = _by_key(outs[recipe], SHARDS["dups"])
    renamed = {"dup#1", "adj#1", "z#2"}
    assert set(rows) == {"control_dups", "dup", "other", "adj", "z#1", "z"} | renamed
    for key, row in rows.items():
        assert row["kept"], (key, row["reason"])
        assert row["warning"] == ("duplicate_key" if key in renamed else None), key
    # the n-th group of the source holds the bytes written under its row's key
    groups = []
    for name, data in _source_members(shard):
        key, ext = name.split(".", 1)
        if name.startswith("control_"):
            continue
        if not groups or groups[-1][0] != key or ext in groups[-1][1]:
            groups.append((key, {}))
        groups[-1][1][ext] = data
    order = ["dup", "other", "dup#1", "adj", "adj#1", "z#1", "z", "z#2"]
    written = _output_members(outs[recipe])
    for out_key, (_, members) in zip(order, groups, strict=True):
        for ext, data in members.items():
            assert written[f"{out_key}.{ext}"] == data, (out_key, ext)
        assert rows[out_key]["uid"] == json.loads(members["json"])["uid"]


@pytest.mark.e2e
def test_7_report_thumbnails_find_renamed_samples(hostile):
    from beam_filter.report.thumbnails import read_members

    d, _, _ = hostile
    shard = os.path.join(d, SHARDS["dups"])
    images = [data for name, data in _source_members(shard) if name.endswith(".jpg")]
    found, note = read_members(shard, {"dup", "dup#1", "adj#1", "z#2", "other"})
    assert note == ""
    # source order of the images: control, dup, other, dup#1, adj, adj#1, z#1, z, z#2
    for key, i in (("dup", 1), ("other", 2), ("dup#1", 3), ("adj#1", 5), ("z#2", 8)):
        assert found[key]["jpg"] == images[i], key


@pytest.mark.unit
def test_7_iter_tar_groups_names_alike_with_and_without_wanted(tmp_path):
    from beam_filter.tar_io import iter_tar_groups

    mk = _Maker()
    path = str(tmp_path / "00000000.tar")
    write_tar(path, mk.sample("a") + mk.sample("b") + mk.sample("a") + mk.sample("a#1") + mk.sample("a"))
    with open(path, "rb") as f:
        every = list(iter_tar_groups(f))
    assert [k for k, _ in every] == ["a", "b", "a#1", "a#1#1", "a#2"]
    with open(path, "rb") as f:
        some = list(iter_tar_groups(f, wanted={"a#2", "a#1"}))
    assert [k for k, _ in some] == ["a#1", "a#2"]
    assert some[1][1] == every[4][1] and some[0][1] == every[2][1]


# ---------------------------------------------------------------- 8. decompression bombs

@pytest.mark.e2e
@pytest.mark.parametrize("recipe", RECIPES)
def test_8_decompression_bomb_is_image_too_large(hostile, recipe):
    _, outs, _ = hostile
    rows = _by_key(outs[recipe], SHARDS["bomb"])
    for key in ("bomb", "big"):
        assert (rows[key]["reason"], rows[key]["kept"]) == ("image_too_large", False), key


@pytest.mark.unit
def test_8_probe_and_clip_decode_say_image_too_large():
    from beam_filter.models.image_prep import CpuImagePrep, PrepConfig
    from beam_filter.rules.image_header import probe_image

    prep = CpuImagePrep(PrepConfig(32, (0.5,) * 3, (0.5,) * 3), draft=False, threads=1)
    for w, h in ((100_000, 100_000), (10_000, 10_000)):
        bomb = png_header_claiming(w, h)
        assert probe_image(bomb).error == "image_too_large"
        assert probe_image(bomb[:-12]).error == "image_too_large"   # cut short: still a bomb
        assert prep.prepare_one(bomb)[2] == "image_too_large"
    assert prep.prepare_one(b"\x89PNG\r\n\x1a\n junk")[2] == "corrupt_image"
    assert prep.prepare_one(_Maker().image())[2] is None


# ---------------------------------------------------------------- 9. disk full

@pytest.mark.unit
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("size", [10, 1 << 20])   # fails at close (buffered) / at write
def test_9_atomic_writer_removes_its_temp_file_when_the_disk_is_full(tmp_path, size):
    from beam_filter import fsio

    path = str(tmp_path / "00000000.tar")
    # The writer's own temporary name, pointed at a device that is always full.
    os.symlink("/dev/full", fsio._tmp_name(path))
    with pytest.raises(OSError) as info:
        with fsio.AtomicWriter(path) as f:
            f.write(b"x" * size)
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- 10. huge caption in the report

@pytest.mark.e2e
def test_10_a_10mb_caption_does_not_make_a_10mb_report(tmp_path, run_cli):
    d = tmp_path / "pool"
    d.mkdir()
    mk = _Maker()
    big = ("a photo of a small brown dog playing in the park " * 210_000)[:10_000_000].encode()
    write_tar(str(d / "00000000.tar"), mk.sample("big", txt=big) + mk.sample("small"))
    out = str(tmp_path / "out")
    assert run_cli("run", "--recipe", "quickstart", "--input", f"{d}/*.tar", "--output", out) == 0
    rows = _by_key(out, "00000000.tar")
    assert rows["big"]["caption_chars"] == 10_000_000              # the data keeps it whole
    html = open(os.path.join(out, "report.html"), encoding="utf-8").read()
    assert 'data-uid="' + rows["big"]["uid"] + '"' in html          # its card is on the page
    assert os.path.getsize(os.path.join(out, "report.html")) < 2_000_000
