"""The twin service's store: every message received, dead letters, the outbox and the
twins' last posteriors, in one SQLite database (WAL mode, `synchronous = FULL`).

A message is committed here before the broker is told it was received (MQTT PUBACK), so
a message acknowledged is never lost; the twins are derived from the stored messages, so
they are rebuilt by replaying them. One connection, shared by the service's threads under
a lock (`check_same_thread=False`); every write is one transaction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    rtype TEXT NOT NULL,
    rid TEXT NOT NULL,
    version TEXT NOT NULL,
    patient TEXT NOT NULL,
    time TEXT,
    status TEXT,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    digest TEXT NOT NULL,
    received TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    note TEXT,
    UNIQUE (rtype, rid, version)
);
CREATE INDEX IF NOT EXISTS messages_patient ON messages (patient, seq);
CREATE INDEX IF NOT EXISTS messages_state ON messages (state, seq);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    reason TEXT NOT NULL,
    message INTEGER,
    received TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS held (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    patient TEXT NOT NULL,
    received TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS held_patient ON held (patient, seq);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    published INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS twins (
    patient TEXT NOT NULL,
    substance TEXT NOT NULL,
    posterior TEXT NOT NULL,
    asof INTEGER NOT NULL,
    PRIMARY KEY (patient, substance)
);
"""


@dataclasses.dataclass(frozen=True)
class StoredMessage:
    """A row of `messages`: `seq` (the order received), `rtype`, `rid`, `version` (`""`
    without `meta.versionId`), `patient` (the Patient id it is about), `time` (aware, of a
    level, lab or dose), `status`, `topic`, `payload` (the resource's JSON), `state`
    (`pending`, `done`, `rejected`), `note`."""

    seq: int
    rtype: str
    rid: str
    version: str
    patient: str
    time: dt.datetime | None
    status: str | None
    topic: str
    payload: str
    state: str
    note: str | None

    @property
    def resource(self) -> dict[str, Any]:
        return json.loads(self.payload)


_COLUMNS = "seq, rtype, rid, version, patient, time, status, topic, payload, state, note"


def _row(r: Sequence[Any]) -> StoredMessage:
    time = dt.datetime.fromisoformat(r[5]) if r[5] is not None else None
    return StoredMessage(r[0], r[1], r[2], r[3], r[4], time, r[6], r[7], r[8], r[9], r[10])


