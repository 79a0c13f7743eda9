"""The virtual-trial engine: solver accuracy, dosing rules, endpoints, chunking and resume."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import pkpd
import twins
from twins import drugs
from twins.drugs import warfarin
from twins.trials._run import run_trial
from twins.trials._trial import population_rows, simulate_chunk

TIGHT = pkpd.ODESolver(rtol=1e-10, atol=1e-12, max_steps=200_000)


def _warfarin_params(age=70.0, cyp="*1/*1", vkorc1="AG"):
    cov = {"AGE": age, **{f"CYP2C9_{k}": 0.0 for k in ("12", "13", "22", "23", "33")}}
    key = {"*1/*2": "12", "*1/*3": "13", "*2/*2": "22", "*2/*3": "23", "*3/*3": "33"}.get(cyp)
    if key:
        cov[f"CYP2C9_{key}"] = 1.0
    cov["VKORC1_AG"] = float(vkorc1 == "AG")
    cov["VKORC1_AA"] = float(vkorc1 == "AA")
    p = warfarin.typical(warfarin.THETA, cov)
    p["F1"] = warfarin.S_FRACTION
    return {k: jnp.asarray(v, dtype=float) for k, v in p.items()}


@pytest.mark.parametrize(
    "dt, tol",
    [
        # dt = 2 h is what EU-PACT uses; the 1-h step shows the error shrinking (extended).
        pytest.param(1.0, 2e-3, marks=pytest.mark.extended),
        (2.0, 4e-3),
    ],
)
def test_fixed_step_matches_diffrax_on_warfarin_inr(dt, tol):
    model = warfarin.warfarin_model()
    params = _warfarin_params()
    regimen = pkpd.repeat(pkpd.oral(10.0), ii=24.0, addl=9)
    times = jnp.arange(0.0, 10 * 24 + 1, 3.0)
    ref = pkpd.simulate(model, params, regimen, times, solver=TIGHT)
    got = pkpd.simulate(model, params, regimen, times, solver=pkpd.FixedStep(dt))
    # The PK part is exact (matrix exponential), only the INR chain is stepped.
    np.testing.assert_allclose(got[:, 0], ref[:, 0], rtol=1e-9, atol=1e-12)
    assert float(jnp.max(jnp.abs(got[:, 1] - ref[:, 1]))) < tol
    assert float(ref[-1, 1]) > 1.5  # the check is not vacuous: INR has risen


@pytest.mark.extended
def test_fixed_step_rk4_on_a_nonlinear_model_converges():
    model = pkpd.OneCompartmentOralMM()
    params = {"KA": 1.0, "VMAX": 20.0, "KM": 2.0, "V": 30.0}
    params = {k: jnp.asarray(v) for k, v in params.items()}
    regimen = pkpd.repeat(pkpd.oral(200.0), ii=12.0, addl=3)
    times = jnp.arange(0.0, 49.0, 1.0)
    ref = pkpd.simulate(model, params, regimen, times, solver=TIGHT)
    errors = [
        float(jnp.max(jnp.abs(pkpd.simulate(model, params, regimen, times, solver=s) - ref)))
        for s in (pkpd.FixedStep(0.5), pkpd.FixedStep(0.25))
    ]
    assert errors[1] < 1e-4 * float(ref.max())
    # Fourth order: halving the step divides the error by about 16.
    assert errors[0] / errors[1] > 10


def test_fixed_step_rejects_a_bad_step():
    with pytest.raises(ValueError, match="dt > 0"):
        pkpd.FixedStep(0.0)


def test_rosendaal_time_in_range_by_hand():
    course = {
        "visit_days": np.array([0.0, 10.0, 20.0]),
        "measured": np.array([[1.0, 3.0, 2.5], [2.5, 2.5, 2.5], [4.0, 1.0, 1.0]]),
    }
    ttr = twins.TimeInRange("ttr", "TTR", 2.0, 3.0)(course)["ttr"]
    # 1) 1 -> 3 is in range half of the first 10 days, 3 -> 2.5 all of the next 10: 75%.
    # 2) always in range. 3) 4 -> 1 crosses the range in a third of the first segment.
    np.testing.assert_allclose(np.asarray(ttr), [75.0, 100.0, 100.0 / 6.0])


def test_any_above_and_time_to_range():
    course = {
        "visit_days": np.array([0.0, 3.0, 7.0, 14.0]),
        "measured": np.array([[1.0, 1.6, 2.4, 4.1], [1.0, 1.2, 1.4, 1.9]]),
    }
    above = twins.AnyAbove("ge4", "INR >= 4", 4.0)(course)["ge4"]
    assert np.asarray(above).tolist() == [True, False]
    ttt = twins.TimeToRange("ttt", "time", 2.0, 3.0)(course)
    assert np.asarray(ttt["ttt"]).tolist() == [7.0, 14.0]
    assert np.asarray(ttt["ttt_event"]).tolist() == [True, False]  # censored at day 14


def test_nomogram_bands():
    nomo = twins.Nomogram(bounds=(2.0, 3.0), change=(0.1, 0.0, -0.2), hold=(0, 0, 1))
    dose, hold = nomo(jnp.array([1.0, 2.0, 2.5, 3.0, 9.0]), jnp.full(5, 10.0))
    np.testing.assert_allclose(np.asarray(dose), [11.0, 10.0, 10.0, 8.0, 8.0])
    assert np.asarray(hold).tolist() == [0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="one per band"):
        twins.Nomogram(bounds=(2.0,), change=(0.1,), hold=(0, 0))


def _fixed(dose):
    def initial(cov):
        n = len(cov["ID"])
        return np.zeros((n, 0)), np.full(n, dose)

    return initial


def _small_trial(arms, days=12, **kw):
    return twins.Trial(
        name="t",
        drug=drugs.get("warfarin_hamberg2007"),
        population=twins.Population.sample,
        arms=tuple(arms),
        endpoints=(
            twins.TimeInRange("ttr", "TTR", 2.0, 3.0, "true"),
            twins.MeanDose("dose", "dose", 7),
        ),
        days=days,
        **kw,
    )


@pytest.mark.extended  # its two halves: the FixedStep and infused-drug tests above/below
def test_fixed_dose_arm_course_equals_pkpd_simulate():
    arm = twins.DosingArm("fixed", "5 mg", "5 mg daily", _fixed(5.0), visits=(1, 5))
    trial = _small_trial([arm], days=8, solver=pkpd.FixedStep(1.0))
    pop = population_rows(trial, 0, 2, key=jax.random.key(1))
    _, courses = simulate_chunk(trial, pop, 0, key=jax.random.key(2))
    course = courses["fixed"]
    model = trial.drug.model.model
    regimen = pkpd.repeat(pkpd.oral(5.0), ii=24.0, addl=7)
    times = jnp.arange(9.0) * 24.0

    @jax.jit
    def both(params):
        ref = pkpd.simulate(model, params, regimen, times, solver=TIGHT)[:, 1]
        same = pkpd.simulate(model, params, regimen, times, solver=pkpd.FixedStep(1.0))[:, 1]
        return ref, same

    for i in range(2):
        ref, same_solver = both({k: jnp.asarray(v[i]) for k, v in course["params"].items()})
        np.testing.assert_allclose(course["level"][i], same_solver, rtol=1e-10)
        np.testing.assert_allclose(course["level"][i], ref, atol=1e-3)
    assert np.all(course["doses"] == 5.0)


def test_infused_drug_course_equals_pkpd_simulate():
    drug = drugs.get("vancomycin_goti2018")
    arm = twins.DosingArm("fixed", "1 g", "1 g q12h", _fixed(1000.0), visits=(1,))
    trial = twins.Trial(
        name="vanco",
        drug=drug,
        population=twins.Population.sample,
        arms=(arm,),
        endpoints=(twins.MeanDose("dose", "dose", 2),),
        days=6,
        interval=12.0,
    )
    pop = population_rows(trial, 0, 2, key=jax.random.key(1))
    endpoints, courses = simulate_chunk(trial, pop, 0, key=jax.random.key(2))
    course = courses["fixed"]
    dur = drug.dosing.duration
    regimen = pkpd.repeat(pkpd.infusion(1000.0, duration=dur, cmt=drug.dosing.cmt), ii=12.0, addl=5)
    times = jnp.arange(7.0) * 12.0
    for i in range(2):
        params = {k: jnp.asarray(v[i]) for k, v in course["params"].items()}
        ref = pkpd.simulate(drug.model.model, params, regimen, times)
        np.testing.assert_allclose(course["level"][i], ref, rtol=1e-10, atol=1e-12)
    assert float(course["level"][0, -1]) > 1.0
    # 1 g every 12 h is 14 g per week, whatever the interval.
    np.testing.assert_allclose(endpoints["fixed"]["dose"], 14_000.0)


def _dense_reference(drug, params, regimen, t0, t1, output=None):
    """AUC (trapezoid on a 0.005-h grid) and maximum of the output over [t0, t1]."""
    times = jnp.linspace(t0, t1, round((t1 - t0) / 0.005) + 1)
    y = pkpd.simulate(drug.model.model, params, regimen, times, solver=TIGHT)
    y = np.asarray(y)
    if y.ndim == 2:
        y = y[:, drug.model.output if output is None else output]
    return float(np.trapezoid(y, np.asarray(times))), float(y.max()), y


def test_exposure_endpoints_of_an_infused_drug_match_dense_simulation():
    drug = drugs.get("vancomycin_goti2018")
    arm = twins.DosingArm("fixed", "1 g", "1 g q12h", _fixed(1000.0), visits=(1,))
    trial = twins.Trial(
        name="vanco",
        drug=drug,
        population=twins.Population.sample,
        arms=(arm,),
        endpoints=(
            twins.AUC("auc24", "AUC24"),
            twins.AUC("auc_day1", "AUC 0-24", end_h=24.0),
            twins.Cmax("cmax", "Cmax"),
            twins.Ctrough("trough48", "trough at 48 h", end_h=48.0),
            twins.TargetAttainment(
                "pta", "AUC24 400-600", metric=twins.AUCOver(24), low=400.0, high=600.0
            ),
            twins.TargetAttainment("pta_peak", "Cmax <= 40", metric=twins.Peak(), high=40.0),
            twins.TargetAttainment(
                "pta_trough",
                "trough at 48 h 10-20",
                metric=twins.Trough(),
                low=10.0,
                high=20.0,
                end_h=48.0,
            ),
        ),
        days=8,
        interval=12.0,
    )
    pop = population_rows(trial, 0, 3, key=jax.random.key(1))
    endpoints, courses = simulate_chunk(trial, pop, 0, key=jax.random.key(2))
    got = endpoints["fixed"]
    dur = drug.dosing.duration
    regimen = pkpd.repeat(pkpd.infusion(1000.0, duration=dur, cmt=drug.dosing.cmt), ii=12.0, addl=7)
    for i in range(3):
        params = {k: jnp.asarray(v[i]) for k, v in courses["fixed"]["params"].items()}
        auc_last, cmax_last, _ = _dense_reference(drug, params, regimen, 72.0, 96.0)
        auc_first, _, y_first = _dense_reference(drug, params, regimen, 0.0, 24.0)
        np.testing.assert_allclose(got["auc24"][i], auc_last, rtol=2e-5)
        np.testing.assert_allclose(got["auc_day1"][i], auc_first, rtol=2e-5)
        # Cmax of an infusion is at its end, a point of the grid: exact.
        np.testing.assert_allclose(got["cmax"][i], cmax_last, rtol=1e-6)
        np.testing.assert_allclose(got["trough48"][i], courses["fixed"]["level"][i, 4])
        assert got["pta"][i] == (400.0 <= got["auc24"][i] <= 600.0)
        assert got["pta_peak"][i] == (got["cmax"][i] <= 40.0)
        assert got["pta_trough"][i] == (10.0 <= got["trough48"][i] <= 20.0)
        assert auc_last > auc_first > 0.0  # accumulation: the comparison is not vacuous
        assert y_first.max() > y_first[-1]


# Extended: the infused-drug exposure test in this file checks the same endpoint code in make test.
@pytest.mark.extended
def test_exposure_endpoints_of_an_oral_drug_match_dense_simulation():
    drug = drugs.get("warfarin_hamberg2007")
    trial = _small_trial([twins.DosingArm("fixed", "5 mg", "", _fixed(5.0), visits=(1,))], days=6)
    trial = dataclasses.replace(
        trial,
        output=0,  # the S-warfarin concentration
        endpoints=(twins.AUC("auc", "AUC", end_h=48.0, hours=48.0), twins.Cmax("cmax", "Cmax")),
        exposure_steps=48,
    )
    pop = population_rows(trial, 0, 2, key=jax.random.key(3))
    endpoints, courses = simulate_chunk(trial, pop, 0, key=jax.random.key(4))
    regimen = pkpd.repeat(pkpd.oral(5.0), ii=24.0, addl=5)
    for i in range(2):
        params = {k: jnp.asarray(v[i]) for k, v in courses["fixed"]["params"].items()}
        auc, _, _ = _dense_reference(drug, params, regimen, 0.0, 48.0, output=0)
        # Simpson on 0.5-h steps after an oral dose (fast absorption): within 3e-4.
        np.testing.assert_allclose(endpoints["fixed"]["auc"][i], auc, rtol=3e-4)
        # An oral Cmax is taken on the grid (here every 0.5 h): at most slightly low.
        _, cmax_last, _ = _dense_reference(drug, params, regimen, 120.0, 144.0, output=0)
        assert cmax_last * (1 - 2e-3) <= endpoints["fixed"]["cmax"][i] <= cmax_last * (1 + 1e-9)


def test_exposure_endpoint_windows_are_checked():
    trial = _small_trial([twins.DosingArm("fixed", "5 mg", "", _fixed(5.0), visits=(1,))], days=4)
    for endpoint, message in [
        (twins.AUC("auc", "AUC", end_h=30.0), "dose times"),
        (twins.AUC("auc", "AUC", end_h=240.0), "outside the trial"),
        (twins.Ctrough("c", "c", end_h=13.0), "not a dose time"),
    ]:
        with pytest.raises(ValueError, match=message):
            dataclasses.replace(trial, endpoints=(endpoint,))
    with pytest.raises(ValueError, match="give a target"):
        twins.TargetAttainment("p", "p")
    with pytest.raises(TypeError, match=r"AUCOver\(hours\), Peak\(\) or Trough\(\)"):
        twins.TargetAttainment("p", "p", metric=24.0, low=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="the AUC's window is the metric's hours"):
        twins.TargetAttainment("p", "p", metric=twins.AUCOver(24), hours=12.0, low=1.0)
    with pytest.raises(ValueError, match="hours does not apply"):
        twins.TargetAttainment("p", "p", metric=twins.Trough(), hours=12.0, low=1.0)


def test_target_attainment_names_of_earlier_releases():
    """`metric="auc"` (with `hours`), `"cmax"`, `"trough"` still work, warned, and are the
    same endpoint, with the same description (so a spec's hash, and resuming, is unchanged)."""
    cases = [
        (dict(metric="auc", hours=12.0), dict(metric=twins.AUCOver(12))),
        (dict(metric="auc"), dict(metric=twins.AUCOver(24))),
        (dict(metric="cmax", hours=12.0), dict(metric=twins.Peak(), hours=12.0)),
        (dict(metric="trough"), dict(metric=twins.Trough())),
    ]
    for old_kw, new_kw in cases:
        with pytest.warns(DeprecationWarning, match="TargetAttainment.metric=.* is deprecated"):
            old = twins.TargetAttainment("p", "p", low=1.0, **old_kw)
        new = twins.TargetAttainment("p", "p", low=1.0, **new_kw)
        assert old.metric == new.metric and old.describe() == new.describe()
        assert new.describe()["metric"] == old_kw["metric"]
        assert new.describe()["hours"] == old_kw.get("hours", 24.0)
    with pytest.raises(ValueError, match=r"metric must be a twins\.drugs metric"):
        twins.TargetAttainment("p", "p", metric="AUC24", low=1.0)  # type: ignore[arg-type]


def test_nomogram_arm_changes_and_withholds_doses():
    # Any INR at the day-3 visit falls in the top band: -50% and two doses withheld.
    rule = twins.Nomogram(bounds=(0.0,), change=(0.0, -0.5), hold=(0, 2))
    arm = twins.DosingArm(
        "titrated", "t", "", _fixed(6.0), visits=(1, 3), rules=(((3,), rule),), dose_step=0.5
    )
    trial = _small_trial([arm], days=8)
    pop = population_rows(trial, 0, 2, key=jax.random.key(1))
    _, courses = simulate_chunk(trial, pop, 0, key=jax.random.key(2))
    # Days 1-2: 6 mg; day 3 (visit): withheld; day 4: withheld; then 3 mg.
    expected = [6.0, 6.0, 0.0, 0.0, 3.0, 3.0, 3.0, 3.0]
    np.testing.assert_array_equal(courses["titrated"]["doses"], np.tile(expected, (2, 1)))


def test_arm_and_trial_errors_name_the_problem():
    with pytest.raises(ValueError, match="not visit days"):
        twins.DosingArm("a", "a", "", _fixed(5.0), visits=(1, 4), rules=(((5,), None),))
    with pytest.raises(ValueError, match="increasing days"):
        twins.DosingArm("a", "a", "", _fixed(5.0), visits=(4, 1))
    arm = twins.DosingArm("a", "a", "", _fixed(5.0), visits=(1, 30))
    with pytest.raises(ValueError, match=r"visits on days \[30\]"):
        _small_trial([arm], days=12)
    ok = twins.DosingArm("a", "a", "", _fixed(5.0), visits=(1,))
    with pytest.raises(ValueError, match="reference_arm 'b'"):
        _small_trial([ok], reference_arm="b")
    bad = twins.DosingArm("bad", "b", "", _fixed(-1.0), visits=(1,))
    trial = _small_trial([bad])
    pop = population_rows(trial, 0, 2, key=jax.random.key(1))
    with pytest.raises(ValueError, match=r"maintenance dose of patient V0000001 is -1.0"):
        simulate_chunk(trial, pop, 0, key=jax.random.key(2))


def _read(folder):
    parts = sorted((folder / "patients").glob("part-*.parquet"))
    frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    return frame.sort_values(["arm", "patient"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def eupact_short():
    return dataclasses.replace(twins.eupact_trial(days=20), name="eupact_short")


def test_results_do_not_depend_on_chunking_and_resume_loses_nothing(tmp_path, eupact_short):
    quiet = {"progress": False, "summary": False}
    a = run_trial(eupact_short, tmp_path / "a", n=30, chunk_size=10, **quiet)
    b = run_trial(eupact_short, tmp_path / "b", n=30, chunk_size=30, **quiet)
    fa, fb = _read(a), _read(b)
    assert len(fa) == 60 and fa["patient"].nunique() == 30
    pd.testing.assert_frame_equal(fa, fb)
    # Interrupt: lose a part and leave a half-written temporary file; run again.
    (a / "patients" / "part-00001.parquet").unlink()
    (a / "patients" / "part-00002.parquet.tmp").write_bytes(b"partial")
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["complete"]
    with pytest.warns(twins.trials._run.ResumeWarning, match=r"chunk\(s\) \[1\]"):
        run_trial(eupact_short, a, n=30, chunk_size=10, progress=False)
    pd.testing.assert_frame_equal(_read(a), fa)
    assert not list((a / "patients").glob("*.tmp"))
    assert json.loads((a / "manifest.json").read_text())["chunks_done"] == [0, 1, 2]
    # A folder holding another run is refused.
    with pytest.raises(ValueError, match="another trial or another N, seed"):
        run_trial(eupact_short, a, n=30, chunk_size=10, seed=1, **quiet)
    # The summary was written; the report is the app's (run_trial writes no HTML).
    summary = json.loads((a / "summary.json").read_text())
    assert {"genotype_guided", "control", "published", "differences"} <= set(summary)
    assert not (a / "report.html").exists()
    assert twins.write_report(a).stat().st_size > 10_000
    # The deprecated report= flag still works, with a warning.
    with pytest.warns(DeprecationWarning, match=r"report=\.\.\.\) is deprecated"):
        run_trial(eupact_short, a, n=30, chunk_size=10, progress=False, report=False)


def test_same_seed_same_numbers_other_seed_other_numbers(eupact_short):
    # Same chunk shape (10) as the run above: the compiled simulation is reused.
    pop = population_rows(eupact_short, 0, 10, key=jax.random.key(0))
    e1, _ = simulate_chunk(eupact_short, pop, 0, key=jax.random.key(5))
    e2, _ = simulate_chunk(eupact_short, pop, 0, key=jax.random.key(5))
    e3, _ = simulate_chunk(eupact_short, pop, 0, key=jax.random.key(6))
    np.testing.assert_array_equal(e1["control"]["ttr"], e2["control"]["ttr"])
    assert not np.array_equal(e1["control"]["ttr"], e3["control"]["ttr"])


def test_population_rows_are_the_same_whatever_the_slice(eupact_short):
    key = jax.random.key(3)
    whole = population_rows(eupact_short, 0, 1200, key=key).to_dataframe()
    piece = population_rows(eupact_short, 990, 1010, key=key).to_dataframe()
    pd.testing.assert_frame_equal(
        whole.iloc[990:1010].reset_index(drop=True), piece.reset_index(drop=True)
    )


def test_twins_demo_command_writes_summary_and_report(tmp_path):
    from typer.testing import CliRunner

    from twins.app._cli import app

    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--n", "40", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    for arm in ("genotype_guided", "control"):
        assert summary[arm]["ttr"]["n"] == 40
        assert 0.0 <= summary[arm]["ttr"]["estimate"] <= 100.0
    assert summary["published"]["genotype_guided"]["ttr"] == 67.4
    assert summary["published"]["control"]["ttr"] == 60.3
    html = (out / "report.html").read_text()
    assert "genotype_guided" in html and "data:image/png;base64," in html
    assert "Time in INR 2.0-3.0" in result.output


@pytest.mark.extended  # about 3 min: the warfarin twin's update and recommend compile (ODE)
def test_twin_arm_doses_follow_the_twins_own_recommendation():
    """A TwinArm re-doses from DigitalTwin.recommend after each measured INR: the doses
    equal those of a twin rebuilt by hand from the same history and measured values."""
    from twins.trials._twin_arm import _regimen

    drug = drugs.get("warfarin_hamberg2007")
    start = _fixed(5.0)
    twin_arm = twins.TwinArm(
        "twin", "twin", "", start, visits=(1, 4, 7), recommend_on=(4,), n_draws=100
    )
    control = twins.DosingArm("fixed", "5 mg", "", start, visits=(1, 4, 7))
    trial = _small_trial([control, twin_arm], days=8)
    pop = population_rows(trial, 0, 2, key=jax.random.key(5))
    _, courses = simulate_chunk(trial, pop, 0, key=jax.random.key(6))
    fixed, guided = courses["fixed"], courses["twin"]
    # Same patients, same assay noise: identical until the twin's first decision (day 4).
    np.testing.assert_allclose(guided["measured"][:, :2], fixed["measured"][:, :2], rtol=1e-9)
    np.testing.assert_array_equal(guided["doses"][:, :3], 5.0)
    cov = pop.covariates()
    noise_keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.split(jax.random.key(6))[1], i))(
        jnp.arange(2)
    )
    for i in range(2):
        patient = {k: v[i] for k, v in cov.items()}
        twin = twins.DigitalTwin(drug, patient)
        twin.give(_regimen(drug, guided["doses"][i, :3], 24.0, 1.0))
        twin.update(times=[0.0, 72.0], values=guided["measured"][i, :2].tolist())
        rec = twin.recommend(interval=24.0, start=72.0, key=jax.random.fold_in(noise_keys[i], 1001),
                             n_draws=100)  # fmt: skip
        dose = max(round(rec.dose / 0.5), 1) * 0.5
        np.testing.assert_array_equal(guided["doses"][i, 3:], dose)
        # The course is the true model under the doses given.
        params = {k: jnp.asarray(v[i]) for k, v in guided["params"].items()}
        y = pkpd.simulate(
            drug.model.model, params, _regimen(drug, guided["doses"][i], 24.0, 1.0),
            jnp.arange(9, dtype=float) * 24.0, solver=trial.solver,
        )  # fmt: skip
        np.testing.assert_allclose(guided["level"][i], np.asarray(y)[:, 1], rtol=1e-9)
    assert not np.array_equal(guided["doses"], fixed["doses"])  # the twin changed something


# Extended: a device mesh of the whole trial;
# tests/test_cohort.py::test_mesh_matches_unsharded checks sharding in make test.
@pytest.mark.extended
def test_sharded_run_equals_the_plain_run(tmp_path):
    """The shard_map path (patients split over a device mesh) gives the same patients as
    the plain jit. Here the mesh has the one local device: multi-device meshes need
    several accelerators, which this machine does not have."""
    drug = drugs.get("vancomycin_goti2018")
    arm = twins.DosingArm("fixed", "1 g", "1 g q12h", _fixed(1000.0), visits=(1, 3))
    trial = twins.Trial(
        name="vanco_mesh",
        drug=drug,
        population=twins.Population.sample,
        arms=(arm,),
        endpoints=(twins.FinalLevel("trough", "trough"), twins.AUC("auc", "AUC", hours=12.0)),
        days=4,
        interval=12.0,
    )
    mesh = jax.make_mesh((len(jax.devices()),), ("patients",))
    kw = {"n": 12, "seed": 2, "chunk_size": 6 * mesh.size, "progress": False, "summary": False}
    run_trial(trial, tmp_path / "plain", **kw)
    run_trial(trial, tmp_path / "sharded", mesh=mesh, **kw)
    plain = pd.read_parquet(tmp_path / "plain" / "patients")
    sharded = pd.read_parquet(tmp_path / "sharded" / "patients")
    assert len(plain) == 12
    pd.testing.assert_frame_equal(plain, sharded, check_exact=False, rtol=1e-12)


def test_subgroups_are_types_and_names(tmp_path):
    import dataclasses as dc

    from twins.trials import AgeGroup, CovariateLevels, Subgroup, subgroup

    @dc.dataclass(frozen=True)
    class Heavy(Subgroup):
        name: str = "heavy"

        def needs(self):
            return ("WT",)

        def levels(self, frame, cov):
            return np.where(np.asarray(cov["WT"]) >= 90, "heavy", "not heavy")

    arm = twins.DosingArm("fixed", "5 mg", "", _fixed(5.0), visits=(1,))
    trial = _small_trial([arm], days=3, subgroups=("age_group", CovariateLevels("CYP2C9"), Heavy()))
    assert trial.subgroups[0] == AgeGroup() == subgroup("age_group")
    assert trial.subgroup_names == ("age_group", "CYP2C9", "heavy")
    out = run_trial(trial, tmp_path / "run", n=40, chunk_size=40, progress=False, summary=False)
    frame = _read(out)
    assert set(frame["heavy"]) <= {"heavy", "not heavy"}
    np.testing.assert_array_equal(frame["heavy"] == "heavy", frame["WT"].to_numpy() >= 90)
    assert set(frame["age_group"]) <= {"<65", "65-75", ">75"}
    with pytest.raises(TypeError, match="expected a subgroup"):
        _small_trial([arm], subgroups=(3,))
    with pytest.raises(ValueError, match="unique"):
        _small_trial([arm], subgroups=("sex", "sex"))

    @dc.dataclass(frozen=True)
    class NeedsLab(Heavy):
        name: str = "lab"

        def needs(self):
            return ("NO_SUCH_LAB",)

    with pytest.raises(
        ValueError, match=r"subgroup 'lab' needs the covariate\(s\) \['NO_SUCH_LAB'\]"
    ):
        run_trial(dataclasses.replace(trial, subgroups=(NeedsLab(),)), tmp_path / "bad", n=4,
                  chunk_size=4, progress=False, summary=False)  # fmt: skip
