"""Federated population fits without Flower: the server's loop (`fit_population_server`)
and the hospitals' answers (`hospital_reply`) called in one process, against
`calibration.fit_population` on the pooled data.

Tolerances. At the same population values the hospitals' summed -log L equals the pooled
-log L to rounding (1e-12 relative seen; each hospital's per-subject terms are those of the
pooled fit up to the inner optimisation's own tolerance, about 1e-9 per subject). The -2LL of
the fits agrees to 1e-6 relative with orders of magnitude to spare (1e-11 seen). The
estimates are where BFGS stopped (largest gradient below `gtol`), and a perturbation of the
objective at the 1e-12 level moves that point: `fit_population` on the same pooled records
with the subjects in reverse order differs from itself by up to 5e-6 relative (measured:
theophylline FOCE-I, omega of CL; the two-compartment model, CL_CRCL). The federated fit
cannot be closer to the pooled fit than the pooled fit is to itself, so the estimates are
compared at 5e-5 relative (ten times that spread), the standard errors at 1% (second
differences of that noisy objective) and the shrinkage at 1e-3 percentage points; the -2LL
at 1e-6.
"""

from __future__ import annotations

import pathlib
import warnings

import numpy as np
import pandas as pd
import pytest
from jax.flatten_util import ravel_pytree

import calibration as C
import pkpd
import twins
from surrogates.federated import (
    FederatedFitError,
    federated_prior,
    fit_population_server,
    hospital_data,
    hospital_reply,
    individual_fit,
    simulate_hospitals,
    split_by_subject,
)
from surrogates.federated import _population_models as models
from twins.governance import (
    AuditLog,
    Consent,
    ConsentRegistry,
    Decision,
    Governance,
    Purpose,
    generate_pseudonym_key,
    generate_signing_key,
    read_entries,
)

REF = pathlib.Path(__file__).parent / "data" / "reference"
EST_REL = 5e-5
OFV_REL = 1e-6


def theo_records() -> pd.DataFrame:
    """nlmixr2's theo_sd: EVID 101 (rxode2: dose into compartment 1) is NONMEM's EVID 1."""
    df = pd.read_csv(REF / "datasets" / "theo_sd_nlmixr2data.csv")
    df.loc[df["EVID"] == 101, "EVID"] = 1
    df.loc[df["EVID"] == 0, "CMT"] = 2
    return df


def in_process(pm, sites, estimator, tamper=None):
    """`ask` calling each hospital's `hospital_reply` in this process (the numerics of a
    round, without Flower); `tamper(name, kind, reply)` may change a hospital's answer."""

    def ask(kind, request):
        out = {}
        for name, site in sites.items():
            reply = hospital_reply(pm, site, kind, request, estimator=estimator)
            out[name] = reply if tamper is None else tamper(name, kind, reply)
        return out

    return ask


def assert_fits_agree(fed, pooled):
    assert fed.ofv == pytest.approx(pooled.ofv, rel=OFV_REL)
    a = fed.table.set_index(["kind", "parameter"])
    b = pooled.table.set_index(["kind", "parameter"])
    assert list(a.index) == list(b.index)
    np.testing.assert_allclose(a["estimate"], b["estimate"], rtol=EST_REL)
    np.testing.assert_allclose(a["se"], b["se"], rtol=1e-2)
    np.testing.assert_allclose(a["shrinkage_pct"], b["shrinkage_pct"], atol=1e-3)
    x_fed, x_pooled = ravel_pytree(fed.phi)[0], ravel_pytree(pooled.phi)[0]
    np.testing.assert_allclose(x_fed, x_pooled, rtol=EST_REL, atol=EST_REL)
    assert fed.converged and pooled.converged
    assert fed.n_subjects == pooled.individual.eta.shape[0]


@pytest.fixture(scope="module")
def theo_sites():
    return {n: hospital_data(n, r, covariates=["WT"]) for n, r in split_by_subject(
        theo_records(), ["north", "south", "east"]).items()}  # fmt: skip


