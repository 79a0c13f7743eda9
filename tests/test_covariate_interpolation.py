"""Time-varying covariates read three ways (issue 21): NONMEM's next-record convention (the
default), last observation carried forward, linear interpolation; the same in simulation
(`pkpd.simulate_records`) and in estimation (`calibration.Dataset.from_records`).

The reference is written here and uses nothing of the engine: a two-compartment model with
first-order absorption as an ODE in the amounts, integrated by `scipy.integrate.solve_ivp`
(rtol 1e-10) between consecutive record and dose times, with `CL = 5 (WT/70)^0.75` and
`V1 = 30 WT/70` from the weight the method gives at each instant:

- "nonmem": on `(t[i-1], t[i]]` the weight of record `i` (NONMEM Users Guide VI, III.I; the
  nmusers cookbook "Time-varying covariates");
- "locf": on `[t[i-1], t[i])` the weight of record `i - 1`;
- "linear": `np.interp` of the records' weights.

The prediction on record `i` is `A2(t[i]) / V1(WT[i])` for every method (the record's own
weight at its own time).
"""

from __future__ import annotations

import itertools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.integrate
import scipy.stats

import calibration as C
import pkpd

MODEL = pkpd.TwoCompartmentOral()
KA, Q, V2 = 1.2, 4.0, 60.0


def cl_of(wt):
    return 5.0 * (wt / 70.0) ** 0.75


def v1_of(wt):
    return 30.0 * (wt / 70.0)


def params_of(df: pd.DataFrame) -> dict:
    wt = df["WT"].to_numpy()
    return {"KA": KA, "CL": cl_of(wt), "V1": v1_of(wt), "Q": Q, "V2": V2}


def records(seed: int = 0, n_subjects: int = 2) -> pd.DataFrame:
    """Oral doses every 12 h (ADDL, so that doses fall between records), an infusion into
    the central compartment, irregular samples; the weight changes on every record."""
    rng = np.random.default_rng(seed)
    rows = []
    obs_times = [1.0, 3.0, 7.0, 11.5, 12.0, 18.0, 26.0, 30.0, 31.0, 33.0, 40.0, 49.0, 58.0, 66.0]
    for sid in range(1, n_subjects + 1):
        w0, slope = rng.uniform(55.0, 90.0), rng.uniform(-0.4, 0.6)

        def wt(t, w0=w0, slope=slope):
            return w0 + slope * t + 3.0 * np.sin(t / 5.0)

        rows.append((sid, 0.0, 1, 100.0, 1, 0.0, 12.0, 5, wt(0.0)))
        rows.append((sid, 30.0, 1, 50.0, 2, 25.0, 0.0, 0, wt(30.0)))
        rows += [(sid, t, 0, 0.0, 2, 0.0, 0.0, 0, wt(t)) for t in obs_times]
    df = pd.DataFrame(
        rows, columns=["ID", "TIME", "EVID", "AMT", "CMT", "RATE", "II", "ADDL", "WT"]
    )
    return df.sort_values(["ID", "TIME", "EVID"], ascending=[True, True, False], kind="stable")


