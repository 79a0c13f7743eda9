"""Trial arms: how each virtual patient is dosed, period by period.

`Arm` is the interface the chunk simulator drives (`start` from the covariates, then a
jittable `step` per period); `DosingArm` covers fixed, covariate- or genotype-guided and
titrated regimens, with `Nomogram` tables as titration rules. Host-driven arms (`TwinArm`)
live in `_twin_arm`.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..drugs import Drug


@dataclasses.dataclass(frozen=True)
class Nomogram:
    r"""An INR- (or level-) guided dose adjustment table.

    A measured value in band $b$ (`bounds` cut the real line into `len(bounds) + 1` bands;
    a value equal to a bound falls in the upper band) changes the maintenance dose by the
    fraction `change[b]` and withholds the next `hold[b]` doses.

    **Fields:**

    - `bounds`: increasing cut points (in the units of the measured output).
    - `change`: fractional dose change per band (`0.1` = +10%), `len(bounds) + 1` values.
    - `hold`: number of doses withheld per band (non-negative integers).
    - `reference`: where the table comes from.
    """

    bounds: tuple[float, ...]
    change: tuple[float, ...]
    hold: tuple[int, ...]
    reference: str = ""

    def __post_init__(self):
        b = np.asarray(self.bounds, dtype=float)
        if b.ndim != 1 or b.size == 0 or not np.all(np.isfinite(b)) or np.any(np.diff(b) <= 0):
            raise ValueError(f"Nomogram: bounds must increase strictly, got {self.bounds!r}.")
        if len(self.change) != b.size + 1 or len(self.hold) != b.size + 1:
            raise ValueError(
                f"Nomogram: expected {b.size + 1} values in change and in hold (one per band), "
                f"got {len(self.change)} and {len(self.hold)}."
            )
        if any(c <= -1 or not math.isfinite(c) for c in self.change):
            raise ValueError(f"Nomogram: each change must be > -1 (-100%), got {self.change!r}.")
        if any(int(h) != h or h < 0 for h in self.hold):
            raise ValueError(f"Nomogram: hold must be non-negative integers, got {self.hold!r}.")

    def __call__(self, measured, dose):
        """`(new dose, doses to withhold)` for arrays of measured values and current doses."""
        band = jnp.searchsorted(jnp.asarray(self.bounds), measured, side="right")
        change = jnp.asarray(self.change)[band]
        hold = jnp.asarray(self.hold, dtype=jnp.int32)[band]
        return dose * (1.0 + change), hold


InitialFn = Callable[[Mapping[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]


class Arm(abc.ABC):
    """One arm of a trial: how each patient is dosed, period by period.

    Subclasses give `start` (the doses before any measurement, from the covariates, in
    NumPy) and `step` (jittable: the dose of one period and the updated state, given the
    value measured at the start of that period, if any).
    """

    name: str
    label: str
    description: str
    visits: tuple[int, ...]

    @abc.abstractmethod
    def start(self, covariates: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Initial per-patient state (arrays with the patient axis first)."""

    @abc.abstractmethod
    def step(self, period, measured, is_visit, state) -> tuple[Any, dict[str, Any]]:
        """`(amount given in this period, new state)` for one patient."""

    def step_at(self, period, visit_period, measured, is_visit, state):
        """`step` at a visit held in `period` that was scheduled in `visit_period` (a slipped
        visit, `Trial(visits=Visits(...))`): the rule of the scheduled visit decides, from
        the value measured in `period`, and the decision applies from `period` on. An arm
        that can take a moved visit overrides this (`DosingArm` does); a trial with slips
        refuses the others."""
        raise NotImplementedError(
            f"{type(self).__name__} does not take a visit moved from its scheduled day."
        )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "description": self.description,
            "visits_day": [v + 1 for v in self.visits],
        }

    def check_drug(self, drug: Drug) -> None:
        """Raise `ValueError` if the arm cannot dose `drug` (checked when the trial is
        built; an arm that needs something of the drug, such as `TwinArm`'s target, says so
        here). Any drug by default."""
        del drug


