"""After the graph: uids.npy, report.json, shards/meta.json and report.html from what is on disk.

Everything here is computed from the per-shard files the pipeline wrote
(decisions, file errors, thresholds, output shard stats), reading only the few
columns it needs, so the summary always matches the data even after retries,
and ``beam-filter report`` can rebuild it without rerunning.
"""

from __future__ import annotations

import io
import json
import platform
import re
import sys
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import beam_filter
from beam_filter import fsio
from beam_filter import records as R
from beam_filter.layout import UIDS, OutputLayout
from beam_filter.readahead import read_ahead
from beam_filter.addback import REASON_PREFIX as ADDED_BACK
from beam_filter.selection import READ_STAGE
from beam_filter.uids import UID_DTYPE, save_uids, uid_order, uids_to_array

PACKAGES = ("apache-beam", "torch", "torchvision", "open_clip_torch", "transformers", "pyarrow", "numpy",
            "pillow", "fasttext-numpy2", "faiss-cpu")


def decision_summary(decision_files: list[str]):
    """Counts, reasons, per-stage drops and the kept uid array, reading 5 columns per file.

    Each file is folded with Arrow compute and numpy (:func:`_fold_decisions`), never
    row by row in Python: a per-row loop and a ``uid_to_pair`` per uid were 5 s of a
    1.28M-row ``select``. Kept uids are accumulated as one ``u8,u8`` array per file (16
    bytes per kept uid), never as Python objects, and copies are expanded after the one
    sort, so a 384M-uid DataComp-large subset fits in the launcher's memory (about
    twice 16 B per uid and copy while sorting).
    """
    counts = Counter()
    reasons = Counter()
    by_stage = Counter()
    distinct_parts, copies_parts = [], []
    for _path, table in read_ahead(decision_files, _read_decisions):
        kept_uids, kept_copies = _fold_decisions(table, counts, reasons, by_stage)
        if len(kept_uids):
            distinct_parts.append(uids_to_array(kept_uids, sort=False))
            copies_parts.append(kept_copies)
    distinct = np.concatenate(distinct_parts) if distinct_parts else np.empty(0, dtype=UID_DTYPE)
    copies = np.concatenate(copies_parts) if copies_parts else np.empty(0, dtype=np.int64)
    del distinct_parts, copies_parts
    order = uid_order(distinct)
    distinct = distinct[order]
    counts["duplicate_uids"] = _shared_uid_count(distinct)
    # Repeating each record of a sorted array keeps it sorted: the sort of the repeated array.
    return counts, reasons, by_stage, np.repeat(distinct, copies[order])


def _read_decisions(path: str):
    """The 5 (or 6, with warnings) columns decision_summary folds, of one decisions file."""
    parquet = pq.ParquetFile(io.BytesIO(fsio.read_bytes(path)))
    wanted = [R.UID, R.KEPT, R.COPIES, R.REASON, R.STAGE]
    has_warning = R.WARNING in parquet.schema_arrow.names
    return parquet.read(columns=wanted + ([R.WARNING] if has_warning else []))


def _fold_decisions(table, counts: Counter, reasons: Counter, by_stage: Counter):
    """Add one decisions table to the counters; return its kept uids (Arrow) and their copies.

    The counters get exactly what a loop over the rows would give them: ``samples``,
    ``kept``, ``kept_with_copies`` and ``dropped`` (each only once such a row is seen),
    each dropped row's reason and stage, each added-back row's reason (addback.py) and
    stage, and ``warning:<w>`` for every non-empty warning.
    """
    n = table.num_rows
    if n == 0:
        return [], None
    kept_col = table.column(R.KEPT)
    if not pa.types.is_boolean(kept_col.type):
        kept_col = pa.chunked_array([pa.array([bool(v) for v in kept_col.to_pylist()], pa.bool_())])
    kept = pc.fill_null(kept_col, False)
    n_kept = int(pc.sum(kept).as_py() or 0)
    counts["samples"] += n
    if R.WARNING in table.column_names:
        warning = table.column(R.WARNING)
        if pa.types.is_string(warning.type) or pa.types.is_large_string(warning.type):
            present = pc.fill_null(pc.greater(pc.utf8_length(warning), 0), False)
            for w, c in _group_counts(pa.table({"w": warning}).filter(present), ["w"]):
                counts[f"warning:{w[0]}"] += c
        else:
            counts.update(f"warning:{w}" for w in warning.to_pylist() if w)
    pairs = pa.table({"r": table.column(R.REASON), "s": table.column(R.STAGE)})
    if n_kept:
        counts["kept"] += n_kept
        added = pc.and_(kept, pc.fill_null(pc.starts_with(_as_text(pairs.column("r")), ADDED_BACK), False))
        for (reason, stage), c in _group_counts(pairs.filter(added), ["r", "s"]):
            counts[reason] += c          # dropped at `stage`, then added back (addback.py)
            by_stage[stage] += c
        copies = np.asarray(pc.fill_null(table.column(R.COPIES).filter(kept), 0).to_numpy(zero_copy_only=False))
        copies = copies.astype(np.int64)
        counts["kept_with_copies"] += int(copies.sum())
    if n_kept < n:
        counts["dropped"] += n - n_kept
        for (reason, stage), c in _group_counts(pairs.filter(pc.invert(kept)), ["r", "s"]):
            reasons[reason] += c
            by_stage[stage] += c
    if not n_kept:
        return [], None
    return table.column(R.UID).filter(kept), copies


