"""`twins serve` over TLS with a broker account, against a real mosquitto configured as a
hospital broker should be: TLS only (its certificate signed by a CA generated here, for
127.0.0.1), no anonymous clients, a password file made by `mosquitto_passwd`.

The service connects, consumes and publishes over TLS; a wrong password, a broker
certificate from another CA and a plain-TCP client are refused. No JAX compilation: the
round trip is a malformed message answered by a dead letter. Every wait is bounded."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import shutil
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_stream_mqtt import HOST, SITE, Mosquitto, make_service, wait_for

from twins.io import MqttService, MqttTls

USER, PASSWORD = "twins-serve", "a long generated secret"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, key, issuer, issuer_key, *, ca: bool):
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
    return b.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, name: str, cert, key) -> tuple[Path, Path]:
    c, k = folder / f"{name}.pem", folder / f"{name}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    k.chmod(0o600)
    return c, k


def _pki(folder: Path, ca_name: str) -> tuple[Path, Path, Path]:
    """A CA and a broker certificate it signed (for 127.0.0.1): (ca.pem, server.pem, .key)."""
    folder.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    ca_pem, _ = _write(folder, "ca", ca, ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    server_pem, server_key = _write(
        folder, "server", _cert(HOST, key, ca_name, ca_key, ca=False), key
    )
    return ca_pem, server_pem, server_key


@pytest.fixture
def tls_broker(tmp_path):
    """mosquitto with TLS only and a password file; yields (broker, our CA, rogue CA)."""
    exe = shutil.which("mosquitto_passwd")
    if exe is None:
        pytest.fail("mosquitto_passwd (Debian package mosquitto) is not installed.")
    ours = _pki(tmp_path / "pki", "pkpd-twins test CA")
    rogue = _pki(tmp_path / "rogue", "another CA")
    passwd = tmp_path / "passwd"
    subprocess.run([exe, "-b", "-c", str(passwd), USER, PASSWORD], check=True, timeout=30)
    passwd.chmod(0o600)
    folder = tmp_path / "broker"
    folder.mkdir()
    broker = Mosquitto(
        folder,
        settings=(
            f"cafile {ours[0]}\ncertfile {ours[1]}\nkeyfile {ours[2]}\n"
            "tls_version tlsv1.2\nallow_anonymous false\n"
            f"password_file {passwd}\n"
        ),
    )
    broker.start()
    yield broker, ours[0], rogue[0]
    broker.stop()


def _client(port: int, ca: Path, *, username=USER, password=PASSWORD):
    """A TLS client subscribed to the site's outputs; (client, messages, connected)."""
    import paho.mqtt.client as mqtt

    got: list[tuple[str, dict]] = []
    ready = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.tls_set_context(MqttTls(ca).context())
    c.username_pw_set(username, password)

    def on_connect(client, userdata, flags, reason_code, properties):
        if not reason_code.is_failure:
            client.subscribe(f"twins/{SITE}/#", qos=1)

    c.on_connect = on_connect
    c.on_subscribe = lambda *_: ready.set()

    def on_message(client, userdata, m):
        if "/in/" not in m.topic:  # its own (malformed) input comes back too
            got.append((m.topic, json.loads(m.payload)))

    c.on_message = on_message
    c.connect(HOST, port)
    c.loop_start()
    return c, got, ready


def test_service_over_tls_with_an_account(tls_broker, tmp_path):
    broker, ca, _ = tls_broker
    service = make_service(tmp_path)
    runner = MqttService(
        service, HOST, broker.port, tls=MqttTls(ca), username=USER, password=PASSWORD,
        status_every=0.2,
    )  # fmt: skip
    runner.start()
    client, got, ready = _client(broker.port, ca)
    try:
        assert runner.connected.wait(15), "the service did not connect over TLS"
        assert ready.wait(15), "the TLS test client could not subscribe"
        info = client.publish(f"twins/{SITE}/in/Observation", b"{not json", qos=1)
        info.wait_for_publish(10)
        dead = f"twins/{SITE}/dead-letter"
        wait_for(lambda: any(t == dead for t, _ in got), 20, "the dead letter over TLS")
        letter = next(b for t, b in got if t == dead)
        assert "not UTF-8 JSON" in letter["reason"]
        status = f"twins/{SITE}/status"
        wait_for(lambda: any(t == status for t, _ in got), 10, "a status message over TLS")
    finally:
        client.disconnect()
        client.loop_stop()
        runner.stop()
        service.close()


