"""The trend report (``report --history``): drift per column over a series of runs, in partition order,
drifted columns first, model-version changes named."""

from __future__ import annotations

import html

from batchserve.manifest import Manifest
from batchserve.report.charts import CSS, TREND_CSS, fmt, svg_trend

__all__ = ["render_history_html"]


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
                     f"</h3>{svg_trend(values, threshold, labels, changes=changes)}</div>")
        cells = "".join(f'<td class="{"over" if c is not None and c.drifted else ""}">{fmt(v)}</td>'
                        for c, v in zip(cols, values, strict=True))
        rows.append(f"<tr><td>{esc(name)}</td><td>{kind}</td><td>{esc(metric)}</td>{cells}<td>{fmt(threshold)}</td></tr>")
    header = "".join(f"<th>{esc(lbl)}</th>" for lbl in labels)
    version_row = "".join(f'<th class="{"changed" if i in changed else ""}">{esc(v)}</th>'
                          for i, v in enumerate(versions))
    table = (f"<table><tr><th>column</th><th>role</th><th>metric</th>{header}<th>threshold</th></tr>"
             f"<tr><th>model version</th><th></th><th></th>{version_row}<th></th></tr>{''.join(rows)}</table>"
             if rows else "<p>No drift statistics in these manifests.</p>")
    return (
        "<!doctype html><html lang=en><meta charset=utf-8><title>batchserve drift trend</title>"
        f"<style>{CSS}{TREND_CSS}</style><body>{head}<h2>Per column, over partitions</h2>"
        f'<div class="cards">{"".join(cards)}</div><h2>Values</h2>{table}</body></html>'
    )
