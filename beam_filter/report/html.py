"""Render :class:`~beam_filter.report.data.ReportData` as one static, self-contained HTML page.

Everything is inline (CSS, PNGs and JPEG thumbnails as data URIs) so the file
opens offline, mailed or copied anywhere. Every number a test or a script may
want sits in an element with ``data-*`` attributes (raw integers, no
separators); the visible text is formatted for people. Every string from the
data is HTML-escaped, and every free-form string from the data (captions, uids,
reasons, notes, error details) is cut to ``TEXT_CHARS`` characters (:func:`clip`),
so one 10 MB caption cannot make a 10 MB page. No clock, hostname or random value is printed, so the
same inputs give the same bytes.
"""

from __future__ import annotations

import json
from html import escape

import numpy as np

from beam_filter.report.data import KEPT_GROUP, ReportData, jsonable

SHARD_TABLE_ROWS = 500
CAPTION_CHARS = 220     # shown on a sample card
TEXT_CHARS = 300        # the most of any one data string the page holds (a caption's hover text...)


def e(value) -> str:
    """Escape anything for HTML text or a quoted attribute."""
    return escape("" if value is None else str(value), quote=True)


def clip(value, limit: int = TEXT_CHARS) -> str:
    """``value`` as text of at most ``limit`` characters plus "…" when it was longer."""
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def ec(value, limit: int = TEXT_CHARS) -> str:
    """:func:`e` of :func:`clip`: for strings that come from the data."""
    return e(clip(value, limit))


def _n(x) -> str:
    return f"{int(x):,}"


def _pct(part, whole) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "–"


def _w(part, whole) -> str:
    """A CSS width percentage with fixed precision (stable bytes)."""
    return f"{100.0 * part / whole:.2f}%" if whole else "0%"


