"""Adherence: whether a patient takes each prescribed dose.

A two-state Markov chain over dosing periods (taking / not taking), the model of drug
compliance of Girard P, Blaschke TF, Kastrissios H, Sheiner LB. A Markov mixed effect
regression model for drug compliance. Stat Med 1998;17(20):2313-2333: from one period to the
next a patient who took the dose misses the next with probability `p_miss_after_taken`, and
one who missed takes the next with probability `p_take_after_missed`. The first period's
state is drawn from the chain's stationary distribution, so that the share of doses taken is
the same on every day: `p_take_after_missed / (p_miss_after_taken + p_take_after_missed)`.
Independent misses (each dose taken with probability `p`, the binomial model) are the special
case `Adherence.independent(p)`. Each patient's chain is drawn from its own key, so results
do not depend on the chunk size, and are reproducible.

In a trial the arm decides the dose (what is prescribed: `Course["doses"]`); the patient
takes it or not (`Course["taken"]`, the amounts taken, and `Course["adherence"]`, 1 or 0 per
period); the model is given what is taken. The clinician's rules see only the levels, as in
practice.

Two more departures from the prescription, each optional and drawn from its own key stream
(so that the chain's draws stay those of an `Adherence` without them):

- `DoseTiming`: each dose is due `due_h` hours after the start of its dosing period (the
  visit, when there is one, is at the period start: a morning INR, an evening dose) and taken
  early or late by a normal jitter truncated to `+-max_h` hours, independently per dose;
  `Course["dose_offset_h"]` holds each dose's time after its period start.
- `Holidays`: drug holidays, runs of consecutive missed doses. In each period that is not
  part of a holiday, a holiday starts with probability `p_start` and lasts `periods` periods
  (that one included), then the patient is off holiday again; the share of periods on
  holiday in the long run is $p L / (1 - p + p L)$ ($p$ = `p_start`, $L$ = `periods`), the
  renewal-reward fraction of a cycle of a geometric wait and $L$ holiday periods.
  A dose is taken when the chain says so and the patient is not on holiday
  (`Course["holiday"]`, 1.0 on a holiday period).

Drug holidays (three or more consecutive days without a dose) are documented in electronic
monitoring of ambulatory patients by Vrijens B, Vincze G, Kristanto P, Urquhart J, Burnier M.
Adherence to prescribed antihypertensive drug treatments: longitudinal study of electronically
compiled dosing histories. BMJ 2008;336:1114-1117. No default rate or length is shipped (the
package holds no verified transcription of their per-day frequencies): state yours.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp


def _number(owner: str, name: str, value: Any, *, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}.")
    if value < low:
        raise ValueError(f"{owner}: {name} must be >= {low:g}, got {value!r}.")
    return float(value)


@dataclasses.dataclass(frozen=True)
class DoseTiming:
    """When each dose is taken within its dosing period (see the module docstring).

    - `sd_h`: the SD of each dose's jitter (h; a normal truncated to `+-max_h`), >= 0.
    - `max_h`: the largest jitter either way (h), >= 0.
    - `due_h`: when the dose is due, hours after the period start (the visit); default
      `max_h` (the earliest dose at the period start). Must be >= `max_h` (a dose is never
      taken before the visit that decides it), and `due_h + max_h` less than the dosing
      period (checked by the `Trial`: every dose stays within its own period).
    - `reference`: where the values come from.
    """

    sd_h: float
    max_h: float
    due_h: float | None = None
    reference: str = ""

    def __post_init__(self):
        sd = _number("DoseTiming", "sd_h", self.sd_h)
        top = _number("DoseTiming", "max_h", self.max_h)
        due = top if self.due_h is None else _number("DoseTiming", "due_h", self.due_h)
        if due < top:
            raise ValueError(
                f"DoseTiming: due_h ({due:g} h) must be >= max_h ({top:g} h): a dose taken "
                "max_h early would fall before the start of its period, where it is decided."
            )
        object.__setattr__(self, "sd_h", sd)
        object.__setattr__(self, "max_h", top)
        object.__setattr__(self, "due_h", due)

    def draw(self, key: jax.Array, n_periods: int) -> jax.Array:
        """`(n_periods,)` each dose's time after its period start (h) for one patient."""
        if self.sd_h == 0.0 or self.max_h == 0.0:
            return jnp.full((n_periods,), float(self.due_h))  # type: ignore[arg-type]
        bound = self.max_h / self.sd_h
        z = jax.random.truncated_normal(key, -bound, bound, (n_periods,), dtype=float)
        return float(self.due_h) + self.sd_h * z  # type: ignore[arg-type]

    def describe(self) -> dict[str, Any]:
        return {
            "jitter": "normal, truncated to +-max_h",
            "sd_h": self.sd_h,
            "max_h": self.max_h,
            "due_h": self.due_h,
            "reference": self.reference,
        }


