"""Pseudonyms: keyed HMAC-SHA256 of identifiers, one derived key per purpose.

An identifier that leaves the system (a results folder, a report, the audit log, a
surrogate's training set, a federated update) is replaced by a pseudonym:

    subkey    = HKDF-SHA256(master key, salt = none, info = "pkpd-twins/pseudonym/" + purpose)
    digest    = HMAC-SHA256(subkey, UTF-8 bytes of the identifier)[:20]
    pseudonym = "psn-" + purpose + "-" + lowercase base32(digest)      (32 letters)

(HMAC: RFC 2104 with SHA-256 of FIPS 180-4; HKDF: RFC 5869; base32: RFC 4648 §6.)

- **Keyed, never a plain hash.** A record number has few possible values (a hospital's
  MRNs are a few million strings of digits); `SHA-256(MRN)` can be reversed by hashing
  every candidate, in seconds. HMAC with a secret key of 256 bits cannot be computed, and
  so cannot be enumerated, without the key.
- **One purpose, one subkey.** The pseudonyms of one patient for `"results"` and for
  `"training"` are unrelated for anyone without the master key, so two exports cannot be
  joined on their identifiers unless they were made for the same purpose on purpose.
- **The master key is held apart from the data**: a key file readable by its owner only
  (`write_pseudonym_key`, `twins governance keygen`), or an environment variable
  (`PKPD_TWINS_PSEUDONYM_KEY`, hex or base64, at least 32 bytes). There is no default key:
  without one, `load_pseudonym_key` raises an error saying how to set one.
- Keys never appear in a `repr`, a message or a pickle: `MasterKey` and `Pseudonymizer`
  show only a key id (a non-secret fingerprint) and refuse to be pickled.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._keyfiles import SecretFileError, read_secret_file, write_secret_file

PSEUDONYM_KEY_ENV = "PKPD_TWINS_PSEUDONYM_KEY"
"""Environment variable holding the pseudonym master key itself (hex or base64)."""

PSEUDONYM_KEY_FILE_ENV = "PKPD_TWINS_PSEUDONYM_KEY_FILE"
"""Environment variable naming a pseudonym key file."""

MIN_KEY_BYTES = 32
"""The shortest master key accepted (256 bits, the output size of SHA-256)."""

DIGEST_BYTES = 20
"""Bytes of the HMAC kept in a pseudonym (160 bits, 32 base32 letters)."""

_PURPOSE = r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*"
_PURPOSE_RE = re.compile(_PURPOSE)
_MAX_PURPOSE = 32
PSEUDONYM_PATTERN = re.compile(rf"psn-({_PURPOSE})-([a-z2-7]{{32}})")
"""The form of every pseudonym: `psn-<purpose>-<32 base32 letters>`."""

_SUBKEY_INFO = b"pkpd-twins/pseudonym/"
_KEY_ID_INFO = b"pkpd-twins/key-id"


class PseudonymKeyError(RuntimeError):
    """No pseudonym key is set, or the one given is unusable (the message says which and
    how to fix it)."""


class NotAPseudonymError(ValueError):
    """A value that should be a pseudonym is not one (a raw identifier, most likely)."""


def check_purpose(purpose: str) -> str:
    """A purpose name, checked: lowercase letters, digits and single hyphens, starting with
    a letter, at most 32 characters (`"results"`, `"audit"`, `"training"`, `"federated"`).

    **Arguments:**

    - `purpose`: the name.

    **Returns:** `purpose`.
    """
    if not isinstance(purpose, str):
        raise TypeError(f"Expected the purpose as a str, got {type(purpose).__name__}.")
    if len(purpose) > _MAX_PURPOSE or not _PURPOSE_RE.fullmatch(purpose):
        raise ValueError(
            f"Expected a purpose of lowercase letters, digits and single hyphens, starting "
            f"with a letter, at most {_MAX_PURPOSE} characters (for example 'results', "
            f"'audit', 'training', 'federated'), got {purpose!r}."
        )
    return purpose


class Pseudonym(str):
    """A pseudonym: a `str` of the form `psn-<purpose>-<32 base32 letters>`.

    Made by `Pseudonymizer.pseudonym`. `Pseudonym(text)` checks the form, so a pseudonym
    read back from a file can be used where one is required (the audit log's `subject`),
    while a raw identifier is refused with `NotAPseudonymError`. The form only shows that a
    value is not a raw record number; it does not prove which key made it.

    **Arguments:**

    - `text`: the pseudonym's text.
    """

    __slots__ = ()

    def __new__(cls, text: str) -> Pseudonym:
        if isinstance(text, Pseudonym):
            return text
        if not isinstance(text, str):
            raise NotAPseudonymError(
                f"Expected a pseudonym (a str made by a Pseudonymizer), got a "
                f"{type(text).__name__}."
            )
        match = PSEUDONYM_PATTERN.fullmatch(text)
        if match is None or len(match.group(1)) > _MAX_PURPOSE:
            # The value is not shown: it is most likely a raw identifier.
            raise NotAPseudonymError(
                "Expected a pseudonym made by a Pseudonymizer (psn-<purpose>-<32 base32 "
                f"letters>), got a str of {len(text)} characters that is not one (not shown: "
                "it may be a raw identifier). Pass identifiers through "
                "Pseudonymizer.pseudonym first."
            )
        return super().__new__(cls, text)

    @property
    def purpose(self) -> str:
        """The purpose the pseudonym was made for."""
        match = PSEUDONYM_PATTERN.fullmatch(self)
        assert match is not None  # checked in __new__
        return match.group(1)


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def parse_key_text(text: str, *, source: str) -> bytes:
    """The bytes of a key written as text: hex (a value of hex digits only), or base64
    (standard or URL-safe alphabet); an optional `hex:` or `base64:` prefix says which.

    **Arguments:**

    - `text`: the key's text (surrounding white space is ignored).
    - `source`: where it comes from, for messages (never the key itself).

    **Returns:** the key's bytes, at least `MIN_KEY_BYTES` of them.
    """
    value = text.strip()
    kind = None
    for prefix in ("hex:", "base64:"):
        if value.lower().startswith(prefix):
            kind, value = prefix[:-1], value[len(prefix) :]
    try:
        if kind == "hex" or (kind is None and re.fullmatch(r"[0-9a-fA-F]+", value)):
            if len(value) % 2:
                raise ValueError("an odd number of hex digits")
            key = bytes.fromhex(value)
        else:
            padded = value + "=" * (-len(value) % 4)
            alphabet = padded.replace("-", "+").replace("_", "/")
            key = base64.b64decode(alphabet, validate=True)
    except (ValueError, binascii.Error) as error:
        raise PseudonymKeyError(
            f"The pseudonym key in {source} is neither hex nor base64 ({error}). Create a "
            "new key with `twins governance keygen PATH`."
        ) from None
    if len(key) < MIN_KEY_BYTES:
        raise PseudonymKeyError(
            f"The pseudonym key in {source} has {len(key)} bytes; expected at least "
            f"{MIN_KEY_BYTES} (256 bits). Create one with `twins governance keygen PATH`."
        )
    return key


class MasterKey:
    """The pseudonym master key (at least 32 random bytes). Never shown, never pickled.

    Usually made by `load_pseudonym_key` (from a key file or the environment) or
    `write_pseudonym_key` (a new one); `MasterKey(secret)` wraps bytes you already hold.

    **Arguments:**

    - `secret`: the key's bytes, at least `MIN_KEY_BYTES`.

    The attribute `key_id` is a non-secret fingerprint (16 hex digits, from HKDF with its
    own label: it reveals nothing of the key or the subkeys) to record which key made an
    export, so that a later export can be checked to use the same one.
    """

    __slots__ = ("_secret", "key_id")

    def __init__(self, secret: bytes):
        if not isinstance(secret, bytes | bytearray):
            raise TypeError(f"Expected the key as bytes, got {type(secret).__name__}.")
        if len(secret) < MIN_KEY_BYTES:
            raise PseudonymKeyError(
                f"Expected a pseudonym key of at least {MIN_KEY_BYTES} bytes, got {len(secret)}."
            )
        self._secret = bytes(secret)
        self.key_id = _hkdf(self._secret, _KEY_ID_INFO)[:8].hex()

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id!r})"

    def __reduce__(self):
        raise TypeError(
            "A pseudonym MasterKey is not pickled (it would write the key out). Load it in "
            f"each process with load_pseudonym_key ({PSEUDONYM_KEY_ENV} or a key file)."
        )

    def pseudonymizer(self, purpose: str) -> Pseudonymizer:
        """The `Pseudonymizer` of this key for `purpose`."""
        return Pseudonymizer(purpose, self)


class Pseudonymizer:
    """Makes the pseudonyms of one purpose.

    **Arguments:**

    - `purpose`: the purpose (`check_purpose`): `"results"` for results folders and
      reports, `"audit"` for the audit log, `"training"` for surrogate training sets,
      `"federated"` for federated updates, or a name of your own. The subkey is
      `HKDF-SHA256(master, info = "pkpd-twins/pseudonym/" + purpose)` (RFC 5869).
    - `key`: the `MasterKey`.

    `pseudonym(identifier)` is `psn-<purpose>-` and 32 lowercase base32 letters: the first
    160 bits of `HMAC-SHA256(subkey, identifier)` (RFC 2104). 160 bits make a collision
    negligible: among `n` identifiers the chance that two share a pseudonym is at most
    `n^2 / 2^161`, about `3e-25` for a trillion identifiers; and a truncated HMAC stays a
    secure MAC (RFC 2104 §5, NIST SP 800-107 §5.3.4). The text has a fixed length for a
    purpose and is safe in file names, URLs, CSV and JSON.

    Identifiers are used exactly as given (after UTF-8 encoding): `"00123"` and `"123"`
    are different patients. Give one form per patient (for FHIR, `system|value` keeps two
    systems' numbers apart); an identifier with leading or trailing white space, which is
    nearly always a reading error, is refused.
    """

    __slots__ = ("_mac", "key_id", "purpose")

    def __init__(self, purpose: str, key: MasterKey):
        if not isinstance(key, MasterKey):
            raise TypeError(
                "Expected a MasterKey (from load_pseudonym_key or write_pseudonym_key), got "
                f"{type(key).__name__}."
            )
        self.purpose = check_purpose(purpose)
        self.key_id = key.key_id
        subkey = _hkdf(key._secret, _SUBKEY_INFO + purpose.encode("ascii"))
        self._mac = hmac.new(subkey, digestmod=hashlib.sha256)

    def __repr__(self) -> str:
        return f"Pseudonymizer(purpose={self.purpose!r}, key_id={self.key_id!r})"

    def __reduce__(self):
        raise TypeError(
            "A Pseudonymizer is not pickled (it would write its key out). Make it in each "
            "process with load_pseudonymizer."
        )

    def pseudonym(self, identifier: str) -> Pseudonym:
        """The pseudonym of `identifier` for this purpose.

        **Arguments:**

        - `identifier`: a non-empty `str` (a patient id, a record number, `system|value`).

        **Returns:** a `Pseudonym` (a `str`), the same for the same identifier, key and
        purpose.
        """
        if not isinstance(identifier, str):
            raise TypeError(f"Expected the identifier as a str, got {type(identifier).__name__}.")
        if not identifier:
            raise ValueError("Expected a non-empty identifier, got ''.")
        if identifier != identifier.strip():
            raise ValueError(
                "Expected an identifier without leading or trailing white space (it would "
                "give another pseudonym than the same identifier without it); strip it first."
            )
        mac = self._mac.copy()
        mac.update(identifier.encode("utf-8"))
        digest = mac.digest()[:DIGEST_BYTES]
        text = base64.b32encode(digest).decode("ascii").lower()
        return Pseudonym(f"psn-{self.purpose}-{text}")


def generate_pseudonym_key() -> MasterKey:
    """A new random master key (32 bytes from the operating system's CSPRNG, `secrets`).

    **Returns:** a `MasterKey` (in memory only; `write_pseudonym_key` also saves it).
    """
    return MasterKey(secrets.token_bytes(MIN_KEY_BYTES))


def write_pseudonym_key(path: str | os.PathLike) -> MasterKey:
    """Create a new pseudonym key file (mode `0600`, never overwriting one).

    The file holds the key in hex after comment lines (`#`) naming its key id. Keep it
    apart from the data (another volume, a secret store) and back it up: without it, no
    later export can be linked to an earlier one.

    **Arguments:**

    - `path`: the file to create.

    **Returns:** the new `MasterKey`.
    """
    key = generate_pseudonym_key()
    text = (
        "# pkpd-twins pseudonym master key: HMAC-SHA256 (RFC 2104), subkeys per purpose by\n"
        "# HKDF-SHA256 (RFC 5869). Secret: keep it apart from the data, mode 0600, backed up.\n"
        f"# key id: {key.key_id}\n"
        f"{key._secret.hex()}\n"
    )
    write_secret_file(path, text.encode("ascii"), what="pseudonym key file")
    return key


def read_pseudonym_key_file(path: str | os.PathLike) -> MasterKey:
    """The master key of a key file (permissions checked: owner only).

    **Arguments:**

    - `path`: the key file: one line of hex or base64, comment lines (`#`) allowed.

    **Returns:** the `MasterKey`.
    """
    try:
        data = read_secret_file(path, what="pseudonym key file")
    except SecretFileError as error:
        raise PseudonymKeyError(str(error)) from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise PseudonymKeyError(
            f"The pseudonym key file {path} is not text (expected hex or base64)."
        ) from None
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(lines) != 1:
        raise PseudonymKeyError(
            f"The pseudonym key file {path} should hold one key line (hex or base64) besides "
            f"comments; found {len(lines)}."
        )
    return MasterKey(parse_key_text(lines[0], source=f"the key file {path}"))


def load_pseudonym_key(
    key_file: str | os.PathLike | None = None, *, environ: Mapping[str, str] | None = None
) -> MasterKey:
    """The pseudonym master key: from `key_file` if given, else from the environment.

    In the environment, `PKPD_TWINS_PSEUDONYM_KEY_FILE` names a key file and
    `PKPD_TWINS_PSEUDONYM_KEY` holds a key (hex or base64, at least 32 bytes); setting both
    is refused as ambiguous. There is no default key.

    **Arguments:**

    - `key_file`: a key file (see `read_pseudonym_key_file`), or `None`.
    - `environ`: the environment to read (default `os.environ`).

    **Returns:** the `MasterKey`.

    **Raises:** `PseudonymKeyError` when no key is set (naming both variables and the
    key-file option) or the key is unusable.
    """
    if key_file is not None:
        return read_pseudonym_key_file(key_file)
    env = os.environ if environ is None else environ
    file_value = env.get(PSEUDONYM_KEY_FILE_ENV, "").strip()
    key_value = env.get(PSEUDONYM_KEY_ENV, "").strip()
    if file_value and key_value:
        raise PseudonymKeyError(
            f"Both {PSEUDONYM_KEY_ENV} and {PSEUDONYM_KEY_FILE_ENV} are set: set one only, so "
            "that it is clear which key makes the pseudonyms."
        )
    if file_value:
        return read_pseudonym_key_file(Path(file_value))
    if key_value:
        return MasterKey(parse_key_text(key_value, source=f"${PSEUDONYM_KEY_ENV}"))
    raise PseudonymKeyError(
        "No pseudonym key is set, and there is no default key (pseudonyms made with a known "
        f"key could be reversed). Set {PSEUDONYM_KEY_ENV} to a key (hex or base64, at least "
        f"{MIN_KEY_BYTES} bytes), or {PSEUDONYM_KEY_FILE_ENV} to a key file, or pass a key "
        "file (key_file=, or --key-file on the command line). Create a key file with "
        "`twins governance keygen PATH` (see docs/governance.md)."
    )


def load_pseudonymizer(
    purpose: str,
    key_file: str | os.PathLike | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Pseudonymizer:
    """The `Pseudonymizer` for `purpose` with the key of `load_pseudonym_key`.

    **Arguments:**

    - `purpose`: see `Pseudonymizer`.
    - `key_file`, `environ`: see `load_pseudonym_key`.

    **Returns:** a `Pseudonymizer`.
    """
    return Pseudonymizer(purpose, load_pseudonym_key(key_file, environ=environ))
