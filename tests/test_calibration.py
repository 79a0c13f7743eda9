"""calibration: Laplace population fit of theophylline, vmapped individual MAP, data checks."""

from __future__ import annotations

import json
import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import calibration as C
import pkpd

REF = pathlib.Path(__file__).parent / "data" / "reference"  # vendored, see its README


def _theo_records() -> pd.DataFrame:
    """nlmixr2's theo_sd: EVID 101 (rxode2: dose into compartment 1) is NONMEM's EVID 1."""
    df = pd.read_csv(REF / "datasets" / "theo_sd_nlmixr2data.csv")
    df.loc[df["EVID"] == 101, "EVID"] = 1
    df.loc[df["EVID"] == 0, "CMT"] = 2
    return df


@pytest.fixture(scope="module")
def theo_fit() -> C.PopulationFit:
    data = C.Dataset.from_records(_theo_records(), covariates=["WT"])
    pm = C.PopulationModel(
        pkpd.OneCompartmentOral(),
        theta={"KA": 1.0, "CL": 3.0, "V": 30.0},
        omega={"KA": 0.3, "CL": 0.1, "V": 0.1},
        error=C.Additive(1.0),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", C.ConvergenceWarning)
        return C.fit_population(pm, data)


def test_theophylline_matches_nlmixr2(theo_fit: C.PopulationFit):
    """Fixed effects within 5%, BSV (CV%) and residual SD within 25% of nlmixr2's SAEM fit."""
    ref = json.loads((REF / "reference_estimates.json").read_text())["theophylline"]
    saem = ref["nlmixr2_SAEM_README"]
    t = theo_fit.table.set_index(["kind", "parameter"])
    assert theo_fit.converged
    for name, key in (("KA", "ka_per_h"), ("CL", "CL_L_per_h"), ("V", "V_L")):
        assert t.loc[("theta", name), "estimate"] == pytest.approx(saem[key], rel=0.05), name
    for name, key in (("KA", "ka"), ("CL", "cl"), ("V", "v")):
        cv = t.loc[("omega", name), "cv_pct"]
        assert cv == pytest.approx(saem["BSV_CV_pct"][key], rel=0.25), name
    sd = t.loc[("sigma", "add_sd"), "estimate"]
    assert sd == pytest.approx(saem["add_sd_mg_per_L"], rel=0.25)
    # Standard errors of the log typical values, against nlmixr2's (same order of magnitude).
    for name, key in (("KA", "tka"), ("CL", "tcl"), ("V", "tv")):
        se_log = t.loc[("theta", name), "rse_pct"] / 100.0
        assert 0.5 * saem["SE"][key] < se_log < 2.0 * saem["SE"][key], name


def test_theophylline_likelihood_is_consistent(theo_fit: C.PopulationFit):
    """The -2LL is a minimum: moving any parameter away from the estimate increases it."""
    from jax.flatten_util import ravel_pytree

    from calibration._laplace import _neg_loglik

    data = C.Dataset.from_records(_theo_records())
    flat, unravel = ravel_pytree(theo_fit.phi)
    ofv = jax.jit(lambda x: 2 * _neg_loglik(theo_fit.model, unravel(x), data))
    base = float(ofv(flat))
    assert base == pytest.approx(theo_fit.ofv, rel=1e-10)
    for k in range(flat.shape[0]):
        for step in (-0.05, 0.05):
            assert float(ofv(flat.at[k].add(step))) > base


def test_theophylline_shrinkage_and_modes(theo_fit: C.PopulationFit):
    ind = theo_fit.individual
    assert ind.eta.shape == (12, 3) and ind.converged.all()
    # Individual CL = typical CL * exp(eta_CL).
    cl = theo_fit.population["theta"]["CL"] * np.exp(ind.eta[:, 1])
    np.testing.assert_allclose(ind.params["CL"], cl, rtol=1e-12)
    omega = theo_fit.table[theo_fit.table["kind"] == "omega"]
    shrink = omega["shrinkage_pct"].to_numpy()
    assert np.all(np.isfinite(shrink)) and np.all((shrink > -50) & (shrink < 60))


@pytest.fixture(scope="module")
def oral_1cpt():
    """Oral_1CPT (nlmixr2data; simulated, each subject's true KA, CL, V in the file): 120
    subjects, single and multiple doses with steady state, fitted by FOCE-I from nominal
    starting values."""
    df = pd.read_csv(REF / "datasets" / "Oral_1CPT_nlmixr2data.csv")
    df["SS"] = df["SS"].where(df["SS"] != 99, 0)  # 99 marks "not steady state" in this file
    data = C.Dataset.from_records(df)
    pm = C.PopulationModel(
        pkpd.OneCompartmentOral(),
        theta={"KA": 1.0, "CL": 4.0, "V": 70.0},
        omega={"KA": 0.09, "CL": 0.09, "V": 0.09},
        error=C.Proportional(0.2),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", C.ConvergenceWarning)
        fit = C.fit_population(pm, data, standard_errors=False)
    truth = df.groupby("ID", sort=False)[["CL", "V", "KA"]].first().loc[data.ids]
    return pm, data, fit, truth


# The Oral_1CPT fit (120 subjects, steady-state doses) takes 60-90 s on 2 cores: extended.
# In `make test`, FOCE-I is checked against nlmixr2 on theophylline (above) and recovers
# known parameters in test_calibration_recovery.py (M3) and test_iov.py.
@pytest.mark.extended
def test_oral_1cpt_population_geometric_means_recovered(oral_1cpt):
    """The typical values estimate the geometric means of the subjects' true parameters."""
    _, _, fit, truth = oral_1cpt
    assert fit.converged
    for name in ("KA", "CL", "V"):
        geomean = float(np.exp(np.mean(np.log(truth[name].to_numpy()))))
        assert fit.population["theta"][name] == pytest.approx(geomean, rel=0.10), name


@pytest.mark.extended  # shares the Oral_1CPT fit above
def test_individual_map_recovers_true_parameters(oral_1cpt):
    """Vmapped MAP of the 120 subjects correlates with their true CL and V (r >= 0.9), given
    the fitted population (one call) and given nominal values (the prior alone)."""
    pm, data, fit, truth = oral_1cpt
    for ind in (fit.individual, C.individual_map(pm, data, estimator=C.FOCEI())):
        assert ind.converged.all()
        for name in ("CL", "V"):
            r = np.corrcoef(np.log(ind.params[name]), np.log(truth[name].to_numpy()))[0, 1]
            assert r >= 0.9, (name, r)


def test_dataset_errors_name_subject_and_row():
    df = pd.DataFrame(
        {
            "ID": [1, 1, 2, 2],
            "TIME": [0.0, 1.0, 0.0, 1.0],
            "EVID": [1, 0, 1, 0],
            "AMT": [100.0, 0.0, 100.0, 0.0],
            "CMT": [1, 2, 1, 2],
            "DV": [0.0, 1.0, 0.0, np.nan],
            "WT": [70.0, 70.0, np.nan, np.nan],
        }
    )
    with pytest.raises(pkpd.RecordError, match=r"ID=2, row 3.*DV"):
        C.Dataset.from_records(df)
    df.loc[3, "DV"] = 2.0
    with pytest.raises(pkpd.RecordError, match=r"ID=2, row 2: covariate WT"):
        C.Dataset.from_records(df, covariates=["WT"])
    with pytest.raises(pkpd.RecordError, match="covariate column 'CRCL'"):
        C.Dataset.from_records(df, covariates=["CRCL"])


def _records(**columns):
    base = {
        "ID": [1, 1, 1, 2, 2],
        "TIME": [0.0, 1.0, 2.0, 0.0, 1.0],
        "EVID": [1, 0, 0, 1, 0],
        "AMT": [100.0, 0.0, 0.0, 100.0, 0.0],
        "CMT": [1, 2, 2, 1, 2],
        "DV": [0.0, 1.0, 0.5, 0.0, 2.0],
        "WT": [70.0] * 5,
    }
    base.update(columns)
    return pd.DataFrame(base)


def test_records_that_would_be_silently_misread_are_refused():
    # MDV other than 0 and 1 used to drop the observation without a word.
    with pytest.raises(pkpd.RecordError, match=r"ID=1, row 2: MDV is 2.0; expected 0"):
        C.Dataset.from_records(_records(MDV=[1, 0, 2, 1, 0]))
    # DV='.' on an observation: the subject and row, not a bare float error.
    dv = pd.Series([0.0, 1.0, ".", 0.0, 2.0], dtype=object)
    with pytest.raises(pkpd.RecordError, match=r"ID=1, row 2: observation DV='\.'"):
        C.Dataset.from_records(_records(DV=dv))
    # ... while '.' on a dose record (MDV=1) is NONMEM's usual missing DV.
    dv = pd.Series([".", 1.0, 0.5, ".", 2.0], dtype=object)
    data = C.Dataset.from_records(_records(DV=dv, MDV=[1, 0, 0, 1, 0]))
    np.testing.assert_array_equal(data.dv[0], [1.0, 0.5])
    # IDs 1 and "1" are one subject to a reader and two to pandas.
    ids = pd.Series([1, 1, 1, "1", "1"], dtype=object)
    with pytest.raises(pkpd.RecordError, match=r"row 3: ID '1' \(str\) and ID 1 \(int\)"):
        C.Dataset.from_records(_records(ID=ids))
    # Impossible covariates: an infinite one, a negative weight.
    for wt, shown in ((np.inf, "inf"), (-70.0, "-70.0")):
        with pytest.raises(pkpd.RecordError, match=f"ID=2, row 3: covariate WT is {shown}"):
            C.Dataset.from_records(_records(WT=[70.0, 70.0, 70.0, wt, wt]), covariates=["WT"])
    # A signed covariate (centred age) may be negative; AGE itself may be 0 (a newborn).
    data = C.Dataset.from_records(
        _records(CAGE=[-5.0] * 5, AGE=[0.0] * 5), covariates=["CAGE", "AGE"]
    )
    assert data.covariates["CAGE"].tolist() == [-5.0, -5.0]


def test_a_regimen_too_long_to_simulate_is_refused_before_any_work():
    # ADDL = 1e7 took 137 s and 4.7 GB; now refused at once, naming the row and the field.
    amt = [100.0, 0.0, 0.0, 100.0, 0.0]
    records = _records(AMT=amt, ADDL=[0, 0, 0, 10_000_000, 0], II=[0.0, 0.0, 0.0, 12.0, 0.0])
    with pytest.raises(pkpd.RecordError, match=r"ID=2, row 3: ADDL is 10000000.*10,000,001 doses"):
        C.Dataset.from_records(records)
    with pytest.raises(pkpd.RecordError, match="more than the 100,000 allowed"):
        pkpd.regimen_from_records(records[records["ID"] == 2])
    # The limit is per subject and can be raised explicitly.
    records.loc[3, "ADDL"] = 150_000
    regimen = pkpd.regimen_from_records(records[records["ID"] == 2], max_doses=200_000)
    assert int(regimen.mask.sum()) == 150_001


def test_dosing_fields_on_records_that_are_not_doses_are_named():
    with pytest.warns(
        pkpd.RecordWarning, match=r"ID=1, row 1: AMT is 50.0 on a record with EVID=0"
    ):
        data = C.Dataset.from_records(_records(AMT=[100.0, 50.0, 0.0, 100.0, 0.0]))
    assert data.dv[0].tolist() == [1.0, 0.5]  # the observation is still read, the AMT is not
    with pytest.warns(pkpd.RecordWarning, match=r"ID=2, row 4: RATE is 10.0 .* EVID=0"):
        C.Dataset.from_records(_records(RATE=[0.0, 0.0, 0.0, 0.0, 10.0]))


def test_population_model_checks():
    with pytest.raises(ValueError, match="omega for 'Q'"):
        C.PopulationModel(
            pkpd.OneCompartment(), {"CL": 1.0, "V": 10.0}, {"Q": 0.1}, C.Additive(1.0)
        )
    with pytest.raises(ValueError, match="no theta for"):
        C.PopulationModel(pkpd.OneCompartment(), {"CL": 1.0}, {"CL": 0.1}, C.Additive(1.0))
    with pytest.raises(ValueError, match="must be > 0"):
        C.PopulationModel(
            pkpd.OneCompartment(), {"CL": -1.0, "V": 1.0}, {"CL": 0.1}, C.Additive(1.0)
        )


def test_m3_likelihood_against_scipy():
    """Censored observations contribute P(DV < LLOQ); others the normal density."""
    import jax.numpy as jnp
    from scipy import stats

    from calibration._model import observation_loglik

    f = jnp.array([1.0, 0.2, 3.0, 0.5])
    dv = jnp.array([1.3, 0.1, 2.5, 0.0])
    blq = jnp.array([False, True, False, False])
    lloq = jnp.array([-jnp.inf, 0.1, -jnp.inf, -jnp.inf])
    observed = jnp.array([True, True, True, False])
    err = C.Combined(0.1, 0.2)
    ll = np.asarray(
        observation_loglik(err, {"add_sd": 0.1, "prop_sd": 0.2}, f, dv, observed, blq, lloq)
    )
    sd = np.sqrt(0.1**2 + (0.2 * np.asarray(f)) ** 2)
    expected = [
        stats.norm.logpdf(1.3, 1.0, sd[0]),
        stats.norm.logcdf(0.1, 0.2, sd[1]),
        stats.norm.logpdf(2.5, 3.0, sd[2]),
        0.0,
    ]
    np.testing.assert_allclose(ll, expected, rtol=1e-12)


# ----------------------------------------------------------------------------- pytrees, jit


def _small_theo(n: int = 4) -> C.Dataset:
    return C.Dataset.from_records(_theo_records(), covariates=["WT"]).subset(np.arange(n))


def _theo_model(ka: float) -> C.PopulationModel:
    return C.PopulationModel(
        pkpd.OneCompartmentOral(),
        theta={"KA": ka, "CL": 3.0, "V": 30.0},
        omega={"KA": 0.3, "CL": 0.1, "V": 0.1},
        error=C.Additive(1.0),
    )


def test_population_model_and_dataset_are_pytrees():
    import dataclasses

    import equinox as eqx

    pm = _theo_model(1.0)
    assert isinstance(pm, eqx.Module) and isinstance(pm.theta, C.FrozenDict)
    # Equal models (different objects) are equal and hash alike; the order of the etas
    # survives flattening (a pytree dict would sort the names).
    twin = _theo_model(1.0)
    assert twin is not pm and twin == pm and hash(twin.omega) == hash(pm.omega)
    assert pm != _theo_model(1.1)
    assert jax.tree_util.tree_map(lambda x: x, pm).eta_names == ("KA", "CL", "V")
    assert dataclasses.replace(pm, omega_block=True).omega_block
    assert dict(pm.theta) == {"KA": 1.0, "CL": 3.0, "V": 30.0}
    with pytest.raises(TypeError):
        pm.theta["KA"] = 2.0  # type: ignore[index]
    data = _small_theo()
    assert isinstance(data, eqx.Module)
    leaves = jax.tree_util.tree_leaves(data.numeric())
    assert leaves and all(isinstance(x, jax.Array) for x in leaves)
    seen = []

    @jax.jit
    def first_time(pm, data):
        seen.append(pm.eta_names)
        return data.time[:, 0] * pm.n_eta

    np.testing.assert_allclose(first_time(pm, data.numeric()), 3.0 * data.time[:, 0])
    first_time(twin, _small_theo().numeric())  # equal model, new data of the same shapes
    assert seen == [("KA", "CL", "V")]


# Extended: a check of compilation reuse, which benchmarks/first_call.py measures.
@pytest.mark.extended
def test_a_second_fit_reuses_the_compiled_objective(monkeypatch):
    """The objective is compiled once per model value, method and data shapes: a second fit
    of an equal model (a new object) and individual MAP on new data of the same shapes do
    not trace it again (the identity-keyed cache compiled one per model object)."""
    from calibration import _laplace as L

    traces = []
    inner = L._neg_loglik_arrays

    def counted(*args):
        traces.append(args[-1])
        return inner(*args)

    monkeypatch.setattr(L, "_neg_loglik_arrays", counted)
    data = _small_theo()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", C.ConvergenceWarning)
        first = C.fit_population(_theo_model(0.987), data, max_steps=2, standard_errors=False)
        n = len(traces)
        assert n >= 1
        again = C.fit_population(
            _theo_model(0.987), _small_theo(), max_steps=2, standard_errors=False
        )
        assert len(traces) == n
        assert again.ofv == first.ofv
        C.individual_map(_theo_model(0.987), _small_theo(), first, estimator=C.FOCEI())
        assert len(traces) == n
        C.individual_map(_theo_model(0.987), _small_theo(), first, estimator=C.Laplace())
        assert traces[n:] == [C.Laplace()]


# ----------------------------------------------------------------------------- estimators


# Extended: the old string names run every estimator once more; the estimators themselves stay
# checked in make test.
@pytest.mark.extended
def test_estimators_are_objects_and_the_old_strings_still_work():
    """`estimator=FOCEI()` / `Laplace()`; `method="focei"|"laplace"` warns, naming the
    replacement, and gives the same numbers."""
    pm, data = _theo_model(1.0), _small_theo()
    phi = pm.initial()
    for name, cls in (("focei", C.FOCEI), ("laplace", C.Laplace)):
        new = C.individual_map(pm, data, phi, estimator=cls())
        with pytest.warns(DeprecationWarning, match=rf"estimator=calibration\.{cls.__name__}\(\)"):
            old = C.individual_map(pm, data, phi, method=name)
        np.testing.assert_array_equal(new.eta, old.eta)
        np.testing.assert_array_equal(new.cov, old.cov)
    # The defaults: Laplace for individual MAP, FOCE-I for population fits.
    default = C.individual_map(pm, data, phi)
    np.testing.assert_array_equal(default.cov, new.cov)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", C.ConvergenceWarning)
        fit = C.fit_population(pm, data, max_steps=1, standard_errors=False)
        with pytest.warns(DeprecationWarning, match=r"fit_population: method='focei'"):
            old_fit = C.fit_population(pm, data, max_steps=1, standard_errors=False, method="focei")
    assert fit.estimator == C.FOCEI() and fit.method == "focei"
    assert old_fit.ofv == fit.ofv and old_fit.table.equals(fit.table)


def test_a_wrong_estimator_is_refused_clearly():
    pm, data = _theo_model(1.0), _small_theo()
    with pytest.raises(TypeError, match=r"got 'laplace' \(estimator=calibration\.Laplace\(\)\)"):
        C.individual_map(pm, data, estimator="laplace")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"must be calibration\.FOCEI"):
        C.fit_population(pm, data, estimator=C.MAP())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="method must be 'focei' or 'laplace', got 'foce'"):
        C.fit_population(pm, data, method="foce")
    with pytest.raises(TypeError, match="not both"):
        C.individual_map(pm, data, estimator=C.FOCEI(), method="focei")


