"""pkpd.UVAPadova and twins.t1d: patients, steady state, inputs, CGM noise, CGM metrics."""

from __future__ import annotations

import csv
import math
from importlib import resources

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pkpd
from twins import t1d

MODEL = pkpd.UVAPadova()


def _table():
    path = resources.files("twins") / "data" / "t1d" / "vpatient_params.csv"
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_thirty_patients_by_group():
    patients = t1d.load_patients()
    assert len(patients) == 30
    for group in ("adolescent", "adult", "child"):
        names = [f"{group}#{i:03d}" for i in range(1, 11)]
        assert all(patients[n].group == group for n in names)
    p = patients["adolescent#001"]
    assert p.params["BW"] == 68.706 and p.params["kmax"] == 0.015865
    assert p.carb_ratio == 12 and p.age == 18
    assert set(p.params) == set(MODEL.param_names)


def test_initial_state_is_the_table_s_steady_state():
    # The table's x0 columns are simglucose's initial state (stomach in mg, Isc in pmol/kg).
    patients = t1d.load_patients()
    for row in _table():
        p = patients[row["Name"]]
        x0 = np.array([float(row[f"x0_{i:2d}"]) for i in range(1, 14)])
        x0[:3] /= 1000.0
        x0[10:12] *= p.body_weight / 6000.0
        x = np.asarray(MODEL.initial_state(dict(p.params)))
        np.testing.assert_allclose(x[:13], x0, rtol=1e-12, atol=0)
        assert x[13] == 0 and x[14] == 0
        # ... and a steady state under the basal rate: every derivative ~ 0
        dx = np.array(MODEL.vector_field(0.0, jnp.asarray(x), dict(p.params)))
        dx[MODEL.insulin_cmt - 1] += p.basal
        assert np.all(np.abs(dx) <= 1e-6 * np.maximum(np.abs(x), 1.0)), (row["Name"], dx)


def _write(tmp_path, rows, fields):
    path = tmp_path / "params.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("kmax", "-0.01", r"row 3 \(adolescent#002\), field kmax: expected a value > 0, got -0.01"),
        ("b", "1.2", r"row 3 \(adolescent#002\), field b: expected a value in \(0, 1\), got 1.2"),
        ("Vg", "nan", r"row 3 \(adolescent#002\), field Vg: expected a finite number"),
        ("BW", "", r"row 3 \(adolescent#002\), field BW: expected a number, got an empty"),
        ("Name", "adult#1", r"row 3, field Name: expected a name like adult#001"),
        ("Name", "adolescent#001", r"row 3 \(adolescent#001\), field Name: duplicated"),
    ],
)
def test_bad_patient_data_is_named(tmp_path, field, value, message):
    rows = _table()
    fields = list(rows[0])
    rows[1][field] = value
    with pytest.raises(t1d.PatientDataError, match=message):
        t1d.load_patients(_write(tmp_path, rows, fields))


def test_missing_column_and_quest_row(tmp_path):
    rows = _table()
    fields = [f for f in rows[0] if f != "ksc"]
    with pytest.raises(t1d.PatientDataError, match=r"missing column\(s\) \['ksc'\]"):
        t1d.load_patients(_write(tmp_path, rows, fields))
    quest = tmp_path / "quest.csv"
    quest.write_text("Name,CR,CF,Age,TDI\nadult#001,10,40,30,50\n")
    with pytest.raises(t1d.PatientDataError, match="no row for patient adolescent#001"):
        t1d.load_patients(quest_file=quest)


def _day(patient, meals=((7.0, 45.0), (12.0, 70.0), (18.5, 80.0))):
    regimen = t1d.basal_insulin(patient.basal, stop=24.0)
    for h, c in meals:
        regimen = regimen + t1d.meal(c, time=h)
        regimen = regimen + t1d.insulin_bolus(c / patient.carb_ratio, time=h)
    return regimen


