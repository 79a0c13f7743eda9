"""Consent: the rules of twins.governance._consent's docstring, and refusals in the log."""

from __future__ import annotations

import datetime as dt

import pytest

from twins.governance import (
    DEFAULTS,
    AuditAction,
    AuditLog,
    Consent,
    ConsentRegistry,
    Decision,
    MasterKey,
    Pseudonymizer,
    Purpose,
    Refusal,
    generate_signing_key,
    log_consents,
    read_entries,
    verify,
)

UTC = dt.UTC
T0 = dt.datetime(2025, 1, 1, tzinfo=UTC)
T1 = dt.datetime(2025, 7, 1, tzinfo=UTC)
T2 = dt.datetime(2026, 1, 1, tzinfo=UTC)
R, F, T = Purpose.RESEARCH, Purpose.FEDERATED_TRAINING, Purpose.TREATMENT
KEY = generate_signing_key()
PS = Pseudonymizer("audit", MasterKey(bytes(range(32))))


def test_defaults_treatment_permitted_secondary_use_opt_in():
    registry = ConsentRegistry()
    assert registry.allows("p1", T, T1)
    assert not registry.allows("p1", R, T1)
    assert not registry.allows("p1", F, T1)
    assert registry.decide("p1", R, T1) == (False, "no consent in force (default: deny)")
    assert registry.decide("p1", T, T1) == (True, "no consent in force (default: permit)")
    assert dict(DEFAULTS) == {T: Decision.PERMIT, R: Decision.DENY, F: Decision.DENY}
    with pytest.raises(TypeError):
        DEFAULTS[R] = Decision.PERMIT  # type: ignore[index]
    custom = ConsentRegistry(defaults={R: "permit"})
    assert custom.allows("p1", R, T1) and not custom.allows("p1", F, T1)
    with pytest.raises(TypeError):
        custom.defaults[R] = Decision.DENY  # type: ignore[index]
    with pytest.raises(ValueError, match="'permit' or 'deny'"):
        ConsentRegistry(defaults={R: "maybe"})
    with pytest.raises(TypeError):
        ConsentRegistry(defaults={"research": "permit"})  # type: ignore[dict-item]


def test_a_permit_in_force_allows_and_treatment_is_separate():
    registry = ConsentRegistry([Consent("p1", R, Decision.PERMIT, source="Consent/a")])
    assert registry.decide("p1", R, T1) == (True, "permitted by Consent/a")
    assert not registry.allows("p1", F, T1)  # a research permit is not a federated one
    denied = ConsentRegistry([Consent("p2", R, "deny"), Consent("p2", F, "deny")])
    assert denied.allows("p2", T, T1)  # treatment use still works


def test_deny_wins_over_permit_in_any_order():
    a = Consent("p1", R, Decision.PERMIT, start=T0, source="Consent/permit")
    b = Consent("p1", R, Decision.DENY, start=T1, end=T2, source="Consent/deny")
    for order in ([a, b], [b, a]):
        registry = ConsentRegistry(order)
        assert registry.allows("p1", R, T0)  # only the permit is in force
        assert registry.decide("p1", R, T1) == (False, "denied by Consent/deny")
        assert registry.allows("p1", R, T2)  # the deny has ended (exclusive end)


