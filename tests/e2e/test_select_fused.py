"""select with per-row rules runs fused per input part; its files equal the general graph's."""

from __future__ import annotations

import glob
import os


def _same_files(a: str, b: str, sub: str = "decisions") -> list[str]:
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(a, sub, "*.parquet")))
    assert names == sorted(os.path.basename(p) for p in glob.glob(os.path.join(b, sub, "*.parquet")))
    for name in names:
        with open(os.path.join(a, sub, name), "rb") as fa, open(os.path.join(b, sub, name), "rb") as fb:
            assert fa.read() == fb.read(), name
    return names


def test_fused_select_on_metadata_equals_the_general_graph(tmp_path, run_cli):
    from beam_filter.devtools.synthetic_metadata import write_synthetic_metadata

    meta = str(tmp_path / "metadata")
    write_synthetic_metadata(meta, 3000, seed=2, parts=3)
    fused, general = str(tmp_path / "fused"), str(tmp_path / "general")
    assert run_cli("select", "--recipe", "datacomp_basic", "--metadata", meta, "--output", fused) == 0
    assert run_cli("select", "--recipe", "datacomp_basic", "--metadata", meta, "--output", general,
                   "--no-fusion") == 0
    assert len(_same_files(fused, general)) == 3
    with open(os.path.join(fused, "uids.npy"), "rb") as a, open(os.path.join(general, "uids.npy"), "rb") as b:
        assert a.read() == b.read()


def test_fused_select_with_a_fixed_threshold_and_image_based_equals_the_general_graph(tmp_path, run_cli):
    """A scored stage with a fixed threshold and a row-wise group stage (image_based's nearest
    centroid) also run inside each part; the decisions are the general graph's, byte for byte."""
    import numpy as np

    from beam_filter.devtools.synthetic_metadata import write_synthetic_metadata

    meta = str(tmp_path / "metadata")
    write_synthetic_metadata(meta, 2000, seed=4, parts=2)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "c.npy", rng.standard_normal((64, 768)).astype(np.float32))
    np.save(tmp_path / "t.npy", np.arange(0, 64, 2, dtype=np.int64))
    sets = {"image_based": ["--set", f"image_based.centroids={tmp_path}/c.npy",
                            "--set", f"image_based.targets={tmp_path}/t.npy"],
            "datacomp_b32_th025": []}
    for recipe, extra in sets.items():
        fused, general = str(tmp_path / f"{recipe}_f"), str(tmp_path / f"{recipe}_g")
        assert run_cli("select", "--recipe", recipe, "--metadata", meta, "--output", fused, *extra) == 0
        assert run_cli("select", "--recipe", recipe, "--metadata", meta, "--output", general, "--no-fusion",
                       *extra) == 0
        assert len(_same_files(fused, general)) == 2, recipe
        with open(os.path.join(fused, "uids.npy"), "rb") as a, open(os.path.join(general, "uids.npy"), "rb") as b:
            assert a.read() == b.read(), recipe


def test_fused_select_on_scores_equals_the_general_graph(clean_pool, tmp_path, run_cli):
    scores = str(tmp_path / "scores")
    assert run_cli("score", "--recipe", "datacomp_basic", "--input", f"{clean_pool[0]}/*.tar",
                   "--output", scores) == 0
    fused, general = str(tmp_path / "fused"), str(tmp_path / "general")
    assert run_cli("select", "--recipe", "datacomp_basic", "--scores", scores, "--output", fused) == 0
    assert run_cli("select", "--recipe", "datacomp_basic", "--scores", scores, "--output", general,
                   "--no-fusion") == 0
    assert _same_files(fused, general)


def test_fused_select_with_top_fractions_equals_the_general_graph(tmp_path, run_cli):
    """Rank-staged stages (a top fraction) run by parts too: each part sends its alive rows' rank
    keys, the exact threshold comes back as a side input. A rule before the fraction, two
    fractions in a row (the second ranks only what the first kept) and a fraction before a
    row-wise group stage (DataComp's image_based ∩ clip 30%) all give the general graph's bytes,
    thresholds included."""
    import numpy as np

    from beam_filter.devtools.synthetic_metadata import write_synthetic_metadata

    meta = str(tmp_path / "metadata")
    write_synthetic_metadata(meta, 3000, seed=6, parts=3)
    rng = np.random.default_rng(1)
    np.save(tmp_path / "c.npy", rng.standard_normal((64, 768)).astype(np.float32))
    np.save(tmp_path / "t.npy", np.arange(0, 64, 3, dtype=np.int64))
    chained = tmp_path / "chained.yaml"
    chained.write_text(
        "name: chained\nstages:\n"
        "  - datacomp_basic: {}\n"
        "  - clip_l14: {type: clip, model: ViT-L-14, pretrained: openai, fraction: 0.5, flip: false}\n"
        "  - clip_b32: {type: clip, model: ViT-B-32, pretrained: openai, fraction: 0.45, flip: false}\n")
    sets = {"datacomp_clip_l14_30pct": [],
            str(chained): [],
            "image_based_intersect_clip_score": ["--set", f"image_based.centroids={tmp_path}/c.npy",
                                                 "--set", f"image_based.targets={tmp_path}/t.npy"]}
    for n, (recipe, extra) in enumerate(sets.items()):
        fused, general = str(tmp_path / f"f{n}"), str(tmp_path / f"g{n}")
        assert run_cli("select", "--recipe", recipe, "--metadata", meta, "--output", fused, *extra) == 0
        assert run_cli("select", "--recipe", recipe, "--metadata", meta, "--output", general, "--no-fusion",
                       *extra) == 0
        assert len(_same_files(fused, general)) == 3, recipe
        for name in ("uids.npy", *sorted(os.listdir(os.path.join(general, "thresholds")))):
            sub = name if name == "uids.npy" else os.path.join("thresholds", name)
            with open(os.path.join(fused, sub), "rb") as a, open(os.path.join(general, sub), "rb") as b:
                assert a.read() == b.read(), (recipe, name)
        kept = np.load(os.path.join(fused, "uids.npy"))
        assert 0 < len(kept) < 3000, recipe
        assert _execution(fused) == "by_part" and _execution(general) == "graph", recipe


def _execution(output: str) -> str:
    import json

    with open(os.path.join(output, "report.json")) as f:
        return json.load(f)["timings"]["execution"]
