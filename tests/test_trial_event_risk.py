"""EventRisk: the risk of at least one event from a level-dependent hazard, against the
closed form 1 - exp(-sum h dt) written out here (a constant level in one band; a course
crossing bands; dropout's follow-up), and bad tables refused."""

from __future__ import annotations

import numpy as np
import pytest

import twins


def test_event_risk_against_the_closed_form():
    e = twins.EventRisk("bleed", "Major bleeding", bounds=(3.0, 4.5), rates=(1.0, 2.0, 10.0))
    days = np.arange(85.0)
    level = np.vstack([np.full(85, 2.5), np.full(85, 3.0), np.full(85, 5.0)])
    got = np.asarray(e({"days": days, "level": level})["bleed"])
    years = 84.0 / 365.25
    want = 100.0 * (1.0 - np.exp(-np.array([1.0, 2.0, 10.0]) / 100.0 * years))
    np.testing.assert_allclose(got, want, rtol=1e-12)  # a value equal to a bound: upper band
    # a course crossing bands: each day's rate from the level at its start
    rng = np.random.default_rng(0)
    y = rng.uniform(1.0, 6.0, size=(50, 85))
    got = np.asarray(e({"days": days, "level": y})["bleed"])
    for i in range(50):
        total = 0.0
        for k in range(84):
            rate = 1.0 if y[i, k] < 3.0 else (2.0 if y[i, k] < 4.5 else 10.0)
            total += rate / 100.0 / 365.25 * 1.0
        assert got[i] == pytest.approx(100.0 * (1.0 - np.exp(-total)), rel=1e-12)
    # dropout: only the observed follow-up counts
    observed = days[None, :] <= np.array([10.0, 84.0, 0.0])[:, None]
    got = np.asarray(e({"days": days, "level": level, "observed_days": observed})["bleed"])
    spans = np.array([10.0, 84.0, 0.0]) / 365.25
    want = 100.0 * (1.0 - np.exp(-np.array([1.0, 2.0, 10.0]) / 100.0 * spans))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # measured values held from visit to visit
    m = twins.EventRisk("b", "b", (4.5,), (0.0, 100.0), source="measured")
    out = m({"visit_days": np.array([0.0, 10.0, 30.0]), "measured": np.array([[5.0, 1.0, 1.0]])})
    assert float(out["b"][0]) == pytest.approx(100.0 * (1.0 - np.exp(-10.0 / 365.25)))


def test_spec_reads_event_risk():
    from twins.app import load_trial

    text = """
name = "x"
drug = "warfarin_hamberg2007"
days = 10
[[arms]]
name = "a"
visits = [1, 4]
initial = { loading = [5, 5, 5], maintenance = 5 }
[[endpoints]]
type = "event_risk"
name = "bleed"
bounds = [3.0, 4.5]
rates = [1.0, 2.0, 10.0]
reference = "a user's table"
"""
    trial, _ = load_trial(text)
    assert trial.endpoints[0] == twins.EventRisk(
        "bleed", "bleed", (3.0, 4.5), (1.0, 2.0, 10.0), reference="a user's table"
    )
    with pytest.raises(Exception, match=r"endpoints\[0\].*expected 3 rates"):
        load_trial(text.replace("rates = [1.0, 2.0, 10.0]", "rates = [1.0]"))


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="expected 3 rates"):
        twins.EventRisk("b", "b", (3.0, 4.5), (1.0, 2.0))
    with pytest.raises(ValueError, match="increasing"):
        twins.EventRisk("b", "b", (4.5, 3.0), (1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match=">= 0"):
        twins.trials.EventRisk("b", "b", (3.0,), (1.0, -2.0))
