r"""Visit-schedule realism: visits that slip by whole days, and visits that are missed.

A trial's arms schedule their visits (INR checks, drug levels) on fixed days; real patients
come a day or two early or late, and some visits do not happen. `Trial(visits=Visits(...))`
gives every patient, from its own key, a realised schedule:

- **slips**: scheduled visit $j$ moves by $S_j$ whole days, $S_j$ independent across visits
  and patients, from a normal distribution discretised to whole days and truncated to
  $\pm k$ days (`slip_sd_days` $= \sigma$, `slip_max_days` $= k$):
  $P(S = s) \propto \Phi((s + \tfrac12)/\sigma) - \Phi((s - \tfrac12)/\sigma)$ for
  $s = -k, \dots, k$ (the rounding of a normal truncated to $[-k - \tfrac12, k + \tfrac12]$);
- **missed visits**: each visit is missed with probability `p_missed`, independently of the
  others and of the slips;
- visits on `fixed_days` (default day 1: the baseline measurement before the first dose)
  neither slip nor are missed.

The realised day of a visit that happens is its scheduled day plus its slip, then moved so
that it is never before day 1, never after the end of the trial (the morning after the last
dosing period), and never on or before the previous visit that happened (it is then the day
after that one); a visit that no longer fits before the end of the trial is missed. So the
slip distribution above is that of the draws; the realised slips of a crowded schedule
(visits two days apart with $k \ge 2$) are pushed later where they would collide.

What the trial does with it:

- a visit that happened measures the output on the day it happened (morning, before that
  day's dose), and the arm's rule for that *scheduled* visit (the rule of its scheduled day)
  decides from that value, applied from that day on;
- a missed visit measures nothing and decides nothing: the dose stays as it was;
- the endpoints that use measured values use only the visits that happened, at the days they
  happened (`twins.trials._endpoints`).

Slips are in days; the trial's dosing period must divide a day (24 h / interval a whole
number) for a trial with slips. Each patient's schedule is drawn from its own key, so
results do not depend on the chunk size; a `Visits()` that neither slips nor misses gives
the schedule of the trial without it.

References: none for the defaults, which are "no slip, no missed visit"; the sizes are the
user's and should be stated in `reference` (e.g. from the trial's own report of visit
windows and missed visits).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Visits:
    """Slipped and missed visits (see the module docstring).

    **Fields:**

    - `slip_sd_days`: the SD of the (discretised, truncated) normal slip of each visit
      (days), >= 0; 0: no slip.
    - `slip_max_days`: the largest slip either way (whole days), >= 0; 0: no slip.
    - `p_missed`: the probability that a visit is missed, in [0, 1).
    - `fixed_days`: visit days (1-based) that never slip nor are missed (default day 1,
      the baseline before the first dose).
    - `reference`: where the values come from (shown in the report).
    """

    slip_sd_days: float = 0.0
    slip_max_days: int = 0
    p_missed: float = 0.0
    fixed_days: tuple[int, ...] = (1,)
    reference: str = ""

    def __post_init__(self):
        sd = self.slip_sd_days
        if isinstance(sd, bool) or not isinstance(sd, int | float) or not math.isfinite(sd):
            raise ValueError(f"Visits: slip_sd_days must be a finite number >= 0, got {sd!r}.")
        if sd < 0:
            raise ValueError(f"Visits: slip_sd_days must be >= 0, got {sd!r}.")
        k = self.slip_max_days
        if isinstance(k, float) and k.is_integer():
            object.__setattr__(self, "slip_max_days", int(k))
            k = int(k)
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"Visits: slip_max_days must be a whole number >= 0, got {k!r}.")
        p = self.p_missed
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p < 1.0:
            raise ValueError(f"Visits: p_missed must be a probability in [0, 1), got {p!r}.")
        fixed = tuple(self.fixed_days)
        if any(isinstance(d, bool) or int(d) != d or d < 1 for d in fixed):
            raise ValueError(f"Visits: fixed_days must be days >= 1, got {self.fixed_days!r}.")
        object.__setattr__(self, "fixed_days", tuple(sorted({int(d) for d in fixed})))
        object.__setattr__(self, "slip_sd_days", float(sd))
        object.__setattr__(self, "p_missed", float(p))

    @property
    def slips(self) -> bool:
        """Whether any visit can slip."""
        return self.slip_sd_days > 0 and self.slip_max_days > 0

    def slip_probabilities(self) -> np.ndarray:
        """`(2k + 1,)`: P(S = s) for s = -k .. k (the discretised, truncated normal)."""
        k = self.slip_max_days
        if not self.slips:
            return np.ones(1)
        from scipy.special import ndtr

        s = np.arange(-k, k + 1, dtype=float)
        mass = ndtr((s + 0.5) / self.slip_sd_days) - ndtr((s - 0.5) / self.slip_sd_days)
        return mass / mass.sum()

    def draw(
        self, key: jax.Array, scheduled: np.ndarray, last: int, periods_per_day: int = 1
    ) -> tuple[jax.Array, jax.Array]:
        """One patient's realised schedule: `(period (V,) int32, attended (V,) bool)`.

        `scheduled`: the arm's visits (0-based periods, increasing); `last`: the last period
        a visit may fall on (the trial's number of periods: the morning after the last
        dose); `periods_per_day`: dosing periods per day (slips are whole days). A missed
        visit's period is its scheduled one (nothing is measured there)."""
        scheduled = np.asarray(scheduled, dtype=np.int32)
        v = scheduled.size
        fixed = np.isin(scheduled + 1, np.asarray(self.fixed_days, dtype=np.int32))
        u = jax.random.uniform(key, (2, max(v, 1)))[:, :v]
        if self.slips:
            cdf = np.cumsum(self.slip_probabilities())[:-1]
            slip = jnp.searchsorted(jnp.asarray(cdf), u[0], side="right") - self.slip_max_days
            slip = jnp.where(jnp.asarray(fixed), 0, slip).astype(jnp.int32) * periods_per_day
        else:
            slip = jnp.zeros(v, dtype=jnp.int32)
        missed = (u[1] < self.p_missed) & ~jnp.asarray(fixed)

        def step(prev, inputs):
            s, d, miss = inputs
            at = jnp.maximum(jnp.clip(s + d, 0, last), prev + 1)
            happens = ~miss & (at <= last)
            return jnp.where(happens, at, prev), (jnp.where(happens, at, s), happens)

        _, (period, attended) = jax.lax.scan(
            step, jnp.int32(-1), (jnp.asarray(scheduled), slip, missed)
        )
        return period.astype(jnp.int32), attended

    def describe(self) -> dict[str, Any]:
        return {
            "slip": "normal, discretised to whole days, truncated to +-slip_max_days",
            "slip_sd_days": self.slip_sd_days,
            "slip_max_days": float(self.slip_max_days),
            "p_missed": self.p_missed,
            "fixed_days": [float(d) for d in self.fixed_days],
            "reference": self.reference,
        }


__all__ = ["Visits"]