def reference(sub: pd.DataFrame, method: str, eta_cl: float = 0.0) -> np.ndarray:
    """Concentrations on every record of one subject, by solve_ivp (see the module doc)."""
    t_rec = sub["TIME"].to_numpy(float)
    w_rec = sub["WT"].to_numpy(float)
    boluses, infusions = [], []
    for r in sub.itertuples(index=False):
        if r.EVID != 1:
            continue
        for k in range(int(r.ADDL) + 1):
            t = r.TIME + k * r.II
            if r.RATE > 0:
                infusions.append((t, t + r.AMT / r.RATE, r.RATE, int(r.CMT) - 1))
            else:
                boluses.append((t, r.AMT, int(r.CMT) - 1))

    def weight(t: float, a: float, b: float) -> float:
        if method == "linear":
            return float(np.interp(t, t_rec, w_rec))
        mid = 0.5 * (a + b)  # a step function is constant on the open segment (a, b)
        if method == "nonmem":
            return float(w_rec[min(np.searchsorted(t_rec, mid, side="left"), len(t_rec) - 1)])
        return float(w_rec[max(np.searchsorted(t_rec, mid, side="right") - 1, 0)])

    def rhs(t, x, a, b):
        w = weight(t, a, b)
        cl, v1 = cl_of(w) * np.exp(eta_cl), v1_of(w)
        rate = np.zeros(3)
        for t0, t1, r, c in infusions:
            if t0 <= 0.5 * (a + b) < t1:
                rate[c] += r
        return [
            -KA * x[0] + rate[0],
            KA * x[0] - (cl + Q) / v1 * x[1] + Q / V2 * x[2] + rate[1],
            Q / v1 * x[1] - Q / V2 * x[2] + rate[2],
        ]

    cuts = sorted({0.0, *t_rec, *(b[0] for b in boluses), *(i[0] for i in infusions)}
                  | {i[1] for i in infusions})  # fmt: skip
    x = np.zeros(3)
    at = {}
    for a, b in itertools.pairwise(cuts):
        for t0, amount, c in boluses:
            if t0 == a:
                x[c] += amount
        at[a] = x.copy()
        sol = scipy.integrate.solve_ivp(
            rhs, (a, b), x, args=(a, b), method="DOP853", rtol=1e-10, atol=1e-12
        )
        x = sol.y[:, -1]
    for t0, amount, c in boluses:
        if t0 == cuts[-1]:
            x[c] += amount
    at[cuts[-1]] = x
    return np.array([at[t][1] for t in t_rec]) / v1_of(w_rec)


# ----------------------------------------------------------------------------- simulation


@pytest.mark.parametrize("method", ["nonmem", "locf", "linear"])
def test_simulate_records_against_solve_ivp(method):
    rec = records()
    interp = None if method == "nonmem" else {"WT": method}
    out = pkpd.simulate_records(MODEL, params_of, rec, interpolation=interp)
    obs = rec["EVID"].to_numpy() == 0
    for sid, sub in rec.groupby("ID", sort=False):
        ref = reference(sub, method)
        got = out.loc[sub.index, "PRED"].to_numpy()
        mine = obs[rec["ID"].to_numpy() == sid]
        err = np.max(np.abs(got[mine] - ref[mine]) / np.abs(ref[mine]))
        # Step functions are exact (closed form against solve_ivp at 1e-10). Linear
        # interpolation is the midpoint rule on 8 sub-intervals per interval (docs/dosing.md):
        # 1.6e-4 and 7.8e-4 here, where records are up to 9 h apart and the weight moves by
        # up to 17% between two of them (2 kg/h: extreme, to tell the methods apart).
        assert err < (1e-8 if method != "linear" else 1e-3), (sid, method, err)


@pytest.mark.extended  # three compilations; test_simulate_records_against_solve_ivp covers 8
def test_linear_interpolation_converges_at_second_order():
    rec = records(seed=3, n_subjects=1)
    ref = reference(rec, "linear")
    obs = rec["EVID"].to_numpy() == 0
    errors = []
    for substeps in (4, 16, 64):
        out = pkpd.simulate_records(
            MODEL, params_of, rec, interpolation={"WT": "linear"}, substeps=substeps
        )
        got = out["PRED"].to_numpy()
        errors.append(np.max(np.abs(got[obs] - ref[obs]) / ref[obs]))
    # The midpoint rule: 4x the sub-steps, 16x smaller error.
    assert 10.0 < errors[0] / errors[1] < 25.0, errors
    assert 10.0 < errors[1] / errors[2] < 25.0, errors
    assert errors[2] < 1e-5, errors  # it converges to the reference


