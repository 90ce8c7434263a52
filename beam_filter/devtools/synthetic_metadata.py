"""Synthetic DataComp metadata (``*.parquet`` + row-aligned ``*.npz``) for tests and demos.

Written in the layout :mod:`beam_filter.datacomp_metadata` reads (``select --metadata``),
with captions from the make-sample grammar (:mod:`beam_filter.devtools.sample_pool`).
"""

from __future__ import annotations

import os

import numpy as np

from beam_filter.datacomp_metadata import FACE_BBOXES, SCORE_B32, SCORE_L14


def write_synthetic_metadata(directory: str, n: int, seed: int = 0, parts: int = 2,
                             n_concepts: int = 20) -> list[str]:
    """Write ``parts`` DataComp-format parquet + npz pairs holding ``n`` rows; returns the parquet paths.

    Realistic enough to exercise every baseline: English captions from the
    make-sample grammar, some other-language, short, empty-ish and newline
    captions; image sizes around the 200 px and aspect-3 limits; CLIP scores
    with DataComp-like spreads (L/14 around 0.2-0.3, B/32 around 0.3), rounded
    to 3 decimals so many rows tie; float16 L2-normalised embeddings drawn around
    ``n_concepts`` directions, so nearest-centroid filters have structure.
    Deterministic in (n, seed, parts).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from beam_filter.devtools.sample_pool import _english_clause, _other_language_sentences

    rng = np.random.default_rng(seed)
    others = [s for sents in _other_language_sentences().values() for s in sents]
    captions = []
    for i in range(n):
        r = rng.random()
        if r < 0.70:
            c = _english_clause(rng)
        elif r < 0.82:
            c = others[int(rng.integers(len(others)))]
        elif r < 0.88:
            c = str(rng.choice(["photo", "IMG_0042.jpg", "a cat", "nan", "sky", "Blue car"]))
        elif r < 0.92:
            c = _english_clause(rng).replace(" ", "\n", 1)
        else:
            c = _english_clause(rng) + " " + _english_clause(rng)
        captions.append(c)
    side = rng.choice([120, 199, 200, 256, 300, 512, 640, 1024], size=(n, 2))
    width = side[:, 0] * rng.choice([1, 1, 1, 2, 3, 4], size=n)
    height = side[:, 1]
    l14 = np.round(np.clip(rng.normal(0.24, 0.06, n), -0.05, 0.5), 3)
    b32 = np.round(np.clip(l14 + rng.normal(0.06, 0.03, n), 0.0, 0.5), 3)
    uids = [f"{v:032x}" for v in (int.from_bytes(rng.bytes(16), "big") for _ in range(n))]
    concepts = _unit(rng.normal(size=(n_concepts, 768)))
    concepts_b = _unit(rng.normal(size=(n_concepts, 512)))
    which = rng.integers(n_concepts, size=n)
    feats = {
        "l14_img": _unit(concepts[which] + 0.6 * rng.normal(size=(n, 768)) / np.sqrt(768) * 8),
        "l14_txt": _unit(concepts[which] + 0.9 * rng.normal(size=(n, 768)) / np.sqrt(768) * 8),
        "b32_img": _unit(concepts_b[which] + 0.6 * rng.normal(size=(n, 512)) / np.sqrt(512) * 8),
        "b32_txt": _unit(concepts_b[which] + 0.9 * rng.normal(size=(n, 512)) / np.sqrt(512) * 8),
    }
    has_face = [rng.random() < 0.1 for _ in range(n)]       # (the draws the uids/sha256 after it rely on)
    faces = _face_boxes(has_face, np.random.default_rng([seed, 17]))
    os.makedirs(directory, exist_ok=True)
    paths = []
    bounds = np.linspace(0, n, parts + 1).astype(int)
    for k in range(parts):
        lo, hi = bounds[k], bounds[k + 1]
        table = pa.table({
            "uid": uids[lo:hi],
            "url": [f"https://example.com/{u[:12]}.jpg" for u in uids[lo:hi]],
            "text": captions[lo:hi],
            "original_width": pa.array(width[lo:hi].tolist(), pa.int64()),
            "original_height": pa.array(height[lo:hi].tolist(), pa.int64()),
            SCORE_B32: pa.array(b32[lo:hi].tolist(), pa.float64()),
            SCORE_L14: pa.array(l14[lo:hi].tolist(), pa.float64()),
            FACE_BBOXES: pa.array(faces[lo:hi], pa.list_(pa.list_(pa.float64()))),
            "sha256": [f"{int.from_bytes(rng.bytes(32), 'big'):064x}" for _ in range(hi - lo)],
        })
        stem = os.path.join(directory, f"{k:08d}")
        pq.write_table(table, stem + ".parquet", row_group_size=1000)
        np.savez(stem + ".npz", **{key: v[lo:hi].astype(np.float16) for key, v in feats.items()})
        paths.append(stem + ".parquet")
    return paths


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _face_boxes(has_face: list[bool], rng: np.random.Generator) -> list[list[list[float]]]:
    """1-3 normalised [x0, y0, x1, y1] boxes per face row (small to half-image faces, some
    overlapping), [] elsewhere: DataComp's ``face_bboxes`` layout, for the face_area stage."""
    out = []
    for face in has_face:
        boxes = []
        for _ in range(int(rng.integers(1, 4)) if face else 0):
            w, h = rng.uniform(0.05, 0.7, size=2)
            x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
            boxes.append([round(float(v), 4) for v in (x0, y0, x0 + w, y0 + h)])
        out.append(boxes)
    return out
