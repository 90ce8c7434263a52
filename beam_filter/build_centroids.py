"""``beam-filter build-centroids``: the pool centroids of DataComp's image_based baseline.

Reproduces DataComp's ``baselines/image_based_clustering.py``: the L/14 image embeddings
(``l14_img``) of every metadata part, in sorted part order and row order, keeping the rows
that pass the caption filter (fastText ``en``, more than 1 fastText token, more than 5
characters: ``rules.datacomp.image_based_caption_reason``); then faiss k-means with an L2
index, ``niter`` 20, ``seed`` 0 and ``max_points_per_centroid`` 1e7 (so faiss trains on
every point instead of subsampling), 100,000 clusters by default. The output is a
``(k, d)`` float32 array: ``.pt`` (``torch.save`` of the numpy array, pickle protocol 4,
as DataComp ships ``medium_centroids_l14.pt``) or ``.npy``; the image_based stage reads either.

Input: a DataComp metadata directory (``--metadata``: parquet + npz), or the output of a
``score`` run whose recipe has an L/14 clip stage (``--scores``, embedding
``--embedding clip_l14_image_embedding``; the caption filter reads the rows' captions).

Two ways to run, the same centroids (same sample, same order, same faiss call):

* **one machine** (default): parts read one after the other, in this process;
* **distributed** (``--distributed``, implied by ``--dataflow``): a Beam graph
  (``transforms/build_centroids.py``) on the local runner or Dataflow. Each worker reads
  whole parts, applies the caption filter and the sampling rule to them and sends on only
  the sampled embeddings; the samples are gathered on one worker, which trains faiss and
  writes the file. Optionally (``--assign DIR``) a second distributed pass writes every
  part's nearest centroids (:func:`assign_part`) for cluster statistics.

**Sampling rule** (``--sample-ratio r``, ``--sample-salt s``): a row is trained on when
``uid_unit(uid, s) < r`` (``cluster/sampling.py``: blake2b of ``"s/uid"`` mapped to [0, 1)),
so the sample is the same on any number of workers and in any read order, and another
salt draws another sample. DataComp's ``--sample_ratio`` draws rows with
``np.random.choice`` per worker process instead (not reproducible across worker counts).

**Memory**: the training sample is the bound. k-means runs on one machine, as in DataComp
(whose faiss index is on GPUs; here faiss uses the GPUs when the installed faiss has any,
else the CPU): it holds all sampled embeddings as float32 (rows x d x 4 bytes; the medium
pool, caption-filtered, about 40M x 768 x 4 B = 120 GB, so use ``--sample-ratio`` or a
machine that large) plus faiss's working copy. A part is read whole on one worker at a
time (one part's rows; never all parts at once) and only its sample travels on.
"""

from __future__ import annotations

import dataclasses
import io
import os
import time

import numpy as np

from beam_filter import fsio
from beam_filter.errors import UserError

NUM_CLUSTERS = 100_000
NITER = 20
SEED = 0
MAX_POINTS_PER_CENTROID = 10_000_000
SAMPLE_SALT = "build-centroids"       # the default salt of the sampling rule
ASSIGN_COLUMNS = ("uid", "centroid", "caption_ok")


