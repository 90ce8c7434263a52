"""The columnar select of a metadata part (columnar.py) writes the row path's bytes: the same decisions
file, kept list and counts, on a part full of odd rows (NaN and missing scores, empty and missing
captions, zero and missing sides, read errors, repeated uids, tied scores), for every stage with a
vectorised hook; and it declines (None) where it must, so the row path decides."""

from __future__ import annotations

import os
import shutil
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_filter import columnar
from beam_filter.layout import OutputLayout
from beam_filter.recipe import parse_recipe
from beam_filter.rules.thresholds import ThresholdInfo
from beam_filter.shard_work import part_rank_keys, select_part

ROWS = 900
SCORED_SHARD = "/pool/00001.tar"


@pytest.fixture(scope="module")
def odd_part(tmp_path_factory):
    """One synthetic DataComp part (parquet + npz) with odd values written into it, a subset file
    listing some uids several times, and image_based centroid files."""
    from beam_filter.devtools.synthetic_metadata import write_synthetic_metadata
    from beam_filter.uids import save_uids, uids_to_array

    d = tmp_path_factory.mktemp("columnar")
    meta = d / "metadata"
    write_synthetic_metadata(str(meta), ROWS, seed=5, parts=1)
    parquet, npz = str(meta / "00000000.parquet"), str(meta / "00000000.npz")
    t = pq.read_table(parquet)
    cols = {name: t.column(name).to_pylist() for name in t.column_names}
    rng = np.random.default_rng(1)
    for i in range(ROWS):
        k = i % 41
        if k == 1:
            cols["clip_b32_similarity_score"][i] = None
        elif k == 2:
            cols["clip_b32_similarity_score"][i] = float("nan")
            cols["clip_l14_similarity_score"][i] = None
        elif k == 3:
            cols["text"][i] = ""
        elif k == 4:
            cols["text"][i] = None
        elif k == 5:
            cols["original_width"][i] = 0
        elif k == 6:
            cols["original_height"][i] = None
        elif k == 7:
            cols["text"][i] = "a\x1cb c\u3000d\u00a0e\n"       # str.split and fastText split differently
    cols["clip_b32_similarity_score"][100:110] = [0.25] * 10   # ties at the threshold
    errors = [("corrupt_image" if i % 53 == 0 else None) for i in range(ROWS)]
    schema = t.schema
    table = pa.table({name: pa.array(cols[name], schema.field(name).type) for name in t.column_names})
    table = table.append_column("read_error", pa.array(errors, pa.string()))
    pq.write_table(table, parquet)
    # The same part with one uid on two samples (k == 8 takes its neighbour's uid).
    os.makedirs(d / "dups")
    uids = [u if i % 41 != 8 else cols["uid"][i - 1] for i, u in enumerate(cols["uid"])]
    pq.write_table(table.set_column(0, "uid", pa.array(uids, pa.string())), str(d / "dups" / "00000000.parquet"))
    shutil.copy(npz, d / "dups" / "00000000.npz")
    dups = (str(d / "dups" / "00000000.parquet"), str(d / "dups" / "00000000.npz"))
    # With tar keys (some missing: the uid stands in) and no npz; and a part with no rows.
    os.makedirs(d / "keyed")
    keys = [None if i % 7 == 0 else f"k{(i * 37) % ROWS:05d}" for i in range(ROWS)]
    pq.write_table(table.append_column("key", pa.array(keys, pa.string())), str(d / "keyed" / "00000000.parquet"))
    pq.write_table(table.slice(0, 0), str(d / "keyed" / "00000001.parquet"))
    keyed = (str(d / "keyed" / "00000000.parquet"), None)
    empty = (str(d / "keyed" / "00000001.parquet"), None)
    uids = cols["uid"]
    listed = [uids[i] for i in range(0, ROWS, 2)] + [uids[i] for i in range(0, ROWS, 6)] * 2
    subset = str(d / "subset.npy")
    save_uids(subset, uids_to_array(listed))
    feats = np.load(npz)["l14_img"].astype(np.float32)
    cents = np.concatenate([feats[rng.choice(ROWS, 24, replace=False)], rng.normal(size=(8, 768)) / 28])
    np.save(d / "centroids.npy", cents.astype(np.float32))
    np.save(d / "targets.npy", np.arange(0, 32, 3, dtype=np.int64))
    return types.SimpleNamespace(dir=d, part=(parquet, npz), dups=dups, keyed=keyed, empty=empty, subset=subset,
                                 centroids=str(d / "centroids.npy"), targets=str(d / "targets.npy"))


