"""`TwinService`: live digital twins fed by FHIR R4 messages (see docs/live-twins.md).

The service keeps one `DigitalTwin` per (pseudonymised) patient and drug. Its two steps:

1. `receive(topic, payload)`: a message (one FHIR resource as JSON) is checked by
   `inspect_resource` and stored in the `ServiceStore` (one SQLite transaction) before it
   is acknowledged; a duplicate (same type, id and version, same content) changes nothing;
   anything unusable becomes a dead letter with the reason. Nothing raises.
2. `process()`: the messages received since the last call are processed together. Each
   patient they concern is rebuilt once, from its stored messages (`replay`), as of the
   last message of the batch; then the twin's dose recommendation and forecast are written
   as FHIR (subjects as pseudonyms) to the outbox, every update, recommendation, forecast
   and consent refusal to the audit log (one signed append per batch), and the messages are
   marked processed, in one transaction.

A crash between the audit append and that commit would repeat the batch on restart: the
service reads the log when it starts, and a batch already logged is not logged again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._twin import DigitalTwin
from .._twin_batch import forecast_twins, recommend_twins, update_twins
from ..drugs import Drug
from ..governance import (
    AuditAction,
    AuditEvent,
    Governance,
    read_entries,
)
from ._codes import SUBSTANCES
from ._errors import FhirError
from ._service_dosing import DosingAdvice
from ._service_store import ServiceStore, StoredMessage, digest
from ._service_twin import (
    Replay,
    extend,
    output_keys_many,
    outputs,
    plan_start,
    posterior_json,
    replay,
)
from ._stream_read import inspect_resource
from ._write import reference_pseudonym

log = logging.getLogger("twins.serve")

STREAMED = ("Patient", "Observation", "MedicationAdministration", "Consent")


@dataclasses.dataclass(frozen=True)
class Topics:
    """The MQTT topics of one site (docs/live-twins.md):

    - `twins/<site>/in/<ResourceType>`: messages in (`Patient`, `Observation`,
      `MedicationAdministration`, `Consent`); `subscription` is `twins/<site>/in/+`;
    - `twins/<site>/out/recommendation`, `twins/<site>/out/forecast`: results;
    - `twins/<site>/dead-letter`: what could not be used, with the reason;
    - `twins/<site>/status`: the service's status (retained).
    """

    site: str

    def __post_init__(self):
        if (
            not self.site
            or any(c in self.site for c in "/+#\x00")
            or self.site != self.site.strip()
        ):
            raise ValueError(
                f"Topics: the site must be a non-empty name without '/', '+', '#' or spaces "
                f"at its ends, got {self.site!r}."
            )

    def input(self, resource_type: str) -> str:
        return f"twins/{self.site}/in/{resource_type}"

    @property
    def subscription(self) -> str:
        return f"twins/{self.site}/in/+"

    @property
    def recommendation(self) -> str:
        return f"twins/{self.site}/out/recommendation"

    @property
    def forecast(self) -> str:
        return f"twins/{self.site}/out/forecast"

    @property
    def dead_letter(self) -> str:
        return f"twins/{self.site}/dead-letter"

    @property
    def status(self) -> str:
        return f"twins/{self.site}/status"


@dataclasses.dataclass(frozen=True)
class Receipt:
    """What `receive` did: `outcome` `"stored"`, `"duplicate"`, `"held"` (about a patient
    whose Patient resource has not arrived: kept, and received again when it comes) or
    `"dead-letter"`; `message` (the stored message's number), `held` or `dead_letter` (the
    number of the held message or of the dead letter); `reason`."""

    outcome: str
    message: int | None = None
    dead_letter: int | None = None
    reason: str = ""
    held: int | None = None


class TwinService:
    """Live twins of one site (see the module docstring and docs/live-twins.md).

    **Arguments:**

    - `store`: the SQLite database file (created if missing; reopened after a restart).
    - `site`: the site's name in the topics (`Topics`).
    - `drugs`: substance (`twins.io.SUBSTANCES` name) -> `twins.Drug` of its twins, e.g.
      `{"vancomycin": twins.drugs.get("vancomycin_goti2018")}`.
    - `governance`: the audit log, pseudonym key and actor (`twins.governance.Governance`):
      outputs name patients and resources by pseudonyms of purpose `"results"`, the log by
      pseudonyms of purpose `"audit"`.
    - `intervals`: dosing intervals (h) the recommendation chooses from (default: the
      drug's usual one); `forecast_hours`: forecast times (h) from the plan's first dose.
    - `n_draws`: posterior draws of the recommendation and forecast; `seed`: their key
      (folded with the batch's last message number, so a rerun gives the same numbers).
    - `batch_size`: at most this many messages per `process()` call.
    - `hold_unknown`: seconds a message about a patient whose Patient resource has not
      arrived is held (stored apart, acknowledged) before it becomes a dead letter; when
      the Patient comes, the held messages are received again, in the order they came.
      `0`: a dead letter at once.
    - `incremental`: a patient's new levels extend its twin (`extend` in
      twins/io/_service_twin.py) where that gives the replay's twin; `False`: every update
      replays the patient's messages (the same results, slower; for checking).
    - `dosing`: substance -> `twins.io.DosingAdvice` (`read_dosing` reads them from a TOML
      file): the dose constraints its recommendations respect (strengths, minimum and
      maximum dose, maximum infusion rate, allowed intervals) and a loading dose; a
      substance not named gets the continuous optimum. Checked here: a constraint that
      forbids one of `intervals` is a `ValueError` naming the substance.
    """

    def __init__(
        self,
        store: str | os.PathLike,
        *,
        site: str,
        drugs: Mapping[str, Drug],
        governance: Governance,
        intervals: Sequence[float] | None = None,
        forecast_hours: Sequence[float] = (0.0, 6.0, 12.0, 24.0),
        n_draws: int = 200,
        seed: int = 0,
        batch_size: int = 256,
        incremental: bool = True,
        hold_unknown: float = 60.0,
        dosing: Mapping[str, DosingAdvice] | None = None,
    ):
        if not drugs or any(s not in SUBSTANCES for s in drugs):
            raise ValueError(
                f"TwinService: drugs must map names of {list(SUBSTANCES)} to twins.Drug, "
                f"got {list(drugs)}."
            )
        for s, d in drugs.items():
            if not isinstance(d, Drug):
                raise TypeError(f"TwinService: drugs[{s!r}] must be a twins.Drug, got {d!r}.")
        if not isinstance(governance, Governance):
            raise TypeError(f"TwinService: expected a Governance, got {governance!r}.")
        self.topics = Topics(site)
        self.drugs = dict(drugs)
        self.governance = governance
        self.intervals = None if intervals is None else tuple(float(i) for i in intervals)
        self.forecast_hours = tuple(float(h) for h in forecast_hours)
        self.n_draws = int(n_draws)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.incremental = bool(incremental)
        if not (isinstance(hold_unknown, int | float) and 0 <= hold_unknown < float("inf")):
            raise ValueError(
                f"TwinService: hold_unknown must be a number of seconds >= 0, got {hold_unknown!r}."
            )
        self.hold_unknown = float(hold_unknown)
        self.dosing: dict[str, DosingAdvice] = {}
        for s, advice in (dosing or {}).items():
            if s not in self.drugs:
                raise ValueError(
                    f"TwinService: dosing[{s!r}]: not a substance of drugs {list(self.drugs)}."
                )
            if not isinstance(advice, DosingAdvice):
                raise TypeError(
                    f"TwinService: dosing[{s!r}] must be a twins.io.DosingAdvice, got "
                    f"{advice!r:.80}."
                )
            advice.check_intervals(self.intervals, f"TwinService: dosing[{s!r}]")
            self.dosing[s] = advice
        self.store = ServiceStore(store)
        self._results = _Memo(governance.pseudonymizer("results"))
        self._audit_names = _Memo(governance.pseudonymizer("audit"))
        self._twins: dict[tuple[str, str], DigitalTwin] = {}
        # (patient, substance) -> the replay (or extension) of the twin computed last: a
        # new level extends it (`extend`) instead of replaying the patient's messages
        self._replays: dict[tuple[str, str], Replay] = {}
        #: twins rebuilt since the service started: by `extend` or by a full replay
        self.counts = {"extended": 0, "replayed": 0}
        # held while FHIR is read: receive() runs in the MQTT thread, process() in another,
        # and the unit conversions of twins.io (ucumvert's lark parser) are not thread-safe
        self._reading = threading.Lock()
        self._logged = self._logged_messages()
        # held messages are released (received again) or expired under this lock, never both
        self._holding = threading.RLock()
        for pid in sorted({h[3] for h in self.store.held()}):
            if self.store.has_patient(pid):  # the Patient came just before a stop
                self._release(pid)

    def close(self) -> None:
        self.store.close()

    # --- receiving -----------------------------------------------------------------------

    def receive(self, topic: str, payload: bytes | str) -> Receipt:
        """Check and store one message (see the module docstring); never raises for bad
        input: a dead letter says why."""
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        try:
            receipt = self._receive(topic, data)
        except _Held as held:
            return self._hold(topic, data, held.patient, str(held))
        except _Dead as dead:
            return self._dead(topic, data, str(dead), None)
        if receipt.outcome == "stored" and topic == self.topics.input("Patient"):
            self._release(json.loads(data)["id"])
        return receipt

    def _hold(self, topic: str, data: bytes, patient: str, reason: str) -> Receipt:
        with self.store.transaction() as db:
            seq = self.store.add_held(db, topic=topic, payload=data, patient=patient)
        log.info("held (%s): %s", topic, reason)
        return Receipt("held", held=seq, reason=reason)

    def _release(self, patient: str) -> None:
        """Receive again the messages held for `patient` (its Patient has been stored)."""
        with self._holding:
            for seq, topic, payload, _, _ in self.store.held(patient):
                receipt = self.receive(topic, payload)
                log.info("released held message %d (%s): %s", seq, topic, receipt.outcome)
                with self.store.transaction() as db:
                    self.store.drop_held(db, seq)

    def expire_held(self, now: dt.datetime | None = None) -> int:
        """Dead-letter the messages held longer than `hold_unknown` (their Patient did not
        come); returns how many. `process()` calls it."""
        now = now or dt.datetime.now(dt.UTC)
        expired = 0
        with self._holding:
            for seq, topic, payload, patient, received in self.store.held():
                since = dt.datetime.fromisoformat(received)
                if (now - since).total_seconds() < self.hold_unknown:
                    continue
                reason = (
                    f"unknown patient Patient/{patient}: its Patient resource did not arrive "
                    f"within {self.hold_unknown:g} s (held since {received}); send the Patient "
                    "first, then this message again"
                )
                log.warning("dead letter (%s): %s", topic, reason)
                with self.store.transaction() as db:
                    self._dead_in(db, topic, payload, reason, None)
                    self.store.drop_held(db, seq)
                expired += 1
        return expired

    def _receive(self, topic: str, data: bytes) -> Receipt:
        prefix = self.topics.input("")
        if not topic.startswith(prefix) or topic[len(prefix) :] not in STREAMED:
            raise _Dead(f"topic {topic!r}: expected {prefix}<one of {list(STREAMED)}>")
        expected = topic[len(prefix) :]
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            raise _Dead(f"not UTF-8 JSON: {error}") from None
        if not isinstance(raw, dict):
            raise _Dead(f"expected a JSON object (a FHIR resource), got {type(raw).__name__}")
        if raw.get("resourceType") != expected:
            raise _Dead(
                f"the topic is for {expected} resources, got resourceType "
                f"{raw.get('resourceType')!r}"
            )
        try:
            with self._reading:  # twins.io's unit parser is not thread-safe
                info = inspect_resource(raw, substances=list(self.drugs))
        except FhirError as error:
            raise _Dead(str(error)) from None
        except Exception as error:  # any other failure of a reader is the input's fault
            raise _Dead(f"{expected}: cannot be read ({type(error).__name__}: {error})") from None
        where = f"{info.resource_type}/{info.id}"
        version = info.version or ""
        if version and not version.isdigit():
            raise _Dead(
                f"{where} meta.versionId: expected a whole number (versions are ordered by "
                f"it), got {version!r}"
            )
        if not info.read and info.status != "entered-in-error":
            why = "; ".join(f"{i.field}: {i.detail}" for i in info.notes) or "not read"
            raise _Dead(f"{where} is not used by this service ({why})")
        if info.resource_type != "Patient" and not self.store.has_patient(info.patient):
            if self.hold_unknown > 0:
                raise _Held(
                    f"{where}: unknown patient Patient/{info.patient}, held up to "
                    f"{self.hold_unknown:g} s for its Patient resource",
                    info.patient,
                )
            raise _Dead(
                f"{where}: unknown patient Patient/{info.patient} (send its Patient resource "
                "first, then this message again)"
            )
        payload = json.dumps(raw, sort_keys=True, separators=(",", ":"))
        with self.store.transaction() as db:
            old = self.store.find(info.resource_type, info.id, version)
            if old is not None:
                if old[1] == digest(payload):
                    return Receipt("duplicate", message=old[0])
                raise _Dead(
                    f"{where} meta.versionId: a different resource with the same id and version "
                    f"({version or 'none'}) was received before; expected a new versionId"
                )
            seq = self.store.add_message(
                db,
                rtype=info.resource_type,
                rid=info.id,
                version=version,
                patient=info.patient,
                time=info.time,
                status=info.status,
                topic=topic,
                payload=payload,
            )
        return Receipt("stored", message=seq)

    def _dead(self, topic: str, data: bytes, reason: str, message: int | None) -> Receipt:
        log.warning("dead letter (%s): %s", topic, reason)
        with self.store.transaction() as db:
            seq = self._dead_in(db, topic, data, reason, message)
        return Receipt("dead-letter", dead_letter=seq, reason=reason)

    def _dead_in(self, db, topic: str, data: bytes, reason: str, message: int | None) -> int:
        seq = self.store.add_dead_letter(
            db, topic=topic, payload=data, reason=reason, message=message
        )
        body = {"dead_letter": seq, "topic": topic, "reason": reason, "message": message}
        self.store.add_output(db, self.topics.dead_letter, json.dumps(body, sort_keys=True))
        return seq

    # --- processing ----------------------------------------------------------------------

    def _logged_messages(self) -> set[int]:
        """The message numbers that batches already in the audit log name."""
        path = self.governance.audit.path
        if not os.path.exists(path):
            return set()
        done: set[int] = set()
        for e in read_entries(path):
            if e.actor == self.governance.actor and isinstance(e.details, Mapping):
                for seq in e.details.get("messages", ()) or ():
                    if isinstance(seq, int):
                        done.add(seq)
        return done

    def process(self) -> list[tuple[str, dict[str, Any]]]:
        """Process the messages received and not yet processed (at most `batch_size`).

        **Returns:** the outputs written to the outbox, as `(topic, JSON)` (none for a batch
        whose patients have no twin yet: to drain the store, loop while
        `store.pending(1)` is not empty).
        """
        if self.hold_unknown > 0:
            self.expire_held()
        batch = self.store.pending(self.batch_size)
        if not batch:
            return []
        redo = [m.seq for m in batch if m.seq in self._logged]
        if redo:  # a batch logged before a crash: the same messages again, not logged again
            batch = [m for m in batch if m.seq <= max(redo)]
        asof = max(m.seq for m in batch)
        by_patient: dict[str, list[StoredMessage]] = {}
        for m in batch:
            by_patient.setdefault(m.patient, []).append(m)
        events: list[AuditEvent] = []
        out: list[tuple[str, dict[str, Any]]] = []
        dead: list[tuple[StoredMessage, str]] = []
        rejected: list[tuple[StoredMessage, str]] = []
        twins: list[tuple[str, str, DigitalTwin | None, int]] = []
        notes: dict[int, str] = {}
        replays: list[tuple[str, list[StoredMessage], Replay]] = []
        for pid, mine in by_patient.items():
            history = self.store.history(pid, asof)
            # the twin, its key and its outputs depend on the patient's messages alone, not
            # on how they were batched: as of the patient's last message
            upto = max((m.seq for m in history), default=asof)
            for substance, drug in self.drugs.items():
                try:
                    before = self._replays.get((pid, substance))
                    r = None
                    if before is not None and self.incremental:
                        r = extend(before, history, asof=upto, reading=self._reading)
                    if r is None:
                        r = replay(
                            history,
                            patient=pid,
                            substance=substance,
                            drug=drug,
                            asof=upto,
                            pseudonym=self._results.pseudonym(pid),
                            reading=self._reading,
                            calibrate=False,
                        )
                    for m in mine:
                        if (m.rtype, m.rid) in r.errors:
                            rejected.append((m, r.errors[(m.rtype, m.rid)]))
                    replays.append((pid, mine, r))
                except Exception as error:  # one patient's failure stops no one else
                    log.exception("the %s twin of a patient could not be rebuilt", substance)
                    dead.extend(_failed(mine, substance, error))
        computed = self._compute([r for _, _, r in replays])
        for _, mine, r in replays:
            try:
                self._one(r, mine, events, out, dead, twins, notes, computed.get(id(r)))
            except Exception as error:  # one patient's failure stops no one else
                log.exception("the %s twin of a patient could not be updated", r.substance)
                dead.extend(_failed(mine, r.substance, error))
        if not redo:
            self.governance.audit.append_many(events)
        with self.store.transaction() as db:
            for m, reason in rejected:
                self.store.set_state(db, [m.seq], "rejected", reason)
                self._dead_in(db, m.topic, m.payload.encode(), reason, m.seq)
            for m, reason in dead:
                self._dead_in(db, m.topic, m.payload.encode(), reason, m.seq)
            bad = {m.seq for m, _ in rejected}
            for m in batch:
                if m.seq not in bad:
                    self.store.set_state(db, [m.seq], "done", notes.get(m.seq))
            for pid, substance, twin, upto in twins:
                name = self._results.pseudonym(pid)
                if twin is None:
                    db.execute(
                        "DELETE FROM twins WHERE patient=? AND substance=?", (name, substance)
                    )
                else:
                    self.store.put_twin(db, name, substance, posterior_json(twin), upto)
            for topic, body in out:
                self.store.add_output(db, topic, json.dumps(body, sort_keys=True))
        for m, reason in [*rejected, *dead]:
            log.warning("dead letter (message %d, %s): %s", m.seq, m.topic, reason)
        for pid, substance, twin, _ in twins:
            key = (self._results.pseudonym(pid), substance)
            if twin is None:
                self._twins.pop(key, None)
            else:
                self._twins[key] = twin
        updated = {(pid, substance) for pid, substance, twin, _ in twins if twin is not None}
        for pid, _, r in replays:
            self.counts["extended" if r.incremental else "replayed"] += 1
            if (pid, r.substance) in updated:
                self._replays[(pid, r.substance)] = dataclasses.replace(r, data=None)
            else:  # no twin, refused, or failed: the next message replays
                self._replays.pop((pid, r.substance), None)
        return out

    def _compute(self, replays: list[Replay]) -> dict[int, Any]:
        """The posteriors, recommendations and forecasts of the replayed twins, each step one
        vmapped call for the twins of a drug (`twins.update_twins`, `recommend_twins`,
        `forecast_twins`); each twin warm-started from its previous posterior. Returns
        `id(replay) ->` `(recommendation, forecast, start)` or the exception that stopped
        that twin."""
        ready = [r for r in replays if r.twin is not None and r.refused is None]
        for r in ready:
            previous = self._twins.get((self._results.pseudonym(r.patient), r.substance))
            if (
                previous is not None
                and previous.posterior.mode.shape == r.twin.posterior.mode.shape
            ):
                r.twin.posterior = previous.posterior  # the warm start of the mode search
        result: dict[int, Any] = {}
        errors = update_twins([r.twin for r in ready])
        for r, error in zip(ready, errors, strict=True):
            if error is not None:
                result[id(r)] = error
        ready = [r for r in ready if id(r) not in result]
        if not ready:
            return result
        keys = output_keys_many(self.seed, [r.asof for r in ready])
        starts = [plan_start(r) for r in ready]
        advice = [self.dosing.get(r.substance) for r in ready]
        recs = recommend_twins(
            [r.twin for r in ready],
            keys=[k for k, _ in keys],
            intervals=self.intervals,
            starts=starts,
            n_draws=self.n_draws,
            constraints=[None if a is None else a.constraints for a in advice],
            loading=[
                None if a is None else a.loading_for(_doses_given(r))
                for r, a in zip(ready, advice, strict=True)
            ],
        )
        ok = [j for j, rec in enumerate(recs) if not isinstance(rec, Exception)]
        fcs = forecast_twins(
            [ready[j].twin for j in ok],
            [starts[j] + np.asarray(self.forecast_hours) for j in ok],
            [recs[j].regimen for j in ok],  # type: ignore[union-attr]
            keys=[keys[j][1] for j in ok],
            n_draws=self.n_draws,
        )
        for j, rec in enumerate(recs):
            result[id(ready[j])] = rec
        for j, fc in zip(ok, fcs, strict=True):
            r = ready[j]
            result[id(r)] = fc if isinstance(fc, Exception) else (recs[j], fc, starts[j])
        return result

    def _one(self, r: Replay, mine, events, out, dead, twins, notes, computed) -> None:
        pid, substance = r.patient, r.substance
        seqs = sorted(m.seq for m in mine)
        subject = self._audit_names.pseudonym(pid)
        actor = self.governance.actor
        if r.refused is not None:
            reason, source = r.refused
            details: dict[str, Any] = {
                "purpose": "treatment",
                "at": r.reference_time.isoformat() if r.reference_time else None,
                "drug": self.drugs[substance].name,
                "messages": seqs,
            }
            if source:
                details["reason"] = "denied by a consent in force"
                details["consent"] = self._audit_names.pseudonym(source)
            else:
                details["reason"] = reason
            events.append(AuditEvent(AuditAction.CONSENT_REFUSAL, actor, subject, details))
            for m in mine:
                if m.rtype not in ("Patient", "Consent"):
                    dead.append((m, f"{m.rtype}/{m.rid}: consent forbids treatment ({reason})"))
            twins.append((pid, substance, None, r.asof))
            return
        if r.twin is None:
            for m in mine:
                notes.setdefault(m.seq, f"{substance}: {r.waiting}")
            twins.append((pid, substance, None, r.asof))  # e.g. its only dose retracted
            return
        cause = max(mine, key=lambda m: m.seq)
        if isinstance(computed, Exception):
            raise computed
        rec, fc, start = computed
        res = outputs(r, results=self._results, recommendation=rec, forecast=fc, start=start)
        post = r.twin.posterior
        drug = self.drugs[substance].name
        audit_cause = reference_pseudonym(cause.rtype, cause.rid, self._audit_names)
        base = {"drug": drug, "messages": seqs, "cause": audit_cause, "asof": r.asof}
        events.append(
            AuditEvent(
                AuditAction.TWIN_UPDATE,
                actor,
                subject,
                {
                    **base,
                    "method": post.method,
                    "levels": int(post.n_observations),
                    "converged": bool(post.converged),
                    "mode": [round(float(x), 9) for x in post.mode],
                },
            )
        )
        rec = res.recommendation
        events.append(
            AuditEvent(
                AuditAction.RECOMMENDATION,
                actor,
                subject,
                {
                    **base,
                    "dose_mg": round(float(rec.dose), 6),
                    "interval_h": float(rec.interval),
                    "n_doses": int(rec.n_doses),
                    "first_dose_h": round(res.start, 6),
                    "probability": float(rec.probability),
                    **_constrained_details(rec),
                },
            )
        )
        fc = res.forecast
        events.append(
            AuditEvent(
                AuditAction.FORECAST,
                actor,
                subject,
                {
                    **base,
                    "times_h": [round(float(t), 6) for t in fc.times],
                    "median": [round(float(v), 6) for v in fc.median],
                    "band_level": float(fc.level),
                },
            )
        )
        envelope = {
            "patient": f"Patient/{self._results.pseudonym(pid)}",
            "substance": substance,
            "cause": {
                "reference": f"{cause.rtype}/"
                + reference_pseudonym(cause.rtype, cause.rid, self._results),
                "versionId": cause.version or None,
                "message": cause.seq,
            },
            "messages": seqs,
            "asof": r.asof,
            "reference_time": r.reference_time.isoformat() if r.reference_time else None,
        }
        out.append((self.topics.recommendation, {**envelope, "resource": res.request}))
        out.append((self.topics.forecast, {**envelope, "resource": res.observations}))
        twins.append((pid, substance, r.twin, r.asof))

    # --- what it holds -------------------------------------------------------------------

    def twin(self, patient: str, substance: str) -> DigitalTwin | None:
        """The twin of `patient` (the raw id, as in the messages) on `substance`, rebuilt
        from the stored messages processed so far (`None`: no twin)."""
        key = (self._results.pseudonym(patient), substance)
        if key in self._twins:
            return self._twins[key]
        done = [m.seq for m in self.store.messages() if m.state != "pending"]
        if not done:
            return None
        r = replay(
            self.store.history(patient, max(done)),
            patient=patient,
            substance=substance,
            drug=self.drugs[substance],
            asof=max(done),
            pseudonym=key[0],
            reading=self._reading,
        )
        if r.twin is not None:
            self._twins[key] = r.twin
        return r.twin

    def posteriors(self) -> dict[tuple[str, str], dict[str, Any]]:
        """`(pseudonym, substance) -> posterior` (JSON: mode, cov, params, ...) of every
        twin, as stored; the pseudonym is the patient's, of purpose `"results"`."""
        return self.store.twins()

    def status(self) -> dict[str, Any]:
        """Counts: twins, messages by state, dead letters, outputs not yet published."""
        states: dict[str, int] = {}
        for m in self.store.messages():
            states[m.state] = states.get(m.state, 0) + 1
        return {
            "site": self.topics.site,
            "twins": len(self.store.twins()),
            "messages": states,
            "dead_letters": len(self.store.dead_letters()),
            "unpublished": len(self.store.unpublished()),
            "held": len(self.store.held()),
            "rebuilt": dict(self.counts),
        }


def _constrained_details(rec: Any) -> dict[str, Any]:
    """The audit details of a constrained recommendation (none for a continuous one): the
    optimum it was rounded from, the constraint that set it, the infusion duration and the
    loading dose."""
    if rec.continuous_dose is None:
        return {}
    out: dict[str, Any] = {"continuous_dose": round(float(rec.continuous_dose), 6)}
    if rec.bound:
        out["bound"] = rec.bound
    if rec.duration is not None:
        out["infusion_h"] = round(float(rec.duration), 6)
    if rec.loading_dose is not None:
        out["loading_dose_mg"] = round(float(rec.loading_dose), 6)
    return out


def _doses_given(r: Replay) -> int:
    """How many doses the twin of `r` has been given."""
    history = r.twin.history if r.twin is not None else None
    return 0 if history is None else int(np.count_nonzero(np.asarray(history.mask)))


def _failed(mine: Sequence[StoredMessage], substance: str, error: Exception):
    """Dead letters for a patient's messages when its twin on `substance` failed."""
    why = f"the {substance} twin could not be updated ({type(error).__name__}: {error})"
    return [(m, f"{m.rtype}/{m.rid}: {why}") for m in mine]


class _Memo:
    """A `Pseudonymizer` whose pseudonyms are kept: the outputs of one update name the
    same patient and levels a dozen times, and each pseudonym is an HMAC. The same
    pseudonyms as the pseudonymizer's (it is a deterministic function of the identifier)."""

    __slots__ = ("_of", "_seen", "key_id", "purpose")

    def __init__(self, pseudonymizer: Any):
        self._of = pseudonymizer
        self.purpose = pseudonymizer.purpose
        self.key_id = pseudonymizer.key_id
        self._seen: dict[str, str] = {}

    def pseudonym(self, identifier: str) -> str:
        got = self._seen.get(identifier)
        if got is None:
            if len(self._seen) > 200_000:
                self._seen.clear()
            got = self._seen[identifier] = self._of.pseudonym(identifier)
        return got


class _Dead(Exception):
    """A message that cannot be used (the reason)."""


class _Held(Exception):
    """A message about a patient whose Patient resource has not arrived (the reason)."""

    def __init__(self, reason: str, patient: str):
        super().__init__(reason)
        self.patient = patient
