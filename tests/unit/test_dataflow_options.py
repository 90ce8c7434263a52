"""Dataflow launch options (dataflow.configure, pure): Beam options, GPU hints, worker image checks.

The job Beam's DataflowRunner builds from them, offline: tests/e2e/test_dataflow_jobs.py;
run_dataflow.sh and the Dockerfile: tests/infra/.
"""

from __future__ import annotations

import os
import pathlib
import re
import types

import pytest

from beam_filter import dataflow as D
from beam_filter.errors import UserError

REPO = str(pathlib.Path(__file__).resolve().parents[2])
IMAGE = "us-central1-docker.pkg.dev/my-project/beam-filter/worker:py3.11-beam2.77.0-test"
ACCEL = "type:nvidia-l4;count:1;machine_type:g2-standard-8;install-nvidia-driver"
GS_INPUT = "gs://my-bucket/pool/*.tar"


def _launch(**given):
    return D.Launch(**{"dataflow": True, "project": "my-project", "region": "us-central1",
                       "bucket": "gs://my-bucket", "image": IMAGE, **given})


def _fake_job(models: bool, output="gs://my-bucket/out"):
    """A Job stand-in for the pure checks (configure reads only these fields)."""
    recipe = types.SimpleNamespace(name="r", model_stages=lambda: ["m"] if models else [])
    return types.SimpleNamespace(recipe=recipe, output=output, command="run")


def _configure(launch, beam_args=(), models=True, inputs=(GS_INPUT,), output="gs://my-bucket/out"):
    return D.configure(_fake_job(models, output), launch, list(beam_args), list(inputs))


# ---- configure (pure) ------------------------------------------------------------

def test_local_runner_passes_project_and_region_only():
    out, hints = D.configure(_fake_job(True, "/tmp/x"), D.Launch(project="p1-x", region="europe-west4"),
                             ["--direct_num_workers=2"], ["/tmp/a.tar"])
    assert out == ["--direct_num_workers=2", "--project=p1-x", "--region=europe-west4"]
    assert hints == {}


def test_dataflow_options_become_beam_options():
    out, hints = _configure(_launch(max_workers=64, job_name="DC_medium.clip", machine_type="n2-highmem-8"))
    assert out[0] == "--runner=DataflowRunner"
    for want in ("--project=my-project", "--region=us-central1", "--temp_location=gs://my-bucket/tmp",
                 "--staging_location=gs://my-bucket/staging", "--max_num_workers=64",
                 "--job_name=dc-medium-clip", "--machine_type=n2-highmem-8", "--experiments=use_runner_v2",
                 f"--sdk_container_image={IMAGE}"):
        assert want in out, (want, out)
    # Beam's own spelling alone replaces our default; --runner=DataflowRunner is the same as --dataflow
    out, _ = _configure(_launch(dataflow=False), ["--runner=DataflowRunner", "--max_num_workers=3"])
    assert D.option_values(out, "max_num_workers") == ["3"] and out.count("--runner=DataflowRunner") == 1


def test_dataflow_gpu_hints_only_for_recipes_with_models():
    launch = _launch(gpu_type="nvidia-l4", gpu_min_ram="16GB")
    out, hints = _configure(launch)
    assert hints == {"accelerator": ACCEL, "min_ram": "16GB"}
    assert D.option_value(out, "machine_type") == "n2-standard-8"     # CPU workers; GPU ones by hint
    _, hints = _configure(launch, models=False)
    assert hints == {}
    _, hints = _configure(_launch(gpu_type="nvidia-tesla-t4", gpu_count=2, gpu_machine_type="n1-highmem-16"))
    assert hints == {"accelerator": "type:nvidia-tesla-t4;count:2;machine_type:n1-highmem-16;install-nvidia-driver"}


def test_mps_puts_the_gpu_on_every_worker():
    out, hints = _configure(_launch(gpu_type="nvidia-l4", mps=True))
    assert hints == {}
    assert D.option_value(out, "machine_type") == "g2-standard-8"
    assert D.option_values(out, "dataflow_service_options") == [
        "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver;use_nvidia_mps"]


def test_setup_file_staged_only_without_image():
    out, _ = _configure(_launch(image=None, no_image=True), models=False)
    assert f"--setup_file={os.path.join(REPO, 'setup.py')}" in out
    assert D.option_value(out, "sdk_container_image") is None
    out, _ = _configure(_launch(image=None, no_image=True), ["--setup_file=/elsewhere/setup.py"], models=False)
    assert [a for a in out if a.startswith("--setup_file")] == ["--setup_file=/elsewhere/setup.py"]
    out, _ = _configure(_launch(), models=False)
    assert not any(a.startswith("--setup_file") for a in out)


