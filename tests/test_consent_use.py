"""Consent enforced where a real cohort is used (issue 16): a trial's population and a
surrogate training set take only the patients who consented to research at the time of the
use; every refusal and every patient used is in the audit log (by pseudonym), the outputs
name patients by pseudonyms only, and a use without governance is refused."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

import surrogates
import twins
import twins.io as tio
from twins import drugs
from twins.governance import (
    AuditAction,
    AuditLog,
    Consent,
    ConsentRegistry,
    Decision,
    Governance,
    Purpose,
    generate_pseudonym_key,
    generate_signing_key,
    read_entries,
    verify,
)

UTC = dt.UTC
AT = dt.datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SIGNING = generate_signing_key()
N = 24


def _consents(ids):
    """20 patients who consented to research, and four who did not, each another way: a
    consent that ended before the use, a deny (with a treatment permit), a deny that wins
    over a permit, and no consent at all (research is opt-in)."""
    day = dt.timedelta(days=1)
    permitted = list(ids[:20])
    expired, denied, both, silent = ids[20:]
    cs = [Consent(p, Purpose.RESEARCH, Decision.PERMIT, start=AT - 30 * day) for p in permitted]
    cs.append(Consent(expired, Purpose.RESEARCH, Decision.PERMIT, AT - 90 * day, AT - day))
    cs.append(Consent(denied, Purpose.RESEARCH, Decision.DENY, start=AT - day))
    cs.append(Consent(denied, Purpose.TREATMENT, Decision.PERMIT, start=AT - day))
    cs.append(Consent(both, Purpose.RESEARCH, Decision.PERMIT, start=AT - day))
    cs.append(Consent(both, Purpose.RESEARCH, Decision.DENY, start=AT - 2 * day))
    return ConsentRegistry(cs), permitted, [expired, denied, both, silent]


@pytest.fixture(scope="module")
def cohort():
    # Real-cohort stand-ins: sampled patients given hospital-like record numbers.
    pop = twins.Population.sample(N, key=jax.random.key(5))
    pop = pop.with_ids(f"MRN-{7000 + i:05d}" for i in range(N))
    registry, permitted, refused = _consents([str(i) for i in pop.ids])
    return pop.with_consents(registry), permitted, refused


def _trial(population):
    arm = twins.DosingArm("fixed", "5 mg", "5 mg daily", _fixed(5.0), visits=(1, 4))
    return twins.Trial(
        name="consented",
        drug=drugs.get("warfarin_hamberg2007"),
        population=population,
        arms=(arm,),
        endpoints=(twins.MeanDose("dose", "dose", 3),),
        days=6,
    )


def _fixed(dose):
    def initial(cov):
        n = len(cov["ID"])
        return np.zeros((n, 0)), np.full(n, dose)

    return initial


def _governance(tmp_path):
    return Governance(
        audit=AuditLog(tmp_path / "audit.jsonl", SIGNING), key=generate_pseudonym_key(), at=AT
    )


def _all_bytes(folder):
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_a_trial_takes_only_the_consented_and_logs_every_refusal(cohort, tmp_path):
    pop, permitted, refused = cohort
    gov = _governance(tmp_path)
    trial = _trial(pop)
    with pytest.raises(twins.ConsentRequiredError, match=r"trial 'consented'.*governance="):
        twins.run_trial(trial, tmp_path / "ungoverned", n=20, progress=False)
    assert not (tmp_path / "ungoverned").exists()

    out = twins.run_trial(trial, tmp_path / "run", n=20, progress=False, governance=gov)
    results = gov.pseudonymizer("results")
    frame = pd.read_parquet(out / "patients")
    assert sorted(frame["patient"].astype(str).unique()) == sorted(
        results.pseudonym(p) for p in permitted
    )
    written = _all_bytes(out)
    for p in permitted + refused:
        assert p.encode() not in written, p
    for p in refused:
        assert results.pseudonym(p).encode() not in written

    audit = gov.pseudonymizer("audit")
    entries = read_entries(gov.audit.path)
    refusals = [e for e in entries if e.action is AuditAction.CONSENT_REFUSAL]
    accesses = [e for e in entries if e.action is AuditAction.DATA_ACCESS]
    assert [e.subject for e in refusals] == [audit.pseudonym(p) for p in refused]
    assert {e.details["purpose"] for e in refusals} == {"research"}
    assert [e.subject for e in accesses] == [audit.pseudonym(p) for p in permitted]
    assert {e.details["use"] for e in accesses} == {"trial 'consented'"}
    export = entries[-1]  # the results folder written, after every access
    assert export.action is AuditAction.EXPORT and export.subject is None
    assert export.details["patient_count"] == 20 and export.details["folder"] == str(out)
    log_bytes = gov.audit.path.read_bytes()
    for p in permitted + refused:
        assert p.encode() not in log_bytes
    assert verify(gov.audit.path, SIGNING.public_key()).ok

    # Asking for more patients than consented is refused, naming the counts.
    with pytest.raises(ValueError, match=r"asked for 21 patients but the population has 20"):
        twins.run_trial(trial, tmp_path / "too_many", n=21, progress=False, governance=gov)


def test_treatment_still_allowed_for_a_research_refusal(cohort):
    pop, _, refused = cohort
    denied = refused[1]
    assert not pop.consents.allows(denied, Purpose.RESEARCH, AT)
    assert pop.consents.allows(denied, Purpose.TREATMENT, AT)
    # the population keeps its consents through sub-cohorts, and loses them under new ids
    assert pop[np.arange(3)].consents is pop.consents
    assert pop.with_ids(f"x{i}" for i in range(N)).consents is None


def test_a_training_set_takes_only_the_consented(cohort, tmp_path):
    pop, permitted, refused = cohort
    gov = _governance(tmp_path)
    trial = _trial(pop)
    with pytest.raises(twins.ConsentRequiredError, match="surrogate training set"):
        surrogates.training_set(trial, 20, observe=2)
    ts = surrogates.training_set(trial, 20, observe=2, governance=gov)
    training = gov.pseudonymizer("training")
    assert list(ts.patients.astype(str)) == [training.pseudonym(p) for p in permitted]
    audit = gov.pseudonymizer("audit")
    entries = read_entries(gov.audit.path)
    assert [e.subject for e in entries if e.action is AuditAction.CONSENT_REFUSAL] == [
        audit.pseudonym(p) for p in refused
    ]
    uses = {e.details["use"] for e in entries if e.action is AuditAction.DATA_ACCESS}
    assert uses == {"surrogate training set of trial 'consented'"}
    # A surrogate fitted on it records the training round (no identifier in it).
    model = surrogates.XGBoostSurrogate(n_estimators=5)
    model.fit(ts.inputs, ts.targets.iloc[:, 0].to_numpy(), governance=gov)
    last = read_entries(gov.audit.path)[-1]
    assert last.action is AuditAction.TRAINING_ROUND and last.subject is None
    assert last.details["patient_count"] == 20 and last.details["surrogate"] == model.name
    assert verify(gov.audit.path, SIGNING.public_key()).ok


def test_nobody_consented_is_an_error_and_a_virtual_population_is_not_governed(tmp_path):
    pop = twins.Population.sample(3, key=jax.random.key(1))
    nobody = pop.with_consents(ConsentRegistry())  # research is opt-in: all refused
    gov = _governance(tmp_path)
    with pytest.raises(twins.ConsentRequiredError, match=r"none of the population's 3"):
        twins.consented_population(
            nobody, gov, purpose=Purpose.RESEARCH, use="a test", output_purpose="results"
        )
    assert len(read_entries(gov.audit.path)) == 3  # the three refusals are logged
    same, refusals = twins.consented_population(
        pop, None, purpose=Purpose.RESEARCH, use="a test", output_purpose="results"
    )
    assert same is pop and refusals == []
    with pytest.raises(ValueError, match="aware datetime"):
        Governance(audit=gov.audit, key=gov.key, at=dt.datetime(2026, 1, 1))
    with pytest.raises(TypeError, match="ConsentRegistry"):
        pop.with_consents({"V00001": "permit"})


FHIR_COHORT = Path(__file__).parent / "data" / "fhir" / "several_patients.json"


def _identities(bundle_path):
    """Every patient id, identifier value, name part and birth date of a bundle."""
    found = set()
    for entry in json.loads(bundle_path.read_text())["entry"]:
        r = entry["resource"]
        if r["resourceType"] != "Patient":
            continue
        found.add(r["id"])
        found.update(i["value"] for i in r.get("identifier", []) if "value" in i)
        for name in r.get("name", []):
            found.update([name.get("family", ""), *name.get("given", [])])
        found.add(r.get("birthDate", ""))
    return sorted(t for t in found if t)


def test_a_fhir_cohort_enters_a_trial_only_with_consent(tmp_path):
    """A FHIR bundle's patients and consents (tests/data/fhir/several_patients.json: w-1
    permits research, w-2 denies it, w-3 permits treatment only) as a trial's cohort."""
    at = dt.datetime(2026, 4, 5, tzinfo=UTC)
    bundle = tio.read_fhir(
        FHIR_COHORT,
        reference_time=at,
        substance="warfarin",
    )
    pop = bundle.population()
    assert list(pop.ids) == ["w-1", "w-2", "w-3"] and pop.consents is not None
    gov = Governance(
        audit=AuditLog(tmp_path / "audit.jsonl", SIGNING), key=generate_pseudonym_key(), at=at
    )
    out = twins.run_trial(_trial(pop), tmp_path / "run", n=1, progress=False, governance=gov)
    twins.write_report(out)
    assert (out / "report.html").is_file() and (out / "summary.json").is_file()
    # Nothing written (results, summary, report, manifest, the audit log) names a patient.
    written = _all_bytes(out) + gov.audit.path.read_bytes()
    secrets = _identities(FHIR_COHORT)
    assert len(secrets) >= 6  # three ids and three birth dates at least
    for text in secrets:
        assert text.encode() not in written, text
    frame = pd.read_parquet(out / "patients")
    assert list(frame["patient"].astype(str).unique()) == [
        gov.pseudonymizer("results").pseudonym("w-1")
    ]
    audit = gov.pseudonymizer("audit")
    refusals = [e for e in read_entries(gov.audit.path) if e.action is AuditAction.CONSENT_REFUSAL]
    assert [e.subject for e in refusals] == [audit.pseudonym("w-2"), audit.pseudonym("w-3")]
    assert verify(gov.audit.path, SIGNING.public_key()).ok
