"""The RFC 9162 Merkle tree against a brute-force computation of the RFC's definitions.

`_mth`, `_path` and `_subproof` below are the recursive definitions of RFC 9162 §2.1.1,
§2.1.3.1 and §2.1.4.1 written out directly on the entries (not on leaf hashes), for every
tree size 1..64, every leaf and every pair of sizes.
"""

from __future__ import annotations

import functools
import hashlib
import random

import pytest

from twins.governance import (
    EMPTY_ROOT,
    CompactTree,
    consistency_path,
    inclusion_path,
    leaf_hash,
    merkle_root,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

N = 64
DATA = tuple(f"entry {i}".encode() * (i % 3 + 1) for i in range(N))


def _sha(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def _k(n: int) -> int:
    """The largest power of two smaller than n (n > 1), by counting up."""
    k = 1
    while 2 * k < n:
        k *= 2
    return k


@functools.cache
def _mth(lo: int, hi: int) -> bytes:
    n = hi - lo
    if n == 0:
        return _sha(b"")
    if n == 1:
        return _sha(b"\x00" + DATA[lo])
    k = _k(n)
    return _sha(b"\x01" + _mth(lo, lo + k) + _mth(lo + k, hi))


def _path(m: int, lo: int, hi: int) -> list[bytes]:
    n = hi - lo
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*_path(m, lo, lo + k), _mth(lo + k, hi)]
    return [*_path(m - k, lo + k, hi), _mth(lo, lo + k)]


def _subproof(m: int, lo: int, hi: int, whole: bool) -> list[bytes]:
    n = hi - lo
    if m == n:
        return [] if whole else [_mth(lo, hi)]
    k = _k(n)
    if m <= k:
        return [*_subproof(m, lo, lo + k, whole), _mth(lo + k, hi)]
    return [*_subproof(m - k, lo + k, hi, False), _mth(lo, lo + k)]


LEAVES = [leaf_hash(d) for d in DATA]


def test_hashes_and_empty_tree():
    assert EMPTY_ROOT == _sha(b"") == merkle_root([])
    assert leaf_hash(b"abc") == _sha(b"\x00abc")
    assert node_hash(b"a" * 32, b"b" * 32) == _sha(b"\x01" + b"a" * 32 + b"b" * 32)


def test_roots_for_all_sizes_and_the_compact_tree():
    tree = CompactTree()
    assert tree.root() == EMPTY_ROOT
    for n in range(1, N + 1):
        tree.append(LEAVES[n - 1])
        assert merkle_root(LEAVES[:n]) == _mth(0, n), n
        assert tree.size == n and tree.root() == _mth(0, n), n
    copy = tree.copy()
    copy.append(LEAVES[0])
    assert tree.size == N and copy.size == N + 1


def test_inclusion_proofs_for_all_sizes_and_leaves():
    cases = 0
    for n in range(1, N + 1):
        root = _mth(0, n)
        for m in range(n):
            proof = inclusion_path(LEAVES, m, n)
            assert proof == _path(m, 0, n), (m, n)
            assert verify_inclusion(m, n, LEAVES[m], proof, root)
            # The wrong leaf, index or root does not verify (the size is bound to the
            # root by the signed head).
            assert not verify_inclusion(m, n, LEAVES[(m + 1) % N], proof, root)
            assert not verify_inclusion(m, n, LEAVES[m], proof, _mth(0, n - 1))
            if n > 1:
                assert not verify_inclusion((m + 1) % n, n, LEAVES[m], proof, root)
            cases += 1
    assert cases == N * (N + 1) // 2


def test_consistency_proofs_for_all_pairs_of_sizes():
    cases = 0
    for n in range(1, N + 1):
        for m in range(1, n + 1):
            proof = consistency_path(LEAVES, m, n)
            assert proof == _subproof(m, 0, n, True), (m, n)
            assert verify_consistency(m, n, _mth(0, m), _mth(0, n), proof), (m, n)
            if m < n:
                assert not verify_consistency(m, n, _mth(0, m), _mth(0, n - 1), proof)
                assert not verify_consistency(m, n, _mth(1, m + 1), _mth(0, n), proof)
            cases += 1
    assert cases == N * (N + 1) // 2


def test_edge_cases_of_consistency():
    root = _mth(0, 5)
    assert consistency_path(LEAVES, 0, 5) == []
    assert verify_consistency(0, 5, EMPTY_ROOT, root, [])
    assert not verify_consistency(0, 5, root, root, [])
    assert verify_consistency(5, 5, root, root, [])
    assert not verify_consistency(5, 5, root, _mth(0, 4), [])
    assert not verify_consistency(5, 5, root, root, [root])
    assert not verify_consistency(6, 5, root, root, [])
    assert not verify_consistency(3, 5, _mth(0, 3), root, [])  # m < n needs a proof
    with pytest.raises(ValueError):
        consistency_path(LEAVES, 6, 5)
    with pytest.raises(ValueError):
        inclusion_path(LEAVES, 5, 5)
    with pytest.raises(ValueError):
        inclusion_path(LEAVES, 0, N + 1)


def test_any_changed_proof_hash_is_refused():
    rng = random.Random(9162)
    for _ in range(300):
        n = rng.randint(2, N)
        m = rng.randrange(n)
        proof = inclusion_path(LEAVES, m, n)
        i = rng.randrange(len(proof))
        bad = [*proof]
        flipped = bytearray(bad[i])
        flipped[rng.randrange(32)] ^= 1 << rng.randrange(8)
        bad[i] = bytes(flipped)
        assert not verify_inclusion(m, n, LEAVES[m], bad, _mth(0, n))
        assert not verify_inclusion(m, n, LEAVES[m], proof[:-1], _mth(0, n))
        assert not verify_inclusion(m, n, LEAVES[m], [*proof, proof[0]], _mth(0, n))
        old = rng.randint(1, n - 1)
        cproof = consistency_path(LEAVES, old, n)
        j = rng.randrange(len(cproof))
        cbad = [*cproof]
        cbad[j] = _sha(cbad[j])
        assert not verify_consistency(old, n, _mth(0, old), _mth(0, n), cbad)
        assert not verify_consistency(old, n, _mth(0, old), _mth(0, n), cproof[1:])
    assert not verify_inclusion(0, 1, b"short", [], _mth(0, 1))
