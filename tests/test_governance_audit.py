"""The tamper-evident audit log: round trip, raw identifiers refused, keys, crashes
(torn lines, a process killed mid-append), concurrency, proofs for an auditor."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from twins.governance import (
    GENESIS_HASH,
    RECOVERY_ACTOR,
    AuditAction,
    AuditEvent,
    AuditLog,
    AuditLogError,
    ConsistencyProof,
    InclusionProof,
    MasterKey,
    NotAPseudonymError,
    ProblemKind,
    Pseudonymizer,
    canonical_json,
    generate_signing_key,
    heads_path,
    key_id,
    load_public_key,
    load_signing_key,
    prove_consistency,
    prove_inclusion,
    read_entries,
    read_heads,
    verify,
    verify_consistency_proof,
    verify_inclusion_proof,
    write_signing_key,
)

ROOT = Path(__file__).resolve().parents[1]
KEY = generate_signing_key()
PS = Pseudonymizer("audit", MasterKey(bytes(range(32))))

# Run governance code in a fresh interpreter without importing the rest of `twins` (and
# JAX): `twins` is a bare namespace there, which also shows that the room needs nothing
# else of the package.
PRELUDE = f"""
import sys, types
pkg = types.ModuleType("twins"); pkg.__path__ = [{str(ROOT / "twins")!r}]
sys.modules["twins"] = pkg
from twins.governance import *
"""


def _run(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def _fill(path: Path, n: int, key=KEY) -> AuditLog:
    log = AuditLog(path, key)
    actions = [a for a in AuditAction if a is not AuditAction.LOG_RECOVERED]
    for i in range(n):
        log.append(
            actions[i % len(actions)],
            actor=f"svc-{i % 2}",
            subject=PS.pseudonym(f"MRN-{i:06d}") if i % 3 else None,
            details={"i": i, "dose_mg": 500.0 + i, "drug": "vancomycin", "tags": ["a", i]},
        )
    return log


def test_governance_imports_nothing_of_the_rest():
    result = _run(
        """
        bad = sorted(m for m in sys.modules if m.split(".")[0] in
                     ("jax", "jaxlib", "numpy", "pkpd", "calibration", "equinox", "pandas"))
        mine = sorted(m for m in sys.modules if m.startswith("twins."))
        print(bad, all(m.startswith("twins.governance") for m in mine))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] True"


