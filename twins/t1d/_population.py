"""A virtual population sampled around the 30 patients: their insulin sensitivity varied."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from ._patients import VirtualPatient

#: The parameter varied: insulin-dependent glucose utilisation, the model's peripheral
#: insulin sensitivity. Varying it keeps the basal steady state (at basal the insulin
#: action X is 0, so Vmx does not enter it).
VARIED = "Vmx"


def sample_population(
    patients: Mapping[str, VirtualPatient] | Sequence[VirtualPatient],
    per_patient: int,
    *,
    seed: int,
    sd: float = 0.3,
) -> tuple[list[VirtualPatient], list[VirtualPatient]]:
    """Virtual patients around each of `patients`: `Vmx` multiplied by `exp(eta)`,
    `eta ~ N(0, sd^2)`, every other parameter and the quest data (CR, CF, TDI) the
    patient's own.

    The quest data are then the sampled patient's clinician's settings for the nominal
    patient: a patient whose sensitivity is higher than nominal is over-dosed by them,
    one whose is lower under-dosed, which is what a twin that learns the sensitivity from
    the CGM can correct.

    **Arguments:** `patients`; `per_patient` (>= 1) variants each, named
    `adult#001~01`...; `seed` (the same seed gives the same population); `sd` of the log
    multiplier.

    **Returns:** `(sampled, nominal)`: the variants, and the patient each was sampled around
    (in the same order).
    """
    items = list(patients.values()) if isinstance(patients, Mapping) else list(patients)
    if per_patient < 1:
        raise ValueError(f"sample_population: expected per_patient >= 1, got {per_patient}.")
    if not (np.isfinite(sd) and sd >= 0):
        raise ValueError(f"sample_population: expected sd >= 0, got {sd!r}.")
    rng = np.random.default_rng(seed)
    eta = rng.standard_normal((len(items), per_patient)) * sd
    sampled, nominal = [], []
    for i, p in enumerate(items):
        for k in range(per_patient):
            params = dict(p.params)
            params[VARIED] = p.params[VARIED] * float(np.exp(eta[i, k]))
            sampled.append(dataclasses.replace(p, name=f"{p.name}~{k + 1:02d}", params=params))
            nominal.append(p)
    return sampled, nominal
