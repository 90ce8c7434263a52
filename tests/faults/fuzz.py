#!/usr/bin/env python3
"""Fuzz ``beam-filter run`` with damaged WebDataset shards and check that every sample is accounted for.

Usage (``make fuzz`` runs the first line with FUZZ_SECONDS=300, FUZZ_SEED=0)::

    python tests/faults/fuzz.py --seconds 300 --seed 0 --workdir /tmp/bf_fuzz [--recipe quickstart]
    python tests/faults/fuzz.py --replay /tmp/bf_fuzz/failures/3      # rerun one saved case
    # other options: --timeout S (per CLI run), --max-iterations N, --cover-only, --no-minimize,
    #                --cli-arg=--test-models=DIR (repeatable: extra `beam-filter run` arguments)

Each iteration builds its input from a cached ``make_sample`` pool (120 samples, 6 shards of 20,
one pool per ``pool_seed`` in 0..2): it takes 2-4 shards (40-80 samples, sometimes a few
samples fewer), rewrites them with Python's ``tarfile`` after *structure-preserving* mutations,
or damages a shard's bytes (*byte-level* mutations), runs the real CLI in a subprocess (with a
timeout) and checks invariants. The first five iterations of every campaign are *cover*
iterations that together apply every mutation kind at least once (``--cover-only`` stops there;
the smoke test uses it); later iterations give each shard 1-4 (sometimes 5-12) structure
mutations, or one byte-level mutation (about one shard in five), or none. Everything
follows from ``--seed``: iteration ``i`` draws from ``random.Random("...:{seed}:{i}")`` and every
mutation is stored with concrete parameters, so a case is replayable; time only decides how
many iterations run.

Mutations (``KINDS``; each structure mutation hits one sample group, at most one per group):

* json: garbage bytes, cut in half, nested 20k-100k deep (top level or inside an object),
  not an object, empty, not UTF-8, a huge/non-finite number in a size field, wrong value types,
  a bad uid string, a uid of the wrong JSON type, ``uid: null``, odd but valid uids (upper case,
  short), another sample's uid, a duplicated ``"uid"`` key, fields removed;
* caption txt: empty, 1-3 MB, not UTF-8, control/bidi characters;
* image: truncated, zeroed, empty, swapped for another format (png/gif/webp/bmp/tiff/html/pdf
  under the same extension), a header claiming a giant size (PNG/JPEG), a real 1-bit PNG bomb;
* member names: upper-case extension, ``../`` and ``a/../../``, absolute, backslash, control
  characters, non-UTF-8 bytes, a 300- or 4000-char path, a key repeated non-adjacently (a later
  group renamed to an earlier group's key), a member repeated adjacently;
* member types: one member replaced by a symlink / hardlink / directory / char device or fifo,
  all members of a group non-regular, members missing;
* byte level (whole shard): truncate (anywhere, inside the end-of-archive blocks, inside a
  header), flip 1-8 random bytes (or one byte of a member header's name field), append
  garbage, zero one 512-byte block (a header or any), make the file empty;
* input level: a directory named ``*.tar``, a dangling symlink ``*.tar``, every shard empty,
  a glob matching nothing.

Invariants (``check``):

* exit 0, no ``Traceback`` on stderr; only input-level cases may instead exit 1/2, and then with
  exactly one stderr line and no traceback (a glob matching nothing *must* do that);
* a shard rewritten with structure mutations only: decision rows == the number of sample groups
  the fuzzer wrote (webdataset's ``group_by_keys``: consecutive members sharing a key, a new
  group when an extension repeats; a non-adjacent repeat of a key is a new group), a row exists
  for every group with a plain key (a repeat as ``key#1``), keys are unique per shard, and the
  shard has no file error;
* every row is kept or has a non-empty reason, and a kept row has copies >= 1;
* sum of kept copies == len(uids.npy) == shards/meta.json ``samples`` == sum of the output
  stats counts == sample groups in shards/*.tar == report.json counts; uids.npy holds exactly
  the kept rows' uids; the output keys are exactly the kept rows' keys (``{uid}-{j}`` for
  copies); a kept sample's output members keep their names, extension case included;
* byte level: the shard has rows or a file error; when the fuzzer can tell (a cut before the end
  of the end-of-archive marker, a zeroed or flipped member header, an empty file) a file error
  is required and every group complete before the damage has a row (after a cut, no group that
  starts after it has one); garbage appended after the end marker, or a zeroed data block,
  keeps every group's row;
* promised reasons, checked on *pristine* samples only (clean English, not the source of an exact
  duplicate: kept in a clean run): bad uid string or uid of a non-string type -> ``bad_uid``;
  unparseable, non-object, empty, non-UTF-8 or too-deep json -> ``bad_json``; unsafe member
  names -> ``unsafe_member_name``; a giant header or a bomb -> ``image_too_large``; upper-case
  extensions, odd valid uids, a 300-char safe path and both groups of a repeated key -> kept
  (``kept`` expectations only with ``--recipe quickstart``: other recipes may drop pristine
  samples for their own reasons).
  On any sample: a missing/broken image or caption and a group without regular members ->
  dropped. A row is found by its key, else by its json uid, else only counts are checked;
* nothing under the workdir outside the output directory changes (path, type, size and mtime_ns
  of every entry, input shards included; the CLI runs with its cwd inside the workdir), and no
  ``.tmp-*`` file is left in the output.

Choices where the expected behaviour is ambiguous (documented here, checked loosely):

* ``uid: null`` is treated like a missing uid (any outcome accepted); a uid that is a JSON number,
  bool, list or object is *not* "1-32 hex chars" and must give ``bad_uid``.
* Json depth: 20k+ levels must give ``bad_json``; moderate nesting is not generated.
* Huge/non-finite numbers and wrong field types (other than uid): only "a row, no crash".
* An image of another format under ``.jpg``: only "a row, no crash" (a PNG named .jpg may be kept).
* A 4000-char path: only "a row, no crash"; a 300-char safe path must be kept.
* A member repeated adjacently (``k.jpg`` twice in a row): two groups, as webdataset starts a
  new sample when an extension repeats (the second is ``k#1``); no reason checked.
* A uid with surrounding whitespace or a trailing newline is not "1-32 hex chars": ``bad_uid``.
* Garbage after the end-of-archive marker: every sample keeps its row; a file error is allowed
  but not required. Truncation inside the trailing padding after the two zero blocks is a valid
  tar. A zero-length shard must be a file error (not silently nothing).
* A directory named ``*.tar``: exit 0 (no rows for it, file error optional) or a one-line exit
  1/2. A dangling symlink ``*.tar``: a one-line exit 1/2, or exit 0 with a file error for it.
* Caches outside the workdir (``~/.cache``, ``$TMPDIR``) are not checked.

Failures are saved under ``WORKDIR/failures/<n>/``: ``case.json`` (seed, iteration, pool,
mutations with all parameters, the expectation model, the failures), ``input/`` (the mutated
tars), ``stdout.txt``/``stderr.txt`` and ``repro.sh``. A failing iteration with several
mutations is minimised (unless ``--no-minimize``; after all cover iterations have run, and only
until the deadline): the suspects (the mutations of the shards the failures name, all of them
for a run-wide failure such as a crash), less the kinds already known to fail alone, are halved
(delta debugging, each part run on its own shards) until single mutations that fail alone are
found; each is saved as its own minimal case. The campaign prints a summary (minimal cases
first) and exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import glob
import io
import json
import os
import posixpath
import random
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

POOL_SAMPLES = 120
POOL_SHARD_SIZE = 20
POOL_SEEDS = 3
COVER_ITERATIONS = 5
DEFAULT_TIMEOUT = 240

# ---------------------------------------------------------------------------------------------
# Mutation kinds
# ---------------------------------------------------------------------------------------------

STRUCTURE_KINDS = (
    "json_garbage", "json_truncated", "json_deep", "json_non_object", "json_empty", "json_non_utf8",
    "json_huge_number", "json_wrong_types", "json_bad_uid", "json_uid_wrong_type", "json_uid_null",
    "json_uid_valid_odd", "json_dup_uid", "json_dup_json_key", "json_missing_fields",
    "txt_empty", "txt_huge", "txt_non_utf8", "txt_control",
    "img_truncated", "img_zeroed", "img_empty", "img_swapped", "img_giant_header", "img_bomb",
    "name_upper_ext", "name_dotdot", "name_absolute", "name_backslash", "name_control",
    "name_non_utf8", "name_long", "name_dup_key", "name_dup_member",
    "member_symlink", "member_hardlink", "member_dir", "member_device", "member_all_nonregular",
    "member_missing",
)
BYTE_KINDS = ("byte_truncate", "byte_flip", "byte_append", "byte_zero_block", "byte_empty")
INPUT_KINDS = ("input_dir_as_shard", "input_dangling_symlink", "input_all_empty", "input_no_match")
KINDS = STRUCTURE_KINDS + BYTE_KINDS + INPUT_KINDS

# Kinds whose expectation needs a pristine target (a reason or "kept"); others take any sample.
PREFER_PRISTINE = {
    "json_garbage", "json_truncated", "json_deep", "json_non_object", "json_empty", "json_non_utf8",
    "json_bad_uid", "json_uid_wrong_type", "json_uid_valid_odd", "img_giant_header", "img_bomb",
    "name_upper_ext", "name_dotdot", "name_absolute", "name_backslash", "name_control",
    "name_non_utf8", "name_long", "name_dup_key",
}
UNSAFE_NAME_KINDS = {"name_dotdot", "name_absolute", "name_backslash", "name_control", "name_non_utf8"}

BAD_UIDS = ("", "not-a-uid", "g" * 32, "a" * 33, "0x1f2e3d", "../../etc/passwd", " 1f2e3d ", "\u0661\u0662\u0663",
            "1f2e-3d4c", "deadbeef\n", "12 34", "\u00e9" * 8)
WRONG_TYPE_UIDS = (12345, 1.5, True, ["1f2e3d4c"], {"uid": "1f2e3d4c"}, 0)
HUGE_NUMBERS = ("1e400", "-1e400", "1" + "0" * 40, "1" + "0" * 400, "9" * 5000, str(2 ** 63), str(2 ** 64),
                "NaN", "Infinity", "-Infinity", "1e-400", "-7", "0", "2.5e9")
SIZE_FIELDS = ("original_width", "original_height", "width", "height")
WRONG_TYPE_FIELDS = ("url", "caption", "key", "original_width", "original_height", "width", "height",
                     "status", "sha256", "exif", "face_bboxes", "error_message")
WRONG_VALUES = ([1, 2], {"a": {"b": [None]}}, True, None, "300", 3.5, -1, "", "\ud800 lone surrogate",
                "\x00\x01\x02")


@dataclasses.dataclass
class Member:
    name: str
    data: bytes = b""
    type: str = "file"          # file | dir | symlink | hardlink | chr | fifo
    linkname: str = ""
    origin: int = -1            # index of the pool group it came from


def split_key(name: str) -> tuple[str, str]:
    """webdataset's key rule (as tar_io.split_member_name), extension case preserved."""
    directory, base = posixpath.split(name)
    if "." not in base:
        return name, ""
    stem, ext = base.split(".", 1)
    return (posixpath.join(directory, stem) if directory else stem), ext


