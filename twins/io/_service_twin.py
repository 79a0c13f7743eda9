"""A twin rebuilt from a patient's stored messages (the service's replay), and the FHIR
outputs of one update: the recommendation (a MedicationRequest of `intent = proposal`) and
the forecast (Observations), subjects as pseudonyms.

The twin is a function of the messages alone: the patient's current resources (the latest
version of each, as of a message number) go through `read_fhir` as one bundle, at the
reference time of the latest level, lab or dose among them. So the same messages give the
same twin, whatever order they came in, and a restarted service rebuilds what it had.

`extend` is the incremental form of the same function: when a patient's new messages are
only new level Observations (the common case of a live stream), the previous twin gets the
new levels (read by `read_new_levels`, as `read_fhir` reads them) without the patient's
history being read again. It applies only where the result is the replay's: nothing read
before changed or was retracted, the new Observations give levels and nothing else (a lab
would change the patient), no level moves the patient's time origin, the reference time is
on the same date (ages are computed at its date), and the consent decision at it still
allows treatment. Otherwise it returns `None` and the caller replays.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as dt
import functools
import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import jax
import numpy as np
import pandas as pd

from .._patient import MissingCovariateError
from .._twin import DigitalTwin
from ..drugs import CovariateError, Drug
from ..governance import ConsentRegistry, Pseudonymizer, Purpose
from ._codes import SUBSTANCES
from ._read import FhirImport, read_fhir, read_new_levels
from ._service_store import StoredMessage
from ._write import update_json


@dataclasses.dataclass
class Replay:
    """What replaying a patient's messages for one substance gave.

    - `patient`, `substance`, `asof` (the last message number included), `reference_time`
      (`None`: no level, lab or dose yet), `data` (the `FhirImport`; `None` without a
      reference time).
    - `twin`: the calibrated `DigitalTwin`, or `None`, with `waiting` saying why (no dose of
      the substance yet, the patient's covariates incomplete, ...) or `refused` (the
      consent decision that forbids treatment).
    - `errors`: `(resource type, id) -> reason` for resources `read_fhir` could not read.
    - `origin` (the patient's `TIME = 0`), `levels` (`TIME, DV, CENS, SOURCE`: the levels
      the twin was given), `seen` (`(resource type, id) -> message number` of the resources
      read), `registry` (the consents read): what `extend` builds on.
    - `incremental`: the twin was extended (`extend`), not replayed.
    """

    patient: str
    substance: str
    asof: int
    reference_time: dt.datetime | None
    data: FhirImport | None = None
    twin: DigitalTwin | None = None
    waiting: str | None = None
    refused: tuple[str, str] | None = None
    errors: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    origin: dt.datetime | None = None
    levels: pd.DataFrame | None = None
    seen: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    registry: ConsentRegistry | None = None
    incremental: bool = False


def bundle_of(messages: Sequence[StoredMessage]) -> dict[str, Any]:
    """The messages' resources as one collection Bundle (in the order given)."""
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": json.loads(m.payload)} for m in messages],
    }


def reference_time(messages: Sequence[StoredMessage]) -> dt.datetime | None:
    """The time of the latest level, lab, vital sign or dose among `messages` that is not
    retracted (`entered-in-error`), or `None`."""
    times = [m.time for m in messages if m.time is not None and m.status != "entered-in-error"]
    return max(times) if times else None


