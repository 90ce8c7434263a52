"""``beam-filter make-sample``: a small, realistic img2dataset/DataComp pool with known ground truth.

The demo, most tests and the checkers' held-out pool run on what this module
writes, so it has two duties beyond looking like real data:

* **Determinism.** Every byte follows from ``seed`` alone: each sample draws
  from its own random stream (``numpy`` ``SeedSequence([seed, stream, index])``),
  tar headers are fixed (mtime 0, uid/gid 0, empty owner names, mode 0644, GNU
  format), json and parquet are written in a fixed order. Two runs with one seed
  give byte-identical files; ``broken_shards`` only *adds* files, the good shards
  are the same with or without it.
* **Known answers.** ``ground_truth.json`` says what every sample is (clean
  English, other language, junk/code-like/short caption, tiny or extreme-aspect
  image, exact or near duplicate of which uid and by what transform, which kind
  of damage), so a test can check a filter against the truth instead of against
  itself.

Layout (what img2dataset writes, with DataComp's json fields): shards
``{:08d}.tar`` holding ``key.jpg|png|webp``, ``key.txt``, ``key.json`` sorted by
key then extension, keys ``{shard:05d}{index:04d}``; ``{:08d}_stats.json``;
``{:08d}.parquet`` (uid, url, text, original_width, original_height, sha256,
key). The parquet describes the tar *as stored*: ``uid`` is the uid a reader
finds (derived from shard and key where the json has none or cannot be parsed,
as :func:`beam_filter.uids.stable_uid` does), ``text`` is the decoded caption
(null when missing or not UTF-8).

Images are synthetic but perceptually distinct: every picture starts from a
random low-resolution colour field (the low frequencies a perceptual hash sees)
and adds gradients, textures, shapes and text-like blocks. Captions come from a
small English grammar (``devtools/sample_data/english_grammar.json``) and from
hand-written sentences in nine other languages
(``devtools/sample_data/other_language_captions.json``) that fastText lid.176 labels
correctly.

The whole pool is planned first (categories, captions, sizes, duplicate
sources: cheap), then rendered and written shard by shard, so memory stays
bounded by one shard plus a small cache of duplicate originals (re-rendered
on a cache miss, which gives the same bytes).

Import cost is kept low (numpy, Pillow, pyarrow; no Beam) so ``make-sample``
starts fast; the tar header rules therefore live here as well as in
``beam_filter.tar_io.tar_bytes_member``, which writes the same fields.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from beam_filter import fsio
from beam_filter.errors import UserError
from beam_filter.uids import stable_uid

GENERATOR_VERSION = 1

# Target mix (fractions of ``samples``). Quotas are rounded by largest remainder.
CATEGORY_SHARES = {
    "clean_en": 0.55,
    "other_lang": 0.10,
    "junk": 0.03,
    "code_like": 0.03,
    "short": 0.02,
    "tiny": 0.025,
    "extreme_aspect": 0.025,
    "exact_dup_of": 0.08,
    "near_dup_of": 0.10,
    "corrupt": 0.04,
}
# Damage kinds, assigned round-robin to the corrupt quota (category "corrupt_<kind>").
CORRUPT_KINDS = ("truncated_jpeg", "random_bytes", "zero_byte", "missing_txt", "bad_utf8",
                 "bad_json", "no_uid")
# Below this many samples the minimum of one sample per category (and one per
# damage kind) is not enforced: a 10-sample pool simply follows the shares.
_MIN_FOR_ALL_CATEGORIES = 60

JUNK_CAPTIONS = ("image", "nan", "untitled image", "avatar", "photo", "thumbnail", "product image",
                 "no title", "user avatar", "gallery image", "front cover", "main product photo",
                 "image 1", "logo", "profile photo", "undefined", "cover")
SHORT_CAPTIONS = ("cat", "a b", "dog", "sunset", "red car", "my garden", "beach", "flowers", "tree",
                  "new shoes", "home", "winter", "wedding day", "kitchen", "hi")
# File names, camera codes and ids, as scraped alt-texts often are ({dN} = N random digits).
CODE_TEMPLATES = ("IMG_{d4}.JPG", "DSC{d5}", "DSC_{d4}.jpg", "IMG_{date}_{time}", "{date}_{time}.jpg",
                  "P10{d5}.JPG", "DSCN{d4}", "photo-{d4}_{d2}.png", "image-{d5}.jpeg", "CIMG{d4}.JPG",
                  "IMGP{d4}", "thumbnail_{d4}", "item_{d6}", "{d8}_{d6}_n.jpg", "unnamed ({d1})")

# Streams: each part of the generator draws from its own seeded stream.
_STREAM = {"plan": 1, "uid": 2, "text": 3, "size": 4, "image": 5, "dup": 6, "transform": 7, "damage": 8,
           "broken": 9}


def _rng(seed: int, stream: str, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAM[stream], index])


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------

def make_sample(output_dir: str, samples: int = 240, seed: int = 0, shard_size: int = 60,
                broken_shards: bool = False) -> dict:
    """Write a pool of ``samples`` samples to ``output_dir``; return the manifest.

    The manifest (also written to ``output_dir/ground_truth.json``) holds
    ``samples`` (the count), ``shards`` (good shard file names), ``records``
    (one dict per sample: uid, shard, key, category, caption, lang, ext, sizes,
    sha256, duplicate_of, transform), ``counts`` per category, and
    ``broken_shards`` (file-level damage, each with its own records).
    """
    if not isinstance(samples, int) or samples <= 0:
        raise UserError(f"samples must be a positive integer, got {samples!r}")
    if not isinstance(shard_size, int) or shard_size <= 0:
        raise UserError(f"shard_size must be a positive integer, got {shard_size!r}")
    if not isinstance(seed, int) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    if fsio.is_remote(output_dir):
        raise UserError(f"make-sample writes to a local directory, not {output_dir}")
    os.makedirs(output_dir, exist_ok=True)

    n_shards = -(-samples // shard_size)
    layout = _KeyLayout(n_shards + 2, shard_size)
    specs = _plan_pool(samples, seed, shard_size, layout)
    images = _SourceImages(seed)
    shards = []
    for shard_index in range(n_shards):
        group = specs[shard_index * shard_size:(shard_index + 1) * shard_size]
        for s in group:
            _render(s, seed, images)
            _assemble(s, _rng(seed, "damage", s.position))
        shards.append(_write_shard(output_dir, shard_index, group))
        for s in group:          # only the ground truth stays in memory
            s.release()

    broken = _write_broken_shards(output_dir, seed, n_shards, shard_size, layout) if broken_shards else []

    counts: dict[str, int] = {}
    for s in specs:
        counts[s.category] = counts.get(s.category, 0) + 1
    manifest = {
        "generator": "beam_filter.devtools.sample_pool",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "samples": samples,
        "shard_size": shard_size,
        "shards": shards,
        "counts": dict(sorted(counts.items())),
        "broken_shards": broken,
        "records": [s.record() for s in specs],
    }
    with open(os.path.join(output_dir, "ground_truth.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=1)
        f.write("\n")
    return manifest


# ---------------------------------------------------------------------------------------------
# Planning: categories, positions, keys
# ---------------------------------------------------------------------------------------------

def category_quotas(samples: int) -> dict[str, int]:
    """How many samples of each category a pool of ``samples`` gets (corrupt kinds expanded).

    Largest-remainder rounding of :data:`CATEGORY_SHARES`; from
    ``_MIN_FOR_ALL_CATEGORIES`` samples on, every category and every damage kind
    gets at least one sample (taken from clean_en), so tests always find them.
    """
    raw = {c: samples * share for c, share in CATEGORY_SHARES.items()}
    quota = {c: int(v) for c, v in raw.items()}
    by_remainder = sorted(raw, key=lambda c: (-(raw[c] - quota[c]), list(raw).index(c)))
    for c in by_remainder[: samples - sum(quota.values())]:
        quota[c] += 1
    if samples >= _MIN_FOR_ALL_CATEGORIES:
        for c in quota:
            want = len(CORRUPT_KINDS) if c == "corrupt" else 1
            if quota[c] < want:
                quota["clean_en"] -= want - quota[c]
                quota[c] = want
    corrupt = quota.pop("corrupt")
    for i in range(corrupt):
        kind = f"corrupt_{CORRUPT_KINDS[i % len(CORRUPT_KINDS)]}"
        quota[kind] = quota.get(kind, 0) + 1
    return {c: q for c, q in quota.items() if q > 0}


class _KeyLayout:
    """img2dataset key format: shard id and in-shard index, zero-padded (5 + 4 digits by default)."""

    def __init__(self, n_shards: int, shard_size: int):
        self.shard_digits = max(5, len(str(n_shards - 1)))
        self.index_digits = max(4, len(str(shard_size - 1)))

    def key(self, shard_index: int, index: int) -> str:
        return f"{shard_index:0{self.shard_digits}d}{index:0{self.index_digits}d}"


@dataclass
class _Spec:
    """One sample: planned first (text, sizes, duplicate source), rendered when its shard is written."""

    position: int
    category: str
    shard_index: int
    key: str
    uid: str
    caption: str | None = None
    lang: str | None = None
    url: str = ""
    ext: str = "jpg"
    quality: int = 85
    width: int = 0
    height: int = 0
    original_width: int = 0
    original_height: int = 0
    source: "_Spec | None" = None                  # the original of a duplicate
    transform: dict | None = None
    image: bytes = b""                             # encoded image as stored (after damage)
    sha256: str = ""
    members: dict = field(default_factory=dict)   # ext -> bytes, as stored in the tar
    reader_uid: str = ""                           # the uid a reader finds (differs when json is damaged)
    reader_caption: str | None = None              # the caption a reader finds

    @property
    def shard_name(self) -> str:
        return f"{self.shard_index:08d}.tar"

    def release(self) -> None:
        self.image, self.members = b"", {}

    def record(self) -> dict:
        return {
            "uid": self.reader_uid or self.uid,
            "shard": self.shard_name,
            "key": self.key,
            "category": self.category,
            "caption": self.reader_caption,
            "lang": self.lang,
            "ext": self.ext,
            "width": self.width,
            "height": self.height,
            "original_width": self.original_width,
            "original_height": self.original_height,
            "sha256": self.sha256,
            "duplicate_of": self.source.uid if self.source else None,
            "transform": self.transform,
        }


_DUPLICATES = ("exact_dup_of", "near_dup_of")


def _plan_pool(samples: int, seed: int, shard_size: int, layout: _KeyLayout) -> list[_Spec]:
    """Every sample's category, place, caption, url, size and duplicate source (no pixels yet).

    Planning is cheap, so the whole pool is planned up front and images are
    rendered shard by shard: memory stays bounded by one shard.
    """
    quotas = category_quotas(samples)
    categories = [c for c, q in quotas.items() for _ in range(q)]
    order = _rng(seed, "plan").permutation(len(categories))
    specs = []
    for position, idx in enumerate(order):
        shard_index, index = divmod(position, shard_size)
        uid = _rng(seed, "uid", position).bytes(16).hex()
        specs.append(_Spec(position, categories[idx], shard_index, layout.key(shard_index, index), uid))

    sources = [s for s in specs if s.category == "clean_en"]
    for s in specs:
        if s.category in _DUPLICATES and not sources:
            s.category = "clean_en"     # a pool too small to hold an original: a plain sample instead
    for s in specs:
        if s.category not in _DUPLICATES:
            _plan_base(s, _rng(seed, "text", s.position), _rng(seed, "size", s.position))
    sources = [s for s in specs if s.category == "clean_en"]
    # Near copies prefer originals big enough that the smaller copy still passes size filters.
    big = [s for s in sources if min(s.width, s.height) >= 300] or sources
    for s in specs:
        if s.category in _DUPLICATES:
            _plan_duplicate(s, sources if s.category == "exact_dup_of" else big, _rng(seed, "dup", s.position))
    return specs


def _plan_base(s: _Spec, text_rng: np.random.Generator, size_rng: np.random.Generator) -> None:
    """Caption, url, format and sizes of a sample that is not a duplicate."""
    cat = s.category
    rng = text_rng
    if cat == "other_lang":
        s.lang, s.caption = other_language_caption(rng)
    elif cat == "junk":
        s.caption = _case_variant(rng, _pick(rng, JUNK_CAPTIONS))
    elif cat == "code_like":
        s.caption = code_like_caption(rng)
    elif cat == "short":
        s.caption = _pick(rng, SHORT_CAPTIONS)
    else:   # clean_en, tiny, extreme_aspect and the corrupt kinds carry clean English captions
        s.lang, s.caption = "en", english_caption(rng)

    rng = size_rng
    if cat == "tiny":
        s.width, s.height = _tiny_size(rng)
    elif cat == "extreme_aspect":
        s.width, s.height = _extreme_size(rng)
    else:
        s.width, s.height = _clean_size(rng)
    s.original_width, s.original_height = s.width, s.height
    if cat != "tiny" and rng.random() < 0.25:
        # img2dataset stored a downscaled copy; the json keeps the size it found online.
        f = float(_pick(rng, (1.25, 1.5, 2.0, 2.5, 3.0, 4.0)))
        s.original_width, s.original_height = round(s.width * f), round(s.height * f)
    if cat == "corrupt_truncated_jpeg":
        s.ext = "jpg"   # the damage needs a JPEG to cut
    else:
        s.ext = str(rng.choice(["jpg", "png", "webp"], p=[0.86, 0.07, 0.07]))
    s.quality = int(rng.integers(55, 96))
    s.url = make_url(rng, s.caption, s.ext)


def _plan_duplicate(s: _Spec, sources: list[_Spec], rng: np.random.Generator) -> None:
    """An exact copy (same bytes and caption) or a near copy (new pixels, often a new caption)."""
    src = s.source = _pick(rng, sources)
    if s.category == "exact_dup_of":
        s.caption, s.lang, s.ext = src.caption, src.lang, src.ext
        s.width, s.height = src.width, src.height
        s.original_width, s.original_height = src.original_width, src.original_height
    else:
        s.ext = "jpg"
        if rng.random() < 0.5:
            s.caption, s.lang = src.caption, src.lang
        else:
            s.caption, s.lang = english_caption(rng), "en"
    s.url = make_url(rng, s.caption, s.ext)


class _SourceImages:
    """Encoded images of duplicate originals, re-rendered on demand (renders are deterministic).

    A small cache avoids most re-renders without holding the pool in memory.
    """

    def __init__(self, seed: int, capacity: int = 256):
        self.seed, self.capacity = seed, capacity
        self._cache: dict[int, bytes] = {}

    def get(self, s: _Spec) -> bytes:
        data = self._cache.pop(s.position, None)
        if data is None:
            data = _render_base(s, self.seed)
        self._cache[s.position] = data
        if len(self._cache) > self.capacity:
            del self._cache[next(iter(self._cache))]
        return data


def _render_base(s: _Spec, seed: int) -> bytes:
    return encode_image(render_image(_rng(seed, "image", s.position), s.width, s.height), s.ext, s.quality)


def _render(s: _Spec, seed: int, images: _SourceImages) -> None:
    """Pixels of one planned sample: its own picture, or a copy of its source's."""
    if s.category == "exact_dup_of":
        s.image = images.get(s.source)
    elif s.category == "near_dup_of":
        with Image.open(io.BytesIO(images.get(s.source))) as src:
            img, s.transform = near_duplicate(src, _rng(seed, "transform", s.position))
        s.image = encode_image(img, "jpg", s.transform["quality"])
        s.width, s.height = img.size
        s.original_width, s.original_height = img.size
    else:
        s.image = _render_base(s, seed)


