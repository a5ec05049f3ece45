"""Drift report: a run manifest rendered as one self-contained HTML page, or as plain text.

Pure: a typed manifest in, a string out. The page has no scripts and fetches
nothing (inline CSS and SVG), so it opens from an e-mail attachment or an
object-store link the same way. People look at drift; they do not read it.

Example::

    >>> html = render_html(manifest.loads(open("out/_manifest.json").read()))  # doctest: +SKIP
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from batchserve.compare import ChallengerSection
from batchserve.manifest import Manifest
from batchserve.reference import ColumnDrift, DriftSection, category_order

__all__ = ["render_html", "render_text", "ranked_columns", "render_history_html"]

_METRICS = ("psi", "ks", "js", "wasserstein", "null_rate_change")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.{digits}f}"
    return str(value)


def _severity(col: ColumnDrift) -> float:
    """How far past its threshold a column is (deciding metric value / threshold)."""
    value = col.value(col.metric) if col.metric else None
    if value is None or not col.threshold:
        return -1.0
    return float(value) / float(col.threshold)


def ranked_columns(drift: DriftSection) -> list[tuple[str, ColumnDrift]]:
    """Every feature and prediction column, most drifted first."""
    return sorted(drift.columns().items(), key=lambda kv: (not kv[1].drifted, -_severity(kv[1]), kv[0]))


def _status_text(drift: DriftSection, col: ColumnDrift) -> str:
    if drift.reference is None:
        return "no reference"
    return f"DRIFT ({col.decided_by})" if col.drifted else "ok"


def render_text(m: Manifest) -> str:
    drift, ref = m.drift, m.drift.reference if m.drift else None
    lines = [f"run {m.run.id} ({m.run.status}): {m.totals.rows:,} rows, model sha256 {m.model.sha256[:12]}"]
    if drift is None:
        return lines[0] + "\nno drift statistics in this manifest (scored with --no-drift)\n"
    if ref is None:
        lines.append("no reference: statistics recorded, metrics not computed (score with --reference)")
    else:
        lines.append(
            f"reference {ref.uri} ({ref.kind}, {ref.rows:,} rows): "
            f"{len(drift.drifted_features)} of {len(drift.features)} features drifted "
            f"(share {_fmt(drift.drift_share, 2)}), {len(drift.drifted_predictions)} of {len(drift.predictions)} "
            "prediction columns drifted" + (f" ({', '.join(drift.drifted_predictions)})" if drift.drifted_predictions else "")
        )
    header = f"{'column':28} {'role':10} {'metric':11} {'value':>8} {'limit':>6}  {'psi':>7} {'ks':>7} {'js':>7} {'wass':>7} {'null Δ':>7}  status"
    lines += [header, "-" * len(header)]
    for name, col in ranked_columns(drift):
        value = col.value(col.metric) if col.metric else None
        lines.append(
            f"{name[:28]:28} {col.role:10} {col.metric or '-':11} {_fmt(value):>8} {_fmt(col.threshold, 2):>6}  "
            + " ".join(f"{_fmt(col.value(k)):>7}" for k in _METRICS)
            + f"  {_status_text(drift, col)}"
        )
    if m.challenger is not None:
        ch = m.challenger
        lines.append(f"challenger {ch.model.get('uri')} (version {ch.model.get('version')}) -> {ch.output}")
        for name, c in ch.columns.items():
            lines.append(f"  {name[:26]:26} mean |d| {_fmt(c.mean_abs_diff, 4):>8}  max |d| {_fmt(c.max_abs_diff, 4):>8}"
                         f"  agreement {_fmt(c.agreement, 4):>6}  psi {_fmt(c.psi):>6}")
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


def _metric_cells(col: ColumnDrift) -> str:
    return "".join(
        f'<td class="{"over" if col.decided_by == k else ""}">{_fmt(col.value(k))}</td>' for k in _METRICS
    )


def _verdict(drift: DriftSection) -> str:
    ref, esc = drift.reference, html.escape
    if ref is None:
        return "<p>No reference: statistics were recorded, metrics were not computed. Score with <code>--reference</code>.</p>"
    n_bad, n_pred = len(drift.drifted_features), len(drift.drifted_predictions)
    preds = f" ({esc(', '.join(drift.drifted_predictions))})" if n_pred else ""
    return (
        f'<p><span class="badge {"bad" if n_bad else "ok"}">{n_bad} of {len(drift.features)} features drifted</span> '
        f'<span class="badge {"bad" if n_pred else "ok"}">{n_pred} of {len(drift.predictions)} prediction columns '
        f"drifted{preds}</span> (feature share {_fmt(drift.drift_share, 2)}) against <code>{esc(ref.uri)}</code> "
        f"({esc(ref.kind)}, {ref.rows:,} rows, sha256 {esc(ref.sha256[:12])}).</p>"
    )


def _status_badge(drift: DriftSection, col: ColumnDrift) -> str:
    if drift.reference is None:
        return '<span class="badge none">no reference</span>'
    if col.drifted:
        return f'<span class="badge bad">drift: {html.escape(str(col.decided_by))}</span>'
    return '<span class="badge ok">ok</span>'


def _summary_table(drift: DriftSection) -> str:
    esc = html.escape
    defaults = ", ".join(f"{k} {v}" for k, v in drift.policy.get("defaults", {}).items())
    rows = "".join(
        f"<tr><td>{esc(name)}</td><td>{esc(col.role)}</td><td>{esc(col.metric or '–')}</td>"
        f"<td>{_fmt(col.threshold, 2)}</td>{_metric_cells(col)}<td>{_status_badge(drift, col)}</td></tr>"
        for name, col in ranked_columns(drift)
    )
    return (
        "<table><tr><th>column</th><th>role</th><th>decides</th><th>threshold</th><th>PSI</th><th>KS</th>"
        "<th>JS</th><th>Wasserstein/σ</th><th>null-rate Δ</th><th>status</th></tr>" + rows + "</table>"
        f"<p class=muted>Default thresholds: {esc(defaults)}. PSI on the reference's deciles (empty bins floored at "
        f"{drift.psi_epsilon}), JS distance (base 2) on its 20 quantile bins, KS and Wasserstein from the "
        "quantile sketches; all four exact from the value counts for columns with at most 50 distinct values.</p>"
    )


def _card(name: str, col: ColumnDrift) -> str:
    esc, hist = html.escape, col.histogram or {}
    legend = (
        '<div class="legend muted"><span class=ref></span>reference<span class=cur></span>current</div>'
        if hist.get("reference") else '<div class="legend muted"><span class=cur></span>current</div>'
    )
    return (
        f'<div class="card{" drift" if col.drifted else ""}"><h3>{esc(name)} '
        f'<span class=muted>({esc(col.role)}, {esc(col.kind or "no reference")})</span></h3>'
        f"{_svg_histogram(hist)}{legend}"
        f"<table><tr><th>count</th><th>nulls</th><th>mean</th><th>std</th><th>min</th><th>max</th></tr>"
        f"<tr><td>{col.count}</td><td>{col.nulls}</td><td>{_fmt(col.mean)}</td><td>{_fmt(col.std)}</td>"
        f"<td>{_fmt(col.min)}</td><td>{_fmt(col.max)}</td></tr></table>"
        f"<table><tr><th>PSI</th><th>KS</th><th>JS</th><th>W/σ</th><th>null Δ</th></tr>"
        f"<tr>{_metric_cells(col)}</tr></table></div>"
    )


def _challenger_html(ch: ChallengerSection) -> str:
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(name)}</td><td>{c.rows:,}</td><td>{_fmt(c.mean_abs_diff, 4)}</td><td>{_fmt(c.max_abs_diff, 4)}</td>"
        f"<td>{_fmt(c.agreement, 4)}</td><td>{_fmt(c.psi)}</td></tr>"
        for name, c in ch.columns.items()
    )
    cards = "".join(
        f'<div class="card"><h3>{esc(name)}</h3>'
        f'{_svg_histogram({"edges": c.distributions.get("edges"), "reference": c.distributions.get("champion"), "current": c.distributions.get("challenger")})}'
        '<div class="legend muted"><span class=ref></span>champion<span class=cur></span>challenger</div>'
        f'{_svg_histogram({"edges": c.diff_histogram.get("edges"), "current": c.diff_histogram.get("shares")})}'
        '<div class="legend muted"><span class=cur></span>challenger − champion</div></div>'
        for name, c in ch.columns.items()
    )
    return (
        f"<h2>Challenger</h2><p>{esc(str(ch.model.get('uri')))} (version {esc(str(ch.model.get('version') or '-'))}, sha256 "
        f"{esc(str(ch.model.get('sha256'))[:12])}) scored beside the champion in the same pass → <code>{esc(ch.output)}</code>; "
        f"inference {ch.infer_seconds.get('challenger', 0):.2f} s beside the champion's "
        f"{ch.infer_seconds.get('champion', 0):.2f} s.</p>"
        "<table><tr><th>column</th><th>rows</th><th>mean |Δ|</th><th>max |Δ|</th><th>label agreement</th>"
        f"<th>PSI</th></tr>{rows}</table><div class=\"cards\">{cards}</div>"
    )


def render_html(m: Manifest) -> str:
    esc = html.escape
    head = (
        f"<h1>batchserve drift report</h1><p class=muted>run {esc(m.run.id)} · {esc(m.run.status)} · "
        f"{m.totals.rows:,} rows in {m.totals.files} files · model {esc(m.model.uri)} "
        f"version {esc(m.model.version or '-')}{_alias_html(m)} "
        f"(sha256 {esc(m.model.sha256[:12])}) · finished {esc(str(m.run.finished_at))}</p>"
    )
    drift = m.drift
    versus = _challenger_html(m.challenger) if m.challenger is not None else ""
    if drift is None:
        return (f"<!doctype html><meta charset=utf-8><title>batchserve report</title><style>{_CSS}</style>{head}"
                f"<p>No drift statistics in this manifest.</p>{versus}")
    cards = "".join(_card(name, col) for name, col in ranked_columns(drift))
    return (
        "<!doctype html><html lang=en><meta charset=utf-8><title>batchserve drift report</title>"
        f"<style>{_CSS}</style><body>{head}{_verdict(drift)}<h2>Summary, most drifted first</h2>"
        f'{_summary_table(drift)}<h2>Distributions</h2><div class="cards">{cards}</div>{versus}</body></html>'
    )


def _alias_html(m: Manifest) -> str:
    """`` · alias production (rollback 3 -> 2 by ops)``: which alias move chose the model, if any."""
    e = m.model.alias_event
    if not e:
        return ""
    who = f" by {e['actor']}" if e.get("actor") else ""
    return (f" · alias {html.escape(str(e.get('alias') or '-'))} ({html.escape(str(e.get('action')))} "
            f"{html.escape(str(e.get('from_version') or '-'))} -> {html.escape(str(e.get('to_version')))}"
            f"{html.escape(who)})")


def _run_label(m: Manifest, source: str) -> str:
    """How a run is named on the trend's x axis: the partition it scored (its scope's keys, or its output
    folder's last part, ``date=2026-11-05``), else its start date."""
    scope = m.scope or {}
    fixed = scope.get("fixed_keys") or {}
    if fixed:
        return ",".join(f"{k}={v}" for k, v in fixed.items())
    filters = scope.get("filters") or []
    if filters:
        return " and ".join(filters)
    parts = [p for p in source.replace("\\", "/").split("/") if p and p not in ("_manifest.json", "_runs")
             and not p.endswith(".json")]
    return parts[-1] if parts and "=" in parts[-1] else m.run.started_at[:10]


