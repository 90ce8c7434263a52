"""Rule stages: parameters, reason() on rows, features(); exact_dedup's pure rule (its Beam
graph: tests/beam/test_exact_dedup.py)."""

from __future__ import annotations

import pytest

from beam_filter.errors import UserError
from beam_filter.records import Sample, Verdict
from beam_filter.registry import build_stage
from beam_filter.uids import save_uids, uids_to_array


def stage(name, **params):
    return build_stage(name, name, params)


def row(caption="A brown dog running on the beach", width=640, height=480, **kw):
    return {"uid": "0" * 31 + "1", "caption": caption, "width": width, "height": height, **kw}


# ---- datacomp_basic -------------------------------------------------------------------

def test_datacomp_basic_reasons_in_order():
    s = stage("datacomp_basic")
    assert s.reason(row(lang="en")) is None
    assert s.reason(row(lang="de")) == "not_english"
    assert s.reason(row(caption="two words", lang="en")) == "caption_too_short"
    assert s.reason(row(width=150, lang="en")) == "image_too_small"
    assert s.reason(row(width=1000, height=300, lang="en")) == "aspect_ratio_too_extreme"
    assert s.reason(row(width=None, height=None, lang="en")) == "image_too_small"


def test_datacomp_basic_detects_language_when_row_has_none():
    # select --metadata rows carry no lang column: the stage computes it from the caption.
    s = stage("datacomp_basic")
    assert s.reason(row()) is None
    assert s.reason(row(caption="Ein brauner Hund läuft am Strand entlang")) == "not_english"


def test_datacomp_basic_features_and_params():
    s = stage("datacomp_basic")
    f = s.features(Sample(shard="s.tar", key="k", uid="u", caption="A dog on the grass"))
    assert f["lang"] == "en" and 0 < f["lang_score"] <= 1.0001
    assert s.score_config() == {"lid_model": None}
    s2 = stage("datacomp_basic", min_words=0, min_chars=0, min_side=10, max_aspect=10)
    assert s2.reason(row(caption="a dog", width=20, height=150, lang="en")) is None
    with pytest.raises(UserError):
        stage("datacomp_basic", max_aspect=0)
    with pytest.raises(UserError):
        stage("datacomp_basic", min_wordz=3)


# ---- simple bounds ----------------------------------------------------------------------

def test_caption_length_stage():
    s = stage("caption_length", min_words=3, max_chars=20)
    assert s.reason(row(caption="a b c")) is None
    assert s.reason(row(caption="a b")) == "caption_too_short"
    assert s.reason(row(caption="a b c " + "x" * 30)) == "caption_too_long"
    assert stage("caption_length").reason(row(caption="")) is None


def test_image_size_stage():
    s = stage("image_size", min_side=100, max_side=2000, max_aspect=3.33)
    assert s.reason(row(width=100, height=333)) is None
    assert s.reason(row(width=99, height=200)) == "image_too_small"
    assert s.reason(row(width=2001, height=1000)) == "image_too_large"
    assert s.reason(row(width=100, height=334)) == "aspect_ratio_too_extreme"
    with pytest.raises(UserError):
        stage("image_size", max_aspect=0.5)


def test_language_stage():
    s = stage("language")
    assert s.reason(row(lang="en", lang_score=0.3)) is None
    assert s.reason(row(lang="fr", lang_score=0.9)) == "not_english"
    multi = stage("language", languages="en,de", min_score=0.5)
    assert multi.reason(row(lang="de", lang_score=0.9)) is None
    assert multi.reason(row(lang="fr", lang_score=0.9)) == "wrong_language"
    assert multi.reason(row(lang="en", lang_score=0.4)) == "language_score_too_low"
    # No lang column: detected from the caption.
    assert s.reason(row(caption="Un chien brun court sur la plage")) == "not_english"
    f = s.features(Sample(shard="s", key="k", uid="u", caption="Ein Hund im Garten"))
    assert f["lang"] == "de"


def test_language_stage_custom_model_uses_its_own_columns(tmp_path):
    from beam_filter.rules.language import bundled_lid_model_path

    s = build_stage("lid_bin", "language", {"model": bundled_lid_model_path()})
    f = s.features(Sample(shard="s", key="k", uid="u", caption="A dog in the garden"))
    assert set(f) == {"lid_bin_lang", "lid_bin_lang_score"} and f["lid_bin_lang"] == "en"
    assert s.reason(row(lang="de", **f)) is None        # reads its own column, not `lang`


# ---- caption quality ----------------------------------------------------------------------

def test_junk_caption_stage(tmp_path):
    s = stage("junk_caption")
    assert s.reason(row(caption="Untitled Image")) == "high_frequency_caption"
    assert s.reason(row(caption="buy now buy now buy now")) == "repetitive_caption"
    assert s.reason(row(caption="a dog a cat")) is None          # 3/4 unique
    extra = tmp_path / "extra.txt"
    extra.write_text("Brown Dog\n")
    s2 = stage("junk_caption", extra_list=str(extra), min_unique_token_ratio=None)
    assert s2.reason(row(caption="brown dog")) == "high_frequency_caption"
    assert s2.reason(row(caption="buy buy buy buy")) is None


def test_code_like_caption_stage():
    s = stage("code_like_caption")
    assert s.reason(row(caption="IMG_2041.JPG")) == "code_like_caption"
    assert s.reason(row(caption="Sunset over the harbour")) is None


# ---- uid subsets ------------------------------------------------------------------------------

def test_uid_subset_keep_and_drop(tmp_path):
    listed = ["%032x" % i for i in (5, 7, 7, 2**70)]
    path = str(tmp_path / "subset.npy")
    save_uids(path, uids_to_array(listed))
    keep = stage("uid_subset", path=path)
    drop = stage("uid_subset", path=path, mode="drop")
    for uid, inside in [("%032x" % 7, True), ("%032x" % 2**70, True), ("%032x" % 6, False)]:
        assert keep.reason({"uid": uid}) == (None if inside else "not_in_uid_subset")
        assert drop.reason({"uid": uid}) == ("in_drop_subset" if inside else None)
    from beam_filter.stages.rules import uid_set
    assert uid_set(path) is uid_set(path)               # loaded once per process
    with pytest.raises(UserError):
        stage("uid_subset")                             # path is required
    with pytest.raises(UserError):
        stage("uid_subset", path=path, mode="maybe")
    with pytest.raises(UserError):
        stage("uid_subset", path=str(tmp_path / "missing.npy")).reason({"uid": "0" * 32})


# ---- exact dedup -----------------------------------------------------------------

def test_duplicate_verdicts_pure():
    from beam_filter.cluster.exact_dup import duplicate_verdicts

    assert duplicate_verdicts("h", ["c", "a", "b", "a"]) == [
        ("b", Verdict("exact_duplicate_of:a")), ("c", Verdict("exact_duplicate_of:a"))]
    assert duplicate_verdicts("h", ["only"]) == []
