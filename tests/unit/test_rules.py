"""Pure rule functions: image headers, caption rules, language id, WordNet rule."""

from __future__ import annotations

import io
import os

import pytest
from PIL import Image

from beam_filter.errors import UserError
from beam_filter.rules import caption as cap
from beam_filter.rules.datacomp import basic_filter_reason
from beam_filter.rules.image import aspect_ratio, image_size_reason
from beam_filter.rules.image_header import probe_image
from beam_filter.rules.language import (detect_language, detect_language_labels, fasttext_token_count,
                                        fasttext_tokenize)


# ---- image headers ---------------------------------------------------------------------

def _encode(fmt: str, size=(321, 123), mode="RGB", **kw) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (200, 30, 40) if mode == "RGB" else None).save(buf, fmt, **kw)
    return buf.getvalue()


CASES = [
    ("JPEG", {}, "jpeg"),
    ("JPEG", {"progressive": True}, "jpeg"),
    ("PNG", {}, "png"),
    ("WEBP", {}, "webp"),                      # lossy: VP8
    ("WEBP", {"lossless": True}, "webp"),      # VP8L
    ("GIF", {}, "gif"),
]


@pytest.mark.parametrize("fmt,kw,name", CASES)
def test_probe_reads_size_and_format(fmt, kw, name):
    data = _encode(fmt, **kw)
    assert probe_image(data) == (name, 321, 123, None)


def test_probe_webp_extended_header():
    data = _encode("WEBP", size=(640, 77), mode="RGBA")   # alpha -> VP8X
    assert data[12:16] == b"VP8X"
    assert probe_image(data) == ("webp", 640, 77, None)


