"""A trial on a real cohort takes only the patients who consented to research.

`consented_trial` is what `run_trial`, `run_trial_ray` and `surrogates.training_set` call
first: a trial whose fixed `Population` carries consents (`Population.consents`) gets the
population of the patients who may be used for research at the time of the use, renamed
by pseudonyms of the output's purpose, each refusal and each access logged
(`twins.consented_population`). A sampled population, or a fixed one without consents,
leaves the trial as it is.
"""

from __future__ import annotations

import dataclasses
import os

from .._consented import consented_population
from .._population import Population
from ..governance import AuditAction, Governance, Purpose
from ._trial import Trial


def consented_trial(
    trial: Trial, governance: Governance | None, *, use: str, output_purpose: str
) -> Trial:
    """`trial` with its real cohort reduced to the patients who consented to research (see
    the module docstring); `use` names the use in the log (`"trial 'x'"`) and
    `output_purpose` the pseudonyms of its outputs (`"results"`, `"training"`).

    **Raises:** `twins.ConsentRequiredError` when the population carries consents and no
    `governance` is given, or when no patient may be used.
    """
    population = trial.population
    if not isinstance(population, Population) or population.consents is None:
        return trial
    kept, _ = consented_population(
        population, governance, purpose=Purpose.RESEARCH, use=use,
        output_purpose=output_purpose,
    )  # fmt: skip
    return dataclasses.replace(trial, population=kept)


def record_export(
    governance: Governance | None, original: Trial, used: Trial, out: str | os.PathLike[str], n: int
) -> None:
    """An `export` entry in the audit log for a results folder written from a governed
    cohort (`used` is not `original`: `consented_trial` replaced its population): the use,
    the folder's name and the number of patients; nothing for other trials."""
    if governance is None or used is original:
        return
    governance.audit.append(
        AuditAction.EXPORT,
        actor=governance.actor,
        details={"use": f"trial {original.name!r}", "folder": os.fspath(out), "patient_count": n},
    )
