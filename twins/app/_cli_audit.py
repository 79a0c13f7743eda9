"""The `twins governance` and `twins audit` commands: keys, pseudonyms, audit log checks.

Exit codes of `twins audit verify`: 0 the log verifies; 1 evidence of tampering or damage
(or the wrong public key); 3 only what a crash leaves (a torn last line, entries not yet
signed: nothing signed is lost); 2 a usage error or a file that cannot be read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ..governance import (
    ConsistencyProof,
    InclusionProof,
    PseudonymKeyError,
    SignedTreeHead,
    SigningKeyError,
    key_id,
    load_pseudonymizer,
    load_public_key,
    prove_consistency,
    prove_inclusion,
    read_heads,
    verify,
    verify_consistency_proof,
    verify_inclusion_proof,
    write_pseudonym_key,
    write_signing_key,
)

governance_app = typer.Typer(
    help="Pseudonym keys and pseudonyms (HMAC-SHA256 with HKDF subkeys per purpose).",
    no_args_is_help=True,
)
audit_app = typer.Typer(
    help="The tamper-evident audit log: signing keys, verification, proofs for auditors.",
    no_args_is_help=True,
)

EXIT_TAMPERED = 1
EXIT_USAGE = 2
EXIT_CRASH = 3


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    Console(stderr=True, soft_wrap=True).print(f"[red]Error:[/red] {escape(message)}")
    return typer.Exit(code=code)


def _print_json(value: object) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True))


def _read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise _fail(f"Cannot read the {what} {path}: {error}") from None
    if not isinstance(value, dict):
        raise _fail(f"The {what} {path} is not a JSON object.")
    return value


def _read_head(path: Path) -> SignedTreeHead:
    value = _read_json(path, "head file")
    try:
        return SignedTreeHead.from_json(value.get("head", value))
    except ValueError as error:
        raise _fail(f"The head file {path} is not a signed tree head: {error}") from None


def _public_key(path: Path):
    try:
        return load_public_key(path)
    except SigningKeyError as error:
        raise _fail(str(error)) from None


@governance_app.command("keygen")
def governance_keygen(
    path: Path = typer.Argument(..., help="The key file to create (mode 0600)."),
) -> None:
    """Create a new pseudonym master key file (32 random bytes, hex, mode 0600).

    Keep it apart from the data and back it up: every pseudonym depends on it. Use it
    with --key-file, or set PKPD_TWINS_PSEUDONYM_KEY_FILE to its path.
    """
    try:
        key = write_pseudonym_key(path)
    except (FileExistsError, OSError) as error:
        raise _fail(str(error)) from None
    typer.echo(f"Pseudonym key written to {path} (mode 0600); key id {key.key_id}.")


@governance_app.command("pseudonym")
def governance_pseudonym(
    identifiers: Annotated[list[str], typer.Argument(help="Identifiers to pseudonymise.")],
    purpose: str = typer.Option(..., help="The purpose: results, audit, training, federated."),
    key_file: Path | None = typer.Option(
        None, help="Pseudonym key file (default: from the environment)."
    ),
) -> None:
    """Print the pseudonym of each identifier for a purpose.

    One line each: the identifier, a tab, its pseudonym. For authorised staff who must
    find a patient in an export or in the audit log.
    """
    try:
        pseudonymizer = load_pseudonymizer(purpose, key_file)
        for identifier in identifiers:
            typer.echo(f"{identifier}\t{pseudonymizer.pseudonym(identifier)}")
    except (PseudonymKeyError, ValueError, TypeError) as error:
        raise _fail(str(error)) from None


@audit_app.command("keygen")
def audit_keygen(
    path: Path = typer.Argument(..., help="The private key file to create (PEM, mode 0600)."),
    public: Path | None = typer.Option(
        None, help="The public key file to create (default: PATH.pub)."
    ),
) -> None:
    """Create a new Ed25519 signing key for an audit log (RFC 8032).

    The private key stays with the service that writes the log; give the public key to
    auditors by another channel than the log's folder.
    """
    try:
        key = write_signing_key(path, public)
    except (FileExistsError, OSError) as error:
        raise _fail(str(error)) from None
    typer.echo(
        f"Signing key written to {path} (mode 0600), public key to {public or f'{path}.pub'}; "
        f"key id {key_id(key.public_key())}."
    )


@audit_app.command("verify")
def audit_verify(
    log: Path = typer.Argument(..., help="The audit log (its heads file is LOG.heads)."),
    public_key: Path = typer.Option(..., help="The log's Ed25519 public key (PEM)."),
    known_head: Path | None = typer.Option(
        None, help="A signed head kept apart from the log (JSON, from `twins audit head`)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Verify an audit log: hash chain, signed tree heads, Merkle roots, torn lines.

    Exit code 0: verified. 1: tampered or damaged (the first bad entry is named), or the
    wrong public key. 3: only what a crash leaves (a torn last line, unsigned entries).
    """
    key = _public_key(public_key)
    head = _read_head(known_head) if known_head is not None else None
    try:
        report = verify(log, key, known_head=head)
    except OSError as error:
        raise _fail(f"Cannot read the audit log {log}: {error}") from None
    if public_key.resolve().parent == log.resolve().parent:
        Console(stderr=True, soft_wrap=True).print(
            "[yellow]Note:[/yellow] the public key is in the log's folder; whoever can edit "
            "the log may have replaced it. Verify with a copy kept elsewhere.",
            highlight=False,
        )
    if as_json:
        _print_json(report.to_json())
    else:
        typer.echo(report.summary())
    if report.tampered:
        raise typer.Exit(code=EXIT_TAMPERED)
    if not report.ok:
        raise typer.Exit(code=EXIT_CRASH)


