"""`twins fhir import BUNDLE --out DIR` (typer's CliRunner, in process): what it writes,
and that nothing written carries a raw identifier, a name or a birth date."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from test_fhir_fixtures import synthetic_bundle
from typer.testing import CliRunner

from twins.app._cli import app
from twins.governance import PSEUDONYM_KEY_ENV, PSEUDONYM_KEY_FILE_ENV, MasterKey

DATA = Path(__file__).parent / "data" / "fhir"
KEY = bytes(range(32))
KEY_ENV = {PSEUDONYM_KEY_ENV: KEY.hex(), PSEUDONYM_KEY_FILE_ENV: ""}
NO_KEY_ENV = {PSEUDONYM_KEY_ENV: "", PSEUDONYM_KEY_FILE_ENV: ""}
REF = "2026-03-10T12:00:00+01:00"


def _invoke(*args, env=KEY_ENV):
    return CliRunner().invoke(app, ["fhir", "import", *[str(a) for a in args]], env=env)


def _raw_strings(bundle: dict) -> set[str]:
    """Identifiers, names and birth dates of a bundle's resources."""
    found = set()
    for e in bundle["entry"]:
        r = e["resource"]
        for key in ("id",):
            if r.get(key):
                found.add(r[key])
        if e.get("fullUrl"):
            found.add(e["fullUrl"].rsplit(":", 1)[-1].rsplit("/", 1)[-1])
        if r["resourceType"] == "Patient":
            found.add(r["birthDate"])
            for name in r.get("name", []):
                found.update([name.get("family", ""), *name.get("given", [])])
            for ident in r.get("identifier", []):
                found.add(ident["value"])
    return {s for s in found if s}


def test_import_writes_pseudonymised_records_patients_and_report(tmp_path):
    out = tmp_path / "out"
    result = _invoke(DATA / "units.json", "--out", out, "--reference-time", REF)
    assert result.exit_code == 0, result.output
    assert "1 patient(s), 5 record(s)" in result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "patients.csv", "patients.json", "records.csv", "report.json",
    ]  # fmt: skip
    psn = MasterKey(KEY).pseudonymizer("results")
    pid = psn.pseudonym("van-units")
    records = pd.read_csv(out / "records.csv")
    assert set(records["ID"]) == {pid}
    assert list(records["TIME"]) == [0.0, 12.0, 23.5, 24.0, 26.0]
    assert (
        records["SOURCE"].iloc[0]
        == f"MedicationAdministration/{psn.pseudonym('MedicationAdministration/dose-1')}"
    )
    patients = json.loads((out / "patients.json").read_text())
    assert patients == [
        {
            "id": pid, "age": 67, "sex": "male", "height": 177.8,
            "weight": pytest.approx(181 * 0.45359237, rel=1e-12),
            "lab_albumin": 3.5, "lab_alt": 40.0, "lab_cystatin_c": 1.1,
            "lab_serum_creatinine": patients[0]["lab_serum_creatinine"],
        }
    ]  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["pseudonyms"] == {"purpose": "results", "key_id": psn.key_id}
    assert report["read"] == {"MedicationAdministration": 3, "Observation": 8, "Patient": 1}
    assert report["reference_time"] == REF


def test_no_raw_identifier_name_or_birth_date_is_written(tmp_path):
    bundle, _ = synthetic_bundle(11, n_patients=3)
    # a resource that is refused (lenient) and one ignored, so that the report lists some
    bundle["entry"][3]["resource"]["status"] = "bogus"
    path = tmp_path / "synthetic.json"
    path.write_text(json.dumps(bundle))
    out = tmp_path / "out"
    result = _invoke(path, "--out", out, "--reference-time", "2026-01-10T00:00:00Z", "--lenient")
    assert result.exit_code == 0, result.output
    raw = _raw_strings(bundle)
    assert len(raw) > 30
    written = "".join(p.read_text() for p in out.iterdir()) + result.output
    leaked = sorted(s for s in raw if s in written)
    assert leaked == []
    report = json.loads((out / "report.json").read_text())
    assert report["not_read"]["error"] == 1