def _fmt_value(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


CSS = """
:root{--ink:#1f2937;--muted:#6b7280;--line:#e5e7eb;--bg:#f8fafc;--kept:#2a9d8f;--drop:#e76f51;
--accent:#264653;--card:#fff}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;font:15px/1.55 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,
"Noto Sans","Liberation Sans",sans-serif;color:var(--ink);background:var(--bg)}
code,pre,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;font-size:12.5px}
.wrap{max-width:1180px;margin:0 auto;padding:0 28px}
header.top{background:linear-gradient(135deg,#264653 0%,#2a6f73 60%,#2a9d8f 100%);color:#fff;padding:34px 0 28px}
header.top .eyebrow{text-transform:uppercase;letter-spacing:.12em;font-size:12px;opacity:.8}
header.top h1{margin:4px 0 6px;font-size:30px;font-weight:650;letter-spacing:-.01em}
header.top .sub{margin:0;opacity:.9;font-size:14px}
header.top .sub code{background:rgba(255,255,255,.14);padding:1px 6px;border-radius:4px;color:#fff}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:14px;margin-top:22px}
.card{background:rgba(255,255,255,.1);border:1px solid rgba(255,255,255,.22);border-radius:10px;padding:12px 16px}
.card .label{font-size:12px;text-transform:uppercase;letter-spacing:.08em;opacity:.85}
.card .num{font-size:26px;font-weight:650;font-variant-numeric:tabular-nums}
.card .pct{font-size:13px;opacity:.85}
nav.toc{position:sticky;top:0;z-index:5;background:rgba(255,255,255,.94);border-bottom:1px solid var(--line);
backdrop-filter:blur(6px)}
nav.toc .wrap{display:flex;gap:18px;flex-wrap:wrap;padding-top:10px;padding-bottom:10px}
nav.toc a{color:var(--accent);text-decoration:none;font-size:13.5px;font-weight:550}
nav.toc a:hover{text-decoration:underline}
section{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:20px 24px;margin:22px 0}
h2{margin:0 0 4px;font-size:20px;letter-spacing:-.01em}
h3{margin:18px 0 8px;font-size:15.5px}
p.note{margin:0 0 14px;color:var(--muted);font-size:13.5px}
table{border-collapse:collapse;width:100%;font-size:13.5px}
th,td{padding:6px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:middle}
th{font-size:11.5px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted);font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tbody tr:hover{background:#f9fafb}
.bar{position:relative;height:14px;background:#f1f5f9;border-radius:7px;overflow:hidden;min-width:180px;display:flex}
.bar .keep{background:var(--kept);height:100%}
.bar .drop{background:var(--drop);height:100%}
.bar .solid{background:var(--accent);height:100%;border-radius:7px}
.barcell{width:34%}
.barcell small{color:var(--muted);font-size:12px;margin-left:2px}
.legend{display:flex;gap:16px;font-size:12.5px;color:var(--muted);margin:8px 0 0}
.legend i{display:inline-block;width:11px;height:11px;border-radius:3px;margin-right:5px;vertical-align:-1px}
.warn{background:#fff7ed;border:1px solid #fed7aa;color:#9a3412;border-radius:10px;padding:10px 16px;margin:22px 0}
.warn ul{margin:4px 0 0;padding-left:20px}
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:16px}
figure{margin:0}
.figs figure{border:1px solid var(--line);border-radius:10px;padding:8px;background:#fff}
.figs img,.plot{max-width:100%;height:auto;display:block}
figcaption{font-size:12.5px;color:var(--muted);padding:4px 4px 0}
.matrix td.cell{text-align:right;font-variant-numeric:tabular-nums;min-width:70px}
.matrix th{text-transform:none;letter-spacing:0;font-size:12.5px}
.matrix th.rowh{font-size:13px;color:var(--ink)}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:12px}
.thumb{border:1px solid var(--line);border-radius:10px;padding:8px;background:#fff;display:flex;flex-direction:column}
.thumb .img{height:96px;display:flex;align-items:center;justify-content:center;background:#f3f4f6;
border-radius:6px;overflow:hidden}
.thumb .img img{max-width:96px;max-height:96px;display:block}
.thumb .ph{font-size:11px;color:var(--muted);text-align:center;padding:6px}
.thumb .cap{font-size:12.5px;line-height:1.35;margin-top:6px;display:-webkit-box;-webkit-line-clamp:4;
-webkit-box-orient:vertical;overflow:hidden;word-break:break-word}
.thumb .meta{font-size:11px;color:var(--muted);margin-top:auto;padding-top:6px}
.thumb .meta div{display:flex;justify-content:space-between;gap:6px}
.thumb .meta span{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.thumb .meta b{font-weight:600;color:var(--ink);font-variant-numeric:tabular-nums}
.thumb .meta .why{display:block;overflow-wrap:anywhere;color:var(--drop)}
.thumb.dropped{border-top:3px solid var(--drop)}
.thumb.kept{border-top:3px solid var(--kept)}
.pill{display:inline-block;font-size:11.5px;padding:1px 8px;border-radius:999px;background:#f1f5f9;color:var(--accent);
font-weight:600}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:4px 18px;margin:0;font-size:13.5px}
dl.kv dt{color:var(--muted)}
dl.kv dd{margin:0;word-break:break-all}
details{margin-top:10px}
summary{cursor:pointer;color:var(--accent);font-weight:550;font-size:13.5px}
pre{background:#0f172a;color:#e2e8f0;padding:12px 14px;border-radius:8px;overflow:auto;line-height:1.45}
footer{color:var(--muted);font-size:12.5px;padding:10px 0 40px}
.muted{color:var(--muted)}
@media (max-width:800px){.cards{grid-template-columns:repeat(2,1fr)}.figs{grid-template-columns:1fr}}
"""


def _img(uri: str, alt: str, cls: str = "plot") -> str:
    return f'<img class="{cls}" src="{uri}" alt="{e(alt)}">'


def render(data: ReportData, images: dict[str, str], thumbs: dict, version: str) -> str:
    """The whole page. ``images``: plot name -> data URI; ``thumbs``: (shard, key) -> Thumb."""
    meta = data.meta
    recipe = meta.get("recipe") if isinstance(meta.get("recipe"), dict) else {}
    name = recipe.get("name") or "beam_filter output"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{e(name)} · beam_filter report</title>",
        f"<style>{CSS}</style></head><body>",
        _header(data, recipe, name),
        _toc(data),
        '<main class="wrap">',
        _warnings(data),
        _funnel(data),
        _sources(meta),
        _reasons(data),
        _overlap(data),
        _scores(data, images),
        _clusters(data, images),
        _shards(data, images),
        _samples(data, thumbs),
        _timings(meta, images),
        _provenance(meta, data),
        "</main>",
        f'<footer class="wrap">Generated by beam_filter {e(version)} from {len(data.files):,} '
        f"decision file(s) in <code>{e(data.output_dir)}</code>. Static page: no scripts, "
        "no network requests. Plots are also saved beside this file as <code>report_*.png</code>.</footer>",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def _header(data: ReportData, recipe: dict, name: str) -> str:
    meta = data.meta
    bits = []
    if meta.get("command"):
        bits.append(f"<code>beam-filter {e(meta['command'])}</code>")
    if recipe.get("hash"):
        bits.append(f'recipe <code title="{e(recipe["hash"])}">{e(str(recipe["hash"])[:12])}</code>')
    inputs = meta.get("inputs") if isinstance(meta.get("inputs"), dict) else {}
    if "shards" in inputs:
        bits.append(f"{_n(inputs['shards'])} input shards")
    for g in (inputs.get("globs") or [])[:2]:
        bits.append(f"<code>{e(g)}</code>")
    cards = [("samples", "Samples read", data.total, ""),
             ("kept", "Kept", data.kept, _pct(data.kept, data.total)),
             ("kept-with-copies", "Written (with copies)", data.kept_with_copies,
              f"{data.kept_with_copies / data.kept:.2f}× per kept" if data.kept else ""),
             ("dropped", "Dropped", data.dropped, _pct(data.dropped, data.total))]
    cards_html = "".join(
        f'<div class="card" id="count-{cid}" data-value="{v}"><div class="label">{label}</div>'
        f'<div class="num">{_n(v)}</div><div class="pct">{e(sub)}&nbsp;</div></div>'
        for cid, label, v, sub in cards)
    return (f'<header class="top"><div class="wrap"><div class="eyebrow">beam_filter report</div>'
            f"<h1>{e(name)}</h1><p class=\"sub\">{' · '.join(bits)}</p>"
            f'<div class="cards">{cards_html}</div></div></header>')


def _toc(data: ReportData) -> str:
    links = [("funnel", "Funnel")] + ([("sources", "Sources")] if _sources(data.meta) else []) + [
        ("reasons", "Reasons")]
    if data.overlap is not None:
        links.append(("overlap", "Overlaps"))
    if data.histograms:
        links.append(("scores", "Scores"))
    if data.clusters:
        links.append(("clusters", "Clusters"))
    links += [("shards", "Shards"), ("samples", "Samples")]
    if isinstance(data.meta.get("timings"), dict):
        links.append(("timings", "Timings"))
    links.append(("provenance", "Provenance"))
    return ('<nav class="toc"><div class="wrap">'
            + "".join(f'<a href="#{i}">{t}</a>' for i, t in links) + "</div></nav>")


def _warnings(data: ReportData) -> str:
    if not data.warnings:
        return ""
    items = "".join(f"<li>{ec(w)}</li>" for w in data.warnings)
    return f'<div class="warn" id="warnings"><strong>Warnings</strong><ul>{items}</ul></div>'


def _funnel(data: ReportData) -> str:
    total = data.total
    rows = []
    for i, s in enumerate(data.funnel):
        gone = total - s.n_in
        bar = (f'<div class="bar"><span class="keep" style="width:{_w(s.n_out, total)}"></span>'
               f'<span class="drop" style="width:{_w(s.dropped, total)}"></span></div>')
        rows.append(
            f'<tr class="funnel-step" data-stage="{e(s.stage)}" data-in="{s.n_in}" '
            f'data-dropped="{s.dropped}" data-out="{s.n_out}">'
            f'<td class="num muted">{i}</td><td><strong>{e(s.stage)}</strong></td>'
            f'<td class="muted">{e(s.type)}</td><td class="num">{_n(s.n_in)}</td>'
            f'<td class="num">{_n(s.dropped)} <span class="muted">({_pct(s.dropped, s.n_in)})</span>'
            + (f' <span class="added" data-added="{s.added}">+{_n(s.added)} added back</span>' if s.added else "")
            + "</td>"
            f'<td class="num">{_n(s.n_out)}</td>'
            f'<td class="barcell" title="{gone:,} dropped earlier">{bar}'
            f"<small>{_pct(s.n_out, total)} of all samples remain</small></td></tr>")
    return (
        '<section id="funnel"><h2>Funnel</h2><p class="note">Stages in the order the recipe applies them. '
        "A row is counted at the first stage that drops it; the percentage beside <em>dropped</em> is "
        "relative to the rows that reached the stage.</p>"
        '<table class="funnel"><thead><tr><th class="num">#</th><th>Stage</th><th>Type</th>'
        '<th class="num">In</th><th class="num">Dropped</th><th class="num">Out</th>'
        "<th>Share of all samples</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        '<div class="legend"><span><i style="background:var(--kept)"></i>remaining after the stage</span>'
        '<span><i style="background:var(--drop)"></i>dropped by the stage</span>'
        '<span><i style="background:#f1f5f9;border:1px solid var(--line)"></i>dropped earlier</span></div>'
        + _added_back(data) + "</section>")


def _added_back(data: ReportData) -> str:
    """The recipe's add_back section (addback.py): rows kept again, by the stage that chose them."""
    if not data.added_back:
        return ""
    rows = "".join(f'<tr class="added-back" data-stage="{e(sid)}" data-count="{n}"><td><code>added_back:'
                   f'{e(sid)}</code></td><td class="num">{_n(n)}</td><td class="num">{_pct(n, data.kept)}</td></tr>'
                   for sid, n in data.added_back.items())
    return ('<h3 id="added-back">Added back</h3><p class="note">Rows the main stages dropped and a stage of '
            "the recipe's <code>add_back</code> section kept again (reason <code>added_back:&lt;stage&gt;</code>)."
            '</p><table class="funnel"><thead><tr><th>Reason</th><th class="num">Rows</th>'
            '<th class="num">Share of kept</th></tr></thead><tbody>' + rows + "</tbody></table>")


def _sources(meta: dict) -> str:
    """Mixed inputs (sources.py): each named source's samples in, kept, kept with copies and share
    of the written output, from report.json's ``sources`` (sources.source_summary)."""
    src = meta.get("sources") if isinstance(meta.get("sources"), dict) else {}
    src = {k: v for k, v in src.items() if isinstance(v, dict)}
    if not src:
        return ""
    written = sum(int(v.get("kept_with_copies") or 0) for v in src.values())
    rows = []
    for name, v in src.items():
        n_in, kept, out = (int(v.get(k) or 0) for k in ("samples", "kept", "kept_with_copies"))
        flags = [f"fraction {v['fraction']:g}" if isinstance(v.get("fraction"), (int, float)) else "",
                 f"×{v['copies']}" if isinstance(v.get("copies"), int) and v["copies"] > 1 else "",
                 "external" if v.get("external") else "", "decontaminated" if v.get("decontaminated") else "",
                 "not filtered" if v.get("filtered") is False else ""]
        rows.append(
            f'<tr class="source" data-source="{e(name)}" data-samples="{n_in}" data-kept="{kept}" '
            f'data-kept-with-copies="{out}"><td><strong>{e(name)}</strong><br><code class="muted">'
            f'{ec(v.get("input", ""))}</code></td><td class="muted">{e(", ".join(f for f in flags if f))}</td>'
            f'<td class="num">{_n(n_in)}</td><td class="num">{_n(kept)} <span class="muted">'
            f'({_pct(kept, n_in)})</span></td><td class="num">{_n(out)}</td>'
            f'<td class="num share">{_pct(out, written)}</td>'
            f'<td class="barcell"><div class="bar"><span class="keep" style="width:{_w(out, written)}"></span>'
            "</div></td></tr>")
    return ('<section id="sources"><h2>Sources</h2><p class="note">Named inputs (<code>--input NAME=GLOB</code>): '
            "samples read from each source, kept, written with copies, and each source's share of the written "
            "output.</p><table class=\"sources\"><thead><tr><th>Source</th><th>Settings</th>"
            '<th class="num">Samples</th><th class="num">Kept</th><th class="num">Kept with copies</th>'
            '<th class="num">Share of output</th><th></th></tr></thead><tbody>' + "".join(rows)
            + "</tbody></table></section>")


def _reasons(data: ReportData) -> str:
    if not data.reasons:
        return ('<section id="reasons"><h2>Drop reasons</h2><p class="note">No sample was dropped.</p>'
                "</section>")
    top = max(r.count for r in data.reasons)
    rows = "".join(
        f'<tr class="reason" data-reason="{e(r.reason)}" data-stage="{e(r.stage)}" data-count="{r.count}">'
        f"<td><code>{e(r.reason)}</code></td><td class=\"muted\">{e(r.stage)}</td>"
        f'<td class="num">{_n(r.count)}</td><td class="num">{_pct(r.count, data.total)}</td>'
        f'<td class="num">{_pct(r.count, data.dropped)}</td>'
        f'<td class="barcell"><div class="bar"><span class="drop" style="width:{_w(r.count, top)}"></span>'
        "</div></td></tr>" for r in data.reasons)
    return (
        '<section id="reasons"><h2>Drop reasons</h2><p class="note">Reasons are grouped by their prefix '
        "(<code>near_duplicate_of:&lt;uid&gt;</code> counts as <code>near_duplicate_of</code>).</p>"
        '<table><thead><tr><th>Reason</th><th>Stage</th><th class="num">Samples</th>'
        '<th class="num">% of all</th><th class="num">% of dropped</th><th></th></tr></thead><tbody>'
        + rows + "</tbody></table></section>")


def _overlap(data: ReportData) -> str:
    ov = data.overlap
    if ov is None:
        return ""
    diag = np.diag(ov.matrix)
    top = max(int(diag.max()) if diag.size else 0, 1)
    head = "".join(f'<th class="num" title="{e(s)}">{e(s)}</th>' for s in ov.stages)
    body = []
    for i, a in enumerate(ov.stages):
        cells = []
        for j, b in enumerate(ov.stages):
            v = int(ov.matrix[i, j])
            alpha = 0.08 + 0.72 * v / top if v else 0.0
            style = f' style="background:rgba(231,111,81,{alpha:.3f})"' if v else ""
            cells.append(f'<td class="cell" data-a="{e(a)}" data-b="{e(b)}" data-count="{v}"{style}>'
                         f"{_n(v) if v else '·'}</td>")
        body.append(f'<tr><th class="rowh">{e(a)}</th>{"".join(cells)}'
                    f'<td class="num" data-only="{e(a)}" data-count="{int(ov.only[i])}">{_n(ov.only[i])}</td></tr>')
    if ov.complete:
        scope = "Each row lists every stage it fails, so the matrix is complete."
    else:
        scope = ("The decisions carry only the first stage that dropped each row, so a rule stage that comes "
                 "after a row's first failure is not evaluated for it: counts below are lower bounds. "
                 "A <code>failed_stages</code> list column in the decisions would make them exact.")
    return (
        '<section id="overlap"><h2>Overlaps between filters</h2>'
        f'<p class="note">Cell (row, column) = samples failing both stages; the diagonal = samples failing '
        f"that stage (dropped there or not). <em>Only</em> = samples no other stage fails. Known from "
        f"{e('; '.join(ov.sources))}. {scope} {_n(ov.any_fail)} samples fail at least one stage.</p>"
        f'<div style="overflow-x:auto"><table class="matrix"><thead><tr><th></th>{head}'
        f'<th class="num">Only</th></tr></thead><tbody>{"".join(body)}</tbody></table></div></section>')


def _scores(data: ReportData, images: dict[str, str]) -> str:
    if not data.histograms:
        return ""
    figs = []
    for h in data.histograms:
        n = int(h.kept.sum() + h.dropped.sum())
        thr = "; ".join(f"threshold {t:.6g} ({e(s)})" for s, t in h.thresholds) or "no threshold applied"
        figs.append(
            f'<figure data-column="{e(h.column)}" data-rows="{n}" data-missing="{h.missing}">'
            f'{_img(images[f"hist_{h.column}"], f"histogram of {h.column}")}'
            f"<figcaption><code>{e(h.column)}</code>: {_n(n)} values, {_n(h.missing)} missing; {thr}"
            "</figcaption></figure>")
    return ('<section id="scores"><h2>Score distributions</h2><p class="note">Stacked: kept (green) and '
            "dropped (orange) samples per bin, over all samples. Dashed lines: thresholds applied.</p>"
            f'<div class="figs">{"".join(figs)}</div></section>')


def _clusters(data: ReportData, images: dict[str, str]) -> str:
    if not data.clusters:
        return ""
    out = []
    for c in data.clusters:
        sizes = c.sizes
        stats = ""
        if sizes.size:
            stats = (f"{_n(sizes.size)} clusters; largest {_n(sizes[0])}, median {np.median(sizes):,.1f}, "
                     f"smallest {_n(sizes[-1])}; {_n((sizes == 1).sum())} singletons; "
                     f"{_n((c.kept > 0).sum())} clusters keep at least one sample; "
                     f"{_n(c.missing)} rows without a cluster")
        out.append(f'<figure data-column="{e(c.column)}" data-clusters="{sizes.size}">'
                   f'{_img(images[f"clusters_{c.column}"], f"cluster sizes of {c.column}")}'
                   f"<figcaption>{stats}</figcaption></figure>")
    tables = "".join(_cluster_stats_table(c) for c in data.clusters if c.stats)
    return ('<section id="clusters"><h2>Cluster sizes</h2><p class="note">Rows per cluster, largest first, '
            f'with the rows each cluster keeps.</p><div class="figs">{"".join(out)}</div>{tables}</section>')


CLUSTER_STATS_ROWS = 200


def _cluster_stats_table(c) -> str:
    """Per-cluster values a stage recorded (dbp: complexity, allocation) beside rows and kept."""
    names = [k for k in c.stats if k != "id"]
    head = "".join(f'<th class="num">{e(k)}</th>' for k in names)
    body = []
    for i in range(min(len(c.sizes), CLUSTER_STATS_ROWS)):
        vals = "".join(f'<td class="num">{c.stats[k][i]:.6g}</td>' for k in names)
        body.append(f'<tr class="cluster-stat" data-cluster="{int(c.stats["id"][i])}">'
                    f'<td class="num">{int(c.stats["id"][i])}</td><td class="num">{_n(c.sizes[i])}</td>'
                    f'<td class="num">{_n(c.kept[i])}</td>{vals}</tr>')
    more = (f'<p class="note">{_n(len(c.sizes) - CLUSTER_STATS_ROWS)} smaller clusters not listed.</p>'
            if len(c.sizes) > CLUSTER_STATS_ROWS else "")
    return (f'<h3>Per-cluster statistics of <code>{e(c.column)}</code></h3><div style="overflow-x:auto">'
            f'<table class="cluster-stats" data-column="{e(c.column)}"><thead><tr><th class="num">Cluster</th>'
            f'<th class="num">Rows</th><th class="num">Kept</th>{head}</tr></thead><tbody>{"".join(body)}'
            f'</tbody></table></div>{more}')


def _shards(data: ReportData, images: dict[str, str]) -> str:
    rows = []
    for s in data.shards[:SHARD_TABLE_ROWS]:
        tot = s.kept + s.dropped
        rows.append(
            f'<tr class="shard" data-shard="{e(s.shard)}" data-kept="{s.kept}" data-dropped="{s.dropped}">'
            f'<td class="mono">{e(s.shard)}</td><td class="num">{_n(s.kept)}</td>'
            f'<td class="num">{_n(s.dropped)}</td><td class="num">{_pct(s.kept, tot)}</td>'
            f'<td class="barcell"><div class="bar"><span class="keep" style="width:{_w(s.kept, tot)}"></span>'
            f'<span class="drop" style="width:{_w(s.dropped, tot)}"></span></div></td></tr>')
    more = len(data.shards) - SHARD_TABLE_ROWS
    more_html = f'<p class="note">… and {more:,} more shards (see the plot).</p>' if more > 0 else ""
    errors = data.meta.get("file_errors") if isinstance(data.meta.get("file_errors"), list) else []
    err_html = ""
    if errors:
        err_rows = "".join(
            f'<tr class="file-error" data-error="{ec(x.get("error"))}"><td class="mono">{ec(x.get("shard"))}</td>'
            f'<td><span class="pill">{ec(x.get("error"))}</span></td><td class="muted">{ec(x.get("detail"))}</td></tr>'
            for x in errors if isinstance(x, dict))
        err_html = ('<h3>Damaged or unreadable shards</h3><table><thead><tr><th>Shard</th><th>Error</th>'
                    f"<th>Detail</th></tr></thead><tbody>{err_rows}</tbody></table>")
    return ('<section id="shards"><h2>Source shards</h2><p class="note">Kept and dropped samples per source '
            f'shard ({len(data.shards):,} shards).</p>{_img(images["shards"], "kept and dropped per shard")}'
            '<table style="margin-top:12px"><thead><tr><th>Shard</th><th class="num">Kept</th>'
            '<th class="num">Dropped</th><th class="num">Kept %</th><th></th></tr></thead><tbody>'
            + "".join(rows) + f"</tbody></table>{more_html}{err_html}</section>")


def _sample_card(row: dict, group: str, thumb, score_cols: list[str]) -> str:
    caption = row.get("caption")
    cap = "" if caption is None else str(caption)
    short = cap if len(cap) <= CAPTION_CHARS else cap[: CAPTION_CHARS - 1] + "…"
    if thumb is not None and thumb.uri:
        img = f'<img src="{thumb.uri}" alt="thumbnail of sample {ec(row.get("uid"))}">'
    else:
        note = thumb.note if thumb is not None else "no source shard"
        img = f'<div class="ph">{ec(note)}</div>'
    meta = []   # (label, value) lines
    for c in score_cols:
        v = row.get(c)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
            meta.append((c, _fmt_value(v)))
    if row.get("width") and row.get("height"):
        meta.append(("size", f"{_fmt_value(row['width'])}×{_fmt_value(row['height'])}"))
    if row.get("ocr_text"):     # text_detect's reading of the outlined boxes
        meta.append(("ocr", clip(row["ocr_text"], 40)))
    if group == KEPT_GROUP:
        copies = row.get("copies")
        if isinstance(copies, int) and copies > 1:
            meta.append(("copies", str(copies)))
    lines = "".join(f'<div><span title="{e(k)}">{e(k)}</span><b>{e(v)}</b></div>' for k, v in meta)
    if group != KEPT_GROUP and row.get("reason") and row.get("reason") != group:
        lines += f'<span class="why" title="{ec(row["reason"])}">{ec(row["reason"])}</span>'
    cls = "kept" if group == KEPT_GROUP else "dropped"
    cap_html = e(short) if cap else '<span class="muted">(no caption)</span>'
    return (f'<figure class="thumb {cls}" data-group="{ec(group)}" data-uid="{ec(row.get("uid"))}">'
            f'<div class="img">{img}</div><div class="cap" title="{ec(cap)}">{cap_html}</div>'
            f'<div class="meta">{lines}</div></figure>')


def _samples(data: ReportData, thumbs: dict) -> str:
    counts = {r.reason: 0 for r in data.reasons}
    for r in data.reasons:
        counts[r.reason] += r.count
    counts[KEPT_GROUP] = data.kept
    # thresholded scores first: they explain the decisions
    score_cols = sorted((h.column for h in data.histograms), key=lambda c: (not any(
        h.column == c and h.thresholds for h in data.histograms), c))[:4]
    blocks = []
    for g in data.group_order:
        rows = data.samples.get(g, [])
        cards = "".join(_sample_card(r, g, thumbs.get((str(r.get("shard")), str(r.get("key")))), score_cols)
                        for r in rows)
        label = "Kept" if g == KEPT_GROUP else f"Dropped: <code>{e(g)}</code>"
        blocks.append(f'<div class="group" data-group="{e(g)}"><h3>{label} '
                      f'<span class="pill">{_n(counts.get(g, 0))} samples</span></h3>'
                      f'<div class="grid">{cards}</div></div>')
    return ('<section id="samples"><h2>Samples</h2><p class="note">A deterministic sample per group: the rows '
            "with the smallest 64-bit hash of their uid, read back from their source shards. Hover a caption for the full "
            "text.</p>" + "".join(blocks) + "</section>")


def _timings(meta: dict, images: dict[str, str]) -> str:
    t = meta.get("timings")
    if not isinstance(t, dict):
        return ""
    phases = t.get("phases") if isinstance(t.get("phases"), dict) else {}
    stages = t.get("stages") if isinstance(t.get("stages"), dict) else {}
    prow = "".join(f'<tr data-phase="{e(k)}"><td>{e(k)}</td><td class="num">{_fmt_value(float(v))} s</td></tr>'
                   for k, v in phases.items() if isinstance(v, (int, float)))
    srow = []
    for k, v in stages.items():
        if not isinstance(v, dict):
            continue
        sec, n = v.get("seconds"), v.get("samples")
        rate = f"{n / sec:,.0f}" if isinstance(sec, (int, float)) and sec > 0 and isinstance(n, int) else "–"
        srow.append(f'<tr data-stage="{e(k)}"><td>{e(k)}</td><td class="num">'
                    f'{_fmt_value(float(sec)) if isinstance(sec, (int, float)) else "–"} s</td>'
                    f'<td class="num">{_fmt_value(n) if isinstance(n, int) else "–"}</td>'
                    f'<td class="num">{rate}</td></tr>')
    figs = "".join(f"<figure>{_img(images[k], k)}</figure>" for k in ("timings_phases", "timings_stages")
                   if k in images)
    return ('<section id="timings"><h2>Timings</h2><p class="note">Wall-clock seconds per phase; CPU seconds '
            "spent in each stage's own code (summed over workers).</p>"
            f'<div class="figs">{figs}</div>'
            '<div class="figs" style="margin-top:12px"><table><thead><tr><th>Phase</th><th class="num">Seconds'
            f"</th></tr></thead><tbody>{prow}</tbody></table>"
            '<table><thead><tr><th>Stage</th><th class="num">CPU s</th><th class="num">Samples</th>'
            f'<th class="num">Samples/s</th></tr></thead><tbody>{"".join(srow)}</tbody></table></div></section>')


def _kv(pairs: list[tuple[str, str]]) -> str:
    return '<dl class="kv">' + "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def _json(value) -> str:
    return e(json.dumps(jsonable(value), sort_keys=True, indent=2, ensure_ascii=False))


def _provenance(meta: dict, data: ReportData) -> str:
    recipe = meta.get("recipe") if isinstance(meta.get("recipe"), dict) else {}
    prov = meta.get("provenance") if isinstance(meta.get("provenance"), dict) else {}
    inputs = meta.get("inputs") if isinstance(meta.get("inputs"), dict) else {}
    outputs = meta.get("outputs") if isinstance(meta.get("outputs"), dict) else {}
    pairs = [("recipe", f"<strong>{e(recipe.get('name', '–'))}</strong>"),
             ("recipe hash", f"<code>{e(recipe.get('hash', '–'))}</code>"),
             ("command", f"<code>{e(meta.get('command', '–'))}</code>"),
             ("beam_filter", e(prov.get("beam_filter", "–"))),
             ("python", e(prov.get("python", "–")))]
    for k, v in sorted((prov.get("packages") or {}).items()):
        pairs.append((k, e(v)))
    pairs.append(("input globs", "<br>".join(f"<code>{e(g)}</code>" for g in inputs.get("globs") or []) or "–"))
    if "shards" in inputs:
        pairs.append(("input shards", _n(inputs["shards"])))
    for k in sorted(outputs):
        pairs.append((f"output {k}", e(_fmt_value(outputs[k]))))
    stage_rows = "".join(
        f'<tr><td><strong>{e(s.get("id"))}</strong></td><td class="muted">{e(s.get("type"))}</td>'
        f'<td class="mono">{e(json.dumps(jsonable(s.get("params", {})), sort_keys=True))}</td></tr>'
        for s in recipe.get("stages") or [] if isinstance(s, dict))
    models = prov.get("models") if isinstance(prov.get("models"), dict) else {}
    model_rows = "".join(f'<tr data-model="{e(k)}"><td><strong>{e(k)}</strong></td>'
                         f'<td class="mono">{e(json.dumps(jsonable(v), sort_keys=True))}</td></tr>'
                         for k, v in sorted(models.items()))
    thresholds = meta.get("thresholds") if isinstance(meta.get("thresholds"), dict) else {}
    thr_rows = "".join(
        f'<tr data-threshold-stage="{e(k)}" data-threshold="{e(v.get("threshold"))}"><td>{e(k)}</td>'
        f'<td><code>{e(v.get("column"))}</code></td><td class="num">{e(_fmt_value(v.get("fraction", "–")))}</td>'
        f'<td class="num">{e(_fmt_value(v.get("threshold", "–")))}</td>'
        f'<td class="num">{e(_fmt_value(v.get("n", "–")))}</td><td class="num">{e(_fmt_value(v.get("N", "–")))}</td></tr>'
        for k, v in sorted(thresholds.items()) if isinstance(v, dict))
    html = ['<section id="provenance"><h2>Provenance</h2><p class="note">What produced these decisions: '
            "enough to reproduce them.</p>", _kv(pairs)]
    if stage_rows:
        html.append('<h3>Recipe stages</h3><table><thead><tr><th>Stage</th><th>Type</th><th>Parameters</th>'
                    f"</tr></thead><tbody>{stage_rows}</tbody></table>")
    if thr_rows:
        html.append('<h3>Thresholds applied</h3><table><thead><tr><th>Stage</th><th>Column</th>'
                    '<th class="num">Fraction</th><th class="num">Threshold</th><th class="num">n</th>'
                    f'<th class="num">N</th></tr></thead><tbody>{thr_rows}</tbody></table>')
    if model_rows:
        html.append("<h3>Models</h3><table><thead><tr><th>Stage</th><th>Model, weights and checksums</th>"
                    f"</tr></thead><tbody>{model_rows}</tbody></table>")
    if recipe.get("text"):
        html.append(f"<details><summary>Recipe YAML</summary><pre>{e(recipe['text'])}</pre></details>")
    html.append(f"<details><summary>report.json</summary><pre>{_json(meta)}</pre></details>")
    html.append("</section>")
    return "".join(html)


__all__ = ["render"]
