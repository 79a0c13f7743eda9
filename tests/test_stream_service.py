"""twins.io.TwinService without a broker: messages in, twins, dead letters, audit, outputs.

The reference of every comparison is a twin built from the same resources as one bundle
(`read_fhir` + `DigitalTwin`, as docs/fhir.md does it), or a service fed the same messages
in order: a duplicate, a late message, a retraction or a crash must give the same
posterior mode as the uninterrupted, in-order run.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import random
import threading
import time

import numpy as np
import pytest

import twins
from twins.governance import (
    AuditLog,
    Governance,
    generate_pseudonym_key,
    generate_signing_key,
    read_entries,
    verify,
)
from twins.io import FhirError, TwinService, inspect_resource, read_fhir

SITE = "ward-7"
T0 = dt.datetime(2026, 3, 8, 8, 0, tzinfo=dt.UTC)
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"


def _at(hours: float) -> str:
    return (T0 + dt.timedelta(hours=hours)).isoformat()


def _obs(rid, pid, code, hours, value, unit):
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": _at(hours),
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def dose(pid: str, k: int, hours: float, grams: float = 1.0, rxnorm: str = "11124") -> dict:
    return {
        "resourceType": "MedicationAdministration",
        "id": f"{pid}-dose-{k}",
        "status": "completed",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": rxnorm}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectivePeriod": {"start": _at(hours), "end": _at(hours + 1.0)},
        "dosage": {
            "route": {"coding": [{"system": "http://snomed.info/sct", "code": "47625008"}]},
            "dose": {"value": grams, "unit": "g", "system": UCUM, "code": "g"},
        },
    }


def level(pid: str, k: int, hours: float, value: float) -> dict:
    return _obs(f"{pid}-level-{k}", pid, "4092-3", hours, value, "mg/L")


def patient_messages(pid: str, *, n_doses: int = 4, levels=((11.5, 9.0), (23.5, 11.0))):
    """A Patient, weight, height and creatinine, `n_doses` 1 g infusions every 12 h from
    T0, and trough levels `(hours, mg/L)`: one list of `(resource type, resource)`."""
    out = [
        {
            "resourceType": "Patient",
            "id": pid,
            "identifier": [{"system": "https://hospital.example/mrn", "value": f"MRN-{pid}"}],
            "name": [{"family": f"Family-{pid}", "given": ["Given"]}],
            "gender": "female" if pid.endswith(("1", "3")) else "male",
            "birthDate": "1961-05-02",
        },
        _obs(f"{pid}-wt", pid, "29463-7", -2.0, 70.0 + len(pid), "kg"),
        _obs(f"{pid}-ht", pid, "8302-2", -2.0, 172.0, "cm"),
        _obs(f"{pid}-scr", pid, "2160-0", -2.0, 1.1, "mg/dL"),
    ]
    out += [dose(pid, k, 12.0 * k) for k in range(n_doses)]
    out += [level(pid, k, h, v) for k, (h, v) in enumerate(levels)]
    return [(r["resourceType"], r) for r in out]


def send(service: TwinService, resource: dict, rtype: str | None = None):
    rtype = rtype or resource["resourceType"]
    return service.receive(service.topics.input(rtype), json.dumps(resource).encode())


def make_service(tmp_path, name: str = "svc", *, key=None, signing=None, **options) -> TwinService:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    key = key or generate_pseudonym_key()
    signing = signing or generate_signing_key()
    gov = Governance(AuditLog(folder / "audit.jsonl", signing), key, actor="twins-serve")
    return TwinService(
        folder / "state.db",
        site=SITE,
        drugs={"vancomycin": twins.drugs.get("vancomycin_goti2018")},
        governance=gov,
        n_draws=100,
        **options,
    )


def modes(service: TwinService) -> dict:
    return {k: np.asarray(v["mode"]) for k, v in service.posteriors().items()}


def assert_same_twins(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-9, err_msg=str(k))


def assert_processed_once(audit_path, n_messages: int, *, every: bool = False) -> None:
    """No message is named by two `twin-update` entries; every dose and level is named by
    one (`every`: every message, when each batch found a twin to update)."""
    seen: dict[int, int] = {}
    for e in read_entries(audit_path):
        if e.action.value == "twin-update":
            for seq in e.details["messages"]:
                seen[seq] = seen.get(seq, 0) + 1
    assert set(seen.values()) == {1}, {k: v for k, v in seen.items() if v != 1}
    assert set(seen) <= set(range(1, n_messages + 1))
    if every:
        assert sorted(seen) == list(range(1, n_messages + 1))


def assert_doses_and_levels_updated(service, audit_path) -> None:
    named = {
        seq
        for e in read_entries(audit_path)
        if e.action.value == "twin-update"
        for seq in e.details["messages"]
    }
    wanted = {m.seq for m in service.store.messages() if "-dose-" in m.rid or "-level-" in m.rid}
    assert wanted <= named, sorted(wanted - named)


@pytest.fixture(scope="module")
def keys():
    return generate_pseudonym_key(), generate_signing_key()


def test_inspect_resource_reads_one_message():
    msgs = dict((r["id"], r) for _, r in patient_messages("p-1"))
    info = inspect_resource(msgs["p-1-level-0"])
    assert (info.resource_type, info.id, info.patient, info.version) == (
        "Observation",
        "p-1-level-0",
        "p-1",
        None,
    )
    assert info.read and info.substances == ("vancomycin",)
    assert info.time == T0 + dt.timedelta(hours=11.5)
    assert inspect_resource(msgs["p-1-dose-1"]).time == T0 + dt.timedelta(hours=12)
    assert inspect_resource(msgs["p-1-scr"]).substances == ()
    assert inspect_resource(msgs["p-1"]).patient == "p-1"
    other = inspect_resource(dose("p-1", 9, 1.0, rxnorm="11289"))  # warfarin
    assert not other.read and "not vancomycin" in other.notes[0].detail
    bad = copy.deepcopy(msgs["p-1-level-0"])
    bad["valueQuantity"]["code"] = "kg"
    with pytest.raises(FhirError, match=r"Observation/p-1-level-0 valueQuantity"):
        inspect_resource(bad)
    naive = copy.deepcopy(msgs["p-1-level-0"])
    naive["effectiveDateTime"] = "2026-03-08T19:30:00"
    with pytest.raises(FhirError, match="time zone"):
        inspect_resource(naive)


def test_same_twin_as_a_bundle_and_outputs_pseudonymous(tmp_path, keys):
    svc = make_service(tmp_path, key=keys[0], signing=keys[1])
    msgs = patient_messages("p-1")
    for _, r in msgs:
        assert send(svc, r).outcome == "stored"
    out = svc.process()
    # the reference: the same resources as one bundle, read and calibrated directly
    entries = [{"resource": r} for _, r in msgs]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    at = T0 + dt.timedelta(hours=36)  # the last dose
    data = read_fhir(bundle, reference_time=at)
    twin = twins.DigitalTwin(twins.drugs.get("vancomycin_goti2018"), data.patients["p-1"])
    twin.give(data.regimen("p-1")).update(data.observations("p-1"))
    name = keys[0].pseudonymizer("results").pseudonym("p-1")
    np.testing.assert_allclose(modes(svc)[(name, "vancomycin")], twin.posterior.mode, rtol=1e-9)
    # outputs: a proposal and forecast Observations, pseudonyms only, naming the cause
    topics = [t for t, _ in out]
    assert topics == [svc.topics.recommendation, svc.topics.forecast]
    rec = out[0][1]
    assert rec["resource"]["intent"] == "proposal"
    assert rec["resource"]["subject"]["reference"] == f"Patient/{name}"
    assert rec["cause"]["message"] == len(msgs) and rec["cause"]["reference"].startswith(
        "Observation/psn-results-"
    )
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.medicationrequest import MedicationRequest

    MedicationRequest.model_validate(rec["resource"])
    Bundle.model_validate(out[1][1]["resource"])
    text = json.dumps([b for _, b in out]) + (tmp_path / "svc" / "audit.jsonl").read_text()
    for raw in ("p-1", "MRN-", "Family-", "1961-05-02"):
        assert raw not in text
    # the audit log: one update, recommendation and forecast, naming every message
    entries = [e for e in read_entries(tmp_path / "svc" / "audit.jsonl")]
    assert [e.action.value for e in entries] == ["twin-update", "recommendation", "forecast"]
    assert entries[0].details["messages"] == list(range(1, len(msgs) + 1))
    assert verify(tmp_path / "svc" / "audit.jsonl", keys[1].public_key()).ok
    assert svc.twin("p-1", "vancomycin") is not None
    svc.close()


def test_duplicates_late_messages_and_retraction(tmp_path, keys):
    """In order, one message at a time; against: shuffled, every message twice, a level
    that is then marked entered-in-error, in two batches."""
    msgs = patient_messages("p-1") + patient_messages("p-2", n_doses=3, levels=((23.0, 12.0),))
    a = make_service(tmp_path, "a", key=keys[0])
    for _, r in msgs:
        send(a, r)
    a.process()
    b = make_service(tmp_path, "b", key=keys[0])
    patients = [r for _, r in msgs if r["resourceType"] == "Patient"]
    rest = [r for _, r in msgs if r["resourceType"] != "Patient"]
    random.Random(3).shuffle(rest)
    wrong = {**level("p-1", 7, 30.0, 55.0), "meta": {"versionId": "1"}}
    for r in patients + rest[:6] + [wrong]:
        send(b, r)
    b.process()
    for r in rest[6:] + patients + rest:  # late ones, then everything again
        receipt = send(b, r)
        assert receipt.outcome in ("stored", "duplicate")
    assert [send(b, r).outcome for r in rest] == ["duplicate"] * len(rest)
    retract = {**wrong, "status": "entered-in-error", "meta": {"versionId": "2"}}
    assert send(b, retract).outcome == "stored"
    assert send(b, retract).outcome == "duplicate"
    b.process()
    assert b.process() == []  # nothing pending
    assert len(b.store.messages()) == len(msgs) + 2
    assert_same_twins(modes(a), modes(b))
    a.close()
    b.close()


def test_dead_letters_never_stop_the_service(tmp_path, keys):
    # hold_unknown=0: a message about an unknown patient is a dead letter at once
    # (test_stream_held.py holds it for its Patient)
    svc = make_service(tmp_path, key=keys[0], hold_unknown=0)
    msgs = dict((r["id"], r) for _, r in patient_messages("p-1"))
    send(svc, msgs["p-1"])
    bad_unit = copy.deepcopy(msgs["p-1-level-0"])
    bad_unit["valueQuantity"]["code"] = "[stone_av]"
    changed = {**msgs["p-1-level-1"], "meta": {"versionId": "1"}}
    cases = [
        (svc.topics.input("Observation"), b"{not json", "not UTF-8 JSON"),
        (svc.topics.input("Observation"), b"\xff\xfe", "not UTF-8 JSON"),
        (svc.topics.input("Observation"), b"[1, 2]", "expected a JSON object"),
        (svc.topics.input("Encounter"), b"{}", "topic"),
        (svc.topics.input("Patient"), json.dumps(msgs["p-1-scr"]).encode(), "for Patient"),
        (svc.topics.input("Observation"), json.dumps(level("p-9", 0, 1.0, 3.0)).encode(),
         "unknown patient Patient/p-9"),
        (svc.topics.input("MedicationAdministration"),
         json.dumps(dose("p-1", 5, 1.0, rxnorm="10438")).encode(), "not used by this service"),
        (svc.topics.input("Observation"), json.dumps(bad_unit).encode(), "valueQuantity"),
        (svc.topics.input("Observation"),
         json.dumps({**changed, "meta": {"versionId": "v1"}}).encode(), "whole number"),
    ]  # fmt: skip
    for topic, payload, why in cases:
        receipt = svc.receive(topic, payload)
        assert receipt.outcome == "dead-letter", (payload, receipt)
        assert why in receipt.reason, (why, receipt.reason)
    assert send(svc, changed).outcome == "stored"
    other = copy.deepcopy(changed)
    other["valueQuantity"]["value"] = 99.0
    assert "same id and version" in send(svc, other).reason
    letters = svc.store.dead_letters()
    assert len(letters) == len(cases) + 1
    assert [p for _, _, p, _, _ in letters][:1] == [b"{not json"]
    dead_topic = [t for _, t, _, _ in svc.store.outputs() if t == svc.topics.dead_letter]
    assert len(dead_topic) == len(letters)
    assert len(svc.store.messages()) == 2  # the Patient and one level
    svc.close()


def test_consent_forbidding_treatment(tmp_path, keys):
    svc = make_service(tmp_path, key=keys[0], signing=keys[1])
    msgs = patient_messages("p-3", n_doses=2, levels=((11.5, 8.0),))
    deny = {
        "resourceType": "Consent",
        "id": "p-3-deny",
        "status": "active",
        "scope": {"coding": [{"code": "treatment"}]},
        "category": [{"coding": [{"system": LOINC, "code": "57016-8"}]}],
        "patient": {"reference": "Patient/p-3"},
        "provision": {
            "type": "deny",
            "purpose": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
            ],
        },
    }
    for _, r in [*msgs[:1], ("Consent", deny), *msgs[1:]]:
        assert send(svc, r).outcome == "stored"
    assert svc.process() == []
    assert svc.posteriors() == {}
    reasons = [reason for _, _, _, reason, _ in svc.store.dead_letters()]
    assert len(reasons) == len(msgs) - 1 and all("consent forbids treatment" in r for r in reasons)
    entries = read_entries(tmp_path / "svc" / "audit.jsonl")
    assert [e.action.value for e in entries] == ["consent-refusal"]
    assert entries[0].details["consent"].startswith("psn-audit-")
    assert "p-3" not in (tmp_path / "svc" / "audit.jsonl").read_text()
    svc.close()


def test_waits_for_a_missing_lab_and_survives_a_failing_update(tmp_path, keys, monkeypatch):
    """No serum creatinine yet: no twin, the messages wait (no dead letter) until it
    comes. An update that fails (here: the recommendation raises) dead-letters that
    patient's messages with the reason; the other patient of the batch is updated."""
    svc = make_service(tmp_path, key=keys[0])
    msgs = patient_messages("p-1", n_doses=2, levels=((11.5, 9.0),))
    scr = [r for _, r in msgs if r["id"] == "p-1-scr"]
    for _, r in msgs:
        if r["id"] != "p-1-scr":
            send(svc, r)
    assert svc.process() == [] and svc.posteriors() == {}
    assert svc.store.dead_letters() == []
    notes = {m.note for m in svc.store.messages() if m.rtype == "MedicationAdministration"}
    assert len(notes) == 1 and "cannot be built yet" in notes.pop()
    send(svc, scr[0])
    assert len(svc.process()) == 2 and len(svc.posteriors()) == 1
    import twins.io._service as service_module

    real = service_module.outputs

    def failing(r, **kw):
        if r.patient == "p-2":
            raise RuntimeError("the dose search did not converge")
        return real(r, **kw)

    monkeypatch.setattr(service_module, "outputs", failing)
    for _, r in patient_messages("p-2", n_doses=2, levels=()):
        send(svc, r)
    send(svc, level("p-1", 5, 23.0, 12.0))
    out = svc.process()
    p1 = keys[0].pseudonymizer("results").pseudonym("p-1")
    assert [b["patient"] for _, b in out] == [f"Patient/{p1}"] * 2
    reasons = [reason for _, _, _, reason, _ in svc.store.dead_letters()]
    assert len(reasons) == 6 and all("did not converge" in r for r in reasons)
    assert svc.store.pending(10) == []
    svc.close()


