"""report.html: what a run kept, what it dropped and why, in one static page.

``write_report(output_dir)`` reads ``decisions/*.parquet`` and ``report.json``
from an output dir and writes ``report.html`` (self-contained: CSS, plots and
thumbnails inline) plus each plot as ``report_<name>.png`` beside it.

The package is split by job:

- ``data``: one streaming pass over the decisions -> small numbers (:class:`ReportData`);
- ``plots``: those numbers -> PNG bytes (matplotlib Agg, byte-stable), imported only where a chart
  is drawn: on the local pool's workers when its fork server preloaded it (``warm_forkserver``),
  so the launcher itself never imports matplotlib (~0.4 s), else here;
- ``thumbnails``: a few (shard, key) pairs -> small JPEG data URIs, read back from the tars;
- ``html``: all of it -> the page.

Same inputs give a byte-identical report.html and PNGs.
"""

from __future__ import annotations

import base64
import os

import numpy as np

from beam_filter import fsio
from beam_filter.layout import OutputLayout
from beam_filter.report.data import Folded, ReportData, fold_decisions, safe_name, scan
from beam_filter.report.html import render
from beam_filter.report.thumbnails import THUMB_PX, fetch_thumbnails

SAMPLES_PER_GROUP = 8
PLOTS_MODULE = "beam_filter.report.plots"   # what a fork server preloads to draw charts (make_plots)


def chart_orders(data: ReportData) -> list[tuple[str, str, tuple]]:
    """(plot name, ``plots`` function, its arguments) for every chart the page shows."""
    out: list[tuple[str, str, tuple]] = []
    for h in data.histograms:
        out.append((f"hist_{h.column}", "histogram", (h.column, h.edges, h.kept, h.dropped, h.thresholds)))
    for c in data.clusters:
        out.append((f"clusters_{c.column}", "cluster_sizes", (c.column, c.sizes, c.kept)))
    out.append(("shards", "shards", ([s.shard for s in data.shards],
                                     np.array([s.kept for s in data.shards], np.int64),
                                     np.array([s.dropped for s in data.shards], np.int64))))
    timings = data.meta.get("timings") if isinstance(data.meta.get("timings"), dict) else {}
    phases = {k: float(v) for k, v in (timings.get("phases") or {}).items()
              if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if phases:
        out.append(("timings_phases", "timings", (list(phases), list(phases.values()),
                                                  "Wall-clock seconds per phase")))
    stages = {k: float(v["seconds"]) for k, v in (timings.get("stages") or {}).items()
              if isinstance(v, dict) and isinstance(v.get("seconds"), (int, float))}
    if stages:
        out.append(("timings_stages", "timings", (list(stages), list(stages.values()), "CPU seconds per stage")))
    return out


def draw_chart(function: str, args: tuple) -> bytes:
    """``plots.<function>(*args)``: one chart's PNG; top-level, so a process pool can run it."""
    from beam_filter.report import plots

    return getattr(plots, function)(*args)


def make_plots(data: ReportData) -> dict[str, bytes]:
    """Plot name -> PNG bytes, for every chart the page shows.

    The charts are independent (about 0.1 s each of matplotlib drawing), so where the local
    pool's fork server has ``plots`` preloaded they are drawn side by side on its workers; the
    bytes are the same either way (same matplotlib, fixed fonts, sizes and DPI)."""
    from beam_filter.transforms.local_pool import preloaded_pool

    orders = chart_orders(data)
    with preloaded_pool(PLOTS_MODULE, len(orders)) as pool:
        if pool is None:
            return {name: draw_chart(function, args) for name, function, args in orders}
        drawn = [(name, pool.submit(draw_chart, function, args)) for name, function, args in orders]
        return {name: future.result() for name, future in drawn}


def write_report(output_dir: str, samples_per_group: int = SAMPLES_PER_GROUP,
                 thumb_px: int = THUMB_PX, folded: Folded | None = None) -> str:
    """Write ``report.html`` and ``report_*.png`` into ``output_dir``; return the HTML's path.

    ``samples_per_group``: thumbnails shown per group (kept, and each drop reason); 0 turns the
    grids off (no shard is opened). ``folded``: the decisions already read (see ``scan``).
    """
    from beam_filter import __version__

    data = scan(output_dir, samples_per_group=samples_per_group, folded=folded)
    pngs = make_plots(data)
    wanted = [(r.get("shard"), r.get("key")) for rows in data.samples.values() for r in rows]
    # Detected text regions (text_detect) are drawn on the thumbnails: what was masked or measured.
    boxes = {(str(r.get("shard")), str(r.get("key"))): r["text_boxes"]
             for rows in data.samples.values() for r in rows if r.get("text_boxes")}
    thumbs = fetch_thumbnails(wanted, size=thumb_px, boxes=boxes) if wanted else {}
    images = {k: "data:image/png;base64," + base64.b64encode(v).decode("ascii") for k, v in pngs.items()}
    page = render(data, images, thumbs, __version__)

    layout = OutputLayout(output_dir)
    written = set()
    for name, png in sorted(pngs.items()):
        path = layout.report_png(safe_name(name))
        fsio.write_bytes_atomic(path, png)
        written.add(os.path.basename(path))
    # Plots of columns gone since the last report would mislead: remove them.
    stale = [old for old in layout.report_png_files() if os.path.basename(old) not in written]
    if stale:
        fsio.delete(*stale)
    fsio.write_bytes_atomic(layout.report_html, page.encode("utf-8"))
    return layout.report_html


__all__ = ["write_report", "scan", "make_plots", "chart_orders", "draw_chart", "ReportData"]
