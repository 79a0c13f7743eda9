"""DigitalTwin: the posterior against calibration's own MAP, recovery of a known patient, the
dose recommendation against a brute-force search, and errors (issue 4)."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.integrate

import calibration as C
import pkpd
import twins

DRUG = twins.drugs.get("vancomycin_goti2018")
PATIENT = twins.Patient(
    id="VAN-T", age=60, sex="female", weight=70.0, height=165.0, labs={"serum_creatinine": 1.1}
)


def _given():
    return DRUG.regimen(4, amount=1000.0, interval=12.0, duration=1.0)


@pytest.fixture(scope="module")
def truth():
    """A patient whose parameters are known: the typical values times exp(eta_true)."""
    twin = twins.DigitalTwin(DRUG, PATIENT)
    eta = np.array([0.35, -0.4, 0.2])  # CL, V1, V2 (Goti's etas)
    params = twin._params(eta)
    times = np.array([1.5, 11.5, 13.5, 23.5, 25.5, 35.5, 37.5, 47.9])
    conc = np.asarray(pkpd.simulate(DRUG.model.model, params, _given(), jnp.asarray(times)))
    return eta, params, times, conc


def test_prior_twin_is_the_population_model():
    twin = twins.DigitalTwin(DRUG, PATIENT)
    assert twin.posterior.method == "prior"
    np.testing.assert_allclose(twin.posterior.cov, DRUG.omega_matrix(), rtol=1e-12)
    typical = DRUG.typical_params(PATIENT.covariates())
    for k, v in typical.items():
        assert twin.posterior.params[k] == pytest.approx(v, rel=1e-12)


# Extended (about 50 s, mostly compiling calibration's own MAP): the twin's update is also
# checked in `make test` against the truth and the posterior's shrinkage (below).
@pytest.mark.extended
def test_map_update_matches_calibration_individual_map(truth):
    """The twin's padded one-subject path gives calibration's MAP on the same NONMEM records."""
    _, _, times, conc = truth
    dv = conc[[3, 6]] * np.array([1.1, 0.92])
    twin = twins.DigitalTwin(DRUG, PATIENT).give(_given())
    twin.update(times=times[[3, 6]], values=dv)
    rows = [
        {"ID": 1, "TIME": 12.0 * k, "EVID": 1, "AMT": 1000.0, "CMT": 1, "RATE": 1000.0, "DV": 0.0}
        for k in range(4)
    ]
    rows += [
        {"ID": 1, "TIME": t, "EVID": 0, "AMT": 0.0, "CMT": 1, "RATE": 0.0, "DV": y}
        for t, y in zip(times[[3, 6]], dv, strict=True)
    ]
    df = pd.DataFrame(rows).sort_values("TIME", kind="stable")
    for k, v in DRUG.covariates(PATIENT.covariates()).items():
        df[k] = v
    data = C.Dataset.from_records(df, covariates=list(DRUG.covariates(PATIENT.covariates())))
    ref = C.individual_map(DRUG.model, data, DRUG.population(), estimator=C.FOCEI())
    np.testing.assert_allclose(twin.posterior.mode, ref.eta[0], atol=1e-7)
    np.testing.assert_allclose(twin.posterior.cov, ref.cov[0], rtol=1e-6)
    assert twin.posterior.converged and twin.posterior.n_observations == 2


def test_incremental_updates_move_toward_the_truth(truth):
    """Levels without noise, added one at a time: the MAP approaches the true parameters and
    the posterior SDs of CL and V1 shrink; the truth stays inside the 95% Laplace interval."""
    eta, params, times, conc = truth
    twin = twins.DigitalTwin(DRUG, PATIENT).give(_given())
    sd = [np.sqrt(np.diag(twin.posterior.cov))]
    for t, y in zip(times, conc, strict=True):
        twin.update(times=[t], values=[y])
        sd.append(np.sqrt(np.diag(twin.posterior.cov)))
    assert twin.posterior.n_observations == times.size
    # CL and V1 are well determined by eight levels; V2 (peripheral) barely, over 48 h.
    assert np.all(sd[-1][:2] < 0.6 * sd[0][:2]) and sd[-1][2] <= sd[0][2]
    z = (eta - twin.posterior.mode) / sd[-1]
    assert np.all(np.abs(z) < 1.96), z
    assert twin.posterior.params["CL"] == pytest.approx(params["CL"], rel=0.10)


def test_forecast_band_and_prediction_interval(truth):
    _, _, times, conc = truth
    twin = twins.DigitalTwin(DRUG, PATIENT).give(_given())
    twin.update(times=times[:4], values=conc[:4])
    grid = np.linspace(0.0, 48.0, 49)
    fc = twin.forecast(grid, n_draws=2000, key=jax.random.key(2))
    pi = twin.forecast(grid, n_draws=2000, key=jax.random.key(2), prediction_interval=True)
    assert np.all(fc.lower <= fc.median) and np.all(fc.median <= fc.upper)
    after = grid > 1.0
    assert np.all((pi.upper - pi.lower)[after] > (fc.upper - fc.lower)[after])
    # Same draws as the posterior: the band of the mode's prediction is centred on it.
    mode = pkpd.simulate(DRUG.model.model, twin.posterior.params, _given(), jnp.asarray(grid))
    np.testing.assert_allclose(fc.median[after], np.asarray(mode)[after], rtol=0.1)
    ax = fc.plot()
    assert len(ax.lines) >= 1 and len(ax.collections) >= 2  # band, observations


def test_recommend_matches_brute_force_search(truth):
    """The dose found by gradients reaches the probability of the best dose on a fine grid,
    each dose simulated in full (no superposition) and its AUC24 taken independently
    (scipy's composite Simpson rule on a 2-min grid whose 4-min panels have the infusions'
    starts and ends on their edges, not the Simpson sub-steps of pkpd.interval_exposure)."""
    _, _, times, conc = truth
    twin = twins.DigitalTwin(DRUG, PATIENT).give(_given())
    twin.update(times=times[[3, 6]], values=conc[[3, 6]])
    key = jax.random.key(5)
    rec = twin.recommend("AUC24", interval=12.0, key=key, n_draws=200)
    eta = twin.posterior.sample(200, key=key)
    start, n = 48.0, rec.n_doses
    grid_t = jnp.linspace(start + n * 12.0 - 24.0, start + n * 12.0, 721)

    @jax.jit
    def levels(reg):
        def one(e):
            params = twin.pm.individual_params(twin.theta, twin.covariate_arrays, e)
            return DRUG.model.predict(params, reg, grid_t)

        return jax.vmap(one)(eta)

    def probability(dose):
        reg = _given() + DRUG.regimen(n, amount=float(dose), interval=12.0, start=start)
        auc = scipy.integrate.simpson(np.asarray(levels(reg)), x=np.asarray(grid_t), axis=-1)
        return np.mean((auc >= 400.0) & (auc <= 600.0)), np.median(auc)

    doses = np.linspace(0.5, 2.0, 41) * rec.dose
    probs = np.array([probability(d)[0] for d in doses])
    assert rec.probability >= probs.max() - 0.02
    p_rec, median_rec = probability(rec.dose)
    # The two AUCs differ by the two quadratures' errors (far below 1e-6 relative): at most
    # a draw that sits on a window edge can fall on the other side.
    assert p_rec == pytest.approx(rec.probability, abs=1.0 / 200 + 1e-9)
    assert median_rec == pytest.approx(rec.metric_median, rel=1e-5)
    assert rec.achieved and rec.required_probability is None
    strict = twin.recommend("AUC24", interval=12.0, key=key, n_draws=200, probability=0.99)
    assert not strict.achieved  # stated, not hidden


def test_twin_errors_name_patient_and_field():
    twin = twins.DigitalTwin(DRUG, PATIENT)
    with pytest.raises(ValueError, match="VAN-T: no doses given"):
        twin.update(times=[1.0], values=[10.0])
    twin.give(_given())
    with pytest.raises(ValueError, match=r"VAN-T: observation 1 has DV=nan"):
        twin.update(times=[1.0, 2.0], values=[10.0, float("nan")])
    with pytest.raises(ValueError, match="no target 'Cmin'"):
        twin.recommend("Cmin")
    with pytest.raises(ValueError, match="2 times but 1 values"):
        twin.update(times=[1.0, 2.0], values=[10.0])
    with pytest.raises(twins.drugs.CovariateError, match=r"SCR|serum"):
        twins.DigitalTwin(
            DRUG, twins.Patient(id="NOSCR", age=50, sex="male", weight=80.0, height=180.0)
        )


# Extended: a check of compilation reuse, which benchmarks/first_call.py measures.
@pytest.mark.extended
def test_a_second_twin_reuses_the_compiled_functions(monkeypatch):
    """A twin of another patient on an equal drug (a new object) traces nothing new: the
    MAP, the forecast and the dose search are compiled per model value and shapes (the
    identity-keyed cache compiled them again for every new model object)."""
    from twins.drugs import vancomycin

    traces = []
    predict = C.PopulationModel.predict
    exposure = pkpd.interval_exposure

    def counted(self, *args):
        traces.append("predict")
        return predict(self, *args)

    def counted_exposure(*args, **kwargs):
        traces.append("exposure")  # the AUC24 of the dose search
        return exposure(*args, **kwargs)

    monkeypatch.setattr(C.PopulationModel, "predict", counted)
    monkeypatch.setattr(pkpd, "interval_exposure", counted_exposure)

    def run(drug, values):
        twin = twins.DigitalTwin(drug, PATIENT).give(_given())
        twin.update(times=[11.5, 35.5], values=values)
        twin.forecast(np.linspace(0.0, 48.0, 25), key=jax.random.key(0), n_draws=50)
        twin.recommend("AUC24", interval=12.0, key=jax.random.key(1), n_draws=50)

    run(vancomycin.goti2018(), [9.8, 12.1])
    n = len(traces)
    assert "exposure" in traces and "predict" in traces  # both were traced the first time
    run(vancomycin.goti2018(), [8.1, 14.0])
    assert len(traces) == n


def test_update_strategies_and_the_old_strings(truth):
    """`estimator=FOCEI()` and `update(method=MAP())` are the defaults; `curvature="focei"`
    and `method="map"` warn and give the same posterior."""
    _, _, times, conc = truth

    def twin(**kw):
        return twins.DigitalTwin(DRUG, PATIENT, **kw).give(_given())

    new = twin(estimator=C.FOCEI()).update(times=times[:3], values=conc[:3], method=C.MAP())
    default = twin().update(times=times[:3], values=conc[:3])
    with pytest.warns(DeprecationWarning, match=r"estimator=calibration\.FOCEI\(\)"):
        old_twin = twin(curvature="focei")
    with pytest.warns(DeprecationWarning, match=r"method=calibration\.MAP\(\)"):
        old = old_twin.update(times=times[:3], values=conc[:3], method="map")
    for other in (default, old):
        np.testing.assert_array_equal(other.posterior.mode, new.posterior.mode)
        np.testing.assert_array_equal(other.posterior.cov, new.posterior.cov)
    assert default.estimator == C.FOCEI()


@pytest.mark.extended  # two NUTS compilations (~60 s on 2 cores); the MAP spellings above stay
def test_update_nuts_old_string_gives_the_same_draws(truth):
    """`method="nuts"` with keywords warns and gives the draws of `NUTS(...)` with the same
    key."""
    _, _, times, conc = truth

    def twin(**kw):
        return twins.DigitalTwin(DRUG, PATIENT, **kw).give(_given())

    settings = dict(num_warmup=40, num_samples=40, num_chains=1)
    key = jax.random.key(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", C.ConvergenceWarning)  # 40 draws: ESS too small
        sampled = twin().update(
            times=times[:3], values=conc[:3], method=C.NUTS(**settings), key=key
        )
        with pytest.warns(DeprecationWarning, match=r"method=calibration\.NUTS\(num_warmup=40"):
            old_sampled = twin().update(
                times=times[:3], values=conc[:3], method="nuts", key=key, **settings
            )
    assert sampled.posterior.method == "nuts" and sampled.posterior.draws.shape == (40, 3)
    np.testing.assert_array_equal(old_sampled.posterior.draws, sampled.posterior.draws)


def test_a_wrong_update_strategy_is_refused_clearly():
    twin = twins.DigitalTwin(DRUG, PATIENT).give(_given())
    with pytest.raises(TypeError, match=r"must be calibration\.FOCEI\(\) or calibration"):
        twins.DigitalTwin(DRUG, PATIENT, estimator="laplace")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="curvature must be 'focei' or 'laplace'"):
        twins.DigitalTwin(DRUG, PATIENT, curvature="exact")
    with pytest.raises(TypeError, match=r"method must be calibration\.MAP\(\) or"):
        twin.update(times=[1.0], values=[10.0], method=C.FOCEI())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="got 'bfgs'"):
        twin.update(times=[1.0], values=[10.0], method="bfgs")
    with pytest.raises(TypeError, match=r"num_samples.*go into method=calibration\.NUTS"):
        twin.update(times=[1.0], values=[10.0], num_samples=10)
    assert twin.posterior.method == "prior"  # nothing was added by the refused calls


def test_randomness_comes_from_key(truth):
    """`key=` takes a JAX key or an int; forecast and recommend without a key warn and use
    jax.random.key(0) as before (for this release); NUTS without a key is a TypeError before
    anything changes; `Posterior.sample(key, n)` still works, with a warning."""
    _, _, times, conc = truth
    twin = twins.DigitalTwin(DRUG, PATIENT).give(_given())
    twin.update(times=times[:2], values=conc[:2])
    grid = np.linspace(0.0, 48.0, 13)
    by_key = twin.forecast(grid, key=jax.random.key(0), n_draws=50)
    np.testing.assert_array_equal(twin.forecast(grid, key=0, n_draws=50).draws, by_key.draws)
    with pytest.warns(DeprecationWarning, match=r"DigitalTwin.forecast: no key given"):
        silent = twin.forecast(grid, n_draws=50)
    np.testing.assert_array_equal(silent.draws, by_key.draws)
    with pytest.warns(DeprecationWarning, match=r"DigitalTwin.recommend: no key given"):
        old = twin.recommend("AUC24", interval=12.0, n_draws=50)
    assert twin.recommend("AUC24", interval=12.0, n_draws=50, key=0).dose == old.dose
    with pytest.raises(TypeError, match=r"NUTS\(\.\.\.\)\) draws random numbers: pass key="):
        twin.update(times=[30.0], values=[10.0], method=C.NUTS())
    assert twin.posterior.n_observations == 2
    with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
        twin.forecast(grid, key="0", n_draws=50)  # type: ignore[arg-type]
    key = jax.random.key(7)
    new = twin.posterior.sample(20, key=key)
    with pytest.warns(DeprecationWarning, match=r"sample\(n, key=key\)"):
        np.testing.assert_array_equal(twin.posterior.sample(key, 20), new)
    with pytest.raises(TypeError, match=r"Posterior\.sample draws random numbers"):
        twin.posterior.sample(20)
