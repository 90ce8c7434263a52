"""DataComp baselines on synthetic DataComp-format metadata vs an independent implementation.

The reference side (``Reference``) re-implements baselines.py's rules here in a
few lines of pandas/numpy, calling fastText, gcld3 and numpy directly -- it never
imports the beam_filter rule or stage code under test. (text_based's WordNet
lookup is the one shared piece: ``rules.wordnet`` is checked against nltk in
tests/test_rules.py.) Every baseline must select the same uid set.
"""

from __future__ import annotations

import glob
import json
import os
import re

import apache_beam as beam
import numpy as np
import pandas as pd
import pytest

from beam_filter.datacomp_metadata import ReadDataCompMetadata, iter_metadata_rows, list_metadata_files
from beam_filter.devtools.synthetic_metadata import write_synthetic_metadata
from beam_filter.errors import UserError
from beam_filter.recipe import load_recipe, parse_recipe
from beam_filter.cluster.centroids import nearest_centroids, target_centroids

N_ROWS = 2400


# ---- the independent reference ------------------------------------------------------------

class Reference:
    """baselines.py's rules over a pandas frame of the metadata (+ npz features)."""

    def __init__(self, directory: str):
        import fasttext
        import gcld3

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


def uid_records(uids) -> np.ndarray:
    """DataComp subset format (what its baselines.py ``np.save``s), written out here: sorted u8,u8 pairs."""
    pairs = sorted((int(u.zfill(32)[:16], 16), int(u.zfill(32)[16:32], 16)) for u in uids)
    return np.array(pairs, dtype=np.dtype("u8,u8"))


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    d = tmp_path_factory.mktemp("datacomp_meta")
    write_synthetic_metadata(str(d / "metadata"), N_ROWS, seed=11, parts=3)
    ref = Reference(str(d / "metadata"))
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
    return str(d), ref, cents, targets


def _overrides(d):
    return [f"image_based.centroids={d}/centroids.npy", f"image_based.targets={d}/targets.npy"]


# ---- pure pieces ----------------------------------------------------------------------------

def test_target_centroids_are_unique_nearest(meta):
    d, ref, cents, targets = meta
    imagenet = ref.feats["l14_img"][:50].astype(np.float32)
    assert np.array_equal(target_centroids(cents, imagenet),
                          np.unique(np.argmax(imagenet @ cents.T, axis=1)))
    assert 0 < len(targets) < len(cents)
    assert np.array_equal(nearest_centroids(imagenet, cents), np.argmax(imagenet @ cents.T, axis=1))


def test_metadata_rows_follow_the_contract(meta):
    d, ref, _, _ = meta
    parts = list_metadata_files(os.path.join(d, "metadata"))
    assert [os.path.basename(p) for p, _ in parts] == ["00000000.parquet", "00000001.parquet", "00000002.parquet"]
    rows = [r for p, _ in parts for r in iter_metadata_rows(p, batch_rows=333)]
    assert [r["uid"] for r in rows] == list(ref.df.uid)
    r = rows[5]
    src = ref.df.iloc[5]
    assert (r["caption"], r["width"], r["height"], r["sha256"]) == (
        src.text, src.original_width, src.original_height, src.sha256)
    assert r["clip_l14_similarity_score"] == src.clip_l14_similarity_score
    assert r["caption_words"] == len(src.text.split()) and r["shard"] == parts[0][0]
    for key in ("b32_img", "b32_txt", "l14_img", "l14_txt"):
        assert r[key].dtype == np.float32 and r[key].ndim == 1
    assert np.array_equal(np.stack([x["l14_img"] for x in rows]), ref.feats["l14_img"].astype(np.float32))
    # scores tie (realistic rounding), so the rank-n rule's tie handling matters here
    assert ref.df.clip_l14_similarity_score.duplicated().sum() > N_ROWS // 2


