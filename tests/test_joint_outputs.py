"""Models that observe several outputs (joint PK/PD): `calibration.ByOutput`.

Each observation's DVID picks the model output it measures and its own residual error model.
The FOCE-I objective of a joint model is checked against an independent computation (numpy
predictions, scipy's optimiser for the conditional modes, finite-difference Jacobians and
the FOCE-I curvature written out), a fit recovers known parameters from simulated data, and
the diagnostics take one output at a time."""

from __future__ import annotations

import math

import jax
import numpy as np
import pandas as pd
import pytest
import scipy.optimize

import calibration as C
import pkpd

MODEL = pkpd.PKPD(pkpd.OneCompartment(), pkpd.Emax())
TRUE = {"CL": 2.0, "V": 20.0, "E0": 10.0, "EMAX": 40.0, "EC50": 3.0}
OMEGA = {"CL": 0.09, "EC50": 0.16}
PROP, ADD = 0.1, 2.0
TC = np.array([0.5, 2.0, 6.0, 12.0, 24.0])
TE = np.array([1.0, 4.0, 8.0, 16.0])


def joint_error(prop=PROP, add=ADD):
    return C.ByOutput(
        C.Observation(1, "C", C.Proportional(prop), "cp"),
        C.Observation(2, "E", C.Additive(add), "pd"),
    )


def joint_model(theta=None, **kw):
    return C.PopulationModel(
        MODEL, theta=dict(TRUE if theta is None else theta), omega=OMEGA, error=joint_error(), **kw
    )


