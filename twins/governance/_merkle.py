"""The Merkle tree of RFC 9162 (Certificate Transparency 2.0, §2.1), over SHA-256.

For a list of `n` entries `D[n] = d_0 ... d_{n-1}` (byte strings):

    MTH({})     = SHA-256()                                        (the empty string's hash)
    MTH({d_0})  = SHA-256(0x00 || d_0)                             (a leaf)
    MTH(D[n])   = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))      (a node)

where `k` is the largest power of two smaller than `n`: the tree of a size that is not a
power of two is a full tree on the left and a smaller tree on the right. The prefixes 0x00
and 0x01 keep a leaf from ever passing for a node (second-preimage resistance).

Inclusion proofs (§2.1.3: the audit path of one entry) and consistency proofs (§2.1.4: a
tree of `m` entries is a prefix of a tree of `n`) are computed and verified with the
algorithms of those sections. `CompactTree` keeps the roots of the full subtrees of an
append-only list (at most 64 hashes), so the root after each append costs `O(log n)`.

Hashes are 32-byte `bytes` throughout.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""The root of the empty tree, `SHA-256()` (RFC 9162 §2.1.1)."""


def leaf_hash(data: bytes) -> bytes:
    """`SHA-256(0x00 || data)`: the hash of one leaf (RFC 9162 §2.1.1).

    **Arguments:**

    - `data`: the entry's bytes.

    **Returns:** 32 bytes.
    """
    return hashlib.sha256(b"\x00" + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """`SHA-256(0x01 || left || right)`: the hash of an inner node (RFC 9162 §2.1.1).

    **Arguments:**

    - `left`, `right`: the children's hashes (32 bytes each).

    **Returns:** 32 bytes.
    """
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than `n` (`n >= 2`)."""
    return 1 << ((n - 1).bit_length() - 1)


class CompactTree:
    """The roots of the full subtrees of an append-only list of leaves (RFC 9162 tree).

    Appending a leaf hash and asking for the root both cost `O(log n)`; the tree holds at
    most one hash per bit of its size.
    """

    __slots__ = ("_stack", "size")

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []  # (height, root), heights decreasing
        self.size = 0

    def append(self, leaf: bytes) -> None:
        """Append one leaf, given by its hash (`leaf_hash(entry)`)."""
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"Expected a {HASH_SIZE}-byte leaf hash, got {len(leaf)} bytes.")
        height, value = 0, bytes(leaf)
        while self._stack and self._stack[-1][0] == height:
            _, left = self._stack.pop()
            height, value = height + 1, node_hash(left, value)
        self._stack.append((height, value))
        self.size += 1

    def root(self) -> bytes:
        """The root hash of the leaves appended so far (`EMPTY_ROOT` for none).

        The full subtrees, left to right, are those of the binary digits of the size, which
        is the RFC's split: the right-most subtrees are joined first.
        """
        if not self._stack:
            return EMPTY_ROOT
        value = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            value = node_hash(left, value)
        return value

    def copy(self) -> CompactTree:
        """An independent copy."""
        other = CompactTree()
        other._stack = list(self._stack)
        other.size = self.size
        return other


def _subtree_root(leaves: Sequence[bytes], lo: int, hi: int) -> bytes:
    tree = CompactTree()
    for i in range(lo, hi):
        tree.append(leaves[i])
    return tree.root()


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The RFC 9162 root hash `MTH(D[n])` of a list of leaf hashes.

    **Arguments:**

    - `leaves`: the leaf hashes (`leaf_hash` of each entry), in order.

    **Returns:** 32 bytes (`EMPTY_ROOT` for an empty list).
    """
    return _subtree_root(leaves, 0, len(leaves))


def _check_size(leaves: Sequence[bytes], size: int | None, what: str) -> int:
    n = len(leaves) if size is None else size
    if not 0 <= n <= len(leaves):
        raise ValueError(f"Expected {what} between 0 and {len(leaves)} (the leaves), got {n}.")
    return n


def inclusion_path(
    leaves: Sequence[bytes], index: int, tree_size: int | None = None
) -> list[bytes]:
    """The audit path of leaf `index` in the tree of the first `tree_size` leaves:
    `PATH(m, D[n])` of RFC 9162 §2.1.3.1.

    **Arguments:**

    - `leaves`: the leaf hashes.
    - `index`: the leaf, `0 <= index < tree_size`.
    - `tree_size`: the tree's size (default: all leaves).

    **Returns:** the sibling hashes from the leaf up to the root.
    """
    n = _check_size(leaves, tree_size, "tree_size")
    if not 0 <= index < n:
        raise ValueError(f"Expected a leaf index in 0..{n - 1}, got {index}.")
    top_down = []
    lo, hi = 0, n
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:  # PATH(m, D[0:k]) : MTH(D[k:n])
            top_down.append(_subtree_root(leaves, lo + k, hi))
            hi = lo + k
        else:  # PATH(m - k, D[k:n]) : MTH(D[0:k])
            top_down.append(_subtree_root(leaves, lo, lo + k))
            lo = lo + k
    return top_down[::-1]


def consistency_path(
    leaves: Sequence[bytes], old_size: int, new_size: int | None = None
) -> list[bytes]:
    """The proof that the tree of the first `old_size` leaves is a prefix of the tree of
    the first `new_size`: `PROOF(m, D[n]) = SUBPROOF(m, D[n], true)` of RFC 9162 §2.1.4.1.

    **Arguments:**

    - `leaves`: the leaf hashes.
    - `old_size`: `m`, `0 <= m <= n`.
    - `new_size`: `n` (default: all leaves).

    **Returns:** the proof's hashes (empty when `m == n` or `m == 0`).
    """
    n = _check_size(leaves, new_size, "new_size")
    if not 0 <= old_size <= n:
        raise ValueError(f"Expected old_size between 0 and new_size {n}, got {old_size}.")
    if old_size in (0, n):
        return []
    top_down = []
    lo, hi, m, whole = 0, n, old_size, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:  # SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
            top_down.append(_subtree_root(leaves, lo + k, hi))
            hi = lo + k
        else:  # SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
            top_down.append(_subtree_root(leaves, lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    if not whole:  # SUBPROOF(m, D[m], false) = {MTH(D[m])}
        top_down.append(_subtree_root(leaves, lo, hi))
    return top_down[::-1]


def _hashes_ok(values: Sequence[bytes]) -> bool:
    return all(isinstance(v, bytes) and len(v) == HASH_SIZE for v in values)


def verify_inclusion(
    leaf_index: int, tree_size: int, leaf: bytes, path: Sequence[bytes], root: bytes
) -> bool:
    """Whether `path` proves that `leaf` is leaf `leaf_index` of the tree of `tree_size`
    leaves with root hash `root`: the algorithm of RFC 9162 §2.1.3.2.

    **Arguments:**

    - `leaf_index`, `tree_size`: the leaf's position and the tree's size.
    - `leaf`: the leaf's hash (`leaf_hash(entry)`).
    - `path`: the audit path (`inclusion_path`).
    - `root`: the tree's root hash, from a signed tree head.

    **Returns:** `True` when the proof holds.
    """
    if not (0 <= leaf_index < tree_size) or not _hashes_ok([leaf, root, *path]):
        return False
    fn, sn = leaf_index, tree_size - 1
    r = leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and hmac.compare_digest(r, root)


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, path: Sequence[bytes]
) -> bool:
    """Whether `path` proves that the tree of `old_size` leaves with root `old_root` is a
    prefix of the tree of `new_size` leaves with root `new_root`: the algorithm of RFC 9162
    §2.1.4.2, with its two edge cases made explicit (equal sizes: an empty proof and equal
    roots; an empty old tree: an empty proof and the empty root).

    **Arguments:**

    - `old_size`, `new_size`: the two sizes, `old_size <= new_size`.
    - `old_root`, `new_root`: their root hashes, from signed tree heads.
    - `path`: the proof (`consistency_path`).

    **Returns:** `True` when the proof holds.
    """
    if not (0 <= old_size <= new_size) or not _hashes_ok([old_root, new_root, *path]):
        return False
    if old_size == new_size:
        return not path and hmac.compare_digest(old_root, new_root)
    if old_size == 0:
        return not path and hmac.compare_digest(old_root, EMPTY_ROOT)
    if not path:
        return False
    proof = list(path)
    if old_size & (old_size - 1) == 0:  # an exact power of two: the old root is a node
        proof.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and hmac.compare_digest(fr, old_root) and hmac.compare_digest(sr, new_root)
