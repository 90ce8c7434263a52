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


def test_fused_select_on_scores_equals_the_general_graph(clean_pool, tmp_path, run_cli):
    scores = str(tmp_path / "scores")
    assert run_cli("score", "--recipe", "datacomp_basic", "--input", f"{clean_pool[0]}/*.tar",
                   "--output", scores) == 0
    fused, general = str(tmp_path / "fused"), str(tmp_path / "general")
    assert run_cli("select", "--recipe", "datacomp_basic", "--scores", scores, "--output", fused) == 0
    assert run_cli("select", "--recipe", "datacomp_basic", "--scores", scores, "--output", general,
                   "--no-fusion") == 0
    assert _same_files(fused, general)