def _trough_records(trough_time: float = 24.0) -> pd.DataFrame:
    """Two subjects: a trough recorded at the time of the next dose and listed before it (a
    common TDM layout), an observation listed after a dose at its time, and a reset."""
    return pd.DataFrame(
        [
            dict(ID=1, TIME=0.0, EVID=1, AMT=100.0, CMT=1, DV=0.0, MDV=1, OCC=1),
            dict(ID=1, TIME=2.0, EVID=0, AMT=0.0, CMT=1, DV=8.0, MDV=0, OCC=1),
            dict(ID=1, TIME=trough_time, EVID=0, AMT=0.0, CMT=1, DV=1.2, MDV=0, OCC=1),
            dict(ID=1, TIME=24.0, EVID=1, AMT=100.0, CMT=1, DV=0.0, MDV=1, OCC=2),
            dict(ID=1, TIME=25.0, EVID=0, AMT=0.0, CMT=1, DV=9.0, MDV=0, OCC=2),
            dict(ID=2, TIME=0.0, EVID=1, AMT=80.0, CMT=1, DV=0.0, MDV=1, OCC=1),
            dict(ID=2, TIME=0.0, EVID=0, AMT=0.0, CMT=1, DV=7.0, MDV=0, OCC=1),  # after it
            dict(ID=2, TIME=trough_time, EVID=0, AMT=0.0, CMT=1, DV=0.9, MDV=0, OCC=1),
            dict(ID=2, TIME=24.0, EVID=3, AMT=0.0, CMT=1, DV=0.0, MDV=1, OCC=2),  # reset
            dict(ID=2, TIME=24.0, EVID=1, AMT=80.0, CMT=1, DV=0.0, MDV=1, OCC=2),
            dict(ID=2, TIME=30.0, EVID=0, AMT=0.0, CMT=1, DV=3.0, MDV=0, OCC=2),
        ]
    )


