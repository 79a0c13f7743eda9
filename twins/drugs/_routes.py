"""Routes of administration: how one dose enters the model, as a `pkpd.Regimen`.

A route turns an amount given at a time into the engine's dose record, so that every
consumer (a drug's usual regimen, a digital twin's plan, a trial arm period by period)
doses through the same `pkpd` event engine: the model's `F<n>`, `ALAG<n>`, `R<n>` and
`D<n>` apply to every dose whatever gave it.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, ClassVar

import pkpd


class Route(abc.ABC):
    """How a dose is given. Subclasses build the one-event `pkpd.Regimen` of a dose."""

    name: ClassVar[str]

    @abc.abstractmethod
    def dose(self, amount: Any, *, time: Any = 0.0, cmt: int = 1) -> pkpd.Regimen:
        """One dose of `amount` (mg) at `time` (h) into compartment `cmt` (1-based);
        `amount` and `time` may be traced (JAX) values."""

    #: The infusion duration (h); `None` for instantaneous doses.
    duration: float | None = None

    def with_duration(self, duration: float | None) -> Route:
        """The same route with another infusion duration (`None`: unchanged)."""
        if duration is not None:
            raise ValueError(f"a {self.name} dose takes no duration, got duration={duration}.")
        return self

    def describe(self) -> str:
        return self.name


@dataclasses.dataclass(frozen=True)
class Oral(Route):
    """An oral (or any extravascular) dose: a bolus into the depot compartment, from which
    the model absorbs it (first-order, transit chain, ...), with the model's `F` and `ALAG`."""

    name: ClassVar[str] = "oral"

    def dose(self, amount, *, time=0.0, cmt=1):
        return pkpd.bolus(amount, time=time, cmt=cmt)


@dataclasses.dataclass(frozen=True)
class Bolus(Route):
    """An intravenous bolus: the amount enters compartment `cmt` at once."""

    name: ClassVar[str] = "IV bolus"

    def dose(self, amount, *, time=0.0, cmt=1):
        return pkpd.bolus(amount, time=time, cmt=cmt)


@dataclasses.dataclass(frozen=True)
class Infusion(Route):
    """A zero-order infusion over `duration` hours (rate = bioavailable amount / duration,
    NONMEM `RATE=-2`; the model's `D<cmt>`, when it has one, overrides the duration)."""

    duration: float
    name: ClassVar[str] = "infusion"

    def __post_init__(self):
        d = self.duration
        number = isinstance(d, int | float) and not isinstance(d, bool)
        if not (number and math.isfinite(d) and d > 0):
            raise ValueError(f"Infusion: expected a duration > 0 (h), got duration={d!r}.")

    def dose(self, amount, *, time=0.0, cmt=1):
        return pkpd.infusion(amount, duration=self.duration, time=time, cmt=cmt)

    def with_duration(self, duration):
        return self if duration is None else Infusion(duration=duration)

    def describe(self) -> str:
        return f"infusion over {self.duration:g} h"


def route_from_name(name: str, duration: float | None) -> Route:
    """The route object of the deprecated spellings `"oral"` and `"infusion"`."""
    if name == "oral":
        if duration is not None:
            raise ValueError(f"Dosing: an oral route takes no duration, got duration={duration}.")
        return Oral()
    if name == "infusion":
        if duration is None:
            raise ValueError("Dosing: an infusion needs a duration > 0 (h), got duration=None.")
        return Infusion(duration=duration)
    raise ValueError(
        f"Dosing: expected a route (twins.Oral(), twins.Infusion(duration=...), "
        f"twins.Bolus()), got {name!r}."
    )
