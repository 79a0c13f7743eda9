"""calibration.read_nonmem: NONMEM control streams in, checked against NONMEM's own output.

pharmpy's example models (pheno, pheno_linear: NONMEM 7.5 output, read from the installed
package, not copied here) and hand-written theophylline control streams
(tests/data/nonmem_import/) compared with the same models built directly in calibration.
"""

from __future__ import annotations

import math
import pathlib
import sys
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("pharmpy")

import calibration as C
import pkpd
from calibration._laplace import _neg_loglik
from calibration._nonmem_model import block_parameters
from calibration._nonmem_translate import NonmemTranslationError, translate

HERE = pathlib.Path(__file__).parent / "data" / "nonmem_import"


def _examples() -> pathlib.Path:
    import pharmpy

    return pathlib.Path(pharmpy.__file__).parent / "internals" / "example_models"


@pytest.fixture(scope="module")
def pheno():
    return C.read_nonmem(_examples() / "pheno.mod")


def test_pheno_reproduces_nonmem_pred_ipred_and_ofv(pheno):
    """Every record of NONMEM's table (744: doses too), PRED and CIPREDI within 1e-4
    (relative; the table prints 5 significant digits), and -2LL at the final estimates =
    OFV + n log(2 pi) (NONMEM's FOCE-I OFV leaves the constant out: INCLUDE LNTWOPI: NO in
    pheno.lst)."""
    assert pheno.plain and isinstance(pheno.model, C._nonmem_model.NonmemLinearPK)
    assert isinstance(pheno.model.inner, pkpd.OneCompartment)
    tab = pheno.final.predictions
    ours = pheno.predictions()
    assert len(ours) == len(tab) == 744
    np.testing.assert_allclose(ours["PRED"], tab["PRED"], rtol=1e-4)
    np.testing.assert_allclose(ours["IPRED"], tab["CIPREDI"], rtol=1e-4)
    n = pheno.n_observations
    assert n == 155
    m2ll = pheno.objective()
    assert m2ll - n * math.log(2 * math.pi) == pytest.approx(pheno.final.ofv, abs=1e-4)


