"""twins: patients, cohorts and digital twins.

- Patients and covariates: `Patient` (demographics, labs, star-allele genotypes, medications)
  with derived covariates (`cockcroft_gault`, `ckd_epi_2021`, `bsa_mosteller`,
  `lean_body_weight`, `allometric`, ...); `Population` for virtual (`Population.sample`) and
  real (`Population.from_dataframe`) cohorts.
- `twins.pgx`: CPIC genotype -> activity score -> phenotype.
- `twins.drugs`: the drug library (`Drug`: a published `calibration.PopulationModel` plus
  clinical metadata).
- `DigitalTwin`: a drug and a patient; `update` with observed levels, `forecast`,
  `recommend`; `write_twin_report(twin, path)` writes its self-contained HTML report;
  `update_twins`, `recommend_twins`, `forecast_twins`: the same for many twins in one
  vmapped call per drug model.
- `twins.validation`: evaluations on real data (IWPC warfarin doses).
- `twins.trials` (re-exported here): virtual trials: `Trial` (population x arms x
  endpoints), `DosingArm` with `Nomogram` rules, endpoints (`TimeInRange`, `AnyAbove`,
  `TimeToRange`, `MeanDose`, `FinalLevel`, `AUC`, `Cmax`, `Ctrough`, `TargetAttainment`),
  `run_trial` (chunked Parquet results, resume), `write_report`, `eupact_trial` (the
  built-in default).
- `twins.app`: trial specs (TOML), the HTML reports, and the `twins` command line (`twins
  demo`, `twins trial spec.toml`, `twins report DIR`).
"""

from calibration import FOCEI as FOCEI
from calibration import MAP as MAP
from calibration import NUTS as NUTS
from calibration import Laplace as Laplace

from . import drugs as drugs
from . import pgx as pgx
from . import validation as validation
from ._consented import ConsentRequiredError as ConsentRequiredError
from ._consented import consented_population as consented_population
from ._covariates import allometric as allometric
from ._covariates import bmi as bmi
from ._covariates import bsa_dubois as bsa_dubois
from ._covariates import bsa_mosteller as bsa_mosteller
from ._covariates import ckd_epi_2021 as ckd_epi_2021
from ._covariates import cockcroft_gault as cockcroft_gault
from ._covariates import creatinine_mg_dl_to_umol as creatinine_mg_dl_to_umol
from ._covariates import creatinine_umol_to_mg_dl as creatinine_umol_to_mg_dl
from ._covariates import ideal_body_weight as ideal_body_weight
from ._covariates import lean_body_weight as lean_body_weight
from ._patient import LABS as LABS
from ._patient import LabSpec as LabSpec
from ._patient import MissingCovariateError as MissingCovariateError
from ._patient import Patient as Patient
from ._plausibility import PLAUSIBLE_RANGES as PLAUSIBLE_RANGES
from ._plausibility import ImplausiblePatientError as ImplausiblePatientError
from ._plausibility import ImplausibleValue as ImplausibleValue
from ._plausibility import PlausibleRange as PlausibleRange
from ._plausibility import plausible_range as plausible_range
from ._population import CPIC_GROUPS as CPIC_GROUPS
from ._population import IWPC_CPIC_GROUPS as IWPC_CPIC_GROUPS
from ._population import Demographics as Demographics
from ._population import Population as Population
from ._population import cpic_allele_frequencies as cpic_allele_frequencies
from ._population import iwpc_genotype_counts as iwpc_genotype_counts
from ._population import read_allele_frequencies as read_allele_frequencies
from ._population_sim import PopulationSimulation as PopulationSimulation
from ._population_sim import drug_covariates as drug_covariates
from ._population_sim import simulate_population as simulate_population
from ._twin import DigitalTwin as DigitalTwin
from ._twin import Forecast as Forecast
from ._twin import Posterior as Posterior
from ._twin import Recommendation as Recommendation
from ._twin import twin_solver as twin_solver
from ._twin_batch import forecast_twins as forecast_twins
from ._twin_batch import recommend_twins as recommend_twins
from ._twin_batch import update_twins as update_twins
from .drugs import AUCOver as AUCOver
from .drugs import Bolus as Bolus
from .drugs import DoseConstraints as DoseConstraints
from .drugs import Drug as Drug
from .drugs import Infusion as Infusion
from .drugs import Metric as Metric
from .drugs import Oral as Oral
from .drugs import Peak as Peak
from .drugs import Route as Route
from .drugs import Target as Target
from .drugs import Trough as Trough

