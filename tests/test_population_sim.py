"""twins.simulate_population: a population on a drug in one call.

References: the closed form of a one-compartment IV bolus (C = D/V exp(-CL/V t), AUC over
[a, b] = D/CL (exp(-k a) - exp(-k b))), each subject simulated alone by pkpd.simulate at
the parameters it was given, and the sampling distributions of the variances drawn.
"""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest

import calibration as C
import pkpd
import twins

DOSE = 100.0


def _pm(iov=None):
    return C.PopulationModel(
        pkpd.OneCompartment(),
        theta={"CL": 2.0, "V": 20.0},
        omega={"CL": 0.09, "V": 0.04},
        error=C.Additive(0.5),
        typical=lambda th, c: {"CL": th["CL"] * (c["WT"] / 70.0) ** 0.75, "V": th["V"]},
        iov=iov or {},
    )


def _subjects(n, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"ID": [f"s{i}" for i in range(n)], "WT": rng.uniform(50, 110, n)})


TIMES = np.array([0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0])


def test_predictions_are_the_closed_form_at_the_parameters_drawn():
    subjects = _subjects(200)
    sim = twins.simulate_population(_pm(), subjects, pkpd.bolus(DOSE), TIMES, key=1, ruv=False)
    d = sim.data
    assert len(d) == 200 * TIMES.size and list(d.columns[:6]) == ["REP", "ID", "TIME", "OCC",
                                                                   "IPRED", "DV"]  # fmt: skip
    expected = DOSE / d["V"] * np.exp(-d["CL"] / d["V"] * d["TIME"])
    np.testing.assert_allclose(d["IPRED"], expected, rtol=1e-10)
    np.testing.assert_array_equal(d["DV"], d["IPRED"])  # no residual error
    # the typical value and the eta: CL = 2 (WT/70)^0.75 exp(eta_CL)
    first = d.drop_duplicates("ID").set_index("ID").loc[subjects["ID"]]
    eta = np.log(first["CL"] / (2.0 * (subjects["WT"].to_numpy() / 70.0) ** 0.75))
    np.testing.assert_allclose(eta, sim.eta[0, :, 0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(first["WT"], subjects["WT"])


def test_variability_switches_and_their_sizes():
    n = 4000
    subjects = _subjects(n, seed=2)
    sim = twins.simulate_population(_pm(), subjects, pkpd.bolus(DOSE), TIMES, key=5)
    assert sim.variability == ("bsv", "ruv")
    # Omega: the sample variance of eta_CL and eta_V within 4 standard errors (var * sqrt(2/n))
    for k, omega in enumerate((0.09, 0.04)):
        var = np.var(sim.eta[0, :, k], ddof=1)
        assert abs(var - omega) < 4 * omega * np.sqrt(2.0 / (n - 1)), (k, var)
    resid = (sim.dv - sim.ipred).ravel()
    sd = np.std(resid, ddof=1)
    assert abs(sd - 0.5) < 4 * 0.5 / np.sqrt(2.0 * resid.size), sd
    typical = twins.simulate_population(
        _pm(), subjects.iloc[:5], pkpd.bolus(DOSE), TIMES, key=5, bsv=False, ruv=False
    )
    assert typical.variability == () and np.all(typical.eta == 0.0)
    for i, wt in enumerate(subjects["WT"].iloc[:5]):
        params = {"CL": 2.0 * (wt / 70.0) ** 0.75, "V": 20.0}
        alone = np.asarray(pkpd.simulate(pkpd.OneCompartment(), params, pkpd.bolus(DOSE), TIMES))
        np.testing.assert_allclose(typical.ipred[0, i], alone, rtol=1e-10)
    again = twins.simulate_population(_pm(), subjects.iloc[:50], pkpd.bolus(DOSE), TIMES, key=5)
    np.testing.assert_array_equal(again.dv, sim.dv[:, :50])  # the same key, the same draws


def test_inter_occasion_variability_by_occasion():
    n = 3000
    pm = _pm(iov={"CL": 0.04})
    regimen = pkpd.bolus(DOSE) + pkpd.bolus(DOSE, time=24.0)
    times = np.array([2.0, 12.0, 26.0, 36.0])
    sim = twins.simulate_population(
        pm, _subjects(n, seed=3), regimen, times, key=7, occasions=[0.0, 24.0], ruv=False
    )
    assert sim.variability == ("bsv", "iov") and sim.kappa.shape == (1, n, 2, 1)
    d = sim.data
    assert d.loc[d["TIME"] < 24, "OCC"].eq(0).all() and d.loc[d["TIME"] > 24, "OCC"].eq(1).all()
    cl = d.pivot_table(index="ID", columns="OCC", values="CL", aggfunc="first")
    diff = np.log(cl[1] / cl[0])  # kappa_1 - kappa_0 ~ N(0, 2 omega_IOV)
    assert abs(np.var(diff, ddof=1) - 0.08) < 4 * 0.08 * np.sqrt(2.0 / (n - 1))
    without = twins.simulate_population(
        pm, _subjects(20, seed=3), regimen, times, key=7, occasions=[0.0, 24.0], iov=False
    )
    assert np.all(without.kappa == 0.0)
    with pytest.raises(ValueError, match="spans occasions"):
        sim.exposure(12.0, 30.0)


def test_exposure_is_exact():
    sim = twins.simulate_population(_pm(), _subjects(30), pkpd.bolus(DOSE), TIMES, key=4)
    e = sim.exposure(2.0, 10.0)
    first = sim.data.drop_duplicates("ID").set_index("ID").loc[e["ID"]]
    k = first["CL"].to_numpy() / first["V"].to_numpy()
    auc = DOSE / first["CL"].to_numpy() * (np.exp(-2.0 * k) - np.exp(-10.0 * k))
    np.testing.assert_allclose(e["AUC"], auc, rtol=1e-9)
    np.testing.assert_allclose(e["CMAX"], DOSE / first["V"].to_numpy() * np.exp(-2.0 * k),
                               rtol=1e-9)  # fmt: skip
    summary = e.attrs["summary"]
    assert summary.loc["AUC", "LOWER"] < summary.loc["AUC", "MEDIAN"] < summary.loc["AUC", "UPPER"]
    s = sim.summary(level=0.8, column="IPRED")
    assert list(s["TIME"]) == list(TIMES) and (s["N"] == 30).all()
    grid = sim.data.loc[sim.data["TIME"] == 4.0, "IPRED"]
    assert s.loc[s["TIME"] == 4.0, "MEDIAN"].item() == pytest.approx(np.median(grid))


def test_a_drug_and_a_population_and_records():
    drug = twins.drugs.get("vancomycin_goti2018")
    pop = twins.Population.sample(40, key=jax.random.key(0))
    sim = twins.simulate_population(
        drug, pop, drug.regimen(2, amount=1000.0, interval=12.0), [1.0, 11.5, 23.5], key=2
    )
    assert set(sim.data["ID"]) == set(pop.ids) and {"CRCL", "WT"} <= set(sim.data.columns)
    cov = twins.drug_covariates(drug, pop)
    np.testing.assert_allclose(sim.covariates["CRCL"], cov["CRCL"])
    # NONMEM records: the doses, times and covariates of every subject from the records
    rows = []
    for i, wt in enumerate((60.0, 90.0)):
        rows.append({"ID": i + 1, "TIME": 0.0, "EVID": 1, "AMT": DOSE, "CMT": 1, "DV": 0.0,
                     "MDV": 1, "WT": wt})  # fmt: skip
        for t in (1.0, 6.0):
            rows.append({"ID": i + 1, "TIME": t, "EVID": 0, "AMT": 0.0, "CMT": 1, "DV": 0.0,
                         "MDV": 0, "WT": wt})  # fmt: skip
    records = pd.DataFrame(rows)
    rec = twins.simulate_population(_pm(), records, key=3, bsv=False, ruv=False)
    for i, wt in enumerate((60.0, 90.0)):
        cl = 2.0 * (wt / 70.0) ** 0.75
        expected = DOSE / 20.0 * np.exp(-cl / 20.0 * np.array([1.0, 6.0]))
        got = rec.data.loc[rec.data["ID"] == i + 1, "IPRED"].to_numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_bad_input_is_named():
    subjects = _subjects(3)
    bad = subjects.copy()
    bad.loc[1, "WT"] = np.nan
    with pytest.raises(ValueError, match=r"subject s1 \(row 1\): covariate WT"):
        twins.simulate_population(_pm(), bad, pkpd.bolus(DOSE), TIMES, key=0)
    with pytest.raises(ValueError, match="ID column"):
        twins.simulate_population(_pm(), subjects.drop(columns="ID"), pkpd.bolus(DOSE), TIMES,
                                  key=0)  # fmt: skip
    with pytest.raises(ValueError, match="one per subject"):
        twins.simulate_population(_pm(), subjects, [pkpd.bolus(DOSE)] * 2, TIMES, key=0)
    with pytest.raises(ValueError, match="no IOV"):
        twins.simulate_population(_pm(), subjects, pkpd.bolus(DOSE), TIMES, key=0,
                                  occasions=[0.0, 12.0])  # fmt: skip
    with pytest.raises(TypeError, match=r"needs a twins\.Drug"):
        twins.simulate_population(_pm(), twins.Population.sample(3, key=jax.random.key(0)),
                                  pkpd.bolus(DOSE), TIMES, key=0)  # fmt: skip
