"""A fuzzer of single edits to an audit log and its heads: every one is detected.

A log of 9 entries (5 single appends, a batch of 3, one more append: 7 signed heads) is
edited once per case, at random (seeded): byte flips, deleted, duplicated, swapped and
inserted entries, entries rewritten with a recomputed hash chain, garbage lines,
truncation, and edits of the heads file (flips, deletions, duplicates, swaps, truncation,
heads re-signed with another key). `verify` must report every one, and name the first
bad entry: exactly where a head follows each append, within the batch's range inside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path

import pytest

from twins.governance import (
    AuditAction,
    AuditEvent,
    AuditLog,
    MasterKey,
    Pseudonymizer,
    SignedTreeHead,
    canonical_json,
    generate_signing_key,
    heads_path,
    key_id,
    leaf_hash,
    merkle_root,
    verify,
)

KEY = generate_signing_key()
PUBLIC = KEY.public_key()
PS = Pseudonymizer("audit", MasterKey(bytes(range(32))))
BATCH = range(5, 8)  # entries written in one batch, under one head


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[bytes, bytes]:
    path = tmp_path_factory.mktemp("fuzz") / "audit.jsonl"
    log = AuditLog(path, KEY)
    for i in range(BATCH.start):
        log.append(
            AuditAction.FORECAST,
            actor="svc",
            subject=PS.pseudonym(f"p{i}"),
            details={"i": i, "dose": 250.0 * i, "note": "q12h"},
        )
    log.append_many(
        AuditEvent(AuditAction.EXPORT, "svc", PS.pseudonym(f"p{i}"), {"i": i}) for i in BATCH
    )
    log.append(AuditAction.TRAINING_ROUND, actor="svc", details={"i": BATCH.stop})
    assert verify(path, PUBLIC).ok
    return path.read_bytes(), heads_path(path).read_bytes()


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")[:-1]


def _join(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def _rechain(lines: list[bytes], start: int) -> list[bytes]:
    """Recompute `prev` and `hash` from entry `start` on, as a forger would."""
    out = list(lines)
    prev = json.loads(out[start - 1])["hash"] if start else "0" * 64
    for i in range(start, len(out)):
        obj = json.loads(out[i])
        obj["prev"] = prev
        del obj["hash"]
        obj["hash"] = prev = hashlib.sha256(canonical_json(obj)).hexdigest()
        out[i] = canonical_json(obj)
    return out


def _forged_entry(lines: list[bytes], k: int, rng: random.Random) -> bytes:
    """A well-formed entry numbered k, chained to entry k - 1, with new details."""
    obj = json.loads(lines[max(k - 1, 0)])
    obj.update(seq=k, prev=json.loads(lines[k - 1])["hash"] if k else "0" * 64)
    obj["details"] = {"forged": rng.randrange(10**6)}
    del obj["hash"]
    obj["hash"] = hashlib.sha256(canonical_json(obj)).hexdigest()
    return canonical_json(obj)


def _resign(lines: list[bytes], heads: list[bytes], key) -> list[bytes]:
    """Heads for the same sizes over `lines`, signed with `key`."""
    out = []
    for line in heads:
        head = SignedTreeHead.from_line(line)
        root = merkle_root([leaf_hash(x) for x in lines[: head.tree_size]])
        draft = dataclasses.replace(head, root_hash=root, key_id=key_id(key.public_key()))
        out.append(dataclasses.replace(draft, signature=key.sign(draft.signed_bytes())).line())
    return out


def _edit(rng: random.Random, log: bytes, heads: bytes) -> tuple[str, bytes, bytes, int | None]:
    """One random single edit: (kind, log, heads, the first bad entry or None)."""
    lines, hlines = _lines(log), _lines(heads)
    n = len(lines)
    kind = rng.choice(
        ["flip"] * 6
        + ["delete", "duplicate", "swap", "insert", "rewrite", "garbage", "truncate"] * 2
        + ["head-flip"] * 3
        + ["head-delete", "head-duplicate", "head-swap", "head-truncate", "resign"]
    )
    if kind == "flip":
        pos = rng.randrange(len(log))
        data = bytearray(log)
        data[pos] ^= rng.randrange(1, 256)
        return kind, bytes(data), heads, log[:pos].count(b"\n")
    if kind == "delete":
        k = rng.randrange(n)
        return kind, _join(lines[:k] + lines[k + 1 :]), heads, k
    if kind == "duplicate":
        k = rng.randrange(n)
        return kind, _join(lines[: k + 1] + lines[k:]), heads, k + 1
    if kind == "swap":
        k = rng.randrange(n - 1)
        swapped = [*lines[:k], lines[k + 1], lines[k], *lines[k + 2 :]]
        return kind, _join(swapped), heads, k
    if kind == "insert":
        # Not at the end: a well-chained entry appended there without a head is what a
        # crash between writing and signing leaves (reported, but as unsigned; see below).
        k = rng.randrange(n)
        return kind, _join([*lines[:k], _forged_entry(lines, k, rng), *lines[k:]]), heads, k
    if kind == "rewrite":
        k = rng.randrange(n)
        obj = json.loads(lines[k])
        obj["details"] = {**obj["details"], "i": -1}
        changed = [*lines[:k], canonical_json(obj), *lines[k + 1 :]]
        return kind, _join(_rechain(changed, k)), heads, k
    if kind == "garbage":
        k = rng.randrange(n + 1)
        junk = bytes(rng.randrange(32, 127) for _ in range(rng.randint(1, 80)))
        return kind, _join([*lines[:k], junk, *lines[k:]]), heads, k
    if kind == "truncate":
        t = rng.randrange(len(log))
        return kind, log[:t], heads, log[:t].count(b"\n")
    if kind == "head-flip":
        pos = rng.randrange(len(heads))
        data = bytearray(heads)
        data[pos] ^= rng.randrange(1, 256)
        return kind, log, bytes(data), None
    if kind == "head-delete":
        j = rng.randrange(len(hlines))
        return kind, log, _join(hlines[:j] + hlines[j + 1 :]), None
    if kind == "head-duplicate":
        j = rng.randrange(len(hlines))
        return kind, log, _join(hlines[: j + 1] + hlines[j:]), None
    if kind == "head-swap":
        j = rng.randrange(len(hlines) - 1)
        return kind, log, _join([*hlines[:j], hlines[j + 1], hlines[j], *hlines[j + 2 :]]), None
    if kind == "head-truncate":
        return kind, log, heads[: rng.randrange(len(heads))], None
    # resign: rewrite an entry, recompute the chain and the heads, sign with another key.
    k = rng.randrange(n)
    obj = json.loads(lines[k])
    obj["actor"] = "intruder"
    changed = _rechain([*lines[:k], canonical_json(obj), *lines[k + 1 :]], k)
    return kind, _join(changed), _join(_resign(changed, hlines, FORGER)), None


FORGER = generate_signing_key()
CASES = 2000


def test_every_single_edit_is_detected(pristine, tmp_path: Path):
    log0, heads0 = pristine
    path = tmp_path / "audit.jsonl"
    hp = heads_path(path)
    rng = random.Random(20250316)
    seen: dict[str, int] = {}
    exact = 0
    for case in range(CASES):
        kind, log, heads, first = _edit(rng, log0, heads0)
        if (log, heads) == (log0, heads0):
            continue  # a swap of equal bytes: no edit
        seen[kind] = seen.get(kind, 0) + 1
        path.write_bytes(log)
        hp.write_bytes(heads)
        report = verify(path, PUBLIC)
        where = f"case {case}: {kind}, expected first bad entry {first}\n{report.summary()}"
        assert not report.ok, where
        crash_like = kind == "head-truncate" or (
            kind == "head-delete" and heads == _join(_lines(heads0)[:-1])
        )
        assert report.tampered or crash_like, where
        if first is None:
            continue
        bad = report.first_bad
        assert bad is not None and bad.seq is not None, where
        last = bad.last_seq if bad.last_seq is not None else bad.seq
        assert bad.seq <= first <= last, where
        if first not in BATCH or kind == "truncate":
            assert bad.seq == first and last == first, where  # a head after each append
            assert bad.line == first + 1, where
        exact += bad.seq == last
    assert sum(seen.values()) > 0.99 * CASES
    assert set(seen) >= {"flip", "delete", "insert", "rewrite", "truncate", "head-flip", "resign"}
    assert exact > 0.7 * sum(v for k, v in seen.items() if not k.startswith(("head", "resign")))


def test_a_forged_entry_appended_without_a_head_is_reported_as_unsigned(pristine, tmp_path):
    log0, heads0 = pristine
    path = tmp_path / "audit.jsonl"
    lines = _lines(log0)
    path.write_bytes(_join([*lines, _forged_entry(lines, len(lines), random.Random(1))]))
    heads_path(path).write_bytes(heads0)
    report = verify(path, PUBLIC)
    assert not report.ok and not report.tampered
    assert [(p.kind.value, p.seq) for p in report.problems] == [("unsigned-entries", len(lines))]


def test_pristine_log_verifies_and_the_fuzzer_files_round_trip(pristine, tmp_path):
    log0, heads0 = pristine
    path = tmp_path / "audit.jsonl"
    path.write_bytes(log0)
    heads_path(path).write_bytes(heads0)
    assert verify(path, PUBLIC).ok
    # The forger's helpers make well-formed files: only the signatures give them away.
    lines = _lines(log0)
    assert _rechain(lines, 0) == lines
    resigned = _resign(lines, _lines(heads0), KEY)
    assert [SignedTreeHead.from_line(h).root_hash for h in resigned] == [
        SignedTreeHead.from_line(h).root_hash for h in _lines(heads0)
    ]
