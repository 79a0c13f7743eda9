"""Audit log entries: what one line of the log says, and its canonical bytes.

An entry is one JSON object on one line, in canonical form: keys sorted, no white space,
ASCII only (other characters as `\\uXXXX` escapes), no NaN or infinities, integers within
±2^53 (the I-JSON profile, RFC 7493). The canonical form makes the bytes a function of the
values, so the same entry always hashes the same and an edit that keeps the values but
changes the spelling (spaces, key order, escapes) is detected too. The form is that of
Python's `json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=True)`, close to
the JSON Canonicalization Scheme (RFC 8785) but not identical to it for floats; the
verifier uses the same encoder, so it is exact here.

    {"action":"forecast","actor":"svc-twins","details":{"drug":"vancomycin"},
     "hash":"<64 hex>","prev":"<64 hex>","seq":7,"subject":"psn-audit-...",
     "time":"2025-03-01T08:15:02.123456Z","v":1}

- `seq`: 0, 1, 2, ... with no gap; `prev`: the previous entry's `hash` (64 zeros for the
  first); `hash`: SHA-256 of the canonical JSON of the entry without `hash`. This is the
  hash chain: an edit, deletion, insertion or swap breaks it at the first entry touched.
- `subject`: a `Pseudonym` or null, never a raw identifier; `details` keys that name a
  patient (`patient`, `mrn`, `identifier`, ...) must hold pseudonyms, and keys that hold
  personal data (`name`, `birth_date`, `address`, ...) are refused outright.
- `actor`: the account or service that acted (staff and services are accountable by
  name; patients appear only as pseudonyms).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from ._pseudonym import NotAPseudonymError, Pseudonym

FORMAT_VERSION = 1
MAX_ENTRY_BYTES = 64 * 1024
"""The longest entry line accepted, in bytes."""
GENESIS_HASH = "0" * 64
"""The `prev` of entry 0."""

_MAX_DEPTH = 16
_MAX_INT = 2**53
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_KEYS = frozenset(("action", "actor", "details", "hash", "prev", "seq", "subject", "time", "v"))

# Keys (lowercase, letters and digits only) that name a patient: their values must be
# pseudonyms. And keys of personal data that have no place in an audit log at all.
_IDENTIFYING_KEYS = frozenset(
    (
        "patient",
        "patients",
        "patientid",
        "patientids",
        "subject",
        "subjectid",
        "mrn",
        "identifier",
        "identifiers",
        "recordnumber",
        "medicalrecordnumber",
    )
)
_PERSONAL_KEYS = frozenset(
    (
        "name",
        "names",
        "familyname",
        "givenname",
        "fullname",
        "birthdate",
        "dateofbirth",
        "dob",
        "address",
        "phone",
        "telecom",
        "email",
        "ssn",
        "nhsnumber",
        "insurancenumber",
    )
)


class AuditAction(enum.Enum):
    """What an audit entry records.

    - `DATA_ACCESS`: patient data read (a FHIR import, a query).
    - `TWIN_UPDATE`: a digital twin calibrated on new observations.
    - `FORECAST`: a twin's forecast made.
    - `RECOMMENDATION`: a dose recommendation made.
    - `EXPORT`: data written out (a results folder, a report, a FHIR bundle).
    - `CONSENT_CHANGE`: a consent decision recorded or changed.
    - `CONSENT_REFUSAL`: a patient left out of a use for want of consent.
    - `TRAINING_ROUND`: a surrogate training or a federated round.
    - `LOG_RECOVERED`: written by the log itself when it opens a log that a crash left
      with a torn last line or entries without a signed head (never by callers).
    """

    DATA_ACCESS = "data-access"
    TWIN_UPDATE = "twin-update"
    FORECAST = "forecast"
    RECOMMENDATION = "recommendation"
    EXPORT = "export"
    CONSENT_CHANGE = "consent-change"
    CONSENT_REFUSAL = "consent-refusal"
    TRAINING_ROUND = "training-round"
    LOG_RECOVERED = "log-recovered"


class EntryError(ValueError):
    """A log line that is not a well-formed entry (the message says why)."""


def canonical_json(value: Any) -> bytes:
    """The canonical JSON bytes of `value` (see the module docstring).

    **Arguments:**

    - `value`: JSON values only (dict with str keys, list, str, int, float, bool, None).

    **Returns:** ASCII bytes, no line end.
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _norm_key(key: str) -> str:
    return re.sub(r"[^a-z0-9]", "", key.lower())