def _recipe(stages):
    return parse_recipe({"name": "t", "stages": stages}).stages


def _image_based(p, **extra):
    return {"image_based": {"centroids": p.centroids, "targets": p.targets, **extra}}


def _both(part, stages, tmp_path, monkeypatch, infos=None, embeddings=()):
    """(columnar result, row result, columnar decisions bytes, row decisions bytes)."""
    shard = part[0] if isinstance(part, tuple) else SCORED_SHARD     # the shard the rows name
    out = []
    for switch in ("1", "0"):
        monkeypatch.setenv(columnar.ENV_SWITCH, switch)
        layout = OutputLayout(str(tmp_path / f"out{switch}"))
        os.makedirs(os.path.dirname(layout.decisions(shard)), exist_ok=True)
        result = select_part(part, stages, layout, {b"beam_filter.recipe_hash": b"h"}, embeddings, infos)
        with open(layout.decisions(shard), "rb") as f:
            out.append((result, f.read()))
    (fast, fast_bytes), (slow, slow_bytes) = out
    return fast, slow, fast_bytes, slow_bytes


CASES = {
    "datacomp_basic": lambda p: [{"datacomp_basic": {}}],
    "b32_threshold": lambda p: [{"clip_b32": {"type": "clip", "threshold": 0.25, "flip": False}}],
    "laion2b": lambda p: [{"clip_b32": {"type": "clip", "flip": False}}, {"laion2b": {"clip_stage": "clip_b32"}}],
    "uid_subset_copies": lambda p: [{"uid_subset": {"path": p.subset}}, {"image_size": {"min_side": 200}}],
    "uid_subset_drop": lambda p: [{"uid_subset": {"path": p.subset, "mode": "drop"}}],
    "image_based": lambda p: [{"clip_l14": {"type": "clip", "model": "ViT-L-14", "flip": False}},
                              _image_based(p, clip_stage="clip_l14")],
    "rules_and_combinators": lambda p: [
        {"caption_length": {"min_words": 2, "max_chars": 60}},
        {"any_of": {"stages": [{"image_size": {"min_side": 256, "max_aspect": 2.0}},
                               {"b32": {"type": "clip", "threshold": 0.3, "flip": False}}]}},
        {"all_of": {"stages": [{"datacomp_basic": {"min_words": 1}},
                               {"max_side": {"type": "image_size", "max_side": 900}}]}},
        {"uid_subset": {"path": p.subset}}],
    "caption_rules": lambda p: [{"language": {"languages": ["en", "fr"]}}, {"junk_caption": {}},
                                {"code_like_caption": {}}, {"basic": {"type": "datacomp_basic"}}],
    "text_based": lambda p: [{"text_based": {}}],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_columnar_part_writes_the_row_paths_bytes(odd_part, case, tmp_path, monkeypatch):
    stages = _recipe(CASES[case](odd_part))
    embeddings = ("l14_img",) if case == "image_based" else ()
    assert columnar.select_part_columnar(odd_part.part, stages, OutputLayout(str(tmp_path / "probe")), {},
                                         embeddings) is not None, "the columnar path is taken"
    fast, slow, fast_bytes, slow_bytes = _both(odd_part.part, stages, tmp_path, monkeypatch, embeddings=embeddings)
    assert fast_bytes == slow_bytes
    if case != "image_based":           # rules: a uid on two samples changes nothing
        dup_fast, dup_slow, dup_fast_bytes, dup_slow_bytes = _both(odd_part.dups, stages, tmp_path / "dups",
                                                                   monkeypatch, embeddings=embeddings)
        assert dup_fast_bytes == dup_slow_bytes and dup_fast.kept == dup_slow.kept
    assert fast.kept == slow.kept and fast.errors == slow.errors == [] and fast.clock == slow.clock
    assert list(fast.counts.items()) == list(slow.counts.items())
    assert fast.counts["kept"] > 0 and len(fast.counts) > 3       # rows kept and several reasons
    if case == "uid_subset_copies":
        assert {c for _, _, c in fast.kept.kept} == {1, 3}      # listed once, and three times


def test_rank_stage_with_its_threshold_and_rank_keys_after_other_stages(odd_part, tmp_path, monkeypatch):
    stages = _recipe([{"datacomp_basic": {}}, _image_based(odd_part),
                      {"clip_l14": {"type": "clip", "model": "ViT-L-14", "fraction": 0.3, "flip": False}}])
    stages = [stages[0], stages[2], stages[1]]     # basic, then the top fraction, then image_based
    infos = {"clip_l14": ThresholdInfo(threshold=0.25, n=10, N=100, fraction=0.3)}
    fast, slow, fast_bytes, slow_bytes = _both(odd_part.part, stages, tmp_path, monkeypatch, infos, ("l14_img",))
    assert fast_bytes == slow_bytes and fast.kept == slow.kept
    assert list(fast.counts.items()) == list(slow.counts.items())
    monkeypatch.setenv(columnar.ENV_SWITCH, "1")
    assert columnar.select_part_columnar(odd_part.part, stages, OutputLayout(str(tmp_path / "probe")), {},
                                         ("l14_img",), infos) is not None
    assert columnar.rank_keys_columnar(odd_part.part, stages, 1, ("l14_img",)) is not None
    keys = {}
    for switch in ("1", "0"):
        monkeypatch.setenv(columnar.ENV_SWITCH, switch)
        keys[switch] = part_rank_keys(odd_part.part, stages, 1, ("l14_img",))
    assert keys["1"].total == keys["0"].total and keys["1"].n_nan == keys["0"].n_nan > 0
    np.testing.assert_array_equal(keys["1"].keys, keys["0"].keys)


@pytest.mark.parametrize("stages", [
    [{"has_digits": {"column": "caption"}}],                       # a rule without a hook
    [{"datacomp_basic": {}}, {"exact_dedup": {}}],                 # a group stage that is not row-wise
    [{"image_size": {"min_width_height": 0.5}}],                   # a parameter the hook leaves to rows
    [{"language": {"min_score": 0.5}}],                            # probabilities stay per row
])
def test_declines_where_it_has_no_hook_and_the_row_path_decides(odd_part, stages, tmp_path, monkeypatch):
    built = _recipe(stages)
    assert columnar.select_part_columnar(odd_part.part, built, OutputLayout(str(tmp_path / "probe")), {}) is None
    if all(s.name != "exact_dedup" for s in built):
        fast, slow, fast_bytes, slow_bytes = _both(odd_part.part, built, tmp_path, monkeypatch)
        assert fast_bytes == slow_bytes


@pytest.mark.parametrize("case", ["datacomp_basic", "rules_and_combinators", "uid_subset_copies"])
def test_parts_with_keys_without_npz_and_without_rows(odd_part, case, tmp_path, monkeypatch):
    stages = _recipe(CASES[case](odd_part))
    assert columnar.select_part_columnar(odd_part.keyed, stages, OutputLayout(str(tmp_path / "probe")), {}) \
        is not None
    fast, slow, fast_bytes, slow_bytes = _both(odd_part.keyed, stages, tmp_path, monkeypatch)
    assert fast_bytes == slow_bytes and fast.kept == slow.kept
    assert list(fast.counts.items()) == list(slow.counts.items())
    monkeypatch.setenv(columnar.ENV_SWITCH, "1")
    fast = select_part(odd_part.empty, stages, OutputLayout(str(tmp_path / "e1")), {})
    monkeypatch.setenv(columnar.ENV_SWITCH, "0")
    assert fast == select_part(odd_part.empty, stages, OutputLayout(str(tmp_path / "e0")), {})
    assert fast.kept is None and fast.counts["rows_read"] == 0


def test_group_stage_declines_where_two_samples_share_a_row_token(odd_part, tmp_path, monkeypatch):
    """Metadata keys are uids: the row path joins image_based's verdicts to both samples of a uid
    (identity.row_token), so arrays leave such a part to it."""
    stages = _recipe(CASES["image_based"](odd_part))
    assert columnar.select_part_columnar(odd_part.dups, stages, OutputLayout(str(tmp_path / "probe")), {},
                                         ("l14_img",)) is None
    assert columnar.select_part_columnar(odd_part.dups, _recipe([{"datacomp_basic": {}}]),
                                         OutputLayout(str(tmp_path / "probe")), {}) is not None


def test_declines_add_back_and_a_switched_off_path(odd_part, tmp_path, monkeypatch):
    recipe = parse_recipe({"name": "t", "stages": [{"datacomp_basic": {}}],
                           "add_back": [{"image_size": {"min_side": 500}}]})
    layout = OutputLayout(str(tmp_path / "probe"))
    assert columnar.select_part_columnar(odd_part.part, recipe.stages, layout, {}) is None
    monkeypatch.setenv(columnar.ENV_SWITCH, "0")
    assert columnar.select_part_columnar(odd_part.part, _recipe([{"datacomp_basic": {}}]), layout, {}) is None


def test_batched_language_labels_equal_one_call_per_caption():
    from beam_filter.rules.language import detect_language, detect_language_labels

    texts = ["a photo of a dog on the beach", "une photo d'un chien", "", None, " ", "\n", "a\ud800b",
             "x\x00y", "日本語のテキスト", "\t\t", "foto de un perro\nen la playa"]
    assert detect_language_labels(texts) == [detect_language(t)[0] for t in texts]


def test_language_labels_of_an_arrow_column_equal_one_call_per_caption():
    """Arrow strings hold no lone surrogate, so the Arrow-cleaned path sees every other odd text."""
    import pyarrow as pa

    from beam_filter.rules.language import detect_language, detect_language_labels_arrow

    texts = ["a photo of a dog on the beach", "une photo d'un chien", "", None, " ", "\n", "\n\n",
             "x\x00y", "日本語のテキスト", "\t\t", "foto de un perro\nen la playa", "Ein Hund\r\nam Strand"]
    want = [detect_language(t)[0] for t in texts]
    assert detect_language_labels_arrow(pa.array(texts, pa.string())) == want
    assert detect_language_labels_arrow(pa.chunked_array([texts[:5], texts[5:]], pa.large_string())) == want


def test_vectorised_size_and_basic_rules_equal_the_row_rules():
    from beam_filter.rules.datacomp import basic_filter_reason, basic_filter_reasons
    from beam_filter.rules.image import image_size_reason, image_size_reasons

    sides = [None, 0, 1, 66, 199, 200, 201, 600, 601, 1000]
    pairs = [(w, h) for w in sides for h in sides]
    w = np.array([np.nan if a is None else a for a, _ in pairs], float)
    h = np.array([np.nan if b is None else b for _, b in pairs], float)
    for bounds in [(200, None, 3.0), (None, 600, None), (None, None, None), (1, 1000, 1.5)]:
        assert list(image_size_reasons(w, h, *bounds)) == [image_size_reason(a, b, *bounds) for a, b in pairs]
    from beam_filter.rules.caption import caption_chars, caption_words

    captions = [None, "", "ab", "ab cd", "ab cd e", "abc def", "abc def gh", "a\x1cb c"]
    rows = [(c, lang, a, b) for c in captions for lang in ("en", "fr") for a, b in pairs[::7]]
    got = basic_filter_reasons(np.array([r[1] for r in rows], dtype=object),
                               np.array([caption_words(r[0]) for r in rows]),
                               np.array([caption_chars(r[0]) for r in rows]),
                               np.array([np.nan if r[2] is None else r[2] for r in rows], float),
                               np.array([np.nan if r[3] is None else r[3] for r in rows], float))
    assert list(got) == [basic_filter_reason(*r) for r in rows]


@pytest.fixture(scope="module")
def scores_file(tmp_path_factory):
    """A score run's scores file (tables.write_rows, as process_shard writes it) with odd rows: read
    errors, missing language labels (select detects them), NaN and missing scores, empty captions."""
    from beam_filter import tables
    from beam_filter.rules.caption import caption_chars, caption_words

    d = tmp_path_factory.mktemp("columnar_scores")
    rng = np.random.default_rng(4)
    words = ["a", "red", "car", "le", "chat", "noir", "dog", "on", "the", "beach", "\n"]
    rows = []
    for i in range(400):
        caption = None if i % 29 == 0 else " ".join(rng.choice(words, int(rng.integers(0, 8))))
        err = "corrupt_image" if i % 31 == 0 else None
        lang = None if i % 3 == 0 or err else ("en" if i % 4 else "fr")
        score = [None, float("nan")][i % 2] if i % 17 == 0 else round(float(rng.normal(0.28, 0.05)), 2)
        rows.append({"uid": f"{int(rng.integers(1 << 62)):032x}", "shard": SCORED_SHARD, "key": f"{i:05d}",
                     "read_error": err, "warning": None, "caption": caption, "caption_chars": caption_chars(caption),
                     "caption_words": caption_words(caption), "width": int(rng.choice([0, 150, 256, 800])),
                     "height": int(rng.choice([200, 300, 700])), "lang": lang, "lang_score": 0.9 if lang else None,
                     "clip_b32_score": None if err else score})
    path = str(d / "scores" / "00001.parquet")
    os.makedirs(os.path.dirname(path))
    tables.write_rows(path, rows)
    return path


@pytest.mark.parametrize("stages", [
    [{"datacomp_basic": {}}],
    [{"clip_b32": {"type": "clip", "threshold": 0.28, "flip": False}}, {"image_size": {"min_side": 200}}],
    [{"any_of": {"stages": [{"datacomp_basic": {}}, {"caption_length": {"min_words": 5}}]}},
     {"clip_b32": {"type": "clip", "threshold": 0.2, "flip": False}}],
])
def test_scores_file_part_writes_the_row_paths_bytes(scores_file, stages, tmp_path, monkeypatch):
    built = _recipe(stages)
    assert columnar.select_part_columnar(scores_file, built, OutputLayout(str(tmp_path / "probe")), {}) is not None
    fast, slow, fast_bytes, slow_bytes = _both(scores_file, built, tmp_path, monkeypatch)
    assert fast_bytes == slow_bytes and fast.kept == slow.kept and fast.kept.shard == SCORED_SHARD
    assert list(fast.counts.items()) == list(slow.counts.items()) and fast.counts["kept"] > 0


def test_scores_file_with_an_npz_of_other_length_is_left_to_the_row_path(scores_file, tmp_path):
    import shutil as sh

    scores = tmp_path / "out" / "scores"
    os.makedirs(scores)
    sh.copy(scores_file, scores / "00001.parquet")
    os.makedirs(tmp_path / "out" / "embeddings")
    np.savez(tmp_path / "out" / "embeddings" / "00001.npz", uids=np.array(["x"] * 3), e=np.zeros((3, 4), np.float16))
    assert columnar.load_part(str(scores / "00001.parquet")) is None
    assert columnar.load_part(scores_file) is not None


def test_arrow_caption_counts_equal_str_split_and_len():
    """caption_words on Arrow (utf8 whitespace split) counts what ``len(str.split())`` counts, for
    every code point Python calls whitespace, at either end, alone and in runs."""
    from beam_filter.rules.caption import caption_chars, caption_words

    spaces = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF and chr(c).isspace()]
    assert len(spaces) == 29
    others = ["\u200b", "\x00", "x", "é", "日"]
    texts = [None, "", "a", "a b", " ab  cd  ", "\u3000\u3000"]
    for s in spaces + others:
        texts += [f"a{s}b", f"{s}a", f"a{s}", s, s * 3, f"{s}a{s}{s}b{s}"]
    part = columnar.PartColumns("p", pa.table({"uid": ["u"] * len(texts), "caption": texts}), None, [])
    assert part.caption_words().tolist() == [caption_words(t) for t in texts]
    assert part.caption_chars().tolist() == [caption_chars(t) for t in texts]
