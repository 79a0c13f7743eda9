"""Consent: who may be used for what, and when.

A `Consent` is one patient's decision (permit or deny) for one `Purpose` over a period, as
a FHIR R4 Consent resource states it (`twins.io.read_fhir` reads them; nothing here knows
FHIR). A `ConsentRegistry` holds the decisions of many patients and answers, for a purpose
and a time, who may be used; the places that use data (a trial's real-cohort population, a
surrogate training set, a federated round) ask it, and every refusal can be written to the
audit log.

Rules, in order:

1. A decision applies at time `at` if `start <= at < end` (an open end never ends).
2. For a patient and purpose, a `deny` in force wins over any `permit` in force (the
   patient's most restrictive statement holds, as in FHIR's `provision.type`).
3. A `permit` in force allows.
4. No decision in force: the registry's default for that purpose (`DEFAULTS`: treatment is
   allowed, research and federated training are not: opt-in).

Every time is an aware `datetime.datetime` (a period without a zone would be read
differently at each site); a naive one is an error, also for a patient without consents.

With `split(..., audit=log, pseudonymizer=...)` every refusal is written to the audit
log as a `consent-refusal` entry naming the patient's pseudonym, the purpose and the
reason (never the raw identifier, nor the consent resource's id, which may embed one);
`log_consents` writes a `consent-change` entry per decision recorded.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import types
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from ._entries import AuditAction, AuditEntry, AuditEvent
from ._pseudonym import Pseudonymizer

if TYPE_CHECKING:
    from ._audit import AuditLog


class Purpose(enum.Enum):
    """What data is used for (the `Consent.provision.purpose` of FHIR).

    - `TREATMENT`: the patient's own care (a twin's forecast and dose recommendation);
      HL7 v3 ActReason `TREAT`.
    - `RESEARCH`: research and virtual trials on real patients (a trial's real-cohort
      population, a surrogate training set); ActReason `HRESCH` (and `CLINTRCH`).
    - `FEDERATED_TRAINING`: a federated learning round across hospitals.
    """

    TREATMENT = "treatment"
    RESEARCH = "research"
    FEDERATED_TRAINING = "federated-training"


class Decision(enum.Enum):
    """A consent's decision: FHIR `Consent.provision.type` (`permit` or `deny`)."""

    PERMIT = "permit"
    DENY = "deny"


# Without any decision in force: care is allowed, secondary use is opt-in. Read-only, so
# that no caller can change the defaults of every registry at once.
DEFAULTS: Mapping[Purpose, Decision] = types.MappingProxyType(
    {
        Purpose.TREATMENT: Decision.PERMIT,
        Purpose.RESEARCH: Decision.DENY,
        Purpose.FEDERATED_TRAINING: Decision.DENY,
    }
)


def _aware(value: dt.datetime | None, what: str) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, dt.datetime):
        raise TypeError(f"Consent: expected {what} as a datetime.datetime, got {value!r}.")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"Consent: expected {what} with a time zone (an aware datetime), got {value!r}: "
            "a consent period without a zone would be read differently by each site."
        )
    return value


@dataclasses.dataclass(frozen=True)
class Consent:
    """One patient's decision for one purpose over a period.

    **Arguments:**

    - `patient`: the patient's identifier as the data names it (the same string as
      `Patient.id` after reading; internal, never written out: outputs carry pseudonyms).
    - `purpose`: a `Purpose`.
    - `decision`: a `Decision` (or `"permit"` / `"deny"`).
    - `start`, `end`: the period, aware datetimes; `None` for open. `end` is exclusive.
    - `source`: where the decision comes from (for example `"Consent/abc"`, the FHIR
      resource), for the audit log and error messages.
    """

    patient: str
    purpose: Purpose
    decision: Decision
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    source: str = ""

    def __post_init__(self):
        if not isinstance(self.patient, str) or not self.patient:
            raise ValueError(f"Consent: expected a non-empty patient id, got {self.patient!r}.")
        if not isinstance(self.purpose, Purpose):
            raise TypeError(f"Consent: expected purpose as a Purpose, got {self.purpose!r}.")
        if isinstance(self.decision, str):
            try:
                object.__setattr__(self, "decision", Decision(self.decision))
            except ValueError:
                raise ValueError(
                    f"Consent {self.source or self.patient}: expected decision 'permit' or "
                    f"'deny', got {self.decision!r}."
                ) from None
        if not isinstance(self.decision, Decision):
            raise TypeError(f"Consent: expected decision as a Decision, got {self.decision!r}.")
        start = _aware(self.start, "start")
        end = _aware(self.end, "end")
        if start is not None and end is not None and not end > start:
            raise ValueError(
                f"Consent {self.source or self.patient}: expected end after start, got "
                f"start {start.isoformat()} and end {end.isoformat()}."
            )

    def in_force(self, at: dt.datetime) -> bool:
        """Whether the decision applies at `at` (an aware datetime): `start <= at < end`."""
        _check_at(at)
        return (self.start is None or self.start <= at) and (self.end is None or at < self.end)


