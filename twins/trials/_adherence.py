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
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Adherence:
    """A two-state Markov model of taking each dose (see the module docstring).

    - `p_miss_after_taken`: P(the next dose is missed | this one was taken).
    - `p_take_after_missed`: P(the next dose is taken | this one was missed).
    - `reference`: where the values come from (shown in the report).
    """

    p_miss_after_taken: float
    p_take_after_missed: float
    reference: str = ""

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

    def describe(self) -> dict[str, Any]:
        return {
            "model": "two-state Markov (Girard et al. 1998)",
            "p_miss_after_taken": float(self.p_miss_after_taken),
            "p_take_after_missed": float(self.p_take_after_missed),
            "taken_share": self.taken_share,
            "reference": self.reference,
        }