def test_round_trip(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = _fill(path, 12)
    assert log.size == 12 and log.recovered is None
    entries = read_entries(path)
    assert [e.seq for e in entries] == list(range(12))
    assert entries[0].prev == GENESIS_HASH
    assert all(b.prev == a.hash for a, b in itertools.pairwise(entries))
    assert entries[4].details == {"i": 4, "dose_mg": 504.0, "drug": "vancomycin", "tags": ["a", 4]}
    assert entries[4].subject == PS.pseudonym("MRN-000004") and entries[3].subject is None
    assert entries[0].datetime.tzinfo is not None
    assert {e.action for e in entries} >= {AuditAction.DATA_ACCESS, AuditAction.TRAINING_ROUND}
    lines = path.read_bytes().split(b"\n")[:-1]
    assert all(canonical_json(json.loads(line)) == line for line in lines)
    heads = read_heads(path)
    assert [h.tree_size for h in heads] == list(range(1, 13))  # one head after each append
    assert [h.index for h in heads] == list(range(12))
    assert all(h.verify(KEY.public_key()) for h in heads)
    assert log.head == heads[-1]
    report = verify(path, KEY.public_key())
    assert report.ok and not report.tampered and report.first_bad is None
    assert report.entries == 12 and report.signed_size == 12 and report.heads_count == 12
    assert "OK" in report.summary()
    assert os.stat(path).st_mode & 0o777 == 0o600
    # Raw identifiers never reach the file.
    text = path.read_text()
    assert "MRN-" not in text
    # A batch: several entries, one head.
    events = [AuditEvent(AuditAction.EXPORT, "svc", PS.pseudonym(f"x{i}")) for i in range(3)]
    written = log.append_many(events)
    assert [e.seq for e in written] == [12, 13, 14]
    assert [h.tree_size for h in read_heads(path)][-2:] == [12, 15]
    assert log.append_many([]) == [] and len(read_heads(path)) == 13
    assert verify(path, KEY.public_key()).ok


def test_raw_identifiers_and_bad_entries_are_refused(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", KEY)
    with pytest.raises(NotAPseudonymError) as info:
        log.append(AuditAction.FORECAST, actor="svc", subject="MRN-004711")
    assert "MRN-004711" not in str(info.value)
    for details in (
        {"patient": "MRN-004711"},
        {"patients": [PS.pseudonym("a"), "MRN-004711"]},
        {"nested": {"Patient_ID": "004711"}},
        {"identifier": 4711},
    ):
        with pytest.raises(NotAPseudonymError):
            log.append(AuditAction.EXPORT, actor="svc", details=details)
    for details in ({"name": "Jane Doe"}, {"x": {"birthDate": "1950-01-01"}}, {"DOB": None}):
        with pytest.raises(ValueError, match="personal data"):
            log.append(AuditAction.EXPORT, actor="svc", details=details)
    for details in ({"x": float("nan")}, {"x": {1, 2}}, {"x": 2**60}, {1: "a"}):
        with pytest.raises((TypeError, ValueError)):
            log.append(AuditAction.EXPORT, actor="svc", details=details)
    with pytest.raises(TypeError, match="AuditAction"):
        log.append("export", actor="svc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="actor"):
        log.append(AuditAction.EXPORT, actor="")
    with pytest.raises(ValueError, match="written by the log itself"):
        log.append(AuditAction.LOG_RECOVERED, actor="svc")
    with pytest.raises(ValueError, match="at most"):
        log.append(AuditAction.EXPORT, actor="svc", details={"x": "a" * 70_000})
    # Pseudonyms are accepted, as objects and as text read back.
    p = PS.pseudonym("MRN-004711")
    log.append(AuditAction.EXPORT, actor="svc", subject=str(p), details={"patients": [p, str(p)]})
    assert log.size == 1 and verify(log.path, KEY.public_key()).ok


def test_signing_keys_and_the_wrong_public_key(tmp_path):
    private = tmp_path / "audit.key"
    key = write_signing_key(private)
    assert os.stat(private).st_mode & 0o777 == 0o600
    public = load_public_key(tmp_path / "audit.key.pub")
    assert key_id(public) == key_id(key.public_key())
    loaded = load_signing_key(private)
    path = tmp_path / "audit.jsonl"
    _fill(path, 3, key=loaded)
    assert verify(path, tmp_path / "audit.key.pub").ok
    other = generate_signing_key()
    report = verify(path, other.public_key())
    assert not report.ok and report.tampered
    assert [p.kind for p in report.problems] == [ProblemKind.WRONG_KEY]
    with pytest.raises(AuditLogError, match="wrong-key"):
        AuditLog(path, other)
    os.chmod(private, 0o644)
    with pytest.raises(Exception, match="chmod 600"):
        load_signing_key(private)
    with pytest.raises(FileExistsError):
        write_signing_key(tmp_path / "other.key", tmp_path / "audit.key.pub")
    with pytest.raises(TypeError):
        AuditLog(path, other.public_key())  # type: ignore[arg-type]
    encrypted = write_signing_key(tmp_path / "enc.key", password=b"s3cret")
    assert key_id(load_signing_key(tmp_path / "enc.key", password=b"s3cret").public_key()) == (
        key_id(encrypted.public_key())
    )


def test_a_tampered_log_is_refused_by_the_writer(tmp_path):
    path = tmp_path / "audit.jsonl"
    _fill(path, 5)
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"i":2', b'"i":7')
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(AuditLogError) as info:
        AuditLog(path, KEY)
    assert info.value.report is not None and info.value.report.first_bad.seq == 2
    assert "entry 2" in str(info.value)


def test_torn_last_line_is_reported_moved_aside_and_recovered(tmp_path):
    path = tmp_path / "audit.jsonl"
    _fill(path, 4)
    whole = _fill(tmp_path / "other.jsonl", 5).path.read_bytes().split(b"\n")[4]
    torn = whole[: len(whole) // 2]
    with open(path, "ab") as f:
        f.write(torn)
    report = verify(path, KEY.public_key())
    assert not report.ok and report.torn and not report.tampered
    assert [p.kind for p in report.problems] == [ProblemKind.TORN_TAIL]
    assert report.problems[0].line == 5 and report.first_bad is None
    assert "INCOMPLETE" in report.summary()
    log = AuditLog(path, KEY)
    assert log.recovered is not None and log.recovered.action is AuditAction.LOG_RECOVERED
    assert log.recovered.actor == RECOVERY_ACTOR and log.recovered.seq == 4
    info = log.recovered.details["torn_entry"]
    assert info["line"] == 5 and info["bytes"] == len(torn)
    aside = tmp_path / info["saved_as"]
    assert aside.read_bytes() == torn  # kept, not deleted
    log.append(AuditAction.FORECAST, actor="svc")
    report = verify(path, KEY.public_key())
    assert report.ok and report.recovered == (4,) and report.entries == 6


def test_a_complete_entry_without_its_line_end_is_a_torn_tail(tmp_path):
    path = tmp_path / "audit.jsonl"
    _fill(path, 3)
    whole = _fill(tmp_path / "other.jsonl", 4).path.read_bytes().split(b"\n")[3]
    with open(path, "ab") as f:
        f.write(whole)  # killed just before the newline: not covered by a head
    report = verify(path, KEY.public_key())
    assert [p.kind for p in report.problems] == [ProblemKind.TORN_TAIL]
    assert AuditLog(path, KEY).recovered is not None
    assert verify(path, KEY.public_key()).ok


def test_torn_heads_line_and_unsigned_entries_are_recovered(tmp_path):
    path = tmp_path / "audit.jsonl"
    _fill(path, 4)
    hp = heads_path(path)
    lines = hp.read_bytes().split(b"\n")[:-1]
    hp.write_bytes(b"\n".join(lines[:2]) + b"\n" + lines[2][:40])  # heads 3, 4 lost, 3 torn
    report = verify(path, KEY.public_key())
    assert not report.tampered
    assert {p.kind for p in report.problems} == {
        ProblemKind.TORN_HEAD,
        ProblemKind.UNSIGNED_ENTRIES,
    }
    unsigned = next(p for p in report.problems if p.kind is ProblemKind.UNSIGNED_ENTRIES)
    assert (unsigned.seq, unsigned.last_seq) == (2, 3)
    log = AuditLog(path, KEY)
    assert log.recovered is not None
    assert log.recovered.details["unsigned_entries"] == {"first_seq": 2, "last_seq": 3}
    assert log.recovered.details["torn_head"]["heads_line"] == 3
    assert verify(path, KEY.public_key()).ok


_KILL = """
import os, signal
path, mode = sys.argv[1], sys.argv[2]
key = load_signing_key(sys.argv[3])
log = AuditLog(path, key)
for i in range(3):
    log.append(AuditAction.FORECAST, actor="svc", details={"i": i})
real_write, real_fsync = os.write, os.fsync
calls = []

def dying_write(fd, data):
    # mode torn: killed halfway through the entry's write; mode unsigned: killed when
    # the head's write starts (the entry is on disk, the head is not).
    calls.append(fd)
    if mode == "torn":
        real_write(fd, bytes(data[: len(data) // 2]))
        os.kill(os.getpid(), signal.SIGKILL)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_write(fd, data)

os.write = dying_write
log.append(AuditAction.EXPORT, actor="svc", details={"i": 3})
"""


@pytest.mark.parametrize("mode", ["torn", "unsigned"])
def test_a_process_killed_mid_append(tmp_path, mode):
    write_signing_key(tmp_path / "k")
    key = load_signing_key(tmp_path / "k")
    path = tmp_path / "audit.jsonl"
    result = _run(_KILL, str(path), mode, str(tmp_path / "k"))
    assert result.returncode == -9, result.stderr
    report = verify(path, key.public_key())
    assert not report.ok and not report.tampered
    expected = ProblemKind.TORN_TAIL if mode == "torn" else ProblemKind.UNSIGNED_ENTRIES
    assert [p.kind for p in report.problems] == [expected]
    log = AuditLog(path, key)
    assert log.recovered is not None
    log.append(AuditAction.FORECAST, actor="svc")
    report = verify(path, key.public_key())
    assert report.ok
    entries = read_entries(path)
    kept = [e.details.get("i") for e in entries if e.action is not AuditAction.LOG_RECOVERED]
    assert kept == ([0, 1, 2, None] if mode == "torn" else [0, 1, 2, 3, None])


_WRITER = """
path, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
log = AuditLog(path, load_signing_key(sys.argv[4]))
for i in range(n):
    log.append(AuditAction.DATA_ACCESS, actor=name, details={"i": i})
"""


def test_processes_and_threads_do_not_interleave(tmp_path):
    write_signing_key(tmp_path / "k")
    key = load_signing_key(tmp_path / "k")
    path = tmp_path / "audit.jsonl"
    AuditLog(path, key)
    args = [str(path), "", "40", str(tmp_path / "k")]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(_WRITER), *args[:1], name, *args[2:]],
            cwd=ROOT,
            stderr=subprocess.PIPE,
        )
        for name in ("proc-a", "proc-b")
    ]
    shared = AuditLog(path, key)

    def thread_writer(name):
        for i in range(20):
            shared.append(AuditAction.DATA_ACCESS, actor=name, details={"i": i})

    threads = [threading.Thread(target=thread_writer, args=(f"thread-{t}",)) for t in "xy"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    report = verify(path, key.public_key())
    assert report.ok, report.summary()
    entries = read_entries(path)
    assert len(entries) == 120
    for name, n in (("proc-a", 40), ("proc-b", 40), ("thread-x", 20), ("thread-y", 20)):
        assert [e.details["i"] for e in entries if e.actor == name] == list(range(n))


def test_writers_with_stale_state_stay_in_step(tmp_path):
    path = tmp_path / "audit.jsonl"
    a, b = AuditLog(path, KEY), AuditLog(path, KEY)
    for i in range(6):
        (a if i % 2 else b).append(AuditAction.FORECAST, actor="svc", details={"i": i})
    assert verify(path, KEY.public_key()).ok
    assert [e.details["i"] for e in read_entries(path)] == list(range(6))
    # An entry appended behind the writers' backs without a head is caught and signed.
    c = AuditLog(tmp_path / "c.jsonl", KEY)
    c.append(AuditAction.FORECAST, actor="svc")
    hp = heads_path(path)
    hp.write_bytes(b"".join(hp.read_bytes().splitlines(keepends=True)[:-1]))
    a.append(AuditAction.EXPORT, actor="svc")
    recovered = [e for e in read_entries(path) if e.action is AuditAction.LOG_RECOVERED]
    assert recovered[0].details["unsigned_entries"] == {"first_seq": 5, "last_seq": 5}
    assert verify(path, KEY.public_key()).ok
    # A log cut back behind a writer's back is refused at the next append.
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:3]))
    with pytest.raises(AuditLogError, match="missing"):
        b.append(AuditAction.EXPORT, actor="svc")


