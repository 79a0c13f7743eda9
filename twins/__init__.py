"""twins: patients, cohorts and digital twins.

- Patients and covariates: `Patient` (demographics, labs, star-allele genotypes, medications)
  with derived covariates (`cockcroft_gault`, `ckd_epi_2021`, `bsa_mosteller`,
  `lean_body_weight`, `allometric`, ...); `Population` for virtual (`Population.sample`) and
  real (`Population.from_dataframe`) cohorts.
- `twins.pgx`: CPIC genotype -> activity score -> phenotype.
- `twins.drugs`: the drug library (`Drug`: a published `calibration.PopulationModel` plus
  clinical metadata).
- `DigitalTwin`: a drug and a patient; `update` with observed levels, `forecast`, `recommend`,
  `report` (`write_twin_report`: one self-contained HTML file).
- `twins.validation`: evaluations on real data (IWPC warfarin doses).
- Virtual trials: `Trial` (population x arms x endpoints), `DosingArm` with `Nomogram`
  rules, endpoints (`TimeInRange`, `AnyAbove`, `TimeToRange`, `MeanDose`, `FinalLevel`, `AUC`,
  `Cmax`, `Ctrough`, `TargetAttainment`),
  `run_trial` (chunked Parquet results, resume), `write_report`, `eupact_trial` (the
  built-in default).
- The `twins` command line (`twins demo`, `twins trial spec.toml`, `twins report DIR`).
"""

from . import drugs as drugs
from . import pgx as pgx
from . import validation as validation
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
from ._eupact import eupact_trial as eupact_trial
from ._patient import LABS as LABS
from ._patient import LabSpec as LabSpec
from ._patient import MissingCovariateError as MissingCovariateError
from ._patient import Patient as Patient
from ._population import Demographics as Demographics
from ._population import Population as Population
from ._population import iwpc_genotype_counts as iwpc_genotype_counts
from ._ray import run_trial_ray as run_trial_ray
from ._report import write_report as write_report
from ._summary import read_results as read_results
from ._trial import AUC as AUC
from ._trial import AnyAbove as AnyAbove
from ._trial import Arm as Arm
from ._trial import Cmax as Cmax
from ._trial import Ctrough as Ctrough
from ._trial import DosingArm as DosingArm
from ._trial import Endpoint as Endpoint
from ._trial import FinalLevel as FinalLevel
from ._trial import MeanDose as MeanDose
from ._trial import Nomogram as Nomogram
from ._trial import TargetAttainment as TargetAttainment
from ._trial import TimeInRange as TimeInRange
from ._trial import TimeToRange as TimeToRange
from ._trial import Trial as Trial
from ._trial_run import run_trial as run_trial
from ._trial_run import summary as trial_summary
from ._twin import DigitalTwin as DigitalTwin
from ._twin import Forecast as Forecast
from ._twin import Posterior as Posterior
from ._twin import Recommendation as Recommendation
from ._twin_arm import TwinArm as TwinArm
from ._twin_report import write_twin_report as write_twin_report
from .drugs import Drug as Drug

__all__ = [
    "AUC",
    "LABS",
    "AnyAbove",
    "Arm",
    "Cmax",
    "Ctrough",
    "Demographics",
    "DigitalTwin",
    "DosingArm",
    "Drug",
    "Endpoint",
    "FinalLevel",
    "Forecast",
    "LabSpec",
    "MeanDose",
    "MissingCovariateError",
    "Nomogram",
    "Patient",
    "Population",
    "Posterior",
    "Recommendation",
    "TargetAttainment",
    "TimeInRange",
    "TimeToRange",
    "Trial",
    "TwinArm",
    "allometric",
    "bmi",
    "bsa_dubois",
    "bsa_mosteller",
    "ckd_epi_2021",
    "cockcroft_gault",
    "creatinine_mg_dl_to_umol",
    "creatinine_umol_to_mg_dl",
    "drugs",
    "eupact_trial",
    "ideal_body_weight",
    "iwpc_genotype_counts",
    "lean_body_weight",
    "pgx",
    "read_results",
    "run_trial",
    "run_trial_ray",
    "trial_summary",
    "validation",
    "write_report",
    "write_twin_report",
]