def _sample_data(name: str) -> str:
    """A file of ``beam_filter/devtools/sample_data/`` (package data: shipped with the wheel)."""
    return resources.files("beam_filter.devtools").joinpath("sample_data", name).read_text("utf-8")


@functools.lru_cache(maxsize=1)
def _english_grammar() -> dict:
    return json.loads(_sample_data("english_grammar.json"))


@functools.lru_cache(maxsize=1)
def _other_language_sentences() -> dict[str, list[str]]:
    data = json.loads(_sample_data("other_language_captions.json"))
    return {k: v for k, v in sorted(data.items()) if k != "note"}


_SLOT = re.compile(r"\{(\w+)\}")
_SMALL_WORDS = frozenset("a an the of in on at with and for to by over through from after during under "
                         "across along or near into".split())


def _expand(rng: np.random.Generator, template: str, grammar: dict, depth: int = 0) -> str:
    if depth > 5:
        raise ValueError(f"english grammar recursion too deep at {template!r}")
    return _SLOT.sub(lambda m: _expand(rng, _pick(rng, grammar[m.group(1)]), grammar, depth + 1), template)


def _english_clause(rng: np.random.Generator) -> str:
    g = _english_grammar()
    weights = np.array([w for w, _ in g["caption"]], dtype=float)
    template = g["caption"][int(rng.choice(len(weights), p=weights / weights.sum()))][1]
    return _expand(rng, template, g)


