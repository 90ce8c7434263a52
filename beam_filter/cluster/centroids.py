"""Nearest-centroid search over fixed centroids: DataComp image_based's cluster test.

DataComp's ``image_based`` baseline keeps an image when the nearest centroid of
its L/14 embedding (argmax inner product, a GPU einsum in DataComp, embeddings used
as given: no renormalisation) is a *target* centroid. ``centroids``: a (k, d)
float array (DataComp: faiss k-means, 100,000 clusters on L/14 image features of
the caption-filtered pool; ``beam-filter build-centroids``); ``targets``: integer
ids of the centroids nearest to ImageNet-1k train image features, or those
features themselves. DataComp's own files are read as released
(:func:`load_centroids_file`, :func:`load_target_ids`: ``.npy`` or ``.pt``,
``medium_centroids_l14.pt``, ``in1k_clip_vit_l14_{0..4}.pt``).

Tie rule (:class:`CentroidIndex`): a row's centroid never depends on which rows
share its batch; near-ties within float32 error are settled in float64, then by
the lowest centroid id.

The caption pre-filter comes first (``rules.datacomp.image_based_caption_reason``);
:func:`target_cluster_verdicts` applies both to a batch of rows, one search per
batch. ``kmeans.py`` is the other nearest-centroid code: it normalises both sides
(cosine) for the cluster stages; this module reproduces DataComp's raw inner product.
"""

from __future__ import annotations

import pickle
from typing import Callable, Iterable

import numpy as np

from beam_filter.errors import UserError
from beam_filter.identity import row_token
from beam_filter.records import Verdict

MISS_REASON = "not_in_target_clusters"


# A float32 dot product of length d differs from the exact one by at most d * 2**-24 * |x| |c|
# (the standard bound gamma_d <= d*u for recursive summation, which blocked BLAS kernels stay
# within); twice that covers both sides of a comparison.
_F32_REL_ERROR = 2.0 ** -23