# The trials wing and the app floor, above the core (they import it; it never imports them).
from . import trials as trials  # isort: skip
from . import app as app  # isort: skip
from .app import write_report as write_report  # isort: skip
from .app import write_twin_report as write_twin_report  # isort: skip
from .trials import AUC as AUC  # isort: skip
from .trials import AnyAbove as AnyAbove  # isort: skip
from .trials import Arm as Arm  # isort: skip
from .trials import Cmax as Cmax  # isort: skip
from .trials import Ctrough as Ctrough  # isort: skip
from .trials import DosingArm as DosingArm  # isort: skip
from .trials import Endpoint as Endpoint  # isort: skip
from .trials import EventRisk as EventRisk  # isort: skip
from .trials import FailedPatientsError as FailedPatientsError  # isort: skip
from .trials import Adherence as Adherence  # isort: skip
from .trials import IOV as IOV  # isort: skip
from .trials import OrnsteinUhlenbeck as OrnsteinUhlenbeck  # isort: skip
from .trials import Variability as Variability  # isort: skip
from .trials import Visits as Visits  # isort: skip
from .trials import DoseTiming as DoseTiming  # isort: skip
from .trials import Holidays as Holidays  # isort: skip
from .trials import DosesTaken as DosesTaken  # isort: skip
from .trials import Dropout as Dropout  # isort: skip
from .trials import Dropped as Dropped  # isort: skip
from .trials import FinalLevel as FinalLevel  # isort: skip
from .trials import MeanDose as MeanDose  # isort: skip
from .trials import Nomogram as Nomogram  # isort: skip
from .trials import TargetAttainment as TargetAttainment  # isort: skip
from .trials import TimeInRange as TimeInRange  # isort: skip
from .trials import TimeToRange as TimeToRange  # isort: skip
from .trials import TooManyFailuresError as TooManyFailuresError  # isort: skip
from .trials import Trial as Trial  # isort: skip
from .trials import TwinArm as TwinArm  # isort: skip
from .trials import coag_trial as coag_trial  # isort: skip
from .trials import eupact_trial as eupact_trial  # isort: skip
from .trials import read_results as read_results  # isort: skip
from .trials import run_trial as run_trial  # isort: skip
from .trials import run_trial_ray as run_trial_ray  # isort: skip
from .trials import trial_summary as trial_summary  # isort: skip

__all__ = [
    "AUC",
    "CPIC_GROUPS",
    "FOCEI",
    "IOV",
    "IWPC_CPIC_GROUPS",
    "LABS",
    "MAP",
    "NUTS",
    "PLAUSIBLE_RANGES",
    "AUCOver",
    "Adherence",
    "AnyAbove",
    "Arm",
    "Bolus",
    "Cmax",
    "ConsentRequiredError",
    "Ctrough",
    "Demographics",
    "DigitalTwin",
    "DoseConstraints",
    "DoseTiming",
    "DosesTaken",
    "DosingArm",
    "Dropout",
    "Dropped",
    "Drug",
    "Endpoint",
    "EventRisk",
    "FailedPatientsError",
    "FinalLevel",
    "Forecast",
    "Holidays",
    "ImplausiblePatientError",
    "ImplausibleValue",
    "Infusion",
    "LabSpec",
    "Laplace",
    "MeanDose",
    "Metric",
    "MissingCovariateError",
    "Nomogram",
    "Oral",
    "OrnsteinUhlenbeck",
    "Patient",
    "Peak",
    "PlausibleRange",
    "Population",
    "PopulationSimulation",
    "Posterior",
    "Recommendation",
    "Route",
    "Target",
    "TargetAttainment",
    "TimeInRange",
    "TimeToRange",
    "TooManyFailuresError",
    "Trial",
    "Trough",
    "TwinArm",
    "Variability",
    "Visits",
    "allometric",
    "app",
    "bmi",
    "bsa_dubois",
    "bsa_mosteller",
    "ckd_epi_2021",
    "coag_trial",
    "cockcroft_gault",
    "consented_population",
    "cpic_allele_frequencies",
    "creatinine_mg_dl_to_umol",
    "creatinine_umol_to_mg_dl",
    "drug_covariates",
    "drugs",
    "eupact_trial",
    "forecast_twins",
    "ideal_body_weight",
    "iwpc_genotype_counts",
    "lean_body_weight",
    "pgx",
    "plausible_range",
    "read_allele_frequencies",
    "read_results",
    "recommend_twins",
    "run_trial",
    "run_trial_ray",
    "simulate_population",
    "trial_summary",
    "trials",
    "twin_solver",
    "update_twins",
    "validation",
    "write_report",
    "write_twin_report",
]
