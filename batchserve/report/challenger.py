"""The challenger's part of a run's report: a one-line verdict (linked from the top of the page) and
its section: each prediction's PSI against the champion, label agreement, the files it failed on."""

from __future__ import annotations

import html

from batchserve.compare import ChallengerSection
from batchserve.manifest import Manifest
from batchserve.report.charts import fmt, svg_histogram

__all__ = ["psi_limit", "challenger_verdict", "challenger_html"]


def psi_limit(m: Manifest) -> float:
    """The PSI limit the challenger's score distributions are held to: the run's, else the default."""
    from batchserve.drift import DriftPolicy

    defaults = (m.drift.policy.get("defaults") or {}) if m.drift is not None else {}
    limit = defaults.get("psi", dict(DriftPolicy().thresholds).get("psi"))
    return float(limit) if isinstance(limit, int | float) else 0.2


def challenger_verdict(ch: ChallengerSection, limit: float) -> tuple[bool, str]:
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
    return False, f"scores like the champion (largest PSI {fmt(largest)} within {limit:g}){agree}"


def challenger_html(ch: ChallengerSection, limit: float) -> str:
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(name)}</td><td>{c.rows:,}</td><td>{fmt(c.mean_abs_diff, 4)}</td><td>{fmt(c.max_abs_diff, 4)}</td>"
        f"<td>{fmt(c.agreement, 4)}</td>"
        f'<td class="{"over" if c.psi is not None and c.psi > limit else ""}">{fmt(c.psi)}</td></tr>'
        for name, c in ch.columns.items()
    )
    cards = []
    for name, c in ch.columns.items():
        dist = c.distributions
        overlay = svg_histogram({"edges": dist.get("edges"), "categories": dist.get("categories"),
                                  "reference": dist.get("champion"), "current": dist.get("challenger")})
        if c.agreement is not None:  # labels: how often they agree says more than a histogram of 0s
            second = svg_histogram({"categories": ["agree", "differ"],
                                     "current": [c.agreement, 1 - c.agreement]})
            second_legend = "rows whose labels agree and differ"
        else:
            second = svg_histogram({"edges": c.diff_histogram.get("edges"), "current": c.diff_histogram.get("shares")})
            second_legend = "challenger − champion"
        cards.append(
            f'<div class="card"><h3>{esc(name)}</h3>{overlay}'
            '<div class="legend muted"><span class=ref></span>champion<span class=cur></span>challenger</div>'
            f'{second}<div class="legend muted"><span class=cur></span>{second_legend}</div></div>')
    apart, line = challenger_verdict(ch, limit)
    return (
        f'<h2 id="challenger">Challenger</h2><p><span class="badge {"bad" if apart else "ok"}">{esc(line)}</span></p>'
        f"<p>{esc(str(ch.model.get('uri')))} (version {esc(str(ch.model.get('version') or '-'))}, sha256 "
        f"{esc(str(ch.model.get('sha256'))[:12])}) scored beside the champion in the same pass → <code>{esc(ch.output)}</code>; "
        f"inference {ch.infer_seconds.get('challenger', 0):.2f} s beside the champion's "
        f"{ch.infer_seconds.get('champion', 0):.2f} s.</p>"
        "<table><tr><th>column</th><th>rows</th><th>mean |Δ|</th><th>max |Δ|</th><th>label agreement</th>"
        f"<th>PSI vs champion</th></tr>{rows}</table><div class=\"cards\">{''.join(cards)}</div>"
    )