@pytest.mark.parametrize("estimator", [C.FOCEI(), C.Laplace()], ids=["focei", "laplace"])
def test_objective_is_the_sum_of_the_hospitals(theo_sites, estimator):
    """At any stencil of population values, the hospitals' -log L add up to the pooled
    -log L (`calibration.objective_values`), and so do the central differences."""
    pm = models.theophylline()
    pooled = C.Dataset.from_records(theo_records(), covariates=["WT"])
    x0 = np.asarray(ravel_pytree(pm.initial())[0])
    rng = np.random.default_rng(3)
    base = x0 + 0.2 * rng.normal(size=x0.shape)
    h = 1e-4
    points = np.vstack([base, base + h * np.eye(x0.size), base - h * np.eye(x0.size)])
    want = C.objective_values(pm, pooled, points, estimator=estimator).values
    got = sum(
        hospital_reply(pm, s, "objective", {"points": points}, estimator=estimator)["values"]
        for s in theo_sites.values()
    )
    np.testing.assert_allclose(got, want, rtol=1e-10)
    n = x0.size
    np.testing.assert_allclose(
        (got[1 : n + 1] - got[n + 1 :]) / (2 * h),
        (want[1 : n + 1] - want[n + 1 :]) / (2 * h),
        atol=1e-4,
    )


@pytest.mark.parametrize("estimator", [C.FOCEI(), C.Laplace()], ids=["focei", "laplace"])
def test_theophylline_three_hospitals_equal_the_pooled_fit(theo_sites, estimator):
    pm = models.theophylline()
    with warnings.catch_warnings():
        warnings.simplefilter("error", C.ConvergenceWarning)
        pooled = C.fit_population(
            pm, C.Dataset.from_records(theo_records(), covariates=["WT"]), estimator=estimator
        )
        fed, summary = fit_population_server(
            pm, list(theo_sites), in_process(pm, theo_sites, estimator), estimator=estimator
        )
    assert_fits_agree(fed, pooled)
    assert fed.hospitals == {"north": 4, "south": 4, "east": 4}
    assert fed.method == estimator.name
    # The same optimiser: the same steps and gradients as the pooled fit.
    assert fed.n_steps == pooled.n_steps
    assert fed.diagnostics["gradient_evaluations"] == pooled.diagnostics["gradient_evaluations"]
    # One round per gradient, one for the covariance, one for the modes.
    assert fed.rounds == pooled.diagnostics["gradient_evaluations"] + 2
    assert summary["modes"]["n"] == 12


@pytest.fixture(scope="module")
def two_cpt():
    hospitals = simulate_hospitals(5, 10, key=0)
    pm = models.two_compartment()
    cov = models.COVARIATES[models.TWO_COMPARTMENT]
    sites = {n: hospital_data(n, r, covariates=cov) for n, r in hospitals.items()}
    pooled_records = pd.concat(list(hospitals.values()), ignore_index=True)
    return pm, sites, C.Dataset.from_records(pooled_records, covariates=cov)


def test_simulated_hospitals_are_non_iid(two_cpt):
    """The five sites differ in their patients' renal function and in their designs."""
    _, sites, _ = two_cpt
    crcl = {n: float(np.mean(s.data.covariates["CRCL"])) for n, s in sites.items()}
    assert max(crcl.values()) > 2.0 * min(crcl.values())
    n_obs = {n: s.data.time.shape[1] for n, s in sites.items()}
    assert len(set(n_obs.values())) >= 3


@pytest.mark.slow
@pytest.mark.extended  # ~60 s; make test: theophylline at three hospitals equals the pooled fit
def test_two_compartment_covariates_five_non_iid_hospitals_equal_the_pooled_fit(two_cpt):
    pm, sites, pooled_data = two_cpt
    est = C.FOCEI()
    with warnings.catch_warnings():
        warnings.simplefilter("error", C.ConvergenceWarning)
        pooled = C.fit_population(pm, pooled_data, estimator=est)
        fed, _ = fit_population_server(pm, list(sites), in_process(pm, sites, est), estimator=est)
    assert_fits_agree(fed, pooled)
    assert fed.hospitals == dict.fromkeys(sites, 10)
    # The covariate effect is estimated (unconstrained theta) near its true value.
    t = fed.table.set_index(["kind", "parameter"])
    assert t.loc[("theta", "CL_CRCL"), "estimate"] == pytest.approx(0.75, abs=0.3)


@pytest.mark.extended  # the same check by the Laplace estimator (40-70 s on 2 cores)
def test_two_compartment_laplace_equals_the_pooled_fit(two_cpt):
    pm, sites, pooled_data = two_cpt
    est = C.Laplace()
    pooled = C.fit_population(pm, pooled_data, estimator=est)
    fed, _ = fit_population_server(pm, list(sites), in_process(pm, sites, est), estimator=est)
    assert_fits_agree(fed, pooled)


# ----------------------------------------------------------------------------- bad actors