def _sentence_case(text: str) -> str:
    return text[:1].upper() + text[1:]


def _title_case(text: str) -> str:
    words = text.split(" ")
    if len(words) > 3 and words[0].lower() in ("a", "an", "the"):
        words = words[1:]
    return " ".join(w if (i and w in _SMALL_WORDS) else _sentence_case(w) for i, w in enumerate(words))


def english_caption(rng: np.random.Generator) -> str:
    """A realistic English alt-text: one clause (most), or two clauses and a remark (long ones)."""
    g = _english_grammar()
    u = rng.random()
    if u < 0.80:
        text = _english_clause(rng)
        style = rng.random()
        if style < 0.55:
            text = _sentence_case(text)
        elif style < 0.80:
            text = _title_case(text)
        elif style < 0.92:
            text = text.lower()
        else:
            text = _sentence_case(text)
        if rng.random() < 0.12:
            text += _pick(rng, g["suffix"])
        if style >= 0.92:
            text += "."
        return text
    parts = [_sentence_case(_english_clause(rng)) + ".", _sentence_case(_english_clause(rng)) + "."]
    if u > 0.93:
        parts = parts[:1] + [_pick(rng, g["extra_sentence"])]
    elif rng.random() < 0.5:
        parts.append(_pick(rng, g["extra_sentence"]))
    return " ".join(parts)