def test_meal_carbohydrate_is_conserved():
    # What is eaten is in the stomach and gut, or has appeared in plasma: Ra / (f kabs) ...
    # checked the simple way: after the meal is eaten, Qsto1 + Qsto2 + Qgut + absorbed = meal.
    p = t1d.load_patients()["adult#004"]
    regimen = t1d.meal(60.0, time=1.0) + t1d.basal_insulin(p.basal, stop=6.0)
    times = np.linspace(0.0, 6.0, 721)
    x = np.asarray(pkpd.simulate_states(MODEL, dict(p.params), regimen, times))
    absorbed = np.concatenate(
        [[0.0], np.cumsum(np.diff(times) * 60 * p.params["kabs"] * (x[1:, 2] + x[:-1, 2]) / 2)]
    )
    total = x[:, 0] + x[:, 1] + x[:, 2] + absorbed
    after = times >= 1.0 + 12 / 60  # 60 g eaten at 5 g/min
    np.testing.assert_allclose(total[after], 60.0, rtol=2e-4)
    # the meal-start marker cleared W, which then counts what left the stomach
    emptied = 60.0 - x[:, 0] - x[:, 1]
    np.testing.assert_allclose(x[after, 13], emptied[after], atol=2e-3)


# Extended: two long UVA/Padova courses compile for about a minute; the model's balance and
# its simglucose comparison stay in make test.
@pytest.mark.extended
def test_glucose_rises_with_meals_and_stays_at_basal_without():
    p = t1d.load_patients()["adult#001"]
    times = np.arange(0, 24 * 60 + 1, 5) / 60.0
    bg = np.asarray(pkpd.simulate(MODEL, dict(p.params), _day(p), times))[:, 0]
    basal = np.asarray(
        pkpd.simulate(MODEL, dict(p.params), t1d.basal_insulin(p.basal, stop=24.0), times)
    )[:, 0]
    np.testing.assert_allclose(basal, p.params["Gpb"] / p.params["Vg"], rtol=1e-6)
    assert bg.max() > basal[0] + 30  # (that insulin lowers it: test_jit_vmap_and_gradient)


# Extended: it compiles the vmapped ODE solve and its reverse-mode gradient (about 30 s of
# one core, a minute on a loaded one); the model's values are covered by the other tests
# here and by tests/test_t1d_simglucose.py.
@pytest.mark.extended
def test_jit_vmap_and_gradient():
    patients = t1d.load_patients()
    chosen = [patients[n] for n in ("adult#001", "adolescent#003", "child#002")]
    params = t1d.stack_params(chosen)
    times = jnp.arange(0.0, 8 * 60 + 1, 15) / 60.0

    def bg(par, bolus):
        regimen = (
            t1d.basal_insulin(1.0, stop=8.0)
            + t1d.meal(50.0, time=1.0)
            + t1d.insulin_bolus(bolus, time=1.0)
        )
        return pkpd.simulate(MODEL, par, regimen, times)[:, 0]

    jitted = eqx.filter_jit(jax.vmap(bg, in_axes=(0, None)))
    out = jitted(params, 4.0)
    assert out.shape == (3, times.shape[0])
    eager = bg({k: v[1] for k, v in params.items()}, 4.0)
    # a traced regimen takes the engine's general event path: equal to solver tolerance
    np.testing.assert_allclose(out[1], eager, rtol=1e-6)
    # d(mean BG)/d(bolus) < 0 through the vmapped, jitted cohort, and matches a central
    # finite difference (of the same jitted function: no new compilation)
    g = eqx.filter_jit(jax.grad(lambda u: jnp.mean(jax.vmap(bg, in_axes=(0, None))(params, u))))
    h = 0.05
    fd = (jnp.mean(jitted(params, 4.0 + h)) - jnp.mean(jitted(params, 4.0 - h))) / (2 * h)
    grad = g(4.0)
    assert grad < 0
    np.testing.assert_allclose(grad, fd, rtol=1e-3)


def test_input_helpers_check_their_values():
    with pytest.raises(ValueError, match="expected carbs > 0"):
        t1d.meal(-5.0, time=1.0)
    with pytest.raises(ValueError, match="expected a rate > 0"):
        t1d.basal_insulin(0.0, stop=1.0)
    reg = t1d.meal(45.0, time=7.0)
    assert np.asarray(reg.cmt).tolist() == [MODEL.meal_cmt, MODEL.meal_start_cmt]
    np.testing.assert_allclose(np.asarray(reg.rate)[0], 300.0)  # 5 g/min in g/h


# --- CGM -----------------------------------------------------------------------------


