"""What every report page is drawn with: number formats, the SVG histogram and trend charts, the CSS.
Pure strings, no data model: the pages decide what to draw."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from batchserve.reference import category_order

__all__ = ["fmt", "integral", "tick", "svg_histogram", "svg_trend", "CSS", "TREND_CSS"]


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.{digits}f}"
    return str(value)


def integral(*values: Any) -> bool:
    """Whether a column's values are whole numbers (hours, counts, ids): its axis gets integer ticks."""
    known = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return bool(known) and all(math.isfinite(v) and float(v).is_integer() for v in known)


def tick(value: float, integral: bool) -> str:
    """An axis or statistics number: whole numbers as such (1,826, not 1826.000), else 3 significant
    digits below 1 and 2 decimals above."""
    if integral:
        return f"{round(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def svg_histogram(hist: Mapping[str, Any], width: int = 420, height: int = 160, *, integral: bool = False,
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
                         f'text-anchor="{anchor}">{tick(t, integral)}</text>')
    parts.append("</svg>")
    return "".join(parts)


CSS = """
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


def svg_trend(values: list[float | None], threshold: float | None, labels: list[str],
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
             f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{fmt(top_value, 2)}</text>',
             f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end">0</text>']
    if threshold is not None:
        parts.append(f'<line class="thr" x1="{left}" y1="{y(threshold):.1f}" x2="{width - right}" '
                     f'y2="{y(threshold):.1f}"/><text x="{width - right}" y="{y(threshold) - 3:.1f}" '
                     f'text-anchor="end">threshold {fmt(threshold, 3)}</text>')
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
                     f"<title>{html.escape(labels[i])}: {fmt(v, 4)}</title></circle>")
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


TREND_CSS = """
.thr{stroke:#b91c1c;stroke-dasharray:4 3;stroke-width:1} .trend{fill:none;stroke:#2563eb;stroke-width:1.5}
.dot{fill:#2563eb} .over-dot{fill:#b91c1c} .vchange{stroke:#7c3aed;stroke-width:1.5;stroke-dasharray:2 2}
svg text.vlabel{fill:#7c3aed}
th.changed{background:#ede9fe}
"""
