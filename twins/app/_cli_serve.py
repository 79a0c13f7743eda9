"""`twins serve`: the live twin service on an MQTT broker (docs/live-twins.md).

Runs until SIGINT or SIGTERM. Exit codes: 0 stopped; 2 a usage error (broker address, drug,
a dosing file, keys, audit log that fails verification).
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape


def _fail(message: str) -> typer.Exit:
    Console(stderr=True, soft_wrap=True).print(f"[red]Error:[/red] {escape(message)}")
    return typer.Exit(code=2)


def serve(
    broker: str = typer.Option(..., help="The MQTT broker, HOST:PORT."),
    site: str = typer.Option(..., help="The site: topics twins/SITE/..."),
    state: Path = typer.Option(..., help="The service's SQLite database (created if missing)."),
    audit: Path = typer.Option(..., help="The audit log (created if missing)."),
    signing_key: Path = typer.Option(
        ..., help="The audit log's Ed25519 signing key (twins audit keygen)."
    ),
    key_file: Path | None = typer.Option(
        None, help="Pseudonym key file (default: PKPD_TWINS_PSEUDONYM_KEY(_FILE))."
    ),
    drug: list[str] = typer.Option(
        ["vancomycin=vancomycin_goti2018"],
        help="SUBSTANCE=DRUG: the twins.drugs model of a substance's twins (repeatable).",
    ),
    interval: list[float] = typer.Option(
        [], help="A dosing interval (h) the recommendation may choose (repeatable)."
    ),
    dosing: Path | None = typer.Option(
        None,
        help="A TOML file of dose constraints per substance (strengths, min/max dose, "
        "max_rate, intervals, loading dose): docs/live-twins.md, twins.io.read_dosing.",
    ),
    draws: int = typer.Option(200, min=10, help="Posterior draws per recommendation/forecast."),
    client_id: str | None = typer.Option(
        None, help="MQTT client id: names the persistent session (default twins-serve-SITE)."
    ),
    actor: str = typer.Option("twins-serve", help="The actor of the audit entries."),
    compilation_cache: Path | None = typer.Option(
        None,
        help="The JAX compilation cache folder, instead of the user cache folder or "
        "PKPD_TWINS_CACHE (pkpd.set_compilation_cache).",
    ),
    status_every: float = typer.Option(5.0, min=0.1, help="Seconds between status messages."),
    hold_unknown: float = typer.Option(
        60.0,
        min=0.0,
        help="Seconds a message about a patient whose Patient has not arrived is held "
        "before it becomes a dead letter (0: at once).",
    ),
    tls_ca: Path | None = typer.Option(
        None, help="Connect over TLS: the PEM CA certificate that signed the broker's."
    ),
    tls_cert: Path | None = typer.Option(None, help="The service's client certificate (PEM)."),
    tls_key: Path | None = typer.Option(None, help="The client certificate's key (PEM)."),
    username: str | None = typer.Option(None, help="The broker account's user name."),
    password_file: Path | None = typer.Option(
        None, help="A file holding the broker account's password (never on the command line)."
    ),
) -> None:
    """Serve live twins: FHIR messages in on twins/SITE/in/<ResourceType>; recommendations
    and forecasts out on twins/SITE/out/...; dead letters on twins/SITE/dead-letter."""
    import pkpd  # double precision and the default compilation cache

    if compilation_cache is not None:
        try:
            pkpd.set_compilation_cache(compilation_cache)
        except OSError as error:
            raise _fail(f"--compilation-cache: {error}") from None
    from .. import drugs as drug_library
    from ..governance import (
        AuditLog,
        AuditLogError,
        Governance,
        PseudonymKeyError,
        SigningKeyError,
        load_pseudonym_key,
        load_signing_key,
    )
    from ..io import SUBSTANCES, DosingConfigError, MqttService, MqttTls, TwinService, read_dosing
    from ..io._service_mqtt import parse_broker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        host, port = parse_broker(broker)
    except ValueError as error:
        raise _fail(str(error)) from None
    tls = None
    if tls_cert is not None or tls_key is not None:
        if tls_ca is None:
            raise _fail("--tls-cert/--tls-key: also give --tls-ca (the broker's CA).")
    if tls_ca is not None:
        try:
            tls = MqttTls(tls_ca, tls_cert, tls_key)
            tls.context()
        except (ValueError, OSError) as error:  # ssl.SSLError is an OSError
            raise _fail(f"--tls-ca/--tls-cert/--tls-key: {error}") from None
    password = None
    if password_file is not None:
        if not username:
            raise _fail("--password-file: also give --username.")
        try:
            password = password_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise _fail(f"--password-file: {error}") from None
        if not password:
            raise _fail(f"--password-file {password_file}: the file is empty.")
    models = {}
    for item in drug:
        substance, sep, name = item.partition("=")
        if not sep or substance not in SUBSTANCES:
            raise _fail(
                f"--drug: expected SUBSTANCE=DRUG, SUBSTANCE one of {list(SUBSTANCES)}; "
                f"got {item!r}."
            )
        try:
            models[substance] = drug_library.get(name)
        except (KeyError, ValueError) as error:
            raise _fail(f"--drug {item}: {error}") from None
    advice = None
    if dosing is not None:
        try:
            advice = read_dosing(dosing, models)
        except (DosingConfigError, OSError) as error:
            raise _fail(f"--dosing: {error}") from None
    try:
        key = load_pseudonym_key(key_file)
        log = AuditLog(audit, load_signing_key(signing_key))
    except (PseudonymKeyError, SigningKeyError, AuditLogError, OSError, ValueError) as error:
        raise _fail(str(error)) from None
    governance = Governance(log, key, actor=actor)
    try:
        service = TwinService(
            state,
            site=site,
            drugs=models,
            governance=governance,
            intervals=interval or None,
            n_draws=draws,
            hold_unknown=hold_unknown,
            dosing=advice,
        )
    except (TypeError, ValueError) as error:
        raise _fail(str(error)) from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    runner = MqttService(
        service, host, port, client_id=client_id, status_every=status_every, tls=tls,
        username=username, password=password,
    )  # fmt: skip
    topics = service.topics
    typer.echo(
        f"twins serve: site {site}, broker {host}:{port}, in {topics.subscription}, out "
        f"{topics.recommendation} and {topics.forecast}, dead letters {topics.dead_letter}"
        + (", over TLS" if tls is not None else ", plain TCP (no TLS)"),
        err=True,
    )
    try:
        runner.run(stop)
    finally:
        service.close()


def register(app: typer.Typer) -> None:
    """Add `twins serve` to the `twins` command line."""
    app.command("serve")(serve)
