"""Nguyen et al.'s mixing preset end to end: the chosen captions are in the output shards (webdataset reads
them, the json keeps the original), raw choices stay byte-identical, reshard from the decisions writes the
same shards, reruns are byte-identical, and open_clip's trainer trains on the result."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pyarrow.parquet as pq

DRIVER = """
import sys
import open_clip
open_clip.add_model_config(sys.argv[1])
from open_clip_train.main import main
main(sys.argv[2:])
"""


def _decisions(out) -> list[dict]:
    rows = []
    for f in sorted(glob.glob(os.path.join(str(out), "decisions", "*.parquet"))):
        rows.extend(pq.read_table(f).to_pylist())
    return rows


def _members(tar_path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar_path) as t:
        for m in t.getmembers():
            key, ext = m.name.rsplit(".", 1)
            out.setdefault(key, {})[ext] = t.extractfile(m).read()
    return out


def _digest(directory) -> dict[str, str]:
    return {os.path.basename(p): hashlib.sha256(open(p, "rb").read()).hexdigest()
            for p in sorted(glob.glob(os.path.join(str(directory), "shards", "*.tar")))}


def test_caption_mix_writes_the_chosen_captions_and_trains(tmp_path, run_cli, write_small_pool):
    import webdataset as wds

    from beam_filter.devtools.tiny_models import write_tiny_clip
    from beam_filter.stages.captions import Captioner
    from beam_filter.stages.clip import ClipStage

    pool = str(tmp_path / "pool")
    write_small_pool(pool, n=16)
    source = _members(os.path.join(pool, "00000000.tar"))
    models = str(tmp_path / "models")
    Captioner.write_test_model(models)
    ClipStage.write_test_model(models)
    out = tmp_path / "out"
    common = ("--input", f"{pool}/*.tar", "--test-models", models)
    assert run_cli("score", "--recipe", "caption_mix", "--output", str(out), *common) == 0
    scores = [r for f in sorted(glob.glob(str(out / "scores" / "*.parquet"))) for r in pq.read_table(f).to_pylist()]
    alive = [r for r in scores if r["read_error"] is None]
    assert len(alive) == 15 and all(len(json.loads(r["captioner_captions"])) == 1 for r in alive)
    # thresholds that exercise every branch of the rule on this pool
    raw_t = float(np.median([r["clip_score"] for r in alive]))
    below = [r["clip_generated_score"] for r in alive if r["clip_score"] < raw_t]
    gen_t = float(np.median(below))
    sets = ("--set", f"output_caption.raw_threshold={raw_t!r}", "--set", f"output_caption.generated_threshold={gen_t!r}",
            "--shard-size", "4")
    assert run_cli("run", "--recipe", "caption_mix", "--output", str(out), "--resume", *common, *sets) == 0
    rows = {r["key"]: r for r in _decisions(out)}
    choices = {r["caption_choice"] for r in rows.values() if r["kept"]}
    assert choices == {"raw", "generated"}
    assert any(r["reason"] == "caption_mix_no_pair_passes" for r in rows.values())
    for r in rows.values():
        if r["read_error"] is not None:
            continue
        gen = json.loads(r["captioner_captions"])[0]
        if r["clip_score"] >= raw_t:
            assert (r["kept"], r["caption_choice"], r["output_caption"]) == (True, "raw", None)
        elif r["clip_generated_score"] >= gen_t and gen.strip():
            assert (r["kept"], r["caption_choice"], r["output_caption"]) == (True, "generated", gen)
        else:
            assert not r["kept"] and r["reason"] == "caption_mix_no_pair_passes"

    # the shards: webdataset reads the chosen caption; the json keeps the original
    shards = sorted(glob.glob(str(out / "shards" / "*.tar")))
    written = {}
    for s in shards:
        written.update(_members(s))
    kept = {k: r for k, r in rows.items() if r["kept"]}
    assert set(written) == set(kept)
    ds = wds.WebDataset(shards, shardshuffle=False).decode()
    seen = 0
    for sample in ds:
        r = kept[sample["__key__"]]
        meta = sample["json"]
        if r["caption_choice"] == "generated":
            assert sample["txt"] == r["output_caption"] == meta["caption"]
            assert meta["original_caption"] == r["caption"]
            assert meta["uid"] == r["uid"]
        else:
            assert written[sample["__key__"]] == source[sample["__key__"]]      # byte-identical copy
        seen += 1
    assert seen == len(kept)

    # reshard from the decisions writes the same bytes; a rerun too
    again = tmp_path / "reshard"
    assert run_cli("reshard", "--decisions", str(out), "--input", f"{pool}/*.tar", "--output", str(again),
                   "--shard-size", "4") == 0
    assert _digest(again) == _digest(out)
    rerun = tmp_path / "rerun"
    assert run_cli("run", "--recipe", "caption_mix", "--output", str(rerun), *common, *sets) == 0
    assert _digest(rerun) == _digest(out)
    assert [r["captioner_captions"] for r in _decisions(rerun)] == [r["captioner_captions"] for r in _decisions(out)]

    # open_clip's trainer reads them (webdataset loader, the chosen captions as text)
    cfg, _ = write_tiny_clip(str(tmp_path / "train_model"))
    name = os.path.splitext(os.path.basename(cfg))[0]
    brace = str(out / "shards" / f"{{00000000..{len(shards) - 1:08d}}}.tar")
    args = ["--train-data", brace, "--dataset-type", "webdataset", "--train-num-samples", str(len(kept)),
            "--model", name, "--batch-size", "2", "--epochs", "1", "--workers", "0", "--device", "cpu",
            "--precision", "fp32", "--lr", "1e-4", "--warmup", "1", "--logs", str(tmp_path / "logs"),
            "--name", "mix", "--report-to", "", "--save-frequency", "0", "--seed", "0", "--log-every-n-steps", "1"]
    proc = subprocess.run([sys.executable, "-c", DRIVER, cfg, *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "Train Epoch: 0" in log, log[-4000:]
