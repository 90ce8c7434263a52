"""`select --metadata` with DataComp's released file formats: .pt centroids and ImageNet target
embeddings (several files) give the uids.npy of DataComp's image_based rule, alone and
intersected with CLIP L/14 30% -- the rule written here from baselines/apply_filter.py."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch


def _records(uids) -> np.ndarray:
    pairs = sorted((int(u[:16], 16), int(u[16:32], 16)) for u in uids)
    return np.array(pairs, dtype=np.dtype("u8,u8"))


@pytest.fixture(scope="module")
def datacomp_files(datacomp_meta, tmp_path_factory):
    d = tmp_path_factory.mktemp("datacomp_files")
    rng = np.random.default_rng(5)
    feats = datacomp_meta.ref.feats["l14_img"].astype(np.float32)
    in1k = [torch.from_numpy((feats[rng.choice(len(feats), 12, replace=False)]
                              + rng.normal(size=(12, 768)).astype(np.float32) / 60).astype(np.float16))
            for _ in range(2)]
    torch.save(datacomp_meta.centroids, str(d / "medium_centroids_l14.pt"), pickle_protocol=4)
    paths = []
    for i, t in enumerate(in1k):
        torch.save({"image_features": t}, str(d / f"in1k_clip_vit_l14_{i}.pt"))
        paths.append(str(d / f"in1k_clip_vit_l14_{i}.pt"))
    # DataComp: target ids = unique argmax of (float) ImageNet features @ centroids.T
    target = torch.cat(in1k).float().numpy()
    cents = torch.from_numpy(datacomp_meta.centroids).float().numpy()
    targets = np.unique(np.argmax(target @ cents.T, axis=1))
    assert 0 < len(targets) < len(cents)
    return d, paths, targets


@pytest.mark.parametrize("recipe", ["image_based", "image_based_intersect_clip_score"])
def test_select_with_datacomp_pt_files_matches_datacomps_rule(recipe, datacomp_meta, datacomp_files,
                                                               run_cli, tmp_path):
    d, paths, targets = datacomp_files
    ref = datacomp_meta.ref
    out = tmp_path / "out"
    assert run_cli("select", "--metadata", os.path.join(datacomp_meta.dir, "metadata"), "--recipe", recipe,
                   "--output", str(out), "--set", f"image_based.centroids={d}/medium_centroids_l14.pt",
                   "--set", f"image_based.targets={','.join(paths)}") == 0
    want = ref.image_based(datacomp_meta.centroids, targets)
    if recipe != "image_based":
        want = want & ref.clip_score("l14", fraction=0.3)
    got = np.load(out / "uids.npy")
    assert len(got) > 0 and np.array_equal(got, _records(ref.uids(want)))