def test_the_default_is_nonmems_next_record_convention():
    rec = records()
    default = pkpd.simulate_records(MODEL, params_of, rec)
    for name in ("nonmem", "next"):
        same = pkpd.simulate_records(MODEL, params_of, rec, interpolation={"WT": name})
        np.testing.assert_array_equal(same["PRED"].to_numpy(), default["PRED"].to_numpy())
    locf = pkpd.simulate_records(MODEL, params_of, rec, interpolation={"WT": "locf"})
    assert not np.allclose(locf["PRED"].to_numpy(), default["PRED"].to_numpy(), rtol=1e-4)
    # The added rows do not show: one output row per record, in the caller's order.
    assert list(locf.index) == list(rec.index)


def test_nonmem_prints_the_next_record_convention():
    """`mrgtv01` (NONMEM 7.5.0, tests/data/nmtests): CL = 1.1 (WT/70)^0.75, WT changing on
    every record. The default matches NONMEM's printed CP; the other readings do not."""
    here = pathlib.Path(__file__).parent / "data" / "nmtests"
    recs = pd.read_csv(here / "records.csv")
    rec = recs[recs["scenario"] == "mrgtv01"]
    nm = pd.read_csv(here / "nonmem_output.csv")
    ref = nm[nm["scenario"] == "mrgtv01"]["CP"].to_numpy()
    obs = (rec["EVID"].to_numpy() == 0) & (ref != 0)
    params = {"KA": 1.5, "CL": lambda df: 1.1 * (df["WT"] / 70.0) ** 0.75, "V": 20.0}
    worst = {}
    for method in ("nonmem", "locf", "linear"):
        out = pkpd.simulate_records(
            pkpd.OneCompartmentOral(), params, rec, interpolation={"WT": method}
        )
        cp = 1000.0 * out["PRED"].to_numpy()  # CP = 1000 * A(2) / V (ug/L)
        worst[method] = np.max(np.abs(cp[obs] - ref[obs]) / np.abs(ref[obs]))
    assert worst["nonmem"] < 1e-4, worst  # 5 printed digits
    assert worst["locf"] > 0.03 and worst["linear"] > 0.01, worst


def test_rows_added_by_interpolation():
    rec = pd.DataFrame(
        {"ID": [1, 1, 1, 1], "TIME": [0.0, 4.0, 4.0, 10.0], "EVID": [1, 0, 0, 0],
         "AMT": [10.0, 0, 0, 0], "CMT": [1, 2, 2, 2], "WT": [60.0, 64.0, 64.0, 64.0],
         "CRCL": [90.0, 90.0, 80.0, 70.0]}
    )  # fmt: skip
    df = pkpd.validate_records(rec)
    rows, record = pkpd.interpolate_covariates(df, {"WT": "linear", "CRCL": "locf"}, substeps=4)
    # (0, 4]: WT changes, 4 linear sub-rows; (4, 4]: nothing; (4, 10]: only CRCL, 1 row.
    assert record.tolist() == [0, -1, -1, -1, -1, 1, 2, -1, 3]
    added = rows[record < 0]
    np.testing.assert_allclose(added["TIME"], [1.0, 2.0, 3.0, 4.0, 10.0])
    np.testing.assert_allclose(added["WT"], [60.5, 61.5, 62.5, 63.5, 64.0])
    np.testing.assert_allclose(added["CRCL"], [90.0, 90.0, 90.0, 90.0, 80.0])
    assert (added["EVID"] == 2).all() and (added["MDV"] == 1).all() and (added["AMT"] == 0).all()
    assert list(added.index) == [1, 1, 1, 1, 3]  # the label of the record each precedes