@dataclasses.dataclass(frozen=True)
class Part:
    """One input part: a metadata parquet (+ npz) or a scores parquet (+ embeddings beside it)."""

    index: int            # position in sorted part order: the order DataComp concatenates
    path: str
    embeddings: str | None
    kind: str             # "metadata" | "scores"

    @property
    def stem(self) -> str:
        name = os.path.basename(self.path.rstrip("/"))
        return name[: -len(".parquet")] if name.endswith(".parquet") else name


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Which rows a part contributes to the training sample (module docstring: Sampling rule)."""

    key: str = "l14_img"
    caption_filtering: bool = True
    sample_ratio: float = -1.0        # <= 0 or >= 1: every row that passes the caption filter
    sample_salt: str = SAMPLE_SALT
    lid_model: str | None = None


def caption_passes(caption: str | None, lid_model: str | None = None) -> bool:
    """DataComp's caption_filter for image_based_clustering (and apply_filter's image_based)."""
    from beam_filter.rules.datacomp import image_based_caption_reason
    from beam_filter.rules.language import detect_language

    return image_based_caption_reason(caption, detect_language(caption, lid_model)[0]) is None


def list_parts(metadata_dir: str | None = None, scores_dir: str | None = None) -> list[Part]:
    """The input parts in sorted order; a one-line error for a missing or empty input."""
    if bool(metadata_dir) == bool(scores_dir):
        raise UserError("build-centroids needs exactly one of --metadata DIR or --scores DIR")
    if metadata_dir:
        from beam_filter.datacomp_metadata import list_metadata_files

        files = list_metadata_files(metadata_dir)
        if not files:
            raise UserError(f"--metadata {metadata_dir}: no parquet parts")
        for parquet, npz in files:
            if npz is None:
                raise UserError(f"{parquet}: no .npz beside it (the embeddings)")
        return [Part(i, p, n, "metadata") for i, (p, n) in enumerate(files)]
    from beam_filter.layout import OutputLayout, embeddings_beside

    files = OutputLayout(scores_dir).score_files()
    if not files:
        raise UserError(f"--scores {scores_dir}: no scores/*.parquet")
    return [Part(i, p, embeddings_beside(p), "scores") for i, p in enumerate(files)]


def read_part_rows(part: Part, key: str) -> list[dict]:
    """One part's rows (uid, caption, the embedding ``key``), in file order."""
    if part.kind == "metadata":
        from beam_filter.datacomp_metadata import iter_metadata_rows

        return list(iter_metadata_rows(part.path, part.embeddings, embeddings=[key]))
    from beam_filter import tables

    return tables.read_rows(part.path, part.embeddings)


def _caption(row: dict):
    return row.get("text", row.get("caption"))


def _sampled(row: dict, s: Sampling) -> bool:
    from beam_filter.cluster.sampling import uid_unit

    return (row.get(s.key) is not None
            and (not s.caption_filtering or caption_passes(_caption(row), s.lid_model))
            and (s.sample_ratio <= 0 or s.sample_ratio >= 1 or uid_unit(str(row.get("uid")), s.sample_salt)
                 < s.sample_ratio))


def part_sample(part: Part, s: Sampling) -> np.ndarray | None:
    """The (n, d) float32 embeddings one part contributes (rows in file order), None if none."""
    keep = [r for r in read_part_rows(part, s.key) if _sampled(r, s)]
    if not keep:
        return None
    return np.stack([np.asarray(r[s.key], dtype=np.float32) for r in keep])


def stack_samples(samples) -> np.ndarray:
    """``(part index, array or None)`` pairs, in any order -> the training matrix in part order."""
    arrays = [a for _, a in sorted(samples, key=lambda kv: kv[0]) if a is not None and len(a)]
    if not arrays:
        raise UserError("build-centroids: no embedding passed the caption filter (and the sample)")
    return np.vstack(arrays).astype(np.float32)


def load_embeddings(metadata_dir: str | None = None, scores_dir: str | None = None, key: str = "l14_img",
                    caption_filtering: bool = True, sample_ratio: float = -1.0,
                    lid_model: str | None = None, sample_salt: str = SAMPLE_SALT) -> np.ndarray:
    """The (n, d) float32 embeddings DataComp clusters, rows in part order then row order."""
    s = Sampling(key, caption_filtering, sample_ratio, sample_salt, lid_model)
    return stack_samples((p.index, part_sample(p, s)) for p in list_parts(metadata_dir, scores_dir))