# Extended: a full FOCE-I refit; PRED, IPRED and OFV at NONMEM's estimates stay checked in
# make test.
@pytest.mark.extended
@pytest.mark.slow
def test_pheno_refit_gives_nonmem_estimates(pheno):
    """FOCE-I from the initial estimates: NONMEM's final estimates within 0.1% (NONMEM stops
    at 3 significant digits, SIGDIGITS; ours at a predicted step below 1e-3 on the log
    scale), the OFV within 1e-3."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", C.ConvergenceWarning)
        fit = pheno.fit(standard_errors=False)
    got = pheno.estimates(fit)
    want = pheno.final.estimates
    for name in want.index:
        assert got[name] == pytest.approx(want[name], rel=1e-3), name
    ofv = fit.ofv - pheno.n_observations * math.log(2 * math.pi)
    assert ofv == pytest.approx(pheno.final.ofv, abs=1e-3)


@pytest.fixture(scope="module")
def pheno_linear():
    return C.read_nonmem(_examples() / "pheno_linear.mod")


def test_pheno_linear_pred_model_reproduces_nonmem(pheno_linear):
    """$PRED with data items of each record and an ETA-dependent residual error: IPRED at
    NONMEM's ETAs equals OPRED + D_ETA (ETA - OETA) computed from the data (no table was
    written), and -2LL at the final estimates = OFV + n log(2 pi)."""
    imp = pheno_linear
    assert not imp.plain and imp.subroutines == "$PRED"
    rec = imp.records
    p = imp.predictions()
    etas = imp.final.etas.loc[rec["ID"]].to_numpy()
    expect = (
        rec["OPRED"].to_numpy()
        + rec["D_ETA1"].to_numpy() * (etas[:, 0] - rec["OETA1"].to_numpy())
        + rec["D_ETA2"].to_numpy() * (etas[:, 1] - rec["OETA2"].to_numpy())
    )
    np.testing.assert_allclose(p["IPRED"], expect, rtol=1e-12)
    n = imp.n_observations
    assert imp.objective() - n * math.log(2 * math.pi) == pytest.approx(imp.final.ofv, abs=1e-4)


@pytest.mark.extended
def test_pheno_linear_refit_gives_nonmem_estimates(pheno_linear):
    """NonmemFOCEI (the variance's ETA dependence in the curvature) from the initial
    estimates: NONMEM's estimates within 0.2%."""
    imp = pheno_linear
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", C.ConvergenceWarning)
        fit = imp.fit(standard_errors=False)
    got = imp.estimates(fit)
    for name, value in imp.final.estimates.items():
        assert got[name] == pytest.approx(value, rel=2e-3), name


@pytest.fixture(scope="module")
def advan2():
    return C.read_nonmem(HERE / "theo_advan2.ctl")


def _direct_advan2():
    def typical(th, cov):
        return {"CL": th["CL"] * (cov["WT"] / 70) ** 0.75, "V": th["V"], "KA": th["KA"]}

    return C.PopulationModel(
        pkpd.OneCompartmentOral(),
        theta={"CL": 3.0, "V": 30.0, "KA": 1.0},
        omega={"KA": 0.3, "CL": 0.1, "V": 0.1},
        error=C.Additive(1.0),
        typical=typical,
    )


def test_advan2_fix_matches_calibration_model(advan2):
    """ADVAN2 TRANS2 with a FIXed THETA is a plain PopulationModel on pkpd's
    OneCompartmentOral: its -2LL equals the same model built directly in calibration."""
    assert advan2.plain and type(advan2.population_model) is C.PopulationModel
    assert isinstance(advan2.model.inner, pkpd.OneCompartmentOral)
    assert advan2.data.n_subjects == 12 and advan2.n_observations == 132
    direct = _direct_advan2()
    values = {"THETA_1": 2.7, "TVV": 32.0, "TVKA": 1.6, "OMEGA_1_1": 0.4, "OMEGA_2_2": 0.08,
              "OMEGA_3_3": 0.02, "SIGMA_1_1": 0.5}  # fmt: skip
    phi = {
        "theta": {"CL": jnp.log(2.7), "V": jnp.log(32.0), "KA": jnp.log(1.6)},
        "omega": {"log_sd": 0.5 * jnp.log(jnp.asarray([0.4, 0.08, 0.02]))},
        "sigma": {"add_sd": 0.5 * jnp.log(0.5)},
    }
    _same_likelihood(advan2.population_model, advan2.phi(values), direct, phi, advan2.data)


@pytest.mark.extended
def test_advan2_objective_matches_calibration_model(advan2):
    direct = _direct_advan2()
    phi = direct.initial()
    want = 2 * float(_neg_loglik(direct, phi, advan2.data))
    assert advan2.objective(advan2.initial) == pytest.approx(want, rel=1e-10)


def _same_likelihood(pm_a, phi_a, pm_b, phi_b, data):
    """log p(y_i | eta) of every subject at a few etas, and Omega: equal for both models."""
    import jax

    nat_a, nat_b = pm_a.natural(phi_a), pm_b.natural(phi_b)
    np.testing.assert_allclose(nat_a["omega"], nat_b["omega"], rtol=1e-12, atol=1e-15)
    cov = {k: jnp.asarray(v) for k, v in data.covariates.items()}
    obs = data.arrays()
    rng = np.random.default_rng(1)
    for _ in range(2):
        eta = jnp.asarray(rng.normal(0, 0.2, (data.n_subjects, pm_a.n_eta)))

        def ll(pm, nat, eta=eta):
            fn = jax.jit(jax.vmap(pm.subject_loglik, in_axes=(None, 0, 0, 0, 0)))
            return fn(nat, cov, data.regimen, obs, eta)

        np.testing.assert_allclose(ll(pm_a, nat_a), ll(pm_b, nat_b), rtol=1e-10)


@pytest.mark.extended
def test_advan2_fit_matches_calibration_fit(advan2):
    """The same fit: the imported model and the direct one give the same estimates."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", C.ConvergenceWarning)
        a = advan2.fit(standard_errors=False)
        b = C.fit_population(_direct_advan2(), advan2.data, standard_errors=False)
    got = advan2.estimates(a)
    assert got["THETA_1"] == pytest.approx(float(b.population["theta"]["CL"]), rel=2e-3)
    assert got["TVV"] == pytest.approx(float(b.population["theta"]["V"]), rel=2e-3)
    assert got["TVKA"] == pytest.approx(float(b.population["theta"]["KA"]), rel=2e-3)
    assert got["SIGMA_1_1"] == pytest.approx(float(b.population["sigma"]["add_sd"]) ** 2, rel=5e-3)
    assert a.ofv == pytest.approx(b.ofv, abs=1e-3)


def test_advan4_block_fix_matches_calibration_model():
    """ADVAN4 TRANS4, $OMEGA BLOCK(2) and a FIXed $OMEGA, W = SQRT(THETA^2 + THETA^2 F^2)
    with $SIGMA 1 FIX, IGNORE=(ID.EQ.12): a NonmemPopulationModel whose -2LL equals that of
    pkpd.TwoCompartmentOral with the equivalent Omega and Combined error built directly."""
    imp = C.read_nonmem(HERE / "theo_advan4_block.ctl")
    assert not imp.plain and imp.data.n_subjects == 11
    assert isinstance(imp.model.inner, pkpd.TwoCompartmentOral)
    assert imp.population_model.error.form == "combined"

    def typical(th, cov):
        return {"CL": th["CL"], "V1": th["V2"], "Q": th["Q"], "V2": th["V3"], "KA": th["KA"]}

    theta = {"CL": 2.8, "V2": 30.0, "Q": 5.0, "V3": 10.0, "KA": 1.5}
    direct = C.PopulationModel(
        pkpd.TwoCompartmentOral(), theta=theta, omega={"CL": 0.1, "V1": 0.05, "KA": 0.4},
        error=C.Combined(0.5, 0.1), typical=typical, omega_block=True,
    )  # fmt: skip
    log_sd, z = block_parameters(np.array([[0.1, 0.02, 0], [0.02, 0.05, 0], [0, 0, 0.4]]))
    phi = {
        "theta": {k: jnp.log(v) for k, v in theta.items()},
        "omega": {"log_sd": jnp.asarray(log_sd), "corr": jnp.asarray(z)},
        "sigma": {"add_sd": jnp.log(0.5), "prop_sd": jnp.log(0.1)},
    }
    _same_likelihood(imp.population_model, imp.phi(imp.initial), direct, phi, imp.data)
    # The FIXed OMEGA stays where it is whatever phi says.
    nat = imp.population_model.natural(imp.phi(imp.initial | {"OMEGA_3_3": 9.0}))
    assert float(nat["omega"][2, 2]) == pytest.approx(0.4)


@pytest.fixture(scope="module")
def des():
    return C.read_nonmem(HERE / "theo_des_mm.ctl")


def test_des_translates_to_the_vector_field(des):
    """$DES (ADVAN13, $MODEL) with F1, ALAG1 and D1 for RATE=-2 records, ACCEPT=(ID.LT.7):
    DADT equals pkpd.OneCompartmentOralMM's vector field; F1, ALAG1, D1 are the dosing
    parameters (fast: no solve; the solve is checked in the extended tests)."""
    imp = des
    assert isinstance(imp.model, C._nonmem_model.NonmemODE) and imp.plain
    assert imp.data.n_subjects == 6
    params = imp.population_model.individual_params(
        {"THETA_1": 10.0, "THETA_2": 2.0, "THETA_3": 30.0, "THETA_4": 1.5, "THETA_5": 0.2},
        {}, jnp.asarray([0.1, -0.2]),
    )  # fmt: skip
    assert float(params["F1"]) == 0.9 and float(params["D1"]) == 0.5
    assert float(params["ALAG1"]) == 0.2
    x = jnp.asarray([40.0, 25.0])
    mm = {"VMAX": params["VM"], "KM": params["KM"], "V": params["V"], "KA": params["KA"]}
    want = pkpd.OneCompartmentOralMM().vector_field(0.0, x, mm)
    np.testing.assert_allclose(imp.model.vector_field(0.0, x, params), want, rtol=1e-14)
    np.testing.assert_allclose(imp.model.output(params, x), x[1:] / params["V"], rtol=1e-14)


@pytest.mark.extended
def test_des_matches_pkpd_model(des):
    """The typical predictions on every record equal pkpd.OneCompartmentOralMM's."""
    import jax

    imp = des
    pred = imp.predictions(etas=np.zeros((6, 2)))
    params = {"VMAX": 10.0, "KM": 2.0, "V": 30.0, "KA": 1.5, "ALAG1": 0.2, "F1": 0.9, "D1": 0.5}
    for i, sid in enumerate(imp.data.ids):
        reg = jax.tree_util.tree_map(lambda a, i=i: a[i], imp.data.regimen)
        rows = pred[pred["ID"] == sid]
        y = pkpd.simulate(pkpd.OneCompartmentOralMM(), params, reg, rows["TIME"].to_numpy())
        np.testing.assert_allclose(rows["PRED"], np.ravel(y), rtol=1e-9, atol=1e-12)


@pytest.mark.extended
def test_des_likelihood_matches_pkpd_model(des):
    """-2LL (FOCE-I) of the $DES model equals that of the model built directly."""
    imp = des
    direct = C.PopulationModel(
        pkpd.OneCompartmentOralMM(),
        theta={"VMAX": 10.0, "KM": 2.0, "V": 30.0, "KA": 1.5, "ALAG1": 0.2},
        omega={"VMAX": 0.1, "V": 0.1},
        error=C.Combined(math.sqrt(0.1), math.sqrt(0.01)),
        typical=lambda th, cov: dict(th) | {"F1": 0.9, "D1": 0.5},
    )
    phi = direct.initial()
    want = 2 * float(_neg_loglik(direct, phi, imp.data))
    assert imp.objective(imp.initial) == pytest.approx(want, rel=1e-8)


def test_map_etas_match_nonmem_phi(pheno):
    """The conditional modes at NONMEM's final estimates are NONMEM's ETAs (.phi)."""
    ind = C.individual_map(pheno.population_model, pheno.data, pheno.phi())
    want = pheno.final.etas.to_numpy()
    np.testing.assert_allclose(ind.eta, want, atol=2e-5)


def test_time_varying_covariate_in_pk_is_refused(tmp_path):
    """A covariate that varies within subjects in $PK changes parameters over time: refused
    with the subject named (calibration's Dataset takes baseline covariates)."""
    df = __import__("pandas").read_csv(HERE / "theo.csv")
    df.loc[(df["ID"] == 3) & (df["TIME"] > 5), "WT"] += 1.0
    df.to_csv(tmp_path / "tv.csv", index=False)
    ctl = tmp_path / "tv.ctl"
    ctl.write_text((HERE / "theo_advan2.ctl").read_text().replace("theo.csv", "tv.csv"))
    with pytest.raises(NonmemTranslationError, match=r"WT.*vary within subjects.*ID=3"):
        C.read_nonmem(ctl)


_BASE = """$PROBLEM refused
$INPUT ID TIME DV AMT EVID CMT WT
$DATA {data} IGNORE=@
$SUBROUTINES {advan}
$PK
{pk}
CL = THETA(1)*EXP(ETA(1))
V = THETA(2)
KA = THETA(3)
S2 = V
$ERROR
Y = F + EPS(1)
$THETA (0, 3) (0, 30) (0, 1)
$OMEGA 0.1
$SIGMA 1
{extra}
"""


@pytest.mark.parametrize(
    ("advan", "pk", "extra", "message"),
    [
        ("ADVAN2 TRANS2", "MTIME(1) = 5", "", "MTIME"),
        ("ADVAN2 TRANS2", '"  FIRST', "", "verbatim"),
        ("ADVAN2 TRANS2", "", "$PRIOR NWPRI", "priors"),
        ("ADVAN2 TRANS2", "", "$MIX\nP(1) = THETA(1)", "mixture"),
        ("ADVAN10", "VM = 1\nKM = 1", "", "ADVAN10"),
        ("ADVAN2 TRANS2", "IF (NEWIND.NE.2) X = 1\nKA = X", "", "NEWIND"),
    ],
)
def test_what_cannot_be_translated_is_named(tmp_path, advan, pk, extra, message):
    ctl = tmp_path / "m.ctl"
    ctl.write_text(_BASE.format(data=HERE / "theo.csv", advan=advan, pk=pk, extra=extra))
    with pytest.raises(NonmemTranslationError, match=message) as info:
        C.read_nonmem(ctl)
    assert "m.ctl" in str(info.value)


def test_translator_is_an_allow_list():
    import sympy

    x, y = sympy.symbols("x y")
    e = translate(sympy.Piecewise((sympy.exp(x) * y, x < 1), (sympy.sqrt(y), True)), where="t")
    assert float(e.evaluate({"x": 0.0, "y": 4.0})) == pytest.approx(4.0)
    assert float(e.evaluate({"x": 2.0, "y": 4.0})) == pytest.approx(2.0)
    assert e == translate(sympy.Piecewise((sympy.exp(x) * y, x < 1), (sympy.sqrt(y), True)),
                          where="t")  # fmt: skip
    with pytest.raises(NonmemTranslationError, match="Integral"):
        translate(sympy.Integral(x, y), where="test statement")


def test_pharmpy_is_not_imported_with_calibration():
    """pharmpy (LGPL-3.0, an optional extra) is imported inside read_nonmem only: no module
    of calibration or twins imports it at module level."""
    import ast

    root = pathlib.Path(C.__file__).parent.parent
    for path in [*root.glob("calibration/*.py"), *root.glob("twins/app/*.py")]:
        for node in ast.parse(path.read_text()).body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "pharmpy" for n in names), path


