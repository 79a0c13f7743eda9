"""twins.t1d dosing policies: the closed-loop cohort simulation, its gradients, the
optimisation, the held-out split, the twin-guided arm and T1D trial specs."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pkpd
from twins import t1d
from twins.app import read_t1d_spec, t1d_trial_from_dict

MODEL = pkpd.UVAPadova()
TIGHT = pkpd.ODESolver(rtol=1e-9, atol=1e-9)


def _patients(*names):
    table = t1d.load_patients()
    return [table[n] for n in names]


# --- meal plans, splits, smooth metrics (no simulation) ------------------------------


def test_meal_plan_is_checked():
    with pytest.raises(t1d.PlanError, match=r"MealPlan.times: expected increasing"):
        t1d.MealPlan(times=(12.0, 7.0), carbs=np.ones((1, 2)))
    with pytest.raises(t1d.PlanError, match=r"MealPlan.carbs\[0, 1, 0\]: expected carbohydrate"):
        t1d.MealPlan(times=(7.0,), carbs=np.array([[[10.0], [-1.0]]]))
    with pytest.raises(t1d.PlanError, match=r"expected shape \(patients, days, 2\)"):
        t1d.MealPlan(times=(7.0, 12.0), carbs=np.ones((2, 3)))
    plan = t1d.random_meals(4, 3, seed=5)
    assert plan.carbs.shape == (4, 3, 3) and plan.days == 3 and plan.n_meals == 9
    np.testing.assert_array_equal(plan.carbs, t1d.random_meals(4, 3, seed=5).carbs)
    assert plan.carbs.min() >= 10.0 and plan.carbs.max() <= 120.0
    # a meal off the 5-min grid, and a meal too large to eat before the next one
    pats = _patients("adult#001")
    off = t1d.MealPlan(times=(7.01,), carbs=np.ones((1, 1)))
    with pytest.raises(t1d.PlanError, match="on the sensor's 5-min grid"):
        t1d.simulate_policy(t1d.BasalBolus(), None, pats, off, key=jax.random.key(0))
    big = t1d.MealPlan(times=(7.0, 7.5), carbs=np.full((1, 2), 200.0))
    with pytest.raises(t1d.PlanError, match="longer than the 5 before the next meal"):
        t1d.simulate_policy(t1d.BasalBolus(), None, pats, big, key=jax.random.key(0))


def test_split_is_stratified_by_age_group():
    patients = t1d.load_patients()
    train, test = t1d.split_patients(patients, test_per_group=3, seed=0)
    assert len(train) == 21 and len(test) == 9
    assert not {p.name for p in train} & {p.name for p in test}
    for group in ("adolescent", "adult", "child"):
        assert sum(p.group == group for p in test) == 3
    again = t1d.split_patients(patients, test_per_group=3, seed=0)
    assert [p.name for p in again[1]] == [p.name for p in test]
    assert [p.name for p in t1d.split_patients(patients, seed=1)[1]] != [p.name for p in test]
    with pytest.raises(ValueError, match="cannot hold out 10"):
        t1d.split_patients(patients, test_per_group=10)


def test_smooth_metrics_tend_to_the_counted_ones():
    g = jnp.asarray(np.random.default_rng(0).uniform(30.0, 300.0, 2000))
    counted = t1d.cgm_metrics(g)
    for scale, tol in ((5.0, 2.0), (0.5, 0.2), (0.01, 0.06)):
        s = t1d.smooth_metrics(g, scale)
        assert abs(float(s.time_in_range - counted.time_in_range)) < tol
        assert abs(float(s.time_below_70 - counted.time_below_70)) < tol
        assert abs(float(s.time_below_54 - counted.time_below_54)) < tol
    # the objective: smooth TIR - 4 smooth TBR70, averaged over patients
    two = jnp.stack([g, g + 20.0])
    m = t1d.smooth_metrics(two)
    expected = float(jnp.mean(m.time_in_range - 4.0 * m.time_below_70))
    assert float(t1d.objective(two)) == pytest.approx(expected, rel=1e-14)


def test_population_sampled_around_the_patients():
    base = _patients("adult#001", "child#002")
    sampled, nominal = t1d.sample_population(base, 3, seed=1, sd=0.3)
    assert [p.name for p in sampled][:3] == ["adult#001~01", "adult#001~02", "adult#001~03"]
    assert [q.name for q in nominal] == ["adult#001"] * 3 + ["child#002"] * 3
    for p, q in zip(sampled, nominal, strict=True):
        assert p.carb_ratio == q.carb_ratio and p.u2ss == q.u2ss
        assert {k for k in p.params if p.params[k] != q.params[k]} <= {"Vmx"}
    ratios = [p.params["Vmx"] / q.params["Vmx"] for p, q in zip(sampled, nominal, strict=True)]
    assert len(set(ratios)) == 6 and all(0.3 < r < 3.0 for r in ratios)


# --- the closed loop against the open-loop engine ---------------------------------------


@pytest.mark.slow
def test_closed_loop_equals_the_regimen_simulated_at_once():
    # Boluses without the correction term do not depend on the CGM: the closed loop must
    # then give what pkpd.simulate gives for the same doses as one regimen.
    pats = _patients("adult#001", "child#002")
    plan = t1d.MealPlan(times=(7.0, 12.0, 18.5), carbs=np.array([[45.0, 70.0, 80.0]]))
    policy = t1d.BasalBolus(correction=False)
    course = eqx.filter_jit(
        lambda: t1d.simulate_policy(policy, None, pats, plan, key=jax.random.key(0), solver=TIGHT)
    )()
    assert course.bg.shape == (2, 288) and course.boluses.shape == (2, 3)
    for i, p in enumerate(pats):
        reg = t1d.basal_insulin(p.basal, stop=24.0)
        for t, c in zip(plan.times, plan.carbs[0, 0], strict=True):
            reg = reg + t1d.meal(float(c), time=t) + t1d.insulin_bolus(c / p.carb_ratio, time=t)
        np.testing.assert_allclose(np.asarray(course.boluses[i]), plan.carbs[0, 0] / p.carb_ratio)
        y = np.asarray(
            pkpd.simulate(MODEL, dict(p.params), reg, np.asarray(course.times), solver=TIGHT)
        )
        np.testing.assert_allclose(np.asarray(course.bg[i]), y[:, 0], rtol=0, atol=1e-5)
        np.testing.assert_allclose(np.asarray(course.gsub[i]), y[:, 1], rtol=0, atol=1e-5)
    # the readings: Gsub plus the sensor's noise (common random numbers: fold_in(key, i))
    noise = t1d.cohort_noise(t1d.SENSOR, 2, 288, key=jax.random.key(0))
    np.testing.assert_allclose(
        np.asarray(course.cgm), np.clip(np.asarray(course.gsub + noise), 39.0, 400.0)
    )


# --- gradients and the optimisation -------------------------------------------------------


# Extended: compiling the reverse-mode gradient of the closed loop takes about 1-2 min of one
# core (the forward simulation is covered above).
@pytest.mark.extended
def test_gradient_matches_central_differences_and_optimisation_improves():
    pats = _patients("adult#001", "child#002")
    plan = t1d.random_meals(2, 1, seed=3)
    policy = t1d.ParametrisedPolicy()
    key = jax.random.key(4)

    def endpoint(theta):
        course = t1d.simulate_policy(policy, theta, pats, plan, key=key, solver=TIGHT)
        return t1d.objective(course.cgm)

    value_and_grad = eqx.filter_jit(jax.value_and_grad(endpoint))
    value = eqx.filter_jit(endpoint)
    theta = {
        "log_meal": jnp.array([0.1, -0.2, 0.05]),
        "log_correction": jnp.array(0.2),
        "log_basal": jnp.array(-0.05),
    }
    _, grad = value_and_grad(theta)
    h = 1e-4
    leaves, tree = jax.tree.flatten(theta)
    flat_grad = jax.tree.leaves(grad)
    for k, leaf in enumerate(leaves):
        for j in np.ndindex(np.shape(leaf)):
            up = [x.at[j].add(h) if i == k else x for i, x in enumerate(leaves)]
            dn = [x.at[j].add(-h) if i == k else x for i, x in enumerate(leaves)]
            fd = (value(jax.tree.unflatten(tree, up)) - value(jax.tree.unflatten(tree, dn))) / (
                2 * h
            )
            g = flat_grad[k][j]
            assert abs(float(g) - float(fd)) <= 1e-4 * max(1.0, abs(float(fd))), (k, j, g, fd)
    # the optimisation improves the training objective
    fit = t1d.optimise_policy(policy, pats, plan, key=key, steps=4, learning_rate=0.05)
    assert fit.history.shape == (5,)
    assert fit.history[-1] > fit.history[0] + 1.0


# --- the twin-guided arm ------------------------------------------------------------------


# Extended: the twins' MAP (calibration.individual_map through the UVA/Padova model), their
# replay and the candidate days compile for a few minutes.
@pytest.mark.extended
def test_twin_guided_learns_the_sensitivity():
    base = _patients("adult#001", "adolescent#003")
    # one patient twice as sensitive to insulin as nominal, one half
    sampled = []
    for p, f in zip(base, (2.0, 0.5), strict=True):
        params = dict(p.params, Vmx=p.params["Vmx"] * f)
        sampled.append(t1d.VirtualPatient(**{**p.__dict__, "params": params}))
    plan = t1d.random_meals(2, 3, seed=2)
    key = jax.random.key(1)
    res = t1d.twin_guided(sampled, base, plan, key=key)
    assert res.factors.shape == (2, 3) and res.eta.shape == (2, 2)
    np.testing.assert_array_equal(res.factors[:, 0], 1.0)
    # the posterior moves towards log 2 and log 1/2 and narrows below the prior's 0.3
    assert res.eta[0, -1] > 0.3 and res.eta[1, -1] < -0.3
    assert np.all(res.sd[:, -1] < 0.3)
    # a more sensitive patient gets less insulin per gram, a less sensitive one more
    assert res.factors[0, -1] < 1.0 < res.factors[1, -1]
    # day 1 is basal-bolus's day 1 exactly (same patients, meals and noise)
    bb = t1d.simulate_policy(t1d.BasalBolus(), None, sampled, plan, key=key)
    np.testing.assert_allclose(
        np.asarray(res.course.cgm[:, :288]), np.asarray(bb.cgm[:, :288]), atol=1e-3
    )


# --- trial specs --------------------------------------------------------------------------


def _spec(**changes):
    spec = {
        "name": "t1d_small",
        "domain": "t1d",
        "patients": {"names": ["adult#001", "child#002"]},
        "meals": {"days": 2},
        "run_in_days": 0,
        "arms": [
            {"name": "bb", "policy": "basal_bolus"},
            {"name": "scaled", "policy": "parametrised", "theta": {"log_meal": [-0.2, -0.2, -0.2]}},
        ],
    }
    spec.update(changes)
    return spec


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"domain": "pk"}, r"domain: expected one of \['t1d'\]"),
        ({"patients": {"names": ["adult#011"]}}, r"patients.names\[0\]: no patient 'adult#011'"),
        ({"patients": {"groups": ["elderly"]}}, r"patients.groups\[0\]: expected one of"),
        ({"meals": {"times": [7.0, 12.0], "mean": [40.0]}}, "expected as many times, means"),
        ({"meals": {"days": 0}}, r"meals.days: expected an integer >= 1"),
        ({"arms": [{"name": "x", "policy": "magic"}]}, r"arms\[0\].policy: expected one of"),
        (
            {"arms": [{"name": "x", "policy": "basal_bolus", "prior_sd": 0.2}]},
            r"arms\[0\].prior_sd: only for policy twin_guided",
        ),
        (
            {"arms": [{"name": "x", "policy": "parametrised", "theta": {"log_meal": [0.0]}}]},
            r"arms\[0\].theta.log_meal: expected one value per meal \(3\)",
        ),
        (
            {"arms": [{"name": "x", "policy": "parametrised", "optimise": {"stepz": 3}}]},
            r"arms\[0\].optimise.stepz: unknown key \(did you mean 'steps'\?\)",
        ),
        ({"reference_arm": "nope"}, r"reference_arm: expected one of \['bb', 'scaled'\]"),
        ({"run": {"out": "/tmp/x"}}, "run.out: expected a folder relative to the spec's folder"),
        ({"run_in_days": 2}, r"run_in_days must be in \[0, days\)"),
    ],
)
def test_spec_errors_name_the_entry(change, message):
    with pytest.raises(ValueError, match=message):
        t1d_trial_from_dict(_spec(**change), source="spec.toml")


def test_spec_reads_the_example(tmp_path):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "t1d_insulin.toml"
    trial, out = read_t1d_spec(path)
    assert trial.reference == "basal_bolus"
    assert [a.policy for a in trial.arms] == ["basal_bolus", "twin_guided", "parametrised"]
    assert len(trial.cohort()[0]) == 30 * (1 + trial.sampled_per_patient)
    assert out is not None and out.is_relative_to(path.parent)
    trial, _ = t1d_trial_from_dict(_spec(), base_dir=tmp_path)
    assert [a.name for a in trial.arms] == ["bb", "scaled"]


# Extended: two arms simulated (compilation about a minute) and the report written.
@pytest.mark.extended
def test_run_trial_writes_the_folder_and_report(tmp_path):
    trial, _ = t1d_trial_from_dict(_spec(), base_dir=tmp_path)
    result = t1d.run_trial(trial, tmp_path / "out")
    for name in ("patients.csv", "summary.json", "spec.json", "bands.csv", "report.html"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    frame = result.patients
    assert len(frame) == 4 and set(frame["arm"]) == {"bb", "scaled"}
    # smaller meal boluses: less time below 70, higher mean glucose
    diff = result.summary["differences"]["scaled"]
    assert diff["mean_glucose"]["mean"] > 0
    assert diff["time_below_70"]["mean"] <= 0
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Glucose profile" in html and "data:image/png;base64" in html


# Extended: calibration.individual_map through pkpd.simulate of the traced regimen takes a few
# minutes of one core here (every dose and reading is a timeline entry with its own solve).
@pytest.mark.extended
def test_twin_map_agrees_with_calibration_individual_map():
    import calibration

    base = _patients("adult#001", "child#002")
    plan = t1d.random_meals(2, 2, seed=1)
    boluses = plan.carbs.reshape(2, -1) / np.array([p.carb_ratio for p in base])[:, None]
    basal = np.array([p.basal for p in base])
    # readings that the nominal patients would not give: the sensitivity must move
    cgm = np.full((2, plan.days * 288), 150.0)
    mode, sd = t1d.twin_map(base, plan, boluses, basal, cgm, upto_day=1, every=6)
    data = t1d.twin_dataset(base, plan, boluses, basal, cgm, upto_day=1, every=6)
    fit = calibration.individual_map(t1d.twin_model(), data, estimator=calibration.FOCEI())
    # measured: modes within 2e-5, variances within 3e-4 relative (rtol 1e-6 solves)
    np.testing.assert_allclose(mode, np.asarray(fit.eta)[:, 0], atol=1e-4)
    np.testing.assert_allclose(sd**2, np.asarray(fit.cov)[:, 0, 0], rtol=2e-3)
    assert mode[1] < -0.1  # child#002 reads lower than nominal: more sensitive


def test_twins_trial_runs_t1d_specs_by_their_runner(tmp_path):
    from pathlib import Path

    from typer.testing import CliRunner

    from twins.app import SpecError, load_trial
    from twins.app._cli import app

    example = Path(__file__).resolve().parents[1] / "examples" / "t1d_insulin.toml"
    with pytest.raises(SpecError, match=r"domain: a type 1 diabetes trial spec .* `twins trial"):
        load_trial(example)
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ndomain = "t1d"\n[[arms]]\nname = "a"\npolicy = "nope"\n')
    result = CliRunner().invoke(app, ["trial", str(bad)])
    assert result.exit_code == 2
    assert "arms[0].policy: expected one of" in result.output
    result = CliRunner().invoke(app, ["trial", str(bad), "--n", "5"])
    assert result.exit_code == 2 and "do not apply to T1D specs" in result.output
