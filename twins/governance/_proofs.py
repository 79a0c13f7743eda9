"""Inclusion and consistency proofs for an auditor (RFC 9162 §2.1.3 and §2.1.4).

An auditor who holds a signed tree head (from the heads file, or published elsewhere)
and the log's public key can check, without reading the rest of the log:

- that one entry is in the log as it was when the head was signed (`prove_inclusion` and
  `verify_inclusion_proof`: the entry's line and about `log2(n)` hashes);
- that a later head extends an earlier one, so that no entry covered by the earlier head
  was changed or removed since (`prove_consistency` and `verify_consistency_proof`).

Proofs are made from the log file by whoever keeps it (no key is needed to make them) and
travel as JSON (`to_json`, `from_json`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ._entries import EntryError, parse_entry
from ._heads import SignedTreeHead, load_public_key
from ._merkle import (
    HASH_SIZE,
    consistency_path,
    inclusion_path,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from ._verify import read_heads


def _hashes_from_json(values: object, what: str) -> tuple[bytes, ...]:
    if not isinstance(values, list):
        raise ValueError(f"Expected {what} as a list of hex hashes.")
    out = []
    for v in values:
        if not isinstance(v, str) or len(v) != 2 * HASH_SIZE:
            raise ValueError(f"Expected {what} as {2 * HASH_SIZE}-digit hex hashes, got {v!r}.")
        out.append(bytes.fromhex(v))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class InclusionProof:
    """Entry `seq` is in the tree of the first `tree_size` entries.

    **Arguments:**

    - `seq`: the entry's number (its leaf index).
    - `tree_size`: the size of the tree (that of the signed head it is checked against).
    - `entry`: the entry's line (canonical JSON bytes; the leaf).
    - `path`: the audit path, from the leaf up (RFC 9162 §2.1.3.1).
    """

    seq: int
    tree_size: int
    entry: bytes
    path: tuple[bytes, ...]

    def to_json(self) -> dict:
        """As JSON values (hashes in hex, the entry as its text)."""
        return {
            "seq": self.seq,
            "tree_size": self.tree_size,
            "entry": self.entry.decode("ascii"),
            "path": [h.hex() for h in self.path],
        }

    @classmethod
    def from_json(cls, obj: dict) -> InclusionProof:
        """From `to_json`'s form."""
        return cls(
            seq=int(obj["seq"]),
            tree_size=int(obj["tree_size"]),
            entry=str(obj["entry"]).encode("ascii"),
            path=_hashes_from_json(obj["path"], "path"),
        )


@dataclasses.dataclass(frozen=True)
class ConsistencyProof:
    """The tree of `old_size` entries is a prefix of the tree of `new_size`.

    **Arguments:**

    - `old_size`, `new_size`: the two tree sizes.
    - `path`: the proof's hashes (RFC 9162 §2.1.4.1).
    """

    old_size: int
    new_size: int
    path: tuple[bytes, ...]

    def to_json(self) -> dict:
        """As JSON values (hashes in hex)."""
        return {
            "old_size": self.old_size,
            "new_size": self.new_size,
            "path": [h.hex() for h in self.path],
        }

    @classmethod
    def from_json(cls, obj: dict) -> ConsistencyProof:
        """From `to_json`'s form."""
        return cls(
            old_size=int(obj["old_size"]),
            new_size=int(obj["new_size"]),
            path=_hashes_from_json(obj["path"], "path"),
        )


def _lines(log_path: str | os.PathLike, size: int) -> list[bytes]:
    lines = Path(log_path).read_bytes().split(b"\n")[:-1]
    if len(lines) < size:
        raise ValueError(
            f"The log {log_path} holds {len(lines)} complete entries, fewer than the tree size "
            f"{size} asked for."
        )
    return lines[:size]


def _latest_size(log_path: str | os.PathLike) -> int:
    heads = read_heads(log_path)
    if not heads:
        raise ValueError(f"The log {log_path} has no signed tree head yet.")
    return heads[-1].tree_size


def prove_inclusion(
    log_path: str | os.PathLike, seq: int, *, tree_size: int | None = None
) -> InclusionProof:
    """The inclusion proof of entry `seq` in the tree of the first `tree_size` entries.

    **Arguments:**

    - `log_path`: the log.
    - `seq`: the entry.
    - `tree_size`: the tree (default: that of the latest head in `LOG.heads`).

    **Returns:** an `InclusionProof`.
    """
    size = _latest_size(log_path) if tree_size is None else tree_size
    lines = _lines(log_path, size)
    leaves = [leaf_hash(line) for line in lines]
    path = inclusion_path(leaves, seq, size)
    return InclusionProof(seq=seq, tree_size=size, entry=lines[seq], path=tuple(path))


def prove_consistency(
    log_path: str | os.PathLike, old_size: int, new_size: int | None = None
) -> ConsistencyProof:
    """The consistency proof between the trees of the first `old_size` and `new_size`
    entries.

    **Arguments:**

    - `log_path`: the log.
    - `old_size`: the earlier tree's size (that of a head the auditor kept).
    - `new_size`: the later one (default: that of the latest head in `LOG.heads`).

    **Returns:** a `ConsistencyProof`.
    """
    size = _latest_size(log_path) if new_size is None else new_size
    leaves = [leaf_hash(line) for line in _lines(log_path, size)]
    path = consistency_path(leaves, old_size, size)
    return ConsistencyProof(old_size=old_size, new_size=size, path=tuple(path))


def verify_inclusion_proof(
    proof: InclusionProof,
    head: SignedTreeHead,
    public_key: Ed25519PublicKey | str | os.PathLike | bytes,
) -> bool:
    """Whether `proof` shows its entry in the tree that `head` signs.

    Checks the head's Ed25519 signature, that the proof is for the head's tree size, that
    the entry is well formed with the number the proof gives it, and the audit path
    (RFC 9162 §2.1.3.2).

    **Arguments:**

    - `proof`: an `InclusionProof`.
    - `head`: a `SignedTreeHead` the auditor trusts.
    - `public_key`: the log's public key (or a PEM file or bytes of it).

    **Returns:** `True` when all hold.
    """
    key = load_public_key(public_key)
    if not head.verify(key) or proof.tree_size != head.tree_size:
        return False
    try:
        if parse_entry(proof.entry).seq != proof.seq:
            return False
    except EntryError:
        return False
    return verify_inclusion(
        proof.seq, proof.tree_size, leaf_hash(proof.entry), proof.path, head.root_hash
    )


def verify_consistency_proof(
    proof: ConsistencyProof,
    old_head: SignedTreeHead,
    new_head: SignedTreeHead,
    public_key: Ed25519PublicKey | str | os.PathLike | bytes,
) -> bool:
    """Whether `proof` shows that `new_head`'s tree extends `old_head`'s.

    Checks both heads' signatures, that the proof's sizes are theirs, and the proof
    (RFC 9162 §2.1.4.2).

    **Arguments:**

    - `proof`: a `ConsistencyProof`.
    - `old_head`, `new_head`: signed heads the auditor holds, the older first.
    - `public_key`: the log's public key (or a PEM file or bytes of it).

    **Returns:** `True` when all hold.
    """
    key = load_public_key(public_key)
    if not (old_head.verify(key) and new_head.verify(key)):
        return False
    if (proof.old_size, proof.new_size) != (old_head.tree_size, new_head.tree_size):
        return False
    return verify_consistency(
        proof.old_size, proof.new_size, old_head.root_hash, new_head.root_hash, proof.path
    )
