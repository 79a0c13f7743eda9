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

from ..governance import PseudonymKeyError, load_pseudonymizer
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
) -> None:
    """Read a FHIR R4 bundle; write records.csv, patients.csv/json and report.json.

    Patient ids are pseudonyms (HMAC-SHA256 with the pseudonym key; no key, no import);
    patients carry ages, not birth dates, and no names.
    """
    try:
        pseudonymizer = load_pseudonymizer(purpose, key_file)
    except (PseudonymKeyError, ValueError) as error:
        raise _fail(str(error)) from None
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
