"""surrogates: ML surrogates trained on mechanistic simulations of virtual cohorts.

- One interface (`Surrogate`: `fit`, `predict` with split-conformal intervals and
  out-of-training-range flags, `save`, `load`) over `Inputs` (static features plus optional
  time series).
- `XGBoostSurrogate` and the scikit-learn baselines (`SklearnSurrogate`: linear/logistic,
  random forest, SVM); Flax (`flax.nnx`) `MLPSurrogate` (the fast emulator),
  `LSTMSurrogate`, `TransformerSurrogate` and `HybridSurrogate` (the three fused by a small
  head), deep ensembles.
- Type 1 diabetes: `GlucoseSurrogate` (an LSTM on the CGM sequence: the glucose 2 h ahead
  from 4 h of readings, the meals and boluses), trained on closed-loop simulations of
  `twins.t1d` (`GlucoseScenario`, `simulate_windows`, `glucose_windows` ->
  `GlucoseWindows`); `glucose_fidelity` (RMSE/MAE by horizon, `clarke_zones`, consensus
  metrics) against the last value carried forward.
- Training data from the trial engine: `training_set(trial, n, arm=...)` -> `TrainingSet`
  (patients that cannot be simulated left out, named in `TrainingSet.failures`, with a
  `FailedPatientsWarning`).
- Comparisons on held-out virtual patients: `regression_table`, `classification_table`,
  `roc_figure`, and the task of the docs, `warfarin_response_task`.
- Explanations: `explain` (SHAP: Tree SHAP for trees, permutation/kernel SHAP for any
  surrogate), `lime_explain`, `summary_plot`, `waterfall_plot`, `explanation_section` (for
  `DigitalTwin.report`), `patient_inputs`.
- `surrogates.validation`: real-patient warfarin dose models (IWPC).
"""

from ._base import ExtrapolationWarning as ExtrapolationWarning
from ._base import Inputs as Inputs
from ._base import Prediction as Prediction
from ._base import Surrogate as Surrogate
from ._base import TrainingRanges as TrainingRanges
from ._base import load as load
from ._compare import classification_table as classification_table
from ._compare import regression_table as regression_table
from ._compare import roc_figure as roc_figure
from ._compare import warfarin_response_task as warfarin_response_task
from ._data import FailedPatientsWarning as FailedPatientsWarning
from ._data import TrainingSet as TrainingSet
from ._data import training_set as training_set
from ._explain import Explanation as Explanation
from ._explain import explain as explain
from ._explain import explanation_section as explanation_section
from ._explain import lime_explain as lime_explain
from ._explain import patient_inputs as patient_inputs
from ._explain import summary_plot as summary_plot
from ._explain import waterfall_plot as waterfall_plot
from ._flax import HybridSurrogate as HybridSurrogate
from ._flax import LSTMSurrogate as LSTMSurrogate
from ._flax import MLPSurrogate as MLPSurrogate
from ._flax import TransformerSurrogate as TransformerSurrogate
from ._glucose import GlucoseScenario as GlucoseScenario
from ._glucose import GlucoseSurrogate as GlucoseSurrogate
from ._glucose import GlucoseWindowError as GlucoseWindowError
from ._glucose import GlucoseWindows as GlucoseWindows
from ._glucose import clarke_zones as clarke_zones
from ._glucose import glucose_fidelity as glucose_fidelity
from ._glucose import glucose_windows as glucose_windows
from ._glucose import simulate_windows as simulate_windows
from ._tabular import SklearnSurrogate as SklearnSurrogate
from ._tabular import XGBoostSurrogate as XGBoostSurrogate
from ._training import Training as Training

__all__ = [
    "Explanation",
    "ExtrapolationWarning",
    "FailedPatientsWarning",
    "GlucoseScenario",
    "GlucoseSurrogate",
    "GlucoseWindowError",
    "GlucoseWindows",
    "HybridSurrogate",
    "Inputs",
    "LSTMSurrogate",
    "MLPSurrogate",
    "Prediction",
    "SklearnSurrogate",
    "Surrogate",
    "Training",
    "TrainingRanges",
    "TrainingSet",
    "TransformerSurrogate",
    "XGBoostSurrogate",
    "clarke_zones",
    "classification_table",
    "explain",
    "explanation_section",
    "glucose_fidelity",
    "glucose_windows",
    "lime_explain",
    "load",
    "patient_inputs",
    "regression_table",
    "roc_figure",
    "simulate_windows",
    "summary_plot",
    "training_set",
    "warfarin_response_task",
    "waterfall_plot",
]
