"""Verifying an audit log against its signed tree heads.

`verify(LOG, public_key)` reads `LOG` and `LOG.heads` and checks, with nothing but the
files and the log's public key:

1. every line is a well-formed entry in canonical form whose hash matches its content,
   numbered 0, 1, 2, ... and chained to the one before (`prev`): the first entry that
   fails is named by number and line;
2. every head is well formed, signed by the given key, numbered in order and covers more
   entries than the one before;
3. the RFC 9162 root hash of the log's first `tree_size` entries equals each head's
   `root_hash` (an entry rewritten with a recomputed chain is caught here), and no head
   covers more entries than the log holds (a truncated log, or deleted last entries);
4. the end of each file: a last line without its line end is a *torn tail*, what a crash
   in the middle of an append leaves; entries after the last head are *unsigned*, what a
   crash between writing entries and signing them leaves. Both are reported apart from
   tampering (`AuditReport.tampered`): nothing signed is lost, and the next `AuditLog`
   to open the log moves the torn line aside and records a `log-recovered` entry.

What the files alone cannot show: someone who can write both files may cut both back to
an earlier head and append new entries. A head kept elsewhere (`known_head`: one that was
published, mailed, or anchored in another system) closes that gap.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ._entries import GENESIS_HASH, AuditAction, AuditEntry, EntryError, parse_entry
from ._heads import HeadError, SignedTreeHead, key_id, load_public_key
from ._merkle import CompactTree, leaf_hash


class ProblemKind(enum.Enum):
    """What is wrong, as `verify` reports it.

    Evidence of tampering (or of a damaged disk):

    - `BAD_ENTRY`: a line that is not a valid entry, or breaks the hash chain.
    - `HEAD_MISMATCH`: a signed root hash that the log's entries no longer give.
    - `MISSING_ENTRIES`: a signed head covers entries that the log does not hold.
    - `BAD_HEAD`: a heads line that is malformed, badly signed or out of order.
    - `WRONG_KEY`: heads signed by another key than the one given.

    What a crash leaves (nothing signed is lost):

    - `TORN_TAIL`: the log's last line is incomplete.
    - `TORN_HEAD`: the heads file's last line is incomplete.
    - `UNSIGNED_ENTRIES`: entries after the last signed head.
    """

    BAD_ENTRY = "bad-entry"
    HEAD_MISMATCH = "head-mismatch"
    MISSING_ENTRIES = "missing-entries"
    BAD_HEAD = "bad-head"
    WRONG_KEY = "wrong-key"
    TORN_TAIL = "torn-tail"
    TORN_HEAD = "torn-head"
    UNSIGNED_ENTRIES = "unsigned-entries"

    @property
    def from_crash(self) -> bool:
        """Whether a crash alone can cause it (as opposed to tampering)."""
        return self in CRASH_KINDS


CRASH_KINDS = frozenset(
    (ProblemKind.TORN_TAIL, ProblemKind.TORN_HEAD, ProblemKind.UNSIGNED_ENTRIES)
)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One finding of `verify`.

    **Arguments:**

    - `kind`: a `ProblemKind`.
    - `message`: what is wrong, in words.
    - `seq`, `last_seq`: the entries concerned (`seq` alone for one entry; `last_seq` for
      a range, as when a head shows that one of several entries was changed).
    - `line`: the log line (from 1) of entry `seq`.
    - `heads_line`: the heads file's line (from 1), for problems with heads.
    """

    kind: ProblemKind
    message: str
    seq: int | None = None
    last_seq: int | None = None
    line: int | None = None
    heads_line: int | None = None