class CentroidIndex:
    """Nearest centroid by inner product, the same answer for a row however rows are batched.

    DataComp assigns with float32 argmax (a GPU einsum, or faiss ``IndexFlatIP``). A float32
    inner product depends on the summation order, which BLAS picks by batch shape, so an
    embedding about one ulp closer to one centroid than to another could land on either
    depending on its batch neighbours. The rule here: a float32 search (any kernel) gives
    the *candidates*, every centroid whose score is within the float32 error bound of the
    row's best; their inner products are then recomputed in float64 one row at a time, and
    the largest wins, the lowest centroid id on an exact float64 tie. Outside near-ties this
    is DataComp's argmax; at a near-tie it is the exact-arithmetic answer, never the batch's.
    """

    def __init__(self, centroids: np.ndarray):
        c = np.ascontiguousarray(centroids, dtype=np.float32)
        if c.ndim != 2 or len(c) == 0:
            raise UserError(f"centroids must be a non-empty (k, d) array, not shape {c.shape}")
        if not np.isfinite(c).all():
            raise UserError("centroids hold NaN or infinite values")
        self.centroids = c
        self.centroids64 = c.astype(np.float64)
        self.max_norm = float(np.sqrt((self.centroids64 ** 2).sum(axis=1)).max())

    def search(self, embeddings: np.ndarray, chunk: int | None = None) -> np.ndarray:
        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        c = self.centroids
        if x.ndim != 2 or x.shape[1] != c.shape[1]:
            raise UserError(f"image_based: embeddings of shape {x.shape} do not match centroids "
                            f"of shape {c.shape} (e.g. L/14 features are 768-d)")
        if len(x) == 0:
            return np.zeros(0, np.int64)
        # About 64 MB of float32 scores per chunk, whatever the number of centroids.
        chunk = chunk or max(1, (1 << 24) // len(c))
        return np.concatenate([self._search_chunk(x[i:i + chunk]) for i in range(0, len(x), chunk)])

    def _search_chunk(self, x: np.ndarray) -> np.ndarray:
        scores = x @ self.centroids.T
        best = scores.max(axis=1)
        x64 = x.astype(np.float64)
        tol = 2 * x.shape[1] * _F32_REL_ERROR * np.sqrt((x64 ** 2).sum(axis=1)) * self.max_norm
        out = np.argmax(scores, axis=1).astype(np.int64)
        rows, cols = np.nonzero(scores >= (best - tol)[:, None].astype(np.float32))
        if len(rows) == len(x):          # one candidate per row: the float32 argmax is exact
            return out
        starts = np.searchsorted(rows, np.arange(len(x) + 1))      # rows come sorted from nonzero
        for i in np.nonzero(np.diff(starts) > 1)[0]:
            cand = cols[starts[i]:starts[i + 1]]     # ascending ids: argmax keeps the lowest on a tie
            exact = (self.centroids64[cand] * x64[i]).sum(axis=1)
            out[i] = cand[int(np.argmax(exact))]
        return out


def nearest_centroids(embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the centroid with the largest inner product, per row (DataComp's argmax; ties as
    :class:`CentroidIndex` decides them). Embeddings are used as given (DataComp does not
    renormalise the fp16 features)."""
    return CentroidIndex(centroids).search(embeddings)


def target_centroids(centroids: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Sorted unique ids of the centroids nearest to ``features`` (DataComp: ImageNet-1k train, L/14)."""
    return np.unique(nearest_centroids(features, centroids)).astype(np.int64)


# ---- DataComp's files: .npy or .pt, centroid ids or target embeddings ---------------------

DATACOMP_FEATURES_KEY = "image_features"     # in1k_clip_vit_l14_{i}.pt: {"image_features": tensor}


def load_array_file(path: str, what: str) -> np.ndarray:
    """A numeric array from ``.npy`` or ``.pt`` (local or gs://), never running pickled code.

    ``.pt``: what DataComp ships: ``torch.save`` of a numpy array (the centroids, pickle
    protocol 4) or of ``{"image_features": tensor}`` (the ImageNet-1k embeddings); a bare
    tensor is accepted too, and any pickle protocol (torch.save's default 2, or 4). Read with
    ``torch.load(weights_only=True)`` where torch accepts the file, else by an unpickler that
    can build nothing but numeric arrays (:class:`_NumpyOnlyUnpickler`).
    """
    from beam_filter import fsio

    if not path.endswith(".pt"):
        return np.asarray(fsio.load_npy(path, what))
    if not fsio.exists(path):
        raise UserError(f"{what} file not found: {path}")
    data = fsio.read_bytes(path)
    try:
        value = _load_pt(data)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - any format problem is the user's file, said in one line
        raise UserError(f"{path}: not a {what} .pt file (torch.save of an array or tensor): "
                        f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}") from None
    if isinstance(value, dict):
        if DATACOMP_FEATURES_KEY not in value:
            raise UserError(f"{path}: a dict without {DATACOMP_FEATURES_KEY!r} (keys: {sorted(map(str, value))[:5]})")
        value = value[DATACOMP_FEATURES_KEY]
    if hasattr(value, "detach"):          # a torch tensor
        value = value.detach().cpu().float().numpy() if value.is_floating_point() else value.cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf":
        raise UserError(f"{path}: {what} must be numeric, not {arr.dtype}")
    return arr


def _load_pt(data: bytes):
    """torch.load(weights_only=True) first; when it refuses (torch 2.x refuses a numpy array at any
    pickle protocol, and anything saved with protocol >= 3, whose FRAME opcode its restricted
    unpickler does not know), or torch is absent, the numeric-only unpickler below."""
    import io
    import zipfile

    try:
        import warnings

        import torch

        with warnings.catch_warnings():     # "pickle protocol 4": read below when torch cannot
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - e.g. a numpy array pickled with protocol 2 or 4: read it below
        pass
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = [n for n in z.namelist() if n.endswith("/data.pkl")]
        if len(names) != 1:
            raise UserError("not a torch.save file (no data.pkl)")
        return _NumpyOnlyUnpickler(io.BytesIO(z.read(names[0])), z, names[0][: -len("data.pkl")]).load()


_NUMPY_GLOBALS = {("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
                  ("numpy", "ndarray"), ("numpy", "dtype")}
# torch.save's storage classes -> the little-endian numpy dtype of their bytes ("bf16": see _storage_array)
_TORCH_STORAGES = {"FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": "bf16",
                   "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
                   "ByteStorage": "u1", "BoolStorage": "?"}


def _latin1_bytes(text, encoding):
    """``_codecs.encode`` as protocol-2 pickles of numpy arrays use it: the array's bytes written as a
    latin-1 str (there is no bytes opcode before protocol 3). Only that conversion is done."""
    if not isinstance(text, str) or encoding != "latin1":
        raise UserError("refusing _codecs.encode other than str -> latin1 bytes")
    return text.encode("latin1")


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    """``torch._utils._rebuild_tensor_v2`` without torch: the (size, stride) view of a storage as a
    numpy copy, bounds-checked; floating tensors come out float32, as ``tensor.float()`` does."""
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise UserError("a tensor without its storage")
    size, stride, offset = tuple(int(v) for v in size), tuple(int(v) for v in stride), int(offset)
    if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0:
        raise UserError(f"a tensor of size {size} and stride {stride} at offset {offset}")
    if 0 not in size and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= len(storage):
        raise UserError(f"a tensor of size {size} reaches past its storage of {len(storage)} elements")
    arr = np.lib.stride_tricks.as_strided(storage[offset:] if len(storage) > offset else storage[:0],
                                          shape=size, strides=[s * storage.itemsize for s in stride],
                                          writeable=False).copy()
    return arr.astype(np.float32) if arr.dtype.kind == "f" else arr


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Builds numeric numpy arrays, torch tensors (as numpy arrays) and plain containers, whatever the
    pickle protocol (2 and 4 tested); any other class is refused, so no pickled code runs.

    Allowed globals are data constructors only: numpy's array reconstruction, ``_codecs.encode``
    restricted to str -> latin-1 bytes (protocol 2), ``torch._utils._rebuild_tensor_v2`` replaced by
    :func:`_rebuild_tensor`, torch storage *names* (mapped to dtypes; the bytes are read from the
    zip's ``data/<key>`` entry by :meth:`persistent_load`), and ``collections.OrderedDict``.
    """

    def __init__(self, file, archive=None, prefix: str = ""):
        super().__init__(file)
        self._archive, self._prefix = archive, prefix

    def find_class(self, module, name):
        if (module, name) in _NUMPY_GLOBALS or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _TORCH_STORAGES:
            return _StorageType(_TORCH_STORAGES[name])
        if (module, name) == ("collections", "OrderedDict"):
            import collections

            return collections.OrderedDict
        raise UserError(f"refusing to load {module}.{name} (only numpy arrays and tensors are read)")

    def persistent_load(self, pid):
        if (self._archive is None or not isinstance(pid, tuple) or len(pid) < 3 or pid[0] != "storage"
                or not isinstance(pid[1], _StorageType)):
            raise UserError(f"an unsupported persistent reference {str(pid)[:80]}")
        try:
            raw = self._archive.read(f"{self._prefix}data/{pid[2]}")
        except KeyError:
            raise UserError(f"tensor storage data/{pid[2]} missing from the file") from None
        return pid[1].array(raw)


class _StorageType:
    """A torch storage class named in a pickle, known only by the dtype of its bytes."""

    def __init__(self, dtype: str):
        self.dtype = dtype

    def array(self, raw: bytes) -> np.ndarray:
        if self.dtype == "bf16":         # bfloat16 is the top half of a float32
            return (np.frombuffer(raw, "<u2").astype("<u4") << 16).view("<f4")
        return np.frombuffer(raw, self.dtype)


def load_centroids_file(path: str) -> np.ndarray:
    """A (k, d) float centroid array from ``.npy`` or DataComp's ``.pt`` (e.g. medium_centroids_l14.pt)."""
    c = load_array_file(path, "centroids")
    if c.ndim != 2 or c.dtype.kind != "f":
        raise UserError(f"{path}: centroids must be a (k, d) float array, not {c.dtype} of shape {c.shape}")
    return c


def parse_target_paths(value) -> list[str]:
    """``targets`` as written in a recipe: one path, several separated by commas, or a list."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    paths = [str(p).strip() for p in items if str(p).strip()]
    if not paths:
        raise UserError("image_based: targets names no file")
    return paths


def load_target_ids(paths, index: "CentroidIndex") -> np.ndarray:
    """Sorted unique target centroid ids from several files, each either centroid ids (a 1-D
    integer array) or target *embeddings* (a 2-D float array, e.g. DataComp's
    ``in1k_clip_vit_l14_{0..4}.pt``: their nearest centroids, DataComp's rule)."""
    k, d = index.centroids.shape
    ids = []
    for path in parse_target_paths(paths):
        a = load_array_file(path, "image_based targets")
        if a.dtype.kind in "iu" and a.ndim == 1:
            if len(a) and (a.min() < 0 or a.max() >= k):
                raise UserError(f"{path}: target centroid ids must be in [0, {k}), "
                                f"found {int(a.min())}..{int(a.max())}")
            ids.append(a.astype(np.int64))
        elif a.dtype.kind == "f" and a.ndim == 2:
            if a.shape[1] != d:
                raise UserError(f"{path}: target embeddings are {a.shape[1]}-d, the centroids {d}-d")
            ids.append(index.search(a))
        else:
            raise UserError(f"{path}: image_based targets must be integer centroid ids (1-D) or "
                            f"float embeddings (2-D), not {a.dtype} of shape {a.shape}")
    return np.unique(np.concatenate(ids)).astype(np.int64)


class TargetClusters:
    """A centroid index and the target centroid ids: which embeddings land in a target cluster."""

    def __init__(self, index: CentroidIndex, targets: np.ndarray, source: str = "targets"):
        """``source`` names the targets (their file) in the error when they are not integer ids
        (:func:`load_target_ids` turns target embeddings into ids)."""
        if not np.issubdtype(targets.dtype, np.integer):
            raise UserError(f"image_based: {source} must hold integer centroid ids, "
                            f"not {targets.dtype}")
        self.index, self.targets = index, targets

    def hits(self, embeddings: np.ndarray) -> np.ndarray:
        """Per row: is its nearest centroid a target?"""
        return np.isin(self.index.search(embeddings), self.targets)


def target_cluster_verdicts(rows: Iterable[dict], pre_reason: Callable[[dict], str | None],
                            embedding_of: Callable[[dict], np.ndarray],
                            clusters: Callable[[], TargetClusters]) -> list[tuple[str, Verdict]]:
    """DataComp image_based on a batch of rows: ``(row token, Verdict)`` for every dropped row.

    A row failing ``pre_reason`` (the caption pre-filter) is dropped with that reason;
    the others are searched together and dropped with ``not_in_target_clusters`` when
    their nearest centroid is not a target. ``embedding_of`` is asked only for searched
    rows; ``clusters`` is called only when some row is searched (it loads the index).
    """
    out, searched = [], []
    for row in rows:
        why = pre_reason(row)
        if why is not None:
            out.append((row_token(row), Verdict(reason=why)))
        else:
            searched.append(row)
    if searched:
        index = clusters()
        hit = index.hits(np.stack([embedding_of(r) for r in searched]))
        out.extend((row_token(r), Verdict(reason=MISS_REASON))
                   for r, ok in zip(searched, hit) if not ok)
    return out