def test_interpolation_errors_name_the_covariate():
    rec = records(n_subjects=1)
    with pytest.raises(ValueError, match=r"covariate 'WEIGHT', which is not a column"):
        pkpd.simulate_records(MODEL, params_of, rec, interpolation={"WEIGHT": "linear"})
    with pytest.raises(ValueError, match=r"interpolation 'cubic' for covariate 'WT'; expected"):
        pkpd.simulate_records(MODEL, params_of, rec, interpolation={"WT": "cubic"})
    bad = rec.copy()
    bad.loc[bad.index[4], "WT"] = np.nan
    with pytest.raises(
        pkpd.RecordError,
        match=rf"subject ID=1, row {bad.index[4]}: covariate WT is nan; expected a finite",
    ):
        pkpd.simulate_records(MODEL, params_of, bad, interpolation={"WT": "locf"})
    with pytest.raises(ValueError, match=r"substeps must be an integer >= 1"):
        pkpd.simulate_records(MODEL, params_of, rec, interpolation={"WT": "linear"}, substeps=0)
    data_rec = rec.assign(DV=0.0)
    with pytest.raises(ValueError, match=r"interpolation for covariate 'WT', which is not among"):
        C.Dataset.from_records(data_rec, covariates=[], interpolation={"WT": "linear"})
    with pytest.raises(ValueError, match=r"interpolation 'spline' for covariate 'WT'"):
        C.Dataset.from_records(data_rec, covariates=["WT"], interpolation={"WT": "spline"})
    with pytest.raises(
        pkpd.RecordError, match=r"subject ID=1, row .*: covariate WT is -5.0; expected"
    ):
        C.Dataset.from_records(
            data_rec.assign(WT=np.where(data_rec["TIME"] > 40, -5.0, data_rec["WT"])),
            covariates=["WT"],
            interpolation={"WT": "nonmem"},
        )


# ----------------------------------------------------------------------------- estimation

PM = C.PopulationModel(
    MODEL,
    theta={"KA": KA, "CL": 5.0, "CL_WT": 0.75, "V1": 30.0, "Q": Q, "V2": V2},
    omega={"CL": 0.09},
    error=C.Additive(0.05),
    typical=lambda th, c: {
        "KA": th["KA"],
        "CL": th["CL"] * (c["WT"] / 70.0) ** th["CL_WT"],
        "V1": th["V1"] * (c["WT"] / 70.0),
        "Q": th["Q"],
        "V2": th["V2"],
    },
    unconstrained=("CL_WT",),
)


@jax.jit
def _logliks(nat, cov, reg, obs, eta):
    return jax.vmap(lambda c, r, o, e: PM.subject_loglik(nat, c, r, o, e))(cov, reg, obs, eta)


@pytest.mark.parametrize(
    "method",
    # locf is linear's machinery with one row per interval: extended (each case compiles).
    ["nonmem", pytest.param("locf", marks=pytest.mark.extended), "linear"],
)
def test_estimation_likelihood_equals_the_simulated_predictions(method):
    rec = records(seed=1, n_subjects=3)
    rng = np.random.default_rng(7)
    rec["DV"] = np.where(rec["EVID"] == 0, rng.uniform(0.5, 3.0, len(rec)), 0.0)
    data = C.Dataset.from_records(rec, covariates=["WT"], interpolation={"WT": method})
    assert data.time_varying
    nat = PM.natural(PM.initial())
    eta = jnp.asarray([[0.2], [-0.3], [0.0]])
    cov = {k: jnp.asarray(v) for k, v in data.covariates.items()}
    got = -2.0 * np.asarray(_logliks(nat, cov, data.regimen, data.arrays(), eta))
    for i, (_, sub) in enumerate(rec.groupby("ID", sort=False)):
        e = float(eta[i, 0])
        params = lambda df, e=e: params_of(df) | {"CL": cl_of(df["WT"].to_numpy()) * np.exp(e)}
        pred = pkpd.simulate_records(MODEL, params, sub, interpolation={"WT": method})["PRED"]
        obs = sub["EVID"].to_numpy() == 0
        ll = scipy.stats.norm.logpdf(sub["DV"].to_numpy()[obs], pred.to_numpy()[obs], 0.05)
        np.testing.assert_allclose(got[i], -2.0 * ll.sum(), rtol=1e-10)
        # and the independent solve_ivp reference, to the method's accuracy
        ref = reference(sub, method, eta_cl=e)
        tol = 1e-8 if method != "linear" else 1e-3
        np.testing.assert_allclose(pred.to_numpy()[obs], ref[obs], rtol=tol)


