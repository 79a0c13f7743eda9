"""Signed tree heads and the audit log's Ed25519 keys.

A signed tree head states "the log's first `tree_size` entries have the RFC 9162 root
hash `root_hash`", at a time, signed with the log's Ed25519 key (RFC 8032, through the
`cryptography` package). The heads of a log `LOG` are the lines of `LOG.heads`, one JSON
object each, in canonical form:

    {"index":3,"key_id":"<64 hex>","root_hash":"<64 hex>","signature":"<base64>",
     "timestamp":"2025-03-01T08:15:02.123456Z","tree_size":4,"v":1}

- `index`: 0, 1, 2, ... in the file (a deleted, duplicated or reordered head is seen).
- `key_id`: SHA-256 of the public key's DER SubjectPublicKeyInfo (as RFC 6962 §3.2 names a
  log), so a head signed by another key is told apart from a forged signature.
- `signature`: Ed25519 over `b"pkpd-twins signed tree head v1\\n"` followed by the canonical
  JSON of the other fields (the prefix keeps the signature from meaning anything else).

The private key is a PKCS #8 PEM file readable by its owner only (`write_signing_key`,
`twins audit keygen`); the public key, a SubjectPublicKeyInfo PEM file, goes to auditors.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._entries import FORMAT_VERSION, canonical_json, format_time
from ._keyfiles import SecretFileError, read_secret_file, write_public_file, write_secret_file
from ._merkle import HASH_SIZE

_SIGNED_PREFIX = b"pkpd-twins signed tree head v1\n"
_KEYS = frozenset(("index", "key_id", "root_hash", "signature", "timestamp", "tree_size", "v"))
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
MAX_HEAD_BYTES = 1024


class HeadError(ValueError):
    """A heads line that is not a well-formed signed tree head."""


class SigningKeyError(RuntimeError):
    """A signing or public key file that is missing, unsafe or not an Ed25519 key."""


def key_id(public_key: Ed25519PublicKey) -> str:
    """The key id of a public key: SHA-256 (hex) of its DER SubjectPublicKeyInfo.

    **Arguments:**

    - `public_key`: an Ed25519 public key.

    **Returns:** 64 lowercase hex digits.
    """
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


@dataclasses.dataclass(frozen=True)
class SignedTreeHead:
    """A signed statement of the log's size and Merkle root (see the module docstring).

    **Arguments:**

    - `index`: the head's number in the heads file, from 0.
    - `tree_size`: how many entries it covers (the first `tree_size`).
    - `root_hash`: their RFC 9162 root (32 bytes).
    - `timestamp`: when it was signed (UTC text, as the entries' `time`).
    - `key_id`: the signing key's id (`key_id`).
    - `signature`: the Ed25519 signature (64 bytes).
    """

    index: int
    tree_size: int
    root_hash: bytes
    timestamp: str
    key_id: str
    signature: bytes

    def signed_bytes(self) -> bytes:
        """The bytes the signature is made over."""
        return _signed_bytes(
            self.index, self.tree_size, self.root_hash, self.timestamp, self.key_id
        )

    def verify(self, public_key: Ed25519PublicKey) -> bool:
        """Whether the signature is valid under `public_key` (and names that key).

        **Arguments:**

        - `public_key`: the log's Ed25519 public key, obtained apart from the log.

        **Returns:** `True` when valid.
        """
        if self.key_id != key_id(public_key):
            return False
        try:
            public_key.verify(self.signature, self.signed_bytes())
        except InvalidSignature:
            return False
        return True

    def to_json(self) -> dict:
        """The head as a JSON object (the heads file's line), for publishing it."""
        return {
            "index": self.index,
            "key_id": self.key_id,
            "root_hash": self.root_hash.hex(),
            "signature": base64.b64encode(self.signature).decode("ascii"),
            "timestamp": self.timestamp,
            "tree_size": self.tree_size,
            "v": FORMAT_VERSION,
        }

    def line(self) -> bytes:
        """The head's line in the heads file (canonical JSON, no line end)."""
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, obj: object) -> SignedTreeHead:
        """A head from its JSON object (as `to_json` writes it); the signature is not checked.

        **Arguments:**

        - `obj`: the parsed JSON.

        **Returns:** the `SignedTreeHead`; `HeadError` when malformed.
        """
        if not isinstance(obj, dict) or set(obj) != _KEYS:
            raise HeadError(f"expected an object with the fields {sorted(_KEYS)}")
        if obj["v"] != FORMAT_VERSION:
            raise HeadError(f"expected format version {FORMAT_VERSION}, got {obj['v']!r}")
        for field in ("index", "tree_size"):
            v = obj[field]
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise HeadError(f"expected {field} as a non-negative integer, got {v!r}")
        for field in ("key_id", "root_hash"):
            if not isinstance(obj[field], str) or not _HEX64.fullmatch(obj[field]):
                raise HeadError(f"expected {field} as 64 lowercase hex digits")
        if not isinstance(obj["timestamp"], str) or not _TIME.fullmatch(obj["timestamp"]):
            raise HeadError("expected timestamp as YYYY-MM-DDTHH:MM:SS.ffffffZ")
        try:
            signature = base64.b64decode(str(obj["signature"]), validate=True)
        except binascii.Error:
            raise HeadError("the signature is not base64") from None
        if len(signature) != 64:
            raise HeadError(f"expected a 64-byte Ed25519 signature, got {len(signature)} bytes")
        return cls(
            index=obj["index"],
            tree_size=obj["tree_size"],
            root_hash=bytes.fromhex(obj["root_hash"]),
            timestamp=obj["timestamp"],
            key_id=obj["key_id"],
            signature=signature,
        )

    @classmethod
    def from_line(cls, line: bytes) -> SignedTreeHead:
        """A head from its line in the heads file (canonical form required).

        **Arguments:**

        - `line`: the bytes, without the line end.

        **Returns:** the `SignedTreeHead`; `HeadError` when malformed.
        """
        if len(line) > MAX_HEAD_BYTES:
            raise HeadError(f"the line has {len(line)} bytes, more than {MAX_HEAD_BYTES}")
        try:
            obj = json.loads(line.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise HeadError("the line is not ASCII JSON") from None
        head = cls.from_json(obj)
        if head.line() != line:
            raise HeadError("the line is not in canonical form (its bytes were edited)")
        return head


def _signed_bytes(index: int, tree_size: int, root: bytes, timestamp: str, kid: str) -> bytes:
    body = {
        "index": index,
        "key_id": kid,
        "root_hash": root.hex(),
        "timestamp": timestamp,
        "tree_size": tree_size,
        "v": FORMAT_VERSION,
    }
    return _SIGNED_PREFIX + canonical_json(body)


def sign_tree_head(
    private_key: Ed25519PrivateKey,
    *,
    index: int,
    tree_size: int,
    root_hash: bytes,
    at: dt.datetime | None = None,
) -> SignedTreeHead:
    """Sign a tree head.

    **Arguments:**

    - `private_key`: the log's Ed25519 private key.
    - `index`: the head's number in the heads file.
    - `tree_size`, `root_hash`: the tree it states.
    - `at`: its time (default: now, UTC).

    **Returns:** the `SignedTreeHead`.
    """
    if len(root_hash) != HASH_SIZE:
        raise ValueError(f"Expected a {HASH_SIZE}-byte root hash, got {len(root_hash)} bytes.")
    timestamp = format_time(at or dt.datetime.now(dt.UTC))
    kid = key_id(private_key.public_key())
    signature = private_key.sign(_signed_bytes(index, tree_size, root_hash, timestamp, kid))
    return SignedTreeHead(index, tree_size, bytes(root_hash), timestamp, kid, signature)


def generate_signing_key() -> Ed25519PrivateKey:
    """A new Ed25519 private key (RFC 8032), in memory.

    **Returns:** the key (`write_signing_key` saves a new one to files).
    """
    return Ed25519PrivateKey.generate()


def write_signing_key(
    path: str | os.PathLike,
    public_path: str | os.PathLike | None = None,
    *,
    password: bytes | None = None,
) -> Ed25519PrivateKey:
    """Create a new Ed25519 signing key: the private key as PKCS #8 PEM (mode `0600`) at
    `path`, and the public key as SubjectPublicKeyInfo PEM at `public_path` (default
    `path` with `.pub` appended) for auditors. Neither file may exist.

    **Arguments:**

    - `path`: the private key file to create.
    - `public_path`: the public key file to create.
    - `password`: encrypt the private key with it (PKCS #8 with the best available
      encryption), or `None` to rely on the file's permissions.

    **Returns:** the new private key.
    """
    path = Path(path)
    public_path = Path(public_path) if public_path is not None else Path(f"{path}.pub")
    if public_path.exists():
        raise FileExistsError(f"Refusing to overwrite the existing public key file {public_path}.")
    key = generate_signing_key()
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    write_secret_file(path, private_pem, what="audit signing key file")
    write_public_file(public_path, public_pem(key.public_key()), what="public key file")
    return key


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    """A public key as SubjectPublicKeyInfo PEM bytes."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_signing_key(
    path: str | os.PathLike, *, password: bytes | None = None
) -> Ed25519PrivateKey:
    """The Ed25519 private key of a PEM file (permissions checked: owner only).

    **Arguments:**

    - `path`: the private key file (`write_signing_key`).
    - `password`: its password, if it was written with one.

    **Returns:** the private key.
    """
    try:
        data = read_secret_file(path, what="audit signing key file")
    except SecretFileError as error:
        raise SigningKeyError(str(error)) from None
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError) as error:
        raise SigningKeyError(
            f"Cannot read the audit signing key {path}: {error} (expected a PKCS #8 PEM "
            "Ed25519 private key, as `twins audit keygen` writes)."
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(
            f"The audit signing key {path} is a {type(key).__name__}, not an Ed25519 key."
        )
    return key


def load_public_key(source: str | os.PathLike | bytes | Ed25519PublicKey) -> Ed25519PublicKey:
    """An Ed25519 public key: from a PEM file, PEM bytes, or as given.

    **Arguments:**

    - `source`: a path to a SubjectPublicKeyInfo PEM file, its bytes, or the key.

    **Returns:** the public key.
    """
    if isinstance(source, Ed25519PublicKey):
        return source
    if isinstance(source, bytes):
        data, where = source, "the PEM bytes given"
    else:
        try:
            data, where = Path(source).read_bytes(), str(source)
        except OSError as error:
            raise SigningKeyError(f"Cannot read the public key file {source}: {error}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as error:
        raise SigningKeyError(
            f"Cannot read a public key from {where}: {error} (expected a SubjectPublicKeyInfo "
            "PEM Ed25519 public key, the .pub file `twins audit keygen` writes)."
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"The public key in {where} is not an Ed25519 key.")
    return key