def digest(payload: str) -> str:
    """SHA-256 of a resource's canonical JSON (sorted keys), to tell copies apart."""
    canonical = json.dumps(json.loads(payload), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


class ServiceStore:
    """The SQLite store of a `TwinService` (see the module docstring).

    **Arguments:** `path`: the database file (created with its WAL files beside it).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"ServiceStore {self.path}: expected WAL journal mode, got {mode}.")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (`BEGIN IMMEDIATE` ... `COMMIT`, rolled back on error)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    # --- messages ------------------------------------------------------------------------

    def find(self, rtype: str, rid: str, version: str) -> tuple[int, str] | None:
        """`(seq, digest)` of the message with this type, id and version, if stored."""
        rows = self._query(
            "SELECT seq, digest FROM messages WHERE rtype=? AND rid=? AND version=?",
            (rtype, rid, version),
        )
        return (rows[0][0], rows[0][1]) if rows else None

    def has_patient(self, patient: str) -> bool:
        rows = self._query(
            "SELECT 1 FROM messages WHERE rtype='Patient' AND rid=? AND state!='rejected' LIMIT 1",
            (patient,),
        )
        return bool(rows)

    def add_message(
        self,
        db: sqlite3.Connection,
        *,
        rtype: str,
        rid: str,
        version: str,
        patient: str,
        time: dt.datetime | None,
        status: str | None,
        topic: str,
        payload: str,
    ) -> int:
        cur = db.execute(
            "INSERT INTO messages (rtype, rid, version, patient, time, status, topic, payload,"
            " digest, received) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rtype,
                rid,
                version,
                patient,
                None if time is None else time.astimezone(dt.UTC).isoformat(),
                status,
                topic,
                payload,
                digest(payload),
                _now(),
            ),
        )
        return int(cur.lastrowid or 0)

    def pending(self, limit: int) -> list[StoredMessage]:
        """The messages not yet processed, oldest first (at most `limit`)."""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM messages WHERE state='pending' ORDER BY seq LIMIT ?",
            (limit,),
        )
        return [_row(r) for r in rows]

    def history(self, patient: str, asof: int) -> list[StoredMessage]:
        """The patient's current resources as of message `asof`: for each resource type and
        id, its latest version (whole-number `versionId`s compared as numbers; without one,
        the only copy) among the messages `seq <= asof` not rejected, in effective-time
        order (resources without a time first, then by time, then by `seq`)."""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM messages WHERE patient=? AND seq<=? AND state!='rejected'"
            " ORDER BY seq",
            (patient, asof),
        )
        latest: dict[tuple[str, str], StoredMessage] = {}
        for m in map(_row, rows):
            key = (m.rtype, m.rid)
            old = latest.get(key)
            if old is None or _version_key(m.version) > _version_key(old.version):
                latest[key] = m
        far = dt.datetime.min.replace(tzinfo=dt.UTC)
        return sorted(latest.values(), key=lambda m: (m.time is not None, m.time or far, m.seq))

    def messages(self) -> list[StoredMessage]:
        """Every message stored, in the order received."""
        return [_row(r) for r in self._query(f"SELECT {_COLUMNS} FROM messages ORDER BY seq")]

    def set_state(self, db: sqlite3.Connection, seqs: Sequence[int], state: str, note: str | None):
        db.executemany(
            "UPDATE messages SET state=?, note=? WHERE seq=?", [(state, note, s) for s in seqs]
        )

    # --- messages held for a Patient that has not arrived ---------------------------------

    def add_held(self, db: sqlite3.Connection, *, topic: str, payload: bytes, patient: str) -> int:
        cur = db.execute(
            "INSERT INTO held (topic, payload, patient, received) VALUES (?, ?, ?, ?)",
            (topic, payload, patient, _now()),
        )
        return int(cur.lastrowid or 0)

    def held(self, patient: str | None = None) -> list[tuple[int, str, bytes, str, str]]:
        """`(seq, topic, payload, patient, received)` of the messages held (for `patient`,
        or all), oldest first."""
        sql = "SELECT seq, topic, payload, patient, received FROM held"
        rows = self._query(sql + " WHERE patient=? ORDER BY seq", (patient,)) if patient else (
            self._query(sql + " ORDER BY seq")
        )  # fmt: skip
        return [(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in rows]

    def drop_held(self, db: sqlite3.Connection, seq: int) -> None:
        db.execute("DELETE FROM held WHERE seq=?", (seq,))

    # --- dead letters, outbox, twins -----------------------------------------------------

    def add_dead_letter(
        self,
        db: sqlite3.Connection,
        *,
        topic: str,
        payload: bytes,
        reason: str,
        message: int | None,
    ) -> int:
        cur = db.execute(
            "INSERT INTO dead_letters (topic, payload, reason, message, received)"
            " VALUES (?, ?, ?, ?, ?)",
            (topic, payload, reason, message, _now()),
        )
        return int(cur.lastrowid or 0)

    def dead_letters(self) -> list[tuple[int, str, bytes, str, int | None]]:
        """`(seq, topic, payload, reason, message)` of every dead letter, in order."""
        return [
            (r[0], r[1], bytes(r[2]), r[3], r[4])
            for r in self._query(
                "SELECT seq, topic, payload, reason, message FROM dead_letters ORDER BY seq"
            )
        ]

    def add_output(self, db: sqlite3.Connection, topic: str, payload: str) -> int:
        cur = db.execute("INSERT INTO outbox (topic, payload) VALUES (?, ?)", (topic, payload))
        return int(cur.lastrowid or 0)

    def unpublished(self, limit: int = 1000) -> list[tuple[int, str, str]]:
        """`(seq, topic, payload)` of the outputs not yet published, oldest first."""
        return [
            tuple(r)
            for r in self._query(
                "SELECT seq, topic, payload FROM outbox WHERE published=0 ORDER BY seq LIMIT ?",
                (limit,),
            )
        ]

    def outputs(self) -> list[tuple[int, str, str, bool]]:
        """`(seq, topic, payload, published)` of every output, in order."""
        return [
            (r[0], r[1], r[2], bool(r[3]))
            for r in self._query("SELECT seq, topic, payload, published FROM outbox ORDER BY seq")
        ]

    def mark_published(self, seqs: Sequence[int]) -> None:
        with self.transaction() as db:
            db.executemany("UPDATE outbox SET published=1 WHERE seq=?", [(s,) for s in seqs])

    def put_twin(
        self, db: sqlite3.Connection, patient: str, substance: str, posterior: dict, asof: int
    ) -> None:
        db.execute(
            "INSERT OR REPLACE INTO twins (patient, substance, posterior, asof)"
            " VALUES (?, ?, ?, ?)",
            (patient, substance, json.dumps(posterior, sort_keys=True), asof),
        )

    def twins(self) -> dict[tuple[str, str], dict[str, Any]]:
        """`(patient, substance) -> posterior` (mode, cov, params, ...; as JSON) of each
        twin, as last computed."""
        return {
            (r[0], r[1]): {**json.loads(r[2]), "asof": r[3]}
            for r in self._query("SELECT patient, substance, posterior, asof FROM twins")
        }


def _version_key(version: str) -> tuple[int, int]:
    return (1, int(version)) if version.isdigit() else (0, 0)
