"""Drift report: a run manifest rendered as one self-contained HTML page, or as plain text.

Pure: a manifest dict in, a string out. The page has no scripts and fetches
nothing (inline CSS and SVG), so it opens from an e-mail attachment or an
object-store link the same way. People look at drift; they do not read it.

Example::

    >>> html = render_html(json.load(open("out/_manifest.json")))  # doctest: +SKIP
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any

from batchserve.manifest import category_order

__all__ = ["render_html", "render_text", "ranked_columns"]

_METRICS = ("psi", "ks", "js", "wasserstein", "null_rate_change")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.{digits}f}"
    return str(value)


def _severity(entry: Mapping[str, Any]) -> float:
    """How far past its threshold a column is (deciding metric value / threshold)."""
    metric, threshold = entry.get("metric"), entry.get("threshold")
    value = entry.get(metric) if metric else None
    if value is None or not threshold:
        return -1.0
    return float(value) / float(threshold)


def ranked_columns(drift: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """Every feature and prediction column, most drifted first."""
    cols = [*drift.get("features", {}).items(), *drift.get("predictions", {}).items()]
    return sorted(cols, key=lambda kv: (not kv[1].get("drifted"), -_severity(kv[1]), kv[0]))


def render_text(manifest: Mapping[str, Any]) -> str:
    drift = manifest.get("drift") or {}
    ref = drift.get("reference")
    lines = [
        f"run {manifest['run']['id']} ({manifest['run']['status']}): {manifest['totals']['rows']:,} rows, "
        f"model sha256 {manifest['model']['sha256'][:12]}",
    ]
    if not drift:
        return lines[0] + "\nno drift statistics in this manifest (scored with --no-drift)\n"
    if ref is None:
        lines.append("no reference: statistics recorded, metrics not computed (score with --reference)")
    else:
        share = drift.get("drift_share")
        lines.append(
            f"reference {ref['uri']} ({ref['kind']}, {ref['rows']:,} rows): "
            f"{len(drift['drifted_features'])} of {len(drift['features'])} features drifted "
            f"(share {_fmt(share, 2)})"
        )
    header = f"{'column':28} {'role':10} {'metric':11} {'value':>8} {'limit':>6}  {'psi':>7} {'ks':>7} {'js':>7} {'wass':>7} {'null Δ':>7}  status"
    lines += [header, "-" * len(header)]
    for name, e in ranked_columns(drift):
        metric = e.get("metric") or "-"
        status = "no reference" if ref is None else (f"DRIFT ({e['decided_by']})" if e.get("drifted") else "ok")
        lines.append(
            f"{name[:28]:28} {e.get('role', ''):10} {metric:11} {_fmt(e.get(metric) if e.get('metric') else None):>8} "
            f"{_fmt(e.get('threshold'), 2):>6}  "
            + " ".join(f"{_fmt(e.get(m)):>7}" for m in _METRICS)
            + f"  {status}"
        )
    return "\n".join(lines) + "\n"


def _svg_histogram(hist: Mapping[str, Any], width: int = 420, height: int = 150) -> str:
    """Reference (grey bars) and current (blue outline) distributions on the same axis."""
    ref, cur = hist.get("reference"), hist.get("current")
    labels: list[Any] | None = hist.get("categories")
    if labels:  # older manifests sorted numeric labels as text: put them in reading order
        keys = [str(x) for x in labels]
        rank = {k: i for i, k in enumerate(category_order(keys))}
        order = sorted(range(len(keys)), key=lambda i: rank[keys[i]])
        labels = [labels[i] for i in order]
        ref = [ref[i] for i in order] if ref else ref
        cur = [cur[i] for i in order] if cur else cur
    series = [s for s in (ref, cur) if s]
    if not series:
        return "<p class=muted>no values</p>"
    n = len(series[0])
    top = max(max(s) for s in series) or 1.0
    pad, base = 4, height - 22
    bw = (width - 2 * pad) / n
    parts = [f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">']
    for i in range(n):
        x = pad + i * bw
        if ref:
            h = (base - 6) * ref[i] / top
            parts.append(f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{max(bw - 1, 1):.1f}" height="{h:.1f}" class="ref"/>')
        if cur:
            h = (base - 6) * cur[i] / top
            inset = bw * 0.2 if labels else 0
            parts.append(
                f'<rect x="{x + inset:.1f}" y="{base - h:.1f}" width="{max(bw - 1 - 2 * inset, 1):.1f}" '
                f'height="{h:.1f}" class="cur"/>'
            )
    parts.append(f'<line x1="{pad}" y1="{base}" x2="{width - pad}" y2="{base}" class="axis"/>')
    if labels:
        step = max(1, n // 10)
        for i in range(0, n, step):
            parts.append(
                f'<text x="{pad + (i + 0.5) * bw:.1f}" y="{height - 6}" text-anchor="middle">'
                f"{html.escape(str(labels[i])[:8])}</text>"
            )
    elif hist.get("edges"):
        edges = hist["edges"]
        for frac in (0, 0.5, 1):
            i = round(frac * (len(edges) - 1))
            anchor = "start" if frac == 0 else ("end" if frac == 1 else "middle")
            parts.append(
                f'<text x="{pad + frac * (width - 2 * pad):.1f}" y="{height - 6}" text-anchor="{anchor}">'
                f"{_fmt(float(edges[i]), 3)}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2430;background:#fff}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:28px 0 8px} .muted{color:#6b7280}
table{border-collapse:collapse;font-size:13px} th,td{padding:4px 8px;border-bottom:1px solid #e5e7eb;text-align:right}
th:first-child,td:first-child,th:nth-child(2),td:nth-child(2){text-align:left}
.bad{color:#b91c1c;font-weight:600} .ok{color:#15803d} .badge{padding:1px 6px;border-radius:8px;font-size:12px}
.badge.bad{background:#fee2e2} .badge.ok{background:#dcfce7}
.cards{display:flex;flex-wrap:wrap;gap:16px} .card{border:1px solid #e5e7eb;border-radius:8px;padding:12px;width:440px}
.card.drift{border-color:#fca5a5;background:#fffafa} .card h3{font-size:14px;margin:0 0 6px}
svg text{font-size:10px;fill:#6b7280} .ref{fill:#cbd5e1} .cur{fill:rgba(37,99,235,.35);stroke:#2563eb;stroke-width:1}
.axis{stroke:#9ca3af} .legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px;vertical-align:middle}
.legend .ref{background:#cbd5e1} .legend .cur{background:rgba(37,99,235,.35);outline:1px solid #2563eb}
.badge.none{background:#f3f4f6;color:#6b7280}
.over{background:#fee2e2}
"""


