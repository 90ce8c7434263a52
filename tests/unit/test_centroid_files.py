"""image_based reads DataComp's files as released (.npy/.pt, ids or target embeddings), and a
row's nearest centroid does not depend on its batch (cluster/centroids.py's tie rule)."""

from __future__ import annotations

import io
import math
import pickle

import numpy as np
import pytest
import torch

from beam_filter.cluster.centroids import (CentroidIndex, load_array_file, load_centroids_file,
                                           load_target_ids, parse_target_paths)
from beam_filter.errors import UserError


def _torch_save(path, obj, **kw):
    torch.save(obj, str(path), **kw)
    return str(path)


def test_datacomp_pt_centroids_and_embeddings_load_as_released(tmp_path):
    rng = np.random.default_rng(0)
    cents = rng.normal(size=(7, 16)).astype(np.float32)
    # image_based_clustering.py: torch.save(numpy array, path, pickle_protocol=4)
    pt = _torch_save(tmp_path / "medium_centroids_l14.pt", cents, pickle_protocol=4)
    assert np.array_equal(load_centroids_file(pt), cents)
    np.save(tmp_path / "c.npy", cents)
    assert np.array_equal(load_centroids_file(str(tmp_path / "c.npy")), cents)
    # in1k_clip_vit_l14_{i}.pt: {"image_features": fp16 tensor}
    feats = torch.from_numpy(rng.normal(size=(5, 16)).astype(np.float16))
    emb = _torch_save(tmp_path / "in1k_clip_vit_l14_0.pt", {"image_features": feats})
    assert np.array_equal(load_array_file(emb, "t"), feats.float().numpy())
    bare = _torch_save(tmp_path / "bare.pt", torch.arange(3))
    assert load_array_file(bare, "t").tolist() == [0, 1, 2]


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pt_files_never_run_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    _torch_save(path, {"image_features": Evil()}, pickle_protocol=4)
    with pytest.raises(UserError, match="evil.pt"):
        load_array_file(str(path), "targets")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="junk.pt"):
        load_centroids_file(str(tmp_path / "junk.pt"))
    obj = tmp_path / "obj.pt"
    _torch_save(obj, np.array(["a", None], dtype=object), pickle_protocol=4)
    with pytest.raises(UserError, match="obj.pt"):
        load_array_file(str(obj), "targets")


def test_target_files_ids_or_embeddings_several(tmp_path):
    rng = np.random.default_rng(1)
    cents = rng.normal(size=(20, 8)).astype(np.float32)
    index = CentroidIndex(cents)
    e1 = rng.normal(size=(30, 8)).astype(np.float32)
    e2 = rng.normal(size=(30, 8)).astype(np.float32)
    p1 = _torch_save(tmp_path / "in1k_0.pt", {"image_features": torch.from_numpy(e1)})
    np.save(tmp_path / "in1k_1.npy", e2)
    np.save(tmp_path / "ids.npy", np.array([19, 3, 3]))
    # DataComp's rule written here: unique argmax of features @ centroids.T over all files
    want = np.unique(np.argmax(np.concatenate([e1, e2]) @ cents.T, axis=1))
    got = load_target_ids([p1, str(tmp_path / "in1k_1.npy")], index)
    assert np.array_equal(got, want)
    mixed = load_target_ids(f"{p1},{tmp_path}/ids.npy", index)
    assert np.array_equal(mixed, np.union1d(np.unique(np.argmax(e1 @ cents.T, axis=1)), [3, 19]))
    assert parse_target_paths("a.pt, b.pt") == ["a.pt", "b.pt"]
    np.save(tmp_path / "bad_ids.npy", np.array([20]))
    with pytest.raises(UserError, match=r"\[0, 20\)"):
        load_target_ids(str(tmp_path / "bad_ids.npy"), index)
    np.save(tmp_path / "bad_dim.npy", np.zeros((2, 5), np.float32))
    with pytest.raises(UserError, match="5-d"):
        load_target_ids(str(tmp_path / "bad_dim.npy"), index)


def _exact_best(x, cents):
    """Exact inner products (math.fsum of float64 products: exact sums of exact products,
    rounded once), largest first, lowest id on a tie."""
    dots = [math.fsum(float(a) * float(b) for a, b in zip(x, c)) for c in cents]
    return max(range(len(cents)), key=lambda j: (dots[j], -j))


def test_nearest_centroid_is_independent_of_batching():
    """An embedding about one float32 ulp closer to one centroid than to another gets the same
    centroid in every batch placement: the exact-arithmetic one."""
    rng = np.random.default_rng(2)
    d = 768
    base = rng.normal(size=d).astype(np.float32)
    base /= np.linalg.norm(base)
    near = base.copy()
    j = int(np.argmax(np.abs(base)))
    near[j] = np.nextafter(near[j], np.float32(np.inf))      # one ulp on one coordinate
    others = rng.normal(size=(60, d)).astype(np.float32) / 40
    cents = np.concatenate([others[:30], near[None], base[None], others[30:]])   # ids 30 and 31
    x = (base + rng.normal(size=d).astype(np.float32) * 1e-3).astype(np.float32)
    want = _exact_best(x.astype(np.float64), cents.astype(np.float64))
    assert want in (30, 31)
    index = CentroidIndex(cents)
    seen = set()
    for _ in range(60):
        size = int(rng.integers(20, 1025))
        batch = rng.normal(size=(size, d)).astype(np.float32) / 30
        pos = int(rng.integers(size))
        batch[pos] = x
        seen.add(int(index.search(batch)[pos]))
        seen.add(int(index.search(batch, chunk=int(rng.integers(1, 64)))[pos]))
    assert seen == {want}


def test_exact_tie_goes_to_the_lowest_centroid_id():
    rng = np.random.default_rng(3)
    c = rng.normal(size=(5, 32)).astype(np.float32)
    cents = np.concatenate([c[:3], c[1:2], c[3:]])      # id 3 duplicates id 1
    x = np.repeat(c[1:2], 40, axis=0)
    assert set(CentroidIndex(cents).search(x).tolist()) == {1}


def test_without_near_ties_it_is_datacomps_float32_argmax():
    rng = np.random.default_rng(4)
    cents = rng.normal(size=(50, 64)).astype(np.float32)
    x = rng.normal(size=(500, 64)).astype(np.float16).astype(np.float32)
    assert np.array_equal(CentroidIndex(cents).search(x), np.argmax(x @ cents.T, axis=1))
