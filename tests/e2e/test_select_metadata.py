"""`beam-filter select --metadata` on synthetic DataComp metadata writes the reference's uids.npy."""

from __future__ import annotations

import json
import os

import numpy as np


def uid_records(uids) -> np.ndarray:
    """DataComp subset format (what its baselines.py ``np.save``s), written out here: sorted u8,u8 pairs."""
    pairs = sorted((int(u.zfill(32)[:16], 16), int(u.zfill(32)[16:32], 16)) for u in uids)
    return np.array(pairs, dtype=np.dtype("u8,u8"))


def test_select_metadata_cli_writes_reference_uids(datacomp_meta, run_cli, tmp_path):
    d, ref, cents, targets = datacomp_meta.dir, datacomp_meta.ref, datacomp_meta.centroids, datacomp_meta.targets
    out = tmp_path / "out"
    args = ["select", "--metadata", os.path.join(d, "metadata"), "--recipe",
            "image_based_intersect_clip_score", "--output", out]
    for ov in datacomp_meta.overrides:
        args += ["--set", ov]
    assert run_cli(*args) == 0
    got = np.load(out / "uids.npy")
    want = uid_records(ref.uids(ref.clip_score("l14", fraction=0.3) & ref.image_based(cents, targets)))
    assert got.dtype == want.dtype and np.array_equal(got, want)
    with open(out / "thresholds" / "clip_l14.json") as f:
        applied = json.load(f)
    scores = ref.df.clip_l14_similarity_score.to_numpy()
    assert applied["threshold"] == -np.sort(-scores)[int(len(scores) * 0.3)]
    assert applied["N"] == datacomp_meta.rows
