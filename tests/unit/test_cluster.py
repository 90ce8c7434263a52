"""Pure-function tests of beam_filter/cluster: k-means, SemDeDup, near-duplicates, alignment."""

from __future__ import annotations

import math

import numpy as np
import pytest

from beam_filter.cluster import alignment, kmeans, near_dup, semdedup
from beam_filter.errors import UserError


def _uids(n, prefix="u"):
    return [f"{prefix}{i:06d}" for i in range(n)]


def _planted(n_base=120, d=32, dup_every=3, noise=0.01, seed=0):
    """Unit embeddings with planted near-duplicates (and a few chains)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n_base, d)).astype(np.float32)
    rows = [base]
    for i in range(0, n_base, dup_every):
        rows.append(base[i:i + 1] + noise * rng.normal(size=(1, d)).astype(np.float32))
    x = np.concatenate(rows)
    return kmeans.normalize(x)


# ---- k-means -------------------------------------------------------------------

def test_kmeans_deterministic_and_assign_is_argmax():
    x = _planted(200, 16)
    c1 = kmeans.train_kmeans(x, 8, niter=10, seed=3)
    c2 = kmeans.train_kmeans(x, 8, niter=10, seed=3)
    assert np.array_equal(c1, c2)
    assert c1.shape == (8, 16)
    np.testing.assert_allclose(np.linalg.norm(c1, axis=1), 1.0, atol=1e-5)
    labels, sims = kmeans.assign(x, c1, batch_size=7)
    brute = x @ c1.T
    assert np.array_equal(labels, brute.argmax(1))
    np.testing.assert_allclose(sims, brute.max(1), rtol=1e-6)


def test_kmeans_clamps_k_to_rows_and_rejects_empty():
    x = _planted(5, 8, dup_every=100)
    assert kmeans.train_kmeans(x, 50, niter=2).shape[0] == len(x)
    with pytest.raises(UserError):
        kmeans.train_kmeans(np.zeros((0, 8), np.float32), 4)


def test_sample_by_uid_is_order_independent():
    uids = _uids(500)
    a = kmeans.sample_by_uid(uids, 50, seed=1)
    rev = uids[::-1]
    b = kmeans.sample_by_uid(rev, 50, seed=1)
    assert [uids[i] for i in a] == [rev[i] for i in b]
    assert len(set(a.tolist())) == 50
    assert kmeans.sample_by_uid(uids, 50, seed=2).tolist() != a.tolist()


def test_centroids_roundtrip_and_bad_files(tmp_path):
    c = kmeans.normalize(np.random.default_rng(0).normal(size=(4, 6)))
    p = str(tmp_path / "c.npy")
    kmeans.save_centroids(p, c)
    assert np.array_equal(kmeans.load_centroids(p, dim=6), c)
    with pytest.raises(UserError, match="dimension"):
        kmeans.load_centroids(p, dim=7)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError):
        kmeans.load_centroids(str(tmp_path / "obj.npy"))
    np.save(tmp_path / "one.npy", np.zeros(6, np.float32))
    with pytest.raises(UserError, match="2-D"):
        kmeans.load_centroids(str(tmp_path / "one.npy"))
    with pytest.raises(UserError, match="not found"):
        kmeans.load_centroids(str(tmp_path / "missing.npy"))


# ---- SemDeDup -----------------------------------------------------------------

def _reference_semdedup(uids, x, labels, centroids, eps, keep_hard=True):
    """Independent transcription of the published rule: full matrix, strict upper triangle."""
    dropped = {}
    for c in sorted(set(labels.tolist())):
        idx = [i for i in range(len(uids)) if labels[i] == c]
        dist = [1.0 - float(np.dot(x[i], centroids[c])) for i in idx]
        items = sorted(zip(dist, [uids[i] for i in idx], idx),
                       key=lambda t: ((-t[0]) if keep_hard else t[0], t[1]))
        reps = np.stack([x[t[2]] for t in items]).astype(np.float32)
        sim = reps @ reps.T
        np.fill_diagonal(sim, 0.0)
        tri = np.triu(sim, k=1)
        m = tri.max(axis=0)
        for j in range(len(items)):
            if m[j] > 1 - eps:
                earlier = sim[:j, j]
                dropped[items[j][1]] = items[int(np.argmax(earlier))][1]
    return dropped


@pytest.mark.parametrize("order", ["farthest", "closest"])
def test_semdedup_equals_direct_numpy(order):
    x = _planted(150, 24, dup_every=2, noise=0.02, seed=5)
    uids = _uids(len(x))
    cents = kmeans.train_kmeans(x, 6, niter=10, seed=1234)
    labels, sims = kmeans.assign(x, cents)
    eps = 0.01
    ours = {}
    for c in range(len(cents)):
        idx = np.nonzero(labels == c)[0]
        ours.update(semdedup.semdedup_group([uids[i] for i in idx], x[idx], sims[idx], eps, order))
    ref = _reference_semdedup(uids, x, labels, cents, eps, keep_hard=(order == "farthest"))
    assert ours == ref
    assert 40 <= len(ours) <= 80          # the planted duplicates (75), not everything


def test_semdedup_counts_dropped_earlier_items_and_blocks_match():
    # a ~ b ~ c (chain), a !~ c: the reference drops b AND c (earlier items count even if dropped).
    d = 64
    a = np.zeros(d, np.float32); a[0] = 1
    b = np.zeros(d, np.float32); b[0] = math.cos(0.12); b[1] = math.sin(0.12)
    c = np.zeros(d, np.float32); c[0] = math.cos(0.24); c[1] = math.sin(0.24)
    x = np.stack([a, b, c])
    eps = 1 - math.cos(0.15)            # a~b, b~c similar; a,c not
    sims = np.array([0.9, 0.8, 0.7])     # order farthest first: c, b, a
    out = semdedup.semdedup_group(["a", "b", "c"], x, sims, eps)
    assert out == {"b": "c", "a": "b"}
    big = _planted(300, 16, dup_every=2, noise=0.03)
    best1, arg1 = semdedup.max_sim_to_earlier(big, block=7)
    best2, arg2 = semdedup.max_sim_to_earlier(big, block=1000)
    assert np.array_equal(arg1, arg2)
    np.testing.assert_allclose(best1, best2, rtol=0, atol=1e-6)   # BLAS may differ by an ulp per block shape


def test_semdedup_slices_bounded_subset_of_exact():
    x = _planted(200, 16, dup_every=2, noise=0.02, seed=2)
    uids = _uids(len(x))
    sims = (x @ kmeans.normalize(x.mean(0))[0]).astype(float)
    exact = semdedup.semdedup_group(uids, x, sims, 0.02)
    recs = [(u, s, e) for u, s, e in zip(uids, sims, x)]
    assert semdedup.semdedup_slices(recs, 0.02, "farthest", len(x)) == exact
    sliced = semdedup.semdedup_slices(recs, 0.02, "farthest", 64)
    assert set(sliced) <= set(exact)
    assert len(sliced) >= 0.8 * len(exact)


def test_split_cuts_bound_parts():
    rng = np.random.default_rng(0)
    sims = rng.uniform(0.2, 0.9, size=10_000)
    sample = sims[:1024]
    cuts = semdedup.split_cuts(len(sims), sample, 1000)
    sizes = np.bincount([semdedup.part_of(s, cuts) for s in sims])
    assert len(sizes) >= 13 and sizes.max() <= 1000
    assert semdedup.split_cuts(900, sample, 1000) == []


# ---- near duplicates ------------------------------------------------------------

def test_phash_matches_imagehash(near_dup_images):
    import imagehash

    rng = np.random.default_rng(0)
    for _ in range(5):
        img = near_dup_images.original(rng)
        ours = int(near_dup.as_u64([near_dup.phash_image(img)])[0])
        assert f"{ours:016x}" == str(imagehash.phash(img))


def test_near_dup_precision_recall_on_generated_duplicates(near_dup_images):
    im = near_dup_images
    rng = np.random.default_rng(7)
    uids, hashes, group = [], [], []
    for g in range(80):
        img = im.original(rng)
        for k, data in enumerate([im.jpeg(img)] + list(im.variants(img, rng))):
            uids.append(f"{g:03d}-{k}")
            hashes.append(near_dup.phash_bytes(data))
            group.append(g)
    dropped = near_dup.near_duplicates(uids, hashes, bands=4, tolerance=4)
    truth = {u for u, g, first in zip(uids, group, [u.endswith("-0") for u in uids]) if not first}
    # a prediction is right when the survivor it names is of the same original
    same = {u: uids.index(v) for u, v in dropped.items()}
    tp = sum(1 for u, j in same.items() if group[uids.index(u)] == group[j])
    precision = tp / max(1, len(dropped))
    recall = tp / len(truth)
    assert precision >= 0.95, precision
    assert recall >= 0.9, recall


def test_lsh_finds_every_pair_below_bands_and_caps_are_lossless():
    rng = np.random.default_rng(3)
    base = rng.integers(-2**63, 2**63 - 1, size=60, dtype=np.int64)
    flips = []
    for v in base:
        for nbits in (1, 2, 3):
            bits = rng.choice(64, size=nbits, replace=False)
            m = sum(1 << int(b) for b in bits)
            flips.append(near_dup.to_signed(int(np.int64(v).view(np.uint64)) ^ m))
    h = np.unique(np.concatenate([base, np.array(flips, dtype=np.int64)]))
    brute = {(i, j) for i in range(len(h)) for j in range(i + 1, len(h))
             if int(near_dup.hamming(h[i], h[j])) <= 3}
    assert near_dup.candidate_pairs(h, 4, 3) == brute
    assert len(brute) >= 180


def test_survivor_rule_and_transitive_groups():
    a = 0
    b = 0b111            # 3 bits from a
    c = 0b111111         # 3 bits from b, 6 from a
    uids = ["z", "y", "x", "w"]
    hashes = [a, b, c, a]
    out = near_dup.near_duplicates(uids, hashes, bands=4, tolerance=3)
    assert out == {"z": "w", "y": "w", "x": "w"}               # one group via the chain, smallest uid
    out = near_dup.near_duplicates(uids, hashes, bands=4, tolerance=3, quality=[0.1, 0.9, None, 0.5])
    assert out == {"z": "y", "x": "y", "w": "y"}               # highest quality survives
    emb = np.eye(4, dtype=np.float32)
    emb[0] = emb[1]
    out = near_dup.near_duplicates(uids, hashes, bands=4, tolerance=3, quality=[0.1, 0.9, None, 0.5],
                                   emb=emb, min_similarity=0.9)
    assert out == {"z": "y"}


def test_eval_index_and_loading(tmp_path, near_dup_images):
    im = near_dup_images
    rng = np.random.default_rng(11)
    imgs = [im.original(rng) for _ in range(4)]
    for i, img in enumerate(imgs):
        img.save(tmp_path / f"eval_{i}.png")
    h, ids = near_dup.load_eval_hashes(str(tmp_path))
    assert ids == [f"eval_{i}" for i in range(4)]
    index = near_dup.EvalIndex(h, ids, tolerance=4)
    variant = next(im.variants(imgs[2], rng))
    assert index.match(near_dup.phash_bytes(variant)) == "eval_2"
    assert index.match(near_dup.phash_bytes(im.jpeg(im.original(rng)))) is None
    np.save(tmp_path / "h.npy", h.view(np.uint64))
    h2, ids2 = near_dup.load_eval_hashes(str(tmp_path / "h.npy"))
    assert np.array_equal(h2, h) and ids2 == ["0", "1", "2", "3"]
    with pytest.raises(UserError):
        near_dup.load_eval_hashes(str(tmp_path / "nothing_here" / "*.jpg"))


# ---- alignment --------------------------------------------------------------

def test_importance_keep_probs_water_filling():
    n = np.array([100, 10, 50, 0])
    q = np.array([0.2, 0.5, 0.3, 0.0])
    p = alignment.importance_keep_probs(n, q, 60)
    assert p[3] == 0 and p[1] == 1.0
    assert abs((n * p).sum() - 60) < 1e-9
    assert np.allclose(n[[0, 2]] * p[[0, 2]] / q[[0, 2]], n[0] * p[0] / q[0])     # same lambda
    assert np.array_equal(alignment.importance_keep_probs(n, q, 1000), [1, 1, 1, 0])


def test_target_weights_follow_nearest_centroid():
    cents = np.eye(3, dtype=np.float32)
    target = np.array([[1, 0.1, 0], [0.9, 0, 0.1], [0, 0, 1]], np.float32)
    assert np.allclose(alignment.target_weights(target, cents), [2 / 3, 0, 1 / 3])
    assert np.allclose(alignment.target_weights(target, cents, alpha=1), [3 / 6, 1 / 6, 2 / 6])


def test_balance_and_duplication_counts():
    uids = _uids(30)
    clusters = [i % 3 for i in range(30)]
    scores = [float(i) for i in range(30)]
    dropped = alignment.balance_dropped(uids, clusters, 4, scores)
    kept = [u for u in uids if u not in dropped]
    assert len(kept) == 12
    assert set(kept) == {uids[i] for i in range(18, 30)}        # the 4 highest of each cluster
    no_score = alignment.balance_dropped(uids, clusters, 4)
    assert len(no_score) == 18 and no_score == alignment.balance_dropped(uids, clusters, 4)
    copies = alignment.duplication_copies(uids, clusters, scores, [0.1, 0.3], [3, 2])
    per_cluster = {c: sorted((copies[u] for u, k in zip(uids, clusters) if k == c), reverse=True)
                   for c in range(3)}
    for c in range(3):                                         # 10 rows: top 1 -> 3, next 2 -> 2
        assert per_cluster[c] == [3, 2, 2] + [1] * 7
    with pytest.raises(ValueError):
        alignment.check_tiers([0.3, 0.1], [3, 2])


# ---- per-element rules the Beam transforms call ---------------------------------------------

def test_band_keys_are_the_rows_of_band_values():
    rng = np.random.default_rng(5)
    h = rng.integers(-2**63, 2**63 - 1, size=50, dtype=np.int64)
    for bands in (1, 2, 4, 8, 16):
        bv = near_dup.band_values(h, bands)
        for i, v in enumerate(h):
            keys = near_dup.band_keys(int(v), bands)
            assert keys == [(b, int(bv[i, b])) for b in range(bands)]
            assert all(type(b) is int and type(x) is int for b, x in keys)
    with pytest.raises(ValueError):
        near_dup.band_keys(1, 3)


def test_chunk_keys_meet_every_pair():
    assert near_dup.chunk_keys(123, 1) == [(0, 0)]
    values = list(range(-40, 40))
    for p in (2, 3, 5):
        groups = {v: set(near_dup.chunk_keys(v, p)) for v in values}
        assert all(len(g) == p and all(i <= j < p for i, j in g) for g in groups.values())
        chunk = {v: set.intersection(*({i, j} for i, j in groups[v])).pop() for v in values}
        assert len(set(chunk.values())) == p                     # the hash spreads values over chunks
        for a in values:
            for b in values:
                if a < b:
                    shared = len(groups[a] & groups[b])
                    assert shared == (p if chunk[a] == chunk[b] else 1), (a, b, p)


def test_close_value_pairs_and_similarity_check():
    vals = [0b1111, 0b0111, 0, 3 << 40]
    assert near_dup.close_value_pairs(vals, 1) == [(0b0111, 0b1111)]
    assert near_dup.close_value_pairs(vals, 4) == [(0, 0b0111), (0, 0b1111), (0, 3 << 40), (0b0111, 0b1111)]
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.6, 0.8], np.float32)
    assert near_dup.similar_enough(None, None, None)
    assert near_dup.similar_enough(a, b, 0.6) and not near_dup.similar_enough(a, b, 0.61)
    assert not near_dup.similar_enough(None, b, -1.0) and not near_dup.similar_enough(a, None, -1.0)


def test_best_member_and_member_verdicts():
    from beam_filter.records import Verdict

    e = np.array([1.0, 0.0], np.float32)
    far = np.array([0.0, 1.0], np.float32)
    members = [("u3\ts\tk", 5, 0.9, e), ("u1\ts\tk", 5, None, e), ("u2\ts\tk", 6, 0.9, far),
               ("u4\ts\tk", 7, float("nan"), None)]
    best = near_dup.best_member(members)
    assert best[0] == "u2\ts\tk"                   # highest quality, then smallest uid
    assert near_dup.best_member([near_dup.best_member(members[:2]), near_dup.best_member(members[2:])]) == best
    assert near_dup.member_verdicts(members, best) == [
        (t, Verdict("near_duplicate_of:u2", None)) for t in ("u3\ts\tk", "u1\ts\tk", "u4\ts\tk")]
    assert near_dup.member_verdicts(members, best, min_similarity=0.5) == []
    assert [t for t, _ in near_dup.member_verdicts(members, members[0], min_similarity=0.5)] == ["u1\ts\tk"]


def test_contamination_reason():
    assert near_dup.contamination_reason(None) is None
    assert near_dup.contamination_reason("img7") == "eval_contamination:img7"


def test_semdedup_part_verdicts():
    from beam_filter.records import Verdict

    x = kmeans.normalize(np.array([[1, 0], [1, 0.001], [0, 1]], np.float32))
    items = [(f"u{i}\ts\tk", 0.5 + 0.1 * i, x[i]) for i in range(3)]
    dropped = semdedup.semdedup_slices(items, 0.05, "farthest", 10)
    assert len(dropped) == 1
    (token, by), = dropped.items()
    assert semdedup.part_verdicts(4, iter(items), 0.05, "farthest", 10) == [
        (token, Verdict("semantic_duplicate_of:" + by.split("\t")[0], None))]
    with_col = semdedup.part_verdicts(4, iter(items), 0.05, "farthest", 10, "c")
    assert [t for t, _ in with_col] == sorted(it[0] for it in items)
    assert all(v.columns == {"c": 4} and (v.reason is not None) == (t == token) for t, v in with_col)


def test_alignment_helpers_match_the_references():
    cents = kmeans.normalize(np.eye(3, dtype=np.float32))
    target = kmeans.normalize(np.array([[1, 0, 0], [1, 0.1, 0], [0, 1, 0]], np.float32))
    counts = {0: 10, 1: 10, 2: 5}
    n = np.array([10.0, 10.0, 5.0])
    q = alignment.target_weights(target, cents, 0.5)
    np.testing.assert_array_equal(alignment.cluster_keep_probs(counts, target, cents, fraction=0.4, alpha=0.5),
                                  alignment.importance_keep_probs(n, q, 0.4 * 25))
    np.testing.assert_array_equal(alignment.cluster_keep_probs(counts, target, cents, size=7, alpha=0.5),
                                  alignment.importance_keep_probs(n, q, 7))
    keys = sorted(alignment.balance_key(f"u{i}", float(i % 4)) for i in range(10))
    assert alignment.balance_cut(10, keys[:3], 3) == keys[2]
    assert alignment.balance_cut(3, keys[:3], 3) is None
    assert [alignment.over_cap(k, keys[2]) for k in keys[:4]] == [False, False, False, True]
    assert not alignment.over_cap(keys[-1], None)
    assert not alignment.has_score(None) and not alignment.has_score(float("nan")) and alignment.has_score(0)
    assert alignment.cluster_copies(0.9, [0.8, 0.5], [3, 2]) == 3
    assert alignment.cluster_copies(0.6, [0.8, 0.5], [3, 2]) == 2
    assert alignment.cluster_copies(0.9, None, [3, 2]) == 1
    assert alignment.cluster_copies(None, [0.8, 0.5], [3, 2]) == 1