def test_receiving_while_processing_in_another_thread(tmp_path, keys):
    """As over MQTT: messages received in one thread while another processes them (the
    unit parser behind twins.io is not thread-safe: the service serialises FHIR reading).
    Every message is stored, none dead-lettered, the twins those of an in-order run."""
    msgs = [m for i in range(4) for m in patient_messages(f"p-{i}", n_doses=2)]
    ref = make_service(tmp_path, "ref", key=keys[0])
    for _, r in msgs:
        send(ref, r)
    ref.process()
    svc = make_service(tmp_path, key=keys[0])
    errors: list[BaseException] = []

    def receive(part):
        try:
            for _, r in part:
                assert send(svc, r).outcome == "stored"
        except BaseException as error:
            errors.append(error)

    by_patient = [msgs[i : i + len(msgs) // 4] for i in range(0, len(msgs), len(msgs) // 4)]
    threads = [threading.Thread(target=receive, args=(part,)) for part in by_patient]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    busy = lambda: any(t.is_alive() for t in threads) or svc.store.pending(1)
    while busy() and time.monotonic() < deadline:
        svc.process()
    for t in threads:
        t.join(10)
    assert not errors, errors
    assert svc.store.dead_letters() == []
    assert len(svc.store.messages()) == len(msgs)
    assert_same_twins(modes(svc), modes(ref))
    ref.close()
    svc.close()


def _fuzzed(rng: random.Random, valid: list[dict]) -> tuple[str, bytes]:
    r = copy.deepcopy(rng.choice(valid))
    rtype = r["resourceType"]
    kind = rng.randrange(9)
    if kind == 0:
        text = json.dumps(r)
        return rtype, text[: rng.randrange(1, len(text) - 1)].encode()
    if kind == 1:
        return rtype, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    if kind == 2:
        return rtype, json.dumps(rng.choice([None, 1, "x", [], [r], True])).encode()
    if kind == 3:
        r["resourceType"] = rng.choice(["Observatio", "Bundle", "", 7])
    elif kind == 4:
        r.pop("id")
    elif kind == 5:
        r["status"] = rng.choice(["finished", "", None, 3, "FINAL"])
        if r["status"] is None:
            r.pop("status")
            if rtype == "Patient":
                r["gender"] = "unknown"
    elif kind == 6:
        field = {"Patient": "birthDate", "Observation": "effectiveDateTime"}.get(rtype)
        if field:
            r[field] = rng.choice(["2026-13-01", "yesterday", "2026-03-08T10:00:00"])
        else:
            r["effectivePeriod"] = {"start": "2026-03-08T08:00:00"}
    elif kind == 7:
        r["unexpected"] = {"a": [1, 2]}
    else:
        if rtype == "Patient":
            r["gender"] = rng.choice(["other", "unknown"])
        elif rtype == "Observation":
            r["valueQuantity"]["code"] = rng.choice(["stone", "[lb_av]", "kat", "mmol/L/s"])
        else:
            r["dosage"]["dose"]["code"] = rng.choice(["mL", "[IU]", "h", "mol/L"])
    return rtype, json.dumps(r).encode()


# The 1,000 payloads are extended (about 6 s more); make test runs 200 of the same
# mutations, another seed's.
@pytest.mark.parametrize("n, seed", [(200, 17), pytest.param(1000, 29, marks=pytest.mark.extended)])
def test_fuzz_malformed_payloads_all_dead_lettered(tmp_path, keys, n, seed):
    svc = make_service(tmp_path, key=keys[0])
    valid = [r for _, r in patient_messages("p-1")]
    for r in valid[:5]:  # a patient and a first dose: a twin on its prior
        send(svc, r)
    assert len(svc.process()) == 2
    twins_before = svc.posteriors()
    assert len(twins_before) == 1
    before = [(m.seq, m.payload, m.state) for m in svc.store.messages()]
    rng = random.Random(seed)
    for i in range(n):
        rtype, payload = _fuzzed(rng, valid)
        receipt = svc.receive(svc.topics.input(rtype), payload)
        assert receipt.outcome == "dead-letter", (i, payload[:200], receipt)
        assert receipt.reason
    assert [(m.seq, m.payload, m.state) for m in svc.store.messages()] == before
    assert len(svc.store.dead_letters()) == n
    assert svc.process() == []
    assert svc.posteriors() == twins_before
    svc.close()


def test_crash_between_audit_and_commit_is_not_repeated(tmp_path, keys, monkeypatch):
    """A batch whose audit entries were written but whose commit did not happen (the
    process died in between) is processed again on restart, without logging it twice."""
    msgs = patient_messages("p-1") + patient_messages("p-2", n_doses=3, levels=((23.0, 12.0),))
    ref = make_service(tmp_path, "ref", key=keys[0])
    for _, r in msgs:
        send(ref, r)
    ref.process()
    svc = make_service(tmp_path, key=keys[0], signing=keys[1])
    for _, r in msgs[:10]:
        send(svc, r)
    svc.process()
    for _, r in msgs[10:]:
        send(svc, r)
    store = svc.store
    original = type(store).transaction

    def dying(self):
        raise SystemExit("killed")  # before the commit

    monkeypatch.setattr(type(store), "transaction", dying)
    with pytest.raises(SystemExit):
        svc.process()
    monkeypatch.setattr(type(store), "transaction", original)
    svc.close()
    again = make_service(tmp_path, key=keys[0], signing=keys[1])
    assert len(again.store.pending(1000)) == len(msgs) - 10
    again.process()
    assert again.process() == []
    assert_same_twins(modes(again), modes(ref))
    assert_processed_once(tmp_path / "svc" / "audit.jsonl", len(msgs), every=True)
    assert verify(tmp_path / "svc" / "audit.jsonl", keys[1].public_key()).ok
    ref.close()
    again.close()
