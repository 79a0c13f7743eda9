"""From a FHIR R4 bundle to a calibrated twin, a dose recommendation written back as FHIR,
and an audit log that verifies.

The steps, each printed:

1. `twins.io.read_fhir` reads the bundle (strictly: a malformed resource stops the run) at a
   stated reference time: patients (age, sex, weight, height, serum creatinine), the
   vancomycin infusions given (exact periods) and the levels drawn, and the Consents.
2. A `ConsentRegistry` of those Consents is asked, per patient, whether the data may be used
   for treatment at the reference time; a refusal is logged and that patient gets no twin.
   (The research decision is shown too: the second patient of the built-in bundle denies
   research, and treatment still works.)
3. For each permitted patient a `twins.DigitalTwin` of Goti et al.'s 2018 vancomycin model
   is given the doses and updated with the levels (the posterior), and recommends the dose
   with the highest posterior probability of an AUC24 of 400-600 mg*h/L (Rybak et al. 2020)
   for q8h, q12h or q24h dosing, the first dose at the reference time (not in the past).
4. The recommendations (MedicationRequest, `intent = proposal`) and the forecasts on the
   recommended plans (Observations with `derivedFrom` the levels used) are written as one
   FHIR Bundle, `OUT/recommendation.json`, patients named by pseudonyms (purpose
   `results`).
5. Every data access, twin update, recommendation, forecast and the export is in the audit
   log `OUT/audit.jsonl` (hash-chained entries, a signed Merkle tree head after each append
   in `OUT/audit.jsonl.heads`; patients by pseudonyms of purpose `audit`), and
   `twins.governance.verify` checks it.

Keys: without `--key-file` and `--signing-key` the example makes throwaway DEMO keys in
`OUT/keys/` (a pseudonym master key, mode 0600, and an Ed25519 signing key with its public
key). That is for the demonstration only: a hospital keeps its keys apart from the data (a
secret store, another volume; see docs/governance.md) and passes them with `--key-file` and
`--signing-key`.

Run: `python examples/fhir_twin.py` (the built-in synthetic bundle
`examples/data/fhir_vancomycin.json`; `--bundle PATH` for your own, `--draws 200` for a
quicker run, `--out DIR` a new or empty folder, default `fhir_twin_out`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

import twins
import twins.io
from twins.governance import (
    AuditAction,
    AuditEvent,
    AuditLog,
    Purpose,
    load_pseudonym_key,
    load_signing_key,
    verify,
    write_pseudonym_key,
    write_signing_key,
)

BUNDLE = Path(__file__).resolve().parent / "data" / "fhir_vancomycin.json"
REFERENCE_TIME = "2026-03-10T08:00:00+01:00"  # 48 h after the first patient's first dose
ACTOR = "examples/fhir_twin.py"
INTERVALS = (8.0, 12.0, 24.0)
FORECAST_HOURS = np.arange(0.0, 48.0 + 1e-9, 6.0)  # after the plan's first dose


def _aware(text: str) -> dt.datetime:
    try:
        at = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 date and time with a zone, got {text!r}."
        ) from None
    if at.tzinfo is None or at.utcoffset() is None:
        raise argparse.ArgumentTypeError(
            f"expected a time with a zone (such as {REFERENCE_TIME}), got {text!r} without one."
        )
    return at


def _keys(args: argparse.Namespace, out: Path):
    """The pseudonym master key and the audit signing key: given, or new demo keys in
    `out/keys/`."""
    demo = []
    folder = out / "keys"
    if args.key_file is None or args.signing_key is None:
        folder.mkdir(mode=0o700)
    if args.key_file is not None:
        master = load_pseudonym_key(args.key_file)
    else:
        master = write_pseudonym_key(folder / "pseudonym.key")
        demo.append(folder / "pseudonym.key")
    if args.signing_key is not None:
        signing = load_signing_key(args.signing_key)
        public = None
    else:
        signing = write_signing_key(folder / "audit-signing.key")
        public = folder / "audit-signing.key.pub"
        demo += [folder / "audit-signing.key", public]
    return master, signing, public, demo


def _digest(path: Path) -> str:
    """SHA-256 of the bundle file (or of a bulk-data folder's NDJSON files, in name order)."""
    h = hashlib.sha256()
    for f in sorted(path.glob("*.ndjson")) if path.is_dir() else [path]:
        h.update(f.read_bytes())
    return h.hexdigest()


def _target(t: twins.drugs.Target) -> str:
    return f"{t.metric} {t.low:g}-{t.high:g} {t.unit}"


def _plan_start(data: twins.io.FhirImport, pid: str) -> float:
    """Hours from the patient's origin to the plan's first dose: the reference time, or
    the end of an infusion still running then."""
    start = (data.reference_time - data.origins[pid]) / dt.timedelta(hours=1)
    doses = data.patient_records(pid).query("EVID == 1")
    ends = doses["TIME"] + np.where(doses["RATE"] > 0, doses["AMT"] / doses["RATE"], 0.0)
    return max(start, float(ends.max()))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=BUNDLE, help="a FHIR R4 Bundle (JSON)")
    parser.add_argument(
        "--reference-time",
        type=_aware,
        default=_aware(REFERENCE_TIME),
        help=f"what is known at this time is read; the plan starts then (default {REFERENCE_TIME})",
    )
    parser.add_argument("--out", type=Path, default=Path("fhir_twin_out"),
                        help="a new or empty folder for the outputs")  # fmt: skip
    parser.add_argument("--draws", type=int, default=1000, help="posterior draws")
    parser.add_argument("--key-file", type=Path, help="pseudonym master key file (mode 0600)")
    parser.add_argument("--signing-key", type=Path, help="the audit log's Ed25519 key (PEM)")
    args = parser.parse_args(argv)
    ref: dt.datetime = args.reference_time

    try:
        out = twins.io.claim_empty_folder(args.out)
    except twins.io.OutputFolderError as error:
        parser.error(str(error))
    master, signing, public, demo = _keys(args, out)
    results = master.pseudonymizer("results")  # pseudonyms of the written bundle
    who = master.pseudonymizer("audit")  # pseudonyms of the audit log
    if demo:
        print("DEMO KEYS (throwaway, for this example only; a hospital keeps its keys apart")
        print("from the data and passes --key-file and --signing-key, see docs/governance.md):")
        for path in demo:
            print(f"  {path}")
    log = AuditLog(out / "audit.jsonl", signing)

    # 1. Read the bundle.
    try:
        data = twins.io.read_fhir(args.bundle, reference_time=ref, substance="vancomycin")
    except twins.io.FhirError as error:
        parser.error(f"{args.bundle} cannot be read (nothing was done with it): {error}")
    ids = sorted(data.patients)
    log.append_many(
        AuditEvent(
            AuditAction.DATA_ACCESS,
            ACTOR,
            who.pseudonym(pid),
            {
                "operation": "read_fhir",
                "bundle_sha256": _digest(args.bundle),
                "reference_time": ref.isoformat(),
                "substance": data.substance,
                "records": len(data.patient_records(pid)),
            },
        )
        for pid in ids
    )
    print(f"\n1. read {sum(data.report.read.values())} resources at {ref.isoformat()}:",
          ", ".join(f"{n} {t}" for t, n in sorted(data.report.read.items())),
          f"({len(data.report.issues)} not read)")  # fmt: skip
    for issue in data.report.issues:
        print(f"   not read: {issue}")
    for i, pid in enumerate(ids, start=1):
        p = data.patients[pid]
        print(f"   patient {i} = {results.pseudonym(pid)}: {p.sex}, {int(p.age)} y, "
              f"{p.weight:.1f} kg, {p.height:.1f} cm, serum creatinine "
              f"{p.labs['serum_creatinine']:.2f} mg/dL (CrCL {p.crcl():.0f} mL/min); "
              f"{int((data.patient_records(pid)['EVID'] == 1).sum())} doses, "
              f"{len(data.observations(pid))} levels")  # fmt: skip

    # 2. Consent: treatment, per patient (refusals logged).
    registry = data.consent_registry()
    allowed, refused = registry.split(
        ids, Purpose.TREATMENT, ref, audit=log, pseudonymizer=who, actor=ACTOR
    )
    print("\n2. consent at the reference time:")
    for i, pid in enumerate(ids, start=1):
        line = []
        for purpose in (Purpose.TREATMENT, Purpose.RESEARCH):
            ok, reason = registry.decide(pid, purpose, ref)
            why = "by a consent in force"
            if reason.startswith("no consent"):
                why = f"no consent in force, default {'permit' if ok else 'deny'}"
            line.append(f"{purpose.value} {'permitted' if ok else 'DENIED'} ({why})")
        print(f"   patient {i}: " + "; ".join(line))
    for r in refused:
        print(f"   no twin for patient {ids.index(r.patient) + 1}: treatment refused (logged)")

    # 3. A twin per permitted patient: calibrate, recommend, forecast.
    drug = twins.drugs.get("vancomycin_goti2018")
    posteriors: dict[str, twins.Posterior] = {}
    recommendations: dict[str, twins.Recommendation] = {}
    forecasts: dict[str, twins.Forecast] = {}
    digital_twins: dict[str, twins.DigitalTwin] = {}
    resources: list[Any] = []
    print(f"\n3. twins of {drug.name}, target {_target(drug.targets[0])}:")
    for pid in allowed:
        i, subject = ids.index(pid) + 1, who.pseudonym(pid)
        levels = data.observations(pid)
        if not (data.patient_records(pid)["EVID"] == 1).any():
            print(f"   patient {i}: no {data.substance} doses in the bundle, no twin")
            continue
        # The doses padded to a power of two (at least 8 events): recommend and forecast
        # then compile once for every patient with up to that many doses.
        given = data.regimen(pid)
        given = given.pad(max(8, 1 << (given.n_events - 1).bit_length()))
        twin = twins.DigitalTwin(drug, data.patients[pid]).give(given)
        if len(levels):  # without levels the twin stays at the prior (a priori dosing)
            twin.update(levels)
            log.append(
                AuditAction.TWIN_UPDATE,
                actor=ACTOR,
                subject=subject,
                details={
                    "drug": drug.name,
                    "levels": len(levels),
                    "method": twin.posterior.method,
                    "converged": twin.posterior.converged,
                    "params": {k: round(float(v), 6) for k, v in twin.posterior.params.items()},
                },
            )
        post = twin.posterior
        basis = f"MAP of {len(levels)} levels" if len(levels) else "the prior: no levels"
        start = _plan_start(data, pid)
        rec = twin.recommend(
            "AUC24",
            intervals=INTERVALS,
            start=start,
            key=jax.random.key(2 * i),
            n_draws=args.draws,
        )
        log.append(
            AuditAction.RECOMMENDATION,
            actor=ACTOR,
            subject=subject,
            details={
                "drug": drug.name,
                "dose_mg": round(rec.dose, 6),
                "interval_h": rec.interval,
                "n_doses": rec.n_doses,
                "first_dose_h": round(start, 6),
                "target": _target(rec.target),
                "probability": rec.probability,
                "auc24_median": round(rec.metric_median, 6),
            },
        )
        fc = twin.forecast(
            start + FORECAST_HOURS, rec.regimen, key=jax.random.key(2 * i + 1), n_draws=args.draws
        )
        log.append(
            AuditAction.FORECAST,
            actor=ACTOR,
            subject=subject,
            details={
                "drug": drug.name,
                "times_h": [round(float(t), 6) for t in fc.times],
                "median_mg_per_L": [round(float(v), 6) for v in fc.median],
                "band_level": fc.level,
            },
        )
        origin = data.origins[pid]
        resources.append(
            twins.io.recommendation_request(
                rec, patient=pid, origin=origin, pseudonymizer=results, authored=ref
            )
        )
        resources += twins.io.forecast_observations(
            fc,
            patient=pid,
            origin=origin,
            derived_from=list(levels["SOURCE"]),
            pseudonymizer=results,
        )
        print(f"   patient {i}: CL {post.params['CL']:.2f} L/h, V1 {post.params['V1']:.1f} L "
              f"({basis}, converged {post.converged})")  # fmt: skip
        print(f"     recommend {rec}")
        print(f"     from {(origin + dt.timedelta(hours=start)).isoformat()}, {rec.n_doses} doses; "
              f"forecast median {fc.median.min():.1f}-{fc.median.max():.1f} mg/L "
              f"over the first {FORECAST_HOURS[-1]:g} h")  # fmt: skip
        posteriors[pid], recommendations[pid], forecasts[pid] = post, rec, fc
        digital_twins[pid] = twin

    # 4. The recommendations and forecasts as FHIR.
    bundle_path = out / "recommendation.json"
    text = twins.io.fhir_bundle(resources).model_dump_json(indent=2) + "\n"
    bundle_path.write_text(text, encoding="utf-8")
    log.append(
        AuditAction.EXPORT,
        actor=ACTOR,
        details={
            "file": bundle_path.name,
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "resources": len(resources),
            "patients": [who.pseudonym(pid) for pid in allowed],
            "pseudonym_purpose": results.purpose,
            "pseudonym_key_id": results.key_id,
        },
    )
    print(f"\n4. wrote {bundle_path}: {len(recommendations)} MedicationRequest(s) "
          f"(intent=proposal), {len(resources) - len(recommendations)} forecast "
          "Observation(s) (derivedFrom: the levels used); subjects as pseudonyms")  # fmt: skip

    # 5. The audit log, verified from the files and the public key alone.
    report = verify(log.path, public if public is not None else signing.public_key())
    actions = [json.loads(line)["action"] for line in log.path.read_text().splitlines()]
    print(f"\n5. audit log {log.path}: {len(actions)} entries ({', '.join(actions)})")
    print(f"   {report.summary().splitlines()[0]}")
    pub = public if public is not None else "<the signing key's public key>"
    print(f"   check it again: twins audit verify {log.path} --public-key {pub}")
    return {
        "import": data,
        "allowed": allowed,
        "refused": refused,
        "twins": digital_twins,
        "posteriors": posteriors,
        "recommendations": recommendations,
        "forecasts": forecasts,
        "bundle": bundle_path,
        "audit_log": log.path,
        "public_key": public if public is not None else signing.public_key(),
        "verify": report,
    }


if __name__ == "__main__":
    main()
