"""The audit log writer: append-only, hash-chained, signed after every append.

`AuditLog(LOG, signing_key)` opens (or creates) the log `LOG` and its heads file
`LOG.heads`, checks both against the key (refusing a log that fails verification: it
never appends to tampered history), recovers what a crash left, and then appends.

Each `append` (or `append_many`, for a batch) does, holding an exclusive `fcntl.flock` on
the log so that processes never interleave:

1. read what other processes appended since (and check it);
2. write the new entries' lines in one `os.write`, then `os.fsync` the log;
3. sign a tree head over all entries (tree size, RFC 9162 root hash, time) with Ed25519
   and append it to `LOG.heads`, then `os.fsync` that.

So after each append or batch, every entry is covered by a signed head. A crash can leave
a torn last line (killed in step 2) or entries without a head (killed between 2 and 3);
the next `AuditLog` to open the log moves a torn line aside into `LOG.torn-<line>-<time>`
(kept, never deleted), truncates the log to its last complete line, and appends a
`log-recovered` entry that names what it found (the torn bytes' length, SHA-256 and the
file they were moved to; the unsigned entries it now signs), so an auditor sees every
recovery.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ._entries import AuditAction, AuditEntry, AuditEvent, make_entry
from ._heads import SignedTreeHead, key_id, sign_tree_head
from ._keyfiles import CLOEXEC, NOFOLLOW, fsync_directory, write_secret_file
from ._merkle import leaf_hash
from ._pseudonym import Pseudonym
from ._verify import AuditReport, ScanState, heads_path, scan_log, verify

RECOVERY_ACTOR = "pkpd-twins audit log"
"""The actor of the `log-recovered` entries the log writes itself."""


class AuditLogError(RuntimeError):
    """The log cannot be appended to: it fails verification (`report` says how), or
    another process holds it too long."""

    def __init__(self, message: str, report: AuditReport | None = None):
        super().__init__(message)
        self.report = report


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_from(fd: int, offset: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks, position = [], offset
    while position < size:
        chunk = os.pread(fd, size - position, position)
        if not chunk:
            break
        chunks.append(chunk)
        position += len(chunk)
    return b"".join(chunks)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class AuditLog:
    """An append-only, tamper-evident audit log (see the module docstring).

    **Arguments:**

    - `path`: the log file (JSON lines); created with mode `0600` if missing, beside its
      heads file `path.heads`.
    - `signing_key`: the log's Ed25519 private key (`load_signing_key`). The same key must
      sign every head of a log: a log whose heads another key signed is refused.
    - `lock_timeout`: seconds to wait for another process's lock before `AuditLogError`.

    `recovered` is the `log-recovered` entry written on opening, or `None` when there was
    nothing to recover. Opening verifies the whole log (`O(n)`); each append then checks
    only what other processes appended since. Safe to share between threads and processes.

    **Raises:** `AuditLogError` (with `.report`) when the log fails verification for a
    reason other than a crash.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        signing_key: Ed25519PrivateKey,
        *,
        lock_timeout: float = 30.0,
    ):
        if not isinstance(signing_key, Ed25519PrivateKey):
            raise TypeError(
                "Expected the log's signing key as an Ed25519PrivateKey (load_signing_key), "
                f"got {type(signing_key).__name__}."
            )
        self.path = Path(path)
        self.heads_path = heads_path(self.path)
        self._key = signing_key
        self.public_key = signing_key.public_key()
        self.key_id = key_id(self.public_key)
        self._lock_timeout = float(lock_timeout)
        self._state: ScanState | None = None
        self._thread_lock = threading.Lock()
        with self._thread_lock, self._locked() as fds:
            self.recovered: AuditEntry | None = self._reload(fds)

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r}, key_id={self.key_id[:16]!r})"

    def __reduce__(self):
        raise TypeError("An AuditLog holds its signing key and is not pickled; open it anew.")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[tuple[int, int]]:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - POSIX only
            raise AuditLogError("The audit log needs POSIX file locks (fcntl).") from None
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | CLOEXEC | NOFOLLOW
        new = not self.path.exists() or not self.heads_path.exists()
        fd = os.open(self.path, flags, 0o600)
        try:
            hfd = os.open(self.heads_path, flags, 0o600)
        except BaseException:
            os.close(fd)
            raise
        try:
            if new:
                fsync_directory(self.path.parent)
            deadline = time.monotonic() + self._lock_timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise AuditLogError(
                            f"Another process has held the lock on {self.path} for more than "
                            f"{self._lock_timeout:g} s."
                        ) from None
                    time.sleep(0.005)
            try:
                yield fd, hfd
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(hfd)
            os.close(fd)

    def _reload(self, fds: tuple[int, int]) -> AuditEntry | None:
        """Scan the whole log; refuse tampering; recover from a crash."""
        fd, hfd = fds
        self._state = None
        report, state = scan_log(
            _read_from(fd, 0),
            _read_from(hfd, 0),
            self.public_key,
            log_name=str(self.path),
            heads_name=str(self.heads_path),
        )
        if report.tampered:
            raise AuditLogError(
                f"Refusing to append to {self.path}: it fails verification (not a crash: "
                "see below). Keep the files as they are for investigation and start a new "
                f"log.\n{report.summary()}",
                report,
            )
        if report.ok:
            self._state = state
            return None
        details: dict[str, Any] = {}
        stamp = _utc_now().strftime("%Y%m%dT%H%M%S%fZ")
        if state.log_tail:
            saved = self._set_aside(state.log_tail, f"torn-{state.count + 1}-{stamp}")
            os.ftruncate(fd, state.log_end)
            os.fsync(fd)
            details["torn_entry"] = {"line": state.count + 1, **saved}
        if state.heads_tail:
            saved = self._set_aside(state.heads_tail, f"heads.torn-{state.heads_count + 1}-{stamp}")
            os.ftruncate(hfd, state.heads_end)
            os.fsync(hfd)
            details["torn_head"] = {"heads_line": state.heads_count + 1, **saved}
        signed = state.last_head.tree_size if state.last_head is not None else 0
        if state.count > signed:
            details["unsigned_entries"] = {"first_seq": signed, "last_seq": state.count - 1}
        self._state = dataclasses.replace(state, log_tail=b"", heads_tail=b"")
        event = AuditEvent(AuditAction.LOG_RECOVERED, RECOVERY_ACTOR, None, details)
        return self._write(fds, [event])[0]

    def _set_aside(self, data: bytes, suffix: str) -> dict[str, Any]:
        aside = self.path.with_name(f"{self.path.name}.{suffix}")
        write_secret_file(aside, data, what="torn audit line")
        return {
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "saved_as": aside.name,
        }

    def _sync(self, fds: tuple[int, int]) -> None:
        """Bring the cached state up to date with what other processes appended."""
        fd, hfd = fds
        state = self._state
        if state is not None and not state.log_tail and not state.heads_tail:
            log_size, heads_size = os.fstat(fd).st_size, os.fstat(hfd).st_size
            signed = state.last_head.tree_size if state.last_head is not None else 0
            if (log_size, heads_size) == (state.log_end, state.heads_end) and signed == state.count:
                return
            if log_size >= state.log_end and heads_size >= state.heads_end:
                report, new = scan_log(
                    _read_from(fd, state.log_end),
                    _read_from(hfd, state.heads_end),
                    self.public_key,
                    state=state,
                )
                if report.ok:
                    self._state = new
                    return
        self._reload(fds)  # anything unexpected: the full check (and recovery)

    def _write(self, fds: tuple[int, int], events: list[AuditEvent]) -> list[AuditEntry]:
        fd, hfd = fds
        state = self._state
        assert state is not None
        now = _utc_now()
        tree, prev, seq = state.tree.copy(), state.last_hash, state.count
        entries, data = [], bytearray()
        for event in events:
            entry = make_entry(event, seq=seq, prev=prev, at=now)
            line = entry.line()
            data += line + b"\n"
            tree.append(leaf_hash(line))
            entries.append(entry)
            prev, seq = entry.hash, seq + 1
        # Until both writes are on disk the cached state is unknown: a failure makes the
        # next call reload (and recover) from the files.
        self._state = None
        _write_all(fd, bytes(data))
        os.fsync(fd)
        head = sign_tree_head(
            self._key, index=state.next_index, tree_size=tree.size, root_hash=tree.root()
        )
        head_line = head.line() + b"\n"
        _write_all(hfd, head_line)
        os.fsync(hfd)
        self._state = dataclasses.replace(
            state,
            count=seq,
            log_end=state.log_end + len(data),
            last_hash=prev,
            tree=tree,
            heads_count=state.heads_count + 1,
            heads_end=state.heads_end + len(head_line),
            next_index=state.next_index + 1,
            last_head=head,
        )
        return entries

    def append_many(self, events: Iterable[AuditEvent]) -> list[AuditEntry]:
        """Append several entries in one write, covered by one signed head.

        **Arguments:**

        - `events`: `AuditEvent`s (not `log-recovered`, which only the log writes).

        **Returns:** the `AuditEntry`s written (none, and no head, for no events).
        """
        events = list(events)
        for event in events:
            if not isinstance(event, AuditEvent):
                raise TypeError(f"Expected AuditEvent objects, got {type(event).__name__}.")
            if event.action is AuditAction.LOG_RECOVERED:
                raise ValueError("log-recovered entries are written by the log itself only.")
        if not events:
            return []
        with self._thread_lock, self._locked() as fds:
            self._sync(fds)
            return self._write(fds, events)

    def append(
        self,
        action: AuditAction,
        *,
        actor: str,
        subject: Pseudonym | str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Append one entry, then sign a head covering it.

        **Arguments:**

        - `action`: an `AuditAction`.
        - `actor`: the account or service that acted.
        - `subject`: the patient's `Pseudonym` (a raw identifier is refused), or `None`.
        - `details`: JSON values (drug, dose, file written, counts, ...).

        **Returns:** the `AuditEntry` written.
        """
        event = AuditEvent(action, actor, subject, details or {})
        return self.append_many([event])[0]

    @property
    def size(self) -> int:
        """Entries in the log, as of this object's last operation."""
        return self._state.count if self._state is not None else 0

    @property
    def head(self) -> SignedTreeHead | None:
        """The latest signed tree head, as of this object's last operation (publish it, or
        keep it elsewhere, to detect a later cut-back of both files)."""
        return self._state.last_head if self._state is not None else None

    def verify(self) -> AuditReport:
        """`verify(self.path, self.public_key)`."""
        return verify(self.path, self.public_key)
