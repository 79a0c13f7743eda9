"""pkpd: differentiable PK/PD models in JAX with NONMEM dosing semantics.

Structural models only: regimens, PK/PD models and `simulate`. Knows nothing of patients.
"""

from ._cohort import simulate_cohort as simulate_cohort
from ._models._base import (
    AbstractLinearModel as AbstractLinearModel,
    AbstractModel as AbstractModel,
    AbstractODEModel as AbstractODEModel,
    AsODE as AsODE,
    ODESolver as ODESolver,
)
from ._models._linear import (
    OneCompartment as OneCompartment,
    OneCompartmentOral as OneCompartmentOral,
    ThreeCompartment as ThreeCompartment,
    ThreeCompartmentOral as ThreeCompartmentOral,
    TwoCompartment as TwoCompartment,
    TwoCompartmentOral as TwoCompartmentOral,
)
from ._models._ode import (
    ODEModel as ODEModel,
    OneCompartmentMM as OneCompartmentMM,
    OneCompartmentOralMM as OneCompartmentOralMM,
    TransitAbsorption as TransitAbsorption,
    TwoCompartmentMM as TwoCompartmentMM,
    TwoCompartmentOralMM as TwoCompartmentOralMM,
)
from ._models._pd import (
    PKPD as PKPD,
    AbstractDirectEffect as AbstractDirectEffect,
    AbstractIndirectResponse as AbstractIndirectResponse,
    AbstractLinearPDModel as AbstractLinearPDModel,
    AbstractPDModel as AbstractPDModel,
    EffectCompartment as EffectCompartment,
    Emax as Emax,
    IndirectResponseI as IndirectResponseI,
    IndirectResponseII as IndirectResponseII,
    IndirectResponseIII as IndirectResponseIII,
    IndirectResponseIV as IndirectResponseIV,
    SigmoidEmax as SigmoidEmax,
)
from ._regimen import (
    MODELLED_DURATION as MODELLED_DURATION,
    MODELLED_RATE as MODELLED_RATE,
    Regimen as Regimen,
    bolus as bolus,
    concatenate as concatenate,
    infusion as infusion,
    oral as oral,
    repeat as repeat,
    reset as reset,
    stack as stack,
    steady_state as steady_state,
)
from ._records import (
    RecordError as RecordError,
    regimen_from_records as regimen_from_records,
    simulate_records as simulate_records,
    validate_records as validate_records,
)
from ._simulate import simulate as simulate, simulate_states as simulate_states

__all__ = [
    "MODELLED_DURATION",
    "MODELLED_RATE",
    "PKPD",
    "AbstractDirectEffect",
    "AbstractIndirectResponse",
    "AbstractLinearModel",
    "AbstractLinearPDModel",
    "AbstractModel",
    "AbstractODEModel",
    "AbstractPDModel",
    "AsODE",
    "EffectCompartment",
    "Emax",
    "IndirectResponseI",
    "IndirectResponseII",
    "IndirectResponseIII",
    "IndirectResponseIV",
    "ODEModel",
    "ODESolver",
    "OneCompartment",
    "OneCompartmentMM",
    "OneCompartmentOral",
    "OneCompartmentOralMM",
    "RecordError",
    "Regimen",
    "SigmoidEmax",
    "ThreeCompartment",
    "ThreeCompartmentOral",
    "TransitAbsorption",
    "TwoCompartment",
    "TwoCompartmentMM",
    "TwoCompartmentOral",
    "TwoCompartmentOralMM",
    "bolus",
    "concatenate",
    "infusion",
    "oral",
    "regimen_from_records",
    "repeat",
    "reset",
    "simulate",
    "simulate_cohort",
    "simulate_records",
    "simulate_states",
    "stack",
    "steady_state",
    "validate_records",
]