def replay(
    messages: Sequence[StoredMessage],
    *,
    patient: str,
    substance: str,
    drug: Drug,
    asof: int,
    pseudonym: str,
    reading: AbstractContextManager | None = None,
    calibrate: bool = True,
) -> Replay:
    """Rebuild the twin of `patient` on `substance` from `messages` (`ServiceStore.history`).

    The twin's patient is named by `pseudonym` (the twin never holds the raw id).
    `reading` is held while the FHIR resources are read: the unit conversions of
    `twins.io` (ucumvert's parser) are not safe to run in two threads at once. With
    `calibrate=False` the twin is given its doses and levels (`DigitalTwin.observe`) but its
    posterior is left for the caller (`twins.update_twins`, many twins in one call).
    """
    at = reference_time(messages)
    out = Replay(patient, substance, asof, at)
    if at is None:
        out.waiting = "no level, lab or dose yet"
        return out
    with reading or contextlib.nullcontext():
        data = read_fhir(bundle_of(messages), reference_time=at, substance=substance, lenient=True)
    out.data = data
    out.seen = {(m.rtype, m.rid): m.seq for m in messages}
    out.registry = data.consent_registry()
    for issue in data.report.errors:
        if (issue.resource_type, issue.resource_id) != ("Patient", patient):
            out.errors[(issue.resource_type, issue.resource_id)] = issue.detail
    if patient not in data.patients:
        why = [i.detail for i in data.report.errors if i.resource_id == patient]
        out.waiting = "the patient cannot be built yet: " + ("; ".join(why) or "no Patient")
        return out
    out.origin = data.origins.get(patient)
    out.levels = data.observations(patient)
    evid = data.patient_records(patient)["EVID"].to_numpy()
    if not np.any(evid == 1):
        out.waiting = f"no dose of {substance} yet"
        return out
    allowed, reason = out.registry.decide(patient, Purpose.TREATMENT, at)
    if not allowed:
        sources = [
            c.source
            for c in data.consents
            if c.patient == patient and c.purpose is Purpose.TREATMENT and c.in_force(at)
        ]
        out.refused = (reason, sources[0] if sources else "")
        return out
    person = dataclasses.replace(data.patients[patient], id=pseudonym)
    try:
        twin = DigitalTwin(drug, person)
    except (MissingCovariateError, CovariateError) as error:  # e.g. no creatinine yet
        out.waiting = f"the twin cannot be built yet: {error}"
        return out
    twin.give(_regimen(data, patient))
    levels = out.levels
    if len(levels):
        twin.observe(levels)
        if calibrate:
            twin.update()
    out.twin = twin
    return out


def extend(
    previous: Replay,
    messages: Sequence[StoredMessage],
    *,
    asof: int,
    reading: AbstractContextManager | None = None,
) -> Replay | None:
    """`replay(messages, ...)` built on `previous` (the replay or extension of the same
    patient and substance from fewer messages) when the new messages are only new levels;
    `None` when it does not apply (see the module docstring): then replay. The twin is a
    copy of the previous one with the new levels observed, its posterior left as it was
    (the warm start; the caller recomputes it, as after `replay(calibrate=False)`)."""
    p = previous
    if (
        p.twin is None
        or p.refused is not None
        or p.origin is None
        or p.levels is None
        or p.reference_time is None
        or p.registry is None
    ):
        return None
    current = {(m.rtype, m.rid): m for m in messages}
    if any(key not in current or current[key].seq != seq for key, seq in p.seen.items()):
        return None  # a resource read before has a new version, or was rejected
    new = [m for key, m in current.items() if key not in p.seen]
    if any(m.rtype != "Observation" or m.status == "entered-in-error" for m in new):
        return None
    at = reference_time(messages)
    if at is None or at.date() != p.reference_time.date():
        return None  # ages are computed at the reference time's date
    person = current.get(("Patient", p.patient))
    if person is None:
        return None
    with reading or contextlib.nullcontext():
        got = read_new_levels(
            json.loads(person.payload),
            [json.loads(m.payload) for m in new],
            patient=p.patient,
            origin=p.origin,
            reference_time=at,
            substance=p.substance,
        )
    if got.errors or got.other or (got.levels["TIME"].to_numpy() < 0).any():
        return None  # a lab, an unreadable resource, or a level before the origin
    allowed, _ = p.registry.decide(p.patient, Purpose.TREATMENT, at)
    if not allowed:
        return None
    twin = copy.copy(p.twin)
    if len(got.levels):
        twin.observe(got.levels)
    levels = pd.concat([p.levels, got.levels], ignore_index=True)
    levels = levels.sort_values("TIME", kind="stable").reset_index(drop=True)
    return Replay(
        p.patient,
        p.substance,
        asof,
        at,
        twin=twin,
        origin=p.origin,
        levels=levels,
        seen={key: m.seq for key, m in current.items()},
        registry=p.registry,
        incremental=True,
    )


_REGIMENS: dict[tuple, Any] = {}