def _metric_cells(e: Mapping[str, Any]) -> str:
    cells = []
    for m in _METRICS:
        value = e.get(m)
        over = e.get("decided_by") == m
        cells.append(f'<td class="{"over" if over else ""}">{_fmt(value)}</td>')
    return "".join(cells)


def render_html(manifest: Mapping[str, Any]) -> str:
    run, model, totals = manifest["run"], manifest["model"], manifest["totals"]
    drift = manifest.get("drift") or {}
    ref = drift.get("reference")
    esc = html.escape
    head = (
        f"<h1>batchserve drift report</h1><p class=muted>run {esc(run['id'])} · {esc(run['status'])} · "
        f"{totals['rows']:,} rows in {totals['files']} files · model {esc(model['uri'])} "
        f"(sha256 {esc(model['sha256'][:12])}) · finished {esc(str(run.get('finished_at')))}</p>"
    )
    if not drift:
        return f"<!doctype html><meta charset=utf-8><title>batchserve report</title><style>{_CSS}</style>{head}<p>No drift statistics in this manifest.</p>"
    if ref is None:
        verdict = "<p>No reference: statistics were recorded, metrics were not computed. Score with <code>--reference</code>.</p>"
    else:
        n_bad = len(drift["drifted_features"])
        cls = "bad" if n_bad else "ok"
        verdict = (
            f'<p><span class="badge {cls}">{n_bad} of {len(drift["features"])} features drifted</span> '
            f'(share {_fmt(drift.get("drift_share"), 2)}) against <code>{esc(ref["uri"])}</code> '
            f'({esc(ref["kind"])}, {ref["rows"]:,} rows, sha256 {esc(ref["sha256"][:12])}). '
            f'Prediction columns drifted: {esc(", ".join(drift["drifted_predictions"]) or "none")}.</p>'
        )
    policy = drift.get("policy", {})
    defaults = ", ".join(f"{k} {v}" for k, v in policy.get("defaults", {}).items())
    rows = []
    for name, e in ranked_columns(drift):
        if ref is None:
            status = '<span class="badge none">no reference</span>'
        elif e.get("drifted"):
            status = f'<span class="badge bad">drift: {esc(str(e["decided_by"]))}</span>'
        else:
            status = '<span class="badge ok">ok</span>'

        rows.append(
            f"<tr><td>{esc(name)}</td><td>{esc(str(e.get('role')))}</td><td>{esc(str(e.get('metric') or '–'))}</td>"
            f"<td>{_fmt(e.get('threshold'), 2)}</td>{_metric_cells(e)}<td>{status}</td></tr>"
        )
    table = (
        "<table><tr><th>column</th><th>role</th><th>decides</th><th>threshold</th><th>PSI</th><th>KS</th>"
        "<th>JS</th><th>Wasserstein/σ</th><th>null-rate Δ</th><th>status</th></tr>" + "".join(rows) + "</table>"
        f"<p class=muted>Default thresholds: {esc(defaults)}. PSI on the reference's deciles (empty bins floored at "
        f"{drift.get('psi_epsilon')}), JS distance (base 2) on its 20 quantile bins, KS and Wasserstein from the "
        "quantile sketches; all four exact from the value counts for columns with at most 50 distinct values.</p>"
    )
    cards = []
    for name, e in ranked_columns(drift):
        hist = e.get("histogram") or {}
        legend = (
            '<div class="legend muted"><span class=ref></span>reference<span class=cur></span>current</div>'
            if hist.get("reference") else '<div class="legend muted"><span class=cur></span>current</div>'
        )
        mean, std = e.get("mean"), e.get("std")
        cards.append(
            f'<div class="card{" drift" if e.get("drifted") else ""}"><h3>{esc(name)} '
            f'<span class=muted>({esc(str(e.get("role")))}, {esc(str(e.get("kind") or "no reference"))})</span></h3>'
            f"{_svg_histogram(hist)}{legend}"
            f"<table><tr><th>count</th><th>nulls</th><th>mean</th><th>std</th><th>min</th><th>max</th></tr>"
            f"<tr><td>{e.get('count')}</td><td>{e.get('nulls')}</td><td>{_fmt(mean)}</td><td>{_fmt(std)}</td>"
            f"<td>{_fmt(e.get('min'))}</td><td>{_fmt(e.get('max'))}</td></tr></table>"
            f"<table><tr><th>PSI</th><th>KS</th><th>JS</th><th>W/σ</th><th>null Δ</th></tr>"
            f"<tr>{_metric_cells(e)}</tr></table></div>"
        )
    return (
        "<!doctype html><html lang=en><meta charset=utf-8><title>batchserve drift report</title>"
        f"<style>{_CSS}</style><body>{head}{verdict}<h2>Summary, most drifted first</h2>{table}"
        f'<h2>Distributions</h2><div class="cards">{"".join(cards)}</div></body></html>'
    )
