""".pt files written by torch.save at its default pickle protocol (2) and at protocol 4 (DataComp's
image_based_clustering.py) load through the safe loader (cluster/centroids.py), tensors and numpy
arrays alike, with and without torch's own weights_only loader, and pickled code never runs."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest
import torch

from beam_filter.cluster import centroids as cc
from beam_filter.errors import UserError

PROTOCOLS = (2, 4)


def _arrays():
    rng = np.random.default_rng(19)
    f32 = rng.normal(size=(6, 5)).astype(np.float32)
    return {
        "numpy_f32": (f32, f32),
        "numpy_i64": (np.arange(7, dtype=np.int64), np.arange(7, dtype=np.int64)),
        "tensor_f32": (torch.from_numpy(f32.copy()), f32),
        "tensor_f16": (torch.from_numpy(f32.astype(np.float16)), f32.astype(np.float16).astype(np.float32)),
        "tensor_bf16": (torch.from_numpy(f32).bfloat16(), torch.from_numpy(f32).bfloat16().float().numpy()),
        "tensor_i64": (torch.arange(7), np.arange(7)),
        # a view: offset and strides into a larger storage
        "tensor_view": (torch.from_numpy(f32.copy())[1:, ::2].t(), f32[1:, ::2].T),
        "features_dict": ({"image_features": torch.from_numpy(f32.astype(np.float16))},
                          f32.astype(np.float16).astype(np.float32)),
    }


def _save(path, obj, protocol):
    torch.save(obj, str(path), pickle_protocol=protocol)
    return str(path)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", sorted(_arrays()))
def test_torch_save_files_load_at_both_protocols(tmp_path, protocol, kind):
    obj, want = _arrays()[kind]
    path = _save(tmp_path / f"{kind}.pt", obj, protocol)
    got = cc.load_array_file(path, "targets")
    assert got.dtype.kind == want.dtype.kind
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", sorted(_arrays()))
def test_numeric_only_unpickler_reads_every_file_without_torch_load(tmp_path, protocol, kind):
    """The fallback alone (what runs where torch is absent or refuses the file)."""
    obj, want = _arrays()[kind]
    data = open(_save(tmp_path / "x.pt", obj, protocol), "rb").read()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        name = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        value = cc._NumpyOnlyUnpickler(io.BytesIO(z.read(name)), z, name[: -len("data.pkl")]).load()
    if isinstance(value, dict):
        value = value["image_features"]
    assert isinstance(value, np.ndarray)
    np.testing.assert_array_equal(value.astype(want.dtype) if value.dtype.kind == "f" else value, want)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_datacomp_centroid_file_at_default_protocol(tmp_path, protocol):
    cents = np.random.default_rng(2).normal(size=(9, 4)).astype(np.float32)
    path = _save(tmp_path / "medium_centroids_l14.pt", cents, protocol)
    got = cc.load_centroids_file(path)
    assert got.shape == (9, 4)
    np.testing.assert_array_equal(got, cents)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_pickled_code_is_refused_at_both_protocols(tmp_path, protocol):
    marker = str(tmp_path / "ran")
    for i, obj in enumerate([_RunsCode(marker), {"image_features": _RunsCode(marker)},
                             [torch.ones(2), _RunsCode(marker)]]):
        path = _save(tmp_path / f"evil{i}.pt", obj, protocol)
        with pytest.raises(UserError, match=f"evil{i}.pt"):
            cc.load_array_file(path, "targets")
    assert not os.path.exists(marker)


def test_codecs_encode_is_only_latin1_bytes():
    assert cc._latin1_bytes("\x00\xff", "latin1") == b"\x00\xff"
    with pytest.raises(UserError):
        cc._latin1_bytes("x", "rot13")
    with pytest.raises(UserError):
        cc._latin1_bytes(b"x", "latin1")


def test_tensor_reaching_past_its_storage_is_refused():
    storage = np.arange(6, dtype=np.float32)
    np.testing.assert_array_equal(cc._rebuild_tensor(storage, 1, (2, 2), (2, 1)), [[1, 2], [3, 4]])
    with pytest.raises(UserError, match="past its storage"):
        cc._rebuild_tensor(storage, 3, (2, 2), (2, 1))
    with pytest.raises(UserError):
        cc._rebuild_tensor(storage, 0, (2, 2), (-1, 1))