def check_json_value(value: Any, where: str, depth: int = 0) -> Any:
    """`value` as plain JSON (tuples become lists, mappings dicts), or an error naming
    `where` (for example `details['dose']`). Patient-naming keys must hold pseudonyms and
    personal-data keys are refused (see the module docstring).

    **Arguments:**

    - `value`: the value.
    - `where`: its place, for messages.

    **Returns:** the value as JSON.
    """
    if depth > _MAX_DEPTH:
        raise ValueError(f"Audit entry: {where} is nested deeper than {_MAX_DEPTH} levels.")
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if abs(value) > _MAX_INT:
            raise ValueError(
                f"Audit entry: expected integers within ±2^53 (RFC 7493), got {where} = {value}."
            )
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"Audit entry: expected a finite number at {where}, got {value}.")
        return float(value)
    if isinstance(value, list | tuple):
        return [check_json_value(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"Audit entry: expected str keys in {where}, got {key!r}.")
            name = _norm_key(key)
            if name in _PERSONAL_KEYS:
                raise ValueError(
                    f"Audit entry: {where}[{key!r}] would hold personal data; the audit log "
                    "names patients by pseudonym only and holds no names, birth dates, "
                    "addresses or contact details."
                )
            if name in _IDENTIFYING_KEYS:
                _check_pseudonyms(item, f"{where}[{key!r}]")
            out[key] = check_json_value(item, f"{where}[{key!r}]", depth + 1)
        return out
    raise TypeError(
        f"Audit entry: expected JSON values (str, int, float, bool, None, list, dict) at "
        f"{where}, got a {type(value).__name__}."
    )


def _check_pseudonyms(value: Any, where: str) -> None:
    values = value if isinstance(value, list | tuple) else [value]
    for v in values:
        if v is None:
            continue
        try:
            Pseudonym(v)
        except NotAPseudonymError as error:
            raise NotAPseudonymError(f"Audit entry, {where}: {error}") from None


def check_actor(actor: str) -> str:
    """An actor name, checked: a non-empty `str` of at most 256 printable characters.

    **Arguments:**

    - `actor`: the account or service that acted.

    **Returns:** `actor`.
    """
    if not isinstance(actor, str) or not actor or len(actor) > 256 or not actor.isprintable():
        raise ValueError(
            "Audit entry: expected the actor as a non-empty printable str of at most 256 "
            f"characters (an account or service name), got {actor!r}."
        )
    return actor


@dataclasses.dataclass(frozen=True)
class AuditEvent:
    """What to record: an entry before the log gives it its number, time and hashes.

    **Arguments:**

    - `action`: an `AuditAction`.
    - `actor`: the account or service that acted (`check_actor`).
    - `subject`: the patient as a `Pseudonym` (a `str` of that form is accepted and
      checked; anything else, such as a raw identifier, raises `NotAPseudonymError`), or
      `None` when the action concerns no single patient.
    - `details`: a mapping of JSON values (`check_json_value`).
    """

    action: AuditAction
    actor: str
    subject: Pseudonym | None = None
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.action, AuditAction):
            raise TypeError(
                f"Audit entry: expected the action as an AuditAction (for example "
                f"AuditAction.FORECAST), got {self.action!r}."
            )
        check_actor(self.actor)
        if self.subject is not None:
            object.__setattr__(self, "subject", Pseudonym(self.subject))
        if not isinstance(self.details, Mapping):
            raise TypeError(
                f"Audit entry: expected details as a mapping, got {type(self.details).__name__}."
            )
        object.__setattr__(self, "details", check_json_value(self.details, "details"))


@dataclasses.dataclass(frozen=True)
class AuditEntry:
    """One entry of the log, as written (see the module docstring for the fields).

    **Arguments:**

    - `seq`: its number, from 0.
    - `time`: UTC, ISO 8601 with microseconds and `Z` (`2025-03-01T08:15:02.123456Z`).
    - `action`, `actor`, `subject`, `details`: as in `AuditEvent`.
    - `prev`: the previous entry's `hash` (`GENESIS_HASH` for entry 0).
    - `hash`: SHA-256 (hex) of the canonical JSON of the entry without `hash`.
    """

    seq: int
    time: str
    action: AuditAction
    actor: str
    subject: Pseudonym | None
    details: Mapping[str, Any]
    prev: str
    hash: str

    def body(self) -> dict[str, Any]:
        """The entry as a JSON object, without `hash`."""
        return {
            "action": self.action.value,
            "actor": self.actor,
            "details": dict(self.details),
            "prev": self.prev,
            "seq": self.seq,
            "subject": None if self.subject is None else str(self.subject),
            "time": self.time,
            "v": FORMAT_VERSION,
        }

    def line(self) -> bytes:
        """The entry's line in the log (canonical JSON, without the line end)."""
        return canonical_json({**self.body(), "hash": self.hash})

    @property
    def datetime(self) -> dt.datetime:
        """`time` as an aware `datetime.datetime` (UTC)."""
        return dt.datetime.strptime(self.time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)


