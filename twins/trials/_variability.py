r"""Within-patient variability: a patient's parameters changing over the trial.

Between-subject variability (the drug's population model) makes patients differ; a patient
is then the same patient on every day. Real patients are not: diet and vitamin K intake,
intercurrent illness and interacting drugs change their response from week to week. Two
standard descriptions of that are offered, both as multiplicative log-normal factors on
chosen model parameters, held constant over each dosing period:

- **Inter-occasion variability** (`IOV`; Karlsson MO, Sheiner LB. The importance of
  modeling interoccasion variability in population pharmacokinetic analyses. J
  Pharmacokinet Biopharm 1993;21(6):735-750): the trial's time is cut into occasions, and on
  occasion $k$ the parameter is $P_i \exp(\kappa_{ik})$ with $\kappa_{ik} \sim N(0,
  \omega_{IOV}^2)$ independent across occasions and patients. Occasions are either fixed
  windows of time (`every` days) or the intervals between the arm's visits (`every=None`:
  a new occasion starts at each visit, as occasions are usually defined in clinical data).
- **A mean-reverting stochastic process** (`OrnsteinUhlenbeck`): $\log$ of the parameter's
  factor follows a stationary Ornstein-Uhlenbeck process $dX = -X/\tau\,dt + \sigma
  \sqrt{2/\tau}\,dW$, with stationary variance $\sigma^2$ and correlation
  $\operatorname{corr}(X_t, X_{t+\Delta}) = e^{-\Delta/\tau}$ (Uhlenbeck GE, Ornstein LS. On
  the theory of the Brownian motion. Phys Rev 1930;36:823-841). It is sampled exactly at
  the start of every dosing period ($X_0 \sim N(0, \sigma^2)$, $X_{k+1} = a X_k + \sigma
  \sqrt{1 - a^2} Z_k$, $a = e^{-\text{interval}/\tau}$) and held over the period.

Sizes are the user's: give the SD and its source (`reference`), from a published model with
inter-occasion terms. No default sizes are shipped for any drug: the package does not hold
a verified transcription of a published warfarin model's inter-occasion variances (Hamberg
et al. 2010, Clin Pharmacol Ther 87:727-734, report such terms for their K-PD model, whose
structure differs from the Hamberg 2007 model used here), nor is there a published
correlation time for a warfarin parameter; both are therefore choices, off (zero) unless
given, and every run's `spec.json` records them with their stated source.

Each patient's factors are drawn from its own key (`fold_in` of the trial key by the
patient's index and the term's position), so results do not depend on the chunk size; the
arms see the same factors (common random numbers). The draws are pure JAX functions of the
key and the SDs (`draw`), so they can be vmapped, jitted and differentiated in the SDs
(the reparameterisation $\kappa = \omega z$).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _check_common(kind: str, parameter: Any, sd: Any) -> None:
    if not (isinstance(parameter, str) and parameter):
        raise ValueError(f"{kind}: parameter must be a model parameter's name, got {parameter!r}.")
    if not (isinstance(sd, int | float) and not isinstance(sd, bool) and math.isfinite(sd)):
        raise ValueError(f"{kind} on {parameter!r}: sd must be a finite number, got {sd!r}.")
    if sd < 0:
        raise ValueError(f"{kind} on {parameter!r}: sd must be >= 0, got {sd!r}.")


@dataclasses.dataclass(frozen=True)
class IOV:
    r"""Inter-occasion variability on one parameter: $P \exp(\kappa_k)$ on occasion $k$,
    $\kappa_k \sim N(0, \text{sd}^2)$ independent (Karlsson & Sheiner 1993).

    - `parameter`: the model parameter (a name of the drug model's parameters).
    - `sd`: $\omega_{IOV}$, the SD of $\kappa$ (log scale; $CV \approx$ sd for small sd).
    - `every`: the occasion length (days); None (default): a new occasion at each visit of
      the arm (the first visit starts the first occasion).
    - `reference`: where the size comes from (shown in the report).
    """

    parameter: str
    sd: float
    every: float | None = None
    reference: str = ""

    def __post_init__(self):
        _check_common("IOV", self.parameter, self.sd)
        if self.every is not None and not (
            isinstance(self.every, int | float)
            and not isinstance(self.every, bool)
            and math.isfinite(self.every)
            and self.every > 0
        ):
            raise ValueError(
                f"IOV on {self.parameter!r}: every must be an occasion length in days > 0 "
                f"or None (occasions by visit), got {self.every!r}."
            )

    def occasions(self, n_periods: int, interval_h: float, visits: Sequence[int]) -> np.ndarray:
        """`(n_periods,)` the occasion (0, 1, ...) of each dosing period. `visits`: the arm's
        visit periods (0-based)."""
        periods = np.arange(n_periods)
        if self.every is None:
            v = np.asarray(sorted(visits), dtype=int)
            occ = np.searchsorted(v, periods, side="right") - 1
            return np.maximum(occ, 0).astype(np.int32)
        start_days = periods * float(interval_h) / 24.0
        # a tiny allowance so that period starts on an occasion boundary are not lost to rounding
        return np.floor(start_days / float(self.every) + 1e-9).astype(np.int32)

    def draw(self, key: jax.Array, occasions: np.ndarray, sd: Any = None) -> jax.Array:
        """`(n_periods,)` log factors of one patient, given each period's occasion
        (`occasions`, a NumPy array: its largest value fixes how many are drawn)."""
        sd = self.sd if sd is None else sd
        occasions = np.asarray(occasions, dtype=np.int32)
        z = jax.random.normal(key, (int(occasions.max(initial=0)) + 1,))
        return sd * z[jnp.asarray(occasions)]

    def describe(self) -> dict[str, Any]:
        return {
            "type": "IOV",
            "parameter": self.parameter,
            "sd": float(self.sd),
            "occasions": "by visit" if self.every is None else f"every {self.every:g} days",
            "reference": self.reference,
        }


@dataclasses.dataclass(frozen=True)
class OrnsteinUhlenbeck:
    r"""A stationary Ornstein-Uhlenbeck process on the log factor of one parameter:
    variance `sd`$^2$, correlation $e^{-\Delta t/\tau}$ with $\tau$ = `correlation_days`
    (Uhlenbeck & Ornstein 1930), sampled exactly at the start of each dosing period and
    held over it.

    - `parameter`: the model parameter.
    - `sd`: the stationary SD of the log factor.
    - `correlation_days`: $\tau$ (days) > 0.
    - `reference`: where the sizes come from (shown in the report).
    """

    parameter: str
    sd: float
    correlation_days: float
    reference: str = ""

    def __post_init__(self):
        _check_common("OrnsteinUhlenbeck", self.parameter, self.sd)
        tau = self.correlation_days
        if not (
            isinstance(tau, int | float)
            and not isinstance(tau, bool)
            and math.isfinite(tau)
            and tau > 0
        ):
            raise ValueError(
                f"OrnsteinUhlenbeck on {self.parameter!r}: correlation_days must be a finite "
                f"number of days > 0, got {tau!r}."
            )

    def draw(self, key: jax.Array, n_periods: int, interval_h: float, sd: Any = None) -> jax.Array:
        """`(n_periods,)` the process at each period start for one patient."""
        sd = self.sd if sd is None else sd
        a = math.exp(-float(interval_h) / 24.0 / float(self.correlation_days))
        z = jax.random.normal(key, (n_periods,))
        b = math.sqrt(1.0 - a * a)

        def step(x, zk):
            new = a * x + b * zk
            return new, new

        _, rest = jax.lax.scan(step, z[0], z[1:])
        return sd * jnp.concatenate([z[:1], rest])

    def describe(self) -> dict[str, Any]:
        return {
            "type": "OrnsteinUhlenbeck",
            "parameter": self.parameter,
            "sd": float(self.sd),
            "correlation_days": float(self.correlation_days),
            "reference": self.reference,
        }


VariabilityTerm = IOV | OrnsteinUhlenbeck

_DOSING_PARAMETER = re.compile(r"^(F|ALAG|D|R)\d+$")


@dataclasses.dataclass(frozen=True)
class Variability:
    """Within-patient variability of a trial: `IOV` and `OrnsteinUhlenbeck` terms. Terms on
    the same parameter multiply (their log factors add).

    - `terms`: the terms.
    """

    terms: tuple[VariabilityTerm, ...]

    def __post_init__(self):
        terms = tuple(self.terms)
        for i, t in enumerate(terms):
            if not isinstance(t, IOV | OrnsteinUhlenbeck):
                raise TypeError(
                    f"Variability: term {i} must be a twins.IOV or twins.OrnsteinUhlenbeck, "
                    f"got {type(t).__name__}."
                )
        object.__setattr__(self, "terms", terms)

    @property
    def parameters(self) -> tuple[str, ...]:
        """The parameters that vary, in first-seen order."""
        return tuple(dict.fromkeys(t.parameter for t in self.terms))

    def check_model(self, model: Any) -> None:
        """Raise naming the term whose parameter the model does not read."""
        known = tuple(getattr(model, "param_names", ()))
        for t in self.terms:
            if t.parameter not in known and not _DOSING_PARAMETER.match(t.parameter):
                raise ValueError(
                    f"{type(t).__name__} on {t.parameter!r}: the model has no parameter of "
                    f"that name (its parameters: {list(known)})."
                )

    def log_factors(
        self,
        key: jax.Array,
        n_periods: int,
        interval_h: float,
        visits: Sequence[int],
        sds: Sequence[Any] | None = None,
    ) -> jax.Array:
        """`(n_periods, len(parameters))` one patient's log factors by period (the sum of
        the terms on each parameter). Term `j` draws from `fold_in(key, j)`. `sds` replace
        the terms' SDs (for gradients in them)."""
        names = self.parameters
        out = jnp.zeros((n_periods, len(names)))
        for j, t in enumerate(self.terms):
            k = jax.random.fold_in(key, j)
            sd = None if sds is None else sds[j]
            if isinstance(t, IOV):
                x = t.draw(k, t.occasions(n_periods, interval_h, visits), sd)
            else:
                x = t.draw(k, n_periods, interval_h, sd)
            out = out.at[:, names.index(t.parameter)].add(x)
        return out

    def describe(self) -> list[dict[str, Any]]:
        return [t.describe() for t in self.terms]


__all__ = ["IOV", "OrnsteinUhlenbeck", "Variability"]
