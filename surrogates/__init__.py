"""surrogates: ML surrogates trained on mechanistic simulations of virtual cohorts.

- One interface (`Surrogate`: `fit`, `predict` with split-conformal intervals and
  out-of-training-range flags, `save`, `load`) over `Inputs` (static features plus optional
  time series).
- `XGBoostSurrogate` and the scikit-learn baselines (`SklearnSurrogate`: linear/logistic,
  random forest, SVM).
- `surrogates.validation`: real-patient warfarin dose models (IWPC).
"""

from ._base import ExtrapolationWarning as ExtrapolationWarning
from ._base import Inputs as Inputs
from ._base import Prediction as Prediction
from ._base import Surrogate as Surrogate
from ._base import TrainingRanges as TrainingRanges
from ._base import load as load
from ._tabular import SklearnSurrogate as SklearnSurrogate
from ._tabular import XGBoostSurrogate as XGBoostSurrogate

__all__ = [
    "ExtrapolationWarning",
    "Inputs",
    "Prediction",
    "SklearnSurrogate",
    "Surrogate",
    "TrainingRanges",
    "XGBoostSurrogate",
    "load",
]