def format_time(at: dt.datetime) -> str:
    """An aware datetime as the log writes it (UTC, microseconds, `Z`).

    **Arguments:**

    - `at`: an aware `datetime.datetime`.

    **Returns:** the text.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"Expected an aware datetime, got {at!r}.")
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_hash(body: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of an entry's body (the entry without `hash`).

    **Arguments:**

    - `body`: `AuditEntry.body()`.

    **Returns:** 64 lowercase hex digits.
    """
    return hashlib.sha256(canonical_json(body)).hexdigest()


def make_entry(event: AuditEvent, *, seq: int, prev: str, at: dt.datetime) -> AuditEntry:
    """The entry that records `event` as number `seq` after the entry of hash `prev`.

    **Arguments:**

    - `event`: the `AuditEvent`.
    - `seq`, `prev`: its place in the chain.
    - `at`: its time (aware).

    **Returns:** the `AuditEntry`, its hash computed; its line is checked to be at most
    `MAX_ENTRY_BYTES`.
    """
    draft = AuditEntry(
        seq=seq,
        time=format_time(at),
        action=event.action,
        actor=event.actor,
        subject=event.subject,
        details=event.details,
        prev=prev,
        hash="",
    )
    entry = dataclasses.replace(draft, hash=entry_hash(draft.body()))
    size = len(entry.line())
    if size > MAX_ENTRY_BYTES:
        raise ValueError(
            f"Audit entry: expected at most {MAX_ENTRY_BYTES} bytes per entry, got {size}: "
            "keep large data out of the log (record a checksum of it instead)."
        )
    return entry


def parse_entry(line: bytes) -> AuditEntry:
    """The entry of one log line (without its line end), with every check that needs only
    the line: JSON, canonical form, field types, and its own hash. The chain (`seq`,
    `prev`) is the caller's to check.

    **Arguments:**

    - `line`: the bytes.

    **Returns:** the `AuditEntry`.

    **Raises:** `EntryError` saying what is wrong.
    """
    if len(line) > MAX_ENTRY_BYTES:
        raise EntryError(f"the line has {len(line)} bytes, more than {MAX_ENTRY_BYTES}")
    try:
        obj = json.loads(line.decode("ascii"))
    except UnicodeDecodeError:
        raise EntryError("the line is not ASCII (entries are written as ASCII JSON)") from None
    except ValueError as error:
        raise EntryError(f"the line is not JSON ({error})") from None
    if not isinstance(obj, dict) or set(obj) != _KEYS:
        raise EntryError(f"expected an object with the fields {sorted(_KEYS)}")
    try:
        canonical = canonical_json(obj)
    except ValueError as error:
        raise EntryError(f"the line holds a value JSON does not allow ({error})") from None
    if canonical != line:
        raise EntryError("the line is not in canonical form (its bytes were edited)")
    if obj["v"] != FORMAT_VERSION:
        raise EntryError(f"expected format version {FORMAT_VERSION}, got {obj['v']!r}")
    seq = obj["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise EntryError(f"expected seq as a non-negative integer, got {seq!r}")
    if not isinstance(obj["time"], str) or not _TIME.fullmatch(obj["time"]):
        raise EntryError(f"expected time as YYYY-MM-DDTHH:MM:SS.ffffffZ, got {obj['time']!r}")
    try:
        dt.datetime.strptime(obj["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        raise EntryError(f"time {obj['time']!r} is not a valid date and time") from None
    for field in ("prev", "hash"):
        if not isinstance(obj[field], str) or not _HEX64.fullmatch(obj[field]):
            raise EntryError(f"expected {field} as 64 lowercase hex digits")
    try:
        action = AuditAction(obj["action"])
    except ValueError:
        raise EntryError(f"unknown action {obj['action']!r}") from None
    try:
        event = AuditEvent(action, obj["actor"], obj["subject"], obj["details"])
    except (TypeError, ValueError) as error:
        raise EntryError(str(error)) from None
    entry = AuditEntry(
        seq=seq,
        time=obj["time"],
        action=event.action,
        actor=event.actor,
        subject=event.subject,
        details=event.details,
        prev=obj["prev"],
        hash=obj["hash"],
    )
    if entry_hash(entry.body()) != entry.hash:
        raise EntryError("its hash does not match its content (the entry was edited)")
    return entry