@dataclasses.dataclass(frozen=True)
class AuditReport:
    """What `verify` found.

    **Arguments:**

    - `log`, `heads`: the files read.
    - `entries`: complete lines in the log.
    - `heads_count`: complete lines in the heads file.
    - `signed_size`: entries covered by the last valid head that matches the log.
    - `problems`: the `Problem`s, empty when all is well.
    - `recovered`: numbers of the `log-recovered` entries (crashes the log recovered from).
    """

    log: str
    heads: str
    entries: int
    heads_count: int
    signed_size: int
    problems: tuple[Problem, ...]
    recovered: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        """No problem at all."""
        return not self.problems

    @property
    def tampered(self) -> bool:
        """Some problem that a crash cannot cause."""
        return any(not p.kind.from_crash for p in self.problems)

    @property
    def torn(self) -> bool:
        """The log's or the heads file's last line is incomplete."""
        return any(p.kind in (ProblemKind.TORN_TAIL, ProblemKind.TORN_HEAD) for p in self.problems)

    @property
    def first_bad(self) -> Problem | None:
        """The problem that names the earliest bad entry: entry `seq` (line `line`), or,
        when `last_seq` is set, one of the entries `seq..last_seq` (where only a signed
        head over a batch shows that one of them is bad). `None` when no entry is bad."""
        by_kind = {}
        for p in self.problems:
            by_kind.setdefault(p.kind, p)
        chain = by_kind.get(ProblemKind.BAD_ENTRY)
        mismatch = by_kind.get(ProblemKind.HEAD_MISMATCH)
        missing = by_kind.get(ProblemKind.MISSING_ENTRIES)
        if mismatch is not None:
            # The heads show the first bad entry is in seq..last_seq; a chain break at c in
            # that range narrows it to seq..c (the entries before c chain correctly but
            # may have been inserted with a recomputed chain).
            assert mismatch.seq is not None and mismatch.last_seq is not None
            c = chain.seq if chain is not None else None
            if c is not None and mismatch.seq <= c <= mismatch.last_seq:
                if c == mismatch.seq:
                    return chain
                narrowed = (
                    f"{mismatch.message} The hash chain breaks at entry {c}, so the first "
                    f"bad entry is among {mismatch.seq}..{c}."
                )
                return dataclasses.replace(mismatch, last_seq=c, message=narrowed)
            if c is not None and c < mismatch.seq:
                return chain
            return mismatch
        if missing is not None:  # the first missing entry is the first bad one, exactly
            missing = dataclasses.replace(missing, last_seq=None)
        options = [p for p in (chain, missing) if p is not None and p.seq is not None]
        return min(options, key=lambda p: p.seq or 0) if options else None

    def summary(self) -> str:
        """The report in words, one finding a line."""
        head = (
            f"{self.log}: {self.entries} entries, {self.heads_count} signed heads; "
            f"{self.signed_size} entries covered by a valid signed head."
        )
        if self.ok:
            lines = [f"OK: {head}"]
        elif self.tampered:
            lines = [f"TAMPERED OR DAMAGED: {head}"]
        else:
            lines = [f"INCOMPLETE (a crash, not tampering): {head}"]
        first = self.first_bad
        if first is not None:
            if first.last_seq is not None and first.last_seq != first.seq:
                lines.append(
                    f"First bad entry: among entries {first.seq}..{first.last_seq} "
                    f"(lines {(first.seq or 0) + 1}..{first.last_seq + 1})."
                )
            else:
                lines.append(f"First bad entry: entry {first.seq} (line {first.line}).")
        lines += [f"- [{p.kind.value}] {p.message}" for p in self.problems]
        if self.recovered:
            lines.append(
                "Recovered from crashes at entries "
                + ", ".join(str(s) for s in self.recovered)
                + " (see their details)."
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_json(self) -> dict:
        """The report as JSON values (for `twins audit verify --json`)."""
        first = self.first_bad
        return {
            "log": self.log,
            "heads": self.heads,
            "ok": self.ok,
            "tampered": self.tampered,
            "torn": self.torn,
            "entries": self.entries,
            "heads_count": self.heads_count,
            "signed_size": self.signed_size,
            "first_bad_seq": None if first is None else first.seq,
            "first_bad_last_seq": None if first is None else first.last_seq,
            "first_bad_line": None if first is None else first.line,
            "problems": [{**dataclasses.asdict(p), "kind": p.kind.value} for p in self.problems],
            "recovered": list(self.recovered),
        }


@dataclasses.dataclass(frozen=True)
class ScanState:
    """Where a scan of a log ended: what an appending writer resumes from.

    **Arguments:**

    - `count`: complete entries read; `log_end`: their bytes (the log's consistent end).
    - `last_hash`: the hash of entry `count - 1` (`GENESIS_HASH` for none).
    - `tree`: the `CompactTree` of the `count` entries.
    - `heads_count`, `heads_end`: complete heads lines and their bytes.
    - `next_index`: the index the next head gets.
    - `last_head`: the last valid head, or `None`.
    - `log_tail`, `heads_tail`: the incomplete last lines (empty when none).
    """

    count: int = 0
    log_end: int = 0
    last_hash: str = GENESIS_HASH
    tree: CompactTree = dataclasses.field(default_factory=CompactTree)
    heads_count: int = 0
    heads_end: int = 0
    next_index: int = 0
    last_head: SignedTreeHead | None = None
    log_tail: bytes = b""
    heads_tail: bytes = b""


def heads_path(log_path: str | os.PathLike) -> Path:
    """The heads file of a log: `LOG.heads` beside `LOG`."""
    log_path = Path(log_path)
    return log_path.with_name(log_path.name + ".heads")


def _split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    lines = data.split(b"\n")
    return lines[:-1], lines[-1]


def _complete_value(tail: bytes) -> int | None:
    """Where a JSON value at the start of `tail` ends, if one does (else `None`): a torn
    write leaves a prefix of a line, never a whole value followed by more bytes."""
    try:
        _, end = json.JSONDecoder().raw_decode(tail.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return end


@dataclasses.dataclass
class _Heads:
    """The heads read by `_read_heads`: those that verify, and where the file ends."""

    good: list[tuple[int, SignedTreeHead]]  # (heads line, head)
    problems: list[Problem]
    next_index: int
    last: SignedTreeHead | None


def _read_heads(
    lines: list[bytes], public_key: Ed25519PublicKey, start: ScanState, name: str
) -> _Heads:
    """Check the heads lines: well formed, signed by `public_key`, numbered in order,
    covering ever more entries. Heads that verify are kept even when out of order (they
    are authentic statements of the tree); the first bad line is reported, with a count."""
    kid = key_id(public_key)
    good, bad, wrong = [], [], []
    expected = start.next_index
    last = start.last_head
    last_size = last.tree_size if last is not None else 0
    for j, line in enumerate(lines):
        line_no = start.heads_count + j + 1
        where = f"{name} line {line_no}"
        try:
            head = SignedTreeHead.from_line(line)
        except HeadError as error:
            bad.append(Problem(ProblemKind.BAD_HEAD, f"{where}: {error}.", heads_line=line_no))
            expected += 1
            continue
        if head.key_id != kid:
            wrong.append(line_no)
            expected = head.index + 1
            continue
        if not head.verify(public_key):
            why = f"{where}: the signature does not verify (the head was edited)."
            bad.append(Problem(ProblemKind.BAD_HEAD, why, heads_line=line_no))
            expected += 1
            continue
        if head.index != expected:
            why = (
                f"{where}: head {head.index} where head {expected} belongs (heads were "
                "deleted, duplicated or reordered)."
            )
            bad.append(Problem(ProblemKind.BAD_HEAD, why, heads_line=line_no))
        expected = head.index + 1
        if head.tree_size <= last_size:
            why = (
                f"{where}: head {head.index} covers {head.tree_size} entries, not more than "
                f"the head before it ({last_size})."
            )
            bad.append(Problem(ProblemKind.BAD_HEAD, why, heads_line=line_no))
            continue
        good.append((line_no, head))
        last, last_size = head, head.tree_size
    problems = []
    if wrong:
        why = (
            f"{len(wrong)} head(s) (the first on {name} line {wrong[0]}) are not signed by "
            f"the public key given (key id {kid[:16]}...): the wrong public key, or heads "
            "written or edited by someone else."
        )
        problems.append(Problem(ProblemKind.WRONG_KEY, why, heads_line=wrong[0]))
    if bad:
        more = f" ({len(bad) - 1} more bad heads lines)" if len(bad) > 1 else ""
        problems.append(dataclasses.replace(bad[0], message=bad[0].message + more))
    return _Heads(good, problems, expected, last)


@dataclasses.dataclass
class _Walk:
    """The entries read by `_walk_entries`."""

    problems: list[Problem]
    roots: dict[int, bytes]  # root hash at each size asked for
    tree: CompactTree
    last_hash: str
    consistent_count: int
    consistent_end: int
    recovered: list[int]


def _walk_entries(lines: list[bytes], start: ScanState, sizes: set[int]) -> _Walk:
    """Check each line and the hash chain (stopping at the first failure), and compute the
    Merkle root at each size in `sizes` over the lines as they are."""
    tree = start.tree.copy()
    roots = {tree.size: tree.root()} if tree.size in sizes else {}
    prev, problems, recovered = start.last_hash, [], []
    count, end = start.count, start.log_end
    for i, line in enumerate(lines):
        seq = start.count + i
        tree.append(leaf_hash(line))
        if tree.size in sizes:
            roots[tree.size] = tree.root()
        if problems:
            continue
        try:
            entry = parse_entry(line)
        except EntryError as error:
            why = str(error)
        else:
            if entry.seq != seq:
                why = (
                    f"the line holds entry {entry.seq} where entry {seq} belongs (entries "
                    "deleted, duplicated, inserted or reordered)"
                )
            elif entry.prev != prev:
                why = (
                    "its prev does not match the hash of the entry before it (an earlier "
                    "entry was changed, or this one was moved)"
                )
            else:
                prev, count, end = entry.hash, count + 1, end + len(line) + 1
                if entry.action is AuditAction.LOG_RECOVERED:
                    recovered.append(seq)
                continue
        message = f"entry {seq} (line {seq + 1}): {why}."
        problems.append(Problem(ProblemKind.BAD_ENTRY, message, seq=seq, line=seq + 1))
    return _Walk(problems, roots, tree, prev, count, end, recovered)


def _check_roots(
    heads: _Heads, roots: dict[int, bytes], count: int, start: ScanState, name: str
) -> tuple[list[Problem], int]:
    """Each verified head's root against the entries; heads that cover more entries than
    the log holds. Returns the problems and the size of the last head that matches."""
    matched = start.last_head.tree_size if start.last_head is not None else 0
    mismatch = missing = None
    problems = []
    for line_no, head in heads.good:
        where = f"head {head.index} ({name} line {line_no})"
        n = head.tree_size
        if n > count:
            if missing is None:
                why = (
                    f"{where} is signed for {n} entries, but the log holds {count} complete "
                    f"entries: entries {count}..{n - 1} are missing (the log was truncated "
                    "or its last entries deleted)."
                )
                missing = Problem(
                    ProblemKind.MISSING_ENTRIES,
                    why,
                    seq=count,
                    last_seq=n - 1,
                    line=count + 1,
                    heads_line=line_no,
                )
        elif n not in roots:
            why = f"{where} covers {n} entries, fewer than were already checked."
            problems.append(Problem(ProblemKind.BAD_HEAD, why, heads_line=line_no))
        elif roots[n] != head.root_hash:
            if mismatch is None:
                what = (
                    f"entry {matched} was"
                    if matched == n - 1
                    else f"an entry among {matched}..{n - 1} was"
                )
                why = (
                    f"{where} is signed for a root hash of the first {n} entries that they "
                    f"no longer give: {what} changed, inserted, deleted or reordered (with a "
                    "recomputed hash chain if no entry error is reported there)."
                )
                mismatch = Problem(
                    ProblemKind.HEAD_MISMATCH,
                    why,
                    seq=matched,
                    last_seq=n - 1,
                    line=matched + 1,
                    heads_line=line_no,
                )
        elif mismatch is None:
            matched = n
    problems += [p for p in (mismatch, missing) if p is not None]
    return problems, matched


def _check_known(
    head: SignedTreeHead, public_key: Ed25519PublicKey, roots: dict[int, bytes], count: int
) -> list[Problem]:
    """A head kept apart from the log against the log's entries."""
    if not head.verify(public_key):
        why = "the known head given does not verify with the public key given."
        return [Problem(ProblemKind.WRONG_KEY, why)]
    n = head.tree_size
    if n > count:
        why = (
            f"the known head (signed {head.timestamp}) covers {n} entries; the log holds "
            f"{count}: entries {count}..{n - 1} are missing (the log and its heads file were "
            "cut back)."
        )
        return [
            Problem(ProblemKind.MISSING_ENTRIES, why, seq=count, last_seq=n - 1, line=count + 1)
        ]
    if roots.get(n) != head.root_hash:
        why = (
            f"the log's first {n} entries do not give the root hash of the known head "
            f"(signed {head.timestamp}): history was rewritten."
        )
        return [Problem(ProblemKind.HEAD_MISMATCH, why, seq=0, last_seq=max(n - 1, 0), line=1)]
    return []


def _check_tails(
    log_tail: bytes, heads_tail: bytes, count: int, heads_line: int, names: tuple[str, str]
) -> list[Problem]:
    """The files' incomplete last lines: a torn write, or an edit (a whole line followed
    by other bytes, which no interrupted write can leave)."""
    problems = []
    if log_tail:
        end = _complete_value(log_tail)
        if end is not None and end < len(log_tail):
            why = (
                f"entry {count} (line {count + 1}): a complete entry followed by other "
                "bytes instead of a line end (edited)."
            )
            problems.append(Problem(ProblemKind.BAD_ENTRY, why, seq=count, line=count + 1))
        else:
            why = (
                f"line {count + 1} of {names[0]} is incomplete ({len(log_tail)} bytes "
                "without a line end): an append interrupted by a crash. Opening the log "
                "with AuditLog moves it aside and records a log-recovered entry."
            )
            problems.append(Problem(ProblemKind.TORN_TAIL, why, seq=count, line=count + 1))
    if heads_tail:
        end = _complete_value(heads_tail)
        where = f"{names[1]} line {heads_line}"
        if end is not None and end < len(heads_tail):
            why = f"{where}: a complete head followed by other bytes instead of a line end."
            problems.append(Problem(ProblemKind.BAD_HEAD, why, heads_line=heads_line))
        else:
            why = (
                f"{where} is incomplete ({len(heads_tail)} bytes without a line end): a head "
                "being written when the process stopped."
            )
            problems.append(Problem(ProblemKind.TORN_HEAD, why, heads_line=heads_line))
    return problems


def scan_log(
    log_data: bytes,
    heads_data: bytes | None,
    public_key: Ed25519PublicKey,
    *,
    state: ScanState | None = None,
    known_head: SignedTreeHead | None = None,
    log_name: str = "LOG",
    heads_name: str = "LOG.heads",
) -> tuple[AuditReport, ScanState]:
    """Check a log's bytes against its heads' bytes (the work of `verify`).

    **Arguments:**

    - `log_data`, `heads_data`: the files' bytes (`None`: no heads file); with `state`,
      the bytes after `state.log_end` and `state.heads_end` only.
    - `public_key`: the log's Ed25519 public key.
    - `state`: a `ScanState` to resume from (an appending writer's), or `None` to scan
      from the start.
    - `known_head`: a signed head kept apart from the log, checked too.
    - `log_name`, `heads_name`: for the report.

    **Returns:** the `AuditReport` and the `ScanState` at the end.
    """
    start = state or ScanState()
    lines, log_tail = _split_lines(log_data)
    head_lines, heads_tail = _split_lines(heads_data) if heads_data is not None else ([], b"")
    heads = _read_heads(head_lines, public_key, start, heads_name)
    sizes = {h.tree_size for _, h in heads.good}
    if known_head is not None:
        sizes.add(known_head.tree_size)
    walk = _walk_entries(lines, start, sizes)
    count = start.count + len(lines)
    root_problems, matched = _check_roots(heads, walk.roots, count, start, heads_name)
    problems = heads.problems + walk.problems + root_problems
    if known_head is not None:
        problems += _check_known(known_head, public_key, walk.roots, count)
    heads_count = start.heads_count + len(head_lines)
    problems += _check_tails(log_tail, heads_tail, count, heads_count + 1, (log_name, heads_name))
    signed = heads.last.tree_size if heads.last is not None else 0
    if count > signed and not any(not p.kind.from_crash for p in problems):
        why = (
            f"entries {signed}..{count - 1} (lines {signed + 1}..{count}) are not covered by "
            "a signed head: the writer stopped between writing and signing them (opening the "
            "log with AuditLog signs them, with a log-recovered entry), or they were appended "
            "by someone without the signing key."
        )
        problems.append(
            Problem(
                ProblemKind.UNSIGNED_ENTRIES,
                why,
                seq=signed,
                last_seq=count - 1,
                line=signed + 1,
            )
        )
    order = {kind: i for i, kind in enumerate(ProblemKind)}
    problems.sort(key=lambda p: (order[p.kind], p.seq or 0))
    report = AuditReport(
        log=log_name,
        heads=heads_name,
        entries=count,
        heads_count=heads_count,
        signed_size=min(matched, count),
        problems=tuple(problems),
        recovered=tuple(walk.recovered),
    )
    end_state = ScanState(
        count=walk.consistent_count,
        log_end=walk.consistent_end,
        last_hash=walk.last_hash,
        tree=walk.tree,
        heads_count=heads_count,
        heads_end=start.heads_end + sum(len(h) + 1 for h in head_lines),
        next_index=heads.next_index,
        last_head=heads.last,
        log_tail=log_tail,
        heads_tail=heads_tail,
    )
    return report, end_state


def verify(
    log_path: str | os.PathLike,
    public_key: Ed25519PublicKey | str | os.PathLike | bytes,
    *,
    known_head: SignedTreeHead | None = None,
) -> AuditReport:
    """Verify an audit log and its heads file (`LOG.heads`); see the module docstring.

    **Arguments:**

    - `log_path`: the log (JSON lines).
    - `public_key`: the log's Ed25519 public key, or a PEM file or bytes of it; it must
      come from somewhere other than the log's folder (whoever can edit the log could
      replace a key kept beside it).
    - `known_head`: optionally a `SignedTreeHead` kept apart from the log (published or
      sent elsewhere earlier): the log must still hold the entries it covers, unchanged.

    **Returns:** an `AuditReport`: `ok`, `tampered`, `torn`, `first_bad` (the earliest
    bad entry by number and line), the `problems` in words.
    """
    key = load_public_key(public_key)
    log_path = Path(log_path)
    hp = heads_path(log_path)
    log_data = log_path.read_bytes()
    heads_data = hp.read_bytes() if hp.exists() else None
    report, _ = scan_log(
        log_data,
        heads_data,
        key,
        known_head=known_head,
        log_name=str(log_path),
        heads_name=str(hp),
    )
    return report


def read_entries(log_path: str | os.PathLike) -> list[AuditEntry]:
    """The entries of a log (complete lines only; not verified: see `verify`).

    **Arguments:**

    - `log_path`: the log.

    **Returns:** the `AuditEntry`s; `EntryError` for a malformed line.
    """
    lines, _ = _split_lines(Path(log_path).read_bytes())
    return [parse_entry(line) for line in lines]


def read_heads(log_path: str | os.PathLike) -> list[SignedTreeHead]:
    """The signed tree heads of a log (`LOG.heads`; complete lines; signatures not checked).

    **Arguments:**

    - `log_path`: the log (not the heads file).

    **Returns:** the `SignedTreeHead`s; `HeadError` for a malformed line.
    """
    hp = heads_path(log_path)
    if not hp.exists():
        return []
    lines, _ = _split_lines(hp.read_bytes())
    return [SignedTreeHead.from_line(line) for line in lines]
