"""MLM-Filter presets end to end through the CLI with the tiny test model."""

from __future__ import annotations

import glob
import os

import numpy as np
import pyarrow.parquet as pq


def test_presets_end_to_end_with_test_models(tmp_path, run_cli, write_small_pool):
    from beam_filter.stages.mlm import MLMFilter

    pool = str(tmp_path / "pool")
    uids = write_small_pool(pool)
    models = str(tmp_path / "models")
    MLMFilter.write_test_model(models)        # only this recipe's model (make-test-models writes all)
    assert os.path.isdir(os.path.join(models, "mlm_filter_tiny"))

    def run(recipe, *extra):
        out = str(tmp_path / f"out_{recipe}")
        assert run_cli("run", "--recipe", recipe, "--input", f"{pool}/*.tar", "--output", out,
                       "--test-models", models, *extra) == 0
        rows = []
        for f in sorted(glob.glob(os.path.join(out, "decisions", "*.parquet"))):
            rows.extend(pq.read_table(f).to_pylist())
        return rows

    dfn = str(tmp_path / "dfn.npy")
    listed = uids[5]
    np.save(dfn, np.array([(int(listed[:16], 16), int(listed[16:], 16))], dtype="u8,u8"))
    # one run covers the mlm stage inside a union, uid_subset and exact dedup
    rows = run("open_qwen2vl", "--set", f"dfn_or_mlm.dfn.path={dfn}")
    assert len(rows) == 10
    by_key = {r["key"]: r for r in rows}
    assert by_key["000000003"]["reason"] == "corrupt_image"
    su = "mlm_semantic_understanding_below_threshold"
    for r in rows:
        if r["key"] == "000000003":
            continue
        score = r["mlm_semantic_understanding_score"]
        mlm_keeps = score is not None and score >= 85
        assert r["kept"] == (mlm_keeps or r["uid"] == listed), r
        if not r["kept"]:
            assert r["reason"] == "none_of:not_in_uid_subset|" + (
                "mlm_unparsable" if score is None else su)
    assert by_key["000000005"]["kept"]