def test_inclusion_and_consistency_proofs_for_an_auditor(tmp_path):
    path = tmp_path / "audit.jsonl"
    _fill(path, 11)
    public = KEY.public_key()
    heads = read_heads(path)
    lines = path.read_bytes().split(b"\n")[:-1]
    for head in (heads[0], heads[4], heads[7], heads[-1]):
        for seq in range(head.tree_size):
            proof = prove_inclusion(path, seq, tree_size=head.tree_size)
            assert proof.entry == lines[seq]
            again = InclusionProof.from_json(json.loads(json.dumps(proof.to_json())))
            assert again == proof and verify_inclusion_proof(again, head, public)
            assert not verify_inclusion_proof(proof, heads[head.index - 1], public) or (
                head.index == 0
            )
    proof = prove_inclusion(path, 3)
    assert proof.tree_size == 11
    edited = InclusionProof(3, 11, proof.entry.replace(b'"i":3', b'"i":4'), proof.path)
    assert not verify_inclusion_proof(edited, heads[-1], public)
    renumbered = InclusionProof(4, 11, proof.entry, proof.path)
    assert not verify_inclusion_proof(renumbered, heads[-1], public)
    assert not verify_inclusion_proof(proof, heads[-1], generate_signing_key().public_key())
    for old in heads:
        for new in heads[old.index :]:
            cp = prove_consistency(path, old.tree_size, new.tree_size)
            cp = ConsistencyProof.from_json(json.loads(json.dumps(cp.to_json())))
            assert verify_consistency_proof(cp, old, new, public)
    cp = prove_consistency(path, 4)
    assert not verify_consistency_proof(cp, heads[4], heads[-1], public)  # sizes differ
    with pytest.raises(ValueError, match="fewer"):
        prove_inclusion(path, 0, tree_size=12)