def other_language_caption(rng: np.random.Generator) -> tuple[str, str]:
    """(language code, caption): one sentence, or two sentences of the same language."""
    sentences = _other_language_sentences()
    lang = _pick(rng, sorted(sentences))
    pool = sentences[lang]
    first = int(rng.integers(len(pool)))
    if rng.random() < 0.3:
        second = (first + 1 + int(rng.integers(len(pool) - 1))) % len(pool)
        sep = "" if lang in ("zh", "ja") else " "
        return lang, pool[first] + sep + pool[second]
    return lang, pool[first]


def code_like_caption(rng: np.random.Generator) -> str:
    """A file name or camera code such as ``IMG_2031.JPG`` or ``DSC00123``."""
    template = _pick(rng, CODE_TEMPLATES)

    def digits(n: int) -> str:
        return "".join(str(int(d)) for d in rng.integers(0, 10, size=n))

    values = {f"d{n}": digits(n) for n in (1, 2, 4, 5, 6, 8)}
    values["date"] = f"20{rng.integers(10, 24)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
    values["time"] = f"{rng.integers(0, 24):02d}{rng.integers(0, 60):02d}{rng.integers(0, 60):02d}"
    return template.format(**values)


def _case_variant(rng: np.random.Generator, text: str) -> str:
    """Junk captions appear as "image", "Image", "IMAGE", "Untitled Image" in the wild."""
    u = rng.random()
    if u < 0.5:
        return text
    if u < 0.8:
        return _sentence_case(text)
    if u < 0.9:
        return text.title()
    return text.upper()


