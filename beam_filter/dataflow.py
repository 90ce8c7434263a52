"""Dataflow launch as a library: Beam options, GPU resource hints, worker image, offline job.

``cli.py`` owns the command line: the Dataflow options (``--dataflow --project
--region --bucket --gpu-type ... --dry-run --job-file``) are ``beam-filter``
options, parsed there into a :class:`Launch`. This module never reads argv and
never imports the CLI. Two jobs, both on the launching machine:

1. :func:`configure` turns a :class:`Launch` plus the Beam options the user
   passed through into what Beam and Dataflow understand, right before the
   graph is built:

   * ``--gpu-type nvidia-l4`` becomes *resource hints* for the inference steps
     only (``RunModelStages`` puts them there), so Dataflow's right fitting runs
     reading, rules and select on CPU workers and only RunInference on GPU
     workers. A recipe without model stages gets no hints. ``--mps`` instead puts
     the GPU on every worker (``worker_accelerator`` service option), which
     Dataflow does not allow together with accelerator hints.
   * Workers need this package: by default the worker image built from the
     repo's ``Dockerfile`` (its name encodes the launcher's Python and Beam);
     with ``--no-image`` the repo's ``setup.py`` is staged with ``--setup_file``
     (every worker pip-installs it at start-up).
   * A worker image built for another Python or Beam version fails only once
     workers start (pickled DoFns, SDK harness protocol). Versions knowable
     offline -- the Dockerfile's ARGs when we name or build the image, an image
     tag such as ``...:py3.11-beam2.77.0`` -- are checked here: a mismatch is a
     UserError.

2. :func:`write_job_file` builds the real Dataflow job description without
   network or credentials. Beam's own ``--dry_run`` stops after creating the
   job object (no environment, no worker pool, nothing written), and
   ``--dataflow_job_file`` is only written on the submit path, which first
   authenticates and uploads the pipeline and packages to GCS. So we run the
   DataflowRunner with ``--dry_run`` (it translates the graph exactly as for a
   submission: overrides, environments with resource hints, combiner packing)
   and then let Beam's own ``create_job_description`` fill in the environment
   through a client whose "uploads" go to a local folder. The JSON written is
   the one ``--dataflow_job_file`` would hold; the staged ``pipeline.pb`` (the
   graph Runner v2 executes) and any packages land beside it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, fields

from beam_filter import __version__, fsio
from beam_filter.errors import UserError

_LOG = logging.getLogger(__name__)

DATAFLOW_RUNNERS = {"dataflowrunner", "dataflow"}
LOCAL_RUNNER_NAMES = {"directrunner", "direct", "fnapirunner"}
DEFAULT_MACHINE_TYPE = "n2-standard-8"
DEFAULT_MAX_WORKERS = 32
# Machine type of a one-GPU worker per GPU type (Dataflow needs it for MPS; right fitting uses it too).
GPU_MACHINES = {"nvidia-l4": "g2-standard-8", "nvidia-tesla-t4": "n1-standard-8",
                "nvidia-tesla-a100": "a2-highgpu-1g", "nvidia-a100-80gb": "a2-ultragpu-1g",
                "nvidia-h100-80gb": "a3-highgpu-1g"}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_SETUP = os.path.join(REPO, "setup.py")
DOCKERFILE = os.path.join(REPO, "Dockerfile")
_BUCKET_RE = re.compile(r"^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/.*)?$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")   # GPU and machine type names: nothing to inject into hints


# ---- Beam options passed through ------------------------------------------------------

def option_value(args: list[str], name: str) -> str | None:
    """Last value of Beam option ``--name`` in ``args`` (``--name=v`` or ``--name v``), else None."""
    values = option_values(args, name)
    return values[-1] if values else None


def option_values(args: list[str], name: str) -> list[str]:
    """Every value of a repeatable Beam option (``--experiments``, ``--dataflow_service_options``)."""
    flag = "--" + name
    out = []
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args) and not args[i + 1].startswith("--"):
            out.append(args[i + 1])
        elif a.startswith(flag + "="):
            out.append(a.split("=", 1)[1])
    return out


def is_local_runner(name) -> bool:
    """``--runner`` ``name`` (None: not given) is the local runner."""
    return name is None or str(name).lower() in LOCAL_RUNNER_NAMES


def is_dataflow(beam_args: list[str]) -> bool:
    runner = option_value(beam_args, "runner") or ""
    return runner.rsplit(".", 1)[-1].lower() in DATAFLOW_RUNNERS


# ---- the launch settings ---------------------------------------------------------------

@dataclass(frozen=True)
class Launch:
    """The Dataflow options of one ``beam-filter`` command; None/False: not given.

    Field names are the CLI's option names (``gpu_type`` is ``--gpu-type``), so
    errors name the flag the user typed.
    """

    dataflow: bool = False
    project: str | None = None
    region: str | None = None
    bucket: str | None = None
    job_name: str | None = None
    machine_type: str | None = None
    max_workers: int | None = None
    image: str | None = None
    build_image: bool = False
    no_image: bool = False
    gpu_type: str | None = None
    gpu_count: int | None = None
    gpu_machine_type: str | None = None
    gpu_min_ram: str | None = None
    mps: bool = False
    dry_run: bool = False
    job_file: str | None = None

    @classmethod
    def from_attrs(cls, obj) -> Launch:
        """From any object with these attributes (an argparse namespace); missing ones are not given."""
        return cls(**{f.name: getattr(obj, f.name, None) or f.default for f in fields(cls)})

    def dataflow_only(self) -> list[str]:
        """Given options that mean something only on Dataflow, spelled as flags.

        ``--project``/``--region`` are not among them: they are Beam's own options too.
        """
        return [_flag(f.name) for f in fields(self)
                if f.name not in ("dataflow", "project", "region") and getattr(self, f.name)]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# ---- configure -------------------------------------------------------------------------

def configure(job, launch: Launch, beam_args: list[str], inputs: list[str]) -> tuple[list[str], dict]:
    """(Beam args to run ``job`` with, resource hints for its inference steps).

    ``inputs`` are the paths workers will read (globs, directories): on Dataflow a
    local one is refused. Not on Dataflow (neither ``--dataflow`` nor
    ``--runner=DataflowRunner``): the Beam args plus ``--project``/``--region`` when
    given, no hints, and any Dataflow-only option is an error -- silently running a
    GPU recipe on the local runner is not what the user asked for. Raises UserError
    for anything the user must fix; called before any input is listed.
    """
    runner = option_value(beam_args, "runner")
    if launch.dataflow and runner and not is_dataflow(beam_args):
        raise UserError(f"--dataflow and --runner={runner} exclude each other")
    args = (["--runner=DataflowRunner"] if launch.dataflow and not runner else []) + list(beam_args)
    args += [f"--{name}={value}" for name, value in (("project", launch.project), ("region", launch.region))
             if value]
    if not is_dataflow(args):
        given = launch.dataflow_only()
        if given:
            raise UserError(f"{given[0]} is a Dataflow option: add --dataflow (or --runner=DataflowRunner)")
        return args, {}
    _check_launch(launch)
    if launch.bucket:
        bucket = launch.bucket.rstrip("/")
        args += _ours("--bucket", args, temp_location=bucket + "/tmp", staging_location=bucket + "/staging")
    _require_dataflow_options(job, args, inputs)
    gpu_machine = launch.gpu_machine_type or GPU_MACHINES.get(launch.gpu_type or "")
    if launch.mps:                         # every worker is a one-GPU worker
        if not gpu_machine:
            raise UserError(f"--mps needs --gpu-machine-type for --gpu-type {launch.gpu_type}")
        args += _ours("--mps", args, machine_type=gpu_machine, worker_machine_type=None)
        args.append(f"--dataflow_service_options=worker_accelerator=type:{launch.gpu_type};count:1;"
                    "install-nvidia-driver;use_nvidia_mps")
    else:
        args += _ours("--machine-type" if launch.machine_type else None, args,
                      machine_type=launch.machine_type or DEFAULT_MACHINE_TYPE, worker_machine_type=None)
    args += _ours("--max-workers" if launch.max_workers else None, args,
                  max_num_workers=launch.max_workers or DEFAULT_MAX_WORKERS)
    args += _ours("--job-name" if launch.job_name else None, args,
                  job_name=_job_name(launch.job_name or _default_job_name(job)))
    if "use_runner_v2" not in ",".join(option_values(args, "experiments")):
        args.append("--experiments=use_runner_v2")
    args += sources_args(getattr(job, "sources", None))
    hints = _gpu_hints(job, launch, args, gpu_machine)
    return _worker_image(launch, args, hints), hints


SOURCES_OPTION = "beam_filter_sources"
_SOURCES_OPTIONS: list = []     # the PipelineOptions class declaring it, made once (see sources_args)


def sources_args(sources: dict | None) -> list[str]:
    """``--beam_filter_sources=JSON``: a mixed-source job's sources (``sources.Mix.describe()``: each
    source's name, input glob, fraction, copies, filtered, external and decontaminated flags).

    A pipeline option, so a Dataflow job states its sources where its options are shown: the
    job's ``sdkPipelineOptions`` (the console's "Pipeline options"), the job file of
    ``--dry-run``, and its printed summary. Declared by a PipelineOptions subclass made on first
    use (Beam is not imported before a Dataflow job needs it), so Beam parses it as its own.
    """
    if not sources:
        return []
    if not _SOURCES_OPTIONS:
        from apache_beam.options.pipeline_options import PipelineOptions

        class BeamFilterSourcesOptions(PipelineOptions):
            @classmethod
            def _add_argparse_args(cls, parser):
                parser.add_argument(f"--{SOURCES_OPTION}", default=None,
                                    help="beam-filter: the named inputs of this job (JSON; informational)")

        _SOURCES_OPTIONS.append(BeamFilterSourcesOptions)
    return [f"--{SOURCES_OPTION}=" + json.dumps(sources, sort_keys=True, separators=(",", ":"))]


def _ours(flag: str | None, args: list[str], **beam) -> list[str]:
    """Beam options ``--name=value`` for ours, unless the user gave that Beam option.

    ``flag`` is the beam-filter flag that set the values (None: they are defaults,
    and a Beam option given by the user simply wins); a flag of ours and the Beam
    option it sets, both given, are an error. A None value only names an alias.
    """
    given = [n for n in beam if option_value(args, n) is not None]
    if given and flag:
        raise UserError(f"{flag} and Beam's --{given[0]} both given: use {flag}")
    return [] if given else [f"--{n}={v}" for n, v in beam.items() if v is not None]


def _check_launch(launch: Launch) -> None:
    """Combinations of our own options that cannot mean anything (one line each)."""
    if launch.dry_run and not launch.job_file:
        raise UserError("--dry-run needs --job-file PATH (where the job description goes)")
    if launch.job_file and not launch.dry_run:
        raise UserError("--job-file is only written with --dry-run")
    if launch.no_image and (launch.image or launch.build_image):
        raise UserError("--no-image excludes --image and --build-image")
    if launch.bucket and not _BUCKET_RE.match(launch.bucket.rstrip("/") + "/"):
        raise UserError(f"--bucket must be gs://BUCKET (got {launch.bucket})")
    for name in ("gpu_type", "gpu_machine_type", "machine_type"):
        value = getattr(launch, name)
        if value and not _NAME_RE.match(value):
            raise UserError(f"{_flag(name)} {value!r}: expected a name like nvidia-l4 or g2-standard-8")
    if not launch.gpu_type:
        given = [_flag(n) for n in ("gpu_count", "gpu_machine_type", "gpu_min_ram", "mps") if getattr(launch, n)]
        if given:
            raise UserError(f"{given[0]} needs --gpu-type")
    if launch.mps:
        if (launch.gpu_count or 1) != 1:
            raise UserError("--mps works with --gpu-count 1 only (Dataflow documents MPS for one GPU per worker)")
        for name in ("machine_type", "gpu_min_ram"):
            if getattr(launch, name):
                raise UserError(f"--mps runs every step on the GPU workers (--gpu-machine-type): "
                                f"{_flag(name)} does not apply")


def _require_dataflow_options(job, args: list[str], inputs: list[str]) -> None:
    """Clear one-line errors for what Dataflow needs (Beam's own are tracebacks, or
    a silent fallback to creating a default bucket over the network)."""
    missing = [flag for flag, name in (("--project", "project"), ("--region", "region"),
                                       ("--bucket", "temp_location")) if not option_value(args, name)]
    if missing:
        raise UserError("Dataflow needs " + ", ".join(missing)
                        + (" (or Beam's --temp_location)" if "--bucket" in missing else ""))
    for name in ("temp_location", "staging_location"):
        value = option_value(args, name)
        if value and not _BUCKET_RE.match(value):
            raise UserError(f"--{name}={value}: must be gs://BUCKET/PATH on Dataflow")
    output = getattr(job, "output", "") or ""
    if not fsio.is_remote(output):
        raise UserError(f"--output {output}: Dataflow workers cannot write a local path; use gs://...")
    local = [s for s in inputs if s and not fsio.is_remote(s)]
    if local:
        raise UserError(f"input {local[0]}: Dataflow workers cannot read a local path; use gs://...")


def _gpu_hints(job, launch: Launch, args: list[str], gpu_machine: str | None) -> dict:
    """Resource hints for the inference steps (right fitting): only with --gpu-type, without --mps."""
    recipe = getattr(job, "recipe", None)
    has_models = bool(recipe is not None and recipe.model_stages())
    on_every_worker = "worker_accelerator" in ";".join(option_values(args, "dataflow_service_options"))
    if not launch.gpu_type or launch.mps:
        if has_models and not on_every_worker:
            _LOG.warning("model stages will run on CPU workers (no --gpu-type)")
        return {}
    if on_every_worker:
        raise UserError("--gpu-type (GPU on the inference steps) and --dataflow_service_options="
                        "worker_accelerator (GPU on every worker) exclude each other: use --mps for the latter")
    if not has_models:
        _LOG.warning("recipe %s has no model stage: --gpu-type ignored, every step runs on CPU workers",
                     getattr(recipe, "name", "?"))
        return {}
    accelerator = f"type:{launch.gpu_type};count:{launch.gpu_count or 1}"
    accelerator += (f";machine_type:{gpu_machine}" if gpu_machine else "") + ";install-nvidia-driver"
    hints = {"accelerator": accelerator}
    if launch.gpu_min_ram:
        hints["min_ram"] = parse_min_ram(launch.gpu_min_ram)
    return hints


def _worker_image(launch: Launch, args: list[str], hints: dict) -> list[str]:
    """Add the worker image (or setup.py staging) to ``args`` and check its versions offline."""
    if not launch.no_image:
        default = None if launch.image else default_image(option_value(args, "project"),
                                                          option_value(args, "region"))
        args = args + _ours("--image" if launch.image else None, args, sdk_container_image=launch.image or default)
    image = option_value(args, "sdk_container_image")
    if not image:
        if option_value(args, "setup_file") is None:
            if not os.path.exists(REPO_SETUP):
                raise UserError("Dataflow workers need beam_filter: pass --image (see Dockerfile) "
                                "or --setup_file PATH/setup.py")
            args = args + [f"--setup_file={REPO_SETUP}"]
        if hints or launch.mps:
            _LOG.warning("GPU steps without a worker image: workers pip-install torch with CUDA at "
                         "start-up; build the Dockerfile's image for a faster, pinned start")
        return args
    if launch.build_image or image == default_image(option_value(args, "project"), option_value(args, "region")):
        built_from = dockerfile_versions()      # the image is (to be) built from this checkout's Dockerfile
        if built_from is not None:
            check_versions(built_from, where="Dockerfile")
    declared = versions_from_image(image)
    if declared is not None:
        check_versions(declared)
    else:
        _LOG.info("worker image %s: Python/Beam versions not known offline, not checked", image)
    return args


def default_image(project: str | None, region: str | None) -> str:
    """``REGION-docker.pkg.dev/PROJECT/beam-filter/worker:pyX.Y-beamA.B.C-VERSION``.

    Named after the launcher's own versions, which the image must have anyway;
    the tag convention lets any later launch check them offline.
    """
    v = launcher_versions()
    return f"{region}-docker.pkg.dev/{project}/beam-filter/worker:py{v.python}-beam{v.beam}-{__version__}"


def _default_job_name(job) -> str:
    recipe = getattr(job, "recipe", None)
    parts = ["beam-filter", getattr(job, "command", ""), getattr(recipe, "name", "")]
    return "-".join(p for p in parts if p) + time.strftime("-%Y%m%d-%H%M%S", time.gmtime())


def _job_name(name: str) -> str:
    """Dataflow job names are lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]", "", re.sub(r"[_.]", "-", name.lower()))