def test_a_known_head_catches_a_cut_back_of_both_files(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = _fill(path, 6)
    published = log.head
    assert published is not None and published.tree_size == 6
    # Cut both files back to 4 entries: the files agree with each other...
    hp = heads_path(path)
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:4]))
    hp.write_bytes(b"".join(hp.read_bytes().splitlines(keepends=True)[:4]))
    assert verify(path, KEY.public_key()).ok
    # ...but not with the head published earlier.
    report = verify(path, KEY.public_key(), known_head=published)
    assert report.tampered and report.first_bad.kind is ProblemKind.MISSING_ENTRIES
    assert report.first_bad.seq == 4
    # History rewritten after the cut: the published head sees it.
    AuditLog(path, KEY).append(AuditAction.EXPORT, actor="intruder")
    AuditLog(path, KEY).append(AuditAction.EXPORT, actor="intruder")
    report = verify(path, KEY.public_key(), known_head=published)
    assert [p.kind for p in report.problems] == [ProblemKind.HEAD_MISMATCH]
    forged = generate_signing_key()
    other = tmp_path / "o.jsonl"
    report = verify(path, KEY.public_key(), known_head=_fill(other, 2, key=forged).head)
    assert [p.kind for p in report.problems] == [ProblemKind.WRONG_KEY]