def train_kmeans(embeddings: np.ndarray, num_clusters: int = NUM_CLUSTERS, seed: int = SEED,
                 niter: int = NITER) -> np.ndarray:
    """faiss k-means as image_based_clustering.train_kmeans sets it up: an L2 index, on every GPU
    the installed faiss sees (DataComp's setup), else on the CPU."""
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if num_clusters < 1 or num_clusters > len(x):
        raise UserError(f"build-centroids: {num_clusters} clusters need at least as many embeddings "
                        f"(have {len(x)})")
    d = x.shape[1]
    clus = faiss.Clustering(d, num_clusters)
    clus.niter = niter
    clus.seed = seed
    clus.max_points_per_centroid = MAX_POINTS_PER_CENTROID
    clus.train(x, _l2_index(faiss, d))
    return faiss.vector_float_to_array(clus.centroids).reshape(num_clusters, d)


def _l2_index(faiss, d: int):
    """IndexFlatL2; replicated on every GPU (fp32, no float16 storage) when faiss is built with GPU
    support and sees one, as DataComp's GpuIndexFlatL2 / IndexReplicas setup."""
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if gpus > 0 and hasattr(faiss, "index_cpu_to_all_gpus"):
        co = faiss.GpuMultipleClonerOptions()
        co.useFloat16 = False
        co.shard = False
        return faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(d), co=co)
    return faiss.IndexFlatL2(d)


def save_centroids(path: str, centroids: np.ndarray) -> None:
    """``.pt``: torch.save of the numpy array, pickle protocol 4 (DataComp's file); else ``.npy``."""
    buf = io.BytesIO()
    if path.endswith(".pt"):
        import torch

        torch.save(np.ascontiguousarray(centroids, dtype=np.float32), buf, pickle_protocol=4)
    else:
        np.save(buf, np.ascontiguousarray(centroids, dtype=np.float32), allow_pickle=False)
    fsio.write_bytes_atomic(path, buf.getvalue())


# ---- the assignment pass ----------------------------------------------------------------------

def assign_part(part: Part, index, s: Sampling) -> dict:
    """Every row of a part with an embedding: its uid, nearest centroid and caption verdict.

    The nearest centroid is the image_based stage's own rule (``cluster.centroids.CentroidIndex``:
    DataComp's argmax inner product, ties independent of batching), so these ids are the
    clusters image_based will put the rows in. ``caption_ok``: DataComp's caption filter
    (True for every row with ``--disable-caption-filtering``). Returns the columns.
    """
    rows = [r for r in read_part_rows(part, s.key) if r.get(s.key) is not None]
    emb = (np.stack([np.asarray(r[s.key], dtype=np.float32) for r in rows]) if rows
           else np.zeros((0, index.centroids.shape[1]), np.float32))
    return {"uid": [str(r.get("uid")) for r in rows],
            "centroid": index.search(emb).astype(np.int64),
            "caption_ok": [not s.caption_filtering or caption_passes(_caption(r), s.lid_model) for r in rows]}


def assign_path(assign_dir: str, part: Part) -> str:
    return fsio.join(assign_dir, f"{part.stem}.parquet")


