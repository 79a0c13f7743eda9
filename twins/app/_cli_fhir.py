"""The `twins fhir` commands: FHIR R4 in (`twins fhir import`).

Exit codes: 0 written; 2 a usage error, no pseudonym key, a malformed or unusable resource
(without --lenient), or an output folder that is not new or empty.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from ..governance import (
    AuditAction,
    AuditEvent,
    AuditLog,
    AuditLogError,
    PseudonymKeyError,
    SecretFileError,
    SigningKeyError,
    load_pseudonymizer,
    load_signing_key,
    log_consents,
)
from ..io import SUBSTANCES, FhirError, OutputFolderError, read_fhir, write_import

fhir_app = typer.Typer(help="FHIR R4 in and out (twins.io).", no_args_is_help=True)


def _fail(message: str) -> typer.Exit:
    Console(stderr=True, soft_wrap=True).print(f"[red]Error:[/red] {escape(message)}")
    return typer.Exit(code=2)


def _reference_time(text: str | None) -> dt.datetime:
    if text is None:
        return dt.datetime.now(dt.UTC)
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise _fail(
            f"--reference-time: expected an ISO 8601 date and time, got {text!r}."
        ) from None
    if value.tzinfo is None:
        raise _fail(
            f"--reference-time: expected a time zone (for example {text}+00:00 or {text}Z), "
            f"got {text!r} without one."
        )
    return value


@fhir_app.command("import")
def fhir_import(
    bundle: Path = typer.Argument(
        ..., exists=True, help="A FHIR R4 Bundle (JSON) or a bulk-data NDJSON folder."
    ),
    out: Path = typer.Option(..., help="Output folder (new or empty)."),
    reference_time: str | None = typer.Option(
        None, help="ISO 8601 with a zone: ages and labs in force at it (default: now, UTC)."
    ),
    substance: str = typer.Option("vancomycin", help=f"One of {', '.join(SUBSTANCES)}."),
    key_file: Path | None = typer.Option(
        None, help="Pseudonym key file (default: PKPD_TWINS_PSEUDONYM_KEY(_FILE))."
    ),
    purpose: str = typer.Option("results", help="The pseudonyms' purpose."),
    lenient: bool = typer.Option(
        False, help="List malformed resources in the report instead of stopping."
    ),
    audit: Path | None = typer.Option(
        None, help="Audit log to record the import in (needs --signing-key)."
    ),
    signing_key: Path | None = typer.Option(
        None, help="The audit log's Ed25519 signing key (PEM, owner-only)."
    ),
) -> None:
    """Read a FHIR R4 bundle; write records.csv, patients.csv/json and report.json.

    Patient ids are pseudonyms (HMAC-SHA256 with the pseudonym key; no key, no import);
    patients carry ages, not birth dates, and no names. With --audit, the import is recorded
    in the audit log: a data-access entry per patient read, a consent-change entry per
    consent, and an export entry for the folder (subjects as pseudonyms of purpose "audit").
    """
    try:
        pseudonymizer = load_pseudonymizer(purpose, key_file)
        audit_names = load_pseudonymizer("audit", key_file) if audit is not None else None
    except (PseudonymKeyError, ValueError) as error:
        raise _fail(str(error)) from None
    log = None
    if audit is not None:
        if signing_key is None:
            raise _fail("--audit needs --signing-key (the log's Ed25519 key).")
        try:
            log = AuditLog(audit, load_signing_key(signing_key))
        except (SigningKeyError, SecretFileError, AuditLogError, OSError) as error:
            raise _fail(f"--audit {audit}: {error}") from None
    elif signing_key is not None:
        raise _fail("--signing-key is for --audit LOG; give both or neither.")
    if substance not in SUBSTANCES:
        raise _fail(f"--substance: expected one of {list(SUBSTANCES)}, got {substance!r}.")
    at = _reference_time(reference_time)
    try:
        result = read_fhir(bundle, reference_time=at, substance=substance, lenient=lenient)
    except FhirError as error:
        raise _fail(f"{error} (run with --lenient to list such resources and go on)") from None
    try:
        paths = write_import(result, out, pseudonymizer=pseudonymizer)
    except OutputFolderError as error:
        raise _fail(str(error)) from None
    if log is not None:
        assert audit_names is not None
        details = {"use": "fhir import", "substance": substance}
        log.append_many(
            AuditEvent(
                AuditAction.DATA_ACCESS, "twins fhir import", audit_names.pseudonym(p), details
            )
            for p in sorted(result.patients)
        )
        log_consents(result.consents, log, pseudonymizer=audit_names, actor="twins fhir import")
        log.append(
            AuditAction.EXPORT,
            actor="twins fhir import",
            details={
                "use": "fhir import",
                "folder": str(out),
                "patient_count": len(result.patients),
            },
        )
    issues = result.report.to_dict()["not_read"]
    typer.echo(
        f"{len(result.patients)} patient(s), {len(result.records)} record(s) written to {out} "
        f"({', '.join(sorted(p.name for p in paths.values()))}); not read: "
        + ", ".join(f"{n} {k}" for k, n in issues.items())
        + f". Pseudonyms: purpose {pseudonymizer.purpose}, key id {pseudonymizer.key_id}."
    )


def register(app: typer.Typer) -> None:
    """Add `twins fhir ...` to the `twins` command line."""
    app.add_typer(fhir_app, name="fhir")
