"""Pseudonyms: keyed HMAC-SHA256 with HKDF-SHA256 subkeys per purpose (twins.governance).

The reference here is an independent computation of RFC 5869 (HKDF) and RFC 2104 (HMAC)
with the standard library's `hmac`, itself checked against RFC 5869's test case 1.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pickle
import re

import pytest

from twins.governance import (
    PSEUDONYM_KEY_ENV,
    PSEUDONYM_KEY_FILE_ENV,
    MasterKey,
    NotAPseudonymError,
    Pseudonym,
    Pseudonymizer,
    PseudonymKeyError,
    generate_pseudonym_key,
    load_pseudonym_key,
    load_pseudonymizer,
    read_pseudonym_key_file,
    write_pseudonym_key,
)

SECRET = bytes(range(32))
IDENTIFIERS = [
    "00012345",
    "MRN-0004711",
    "urn:oid:2.16.840.1.113883.19.5|998877",
    "Patient/3f2a9c1e-77aa-4d1b-9c2e-0d9b1a2c3e4f",
    "Jöns Jacobsson 1956-02-29",
    "9434765919",
]


def _hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 §2.2 (extract) and §2.3 (expand), written out."""
    prk = hmac.new(salt or b"\x00" * 32, ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def _reference_pseudonym(secret: bytes, purpose: str, identifier: str) -> str:
    subkey = _hkdf_sha256(secret, b"", b"pkpd-twins/pseudonym/" + purpose.encode(), 32)
    digest = hmac.new(subkey, identifier.encode("utf-8"), hashlib.sha256).digest()[:20]
    return f"psn-{purpose}-" + base64.b32encode(digest).decode().lower()


def test_reference_hkdf_matches_rfc5869_test_case_1():
    okm = _hkdf_sha256(
        bytes.fromhex("0b" * 22),
        bytes.fromhex("000102030405060708090a0b0c"),
        bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        42,
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_pseudonyms_match_the_published_construction():
    key = MasterKey(SECRET)
    for purpose in ("results", "audit", "training", "federated", "registry-2025"):
        p = Pseudonymizer(purpose, key)
        for identifier in IDENTIFIERS:
            assert p.pseudonym(identifier) == _reference_pseudonym(SECRET, purpose, identifier)


def test_stable_prefixed_fixed_length_and_never_containing_the_identifier():
    p = Pseudonymizer("results", generate_pseudonym_key())
    one, two = (Pseudonymizer("results", MasterKey(bytes(SECRET))) for _ in range(2))
    assert one.pseudonym("x1") == two.pseudonym("x1")  # the same key loaded twice
    made = [p.pseudonym(i) for i in IDENTIFIERS]
    assert made == [p.pseudonym(i) for i in IDENTIFIERS]  # stable
    assert len(set(made)) == len(made)
    for identifier, pseudonym in zip(IDENTIFIERS, made, strict=True):
        assert isinstance(pseudonym, Pseudonym) and isinstance(pseudonym, str)
        assert re.fullmatch(r"psn-results-[a-z2-7]{32}", pseudonym)
        assert len(pseudonym) == len("psn-results-") + 32
        assert pseudonym.purpose == "results"
        for part in re.split(r"[^0-9A-Za-z]+", identifier):
            if len(part) >= 4:
                assert part.lower() not in pseudonym


def test_purposes_are_separated_and_the_key_matters():
    key = generate_pseudonym_key()
    results = Pseudonymizer("results", key)
    training = Pseudonymizer("training", key)
    other = Pseudonymizer("results", generate_pseudonym_key())
    for identifier in IDENTIFIERS:
        a, b, c = (
            results.pseudonym(identifier),
            training.pseudonym(identifier),
            other.pseudonym(identifier),
        )
        assert a[-32:] != b[-32:]
        assert a != c
    assert {results.pseudonym(i) for i in IDENTIFIERS}.isdisjoint(
        {"psn-results-" + training.pseudonym(i)[-32:] for i in IDENTIFIERS}
    )


def test_identifiers_and_purposes_are_checked():
    p = Pseudonymizer("audit", MasterKey(SECRET))
    for bad in ("", " 123", "123 ", "123\n"):
        with pytest.raises(ValueError):
            p.pseudonym(bad)
    with pytest.raises(TypeError):
        p.pseudonym(123)  # type: ignore[arg-type]
    for purpose in ("", "Results", "re sults", "a/b", "-x", "x-", "a--b", "x" * 33):
        with pytest.raises(ValueError, match="purpose"):
            Pseudonymizer(purpose, MasterKey(SECRET))


def test_a_raw_identifier_is_not_a_pseudonym_and_is_not_echoed():
    for raw in ("00012345", "psn-results-abc", "PSN-RESULTS-" + "A" * 32):
        with pytest.raises(NotAPseudonymError) as info:
            Pseudonym(raw)
        assert raw not in str(info.value)
    with pytest.raises(NotAPseudonymError):
        Pseudonym(12345)  # type: ignore[arg-type]
    good = Pseudonymizer("audit", MasterKey(SECRET)).pseudonym("00012345")
    assert Pseudonym(str(good)) == good


def test_keys_are_never_shown_nor_pickled():
    key = MasterKey(SECRET)
    p = key.pseudonymizer("results")
    for text in (repr(key), str(key), repr(p), str(p), f"{key}", f"{p!r}"):
        assert SECRET.hex() not in text and SECRET.hex()[:16] not in text
        assert base64.b64encode(SECRET).decode()[:16] not in text
    assert key.key_id in repr(key) and re.fullmatch(r"[0-9a-f]{16}", key.key_id)
    for obj in (key, p):
        with pytest.raises(TypeError, match="not pickled"):
            pickle.dumps(obj)


def test_no_key_is_a_clear_error_never_a_default():
    with pytest.raises(PseudonymKeyError) as info:
        load_pseudonym_key(environ={})
    message = str(info.value)
    assert PSEUDONYM_KEY_ENV in message and PSEUDONYM_KEY_FILE_ENV in message
    assert "key_file" in message and "twins governance keygen" in message
    with pytest.raises(PseudonymKeyError, match="no default key"):
        load_pseudonymizer("results", environ={PSEUDONYM_KEY_ENV: "  "})


def test_keys_from_the_environment_hex_or_base64(tmp_path):
    hex_key = SECRET.hex()
    forms = [
        hex_key,
        hex_key.upper(),
        f"hex:{hex_key}",
        base64.b64encode(SECRET).decode(),
        base64.urlsafe_b64encode(SECRET).decode().rstrip("="),
        "base64:" + base64.b64encode(SECRET).decode(),
    ]
    expected = Pseudonymizer("results", MasterKey(SECRET)).pseudonym("00012345")
    for form in forms:
        p = load_pseudonymizer("results", environ={PSEUDONYM_KEY_ENV: form})
        assert p.pseudonym("00012345") == expected
    for short in (SECRET[:31].hex(), base64.b64encode(SECRET[:16]).decode()):
        with pytest.raises(PseudonymKeyError, match="at least 32"):
            load_pseudonym_key(environ={PSEUDONYM_KEY_ENV: short})
    with pytest.raises(PseudonymKeyError, match="neither hex nor base64"):
        load_pseudonym_key(environ={PSEUDONYM_KEY_ENV: "not a key at all!"})
    path = tmp_path / "k"
    write_pseudonym_key(path)
    with pytest.raises(PseudonymKeyError, match="set one only"):
        load_pseudonym_key(environ={PSEUDONYM_KEY_ENV: hex_key, PSEUDONYM_KEY_FILE_ENV: str(path)})


def test_key_file_written_owner_only_read_back_and_never_overwritten(tmp_path):
    path = tmp_path / "pseudonym.key"
    key = write_pseudonym_key(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert key.key_id in path.read_text()
    same = read_pseudonym_key_file(path)
    from_env = load_pseudonym_key(environ={PSEUDONYM_KEY_FILE_ENV: str(path)})
    for k in (same, from_env, load_pseudonym_key(path)):
        assert k.key_id == key.key_id
        assert k.pseudonymizer("audit").pseudonym("1") == key.pseudonymizer("audit").pseudonym("1")
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="Refusing to overwrite"):
        write_pseudonym_key(path)
    assert path.read_bytes() == before
    os.chmod(path, 0o400)
    assert read_pseudonym_key_file(path).key_id == key.key_id


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o660, 0o606, 0o700])
def test_key_files_others_can_use_are_refused(tmp_path, mode):
    path = tmp_path / "pseudonym.key"
    write_pseudonym_key(path)
    os.chmod(path, mode)
    if mode == 0o700:  # owner only, executable: still owner only
        read_pseudonym_key_file(path)
        return
    with pytest.raises(PseudonymKeyError) as info:
        read_pseudonym_key_file(path)
    message = str(info.value)
    assert f"{mode:04o}" in message and f"chmod 600 {path}" in message
    assert path.read_text().splitlines()[-1] not in message


def test_unusual_key_files_are_refused(tmp_path):
    target = tmp_path / "real.key"
    write_pseudonym_key(target)
    link = tmp_path / "link.key"
    link.symlink_to(target)
    with pytest.raises(PseudonymKeyError, match="symbolic link"):
        read_pseudonym_key_file(link)
    with pytest.raises(PseudonymKeyError, match="does not exist"):
        read_pseudonym_key_file(tmp_path / "missing.key")
    for name, text in (("two", f"{SECRET.hex()}\n{SECRET.hex()}\n"), ("none", "# only\n")):
        path = tmp_path / name
        path.write_text(text)
        os.chmod(path, 0o600)
        with pytest.raises(PseudonymKeyError, match="one key line"):
            read_pseudonym_key_file(path)
    short = tmp_path / "short"
    short.write_text(SECRET[:16].hex())
    os.chmod(short, 0o600)
    with pytest.raises(PseudonymKeyError, match="at least 32"):
        read_pseudonym_key_file(short)
