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


# --- issue 19, part 8: reports people act on -----------------------------------------------------

def _numeric_column(shift: float = 0.0, nulls: int = 0):
    """Whole numbers with too many distinct values to be categories (card ages in days)."""
    g = np.random.default_rng(3)
    ref = drift.summarize_numeric(g.integers(1, 3650, 20_000).astype(float))
    cur = drift.summarize_numeric(g.integers(1, 3650, 8_000).astype(float) + shift, nulls=nulls)
    return ref, cur


def _section(ref, cur, name="card_age_days"):
    reference = ref_mod.Reference("profile", "ref.json", "0" * 64, 20_000, {name: ref})
    m = manifest.example_manifest()
    m.drift = ref_mod.drift_section({name: cur}, [name], [], reference, drift.DriftPolicy())
    return manifest.loads(manifest.dumps(m))


def test_integer_columns_get_integer_ticks_nulls_are_drawn_and_both_sides_stand_side_by_side() -> None:
    m = _section(*_numeric_column(nulls=800))
    col = m.drift.features["card_age_days"]
    assert col.reference_stats is not None and col.reference_stats["count"] == 20_000
    page = report.render_html(m)
    card = page[page.index("<h3>card_age_days"):]
    ticks = re.findall(r'y="\d+" text-anchor="(?:start|middle|end)">([^<]+)</text>', card)
    assert ticks and all(re.fullmatch(r"[\d,]+", t) for t in ticks if t != "null"), ticks  # no 1826.000
    assert ">null</text>" in card  # 800 nulls, a bar of their own
    assert re.search(r'text-anchor="end">[\d.]+%</text>', card)  # a y-axis in percent of rows
    assert "<td>reference</td><td>20,000</td><td>0</td>" in card and "<td>current</td><td>8,000</td><td>800</td>" in card
    without = report.render_html(_section(*_numeric_column()))
    assert ">null</text>" not in without[without.index("<h3>card_age_days"):]


def test_every_metric_past_its_limit_is_flagged_not_only_the_deciding_one() -> None:
    m = _section(*_numeric_column(shift=900.0))
    col = m.drift.features["card_age_days"]
    limits = m.drift.policy["defaults"]
    over = {k for k in ("psi", "ks", "js", "wasserstein", "null_rate_change")
            if col.value(k) is not None and col.value(k) > limits[k]}
    assert {"psi", "ks", "js", "wasserstein"} <= over  # a shift this large passes every limit
    row = re.search(r"<tr><td>card_age_days</td>.*?</tr>", report.render_html(m)).group(0)
    assert row.count('class="over') == len(over) and row.count("decides") == 1


def _challenged(tmp_label_shift: int = 1):
    import pyarrow as pa

    from batchserve import compare

    g = np.random.default_rng(5)
    champ_p = g.random(5000) * 0.1
    champion = {"label": pa.array((champ_p > 0.09).astype(np.int64)), "p1": pa.array(champ_p)}
    challenger = {"label": pa.array((champ_p > 0.05).astype(np.int64)), "p1": pa.array(champ_p + 0.4)}
    section = compare.ChallengerSection(
        model={"uri": "candidate.onnx", "version": "2", "sha256": "f" * 64, "resolved_uri": "c", "alias_event": None},
        output="ch/", columns=compare.section_columns(compare.compare_batch(champion, challenger)),
        infer_seconds={"champion": 1.0, "challenger": 1.1})
    m = _section(*_numeric_column())
    m.challenger = section
    return manifest.loads(manifest.dumps(m))


def test_the_challenger_is_linked_from_the_top_with_a_verdict_its_psi_flagged_and_labels_drawn(tmp_path) -> None:
    from tests.conftest import screenshot

    m = _challenged()
    page = report.render_html(m)
    top = page[:page.index("<h2>Summary")]
    assert '<a href="#challenger">Challenger</a>' in top and "scores apart from the champion: p1 (PSI" in top
    section = page[page.index('id="challenger"'):]
    assert re.search(r'<td class="over">\d+\.\d+</td></tr>', section)  # p1's PSI past the limit
    label_card = section[section.index("<h3>label</h3>"):section.index("<h3>p1</h3>")]
    assert '>0</text>' in label_card and '>1</text>' in label_card  # label values, not 0.000 0.000 0.000
    assert ">agree</text>" in label_card and ">differ</text>" in label_card
    (tmp_path / "r.html").write_text(page)
    screenshot(tmp_path / "r.html", tmp_path / "r.png", "1400,2400")


def test_a_challenger_output_points_to_the_champion_and_does_not_claim_no_drift() -> None:
    m = manifest.example_manifest()
    m.shadow_of = "out/champion"
    page, text = report.render_html(m), report.render_text(m)
    for shown in (page, text):
        assert "the output of a challenger" in shown and "batchserve report out/champion" in shown
        assert "--no-drift" not in shown
    m.shadow_of = None
    assert "--no-drift" in report.render_text(m)


def test_the_trend_goes_in_partition_order_drifted_first_with_version_changes_named() -> None:
    runs = []
    for day, version, started, shift in (("2026-11-03", "2", "2026-11-05T09:00:00Z", 900.0),
                                         ("2026-11-01", "1", "2026-11-04T03:00:00Z", 0.0),
                                         ("2026-11-02", "1", "2026-11-04T04:00:00Z", 0.0)):
        m = _section(*_numeric_column(shift=shift))
        m.run.started_at, m.run.id = started, f"run-{day}"
        m.model.version = version
        m.scope = {"filters": [], "fixed_keys": {"date": day}}
        runs.append((m, f"out/date={day}/_manifest.json"))
    page = report.render_history_html(runs)
    assert [d for d in re.findall(r"<th>date=(2026-11-0\d)</th>", page)] == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert "v1→v2" in page and "1 model version change(s)" in page