def _svg_trend(values: list[float | None], threshold: float | None, labels: list[str],
               width: int = 420, height: int = 160, changes: Sequence[int] = ()) -> str:
    """One feature's deciding metric over runs (dots joined by a line) against its threshold (dashed)."""
    left, right, top, bottom = 40, 16, 10, 34
    finite = [v for v in values if v is not None and math.isfinite(v)]
    top_value = max([*finite, threshold or 0.0, 1e-9]) * 1.15
    n = len(values)

    def x(i: int) -> float:
        return left + (width - left - right) * (i / (n - 1) if n > 1 else 0.5)

    def y(v: float) -> float:
        return top + (height - top - bottom) * (1 - min(v, top_value) / top_value)

    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="trend">',
             f'<line class="axis" x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}"/>',
             f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}"/>',
             f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{_fmt(top_value, 2)}</text>',
             f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end">0</text>']
    if threshold is not None:
        parts.append(f'<line class="thr" x1="{left}" y1="{y(threshold):.1f}" x2="{width - right}" '
                     f'y2="{y(threshold):.1f}"/><text x="{width - right}" y="{y(threshold) - 3:.1f}" '
                     f'text-anchor="end">threshold {_fmt(threshold, 3)}</text>')
    for i in changes:  # the model version changed from the run before: a vertical mark, named
        parts.append(f'<line class="vchange" x1="{x(i) - 0.5 * (x(1) - x(0)) if n > 1 else x(i):.1f}" y1="{top}" '
                     f'x2="{x(i) - 0.5 * (x(1) - x(0)) if n > 1 else x(i):.1f}" y2="{height - bottom}">'
                     f"<title>model version changed</title></line>")
    points = [(x(i), y(v)) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if len(points) > 1:
        parts.append('<polyline class="trend" points="' + " ".join(f"{px:.1f},{py:.1f}" for px, py in points) + '"/>')
    for i, v in enumerate(values):
        if v is None or not math.isfinite(v):
            continue
        over = threshold is not None and v > threshold
        parts.append(f'<circle class="{"dot over-dot" if over else "dot"}" cx="{x(i):.1f}" cy="{y(v):.1f}" r="3.5">'
                     f"<title>{html.escape(labels[i])}: {_fmt(v, 4)}</title></circle>")
    step = max(1, math.ceil(n / 6))
    ticks = list(range(0, n, step))
    if ticks[-1] != n - 1:  # the latest run is always labelled; a neighbour too close to it gives way
        ticks = [*(t for t in ticks if n - 1 - t >= step or t == 0), n - 1]
    for i in ticks:
        anchor = "start" if i == 0 and n > 1 else ("end" if i == n - 1 and n > 1 else "middle")
        parts.append(f'<text x="{x(i):.1f}" y="{height - bottom + 14}" text-anchor="{anchor}">'
                     f"{html.escape(labels[i][-10:])}</text>")
    parts.append("</svg>")
    return "".join(parts)


_TREND_CSS = """
.thr{stroke:#b91c1c;stroke-dasharray:4 3;stroke-width:1} .trend{fill:none;stroke:#2563eb;stroke-width:1.5}
.dot{fill:#2563eb} .over-dot{fill:#b91c1c} .vchange{stroke:#7c3aed;stroke-width:1.5;stroke-dasharray:2 2}
th.changed{background:#ede9fe}
"""


def render_history_html(runs: list[tuple[Manifest, str]]) -> str:
    """Drift over a series of runs, in partition order (the date a run scored, not the order runs
    happened: a re-run of last Tuesday goes to Tuesday): per feature and per prediction column, its
    deciding metric against its threshold, runs on the x axis, model-version changes marked.
    Self-contained like the single report."""
    esc = html.escape
    runs = sorted(runs, key=lambda r: (_run_label(r[0], r[1]), r[0].run.started_at, r[0].run.id))
    labels = [_run_label(m, src) for m, src in runs]
    versions = [m.model.version or m.model.sha256[:12] for m, _ in runs]
    changes = [i for i in range(1, len(runs)) if versions[i] != versions[i - 1]]
    columns: list[tuple[str, str]] = []
    for m, _ in runs:
        for role in ("features", "predictions"):
            for name in (getattr(m.drift, role) if m.drift is not None else {}):
                if (role, name) not in columns:
                    columns.append((role, name))
    measured = sum(1 for m, _ in runs if m.drift is not None and m.drift.reference is not None)
    n_feat = sum(1 for role, _ in columns if role == "features")
    head = (f"<h1>batchserve drift trend</h1><p class=muted>{len(runs)} run(s), {esc(labels[0])} to "
            f"{esc(labels[-1])} · {measured} with a reference · {n_feat} feature(s), "
            f"{len(columns) - n_feat} prediction column(s) · {len(changes)} model version change(s)</p>")
    cards, rows = [], []
    for role, name in columns:
        cols = [getattr(m.drift, role).get(name) if m.drift is not None else None for m, _ in runs]
        metric = next((c.metric for c in reversed(cols) if c is not None and c.metric), "psi")
        threshold = next((c.threshold for c in reversed(cols) if c is not None and c.threshold is not None), None)
        values = [c.value(metric) if c is not None else None for c in cols]
        drifted = sum(1 for c in cols if c is not None and c.drifted)
        cls = "card drift" if drifted else "card"
        badge = f' <span class="badge bad">drifted in {drifted} run(s)</span>' if drifted else ""
        kind = "prediction" if role == "predictions" else "feature"
        cards.append(f'<div class="{cls}"><h3>{esc(name)} <span class=muted>{kind} · {esc(metric)}</span>{badge}'
                     f"</h3>{_svg_trend(values, threshold, labels, changes=changes)}</div>")
        cells = "".join(f'<td class="{"over" if c is not None and c.drifted else ""}">{_fmt(v)}</td>'
                        for c, v in zip(cols, values, strict=True))
        rows.append(f"<tr><td>{esc(name)}</td><td>{kind}</td><td>{esc(metric)}</td>{cells}<td>{_fmt(threshold)}</td></tr>")
    header = "".join(f"<th>{esc(lbl)}</th>" for lbl in labels)
    version_row = "".join(f'<th class="{"changed" if i in changes else ""}">{esc(v)}</th>'
                          for i, v in enumerate(versions))
    table = (f"<table><tr><th>column</th><th>role</th><th>metric</th>{header}<th>threshold</th></tr>"
             f"<tr><th>model version</th><th></th><th></th>{version_row}<th></th></tr>{''.join(rows)}</table>"
             if rows else "<p>No drift statistics in these manifests.</p>")
    return (
        "<!doctype html><html lang=en><meta charset=utf-8><title>batchserve drift trend</title>"
        f"<style>{_CSS}{_TREND_CSS}</style><body>{head}<h2>Per column, over partitions</h2>"
        f'<div class="cards">{"".join(cards)}</div><h2>Values</h2>{table}</body></html>'
    )
