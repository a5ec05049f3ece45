"""report.py: what a person sees. Category order, legend swatches, and the no-reference state."""

from __future__ import annotations

import re

import numpy as np

from batchserve import drift, manifest, report
from batchserve import reference as ref_mod


def _manifest(with_reference: bool) -> manifest.Manifest:
    g = np.random.default_rng(0)
    ref = drift.summarize_numeric(g.integers(0, 15, 5000).astype(float), categorical=True)
    cur = drift.summarize_numeric(g.integers(0, 15, 4000).astype(float), categorical=True)
    reference = ref_mod.Reference("profile", "ref.json", "0" * 64, 5000, {"hour": ref}) if with_reference else None
    m = manifest.example_manifest()
    m.drift = ref_mod.drift_section({"hour": cur}, ["hour"], [], reference, drift.DriftPolicy())
    return manifest.loads(manifest.dumps(m))  # as the report gets it: written, then read back


def test_numeric_categories_read_in_numeric_order() -> None:
    m = _manifest(True)
    cats = m.drift.features["hour"].histogram["categories"]
    assert cats == [str(h) for h in range(15)]  # not 0, 1, 10, 11, ..., 2
    html = report.render_html(m)
    labels = [int(x) for x in re.findall(r'text-anchor="middle">(\d+)</text>', html)]
    assert labels == list(range(15))


def test_an_older_manifest_with_text_sorted_categories_is_shown_in_numeric_order() -> None:
    m = _manifest(True)
    hist = m.drift.features["hour"].histogram
    order = sorted(range(15), key=lambda i: str(i))  # how manifests before issue 7 stored them
    hist["categories"] = [hist["categories"][i] for i in order]
    hist["reference"] = [hist["reference"][i] for i in order]
    hist["current"] = [hist["current"][i] for i in order]
    labels = [int(x) for x in re.findall(r'text-anchor="middle">(\d+)</text>', report.render_html(m))]
    assert labels == sorted(labels)


def test_legend_swatches_are_painted() -> None:
    html = report.render_html(_manifest(True))
    # The swatches are <span>s: SVG 'fill' does not paint them, a background does.
    assert re.search(r"\.legend \.ref\{background:#[0-9a-f]{6}\}", html)
    assert re.search(r"\.legend \.cur\{background:", html)
    assert html.count("<span class=ref></span>reference") == 1


def test_without_a_reference_no_green_ok() -> None:
    m = _manifest(False)
    html = report.render_html(m)
    assert "no reference</span>" in html and 'class="badge ok"' not in html
    assert "<span class=ref></span>" not in html  # no reference swatch for data that is not there
    text = report.render_text(m)
    assert "no reference" in text.splitlines()[-1] and not text.rstrip().endswith(" ok")
