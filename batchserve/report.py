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
        return lines[0] + "\n" + _no_drift_text(m) + "\n"
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


def _integral(*values: Any) -> bool:
    """Whether a column's values are whole numbers (hours, counts, ids): its axis gets integer ticks."""
    known = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return bool(known) and all(math.isfinite(v) and float(v).is_integer() for v in known)


def _tick(value: float, integral: bool) -> str:
    """An axis or statistics number: whole numbers as such (1,826, not 1826.000), else 3 significant
    digits below 1 and 2 decimals above."""
    if integral:
        return f"{round(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def _svg_histogram(hist: Mapping[str, Any], width: int = 420, height: int = 160, *, integral: bool = False,
                   nulls: tuple[float | None, float | None] = (None, None)) -> str:
    """Reference (grey bars) and current (blue outline) on the same axes, as shares of all rows: a
    y-axis in percent, nulls as a bar of their own at the right (when either side has any), and
    integer ticks for a whole-number column."""
    ref, cur = hist.get("reference"), hist.get("current")
    labels: list[Any] | None = hist.get("categories")
    if labels:  # older manifests sorted numeric labels as text: put them in reading order
        keys = [str(x) for x in labels]
        rank = {k: i for i, k in enumerate(category_order(keys))}
        order = sorted(range(len(keys)), key=lambda i: rank[keys[i]])
        labels = [labels[i] for i in order]
        ref = [ref[i] for i in order] if ref else ref
        cur = [cur[i] for i in order] if cur else cur
    if not (ref or cur):
        return "<p class=muted>no values</p>"
    ref_null, cur_null = (n or 0.0 for n in nulls)
    # shares of non-null values -> shares of all rows, so the null bar is on the same scale
    ref = [v * (1 - ref_null) for v in ref] if ref else ref
    cur = [v * (1 - cur_null) for v in cur] if cur else cur
    show_nulls = ref_null > 0 or cur_null > 0
    n = len((ref or cur) or [])
    top = max([*(ref or []), *(cur or []), ref_null, cur_null]) or 1.0
    left, right, base = 40, 6, height - 22
    plot_right = width - right - (34 if show_nulls else 0)
    bw = (plot_right - left) / n

    def bar(x: float, w: float, share: float, cls: str) -> str:
        h = (base - 8) * share / top
        return f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{max(w, 1):.1f}" height="{h:.1f}" class="{cls}"/>'

    parts = [f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">']
    for frac in (0.0, 0.5, 1.0):  # the y-axis: share of rows
        y = base - (base - 8) * frac
        parts.append(f'<line x1="{left - 3}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" class="axis"/>'
                     f'<text x="{left - 5}" y="{y + 3:.1f}" text-anchor="end">{100 * top * frac:.3g}%</text>')
    for i in range(n):
        x = left + i * bw
        if ref:
            parts.append(bar(x, bw - 1, ref[i], "ref"))
        if cur:
            inset = bw * 0.2 if labels else 0
            parts.append(bar(x + inset, bw - 1 - 2 * inset, cur[i], "cur"))
    if show_nulls:
        x = plot_right + 10
        parts.append(bar(x, 20, ref_null, "ref") + bar(x + 4, 12, cur_null, "cur") +
                     f'<text x="{x + 10}" y="{height - 6}" text-anchor="middle">null</text>')
    parts.append(f'<line x1="{left}" y1="{base}" x2="{plot_right}" y2="{base}" class="axis"/>'
                 f'<line x1="{left}" y1="8" x2="{left}" y2="{base}" class="axis"/>')
    if labels:
        step = max(1, n // 10)
        for i in range(0, n, step):
            parts.append(f'<text x="{left + (i + 0.5) * bw:.1f}" y="{height - 6}" text-anchor="middle">'
                         f"{html.escape(str(labels[i])[:8])}</text>")
    elif hist.get("edges"):
        edges = [float(e) for e in hist["edges"]]
        lo, hi = edges[0], edges[-1]
        ticks = [lo, (lo + hi) / 2, hi]
        if integral:  # whole numbers only, placed where they fall (no 11.500 for an hour)
            ticks = sorted({float(round(t)) for t in ticks if lo - 0.5 <= round(t) <= hi + 0.5})
        for t in ticks:
            frac = (t - lo) / (hi - lo) if hi > lo else 0.5
            frac = min(max(frac, 0.0), 1.0)
            anchor = "start" if frac < 0.1 else ("end" if frac > 0.9 else "middle")
            parts.append(f'<text x="{left + frac * (plot_right - left):.1f}" y="{height - 6}" '
                         f'text-anchor="{anchor}">{_tick(t, integral)}</text>')
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
.over{background:#fee2e2;color:#b91c1c} .decides{font-weight:700} table.stats td:first-child{color:#6b7280}
table.stats{font-size:11px;width:100%} table.stats th,table.stats td{padding:3px 4px}
"""


def _limit(drift: DriftSection, name: str, metric: str) -> float | None:
    """A metric's limit for one column: its per-column override, else the run's default."""
    own = (drift.policy.get("per_column") or {}).get(name) or {}
    limit = own.get(metric, (drift.policy.get("defaults") or {}).get(metric))
    return float(limit) if isinstance(limit, int | float) else None


def _metric_cells(drift: DriftSection, name: str, col: ColumnDrift) -> str:
    """Every metric past its own limit is flagged, not only the one that decides; the deciding one is bold."""
    cells = []
    for k in _METRICS:
        value, limit = col.value(k), _limit(drift, name, k)
        over = value is not None and limit is not None and value > limit
        cls = ("over" if over else "") + (" decides" if col.decided_by == k else "")
        title = f' title="limit {limit:g}"' if limit is not None else ""
        cells.append(f'<td class="{cls.strip()}"{title}>{_fmt(value)}</td>')
    return "".join(cells)


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
        f"<td>{_fmt(col.threshold, 2)}</td>{_metric_cells(drift, name, col)}<td>{_status_badge(drift, col)}</td></tr>"
        for name, col in ranked_columns(drift)
    )
    return (
        "<table><tr><th>column</th><th>role</th><th>decides</th><th>threshold</th><th>PSI</th><th>KS</th>"
        "<th>JS</th><th>Wasserstein/σ</th><th>null-rate Δ</th><th>status</th></tr>" + rows + "</table>"
        f"<p class=muted>Default thresholds: {esc(defaults)}. PSI on the reference's deciles (empty bins floored at "
        f"{drift.psi_epsilon}), JS distance (base 2) on its 20 quantile bins, KS and Wasserstein from the "
        "quantile sketches; all four exact from the value counts for columns with at most 50 distinct values. "
        "Red: past its limit (every metric, not only the deciding one, in bold).</p>"
    )


def _null_share(stats: Mapping[str, Any] | None) -> float | None:
    if not stats:
        return None
    total = (stats.get("count") or 0) + (stats.get("nulls") or 0)
    return (stats.get("nulls") or 0) / total if total else None


def _card(drift: DriftSection, name: str, col: ColumnDrift) -> str:
    """One column: both distributions (nulls drawn), the statistics side by side, every metric."""
    esc, hist = html.escape, col.histogram or {}
    ref = col.reference_stats
    legend = (
        '<div class="legend muted"><span class=ref></span>reference<span class=cur></span>current</div>'
        if hist.get("reference") else '<div class="legend muted"><span class=cur></span>current</div>'
    )
    current = {"count": col.count, "nulls": col.nulls, "mean": col.mean, "std": col.std, "min": col.min,
               "p50": (col.quantiles or {}).get("p50"), "max": col.max}
    integral = _integral(col.min, col.max, *(col.quantiles or {}).values(), *((ref or {}).get(k) for k in
                                                                             ("min", "max", "p50")))
    whole = ("count", "nulls") + (("min", "p50", "max") if integral else ())

    def cell(key: str, value: Any) -> str:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return "<td>–</td>"
        return f"<td>{_tick(value, key in whole)}</td>"

    header = "".join(f"<th>{k}</th>" for k in current)
    rows = (f"<tr><td>reference</td>{''.join(cell(k, (ref or {}).get(k)) for k in current)}</tr>" if ref else "")
    rows += f"<tr><td>current</td>{''.join(cell(k, v) for k, v in current.items())}</tr>"
    nulls = (_null_share(ref), _null_share({"count": col.count, "nulls": col.nulls}))
    return (
        f'<div class="card{" drift" if col.drifted else ""}"><h3>{esc(name)} '
        f'<span class=muted>({esc(col.role)}, {esc(col.kind or "no reference")})</span></h3>'
        f"{_svg_histogram(hist, integral=integral, nulls=nulls)}{legend}"
        f'<table class="stats"><tr><th></th>{header}</tr>{rows}</table>'
        f"<table><tr><th>PSI</th><th>KS</th><th>JS</th><th>W/σ</th><th>null Δ</th></tr>"
        f"<tr>{_metric_cells(drift, name, col)}</tr></table></div>"
    )


def _psi_limit(m: Manifest) -> float:
    """The PSI limit the challenger's score distributions are held to: the run's, else the default."""
    from batchserve.drift import DriftPolicy

    defaults = (m.drift.policy.get("defaults") or {}) if m.drift is not None else {}
    limit = defaults.get("psi", dict(DriftPolicy().thresholds).get("psi"))
    return float(limit) if isinstance(limit, int | float) else 0.2


def _challenger_verdict(ch: ChallengerSection, limit: float) -> tuple[bool, str]:
    """One line: does the challenger score like the champion (PSI of each prediction column within the
    limit), and its label agreement."""
    apart = [(n, c.psi) for n, c in ch.columns.items() if c.psi is not None and c.psi > limit]
    agreement = [c.agreement for c in ch.columns.values() if c.agreement is not None]
    agree = f"; label agreement {100 * min(agreement):.2f}%" if agreement else ""
    if ch.failures:  # files it could not score: its output is incomplete whatever its scores say
        agree += f"; it failed on {len(ch.failures)} file(s), first {ch.failures[0]['relpath']}"
        if not apart:
            return True, f"incomplete: the challenger failed on {len(ch.failures)} file(s) (first "\
                         f"{ch.failures[0]['relpath']}: {ch.failures[0]['error']}); the champion's output is complete"
    if apart:
        worst = ", ".join(f"{n} (PSI {v:.3f} > {limit:g})" for n, v in sorted(apart, key=lambda x: -x[1]))
        return True, f"scores apart from the champion: {worst}{agree}"
    largest = max((c.psi for c in ch.columns.values() if c.psi is not None), default=None)
    return False, f"scores like the champion (largest PSI {_fmt(largest)} within {limit:g}){agree}"


def _challenger_html(ch: ChallengerSection, limit: float) -> str:
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(name)}</td><td>{c.rows:,}</td><td>{_fmt(c.mean_abs_diff, 4)}</td><td>{_fmt(c.max_abs_diff, 4)}</td>"
        f"<td>{_fmt(c.agreement, 4)}</td>"
        f'<td class="{"over" if c.psi is not None and c.psi > limit else ""}">{_fmt(c.psi)}</td></tr>'
        for name, c in ch.columns.items()
    )
    cards = []
    for name, c in ch.columns.items():
        dist = c.distributions
        overlay = _svg_histogram({"edges": dist.get("edges"), "categories": dist.get("categories"),
                                  "reference": dist.get("champion"), "current": dist.get("challenger")})
        if c.agreement is not None:  # labels: how often they agree says more than a histogram of 0s
            second = _svg_histogram({"categories": ["agree", "differ"],
                                     "current": [c.agreement, 1 - c.agreement]})
            second_legend = "rows whose labels agree and differ"
        else:
            second = _svg_histogram({"edges": c.diff_histogram.get("edges"), "current": c.diff_histogram.get("shares")})
            second_legend = "challenger − champion"
        cards.append(
            f'<div class="card"><h3>{esc(name)}</h3>{overlay}'
            '<div class="legend muted"><span class=ref></span>champion<span class=cur></span>challenger</div>'
            f'{second}<div class="legend muted"><span class=cur></span>{second_legend}</div></div>')
    apart, line = _challenger_verdict(ch, limit)
    return (
        f'<h2 id="challenger">Challenger</h2><p><span class="badge {"bad" if apart else "ok"}">{esc(line)}</span></p>'
        f"<p>{esc(str(ch.model.get('uri')))} (version {esc(str(ch.model.get('version') or '-'))}, sha256 "
        f"{esc(str(ch.model.get('sha256'))[:12])}) scored beside the champion in the same pass → <code>{esc(ch.output)}</code>; "
        f"inference {ch.infer_seconds.get('challenger', 0):.2f} s beside the champion's "
        f"{ch.infer_seconds.get('champion', 0):.2f} s.</p>"
        "<table><tr><th>column</th><th>rows</th><th>mean |Δ|</th><th>max |Δ|</th><th>label agreement</th>"
        f"<th>PSI vs champion</th></tr>{rows}</table><div class=\"cards\">{''.join(cards)}</div>"
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
    versus, top = "", ""
    if m.challenger is not None:
        limit = _psi_limit(m)
        versus = _challenger_html(m.challenger, limit)
        apart, line = _challenger_verdict(m.challenger, limit)
        top = (f'<p><a href="#challenger">Challenger</a> {esc(str(m.challenger.model.get("uri")))}: '
               f'<span class="badge {"bad" if apart else "ok"}">{esc(line)}</span></p>')
    if drift is None:
        return (f"<!doctype html><meta charset=utf-8><title>batchserve report</title><style>{_CSS}</style>{head}"
                f"<p>{esc(_no_drift_text(m))}</p>{top}{versus}")
    cards = "".join(_card(drift, name, col) for name, col in ranked_columns(drift))
    return (
        "<!doctype html><html lang=en><meta charset=utf-8><title>batchserve drift report</title>"
        f"<style>{_CSS}</style><body>{head}{_verdict(drift)}{top}<h2>Summary, most drifted first</h2>"
        f'{_summary_table(drift)}<h2>Distributions</h2><div class="cards">{cards}</div>{versus}</body></html>'
    )


def _no_drift_text(m: Manifest) -> str:
    """Why a manifest has no drift section: a challenger's own output, or a run scored with --no-drift."""
    if m.shadow_of:
        return (f"This is the output of a challenger, scored beside the champion's run {m.run.id} into {m.shadow_of}: "
                f"its comparison with the champion (and the drift statistics) are in that output's report, "
                f"batchserve report {m.shadow_of}")
    return "No drift statistics in this manifest (scored with --no-drift)."


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
               width: int = 420, height: int = 160, changes: Sequence[tuple[int, str]] = ()) -> str:
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
    for i, what in changes:  # the model version changed from the run before: a vertical mark, named
        at = x(i) - 0.5 * (x(1) - x(0)) if n > 1 else x(i)
        parts.append(f'<line class="vchange" x1="{at:.1f}" y1="{top}" x2="{at:.1f}" y2="{height - bottom}">'
                     f"<title>model version {html.escape(what)}</title></line>"
                     f'<text x="{at + 2:.1f}" y="{top + 18}" class="vlabel">{html.escape(what)}</text>')
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
svg text.vlabel{fill:#7c3aed}
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
    changes = [(i, f"v{versions[i - 1]}→v{versions[i]}") for i in range(1, len(runs)) if versions[i] != versions[i - 1]]
    changed = {i for i, _ in changes}
    columns: list[tuple[str, str]] = []
    for m, _ in runs:
        for role in ("features", "predictions"):
            for name in (getattr(m.drift, role) if m.drift is not None else {}):
                if (role, name) not in columns:
                    columns.append((role, name))
    def times_drifted(column: tuple[str, str]) -> int:
        role, name = column
        return sum(1 for m, _ in runs if m.drift is not None and (c := getattr(m.drift, role).get(name)) is not None
                   and c.drifted)

    columns.sort(key=lambda c: -times_drifted(c))  # what a person must look at first (stable otherwise)
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
    version_row = "".join(f'<th class="{"changed" if i in changed else ""}">{esc(v)}</th>'
                          for i, v in enumerate(versions))
    table = (f"<table><tr><th>column</th><th>role</th><th>metric</th>{header}<th>threshold</th></tr>"
             f"<tr><th>model version</th><th></th><th></th>{version_row}<th></th></tr>{''.join(rows)}</table>"
             if rows else "<p>No drift statistics in these manifests.</p>")
    return (
        "<!doctype html><html lang=en><meta charset=utf-8><title>batchserve drift trend</title>"
        f"<style>{_CSS}{_TREND_CSS}</style><body>{head}<h2>Per column, over partitions</h2>"
        f'<div class="cards">{"".join(cards)}</div><h2>Values</h2>{table}</body></html>'
    )
