"""calibration: population models and their estimation for `pkpd` models.

- `PopulationModel`: a structural `pkpd` model, covariate-dependent typical values (theta),
  log-normal between-subject variability (diagonal or full Omega) and a residual error model
  (`Additive`, `Proportional`, `Combined`, `Exponential`), with the M3 likelihood for
  observations below the limit of quantification; a model that observes several outputs
  (joint PK/PD, parent and metabolite) has one error model per DVID: `ByOutput` of
  `Observation`s.
- `Dataset.from_records`: NONMEM-format records of many subjects as padded arrays.
- `fit_population`: maximum likelihood by FOCE-I or the Laplace approximation (the fast mode);
  `individual_map`: vmapped MAP estimates of every subject with their Laplace covariance.
  The curvature is a strategy object: `estimator=FOCEI()` or `estimator=Laplace()`.
- `objective_values`, `minimize_objective`: the two halves of `fit_population` (the
  subjects' -log L at the points the outer loop asks for; the outer loop), for fits whose
  subjects are not in one place (federated, `surrogates.federated`).
- `MAP()`, `NUTS(...)`: how a `twins.DigitalTwin` updates its posterior.
- `fit_population_nuts`, `fit_individual_nuts`, `fit_population_svi`: Bayesian estimation with
  numpyro, returning ArviZ `InferenceData` and loud convergence diagnostics.
- Diagnostics: `residuals` (PRED, IPRED, IWRES, CWRES, NPDE), `gof_plots`,
  `individual_plots`, `vpc` (prediction-corrected too), `sbc`, `simulate_dataset`.
- Inter-occasion variability in every estimator and diagnostic; `forecast_new_occasion`
  (a new occasion's kappa integrated over), `occasion_index`, `random_effect_names`.
- `SubjectError`: subjects that cannot be evaluated (parameters outside the model's domain,
  observations the error model cannot explain), each named with its reason.
"""

import pkpd as _pkpd  # noqa: F401  (turns on float64)

from ._bayes import BayesFit as BayesFit
from ._bayes import default_priors as default_priors
from ._bayes import fit_individual_nuts as fit_individual_nuts
from ._bayes import fit_population_nuts as fit_population_nuts
from ._bayes import fit_population_svi as fit_population_svi
from ._bayes import random_effect_draws as random_effect_draws
from ._bootstrap import BootstrapResult as BootstrapResult
from ._bootstrap import bootstrap as bootstrap
from ._data import Dataset as Dataset
from ._diagnostics import gof_plots as gof_plots
from ._diagnostics import individual_plots as individual_plots
from ._diagnostics import residuals as residuals
from ._estimators import FOCEI as FOCEI
from ._estimators import MAP as MAP
from ._estimators import NUTS as NUTS
from ._estimators import AbstractEstimator as AbstractEstimator
from ._estimators import Laplace as Laplace
from ._failures import SubjectError as SubjectError
from ._fit_summary import FitSummary as FitSummary
from ._fit_summary import fit_summary as fit_summary
from ._fit_summary import nonmem_tables as nonmem_tables
from ._fit_summary import write_tables as write_tables
from ._laplace import ConvergenceWarning as ConvergenceWarning
from ._laplace import IndividualFit as IndividualFit
from ._laplace import ObjectiveValues as ObjectiveValues
from ._laplace import OuterLoopResult as OuterLoopResult
from ._laplace import PopulationFit as PopulationFit
from ._laplace import estimates_table as estimates_table
from ._laplace import fit_population as fit_population
from ._laplace import individual_map as individual_map
from ._laplace import minimize_objective as minimize_objective
from ._laplace import objective_values as objective_values
from ._model import Additive as Additive
from ._model import ByOutput as ByOutput
from ._model import Combined as Combined
from ._model import Exponential as Exponential
from ._model import FrozenDict as FrozenDict
from ._model import Observation as Observation
from ._model import PopulationModel as PopulationModel
from ._model import Proportional as Proportional
from ._model import occasion_index as occasion_index
from ._model import random_effect_names as random_effect_names
from ._nonmem_read import NonmemImport as NonmemImport
from ._nonmem_read import read_nonmem as read_nonmem
from ._nonmem_translate import NonmemTranslationError as NonmemTranslationError
from ._predictive import OccasionForecast as OccasionForecast
from ._predictive import SBCResult as SBCResult
from ._predictive import VPCResult as VPCResult
from ._predictive import forecast_new_occasion as forecast_new_occasion
from ._predictive import laplace_posterior as laplace_posterior
from ._predictive import sbc as sbc
from ._predictive import vpc as vpc
from ._profile import ProfileResult as ProfileResult
from ._profile import profile_likelihood as profile_likelihood
from ._simulation import Simulation as Simulation
from ._simulation import simulate_dataset as simulate_dataset

__all__ = [
    "FOCEI",
    "MAP",
    "NUTS",
    "AbstractEstimator",
    "Additive",
    "BayesFit",
    "BootstrapResult",
    "ByOutput",
    "Combined",
    "ConvergenceWarning",
    "Dataset",
    "Exponential",
    "FitSummary",
    "FrozenDict",
    "IndividualFit",
    "Laplace",
    "NonmemImport",
    "NonmemTranslationError",
    "ObjectiveValues",
    "Observation",
    "OccasionForecast",
    "OuterLoopResult",
    "PopulationFit",
    "PopulationModel",
    "ProfileResult",
    "Proportional",
    "SBCResult",
    "Simulation",
    "SubjectError",
    "VPCResult",
    "bootstrap",
    "default_priors",
    "estimates_table",
    "fit_individual_nuts",
    "fit_population",
    "fit_population_nuts",
    "fit_population_svi",
    "fit_summary",
    "forecast_new_occasion",
    "gof_plots",
    "individual_map",
    "individual_plots",
    "laplace_posterior",
    "minimize_objective",
    "nonmem_tables",
    "objective_values",
    "occasion_index",
    "profile_likelihood",
    "random_effect_draws",
    "random_effect_names",
    "residuals",
    "sbc",
    "simulate_dataset",
    "vpc",
    "write_tables",
]
