"""The one conftest: layer markers by directory, and the fixtures more than one test module uses.

Layers (tests/README.md): a test's directory names its layer -- tests/unit, tests/beam,
tests/e2e, tests/infra -- and gets that marker here; tests/faults (the fault-injection
suite) gets ``faults`` and each of its tests names its layer itself. A collected test
without exactly one layer marker stops the session.

Test modules never import each other nor this file: what they share is a fixture below.
Pools and metadata are generated once per test session (they are deterministic), in a
session temp dir, so tests never depend on files outside the repository.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import tarfile
import types

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TESTS = pathlib.Path(__file__).resolve().parent
LAYERS = ("unit", "beam", "e2e", "infra")


# ---- layers --------------------------------------------------------------------------------

@pytest.hookimpl(tryfirst=True)          # before `-m` deselects anything
def pytest_collection_modifyitems(config, items):
    wrong = []
    for item in items:
        try:
            top = pathlib.Path(item.path).resolve().relative_to(TESTS).parts[0]
        except ValueError:
            top = None
        if top in LAYERS:
            item.add_marker(getattr(pytest.mark, top))
        elif top == "faults":
            item.add_marker(pytest.mark.faults)
        layers = sorted({m.name for m in item.iter_markers() if m.name in LAYERS})
        if len(layers) != 1:
            wrong.append(f"{item.nodeid}: {layers or 'no layer'}")
    if wrong:
        raise pytest.UsageError("every test needs exactly one layer marker (tests/README.md):\n  "
                                + "\n  ".join(wrong))


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu"):
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU (marked gpu)")


# ---- the CLI -------------------------------------------------------------------------------

def _run_cli(*argv) -> int:
    """Run `beam-filter ARGV` in-process (the pipeline itself still uses worker processes)."""
    from beam_filter.cli import main

    return main([str(a) for a in argv] + (["--no-progress"] if argv and argv[0] in (
        "run", "score", "select", "reshard") else []))


@pytest.fixture(scope="session")
def run_cli():
    """``run_cli(*argv) -> exit code``: the real `beam-filter` command, in this process."""
    return _run_cli


@pytest.fixture(scope="session")
def decision_rows():
    """``decision_rows(output) -> list[dict]``: the rows of every decisions file, files in name order."""
    import glob

    import pyarrow.parquet as pq

    def rows(output: str) -> list[dict]:
        return [r for f in sorted(glob.glob(os.path.join(output, "decisions", "*.parquet")))
                for r in pq.read_table(f).to_pylist()]
    return rows


def _output_files(output: str) -> dict[str, bytes]:
    """An output directory's files by relative path, as two runs' outputs are compared: without the
    lock file and report.html with its PNGs (they show timings), report.json without its timings."""
    import json

    out = {}
    for root, _, names in os.walk(output):
        for name in names:
            if name in (".beam_filter.lock", "report.html") or (name.startswith("report_") and name.endswith(".png")):
                continue
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                data = f.read()
            if name == "report.json" and root == output:
                report = json.loads(data)
                report.pop("timings", None)
                data = json.dumps(report, sort_keys=True).encode()
            out[os.path.relpath(path, output)] = data
    return out


@pytest.fixture(scope="session")
def output_files():
    """``output_files(output) -> {relative path: bytes}``, as the same-outputs checks compare them."""
    return _output_files


@pytest.fixture(scope="session")
def assert_same_outputs():
    """``assert_same_outputs(a, b) -> (a's, b's report.json timings.execution)``: the two output
    directories hold the same files with the same bytes (``output_files``)."""
    import json

    def check(a: str, b: str) -> tuple[str, str]:
        fa, fb = _output_files(a), _output_files(b)
        assert sorted(fa) == sorted(fb)
        differ = [rel for rel in sorted(fa) if fa[rel] != fb[rel]]
        assert not differ, f"{a} and {b} differ: {differ}"
        executions = []
        for d in (a, b):
            with open(os.path.join(d, "report.json")) as f:
                executions.append(json.load(f)["timings"]["execution"])
        return executions[0], executions[1]
    return check


@pytest.fixture
def fused_and_graph(run_cli, tmp_path):
    """``fused_and_graph(name, *argv) -> (fused output, graph output)``: the command run twice, on its
    default (fused, by-part) path and on the general graph (``--no-fusion``), into fresh directories."""
    def both(name: str, *argv) -> tuple[str, str]:
        fused, graph = str(tmp_path / f"{name}_parts"), str(tmp_path / f"{name}_graph")
        assert run_cli(*argv, "--output", fused) == 0
        assert run_cli(*argv, "--output", graph, "--no-fusion") == 0
        return fused, graph
    return both


# ---- generated pools -----------------------------------------------------------------------

@pytest.fixture(scope="session")
def pool(tmp_path_factory):
    """A 240-sample pool (seed 0) with broken shards: what `make demo` uses, plus file damage."""
    from beam_filter.devtools.sample_pool import make_sample

    d = tmp_path_factory.mktemp("pool")
    manifest = make_sample(str(d), samples=240, seed=0, broken_shards=True)
    return str(d), manifest


@pytest.fixture(scope="session")
def clean_pool(tmp_path_factory):
    """A 120-sample pool without broken shards (seed 3)."""
    from beam_filter.devtools.sample_pool import make_sample

    d = tmp_path_factory.mktemp("clean_pool")
    manifest = make_sample(str(d), samples=120, seed=3, shard_size=40)
    return str(d), manifest


def _solid_jpeg(color, size=(48, 36)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def _write_small_pool(directory, n=10) -> list[str]:
    """One shard ``directory/00000000.tar`` of ``n`` jpg/txt/json samples; key 3's image is corrupt.

    Returns the uids in key order (md5 of the key).
    """
    os.makedirs(directory, exist_ok=True)
    uids = []
    with tarfile.open(os.path.join(directory, "00000000.tar"), "w") as t:
        for i in range(n):
            key = f"{i:09d}"
            uid = hashlib.md5(key.encode()).hexdigest()
            uids.append(uid)
            img = b"\xff\xd8broken" if i == 3 else _solid_jpeg(((37 * i) % 256, (91 * i) % 256, 60), (64 + i, 48))
            cap = f"a photo number {i} of a red car near the sea".encode()
            meta = json.dumps({"uid": uid, "url": f"http://x/{i}", "caption": cap.decode()}).encode()
            for ext, data in (("jpg", img), ("txt", cap), ("json", meta)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return uids


@pytest.fixture(scope="session")
def write_small_pool():
    """``write_small_pool(directory, n=10) -> uids``: a one-shard pool for model stages (tiny models
    are slow per sample); sample 3 has a corrupt image."""
    return _write_small_pool


# ---- images ----------------------------------------------------------------------------------

def _original(rng, w=256, h=192):
    """A synthetic photo: a colour gradient with a few filled ellipses and rectangles."""
    from PIL import Image, ImageDraw

    t = np.linspace(0, 1, w)[None, :, None]
    a = rng.random(3) * 255 * (1 - t) + rng.random(3) * 255 * t
    img = Image.fromarray(np.broadcast_to(a, (h, w, 3)).astype("uint8"))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = [x0, y0, x0 + int(rng.integers(20, 140)), y0 + int(rng.integers(20, 120))]
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    return img


def _jpeg(img, quality=90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _variants(img, rng):
    """Near-duplicates of ``img`` as JPEG bytes: resized, recompressed, blurred."""
    from PIL import Image, ImageFilter

    w, h = img.size
    s = rng.uniform(0.4, 0.8)
    yield _jpeg(img.resize((int(w * s), int(h * s)), Image.Resampling.BILINEAR), 85)   # resized
    yield _jpeg(img, int(rng.integers(20, 50)))                                         # recompressed
    yield _jpeg(img.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 1.5))), 90)       # blurred


@pytest.fixture(scope="session")
def near_dup_images():
    """Image makers for near-duplicate tests: ``original(rng)`` (a PIL image), ``jpeg(img, quality=90)``
    and ``variants(img, rng)`` (its resized, recompressed and blurred JPEGs)."""
    return types.SimpleNamespace(original=_original, jpeg=_jpeg, variants=_variants)


def _photo(rng, w, h, mode="RGB"):
    """A photo-like image: smooth gradient, a few shapes, mild noise (JPEG-friendly)."""
    from PIL import Image, ImageDraw

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255], -1)
    base = base * rng.uniform(0.3, 1.0, 3) + rng.uniform(0, 80, 3)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        x1, y1 = x0 + rng.integers(w // 8 + 1, w // 2 + 2), y0 + rng.integers(h // 8 + 1, h // 2 + 2)
        d.ellipse((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    arr = np.asarray(img).astype(np.int16) + rng.integers(-8, 9, (h, w, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return img.convert(mode) if mode != "RGB" else img


def _encode(img, fmt="JPEG", **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


@pytest.fixture(scope="session")
def clip_images():
    """Encoded images for CLIP preprocessing: sizes (small, odd crop excess, large enough for JPEG
    draft), modes (L, CMYK, RGBA, P) and formats (progressive JPEG, PNG, GIF)."""
    rng = np.random.default_rng(7)
    out = []
    for w, h in [(64, 64), (97, 64), (300, 201), (201, 300), (640, 427), (1031, 700), (90, 40)]:
        out.append(_encode(_photo(rng, w, h), quality=90))
    out.append(_encode(_photo(rng, 400, 301), quality=85, progressive=True))
    out.append(_encode(_photo(rng, 260, 180, "L"), quality=90))
    out.append(_encode(_photo(rng, 333, 250, "CMYK"), quality=90))
    out.append(_encode(_photo(rng, 150, 123).convert("RGBA"), "PNG"))
    out.append(_encode(_photo(rng, 120, 77).convert("P"), "GIF"))
    return out


# ---- DataComp metadata and an independent reference of its baselines -------------------------

DATACOMP_ROWS = 2400


class DataCompReference:
    """baselines.py's rules over a pandas frame of the metadata (+ npz features).

    Re-implements DataComp's baselines in a few lines of pandas/numpy, calling fastText, gcld3
    and numpy directly -- never the beam_filter rule or stage code under test. (text_based's
    WordNet lookup is the one shared piece: ``rules.wordnet`` is checked in tests/unit/test_rules.py.)
    """

    def __init__(self, directory: str):
        import glob

        import fasttext
        import gcld3
        import pandas as pd

        from beam_filter.rules.language import bundled_lid_model_path  # only to find the model file

        parts = sorted(glob.glob(os.path.join(directory, "*.parquet")))
        self.df = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
        self.feats = {k: np.concatenate([np.load(p[:-8] + ".npz")[k] for p in parts])
                      for k in ("l14_img", "b32_img")}
        model = fasttext.load_model(bundled_lid_model_path())
        labels = [model.predict(t.replace("\n", " "), k=1)[0] for t in self.df.text]
        self.fasttext_en = np.array([lab[0].replace("__label__", "") == "en" for lab in labels])
        cld3 = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)
        self.cld3_en = np.array([cld3.FindLanguage(text=t.replace("\n", " ")).language == "en"
                                 for t in self.df.text])

    def uids(self, mask) -> set[str]:
        return set(self.df.uid[np.asarray(mask, dtype=bool)])

    def basic(self):
        words = self.df.text.apply(lambda t: len(t.split()))
        chars = self.df.text.apply(len)
        w, h = self.df.original_width, self.df.original_height
        side = np.minimum(w, h)
        aspect = np.maximum(w, h) / side
        return self.fasttext_en & (words > 2) & (chars > 5) & (side >= 200) & (aspect <= 3.0)

    def clip_score(self, arch: str, threshold=None, fraction=None):
        scores = self.df[f"clip_{arch}_similarity_score"].to_numpy()
        if fraction is not None:
            n = int(len(scores) * fraction)
            threshold = -np.sort(-scores)[n]
        return scores >= threshold

    def laion2b(self):
        return (self.df.clip_b32_similarity_score >= 0.28).to_numpy() & self.cld3_en

    def caption_prefilter(self):
        import re

        # fastText's tokenizer: runs of non-whitespace (space, \n, \r, \t, \v, \f, \0); every \n adds </s>.
        def tokens(t):
            return len([x for x in re.split(r"[ \n\r\t\v\f\x00]", t) if x]) + t.count("\n")
        ntok = self.df.text.apply(tokens).to_numpy()
        chars = self.df.text.apply(len).to_numpy()
        return self.fasttext_en & (ntok > 1) & (chars > 5)

    def image_based(self, centroids, targets):
        feats = self.feats["l14_img"].astype(np.float32)
        nearest = np.argmax(feats @ centroids.astype(np.float32).T, axis=1)
        return self.caption_prefilter() & np.isin(nearest, targets)

    def text_based(self):
        from beam_filter.rules.wordnet import caption_has_in21k_synset

        return self.fasttext_en & self.df.text.apply(caption_has_in21k_synset).to_numpy()


@pytest.fixture(scope="session")
def datacomp_meta(tmp_path_factory):
    """Synthetic DataComp metadata (2,400 rows, 3 parts) with centroids and target clusters.

    A namespace: ``dir`` (``dir/metadata`` holds the parts; ``dir/centroids.npy``,
    ``dir/targets.npy``), ``ref`` (a DataCompReference), ``centroids``, ``targets``,
    ``rows`` (the row count) and ``overrides`` (the ``--set`` values image_based needs).
    """
    from beam_filter.cluster.centroids import target_centroids
    from beam_filter.devtools.synthetic_metadata import write_synthetic_metadata

    d = tmp_path_factory.mktemp("datacomp_meta")
    write_synthetic_metadata(str(d / "metadata"), DATACOMP_ROWS, seed=11, parts=3)
    ref = DataCompReference(str(d / "metadata"))
    # 64 centroids: some from the pool's own features, some random; "ImageNet" = a few pool
    # images plus noise, so some but not all centroids are targets.
    rng = np.random.default_rng(0)
    feats = ref.feats["l14_img"].astype(np.float32)
    cents = np.concatenate([feats[rng.choice(len(feats), 40, replace=False)],
                            rng.normal(size=(24, 768)).astype(np.float32) / 28])
    imagenet = feats[rng.choice(len(feats), 30, replace=False)] + rng.normal(size=(30, 768)).astype(np.float32) / 60
    targets = target_centroids(cents, imagenet)
    np.save(d / "centroids.npy", cents)
    np.save(d / "targets.npy", targets)
    return types.SimpleNamespace(
        dir=str(d), ref=ref, centroids=cents, targets=targets, rows=DATACOMP_ROWS,
        overrides=[f"image_based.centroids={d}/centroids.npy", f"image_based.targets={d}/targets.npy"])


def _imports_of(tree):
    """(line, module) of every import in an ``ast`` tree, at any depth; ``from x import y`` gives x.y too."""
    import ast

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


@pytest.fixture(scope="session")
def imports_of():
    """The import lister the infra tests check layers and the suite layout with."""
    return _imports_of


# ---- scene text (T-MARS, OCR rules) ------------------------------------------------------------

_TEXT_WORDS = ("SALE", "hello", "OPEN", "coffee", "Welcome", "STOP", "garden", "MUSIC", "river", "NEWS",
               "travel", "PIZZA", "summer", "BOOKS", "market", "HOTEL", "winter", "PARK", "sunset", "LIVE")


def _textured(rng, w, h):
    """A smooth random texture with noise: no flat background for a detector to lean on."""
    from PIL import Image, ImageFilter

    import numpy as np

    yy, xx = np.mgrid[0:h, 0:w]
    f = rng.uniform(0.01, 0.05, 2)
    tex = (np.sin(xx * f[0] + rng.uniform(0, 6)) * np.cos(yy * f[1]) * 20)[..., None]
    arr = np.clip(rng.integers(40, 216, 3) + tex + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr).filter(ImageFilter.GaussianBlur(1))


def _elongated_shapes(rng, img, n):
    """Bars and thin ellipses: shapes a text detector mistakes for text lines."""
    from PIL import ImageDraw

    d = ImageDraw.Draw(img)
    w, h = img.size
    for _ in range(n):
        bw, bh = int(rng.integers(w // 4, w * 3 // 4)), int(rng.integers(6, 20))
        x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        box, col = [x, y, x + bw, y + bh], tuple(int(c) for c in rng.integers(0, 256, 3))
        (d.rectangle if rng.random() < 0.5 else d.ellipse)(box, fill=col)


def _text_image(rng, w=320, h=240, n_words=2):
    """(PIL image, ground-truth word boxes (x0, y0, x1, y1), words): words rendered in Pillow's
    bundled font over a texture with one elongated shape."""
    from PIL import ImageDraw, ImageFont

    import numpy as np

    img = _textured(rng, w, h)
    _elongated_shapes(rng, img, 1)
    d = ImageDraw.Draw(img)
    boxes, words = [], []
    y = int(rng.integers(10, 40))
    for _ in range(n_words):
        word = _TEXT_WORDS[int(rng.integers(len(_TEXT_WORDS)))]
        font = ImageFont.load_default(size=int(rng.integers(28, 44)))
        l, t, r, b = d.textbbox((0, 0), word, font=font)
        x = int(rng.integers(5, max(6, w - (r - l) - 5)))
        dark = np.asarray(img)[y:y + b, x:x + r].mean() < 128
        d.text((x, y), word, font=font, fill=(250, 250, 250) if dark else (10, 10, 10))
        boxes.append((x + l, y + t, x + r, y + b))
        words.append(word)
        y += (b - t) + int(rng.integers(15, 40))
        if y > h - 50:
            break
    return img, boxes, words


def _shape_image(rng, w=320, h=240):
    """A text-free image: texture and 3-6 elongated shapes."""
    img = _textured(rng, w, h)
    _elongated_shapes(rng, img, int(rng.integers(3, 7)))
    return img


def _write_text_pool(directory, n_text=6, n_plain=6, seed=0) -> list[dict]:
    """One shard ``directory/00000000.tar``: text images whose caption is their words (even keys of
    the first half: the words plus "on a sign"), text-free shape images, and a corrupt image last.
    Returns per sample {key, uid, words, boxes, caption, kind}."""
    import numpy as np

    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    out = []
    with tarfile.open(os.path.join(directory, "00000000.tar"), "w") as t:
        for i in range(n_text + n_plain + 1):
            key = f"{i:09d}"
            uid = hashlib.md5(f"text-{key}".encode()).hexdigest()
            if i < n_text:
                img, boxes, words = _text_image(rng)
                caption, kind = " ".join(words) + (" on a sign" if i % 2 == 0 else ""), "text"
                data = _jpeg(img, 92)
            elif i < n_text + n_plain:
                img, boxes, words = _shape_image(rng), [], []
                caption, kind, data = "colourful stripes on a wall", "plain", _jpeg(img, 92)
            else:
                boxes, words, caption, kind, data = [], [], "a broken picture", "corrupt", b"\xff\xd8broken"
            meta = json.dumps({"uid": uid, "url": f"http://x/{i}", "caption": caption}).encode()
            for ext, blob in (("jpg", data), ("txt", caption.encode()), ("json", meta)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(blob)
                t.addfile(info, io.BytesIO(blob))
            out.append({"key": key, "uid": uid, "words": words, "boxes": boxes, "caption": caption,
                        "kind": kind})
    return out


@pytest.fixture(scope="session")
def text_images():
    """Scene-text images made with Pillow: ``text_image(rng, w, h) -> (img, word boxes, words)``,
    ``shape_image(rng, w, h) -> img`` (text-free elongated shapes), ``jpeg(img, quality)``, and
    ``write_pool(dir, n_text, n_plain, seed) -> [sample dicts]`` (one shard, a corrupt image last)."""
    import types

    return types.SimpleNamespace(text_image=_text_image, shape_image=_shape_image, jpeg=_jpeg,
                                 write_pool=_write_text_pool)
