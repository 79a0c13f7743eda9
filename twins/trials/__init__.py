"""twins.trials: virtual trials (a population x arms x endpoints), simulated in chunks.

- `Trial`, arms (`DosingArm` with `Nomogram` rules; `TwinArm`, dosed by each patient's
  `DigitalTwin`), endpoints (`TimeInRange`, `AnyAbove`, `TimeToRange`, `MeanDose`,
  `FinalLevel`, `DosesTaken`, `AUC`, `Cmax`, `Ctrough`, `TargetAttainment`); the EU-PACT and
  COAG presets (`eupact_trial`, `coag_trial`).
- Chunk-level simulation: `seed_keys`, `population_rows`, `simulate_chunk` (what the
  results folder, the surrogates' training sets and the benchmarks are built from), and
  `simulate_chunk_outcome` (`ChunkOutcome`), which records the patients that cannot be
  simulated instead of raising `FailedPatientsError`.
- The results folder: `run_trial` (chunked Parquet parts with checksums, resume; failed
  patients recorded, the run stopped past `MAX_FAILED_FRACTION` with
  `TooManyFailuresError`), `run_trial_ray` (the same folder and policy, one Ray task per
  chunk), `read_results`, `trial_summary`, `write_summary`.
No plotting and no HTML here: the report is `twins.app` (`twins.write_report`).
"""

from ._adherence import Adherence as Adherence
from ._adherence import DoseTiming as DoseTiming
from ._adherence import Holidays as Holidays
from ._arms import Arm as Arm
from ._arms import DosingArm as DosingArm
from ._arms import Nomogram as Nomogram
from ._coag import coag_trial as coag_trial
from ._consent import consented_trial as consented_trial
from ._dropout import Dropout as Dropout
from ._endpoints import AUC as AUC
from ._endpoints import AnyAbove as AnyAbove
from ._endpoints import Cmax as Cmax
from ._endpoints import Ctrough as Ctrough
from ._endpoints import DosesTaken as DosesTaken
from ._endpoints import Dropped as Dropped
from ._endpoints import Endpoint as Endpoint
from ._endpoints import EventRisk as EventRisk
from ._endpoints import FinalLevel as FinalLevel
from ._endpoints import MeanDose as MeanDose
from ._endpoints import TargetAttainment as TargetAttainment
from ._endpoints import TimeInRange as TimeInRange
from ._endpoints import TimeToRange as TimeToRange
from ._eupact import eupact_trial as eupact_trial
from ._ray import run_trial_ray as run_trial_ray
from ._run import DERIVED_SUBGROUPS as DERIVED_SUBGROUPS
from ._run import MAX_FAILED_FRACTION as MAX_FAILED_FRACTION
from ._run import ResultsFolderError as ResultsFolderError
from ._run import ResumeWarning as ResumeWarning
from ._run import TooManyFailuresError as TooManyFailuresError
from ._run import run_trial as run_trial
from ._run import seed_keys as seed_keys
from ._run import summary as trial_summary
from ._run import write_summary as write_summary
from ._subgroups import NAMED_SUBGROUPS as NAMED_SUBGROUPS
from ._subgroups import AgeGroup as AgeGroup
from ._subgroups import CovariateLevels as CovariateLevels
from ._subgroups import PopulationColumn as PopulationColumn
from ._subgroups import RenalFunction as RenalFunction
from ._subgroups import Subgroup as Subgroup
from ._subgroups import SubgroupError as SubgroupError
from ._subgroups import subgroup as subgroup
from ._summary import DamagedResultsError as DamagedResultsError
from ._summary import Results as Results
from ._summary import read_results as read_results
from ._trial import ChunkOutcome as ChunkOutcome
from ._trial import FailedPatientsError as FailedPatientsError
from ._trial import Trial as Trial
from ._trial import dose_window as dose_window
from ._trial import make_runner as make_runner
from ._trial import model_covariates as model_covariates
from ._trial import population_rows as population_rows
from ._trial import simulate_chunk as simulate_chunk
from ._trial import simulate_chunk_outcome as simulate_chunk_outcome
from ._trial import trial_runners as trial_runners
from ._twin_arm import TwinArm as TwinArm
from ._variability import IOV as IOV
from ._variability import OrnsteinUhlenbeck as OrnsteinUhlenbeck
from ._variability import Variability as Variability
from ._visits import Visits as Visits

__all__ = [
    "AUC",
    "DERIVED_SUBGROUPS",
    "IOV",
    "MAX_FAILED_FRACTION",
    "NAMED_SUBGROUPS",
    "Adherence",
    "AgeGroup",
    "AnyAbove",
    "Arm",
    "ChunkOutcome",
    "Cmax",
    "CovariateLevels",
    "Ctrough",
    "DamagedResultsError",
    "DoseTiming",
    "DosesTaken",
    "DosingArm",
    "Dropout",
    "Dropped",
    "Endpoint",
    "EventRisk",
    "FailedPatientsError",
    "FinalLevel",
    "Holidays",
    "MeanDose",
    "Nomogram",
    "OrnsteinUhlenbeck",
    "PopulationColumn",
    "RenalFunction",
    "Results",
    "ResultsFolderError",
    "ResumeWarning",
    "Subgroup",
    "SubgroupError",
    "TargetAttainment",
    "TimeInRange",
    "TimeToRange",
    "TooManyFailuresError",
    "Trial",
    "TwinArm",
    "Variability",
    "Visits",
    "coag_trial",
    "consented_trial",
    "dose_window",
    "eupact_trial",
    "make_runner",
    "model_covariates",
    "population_rows",
    "read_results",
    "run_trial",
    "run_trial_ray",
    "seed_keys",
    "simulate_chunk",
    "simulate_chunk_outcome",
    "subgroup",
    "trial_runners",
    "trial_summary",
    "write_summary",
]