def build_image(beam_args: list[str], run: bool) -> None:
    """``docker build`` + ``docker push`` of the worker image from the repo's Dockerfile.

    The commands are printed first; with ``run=False`` (``--dry-run``) only printed,
    since a dry run must not touch the network.
    """
    image = option_value(beam_args, "sdk_container_image")
    if not os.path.exists(DOCKERFILE):
        raise UserError(f"--build-image needs the beam_filter source tree (no {DOCKERFILE})")
    commands = [["docker", "build", "-t", image, REPO], ["docker", "push", image]]
    for cmd in commands:
        print("+ " + shlex.join(cmd), file=sys.stderr)
    if run:
        for cmd in commands:
            try:
                subprocess.run(cmd, check=True)
            except FileNotFoundError:
                raise UserError("--build-image needs docker on PATH") from None


# ---- values ----------------------------------------------------------------------

def parse_min_ram(value: str) -> str:
    """Validate a min_ram hint ('16GB', '32GiB') with Beam's own parser; returns it unchanged."""
    from apache_beam.transforms.resources import MinRamHint

    try:
        MinRamHint.parse(value)
    except Exception:  # Beam raises ValueError with its own wording
        raise UserError(f"--gpu-min-ram {value!r} is not a memory size (e.g. 16GB)") from None
    return value


