"""Type 1 diabetes twins: the UVA/Padova virtual patients, meals and insulin, CGM, metrics,
dosing policies, their optimisation and T1D virtual trials.

- `load_patients()`: the 30 virtual patients of simglucose (10 adolescents, 10 adults, 10
  children) with their `pkpd.UVAPadova` parameters and quest data; `stack_params` for
  `jax.vmap`; `sample_population`: a population sampled around them (insulin sensitivity
  varied).
- `meal`, `insulin_bolus`, `basal_insulin`: the inputs as `pkpd.Regimen` doses;
  `basal_rate`.
- `CGMSensor`, `cgm_noise` and `cgm_readings`: sensor readings with the Breton-Kovatchev
  noise model.
- `cgm_metrics`: the international consensus CGM metrics (Battelino et al. 2019);
  `smooth_metrics` and `objective`: their smooth surrogates, for gradients.
- The closed loop: `MealPlan` (`random_meals`), `simulate_policy` (a cohort under a dosing
  policy, vmapped and differentiable), `Course`; policies `BasalBolus` (quest CR and CF),
  `ParametrisedPolicy`, `FactorBasalBolus`, `GivenBoluses`, or any `Policy`.
- `optimise_policy`: a policy's parameters by gradients of the smooth endpoint through the
  cohort simulation (optax); `split_patients`: a training / held-out split by age group.
- `twin_guided`: the arm whose boluses a twin fitted each night to the CGM sets
  (`twin_map`: MAP and Laplace of its insulin sensitivity); `twin_model`,
  `twin_dataset`: the same twin for `calibration.individual_map`.
- Trials: `T1DTrial`, `T1DArm`, `run_trial` (a results folder and its report,
  `write_t1d_report`); the TOML specs (`domain = "t1d"`) are read by
  `twins.app.read_t1d_spec` and run by `twins trial spec.toml`.

The model itself is `pkpd.UVAPadova` (docs/t1d.md).
"""

from ._cgm import CGMSensor as CGMSensor
from ._cgm import cgm_noise as cgm_noise
from ._cgm import cgm_readings as cgm_readings
from ._closed_loop import SENSOR as SENSOR
from ._closed_loop import SOLVER as SOLVER
from ._closed_loop import Course as Course
from ._closed_loop import MealContext as MealContext
from ._closed_loop import MealPlan as MealPlan
from ._closed_loop import PlanError as PlanError
from ._closed_loop import Policy as Policy
from ._closed_loop import cohort_noise as cohort_noise
from ._closed_loop import patient_constants as patient_constants
from ._closed_loop import random_meals as random_meals
from ._closed_loop import samples_per_day as samples_per_day
from ._closed_loop import simulate_policy as simulate_policy
from ._metrics import CGMMetrics as CGMMetrics
from ._metrics import cgm_metrics as cgm_metrics
from ._optimise import SMOOTH_SCALE as SMOOTH_SCALE
from ._optimise import TBR_WEIGHT as TBR_WEIGHT
from ._optimise import Optimised as Optimised
from ._optimise import SmoothMetrics as SmoothMetrics
from ._optimise import objective as objective
from ._optimise import optimise_policy as optimise_policy
from ._optimise import smooth_metrics as smooth_metrics
from ._optimise import split_patients as split_patients
from ._patients import EAT_RATE as EAT_RATE
from ._patients import PatientDataError as PatientDataError
from ._patients import VirtualPatient as VirtualPatient
from ._patients import basal_insulin as basal_insulin
from ._patients import basal_rate as basal_rate
from ._patients import insulin_bolus as insulin_bolus
from ._patients import load_patients as load_patients
from ._patients import meal as meal
from ._patients import stack_params as stack_params
from ._policies import BasalBolus as BasalBolus
from ._policies import FactorBasalBolus as FactorBasalBolus
from ._policies import GivenBoluses as GivenBoluses
from ._policies import ParametrisedPolicy as ParametrisedPolicy
from ._population import sample_population as sample_population
from ._report import write_t1d_report as write_t1d_report
from ._trial import ENDPOINTS as ENDPOINTS
from ._trial import Optimisation as Optimisation
from ._trial import T1DArm as T1DArm
from ._trial import T1DResults as T1DResults
from ._trial import T1DTrial as T1DTrial
from ._trial import endpoints as endpoints
from ._trial import profile_bands as profile_bands
from ._trial import run_trial as run_trial
from ._twin import TwinCourse as TwinCourse
from ._twin import twin_dataset as twin_dataset
from ._twin import twin_guided as twin_guided
from ._twin import twin_map as twin_map
from ._twin import twin_model as twin_model

__all__ = [
    "EAT_RATE",
    "ENDPOINTS",
    "SENSOR",
    "SMOOTH_SCALE",
    "SOLVER",
    "TBR_WEIGHT",
    "BasalBolus",
    "CGMMetrics",
    "CGMSensor",
    "Course",
    "FactorBasalBolus",
    "GivenBoluses",
    "MealContext",
    "MealPlan",
    "Optimisation",
    "Optimised",
    "ParametrisedPolicy",
    "PatientDataError",
    "PlanError",
    "Policy",
    "SmoothMetrics",
    "T1DArm",
    "T1DResults",
    "T1DTrial",
    "TwinCourse",
    "VirtualPatient",
    "basal_insulin",
    "basal_rate",
    "cgm_metrics",
    "cgm_noise",
    "cgm_readings",
    "cohort_noise",
    "endpoints",
    "insulin_bolus",
    "load_patients",
    "meal",
    "objective",
    "optimise_policy",
    "patient_constants",
    "profile_bands",
    "random_meals",
    "run_trial",
    "sample_population",
    "samples_per_day",
    "simulate_policy",
    "smooth_metrics",
    "split_patients",
    "stack_params",
    "twin_dataset",
    "twin_guided",
    "twin_map",
    "twin_model",
    "write_t1d_report",
]
