"""pkpd: differentiable PK/PD models in JAX with NONMEM dosing semantics.

Structural models only: regimens, PK/PD models and `simulate`. Knows nothing of patients.

Importing `pkpd` turns on JAX's double precision (`jax_enable_x64`), the project's default:
concentrations span many decades and calibration needs accurate gradients. Turn it off after
the import (`jax.config.update("jax_enable_x64", False)`) to trade accuracy for speed. It also
turns on JAX's persistent compilation cache in the user's cache folder, so that a first call
compiles once per machine rather than once per process: `PKPD_TWINS_CACHE=<folder>` moves it,
`PKPD_TWINS_CACHE=off` turns it off, and `pkpd.set_compilation_cache(path | None)` changes it
in a running process (docs/getting-started.md, "Compilation cache").
"""

from . import _config as _config
from ._advance import Advanced as Advanced
from ._advance import advance as advance
from ._advance import interval_exposure as interval_exposure
from ._advance import running_rates as running_rates
from ._advance import state_before as state_before
from ._cohort import CohortError as CohortError
from ._cohort import Exposure as Exposure
from ._cohort import simulate_cohort as simulate_cohort
from ._config import set_compilation_cache as set_compilation_cache
from ._models._base import (
    AbstractLinearModel as AbstractLinearModel,
)
from ._models._base import (
    AbstractModel as AbstractModel,
)
from ._models._base import (
    AbstractODEModel as AbstractODEModel,
)
from ._models._base import (
    AsODE as AsODE,
)
from ._models._base import (
    FixedStep as FixedStep,
)
from ._models._base import (
    ODESolver as ODESolver,
)
from ._models._linear import (
    OneCompartment as OneCompartment,
)
from ._models._linear import (
    OneCompartmentOral as OneCompartmentOral,
)
from ._models._linear import (
    ThreeCompartment as ThreeCompartment,
)
from ._models._linear import (
    ThreeCompartmentOral as ThreeCompartmentOral,
)
from ._models._linear import (
    TwoCompartment as TwoCompartment,
)
from ._models._linear import (
    TwoCompartmentOral as TwoCompartmentOral,
)
from ._models._ode import (
    ODEModel as ODEModel,
)
from ._models._ode import (
    OneCompartmentMM as OneCompartmentMM,
)
from ._models._ode import (
    OneCompartmentOralMM as OneCompartmentOralMM,
)
from ._models._ode import (
    TransitAbsorption as TransitAbsorption,
)
from ._models._ode import (
    TwoCompartmentMM as TwoCompartmentMM,
)
from ._models._ode import (
    TwoCompartmentOralMM as TwoCompartmentOralMM,
)
from ._models._pd import (
    PKPD as PKPD,
)
from ._models._pd import (
    AbstractDirectEffect as AbstractDirectEffect,
)
from ._models._pd import (
    AbstractIndirectResponse as AbstractIndirectResponse,
)
from ._models._pd import (
    AbstractLinearPDModel as AbstractLinearPDModel,
)
from ._models._pd import (
    AbstractPDModel as AbstractPDModel,
)
from ._models._pd import (
    EffectCompartment as EffectCompartment,
)
from ._models._pd import (
    Emax as Emax,
)
from ._models._pd import (
    IndirectResponseI as IndirectResponseI,
)
from ._models._pd import (
    IndirectResponseII as IndirectResponseII,
)
from ._models._pd import (
    IndirectResponseIII as IndirectResponseIII,
)
from ._models._pd import (
    IndirectResponseIV as IndirectResponseIV,
)
from ._models._pd import (
    SigmoidEmax as SigmoidEmax,
)
from ._models._uva_padova import (
    UVAPadova as UVAPadova,
)
from ._records import (
    INTERPOLATION_SUBSTEPS as INTERPOLATION_SUBSTEPS,
)
from ._records import (
    MAX_DOSES as MAX_DOSES,
)
from ._records import (
    RecordError as RecordError,
)
from ._records import (
    RecordWarning as RecordWarning,
)
from ._records import (
    interpolate_covariates as interpolate_covariates,
)
from ._records import (
    regimen_from_records as regimen_from_records,
)
from ._records import (
    regimens_from_records as regimens_from_records,
)
from ._records import (
    simulate_records as simulate_records,
)
from ._records import (
    simulate_recordwise as simulate_recordwise,
)
from ._records import (
    validate_records as validate_records,
)
from ._regimen import (
    MAX_SS_INTERVALS as MAX_SS_INTERVALS,
)
from ._regimen import (
    MODELLED_DURATION as MODELLED_DURATION,
)
from ._regimen import (
    MODELLED_RATE as MODELLED_RATE,
)
from ._regimen import (
    Regimen as Regimen,
)
from ._regimen import (
    bolus as bolus,
)
from ._regimen import (
    concatenate as concatenate,
)
from ._regimen import (
    infusion as infusion,
)
from ._regimen import (
    oral as oral,
)
from ._regimen import (
    repeat as repeat,
)
from ._regimen import (
    reset as reset,
)
from ._regimen import (
    stack as stack,
)
from ._regimen import (
    steady_state as steady_state,
)
from ._simulate import check_inputs as check_inputs
from ._simulate import simulate as simulate
from ._simulate import simulate_piecewise as simulate_piecewise
from ._simulate import simulate_states as simulate_states

__all__ = [
    "INTERPOLATION_SUBSTEPS",
    "MAX_DOSES",
    "MAX_SS_INTERVALS",
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
    "Advanced",
    "AsODE",
    "CohortError",
    "EffectCompartment",
    "Emax",
    "Exposure",
    "FixedStep",
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
    "RecordWarning",
    "Regimen",
    "SigmoidEmax",
    "ThreeCompartment",
    "ThreeCompartmentOral",
    "TransitAbsorption",
    "TwoCompartment",
    "TwoCompartmentMM",
    "TwoCompartmentOral",
    "TwoCompartmentOralMM",
    "UVAPadova",
    "advance",
    "bolus",
    "check_inputs",
    "concatenate",
    "infusion",
    "interpolate_covariates",
    "interval_exposure",
    "oral",
    "regimen_from_records",
    "regimens_from_records",
    "repeat",
    "reset",
    "running_rates",
    "set_compilation_cache",
    "simulate",
    "simulate_cohort",
    "simulate_piecewise",
    "simulate_records",
    "simulate_recordwise",
    "simulate_states",
    "stack",
    "state_before",
    "steady_state",
    "validate_records",
]
