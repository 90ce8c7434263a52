"""image_based in annotate mode (HYPE's c_IN term): drops nothing, and records 1.0 exactly for the rows
the filter mode keeps (caption pre-filter and nearest centroid a target), 0.0 for the others."""

from __future__ import annotations

import numpy as np

import beam_filter.recipe  # noqa: F401  (registers every stage)
from beam_filter.identity import row_token
from beam_filter.registry import build_stage


def test_annotate_marks_exactly_the_rows_the_filter_keeps(tmp_path):
    rng = np.random.default_rng(3)
    centroids = rng.standard_normal((12, 6)).astype(np.float32)
    np.save(tmp_path / "c.npy", centroids)
    np.save(tmp_path / "t.npy", np.array([0, 3, 5, 7], dtype=np.int64))
    captions = ["a small brown dog running on the beach", "ok", "x", "une photo d'un chat noir sur le toit"]
    rows = [{"uid": f"{i:032x}", "shard": "s.tar", "key": f"{i:04d}", "caption": captions[i % 4],
             "e": rng.standard_normal(6).astype(np.float32)} for i in range(200)]
    params = {"centroids": str(tmp_path / "c.npy"), "targets": str(tmp_path / "t.npy"), "embedding": "e"}
    filt = build_stage("ib", "image_based", params)
    note = build_stage("ib", "image_based", {**params, "mode": "annotate"})
    dropped = {token for token, verdict in filt.batch_verdicts(rows) if verdict.reason}
    marks = dict(note.batch_verdicts(rows))
    assert set(marks) == {row_token(r) for r in rows}                      # every row, none dropped
    assert all(v.reason is None and v.copies is None for v in marks.values())
    passed = {t for t, v in marks.items() if v.columns == {"ib_pass": 1.0}}
    failed = {t for t, v in marks.items() if v.columns == {"ib_pass": 0.0}}
    assert passed | failed == set(marks)
    assert failed == dropped and passed and failed
    assert note.verdict_columns() == ("ib_pass",) and filt.verdict_columns() == ()
