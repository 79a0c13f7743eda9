"""The patient probe of a trial spec: a few patients drawn at load time.

`probe_trial` checks, before anything is simulated, that the drug, the initial-dose rules,
the subgroups and the summary covariates of a trial find the covariates they need in its
population; a `SpecError` names the entry that does not.
"""

from __future__ import annotations

import numpy as np

from .._population import Population
from ..trials import DERIVED_SUBGROUPS, SubgroupError, Trial, model_covariates
from ._toml import TomlReader

#: Patients drawn to probe a trial.
PROBE_PATIENTS = 8


def probe_trial(r: TomlReader, trial: Trial) -> None:
    """Draw a few patients and check that everything finds the covariates it needs."""
    if isinstance(trial.population, Population):
        pop = trial.population[np.arange(min(PROBE_PATIENTS, len(trial.population)))]
    else:
        pop = trial.population(PROBE_PATIENTS, key=0)
    cov = pop.covariates()
    cov["ANCESTRY"] = pop.to_dataframe()["ancestry"].to_numpy(dtype=object)
    try:
        model_covariates(trial.drug, cov)
    except (KeyError, TypeError, ValueError) as error:
        raise r.error(
            "drug",
            f"{trial.drug.name} cannot find its covariates in the population: {error}",
        ) from error
    for i, arm in enumerate(trial.arms):
        try:
            arm.start(cov)
        except (KeyError, TypeError, ValueError) as error:
            detail = (
                f"missing covariate {error} (the population has {sorted(cov)})"
                if isinstance(error, KeyError)
                else str(error)
            )
            raise r.error(
                f"arms[{i}].initial", f"the initial doses cannot be computed: {detail}."
            ) from error
    known = sorted(set(cov) | set(DERIVED_SUBGROUPS))
    for i, group in enumerate(trial.subgroups):
        try:
            group.check(cov)
        except SubgroupError:
            raise r.error(
                f"subgroups[{i}]",
                f"unknown subgroup {group.name!r} for this population; expected one of {known}.",
            ) from None
    numeric = sorted(k for k, v in cov.items() if np.asarray(v).dtype.kind == "f")
    for i, name in enumerate(trial.covariates):
        if name not in numeric:
            raise r.error(
                f"covariates[{i}]",
                f"unknown numeric covariate {name!r} for this population; expected one of "
                f"{numeric}.",
            )