def test_no_key_is_a_clear_error(tmp_path):
    result = _invoke(DATA / "units.json", "--out", tmp_path / "o", env=NO_KEY_ENV)
    assert result.exit_code == 2
    assert "No pseudonym key is set" in result.output and PSEUDONYM_KEY_ENV in result.output
    assert not (tmp_path / "o").exists()


def test_only_a_new_or_empty_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = _invoke(DATA / "units.json", "--out", out, "--reference-time", REF)
    assert result.exit_code == 2
    assert "not empty" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _invoke(DATA / "units.json", "--out", empty, "--reference-time", REF).exit_code == 0


def test_a_malformed_resource_stops_the_import_naming_it(tmp_path):
    bundle = json.loads((DATA / "units.json").read_text())
    bundle["entry"][1]["resource"]["valueQuantity"]["code"] = "stone"
    path = tmp_path / "b.json"
    path.write_text(json.dumps(bundle))
    result = _invoke(path, "--out", tmp_path / "o", "--reference-time", REF)
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "Observation/wt-lb valueQuantity:" in text and "--lenient" in text
    assert not (tmp_path / "o").exists()


def test_reference_time_needs_a_zone(tmp_path):
    result = _invoke(
        DATA / "units.json", "--out", tmp_path / "o", "--reference-time", "2026-03-10T12:00"
    )
    assert result.exit_code == 2 and "time zone" in result.output


def test_import_of_a_bulk_export_folder(tmp_path):
    out = tmp_path / "out"
    result = _invoke(DATA / "bulk", "--out", out, "--reference-time", REF)
    assert result.exit_code == 0, result.output
    assert (out / "records.csv").read_text() == _records_of(DATA / "units.json", tmp_path)


def _records_of(bundle: Path, tmp_path: Path) -> str:
    out = tmp_path / "from-bundle"
    assert _invoke(bundle, "--out", out, "--reference-time", REF).exit_code == 0
    return (out / "records.csv").read_text()


def test_an_audited_import_records_each_patient_consent_and_the_export(tmp_path):
    """--audit LOG --signing-key KEY: a data-access entry per patient read, a consent-change
    entry per consent, an export entry for the folder, all by pseudonym (purpose "audit");
    the log verifies and names no raw id; --audit without a key is a usage error."""
    from twins.governance import AuditAction, read_entries, verify, write_signing_key

    key_path = tmp_path / "audit.key"
    write_signing_key(key_path)
    log = tmp_path / "audit.jsonl"
    out = tmp_path / "o"
    ref = "2026-04-05T00:00:00Z"
    bundle = DATA / "several_patients.json"
    result = _invoke(
        bundle, "--out", out, "--reference-time", ref, "--substance", "warfarin",
        "--audit", log, "--signing-key", key_path,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    audit = MasterKey(KEY).pseudonymizer("audit")
    entries = read_entries(log)
    actions = [e.action for e in entries]
    # one consent-change entry per decision read (a Consent resource may hold several)
    import datetime as dt

    import twins.io as tio

    read = tio.read_fhir(bundle, reference_time=dt.datetime(2026, 4, 5, tzinfo=dt.UTC),
                         substance="warfarin")  # fmt: skip
    n_consents = len(read.consents)
    assert n_consents >= 3
    assert actions == [AuditAction.DATA_ACCESS] * 3 + [AuditAction.CONSENT_CHANGE] * n_consents + [
        AuditAction.EXPORT
    ]
    assert [e.subject for e in entries[:3]] == [audit.pseudonym(p) for p in ("w-1", "w-2", "w-3")]
    assert entries[-1].details["patient_count"] == 3
    assert verify(log, tmp_path / "audit.key.pub").ok
    text = log.read_text()
    assert not any(raw in text for raw in ('"w-1"', '"w-2"', '"w-3"', "1961-05-20"))
    again = _invoke(bundle, "--out", tmp_path / "o2", "--reference-time", ref, "--audit", log)
    assert again.exit_code == 2 and "--audit needs --signing-key" in again.output