def write_assignment(path: str, columns: dict) -> int:
    """One part's assignment as parquet (uid string, centroid int64, caption_ok bool); rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"uid": pa.array(columns["uid"], pa.string()),
                      "centroid": pa.array(columns["centroid"], pa.int64()),
                      "caption_ok": pa.array(columns["caption_ok"], pa.bool_())})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    fsio.write_bytes_atomic(path, buf.getvalue())
    return table.num_rows


def _check_outputs(output: str, assign_dir: str | None) -> None:
    if not output.endswith((".pt", ".npy")):
        raise UserError(f"--output {output}: name a .pt (DataComp's format) or .npy file")
    if fsio.exists(output):
        raise UserError(f"--output {output} exists; beam-filter does not replace a file it did not write "
                        "(remove it or choose another name)")
    if assign_dir and fsio.list_files(assign_dir, "*.parquet"):
        raise UserError(f"--assign {assign_dir} already holds .parquet files; beam-filter does not replace "
                        "files it did not write (choose an empty directory)")


# ---- the command ------------------------------------------------------------------------------

def build_centroids(output: str, *, metadata_dir: str | None = None, scores_dir: str | None = None,
                    key: str = "l14_img", num_clusters: int = NUM_CLUSTERS, seed: int = SEED,
                    niter: int = NITER, caption_filtering: bool = True, sample_ratio: float = -1.0,
                    lid_model: str | None = None, sample_salt: str = SAMPLE_SALT,
                    assign_dir: str | None = None) -> dict:
    """One machine: load, cluster, save (and assign); returns what was done (printed by the CLI)."""
    _check_outputs(output, assign_dir)
    parts = list_parts(metadata_dir, scores_dir)
    s = Sampling(key, caption_filtering, sample_ratio, sample_salt, lid_model)
    t0 = time.time()
    emb = stack_samples((p.index, part_sample(p, s)) for p in parts)
    t1 = time.time()
    cents = train_kmeans(emb, num_clusters, seed, niter)
    save_centroids(output, cents)
    done = {"embeddings": int(len(emb)), "dim": int(emb.shape[1]), "clusters": int(num_clusters),
            "parts": len(parts), "load_s": round(t1 - t0, 2), "kmeans_s": round(time.time() - t1, 2),
            "output": output}
    if assign_dir:
        from beam_filter.cluster.centroids import CentroidIndex

        index = CentroidIndex(cents)
        done["assigned"] = sum(write_assignment(assign_path(assign_dir, p), assign_part(p, index, s))
                               for p in parts)
        done["assign_dir"] = assign_dir
    return done


def build_centroids_distributed(output: str, beam_args: list[str], *, metadata_dir: str | None = None,
                                scores_dir: str | None = None, key: str = "l14_img",
                                num_clusters: int = NUM_CLUSTERS, seed: int = SEED, niter: int = NITER,
                                caption_filtering: bool = True, sample_ratio: float = -1.0,
                                lid_model: str | None = None, sample_salt: str = SAMPLE_SALT,
                                assign_dir: str | None = None) -> dict:
    """The Beam graph (transforms/build_centroids.py) on the runner ``beam_args`` name; same result
    as :func:`build_centroids`. Parts are listed here (the launcher), read on the workers."""
    from beam_filter.pipeline import make_pipeline, pipeline_options
    from beam_filter.transforms.build_centroids import COUNTERS, BuildCentroids

    _check_outputs(output, assign_dir)
    parts = list_parts(metadata_dir, scores_dir)
    s = Sampling(key, caption_filtering, sample_ratio, sample_salt, lid_model)
    t0 = time.time()
    p = make_pipeline(pipeline_options(beam_args))
    _ = p | "BuildCentroids" >> BuildCentroids(parts, output, s, num_clusters=num_clusters, seed=seed,
                                               niter=niter, assign_dir=assign_dir)
    result = p.run()
    result.wait_until_finish()
    counts = _counters(result, COUNTERS)
    done = {"embeddings": counts.get("embeddings", 0), "dim": counts.get("dim", 0), "clusters": int(num_clusters),
            "parts": len(parts), "seconds": round(time.time() - t0, 2), "output": output, "distributed": True}
    if assign_dir:
        done["assigned"] = counts.get("assigned", 0)
        done["assign_dir"] = assign_dir
    return done


def _counters(result, names) -> dict:
    """Committed Beam counters of the graph by name (attempted where a runner reports no committed)."""
    from apache_beam.metrics.metric import MetricsFilter

    out = {}
    for name in names:
        found = result.metrics().query(MetricsFilter().with_name(name))["counters"]
        vals = [(c.committed if c.committed is not None else c.attempted) for c in found]
        out[name] = int(sum(v for v in vals if v is not None))
    return out