def _check_at(at: dt.datetime) -> None:
    if at is None:
        raise TypeError("Consent: expected the time `at` as an aware datetime, got None.")
    _aware(at, "the time `at`")


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A patient left out for a purpose, and why (`ConsentRegistry.split`).

    **Arguments:**

    - `patient`: the patient's identifier (internal, as in `Consent`).
    - `purpose`: the `Purpose` refused.
    - `reason`: `"denied by Consent/abc"` or `"no consent in force (default: deny)"`.
    - `source`: the `source` of the denying consent (`""` when the default refused).
    """

    patient: str
    purpose: Purpose
    reason: str
    source: str = ""


class ConsentRegistry:
    """The consent decisions of many patients (see the module's rules).

    **Arguments:**

    - `consents`: `Consent`s, any order, any number per patient.
    - `defaults`: the decision for a purpose when none is in force; `DEFAULTS` for the
      purposes not given.
    """

    def __init__(
        self,
        consents: Iterable[Consent] = (),
        *,
        defaults: Mapping[Purpose, Decision | str] | None = None,
    ):
        self._by_patient: dict[str, list[Consent]] = {}
        for c in consents:
            if not isinstance(c, Consent):
                raise TypeError(f"ConsentRegistry: expected Consent objects, got {c!r}.")
            self._by_patient.setdefault(c.patient, []).append(c)
        merged = dict(DEFAULTS)
        for purpose, decision in (defaults or {}).items():
            if not isinstance(purpose, Purpose):
                raise TypeError(f"ConsentRegistry: expected Purpose keys, got {purpose!r}.")
            try:
                merged[purpose] = Decision(decision)
            except ValueError:
                raise ValueError(
                    f"ConsentRegistry: expected the default for {purpose.value} as 'permit' or "
                    f"'deny', got {decision!r}."
                ) from None
        self.defaults: Mapping[Purpose, Decision] = types.MappingProxyType(merged)

    @property
    def consents(self) -> tuple[Consent, ...]:
        """Every `Consent` held, grouped by patient."""
        return tuple(c for cs in self._by_patient.values() for c in cs)

    def _decide(
        self, patient: str, purpose: Purpose, at: dt.datetime
    ) -> tuple[bool, str, Consent | None]:
        if not isinstance(patient, str):
            raise TypeError(f"ConsentRegistry: expected the patient id as a str, got {patient!r}.")
        if not isinstance(purpose, Purpose):
            raise TypeError(f"ConsentRegistry: expected a Purpose, got {purpose!r}.")
        _check_at(at)  # also for a patient without consents
        in_force = [
            c for c in self._by_patient.get(patient, ()) if c.purpose is purpose and c.in_force(at)
        ]
        denied = [c for c in in_force if c.decision is Decision.DENY]
        if denied:
            return False, f"denied by {denied[0].source or 'a consent'}", denied[0]
        permitted = [c for c in in_force if c.decision is Decision.PERMIT]
        if permitted:
            return True, f"permitted by {permitted[0].source or 'a consent'}", permitted[0]
        default = self.defaults[purpose]
        return default is Decision.PERMIT, f"no consent in force (default: {default.value})", None

    def decide(self, patient: str, purpose: Purpose, at: dt.datetime) -> tuple[bool, str]:
        """`(allowed, reason)` for `patient` and `purpose` at `at` (an aware datetime)."""
        allowed, reason, _ = self._decide(patient, purpose, at)
        return allowed, reason

    def allows(self, patient: str, purpose: Purpose, at: dt.datetime) -> bool:
        """Whether `patient` may be used for `purpose` at `at`."""
        return self.decide(patient, purpose, at)[0]

    def split(
        self,
        patients: Iterable[str],
        purpose: Purpose,
        at: dt.datetime,
        *,
        audit: AuditLog | None = None,
        pseudonymizer: Pseudonymizer | None = None,
        actor: str = "pkpd-twins",
    ) -> tuple[list[str], list[Refusal]]:
        """The patients that may be used for `purpose` at `at` (in the given order), and a
        `Refusal` for each of the others.

        **Arguments:**

        - `patients`: patient ids.
        - `purpose`: the `Purpose` of the use.
        - `at`: when (an aware datetime).
        - `audit`: an `AuditLog`: each refusal is appended as a `consent-refusal` entry
          (all in one batch, under one signed head), its subject the patient's pseudonym,
          its details the purpose, the time asked about and the reason (`"denied by a
          consent in force"` with the consent's pseudonym, or the default). Needs
          `pseudonymizer`.
        - `pseudonymizer`: makes the pseudonyms of the log (purpose `"audit"` is usual).
        - `actor`: the account or service that asked, for the log.

        **Returns:** `(allowed, refusals)`.
        """
        if audit is not None and not isinstance(pseudonymizer, Pseudonymizer):
            raise TypeError(
                "ConsentRegistry.split: logging refusals to an audit log needs a "
                "Pseudonymizer (pseudonymizer=...), so that the log names no raw identifier."
            )
        allowed, refused = [], []
        for p in patients:
            ok, reason, consent = self._decide(p, purpose, at)
            if ok:
                allowed.append(p)
            else:
                source = consent.source if consent is not None else ""
                refused.append(Refusal(p, purpose, reason, source))
        if audit is not None and refused:
            assert pseudonymizer is not None
            events = [_refusal_event(r, at, pseudonymizer, actor) for r in refused]
            audit.append_many(events)
        return allowed, refused


def _refusal_event(
    refusal: Refusal, at: dt.datetime, pseudonymizer: Pseudonymizer, actor: str
) -> AuditEvent:
    details: dict[str, object] = {
        "purpose": refusal.purpose.value,
        "at": at.isoformat(),
    }
    if refusal.source.strip():
        details["reason"] = "denied by a consent in force"
        details["consent"] = pseudonymizer.pseudonym(refusal.source.strip())
    else:
        details["reason"] = refusal.reason  # the default: no identifier in it
    return AuditEvent(
        AuditAction.CONSENT_REFUSAL,
        actor,
        pseudonymizer.pseudonym(refusal.patient),
        details,
    )


def log_consents(
    consents: Iterable[Consent],
    audit: AuditLog,
    *,
    pseudonymizer: Pseudonymizer,
    actor: str = "pkpd-twins",
) -> list[AuditEntry]:
    """Record consent decisions in the audit log: one `consent-change` entry each (one
    batch, one signed head), naming the patient's and the consent's pseudonyms, the
    purpose, the decision and the period.

    **Arguments:**

    - `consents`: the `Consent`s read or changed.
    - `audit`: the `AuditLog`.
    - `pseudonymizer`: makes the log's pseudonyms.
    - `actor`: the account or service that recorded them.

    **Returns:** the entries written.
    """
    if not isinstance(pseudonymizer, Pseudonymizer):
        raise TypeError("log_consents: expected a Pseudonymizer (pseudonymizer=...).")
    events = []
    for c in consents:
        if not isinstance(c, Consent):
            raise TypeError(f"log_consents: expected Consent objects, got {type(c).__name__}.")
        details: dict[str, object] = {
            "purpose": c.purpose.value,
            "decision": c.decision.value,
            "start": None if c.start is None else c.start.isoformat(),
            "end": None if c.end is None else c.end.isoformat(),
        }
        if c.source.strip():
            details["consent"] = pseudonymizer.pseudonym(c.source.strip())
        events.append(
            AuditEvent(
                AuditAction.CONSENT_CHANGE, actor, pseudonymizer.pseudonym(c.patient), details
            )
        )
    return audit.append_many(events)