_SITES = ("travelnotes", "homedecorideas", "dailyrecipes", "cityguide", "petlovers", "outdoorjournal",
          "fashion-outlet", "localnews24", "gardenersworld", "artprints")


def make_url(rng: np.random.Generator, caption: str | None, ext: str) -> str:
    """A plausible image URL (blog uploads, shop CDNs, pin boards, stock sites, wikis)."""
    words = re.findall(r"[a-z0-9]+", (caption or "").lower())[:6]
    slug = "-".join(words) or rng.bytes(6).hex()
    site = _pick(rng, _SITES)
    year, month = int(rng.integers(2008, 2024)), int(rng.integers(1, 13))
    n = int(rng.integers(1, 10**9))
    style = int(rng.integers(6))
    if style == 0:
        return f"https://www.{site}.com/wp-content/uploads/{year}/{month:02d}/{slug}.{ext}"
    if style == 1:
        return (f"https://cdn.shopify.com/s/files/1/{n % 10000:04d}/{n // 10000 % 10000:04d}/products/"
                f"{slug.replace('-', '_')}_{_pick(rng, (480, 800, 1024))}x.{ext}")
    if style == 2:
        h = rng.bytes(16).hex()
        return f"https://i.pinimg.com/736x/{h[:2]}/{h[2:4]}/{h[4:6]}/{h}.{ext}"
    if style == 3:
        return f"https://images.{site}.com/photos/{year}/{month:02d}/{slug}-{n}.{ext}"
    if style == 4:
        title = "_".join(w.capitalize() for w in slug.split("-"))
        h = hashlib.md5(title.encode()).hexdigest()
        return (f"https://upload.wikimedia.org/wikipedia/commons/thumb/{h[0]}/{h[:2]}/{title}.{ext}/"
                f"640px-{title}.{ext}")
    return f"http://static.{site}.net/img/{n}.{ext}"


def _clean_size(rng: np.random.Generator) -> tuple[int, int]:
    """Stored size of an ordinary sample: short side 200..1024 (mostly small), common aspects."""
    short = 200 + int(824 * rng.random() ** 2.5)
    aspect = float(_pick(rng, (1.0, 1.0, 4 / 3, 3 / 2, 16 / 9, 5 / 4, 2.0)))
    long = min(1024, round(short * aspect))
    return (long, short) if rng.random() < 0.6 else (short, long)


def _tiny_size(rng: np.random.Generator) -> tuple[int, int]:
    """Thumbnails and icons: short side 32..199, so size filters drop them."""
    short = int(rng.integers(32, 200))
    long = min(1024, round(short * float(rng.uniform(1.0, 1.6))))
    return (long, short) if rng.random() < 0.5 else (short, long)


