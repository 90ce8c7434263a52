"""``beam-filter``: run | score | select | reshard | report | make-sample | make-test-models | recipes.

The one parser of every option, Dataflow launch options included (``--dataflow
--project --region --bucket --gpu-type ... --dry-run --job-file``): dataflow.py
is the library that turns them into Beam options and resource hints. Flags this
parser does not know are passed to Beam as pipeline options
(``--temp_location=... --sdk_location=...``); a flag neither knows is an error.
Every failure prints one line, never a traceback (``--verbose`` adds it):
user mistakes (bad recipe, missing input, non-empty output) exit 2, I/O failures
(read-only output, disk full, unreachable storage) and unforeseen errors exit 1.
What an output directory may be is output_dir.py's job.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import sys

from beam_filter import dataflow, fsio
from beam_filter.errors import UserError


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    parser = _parser()
    args = None
    try:
        args, extra = parser.parse_known_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        _quiet_beam_logs(verbose)
        return int(args.func(args, extra) or 0)
    except KeyboardInterrupt:
        print("beam-filter: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        message, code = describe_failure(e, verbose, output=getattr(args, "output", None))
        if verbose and not isinstance(e, UserError):
            import traceback

            traceback.print_exc()
        print(f"beam-filter: error: {message}", file=sys.stderr)
        return code


def entry() -> None:
    """The ``beam-filter`` console script: :func:`main`, then leave without tearing the interpreter down.

    A finished command holds Beam's runner, its gRPC threads and every module it imported
    (pyarrow, torch, matplotlib); CPython's teardown frees them one object at a time: 0.7 s
    of a 1.28M-row ``select --metadata`` on 2 cores (measured), while the user waits for a
    prompt with nothing left to do. Normal exit's steps that matter still run, in the same
    order: non-daemon threads are joined, atexit handlers run (logging flush, temporary
    directories, the process pool's children), std streams are flushed; then ``os._exit``.
    Everything the command wrote was closed by then (fsio writes through context managers).
    ``main`` itself returns normally, so in-process callers (tests) are unaffected; argparse's
    own exits (--help, a usage error) raise SystemExit and leave the normal way.
    """
    code = main()
    import atexit
    import threading

    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:    # what interpreter exit runs first: thread-exit hooks (a thread pool
        shutdown()              # not shut down is told to stop), then non-daemon threads joined
    else:
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):       # a closed pipe: nothing left to say
            pass
    os._exit(code)


# ---- one-line failures --------------------------------------------------------------

_USER_ERROR = re.compile(r"(?:^|[\s.'\"])UserError: ([^\n]+)")
_OS_ERROR = re.compile(r"\[Errno (\d+)\] ([^\n]+)")
_LAST_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception)): ([^\n]+)$", re.M)
_WHILE_RUNNING = re.compile(r"\s*\[while running '[^\n]*?'\]")
_IO_HINTS = {"EROFS": "the output is on a read-only file system",
             "EACCES": "no permission to write there", "EPERM": "no permission to write there",
             "ENOSPC": "the disk is full", "EDQUOT": "the disk quota is exhausted"}


def describe_failure(e: BaseException, verbose: bool = False, output: str | None = None) -> tuple[str, int]:
    """(one-line message, exit code) for any exception a command raised.

    Exceptions raised inside the pipeline reach us wrapped by Beam: as the original
    type with `` [while running 'Step']`` appended (local runner), or as a RuntimeError
    whose *message* holds the worker's traceback (portable/remote runners). So both the
    exception chain and its text are searched: a UserError anywhere is the user's to fix
    (exit 2); an OSError (read-only output, disk full, storage unreachable) is the
    environment's (exit 1); anything else is a bug or an unforeseen failure, reported
    by type and message (exit 1) -- the traceback is one ``--verbose`` away.
    """
    chain, seen = [], set()
    x = e
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        chain.append(x)
        x = x.__cause__ or x.__context__
    text = "\n".join(str(c) for c in chain)
    for c in chain:
        if isinstance(c, UserError):
            return _clean(str(c)), 2
    m = _USER_ERROR.search(text)
    if m:
        return _clean(m.group(1)), 2
    where = f"writing to --output {output}: " if output else ""
    for c in chain:
        if isinstance(c, OSError):
            return _clean(_os_error_line(c, where)), 1
    m = _OS_ERROR.search(text)
    if m:
        return _clean(_errno_line(int(m.group(1)), m.group(2), where if ": '" not in m.group(2) else "")), 1
    root = chain[-1]
    kind, detail = type(root).__name__, str(root)
    found = _LAST_ERROR_LINE.findall(text) if "Traceback" in text else []
    if found:
        kind, detail = found[-1][0].rsplit(".", 1)[-1], found[-1][1]
    detail = _clean(detail)
    return f"{kind}{': ' + detail if detail else ''}" + (
        "" if verbose else " (run with --verbose for the traceback)"), 1


def _clean(message: str) -> str:
    lines = [ln.strip() for ln in _WHILE_RUNNING.sub("", str(message)).splitlines() if ln.strip()]
    return lines[0][:500] if lines else ""


def _os_error_line(e: OSError, where: str = "") -> str:
    """``strerror: 'path' (ENAME; hint)``; ``where`` prefixes an error that names no file."""
    if e.errno is None or not e.strerror:
        return str(e)
    if e.filename is not None:
        return _errno_line(e.errno, f"{e.strerror}: {e.filename!r}")
    return _errno_line(e.errno, e.strerror, where)


def _errno_line(number: int, text: str, where: str = "") -> str:
    import errno

    name = errno.errorcode.get(number, "")
    hint = _IO_HINTS.get(name)
    text = where + text.strip()
    return f"{text} ({name}{'; ' + hint if hint else ''})" if name else text


# ---- commands -------------------------------------------------------------------

def cmd_pipeline(args, extra: list[str]) -> int:
    from beam_filter.job import Job, check_columns
    from beam_filter.output_dir import prepare_output

    beam_args = _beam_args(extra)
    _check_runner(beam_args)
    command = args.command
    job = Job(command=command, output=args.output.rstrip("/"), shard_size=getattr(args, "shard_size", 10000),
              resume=getattr(args, "resume", False), fuse=not getattr(args, "no_fusion", False),
              uid_keys=getattr(args, "uid_keys", False), apply_blur=getattr(args, "apply_blur", False),
              inject_blur_metadata=getattr(args, "inject_blur_metadata", False),
              blur_metadata=getattr(args, "blur_metadata", None))
    if job.blur_metadata and not job.inject_blur_metadata:
        raise UserError("--blur-metadata is where --inject-blur-metadata finds face boxes: give both")
    mix = None
    if command in ("run", "score", "reshard"):     # --input NAME=GLOB:fraction=F:copies=K (sources.py)
        from beam_filter.sources import parse_inputs

        mix = parse_inputs(list(args.input), getattr(args, "decontaminate", None))
        job.sources = mix.describe() if mix.named else None
    prepend = [mix.stage_entry()] if mix is not None and mix.named else []
    if command == "select" and getattr(args, "scores", None):   # scores of named inputs: their sources stage
        from beam_filter.recipe import load_raw_recipe
        from beam_filter.sources import recorded_mix

        raw = load_raw_recipe(args.recipe)
        entry, job.sources = recorded_mix(args.scores, raw.get("stages") if isinstance(raw, dict) else None)
        prepend = [entry] if entry else []
    if command in ("run", "score", "select"):
        overrides = list(args.set or [])
        job.recipe = _load_recipe(args.recipe, overrides, getattr(args, "test_models", None), prepend=prepend)
        if command != "select":
            check_columns(job)          # shards provide what the stages compute: no I/O needed
            _check_model_weights(job.recipe)
    if command == "select":
        if bool(args.scores) == bool(args.metadata):
            raise UserError("select needs exactly one of --scores DIR or --metadata DIR")
        job.input_globs = [args.scores or args.metadata]
    else:
        job.input_globs = mix.globs
    input_dirs = job.input_globs if command == "select" else [args.decisions] if command == "reshard" else []
    if command in ("run", "reshard") and job.shard_size <= 0:
        raise UserError("--shard-size must be a positive number of samples")
    # Before any input is listed: a bad combination or a local path on Dataflow is one line, not a timeout.
    launch = dataflow.Launch.from_attrs(args)
    beam_args, job.gpu_hints = dataflow.configure(job, launch, beam_args, job.input_globs + input_dirs)
    if dataflow.is_dataflow(beam_args):
        print("beam-filter: Beam options: " + shlex.join(beam_args), file=sys.stderr)
    if launch.build_image:
        dataflow.build_image(beam_args, run=not launch.dry_run)
    if launch.dry_run:
        return _write_job_file(job, beam_args, launch.job_file)
    if command in ("run", "score", "reshard"):
        job.shards, job.skipped_inputs = mix.match(match_inputs) if mix.named else match_inputs(mix.globs)
        _warn_skipped(job.skipped_inputs)
        if command != "reshard" and mix.named and not mix.eval_images and any(s.is_external for s in mix.sources):
            print("beam-filter: warning: external sources are not decontaminated; give --decontaminate "
                  "EVAL_IMAGES (a directory, glob or .npy of pHashes) to check them", file=sys.stderr)
    if command == "select" and args.scores:
        job.score_files = _list_parquet(args.scores, "scores")
        if not job.score_files:
            raise UserError(f"--scores {args.scores}: no scores/*.parquet found (run `beam-filter score` first)")
    elif command == "select":
        _require_exists(args.metadata, "--metadata")
        job.metadata_dir = args.metadata
    if command == "select":
        check_columns(job)              # against the columns the scores or metadata really hold
    if command == "reshard":
        job.decision_files = _list_parquet(args.decisions, "decisions")
        if not job.decision_files:
            raise UserError(f"--decisions {args.decisions}: no decisions/*.parquet found")
        check_decision_files(job.decision_files)
    _warm_local_pool(job, beam_args)
    from beam_filter.pipeline import run_job     # imports Beam (~1.2 s): only once the job is valid

    lock = prepare_output(job.output, overwrite=args.overwrite, resume=job.resume, command=command,
                          shards=job.shards, input_dirs=input_dirs)
    try:
        report = run_job(job, beam_args, progress=not args.no_progress)
    finally:
        lock.release()
    _print_summary(job, report)
    return 0


def _warm_local_pool(job, beam_args: list[str]) -> None:
    """Where the local runner will start a process pool (in-memory, more than one process, more
    than one shard, part or file: pipeline.local_processes and the by-part graph decide it the
    same way later), start its fork server before Beam is imported, so that the server imports
    the work's modules on another core meanwhile (transforms/local_pool.warm_forkserver), and
    matplotlib, with which the pool draws report.html's charts at the end (report.make_plots)."""
    from beam_filter.transforms.local_pool import local_pool_size, warm_forkserver

    if not dataflow.is_local_runner(dataflow.option_value(beam_args, "runner")):
        return
    if (dataflow.option_value(beam_args, "direct_running_mode") or "in_memory") != "in_memory":
        return
    asked = dataflow.option_value(beam_args, "direct_num_workers")
    processes = local_pool_size(int(asked) if asked and asked.isdigit() else None)
    if job.command == "select" and job.metadata_dir:
        if fsio.is_remote(job.metadata_dir):
            return      # listing it would import Beam, which this is meant to run ahead of
        inputs = fsio.list_files(job.metadata_dir, "*.parquet")
    else:
        inputs = job.shards or job.score_files or job.decision_files
    if processes < 2 or len(inputs) < 2:
        return

    work = "beam_filter.resharding" if job.command == "reshard" else "beam_filter.shard_work"
    stages = job.recipe.stages if job.recipe is not None else ()
    charts = [] if fsio.is_remote(job.output) else ["beam_filter.report", "beam_filter.report.plots"]  # report.PLOTS_MODULE
    warm_forkserver([type(s).__module__ for s in stages] + [work] + charts)


def _write_job_file(job, beam_args: list[str], path: str) -> int:
    """``--dry-run``: the Dataflow job description, built offline (dataflow.write_job_file).

    Listing remote inputs or outputs needs credentials, so nothing is listed: the
    shard-list step holds the --input globs themselves, and the job is described as
    if no shard were scored yet (what --resume would skip is only known online).
    """
    job.shards = sorted(job.input_globs)
    if job.resume:
        print("beam-filter: note: --dry-run describes the job without what --resume would skip",
              file=sys.stderr)
        job.resume = False
    print(json.dumps(dataflow.write_job_file(job, beam_args, path), indent=2, sort_keys=True))
    return 0


def cmd_report(args, extra) -> int:
    _no_extra(extra)
    from beam_filter.layout import OutputLayout
    from beam_filter.report import write_report

    _require_exists(OutputLayout(args.output).report_json, "--output (report.json)")
    print(write_report(args.output))
    return 0


def cmd_make_sample(args, extra) -> int:
    _no_extra(extra)
    from beam_filter.output_dir import SAMPLE_POOL, prepare_output
    from beam_filter.devtools.sample_pool import make_sample

    if args.samples <= 0:
        raise UserError("--samples must be positive")
    lock = prepare_output(args.output, overwrite=args.overwrite, resume=False, command="make-sample",
                          kind=SAMPLE_POOL)
    try:
        manifest = make_sample(args.output, samples=args.samples, seed=args.seed,
                               broken_shards=args.broken_shards)
    finally:
        lock.release()
    n = manifest.get("samples", args.samples) if isinstance(manifest, dict) else args.samples
    print(f"wrote a sample pool of {n} samples to {args.output}")
    return 0


def cmd_build_centroids(args, extra) -> int:
    """DataComp's image_based_clustering.py (build_centroids.py): on one machine, or as a Beam graph
    (--distributed; --dataflow implies it) on the local runner or Dataflow."""
    from beam_filter import build_centroids as bc

    if args.sample_ratio is not None and not 0 < args.sample_ratio <= 1:
        raise UserError("--sample-ratio must be in (0, 1]")
    kw = dict(metadata_dir=args.metadata, scores_dir=args.scores, key=args.embedding,
              num_clusters=args.num_clusters, seed=args.seed, niter=args.niter,
              caption_filtering=not args.disable_caption_filtering, sample_ratio=args.sample_ratio or -1.0,
              lid_model=args.lid_model, sample_salt=args.sample_salt, assign_dir=args.assign)
    launch = dataflow.Launch.from_attrs(args)
    if not (args.distributed or launch.dataflow):
        if extra:
            raise UserError(f"Beam options ({extra[0]} ...) apply to --distributed (or --dataflow)")
        if launch.dataflow_only() or launch.project or launch.region:
            raise UserError(f"{(launch.dataflow_only() or ['--project/--region'])[0]} is a Dataflow option: "
                            "add --dataflow")
        done = bc.build_centroids(args.output, **kw)
        timing = f"load {done['load_s']} s, k-means {done['kmeans_s']} s"
    else:
        from beam_filter.job import Job

        beam_args = _beam_args(extra)
        _check_runner(beam_args)
        beam_args, _ = dataflow.configure(Job(command="build-centroids", output=args.output), launch, beam_args,
                                          [p for p in (args.metadata, args.scores, args.assign) if p])
        if dataflow.is_dataflow(beam_args):
            print("beam-filter: Beam options: " + shlex.join(beam_args), file=sys.stderr)
        done = bc.build_centroids_distributed(args.output, beam_args, **kw)
        timing = f"{done['parts']} parts, distributed, {done['seconds']} s"
    print(f"wrote {done['clusters']} centroids ({done['dim']}-d) from {done['embeddings']} embeddings to "
          f"{done['output']} ({timing})")
    if args.assign:
        print(f"wrote the nearest centroid of {done['assigned']} rows to {args.assign}/*.parquet")
    return 0


def cmd_make_test_models(args, extra) -> int:
    _no_extra(extra)
    from beam_filter.registry import all_stages

    os.makedirs(args.directory, exist_ok=True)
    written = [name for name, cls in sorted(all_stages().items()) if cls.write_test_model(args.directory)]
    print(f"wrote tiny test models for: {', '.join(written) or '(none)'} in {args.directory}")
    return 0


def cmd_recipes(args, extra) -> int:
    _no_extra(extra)
    from beam_filter.recipe import list_presets, load_recipe
    from beam_filter.registry import all_stages

    if args.show:
        print(load_recipe(args.show).text, end="")
        return 0
    for name in list_presets():
        try:
            print(f"{name:34s} {load_recipe(name).description}")
        except UserError as e:
            print(f"{name:34s} (needs settings: {e})")
    print("\nstage types:")
    for name, cls in sorted(all_stages().items()):
        print(f"  {name:22s} {cls.description}")
    return 0


# ---- helpers ---------------------------------------------------------------------

def match_shards(globs: list[str]) -> list[str]:
    """Expand input globs (local, gs://, s3://) to a sorted list of .tar paths; errors are one line."""
    return match_inputs(globs)[0]


def match_inputs(globs: list[str]) -> tuple[list[str], list[str]]:
    """(sorted .tar shards, sorted other files the globs matched).

    Only ``.tar`` files are shards; anything else a glob matches (``.tar.gz``, sidecar
    json, ...) is skipped, and the caller says so rather than dropping it silently.
    A remote listing has a deadline (fsio.remote_call): without credentials the
    storage client would otherwise retry for minutes.
    """
    from beam_filter import fsio
    from beam_filter.layout import shard_stem

    paths, skipped = set(), set()
    for g in globs:
        try:
            found = fsio.remote_call(lambda: fsio.match(g), g, "cannot list --input")
        except (UserError, fsio.RemoteIOError):
            raise
        except Exception as e:
            raise UserError(f"--input {g}: cannot list ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        found += _unlisted_local(g, found)
        shards = [f for f in found if f.endswith(".tar")]
        if not shards:
            raise UserError(f"--input {g}: no .tar shards match"
                            + (f" ({len(found)} other file(s), e.g. {found[0]})" if found else ""))
        paths.update(shards)
        skipped.update(f for f in found if not f.endswith(".tar"))
    shards = sorted(paths)
    stems = {}
    for s in shards:
        other = stems.setdefault(shard_stem(s), s)
        if other != s:
            raise UserError(f"two input shards share the name {shard_stem(s)!r} ({other}, {s}); "
                            "outputs are named per shard, so names must be unique")
    return shards, sorted(skipped)


def _unlisted_local(pattern: str, found: list[str]) -> list[str]:
    """Local ``.tar`` names the glob matches that Beam's listing leaves out: dangling symlinks and
    directories. They are kept as shards so that reading them records a file error
    (``unreadable``) instead of their silently not being there."""
    import glob

    from beam_filter import fsio

    if fsio.is_remote(pattern):
        return []
    listed = {os.path.abspath(f) for f in found}
    return sorted(p for p in glob.glob(pattern) if p.endswith(".tar") and os.path.abspath(p) not in listed
                  and not os.path.isfile(p))


def _warn_skipped(skipped: list[str]) -> None:
    if skipped:
        shown = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        print(f"beam-filter: warning: skipping {len(skipped)} file(s) matched by --input that are not "
              f".tar shards (listed in report.json): {shown}", file=sys.stderr)


def _list_parquet(directory: str, sub: str) -> list[str]:
    """``DIR/sub/*.parquet``, else ``DIR/*.parquet`` (a remote listing has a deadline)."""
    from beam_filter import fsio

    return fsio.remote_call(lambda: fsio.list_files(fsio.join(directory, sub), "*.parquet")
                            or fsio.list_files(directory, "*.parquet"), directory, f"cannot list --{sub}")


DECISION_COLUMNS = ("uid", "shard", "key", "kept", "copies")


def check_decision_files(files: list[str]) -> None:
    """Every ``reshard --decisions`` file must be a parquet with the columns reshard reads.

    Checked here, from the files' footers, so a damaged or foreign file is one line
    before Beam starts instead of a worker traceback in the middle of the job.
    """
    from concurrent.futures import ThreadPoolExecutor

    from beam_filter import fsio

    def check_all():        # the pool lives inside the deadline: a stuck read must not hold exit
        with ThreadPoolExecutor(min(16, len(files))) as pool:
            return list(pool.map(_decision_file_problem, files))

    problems = fsio.remote_call(check_all, files[0], "cannot read --decisions")
    for path, problem in zip(files, problems):
        if problem:
            raise UserError(f"--decisions: {path} {problem}")


def _decision_file_problem(path: str) -> str | None:
    import pyarrow.parquet as pq

    from beam_filter import fsio

    try:
        with fsio.open_read(path) as f:
            names = set(pq.read_schema(f).names)
    except OSError:
        raise
    except Exception as e:
        return f"is not a readable parquet file ({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})"
    missing = [c for c in DECISION_COLUMNS if c not in names]
    if missing:
        return f"lacks column(s) {', '.join(missing)}; it is not a beam-filter decisions file"
    return None


def _check_runner(beam_args: list[str]) -> None:
    """An unknown ``--runner`` is one line here, not a traceback from inside Beam."""
    name = dataflow.option_value(beam_args, "runner")
    if name is None:
        return
    from apache_beam.options.pipeline_options import StandardOptions
    known = {n.lower() for n in StandardOptions.KNOWN_RUNNER_NAMES}
    if name.lower() in known or name.lower() + "runner" in known:
        return
    if "." in name:
        import importlib

        module, cls = name.rsplit(".", 1)
        try:
            if hasattr(importlib.import_module(module), cls):
                return
        except ImportError:
            pass
    raise UserError(f"--runner={name}: unknown runner; use one of "
                    f"{', '.join(StandardOptions.KNOWN_RUNNER_NAMES)} or a module.Class path")


def _check_model_weights(recipe) -> None:
    """Local weight paths that do not exist fail now, naming the parameter, not in a worker later."""
    for stage in recipe.model_stages():
        check = getattr(stage, "check_weights", None)
        if check is not None:
            check()


def _load_recipe(spec: str, overrides: list[str], test_models: str | None, prepend=()):
    """``prepend``: recipe entries put before the recipe's stages (the ``sources`` stage of named inputs)."""
    from beam_filter.recipe import load_raw_recipe, load_recipe, parse_recipe

    def load(ov):
        if not prepend:
            return load_recipe(spec, ov)
        raw = load_raw_recipe(spec)
        if not isinstance(raw, dict):
            return load_recipe(spec, ov)            # parse_recipe's own one-line error
        return parse_recipe({**raw, "stages": list(prepend) + list(raw.get("stages") or [])},
                            source=spec, overrides=ov)

    recipe = load(overrides)
    if test_models:
        _require_exists(test_models, "--test-models")
        extra = []
        for stage in recipe.leaf_stages():
            path = ".".join(_stage_path(recipe, stage))
            for k, v in type(stage).test_model_params(test_models).items():
                extra.append(f"{path}.{k}={v}")
        recipe = load(overrides + extra)
    return recipe


def _stage_path(recipe, stage) -> list[str]:
    for top in recipe.stages:
        if top is stage:
            return [top.id]
        for child in getattr(top, "children", []):
            if child is stage:
                return [top.id, child.id]
    return [stage.id]


def _beam_args(extra: list[str]) -> list[str]:
    """Validate that leftover flags are Beam pipeline options; a typo is an error, not ignored."""
    if not extra:
        return []       # and Beam (~1.2 s to import) is not needed yet
    from apache_beam.options.pipeline_options import PipelineOptions

    known = set()
    for cls in PipelineOptions.__subclasses__():
        parser = argparse.ArgumentParser(add_help=False)
        try:
            cls._add_argparse_args(parser)
        except Exception:
            continue
        for action in parser._actions:
            known.update(action.option_strings)
    i = 0
    while i < len(extra):
        a = extra[i]
        if not a.startswith("-"):
            raise UserError(f"unexpected argument {a!r}")
        flag = a.split("=", 1)[0]
        if flag not in known:
            raise UserError(f"unknown option {flag} (not a beam-filter or Beam pipeline option)")
        if "=" not in a and i + 1 < len(extra) and not extra[i + 1].startswith("-"):
            i += 1          # `--flag value`
        i += 1
    return extra


def _require_exists(path: str, what: str) -> None:
    from beam_filter import fsio

    if not fsio.remote_call(lambda: fsio.exists(path), path, f"cannot check {what}"):
        raise UserError(f"{what}: {path} does not exist")


def _no_extra(extra: list[str]) -> None:
    if extra:
        raise UserError(f"unknown option(s): {' '.join(extra)}")


def _quiet_beam_logs(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        # A failure is reported as one line by main(); Beam's own ERROR records of the
        # same failure repeat it with a worker traceback, so they are silenced too.
        for name in ("apache_beam", "absl", "google.auth"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _print_summary(job, report: dict) -> None:
    from beam_filter.layout import OutputLayout

    c = report.get("counts")
    where = job.output
    if c:
        pct = 100.0 * c["kept"] / c["samples"] if c["samples"] else 0.0
        print(f"{job.command}: {c['samples']} samples, kept {c['kept']} ({pct:.1f}%), "
              f"{c['kept_with_copies']} with copies; file errors: {len(report.get('file_errors', []))}")
    out = report.get("outputs")
    if out:
        print(f"wrote {out['shards']} shards ({out['samples_written']} samples) to {where}/shards")
    print(f"report: {where}/report.json" + (f", {where}/report.html" if os.path.exists(
        OutputLayout(where).report_html) else ""))


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(message)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (got {text!r})")
    return int(text)


def _dataflow_options(sp, gpu: bool = False) -> None:
    """The Dataflow launch options, defined here once (docs/dataflow.md); dataflow.configure reads them.

    The GPU and dry-run options exist where there is inference to place (run, score).
    """
    g = sp.add_argument_group(
        "Google Cloud Dataflow", "all but --dataflow/--project/--region need --dataflow (or Beam's "
        "--runner=DataflowRunner); other Beam options pass through")
    g.add_argument("--dataflow", action="store_true", help="run on Dataflow (same as --runner=DataflowRunner)")
    g.add_argument("--project", help="Google Cloud project (a Beam option too)")
    g.add_argument("--region", help="Dataflow region, e.g. us-central1 (a Beam option too)")
    g.add_argument("--bucket", metavar="gs://B", help="temp (gs://B/tmp) and staging (gs://B/staging) location")
    g.add_argument("--job-name", metavar="NAME",
                   help="Dataflow job name (default: beam-filter-COMMAND-RECIPE-UTCSTAMP)")
    g.add_argument("--machine-type", metavar="M", help=f"CPU workers (default: {dataflow.DEFAULT_MACHINE_TYPE})")
    g.add_argument("--max-workers", type=_positive_int, metavar="N",
                   help=f"autoscaling ceiling (default: {dataflow.DEFAULT_MAX_WORKERS})")
    g.add_argument("--image", metavar="URI", help="worker image (default: REGION-docker.pkg.dev/PROJECT/"
                   "beam-filter/worker:pyX.Y-beamA.B.C-VERSION, built from ./Dockerfile)")
    g.add_argument("--build-image", action="store_true",
                   help="docker build + push the worker image from ./Dockerfile first (only printed with --dry-run)")
    g.add_argument("--no-image", action="store_true",
                   help="no worker image: stage setup.py (workers pip-install the project at start-up)")
    if not gpu:
        return
    g.add_argument("--gpu-type", metavar="T", help="GPU for the inference steps only, e.g. nvidia-l4, "
                   "nvidia-tesla-t4, nvidia-tesla-a100 (default: inference on CPU workers)")
    g.add_argument("--gpu-count", type=_positive_int, metavar="N", help="GPUs per GPU worker (default: 1)")
    g.add_argument("--gpu-machine-type", metavar="M", help="GPU workers' machine type (default by GPU: "
                   + ", ".join(f"{m} for {t}" for t, m in dataflow.GPU_MACHINES.items()) + ")")
    g.add_argument("--gpu-min-ram", metavar="SIZE", help="min_ram hint of the GPU steps, e.g. 32GB")
    g.add_argument("--mps", action="store_true", help="the GPU on every worker, shared by all SDK processes "
                   "with NVIDIA MPS (no right fitting)")
    g.add_argument("--dry-run", action="store_true", help="submit nothing: write the job description to "
                   "--job-file, offline (no network, no credentials)")
    g.add_argument("--job-file", metavar="PATH", help="where --dry-run writes the job JSON (and PATH.staging/)")


def _reshard_options(sp) -> None:
    """DataComp resharder parity (docs/datacomp_files.md)."""
    sp.add_argument("--uid-keys", action="store_true", help="name every output sample {uid}-{j}, j from 0, "
                    "even for one copy (DataComp's resharder)")
    sp.add_argument("--apply-blur", action="store_true", help="blur faces in output images (json face_bboxes, "
                    "else the face_area stage's boxes in scores/); re-encodes them, recorded in meta.json")
    sp.add_argument("--inject-blur-metadata", action="store_true", help="write each sample's face boxes into its "
                    "json face_bboxes (DataComp's resharder); boxes from --blur-metadata, else the face_area scores")
    sp.add_argument("--blur-metadata", metavar="DIR", help="DataComp metadata dir (uid, face_bboxes parquets) "
                    "for --inject-blur-metadata")


def _source_options(sp) -> None:
    """Named inputs (sources.py): --input NAME=GLOB[:fraction=F][:copies=K], or a sources .yaml."""
    sp.add_argument("--decontaminate", metavar="EVAL_IMAGES", help="evaluation images (dir, glob or .npy of "
                    "pHashes) that external sources (--input NAME=GLOB) are decontaminated against")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="beam-filter", description="Curate image-text pre-training data with Apache Beam.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    def common(sp, recipe=True, output=True):
        if recipe:
            sp.add_argument("--recipe", required=True, help="preset name (see `beam-filter recipes`) or YAML file")
            sp.add_argument("--set", action="append", metavar="STAGE.PARAM=VALUE",
                            help="override one stage parameter (repeatable)")
        if output:
            sp.add_argument("--output", required=True, help="output directory (local or gs://)")
            sp.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
        sp.add_argument("--verbose", action="store_true", help="show Beam's own logs")
        sp.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
        sp.add_argument("--no-fusion", action="store_true", help=argparse.SUPPRESS)  # tests: force the general graph
        sp.set_defaults(func=cmd_pipeline)

    for name, helptext in (("run", "score, select and reshard in one pipeline"),
                           ("score", "compute features and model scores per shard (resumable)")):
        sp = sub.add_parser(name, help=helptext)
        common(sp)
        sp.add_argument("--input", required=True, action="append",
                        help="shard glob, or NAME=GLOB[:fraction=F][:copies=K] for a named source, or a "
                        "sources .yaml (repeatable; docs/datacomp_files.md)")
        _source_options(sp)
        sp.add_argument("--resume", action="store_true",
                        help="reuse scores/ already in --output computed with the same model settings")
        sp.add_argument("--test-models", metavar="DIR", help="swap every model for its tiny twin from DIR")
        if name == "run":
            sp.add_argument("--shard-size", type=int, default=10000, help="samples per output shard")
            _reshard_options(sp)
        _dataflow_options(sp, gpu=True)
    sp = sub.add_parser("select", help="apply a recipe to scores or DataComp metadata (no inference)")
    common(sp)
    sp.add_argument("--scores", help="output dir of a `score` run")
    sp.add_argument("--metadata", help="DataComp metadata dir (parquet + npz)")
    sp.add_argument("--test-models", metavar="DIR", help=argparse.SUPPRESS)
    _dataflow_options(sp)
    sp = sub.add_parser("reshard", help="write kept samples into new shards")
    common(sp, recipe=False)
    sp.add_argument("--decisions", required=True, help="output dir of a run/select (with decisions/)")
    sp.add_argument("--input", required=True, action="append",
                    help="source shard glob, or NAME=GLOB as given to run (repeatable)")
    sp.add_argument("--shard-size", type=int, default=10000, help="samples per output shard")
    _reshard_options(sp)
    _dataflow_options(sp)

    sp = sub.add_parser("report", help="rebuild report.html from an output dir")
    sp.add_argument("--output", required=True)
    sp.set_defaults(func=cmd_report)
    sp = sub.add_parser("make-sample", help="write a small realistic sample pool")
    sp.add_argument("--output", required=True)
    sp.add_argument("--samples", type=int, default=240)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--broken-shards", action="store_true", help="add a truncated tar and a non-tar file")
    sp.add_argument("--overwrite", action="store_true")
    sp.set_defaults(func=cmd_make_sample)
    sp = sub.add_parser("build-centroids", help="DataComp image_based pool centroids (faiss k-means on "
                        "caption-filtered L/14 embeddings)")
    sp.add_argument("--metadata", help="DataComp metadata dir (parquet + npz)")
    sp.add_argument("--scores", help="output dir of a `score` run with L/14 image embeddings")
    sp.add_argument("--output", required=True, help="centroids file: .pt (DataComp's format) or .npy")
    sp.add_argument("--embedding", default="l14_img", help="embedding column (default l14_img; scores: "
                    "clip_l14_image_embedding)")
    sp.add_argument("--num-clusters", type=int, default=100_000, help="k (DataComp: 100000)")
    sp.add_argument("--niter", type=int, default=20, help="k-means iterations (DataComp: 20)")
    sp.add_argument("--seed", type=int, default=0, help="faiss seed (DataComp: 0)")
    sp.add_argument("--sample-ratio", type=float, help="keep this fraction of rows, by uid hash (memory)")
    sp.add_argument("--disable-caption-filtering", action="store_true", help="cluster every row")
    sp.add_argument("--lid-model", help="fastText language-id model (default: bundled lid.176.ftz)")
    sp.add_argument("--sample-salt", default="build-centroids", help="salt of the --sample-ratio rule: a row "
                    "is sampled when uid_unit(uid, SALT) < ratio (another salt, another sample)")
    sp.add_argument("--distributed", action="store_true", help="a Beam graph: parts read and sampled in "
                    "parallel, k-means on one worker (--dataflow implies it; Beam options pass through)")
    sp.add_argument("--assign", metavar="DIR", help="also write each part's rows' nearest centroid "
                    "(uid, centroid, caption_ok) to DIR/<part>.parquet")
    _dataflow_options(sp)
    sp.set_defaults(func=cmd_build_centroids)
    sp = sub.add_parser("make-test-models", help="write tiny random checkpoints for offline smoke tests")
    sp.add_argument("directory")
    sp.set_defaults(func=cmd_make_test_models)
    sp = sub.add_parser("recipes", help="list presets and stage types")
    sp.add_argument("--show", metavar="NAME", help="print a preset's resolved YAML")
    sp.set_defaults(func=cmd_recipes)
    return p


if __name__ == "__main__":
    entry()