# Extended: a CGM course compiles for half a minute; the CGM noise model's unit tests stay in
# make test.
@pytest.mark.extended
def test_cgm_reproducible_and_within_range():
    sensor = t1d.CGMSensor()
    g = jnp.full(288, 120.0)
    a = t1d.cgm_readings(sensor, g, key=jax.random.key(3))
    b = t1d.cgm_readings(sensor, g, key=jax.random.key(3))
    c = t1d.cgm_readings(sensor, g, key=jax.random.key(4))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))
    noise = np.asarray(t1d.cgm_noise(sensor, 288, key=jax.random.key(3)))
    np.testing.assert_allclose(np.asarray(a), np.clip(120.0 + noise, 39.0, 400.0), rtol=1e-14)
    trace = jnp.concatenate([jnp.full(144, 30.0), jnp.full(144, 420.0)])
    r = np.asarray(t1d.cgm_readings(sensor, trace, key=jax.random.key(3)))
    np.testing.assert_array_equal(r, np.clip(np.asarray(trace) + noise, 39.0, 400.0))
    assert r.min() == 39.0 and r.max() == 400.0
    wide = t1d.CGMSensor(low=40.0, high=600.0)
    hi2 = t1d.cgm_readings(wide, jnp.full(50, 500.0), key=jax.random.key(0))
    assert np.all(np.asarray(hi2) < 600.0) and np.asarray(hi2).std() > 1.0
    with pytest.raises(ValueError, match="expected high > low"):
        t1d.CGMSensor(low=400.0, high=39.0)


def test_cgm_noise_is_breton_kovatchev():
    # Sampled every 15 min the readings are the model's own knots: undo the Johnson
    # transform and check the AR(1) process e_n = 0.7 (e_{n-1} + v_n): stationary variance
    # 0.49 / (1 - 0.49) = 0.9608, lag-1 autocorrelation 0.7; and e_1 = v_1 ~ N(0, 1).
    s = t1d.CGMSensor(sample_time=15.0)
    keys = jax.random.split(jax.random.key(11), 400)
    eps = np.asarray(jax.vmap(lambda k: t1d.cgm_noise(s, 97, key=k))(keys))
    e = s.gamma + s.delta * np.arcsinh((eps - s.xi) / s.lambda_)
    np.testing.assert_allclose(e[:, 0].var(), 1.0, atol=0.2)
    late = e[:, 20:]
    var = late.var()
    assert abs(var - 0.49 / 0.51) < 0.05, var
    rho = np.mean(late[:, 1:] * late[:, :-1]) / var
    assert abs(rho - 0.7) < 0.03, rho
    # at 5 min, the spline passes through every third reading's knot
    fine = np.asarray(t1d.cgm_noise(t1d.CGMSensor(), 3 * 96 + 1, key=keys[0]))
    np.testing.assert_allclose(fine[::3], eps[0], rtol=1e-12, atol=1e-12)


# --- metrics -------------------------------------------------------------------------


def test_cgm_metrics_by_hand():
    g = jnp.array([50.0, 60.0, 70.0, 100.0, 180.0, 181.0, 200.0, 260.0, 140.0, 120.0])
    m = t1d.cgm_metrics(g)
    # in range: 70, 100, 180, 140, 120 -> 5 of 10; below 70: 50, 60; below 54: 50;
    # above 180: 181, 200, 260; above 250: 260
    for field, value in (
        ("time_in_range", 50.0),
        ("time_below_70", 20.0),
        ("time_below_54", 10.0),
        ("time_above_180", 30.0),
        ("time_above_250", 10.0),
    ):
        assert math.isclose(float(getattr(m, field)), value, rel_tol=1e-14), field
    mean = 1361.0 / 10
    assert math.isclose(float(m.mean_glucose), mean, rel_tol=1e-14)
    assert math.isclose(float(m.gmi), 3.31 + 0.02392 * 136.1, rel_tol=1e-14)  # 6.565512
    sd = math.sqrt(sum((x - mean) ** 2 for x in np.asarray(g).tolist()) / 9)
    assert math.isclose(float(m.cv), 100 * sd / mean, rel_tol=1e-12)
    assert math.isclose(float(m.gmi), 6.565512, rel_tol=1e-12)
    # vmapped over patients, jit == eager
    batch = jnp.stack([g, g + 10.0])
    mb = jax.jit(jax.vmap(t1d.cgm_metrics))(batch)
    assert mb.time_in_range.shape == (2,)
    np.testing.assert_allclose(np.asarray(mb.time_in_range), [50.0, 50.0], rtol=1e-14)
    with pytest.raises(ValueError, match="at least 2 readings"):
        t1d.cgm_metrics(jnp.array([100.0]))
