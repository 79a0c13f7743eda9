"""Training sets for surrogates, simulated with the trial engine.

`training_set(trial, n, arm=...)` simulates n virtual patients of one arm of a
`twins.Trial` (the same patients, parameters and assay noise as `twins.run_trial` with the
same seed) and returns, per patient:

- static features: the numeric covariates (`AGE`, `WT`, `HT`, `SEX`, renal function, ...),
  the activity scores of the genes the drug's model reads, for the genes CPIC scores (CYP2C9,
  CYP2D6), each with `<GENE>_AS_missing` (1 where CPIC gives the diplotype no score, as for
  CYP2D6 alleles of uncertain function, and the score is then 0; a gene the model does not
  read is left out, as noise), medication flags, the drug model's own covariates,
  and the regimen (the loading doses and the initial maintenance dose); with
  `parameters=True` also the patient's model parameters (an emulator of the mechanistic
  model, which then sees everything that decides the outcome; without them the individual
  variability is unobserved, as in the clinic);
- a sequence over the first `observe` periods: the dose given, the level measured at the
  visits (with the drug's assay noise; 0 elsewhere) and a 0/1 channel saying whether it was
  measured;
- targets: every endpoint of the trial for that arm (AUC, trough, TTR, INR at day N, the
  adverse-event flag, ...) and the true level at the start of every period after `observe`
  (the future trajectory).

A patient that cannot be simulated (`twins.trials.simulate_chunk_outcome`: parameters outside
the model's domain, a non-finite course, an error raised while simulating it) is left out:
its row holds another patient's numbers and is never trained on. `TrainingSet.failures`
names every such patient with its reason, a `FailedPatientsWarning` says how many were left
out, and past `max_failed_fraction` of the `n` patients the build stops with
`twins.trials.TooManyFailuresError`, as `twins.run_trial` does.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from twins.governance import Governance
from twins.trials import (
    MAX_FAILED_FRACTION,
    TooManyFailuresError,
    Trial,
    consented_trial,
    model_covariates,
    population_rows,
    seed_keys,
    simulate_chunk_outcome,
)

from ._base import Inputs

#: the genes CPIC scores by activity (twins.pgx: CYP2D6, CYP2C9); CYP2C19 and VKORC1 have
#: no activity score (their `_AS` columns are empty) and enter through the drug's covariates
_SCORED_GENES = ("CYP2C9", "CYP2D6")
_NUMERIC = ("AGE", "WT", "HT", "SEX", "SCR", "CRCL", "EGFR", "BSA", "LBW", "ALB")

#: Failed patients named in `training_set`'s warning and error.
_FAILED_SHOWN = 5


class FailedPatientsWarning(UserWarning):
    """`training_set` left out patients that could not be simulated (fewer than its
    `max_failed_fraction`); `TrainingSet.failures` names each with its reason."""


@dataclasses.dataclass(frozen=True)
class TrainingSet:
    """Simulated patients of one arm: `inputs`, `targets` (one column per endpoint value),
    `trajectory` (n, H): the true level at `trajectory_days`, and `patients` (ids).

    `failures`: `{patient id: reason}` for the patients of the build that could not be
    simulated and are not in the set (empty when none failed); `take` and `split` keep it,
    as the record of who the set was built without."""

    inputs: Inputs
    targets: pd.DataFrame
    trajectory: np.ndarray
    trajectory_days: np.ndarray
    patients: np.ndarray
    arm: str
    failures: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.patients)

    def take(self, index: Any) -> TrainingSet:
        index = np.asarray(index)
        return TrainingSet(
            self.inputs.take(index),
            self.targets.iloc[index].reset_index(drop=True),
            self.trajectory[index],
            self.trajectory_days,
            self.patients[index],
            self.arm,
            self.failures,
        )

    def split(self, test_fraction: float = 0.2, *, key: int = 0) -> tuple[TrainingSet, TrainingSet]:
        """A random `(train, test)` split."""
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
        order = np.random.default_rng(key).permutation(len(self))
        n_test = round(test_fraction * len(self))
        return self.take(np.sort(order[n_test:])), self.take(np.sort(order[:n_test]))


def static_features(
    trial: Trial, population: Any, cov: dict[str, np.ndarray], state: dict[str, np.ndarray]
) -> pd.DataFrame:
    """The static features of a chunk (see the module docstring)."""
    columns: dict[str, np.ndarray] = {}
    for name in _NUMERIC:
        if name in cov:
            columns[name] = np.asarray(cov[name], dtype=float)
    frame = population.to_dataframe()
    cov_for_model = dict(cov)
    cov_for_model["ANCESTRY"] = frame["ancestry"].to_numpy(dtype=object)
    model_cov = model_covariates(trial.drug, cov_for_model)
    unread = _genes_not_read(trial.drug, cov_for_model, model_cov)
    for name, values in cov.items():  # activity scores, medication flags, extras
        arr = np.asarray(values)
        if name.endswith("_AS") and (name[:-3] in unread or name[:-3] not in _SCORED_GENES):
            continue  # a gene the drug's model does not read is noise to a surrogate
        if name != "ID" and arr.dtype.kind in "fiub":
            columns.setdefault(name, arr.astype(float))
    for name in [c for c in columns if c.endswith("_AS")]:
        # CPIC gives no activity score to some diplotypes (CYP2D6 alleles of uncertain
        # function: Indeterminate): a feature of its own says so, and the score is 0 there,
        # so that every feature is a number (LIME, SHAP and the networks need complete rows)
        missing = ~np.isfinite(columns[name])
        columns[f"{name}_missing"] = missing.astype(float)
        columns[name] = np.where(missing, 0.0, columns[name])
    if "ancestry" in frame:
        for group in sorted(set(frame["ancestry"])):
            word = "".join(ch if ch.isalnum() else "_" for ch in str(group))
            columns[f"ancestry_{word}"] = (frame["ancestry"] == group).to_numpy(dtype=float)
    for name, values in model_cov.items():
        columns.setdefault(name, np.asarray(values, dtype=float))
    loading = np.asarray(state["loading"], dtype=float)
    for j in range(loading.shape[1]):
        columns[f"loading_dose_{j + 1}"] = loading[:, j]
    columns["maintenance_dose"] = np.asarray(state["dose"], dtype=float)
    return pd.DataFrame(columns)


def _genes_not_read(
    drug: Any, cov: dict[str, np.ndarray], model_cov: dict[str, np.ndarray], rows: int = 200
) -> set[str]:
    """The genes (with an activity score in `cov`) that the drug's covariate function does
    not read: with every column of the gene left out, its model covariates of the first
    `rows` patients are the same (a function that reads the gene raises, or changes)."""
    genes = {name[:-3] for name in cov if name.endswith("_AS")}
    m = min(rows, len(cov["ID"]))
    head = {k: np.asarray(v)[:m] for k, v in cov.items()}
    want = {k: np.asarray(v)[:m] for k, v in model_cov.items()}
    unread = set()
    for gene in genes:
        probe = {k: v for k, v in head.items() if k != gene and not k.startswith(gene + "_")}
        try:
            got = model_covariates(drug, probe)
        except Exception:  # the function needs the gene
            continue
        same = set(got) == set(want) and all(
            np.array_equal(got[k], want[k], equal_nan=True) for k in want
        )
        if same:
            unread.add(gene)
    return unread


def training_set(
    trial: Trial,
    n: int,
    *,
    arm: str | None = None,
    seed: int = 0,
    observe: int | None = None,
    parameters: bool = False,
    chunk_size: int = 5_000,
    max_failed_fraction: float = MAX_FAILED_FRACTION,
    governance: Governance | None = None,
) -> TrainingSet:
    """Simulate `n` patients of `arm` (default the first) of `trial` for a surrogate.

    - `observe`: periods whose doses and measured levels form the input sequence (default:
      up to the last visit before half the trial; 0 for no sequence).
    - `parameters`: add each patient's model parameters to the static features.
    - `seed`: the trial's seed (patient i is the same as in `run_trial(..., seed=seed)`).
    - `max_failed_fraction` (0 to 1; default `twins.trials.MAX_FAILED_FRACTION`, as
      `run_trial`): the patients that cannot be simulated are left out of the set and named
      in `TrainingSet.failures` with their reasons, with a `FailedPatientsWarning`; once
      more than this fraction of the `n` patients failed the build stops with
      `twins.trials.TooManyFailuresError` (a `ValueError`). 0: any failure stops it; 1:
      never (but a set with no patient left is refused).
    - `governance`: a `twins.governance.Governance`, required when the trial's fixed
      population carries consents (`twins.Population.consents`): only the patients who
      consented to research are taken (ids as pseudonyms of purpose `"training"`), each
      refusal and each patient used logged (as `twins.run_trial`).

    Without failures the set has `n` rows in patient order; with them, `n` minus the failed,
    every other row the same bits as when the failed patients are replaced by good ones
    (their randomness comes from their index, not from their neighbours).
    """
    names = [a.name for a in trial.arms]
    arm_name = names[0] if arm is None else arm
    if arm_name not in names:
        raise ValueError(f"training_set: arm {arm_name!r} is not one of the trial's {names}.")
    the_arm = trial.arms[names.index(arm_name)]
    if not (isinstance(n, int) and n >= 20):
        raise ValueError(f"training_set: n must be an integer >= 20, got {n!r}.")
    if (
        isinstance(max_failed_fraction, bool)
        or not isinstance(max_failed_fraction, int | float)
        or not 0 <= max_failed_fraction <= 1
    ):
        raise ValueError(
            "training_set: max_failed_fraction must be a number from 0 to 1, got "
            f"{max_failed_fraction!r}."
        )
    visits = np.asarray(the_arm.visits, dtype=int)  # 0-based periods
    if observe is None:
        early = visits[visits < trial.days // 2]
        observe = int(early.max()) + 1 if early.size else 0
    if not 0 <= observe < trial.days:
        raise ValueError(
            f"training_set: observe must be in [0, {trial.days}) periods, got {observe}."
        )
    trial = consented_trial(
        trial, governance, use=f"surrogate training set of trial {trial.name!r}",
        output_purpose="training",
    )  # fmt: skip
    sub = Trial(
        **{
            **{f.name: getattr(trial, f.name) for f in dataclasses.fields(trial)},
            "arms": (the_arm,),
            "reference_arm": None,
            "band_points": 1,  # no bands are written here: no points within the periods
        }
    )
    pop_key, sim_key = seed_keys(seed)
    runners: dict[str, Any] = {}
    statics, seqs, targets, trajs, ids = [], [], [], [], []
    failures: dict[str, str] = {}
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        pop = population_rows(sub, start, stop, key=pop_key)
        outcome = simulate_chunk_outcome(
            sub, pop, start, key=sim_key, runners=runners, size=min(chunk_size, n)
        )
        # A failed patient's row holds a stand-in's numbers: dropped, never trained on.
        failed = outcome.failures[arm_name]
        keep = np.array([i for i in range(len(pop)) if i not in failed], dtype=int)
        chunk_ids = pop.ids.astype(str)
        failures.update({str(chunk_ids[i]): why for i, why in failed.items()})
        _check_failures(sub, arm_name, failures, stop, n, max_failed_fraction)
        cov = pop.covariates()
        state = the_arm.start(cov)
        static = static_features(sub, pop, cov, state)
        course = outcome.courses[arm_name]
        if parameters:
            for k, v in course["params"].items():
                static[f"param_{k}"] = np.asarray(v, dtype=float)
        statics.append(static.iloc[keep])
        if observe:
            m = len(pop)
            measured = np.zeros((m, observe))
            mask = np.zeros((m, observe))
            if "attended" in course:  # Trial(visits=...): each patient's realised visits
                days = np.asarray(course["days"], dtype=float)
                period = np.searchsorted(days, np.asarray(course["visit_day"], dtype=float))
                for j in range(len(visits)):
                    rows = np.flatnonzero(course["attended"][:, j] & (period[:, j] < observe))
                    measured[rows, period[rows, j]] = course["measured"][rows, j]
                    mask[rows, period[rows, j]] = 1.0
            else:
                for j, v in enumerate(visits):
                    if v < observe:
                        measured[:, v] = course["measured"][:, j]
                        mask[:, v] = 1.0
            doses = course["doses"][:, :observe]
            seqs.append(np.stack([doses, measured, mask], axis=-1)[keep])
        values = {k: np.asarray(v)[keep] for k, v in outcome.endpoints[arm_name].items()}
        targets.append(pd.DataFrame(values))
        trajs.append(course["level"][keep, observe:])
        ids.append(chunk_ids[keep])
    if len(failures) == n:
        raise TooManyFailuresError(
            f"training_set: trial {trial.name!r}, arm {arm_name!r}: none of the {n} "
            f"patients could be simulated. First: {_first(failures)}."
        )
    if failures:
        k = len(failures)
        warnings.warn(
            f"training_set: trial {trial.name!r}, arm {arm_name!r}: {k} of the {n} patients "
            f"({100 * k / n:.3g}%) could not be simulated and are left out of the training "
            f"set ({n - k} rows; TrainingSet.failures names each with its reason). First: "
            f"{_first(failures)}.",
            FailedPatientsWarning,
            stacklevel=2,
        )
    static = pd.concat(statics, ignore_index=True)
    # Columns present in some chunks only (e.g. an ancestry nobody in a chunk has) are 0.
    static = static.fillna({c: 0.0 for c in static.columns if c.startswith("ancestry_")})
    # Activity scores CPIC does not define (VKORC1, CYP2C19) are NaN for everyone: dropped.
    static = static.loc[:, static.notna().any()]
    if failures:  # an ancestry only failed patients had: no column (none without failures)
        static = static.loc[
            :, [not (c.startswith("ancestry_") and (static[c] == 0).all()) for c in static]
        ]
    interval = float(trial.interval)
    sequence = np.concatenate(seqs) if observe else None
    inputs = Inputs(
        static,
        sequence,
        ("dose", "measured", "is_measured") if observe else (),
        np.arange(observe) * interval if observe else None,
    )
    days = np.arange(trial.days + 1) * interval / 24.0
    return TrainingSet(
        inputs,
        pd.concat(targets, ignore_index=True),
        np.concatenate(trajs),
        days[observe:],
        np.concatenate(ids),
        arm_name,
        failures,
    )


def _first(failures: Mapping[str, str]) -> str:
    """The first failed patients with their reasons, for a message."""
    shown = list(failures.items())[:_FAILED_SHOWN]
    more = len(failures) - len(shown)
    text = "; ".join(f"{pid}: {why}" for pid, why in shown)
    return text + (f" (and {more} more)" if more > 0 else "")


def _check_failures(
    trial: Trial, arm: str, failures: Mapping[str, str], done: int, n: int, limit: float
) -> None:
    """Raise `TooManyFailuresError` once more than `limit` of the `n` patients failed
    (`failures`, counted in the first `done` simulated)."""
    k = len(failures)
    if k / n <= limit:
        return
    where = f"the {n}" if done == n else f"the first {done} of the {n}"
    raise TooManyFailuresError(
        f"training_set: trial {trial.name!r}, arm {arm!r}: {k} of {where} patients could not "
        f"be simulated ({100 * k / n:.3g}% of {n}), more than max_failed_fraction={limit:g} "
        f"allows ({math.floor(limit * n)} patients); the build stops. First: "
        f"{_first(failures)}. Check these patients' parameters or the solver; to train on "
        f"the others, pass a larger max_failed_fraction (at least {k / n:.3g}; 1 never "
        "stops)."
    )