@dataclass(frozen=True)
class Versions:
    """Python minor version ('3.11') and Beam version ('2.77' or '2.77.0') of a worker image."""

    python: str
    beam: str

    def __str__(self):
        return f"py{self.python},beam{self.beam}"


_PY_RE = re.compile(r"py(?:thon)?-?(\d+\.\d+)")
_BEAM_RE = re.compile(r"beam-?(\d+\.\d+(?:\.\d+)?)")


def versions_from_image(uri: str) -> Versions | None:
    """Versions encoded in an image tag by our convention (``...:py3.11-beam2.77.0...``), else None."""
    if not uri or ":" not in uri.rsplit("/", 1)[-1]:
        return None
    tag = uri.rsplit(":", 1)[1]
    py, beam = _PY_RE.search(tag), _BEAM_RE.search(tag)
    return Versions(py.group(1), beam.group(1)) if py and beam else None


def dockerfile_versions(path: str = DOCKERFILE) -> Versions | None:
    """The ``PYTHON_VERSION``/``BEAM_VERSION`` ARGs of the Dockerfile (None outside a source tree)."""
    try:
        with open(path) as f:
            found = dict(re.findall(r"^ARG (PYTHON_VERSION|BEAM_VERSION)=(\S+)", f.read(), re.M))
    except FileNotFoundError:
        return None
    if len(found) != 2:
        raise UserError(f"cannot read ARG PYTHON_VERSION/BEAM_VERSION from {path}")
    return Versions(found["PYTHON_VERSION"], found["BEAM_VERSION"])