def test_metadata_errors(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        list_metadata_files(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no \\*.parquet"):
        ReadDataCompMetadata(str(tmp_path / "empty"))
    paths = write_synthetic_metadata(str(tmp_path / "m"), 30, seed=1, parts=1)
    stem = paths[0][:-8]
    feats = dict(np.load(stem + ".npz"))
    np.savez(stem + ".npz", **{k: v[:-1] for k, v in feats.items()})
    with pytest.raises(UserError, match="29 rows but .* has 30"):
        list(iter_metadata_rows(paths[0]))
    np.savez(stem + ".npz", l14_img=np.array([object()] * 30, dtype=object))
    with pytest.raises(UserError, match="objects"):
        list(iter_metadata_rows(paths[0], embeddings=["l14_img"]))
    os.remove(stem + ".npz")
    assert "l14_img" not in next(iter_metadata_rows(paths[0]))   # parquet-only download


# ---- every baseline through the select transforms ------------------------------------------

RECIPES = {
    "basic": ("datacomp_basic", []),
    "clip_l14_30pct": ("datacomp_clip_l14_30pct", []),
    "clip_b32_th025": ("datacomp_b32_th025", []),
    "laion2b": ("laion2b", []),
    "image_based": ("image_based", "overrides"),
    "intersect": ("image_based_intersect_clip_score", "overrides"),
}
CUSTOM = {
    "clip_b32_10pct": {"name": "b", "stages": [{"c": {"type": "clip", "model": "ViT-B-32", "fraction": 0.1}}]},
    "clip_l14_th022": {"name": "l", "stages": [{"c": {"type": "clip", "model": "ViT-L-14", "threshold": 0.22}}]},
    "text_based": {"name": "t", "stages": [{"text_based": {}}]},
}


def _kept_writer(directory, name):
    def write(uids):
        with open(os.path.join(directory, f"{name}.json"), "w") as f:
            json.dump(sorted(uids), f)
    return write


def test_baselines_match_reference(meta, tmp_path):
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from beam_filter.transforms.select import ApplyStages

    d, ref, cents, targets = meta
    recipes = {name: load_recipe(preset, _overrides(d) if extra else []) for name, (preset, extra) in RECIPES.items()}
    recipes.update({name: parse_recipe(raw) for name, raw in CUSTOM.items()})
    out = str(tmp_path)
    with beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([])) as p:
        rows = (p | ReadDataCompMetadata(os.path.join(d, "metadata"), embeddings=["l14_img"])
                | beam.Map(lambda r: {**r, "key": r["uid"], "read_error": None}))
        for name, recipe in recipes.items():
            (rows | f"Select[{name}]" >> ApplyStages(recipe.stages)
             | f"Kept[{name}]" >> beam.FlatMap(lambda r: [r["uid"]] if r["kept"] else [])
             | f"List[{name}]" >> beam.combiners.ToList()
             | f"Write[{name}]" >> beam.Map(_kept_writer(out, name)))

    def got(name):
        with open(os.path.join(out, f"{name}.json")) as f:
            return set(json.load(f))

    want = {
        "basic": ref.basic(),
        "clip_l14_30pct": ref.clip_score("l14", fraction=0.3),
        "clip_b32_th025": ref.clip_score("b32", threshold=0.25),
        "laion2b": ref.laion2b(),
        "image_based": ref.image_based(cents, targets),
        "intersect": ref.clip_score("l14", fraction=0.3) & ref.image_based(cents, targets),
        "clip_b32_10pct": ref.clip_score("b32", fraction=0.1),
        "clip_l14_th022": ref.clip_score("l14", threshold=0.22),
        "text_based": ref.text_based(),
    }
    for name, mask in want.items():
        expected = ref.uids(mask)
        assert 0 < len(expected) < N_ROWS, name         # every rule both keeps and drops
        assert got(name) == expected, name


# ---- end to end: beam-filter select --metadata -----------------------------------------------

def test_select_metadata_cli_writes_reference_uids(meta, tmp_path):
    from conftest import run_cli

    d, ref, cents, targets = meta
    out = tmp_path / "out"
    args = ["select", "--metadata", os.path.join(d, "metadata"), "--recipe",
            "image_based_intersect_clip_score", "--output", out]
    for ov in _overrides(d):
        args += ["--set", ov]
    assert run_cli(*args) == 0
    got = np.load(out / "uids.npy")
    want = uid_records(ref.uids(ref.clip_score("l14", fraction=0.3) & ref.image_based(cents, targets)))
    assert got.dtype == want.dtype and np.array_equal(got, want)
    with open(out / "thresholds" / "clip_l14.json") as f:
        applied = json.load(f)
    scores = ref.df.clip_l14_similarity_score.to_numpy()
    assert applied["threshold"] == -np.sort(-scores)[int(len(scores) * 0.3)]
    assert applied["N"] == N_ROWS


def test_embedding_keys_for_recipes(meta):
    from beam_filter.datacomp_metadata import embedding_keys_for

    d = meta[0]
    assert embedding_keys_for(load_recipe("datacomp_clip_l14_30pct").stages) == []
    assert embedding_keys_for(load_recipe("image_based", _overrides(d)).stages) == ["l14_img"]
    raw = {"name": "x", "stages": [{"any_of": {"stages": [{"laion2b": {}}, {"datacomp_basic": {}}]}},
                                   {"image_based": {"centroids": "c", "targets": "t", "embedding": "b32_img"}}]}
    assert embedding_keys_for(parse_recipe(raw).stages) == ["b32_img"]
    part = list_metadata_files(os.path.join(d, "metadata"))[0][0]
    row = next(iter_metadata_rows(part, embeddings=[]))
    assert not any(k in row for k in ("b32_img", "l14_img"))


def test_stages_prefer_the_clip_stage_columns_over_metadata(meta):
    from beam_filter.registry import build_stage
    from beam_filter.rules.datacomp import laion2b_reason

    d, _, cents, targets = meta
    ib = build_stage("image_based", "image_based", {"centroids": f"{d}/centroids.npy",
                                                    "targets": f"{d}/targets.npy", "clip_stage": "clip_l14"})
    own, meta_emb = np.ones(768, np.float32), np.zeros(768, np.float32)
    assert ib.embedding_of({"clip_l14_image_embedding": own, "l14_img": meta_emb}) is not None
    assert np.array_equal(ib.embedding_of({"clip_l14_image_embedding": own, "l14_img": meta_emb}), own)
    assert np.array_equal(ib.embedding_of({"l14_img": meta_emb}), meta_emb)
    with pytest.raises(UserError, match="no image embedding"):
        ib.embedding_of({"b32_img": meta_emb})
    english = {"uid": "a", "caption": "a photo of a dog playing in the park", "lang": "en"}
    target = int(targets[0])
    hit = cents[target] / np.linalg.norm(cents[target])
    assert ib.batch_verdicts([{**english, "l14_img": hit}]) == []
    with pytest.raises(UserError, match="do not match centroids"):
        ib.batch_verdicts([{**english, "l14_img": np.ones(512, np.float32)}])
    assert ib.batch_verdicts([{**english, "caption": "dog\ncat", "l14_img": hit}]) == []   # 3 fastText tokens
    assert ib.batch_verdicts([{**english, "caption": "doggy", "l14_img": hit}])[0][1].reason == "caption_too_short"
    lb = build_stage("laion2b", "laion2b", {"clip_stage": "clip_b32"})
    row = {"caption": "a dog on a beach", "lang_cld3": "en", "clip_b32_similarity_score": 0.1}
    assert lb.reason(row) == "clip_score_below_threshold"
    assert lb.reason({**row, "clip_b32_score": 0.28}) is None
    assert lb.reason({**row, "clip_b32_score": 0.3, "lang_cld3": "de"}) == "not_english"
    assert laion2b_reason(float("nan"), "en") == "clip_score_below_threshold"


def test_target_cluster_verdicts_pure():
    from beam_filter.cluster.centroids import CentroidIndex, TargetClusters, target_cluster_verdicts
    from beam_filter.identity import row_token
    from beam_filter.records import Verdict

    cents = np.eye(3, dtype=np.float32)
    clusters = TargetClusters(CentroidIndex(cents), np.array([0, 2]))
    emb = np.array([[1, 0, 0], [0, 1, 0], [0.1, 0, 0.9]], np.float32)
    assert clusters.hits(emb).tolist() == [True, False, True]
    with pytest.raises(UserError, match="integer centroid ids"):
        TargetClusters(CentroidIndex(cents), np.array([0.0]), source="t.npy")
    rows = [{"uid": "a", "emb": np.array([1, 0, 0], np.float32), "ok": True},
            {"uid": "b", "emb": np.array([0, 1, 0], np.float32), "ok": True},
            {"uid": "c", "ok": False}]                       # no embedding: never asked for one

    def pre(r):
        return None if r["ok"] else "caption_too_short"

    loads = []

    def load():
        loads.append(1)
        return clusters

    out = target_cluster_verdicts(rows, pre, lambda r: r["emb"], load)
    assert out == [(row_token(rows[2]), Verdict(reason="caption_too_short")),
                   (row_token(rows[1]), Verdict(reason="not_in_target_clusters"))]
    assert target_cluster_verdicts(rows[2:], pre, lambda r: r["emb"], load) == out[:1]
    assert loads == [1]                                     # no row searched: nothing loaded
