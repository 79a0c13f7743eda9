"""calibration.fit_summary, nonmem_tables and write_tables on the theophylline FOCE-I fit.

References: the definitions (NONMEM's OFV = -2LL - n log 2pi over uncensored observations,
AIC, BIC), the eigenvalues of the estimates' correlation matrix computed here from the
fit's covariance, and calibration.residuals for the table's columns."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from test_calibration import _theo_records, theo_fit  # noqa: F401  (a fixture)

import calibration as C


@pytest.fixture(scope="module")
def theo(theo_fit):  # noqa: F811  (the fixture imported above)
    return theo_fit, C.Dataset.from_records(_theo_records(), covariates=["WT"])


def test_summary_numbers(theo):
    fit, data = theo
    s = C.fit_summary(fit, data)
    n = int(np.asarray(data.observed).sum())
    assert (s.n_subjects, s.n_observations, s.n_censored, s.n_parameters) == (12, n, 0, 7)
    assert s.minus2ll == fit.ofv
    assert s.ofv == pytest.approx(fit.ofv - n * math.log(2 * math.pi), rel=1e-14)
    assert s.aic == pytest.approx(fit.ofv + 2 * 7, rel=1e-14)
    assert s.bic == pytest.approx(fit.ofv + 7 * math.log(n), rel=1e-14)
    cov = np.asarray(fit.cov_phi)
    sd = np.sqrt(np.diag(cov))
    eig = np.linalg.eigvalsh(cov / np.outer(sd, sd))
    assert s.condition_number == pytest.approx(eig.max() / eig.min(), rel=1e-10)
    np.testing.assert_allclose(np.diag(s.correlation.to_numpy()), 1.0, rtol=1e-12)
    labels = list(s.correlation.index)
    assert sorted(labels) == sorted(
        ["omega[KA]", "omega[CL]", "omega[V]", "sigma[add_sd]", "theta[CL]", "theta[KA]",
         "theta[V]"]
    )  # fmt: skip
    # each label names its row of the covariance: the log-scale SE of theta[X] is the
    # table's SE / estimate (delta method), of omega[X] half the variance's RSE
    t = fit.table.set_index(["kind", "parameter"])
    for name in ("KA", "CL", "V"):
        i = labels.index(f"theta[{name}]")
        row = t.loc[("theta", name)]
        assert sd[i] == pytest.approx(row["se"] / row["estimate"], rel=1e-9)
        j = labels.index(f"omega[{name}]")
        row = t.loc[("omega", name)]
        assert sd[j] == pytest.approx(row["se"] / row["estimate"] / 2.0, rel=1e-9)
    text = str(s)
    assert "OFV (NONMEM, without n log 2pi)" in text and "condition number" in text
    for name in ("KA", "CL", "V"):
        assert text.count(name) >= 2  # the table is printed whole
    with pytest.raises(ValueError, match="give the data that was fitted"):
        C.fit_summary(fit, data.subset(np.arange(5)))


def test_tables(theo, tmp_path):
    fit, data = theo
    tables = C.nonmem_tables(fit, data, key=1, n_sim=100)
    sd, pa = tables["sdtab"], tables["patab"]
    res = C.residuals(fit.model, fit, data, key=1, n_sim=100, individual=fit.individual)
    assert len(sd) == len(res) == int(np.asarray(data.observed).sum())
    assert list(sd.columns[:5]) == ["ID", "TIME", "DV", "PRED", "IPRED"]
    np.testing.assert_allclose(sd["CWRES"], res["CWRES"])
    np.testing.assert_allclose(sd["RES"], sd["DV"] - sd["PRED"])
    by_id = pa.set_index("ID")
    for i, sid in enumerate(fit.individual.ids):
        got = sd.loc[sd["ID"] == sid, "ETA2"].unique()
        assert got.size == 1 and got[0] == fit.individual.eta[i, 1]
        assert by_id.loc[sid, "CL"] == pytest.approx(float(fit.individual.params["CL"][i]))
    for fmt in ("csv", "parquet"):
        paths = C.write_tables(tables, tmp_path / fmt, format=fmt)
        back = pd.read_csv(paths[0]) if fmt == "csv" else pd.read_parquet(paths[0])
        np.testing.assert_allclose(back["IPRED"], sd["IPRED"], rtol=1e-12)
    with pytest.raises(ValueError, match="format"):
        C.write_tables(tables, tmp_path, format="xlsx")


def test_readable_reprs(theo):
    import jax

    fit, data = theo
    assert repr(fit).startswith("PopulationFit(FOCEI, converged in")
    assert "12 subjects" in repr(fit) and "at 0x" not in repr(fit)
    printed = str(fit)
    assert all(name in printed for name in ("KA", "CL", "V", "add_sd"))
    text = repr(data)
    assert text.startswith("Dataset(12 subjects [1, 2, 3, 4, 5, ...], 132 observations")
    assert "covariates ['WT']" in text and "at 0x" not in text
    shapes = jax.jit(lambda d: (repr(d), d.time.sum())[1])(data.numeric())  # traced: no error
    assert float(shapes) > 0