def test_observation_listed_before_a_dose_at_its_time_is_predicted_before_it():
    """NONMEM predicts an observation listed before a dose (or reset) at its time before that
    record. The likelihood's predictions (PRED of `residuals`, the FOCE-I objective,
    simulated data) follow the record order: PRED equals `simulate_records`' (an
    independent path, record by record) on every observation, and the objective equals that
    of the same data with each trough moved just before the dose time."""
    records = _trough_records()
    with warnings.catch_warnings():
        warnings.simplefilter("error", pkpd.RecordWarning)
        data = C.Dataset.from_records(records)
    assert data.obs_order is not None
    theta = {"CL": 5.0, "V": 40.0}
    pm = C.PopulationModel(
        pkpd.OneCompartment(), theta=theta, omega={"CL": 0.1, "V": 0.05}, error=C.Additive(0.5)
    )
    ref = pkpd.simulate_records(pkpd.OneCompartment(), theta, records)
    obs = ((records["EVID"] == 0) & (records["MDV"] == 0)).to_numpy()
    res = C.residuals(pm, None, data, key=0, n_sim=50)
    np.testing.assert_allclose(res["PRED"], ref.loc[obs, "PRED"], rtol=1e-10)
    # The troughs are pre-dose (100/40 exp(-3) = 0.12 mg/L), not post-dose (2.6 mg/L).
    assert res["PRED"].iloc[1] < 0.2 and res["PRED"].iloc[4] < 0.2
    near = C.Dataset.from_records(_trough_records(24.0 - 1e-9))
    assert near.obs_order is None
    point = np.asarray(jax.flatten_util.ravel_pytree(pm.initial())[0])[None, :]
    got = C.objective_values(pm, data, point).values
    expected = C.objective_values(pm, near, point).values
    np.testing.assert_allclose(got, expected, rtol=1e-7)
    sims = C.simulate_dataset(pm, None, data, key=1)
    assert float(np.asarray(sims.ipred)[0, 0, 1]) < 0.5  # the simulated trough is pre-dose


