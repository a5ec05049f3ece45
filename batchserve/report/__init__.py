"""Drift report: a run manifest rendered as one self-contained HTML page, or as plain text.

Pure: a typed manifest in, a string out. The page has no scripts and fetches
nothing (inline CSS and SVG), so it opens from an e-mail attachment or an
object-store link the same way. People look at drift; they do not read it.

Example::

    >>> html = render_html(manifest.loads(open("out/_manifest.json").read()))  # doctest: +SKIP

One job per module: ``page`` (one run), ``challenger`` (its section), ``trend`` (a series of runs),
``charts`` (SVG, CSS and number formats they share).
"""

from __future__ import annotations

from batchserve.report.page import ranked_columns, render_html, render_text
from batchserve.report.trend import render_history_html

__all__ = ["render_html", "render_text", "ranked_columns", "render_history_html"]
