r"""Dropout: patients who leave the trial before its end.

A patient leaves at the earlier of two times:

- **random dropout**, unrelated to the course: an exponential time with `rate_per_year`
  (constant hazard; missing completely at random);
- **informative dropout**: right after the first visit whose *measured* value is at or
  above `above` (e.g. an INR >= 5), with probability `p_after_above` (the decision is
  taken once, at that visit; missing at random given the measured values, since the
  value that triggers it is observed).

Leaving does not change what happened before (the arm's decisions up to then are those of
the trial without dropout); afterwards the patient is no longer observed. In a `Course`,
`observed` `(n, V)` says which visits were attended (a prefix of the visits: the visits at
or before the dropout time), `observed_days` `(n, P + 1)` the same for the daily noise-free
series, and `dropout_day` `(n,)` the day the patient left (`inf` when it stayed).

How the endpoints count a patient who left (an "as observed" analysis over the patient's
own follow-up, which is how TTR is computed in trials):

- `TimeInRange`: Rosendaal interpolation between the first and the last *observed* value;
  NaN (not evaluable) with fewer than two observed values.
- `AnyAbove`: over the observed values only.
- `TimeToRange`: the first observed time in range; censored at the last observed value.
- `FinalLevel`: the last observed value.
- `MeanDose`, `DosesTaken`, exposure endpoints: computed over the whole planned course (the
  doses the arm would have prescribed), i.e. not changed by dropout; read them with that
  in mind.
- `Dropped` (an endpoint): whether the patient left before the end, and when.

With `Trial(visits=...)` (slipped and missed visits), the visits are each patient's own
(`Course["visit_day"]`), a missed visit triggers nothing, and `observed` marks the visits
that happened before the patient left (no longer a prefix: the endpoints use the visits
that happened, in order).

References: Little RJA, Rubin DB. Statistical Analysis with Missing Data. 2nd ed. Wiley
2002 (missing completely at random / at random); Rosendaal FR et al. Thromb Haemost
1993;69:236-239 (TTR over each patient's follow-up).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Dropout:
    """Random and informative dropout (see the module docstring).

    - `rate_per_year`: the hazard of random dropout (1/year), >= 0.
    - `above`: a measured value at or above which a patient may leave (None: no
      informative dropout).
    - `p_after_above`: the probability of leaving after the first such value, 0 to 1.
    - `reference`: where the values come from (shown in the report).
    """

    rate_per_year: float = 0.0
    above: float | None = None
    p_after_above: float = 1.0
    reference: str = ""

    def __post_init__(self):
        r = self.rate_per_year
        if isinstance(r, bool) or not isinstance(r, int | float) or not math.isfinite(r) or r < 0:
            raise ValueError(f"Dropout: rate_per_year must be a finite number >= 0, got {r!r}.")
        a = self.above
        if a is not None and (
            isinstance(a, bool) or not isinstance(a, int | float) or not math.isfinite(a)
        ):
            raise ValueError(f"Dropout: above must be a finite number or None, got {a!r}.")
        p = self.p_after_above
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p_after_above must be a probability, got {p!r}.")

    def times(self, keys: jax.Array, visit_days: np.ndarray, measured: np.ndarray) -> np.ndarray:
        """`(n,)` each patient's dropout day (`inf`: stays), from its key (`keys` `(n,)`),
        the visit days `(V,)` (or each patient's own, `(n, V)`, with slipped visits) and the
        measured values `(n, V)` (NaN at a visit that did not happen: it triggers nothing)."""
        u = np.asarray(jax.vmap(lambda k: jax.random.uniform(k, (2,)))(keys))
        n = measured.shape[0]
        out = np.full(n, np.inf)
        if self.rate_per_year > 0:
            out = -np.log1p(-u[:, 0]) / self.rate_per_year * 365.25
        if self.above is not None:
            hit = np.asarray(measured) >= self.above
            any_hit = hit.any(axis=1) & (u[:, 1] < self.p_after_above)
            first = np.argmax(hit, axis=1)
            # leaves right after that visit: later visits are not attended
            days = np.broadcast_to(np.asarray(visit_days, dtype=float), hit.shape)
            at = np.take_along_axis(days, first[:, None], axis=1)[:, 0]
            informative = np.where(any_hit, at, np.inf)
            out = np.minimum(out, informative)
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "rate_per_year": float(self.rate_per_year),
            "above": None if self.above is None else float(self.above),
            "p_after_above": float(self.p_after_above),
            "reference": self.reference,
        }


def observed_mask(days: np.ndarray, dropout_day: np.ndarray) -> np.ndarray:
    """`(n, T)`: the times (`days` `(T,)`, or each patient's own `(n, T)`) at or before each
    patient's dropout day."""
    days = np.asarray(days)
    return (days if days.ndim == 2 else days[None, :]) <= np.asarray(dropout_day)[:, None]


__all__ = ["Dropout", "observed_mask"]