def test_a_covariate_outside_the_domain_later_in_time_is_rejected():
    rec = records(seed=1, n_subjects=1)
    rec["DV"] = np.where(rec["EVID"] == 0, 1.0, 0.0)
    pm = C.PopulationModel(
        MODEL,
        theta={"KA": KA, "CL": 5.0, "CL_WT": 0.1, "V1": 30.0, "Q": Q, "V2": V2},
        omega={"CL": 0.09},
        error=C.Additive(0.05),
        typical=lambda th, c: {
            "KA": th["KA"],
            "CL": th["CL"] + th["CL_WT"] * (70.0 - c["WT"]),
            "V1": th["V1"],
            "Q": th["Q"],
            "V2": th["V2"],
        },
        unconstrained=("CL_WT",),
    )
    rec["WT"] = np.where(rec["TIME"] > 40, 130.0, 70.0)  # CL = 5 - 6 < 0 after 40 h
    data = C.Dataset.from_records(rec, covariates=["WT"], interpolation={"WT": "nonmem"})
    nat = pm.natural(pm.initial())
    cov = {k: jnp.asarray(v[0]) for k, v in data.covariates.items()}
    obs = jax.tree_util.tree_map(lambda a: a[0], data.arrays())
    reg = jax.tree_util.tree_map(lambda a: a[0], data.regimen)
    ll = pm.subject_loglik(nat, cov, reg, obs, jnp.zeros(1))
    assert float(ll) == -np.inf
    assert np.isnan(np.asarray(pm.predict_random(nat["theta"], cov, reg, obs, jnp.zeros(1)))).all()
    assert bool(pm.subject_in_domain(nat["theta"], cov, jnp.zeros(1), 1))  # the baseline is in


def test_residuals_and_vpc_follow_time_varying_covariates_and_simulation_reads_them():
    """Residuals and the VPC's population predictions of data with time-varying covariates
    follow them record by record: PRED is simulate_records at eta = 0, IPRED at the
    conditional modes, IWRES (DV - IPRED) / sigma (individual_plots' curves through the
    same predictions: tests/test_iov_time_varying.py)."""
    rec = records(seed=2, n_subjects=2)
    rng = np.random.default_rng(11)
    rec["DV"] = np.where(rec["EVID"] == 0, rng.uniform(0.5, 3.0, len(rec)), 0.0)
    data = C.Dataset.from_records(rec, covariates=["WT"], interpolation={"WT": "linear"})
    population = PM.initial()
    modes = C.individual_map(PM, data, population)
    res = C.residuals(PM, population, data, key=0, n_sim=40, individual=modes)
    for i, (sid, sub) in enumerate(rec.groupby("ID", sort=False)):
        obs = sub["EVID"].to_numpy() == 0
        got = res[res["ID"] == sid]
        for col, e in (("PRED", 0.0), ("IPRED", float(modes.eta[i, 0]))):
            params = lambda df, e=e: params_of(df) | {"CL": cl_of(df["WT"].to_numpy()) * np.exp(e)}
            ref = pkpd.simulate_records(MODEL, params, sub, interpolation={"WT": "linear"})
            np.testing.assert_allclose(got[col], ref["PRED"].to_numpy()[obs], rtol=1e-10)
        np.testing.assert_allclose(got["IWRES"], (got["DV"] - got["IPRED"]) / 0.05, rtol=1e-10)
        assert np.all(np.isfinite(got["CWRES"])) and np.all(np.isfinite(got["NPDE"]))
    # The pcVPC's PRED is the same population prediction.
    vpc = C.vpc(PM, population, data, key=0, n_rep=20, bins=4, pred_corrected=True)
    pcv = vpc.observations.sort_values(["ID", "TIME"], kind="stable")
    np.testing.assert_allclose(pcv["PRED"], res.sort_values(["ID", "TIME"])["PRED"], rtol=1e-10)
    sim = C.simulate_dataset(PM, None, data, key=0)
    # IPRED: the engine on the rows, equal to simulate_records at each simulated eta.
    for i, (_, sub) in enumerate(rec.groupby("ID", sort=False)):
        e = float(sim.eta[0, i, 0])
        params = lambda df, e=e: params_of(df) | {"CL": cl_of(df["WT"].to_numpy()) * np.exp(e)}
        pred = pkpd.simulate_records(MODEL, params, sub, interpolation={"WT": "linear"})
        obs = sub["EVID"].to_numpy() == 0
        k = int(obs.sum())
        np.testing.assert_allclose(sim.ipred[0, i, :k], pred["PRED"].to_numpy()[obs], rtol=1e-10)
    assert data.subset([1]).row_time.shape == (1, data.row_time.shape[1])