def _tampered(theo_sites, tamper, **kwargs):
    pm = models.theophylline()
    est = C.FOCEI()
    return fit_population_server(
        pm, list(theo_sites), in_process(pm, theo_sites, est, tamper), estimator=est, **kwargs
    )


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda r: r | {"values": np.where(np.arange(r["values"].size) == 2, np.nan, r["values"])},
         "NaN or -inf"),
        (lambda r: r | {"values": r["values"][:-1]}, r"shape \(14,\)"),
        (lambda r: r | {"values": r["values"] * 1e9}, "beyond 1e\\+06 per subject"),
        (lambda r: r | {"n_subjects": 40}, "reported 40 subjects"),
        (lambda r: {"error": "1 subject(s) could not be evaluated"}, "reported: 1 subject"),
        (lambda r: {"n_subjects": 4}, "malformed"),
    ],
    ids=["nan", "shape", "oversized", "count", "error", "malformed"],
)  # fmt: skip
def test_a_bad_answer_is_rejected_and_the_hospital_named(theo_sites, tmp_path, change, match):
    """A hospital that sends NaN, the wrong shape, an oversized value, a changed subject
    count, an error or a malformed answer stops the fit at that round, named; the failed
    round is in the audit log."""
    calls = {"n": 0}

    def tamper(name, kind, reply):
        if name == "south" and kind == "objective":
            calls["n"] += 1
            if calls["n"] == 3:
                return change(reply)
        return reply

    audit = AuditLog(tmp_path / "audit.log", generate_signing_key())
    with pytest.raises(FederatedFitError, match=match) as info:
        _tampered(theo_sites, tamper, audit=audit, fit="tampered")
    assert info.value.hospitals == ("south",)
    assert info.value.round == 3
    assert "'south'" in str(info.value)
    entries = read_entries(tmp_path / "audit.log")
    assert [e.details["round"] for e in entries] == [1, 2, 3]
    assert entries[-1].details["outcome"] == "failed"
    assert entries[-1].details["failed_hospitals"] == ["south"]


def test_a_hospital_that_does_not_answer_stops_the_fit(theo_sites):
    """No silent sum over fewer sites: a missing answer (a SuperNode down) fails the fit."""

    def tamper(name, kind, reply):
        return None if name == "east" and kind == "objective" else reply

    with pytest.raises(FederatedFitError, match=r"no answer from hospital\(s\) 'east'") as info:
        _tampered(theo_sites, tamper)
    assert info.value.hospitals == ("east",)


def test_every_round_is_audited_without_identifiers(theo_sites, tmp_path):
    audit = AuditLog(tmp_path / "audit.log", generate_signing_key())
    fed, _ = _tampered(theo_sites, None, audit=audit, fit="theophylline", standard_errors=False)
    entries = read_entries(tmp_path / "audit.log")
    assert audit.verify().ok
    rounds = [e for e in entries if e.details["kind"] in ("objective", "modes")]
    assert len(rounds) == fed.rounds
    for e in entries:
        assert e.action.value == "training-round"
        assert e.subject is None
        assert "patients" not in e.details and "patient" not in e.details
    assert all(e.details["patient_count"] == 12 for e in entries)
    assert entries[-1].details["kind"] == "result"
    assert entries[-1].details["ofv"] == pytest.approx(fed.ofv)


# ----------------------------------------------------------------------------- consent


def _governance(tmp_path, name="north"):
    return Governance(
        audit=AuditLog(tmp_path / f"{name}.log", generate_signing_key()),
        key=generate_pseudonym_key(),
        actor=f"hospital {name}",
    )


def test_patients_who_did_not_consent_never_enter(tmp_path):
    """Federated training is opt-in: a deny in force, or no permit, leaves a patient out;
    each refusal and the use are logged (by pseudonym and counts only)."""
    records = split_by_subject(theo_records(), ["north", "south", "east"])["north"]
    ids = [str(i) for i in pd.unique(records["ID"])]
    consents = ConsentRegistry(
        [Consent(ids[0], Purpose.FEDERATED_TRAINING, Decision.PERMIT, source="Consent/1"),
         Consent(ids[1], Purpose.FEDERATED_TRAINING, Decision.PERMIT, source="Consent/2"),
         Consent(ids[1], Purpose.FEDERATED_TRAINING, Decision.DENY, source="Consent/3"),
         Consent(ids[2], Purpose.RESEARCH, Decision.PERMIT, source="Consent/4"),
         Consent(ids[3], Purpose.FEDERATED_TRAINING, Decision.PERMIT, source="Consent/5")]
    )  # fmt: skip
    gov = _governance(tmp_path)
    site = hospital_data("north", records, covariates=["WT"], consents=consents, governance=gov)
    assert [str(i) for i in site.data.ids] == [ids[0], ids[3]]
    assert site.refused == 2
    entries = read_entries(tmp_path / "north.log")
    refusals = [e for e in entries if e.action.value == "consent-refusal"]
    assert len(refusals) == 2
    assert all(e.subject is not None and e.subject not in ids for e in refusals)
    (access,) = [e for e in entries if e.action.value == "data-access"]
    assert access.details["patient_count"] == 2 and access.details["refused_count"] == 2
    assert access.details["purpose"] == "federated-training"
    text = (tmp_path / "north.log").read_text()
    assert all(f'"{i}"' not in text for i in ids)
    # The subjects' terms of the objective are the consented ones only.
    pm = models.theophylline()
    x = np.asarray(ravel_pytree(pm.initial())[0])[None, :]
    got = hospital_reply(pm, site, "objective", {"points": x}, estimator=C.FOCEI())
    kept = C.Dataset.from_records(records[records["ID"].astype(str).isin([ids[0], ids[3]])],
                                  covariates=["WT"])  # fmt: skip
    assert got["n_subjects"] == 2
    np.testing.assert_allclose(got["values"], C.objective_values(pm, kept, x).values, rtol=1e-12)