@dataclasses.dataclass(frozen=True, eq=False)
class DosingArm(Arm):
    r"""Loading doses, a maintenance dose, and rules that adjust it at the visits.

    - Fixed regimen: `initial` gives the same dose to everyone and `rules` is empty.
    - Covariate- or genotype-guided: `initial` computes the doses from the covariates
      (`Population.covariates()` keys: `AGE`, `WT`, `CYP2C9`, `VKORC1`, ...).
    - Adaptive (titration): `rules` change the maintenance dose from the value measured at
      each visit (with assay noise), e.g. an INR `Nomogram`.

    **Fields:**

    - `name`, `label`, `description`: identifiers for the results and the report.
    - `initial`: `initial(covariates) -> (loading, maintenance)`: `loading` an array
      `(patients, L)` of the doses of the first L periods (mg), `maintenance` `(patients,)`
      the dose of every later period (mg).
    - `visits`: days (1-based: day 1 is the first dosing day) on which the output is
      measured, in the morning before that day's dose.
    - `rules`: `((days, rule), ...)`: at a visit on one of `days` (1-based), `rule(measured,
      dose) -> (new dose, doses withheld)` updates the maintenance dose. The first rule whose
      days contain the visit applies.
    - `dose_step`: doses are rounded to multiples of this (mg; tablet strengths), and never
      fall below one step except while withheld.
    """

    name: str
    label: str
    description: str
    initial: InitialFn
    visits: tuple[int, ...] = ()
    rules: tuple[tuple[tuple[int, ...], Callable], ...] = ()
    dose_step: float = 0.5

    def __post_init__(self):
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"DosingArm: name must be a word ([A-Za-z0-9_]), got {self.name!r}.")
        days = [int(d) for d in self.visits]
        if any(d < 1 for d in days) or days != sorted(set(days)):
            raise ValueError(
                f"DosingArm {self.name!r}: visits must be increasing days >= 1, got "
                f"{self.visits!r}."
            )
        for rule_days, _ in self.rules:
            missing = sorted(set(rule_days) - set(days))
            if missing:
                raise ValueError(
                    f"DosingArm {self.name!r}: rule days {missing} are not visit days."
                )
        if not self.dose_step > 0:
            raise ValueError(f"DosingArm {self.name!r}: dose_step must be > 0.")
        # Stored 0-based (period index); describe() reports 1-based days.
        object.__setattr__(self, "visits", tuple(d - 1 for d in days))
        object.__setattr__(
            self, "rules", tuple((tuple(int(d) - 1 for d in ds), r) for ds, r in self.rules)
        )

    def describe(self) -> dict[str, Any]:
        fn = self.initial
        return {
            **super().describe(),
            "initial": f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}",
            "rules": [{"days": [d + 1 for d in days], "rule": repr(r)} for days, r in self.rules],
            "dose_step": self.dose_step,
        }

    def start(self, covariates):
        loading, maintenance = self.initial(covariates)
        n = len(covariates["ID"])
        loading = np.asarray(loading, dtype=float)
        maintenance = np.asarray(maintenance, dtype=float)
        if loading.ndim != 2 or loading.shape[0] != n or maintenance.shape != (n,):
            raise ValueError(
                f"DosingArm {self.name!r}: initial must return loading (patients, L) and "
                f"maintenance (patients,), got shapes {loading.shape} and {maintenance.shape} "
                f"for {n} patients."
            )
        for what, values in (("loading", loading), ("maintenance", maintenance)):
            bad = ~np.isfinite(values) | (values < 0)
            if bad.any():
                i = int(np.argwhere(bad)[0][0])
                raise ValueError(
                    f"DosingArm {self.name!r}: the {what} dose of patient "
                    f"{covariates['ID'][i]} is {values[i]}; expected a finite dose >= 0 (mg)."
                )
        return {
            "loading": loading,
            "dose": self._round(maintenance),
            "hold": np.zeros(n, dtype=np.int32),
        }

    def _round(self, dose):
        xp = jnp if isinstance(dose, jax.Array) else np
        return xp.maximum(xp.round(dose / self.dose_step), 1.0) * self.dose_step

    def step(self, period, measured, is_visit, state):
        return self.step_at(period, period, measured, is_visit, state)

    def step_at(self, period, visit_period, measured, is_visit, state):
        """`step`, with the rules chosen by the visit's scheduled period `visit_period` (a
        slipped visit) and the loading doses and withheld doses by the actual `period`."""
        dose, hold = state["dose"], state["hold"]
        for days, rule in self.rules:
            applies = is_visit & jnp.isin(visit_period, jnp.asarray(days, dtype=jnp.int32))
            new_dose, new_hold = rule(measured, dose)
            dose = jnp.where(applies, self._round(new_dose), dose)
            hold = jnp.where(applies, new_hold, hold)
        loading = state["loading"]
        n_load = loading.shape[-1]
        in_loading = period < n_load
        load = loading[jnp.clip(period, 0, max(n_load - 1, 0))] if n_load else 0.0
        held = hold > 0
        amount = jnp.where(in_loading, load, jnp.where(held, 0.0, dose))
        hold = jnp.where(in_loading, hold, jnp.maximum(hold - 1, 0))
        return amount, {"loading": loading, "dose": dose, "hold": hold}
