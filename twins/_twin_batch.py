"""Many twins at once: one vmapped MAP update, dose search and forecast for twins of a drug.

A service that keeps a twin per patient (`twins.io.TwinService`) gets levels for many
patients at a time. `update_twins`, `recommend_twins` and `forecast_twins` do for a list of
twins what `DigitalTwin.update`, `recommend` and `forecast` do for one, with one compiled,
vmapped call per step for all twins of one population model (grouped automatically), instead
of one call per twin:

- the twins' levels and doses are padded to one bucket of sizes (powers of two, at least 8,
  for observations, doses and patients), so batches of similar sizes reuse one compilation;
- `update_twins` starts each conditional-mode search from the twin's current posterior mode
  (a warm start; `warm_start=False` starts from the typical values as `update` does): the
  modes are the same to the inner optimiser's tolerance, found in fewer Newton steps;
- the numbers are those of the one-twin calls to rounding (tests/test_twin_batch.py), and
  one twin that fails (a non-finite likelihood or metric) gets its exception in the result,
  the others their results.
"""

from __future__ import annotations

import dataclasses
import math
import time as _time
import warnings
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import calibration
import pkpd

from ._recommend import (
    Recommendation,
    constrained_intervals,
    dosing_choices,
    join_many,
    loading_dose,
    plan_doses,
    plans_after_loading,
    recommend_doses,
)
from ._twin import (
    DigitalTwin,
    Forecast,
    Posterior,
    _as_key,
    _bucket,
    predict_draws,
    twins_dataset,
)
from .drugs import DoseConstraints

_LEVEL = 0.9


def _groups(twins: Sequence[DigitalTwin]) -> list[list[int]]:
    """Indices of `twins` by population model, population values, estimator and solver
    (those that one vmapped call can take together), in first-seen order."""
    out: dict[Any, list[int]] = {}
    for i, tw in enumerate(twins):
        if not isinstance(tw, DigitalTwin):
            raise TypeError(f"expected DigitalTwin objects, got {type(tw).__name__} at {i}.")
        leaves, tree = jax.tree_util.tree_flatten(tw.phi)
        phi = (str(tree), tuple(np.asarray(v, dtype=float).tobytes() for v in leaves))
        key = (id(tw.pm), phi, _described(tw.estimator), _described(tw.solver))
        out.setdefault(key, []).append(i)
    return list(out.values())


_DESCRIBED: dict[int, tuple[Any, str]] = {}


def _described(obj: Any) -> str:
    """`repr(obj)`, kept by object (equinox's pretty-printer takes a millisecond, and a
    batch's twins share their estimator and solver objects)."""
    got = _DESCRIBED.get(id(obj))
    if got is None or got[0] is not obj:
        if len(_DESCRIBED) > 1024:
            _DESCRIBED.clear()
        got = _DESCRIBED[id(obj)] = (obj, repr(obj))  # holds `obj`: its id is not reused
    return got[1]


def update_twins(
    twins: Sequence[DigitalTwin], *, warm_start: bool = True
) -> list[Exception | None]:
    """Recompute the MAP posterior of every twin on its levels (added with
    `DigitalTwin.observe`), in one vmapped `calibration.individual_map` per drug model.

    **Arguments:**

    - `twins`: the twins (any drugs; those of one model and population values go together).
    - `warm_start`: start each twin's mode search from its current posterior mode.

    **Returns:** per twin, `None` (its `posterior` is the new MAP posterior; `seconds` is the
    wall time of its batch) or the exception that stopped it (a `ValueError` for a twin
    with no doses, a `calibration.SubjectError` for a twin whose mode cannot be found);
    a failed twin keeps its previous posterior. A mode that did not converge is a
    `ConvergenceWarning` naming the twins, as `update` gives.
    """
    results: list[Exception | None] = [None] * len(twins)
    for group in _groups(twins):
        ready = []
        for i in group:
            if twins[i].history is None:
                results[i] = ValueError(
                    f"DigitalTwin {twins[i].patient_id}: no doses given; call give(regimen) "
                    "before update."
                )
            else:
                ready.append(i)
        if ready:
            _update_group([twins[i] for i in ready], ready, results, warm_start)
    return results