def group_members(members: list[Member]) -> list[dict]:
    """webdataset's grouping: consecutive members sharing a key form one group, except that an
    extension (as written) repeated within the run starts a new group; a key seen again later
    in the shard is a new group, whose row key is ``key#1``, ``key#2``..."""
    groups: list[dict] = []
    seen: Counter = Counter()
    for m in members:
        k, ext = split_key(m.name)
        if groups and groups[-1]["key"] == k and ext not in groups[-1]["exts"]:
            groups[-1]["members"].append(m)
            groups[-1]["exts"].add(ext)
            continue
        n = seen[k]
        seen[k] += 1
        groups.append({"key": k, "row_key": k if n == 0 else f"{k}#{n}", "members": [m], "exts": {ext}})
    return groups


def is_safe_key(key: str) -> bool:
    if not key or key.startswith("/") or "\\" in key:
        return False
    if any(p in ("..", ".") for p in key.split("/")):
        return False
    if any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in key):
        return False
    return True


def encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


# ---------------------------------------------------------------------------------------------
# Pools
# ---------------------------------------------------------------------------------------------

_POOLS: dict = {}


def get_pool(root: str, seed: int) -> "Pool":
    if (root, seed) not in _POOLS:
        _POOLS[(root, seed)] = Pool(root, seed)
    return _POOLS[(root, seed)]


class Pool:
    """A cached make_sample pool: its shards as groups of members, and which samples are pristine."""

    def __init__(self, root: str, seed: int):
        self.seed = seed
        self.dir = os.path.join(root, f"p{seed}")
        if not os.path.exists(os.path.join(self.dir, ".done")):
            from beam_filter.devtools.sample_pool import make_sample

            tmp = self.dir + ".partial"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(self.dir, ignore_errors=True)
            make_sample(tmp, samples=POOL_SAMPLES, seed=seed, shard_size=POOL_SHARD_SIZE)
            open(os.path.join(tmp, ".done"), "w").close()
            os.rename(tmp, self.dir)
        with open(os.path.join(self.dir, "ground_truth.json"), encoding="utf-8") as f:
            manifest = json.load(f)
        self.shards = list(manifest["shards"])
        sources = {r["duplicate_of"] for r in manifest["records"] if r["category"] == "exact_dup_of"}
        self.records = {(r["shard"], r["key"]): r for r in manifest["records"]}
        self.pristine = {k: r["category"] == "clean_en" and r["uid"] not in sources
                         for k, r in self.records.items()}
        self._groups: dict[str, list[tuple[str, list[Member]]]] = {}

    def groups(self, shard: str) -> list[tuple[str, list[Member]]]:
        if shard not in self._groups:
            members = []
            with tarfile.open(os.path.join(self.dir, shard)) as tar:
                for info in tar:
                    members.append(Member(info.name, tar.extractfile(info).read()))
            out: list[tuple[str, list[Member]]] = []
            for m in members:
                k, _ = split_key(m.name)
                if out and out[-1][0] == k:
                    out[-1][1].append(m)
                else:
                    out.append((k, [m]))
            self._groups[shard] = out
        return self._groups[shard]

    def info(self, shard: str, key: str) -> dict:
        r = self.records.get((shard, key), {})
        return {"uid": r.get("uid"), "pristine": self.pristine.get((shard, key), False),
                "category": r.get("category")}


# ---------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------

def iteration_rng(seed: int, iteration: int) -> random.Random:
    return random.Random(f"beam-filter-fuzz:{seed}:{iteration}")


def plan_iteration(seed: int, iteration: int, pools_root: str) -> dict:
    """The concrete plan of iteration ``iteration``: pool, shards (and kept groups), mutations."""
    rng = iteration_rng(seed, iteration)
    if iteration < COVER_ITERATIONS:
        return _plan_cover(seed, iteration, rng, pools_root)
    pool_seed = rng.randrange(POOL_SEEDS)
    pool = get_pool(pools_root, pool_seed)
    n_shards = rng.randint(2, 4)
    chosen = sorted(rng.sample(pool.shards, n_shards))
    shards = []
    for name in chosen:
        n = len(pool.groups(name))
        keep = list(range(n))
        if rng.random() < 0.3:
            keep = sorted(rng.sample(keep, rng.randint(max(1, n - 8), n)))
        shards.append({"source": name, "name": name, "keep": keep})
    mutations: list[dict] = []
    for sh in shards:
        r = rng.random()
        if r < 0.22:
            mutations.append(_plan_byte(rng, rng.choice(BYTE_KINDS), sh))
        elif r < 0.27:
            continue                                  # an untouched shard
        else:
            used: set[int] = set()
            for _ in range(rng.randint(1, 4) if rng.random() < 0.85 else rng.randint(5, 12)):
                m = _plan_structure(rng, rng.choice(STRUCTURE_KINDS), sh, pool, used)
                if m:
                    mutations.append(m)
    if rng.random() < 0.04:
        kind = rng.choice(("input_dir_as_shard", "input_dangling_symlink", "input_all_empty"))
        mutations.append({"kind": kind, "level": "input"})
    return {"seed": seed, "iteration": iteration, "pool_seed": pool_seed, "shards": shards,
            "mutations": mutations}


def _plan_cover(seed: int, iteration: int, rng: random.Random, pools_root: str) -> dict:
    """Iterations 0-4 together apply every kind at least once."""
    pool_seed = seed % POOL_SEEDS
    pool = get_pool(pools_root, pool_seed)
    names = pool.shards
    full = lambda name: {"source": name, "name": name, "keep": list(range(len(pool.groups(name))))}  # noqa: E731
    kinds = list(STRUCTURE_KINDS)
    random.Random(f"beam-filter-fuzz-cover:{seed}").shuffle(kinds)
    mutations: list[dict] = []
    shards: list[dict] = []
    if iteration in (0, 1):
        mine = kinds[iteration::2]
        shards = [full(n) for n in names]
        structure_shards = shards[:3]
        used = {id(s): set() for s in structure_shards}
        for j, kind in enumerate(mine):
            sh = structure_shards[j % 3]
            m = _plan_structure(rng, kind, sh, pool, used[id(sh)])
            if m:
                mutations.append(m)
        byte_kinds = BYTE_KINDS[:3] if iteration == 0 else BYTE_KINDS[3:]
        for sh, kind in zip(shards[3:], byte_kinds):
            mutations.append(_plan_byte(rng, kind, sh))
        shards = shards[:3 + len(byte_kinds)]
    elif iteration == 2:
        shards = [full(names[0])]
        mutations = [{"kind": "input_dir_as_shard", "level": "input"},
                     {"kind": "input_dangling_symlink", "level": "input"}]
    elif iteration == 3:
        shards = [full(names[0]), full(names[1])]
        mutations = [{"kind": "input_all_empty", "level": "input"}]
    else:
        shards = [full(names[0])]
        mutations = [{"kind": "input_no_match", "level": "input"}]
    return {"seed": seed, "iteration": iteration, "pool_seed": pool_seed, "shards": shards,
            "mutations": mutations, "cover": True}


