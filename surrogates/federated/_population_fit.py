"""Federated population fits: FOCE-I (or Laplace) across hospitals whose records never
leave them.

The population objective is a sum over subjects, `-log L = sum_i L_i(population)`, and so a
sum over hospitals. `calibration.fit_population` is two halves, and a federated fit puts
them in two places:

- **at the server** (`fit_population_server`): calibration's outer loop
  (`calibration.minimize_objective`: BFGS, each gradient by central differences of -log L,
  then the covariance by second differences) proposes population values, a stencil of
  `2p + 1` points at a time; it asks every hospital for its subjects' -log L at those
  points and sums the answers, in a fixed order of hospitals;
- **at each hospital** (`hospital_reply`): `calibration.objective_values` evaluates its own
  subjects at the points, their conditional modes (the inner FOCE-I/Laplace optimisation)
  found and kept there; only the `2p + 1` sums go back. At the estimate the hospital sends
  the count, sum and sum of squares of its subjects' modes (for the shrinkage in the
  estimates table), never the modes.

So the gradient the server uses is the central difference of the summed stencil, which is
the sum of the hospitals' central differences: the same numbers `fit_population` computes on
the pooled subjects, up to the order of the additions. With the same optimiser from the same
start the federated fit follows the pooled fit's path: its -2LL equals the pooled fit's to
1e-11 relative, its estimates as closely as the pooled fit equals itself with its subjects
reordered (a few parts in a million; docs/federated.md, "The pooled-equality check").

A missing hospital changes the objective (a different sum is a different likelihood), so
every round needs every hospital: one that does not answer, or whose answer is rejected (not
a number, the wrong shape, implausibly large, a changed subject count), stops the fit with a
`FederatedFitError` naming it; nothing is summed over fewer sites.

The transport is a function `ask(kind, request) -> {hospital: reply or None}`: Flower's
deployment engine in `surrogates.federated._population_apps` (a `None` reply is a hospital
that did not answer in time).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.flatten_util import ravel_pytree

import calibration
import pkpd
from twins.governance import (
    AUDIT_PURPOSE,
    AuditAction,
    AuditLog,
    ConsentRegistry,
    Governance,
    Purpose,
)

log = logging.getLogger("surrogates.federated.population")

#: What a hospital answers at most, per subject, in absolute value: a -log L of a million
#: nats for one subject is no likelihood (a typical subject's term is 10-1000).
MAX_ABS_PER_SUBJECT = 1e6

Reply = Mapping[str, Any]
Ask = Callable[[str, Mapping[str, Any]], Mapping[str, Reply | None]]


class FederatedFitError(RuntimeError):
    """A federated population fit cannot go on: a hospital did not join or did not answer,
    its answer was rejected, or it reported an error; the message names the hospital(s).

    **Attributes:** `hospitals` (the names), `round` (the round, or None before the first).
    """

    def __init__(self, message: str, *, hospitals: Sequence[str] = (), round: int | None = None):
        super().__init__(message)
        self.hospitals = tuple(hospitals)
        self.round = round


# ----------------------------------------------------------------------------- estimators


_ESTIMATORS = {"focei": calibration.FOCEI, "laplace": calibration.Laplace}


def estimator_named(name: str) -> calibration.AbstractEstimator:
    """`calibration.FOCEI()` for `"focei"`, `calibration.Laplace()` for `"laplace"`."""
    try:
        return _ESTIMATORS[name]()
    except KeyError:
        raise ValueError(f"estimator must be 'focei' or 'laplace', got {name!r}.") from None


# ----------------------------------------------------------------------------- hospitals


@dataclasses.dataclass(frozen=True)
class HospitalData:
    """One hospital's subjects for a federated fit, consent applied (`hospital_data`).

    - `name`: the hospital; `data`: its `calibration.Dataset`;
    - `refused`: patients left out because they did not consent to federated use.
    """

    name: str
    data: calibration.Dataset
    refused: int = 0


def consented_ids(
    name: str,
    ids: Sequence[Any],
    consents: ConsentRegistry | None,
    governance: Governance | None,
    *,
    use: str = "federated population fit",
) -> tuple[list[Any], int]:
    """The subject IDs of hospital `name` that may enter a federated fit, and how many may
    not.

    With `consents` (a `twins.governance.ConsentRegistry` keyed by the IDs as strings),
    `ConsentRegistry.split` decides for `Purpose.FEDERATED_TRAINING` at `governance.when()`
    (opt-in: a patient without a permit in force is left out; a deny in force wins), each
    refusal is written to `governance.audit` (`consent-refusal`, by pseudonym) and one
    `data-access` entry records the use (`patient_count`, never the patients). Without
    `consents` every subject enters (data the hospital holds the right to use; nothing is
    logged), as for `twins.consented_population`.

    Raises `ValueError` when consents are given without a `governance` (nowhere to log the
    refusals), `FederatedFitError` naming the hospital when no patient may enter.
    """
    if consents is None:
        return list(ids), 0
    if governance is None:
        raise ValueError(
            f"hospital {name!r}: consent decisions are given, so the use is governed: pass a "
            "twins.governance.Governance (audit log and pseudonym key) so that each refusal "
            "is logged (docs/governance.md)."
        )
    at = governance.when()
    names = governance.pseudonymizer(AUDIT_PURPOSE)
    allowed, refused = consents.split(
        [str(i) for i in ids], Purpose.FEDERATED_TRAINING, at,
        audit=governance.audit, pseudonymizer=names, actor=governance.actor,
    )  # fmt: skip
    if not allowed:
        raise FederatedFitError(
            f"hospital {name!r}: none of its {len(ids)} patients consented to federated use "
            f"at {at.isoformat()} (each refusal is in its audit log).",
            hospitals=[name],
        )
    governance.audit.append(
        AuditAction.DATA_ACCESS,
        actor=governance.actor,
        details={
            "use": use,
            "purpose": Purpose.FEDERATED_TRAINING.value,
            "at": at.isoformat(),
            "hospital": name,
            "patient_count": len(allowed),
            "refused_count": len(refused),
        },
    )
    keep = set(allowed)
    return [i for i in ids if str(i) in keep], len(refused)


def hospital_data(
    name: str,
    records: pd.DataFrame,
    *,
    covariates: Sequence[str] = (),
    consents: ConsentRegistry | None = None,
    governance: Governance | None = None,
    keep: Sequence[Any] | None = None,
) -> HospitalData:
    """A hospital's NONMEM records as the subjects of a federated fit.

    **Arguments:**

    - `name`: the hospital.
    - `records`: its NONMEM records (`calibration.Dataset.from_records`).
    - `covariates`: the model's covariate columns.
    - `consents`, `governance`: see `consented_ids` (patients who did not consent to
      `Purpose.FEDERATED_TRAINING` never enter).
    - `keep`: the IDs decided earlier (a later round of the same fit: the consent decision
      and its log entries are made once per fit); `consents` is then not asked again.

    **Returns:** a `HospitalData`.
    """
    df: Any = records
    ids = list(dict.fromkeys(df["ID"].tolist()))
    if keep is None:
        kept, refused = consented_ids(name, ids, consents, governance)
    else:
        wanted = {str(i) for i in keep}
        kept, refused = [i for i in ids if str(i) in wanted], len(ids) - len(wanted)
    mine = df[df["ID"].isin(kept)]
    data = calibration.Dataset.from_records(mine, covariates=list(covariates))
    return HospitalData(name=name, data=data, refused=refused)


def _sanitised(error: BaseException) -> str:
    """What a hospital may tell the server of its error: the kind and counts, never a
    subject's ID, row or values (those are in the hospital's own log)."""
    if isinstance(error, calibration.SubjectError):
        return (
            f"{len(error.failures)} subject(s) could not be evaluated (SubjectError; the "
            "subjects and reasons are in the hospital's log)"
        )
    if isinstance(error, pkpd.RecordError):
        return "its records are not valid NONMEM records (RecordError; see the hospital's log)"
    if isinstance(error, FederatedFitError):
        return str(error)
    return f"{type(error).__name__} (see the hospital's log)"


def hospital_reply(
    pm: calibration.PopulationModel,
    site: HospitalData,
    kind: str,
    request: Mapping[str, Any],
    *,
    estimator: calibration.AbstractEstimator,
) -> dict[str, Any]:
    """A hospital's answer to one request of the server (what its ClientApp sends back).

    - `kind="objective"`, `request={"points": (n, p), "start": bool}`: `{"values": (n,)
      -log L of its subjects at the points (calibration.objective_values), "n_subjects",
      "rejected_subjects": how many subjects made some point +inf}`.
    - `kind="modes"`, `request={"x": (p,)}`: the conditional modes at the estimate
      (`calibration.individual_map`), summarised: `{"n_subjects", "n_converged",
      "eta_sum": (n_eta,), "eta_sumsq": (n_eta,)}`.

    An error becomes `{"error": message}` without identifiers (the full error, subjects
    named, goes to the hospital's log).
    """
    data = site.data
    try:
        if kind == "objective":
            out = calibration.objective_values(
                pm,
                data,
                np.asarray(request["points"], dtype=float),
                estimator=estimator,
                start=bool(request.get("start", False)),
            )
            for sid, why in out.rejected.items():
                log.info(
                    "hospital %s: subject %s rejected at a trial point: %s", site.name, sid, why
                )
            return {
                "values": np.asarray(out.values, dtype=float),
                "n_subjects": data.n_subjects,
                "rejected_subjects": len(out.rejected),
            }
        if kind == "modes":
            unravel = ravel_pytree(pm.initial())[1]
            phi = unravel(jnp.asarray(np.asarray(request["x"], dtype=float)))
            ind = calibration.individual_map(pm, data, phi, estimator=estimator)
            eta = np.asarray(ind.eta, dtype=float)
            return {
                "n_subjects": data.n_subjects,
                "n_converged": int(np.sum(ind.converged)),
                "eta_sum": eta.sum(axis=0),
                "eta_sumsq": (eta**2).sum(axis=0),
            }
        return {"error": f"unknown request {kind!r}"}
    except Exception as error:  # the server must hear of it; the details stay here
        log.exception("hospital %s: %s request failed", site.name, kind)
        return {"error": _sanitised(error)}


# ----------------------------------------------------------------------------- the server


@dataclasses.dataclass(frozen=True)
class FederatedPopulationFit:
    """A federated population fit (`fit_population_server`, `fit_population_federated`).

    As `calibration.PopulationFit`, without the individual modes (they stay at the
    hospitals; `individual_fit` computes a hospital's own):

    - `model`, `phi` (unconstrained estimate, pytree), `population` (natural scale), `table`
      (estimates, SE, RSE, CI, CV%, shrinkage from the hospitals' summed moments), `ofv`
      (-2LL), `converged`, `n_steps`, `cov_phi`, `method`, `estimator`;
    - `hospitals`: name -> subjects that entered, in the order they were summed;
    - `rounds`: requests sent to every hospital (objective stencils, covariance, modes);
    - `diagnostics`: `gradient_evaluations`, `rejected_evaluations` (as `PopulationFit`),
      `rejected_subjects` (hospital -> how many of its subjects made some point +inf).
    """

    model: calibration.PopulationModel
    phi: dict[str, Any]
    population: dict[str, Any]
    table: pd.DataFrame
    ofv: float
    converged: bool
    n_steps: int
    cov_phi: np.ndarray | None
    method: str
    estimator: calibration.AbstractEstimator
    hospitals: dict[str, int]
    rounds: int
    diagnostics: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def n_subjects(self) -> int:
        return int(sum(self.hospitals.values()))


def _missing_message(missing: Sequence[str], rnd: int, kind: str) -> str:
    names = ", ".join(repr(m) for m in missing)
    return (
        f"round {rnd} ({kind}): no answer from hospital(s) {names} (its SuperNode may be "
        "down). The population objective is a sum over every hospital's subjects, so the fit "
        "stops rather than sum over fewer sites."
    )


def check_objective_reply(
    name: str,
    reply: Reply,
    *,
    n_points: int,
    n_subjects: int | None,
    max_abs_per_subject: float = MAX_ABS_PER_SUBJECT,
) -> tuple[np.ndarray, int, int]:
    """`(values, n_subjects, rejected_subjects)` of hospital `name`'s answer to an objective
    request, or `FederatedFitError` naming it: an error it reports; values that are not
    `n_points` numbers; NaN or `-inf` (`+inf` marks a rejected point and is kept); a value
    beyond `max_abs_per_subject` times its subject count; a subject count that is not a
    positive integer or differs from `n_subjects` (its count at the first round)."""
    if "error" in reply:
        raise FederatedFitError(f"hospital {name!r} reported: {reply['error']}", hospitals=[name])
    try:
        values = np.asarray(reply["values"], dtype=float)
        count = int(reply["n_subjects"])
        rejected = int(reply.get("rejected_subjects", 0))
    except (KeyError, TypeError, ValueError) as error:
        raise FederatedFitError(
            f"hospital {name!r} sent a malformed answer ({type(error).__name__}: {error}); "
            "rejected.",
            hospitals=[name],
        ) from None
    if values.shape != (n_points,):
        raise FederatedFitError(
            f"hospital {name!r} sent values of shape {values.shape}, expected ({n_points},) "
            "(one -log L per point asked); rejected.",
            hospitals=[name],
        )
    if count < 1 or (n_subjects is not None and count != n_subjects):
        expected = "a positive count" if n_subjects is None else f"{n_subjects}, as before"
        raise FederatedFitError(
            f"hospital {name!r} reported {count} subjects, expected {expected}; rejected.",
            hospitals=[name],
        )
    if np.any(np.isnan(values)) or np.any(values == -np.inf):
        bad = int(np.sum(np.isnan(values) | (values == -np.inf)))
        raise FederatedFitError(
            f"hospital {name!r} sent {bad} value(s) that are NaN or -inf (a -log L is a "
            "number, or +inf at a rejected point); rejected.",
            hospitals=[name],
        )
    finite = values[np.isfinite(values)]
    limit = max_abs_per_subject * count
    if finite.size and float(np.max(np.abs(finite))) > limit:
        raise FederatedFitError(
            f"hospital {name!r} sent a value of {float(np.max(np.abs(finite))):.3g}, beyond "
            f"{max_abs_per_subject:g} per subject ({limit:.3g} for its {count} subjects); "
            "rejected.",
            hospitals=[name],
        )
    return values, count, rejected


def _check_modes_reply(name: str, reply: Reply, n_eta: int, n_subjects: int):
    if "error" in reply:
        raise FederatedFitError(f"hospital {name!r} reported: {reply['error']}", hospitals=[name])
    try:
        count = int(reply["n_subjects"])
        conv = int(reply["n_converged"])
        s = np.asarray(reply["eta_sum"], dtype=float)
        ss = np.asarray(reply["eta_sumsq"], dtype=float)
    except (KeyError, TypeError, ValueError) as error:
        raise FederatedFitError(
            f"hospital {name!r} sent a malformed modes summary ({error}); rejected.",
            hospitals=[name],
        ) from None
    if count != n_subjects or not 0 <= conv <= count:
        raise FederatedFitError(
            f"hospital {name!r} summarised {count} subjects ({conv} converged), expected "
            f"{n_subjects}; rejected.",
            hospitals=[name],
        )
    if (
        s.shape != (n_eta,)
        or ss.shape != (n_eta,)
        or not (np.all(np.isfinite(s)) and np.all(np.isfinite(ss)))
    ):
        raise FederatedFitError(
            f"hospital {name!r} sent modes sums of shapes {s.shape}, {ss.shape} (expected "
            f"({n_eta},), finite); rejected.",
            hospitals=[name],
        )
    return count, conv, s, ss


class _Rounds:
    """The server's side of the conversation: asks every hospital, checks the answers,
    sums them in the order of `hospitals`, and writes each round to the audit log."""

    def __init__(self, pm, hospitals, ask, *, audit, actor, fit, max_abs_per_subject):
        self.pm, self.hospitals, self.ask = pm, list(hospitals), ask
        self.audit, self.actor, self.fit = audit, actor, fit
        self.max_abs = max_abs_per_subject
        self.counts: dict[str, int] = {}
        self.rejected: dict[str, int] = dict.fromkeys(self.hospitals, 0)
        self.round = 0

    def _record(self, details: dict[str, Any]) -> None:
        if self.audit is not None:
            self.audit.append(
                AuditAction.TRAINING_ROUND,
                actor=self.actor,
                details={"fit": self.fit, **details},
            )

    def fail(self, error: FederatedFitError, kind: str) -> FederatedFitError:
        self._record(
            {"round": self.round, "kind": kind, "outcome": "failed", "reason": str(error),
             "failed_hospitals": list(error.hospitals)}
        )  # fmt: skip
        return error

    def _ask(self, kind: str, request: Mapping[str, Any]) -> dict[str, Reply]:
        self.round += 1
        replies = dict(self.ask(kind, request))
        missing = [h for h in self.hospitals if replies.get(h) is None]
        if missing:
            raise self.fail(
                FederatedFitError(
                    _missing_message(missing, self.round, kind), hospitals=missing, round=self.round
                ),
                kind,
            )
        return {h: replies[h] for h in self.hospitals}  # type: ignore[misc]

    def objective(self, points, *, start: bool = False) -> np.ndarray:
        points = np.asarray(points, dtype=float)
        replies = self._ask("objective", {"points": points, "start": bool(start)})
        total = np.zeros(points.shape[0])
        try:
            parts = []
            for h in self.hospitals:
                values, count, rejected = check_objective_reply(
                    h, replies[h], n_points=points.shape[0], n_subjects=self.counts.get(h),
                    max_abs_per_subject=self.max_abs,
                )  # fmt: skip
                self.counts[h] = count
                self.rejected[h] += rejected
                parts.append(values)
        except FederatedFitError as error:
            error.round = self.round
            raise self.fail(error, "objective") from None
        for values in parts:  # a fixed order: the same sum every time
            total = total + values
        log.info("round %d: -log L %.6f at the base point of %d", self.round, total[0], len(total))
        self._record(
            {"round": self.round, "kind": "objective", "points": int(points.shape[0]),
             "hospitals": list(self.hospitals), "hospital_count": len(self.hospitals),
             "patient_count": int(sum(self.counts.values())), "outcome": "summed"}
        )  # fmt: skip
        return total

    def modes(self, x: np.ndarray) -> dict[str, Any]:
        replies = self._ask("modes", {"x": np.asarray(x, dtype=float)})
        n_eta = self.pm.n_eta
        total = {"n": 0, "converged": 0, "sum": np.zeros(n_eta), "sumsq": np.zeros(n_eta)}
        try:
            for h in self.hospitals:
                count, conv, s, ss = _check_modes_reply(h, replies[h], n_eta, self.counts[h])
                total["n"] += count
                total["converged"] += conv
                total["sum"] = total["sum"] + s
                total["sumsq"] = total["sumsq"] + ss
        except FederatedFitError as error:
            error.round = self.round
            raise self.fail(error, "modes") from None
        self._record(
            {"round": self.round, "kind": "modes", "hospitals": list(self.hospitals),
             "hospital_count": len(self.hospitals), "patient_count": int(total["n"]),
             "outcome": "summed"}
        )  # fmt: skip
        return total


def _shrinkage(moments: Mapping[str, Any], omega: np.ndarray) -> np.ndarray:
    """SD-based eta-shrinkage `1 - SD(eta_i) / omega` (in %) from the summed moments, as
    `calibration.estimates_table` computes it from the pooled modes (`np.std`, ddof 0)."""
    n = float(moments["n"])
    mean = np.asarray(moments["sum"]) / n
    var = np.maximum(np.asarray(moments["sumsq"]) / n - mean**2, 0.0)
    return 100.0 * (1.0 - np.sqrt(var) / np.sqrt(np.diag(omega)))


def assemble_fit(
    pm: calibration.PopulationModel,
    estimator: calibration.AbstractEstimator,
    summary: Mapping[str, Any],
) -> FederatedPopulationFit:
    """A `FederatedPopulationFit` from the server's summary (`x`, `ofv`, `converged`,
    `n_steps`, `cov`, `hospitals`, `rounds`, `modes`, `diagnostics`; the form the ServerApp
    writes as JSON)."""
    unravel = ravel_pytree(pm.initial())[1]
    phi = unravel(jnp.asarray(np.asarray(summary["x"], dtype=float)))
    cov = summary.get("cov")
    cov = None if cov is None else np.asarray(cov, dtype=float)
    table = calibration.estimates_table(pm, phi, cov, None)
    modes = summary.get("modes")
    if modes is not None:
        shrink = _shrinkage(modes, np.asarray(pm.natural(phi)["omega"]))
        rows = np.flatnonzero(table["kind"].to_numpy() == "omega")
        table.loc[table.index[rows], "shrinkage_pct"] = shrink
    return FederatedPopulationFit(
        model=pm,
        phi=phi,
        population=jax.tree_util.tree_map(np.asarray, pm.natural(phi)),
        table=table,
        ofv=float(summary["ofv"]),
        converged=bool(summary["converged"]),
        n_steps=int(summary["n_steps"]),
        cov_phi=cov,
        method=estimator.name,
        estimator=estimator,
        hospitals={str(k): int(v) for k, v in summary["hospitals"].items()},
        rounds=int(summary["rounds"]),
        diagnostics=dict(summary.get("diagnostics", {})),
    )


def fit_population_server(
    pm: calibration.PopulationModel,
    hospitals: Sequence[str],
    ask: Ask,
    *,
    estimator: calibration.AbstractEstimator | None = None,
    max_steps: int = 500,
    gtol: float = 1e-3,
    standard_errors: bool = True,
    audit: AuditLog | None = None,
    actor: str = "pkpd-twins federated fit",
    fit: str = "population fit",
    max_abs_per_subject: float = MAX_ABS_PER_SUBJECT,
) -> tuple[FederatedPopulationFit, dict[str, Any]]:
    """The server's half of a federated population fit: calibration's outer loop over the
    sum of the hospitals' answers.

    **Arguments:**

    - `pm`: the population model (its values are the start), the same at every hospital.
    - `hospitals`: every hospital's name; each round needs all of them.
    - `ask`: `ask(kind, request) -> {hospital: reply or None}` sends a request to every
      hospital and returns their answers (`hospital_reply`'s form; `None` for a hospital
      that did not answer).
    - `estimator`, `max_steps`, `gtol`, `standard_errors`: as in
      `calibration.fit_population` (the same optimiser, so that the fit equals the pooled
      one).
    - `audit`: a `twins.governance.AuditLog`: every round gets a `training-round` entry
      (kind, points, hospitals, `patient_count`), a failed round one with the reason.
    - `actor`, `fit`: who runs it and its name, for the log.
    - `max_abs_per_subject`: the largest |-log L| per subject accepted from a hospital.

    **Returns:** `(fit, summary)`: the `FederatedPopulationFit` and the JSON-able summary
    it was assembled from (`assemble_fit`).

    **Raises:** `FederatedFitError` naming the hospital(s) when one does not answer, reports
    an error or sends a rejected answer; `calibration.SubjectError` when the objective is
    not finite next to the start.
    """
    est = calibration.FOCEI() if estimator is None else estimator
    names = [str(h) for h in hospitals]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"fit_population_server: expected distinct hospital names, got {names}.")
    rounds = _Rounds(
        pm, names, ask, audit=audit, actor=actor, fit=fit, max_abs_per_subject=max_abs_per_subject
    )
    x0 = np.asarray(ravel_pytree(pm.initial())[0])
    try:
        outer = calibration.minimize_objective(
            rounds.objective,
            x0,
            max_steps=max_steps,
            gtol=gtol,
            standard_errors=standard_errors,
            who="fit_population_server",
        )
    except calibration.SubjectError:
        bad = [h for h, n in rounds.rejected.items() if n]
        raise rounds.fail(
            FederatedFitError(
                "the objective is not finite next to the initial estimates for every change "
                "of some parameter; start from other values (hospitals with subjects that "
                f"could not be evaluated: {bad or 'none reported'}).",
                hospitals=bad,
                round=rounds.round,
            ),
            "objective",
        ) from None
    moments = rounds.modes(outer.x)
    converged = outer.converged and moments["converged"] == moments["n"]
    summary = {
        "x": outer.x.tolist(),
        "ofv": outer.ofv,
        "converged": bool(converged),
        "n_steps": outer.n_steps,
        "cov": None if outer.cov is None else np.asarray(outer.cov).tolist(),
        "cov_problem": outer.cov_problem,
        "convergence_problem": "" if outer.converged else outer.convergence_problem(),
        "hospitals": {h: rounds.counts[h] for h in names},
        "rounds": rounds.round,
        "modes": {
            "n": moments["n"],
            "converged": moments["converged"],
            "sum": np.asarray(moments["sum"]).tolist(),
            "sumsq": np.asarray(moments["sumsq"]).tolist(),
        },
        "diagnostics": {
            "gradient_evaluations": outer.gradient_evaluations,
            "rejected_evaluations": outer.rejected_evaluations,
            "rejected_subjects": dict(rounds.rejected),
        },
        "estimator": est.name,
    }
    rounds._record(
        {
            "round": rounds.round,
            "kind": "result",
            "outcome": "completed" if converged else "not converged",
            "ofv": float(outer.ofv) if math.isfinite(outer.ofv) else None,
            "hospital_count": len(names),
            "patient_count": int(sum(rounds.counts.values())),
        }
    )
    return assemble_fit(pm, est, summary), summary


# ----------------------------------------------------------------------------- local twins


def individual_fit(
    fit: FederatedPopulationFit, data: calibration.Dataset, **kwargs: Any
) -> calibration.IndividualFit:
    """A hospital's own subjects calibrated locally with the federated population as their
    prior: `calibration.individual_map(fit.model, data, fit.phi, estimator=fit.estimator)`
    (keywords go to `individual_map`). Nothing leaves the hospital."""
    kwargs.setdefault("estimator", fit.estimator)
    return calibration.individual_map(fit.model, data, fit.phi, **kwargs)


def federated_prior(fit: FederatedPopulationFit) -> dict[str, Any]:
    """The federated estimate in the form `twins.DigitalTwin(drug, patient,
    population=...)` takes (the unconstrained `phi`): a twin of a drug whose model is
    `fit.model` then has the federated population as its prior."""
    return dict(fit.phi)