def _update_group(group, where, results, warm_start) -> None:
    t0 = _time.perf_counter()
    first = group[0]
    n = _bucket(len(group))
    data = twins_dataset(group, n_subjects=n)
    start = None
    if warm_start:
        modes = [np.asarray(tw.posterior.mode, dtype=float) for tw in group]
        start = np.stack(modes + [modes[0]] * (n - len(group)))
    failed: dict[int, Exception] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", calibration.ConvergenceWarning)
        try:
            fit = calibration.individual_map(
                first.pm, data, first.phi, estimator=first.estimator, start=start
            )
        except calibration.SubjectError as error:
            fit = error.result
            for j in range(len(group)):
                if not np.all(np.isfinite(fit.eta[j])):
                    failed[j] = error
    for w in caught:
        if not issubclass(w.category, calibration.ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    seconds = _time.perf_counter() - t0
    late = [tw.patient_id for j, tw in enumerate(group) if j not in failed and not fit.converged[j]]
    if late:
        warnings.warn(
            f"individual MAP did not converge for {len(late)} twin(s): IDs {late[:10]}",
            calibration.ConvergenceWarning,
            stacklevel=3,
        )
    for j, tw in enumerate(group):
        if j in failed:
            results[where[j]] = failed[j]
            continue
        tw.posterior = Posterior(
            method="map",
            mode=np.asarray(fit.eta[j]),
            cov=np.asarray(fit.cov[j]),
            params={k: float(v[j]) for k, v in fit.params.items()},
            converged=bool(fit.converged[j]),
            n_observations=len(tw.observations),
            seconds=seconds,
        )


@eqx.filter_jit
def _sample_many(modes, covs, keys, n: int):
    """`Posterior.sample(n, key=...)` of K Laplace posteriors at once."""

    def one(m, c, k):
        chol = jnp.linalg.cholesky(c)
        z = jax.random.normal(k, (n, m.shape[0]))
        return m[None, :] + z @ chol.T

    return jax.vmap(one)(modes, covs, keys)


def _draws(twins: Sequence[DigitalTwin], keys: Sequence[jax.Array], n: int) -> jax.Array:
    """`(K, n, n_eta)` posterior draws of the twins (NUTS posteriors resampled one by one)."""
    if all(tw.posterior.draws is None for tw in twins):
        modes = jnp.asarray(np.stack([tw.posterior.mode for tw in twins]))
        covs = jnp.asarray(np.stack([tw.posterior.cov for tw in twins]))
        return _sample_many(modes, covs, jnp.stack(list(keys)), n)
    return jnp.stack([tw.posterior.sample(n, key=k) for tw, k in zip(twins, keys, strict=True)])


def _keys(key: Any, n: int, fn: str) -> list[jax.Array]:
    """Per-twin keys: a sequence of keys (or ints) as given, one per twin."""
    if isinstance(key, jax.Array) or key is None or isinstance(key, int | np.integer):
        raise TypeError(f"{fn}: keys must be one JAX PRNG key (or int) per twin, got {key!r}.")
    keys = [_as_key(k, fn) for k in key]
    if len(keys) != n:
        raise ValueError(f"{fn}: {len(keys)} keys for {n} twins; expected one per twin.")
    return keys


def _padded(items: list, n: int) -> list:
    return items + [items[0]] * (n - len(items))


def recommend_twins(
    twins: Sequence[DigitalTwin],
    *,
    keys: Sequence[Any],
    target: Any = None,
    intervals: Sequence[float] | None = None,
    starts: Sequence[float | None] | None = None,
    n_doses: int | None = None,
    probability: float | None = None,
    n_draws: int = 500,
    steps: int = 12,
    constraints: DoseConstraints | Sequence[DoseConstraints | None] | None = None,
    loading: float | Sequence[float | None] | None = None,
) -> list[Recommendation | Exception]:
    """`DigitalTwin.recommend` for many twins: one vmapped dose search per plan for all the
    twins of one drug model (the numbers of one-twin calls with the same keys, to rounding).

    **Arguments:** as `recommend`, per twin where it says so: `keys` one JAX PRNG key (or
    int) per twin; `starts` the first planned dose of each (`None`: one interval after its
    last dose); `target` (a `Target` or a metric name of each twin's drug), `intervals`
    (default each drug's usual one, or its constraints' intervals), `n_doses`,
    `probability`, `n_draws`, `steps` shared.

    - `constraints`: a `twins.DoseConstraints` for every twin, or one per twin (`None`: that
      twin's continuous optimum; e.g. `[tw.drug.dosing.constraints for tw in twins]` for
      each drug's library defaults). Each twin's dose is then the admissible one of
      `recommend(constraints=...)`, every twin's candidate doses simulated in one vmapped
      call per plan.
    - `loading`: a loading dose in mg/kg for every twin, or one per twin (`None`: none), as
      `recommend(loading=...)`: it needs that twin's constraints.

    **Returns:** per twin a `Recommendation`, or the exception that stopped it (no doses
    given, a plan too short for the metric, a non-finite metric, constraints that are not a
    `DoseConstraints` or that no dose can meet, an interval they do not allow, a loading dose
    outside their range), naming the twin and the field; the others are unaffected.
    """
    ks = _keys(keys, len(twins), "recommend_twins")
    if starts is not None and len(starts) != len(twins):
        raise ValueError(f"recommend_twins: {len(starts)} starts for {len(twins)} twins.")
    limits = _per_twin(constraints, len(twins), "constraints", DoseConstraints)
    loads = _per_twin(loading, len(twins), "loading", int | float)
    out: list[Recommendation | Exception | None] = [None] * len(twins)
    for group in _groups(twins):
        jobs: dict[tuple, list[tuple[int, Any, list, Any, Any]]] = {}
        for i in group:
            tw = twins[i]
            who = f"recommend for patient {tw.patient_id}"
            try:
                tgt = tw.find_target(target)
                if tw.history is None:
                    raise ValueError(
                        f"DigitalTwin {tw.patient_id}: no doses given; nothing to plan after."
                    )
                limit, load = limits[i], loads[i]
                if limit is not None and not isinstance(limit, DoseConstraints):
                    raise TypeError(
                        f"{who}: constraints[{i}] must be a twins.DoseConstraints or None, "
                        f"got {limit!r:.80}."
                    )
                if load is not None and limit is None:
                    raise ValueError(
                        f"{who}: loading[{i}] needs constraints (strengths, max_loading)."
                    )
                usual = tw.drug.dosing.interval
                asked = constrained_intervals(limit, None, intervals, usual, who)
                choices = dosing_choices(asked, usual, probability)
                start = None if starts is None else starts[i]
                history, loading_reg, amount = tw.history, None, None
                if load is None:
                    plans = _plans_kept(
                        tw.drug, tw.history, choices, tgt.metric, start=start, n_doses=n_doses,
                        weight=tw.weight,
                    )  # fmt: skip
                else:
                    assert limit is not None  # checked above
                    t_load, amount, loading_reg = loading_dose(
                        tw.drug, tw.history, tw.weight, load, limit, start, who
                    )
                    plans = plans_after_loading(
                        tw.drug, tw.history, choices, tgt.metric, t_load, n_doses=n_doses,
                        weight=tw.weight,
                    )  # fmt: skip
                    history = tw.history + loading_reg
            except (ValueError, TypeError) as error:
                out[i] = error if str(error).startswith(who) else type(error)(f"{who}: {error}")
                continue
            layout = (tgt, tuple((p.interval, p.regimen.n_events) for p in plans))
            jobs.setdefault(layout, []).append((i, history, plans, loading_reg, amount))
        for (tgt, _), job in jobs.items():
            idx = [i for i, *_ in job]
            members = [twins[i] for i in idx]
            n = _bucket(len(idx))
            size = _bucket(max(h.n_events for _, h, *_ in job))
            hist = _padded([_pad_kept(h, size) for _, h, *_ in job], n)
            plans = _padded([p for _, _, p, *_ in job], n)
            eta = _draws(_padded(members, n), _padded([ks[i] for i in idx], n), n_draws)
            first = members[0]
            covs = {
                c: jnp.asarray([tw.covariates[c] for tw in _padded(members, n)])
                for c in first.covariates
            }
            padded = _padded(members, n)
            recs = recommend_doses(
                first.pm, first.theta, covs, hist, plans, tgt, eta,
                u0=math.log(float(first.drug.dosing.amount)), steps=steps,
                probability=probability, unit=first.drug.units.dose,
                who=[tw.patient_id for tw in padded],
                constraints=_padded([limits[i] for i in idx], n),
                per_kg_weights=[tw.weight if tw.drug.dosing.per_kg else None for tw in padded],
                usual_durations=[tw.drug.dosing.route.duration for tw in padded],
                loading_doses=_padded([amount for *_, amount in job], n),
                solver=first.solver,
            )  # fmt: skip
            for (i, _, _, loading_reg, _), rec in zip(job, recs, strict=False):
                if loading_reg is not None and isinstance(rec, Recommendation):
                    rec = dataclasses.replace(rec, regimen=loading_reg + rec.regimen)
                out[i] = rec
    return out  # type: ignore[return-value]


# A live service asks for the same twins' plans again and again: a new level leaves a
# twin's doses (the same `history` object) and, between doses, its plan's start as they
# were. Padding a history and building a plan are host work (a few dozen small arrays
# each); both are kept, by the objects and values that determine them, and are the same
# objects a new call would build (regimens are immutable pytrees).
_PADDED: dict[int, tuple[Any, int, Any]] = {}
_PLANNED: dict[tuple, tuple[Any, list]] = {}
_KEPT = 8192


def _pad_kept(history: pkpd.Regimen, size: int) -> pkpd.Regimen:
    """`history.pad(size)`, kept for the same history object."""
    got = _PADDED.get(id(history))
    if got is not None and got[0] is history and got[1] == size:
        return got[2]
    if len(_PADDED) > _KEPT:
        _PADDED.clear()
    padded = history.pad(size)
    _PADDED[id(history)] = (history, size, padded)  # holds `history`: its id is not reused
    return padded


def _plans_kept(drug, history, choices, metric, *, start, n_doses, weight) -> list:
    """`plan_doses(...)`, kept by its arguments when `start` is given (the history is
    then not read: the plans are the drug's unit doses from `start`)."""
    if start is None:
        return plan_doses(
            drug, history, choices, metric, start=start, n_doses=n_doses, weight=weight
        )
    key = (
        id(drug),
        tuple(float(c) for c in choices),
        type(metric),
        repr(metric),
        float(start),
        n_doses,
        None if weight is None else float(weight),
    )
    got = _PLANNED.get(key)
    if got is not None and got[0] is drug:
        return got[1]
    plans = plan_doses(drug, history, choices, metric, start=start, n_doses=n_doses, weight=weight)
    if len(_PLANNED) > _KEPT:
        _PLANNED.clear()
    _PLANNED[key] = (drug, plans)  # holds `drug`: its id is not reused
    return plans


def _per_twin(value: Any, n: int, name: str, kind: Any) -> list[Any]:
    """`value` for each of `n` twins: one value (`kind`) or `None` for all, else a sequence
    of one per twin (its items checked per twin later)."""
    if value is None or isinstance(value, kind):
        return [value] * n
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise TypeError(
            f"recommend_twins: {name} must be one value for every twin or a sequence of one "
            f"per twin, got {value!r:.80}."
        )
    if len(value) != n:
        raise ValueError(
            f"recommend_twins: {len(value)} {name} for {n} twins; expected one per twin "
            "(or one for all)."
        )
    return list(value)


@jax.jit
def _first_of_split(keys):
    """`jax.random.split(k)[0]` of every key of `keys` `(K,)`, in one call."""
    return jax.vmap(lambda k: jax.random.split(k)[0])(keys)


@eqx.filter_jit
def _predict_many(pm, theta, cov, regimen, times, eta, solver=None):
    def one(c, r, t, e):
        return predict_draws(pm, theta, c, r, t, e, solver)

    return jax.vmap(one)(cov, regimen, times, eta)


def forecast_twins(
    twins: Sequence[DigitalTwin],
    times: Sequence[Any],
    regimens: Sequence[Any] | None = None,
    *,
    keys: Sequence[Any],
    n_draws: int = 1000,
    level: float = _LEVEL,
) -> list[Forecast | Exception]:
    """`DigitalTwin.forecast` (credible bands) for many twins: one vmapped simulation of the
    posterior draws for the twins of one drug model.

    **Arguments:** `times[k]`, `regimens[k]` (planned doses added to those given, or `None`)
    and `keys[k]` (a JAX PRNG key or int) per twin; the twins of one model need the same
    number of times. `n_draws`, `level` shared.

    **Returns:** per twin a `Forecast`, or the exception that stopped it (no doses and no
    regimen). The draws are those of `forecast` with the same key.
    """
    ks = _keys(keys, len(twins), "forecast_twins")
    regs = list(regimens) if regimens is not None else [None] * len(twins)
    if len(times) != len(twins) or len(regs) != len(twins):
        raise ValueError(
            f"forecast_twins: {len(times)} time grids and {len(regs)} regimens for "
            f"{len(twins)} twins; expected one each."
        )
    out: list[Forecast | Exception | None] = [None] * len(twins)
    for group in _groups(twins):
        ready = []
        for i in group:
            tw = twins[i]
            if regs[i] is None and tw.history is None:
                out[i] = ValueError(f"DigitalTwin {tw.patient_id}: no doses given and no regimen.")
                continue
            ready.append(i)
        if not ready:
            continue
        grids = [np.asarray(times[i], dtype=float) for i in ready]
        if len({g.shape for g in grids}) != 1:
            raise ValueError(
                "forecast_twins: the twins of one drug model need time grids of one length, "
                f"got {sorted({g.size for g in grids})}."
            )
        members = [twins[i] for i in ready]
        n = _bucket(len(ready))
        # each twin's history and plan joined (`history + regimen`), and stacked, on the host
        hist = [twins[i].history for i in ready]
        size = _bucket(
            max(
                sum(r.n_events for r in (h, regs[i]) if r is not None)
                for h, i in zip(hist, ready, strict=True)
            )
        )
        plans, stacked = join_many(_padded(hist, n), _padded([regs[i] for i in ready], n), size)
        # split in one call, the keys padded to the bucket `n` (one compilation per bucket)
        eta_keys = list(_first_of_split(jnp.stack(_padded([ks[i] for i in ready], n))))
        eta = _draws(_padded(members, n), eta_keys, n_draws)
        first = members[0]
        covs = {
            c: jnp.asarray([tw.covariates[c] for tw in _padded(members, n)])
            for c in first.covariates
        }
        y = np.asarray(
            _predict_many(
                first.pm,
                first.theta,
                covs,
                stacked,
                jnp.asarray(np.stack(_padded(grids, n))),
                eta,
                first.solver,
            )
        )
        q = (1.0 - level) / 2.0
        for j, i in enumerate(ready):
            lo, med, hi = np.quantile(y[j], [q, 0.5, 1.0 - q], axis=0)
            tw = twins[i]
            out[i] = Forecast(
                times=grids[j],
                median=med,
                lower=lo,
                upper=hi,
                draws=y[j],
                level=level,
                prediction_interval=False,
                observations=tw.observations.copy(),
                regimen=plans[j],
                unit=tw.drug.units.observed,
                drug=tw.drug.name,
            )
    return out  # type: ignore[return-value]