def _regimen(data: FhirImport, patient: str) -> Any:
    """`data.regimen(patient)`, kept by the dose records' values: a new level leaves a
    patient's doses as they were, and checking NONMEM records is most of a replay's cost."""
    rec = data.patient_records(patient)
    doses = rec.loc[rec["EVID"] == 1].drop(columns=["SOURCE"])
    key = (tuple(doses.columns), tuple(doses.itertuples(index=False, name=None)))
    reg = _REGIMENS.get(key)
    if reg is None:
        if len(_REGIMENS) > 4096:
            _REGIMENS.clear()
        reg = _REGIMENS[key] = data.regimen(patient)
    return reg


def posterior_json(twin: DigitalTwin) -> dict[str, Any]:
    """The twin's posterior as JSON values (mode, covariance, parameters, ...)."""
    p = twin.posterior
    return {
        "method": p.method,
        "mode": [float(x) for x in np.asarray(p.mode)],
        "cov": [[float(x) for x in row] for row in np.asarray(p.cov)],
        "params": {k: float(v) for k, v in p.params.items()},
        "converged": bool(p.converged),
        "n_observations": int(p.n_observations),
    }


@dataclasses.dataclass(frozen=True)
class Outputs:
    """One update's results: the recommendation and forecast (twins objects), their FHIR
    resources (JSON), and the audit details of each."""

    recommendation: Any
    forecast: Any
    request: dict[str, Any]
    observations: dict[str, Any]
    start: float


def plan_start(r: Replay) -> float:
    """When the recommended plan starts (h from the patient's origin): at the reference
    time, or one usual interval after the last dose given if that is later."""
    assert r.twin is not None and r.origin is not None and r.reference_time is not None
    now = (r.reference_time - r.origin).total_seconds() / 3600.0
    assert r.twin.history is not None
    given = np.asarray(r.twin.history.time)[np.asarray(r.twin.history.mask)]
    usual = float(r.twin.drug.dosing.interval)
    return max(now, float(given.max()) + usual) if given.size else now


def output_keys(seed: int, asof: int) -> tuple[jax.Array, jax.Array]:
    """The keys of the recommendation and the forecast of the update as of message `asof`
    (a rerun, or a restarted service, gives the same numbers)."""
    key = jax.random.fold_in(jax.random.key(seed), asof)
    k_rec, k_fc = jax.random.split(key)
    return k_rec, k_fc


def output_keys_many(seed: int, asofs: Sequence[int]) -> list[tuple[jax.Array, jax.Array]]:
    """`[output_keys(seed, a) for a in asofs]`, the same keys bit for bit, from one compiled
    call per bucket of batch sizes (8, 16, 32, ...; `seed` static): a batch's keys one
    twin at a time were three dispatched operations each (about 3 ms a twin on two busy
    cores)."""
    if not asofs:
        return []
    n = max(8, 1 << (len(asofs) - 1).bit_length())
    padded = np.zeros(n, np.int64)
    padded[: len(asofs)] = asofs
    k_rec, k_fc = _keys_of(int(seed), jax.numpy.asarray(padded))
    return list(zip(list(k_rec)[: len(asofs)], list(k_fc)[: len(asofs)], strict=True))


@functools.partial(jax.jit, static_argnums=0)
def _keys_of(seed: int, asofs: jax.Array) -> tuple[jax.Array, jax.Array]:
    def one(asof):
        k_rec, k_fc = jax.random.split(jax.random.fold_in(jax.random.key(seed), asof))
        return k_rec, k_fc

    return jax.vmap(one)(asofs)


def outputs(
    r: Replay,
    *,
    results: Pseudonymizer,
    recommendation: Any,
    forecast: Any,
    start: float,
) -> Outputs:
    """The update's recommendation and forecast (`twins.recommend_twins`,
    `twins.forecast_twins`) written as FHIR (subjects and `derivedFrom` as pseudonyms of
    `results`)."""
    assert r.twin is not None and r.origin is not None and r.reference_time is not None
    assert r.levels is not None
    rec, fc = recommendation, forecast
    request, bundle = update_json(
        rec,
        fc,
        patient=r.patient,
        origin=r.origin,
        derived_from=[str(s) for s in r.levels["SOURCE"]],
        substance=r.substance,
        unit=SUBSTANCES[r.substance].unit,
        pseudonymizer=results,
        authored=r.reference_time,
    )
    return Outputs(rec, fc, request, bundle, start)
