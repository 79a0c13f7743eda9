"""The COAG preset with visit-schedule realism (twins.Visits): the revision arm's decisions
at slipped and missed visits against the protocol written out in a loop (the Gage and
Lenzini formulas typed again in tests/test_trial_coag.py, the rule of the *scheduled* visit
applied from the day it happened to the INR measured that day, a missed visit deciding
nothing), the window TTR on each patient's measured INRs at their real days against a fine
grid of the interpolated INR, and `Visits()` (no slip, no missed visit) giving the trial
without visits to the bit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_trial_coag import (
    _dense_ttr,
    _round,
    gage_clinical_by_hand,
    gage_pg_by_hand,
    lenzini_clinical_by_hand,
    lenzini_pg_by_hand,
)

import twins
from twins.trials import _coag, population_rows, simulate_chunk
from twins.trials._eupact import NOMOGRAM

N = 60


@pytest.fixture(scope="module")
def runs():
    """The COAG trial's patients without visits, with `Visits()`, and with slips and missed
    visits (common keys: the same patients and assay noise)."""
    coag = twins.coag_trial()
    pop = population_rows(coag, 0, N, key=jax.random.key(0))
    out = {"pop": pop, "trial": coag}
    for label, visits in (
        ("plain", None),
        ("still", twins.Visits()),
        ("moving", twins.Visits(slip_sd_days=1.5, slip_max_days=2, p_missed=0.3)),
    ):
        trial = dataclasses.replace(coag, visits=visits)
        out[label] = simulate_chunk(trial, pop, 0, key=jax.random.key(1))
    return out


def test_no_slip_no_miss_is_the_trial_without_visits_to_the_bit(runs):
    e0, c0 = runs["plain"]
    e1, c1 = runs["still"]
    for arm in ("genotype_guided", "clinical"):
        for k in ("level", "measured", "doses"):
            np.testing.assert_array_equal(c0[arm][k], c1[arm][k], err_msg=f"{arm} {k}")
        assert e0[arm].keys() == e1[arm].keys()
        for k, v in e0[arm].items():
            np.testing.assert_array_equal(v, e1[arm][k], err_msg=f"{arm} {k}")


def _protocol(which, x, i, day, attended, measured, days=28):
    """COAG's doses for patient `i`, written out day by day from the visits that happened:
    the initiation dose (Gage, by hand), at a visit the rule of its *scheduled* day (the
    Lenzini revision on days 4 and 5 with the doses of days 2-4 given before that morning,
    0 for a day not yet dosed; the nomogram from day 7) from that morning's INR, applied
    from that day on; a missed visit decides nothing."""
    g = {k: float(v[i]) for k, v in x.items()}
    if which == "genotype_guided":
        start = gage_pg_by_hand(g["age"], g["bsa"], g["vkorc1_a"], g["cyp2c9_2"],
                                g["cyp2c9_3"], g["black"], g["amiodarone"], g["smoker"],
                                g["dvt_pe"])  # fmt: skip

        def revise(inr, d2, d3, d4):
            return lenzini_pg_by_hand(inr, d2, d3, d4, g["age"], g["bsa"], g["vkorc1_a"],
                                      g["cyp2c9_2"], g["cyp2c9_3"], g["black"], g["stroke"],
                                      g["diabetes"], g["amiodarone"], g["fluvastatin"])  # fmt: skip
    else:
        start = gage_clinical_by_hand(g["age"], g["bsa"], g["black"], g["amiodarone"],
                                      g["smoker"], g["dvt_pe"])  # fmt: skip

        def revise(inr, d2, d3, d4):
            return lenzini_clinical_by_hand(inr, d2, d3, d4, g["age"], g["bsa"], g["black"],
                                            g["stroke"], g["diabetes"], g["amiodarone"],
                                            g["fluvastatin"])  # fmt: skip

    scheduled = _coag.VISITS  # 1-based days
    held_on = {int(day[j]) + 1: j for j in range(len(scheduled)) if attended[j]}
    dose, hold, given, amounts = _round(start), 0, {2: 0.0, 3: 0.0, 4: 0.0}, []
    for d in range(1, days + 1):
        if d in held_on:  # a visit happened this morning
            j = held_on[d]
            inr = float(measured[j])
            if scheduled[j] in _coag.REVISION_DAYS:
                dose = _round(revise(inr, given[2], given[3], given[4]))
            elif scheduled[j] > _coag.REVISION_DAYS[-1] + 1:
                new, h = NOMOGRAM(jnp.asarray(inr), jnp.asarray(dose))
                dose, hold = _round(float(new)), int(h)
        amount = 0.0 if hold > 0 else dose
        hold = max(hold - 1, 0)
        if d in given:
            given[d] = amount
        amounts.append(amount)
    return np.array(amounts)


def test_revisions_at_slipped_and_missed_visits_follow_the_protocol(runs):
    _, courses = runs["moving"]
    pop = runs["pop"]
    cov = pop.covariates()
    cov["ANCESTRY"] = pop.to_dataframe()["ancestry"].to_numpy(dtype=object)
    x = _coag.algorithm_covariates(cov)
    for which in ("genotype_guided", "clinical"):
        c = courses[which]
        day, attended = c["visit_day"], c["attended"]
        for i in range(N):
            want = _protocol(which, x, i, day[i], attended[i], c["measured"][i])
            np.testing.assert_allclose(c["doses"][i], want, rtol=1e-12,
                                       err_msg=f"{which} patient {i}")  # fmt: skip
        # the draws cover the cases: revision visits slipped (day 4 to 3, 5 or 6) and
        # missed, and both revisions missed for some patients
        rev4, rev5 = attended[:, 1], attended[:, 2]
        assert len(np.unique(day[rev4, 1])) >= 3
        assert 0 < (~rev4).sum() and 0 < (~rev4 & ~rev5).sum()
        # measured on the day the visit happened (the level there, with assay noise)
        at = day.astype(int)
        level = np.take_along_axis(c["level"], at, axis=1)
        ratio = np.where(attended, c["measured"] / level, np.nan)
        assert np.nanmax(np.abs(np.log(ratio[:, 1:]))) < 0.2  # log-normal SD 0.0325
        assert np.isnan(c["measured"][~attended]).all()


def _own_window_ttr(t, y, a, b, low, high):
    """Rosendaal within [a, b] on one patient's measured (t, y), the part of the window
    covered by consecutive values, on a fine grid (NaN when nothing is covered)."""
    lo, hi = max(a, t[0]), min(b, t[-1])
    if len(t) < 2 or hi <= lo:
        return np.nan
    return _dense_ttr(t, y, lo, hi, low, high, n=200_001)


def test_window_ttr_on_the_measured_inrs_at_their_days(runs):
    _, courses = runs["moving"]
    e, _ = runs["moving"]
    endpoint = next(x for x in runs["trial"].endpoints if x.name == "ttr_window")
    a, b = endpoint.start_day - 1.0, endpoint.end_day - 1.0
    checked = 0
    for which in ("genotype_guided", "clinical"):
        c = courses[which]
        got = e[which]["ttr_window"]
        for i in range(N):
            m = c["attended"][i]
            want = _own_window_ttr(c["visit_day"][i][m], c["measured"][i][m], a, b, 2.0, 3.0)
            if np.isnan(want):
                assert np.isnan(got[i])
            else:
                assert got[i] == pytest.approx(want, abs=5e-3), (which, i)
                checked += 1
    assert checked > N


def test_window_ttr_with_visits_and_dropout_against_a_fine_grid():
    rng = np.random.default_rng(3)
    n, scheduled = 80, np.array([0.0, 3, 4, 6, 9, 13, 20, 27])
    slip = rng.integers(-2, 3, (n, scheduled.size))
    slip[:, 0] = 0
    day = scheduled[None, :] + slip
    for j in range(1, 8):  # strictly increasing, as Visits.draw makes them
        day[:, j] = np.maximum(day[:, j], day[:, j - 1] + 1)
    day = np.minimum(day, 28.0)
    attended = rng.uniform(size=day.shape) > 0.3
    attended[:, 0] = True
    attended[:4, 1:] = False  # only the baseline: nothing covered
    attended[4:8, -2:] = False  # the window's end not reached
    measured = np.where(attended, rng.uniform(1.0, 4.0, day.shape), np.nan)
    left = rng.choice([8.0, 15.0, np.inf], size=n)
    observed = attended & (day <= left[:, None])
    course = {
        "days": np.arange(29.0),
        "level": rng.uniform(1.0, 4.0, (n, 29)),
        "visit_days": scheduled,
        "visit_day": day,
        "attended": attended,
        "measured": measured,
        "observed": observed,
    }
    for start, end in ((5, 28), (4.5, 20.5)):
        got = _coag.WindowTimeInRange("w", "w", 2.0, 3.0, start, end)(course)["w"]
        for i in range(n):
            m = observed[i]
            want = _own_window_ttr(day[i][m], measured[i][m], start - 1, end - 1, 2.0, 3.0)
            if np.isnan(want):
                assert np.isnan(got[i]), (start, i)
            else:
                assert got[i] == pytest.approx(want, abs=5e-3), (start, end, i)
    assert np.isnan(got[:4]).all()


def test_coag_spec_takes_visits(tmp_path):
    from twins.app import trial_from_dict

    table = {"slip_sd_days": 1.0, "slip_max_days": 2, "p_missed": 0.1, "reference": "assumed"}
    trial, _ = trial_from_dict({"preset": "coag", "visits": table})
    assert trial.visits == twins.Visits(1.0, 2, 0.1, (1,), "assumed")
    assert [a.name for a in trial.arms] == ["genotype_guided", "clinical"]
    # the written-out example with a [visits] table: the same trial as the preset's
    text = (Path(__file__).parents[1] / "examples" / "coag.toml").read_text()
    path = tmp_path / "coag_visits.toml"
    path.write_text(text + "\n[visits]\nslip_sd_days = 1.0\nslip_max_days = 2\np_missed = 0.1\n"
                    'reference = "assumed"\n')  # fmt: skip
    from twins.app._spec import load_trial

    written, _ = load_trial(path)
    assert written.visits == trial.visits
    assert written.describe() == trial.describe()
