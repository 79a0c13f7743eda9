"""calibration: population models and their estimation for `pkpd` models.

- `PopulationModel`: a structural `pkpd` model, covariate-dependent typical values (theta),
  log-normal between-subject variability (diagonal or full Omega) and a residual error model
  (`Additive`, `Proportional`, `Combined`, `Exponential`), with the M3 likelihood for
  observations below the limit of quantification.
- `Dataset.from_records`: NONMEM-format records of many subjects as padded arrays.
- `fit_population`: maximum likelihood by the Laplace approximation (the fast mode);
  `individual_map`: vmapped MAP estimates of every subject with their Laplace covariance.
"""

import pkpd as _pkpd  # noqa: F401  (turns on float64)

from ._data import Dataset as Dataset
from ._laplace import ConvergenceWarning as ConvergenceWarning
from ._laplace import IndividualFit as IndividualFit
from ._laplace import PopulationFit as PopulationFit
from ._laplace import estimates_table as estimates_table
from ._laplace import fit_population as fit_population
from ._laplace import individual_map as individual_map
from ._model import Additive as Additive
from ._model import Combined as Combined
from ._model import Exponential as Exponential
from ._model import PopulationModel as PopulationModel
from ._model import Proportional as Proportional

__all__ = [
    "Additive",
    "Combined",
    "ConvergenceWarning",
    "Dataset",
    "Exponential",
    "IndividualFit",
    "PopulationFit",
    "PopulationModel",
    "Proportional",
    "estimates_table",
    "fit_population",
    "individual_map",
]
