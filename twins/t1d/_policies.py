"""Insulin dosing policies: basal-bolus from the quest data, and a parametrised policy."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ._closed_loop import MealContext, Policy


class BasalBolus(Policy):
    r"""Fixed basal-bolus therapy from the patient's quest data (simglucose's `BBController`).

    The basal rate is the patient's own (`u2ss`, `patient["basal"]`, U/h); at each meal

    $$\text{bolus} = \frac{\text{carbs}}{CR} + \mathbb{1}[\text{CGM} > 150]\,
      \frac{\text{CGM} - 140}{CF}\ \text{U}$$

    with the carbohydrate ratio $CR$ (g/U) and correction factor $CF$ (mg/dL per U) of
    simglucose's `Quest.csv`, the pre-meal CGM reading, and simglucose's correction
    threshold (150 mg/dL) and target (140 mg/dL). A skipped meal (0 g) gets no bolus.

    **Fields:** `target`, `threshold` (mg/dL); `carb_factor` scales the meal bolus (1: the
    quest's CR as it is); `correction` turns the correction term on or off.

    Reference: Xie J. Simglucose v0.2.1 (2018), `simglucose/controller/basal_bolus_ctrller.py`.
    """

    target: float = eqx.field(static=True, default=140.0)
    threshold: float = eqx.field(static=True, default=150.0)
    carb_factor: float = eqx.field(static=True, default=1.0)
    correction: bool = eqx.field(static=True, default=True)

    def bolus(self, theta, patient, context: MealContext):
        meal = self.carb_factor * context.carbs / patient["cr"]
        corr = jnp.where(
            context.cgm > self.threshold, (context.cgm - self.target) / patient["cf"], 0.0
        )
        if not self.correction:
            corr = 0.0
        return jnp.where(context.carbs > 0, meal + corr, 0.0)


class FactorBasalBolus(Policy):
    """Basal-bolus whose meal bolus is scaled by a per-patient, per-day factor
    (`patient["factor"]`, shape `(days,)`): the twin-guided arm's doses
    (`twins.t1d.twin_guided`), and the twin's own candidate days. The correction is
    `BasalBolus`'s."""

    target: float = eqx.field(static=True, default=140.0)
    threshold: float = eqx.field(static=True, default=150.0)

    def bolus(self, theta, patient, context: MealContext):
        f = patient["factor"][context.day]
        meal = f * context.carbs / patient["cr"]
        corr = jnp.where(
            context.cgm > self.threshold, (context.cgm - self.target) / patient["cf"], 0.0
        )
        return jnp.where(context.carbs > 0, meal + corr, 0.0)


class GivenBoluses(Policy):
    """Boluses given in advance, `patient["boluses"]` `(meals,)` (U), and the basal rate
    `patient["basal"]`: to replay what was given (the twin's own simulation of the past)."""

    def bolus(self, theta, patient, context: MealContext):
        return patient["boluses"][context.index]


def smooth_relu(x, scale):
    """`scale * softplus(x / scale)`: a smooth `max(x, 0)` (within `scale * log 2` of it)."""
    return scale * jax.nn.softplus(x / scale)


class ParametrisedPolicy(Policy):
    r"""A basal-bolus policy with parameters to optimise: per-meal carbohydrate-ratio
    scalings, a correction scaling and a basal scaling, all on the log scale.

    $$\text{basal} = e^{\beta}\,\text{basal}_{quest}, \qquad
      \text{bolus} = e^{\alpha_m}\frac{\text{carbs}}{CR}
      + e^{\gamma}\,\frac{s\,\mathrm{softplus}((\text{CGM} - 140)/s)}{CF}$$

    with $m$ the meal of the day (breakfast, lunch, dinner, ...), $s$ = `smoothness`
    (mg/dL): the correction is a smooth function of the pre-meal CGM (a soft
    `max(CGM - 140, 0)`), so that the trial endpoint is differentiable in $\theta$. At
    $\theta = 0$ it is basal-bolus with the quest's CR and CF and a soft correction from
    140 mg/dL (`BasalBolus` corrects only above 150).

    `theta = {"log_meal": (meals,), "log_correction": (), "log_basal": ()}`
    (`initial_theta()`: zeros).
    """

    n_meals: int = eqx.field(static=True, default=3)
    target: float = eqx.field(static=True, default=140.0)
    smoothness: float = eqx.field(static=True, default=10.0)

    def initial_theta(self) -> dict[str, Any]:
        return {
            "log_meal": jnp.zeros(self.n_meals),
            "log_correction": jnp.zeros(()),
            "log_basal": jnp.zeros(()),
        }

    def basal(self, theta, patient):
        return jnp.exp(theta["log_basal"]) * patient["basal"]

    def bolus(self, theta, patient, context: MealContext):
        meal = jnp.exp(theta["log_meal"][context.meal]) * context.carbs / patient["cr"]
        excess = smooth_relu(context.cgm - self.target, self.smoothness)
        return meal + jnp.exp(theta["log_correction"]) * excess / patient["cf"]