def test_periods_start_inclusive_end_exclusive_across_time_zones():
    c = Consent("p1", R, Decision.PERMIT, start=T0, end=T1)
    assert c.in_force(T0)
    assert not c.in_force(T0 - dt.timedelta(microseconds=1))
    assert c.in_force(T1 - dt.timedelta(microseconds=1))
    assert not c.in_force(T1)
    plus2 = dt.timezone(dt.timedelta(hours=2))
    assert not c.in_force(dt.datetime(2025, 7, 1, 2, 0, tzinfo=plus2))  # = T1
    assert c.in_force(dt.datetime(2025, 7, 1, 1, 59, tzinfo=plus2))
    assert Consent("p1", R, Decision.PERMIT).in_force(dt.datetime(1900, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="end after start"):
        Consent("p1", R, Decision.PERMIT, start=T1, end=T1)
    with pytest.raises(ValueError, match="end after start"):
        Consent("p1", R, Decision.PERMIT, start=T1, end=T0)


def test_aware_datetimes_are_required_everywhere():
    naive = dt.datetime(2025, 3, 1)
    with pytest.raises(ValueError, match="time zone"):
        Consent("p1", R, Decision.PERMIT, start=naive)
    with pytest.raises(ValueError, match="time zone"):
        Consent("p1", R, Decision.PERMIT, end=naive)
    with pytest.raises(TypeError, match=r"datetime\.datetime"):
        Consent("p1", R, Decision.PERMIT, start="2025-01-01")  # type: ignore[arg-type]
    registry = ConsentRegistry([Consent("p1", R, Decision.PERMIT)])
    with pytest.raises(ValueError, match="time zone"):
        registry.allows("p1", R, naive)
    with pytest.raises(ValueError, match="time zone"):
        registry.allows("somebody-else", R, naive)  # also without any consent
    with pytest.raises(TypeError):
        registry.allows("p1", R, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="time zone"):
        registry.split(["p1"], R, naive)


def test_consents_are_checked():
    with pytest.raises(ValueError, match="non-empty patient"):
        Consent("", R, Decision.PERMIT)
    with pytest.raises(TypeError, match="Purpose"):
        Consent("p1", "research", Decision.PERMIT)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'permit' or"):
        Consent("p1", R, "yes", source="Consent/x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ConsentRegistry(["p1"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="Purpose"):
        ConsentRegistry().allows("p1", "research", T1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="patient id"):
        ConsentRegistry().allows(17, R, T1)  # type: ignore[arg-type]


def test_split_keeps_order_and_logs_every_refusal_by_pseudonym(tmp_path):
    consents = [
        Consent("MRN-0001", R, Decision.PERMIT, source="Consent/c-MRN-0001"),
        Consent("MRN-0002", R, Decision.DENY, source="Consent/c-MRN-0002"),
        Consent("MRN-0003", R, Decision.PERMIT, end=T0, source="Consent/old"),
        Consent("MRN-0004", R, Decision.PERMIT),
    ]
    registry = ConsentRegistry(consents)
    patients = ["MRN-0004", "MRN-0002", "MRN-0001", "MRN-0003", "MRN-0005"]
    log = AuditLog(tmp_path / "audit.jsonl", KEY)
    allowed, refused = registry.split(patients, R, T1, audit=log, pseudonymizer=PS, actor="trial")
    assert allowed == ["MRN-0004", "MRN-0001"]
    assert refused == [
        Refusal("MRN-0002", R, "denied by Consent/c-MRN-0002", "Consent/c-MRN-0002"),
        Refusal("MRN-0003", R, "no consent in force (default: deny)"),
        Refusal("MRN-0005", R, "no consent in force (default: deny)"),
    ]
    entries = read_entries(log.path)
    assert [e.action for e in entries] == [AuditAction.CONSENT_REFUSAL] * 3
    assert [e.subject for e in entries] == [PS.pseudonym(r.patient) for r in refused]
    assert entries[0].details == {
        "purpose": "research",
        "at": T1.isoformat(),
        "reason": "denied by a consent in force",
        "consent": PS.pseudonym("Consent/c-MRN-0002"),
    }
    assert entries[1].details["reason"] == "no consent in force (default: deny)"
    assert all(e.actor == "trial" for e in entries)
    text = log.path.read_text()
    assert "MRN-" not in text and "Consent/" not in text  # no raw identifier
    report = verify(log.path, KEY.public_key())
    assert report.ok and report.heads_count == 1  # one batch, one signed head
    # Without a pseudonymizer, logging is refused; without refusals nothing is written.
    with pytest.raises(TypeError, match="Pseudonymizer"):
        registry.split(patients, R, T1, audit=log)
    assert registry.split(["MRN-0001"], R, T1, audit=log, pseudonymizer=PS)[1] == []
    assert log.size == 3
    # Treatment: nobody is refused.
    assert registry.split(patients, T, T1) == (patients, [])


def test_consent_changes_are_logged(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", KEY)
    consents = [
        Consent("MRN-0007", R, Decision.PERMIT, start=T0, end=T2, source="Consent/7"),
        Consent("MRN-0007", F, Decision.DENY),
    ]
    entries = log_consents(consents, log, pseudonymizer=PS, actor="fhir-import")
    assert [e.action for e in entries] == [AuditAction.CONSENT_CHANGE] * 2
    assert entries[0].details == {
        "purpose": "research",
        "decision": "permit",
        "start": T0.isoformat(),
        "end": T2.isoformat(),
        "consent": PS.pseudonym("Consent/7"),
    }
    assert entries[1].details["end"] is None and "consent" not in entries[1].details
    assert "MRN-" not in log.path.read_text()
    assert verify(log.path, KEY.public_key()).ok
