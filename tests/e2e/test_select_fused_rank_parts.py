"""fused_rank (SIEVE+CLIP, HYPE) inside the by-part select: each part sends its alive rows' per-column
min/max, the pool's ranges come back as a side input for the fused score's rank keys, and the exact
rank-n threshold for the decide pass. Every file these commands write equals the general graph's
(`--no-fusion`), byte for byte, and report.json apart from its timings -- on scores files with ties
at the threshold, NaN and missing scores, a column only some parts have, read errors and rows dropped
before the stage; on DataComp metadata; and for `run`, which scores by shard, then selects by part."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

PARTS = 3
ROWS = 150




def _threshold(output: str, stage_id: str) -> dict:
    with open(os.path.join(output, "thresholds", f"{stage_id}.json")) as f:
        return json.load(f)


def _decision_files(output: str) -> int:
    return len(glob.glob(os.path.join(output, "decisions", "*.parquet")))


def _grid(rng, n, step):
    """Scores on a coarse grid: many rows tie, at the threshold too."""
    return [float(v) for v in np.round(rng.uniform(0, 1, n) / step) * step]


@pytest.fixture(scope="module")
def scores_dir(tmp_path_factory):
    """Three scores files as a score run writes them (tables.write_rows): SIEVE, CLIP L/14 and HYPE-like
    columns on a coarse grid, None and NaN scores, read errors, short captions; the last part has DataComp's
    ``clip_l14_similarity_score`` instead of ``clip_l14_score`` (a weight's ``a|b`` alternative), and
    ``hype_score`` is the same everywhere (a column whose min equals its max)."""
    from beam_filter import tables
    from beam_filter.layout import OutputLayout

    root = str(tmp_path_factory.mktemp("fused_scores"))
    layout = OutputLayout(root)
    rng = np.random.default_rng(14)
    for p in range(PARTS):
        shard = f"/pool/{p:05d}.tar"
        sieve, clip = _grid(rng, ROWS, 0.1), _grid(rng, ROWS, 0.05)
        img, txt = _grid(rng, ROWS, 0.25), _grid(rng, ROWS, 0.2)
        rows = []
        for i in range(ROWS):
            err = "corrupt_image" if i % 29 == 7 else None
            row = {"uid": f"{p:04x}{i:028x}", "shard": shard, "key": f"{i:06d}", "read_error": err,
                   "warning": None, "caption": None if err else ("a photo of a dog" if i % 6 else "dog"),
                   "sieve_score": None if err or i % 13 == 3 else (float("nan") if i % 17 == 5 else sieve[i]),
                   "hype_image_specificity_score": None if err else img[i],
                   "hype_text_specificity_score": None if err or i % 31 == 2 else txt[i],
                   "hype_score": None if err else 0.5,
                   "imagenet_clusters_pass": None if err else float(i % 3 == 0)}
            row["clip_l14_similarity_score" if p == PARTS - 1 else "clip_l14_score"] = None if err else clip[i]
            rows.append(row)
        tables.write_rows(layout.scores(shard), rows)
    return root


SIEVE_CLIP_LIKE = """name: sieve_clip_like
stages:
  - caption_length: {min_words: 2}
  - clip_l14: {type: clip, model: ViT-L-14, pretrained: openai, threshold: 0.1}
  - sieve_clip:
      type: fused_rank
      weights: {sieve_score: 0.5, "clip_l14_score|clip_l14_similarity_score": 0.5}
      fraction: 0.2
"""

HYPE_LIKE = """name: hype_like
stages:
  - caption_length: {min_words: 2}
  - hype_score:
      type: fused_rank
      weights:
        hype_image_specificity_score: 0.2
        hype_text_specificity_score: 0.2
        hype_score: 0.2
        clip_l14_score|clip_l14_similarity_score: 0.2
        imagenet_clusters_pass: 0.2
      fraction: 0.3
  - fixed:
      type: fused_rank
      weights: {sieve_score: 0.5, hype_image_specificity_score: 0.5}
      threshold: 0.25
  - clip_l14: {type: clip, model: ViT-L-14, pretrained: openai, fraction: 0.6}
"""

HYPE_DFN_LIKE = """name: hype_dfn_like
stages:
  - caption_length: {min_words: 2}
  - hype_or_dfn:
      type: any_of
      stages:
        - hype_score:
            type: fused_rank
            weights:
              hype_image_specificity_score: 0.25
              hype_text_specificity_score: 0.25
              clip_l14_score|clip_l14_similarity_score: 0.25
              imagenet_clusters_pass: 0.25
            fraction: 0.1
        - dfn: {type: uid_subset, path: DFN}
"""


def test_sieve_clip_like_on_scores_equals_the_general_graph(scores_dir, tmp_path, run_cli, fused_and_graph,
                                                            decision_rows, assert_same_outputs):
    """A rule and a fixed threshold drop rows first; the fused score ties at its threshold."""
    recipe = tmp_path / "sieve_clip_like.yaml"
    recipe.write_text(SIEVE_CLIP_LIKE)
    parts, graph = fused_and_graph("sieve", "select", "--recipe", recipe, "--scores", scores_dir)
    assert assert_same_outputs(parts, graph) == ("by_part", "graph")
    assert _decision_files(parts) == PARTS
    info = _threshold(parts, "sieve_clip")
    rows = decision_rows(parts)
    dropped_before = [r for r in rows if r["stage"] in ("read", "caption_length", "clip_l14")]
    assert len(dropped_before) > 20 and info["rank"]["N"] == len(rows) - len(dropped_before)
    assert info["rank"]["n_equal"] > 1 and info["rank"]["n_nan"] > 0        # ties and NaN at work
    kept = [r for r in rows if r["kept"]]
    assert len(kept) == info["rank"]["n_above"] + info["rank"]["n_equal"] > 0
    assert {r["shard"] for r in kept} == {f"/pool/{p:05d}.tar" for p in range(PARTS)}   # the alternative column too
    assert not any(r["sieve_score"] is None or np.isnan(r["sieve_score"]) for r in kept)


def test_hype_like_on_scores_equals_the_general_graph(scores_dir, tmp_path, run_cli, fused_and_graph,
                                                      decision_rows, assert_same_outputs):
    """Five columns (one constant over the pool), then a fixed threshold on a second fused score, then a
    top fraction ranked over what both kept."""
    recipe = tmp_path / "hype_like.yaml"
    recipe.write_text(HYPE_LIKE)
    parts, graph = fused_and_graph("hype", "select", "--recipe", recipe, "--scores", scores_dir)
    assert assert_same_outputs(parts, graph) == ("by_part", "graph")
    assert _decision_files(parts) == PARTS
    info = _threshold(parts, "hype_score")
    assert info["ranges"][2] == [0.5, 0.5] and info["rank"]["n_equal"] > 1
    assert _threshold(parts, "fixed")["threshold"] == 0.25 and _threshold(parts, "fixed")["rank"] is None
    reasons = {r["reason"] for r in decision_rows(parts)}
    assert {"hype_score_below_threshold", "fixed_below_threshold", "clip_l14_score_below_threshold"} <= reasons, reasons


def test_hype_dfn_like_combinator_on_scores_equals_the_general_graph(scores_dir, tmp_path, run_cli,
                                                                     fused_and_graph, decision_rows,
                                                                     assert_same_outputs):
    """fused_rank inside any_of (hype_dfn): ranked over the rows alive at the combinator."""
    from beam_filter.uids import save_uids, uids_to_array

    uids = sorted(r["uid"] for f in glob.glob(os.path.join(scores_dir, "scores", "*.parquet"))
                  for r in pq.read_table(f, columns=["uid"]).to_pylist())
    dfn = tmp_path / "dfn.npy"
    save_uids(str(dfn), uids_to_array(uids[::5]))
    recipe = tmp_path / "hype_dfn_like.yaml"
    recipe.write_text(HYPE_DFN_LIKE.replace("DFN", str(dfn)))
    parts, graph = fused_and_graph("hype_dfn", "select", "--recipe", recipe, "--scores", scores_dir)
    assert assert_same_outputs(parts, graph) == ("by_part", "graph")
    assert _decision_files(parts) == PARTS
    rank = _threshold(parts, "hype_score")["rank"]
    kept = [r for r in decision_rows(parts) if r["kept"]]
    assert rank["n_above"] + rank["n_equal"] < len(kept)       # the DFN uids add rows HYPE did not keep


def test_fused_rank_on_metadata_equals_the_general_graph(tmp_path, run_cli, fused_and_graph, assert_same_outputs):
    from beam_filter.devtools.synthetic_metadata import write_synthetic_metadata

    meta = str(tmp_path / "metadata")
    write_synthetic_metadata(meta, 3000, seed=8, parts=3)
    recipe = tmp_path / "meta.yaml"
    recipe.write_text("name: meta_fused\nstages:\n"
                      "  - caption_length: {min_words: 3}\n"
                      "  - fused:\n      type: fused_rank\n"
                      "      weights: {clip_b32_similarity_score: 0.3, clip_l14_similarity_score: 0.7}\n"
                      "      fraction: 0.25\n")
    parts, graph = fused_and_graph("meta", "select", "--recipe", recipe, "--metadata", meta)
    assert assert_same_outputs(parts, graph) == ("by_part", "graph")
    assert _decision_files(parts) == 3
    with open(os.path.join(parts, "uids.npy"), "rb") as a, open(os.path.join(graph, "uids.npy"), "rb") as b:
        assert a.read() == b.read()


def test_run_scores_by_shard_then_ranks_by_part(clean_pool, tmp_path, run_cli, fused_and_graph, decision_rows,
                                                assert_same_outputs):
    """`run` of a recipe with fused_rank after a model: scored by shard, selected by part, the general
    graph's bytes (scores files, decisions, thresholds, resharded output)."""
    from beam_filter.stages.clip import ClipStage

    models = str(tmp_path / "twin")
    ClipStage.write_test_model(models)
    recipe = tmp_path / "run_fused.yaml"
    recipe.write_text("name: run_fused\nstages:\n"
                      "  - clip: {model: ViT-B-32, pretrained: openai}\n"
                      "  - fused:\n      type: fused_rank\n"
                      "      weights: {clip_score: 0.6, caption_chars: 0.4}\n"
                      "      fraction: 0.4\n")
    parts, graph = fused_and_graph("run", "run", "--recipe", recipe, "--input",
                         f"{clean_pool[0]}/*.tar", "--test-models", models)
    assert assert_same_outputs(parts, graph) == ("by_shard, then by_part", "graph")
    assert _decision_files(parts) == 3
    assert 0 < len([r for r in decision_rows(parts) if r["kept"]]) < clean_pool[1]["samples"]