def _plan_byte(rng: random.Random, kind: str, shard: dict) -> dict:
    variant = {"byte_truncate": ("anywhere", "end_marker", "in_header"),
               "byte_zero_block": ("any", "header"),
               "byte_flip": ("random", "header"),
               "byte_append": ("random", "text", "zeros_then_random")}.get(kind, ("plain",))
    return {"kind": kind, "level": "byte", "shard": shard["name"], "variant": rng.choice(variant),
            "seed": rng.getrandbits(32)}


def _plan_structure(rng: random.Random, kind: str, shard: dict, pool: Pool, used: set) -> dict | None:
    keep = shard["keep"]
    groups = pool.groups(shard["source"])
    free = [i for i in keep if i not in used]
    if not free:
        return None
    pristine = [i for i in free if pool.info(shard["source"], groups[i][0])["pristine"]]
    candidates = pristine if (kind in PREFER_PRISTINE and pristine) else free
    m = {"kind": kind, "level": "structure", "shard": shard["name"], "seed": rng.getrandbits(32),
         "variant": rng.randrange(1 << 16)}
    if kind == "name_dup_key":
        # A later group (non-adjacent in the written order) takes an earlier group's key.
        pos = {g: p for p, g in enumerate(keep)}
        pairs = [(a, b) for a in candidates for b in candidates if pos[b] >= pos[a] + 2]
        if not pairs:
            pairs = [(a, b) for a in free for b in free if pos[b] >= pos[a] + 2]
        if not pairs:
            return None
        a, b = rng.choice(pairs)
        m["target"], m["target2"] = a, b
        used.update((a, b))
        return m
    if kind == "json_dup_uid":
        t = rng.choice(candidates)
        m["target"] = t
        m["uid_from"] = rng.choice([i for i in keep if i != t] or [t])
        used.add(t)
        return m
    t = rng.choice(candidates)
    m["target"] = t
    used.add(t)
    return m


# ---------------------------------------------------------------------------------------------
# Applying structure mutations
# ---------------------------------------------------------------------------------------------

def _member(members: list[Member], ext: str) -> Member | None:
    for m in members:
        if m.type == "file" and split_key(m.name)[1].lower() == ext:
            return m
    return None


def _image_member(members: list[Member]) -> Member | None:
    for ext in ("jpg", "jpeg", "png", "webp"):
        m = _member(members, ext)
        if m is not None:
            return m
    return None


def _json_obj(members: list[Member]) -> dict:
    m = _member(members, "json")
    try:
        obj = json.loads(m.data) if m else {}
        return obj if isinstance(obj, dict) else {}
    except ValueError:
        return {}


def _set_json(members: list[Member], data: bytes) -> None:
    m = _member(members, "json")
    if m is None:
        k = split_key(members[0].name)[0]
        members.append(Member(f"{k}.json", data, origin=members[0].origin))
        members.sort(key=lambda x: x.name)
    else:
        m.data = data


def _dumps(obj) -> bytes:
    """ASCII JSON: a lone surrogate in a value becomes a valid ``\\ud800`` escape."""
    return json.dumps(obj, ensure_ascii=True).encode("ascii")


def _rename_group(members: list[Member], new_key: str) -> None:
    for m in members:
        _, ext = split_key(m.name)
        m.name = f"{new_key}.{ext}" if ext else new_key


_BLOBS: dict = {}


