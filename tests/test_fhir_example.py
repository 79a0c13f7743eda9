"""examples/fhir_twin.py end to end, with checks independent of the example's own code: the
written Bundle is valid R4B; read back by `read_fhir` (the key holder mapping its
pseudonyms back to the patients) it gives the recommended doses, intervals and start; the
recommended plans' AUC24 (integrated here from forecast draws) lies in the target window;
the audit log verifies, holds the expected actions in order, and a one-byte edit is caught
naming the entry; no file written holds a raw id, name or birth date of the input; a
denied treatment consent gives no twin and a logged refusal; a non-empty --out is refused.

The example runs three times in one test (default keys; a treatment denied; keys passed),
compiling the twin's functions once."""

from __future__ import annotations

import copy
import datetime as dt
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fhir.resources.R4B.bundle import Bundle

import twins.io as tio
from twins.governance import (
    read_pseudonym_key_file,
    verify,
    write_pseudonym_key,
    write_signing_key,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
INPUT = EXAMPLES / "data" / "fhir_vancomycin.json"
REF = dt.datetime(2026, 3, 10, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
DRAWS = "200"


def _example():
    spec = importlib.util.spec_from_file_location("fhir_twin", EXAMPLES / "fhir_twin.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _input() -> dict:
    return json.loads(INPUT.read_text(encoding="utf-8"))


def _patient_ids(bundle: dict) -> list[str]:
    return sorted(e["resource"]["id"] for e in bundle["entry"]
                  if e["resource"]["resourceType"] == "Patient")  # fmt: skip


def _results_pseudonyms(out: Path) -> dict[str, str]:
    """pseudonym -> raw patient id, as the holder of the (demo) key computes them."""
    key = read_pseudonym_key_file(out / "keys" / "pseudonym.key")
    psn = key.pseudonymizer("results")
    return {psn.pseudonym(pid): pid for pid in _patient_ids(_input())}


def _check_written_bundle_is_valid_r4b(out, result):
    assert result["bundle"] == out / "recommendation.json"
    bundle = Bundle.model_validate_json((out / "recommendation.json").read_text("utf-8"))
    types = [e.resource.get_resource_type() for e in bundle.entry]
    assert types.count("MedicationRequest") == 2
    assert types.count("Observation") == len(types) - 2 > 0
    for e in bundle.entry:
        r = e.resource
        assert r.subject.reference.startswith("Patient/psn-results-")
        if r.get_resource_type() == "MedicationRequest":
            assert (r.intent, r.status) == ("proposal", "draft")
        else:
            assert r.derivedFrom and all(
                d.reference.startswith("Observation/psn-results-") for d in r.derivedFrom
            )


def _check_read_back_gives_the_recommendations(out, result):
    back = _results_pseudonyms(out)
    written = json.loads((out / "recommendation.json").read_text("utf-8"))
    for e in written["entry"]:  # the key holder links the proposals to the patients again
        ref = e["resource"]["subject"]["reference"]
        e["resource"]["subject"]["reference"] = "Patient/" + back[ref.removeprefix("Patient/")]
    combined = _input()
    combined["entry"] += written["entry"]
    read = tio.read_fhir(combined, reference_time=REF)
    recs = result["recommendations"]
    assert {p.patient for p in read.proposals} == set(recs) == set(_patient_ids(_input()))
    for p in read.proposals:
        rec = recs[p.patient]
        assert p.dose == pytest.approx(rec.dose, rel=1e-9)
        assert (p.interval, p.n_doses) == (rec.interval, rec.n_doses)
        assert rec.interval in (8.0, 12.0, 24.0)
        assert p.start == REF  # the plan starts at the reference time, not in the past
        assert (p.metric, p.low, p.high) == ("AUC24", 400.0, 600.0)
        assert p.probability == pytest.approx(rec.probability)
        points = sorted((f for f in read.forecasts if f.patient == p.patient), key=lambda f: f.at)
        assert points[0].at == REF and len(points) == 9
        fc = result["forecasts"][p.patient]
        np.testing.assert_allclose([f.median for f in points], fc.median, rtol=1e-12)
    # proposals and forecasts are not doses or levels: the records are those of the input
    assert len(read.records) == len(tio.read_fhir(_input(), reference_time=REF).records)


def _check_recommended_auc24_in_window(result):
    for pid, rec in result["recommendations"].items():
        assert 400.0 <= rec.metric_median <= 600.0
        # the AUC of the last 24 h of the plan, by the trapezoid rule over forecast draws
        times = np.asarray(rec.regimen.time)[np.asarray(rec.regimen.mask)]
        end = float(times.max()) + rec.interval
        grid = np.linspace(end - 24.0, end, 481)
        fc = result["twins"][pid].forecast(grid, rec.regimen, key=7, n_draws=int(DRAWS))
        auc = np.trapezoid(fc.draws, grid, axis=1)
        assert 400.0 <= float(np.median(auc)) <= 600.0
        assert float(np.median(auc)) == pytest.approx(rec.metric_median, rel=0.05)


EXPECTED_ACTIONS = (
    ["data-access"] * 2 + ["twin-update", "recommendation", "forecast"] * 2 + ["export"]
)


def _actions(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text("utf-8").splitlines()]


def _check_audit_log_verifies_with_the_actions_in_order(out, result):
    log = out / "audit.jsonl"
    report = verify(log, out / "keys" / "audit-signing.key.pub")
    assert report.ok and not report.tampered and report.first_bad is None
    assert result["verify"].ok
    entries = _actions(log)
    assert [e["action"] for e in entries] == EXPECTED_ACTIONS
    subjects = [e["subject"] for e in entries[:-1]]
    assert all(s.startswith("psn-audit-") for s in subjects)
    assert entries[-1]["details"]["file"] == "recommendation.json"


def _check_one_byte_edit_of_the_log_is_detected_naming_the_entry(out, folder):
    folder.mkdir()
    log = folder / "audit.jsonl"
    shutil.copy(out / "audit.jsonl", log)
    shutil.copy(out / "audit.jsonl.heads", folder / "audit.jsonl.heads")
    lines = log.read_bytes().split(b"\n")
    assert json.loads(lines[5])["action"] == "twin-update"  # entry 5: the second twin's
    at = lines[5].index(b'"levels":') + len(b'"levels":')
    assert lines[5][at : at + 1].isdigit()
    edited = bytearray(lines[5])
    edited[at] = ord("9") if edited[at] != ord("9") else ord("8")  # still valid JSON
    lines[5] = bytes(edited)
    log.write_bytes(b"\n".join(lines))
    report = verify(log, out / "keys" / "audit-signing.key.pub")
    assert not report.ok and report.tampered
    assert report.first_bad is not None
    assert (report.first_bad.seq, report.first_bad.line) == (5, 6)
    assert "entry 5" in report.summary()


def _check_no_output_holds_raw_identifiers(out):
    secrets = set()
    for e in _input()["entry"]:
        r = e["resource"]
        if r["resourceType"] == "Patient":
            secrets |= {r["id"], r["birthDate"]}
            secrets |= {i["value"] for i in r.get("identifier", [])}
            for name in r.get("name", []):
                secrets |= {name["family"], *name.get("given", [])}
                secrets.add(" ".join([*name.get("given", []), name["family"]]))
    assert len(secrets) >= 10
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {"recommendation.json", "audit.jsonl", "audit.jsonl.heads"} <= {p.name for p in files}
    for path in files:
        data = path.read_bytes()
        for s in secrets:
            assert s.encode("utf-8") not in data, f"{path.name} holds {s!r} of the input"


def _check_denied_treatment_gives_no_twin_and_a_logged_refusal(folder):
    folder.mkdir()
    bundle = copy.deepcopy(_input())
    first, second = _patient_ids(bundle)
    for e in bundle["entry"]:
        r = e["resource"]
        if r["resourceType"] == "Consent" and r["patient"]["reference"] == f"Patient/{first}":
            r["provision"]["type"] = "deny"  # the first patient now refuses treatment
    path = folder / "bundle.json"
    path.write_text(json.dumps(bundle), encoding="utf-8")
    out = folder / "out"
    result = _example().main(["--draws", DRAWS, "--out", str(out), "--bundle", str(path)])
    assert [r.patient for r in result["refused"]] == [first]
    assert list(result["recommendations"]) == [second]
    assert result["verify"].ok
    entries = _actions(out / "audit.jsonl")
    assert [e["action"] for e in entries] == ["data-access"] * 2 + ["consent-refusal"] + [
        "twin-update",
        "recommendation",
        "forecast",
        "export",
    ]
    key = read_pseudonym_key_file(out / "keys" / "pseudonym.key")
    assert entries[2]["subject"] == key.pseudonymizer("audit").pseudonym(first)
    assert entries[2]["details"]["purpose"] == "treatment"
    _check_no_output_holds_raw_identifiers(out)  # the refusal names the consent by pseudonym
    text = (out / "recommendation.json").read_text("utf-8")
    assert key.pseudonymizer("results").pseudonym(first) not in text


def _check_keys_given_are_used_and_none_are_made(folder):
    folder.mkdir()
    keys = folder / "secrets"
    keys.mkdir(mode=0o700)
    master = write_pseudonym_key(keys / "pseudonym.key")
    write_signing_key(keys / "audit.key")
    out = folder / "out"
    flags = ["--key-file", str(keys / "pseudonym.key"), "--signing-key", str(keys / "audit.key")]
    result = _example().main(["--draws", DRAWS, "--out", str(out), *flags])
    assert sorted(p.name for p in out.iterdir()) == [
        "audit.jsonl",
        "audit.jsonl.heads",
        "recommendation.json",
    ]
    assert verify(out / "audit.jsonl", keys / "audit.key.pub").ok and result["verify"].ok
    first = _patient_ids(_input())[0]
    text = (out / "recommendation.json").read_text("utf-8")
    assert f"Patient/{master.pseudonymizer('results').pseudonym(first)}" in text


def test_fhir_twin_example_end_to_end(tmp_path):
    """One test, so that the example's later runs reuse the first run's compiled functions
    (also when make test spreads tests over workers)."""
    out = tmp_path / "out"
    result = _example().main(["--draws", DRAWS, "--out", str(out)])
    _check_written_bundle_is_valid_r4b(out, result)
    _check_read_back_gives_the_recommendations(out, result)
    _check_recommended_auc24_in_window(result)
    _check_audit_log_verifies_with_the_actions_in_order(out, result)
    _check_one_byte_edit_of_the_log_is_detected_naming_the_entry(out, tmp_path / "tampered")
    _check_no_output_holds_raw_identifiers(out)
    _check_denied_treatment_gives_no_twin_and_a_logged_refusal(tmp_path / "denied")
    _check_keys_given_are_used_and_none_are_made(tmp_path / "keys")


def test_a_non_empty_out_is_refused(tmp_path, capsys):
    (tmp_path / "something.txt").write_text("keep me")
    with pytest.raises(SystemExit) as exit_info:
        _example().main(["--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "is not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["something.txt"]


def test_shipped_bundle_is_what_its_generator_writes():
    spec = importlib.util.spec_from_file_location(
        "make_fhir_vancomycin", EXAMPLES / "data" / "make_fhir_vancomycin.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.bundle() == _input()
    Bundle.model_validate(_input())