def test_consents_need_governance_and_someone_must_consent(tmp_path):
    records = split_by_subject(theo_records(), ["a", "b"])["a"]
    nobody = ConsentRegistry([])  # opt-in: no permit, nobody enters
    with pytest.raises(ValueError, match="Governance"):
        hospital_data("a", records, consents=nobody)
    with pytest.raises(FederatedFitError, match="none of its 6 patients consented") as info:
        hospital_data("a", records, consents=nobody, governance=_governance(tmp_path, "a"))
    assert info.value.hospitals == ("a",)


def test_a_hospital_error_names_no_subject(theo_sites):
    """A subject the model cannot evaluate makes the hospital report a count, not the ID."""
    pm = models.theophylline()
    site = theo_sites["north"]
    x = np.asarray(ravel_pytree(pm.initial())[0]).copy()
    bad = x.copy()
    bad[-1] = -800.0  # a residual SD of exp(-800) = 0: every observation impossible
    reply = hospital_reply(pm, site, "objective", {"points": bad[None, :], "start": True},
                           estimator=C.FOCEI())  # fmt: skip
    assert "error" in reply
    assert "subject(s) could not be evaluated" in reply["error"]
    for sid in site.data.ids:
        assert f"ID={sid}" not in reply["error"]


# ----------------------------------------------------------------------------- local twins


@pytest.fixture(scope="module")
def theo_fed(theo_sites):
    pm = models.theophylline()
    fed, _ = fit_population_server(pm, list(theo_sites), in_process(pm, theo_sites, C.FOCEI()))
    return fed


def test_individual_fit_uses_the_federated_population(theo_fed, theo_sites):
    site = theo_sites["south"]
    ind = individual_fit(theo_fed, site.data)
    want = C.individual_map(theo_fed.model, site.data, theo_fed.phi, estimator=C.FOCEI())
    np.testing.assert_allclose(ind.eta, want.eta, rtol=1e-12, atol=1e-14)
    prior_only = C.individual_map(theo_fed.model, site.data, estimator=C.FOCEI())
    assert not np.allclose(ind.eta, prior_only.eta, atol=1e-3)


def test_a_digital_twin_takes_the_federated_population_as_its_prior(theo_fed, theo_sites):
    """A hospital's DigitalTwin of a drug with the fitted model, `population=` the federated
    estimate: its typical values are the federated ones and its MAP is the local individual
    fit of that patient."""
    from twins.drugs import Dosing, Drug, Oral, Units

    drug = Drug(
        name="theophylline_federated",
        model=theo_fed.model,
        covariate_fn=lambda patient: {},
        units=Units(dose="mg", concentration="mg/L", observed="plasma theophylline, mg/L"),
        dosing=Dosing(route=Oral(), amount=320.0, interval=24.0),
        reference="Federated fit of nlmixr2's theo_sd (tests).",
    )
    site = theo_sites["south"]
    records = site.data.records
    sid = site.data.ids[0]
    mine = records[records["ID"] == sid]
    twin = twins.DigitalTwin(drug, {"ID": str(sid)}, population=federated_prior(theo_fed))
    for name, value in theo_fed.population["theta"].items():
        assert float(twin.theta[name]) == pytest.approx(float(value), rel=1e-12)
    twin.give(pkpd.regimen_from_records(mine[mine["EVID"] == 1]))
    obs = mine[mine["EVID"] == 0]
    twin.update(times=obs["TIME"].to_numpy(), values=obs["DV"].to_numpy())
    local = individual_fit(theo_fed, site.data.subset([0]))
    np.testing.assert_allclose(twin.posterior.mode, local.eta[0], rtol=1e-6, atol=1e-8)