def _extreme_size(rng: np.random.Generator) -> tuple[int, int]:
    """Banners and strips (3.5:1 .. 5:1) whose short side is still >= 200."""
    ratio = float(_pick(rng, (3.5, 4.0, 5.0)))
    short = int(rng.integers(200, int(1024 / ratio) + 1))
    long = round(short * ratio)
    return (long, short) if rng.random() < 0.6 else (short, long)


def _random_color(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, size=3))


def render_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A synthetic RGB picture: colour field, then a texture, shapes, text-like blocks and grain.

    The random low-resolution colour field decides the low spatial frequencies,
    so two pictures are far apart in pHash unless one was derived from the other.
    """
    grid = rng.integers(0, 256, size=(int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3), dtype=np.uint8)
    img = Image.fromarray(grid, "RGB").resize((width, height), Image.BICUBIC)

    texture = rng.random()
    if texture < 0.25:     # linear gradient towards a second colour (mask drawn small, scaled up)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
        proj = xx * np.cos(angle) + yy * np.sin(angle)
        mask = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1.0) * 128
        mask_img = Image.fromarray(mask.astype(np.uint8), "L").resize((width, height), Image.BILINEAR)
        img = Image.composite(Image.new("RGB", (width, height), _random_color(rng)), img, mask_img)
    elif texture < 0.40:   # stripes / waves, tinted between two colours
        angle = rng.uniform(0, 2 * np.pi)
        period = rng.uniform(6, max(8.0, min(width, height) / 4))
        xx = np.arange(width, dtype=np.float32)[None, :] * np.float32(np.cos(angle))
        yy = np.arange(height, dtype=np.float32)[:, None] * np.float32(np.sin(angle))
        wave = np.sin((xx + yy) * np.float32(2 * np.pi / period)) * 127.5 + 127.5
        stripes = ImageOps.colorize(Image.fromarray(wave.astype(np.uint8), "L"),
                                    _random_color(rng), _random_color(rng))
        img = Image.blend(img, stripes, float(rng.uniform(0.15, 0.35)))
    elif texture < 0.55:   # finer cloudy detail
        fine = rng.integers(0, 256, size=(int(rng.integers(8, 20)), int(rng.integers(8, 20)), 3), dtype=np.uint8)
        img = Image.blend(img, Image.fromarray(fine, "RGB").resize((width, height), Image.BICUBIC), 0.3)

    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 10))):
        _draw_shape(draw, rng, width, height)
    if rng.random() < 0.25:
        _draw_text_block(draw, rng, width, height)
    if rng.random() < 0.3:
        grain = rng.normal(0, rng.uniform(2, 8), (height, width, 1)).astype(np.int16)
        arr = np.asarray(img, dtype=np.int16) + grain
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return img


def _draw_shape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int, height: int) -> None:
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    sw, sh = rng.uniform(0.08, 0.5) * width, rng.uniform(0.08, 0.5) * height
    box = [cx - sw / 2, cy - sh / 2, cx + sw / 2, cy + sh / 2]
    fill = _random_color(rng)
    outline = _random_color(rng) if rng.random() < 0.4 else None
    kind = int(rng.integers(5))
    if kind == 0:
        draw.ellipse(box, fill=fill, outline=outline, width=int(rng.integers(1, 5)))
    elif kind == 1:
        draw.rectangle(box, fill=fill, outline=outline, width=int(rng.integers(1, 5)))
    elif kind == 2:
        n = int(rng.integers(3, 7))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        pts = [(cx + sw / 2 * np.cos(a), cy + sh / 2 * np.sin(a)) for a in angles]
        draw.polygon(pts, fill=fill, outline=outline)
    elif kind == 3:
        pts = [(float(rng.uniform(0, width)), float(rng.uniform(0, height))) for _ in range(int(rng.integers(2, 5)))]
        draw.line(pts, fill=fill, width=max(1, int(min(width, height) * rng.uniform(0.005, 0.04))))
    else:
        draw.rounded_rectangle(box, radius=max(1.0, min(sw, sh) / 4), fill=fill, outline=outline)


def _draw_text_block(draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int, height: int) -> None:
    """A light panel with rows of dark 'words': what captions, memes and screenshots look like."""
    x0, y0 = rng.uniform(0, 0.4) * width, rng.uniform(0, 0.6) * height
    x1, y1 = x0 + rng.uniform(0.3, 0.6) * width, y0 + rng.uniform(0.15, 0.4) * height
    light = tuple(int(v) for v in rng.integers(200, 256, size=3))
    dark = tuple(int(v) for v in rng.integers(0, 60, size=3))
    draw.rectangle([x0, y0, x1, y1], fill=light)
    line_h = max(3.0, (y1 - y0) / rng.uniform(3, 8))
    y = y0 + line_h * 0.3
    while y + line_h * 0.6 < y1:
        x = x0 + line_h * 0.3
        while True:
            w = line_h * rng.uniform(0.8, 3.5)
            if x + w > x1 - line_h * 0.3:
                break
            draw.rectangle([x, y, x + w, y + line_h * 0.55], fill=dark)
            x += w + line_h * 0.4
        y += line_h


def encode_image(img: Image.Image, ext: str, quality: int) -> bytes:
    """Encode deterministically (fixed encoder settings; Pillow writes no timestamps)."""
    buf = io.BytesIO()
    if ext == "jpg":
        img.save(buf, format="JPEG", quality=quality)
    elif ext == "png":
        img.save(buf, format="PNG", compress_level=3)
    elif ext == "webp":
        img.save(buf, format="WEBP", quality=min(95, quality), method=1)
    else:
        raise ValueError(f"unknown image extension {ext!r}")
    return buf.getvalue()


def near_duplicate(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """A re-hosted copy: small crop, downscale 50-90%, blur or brightness, re-encoded as JPEG.

    Returns the image and the transform (what a checker needs to judge a
    near-duplicate detector). The scale is kept high enough that the copy's
    short side stays >= 200 where the original allows it.
    """
    img = img.convert("RGB")
    w, h = img.size
    extras = [op for op in ("blur", "crop", "brightness") if rng.random() < 0.5] or [
        _pick(rng, ("blur", "crop", "brightness"))]
    transform: dict = {}
    if "crop" in extras:
        fx, fy = rng.uniform(0.01, 0.05), rng.uniform(0.01, 0.05)
        left, top = int(w * fx * rng.random()), int(h * fy * rng.random())
        right, bottom = w - (int(w * fx) - left), h - (int(h * fy) - top)
        img = img.crop((left, top, right, bottom))
        transform["crop"] = [left, top, w - right, h - bottom]
    low = min(0.9, max(0.5, 200 / min(img.size)))
    scale = float(rng.uniform(low, 0.9)) if low < 0.9 else 0.9
    size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
    img = img.resize(size, Image.BICUBIC)
    transform["scale"] = round(scale, 3)
    if "blur" in extras:
        radius = round(float(rng.uniform(0.5, 1.5)), 2)
        img = img.filter(ImageFilter.GaussianBlur(radius))
        transform["blur_radius"] = radius
    if "brightness" in extras:
        factor = round(float(rng.choice([-1, 1]) * rng.uniform(0.04, 0.12) + 1), 3)
        img = ImageEnhance.Brightness(img).enhance(factor)
        transform["brightness"] = factor
    transform["quality"] = int(rng.integers(50, 95))
    return img, transform


# ---------------------------------------------------------------------------------------------
# Members: json, txt and the damage of corrupt samples
# ---------------------------------------------------------------------------------------------

def _assemble(s: _Spec, rng: np.random.Generator) -> None:
    """Build the tar members (``s.members``) and apply the sample's damage, if any."""
    kind = s.category[len("corrupt_"):] if s.category.startswith("corrupt_") else None
    image = s.image
    if kind == "truncated_jpeg":
        image = image[: int(len(image) * rng.uniform(0.3, 0.7))]
        if image.endswith(b"\xff\xd9"):
            image = image[:-1]
    elif kind == "random_bytes":
        image = rng.bytes(int(rng.integers(2000, 20000)))
        if image[:2] == b"\xff\xd8":
            image = b"\x00" + image[1:]
    elif kind == "zero_byte":
        image = b""
    s.image = image
    s.sha256 = hashlib.sha256(image).hexdigest()

    meta = {
        "uid": s.uid,
        "url": s.url,
        "caption": s.caption,
        "key": s.key,
        "status": "success",
        "error_message": None,
        "width": s.width,
        "height": s.height,
        "original_width": s.original_width,
        "original_height": s.original_height,
        "exif": None,
        "sha256": s.sha256,
        "face_bboxes": [],
    }
    if kind == "no_uid":
        del meta["uid"]
    raw_json = json.dumps(meta, ensure_ascii=False).encode("utf-8")
    if kind == "bad_json":
        raw_json = raw_json[: len(raw_json) // 2]
    members = {s.ext: image, "json": raw_json}
    s.reader_caption = s.caption
    if kind == "bad_utf8":
        # A legacy-encoded page: the caption's text in Windows-1252, which is not valid UTF-8.
        text = s.caption + " \u2013 Caf\u00e9 D\u00e9j\u00e0 Vu"
        members["txt"] = text.encode("cp1252")
        s.reader_caption = None
    elif kind == "missing_txt":
        s.reader_caption = None
    else:
        members["txt"] = s.caption.encode("utf-8")
    if kind in ("no_uid", "bad_json"):
        s.reader_uid = stable_uid(s.shard_name, s.key)
    s.members = members


# ---------------------------------------------------------------------------------------------
# Writing shards
# ---------------------------------------------------------------------------------------------

def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _tar_bytes(specs: list[_Spec]) -> tuple[bytes, dict[tuple[str, str], int]]:
    """The shard's tar bytes (members sorted by key then extension) and each member's data offset."""
    buf = io.BytesIO()
    offsets = {}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for s in sorted(specs, key=lambda x: x.key):
            for ext in sorted(s.members):
                offsets[(s.key, ext)] = buf.tell() + tarfile.BLOCKSIZE
                _tar_member(tar, f"{s.key}.{ext}", s.members[ext])
    return buf.getvalue(), offsets


def _parquet_bytes(specs: list[_Spec]) -> bytes:
    """img2dataset's per-shard metadata table, describing the tar as stored (see module doc)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("uid", pa.string()), ("url", pa.string()), ("text", pa.string()),
                        ("original_width", pa.int64()), ("original_height", pa.int64()),
                        ("sha256", pa.string()), ("key", pa.string())])
    rows = []
    for s in sorted(specs, key=lambda x: x.key):
        r = s.record()
        json_lost = s.category == "corrupt_bad_json"     # the sizes live only in the (unreadable) json
        rows.append({"uid": r["uid"], "url": s.url, "text": r["caption"],
                     "original_width": None if json_lost else r["original_width"],
                     "original_height": None if json_lost else r["original_height"],
                     "sha256": r["sha256"], "key": r["key"]})
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf, compression="snappy")
    return buf.getvalue()


def _stats_bytes(count: int) -> bytes:
    stats = {"count": count, "successes": count, "failed_to_download": 0, "failed_to_resize": 0,
             "status_dict": {"success": count}}
    return (json.dumps(stats, indent=4) + "\n").encode("utf-8")


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _write_shard(output_dir: str, shard_index: int, specs: list[_Spec], cut_at: int | None = None) -> str:
    """Write ``{:08d}.tar`` (cut at byte ``cut_at`` when given), its stats json and parquet."""
    stem = f"{shard_index:08d}"
    data, _ = _tar_bytes(specs)
    _write(os.path.join(output_dir, stem + ".tar"), data if cut_at is None else data[:cut_at])
    _write(os.path.join(output_dir, stem + "_stats.json"), _stats_bytes(len(specs)))
    _write(os.path.join(output_dir, stem + ".parquet"), _parquet_bytes(specs))
    return stem + ".tar"


def _write_broken_shards(output_dir: str, seed: int, first_index: int, shard_size: int,
                         layout: _KeyLayout) -> list[dict]:
    """A valid shard cut in the middle of an image member, and an HTML error page named as a shard.

    They draw from their own stream so the good shards do not depend on ``broken_shards``.
    The truncated shard keeps its stats and parquet (written before the damage), as a
    copy interrupted mid-file would leave them.
    """
    count = max(4, min(shard_size, 10))
    specs = []
    for i in range(count):
        rng = _rng(seed, "broken", i)
        s = _Spec(i, "clean_en", first_index, layout.key(first_index, i), rng.bytes(16).hex())
        _plan_base(s, rng, rng)
        s.image = encode_image(render_image(rng, s.width, s.height), s.ext, s.quality)
        _assemble(s, rng)
        specs.append(s)
    _, offsets = _tar_bytes(specs)
    # Cut through the first member of a late sample (its image, for a .jpg), so no member
    # of the cut sample is complete and every earlier sample is.
    later = specs[count * 2 // 3:]
    cut = next((x for x in later if x.ext == "jpg"), later[0])
    first = sorted(cut.members)[0]
    cut_at = offsets[(cut.key, first)] + len(cut.members[first]) // 2
    truncated = _write_shard(output_dir, first_index, specs, cut_at=cut_at)

    not_a_tar = f"{first_index + 1:08d}.tar"
    page = ("<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head>\n<body><h1>Forbidden</h1>"
            "<p>You don't have permission to access this resource.</p></body></html>\n")
    _write(os.path.join(output_dir, not_a_tar), page.encode("ascii"))
    return [
        {"shard": truncated, "kind": "truncated_tar", "cut_key": cut.key,
         "complete_keys": [s.key for s in specs if s.key < cut.key],
         "records": [s.record() for s in specs if s.key < cut.key]},
        {"shard": not_a_tar, "kind": "not_a_tar"},
    ]
