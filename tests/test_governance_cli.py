"""`twins governance ...` and `twins audit ...` (typer's CliRunner, in process)."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from twins.app._cli import app
from twins.governance import (
    PSEUDONYM_KEY_ENV,
    PSEUDONYM_KEY_FILE_ENV,
    AuditAction,
    AuditLog,
    heads_path,
    load_pseudonymizer,
    load_signing_key,
)

NO_KEY_ENV = {PSEUDONYM_KEY_ENV: None, PSEUDONYM_KEY_FILE_ENV: None}


def _invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], env=NO_KEY_ENV)


@pytest.fixture
def signed_log(tmp_path):
    assert _invoke("audit", "keygen", tmp_path / "audit.key").exit_code == 0
    key = load_signing_key(tmp_path / "audit.key")
    (tmp_path / "logs").mkdir()
    log = AuditLog(tmp_path / "logs" / "audit.jsonl", key)
    for i in range(6):
        log.append(AuditAction.FORECAST, actor="svc", details={"i": i})
    return log.path, tmp_path / "audit.key.pub"


def test_pseudonym_keygen_and_lookup(tmp_path):
    path = tmp_path / "pseudonym.key"
    result = _invoke("governance", "keygen", path)
    assert result.exit_code == 0, result.output
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert "key id" in result.output and path.read_text().splitlines()[-1] not in result.output
    again = _invoke("governance", "keygen", path)
    assert again.exit_code == 2 and "Refusing to overwrite" in again.output
    result = _invoke(
        "governance", "pseudonym", "MRN-1", "MRN-2", "--purpose", "results", "--key-file", path
    )
    assert result.exit_code == 0, result.output
    expected = load_pseudonymizer("results", path)
    assert result.output.splitlines() == [
        f"MRN-1\t{expected.pseudonym('MRN-1')}",
        f"MRN-2\t{expected.pseudonym('MRN-2')}",
    ]


def test_no_pseudonym_key_is_a_clear_error(tmp_path):
    result = _invoke("governance", "pseudonym", "MRN-1", "--purpose", "results")
    assert result.exit_code == 2
    assert PSEUDONYM_KEY_ENV in result.output and "--key-file" in result.output
    loose = tmp_path / "loose.key"
    _invoke("governance", "keygen", loose)
    os.chmod(loose, 0o644)
    result = _invoke("governance", "pseudonym", "x", "--purpose", "audit", "--key-file", loose)
    assert result.exit_code == 2 and "chmod 600" in result.output


def test_verify_exit_codes(signed_log, tmp_path):
    log, public = signed_log
    result = _invoke("audit", "verify", log, "--public-key", public)
    assert result.exit_code == 0 and result.output.startswith("OK"), result.output
    beside = log.parent / "audit.key.pub"
    beside.write_bytes(public.read_bytes())
    result = _invoke("audit", "verify", log, "--public-key", beside)
    assert result.exit_code == 0 and "the public key is in the log's folder" in result.output
    # Tampered: exit 1, the first bad entry named.
    lines = log.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b'"i":3', b'"i":9')
    log.write_bytes(b"\n".join(lines))
    result = _invoke("audit", "verify", log, "--public-key", public)
    assert result.exit_code == 1, result.output
    assert "TAMPERED" in result.output and "First bad entry: entry 3 (line 4)" in result.output
    report = json.loads(_invoke("audit", "verify", log, "--public-key", public, "--json").output)
    assert report["ok"] is False and report["tampered"] is True
    assert (report["first_bad_seq"], report["first_bad_line"]) == (3, 4)
    # The wrong key: exit 1.
    _invoke("audit", "keygen", tmp_path / "other.key")
    lines[3] = lines[3].replace(b'"i":9', b'"i":3')
    log.write_bytes(b"\n".join(lines))
    assert _invoke("audit", "verify", log, "--public-key", public).exit_code == 0
    result = _invoke("audit", "verify", log, "--public-key", tmp_path / "other.key.pub")
    assert result.exit_code == 1 and "wrong-key" in result.output
    # Torn: exit 3, not tampering.
    with open(log, "ab") as f:
        f.write(b'{"action":"exp')
    result = _invoke("audit", "verify", log, "--public-key", public)
    assert result.exit_code == 3 and "torn-tail" in result.output
    # Usage errors: exit 2.
    assert _invoke("audit", "verify", tmp_path / "none", "--public-key", public).exit_code == 2
    assert _invoke("audit", "verify", log, "--public-key", tmp_path / "none").exit_code == 2


def test_heads_and_proofs_from_the_command_line(signed_log, tmp_path):
    log, public = signed_log
    head = _invoke("audit", "head", log)
    assert head.exit_code == 0
    (tmp_path / "head.json").write_text(head.output)
    assert json.loads(head.output)["tree_size"] == 6
    old = json.loads(heads_path(log).read_text().splitlines()[2])
    (tmp_path / "old.json").write_text(json.dumps(old))
    proof = _invoke("audit", "prove", log, "--seq", "4")
    assert proof.exit_code == 0
    (tmp_path / "inclusion.json").write_text(proof.output)
    consistency = _invoke("audit", "consistency", log, "--old-size", "3")
    (tmp_path / "consistency.json").write_text(consistency.output)
    check = ("audit", "check-proof", "--public-key", public, "--head", tmp_path / "head.json")
    result = _invoke(*check, tmp_path / "inclusion.json")
    assert result.exit_code == 0 and "holds" in result.output
    result = _invoke(*check, tmp_path / "consistency.json", "--old-head", tmp_path / "old.json")
    assert result.exit_code == 0, result.output
    assert _invoke(*check, tmp_path / "consistency.json").exit_code == 2  # needs --old-head
    bad = json.loads(proof.output)
    bad["inclusion"]["entry"] = bad["inclusion"]["entry"].replace('"i":4', '"i":5')
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    result = _invoke(*check, tmp_path / "bad.json")
    assert result.exit_code == 1 and "does NOT hold" in result.output
    # A log cut back in both files is caught against a head kept apart.
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:4]))
    hp = heads_path(log)
    hp.write_bytes(b"".join(hp.read_bytes().splitlines(keepends=True)[:4]))
    assert _invoke("audit", "verify", log, "--public-key", public).exit_code == 0
    result = _invoke(
        "audit", "verify", log, "--public-key", public, "--known-head", tmp_path / "head.json"
    )
    assert result.exit_code == 1 and "missing" in result.output
