"""What a target window is read on: typed metrics of a dosing plan's last interval.

A `Target` holds one of these instead of a metric name. Each metric reads one patient's
observed model output under a regimen through `pkpd` (`pkpd.interval_exposure` for areas and
peaks, `pkpd.simulate` for a level at one time), so the dose optimiser (`DigitalTwin.recommend`)
and anything else that asks "what would this patient's AUC24 be" use the same engine as the
trials. Metrics are frozen dataclasses (hashable: static under `jax.jit`).

| metric | reads | example target |
| --- | --- | --- |
| `AUCOver(hours=24)` | AUC over the last `hours` of the plan | vancomycin AUC24 400-600 |
| `Trough()` | the output at the end of the last dosing interval | vancomycin trough 10-20 mg/L |
| `Trough("INR")` | the same, labelled by what the output is | warfarin INR 2-3 |
| `Peak()` | the maximum over the last dosing interval | aminoglycoside Cmax |

The AUC is exact for linear models (one transition per segment, `pkpd.interval_exposure`)
and Simpson's rule on sub-steps between consecutive dosing entries for ODE models (kinks at
a lag time or at the end of an infusion fall on segment ends); the peak is the largest value on the
same sub-steps, so it can fall short of the true maximum by the curvature over one sub-step
(`steps` sub-steps per segment, default 24).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, ClassVar

import jax.numpy as jnp

import pkpd

__all__ = ["AUCOver", "Metric", "Peak", "Trough", "metric_from_name"]


@dataclasses.dataclass(frozen=True)
class Metric:
    """The base of target metrics: what is read on a plan of `n_doses` doses every
    `interval` hours ending at `end` (the time the next dose would be given).

    Subclasses define `name` and `read`; `on_level` says whether the metric is a value of
    the output itself (a band on a concentration-time plot) rather than an area; `additive`
    whether, for a linear model, the metric of a sum of doses is the sum of their metrics
    (an area or a level at a fixed time; not a peak), so that superposition gives it exactly.
    """

    on_level: ClassVar[bool] = True
    additive: ClassVar[bool] = True

    @property
    def name(self) -> str:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __str__(self) -> str:
        return self.name

    def check_plan(self, interval: float, n_doses: int) -> None:
        """Raise `ValueError` when the plan is too short to read the metric on."""

    def read(
        self,
        model: pkpd.AbstractModel,
        params: dict[str, Any],
        regimen: pkpd.Regimen,
        end: float,
        interval: float,
        *,
        output: int = 0,
        solver: pkpd.ODESolver = pkpd.ODESolver(),
        steps: int = 24,
        checks: bool = True,
    ) -> Any:
        """The metric of one patient (`params`) under `regimen` (jittable, differentiable
        with respect to the parameters and the regimen's amounts). `checks`: the engine's
        run-time checks (`pkpd.interval_exposure`, `pkpd.simulate`); the dose search passes
        `False` after checking the same on the host (`pkpd.check_inputs`)."""
        raise NotImplementedError  # pragma: no cover


@dataclasses.dataclass(frozen=True)
class AUCOver(Metric):
    """Area under the observed output over the last `hours` of the plan (`AUCOver()` is the
    AUC24). The plan must span at least `hours`.

    For vancomycin the AUC24 at steady state is the exposure index of the consensus
    guideline: Rybak MJ, Le J, Lodise TP et al. Therapeutic monitoring of vancomycin for
    serious methicillin-resistant Staphylococcus aureus infections: a revised consensus
    guideline. Am J Health Syst Pharm 2020;77(11):835-864.
    """

    hours: float = 24.0
    on_level: ClassVar[bool] = False

    def __post_init__(self):
        if isinstance(self.hours, bool) or not (
            isinstance(self.hours, (int, float)) and math.isfinite(self.hours) and self.hours > 0
        ):
            raise ValueError(f"AUCOver: hours must be a finite number > 0, got {self.hours!r}.")

    @property
    def name(self) -> str:
        return f"AUC{self.hours:g}"

    def check_plan(self, interval: float, n_doses: int) -> None:
        span = interval * n_doses
        if span < self.hours:
            raise ValueError(
                f"{self.name}: the plan of {n_doses} doses every {interval:g} h covers "
                f"{span:g} h, less than the {self.hours:g} h the AUC is read on; plan more "
                "doses."
            )

    def read(self, model, params, regimen, end, interval, *, output=0, solver=pkpd.ODESolver(),
             steps=24, checks=True):  # fmt: skip
        auc, _ = pkpd.interval_exposure(
            model, params, regimen, end - self.hours, end, solver=solver, steps=steps,
            output=output, checks=checks,
        )  # fmt: skip
        return auc


@dataclasses.dataclass(frozen=True)
class Trough(Metric):
    """The observed output at the end of the plan's last dosing interval, when the next
    dose would be given (its trough for a drug level). `quantity` names what the output is
    (`"trough"`, `"INR"`, `"concentration"`) and is the metric's name."""

    quantity: str = "trough"

    def __post_init__(self):
        if not isinstance(self.quantity, str) or not self.quantity.strip():
            raise ValueError(f"Trough: quantity must be a non-empty string, got {self.quantity!r}.")

    @property
    def name(self) -> str:
        return self.quantity

    def read(self, model, params, regimen, end, interval, *, output=0, solver=pkpd.ODESolver(),
             steps=24, checks=True):  # fmt: skip
        y = pkpd.simulate(model, params, regimen, jnp.reshape(jnp.asarray(end, float), (1,)),
                          solver=solver, checks=checks)  # fmt: skip
        return y[0] if y.ndim == 1 else y[0, output]


@dataclasses.dataclass(frozen=True)
class Peak(Metric):
    """The largest observed output over the plan's last dosing interval (Cmax), on the
    sub-steps of `pkpd.interval_exposure`."""

    additive: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return "Cmax"

    def read(self, model, params, regimen, end, interval, *, output=0, solver=pkpd.ODESolver(),
             steps=24, checks=True):  # fmt: skip
        _, cmax = pkpd.interval_exposure(
            model, params, regimen, end - interval, end, solver=solver, steps=steps,
            output=output, checks=checks,
        )  # fmt: skip
        return cmax


_AUC_NAME = re.compile(r"auc(\d+(?:\.\d+)?)")


def metric_from_name(name: str) -> Metric:
    """The metric a name of earlier releases meant: `"AUC24"` (any `"AUC<hours>"`),
    `"trough"`, `"Cmax"`/`"peak"`, and `"INR"` or `"concentration"` (a `Trough` of that
    quantity). Anything else is a `ValueError` listing what is understood."""
    if not isinstance(name, str):
        raise TypeError(f"a target metric must be a twins.drugs.Metric, got {name!r}.")
    key = name.strip().lower()
    found = _AUC_NAME.fullmatch(key)
    if found:
        return AUCOver(float(found.group(1)))
    if key == "trough":
        return Trough()
    if key in ("cmax", "peak"):
        return Peak()
    if key in ("inr", "concentration"):
        return Trough(name.strip())
    raise ValueError(
        f"unknown target metric {name!r}; expected AUC<hours> (e.g. AUC24), trough, Cmax, "
        "INR or concentration, or a twins.drugs.Metric (AUCOver(hours), Trough(quantity), Peak())."
    )