def simulate_records(n: int, seed: int, dose: float = 100.0) -> pd.DataFrame:
    """PK levels (DVID 1, proportional error) and effects (DVID 2, additive error) of `n`
    subjects after one IV bolus, from the closed forms (not the engine)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(1, n + 1):
        cl = TRUE["CL"] * math.exp(rng.normal(0, math.sqrt(OMEGA["CL"])))
        ec50 = TRUE["EC50"] * math.exp(rng.normal(0, math.sqrt(OMEGA["EC50"])))
        rows.append(dict(ID=i, TIME=0.0, EVID=1, AMT=dose, CMT=1, DV=0.0, MDV=1, DVID=0))
        obs = [(t, 1) for t in TC] + [(t, 2) for t in TE]
        for t, kind in sorted(obs):
            c = dose / TRUE["V"] * math.exp(-cl / TRUE["V"] * t)
            if kind == 1:
                dv = c * (1.0 + PROP * rng.normal())
            else:
                dv = TRUE["E0"] + TRUE["EMAX"] * c / (ec50 + c) + ADD * rng.normal()
            rows.append(dict(ID=i, TIME=t, EVID=0, AMT=0.0, CMT=1, DV=dv, MDV=0, DVID=kind))
    return pd.DataFrame(rows)


def _independent_focei(records: pd.DataFrame, theta, omega, prop, add) -> float:
    """-log L by FOCE-I, written out with numpy and scipy for this model."""
    om = np.diag([omega["CL"], omega["EC50"]])
    om_inv = np.linalg.inv(om)
    total = 0.0
    for _, sub in records.groupby("ID", sort=False):
        dose = float(sub.loc[sub.EVID == 1, "AMT"].iloc[0])
        obs = sub[sub.EVID == 0]
        t, y, kind = (obs[c].to_numpy(dtype=float) for c in ("TIME", "DV", "DVID"))

        def pred(eta, t=t, kind=kind, dose=dose):
            cl = theta["CL"] * math.exp(eta[0])
            ec50 = theta["EC50"] * math.exp(eta[1])
            c = dose / theta["V"] * np.exp(-cl / theta["V"] * t)
            e = theta["E0"] + theta["EMAX"] * c / (ec50 + c)
            return np.where(kind == 1, c, e)

        def sd(f, kind=kind):
            return np.where(kind == 1, prop * np.abs(f), add)

        def nll(eta, y=y):
            f = pred(eta)
            s = sd(f)
            ll = -0.5 * ((y - f) / s) ** 2 - np.log(s) - 0.5 * math.log(2 * math.pi)
            prior = -0.5 * eta @ om_inv @ eta - 0.5 * math.log(np.linalg.det(2 * math.pi * om))
            return -(ll.sum() + prior)

        mode = scipy.optimize.minimize(nll, np.zeros(2), method="BFGS", options={"gtol": 1e-10}).x
        f = pred(mode)
        h = 1e-6
        jac = np.stack(
            [(pred(mode + h * e) - pred(mode - h * e)) / (2 * h) for e in np.eye(2)], axis=1
        )
        # the FOCE-I information: 1/var + (dvar/df)^2 / (2 var^2); var = (prop f)^2 or add^2
        w = np.where(kind == 1, 1.0 / (prop * f) ** 2 + 2.0 / f**2, 1.0 / add**2)
        hess = (jac * w[:, None]).T @ jac + om_inv
        total += nll(mode) + 0.5 * math.log(np.linalg.det(hess)) - math.log(2 * math.pi)
    return total


def test_focei_objective_of_a_joint_model_matches_an_independent_computation():
    records = simulate_records(6, seed=3)
    data = C.Dataset.from_records(records)
    theta = {"CL": 2.4, "V": 18.0, "E0": 12.0, "EMAX": 35.0, "EC50": 2.5}
    pm = joint_model(theta)
    point = np.asarray(jax.flatten_util.ravel_pytree(pm.initial())[0])[None, :]
    got = float(C.objective_values(pm, data, point).values[0])
    expected = _independent_focei(records, theta, OMEGA, PROP, ADD)
    assert got == pytest.approx(expected, rel=1e-7)
    # The same observations coded by CMT instead of DVID give the same objective.
    by_cmt = records.assign(CMT=np.where(records["DVID"] == 2, 3, 2)).drop(columns="DVID")
    by_cmt.loc[by_cmt["EVID"] == 1, "CMT"] = 1
    pm_cmt = C.PopulationModel(
        MODEL,
        theta=theta,
        omega=OMEGA,
        error=C.ByOutput(
            C.Observation(2, "C", C.Proportional(PROP), "cp"),
            C.Observation(3, "E", C.Additive(ADD), "pd"),
        ),
    )
    data_cmt = C.Dataset.from_records(by_cmt, dvid="CMT")
    assert float(C.objective_values(pm_cmt, data_cmt, point).values[0]) == pytest.approx(got)


@pytest.mark.extended  # a 60-subject fit, ~40 s; make test checks the objective (above)
def test_joint_fit_recovers_known_parameters():
    """FOCE-I on 60 simulated subjects: every estimate (typical values, variances and both
    residual errors) lies within 3 of its standard errors of the truth, and the standard
    errors are those of a well-determined fit (relative SE under 25%)."""
    data = C.Dataset.from_records(simulate_records(60, seed=11))
    start = {"CL": 3.0, "V": 15.0, "E0": 8.0, "EMAX": 50.0, "EC50": 5.0}
    fit = C.fit_population(joint_model(start), data)
    assert fit.converged
    est = fit.population
    truth = TRUE | {f"omega:{k}": v for k, v in OMEGA.items()}
    truth |= {"cp.prop_sd": PROP, "pd.add_sd": ADD}
    table = fit.table.assign(
        name=[
            p if k != "omega" else f"omega:{p}"
            for k, p in zip(fit.table["kind"], fit.table["parameter"], strict=True)
        ]
    ).set_index("name")
    assert set(table.index) == set(truth)
    for name, value in truth.items():
        row = table.loc[name]
        assert abs(row["estimate"] - value) < 3.0 * row["se"], (name, row["estimate"], row["se"])
        assert row["rse_pct"] < 25.0, name
    # Residuals: each observation's IWRES uses its own output's error model.
    res = C.residuals(C.PopulationModel(MODEL, TRUE, OMEGA, joint_error()), fit, data, key=0,
                      n_sim=100)  # fmt: skip
    assert set(res["DVID"]) == {1.0, 2.0}
    nat_prop = float(est["sigma"]["cp.prop_sd"])  # the fit's values, which residuals use
    nat_add = float(est["sigma"]["pd.add_sd"])
    pk, pd_ = res[res["DVID"] == 1], res[res["DVID"] == 2]
    np.testing.assert_allclose(pk["IWRES"], (pk["DV"] - pk["IPRED"]) / (nat_prop * pk["IPRED"]))
    np.testing.assert_allclose(pd_["IWRES"], (pd_["DV"] - pd_["IPRED"]) / nat_add)
    assert 0.7 < np.nanstd(res["CWRES"]) < 1.3 and abs(np.nanmean(res["NPDE"])) < 0.2


# Extended: VPC and GOF of a joint model compile for about a minute; the joint FOCE-I
# objective against an independent computation stays in make test.
@pytest.mark.extended
def test_diagnostics_take_one_output_at_a_time():
    data = C.Dataset.from_records(simulate_records(12, seed=5))
    pm = joint_model()
    v = C.vpc(pm, None, data, key=1, n_rep=50, bins=4, dvid=2)
    assert np.allclose(v.observations["DV"].to_numpy(), data.dv[data.obs_dvid == 2])
    ax = v.plot(unit="%").axes[0]
    assert ax.get_ylabel() == "DV (%)" and ax.get_xlabel() == "TIME (h)"
    labels = ax.get_legend_handles_labels()[1]
    assert "95% interval of the simulated 50th" in labels and "observed 5th" in labels
    with pytest.raises(ValueError, match=r"2 kinds \(DVID \[1, 2\]\); give dvid="):
        C.vpc(pm, None, data, key=1, n_rep=50)
    with pytest.raises(ValueError, match="no observation has DVID=7"):
        C.vpc(pm, None, data, key=1, n_rep=50, dvid=7)
    res = C.residuals(pm, None, data, key=0, n_sim=100)
    with pytest.raises(ValueError, match="give dvid="):
        C.gof_plots(res)
    fig = C.gof_plots(res, dvid=1, unit="mg/L")
    assert fig.axes[0].get_xlabel() == "PRED (mg/L)"
    fig = C.individual_plots(pm, None, data, ids=[1, 2], dvid=2, unit="%")
    assert len(fig.axes[0].collections[0].get_offsets()) == len(TE)
    # Simulated observations: the PD residuals have the additive SD, the PK ones the
    # proportional (over 400 replicates of 12 subjects).
    sim = C.simulate_dataset(pm, None, data, key=2, n_rep=400)
    kind = np.broadcast_to(data.obs_dvid, sim.dv.shape)
    m = np.broadcast_to(data.observed, sim.dv.shape)
    r_pd = (sim.dv - sim.ipred)[m & (kind == 2)]
    r_pk = ((sim.dv - sim.ipred) / sim.ipred)[m & (kind == 1)]
    assert np.std(r_pd) == pytest.approx(ADD, rel=0.05)
    assert np.std(r_pk) == pytest.approx(PROP, rel=0.05)


def test_observation_kinds_the_model_does_not_have_are_refused():
    records = simulate_records(3, seed=1)
    data = C.Dataset.from_records(records)
    single = C.PopulationModel(MODEL, theta=TRUE, omega=OMEGA, error=C.Additive(1.0), output=0)
    with pytest.raises(pkpd.RecordError, match=r"DVID has 2 values \[1, 2\]: observations of"):
        C.fit_population(single, data)
    with pytest.raises(pkpd.RecordError, match="the records have no DVID column"):
        C.fit_population(joint_model(), C.Dataset.from_records(records.drop(columns="DVID")))
    odd = records.copy()
    odd.loc[7, "DVID"] = 3
    with pytest.raises(pkpd.RecordError, match=r"subject ID=1, row 7: an observation with DVID=3"):
        C.fit_population(joint_model(), C.Dataset.from_records(odd))
    text = records.astype({"DVID": object})
    text.loc[2, "DVID"] = "pca"
    with pytest.raises(pkpd.RecordError, match=r"subject ID=1, row 2: DVID='pca' on an obs"):
        C.Dataset.from_records(text)
    with pytest.raises(pkpd.RecordError, match="missing DVID column 'TYPE'"):
        C.Dataset.from_records(records, dvid="TYPE")
    with pytest.raises(ValueError, match=r"measures output 'CP', which PKPD does not have"):
        C.PopulationModel(MODEL, TRUE, OMEGA, C.ByOutput(C.Observation(1, "CP", C.Additive(1.0))))
    with pytest.raises(ValueError, match=r"its own dvid, got \['1.0'\] twice"):
        C.ByOutput(C.Observation(1, "C", C.Additive(1.0)), C.Observation(1, "E", C.Additive(1.0)))