def _fit_data(n: int, seed: int) -> pd.DataFrame:
    """`n` subjects whose weight changes linearly between records (from 50-100 kg, by up to
    +-40% over 72 h), one-compartment oral, CL = 4 (WT/70)^0.75 exp(eta), V = 40 WT/70."""
    rng = np.random.default_rng(seed)
    model = pkpd.OneCompartmentOral()
    out = []
    times = np.array([0.5, 1.5, 3.0, 6.0, 10.0, 24.0, 25.0, 30.0, 48.0, 49.0, 54.0, 72.0])
    for sid in range(1, n + 1):
        w0, w1 = rng.uniform(50.0, 100.0), rng.uniform(0.6, 1.4)
        rows = [(sid, 0.0, 1, 200.0, 1, 24.0, 2)] + [(sid, t, 0, 0.0, 2, 0.0, 0) for t in times]
        df = pd.DataFrame(rows, columns=["ID", "TIME", "EVID", "AMT", "CMT", "II", "ADDL"])
        df["WT"] = w0 * (1.0 + (w1 - 1.0) * df["TIME"] / 72.0)
        eta = 0.3 * rng.standard_normal()

        def p(d, eta=eta):
            wt = d["WT"].to_numpy()
            return {"KA": 1.0, "CL": 4.0 * (wt / 70.0) ** 0.75 * np.exp(eta), "V": 40.0 * wt / 70}

        pred = pkpd.simulate_records(model, p, df, interpolation={"WT": "linear"})["PRED"]
        df["DV"] = np.where(df["EVID"] == 0, pred * (1.0 + 0.05 * rng.standard_normal(len(df))), 0)
        out.append(df)
    return pd.concat(out, ignore_index=True)


# Extended: a FOCE-I fit; the interpolation rules themselves are checked in make test.
@pytest.mark.extended
def test_a_fit_recovers_the_covariate_effect_of_a_linearly_interpolated_weight():
    rec = _fit_data(40, seed=11)
    data = C.Dataset.from_records(rec, covariates=["WT"], interpolation={"WT": "linear"})
    pm = C.PopulationModel(
        pkpd.OneCompartmentOral(),
        theta={"KA": 1.0, "CL": 3.0, "CL_WT": 0.2, "V": 30.0},
        omega={"CL": 0.1},
        error=C.Proportional(0.1),
        typical=lambda th, c: {
            "KA": th["KA"],
            "CL": th["CL"] * (c["WT"] / 70.0) ** th["CL_WT"],
            "V": th["V"] * c["WT"] / 70.0,
        },
        unconstrained=("CL_WT",),
    )
    fit = C.fit_population(pm, data)
    theta = fit.population["theta"]
    se = fit.table.set_index("parameter").loc["CL_WT", "se"]
    assert abs(float(theta["CL_WT"]) - 0.75) < max(0.15, 2.5 * float(se)), fit.table
    assert abs(float(theta["CL"]) / 4.0 - 1.0) < 0.1, fit.table
    assert abs(float(theta["V"]) / 40.0 - 1.0) < 0.1, fit.table
