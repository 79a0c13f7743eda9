"""Dosing advice a clinician can give, in the live service: per-drug dose constraints and a
loading dose (`twins.io.DosingAdvice`, `read_dosing`, `twins serve --dosing`).

The reference of every published recommendation is the one-twin call
`DigitalTwin.recommend(constraints=..., loading=...)` on the service's own twin, with the
key the service used (`output_keys`); the published MedicationRequest must carry that
rounded dose, its infusion duration and, when asked, the loading dose as a first Dosage of
`sequence` 1, and be valid FHIR R4B (fhir.resources).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest
from test_stream_service import T0, make_service, patient_messages, send

import twins
from twins.governance import read_entries, write_pseudonym_key, write_signing_key
from twins.io import DosingAdvice, DosingConfigError, read_dosing, read_fhir

VANCO = twins.drugs.get("vancomycin_goti2018")
LIBRARY = VANCO.dosing.constraints


def _feed(svc, pid="p-1", **options):
    msgs = patient_messages(pid, **options)
    for _, r in msgs:
        assert send(svc, r).outcome == "stored"
    out = svc.process()
    assert [t for t, _ in out] == [svc.topics.recommendation, svc.topics.forecast], out
    return out[0][1], out[1][1], len(msgs)


def _reference(svc, pid, asof, **ask):
    """The one-twin recommendation of the service's twin, with the service's key and start."""
    from twins.io._service_twin import output_keys

    twin = svc.twin(pid, "vancomycin")
    given = np.asarray(twin.history.time)[np.asarray(twin.history.mask)]
    start = max(36.0, float(given.max()) + 12.0)  # the last message (a dose) is at 36 h
    k_rec, _ = output_keys(svc.seed, asof)
    return twin.recommend(key=k_rec, start=start, n_draws=svc.n_draws, **ask), start


def _hours(text: str) -> float:
    return (dt.datetime.fromisoformat(text) - T0).total_seconds() / 3600.0


def test_constraints_reach_the_published_request(tmp_path):
    """Library constraints, with a lower maximum dose and a slower infusion: the published
    dose is the one-twin constrained dose (a sum of strengths, a multiple of 250 mg), infused
    over max(1 h, dose / max_rate); the audit entry says what it was rounded from."""
    limits = dataclasses.replace(LIBRARY, max_rate=500.0, intervals=(12.0,))
    svc = make_service(tmp_path, dosing={"vancomycin": DosingAdvice(limits)})
    envelope, _, n = _feed(svc, levels=((11.5, 9.0), (23.5, 11.0), (35.5, 12.0)))
    req = envelope["resource"]
    from fhir.resources.R4B.medicationrequest import MedicationRequest

    MedicationRequest.model_validate(req)
    (dosage,) = req["dosageInstruction"]
    dose = dosage["doseAndRate"][0]["doseQuantity"]["value"]
    ref, start = _reference(svc, "p-1", n, constraints=limits)
    assert ref.continuous_dose is not None and ref.dose != ref.continuous_dose
    assert dose == pytest.approx(ref.dose, rel=1e-12)
    assert dose in set(LIBRARY.admissible(highest=5000.0)) and dose % 250.0 == 0
    repeat = dosage["timing"]["repeat"]
    assert repeat["period"] == 12.0 and repeat["count"] == ref.n_doses
    assert repeat["duration"] == pytest.approx(max(1.0, dose / 500.0), rel=1e-12)
    assert _hours(repeat["boundsPeriod"]["start"]) == pytest.approx(start, abs=1e-6)
    ext = {e["url"].rsplit("/", 1)[1]: e for e in req["extension"]}
    assert ext["continuous-dose"]["valueDecimal"] == pytest.approx(ref.continuous_dose, rel=1e-9)
    assert ext["probability"]["valueDecimal"] == pytest.approx(ref.probability, abs=1e-12)
    (entry,) = [
        e
        for e in read_entries(tmp_path / "svc" / "audit.jsonl")
        if e.action.value == "recommendation"
    ]
    assert entry.details["dose_mg"] == pytest.approx(dose)
    assert entry.details["continuous_dose"] == pytest.approx(ref.continuous_dose, rel=1e-6)
    assert entry.details["infusion_h"] == pytest.approx(repeat["duration"])
    svc.close()


def test_loading_dose_published_as_two_sequenced_dosages(tmp_path):
    """A loading dose of 25 mg/kg after the first dose (`loading_max_given = 1`): the
    MedicationRequest has Dosage 1 (the loading dose, once, at the plan's start) and Dosage 2
    (the maintenance doses from one interval later), valid R4B; with more doses given, none."""
    advice = DosingAdvice(LIBRARY, loading=25.0, loading_max_given=1)
    svc = make_service(tmp_path, dosing={"vancomycin": advice}, intervals=[12.0])
    envelope, _, n = _feed(svc, n_doses=1, levels=((1.5, 18.0), (11.5, 6.0)))
    req = envelope["resource"]
    from fhir.resources.R4B.medicationrequest import MedicationRequest

    MedicationRequest.model_validate(req)
    first, second = req["dosageInstruction"]
    assert (first["sequence"], second["sequence"]) == (1, 2)
    loading = first["doseAndRate"][0]["doseQuantity"]["value"]
    weight = 70.0 + len("p-1")  # patient_messages' weight
    # the admissible amount nearest 25 mg/kg (multiples of 250 mg, at most 3000 mg)
    assert (
        loading
        == 1750.0
        == min(LIBRARY.admissible(highest=5000.0), key=lambda a: abs(a - 25.0 * weight))
    )
    assert first["timing"]["repeat"]["count"] == 1
    assert first["timing"]["repeat"]["duration"] == pytest.approx(1.75)  # 1750 mg at 1 g/h
    t_load = _hours(first["timing"]["repeat"]["boundsPeriod"]["start"])
    t_main = _hours(second["timing"]["repeat"]["boundsPeriod"]["start"])
    assert t_main - t_load == pytest.approx(12.0, abs=1e-6)
    # the reference: the one-twin call with the same loading dose
    from twins.io._service_twin import output_keys

    twin = svc.twin("p-1", "vancomycin")
    k_rec, _ = output_keys(svc.seed, n)
    ref = twin.recommend(
        key=k_rec, start=t_load, n_draws=svc.n_draws, constraints=LIBRARY, loading=25.0,
        intervals=[12.0],
    )  # fmt: skip
    assert ref.loading_dose == loading
    assert second["doseAndRate"][0]["doseQuantity"]["value"] == pytest.approx(ref.dose, rel=1e-12)
    assert second["timing"]["repeat"]["count"] == ref.n_doses
    ext = {e["url"].rsplit("/", 1)[1]: e for e in req["extension"]}
    assert ext["loading-dose"]["valueDecimal"] == loading
    # read back (read_fhir's proposals): the loading dose, then the maintenance doses
    subject = req["subject"]["reference"].split("/")[1]
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "resource": {
                    "resourceType": "Patient",
                    "id": subject,
                    "gender": "female",
                    "birthDate": "1961-05-02",
                }
            },
            {"resource": req},
        ],
    }
    (back,) = read_fhir(bundle, reference_time=T0 + dt.timedelta(hours=12), lenient=True).proposals
    assert (back.loading_dose, back.loading_duration) == (loading, pytest.approx(1.75))
    assert _hours(back.loading_start.isoformat()) == pytest.approx(t_load, abs=1e-6)
    assert back.dose == pytest.approx(ref.dose, rel=1e-12) and back.n_doses == ref.n_doses
    assert _hours(back.start.isoformat()) == pytest.approx(t_main, abs=1e-6)
    # a second patient, given four doses already, gets no loading dose
    envelope2, _, _ = _feed(svc, "p-2", n_doses=4)
    assert len(envelope2["resource"]["dosageInstruction"]) == 1
    assert "sequence" not in envelope2["resource"]["dosageInstruction"][0]
    svc.close()


def test_read_dosing_from_toml(tmp_path):
    path = tmp_path / "dosing.toml"
    path.write_text(
        "[vancomycin]\nmax_dose = 2000\nmax_rate = 750\nintervals = [8, 12]\nloading = 25\n"
        "loading_max_given = 1\n"
    )
    (advice,) = read_dosing(path, {"vancomycin": VANCO}).values()
    c = advice.constraints
    assert c.strengths == LIBRARY.strengths and c.increment == LIBRARY.increment
    assert (c.max_dose, c.max_rate, c.intervals) == (2000.0, 750.0, (8.0, 12.0))
    assert (advice.loading, advice.loading_max_given) == (25.0, 1)
    assert advice.loading_for(1) == 25.0 and advice.loading_for(2) is None
    none = read_dosing({"vancomycin": {"base": "none", "strengths": [500]}}, {"vancomycin": VANCO})
    assert none["vancomycin"].constraints == twins.DoseConstraints(strengths=(500.0,))


@pytest.mark.parametrize(
    "table, field",
    [
        ({"max_rate": -5}, "vancomycin.max_rate"),
        ({"max_rate": "fast"}, "vancomycin.max_rate"),
        ({"strengths": []}, "vancomycin.strengths"),
        ({"strengths": [250, 0]}, "vancomycin.strengths"),
        ({"min_dose": 3000, "max_dose": 1000}, "vancomycin.min_dose"),
        ({"max_units": 0}, "vancomycin.max_units"),
        ({"intervals": [12, -1]}, "vancomycin.intervals"),
        ({"loading": 50}, "vancomycin.loading"),  # outside loading_per_kg [20, 35]
        ({"base": "none", "loading": 25}, "vancomycin.loading"),  # no constraints
        ({"loading_max_given": 1}, "vancomycin.loading_max_given"),
        ({"max_dos": 2000}, "vancomycin.max_dos"),  # a typo: unknown key, with a hint
        ({"base": "mine"}, "vancomycin.base"),
        ({"base": "none", "increment": 250}, "vancomycin.increment"),
    ],
)
def test_bad_dosing_config_is_refused_naming_the_field(table, field):
    with pytest.raises(DosingConfigError, match=field.replace(".", r"\.")) as info:
        read_dosing({"vancomycin": table}, {"vancomycin": VANCO})
    assert str(info.value).startswith("<dosing>: ")


def test_bad_dosing_refused_by_the_service_and_the_cli(tmp_path):
    with pytest.raises(DosingConfigError, match=r"\[warfarin\]"):
        read_dosing({"warfarin": {}}, {"vancomycin": VANCO})
    with pytest.raises(ValueError, match=r"dosing\['vancomycin'\].*intervals \[6\.0\]"):
        make_service(tmp_path, intervals=[6.0], dosing={"vancomycin": DosingAdvice(LIBRARY)})
    with pytest.raises(ValueError, match="loading=50 mg/kg is outside"):
        DosingAdvice(LIBRARY, loading=50.0)
    from typer.testing import CliRunner

    from twins.app._cli import app

    write_pseudonym_key(tmp_path / "pseudonym.key")
    write_signing_key(tmp_path / "audit.key")
    bad = tmp_path / "dosing.toml"
    bad.write_text("[vancomycin]\nmax_rate = 0\n")
    args = ["serve", "--broker", "127.0.0.1:1883", "--site", "ward-7"]
    args += ["--state", str(tmp_path / "s.db"), "--audit", str(tmp_path / "a.jsonl")]
    args += ["--signing-key", str(tmp_path / "audit.key")]
    args += ["--key-file", str(tmp_path / "pseudonym.key"), "--dosing", str(bad)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "--dosing" in result.output and "vancomycin.max_rate" in result.output
    assert not (tmp_path / "s.db").exists()