def test_default_image_is_named_after_the_launcher_and_checks_the_dockerfile(monkeypatch):
    here = D.launcher_versions()
    out, _ = _configure(_launch(image=None))
    assert D.option_value(out, "sdk_container_image") == (
        f"us-central1-docker.pkg.dev/my-project/beam-filter/worker:py{here.python}-beam{here.beam}-"
        + __import__("beam_filter").__version__)
    assert D.dockerfile_versions() == here                       # the checkout's Dockerfile matches
    monkeypatch.setattr(D, "dockerfile_versions", lambda: D.Versions(here.python, "2.60.0"))
    with pytest.raises(UserError, match="apache-beam 2.60.0 in the Dockerfile"):
        _configure(_launch(image=None))
    _configure(_launch())                                          # a given image does not need the Dockerfile


def test_image_versions_checked_against_launcher():
    here = D.launcher_versions()
    short = ".".join(here.beam.split(".")[:2])
    _configure(_launch(image=f"gcr.io/p/w:py{here.python}-beam{short}"))
    with pytest.raises(UserError, match="apache-beam 2.60.0"):
        _configure(_launch(image=f"gcr.io/p/w:py{here.python}-beam2.60.0"))
    with pytest.raises(UserError, match="Python 3.9"):
        _configure(_launch(image=f"gcr.io/p/w:py3.9-beam{here.beam}"))
    with pytest.raises(UserError, match="Python 3.9"):          # Beam's own spelling is checked too
        _configure(_launch(image=None), [f"--sdk_container_image=gcr.io/p/w:py3.9-beam{here.beam}"])
    # a tag without the convention is not checked (nothing known offline)
    _configure(_launch(image="gcr.io/p/w:latest"))


def test_image_tag_convention():
    assert D.versions_from_image("r/p/w:py3.11-beam2.77.0-0.1.0") == D.Versions("3.11", "2.77.0")
    assert D.versions_from_image("localhost:5000/w:latest") is None
    assert D.versions_from_image("localhost:5000/w") is None


@pytest.mark.parametrize("launch, beam_args, why", [
    (D.Launch(gpu_count=1), [], "--gpu-count is a Dataflow option: add --dataflow"),
    (D.Launch(dry_run=True, job_file="j.json"), [], "--dry-run is a Dataflow option"),
    (_launch(), ["--runner=DirectRunner"], "--dataflow and --runner=DirectRunner exclude each other"),
    (_launch(project=None, bucket=None), [], "Dataflow needs --project, --bucket (or Beam's --temp_location)"),
    (_launch(bucket=None), ["--temp_location=/tmp/t"], "gs://BUCKET"),
    (_launch(bucket="my-bucket"), [], "--bucket must be gs://BUCKET"),
    (_launch(), ["--temp_location=gs://other/tmp"], "--bucket and Beam's --temp_location both given"),
    (_launch(max_workers=4), ["--max_num_workers=8"], "--max-workers and Beam's --max_num_workers"),
    (_launch(machine_type="n2-standard-4"), ["--worker_machine_type=n1-standard-1"], "--machine-type and Beam's"),
    (_launch(), [f"--sdk_container_image={IMAGE}"], "--image and Beam's --sdk_container_image"),
    (_launch(dry_run=True), [], "--dry-run needs --job-file"),
    (_launch(job_file="j.json"), [], "--job-file is only written with --dry-run"),
    (_launch(no_image=True), [], "--no-image excludes --image"),
    (_launch(gpu_count=2), [], "--gpu-count needs --gpu-type"),
    (_launch(gpu_min_ram="16GB"), [], "--gpu-min-ram needs --gpu-type"),
    (_launch(mps=True), [], "--mps needs --gpu-type"),
    (_launch(gpu_type="nvidia-l4", mps=True, gpu_count=2), [], "--gpu-count 1 only"),
    (_launch(gpu_type="nvidia-l4", mps=True, machine_type="n2-standard-8"), [], "--machine-type does not apply"),
    (_launch(gpu_type="nvidia-l4;count:8"), [], "--gpu-type 'nvidia-l4;count:8'"),
    (_launch(gpu_type="nvidia-future", mps=True), [], "--mps needs --gpu-machine-type"),
    (_launch(gpu_type="nvidia-l4", gpu_min_ram="lots"), [], "memory size"),
    (_launch(gpu_type="nvidia-l4"), ["--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1"],
     "exclude each other"),
])
def test_bad_dataflow_options_are_user_errors(launch, beam_args, why):
    with pytest.raises(UserError, match=re.escape(why)):
        _configure(launch, beam_args)


def test_local_paths_rejected_on_dataflow():
    with pytest.raises(UserError, match="cannot write a local path"):
        _configure(_launch(), output="/data/out")
    with pytest.raises(UserError, match="input /data/datacomp/metadata"):
        _configure(_launch(), inputs=["/data/datacomp/metadata"])