def _png(width: int, height: int, idat: bytes, bit_depth: int = 8, color: int = 2, text: str = "") -> bytes:
    def chunk(typ: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + typ + data + struct.pack(">I", zlib.crc32(typ + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color, 0, 0, 0)
    extra = chunk(b"tEXt", b"Comment\0" + text.encode("ascii")) if text else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _bomb_png(text: str) -> bytes:
    """A valid 20000x20000 1-bit PNG of zeros: ~50 KB on disk, 400 Mpx (50 MB) decoded.

    ``text`` goes in a tEXt chunk so two bombs in one run are not exact duplicates.
    """
    if "bomb" not in _BLOBS:
        side = 20000
        row = b"\x00" * (1 + side // 8)
        comp = zlib.compressobj(9)
        parts = [comp.compress(row * 500) for _ in range(side // 500)]
        parts.append(comp.flush())
        _BLOBS["bomb"] = (side, b"".join(parts))
    side, idat = _BLOBS["bomb"]
    return _png(side, side, idat, bit_depth=1, color=0, text=text)


def _giant_header(rng: random.Random) -> bytes:
    """A small, well-formed image whose header claims ~40k-100k pixels per side."""
    w, h = rng.randint(40000, 100000), rng.randint(40000, 65000)
    if rng.random() < 0.5:
        return _png(w, h, zlib.compress(b"\x00" * 64), text=rng.randbytes(8).hex())
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (rng.randrange(256), 90, 160)).save(buf, "JPEG", quality=80)
    data = bytearray(buf.getvalue())
    i = data.find(b"\xff\xc0")
    data[i + 5:i + 9] = struct.pack(">HH", min(h, 65500), min(w, 65500))
    return bytes(data)


def _other_format(rng: random.Random, fmt: str) -> bytes:
    if fmt == "html":
        return b"<!DOCTYPE html><html><body><h1>404 Not Found</h1></body></html>\n"
    if fmt == "pdf":
        return b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    from PIL import Image

    img = Image.frombytes("RGB", (256, 256), rng.randbytes(256 * 256 * 3))   # seeded: deterministic bytes
    buf = io.BytesIO()
    img.save(buf, {"png": "PNG", "gif": "GIF", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF"}[fmt])
    return buf.getvalue()


def apply_structure(m: dict, work: dict[int, list[Member]], info: dict[int, dict], order: list[int]) -> dict:
    """Apply one structure mutation to ``work`` (group index -> members); return expectations by origin."""
    kind, t = m["kind"], m["target"]
    rng = random.Random(m["seed"])
    v = m["variant"]
    members = work[t]
    key = split_key(members[0].name)[0]
    uid = info[t]["uid"]
    exp: dict = {"kinds": [kind]}
    obj = _json_obj(members)

    # ---- json
    if kind == "json_garbage":
        _set_json(members, b"\xff{" + rng.randbytes(rng.randint(1, 400)))
        exp.update(kept=False, reason_in=["bad_json"])
    elif kind == "json_truncated":
        raw = _dumps(obj or {"uid": uid})
        _set_json(members, raw[: max(1, len(raw) // 2)])
        exp.update(kept=False, reason_in=["bad_json"])
    elif kind == "json_deep":
        depth = (20000, 100000)[v % 2]
        deep = "[" * depth + "]" * depth
        if v % 4 < 2:
            _set_json(members, deep.encode())
        else:
            head = _dumps(obj or {"uid": uid or "ab"})[:-1].decode("ascii")
            _set_json(members, (head + ', "exif": ' + deep + "}").encode("ascii"))
        exp.update(kept=False, reason_in=["bad_json"])
    elif kind == "json_non_object":
        _set_json(members, (b"[1, 2, 3]", b'"just a string"', b"42", b"null", b"true", b"[]")[v % 6])
        exp.update(kept=False, reason_in=["bad_json"])
    elif kind == "json_empty":
        _set_json(members, (b"", b"   \n", b"\x00\x00")[v % 3])
        exp.update(kept=False, reason_in=["bad_json"])
    elif kind == "json_non_utf8":
        raw = json.dumps(dict(obj, caption="Caf\u00e9 d\u00e9j\u00e0 vu"), ensure_ascii=False)
        _set_json(members, raw.encode("latin-1", "replace") + (b"", b"\xff\xfe")[v % 2])
        exp.update(kept=False, reason_in=["bad_json"])
    elif kind == "json_huge_number":
        field = SIZE_FIELDS[v % len(SIZE_FIELDS)]
        number = HUGE_NUMBERS[(v // 4) % len(HUGE_NUMBERS)]
        obj = dict(obj)
        obj[field] = "@@N@@"
        _set_json(members, _dumps(obj).replace(b'"@@N@@"', number.encode()))
        exp["note"] = f"{field}={number[:20]}"
    elif kind == "json_wrong_types":
        obj = dict(obj)
        fields = rng.sample(WRONG_TYPE_FIELDS, rng.randint(1, 3))
        for f in fields:
            obj[f] = rng.choice(WRONG_VALUES)
        _set_json(members, _dumps(obj))
        exp["note"] = ",".join(fields)
    elif kind == "json_bad_uid":
        obj = dict(obj, uid=BAD_UIDS[v % len(BAD_UIDS)])
        _set_json(members, _dumps(obj))
        exp.update(kept=False, reason_in=["bad_uid"], note=repr(obj["uid"]))
    elif kind == "json_uid_wrong_type":
        obj = dict(obj, uid=WRONG_TYPE_UIDS[v % len(WRONG_TYPE_UIDS)])
        _set_json(members, _dumps(obj))
        exp.update(kept=False, reason_in=["bad_uid"], note=repr(obj["uid"]))
    elif kind == "json_uid_null":
        _set_json(members, _dumps(dict(obj, uid=None)))
    elif kind == "json_uid_valid_odd":
        odd = (uid.upper(), uid[-8:], uid[-1:], uid.lstrip("0") or "0")[v % 4] if uid else "ABC"
        _set_json(members, _dumps(dict(obj, uid=odd)))
        exp.update(kept=True, note=repr(odd))
    elif kind == "json_dup_uid":
        other = info[m["uid_from"]]["uid"] or uid
        _set_json(members, _dumps(dict(obj, uid=other)))
        exp["match_uid"] = None
        exp["note"] = f"uid of group {m['uid_from']}"
    elif kind == "json_dup_json_key":
        raw = _dumps(dict(obj, uid=uid or "ab"))
        other = rng.randbytes(16).hex()
        _set_json(members, b'{"uid": "' + other.encode() + b'", ' + raw[1:])
        exp["note"] = "uid given twice"
    elif kind == "json_missing_fields":
        obj = dict(obj)
        for f in rng.sample(sorted(obj), rng.randint(1, max(1, len(obj)))):
            obj.pop(f, None)
        _set_json(members, _dumps(obj))
        exp["note"] = "kept fields: " + ",".join(sorted(obj))

    # ---- caption
    elif kind == "txt_empty":
        _txt(members).data = (b"", b" ", b"\n\n")[v % 3]
    elif kind == "txt_huge":
        words = (b"sun", b"river", b"a", b"photo", b"of", b"the", b"mountain", b"\xc3\xa9t\xc3\xa9")
        n = rng.randint(1, 3) << 20
        buf = bytearray()
        while len(buf) < n:
            buf += rng.choice(words) + b" "
        _txt(members).data = bytes(buf)
    elif kind == "txt_non_utf8":
        _txt(members).data = ("Caf\u00e9 \u2013 d\u00e9j\u00e0 vu on the beach".encode("cp1252"),
                              b"a dog \xff\xfe on grass", b"surrogate \xed\xa0\x80 in text",
                              b"overlong \xc0\xaf slash", b"cut \xe2\x82")[v % 5]
        exp.update(kept=False)
    elif kind == "txt_control":
        base = _txt(members).data.decode("utf-8", "replace")
        _txt(members).data = (base + "\x00\x01\x1b[31m red\r\n\x7f\u2028\u202e\ufeff\u200b").encode("utf-8")

    # ---- image
    elif kind in ("img_truncated", "img_zeroed", "img_empty", "img_swapped", "img_giant_header", "img_bomb"):
        img = _image_member(members)
        if img is None:
            exp["note"] = "no image member"
        elif kind == "img_truncated":
            img.data = img.data[: int(len(img.data) * (0.05 + 0.9 * rng.random()))]
            exp.update(kept=False)
        elif kind == "img_zeroed":
            img.data = b"\x00" * len(img.data)
            exp.update(kept=False)
        elif kind == "img_empty":
            img.data = b""
            exp.update(kept=False)
        elif kind == "img_swapped":
            fmt = ("png", "gif", "webp", "bmp", "tiff", "html", "pdf")[v % 7]
            img.data = _other_format(rng, fmt)
            exp["note"] = f"{fmt} under .{split_key(img.name)[1]}"
        elif kind == "img_giant_header":
            img.data = _giant_header(rng)
            exp.update(kept=False, reason_in=["image_too_large"])
        else:
            img.data = _bomb_png(rng.randbytes(8).hex())
            exp.update(kept=False, reason_in=["image_too_large"])

    # ---- names
    elif kind == "name_upper_ext":
        for mem in members:
            k, ext = split_key(mem.name)
            if v % 2 == 0 or mem is _image_member(members):
                mem.name = f"{k}.{ext.upper()}"
        exp.update(kept=True, names=True)
    elif kind in UNSAFE_NAME_KINDS:
        new = {
            "name_dotdot": (f"../{key}", f"a/../../{key}", f"../../../../tmp/{key}"),
            "name_absolute": (f"/{key}", f"/tmp/fuzz/{key}", f"//{key}"),
            "name_backslash": (f"sub\\{key}", f"C:\\data\\{key}", f"..\\{key}"),
            "name_control": (f"{key}\x01", f"\n{key}", f"{key}\x1b[2J", f"{key}\x7f", f"{key}\r"),
            "name_non_utf8": (f"{key}\udcff", f"\udce9{key}", f"{key}\udcc3("),   # bytes ff, e9, c3 28
        }[kind]
        _rename_group(members, new[v % len(new)])
        exp.update(kept=False, reason_in=["unsafe_member_name"], match_uid=uid, note=repr(new[v % len(new)][:40]))
    elif kind == "name_long":
        if v % 2 == 0:
            prefix = "/".join(["d" * 60] * 4)           # 240 + key: a 250-300 char safe path
            _rename_group(members, f"{prefix}/{key}")
            exp.update(kept=True, names=True)
        else:
            prefix = "/".join([f"dir{i:03d}" + "x" * 90 for i in range(40)])   # ~3900 chars
            _rename_group(members, f"{prefix}/{key}")
            exp.update(names=True)
        exp["match_uid"] = uid
    elif kind == "name_dup_key":
        t2 = m["target2"]
        _rename_group(work[t2], key)
        exp.update(kept=True, names=True, row_key=key)
        exp2 = {"kinds": [kind], "kept": True, "names": True, "row_key": f"{key}#1", "match_uid": info[t2]["uid"]}
        return {t: exp, t2: exp2}
    elif kind == "name_dup_member":
        src = rng.choice([x for x in members if x.type == "file"])
        twin = Member(src.name, src.data[: len(src.data) // 2] or b"x", origin=src.origin)
        members.insert(members.index(src) + 1, twin)
        exp["note"] = f"{split_key(src.name)[1]} twice"

    # ---- member types
    elif kind in ("member_symlink", "member_hardlink", "member_dir", "member_device"):
        regular = [x for x in members if x.type == "file"]
        victim = regular[v % len(regular)]
        _make_nonregular(victim, kind, rng, v, order, work)
        ext = split_key(victim.name)[1].lower()
        if ext in ("jpg", "jpeg", "png", "webp", "txt"):
            exp.update(kept=False)
        exp["note"] = f"{ext} -> {victim.type}"
    elif kind == "member_all_nonregular":
        kinds = ("member_symlink", "member_hardlink", "member_dir", "member_device")
        for i, mem in enumerate(members):
            _make_nonregular(mem, kinds[(v + i) % 4], rng, v + i, order, work)
        exp.update(kept=False, note="/".join(x.type for x in members))
    elif kind == "member_missing":
        regular = [x for x in members if x.type == "file"]
        drop = rng.sample(regular, rng.randint(1, max(1, len(regular) - 1)))
        for x in drop:
            members.remove(x)
        gone = {split_key(x.name)[1].lower() for x in drop}
        if gone & {"jpg", "jpeg", "png", "webp", "txt"}:
            exp.update(kept=False)
        exp["note"] = "dropped " + ",".join(sorted(gone))
    else:
        raise ValueError(f"unknown structure kind {kind}")
    if kind not in UNSAFE_NAME_KINDS and kind != "json_dup_uid" and "match_uid" not in exp \
            and not kind.startswith("json") and kind != "member_all_nonregular":
        exp["match_uid"] = uid
    return {t: exp}


def _txt(members: list[Member]) -> Member:
    m = _member(members, "txt")
    if m is None:
        k = split_key(members[0].name)[0]
        m = Member(f"{k}.txt", b"", origin=members[0].origin)
        members.append(m)
        members.sort(key=lambda x: x.name)
    return m


def _make_nonregular(mem: Member, kind: str, rng: random.Random, v: int, order, work) -> None:
    mem.data = b""
    if kind == "member_symlink":
        mem.type, mem.linkname = "symlink", ("/etc/passwd", "../../../../etc/shadow", "missing.jpg")[v % 3]
    elif kind == "member_hardlink":
        first = work[order[0]][0].name if order else "x"
        mem.type, mem.linkname = "hardlink", (first, "/etc/passwd", "../outside.jpg")[v % 3]
    elif kind == "member_dir":
        mem.type = "dir"
    else:
        mem.type = ("chr", "fifo")[v % 2]


# ---------------------------------------------------------------------------------------------
# Writing tars and byte mutations
# ---------------------------------------------------------------------------------------------

_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}


def tar_bytes(members: list[Member]) -> tuple[bytes, list[tuple[int, int, int, int]], int]:
    """The tar, each member's (header start, data start, size, padded end), and the end of the last member."""
    buf = io.BytesIO()
    layout = []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = _TYPES[m.type]
            info.mtime = 0
            info.mode = 0o755 if m.type == "dir" else 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.linkname = m.linkname
            if m.type == "chr":
                info.devmajor, info.devminor = 1, 3
            start = tar.offset
            if m.type == "file":
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
            else:
                tar.addfile(info)
            end = tar.offset
            padded = -(-info.size // 512) * 512
            layout.append((start, end - padded, info.size, end))
        end_members = tar.offset
    return buf.getvalue(), layout, end_members


def _group_spans(groups: list[dict], layout) -> list[tuple[int, int]]:
    """Per written group: (first header start, end of its last member's data)."""
    spans, i = [], 0
    for g in groups:
        n = len(g["members"])
        first, last = layout[i], layout[i + n - 1]
        spans.append((first[0], last[1] + last[2]))
        i += n
    return spans


def _bounds_at(spans, offset: int, cut: bool = True) -> dict:
    """Damage at ``offset``: a file error, a row for every group complete before it, and, for a
    cut, none for groups that start after it (a reader that resyncs past a bad header may find
    every group, plus one for a group split by the damage)."""
    return {"rows_min": sum(1 for _, end in spans if end <= offset),
            "rows_max": sum(1 for start, _ in spans if start < offset) if cut else len(spans) + 1,
            "file_error": True}


def apply_byte(m: dict, data: bytes, layout, end_members: int, groups: list[dict]) -> tuple[bytes, dict]:
    """Damage a whole tar; return the new bytes and what the fuzzer can still promise about it."""
    rng = random.Random(m["seed"])
    kind, variant = m["kind"], m["variant"]
    n = len(groups)
    spans = _group_spans(groups, layout)
    promise: dict = {"kind": kind, "variant": variant}
    if kind == "byte_empty":
        return b"", dict(promise, rows_exact=0, file_error=True)
    if kind == "byte_truncate":
        if variant == "end_marker":
            cut = end_members + rng.randrange(1024)
        elif variant == "in_header" and layout:
            cut = rng.choice(layout)[0] + rng.randrange(512)
        else:
            cut = rng.randrange(len(data))
        promise["offset"] = cut
        if cut >= end_members + 1024:
            return data[:cut], dict(promise, rows_exact=n)
        return data[:cut], dict(promise, **_bounds_at(spans, cut))
    if kind == "byte_append":
        extra = {"random": rng.randbytes(rng.randint(1, 20000)),
                 "text": b"<html>503 Service Unavailable</html>\n" * rng.randint(1, 50),
                 "zeros_then_random": b"\0" * 1024 * rng.randint(1, 4) + rng.randbytes(rng.randint(1, 3000))}[variant]
        promise["appended"] = len(extra)
        return data + extra, dict(promise, rows_exact=n)
    if kind == "byte_flip":
        out = bytearray(data)
        if variant == "header" and layout:
            header = rng.choice(layout)[1] - 512          # a member's own header (not a GNU long name)
            flips = [header + rng.randrange(100)]         # its name field: the checksum no longer matches
        else:
            flips = sorted(rng.randrange(len(out)) for _ in range(rng.randint(1, 8)))
        for pos in flips:
            out[pos] ^= rng.randint(1, 255)
        promise["offsets"] = flips
        if variant == "header" and layout:
            return bytes(out), dict(promise, **_bounds_at(spans, flips[0], cut=False))
        return bytes(out), promise
    if kind == "byte_zero_block":
        if variant == "header" and layout:
            entry = rng.choice(layout)
            off = rng.choice((entry[0], entry[1] - 512))
        else:
            off = rng.randrange(len(data) // 512) * 512
        out = data[:off] + b"\0" * 512 + data[off + 512:]
        promise["offset"] = off
        for start, dstart, size, end in layout:
            if start <= off < end:
                if off in (start, dstart - 512):         # a header block: tarfile sees an end marker
                    return out, dict(promise, **_bounds_at(spans, off, cut=False))
                if off >= dstart:                        # data: structure intact
                    return out, dict(promise, rows_exact=n)
                return out, promise                      # inside a GNU long name: unpredictable
        return out, dict(promise, rows_exact=n)          # end-of-archive blocks or padding
    raise ValueError(f"unknown byte kind {kind}")


# ---------------------------------------------------------------------------------------------
# Building a case
# ---------------------------------------------------------------------------------------------

def build_case(plan: dict, pools_root: str, input_dir: str, expect_kept: bool = True) -> dict:
    """Write the mutated input shards of ``plan`` to ``input_dir``; return the expectation model.

    ``expect_kept``: whether pristine samples must stay kept (true for quickstart; a recipe
    with more filters may drop them for its own reasons).
    """
    pool = get_pool(pools_root, plan["pool_seed"])
    os.makedirs(input_dir, exist_ok=True)
    model: dict = {"shards": {}, "input": []}
    input_kinds = [m["kind"] for m in plan["mutations"] if m["level"] == "input"]
    for sh in plan["shards"]:
        source = pool.groups(sh["source"])
        work: dict[int, list[Member]] = {}
        info: dict[int, dict] = {}
        for idx in sh["keep"]:
            key, members = source[idx]
            work[idx] = [Member(mm.name, mm.data, origin=idx) for mm in members]
            info[idx] = pool.info(sh["source"], key)
        order = list(sh["keep"])
        muts = [m for m in plan["mutations"] if m.get("shard") == sh["name"]]
        expectations: dict[int, dict] = {}
        for m in muts:
            if m["level"] == "structure":
                for origin, exp in apply_structure(m, work, info, order).items():
                    expectations[origin] = exp
        members = [mm for idx in order for mm in work[idx]]
        groups = group_members(members)
        data, layout, end_members = tar_bytes(members)
        byte = [m for m in muts if m["level"] == "byte"]
        shard_model: dict = {"n_groups": len(groups), "level": "byte" if byte else "structure",
                             "kinds": [m["kind"] for m in muts], "groups": []}
        if byte:
            data, promise = apply_byte(byte[0], data, layout, end_members, groups)
            shard_model["byte"] = promise
        for g in groups:
            origins = sorted({mm.origin for mm in g["members"]})
            entry = {"key": g["key"], "row_key": g["row_key"], "origins": origins,
                     "safe": is_safe_key(g["key"]),
                     "names": [mm.name for mm in g["members"] if mm.type == "file"]}
            if len(origins) == 1 and origins[0] in expectations:
                exp = dict(expectations[origins[0]])
                pristine = info[origins[0]]["pristine"]
                entry["pristine"] = pristine
                if not expect_kept and exp.get("kept") is True:
                    exp.pop("kept")
                if not pristine:
                    exp.pop("reason_in", None)
                    if exp.get("kept") is True:
                        exp.pop("kept")
                entry["expect"] = exp
            shard_model["groups"].append(entry)
        if "input_all_empty" in input_kinds:
            data = b""
            shard_model = {"n_groups": 0, "level": "byte", "kinds": ["input_all_empty"],
                           "byte": {"kind": "input_all_empty", "rows_exact": 0, "file_error": True}, "groups": []}
        with open(os.path.join(input_dir, sh["name"]), "wb") as f:
            f.write(data)
        model["shards"][sh["name"]] = shard_model
    for kind in input_kinds:
        if kind == "input_dir_as_shard":
            d = os.path.join(input_dir, "00000098.tar")
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "inner.txt"), "w") as f:
                f.write("a directory named like a shard\n")
            model["input"].append({"kind": kind, "name": "00000098.tar"})
        elif kind == "input_dangling_symlink":
            os.symlink("no-such-target.tar", os.path.join(input_dir, "00000099.tar"))
            model["input"].append({"kind": kind, "name": "00000099.tar"})
        elif kind == "input_no_match":
            for p in glob.glob(os.path.join(input_dir, "*.tar")):
                os.remove(p)
            model["shards"] = {}
            model["input"].append({"kind": kind})
        elif kind == "input_all_empty":
            model["input"].append({"kind": kind})
    return model


# ---------------------------------------------------------------------------------------------
# Running and checking
# ---------------------------------------------------------------------------------------------

def snapshot(root: str, exclude: str) -> dict:
    """path -> (type, size, mtime_ns) of every entry under ``root`` except the ``exclude`` subtree."""
    out = {}
    exclude = os.path.abspath(exclude)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.abspath(os.path.join(dirpath, d)) != exclude]
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            kind = "d" if stat.S_ISDIR(st.st_mode) else "l" if stat.S_ISLNK(st.st_mode) else "f"
            out[os.path.relpath(p, root)] = (kind, 0 if kind == "d" else st.st_size,
                                             0 if kind == "d" else st.st_mtime_ns)
    return out


def cli_command(recipe: str, input_glob: str, out_dir: str, extra: tuple = ()) -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "beam-filter")
    head = [exe] if os.path.exists(exe) else [sys.executable, "-c",
                                               "import sys; from beam_filter.cli import main; sys.exit(main())"]
    return head + ["run", "--recipe", recipe, "--input", input_glob, "--output", out_dir, "--no-progress", *extra]


def run_cli(cmd: list[str], cwd: str, timeout: float) -> tuple[int | None, str, str, float]:
    env = dict(os.environ, BEAM_FILTER_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)   # our own child's process group only
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        rc = None
    return rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), time.time() - t0


def _fail(failures: list, invariant: str, detail: str, shard: str | None = None) -> None:
    """Record a failure; ``shard``: the input shard it is about (None: the whole run)."""
    failures.append({"invariant": invariant, "detail": detail[:2000], "shard": shard})


def _last_line(text: str) -> str:
    """The last non-empty line (for a traceback: the exception), shortened."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no stderr)"


def _read_rows(out_dir: str) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for p in sorted(glob.glob(os.path.join(out_dir, "decisions", "*.parquet"))):
        t = pq.read_table(p)
        cols = [c for c in ("uid", "shard", "key", "kept", "copies", "reason") if c in t.column_names]
        rows.extend(t.select(cols).to_pylist())
    return rows


def _output_groups(out_dir: str, failures: list) -> list[tuple[str, list[str]]]:
    groups: list[tuple[str, list[str]]] = []
    for p in sorted(glob.glob(os.path.join(out_dir, "shards", "*.tar"))):
        try:
            with tarfile.open(p) as tar:
                names = [i.name for i in tar if i.isfile()]
        except (tarfile.TarError, OSError, EOFError) as e:
            _fail(failures, "output_shard_readable", f"{os.path.basename(p)}: {type(e).__name__}: {e}")
            continue
        first = True
        for name in names:
            k, _ = split_key(name)
            if not first and groups[-1][0] == k:
                groups[-1][1].append(name)
            else:
                groups.append((k, [name]))
            first = False
    return groups


def check(model: dict, rc, stdout: str, stderr: str, out_dir: str, before: dict, after: dict) -> list[dict]:
    """Every invariant of the module docstring; returns the failures (empty when all hold)."""
    failures: list[dict] = []
    input_kinds = {x["kind"] for x in model["input"]}
    err_lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if rc is None:
        _fail(failures, "timeout", "the CLI did not finish in time")
        return failures
    if before != after:
        changed = sorted(set(before) ^ set(after) | {p for p in before if p in after and before[p] != after[p]})
        _fail(failures, "nothing_outside_output_changed", "changed outside the output: " + ", ".join(changed[:10]))
    for dirpath, _, files in os.walk(out_dir):
        tmp = [f for f in files if f.startswith(".tmp-") or ".tmp-" in f]
        if tmp:
            _fail(failures, "no_tmp_files", f"{os.path.relpath(dirpath, out_dir)}: {tmp[:5]}")
    allow_exit = input_kinds & {"input_dir_as_shard", "input_dangling_symlink", "input_no_match"}
    if rc != 0 and not (allow_exit and rc in (1, 2)):
        tail = "\n".join(stderr.strip().splitlines()[-8:])
        _fail(failures, "exit_code", f"rc={rc}: {_last_line(stderr)}\nstderr ends:\n{tail}")
        return failures
    if "Traceback (most recent call last)" in stderr:
        tail = "\n".join(stderr.strip().splitlines()[-6:])
        _fail(failures, "no_traceback", f"rc={rc}: {_last_line(stderr)}\nstderr ends:\n{tail}")
    if rc != 0:
        if len(err_lines) != 1:
            _fail(failures, "one_line_error", f"rc={rc} with {len(err_lines)} stderr lines: {err_lines[-5:]}")
        return failures
    if "input_no_match" in input_kinds:
        _fail(failures, "exit_code", "a glob matching no shard must exit 1/2 with one line, got rc=0")
        return failures

    report_path = os.path.join(out_dir, "report.json")
    try:
        with open(report_path, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError) as e:
        _fail(failures, "report_json", f"{type(e).__name__}: {e}")
        return failures
    try:
        rows = _read_rows(out_dir)
    except Exception as e:  # noqa: BLE001
        _fail(failures, "decisions_readable", f"{type(e).__name__}: {e}")
        return failures
    file_errors = report.get("file_errors") or []
    fe_by_shard = Counter(posixpath.basename(str(e.get("shard", ""))) for e in file_errors)
    rows_by_shard: dict[str, list[dict]] = {}
    for r in rows:
        rows_by_shard.setdefault(posixpath.basename(str(r.get("shard"))), []).append(r)

    # ---- every row
    for r in rows:
        if r.get("kept") is not True and not (isinstance(r.get("reason"), str) and r["reason"]):
            _fail(failures, "row_kept_or_reason", f"{r.get('shard')}:{r.get('key')!r} kept={r.get('kept')} "
                                                  f"reason={r.get('reason')!r}", shard=posixpath.basename(str(r.get('shard'))))
        if r.get("kept") and not (isinstance(r.get("copies"), int) and r["copies"] >= 1):
            _fail(failures, "kept_copies", f"{r.get('key')!r} kept with copies={r.get('copies')!r}")
    unknown = set(rows_by_shard) - set(model["shards"])
    if unknown:
        _fail(failures, "rows_from_inputs", f"rows for shards that are not inputs: {sorted(unknown)[:5]}")

    # ---- per shard
    out_groups = _output_groups(out_dir, failures)
    out_names = {}
    for k, names in out_groups:
        out_names.setdefault(k, []).extend(names)
    for name, sm in model["shards"].items():
        srows = rows_by_shard.get(name, [])
        n_rows = len(srows)
        keys = Counter(r.get("key") for r in srows)
        dup = [k for k, c in keys.items() if c > 1]
        if dup:
            _fail(failures, "unique_keys", f"{name}: keys with several rows: {dup[:5]!r}", shard=name)
        if sm["level"] == "structure":
            if n_rows != sm["n_groups"]:
                _fail(failures, "rows_equal_groups", f"{name}: {n_rows} rows for {sm['n_groups']} sample groups "
                                                     f"(mutations: {sm['kinds']})", shard=name)
            if fe_by_shard.get(name):
                _fail(failures, "no_file_error_for_valid_tar", f"{name}: {[e for e in file_errors if posixpath.basename(str(e.get('shard'))) == name]}", shard=name)
            _check_groups(name, sm, srows, out_names, failures)
        else:
            promise = sm.get("byte", {})
            if n_rows == 0 and not fe_by_shard.get(name):
                _fail(failures, "shard_accounted", f"{name} ({promise.get('kind')}): no rows and no file error", shard=name)
            if promise.get("file_error") and not fe_by_shard.get(name):
                _fail(failures, "file_error_reported", f"{name} ({promise}): damaged tar but no file error", shard=name)
            if "rows_exact" in promise and n_rows != promise["rows_exact"]:
                _fail(failures, "byte_rows", f"{name} ({promise}): {n_rows} rows, expected {promise['rows_exact']}", shard=name)
            if "rows_min" in promise and not promise["rows_min"] <= n_rows <= promise["rows_max"]:
                _fail(failures, "byte_rows", f"{name} ({promise}): {n_rows} rows, expected "
                                             f"{promise['rows_min']}..{promise['rows_max']}", shard=name)
    for x in model["input"]:
        if x["kind"] == "input_dangling_symlink" and not fe_by_shard.get(x["name"]):
            _fail(failures, "shard_accounted", f"dangling symlink {x['name']}: exit 0 but no file error")
        if x.get("name") and rows_by_shard.get(x["name"]):
            _fail(failures, "rows_from_inputs", f"{x['name']} ({x['kind']}) has rows")

    # ---- totals
    kept = [r for r in rows if r.get("kept")]
    copies = sum(int(r.get("copies") or 0) for r in kept)
    try:
        import numpy as np

        uids = np.load(os.path.join(out_dir, "uids.npy"), allow_pickle=False)
        n_uids = len(uids)
    except Exception as e:  # noqa: BLE001
        _fail(failures, "uids_npy", f"{type(e).__name__}: {e}")
        uids, n_uids = None, None
    stats = []
    for p in sorted(glob.glob(os.path.join(out_dir, "shards", "*_stats.json"))):
        with open(p, encoding="utf-8") as f:
            stats.append(json.load(f))
    meta = None
    try:
        with open(os.path.join(out_dir, "shards", "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        _fail(failures, "meta_json", f"{type(e).__name__}: {e}")
    figures = {"sum of kept copies": copies, "len(uids.npy)": n_uids,
               "meta.json samples": meta.get("samples") if meta else None,
               "sum of stats counts": sum(int(s.get("count", 0)) for s in stats),
               "samples in shards/*.tar": len(out_groups),
               "report kept_with_copies": (report.get("counts") or {}).get("kept_with_copies", 0)}
    if len(set(figures.values())) != 1:
        _fail(failures, "copies_uids_shards_agree", ", ".join(f"{k}={v}" for k, v in figures.items()))
    counts = report.get("counts") or {}
    if counts.get("samples", 0) != len(rows) or counts.get("kept", 0) != len(kept):
        _fail(failures, "report_counts", f"report counts {counts} vs {len(rows)} rows, {len(kept)} kept")
    if uids is not None:
        try:
            from beam_filter.uids import uid_to_pair

            want = sorted(uid_to_pair(r["uid"]) for r in kept for _ in range(int(r.get("copies") or 0)))
            got = sorted((int(a), int(b)) for a, b in uids.tolist())
            if want != got:
                _fail(failures, "uids_npy_matches_rows", f"{len(got)} uids in uids.npy, {len(want)} expected; "
                                                         f"first difference near {next((x for x in zip(want, got) if x[0] != x[1]), None)}")
        except ValueError as e:
            _fail(failures, "kept_uid_is_hex", f"a kept row's uid cannot go in uids.npy: {e}")
    want_keys = Counter()
    for r in kept:
        c = int(r.get("copies") or 0)
        if c <= 1:
            want_keys[r.get("key")] += 1
        else:
            for j in range(c):
                want_keys[f"{r.get('uid')}-{j}"] += 1
    got_keys = Counter(k for k, _ in out_groups)
    if want_keys != got_keys:
        missing = list((want_keys - got_keys).elements())[:5]
        extra = list((got_keys - want_keys).elements())[:5]
        _fail(failures, "output_keys_are_kept_rows", f"kept but not written: {missing!r}; written but not kept: {extra!r}")
    return failures


def _check_groups(name: str, sm: dict, srows: list[dict], out_names: dict, failures: list) -> None:
    by_key = {r.get("key"): r for r in srows}
    uid_count = Counter(r.get("uid") for r in srows)
    need_reason: Counter = Counter()
    need_dropped = 0
    for g in sm["groups"]:
        exp = g.get("expect") or {}
        rk = g["row_key"]
        row = by_key.get(rk) if encodable(rk) else None
        if row is None and g["safe"] and encodable(rk):
            _fail(failures, "row_for_every_group", f"{name}: no row with key {rk!r} "
                                                   f"({exp.get('kinds') or 'untouched'})", shard=name)
        uid = exp.get("match_uid")
        if row is None and uid and uid_count.get(uid) == 1:
            row = next(r for r in srows if r.get("uid") == uid)
        if exp.get("kept") is False:
            need_dropped += 1
        for reason in exp.get("reason_in") or ():
            need_reason[reason] += 1
        if row is None:
            continue
        what = f"{name}:{rk!r} {exp.get('kinds')} {exp.get('note', '')}".rstrip()
        if exp.get("kept") is False and row.get("kept"):
            _fail(failures, "expected_dropped", f"{what}: kept", shard=name)
        if exp.get("kept") is True and not row.get("kept"):
            _fail(failures, "expected_kept", f"{what}: dropped with reason {row.get('reason')!r}", shard=name)
        if exp.get("reason_in") and (row.get("kept") or row.get("reason") not in exp["reason_in"]):
            _fail(failures, "expected_reason", f"{what}: reason {row.get('reason')!r} (kept={row.get('kept')}), "
                                               f"expected {exp['reason_in']}", shard=name)
        if row.get("kept") and int(row.get("copies") or 0) == 1 and g["names"]:
            out_key = row.get("key")
            want = sorted({out_key + n[len(g["key"]):] for n in g["names"]})
            got = sorted(set(out_names.get(out_key, [])))
            if got and want != got:
                _fail(failures, "output_member_names", f"{what}: written as {got!r}, expected {want!r}", shard=name)
    dropped = sum(1 for r in srows if not r.get("kept"))
    if dropped < need_dropped:
        _fail(failures, "expected_dropped", f"{name}: {dropped} dropped rows, at least {need_dropped} expected", shard=name)
    reasons = Counter(r.get("reason") for r in srows if not r.get("kept"))
    for reason, n in need_reason.items():
        if reasons.get(reason, 0) < n:
            _fail(failures, "expected_reason", f"{name}: {reasons.get(reason, 0)} rows with reason {reason!r}, "
                                               f"at least {n} expected", shard=name)


# ---------------------------------------------------------------------------------------------
# Campaign
# ---------------------------------------------------------------------------------------------

class Campaign:
    def __init__(self, workdir: str, seed: int, recipe: str = "quickstart", timeout: float = DEFAULT_TIMEOUT,
                 minimize: bool = True, log=print, cli_args: tuple = ()):
        self.workdir = os.path.abspath(workdir)
        self.seed = seed
        self.recipe = recipe
        self.cli_args = tuple(cli_args)
        self.timeout = timeout
        self.minimize = minimize
        self.log = log
        self.pools = os.path.join(self.workdir, "pools")
        self.failures_dir = os.path.join(self.workdir, "failures")
        self.run_dir = os.path.join(self.workdir, "run")
        self.failures: list[dict] = []
        self.known_bad: set[str] = set()       # kinds with a saved one-mutation failing case
        self.pending: list = []                # failing iterations waiting to be minimised
        self._deadline = float("inf")
        self.iterations = 0
        self.kind_counts: Counter = Counter()
        os.makedirs(self.pools, exist_ok=True)
        shutil.rmtree(self.failures_dir, ignore_errors=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        os.makedirs(self.failures_dir)

    def execute(self, plan: dict) -> tuple[dict, list[dict], dict]:
        """Build, run and check one plan in ``run/``; return (model, failures, run info)."""
        shutil.rmtree(self.run_dir, ignore_errors=True)
        input_dir = os.path.join(self.run_dir, "in")
        out_dir = os.path.join(self.run_dir, "out")
        model = build_case(plan, self.pools, input_dir, expect_kept=self.recipe == "quickstart")
        cmd = cli_command(self.recipe, os.path.join(input_dir, "*.tar"), out_dir, self.cli_args)
        before = snapshot(self.workdir, out_dir)
        rc, stdout, stderr, seconds = run_cli(cmd, self.run_dir, self.timeout)
        after = snapshot(self.workdir, out_dir)
        failures = check(model, rc, stdout, stderr, out_dir, before, after)
        return model, failures, {"rc": rc, "stdout": stdout, "stderr": stderr, "seconds": round(seconds, 1)}

    def save(self, plan: dict, model: dict, failures: list[dict], run: dict, minimal: bool) -> str:
        n = len(self.failures) + 1
        d = os.path.join(self.failures_dir, str(n))
        os.makedirs(d)
        shutil.copytree(os.path.join(self.run_dir, "in"), os.path.join(d, "input"), symlinks=True)
        case = {"seed": self.seed, "recipe": self.recipe, "cli_args": list(self.cli_args), "plan": plan, "model": model, "failures": failures,
                "rc": run["rc"], "seconds": run["seconds"], "minimal": minimal}
        with open(os.path.join(d, "case.json"), "w", encoding="utf-8") as f:
            json.dump(case, f, indent=1, ensure_ascii=True)
        for stream in ("stdout", "stderr"):
            with open(os.path.join(d, f"{stream}.txt"), "w", encoding="utf-8") as f:
                f.write(run[stream])
        with open(os.path.join(d, "repro.sh"), "w") as f:
            import shlex

            cmd = cli_command(self.recipe, "input/*.tar", "out", self.cli_args)
            f.write("#!/bin/sh\n# Rerun the CLI on this case's input; `python tests/faults/fuzz.py --replay DIR` "
                    "also rechecks the invariants.\n"
                    'cd "$(dirname "$0")" && rm -rf out && BEAM_FILTER_OFFLINE=1 HF_HUB_OFFLINE=1 '
                    + " ".join(shlex.quote(a) for a in cmd) + "\n")
        os.chmod(os.path.join(d, "repro.sh"), 0o755)
        entry = {"n": n, "path": d, "kinds": sorted({m["kind"] for m in plan["mutations"]}),
                 "iteration": plan["iteration"], "minimal": minimal, "failures": failures,
                 "mutations": plan["mutations"]}
        self.failures.append(entry)
        return d

    def iterate(self, iteration: int, deadline: float) -> None:
        plan = plan_iteration(self.seed, iteration, self.pools)
        self.kind_counts.update(m["kind"] for m in plan["mutations"])
        try:
            model, failures, run = self.execute(plan)
        except Exception:  # noqa: BLE001 - a bug of the fuzzer itself: record it, keep going
            import traceback

            detail = traceback.format_exc()
            self.log(f"[{iteration}] FUZZER ERROR (not a beam-filter failure):\n{detail}")
            self.failures.append({"n": len(self.failures) + 1, "path": None, "kinds": [], "iteration": iteration,
                                  "minimal": False, "mutations": plan["mutations"],
                                  "failures": [{"invariant": "fuzzer_internal_error", "detail": detail}]})
            return
        self.iterations += 1
        kinds = sorted({m["kind"] for m in plan["mutations"]})
        status = "ok" if not failures else "FAIL " + ",".join(sorted({f["invariant"] for f in failures}))
        self.log(f"[{iteration}] {run['seconds']:5.1f}s rc={run['rc']} shards={len(plan['shards'])} "
                 f"mutations={len(plan['mutations'])} {status}")
        if not failures:
            return
        minimal = len(plan["mutations"]) <= 1
        path = self.save(plan, model, failures, run, minimal)
        if minimal:
            if plan["mutations"]:
                self.known_bad.add(plan["mutations"][0]["kind"])
            return
        if self.minimize:
            self.pending.append((plan, failures, path))

    def minimize_pending(self, deadline: float) -> None:
        """Minimise the failing iterations queued so far (cover iterations are all run first)."""
        self._deadline = deadline
        while self.pending and time.time() < deadline:
            plan, failures, path = self.pending.pop(0)
            # Suspects: the mutations of the shards the failures name (all of them for a run-wide failure).
            named = {f.get("shard") for f in failures}
            muts = plan["mutations"]
            if None in named:
                # A run-wide failure (a crash...): first make sure an unmutated shard runs clean.
                control = self._attempt(plan, [])
                if control is None:
                    break
                if control[2]:
                    d = self.save(control[0], control[1], control[2], control[3], True)
                    self.log(f"    fails with no mutation at all -> {d}: {control[2][0]['detail'].splitlines()[0][:160]}")
                    continue
            suspects = muts if None in named else [m for m in muts if m.get("shard") in named or m["level"] == "input"]
            self.log(f"  minimising iteration {plan['iteration']} ({path}): {len(suspects)} of {len(muts)} mutations")
            rest = [m for m in suspects if m["kind"] not in self.known_bad]
            if not rest:
                self.log("    explained by kinds already known to fail alone")
                continue
            if len(rest) < len(suspects):
                result = self._attempt(plan, rest)
                if result is None:
                    break
                if not result[2]:
                    self.log("    explained by kinds already known to fail alone")
                    continue
                self._bisect(plan, rest, result)
            else:
                self._bisect(plan, rest, None)
        if self.pending and time.time() >= deadline:
            self.log(f"  out of time: {len(self.pending)} failing iterations not minimised")
            self.pending.clear()

    def _attempt(self, plan: dict, muts: list[dict]):
        """Run ``plan`` restricted to ``muts`` (and the shards they touch); None when out of time."""
        if time.time() > self._deadline:
            self.log("    (out of time: minimisation stopped)")
            return None
        sub = self.sub_plan(plan, muts)
        model, failures, run = self.execute(sub)
        return sub, model, failures, run

    def _bisect(self, plan: dict, muts: list[dict], result) -> None:
        """Delta debugging: find the single mutations that fail on their own, halving the suspects."""
        if len(muts) == 1:
            result = result or self._attempt(plan, muts)
            if result is None or not result[2]:
                return
            sub, model, failures, run = result
            self.known_bad.add(muts[0]["kind"])
            d = self.save(sub, model, failures, run, True)
            self.log(f"    {muts[0]['kind']} fails alone -> {d}: "
                     + "; ".join(f"{f['invariant']}: {f['detail'].splitlines()[0][:120]}" for f in failures[:2]))
            return
        half = len(muts) // 2
        found = False
        for part in (muts[:half], muts[half:]):
            part = [m for m in part if m["kind"] not in self.known_bad] or part
            r = self._attempt(plan, part)
            if r is None:
                return
            if r[2]:
                found = True
                self._bisect(plan, part, r)
        if not found:
            r = self._attempt(plan, muts)
            if r is not None and r[2]:
                d = self.save(r[0], r[1], r[2], r[3], False)
                self.log(f"    {len(muts)} mutations fail only together -> {d}")

    @staticmethod
    def sub_plan(plan: dict, muts: list[dict]) -> dict:
        names = {m["shard"] for m in muts if m.get("shard")}
        shards = [s for s in plan["shards"] if s["name"] in names] or plan["shards"][:1]
        return {"seed": plan["seed"], "iteration": plan["iteration"],
                "minimised_from": [plan["mutations"].index(m) for m in muts],
                "pool_seed": plan["pool_seed"], "shards": copy.deepcopy(shards), "mutations": copy.deepcopy(muts)}

    def run(self, seconds: float, max_iterations: int | None = None, cover_only: bool = False) -> list[dict]:
        start = time.time()
        deadline = start + seconds
        i = 0
        while True:
            if cover_only and i >= COVER_ITERATIONS:
                break
            if max_iterations is not None and i >= max_iterations:
                break
            if not cover_only and i > 0 and time.time() >= deadline:
                break
            self.iterate(i, deadline if not cover_only else float("inf"))
            if i >= COVER_ITERATIONS - 1:
                self.minimize_pending(deadline)
            i += 1
        self.minimize_pending(deadline)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return self.failures

    def summary(self) -> str:
        lines = [f"fuzz: seed {self.seed}, {self.iterations} iterations, {len(self.failures)} failing cases "
                 f"(workdir {self.workdir})"]
        missing = [k for k in KINDS if not self.kind_counts.get(k)]
        if missing:
            lines.append(f"kinds not exercised: {', '.join(missing)}")
        minimal = [f for f in self.failures if f["minimal"]]
        if minimal:
            lines.append("minimal failing cases (one mutation each; rerun: python tests/faults/fuzz.py --replay PATH):")
        for f in minimal:
            invariants = ", ".join(dict.fromkeys(x["invariant"] for x in f["failures"]))
            first = f["failures"][0]["detail"].splitlines()[0][:220]
            lines.append(f"  {'+'.join(f['kinds']) or '(no mutation)'} -> {invariants}: {first}  [{f['path']}]")
        others = [f for f in self.failures if not f["minimal"]]
        if others:
            lines.append("failing iterations with several mutations:")
            for f in others:
                lines.append(f"  iteration {f['iteration']} [{f['path']}]:")
                for x in f["failures"][:5]:
                    lines.append(f"    {x['invariant']}: {x['detail'].splitlines()[0][:200]}")
                if len(f["failures"]) > 5:
                    lines.append(f"    ... {len(f['failures']) - 5} more in case.json")
        return "\n".join(lines)


def replay(case_dir: str, timeout: float) -> int:
    """Rerun the CLI on a saved case's input and check it against the saved model."""
    with open(os.path.join(case_dir, "case.json"), encoding="utf-8") as f:
        case = json.load(f)
    work = os.path.abspath(os.path.join(case_dir, "replay"))
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(os.path.join(case_dir, "input"), os.path.join(work, "in"), symlinks=True)
    out_dir = os.path.join(work, "out")
    cmd = cli_command(case.get("recipe", "quickstart"), os.path.join(work, "in", "*.tar"), out_dir,
                      tuple(case.get("cli_args", ())))
    before = snapshot(work, out_dir)
    rc, stdout, stderr, seconds = run_cli(cmd, work, timeout)
    after = snapshot(work, out_dir)
    failures = check(case["model"], rc, stdout, stderr, out_dir, before, after)
    print(f"replay {case_dir}: rc={rc} in {seconds:.1f}s, output in {out_dir}")
    for x in failures:
        print(f"  FAIL {x['invariant']}: {x['detail']}")
    print("  all invariants hold" if not failures else f"  {len(failures)} failures")
    return 1 if failures else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=300, help="stop starting iterations after this long")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="fuzz_out")
    p.add_argument("--recipe", default="quickstart")
    p.add_argument("--cli-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `beam-filter run` (repeatable), e.g. --cli-arg=--test-models=DIR")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per CLI run")
    p.add_argument("--max-iterations", type=int)
    p.add_argument("--cover-only", action="store_true", help="only the iterations that cover every kind")
    p.add_argument("--no-minimize", action="store_true")
    p.add_argument("--replay", metavar="CASE_DIR", help="rerun a saved failure case and recheck it")
    args = p.parse_args(argv)
    if args.replay:
        return replay(args.replay, args.timeout)
    campaign = Campaign(args.workdir, args.seed, args.recipe, args.timeout, minimize=not args.no_minimize,
                        log=lambda s: print(s, flush=True), cli_args=tuple(args.cli_arg))
    campaign.run(args.seconds, args.max_iterations, args.cover_only)
    print(campaign.summary())
    with open(os.path.join(campaign.workdir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump({"seed": args.seed, "iterations": campaign.iterations, "failures": campaign.failures},
                  f, indent=1, ensure_ascii=True)
    return 1 if campaign.failures else 0


if __name__ == "__main__":
    sys.exit(main())
