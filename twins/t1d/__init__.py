"""Type 1 diabetes twins: the UVA/Padova virtual patients, meals and insulin, CGM, metrics.

- `load_patients()`: the 30 virtual patients of simglucose (10 adolescents, 10 adults, 10
  children) with their `pkpd.UVAPadova` parameters and quest data; `stack_params` for
  `jax.vmap`.
- `meal`, `insulin_bolus`, `basal_insulin`: the inputs as `pkpd.Regimen` doses;
  `basal_rate`.
- `CGMSensor`, `cgm_noise` and `cgm_readings`: sensor readings with the Breton-Kovatchev
  noise model.
- `cgm_metrics`: the international consensus CGM metrics (Battelino et al. 2019).

The model itself is `pkpd.UVAPadova` (docs/t1d.md).
"""

from ._cgm import CGMSensor as CGMSensor
from ._cgm import cgm_noise as cgm_noise
from ._cgm import cgm_readings as cgm_readings
from ._metrics import CGMMetrics as CGMMetrics
from ._metrics import cgm_metrics as cgm_metrics
from ._patients import EAT_RATE as EAT_RATE
from ._patients import PatientDataError as PatientDataError
from ._patients import VirtualPatient as VirtualPatient
from ._patients import basal_insulin as basal_insulin
from ._patients import basal_rate as basal_rate
from ._patients import insulin_bolus as insulin_bolus
from ._patients import load_patients as load_patients
from ._patients import meal as meal
from ._patients import stack_params as stack_params

__all__ = [
    "EAT_RATE",
    "CGMMetrics",
    "CGMSensor",
    "PatientDataError",
    "VirtualPatient",
    "basal_insulin",
    "basal_rate",
    "cgm_metrics",
    "cgm_noise",
    "cgm_readings",
    "insulin_bolus",
    "load_patients",
    "meal",
    "stack_params",
]