@audit_app.command("head")
def audit_head(
    log: Path = typer.Argument(..., help="The audit log."),
) -> None:
    """Print the latest signed tree head (JSON), to publish or keep elsewhere.

    Check the log against it later with `twins audit verify --known-head`.
    """
    try:
        heads = read_heads(log)
    except (OSError, ValueError) as error:
        raise _fail(f"Cannot read the heads of {log}: {error}") from None
    if not heads:
        raise _fail(f"The log {log} has no signed tree head yet.")
    _print_json(heads[-1].to_json())


@audit_app.command("prove")
def audit_prove(
    log: Path = typer.Argument(..., help="The audit log."),
    seq: int = typer.Option(..., min=0, help="The entry to prove."),
    tree_size: int | None = typer.Option(
        None, min=1, help="The tree to prove it in (default: the latest head's)."
    ),
) -> None:
    """Print an inclusion proof (RFC 9162 §2.1.3) of one entry, as JSON."""
    try:
        proof = prove_inclusion(log, seq, tree_size=tree_size)
    except (OSError, ValueError) as error:
        raise _fail(str(error)) from None
    _print_json({"inclusion": proof.to_json()})


@audit_app.command("consistency")
def audit_consistency(
    log: Path = typer.Argument(..., help="The audit log."),
    old_size: int = typer.Option(..., min=0, help="The earlier tree size (a head you kept)."),
    new_size: int | None = typer.Option(
        None, min=1, help="The later tree size (default: the latest head's)."
    ),
) -> None:
    """Print a consistency proof (RFC 9162 §2.1.4) between two tree sizes, as JSON."""
    try:
        proof = prove_consistency(log, old_size, new_size)
    except (OSError, ValueError) as error:
        raise _fail(str(error)) from None
    _print_json({"consistency": proof.to_json()})


@audit_app.command("check-proof")
def audit_check_proof(
    proof_file: Path = typer.Argument(
        ..., help="A proof from `twins audit prove` or `consistency`."
    ),
    public_key: Path = typer.Option(..., help="The log's Ed25519 public key (PEM)."),
    head: Path = typer.Option(..., help="The signed head you trust (the newer one)."),
    old_head: Path | None = typer.Option(
        None, help="For a consistency proof: the older signed head you trust."
    ),
) -> None:
    """Check a proof against signed heads you hold (exit code 0: it holds; 1: it does not)."""
    key = _public_key(public_key)
    value = _read_json(proof_file, "proof file")
    trusted = _read_head(head)
    try:
        if "inclusion" in value:
            ok = verify_inclusion_proof(InclusionProof.from_json(value["inclusion"]), trusted, key)
            what = "inclusion"
        elif "consistency" in value:
            if old_head is None:
                raise _fail("A consistency proof needs --old-head too.")
            proof = ConsistencyProof.from_json(value["consistency"])
            ok = verify_consistency_proof(proof, _read_head(old_head), trusted, key)
            what = "consistency"
        else:
            raise _fail(f"{proof_file} holds neither an inclusion nor a consistency proof.")
    except (KeyError, ValueError, TypeError) as error:
        raise _fail(f"The proof file {proof_file} is malformed: {error}") from None
    typer.echo(f"The {what} proof {'holds' if ok else 'does NOT hold'}.")
    if not ok:
        raise typer.Exit(code=EXIT_TAMPERED)


def register(app: typer.Typer) -> None:
    """Add `twins governance ...` and `twins audit ...` to the `twins` command line."""
    app.add_typer(governance_app, name="governance")
    app.add_typer(audit_app, name="audit")