# paho leaves the socket of a failed TLS handshake to the garbage collector (a
# ResourceWarning "unclosed <ssl.SSLSocket ...>"), which pytest reports as unraisable.
@pytest.mark.filterwarnings("ignore:Exception ignored in. <ssl.SSLSocket")
@pytest.mark.parametrize("case", ["wrong password", "another CA", "no TLS"])
def test_refused_connections(tls_broker, tmp_path, caplog, case):
    broker, ca, rogue = tls_broker
    service = make_service(tmp_path)
    kwargs = {"tls": MqttTls(ca), "username": USER, "password": PASSWORD}
    if case == "wrong password":
        kwargs["password"] = "not the password"
    elif case == "another CA":
        kwargs["tls"] = MqttTls(rogue)
    else:
        kwargs.pop("tls")
    runner = MqttService(service, HOST, broker.port, **kwargs)
    with caplog.at_level(logging.ERROR, logger="twins.serve"):
        runner.start()
        try:
            assert not runner.connected.wait(4), f"{case}: the service connected"
            wait_for(lambda: caplog.records, 10, f"{case}: a logged refusal")
        finally:
            runner.stop(timeout=5)
            service.close()
    text = " ".join(r.getMessage() for r in caplog.records)
    if case == "wrong password":
        assert "refused the connection" in text, text
    elif case == "another CA":
        assert "over TLS" in text, text
    else:
        assert "does it require TLS" in text, text


def test_tls_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="ca_file"):
        MqttTls(tmp_path / "missing.pem")
    ca, _, _ = _pki(tmp_path / "pki", "CA")
    with pytest.raises(ValueError, match="both cert_file and key_file"):
        MqttTls(ca, cert_file=ca)
    with pytest.raises(ssl.SSLError):
        MqttTls(ca, cert_file=ca, key_file=ca).context()  # a certificate is not a key
    service = make_service(tmp_path)
    try:
        with pytest.raises(ValueError, match="needs a username"):
            MqttService(service, HOST, 1883, password="x")
    finally:
        service.close()


def test_serve_refuses_partial_tls_and_account_arguments(tmp_path):
    from typer.testing import CliRunner

    from twins.app._cli import app
    from twins.governance import write_pseudonym_key, write_signing_key

    write_pseudonym_key(tmp_path / "pseudonym.key")
    write_signing_key(tmp_path / "audit.key")
    (tmp_path / "empty").write_text("")
    base = ["serve", "--broker", "127.0.0.1:8883", "--site", SITE]
    base += ["--state", str(tmp_path / "s.db"), "--audit", str(tmp_path / "a.jsonl")]
    base += ["--signing-key", str(tmp_path / "audit.key")]
    base += ["--key-file", str(tmp_path / "pseudonym.key")]
    for extra, why in (
        (["--tls-cert", str(tmp_path / "empty")], "also give --tls-ca"),
        (["--tls-ca", str(tmp_path / "missing.pem")], "is not a file"),
        (["--password-file", str(tmp_path / "empty")], "also give --username"),
        (["--username", "u", "--password-file", str(tmp_path / "empty")], "is empty"),
    ):
        result = CliRunner().invoke(app, base + extra)
        assert result.exit_code == 2, (extra, result.output)
        assert why in result.output, (why, result.output)
    assert not (tmp_path / "s.db").exists()