def _group_counts(table, keys: list[str]) -> list[tuple[tuple, int]]:
    """(key values, rows) per distinct combination of ``keys`` (nulls are a value too)."""
    if table.num_rows == 0:
        return []
    rows = table.group_by(keys).aggregate([([], "count_all")]).to_pylist()
    return [(tuple(r[k] for k in keys), int(r["count_all"])) for r in rows]


def _as_text(col):
    """A reason column as strings (for starts_with): nulls when it holds none."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col
    return pa.nulls(len(col), pa.string()) if pa.types.is_null(col.type) else pc.cast(col, pa.string())


def _shared_uid_count(arr: np.ndarray) -> int:
    """How many kept samples share their uid with another kept sample (``arr``: sorted uids).

    Identity inside beam_filter is (shard, key), so such samples are all kept
    and written; but a DataComp subset file speaks in uids, so whoever reshards
    ``uids.npy`` with DataComp's resharder gets each of them as often as the
    uid is listed. The count is reported so that nobody learns it from a
    training run.
    """
    if len(arr) < 2:
        return 0
    same = (arr["f0"][1:] == arr["f0"][:-1]) & (arr["f1"][1:] == arr["f1"][:-1])
    if not same.any():
        return 0
    in_group = np.zeros(len(arr), dtype=bool)
    in_group[1:] |= same
    in_group[:-1] |= same
    return int(in_group.sum())


def funnel(stage_ids: list[tuple[str, str]], total: int, by_stage: Counter,
           counts: Counter | None = None) -> list[dict]:
    rows, alive = [], total
    for sid, stype in [(READ_STAGE, "read")] + stage_ids:
        dropped = by_stage.get(sid, 0)
        rows.append({"stage": sid, "type": stype, "in": alive, "dropped": dropped, "out": alive - dropped})
        alive -= dropped
        if stype == "add_back" and counts is not None:      # the section adds instead (addback.py)
            added = sum(v for k, v in counts.items() if k.startswith("added_back:"))
            rows[-1].update(added=added, out=alive + added)
            alive += added
    return rows


def package_versions() -> dict:
    from importlib import metadata

    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def stage_timings(result) -> dict:
    """Per-stage seconds and sample counts from Beam metrics.

    Rule stages: our ``stage_us:<id>``/``stage_n:<id>`` counters (score transforms).
    Model stages: RunInference's own ``inference_batch_latency_micro_secs`` and
    ``num_inferences`` on the ``Infer[<id>]`` step (model time only, not decoding
    outside the handler).
    """
    timings: dict = {}
    if result is None:
        return timings
    try:
        metrics = result.metrics().query()
    except Exception:  # some runners do not report metrics
        return timings

    def slot(stage_id):
        return timings.setdefault(stage_id, {"seconds": 0.0, "samples": 0})

    for c in metrics.get("counters", []):
        name = c.key.metric.name
        value = c.committed if c.committed is not None else c.attempted
        if name.startswith("stage_us:"):
            slot(name[9:])["seconds"] += value / 1e6
        elif name.startswith("stage_n:"):
            slot(name[8:])["samples"] += value
        elif name.endswith("num_inferences") and _INFER_STEP.search(c.key.step or ""):
            slot(_INFER_STEP.search(c.key.step).group(1))["samples"] += value
    for d in metrics.get("distributions", []):
        step = _INFER_STEP.search(d.key.step or "")
        if step and d.key.metric.name.endswith("inference_batch_latency_micro_secs"):
            value = d.committed if d.committed is not None else d.attempted
            slot(step.group(1))["seconds"] += (value.sum if value is not None else 0) / 1e6
    return {k: {"seconds": round(v["seconds"], 3), "samples": v["samples"]} for k, v in sorted(timings.items())}


_INFER_STEP = re.compile(r"Infer\[([^\]]+)\]")


def finalize(job, result, elapsed: float, options=None) -> dict:
    """Write uids.npy, report.json (+ shards/meta.json, report.html) for a finished job."""
    out = job.output
    layout = OutputLayout(out)
    recipe = job.recipe
    report: dict = {"version": 1, "command": job.command}
    if recipe is not None:
        report["recipe"] = {"name": recipe.name, "source": recipe.source, "hash": recipe.hash,
                            "score_hash": recipe.score_hash(), "text": recipe.text,
                            "stages": recipe.summary()}
    report["inputs"] = {"globs": job.input_globs, "shards": len(job.shards),
                        "scores": len(job.score_files), "metadata": job.metadata_dir}
    decision_files = layout.decision_files()
    if getattr(job, "sources", None) and decision_files:     # named inputs: each source's contribution
        from beam_filter.sources import source_summary

        report["sources"] = source_summary(decision_files, job.sources)
    elif getattr(job, "sources", None) and job.command == "score":   # the mix, for select (sources.recorded_mix)
        report["sources"] = job.sources
    report["thresholds"] = {path.rsplit("/", 1)[-1][:-5]: fsio.read_json(path)
                            for path in layout.threshold_files()}
    folded = None
    if job.command in ("run", "select") or (job.command == "reshard" and decision_files):
        stage_ids = [(s.id, s.name) for s in recipe.stages] if recipe is not None else None
        # what report.json will say that the report's fold reads: recipe, thresholds, funnel stages
        planned = {k: report[k] for k in ("recipe", "thresholds") if k in report}
        if stage_ids is not None:
            planned["funnel"] = funnel(stage_ids, 0, Counter(), Counter())
        (counts, reasons, by_stage, uids), folded = _summary_and_report_fold(
            decision_files, out, json.loads(json.dumps(planned)))
        if job.command in ("run", "select"):
            save_uids(layout.uids, uids)
        report["counts"] = {k: counts.get(k, 0) for k in ("samples", "kept", "kept_with_copies", "dropped")}
        if stage_ids is not None:
            report["funnel"] = funnel(stage_ids, counts["samples"], by_stage, counts)
        added = {k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("added_back:")}
        if added:       # rows the recipe's add_back section kept again, by stage (addback.py)
            report["added_back"] = added
        report["reasons"] = dict(sorted(reasons.items(), key=lambda kv: (-kv[1], str(kv[0]))))
        report["warnings"] = _warnings(counts)
    skipped = list(getattr(job, "skipped_inputs", []) or [])
    if skipped:
        report.setdefault("warnings", {})["skipped_inputs"] = skipped
    report["file_errors"] = [fsio.read_json(p) for p in layout.file_error_files()]
    report["timings"] = {"phases": {job.command: round(elapsed, 3)}, "stages": stage_timings(result),
                         "execution": job.execution}
    report["provenance"] = {
        "beam_filter": beam_filter.__version__, "python": platform.python_version(),
        "platform": sys.platform, "packages": package_versions(),
        "models": {s.id: s.provenance() for s in (recipe.leaf_stages() if recipe else [])
                   if s.is_model_stage},
        "runner": _runner_name(options),
    }
    shard_stats = [fsio.read_json(p) for p in layout.shard_stats_files()]
    if shard_stats or job.command in ("run", "reshard"):     # meta.json even when nothing was kept
        report["outputs"] = {"shards": len(shard_stats),
                             "samples_written": sum(s["count"] for s in shard_stats),
                             "missing": sum(s.get("missing", 0) for s in shard_stats),
                             "uids": UIDS}
        meta = {"output_shards": len(shard_stats), "samples": report["outputs"]["samples_written"],
                "shard_size": job.shard_size, "missing": report["outputs"]["missing"],
                "recipe": report.get("recipe", {}).get("name"), "recipe_hash": report.get("recipe", {}).get("hash"),
                "inputs": job.input_globs, "provenance": report["provenance"],
                "thresholds": report["thresholds"], "counts": report.get("counts")}
        if "sources" in report:
            meta["sources"] = report["sources"]
        meta.update(_datacomp_meta_fields(job, report, shard_stats))
        if getattr(job, "inject_blur_metadata", False):      # face boxes written into each json
            from beam_filter.blur_metadata import inject_hook

            meta["inject_blur_metadata"] = inject_hook(job).describe()
        if getattr(job, "apply_blur", False):       # images re-encoded with faces blurred (output_blur.py)
            from beam_filter.output_blur import face_blur

            meta["blur"] = dict(face_blur(job).describe(),
                                samples_blurred=sum(s.get("blurred", 0) for s in shard_stats))
        fsio.write_bytes_atomic(layout.shards_meta, json.dumps(meta, indent=2, sort_keys=True).encode())
    # Timings differ run to run: report.json carries them, meta.json (beside the data) does not.
    fsio.write_bytes_atomic(layout.report_json, json.dumps(report, indent=2, sort_keys=True).encode())
    if decision_files:      # no readable sample at all: report.json lists the file errors, no HTML to draw
        _write_html(out, folded)
    return report


def _datacomp_meta_fields(job, report: dict, shard_stats: list[dict]) -> dict:
    """The counters DataComp's resharder.py puts in its meta.json, under its names (tools that read
    them find them); run-dependent ones (timings, cwd, worker_success) are left out, so meta.json
    stays byte-identical across runs."""
    counts = report.get("counts") or {}
    return {"processed_count": counts.get("samples", 0),
            "output_count": sum(s["count"] for s in shard_stats),
            "output_shard_count": len(shard_stats),
            "blur_count": sum(int(s.get("blurred", 0) or 0) for s in shard_stats),
            "uid_keys": bool(getattr(job, "uid_keys", False))}


def _warnings(counts: Counter) -> dict:
    """What a user should know although nothing was lost: repeated keys and shared uids."""
    out = {k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("warning:")}
    if counts.get("duplicate_uids"):
        out["kept_samples_sharing_a_uid"] = counts["duplicate_uids"]
    return out


def warm_report_imports(output_dir: str) -> None:
    """Import the HTML report's modules (PIL, the report's data and page modules; matplotlib only
    where the charts are drawn here, see report.make_plots) in a daemon thread while the pipeline
    runs, so finalize does not do it after the last shard or part, when nothing else is left to
    overlap with: the launcher's main thread mostly waits on the runner then. Nobody joins the
    thread: finalize's own import waits on the module lock if it is still running. Nothing to warm
    for a remote output, whose HTML is drawn later by ``beam-filter report`` on a local copy; an
    ImportError is left for finalize."""
    if fsio.is_remote(output_dir):
        return
    import importlib
    import threading

    def load():
        try:
            importlib.import_module("beam_filter.report")
        except Exception:  # noqa: BLE001 - finalize imports it again and handles what fails
            pass

    threading.Thread(target=load, name="warm_report_imports", daemon=True).start()


def _summary_and_report_fold(decision_files: list[str], out: str, planned: dict):
    """:func:`decision_summary`, in a helper thread, while this one imports the HTML report's
    modules (usually done already, see :func:`warm_report_imports`) and folds the decisions for
    report.html (``report.data.fold_decisions``, given what report.json is about to say:
    ``planned``). Returns (summary, fold); the fold is None where no HTML is drawn.

    Both passes are Arrow and numpy work that mostly runs without the GIL, so on a second core
    they overlap instead of reading the files one after the other; the summary's result, and any
    error, are its own. The report checks the fold against the report.json it finally reads and
    folds again if they differ (report.data.scan), so the page is what a fresh scan draws.
    """
    if not decision_files or fsio.is_remote(out):
        return decision_summary(decision_files), None
    import importlib
    from concurrent.futures import ThreadPoolExecutor

    importlib.import_module("pyarrow.acero")    # Table.group_by imports it: here, not in the helper
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decision_summary") as pool:
        summary = pool.submit(decision_summary, decision_files)
        try:
            report = importlib.import_module("beam_filter.report")
            folded = report.fold_decisions(out, planned, report.SAMPLES_PER_GROUP)
        except Exception:  # noqa: BLE001 - no fold: report.html scans afresh and says what is wrong there,
            folded = None  # after uids.npy and report.json are written, as without this pass
        return summary.result(), folded


def _write_html(out: str, folded=None) -> None:
    try:
        from beam_filter.report import write_report
    except ImportError:
        return
    if fsio.is_remote(out):
        return  # the HTML report renders from local files; run `beam-filter report` on a local copy
    write_report(out, folded=folded)


def _runner_name(options) -> str:
    if options is None:
        return "unknown"
    from apache_beam.options.pipeline_options import StandardOptions

    return str(options.view_as(StandardOptions).runner or "DirectRunner (FnApiRunner)")