def launcher_versions() -> Versions:
    import apache_beam

    return Versions(f"{sys.version_info[0]}.{sys.version_info[1]}", apache_beam.__version__)


def check_versions(image: Versions, launcher: Versions | None = None, where: str = "worker image") -> None:
    """UserError unless the image's Python minor version and Beam version match the launcher's.

    A Beam version given as '2.77' matches any 2.77.x; '2.77.0' must match exactly
    (Dataflow requires the worker SDK to equal the launcher's).
    """
    launcher = launcher or launcher_versions()
    problems = []
    if image.python != launcher.python:
        problems.append(f"Python {image.python} in the {where} vs {launcher.python} here")
    want = image.beam.split(".")
    have = launcher.beam.split(".")
    if have[: len(want)] != want:
        problems.append(f"apache-beam {image.beam} in the {where} vs {launcher.beam} here")
    if problems:
        raise UserError("; ".join(problems) + ": rebuild the image (Dockerfile ARGs PYTHON_VERSION/"
                        "BEAM_VERSION) or launch from a matching environment")


# ---- offline job description ------------------------------------------------------

def write_job_file(job, beam_args: list[str], path: str) -> dict:
    """Build ``job`` for Dataflow and write its job description to ``path``, offline.

    ``beam_args`` and ``job.gpu_hints`` are what :func:`configure` returned.
    Nothing is submitted or uploaded and no credentials are read. Next to
    ``path`` a folder ``<path>.staging/`` receives what a submission would
    upload to --staging_location (``pipeline.pb``, packages). Returns a summary
    (paths, job name, resource hints, environments).
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import GoogleCloudOptions, TestOptions

    from beam_filter.pipeline import build

    if not is_dataflow(beam_args):
        raise UserError("--dry-run writes a Dataflow job: add --dataflow")
    options = _dataflow_options(list(beam_args) + ["--dry_run=True"])
    p = beam.Pipeline(options=options)
    build(p, job)
    result = p.run()                       # dry run: translated, not submitted
    df_job = result.job
    # The runner worked on its own copy of the options: describe the job a real submit sends.
    df_job.options.view_as(TestOptions).dry_run = False
    staging_dir = path + ".staging"
    os.makedirs(staging_dir, exist_ok=True)
    client = _offline_client(df_job.options, staging_dir)
    client.create_job_description(df_job)
    text = df_job.json()
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return {
        "job_file": path,
        "staging_dir": staging_dir,
        "pipeline_proto": os.path.join(staging_dir, _STAGED_PIPELINE),
        "staged": sorted(client.staged),
        "job_name": df_job.options.view_as(GoogleCloudOptions).job_name,
        "resource_hints": job.gpu_hints,
        "environments": environment_summary(df_job.proto_pipeline),
        **({"sources": job.sources} if getattr(job, "sources", None) else {}),
    }


_STAGED_PIPELINE = "pipeline.pb"


def _dataflow_options(args: list[str]):
    from apache_beam.options.pipeline_options import PipelineOptions

    try:
        return PipelineOptions(list(args))
    except SystemExit:  # argparse exits on a malformed Beam flag
        raise UserError("invalid Beam pipeline option in: " + " ".join(args)) from None


def environment_summary(proto_pipeline) -> dict:
    """{environment id: {"image": ..., "hints": {urn: value}, "transforms": n}} of a pipeline proto."""
    from apache_beam.portability.api import beam_runner_api_pb2

    out = {}
    comps = proto_pipeline.components
    counts: dict[str, int] = {}
    for t in comps.transforms.values():
        if t.environment_id and not t.subtransforms:
            counts[t.environment_id] = counts.get(t.environment_id, 0) + 1
    for env_id, env in sorted(comps.environments.items()):
        image = None
        if env.urn == "beam:env:docker:v1":
            image = beam_runner_api_pb2.DockerPayload.FromString(env.payload).container_image
        out[env_id] = {"image": image,
                       "hints": {k: v.decode("utf-8", "replace") for k, v in sorted(env.resource_hints.items())},
                       "transforms": counts.get(env_id, 0)}
    return out


def _offline_client_class():
    from apache_beam.runners.dataflow.internal import apiclient

    class OfflineStagingClient(apiclient.DataflowApplicationClient):
        """Beam's Dataflow client with its uploads redirected to a local folder.

        The base constructor builds authenticated API clients (credentials,
        network); this one sets only what ``create_job_description`` and the
        staging path read, so Beam's own code computes the environment, worker
        pool and package list exactly as for a real submission.
        """

        def __init__(self, options, local_dir: str):  # noqa: D107 - see class docstring
            from apache_beam.options.pipeline_options import GoogleCloudOptions, StandardOptions

            self.standard_options = options.view_as(StandardOptions)
            self.google_cloud_options = options.view_as(GoogleCloudOptions)
            self._enable_caching = False
            self._root_staging_location = self.google_cloud_options.staging_location
            self.environment_version = apiclient._FNAPI_ENVIRONMENT_MAJOR_VERSION
            self._sdk_image_overrides = self._get_sdk_image_overrides(options)
            self.local_dir = local_dir
            self.staged: list[str] = []

        def stage_file(self, gcs_or_local_path, file_name, stream, mime_type="application/octet-stream",
                       total_size=None):
            remote = f"{gcs_or_local_path.rstrip('/')}/{file_name}"
            with open(os.path.join(self.local_dir, os.path.basename(file_name)), "wb") as f:
                f.write(stream.read())
            self.staged.append(remote)

    return OfflineStagingClient


def _offline_client(options, local_dir):
    try:
        return _offline_client_class()(options, local_dir)
    except AttributeError as e:   # Beam moved an internal we rely on
        raise UserError(f"offline job description not supported with this Beam version ({e})") from None


# ---- inspecting a written job -------------------------------------------------------

def load_job(path: str) -> tuple[dict, object]:
    """(job description dict, pipeline proto) of a file written by :func:`write_job_file`."""
    from apache_beam.portability.api import beam_runner_api_pb2

    with open(path) as f:
        desc = json.load(f)
    proto = beam_runner_api_pb2.Pipeline()
    with open(os.path.join(path + ".staging", _STAGED_PIPELINE), "rb") as f:
        proto.ParseFromString(f.read())
    return desc, proto

