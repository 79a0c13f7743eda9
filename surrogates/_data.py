"""Training sets for surrogates, simulated with the trial engine.

`training_set(trial, n, arm=...)` simulates n virtual patients of one arm of a
`twins.Trial` (the same patients, parameters and assay noise as `twins.run_trial` with the
same seed) and returns, per patient:

- static features: the numeric covariates (`AGE`, `WT`, `HT`, `SEX`, renal function, ...),
  genotype indicators and activity scores, medication flags, the drug model's own covariates,
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
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from twins.trials import Trial, model_covariates, population_rows, seed_keys, simulate_chunk

from ._base import Inputs

_NUMERIC = ("AGE", "WT", "HT", "SEX", "SCR", "CRCL", "EGFR", "BSA", "LBW", "ALB")


@dataclasses.dataclass(frozen=True)
class TrainingSet:
    """Simulated patients of one arm: `inputs`, `targets` (one column per endpoint value),
    `trajectory` (n, H): the true level at `trajectory_days`, and `patients` (ids)."""

    inputs: Inputs
    targets: pd.DataFrame
    trajectory: np.ndarray
    trajectory_days: np.ndarray
    patients: np.ndarray
    arm: str

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
    for name, values in cov.items():  # activity scores (NaN: none), medication flags, extras
        arr = np.asarray(values)
        if name != "ID" and arr.dtype.kind in "fiub":
            columns.setdefault(name, arr.astype(float))
    frame = population.to_dataframe()
    if "ancestry" in frame:
        for group in sorted(set(frame["ancestry"])):
            word = "".join(ch if ch.isalnum() else "_" for ch in str(group))
            columns[f"ancestry_{word}"] = (frame["ancestry"] == group).to_numpy(dtype=float)
    cov_for_model = dict(cov)
    cov_for_model["ANCESTRY"] = frame["ancestry"].to_numpy(dtype=object)
    for name, values in model_covariates(trial.drug, cov_for_model).items():
        columns.setdefault(name, np.asarray(values, dtype=float))
    loading = np.asarray(state["loading"], dtype=float)
    for j in range(loading.shape[1]):
        columns[f"loading_dose_{j + 1}"] = loading[:, j]
    columns["maintenance_dose"] = np.asarray(state["dose"], dtype=float)
    return pd.DataFrame(columns)


def training_set(
    trial: Trial,
    n: int,
    *,
    arm: str | None = None,
    seed: int = 0,
    observe: int | None = None,
    parameters: bool = False,
    chunk_size: int = 5_000,
) -> TrainingSet:
    """Simulate `n` patients of `arm` (default the first) of `trial` for a surrogate.

    - `observe`: periods whose doses and measured levels form the input sequence (default:
      up to the last visit before half the trial; 0 for no sequence).
    - `parameters`: add each patient's model parameters to the static features.
    - `seed`: the trial's seed (patient i is the same as in `run_trial(..., seed=seed)`).
    """
    names = [a.name for a in trial.arms]
    arm_name = names[0] if arm is None else arm
    if arm_name not in names:
        raise ValueError(f"training_set: arm {arm_name!r} is not one of the trial's {names}.")
    the_arm = trial.arms[names.index(arm_name)]
    if not (isinstance(n, int) and n >= 20):
        raise ValueError(f"training_set: n must be an integer >= 20, got {n!r}.")
    visits = np.asarray(the_arm.visits, dtype=int)  # 0-based periods
    if observe is None:
        early = visits[visits < trial.days // 2]
        observe = int(early.max()) + 1 if early.size else 0
    if not 0 <= observe < trial.days:
        raise ValueError(
            f"training_set: observe must be in [0, {trial.days}) periods, got {observe}."
        )
    sub = Trial(
        **{
            **{f.name: getattr(trial, f.name) for f in dataclasses.fields(trial)},
            "arms": (the_arm,),
            "reference_arm": None,
        }
    )
    pop_key, sim_key = seed_keys(seed)
    runners: dict[str, Any] = {}
    statics, seqs, targets, trajs, ids = [], [], [], [], []
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        pop = population_rows(sub, start, stop, key=pop_key)
        endpoints, courses = simulate_chunk(
            sub, pop, start, key=sim_key, runners=runners, size=min(chunk_size, n)
        )
        cov = pop.covariates()
        state = the_arm.start(cov)
        static = static_features(sub, pop, cov, state)
        course = courses[arm_name]
        if parameters:
            for k, v in course["params"].items():
                static[f"param_{k}"] = np.asarray(v, dtype=float)
        statics.append(static)
        if observe:
            m = len(pop)
            measured = np.zeros((m, observe))
            mask = np.zeros((m, observe))
            for j, v in enumerate(visits):
                if v < observe:
                    measured[:, v] = course["measured"][:, j]
                    mask[:, v] = 1.0
            doses = course["doses"][:, :observe]
            seqs.append(np.stack([doses, measured, mask], axis=-1))
        targets.append(pd.DataFrame({k: np.asarray(v) for k, v in endpoints[arm_name].items()}))
        trajs.append(course["level"][:, observe:])
        ids.append(pop.ids.astype(str))
    static = pd.concat(statics, ignore_index=True)
    # Columns present in some chunks only (e.g. an ancestry nobody in a chunk has) are 0.
    static = static.fillna({c: 0.0 for c in static.columns if c.startswith("ancestry_")})
    # Activity scores CPIC does not define (VKORC1, CYP2C19) are NaN for everyone: dropped.
    static = static.loc[:, static.notna().any()]
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
    )
