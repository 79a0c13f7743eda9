"""`inspect_resource`: one FHIR resource (a message of a stream) read on its own.

`read_fhir` reads a whole bundle; a stream brings one resource at a time, and a service must
know at once whether it can use it: what it is, whose it is, when it happened and, for a
level, lab or dose, that it reads (its code, its unit, its drug). This runs the same
validation (`fhir.resources` R4B) and the same readers as `read_fhir`, on the resource
alone, with the Patient it references stood in by its id.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from ._codes import SUBSTANCES
from ._dispatch import Reading, read_resource
from ._errors import Collector, FhirError, Issue
from ._read import check_patient
from ._source import Index, Resource, load
from ._times import check_aware

_FAR = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)
_STREAMED = ("Patient", "Observation", "MedicationAdministration", "Consent")
_PATIENT_FIELD = {
    "Observation": "subject",
    "MedicationAdministration": "subject",
    "Consent": "patient",
}


@dataclasses.dataclass(frozen=True)
class ResourceInfo:
    """What `inspect_resource` found.

    - `resource_type`, `id`, `version` (`meta.versionId`, `None` without one), `status`.
    - `patient`: the id of the Patient the resource is about (its own id for a Patient).
    - `time`: the aware time of a level, lab, vital sign or dose (`None` for a Patient or a
      Consent, and for a resource not read).
    - `substances`: the substances (`twins.io.SUBSTANCES`) whose records it enters (a level
      or a dose); empty for a Patient, a Consent or a lab.
    - `read`: whether `read_fhir` reads it (False: `notes` say why, e.g. a status
      `entered-in-error`, a LOINC code not in `twins.io.LOINC`, another drug).
    - `notes`: the `Issue`s of kind `"ignored"` (why it is not read).
    - `raw`: the JSON as given.
    """

    resource_type: str
    id: str
    version: str | None
    status: str | None
    patient: str
    time: dt.datetime | None
    substances: tuple[str, ...]
    read: bool
    notes: tuple[Issue, ...]
    raw: Mapping[str, Any]


def _one(raw: Any) -> Resource:
    """`raw` validated by its R4B model (as an entry of a bundle, read by `read_fhir`'s
    loader), or `FhirError`."""
    if not isinstance(raw, dict):
        raise FhirError("Resource", "message", "(resource)", "expected a JSON object.")
    (r,) = load({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": raw}]},
                Collector(lenient=False))  # fmt: skip
    return r


def _patient_id(rtype: str, rid: str, model: Any) -> str:
    if rtype == "Patient":
        return rid
    field = _PATIENT_FIELD[rtype]
    ref = getattr(model, field)
    text = ref.reference if ref is not None else None
    parts = (text or "").split("/_history/")[0].rstrip("/").split("/")
    if len(parts) < 2 or parts[-2] != "Patient" or not parts[-1]:
        raise FhirError(
            rtype,
            rid,
            f"{field}.reference",
            f"expected a reference to a Patient (Patient/<id>), got {text!r}.",
        )
    return parts[-1]


def inspect_resource(
    raw: Any,
    *,
    substances: Sequence[str] = ("vancomycin",),
    preliminary: bool = False,
    reference_time: dt.datetime | None = None,
) -> ResourceInfo:
    """Validate and read one Patient, Observation, MedicationAdministration or Consent.

    **Arguments:**

    - `raw`: the resource as JSON (a dict).
    - `substances`: the drugs of interest (`twins.io.SUBSTANCES` names): a level or a dose
      of none of them is not read (`read = False`, a note naming the drug).
    - `preliminary`: read Observations of status `preliminary` (as `read_fhir`).
    - `reference_time`: an aware datetime; a level, lab or dose after it is not read.
      Default: no limit.

    **Returns:** a `ResourceInfo`.

    **Raises:** `FhirError` naming the resource type, id and field, as `read_fhir` would for
    the same resource: not JSON of a resource, refused by the R4B model, a resource type
    other than the four, a reference that is not to a Patient, a unit that cannot be
    converted, a time without a zone, a status that cannot be used, ...
    """
    unknown = [s for s in substances if s not in SUBSTANCES]
    if unknown or not substances:
        raise ValueError(
            f"inspect_resource: substances must be names of {list(SUBSTANCES)}, got "
            f"{list(substances)!r}."
        )
    at = _FAR if reference_time is None else check_aware(reference_time, "reference_time")
    r = _one(raw)
    if r.rtype not in _STREAMED:
        raise FhirError(
            r.rtype, r.rid, "resourceType", f"expected one of {list(_STREAMED)} in a stream."
        )
    if not isinstance(r.raw.get("id"), str) or not r.raw["id"]:
        raise FhirError(r.rtype, r.rid, "id", "expected an id (a message is named by it).")
    meta = r.raw.get("meta")
    version = meta.get("versionId") if isinstance(meta, dict) else None
    patient = _patient_id(r.rtype, r.rid, r.model)
    index = Index([r, _one({"resourceType": "Patient", "id": patient})])
    if r.rtype == "Patient":
        check_patient(r)
    status = getattr(r.model, "status", None)
    time: dt.datetime | None = None
    found: list[str] = []
    notes: list[Issue] = []
    read = False
    for name in substances:
        col = Collector(lenient=False)
        rd = Reading(index, col, SUBSTANCES[name], at, preliminary)
        read_resource(r, rd)
        counted = bool(col.report().read)
        if rd.doses.get(patient):
            time = rd.doses[patient][0].start
            found.append(name)
        for v in rd.values.get(patient, ()):
            time = v.time
            if v.loinc.kind == "level":
                found.append(name)
        read = read or counted or r.rtype == "Patient"
        notes.extend(i for i in col.report().issues if i not in notes)
    if read:
        notes = []
    return ResourceInfo(
        resource_type=r.rtype,
        id=r.rid,
        version=version,
        status=status,
        patient=patient,
        time=time,
        substances=tuple(found),
        read=read,
        notes=tuple(notes),
        raw=r.raw,
    )