@dataclasses.dataclass(frozen=True)
class Holidays:
    """Drug holidays: runs of `periods` consecutive missed doses, each starting with
    probability `p_start` in a period that is not on holiday (see the module docstring).

    - `p_start`: the probability per dosing period of starting a holiday, in [0, 1).
    - `periods`: the length of each holiday (dosing periods: days for once-daily drugs), a
      whole number >= 1.
    - `reference`: where the values come from.
    """

    p_start: float
    periods: int
    reference: str = ""

    def __post_init__(self):
        p = self.p_start
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p < 1.0:
            raise ValueError(f"Holidays: p_start must be a probability in [0, 1), got {p!r}.")
        k = self.periods
        if isinstance(k, float) and k.is_integer():
            k = int(k)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"Holidays: periods must be a whole number >= 1, got {k!r}.")
        object.__setattr__(self, "p_start", float(p))
        object.__setattr__(self, "periods", k)

    @property
    def holiday_share(self) -> float:
        """The long-run share of periods on holiday, p L / (1 - p + p L)."""
        p, n = self.p_start, self.periods
        return p * n / (1.0 - p + p * n)

    def draw(self, key: jax.Array, n_periods: int) -> jax.Array:
        """`(n_periods,)` 1.0 on a holiday period, 0.0 otherwise, for one patient."""
        u = jax.random.uniform(key, (n_periods,))

        def step(left, v):
            start = (left == 0) & (v < self.p_start)
            left = jnp.where(start, self.periods, left)
            on = left > 0
            return jnp.maximum(left - 1, 0), on.astype(float)

        _, on = jax.lax.scan(step, jnp.int32(0), u)
        return on

    def describe(self) -> dict[str, Any]:
        return {
            "p_start": self.p_start,
            "periods": float(self.periods),
            "holiday_share": self.holiday_share,
            "reference": self.reference,
        }


#: Sub-streams of a patient's adherence key for the holidays and the dose times.
HOLIDAY_STREAM = 1
TIMING_STREAM = 2


@dataclasses.dataclass(frozen=True)
class Adherence:
    """A two-state Markov model of taking each dose (see the module docstring).

    - `p_miss_after_taken`: P(the next dose is missed | this one was taken).
    - `p_take_after_missed`: P(the next dose is taken | this one was missed).
    - `reference`: where the values come from (shown in the report).
    - `timing`: when each dose is taken (`DoseTiming`); default None: at the period start.
    - `holidays`: drug holidays (`Holidays`); default None: none.

    The defaults of the two probabilities (0 and 1) are a chain that takes every dose, for
    an `Adherence` of timing or holidays alone.
    """

    p_miss_after_taken: float = 0.0
    p_take_after_missed: float = 1.0
    reference: str = ""
    timing: DoseTiming | None = None
    holidays: Holidays | None = None

    def __post_init__(self):
        for name in ("p_miss_after_taken", "p_take_after_missed"):
            p = getattr(self, name)
            if not (isinstance(p, int | float) and math.isfinite(p) and 0.0 <= p <= 1.0):
                raise ValueError(f"Adherence: {name} must be a probability in [0, 1], got {p!r}.")
        if self.p_miss_after_taken + self.p_take_after_missed == 0.0:
            raise ValueError(
                "Adherence: p_miss_after_taken and p_take_after_missed are both 0: the chain "
                "never changes state and has no single share of doses taken."
            )
        if self.timing is not None and not isinstance(self.timing, DoseTiming):
            raise TypeError(
                f"Adherence: timing must be a DoseTiming or None, got {type(self.timing).__name__}."
            )
        if self.holidays is not None and not isinstance(self.holidays, Holidays):
            raise TypeError(
                "Adherence: holidays must be a Holidays or None, got "
                f"{type(self.holidays).__name__}."
            )

    @classmethod
    def independent(cls, p_taken: float, reference: str = "") -> Adherence:
        """Each dose taken with probability `p_taken`, independently of the others."""
        return cls(1.0 - float(p_taken), float(p_taken), reference)

    @property
    def taken_share(self) -> float:
        """The stationary share of doses taken."""
        a, b = self.p_miss_after_taken, self.p_take_after_missed
        return b / (a + b)

    def draw(self, key: jax.Array, n_periods: int) -> jax.Array:
        """`(n_periods,)` 1.0 (taken) / 0.0 (missed) for one patient."""
        u = jax.random.uniform(key, (n_periods,))
        first = (u[0] < self.taken_share).astype(float)

        def step(state, v):
            p_take = jnp.where(state > 0.5, 1.0 - self.p_miss_after_taken, self.p_take_after_missed)
            new = (v < p_take).astype(float)
            return new, new

        _, rest = jax.lax.scan(step, first, u[1:])
        return jnp.concatenate([first[None], rest])

    def draw_all(self, key: jax.Array, n_periods: int) -> dict[str, jax.Array]:
        """One patient's `{"taken": (P,) 1/0, "holiday": (P,) 1/0, "offset_h": (P,)}`:
        the chain from `key` itself (`draw`), the holidays and dose times from
        `fold_in(key, HOLIDAY_STREAM)` and `fold_in(key, TIMING_STREAM)`; a dose is taken
        when the chain takes it and the patient is not on holiday. Without holidays
        (timing) there is no `"holiday"` (`"offset_h"`) entry."""
        chain = self.draw(key, n_periods)
        out = {"taken": chain}
        if self.holidays is not None:
            on = self.holidays.draw(jax.random.fold_in(key, HOLIDAY_STREAM), n_periods)
            out = {"taken": chain * (1.0 - on), "holiday": on}
        if self.timing is not None:
            out["offset_h"] = self.timing.draw(jax.random.fold_in(key, TIMING_STREAM), n_periods)
        return out

    def describe(self) -> dict[str, Any]:
        out = {
            "model": "two-state Markov (Girard et al. 1998)",
            "p_miss_after_taken": float(self.p_miss_after_taken),
            "p_take_after_missed": float(self.p_take_after_missed),
            "taken_share": self.taken_share,
            "reference": self.reference,
        }
        # Only when set: an Adherence without them describes itself (and hashes) as before.
        if self.timing is not None:
            out["timing"] = self.timing.describe()
        if self.holidays is not None:
            out["holidays"] = self.holidays.describe()
        return out