def test_trough_at_the_start_of_an_occasion_belongs_to_the_occasion_before():
    """With inter-occasion variability, an observation recorded at the time the next occasion
    starts and listed before its dose takes its own occasion's parameters (V of occasion 1),
    as `simulate_records` with per-record parameters does."""
    records = _trough_records()
    data = C.Dataset.from_records(records)
    pm = C.PopulationModel(
        pkpd.OneCompartment(),
        theta={"CL": 5.0, "V": 40.0},
        omega={"CL": 0.1},
        error=C.Additive(0.5),
        iov={"V": 0.1},
    )
    o = {k: jnp.asarray(v)[0] for k, v in data.arrays().items()}
    reg = jax.tree_util.tree_map(lambda a: jnp.asarray(a)[0], data.regimen)
    b = jnp.array([0.0, 0.0, jnp.log(2.0)])  # V doubles on occasion 2
    f = pm.predict_random({"CL": 5.0, "V": 40.0}, {}, reg, o, b)
    sub = records[records["ID"] == 1].copy()
    sub["V"] = np.where(sub["OCC"] == 2, 80.0, 40.0)
    sub["CL"] = 5.0
    ref = pkpd.simulate_records(pkpd.OneCompartment(), {"CL": "CL", "V": "V"}, sub)
    keep = ((sub["EVID"] == 0) & (sub["MDV"] == 0)).to_numpy()
    np.testing.assert_allclose(np.asarray(f)[:3], ref.loc[keep, "PRED"], rtol=1e-10)
