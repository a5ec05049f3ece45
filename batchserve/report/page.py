"""One run's report: the plain-text table and the self-contained HTML page (header with both verdicts,
the summary sorted by drift, a card per column, the challenger's section)."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from batchserve.manifest import Manifest
from batchserve.reference import ColumnDrift, DriftSection
from batchserve.report.challenger import challenger_html, challenger_verdict, psi_limit
from batchserve.report.charts import CSS, fmt, integral, svg_histogram, tick

__all__ = ["render_html", "render_text", "ranked_columns"]


_METRICS = ("psi", "ks", "js", "wasserstein", "null_rate_change")


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
            f"(share {fmt(drift.drift_share, 2)}), {len(drift.drifted_predictions)} of {len(drift.predictions)} "
            "prediction columns drifted" + (f" ({', '.join(drift.drifted_predictions)})" if drift.drifted_predictions else "")
        )
    header = f"{'column':28} {'role':10} {'metric':11} {'value':>8} {'limit':>6}  {'psi':>7} {'ks':>7} {'js':>7} {'wass':>7} {'null Δ':>7}  status"
    lines += [header, "-" * len(header)]
    for name, col in ranked_columns(drift):
        value = col.value(col.metric) if col.metric else None
        lines.append(
            f"{name[:28]:28} {col.role:10} {col.metric or '-':11} {fmt(value):>8} {fmt(col.threshold, 2):>6}  "
            + " ".join(f"{fmt(col.value(k)):>7}" for k in _METRICS)
            + f"  {_status_text(drift, col)}"
        )
    if m.challenger is not None:
        ch = m.challenger
        lines.append(f"challenger {ch.model.get('uri')} (version {ch.model.get('version')}) -> {ch.output}")
        for name, c in ch.columns.items():
            lines.append(f"  {name[:26]:26} mean |d| {fmt(c.mean_abs_diff, 4):>8}  max |d| {fmt(c.max_abs_diff, 4):>8}"
                         f"  agreement {fmt(c.agreement, 4):>6}  psi {fmt(c.psi):>6}")
    return "\n".join(lines) + "\n"


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
        cells.append(f'<td class="{cls.strip()}"{title}>{fmt(value)}</td>')
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
        f"drifted{preds}</span> (feature share {fmt(drift.drift_share, 2)}) against <code>{esc(ref.uri)}</code> "
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
        f"<td>{fmt(col.threshold, 2)}</td>{_metric_cells(drift, name, col)}<td>{_status_badge(drift, col)}</td></tr>"
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
    whole_numbers = integral(col.min, col.max, *(col.quantiles or {}).values(),
                             *((ref or {}).get(k) for k in ("min", "max", "p50")))
    whole = ("count", "nulls") + (("min", "p50", "max") if whole_numbers else ())

    def cell(key: str, value: Any) -> str:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return "<td>–</td>"
        return f"<td>{tick(value, key in whole)}</td>"

    header = "".join(f"<th>{k}</th>" for k in current)
    rows = (f"<tr><td>reference</td>{''.join(cell(k, (ref or {}).get(k)) for k in current)}</tr>" if ref else "")
    rows += f"<tr><td>current</td>{''.join(cell(k, v) for k, v in current.items())}</tr>"
    nulls = (_null_share(ref), _null_share({"count": col.count, "nulls": col.nulls}))
    return (
        f'<div class="card{" drift" if col.drifted else ""}"><h3>{esc(name)} '
        f'<span class=muted>({esc(col.role)}, {esc(col.kind or "no reference")})</span></h3>'
        f"{svg_histogram(hist, integral=whole_numbers, nulls=nulls)}{legend}"
        f'<table class="stats"><tr><th></th>{header}</tr>{rows}</table>'
        f"<table><tr><th>PSI</th><th>KS</th><th>JS</th><th>W/σ</th><th>null Δ</th></tr>"
        f"<tr>{_metric_cells(drift, name, col)}</tr></table></div>"
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
        limit = psi_limit(m)
        versus = challenger_html(m.challenger, limit)
        apart, line = challenger_verdict(m.challenger, limit)
        top = (f'<p><a href="#challenger">Challenger</a> {esc(str(m.challenger.model.get("uri")))}: '
               f'<span class="badge {"bad" if apart else "ok"}">{esc(line)}</span></p>')
    if drift is None:
        return (f"<!doctype html><meta charset=utf-8><title>batchserve report</title><style>{CSS}</style>{head}"
                f"<p>{esc(_no_drift_text(m))}</p>{top}{versus}")
    cards = "".join(_card(drift, name, col) for name, col in ranked_columns(drift))
    return (
        "<!doctype html><html lang=en><meta charset=utf-8><title>batchserve drift report</title>"
        f"<style>{CSS}</style><body>{head}{_verdict(drift)}{top}<h2>Summary, most drifted first</h2>"
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
