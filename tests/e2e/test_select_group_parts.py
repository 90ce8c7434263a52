"""Group stages (dedup, clustering, caption counts, density pruning) run inside the by-part select:
slim rows go to each stage's transform, its verdicts come back to the parts as files. Every file
these commands write equals the general graph's, byte for byte (report.json apart from timings)."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest


@pytest.fixture(scope="module")
def clip_twin(tmp_path_factory):
    from beam_filter.stages.clip import ClipStage

    d = str(tmp_path_factory.mktemp("twin"))
    ClipStage.write_test_model(d)
    return d


def _same_outputs(check, fused: str, general: str, parts: int) -> None:
    """Byte-identical files (conftest ``assert_same_outputs``), ``parts`` decisions files, no work files left."""
    execution, graph = check(fused, general)
    assert execution.endswith("by_part") and graph == "graph"
    assert len(glob.glob(os.path.join(fused, "decisions", "*.parquet"))) == parts
    assert not os.path.exists(os.path.join(fused, "verdicts"))      # the work files are gone


def test_group_stages_on_scores_equal_the_general_graph(clean_pool, tmp_path, run_cli, clip_twin,
                                                        fused_and_graph, decision_rows,
                                                        assert_same_outputs):
    """Caption counts, near-duplicates, SemDeDup, a top fraction after them, cluster balance and
    exact dedup, in that order, on the scores (fp16 embeddings, pHashes) of a score run."""
    recipe = tmp_path / "groups.yaml"
    recipe.write_text(
        "name: groups\nstages:\n"
        "  - caption_frequency: {max_count: 2}\n"
        "  - clip: {model: ViT-B-32, pretrained: openai}\n"
        "  - near_dedup: {tolerance: 6, quality: clip_score}\n"
        "  - semdedup: {embedding: clip_image_embedding, n_clusters: 4, eps: 0.008, niter: 5}\n"
        "  - top: {type: clip, model: ViT-B-32, pretrained: openai, fraction: 0.8}\n"
        "  - cluster_balance: {embedding: clip_image_embedding, n_clusters: 3, cap: 20, score: clip_score}\n"
        "  - exact_dedup: {}\n")
    scores = str(tmp_path / "scores")
    assert run_cli("score", "--recipe", str(recipe), "--input", f"{clean_pool[0]}/*.tar", "--output", scores,
                   "--test-models", clip_twin) == 0
    fused, general = fused_and_graph("groups", "select", "--recipe", str(recipe), "--scores", scores,
                           "--test-models", clip_twin)
    _same_outputs(assert_same_outputs, fused, general, 3)
    stages = {r["stage"] for r in decision_rows(fused)}
    assert {"caption_frequency", "semdedup", "top", "cluster_balance"} <= stages, stages
    assert "semdedup_cluster" in decision_rows(fused)[0] and "caption_frequency_count" in decision_rows(fused)[0]


def test_group_stages_on_metadata_equal_the_general_graph(tmp_path, run_cli, fused_and_graph, decision_rows,
                                                          assert_same_outputs):
    """A devil_details-like chain on DataComp metadata: pool caption counts first, a rule, a top
    fraction, SemDeDup, density pruning, cluster importance, quality duplication, and an add-back."""
    from beam_filter.devtools.synthetic_metadata import write_synthetic_metadata

    meta = str(tmp_path / "metadata")
    write_synthetic_metadata(meta, 2400, seed=8, parts=3)
    np.save(tmp_path / "target.npy", np.random.default_rng(3).standard_normal((50, 768)).astype(np.float32))
    recipe = tmp_path / "devil_like.yaml"
    clusters = "embedding: l14_img, n_clusters: 6, niter: 5"
    recipe.write_text(
        "name: devil_like\nstages:\n"
        "  - caption_frequency: {max_count: 3}\n"
        "  - caption_length: {min_words: 2}\n"
        "  - clip_l14: {type: clip, model: ViT-L-14, pretrained: openai, fraction: 0.8, flip: false}\n"
        f"  - semdedup: {{{clusters}, eps: 0.88}}\n"
        f"  - dbp: {{{clusters}, ratio: 0.9, n_neighbors: 3}}\n"
        f"  - cluster_importance: {{{clusters}, target: {tmp_path}/target.npy, fraction: 0.8, alpha: 1.0}}\n"
        f"  - quality_duplication: {{{clusters}, score: clip_l14_similarity_score}}\n"
        "add_back:\n  - long_caption: {type: caption_length, min_words: 12}\n")
    fused, general = fused_and_graph("devil", "select", "--recipe", str(recipe), "--metadata", meta)
    _same_outputs(assert_same_outputs, fused, general, 3)
    rows = decision_rows(fused)
    assert len(rows) == 2400
    stages = {r["stage"] for r in rows}
    assert {"caption_frequency", "clip_l14", "semdedup", "dbp", "cluster_importance"} <= stages, stages
    assert max(r["copies"] for r in rows) > 1                          # quality duplication reached
    assert any(str(r["reason"]).startswith("added_back") for r in rows)


def test_run_with_a_model_and_near_dedup_scores_by_shard_then_selects_by_part(clean_pool, tmp_path, run_cli,
                                                                              clip_twin, fused_and_graph,
                                                                              decision_rows,
                                                                              output_files):
    """The near_dedup preset with the tiny CLIP: scored by shard, near-duplicates by part. Model scores
    may differ from RunInference's in the last float32 bits (tests/e2e/test_score_by_shard.py); the
    kept uids and the output shards are the same bytes."""
    fused, general = fused_and_graph("near", "run", "--recipe", "near_dedup",
                           "--input", f"{clean_pool[0]}/*.tar", "--test-models", clip_twin,
                           "--set", "near_dedup.tolerance=8")
    with open(os.path.join(fused, "report.json")) as f:
        assert json.load(f)["timings"]["execution"] == "by_shard, then by_part"
    for rel in ["uids.npy"] + [n for n in output_files(general) if n.startswith("shards")]:
        with open(os.path.join(fused, rel), "rb") as a, open(os.path.join(general, rel), "rb") as b:
            assert a.read() == b.read(), rel
    strip = ("clip_score", "clip_flipped_score")
    a, b = decision_rows(fused), decision_rows(general)
    assert [{k: v for k, v in r.items() if k not in strip} for r in a] == \
           [{k: v for k, v in r.items() if k not in strip} for r in b]
    assert any(str(r["reason"]).startswith("near_duplicate_of") for r in a)
    assert not os.path.exists(os.path.join(fused, "verdicts"))


def test_run_without_a_model_with_dedup_equals_the_general_graph(pool, tmp_path, run_cli, fused_and_graph,
                                                                 decision_rows,
                                                                 assert_same_outputs):
    """Rules, exact and near duplicates on a pool with broken shards: scores by shard, dedup by part;
    every file (scores, decisions, file errors, output shards, uids) is the general graph's."""
    recipe = tmp_path / "dedup.yaml"
    recipe.write_text("name: dedup\nstages:\n  - caption_length: {min_words: 2}\n"
                      "  - exact_dedup: {}\n  - near_dedup: {tolerance: 8}\n")
    fused, general = fused_and_graph("dedup", "run", "--recipe", str(recipe), "--input", f"{pool[0]}/*.tar")
    _same_outputs(assert_same_outputs, fused, general, len(glob.glob(os.path.join(general, "decisions", "*.parquet"))))
    reasons = {str(r["reason"]).split(":")[0] for r in decision_rows(fused)}
    assert {"exact_duplicate_of", "near_duplicate_of"} <= reasons, reasons