@pytest.mark.parametrize("fmt,kw,name", CASES)
def test_probe_truncated_is_corrupt(fmt, kw, name):
    data = _encode(fmt, size=(300, 200), **kw)
    for cut in (len(data) // 2, len(data) - 1, 20):
        probe = probe_image(data[:cut])
        assert probe.error == "corrupt_image", (fmt, cut)
        assert probe.width is None


@pytest.mark.parametrize("fmt,name", [("JPEG", "jpeg"), ("PNG", "png"), ("GIF", "gif"),
                                      ("WEBP", "webp")])
def test_probe_tolerates_trailing_padding(fmt, name):
    data = _encode(fmt)
    assert probe_image(data + b"\x00" * 7 + b"\r\n").error is None
    assert probe_image(data + b"garbage!").error == "corrupt_image"


@pytest.mark.parametrize("data", [b"", b"\xff\xd8", b"\xff\xd8\xff\xd9", b"not an image at all",
                                  b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WEBP", b"GIF89a",
                                  bytes(range(256)) * 4, None])
def test_probe_garbage_never_raises(data):
    assert probe_image(data).error == "corrupt_image"


def test_probe_jpeg_without_frame_header_is_corrupt():
    # SOI, a COM segment, then EOI: well-formed markers but no size anywhere.
    assert probe_image(b"\xff\xd8\xff\xfe\x00\x04hi\xff\xd9").error == "corrupt_image"


def test_probe_is_fast():
    import time

    data = _encode("JPEG", size=(1024, 768))
    t = time.perf_counter()
    for _ in range(2000):
        probe_image(data)
    per_call = (time.perf_counter() - t) / 2000
    assert per_call < 200e-6      # measured ~3 us; generous for a loaded CI machine


# ---- caption counts and bounds -------------------------------------------------------

def test_caption_counts_match_datacomp():
    text = "  a\u00a0dog\ton the\nbeach "
    assert cap.caption_words(text) == len(text.split()) == 5   # str.split splits U+00A0 too
    assert cap.caption_chars(text) == len(text)
    assert cap.caption_words(None) == cap.caption_chars(None) == 0


def test_caption_length_bounds_inclusive():
    assert cap.caption_length_reason("one two", min_words=2) is None
    assert cap.caption_length_reason("one", min_words=2) == "caption_too_short"
    assert cap.caption_length_reason("abcd", min_chars=5) == "caption_too_short"
    assert cap.caption_length_reason("abcdef", max_chars=5) == "caption_too_long"
    assert cap.caption_length_reason("a b c", max_words=2) == "caption_too_long"
    assert cap.caption_length_reason("anything") is None


# ---- Open-Qwen2VL rules -------------------------------------------------------------

def test_builtin_junk_list_is_the_published_one():
    junk = cap.builtin_junk_captions()
    assert len(junk) == 908          # 932 dict entries in the source, 908 distinct keys
    for c in ("image", "nan", "untitled image", "avatar", "[img]", "画像", "\\"):
        assert c in junk


@pytest.mark.parametrize("text,junk", [
    ("Image", True), ("UNTITLED IMAGE", True), ("nan", True), ("avatar", True),
    ("image of a dog", False), ("TRUE", False),      # 'TRUE' is listed in capitals: never matches
    ("", False), (None, False),
])
def test_is_junk_caption(text, junk):
    assert cap.is_junk_caption(text) is junk


def test_junk_compares_only_first_1000_chars():
    assert cap.is_junk_caption("image")
    assert not cap.is_junk_caption("image" + " x" * 600)
    assert cap.is_junk_caption("x" * 1000 + "tail", extra=frozenset({"x" * 1000}))


def test_extra_caption_list(tmp_path):
    path = tmp_path / "junk.txt"
    path.write_text("My Junk Caption\n\nanother one\n", encoding="utf-8")
    extra = cap.load_caption_list(str(path))
    assert extra == {"my junk caption", "another one"}
    assert cap.is_junk_caption("MY JUNK caption", extra)
    with pytest.raises(UserError):
        cap.load_caption_list(str(tmp_path / "missing.txt"))


def test_unique_token_ratio_splits_on_single_spaces():
    assert cap.unique_token_ratio("a dog a dog") == 0.5
    assert cap.unique_token_ratio("buy buy buy now") == 0.5
    assert cap.unique_token_ratio("a  b") == 1.0        # tokens 'a', '', 'b'
    assert cap.unique_token_ratio("") == 1.0


@pytest.mark.parametrize("text,code_like", [
    ("IMG_1234.JPG", True), ("DSC01234", True), ("dscn0042.jpg", True), ("photo_12", True),
    ("e4yf-4a68", True), ("sd345", True), ("Chapter IV", False), ("iv ii", True),
    ("12345", True), ("微信图片_20200101", True), ("一只狗", True),        # no ASCII-letter token
    ("thumbnail icon", True), ("Top", True), ("cleanup image.jpg", True),
    ("A dog on the beach", False), ("img of my cat", False), ("dog.jpg", False),
    ("MP3 player", False), ("ab", False), ("x y", True), ("", True),
])
def test_is_code_like(text, code_like):
    assert cap.is_code_like(text) is code_like


# ---- image size and DataComp basic_filter -----------------------------------------

def test_image_size_reason():
    assert image_size_reason(200, 600, min_side=200, max_aspect=3.0) is None
    assert image_size_reason(199, 600, min_side=200) == "image_too_small"
    assert image_size_reason(200, 601, max_aspect=3.0) == "aspect_ratio_too_extreme"
    assert image_size_reason(5000, 300, max_side=4096) == "image_too_large"
    assert image_size_reason(None, 300, min_side=1) == "image_too_small"
    assert image_size_reason(0, 300, max_aspect=3.0) == "image_too_small"
    assert image_size_reason(None, None) is None
    assert aspect_ratio(0, 5) == float("inf") and aspect_ratio(None, 5) is None


@pytest.mark.parametrize("caption,lang,w,h,expected", [
    ("a dog on grass", "en", 200, 600, None),
    ("a dog on grass", "de", 500, 500, "not_english"),
    ("two words", "en", 500, 500, "caption_too_short"),     # needs MORE than 2 words
    ("a b c", "en", 500, 500, "caption_too_short"),         # 5 chars: needs MORE than 5
    ("a b cd", "en", 500, 500, None),
    ("a dog on grass", "en", 199, 500, "image_too_small"),
    ("a dog on grass", "en", 200, 601, "aspect_ratio_too_extreme"),
])
def test_basic_filter_reason(caption, lang, w, h, expected):
    assert basic_filter_reason(caption, lang, w, h) == expected


# ---- language id ----------------------------------------------------------------------

@pytest.mark.parametrize("text,lang", [
    ("A brown dog is running on the beach at sunset", "en"),
    ("Ein brauner Hund läuft bei Sonnenuntergang am Strand", "de"),
    ("Un chien brun court sur la plage au coucher du soleil", "fr"),
    ("一只棕色的狗在日落时分在海滩上奔跑", "zh"),
])
def test_detect_language(text, lang):
    label, score = detect_language(text)
    assert label == lang
    assert 0.0 < score <= 1.0001


def test_detect_language_handles_newlines_and_odd_text():
    assert detect_language("A brown dog\nis running on the beach")[0] == "en"
    assert isinstance(detect_language("")[0], str)
    assert isinstance(detect_language("bad \ud800 surrogate text")[0], str)


def test_detect_language_bad_model_path(tmp_path):
    with pytest.raises(UserError):
        detect_language("hello", str(tmp_path / "nope.bin"))


def test_fasttext_tokenizer_semantics():
    # fastText splits on ASCII whitespace and NUL only; each newline adds "</s>".
    assert fasttext_tokenize("a dog\nruns") == ["a", "dog", "</s>", "runs"]
    assert fasttext_tokenize("one\n") == ["one", "</s>"]
    assert fasttext_token_count("a\u00a0dog") == 1          # U+00A0 is not a separator
    assert fasttext_token_count(" a\t\x0bb\x0c\rc\x00d ") == 4
    assert fasttext_token_count("") == 0


@pytest.mark.parametrize("text", ["a dog\nruns", "one\n", "a\u00a0dog", " a\t\x0bb\x0c\rc d ", "", "\n\n",
                                  "日本 の\u3000犬", "tab\tsep  double"])
def test_fasttext_tokenizer_matches_fasttexts_own(text):
    # DataComp's image_based counts words with fasttext.tokenize; the installed bindings have it
    import fasttext

    assert fasttext_tokenize(text) == fasttext.tokenize(text)


def test_bundled_lid_model_labels_known_sentences():
    # the bundled lid.176.ftz through the batched call and the per-caption call agree
    texts = ["The quick brown fox jumps over the lazy dog", "Le chat est sur la table",
             "Der Hund läuft im Park", "これは日本語の文です", None, "line one\nline two"]
    labels = detect_language_labels(texts)
    assert labels[:4] == ["en", "fr", "de", "ja"]
    assert labels == [detect_language(t)[0] for t in texts]


# ---- WordNet (DataComp text_based) -------------------------------------------------

def _tiny_wordnet(root):
    """A 4-part-of-speech WordNet 3.0-format database small enough to reason about."""
    header = "  1 WordNet 3.0 Copyright 2006 by Princeton University.  \n"
    files = {
        # lemma pos synset_cnt p_cnt [ptr...] sense_cnt tagsense_cnt offsets...
        "index.noun": header + "dog n 2 1 @ 2 1 02084071 10114209\n"
                               "goose n 1 0 1 0 01855672\nrun n 1 0 1 0 00558883\n"
                               "church n 1 0 1 0 08082602\n",
        "index.verb": header + "run v 2 0 2 2 01926311 02075049\nbake v 1 0 1 0 01664172\n",
        "index.adj": header + "big a 1 0 1 0 01382086\n",
        "index.adv": header + "fast r 1 0 1 0 00086000\n",
        "noun.exc": "geese goose\n",
        "verb.exc": "ran run\n",
        "adj.exc": "bigger big\n",
        "adv.exc": "",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    return str(root)


def test_wordnet_index_follows_nltk_morphy(tmp_path):
    from beam_filter.rules.wordnet import load_wordnet

    wn = load_wordnet(_tiny_wordnet(tmp_path))
    assert wn.synset_offsets("Dogs") == [2084071, 10114209]
    assert wn.first_synset_offset("geese") == 1855672          # exception list
    assert wn.first_synset_offset("ran") == 1926311            # verb exception
    assert wn.synset_offsets("run") == [558883, 1926311, 2075049]   # nouns before verbs
    assert wn.first_synset_offset("runs") == 558883             # noun rule wins over verb rule
    assert wn.first_synset_offset("running") is None            # morphy does not undouble "nn"
    assert wn.first_synset_offset("churches") == 8082602        # ches -> ch
    assert wn.first_synset_offset("baking") == 1664172          # ing -> e
    assert wn.first_synset_offset("bigger") == 1382086
    assert wn.first_synset_offset("dog,") is None               # str.split keeps punctuation


def test_wordnet_refuses_other_versions(tmp_path):
    from beam_filter.rules.wordnet import load_wordnet

    root = _tiny_wordnet(tmp_path)
    text = (tmp_path / "index.noun").read_text().replace("WordNet 3.0", "WordNet 3.1")
    (tmp_path / "index.noun").write_text(text)
    with pytest.raises(UserError):
        load_wordnet(root)
    with pytest.raises(UserError):
        load_wordnet(str(tmp_path / "missing"))


def test_in21k_list_is_datacomps_file():
    from beam_filter.rules.wordnet import in21k_synset_offsets

    ids = in21k_synset_offsets()      # checks the sha256 DataComp pins
    assert len(ids) == 21843
    assert 2084071 in ids             # dog.n.01


def test_caption_has_in21k_synset_on_tiny_db(tmp_path):
    from beam_filter.rules.wordnet import caption_has_in21k_synset

    root = _tiny_wordnet(tmp_path)
    assert caption_has_in21k_synset("Two DOGS playing", root)
    assert not caption_has_in21k_synset("quick brown", root)
    assert not caption_has_in21k_synset("", root)


@pytest.mark.skipif(not os.path.isfile("/usr/share/wordnet/index.noun"),
                    reason="WordNet 3.0 not installed (apt-get install wordnet-base)")
def test_caption_has_in21k_synset_real_wordnet():
    from beam_filter.rules.wordnet import caption_has_in21k_synset, load_wordnet

    wn = load_wordnet("/usr/share/wordnet")
    # Values checked against nltk 3.8.1 (DataComp's pinned version) on WordNet 3.0.
    expected = {"dog": 2084071, "Dogs": 2084071, "geese": 1855672, "running": 558883,
                "ran": 1926329, "churches": 8082602, "wolves": 2114100, "better": 5143558,
                "photo": 3925226, "women": 10787470, "axes": 2764044, "the": None,
                "xyzzy": None}
    assert {w: wn.first_synset_offset(w) for w in expected} == expected
    assert caption_has_in21k_synset("a dog on the beach", "/usr/share/wordnet")
    assert not caption_has_in21k_synset("the sunset photo", "/usr/share/wordnet")


def test_detect_language_cld3():
    pytest.importorskip("gcld3")
    from beam_filter.rules.language import detect_language_cld3

    assert detect_language_cld3("A brown dog is running on the beach at sunset")[0] == "en"
    assert detect_language_cld3("Ein brauner Hund läuft bei Sonnenuntergang\nam Strand")[0] == "de"


def test_probe_long_padding_tail():
    data = _encode("JPEG")
    assert probe_image(data + b"\x00" * 10000).error is None
    assert probe_image(data + b"\x00" * 10000 + b"x").error == "corrupt_image"
    assert probe_image(_encode("WEBP") + b"\x00" * 5000 + b"x").error == "corrupt_image"


# ---- the rules the rule stages adapt ------------------------------------------------------

def test_language_reason():
    from beam_filter.rules.language import language_reason

    en = frozenset({"en"})
    assert language_reason("en", 0.2, en) is None
    assert language_reason("de", 0.9, en) == "not_english"
    assert language_reason("de", 0.9, frozenset({"en", "fr"})) == "wrong_language"
    assert language_reason(None, None, en) == "not_english"
    assert language_reason("en", 0.2, en, min_score=0.5) == "language_score_too_low"
    assert language_reason("en", None, en, min_score=0.5) == "language_score_too_low"
    assert language_reason("en", 0.5, en, min_score=0.5) is None


def test_junk_and_code_like_reasons():
    assert cap.junk_caption_reason("Image") == "high_frequency_caption"
    assert cap.junk_caption_reason("my own junk", frozenset({"my own junk"})) == "high_frequency_caption"
    assert cap.junk_caption_reason("dog dog dog dog") == "repetitive_caption"
    assert cap.junk_caption_reason("dog dog dog dog", min_unique_token_ratio=None) is None
    assert cap.junk_caption_reason("a dog on the beach") is None
    assert cap.code_like_reason("IMG_1234.jpg") == "code_like_caption"
    assert cap.code_like_reason("a dog on the beach") is None


def test_uid_subset_reason():
    from beam_filter.rules.uid_subset import uid_subset_reason

    assert uid_subset_reason(True, "keep") is None
    assert uid_subset_reason(False, "keep") == "not_in_uid_subset"
    assert uid_subset_reason(True, "drop") == "in_drop_subset"
    assert uid_subset_reason(False, "drop") is None


def test_mlm_rules():
    from beam_filter.rules.mlm import UNPARSABLE, rank_reason, threshold_reason
    from beam_filter.rules.thresholds import rank_n_info

    cols = {"image_text_matching": "itm", "object_detail_fulfillment": "odf"}
    th = {"image_text_matching": 66, "object_detail_fulfillment": 20}
    assert threshold_reason({"itm": 70, "odf": 20}, cols, th) is None
    assert threshold_reason({"itm": 60, "odf": 10}, cols, th) == "mlm_image_text_matching_below_threshold"
    assert threshold_reason({"itm": 70, "odf": float("nan")}, cols, th) == UNPARSABLE
    with pytest.raises(UserError, match="missing"):
        threshold_reason({"itm": 70}, cols, th)
    info = rank_n_info([10, 20, 30, 40], 0.5)            # threshold 20 (n = 2: 40, 30, 20)
    assert rank_reason(None, info, "u", 0, "su") == UNPARSABLE
    assert rank_reason(30, info, "u", 0, "su") is None
    assert rank_reason(10, info, "u", 0, "su") == "mlm_su_below_threshold"