def test_missing_pharmpy_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pharmpy", None)
    with pytest.raises(ImportError, match=r'pip install "pkpd-twins\[nonmem\]"'):
        C.read_nonmem(HERE / "theo_advan2.ctl")


def test_cli_nonmem_import(tmp_path):
    from typer.testing import CliRunner

    from twins.app._cli import app

    out = tmp_path / "summary.json"
    res = CliRunner().invoke(app, ["nonmem", "import", str(HERE / "theo_advan2.ctl"),
                                   "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "ADVAN2 TRANS2" in res.output and "12 subjects" in res.output
    import json

    summary = json.loads(out.read_text())
    assert summary["data"]["observations"] == 132
    assert [p["name"] for p in summary["parameters"]][:2] == ["THETA_1", "TVV"]
    bad = tmp_path / "bad.ctl"
    bad.write_text(_BASE.format(data=HERE / "theo.csv", advan="ADVAN10", pk="", extra=""))
    res = CliRunner().invoke(app, ["nonmem", "import", str(bad)])
    assert res.exit_code == 2 and "ADVAN10" in res.output


_TRANS = """$PROBLEM trans
$INPUT ID TIME DV AMT EVID CMT WT
$DATA {data} IGNORE=@
$SUBROUTINES ADVAN2 {trans}
$PK
CL = THETA(1)*EXP(ETA(1))
V = THETA(2)*EXP(ETA(2))
{k}
KA = THETA(3)
S2 = V
$ERROR
Y = F + EPS(1)
$THETA (0, 3) (0, 30) (0, 1)
$OMEGA 0.1 0.1
$SIGMA 0.04
"""


@pytest.mark.extended
def test_trans1_with_etas_on_cl_and_v_equals_trans2(tmp_path):
    """ADVAN2 TRANS1 with K = CL/V (two ETAs in one rate constant: a NonmemPopulationModel
    fitted through calibration's own FOCEI) has the -2LL of TRANS2 (a plain model)."""
    a, b = tmp_path / "t1.ctl", tmp_path / "t2.ctl"
    a.write_text(_TRANS.format(data=HERE / "theo.csv", trans="TRANS1", k="K = CL/V"))
    b.write_text(_TRANS.format(data=HERE / "theo.csv", trans="TRANS2", k=""))
    one, two = C.read_nonmem(a), C.read_nonmem(b)
    assert not one.plain and two.plain
    assert one.objective() == pytest.approx(two.objective(), rel=1e-10)
