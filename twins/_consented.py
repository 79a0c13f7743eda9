"""Consent enforced where a real cohort is used: the patients a use may take.

A `Population` that carries consent decisions (`Population.consents`, for example the
consents read with a FHIR bundle) is a real cohort. Every use of it for research (a
trial's population, a surrogate training set) goes through `consented_population`:

1. the patients who may be used for the purpose at the time of the use are kept
   (`ConsentRegistry.split`: a deny in force wins; research is opt-in, so a patient
   without a consent in force is left out), in their order;
2. each refusal is appended to the audit log (`consent-refusal`, by pseudonym) and each
   patient kept gets a `data-access` entry naming the use, all in one batch under one
   signed head;
3. the patients kept are renamed by pseudonyms of the output's purpose (`"results"`,
   `"training"`), so that what the use writes names no raw identifier.

A population without consents (sampled virtual patients, or a table the user holds the
right to use) passes unchanged: governance is the user's.
"""

from __future__ import annotations

import numpy as np

from ._population import Population
from .governance import (
    AUDIT_PURPOSE,
    AuditAction,
    AuditEvent,
    Governance,
    Purpose,
    Refusal,
)


class ConsentRequiredError(ValueError):
    """A use of a population that carries consents was asked for without a `Governance`
    (nowhere to log the refusals), or no patient of it may be used."""


def consented_population(
    population: Population,
    governance: Governance | None,
    *,
    purpose: Purpose,
    use: str,
    output_purpose: str,
) -> tuple[Population, list[Refusal]]:
    """The patients of `population` that `use` may take for `purpose`, renamed by
    pseudonyms, and the refusals (see the module docstring).

    **Arguments:**

    - `population`: the cohort; one without `consents` is returned as it is, with no
      refusals and nothing logged.
    - `governance`: the audit log, pseudonym key, actor and time of the use; required
      when the population carries consents.
    - `purpose`: the `Purpose` of the use (`Purpose.RESEARCH` for trials and training sets).
    - `use`: what uses the patients, for the log and the messages (`"trial 'x'"`).
    - `output_purpose`: the pseudonym purpose of the ids the use writes (`"results"`).

    **Returns:** `(population, refusals)`.

    **Raises:** `ConsentRequiredError` when consents are carried and no `governance` is
    given, or when no patient may be used.
    """
    registry = population.consents
    if registry is None:
        return population, []
    if governance is None:
        raise ConsentRequiredError(
            f"{use}: the population carries consent decisions ({len(population)} patients), "
            f"so its use for {purpose.value} is governed: pass "
            "governance=twins.governance.Governance(audit=AuditLog(...), "
            "key=load_pseudonym_key()) so that the patients without consent are left out "
            "and each refusal is logged (docs/governance.md)."
        )
    at = governance.when()
    ids = [str(i) for i in population.ids]
    audit_names = governance.pseudonymizer(AUDIT_PURPOSE)
    allowed, refused = registry.split(
        ids, purpose, at, audit=governance.audit, pseudonymizer=audit_names,
        actor=governance.actor,
    )  # fmt: skip
    if not allowed:
        raise ConsentRequiredError(
            f"{use}: none of the population's {len(ids)} patients may be used for "
            f"{purpose.value} at {at.isoformat()} (each refusal is in the audit log)."
        )
    details = {"use": use, "purpose": purpose.value, "at": at.isoformat()}
    governance.audit.append_many(
        AuditEvent(AuditAction.DATA_ACCESS, governance.actor, audit_names.pseudonym(i), details)
        for i in allowed
    )
    keep = np.isin(np.asarray(ids, dtype=object), np.asarray(allowed, dtype=object))
    out_names = governance.pseudonymizer(output_purpose)
    kept = population[keep]
    return kept.with_ids(out_names.pseudonym(str(i)) for i in kept.ids), refused
