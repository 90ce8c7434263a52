"""`run` of a model recipe whose group stage clusters the model's embeddings or adds verdict columns
(semdedup, dbp, devil_details, caption_mix, near_dedup with min_similarity) takes the local runner's
bounded path -- scored by shard into work rows files (float32 embeddings), then selected by part,
which writes the scores files with the verdict columns -- and writes the general graph's bytes.

Every output file is compared byte for byte with the general graph's (``--no-fusion``), report.json
without its timings; both outputs come from the same pool and the same tiny models, so the model
columns are the same values on both paths (a test that would notice any other difference).
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np
import pytest

@pytest.fixture(scope="module")
def models(tmp_path_factory, run_cli):
    d = str(tmp_path_factory.mktemp("models"))
    assert run_cli("make-test-models", d) == 0
    return d


@pytest.fixture(scope="module")
def target_embeddings(tmp_path_factory, models):
    """cluster_importance's target set (devil_details): random vectors of the tiny CLIP's width."""
    dim = None
    for path in glob.glob(os.path.join(models, "clip_tiny", "*.json")):
        with open(path) as f:
            dim = json.load(f).get("embed_dim", dim)
    assert dim, "the tiny CLIP config names its embed_dim"
    path = str(tmp_path_factory.mktemp("target") / "target.npy")
    np.save(path, np.random.default_rng(0).standard_normal((32, int(dim))).astype(np.float32))
    return path


CASES = {
    "semdedup": ("--set", "semdedup.n_clusters=4", "--set", "semdedup.eps=0.2"),
    "dbp": ("--set", "semdedup.n_clusters=4", "--set", "semdedup.eps=1e-6", "--set", "dbp.n_clusters=5",
            "--set", "dbp.ratio=0.5", "--set", "dbp.niter=5"),
    "devil_details": ("--set", "caption_frequency.max_count=1"),
    "caption_mix": (),
    "near_dedup": ("--set", "near_dedup.min_similarity=0.2", "--set", "near_dedup.tolerance=12"),
}


def _run_both(run_cli, preset: str, sets: tuple, pool: str, models: str, directory) -> tuple[str, str]:
    """`run` of ``preset`` on the bounded path and on the general graph; their output directories."""
    common = ("run", "--recipe", preset, "--input", f"{pool}/*.tar", "--test-models", models, *sets)
    bounded, graph = str(directory / "bounded"), str(directory / "graph")
    assert run_cli(*common, "--output", bounded) == 0
    assert run_cli(*common, "--output", graph, "--no-fusion") == 0
    return bounded, graph


@pytest.fixture(scope="module")
def semdedup_runs(pool, models, tmp_path_factory, run_cli):
    """semdedup both ways, shared by the comparison and the --resume test (each run costs seconds)."""
    return _run_both(run_cli, "semdedup", CASES["semdedup"], pool[0], models, tmp_path_factory.mktemp("semdedup"))


@pytest.mark.parametrize("preset", sorted(CASES))
def test_run_of_a_group_recipe_is_bounded_and_writes_the_graphs_bytes(preset, pool, tmp_path, run_cli, models,
                                                                     target_embeddings, request, output_files,
                                                                     assert_same_outputs):
    from beam_filter import pipeline
    from beam_filter.recipe import load_recipe

    sets = CASES[preset] + (("--set", f"cluster_importance.target={target_embeddings}")
                            if preset == "devil_details" else ())
    # the case is one the scores files alone could not select (else it tests nothing new)
    recipe = load_recipe(preset, [s for s in sets if s != "--set"])
    assert pipeline._run_needs_work_rows(recipe)
    if preset == "semdedup":
        bounded, graph = request.getfixturevalue("semdedup_runs")
    else:
        bounded, graph = _run_both(run_cli, preset, sets, pool[0], models, tmp_path)
    assert not os.path.exists(os.path.join(bounded, "work_rows")), "work files are removed when the job ends"
    files = output_files(bounded)
    assert any(f.startswith("scores/") for f in files) and any(f.startswith("embeddings/") for f in files)
    assert any(f.startswith("decisions/") for f in files) and "uids.npy" in files
    assert assert_same_outputs(bounded, graph) == ("by_shard, then by_part", "graph")


def test_resumed_run_reads_the_scores_files_as_the_graph_does(pool, tmp_path, run_cli, models, semdedup_runs,
                                                              assert_same_outputs):
    """--resume of a finished run: every shard's rows come from its scores file (fp16 embeddings) on
    both paths, the bounded one writing only decisions; outputs still equal."""
    common = ("run", "--recipe", "semdedup", "--input", f"{pool[0]}/*.tar", "--test-models", models,
              *CASES["semdedup"])
    bounded, graph = str(tmp_path / "bounded"), str(tmp_path / "graph")
    for source, copy in zip(semdedup_runs, (bounded, graph)):
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns(".beam_filter.lock"))
    # a killed run's work files are ours: --resume clears them with the rest of what it recomputes
    os.makedirs(os.path.join(bounded, "work_rows"))
    with open(os.path.join(bounded, "work_rows", "00000000.parquet"), "wb") as f:
        f.write(b"left by a killed run")
    assert run_cli(*common, "--output", bounded, "--resume") == 0
    assert run_cli(*common, "--output", graph, "--resume", "--no-fusion") == 0
    assert not os.path.exists(os.path.join(bounded, "work_rows"))
    assert assert_same_outputs(bounded, graph) == ("by_shard, then by_part", "graph")
