"""Output shards train with open_clip's own trainer (open_clip_train.main), webdataset loader and all."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys


DRIVER = """
import sys
import open_clip
open_clip.add_model_config(sys.argv[1])
from open_clip_train.main import main
main(sys.argv[2:])
"""


def test_open_clip_trainer_reads_output_shards(clean_pool, tmp_path, run_cli):
    from beam_filter.devtools.tiny_models import write_tiny_clip

    pool_dir, _ = clean_pool
    out = tmp_path / "out"
    assert run_cli("run", "--recipe", "datacomp_basic", "--input", f"{pool_dir}/*.tar", "--output", out,
                   "--set", "datacomp_basic.min_side=32", "--shard-size", "8") == 0
    shards = sorted(glob.glob(str(out / "shards" / "*.tar")))
    assert len(shards) >= 2
    n = json.load(open(out / "shards" / "meta.json"))["samples"]
    cfg, _ = write_tiny_clip(str(tmp_path / "model"))
    name = os.path.splitext(os.path.basename(cfg))[0]
    brace = str(out / "shards" / f"{{00000000..{len(shards) - 1:08d}}}.tar")
    args = ["--train-data", brace, "--dataset-type", "webdataset", "--train-num-samples", str(n),
            "--model", name, "--batch-size", "4", "--epochs", "1", "--workers", "0", "--device", "cpu",
            "--precision", "fp32", "--lr", "1e-4", "--warmup", "1", "--logs", str(tmp_path / "logs"),
            "--name", "compat", "--report-to", "", "--save-frequency", "0", "--seed", "0", "--log-every-n-steps", "1"]
    proc = subprocess.run([sys.executable, "-c", DRIVER, cfg, *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "Train Epoch: 0" in log, log[-4000:]
    assert "Traceback" not in log and "Error" not in log.replace("ErrorHandler", "")
