"""Errors and the import report of `twins.io.read_fhir`.

Every resource that `read_fhir` sees ends in one of three places: read (into patients,
records, consents, proposals or forecasts), listed in the report as not read with the
reason (`Issue.kind` `"ignored"`, `"duplicate"`, `"superseded"`), or refused (a `FhirError`;
with `lenient=True`, an `Issue` of kind `"error"` in the report instead). Nothing is left out
without a line in the report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

#: The kinds of `Issue`.
ISSUE_KINDS = ("error", "ignored", "duplicate", "superseded")


class FhirError(ValueError):
    """A FHIR resource that is malformed or cannot be used.

    **Attributes:**

    - `resource_type`: `"Observation"`, `"MedicationAdministration"`, ... (`"Bundle"` for
      the wrapper).
    - `resource_id`: the resource's `id`, or its `fullUrl` in a bundle whose resources have
      no id (a transaction bundle); `"?"` when it has neither.
    - `field`: the element at fault, as a FHIRPath-like path (`"valueQuantity.code"`,
      `"effectivePeriod.start"`).
    - `detail`: what is wrong and what was expected.

    The message reads `"<resource_type>/<resource_id> <field>: <detail>"`.
    """

    def __init__(self, resource_type: str, resource_id: str, field: str, detail: str):
        self.resource_type = resource_type
        self.resource_id = resource_id
        self.field = field
        self.detail = detail
        super().__init__(f"{resource_type}/{resource_id} {field}: {detail}")


@dataclasses.dataclass(frozen=True)
class Issue:
    """One resource (or element) not read, and why.

    **Fields:** `kind` (`"error"`: malformed or unusable, refused; `"ignored"`: a status,
    code, resource type or time that is not read by policy; `"duplicate"`: an identical
    copy of a resource already read; `"superseded"`: an older version of a resource, or a
    regimen superseded by administrations), `resource_type`, `resource_id`, `field`,
    `detail`.
    """

    kind: str
    resource_type: str
    resource_id: str
    field: str
    detail: str

    def __post_init__(self):
        if self.kind not in ISSUE_KINDS:
            raise ValueError(f"Issue: kind must be one of {ISSUE_KINDS}, got {self.kind!r}.")

    @classmethod
    def from_error(cls, error: FhirError) -> Issue:
        return cls("error", error.resource_type, error.resource_id, error.field, error.detail)

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ImportReport:
    """What `read_fhir` read and what it did not.

    **Fields:**

    - `read`: resource type -> number of resources read.
    - `issues`: every resource (or element) not read, as `Issue`s, in input order.
    - `lenient`: whether errors were listed (True) instead of raised.
    """

    read: dict[str, int]
    issues: tuple[Issue, ...]
    lenient: bool

    @property
    def errors(self) -> tuple[Issue, ...]:
        """The issues of kind `"error"` (empty unless `lenient`)."""
        return tuple(i for i in self.issues if i.kind == "error")

    def of_kind(self, kind: str) -> tuple[Issue, ...]:
        """The issues of one kind."""
        if kind not in ISSUE_KINDS:
            raise ValueError(f"ImportReport: kind must be one of {ISSUE_KINDS}, got {kind!r}.")
        return tuple(i for i in self.issues if i.kind == kind)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: counts read and not read by kind, and every issue."""
        counts: dict[str, int] = {k: 0 for k in ISSUE_KINDS}
        for i in self.issues:
            counts[i.kind] += 1
        return {
            "lenient": self.lenient,
            "read": dict(sorted(self.read.items())),
            "not_read": counts,
            "issues": [i.to_dict() for i in self.issues],
        }


class Collector:
    """Gathers issues while reading: `fail` raises (strict) or records (lenient)."""

    def __init__(self, lenient: bool):
        self.lenient = lenient
        self.issues: list[Issue] = []
        self.read: dict[str, int] = {}

    def fail(self, error: FhirError) -> None:
        if not self.lenient:
            raise error
        self.issues.append(Issue.from_error(error))

    def note(self, kind: str, resource_type: str, resource_id: str, field: str, detail: str):
        self.issues.append(Issue(kind, resource_type, resource_id, field, detail))

    def count(self, resource_type: str) -> None:
        self.read[resource_type] = self.read.get(resource_type, 0) + 1

    def report(self) -> ImportReport:
        return ImportReport(dict(self.read), tuple(self.issues), self.lenient)

    def extend(self, issues: Iterable[Issue]) -> None:
        self.issues.extend(issues)
