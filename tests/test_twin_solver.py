"""The twins' `solver` option: warfarin twins integrate the PK/INR model with fixed steps
(`twins.drugs.warfarin.TWIN_SOLVER`, `pkpd.FixedStep(1.0)`), checked against diffrax at a
tight tolerance for what a twin gives (posterior, INR forecast, recommended dose); other
drugs keep their population model's solver."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import calibration
import pkpd
import twins

jax.config.update("jax_enable_x64", True)

WARFARIN = twins.drugs.get("warfarin_hamberg2007")
PATIENT = {"ID": "w1", "AGE": 60.0, "CYP2C9": "*1/*2", "VKORC1": "-1639G>A AG"}
# the reference: Tsit5 at rtol 1e-10 (the library's default is rtol 1e-6)
TIGHT = pkpd.ODESolver(rtol=1e-10, atol=1e-12, max_steps=100_000, throw=False)
DRAWS = 24


def _twin(solver=None, estimator=None) -> twins.DigitalTwin:
    tw = twins.DigitalTwin(WARFARIN, PATIENT, solver=solver, estimator=estimator)
    tw.give(WARFARIN.regimen(5, amount=5.0, interval=24.0))
    tw.observe(times=[72.0, 96.0, 119.0], values=[1.4, 1.7, 2.0])
    return tw


def test_defaults_per_drug():
    assert twins.DigitalTwin(WARFARIN, PATIENT).solver == pkpd.FixedStep(1.0)
    assert twins.drugs.warfarin.TWIN_SOLVER == pkpd.FixedStep(1.0)
    iwpc = twins.drugs.get("warfarin_iwpc_recalibrated")  # the same model structure
    assert twins.DigitalTwin(iwpc, {**PATIENT, "WT": 70.0}).solver == pkpd.FixedStep(1.0)
    vanco = twins.drugs.get("vancomycin_goti2018")
    labs = {"serum_creatinine": 1.0}
    p = twins.Patient(id="v", age=50, sex="male", weight=80, height=178, labs=labs)
    tw = twins.DigitalTwin(vanco, p)
    assert tw.solver is vanco.model.solver and tw.pm is vanco.model  # unchanged
    # FOCEI's update integrates with the twin's solver; Laplace's (reverse mode) cannot
    assert _twin().pm.solver == pkpd.FixedStep(1.0)
    assert _twin(estimator=calibration.Laplace()).pm is WARFARIN.model
    assert _twin().pm is _twin().pm  # one model object: the twins are batched together
    with pytest.raises(TypeError, match=r"solver must be a pkpd\.ODESolver or a pkpd\.FixedStep"):
        twins.DigitalTwin(WARFARIN, PATIENT, solver="rk4")


def test_fixed_step_inr_against_a_tight_adaptive_solve():
    """What the fixed steps change at one posterior: the INR the dose search reads at the
    recommended dose (every draw) and the INR forecast, against diffrax at rtol 1e-10."""
    tw = _twin()
    tw.update()
    key = jax.random.key(3)
    rec = tw.recommend(key=key, n_draws=DRAWS)
    assert rec.metric_values is not None
    eta = tw.posterior.sample(DRAWS, key=key)  # the draws of the search
    full = tw.history + rec.regimen
    end = float(np.asarray(rec.regimen.time)[np.asarray(rec.regimen.mask)].max()) + 24.0

    def inr(e):
        params = tw.pm.individual_params(tw.theta, tw.covariate_arrays, e)
        return pkpd.simulate(tw.pm.model, params, full, np.asarray([end]), solver=TIGHT)[0, 1]

    exact = np.asarray(jax.vmap(inr)(eta))
    assert 1.5 < exact.min() and exact.max() < 4.0  # INRs near the window 2-3
    np.testing.assert_allclose(rec.metric_values, exact, atol=2e-3)  # measured 1.5e-3 (100 draws)
    times = np.linspace(120.0, 240.0, 11)
    fc = tw.forecast(times, rec.regimen, key=4, n_draws=DRAWS)
    ref = twins.DigitalTwin(WARFARIN, PATIENT, solver=TIGHT)
    ref.give(tw.history)
    ref.posterior = tw.posterior
    np.testing.assert_allclose(
        fc.draws, ref.forecast(times, rec.regimen, key=4, n_draws=DRAWS).draws, atol=2e-3
    )


@pytest.mark.extended  # ground: test_fixed_step_inr_against_a_tight_adaptive_solve
def test_fixed_step_warfarin_twin_against_a_tight_adaptive_solve():
    """Posterior, INR forecast and recommended dose of the default (fixed-step) twin against
    the same twin integrated by diffrax at rtol 1e-10 throughout (update, search, forecast):
    the same data, keys and draws (about 3 minutes on 2 cores with a cold cache)."""
    fast, ref = _twin(), _twin(TIGHT)
    fast.update()
    ref.update()
    assert fast.posterior.converged and ref.posterior.converged
    # MTT2's eta is the least determined by three INRs; the modes agree to ~1e-2 on the
    # log scale (measured 4e-3), against prior SDs of 0.14-0.8
    np.testing.assert_allclose(fast.posterior.mode, ref.posterior.mode, atol=1e-2)
    key = jax.random.key(3)
    r_fast = fast.recommend(key=key, n_draws=DRAWS)
    r_ref = ref.recommend(key=key, n_draws=DRAWS)
    assert r_fast.dose == pytest.approx(r_ref.dose, rel=5e-3)  # measured 1e-3 (100 draws)
    times = np.linspace(120.0, 240.0, 11)
    f_fast = fast.forecast(times, r_ref.regimen, key=4, n_draws=DRAWS)
    f_ref = ref.forecast(times, r_ref.regimen, key=4, n_draws=DRAWS)
    # INR near 2-2.5: within 5e-3 (the residual error's SD is 3% of the INR)
    np.testing.assert_allclose(f_fast.draws, f_ref.draws, atol=5e-3)


def test_batched_warfarin_twins_use_the_solver():
    """`recommend_twins` / `forecast_twins` on fixed-step twins give the one-twin numbers."""
    one, many = _twin(), _twin()
    one.update()
    twins.update_twins([many])
    np.testing.assert_allclose(many.posterior.mode, one.posterior.mode, atol=1e-6)
    many.posterior = one.posterior
    key = jax.random.key(5)
    single = one.recommend(key=key, n_draws=DRAWS)
    (batched,) = twins.recommend_twins([many], keys=[key], n_draws=DRAWS)
    assert isinstance(batched, twins.Recommendation)
    assert batched.dose == pytest.approx(single.dose, rel=1e-9)
    assert batched.probability == single.probability
    times = np.asarray([120.0, 168.0, 240.0])
    fc = one.forecast(times, single.regimen, key=6, n_draws=DRAWS)
    (fcb,) = twins.forecast_twins([many], [times], [single.regimen], keys=[6], n_draws=DRAWS)
    # forecast_twins draws from split(key)[0], as forecast does
    np.testing.assert_allclose(fcb.draws, fc.draws, rtol=1e-9)
