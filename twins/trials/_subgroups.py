"""Subgroups a trial reports its endpoints by: each a type that says what it needs and how it
cuts the patients into levels.

A `Trial` takes `Subgroup` objects or their names (`"age_group"`, `"renal_function"`,
`"ancestry"`, `"sex"`, or any key of `Population.covariates()` such as `"CYP2C9"`);
`subgroup(name)` turns a name into its object. The results and the report carry the
subgroup's `name`, one column per subgroup with the level of every patient.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import pandas as pd


class SubgroupError(ValueError):
    """A subgroup that the trial's population cannot provide."""


class Subgroup(abc.ABC):
    """A way of cutting the patients into levels (strings), one per patient."""

    name: str
    description: ClassVar[str] = ""

    def needs(self) -> tuple[str, ...]:
        """The keys of `Population.covariates()` the subgroup reads (checked beforehand)."""
        return ()

    @abc.abstractmethod
    def levels(self, frame: pd.DataFrame, cov: Mapping[str, np.ndarray]) -> np.ndarray:
        """The level of every patient (`frame`: `Population.to_dataframe()`, `cov`: its
        `covariates()`), as strings."""

    def check(self, cov: Mapping[str, Any]) -> None:
        """Raise `SubgroupError` if a needed covariate is missing."""
        missing = [k for k in self.needs() if k not in cov]
        if missing:
            raise SubgroupError(
                f"the subgroup {self.name!r} needs the covariate(s) {missing}; the population "
                f"has {sorted(cov)}."
            )


@dataclasses.dataclass(frozen=True)
class AgeGroup(Subgroup):
    """Age < 65, 65-75, > 75 years (the cuts of EU-PACT's subgroup analyses)."""

    name: str = "age_group"
    description: ClassVar[str] = "age < 65, 65-75, > 75 years"

    def needs(self):
        return ("AGE",)

    def levels(self, frame, cov):
        age = np.asarray(cov["AGE"], dtype=float)
        return np.where(age < 65, "<65", np.where(age <= 75, "65-75", ">75"))


@dataclasses.dataclass(frozen=True)
class RenalFunction(Subgroup):
    """Cockcroft-Gault creatinine clearance >= 90, 60-89, 30-59, < 30 mL/min: the KDIGO GFR
    categories G1, G2, G3a-b and G4-5 applied to CrCL (KDIGO CKD Work Group. Kidney Int
    Suppl 2013;3(1):1-150)."""

    name: str = "renal_function"
    description: ClassVar[str] = "Cockcroft-Gault CrCL >= 90, 60-89, 30-59, < 30 mL/min"

    def needs(self):
        return ("CRCL",)

    def levels(self, frame, cov):
        crcl = np.asarray(cov["CRCL"], dtype=float)
        return np.select([crcl >= 90, crcl >= 60, crcl >= 30], [">=90", "60-89", "30-59"], "<30")


@dataclasses.dataclass(frozen=True)
class PopulationColumn(Subgroup):
    """A column of the population's table: `"ancestry"` or `"sex"`."""

    name: str
    description: ClassVar[str] = "a column of the population's table"

    def levels(self, frame, cov):
        if self.name not in frame.columns:
            raise SubgroupError(f"the population has no column {self.name!r}.")
        return frame[self.name].astype(str).to_numpy()


@dataclasses.dataclass(frozen=True)
class CovariateLevels(Subgroup):
    """The values of one key of `Population.covariates()` (e.g. `"CYP2C9"`,
    `"VKORC1_PHENOTYPE"`), each a level."""

    name: str
    description: ClassVar[str] = "the values of a covariate"

    def needs(self):
        return (self.name,)

    def levels(self, frame, cov):
        return np.asarray(cov[self.name]).astype(str)


#: The subgroups known by name, besides any key of `Population.covariates()`.
NAMED_SUBGROUPS: dict[str, Subgroup] = {
    "age_group": AgeGroup(),
    "renal_function": RenalFunction(),
    "ancestry": PopulationColumn("ancestry"),
    "sex": PopulationColumn("sex"),
}


def subgroup(value: str | Subgroup) -> Subgroup:
    """The `Subgroup` of a name (a named subgroup, else a covariate key), or `value` itself."""
    if isinstance(value, Subgroup):
        return value
    if not isinstance(value, str) or not value:
        raise TypeError(f"expected a subgroup (twins.trials.Subgroup or a name), got {value!r}.")
    return NAMED_SUBGROUPS.get(value) or CovariateLevels(value)
