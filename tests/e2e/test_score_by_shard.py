"""Model recipes on the local runner run by shard (models in the reading worker, one batch of bytes
held at a time) and, for `run` with a top fraction, select by parts over the scores just written.

Outputs equal the general graph's (RunInference) except model scores, which a different batch
composition may change in the last float32 bits (CPU GEMM kernels differ with the batch's row
count); the by-shard batches are fixed (per shard, the handler's batch size), so reruns are
byte-identical.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest


@pytest.fixture(scope="module")
def clip_twin(tmp_path_factory):
    from beam_filter.stages.clip import ClipStage

    d = str(tmp_path_factory.mktemp("twin"))
    ClipStage.write_test_model(d)
    return d


def _execution(output: str) -> str:
    with open(os.path.join(output, "report.json")) as f:
        return json.load(f)["timings"]["execution"]


def _files(output: str, sub: str) -> list[str]:
    return sorted(os.path.relpath(p, output) for p in glob.glob(os.path.join(output, sub, "*")))


def _same_bytes(a: str, b: str, rel: str) -> bool:
    with open(os.path.join(a, rel), "rb") as fa, open(os.path.join(b, rel), "rb") as fb:
        return fa.read() == fb.read()


def _assert_rows_match(a: str, b: str, rel: str, score_columns: tuple[str, ...]) -> None:
    ta, tb = pq.read_table(os.path.join(a, rel)), pq.read_table(os.path.join(b, rel))
    assert ta.schema == tb.schema, rel
    for name in ta.column_names:
        va, vb = ta.column(name).to_pylist(), tb.column(name).to_pylist()
        if name in score_columns:
            assert np.allclose(np.array(va, float), np.array(vb, float), atol=1e-6, equal_nan=True), (rel, name)
        else:
            assert va == vb, (rel, name)


def test_score_with_a_model_runs_by_shard_and_matches_the_graph(pool, tmp_path, run_cli, clip_twin):
    shards = f"{pool[0]}/*.tar"          # with a truncated tar and a non-tar: file errors too
    common = ("score", "--recipe", "datacomp_b32_th025", "--input", shards, "--test-models", clip_twin)
    by_shard, again, graph = (str(tmp_path / n) for n in ("by_shard", "again", "graph"))
    assert run_cli(*common, "--output", by_shard) == 0
    assert run_cli(*common, "--output", again) == 0
    assert run_cli(*common, "--output", graph, "--no-fusion") == 0
    assert _execution(by_shard) == "by_shard" and _execution(graph) == "graph"
    written = _files(by_shard, "scores") + _files(by_shard, "embeddings") + _files(by_shard, "file_errors")
    assert written and written == (_files(graph, "scores") + _files(graph, "embeddings")
                                   + _files(graph, "file_errors"))
    assert _files(by_shard, "file_errors"), "the broken shards must be reported"
    for rel in written:
        assert _same_bytes(by_shard, again, rel), rel            # reruns: byte-identical
        if rel.startswith("scores"):
            _assert_rows_match(by_shard, graph, rel, ("clip_b32_score",))
        elif rel.startswith("embeddings"):
            ea, eb = np.load(os.path.join(by_shard, rel)), np.load(os.path.join(graph, rel))
            assert list(ea["uids"]) == list(eb["uids"])
            for col in ea.files:
                if col != "uids":
                    assert np.allclose(ea[col].astype(np.float32), eb[col].astype(np.float32), atol=2e-3,
                                       equal_nan=True), (rel, col)
        else:
            assert _same_bytes(by_shard, graph, rel), rel


def test_run_with_a_top_fraction_scores_by_shard_then_selects_by_part(clean_pool, tmp_path, run_cli, clip_twin):
    recipe = tmp_path / "rules_then_fraction.yaml"
    recipe.write_text("name: rules_then_fraction\nstages:\n"
                      "  - caption_length: {min_words: 2}\n"
                      "  - clip_b32: {type: clip, model: ViT-B-32, pretrained: openai, fraction: 0.5, flip: false}\n")
    common = ("run", "--recipe", str(recipe), "--input", f"{clean_pool[0]}/*.tar", "--test-models", clip_twin)
    fused, graph = str(tmp_path / "fused"), str(tmp_path / "graph")
    assert run_cli(*common, "--output", fused) == 0
    assert run_cli(*common, "--output", graph, "--no-fusion") == 0
    assert _execution(fused) == "by_shard, then by_part" and _execution(graph) == "graph"
    decisions = _files(fused, "decisions")
    assert len(decisions) == 3 and decisions == _files(graph, "decisions")
    for rel in decisions:
        _assert_rows_match(fused, graph, rel, ("clip_b32_score",))
    assert _same_bytes(fused, graph, "uids.npy")
    assert _close_thresholds(fused, graph)
    shards = _files(graph, "shards")
    assert shards == _files(fused, "shards")
    for rel in shards:
        if rel.endswith(".tar"):
            assert _same_bytes(fused, graph, rel), rel
    kept = len(np.load(os.path.join(fused, "uids.npy")))
    assert 0 < kept < clean_pool[1]["samples"]


def _close_thresholds(a: str, b: str) -> bool:
    rel = os.path.join("thresholds", "clip_b32.json")
    with open(os.path.join(a, rel)) as fa, open(os.path.join(b, rel)) as fb:
        ta, tb = json.load(fa), json.load(fb)
    return abs(ta.pop("threshold") - tb.pop("threshold")) < 1e-6 and ta == tb
