"""A governed use of patient data: what the places that use real patients need.

A trial on a real cohort, a surrogate training set built from one and (later) a federated
round each need the same three things to respect consent: the audit log that their
refusals and data accesses go to, the master key their pseudonyms come from (one purpose
per kind of output, see `Pseudonymizer`), and who is acting. `Governance` holds them, with
the time of the use (an aware datetime; `None` means the moment each use starts).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from ._audit import AuditLog
from ._pseudonym import MasterKey, Pseudonymizer

#: The pseudonym purpose of the audit log's subjects (as in docs/governance.md).
AUDIT_PURPOSE = "audit"


@dataclasses.dataclass(frozen=True)
class Governance:
    """The audit log, the pseudonym key and the actor of a use of real patients' data.

    **Fields:**

    - `audit`: the `AuditLog`: every refusal (`consent-refusal`) and every patient used
      (`data-access`) is appended to it, subjects as pseudonyms of purpose `"audit"`.
    - `key`: the pseudonym `MasterKey` (`load_pseudonym_key`); outputs name patients by
      pseudonyms of their own purpose (`"results"` for a trial's folder, `"training"` for a
      surrogate training set).
    - `actor`: the account or service acting, for the log.
    - `at`: when the use happens, for the consents' periods (an aware datetime); `None`:
      the time at which each use starts (UTC).
    """

    audit: AuditLog
    key: MasterKey
    actor: str = "pkpd-twins"
    at: dt.datetime | None = None

    def __post_init__(self):
        if not isinstance(self.audit, AuditLog):
            raise TypeError(f"Governance: audit must be an AuditLog, got {self.audit!r}.")
        if not isinstance(self.key, MasterKey):
            raise TypeError(
                "Governance: key must be a pseudonym MasterKey (load_pseudonym_key), got "
                f"{type(self.key).__name__}."
            )
        if not isinstance(self.actor, str) or not self.actor.strip():
            raise ValueError(f"Governance: actor must be a non-empty str, got {self.actor!r}.")
        if self.at is not None and (
            not isinstance(self.at, dt.datetime) or self.at.utcoffset() is None
        ):
            raise ValueError(
                f"Governance: at must be an aware datetime (with a time zone), got {self.at!r}."
            )

    def when(self) -> dt.datetime:
        """The time of the use: `at`, or now (UTC)."""
        return self.at if self.at is not None else dt.datetime.now(dt.UTC)

    def pseudonymizer(self, purpose: str) -> Pseudonymizer:
        """The key's `Pseudonymizer` for `purpose`."""
        return self.key.pseudonymizer(purpose)
