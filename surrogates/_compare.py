"""Model comparisons on held-out virtual patients: classification tables with ROC curves and
regression fidelity against the mechanistic model.

- `classification_table(models, train, test, y_train, y_test)`: accuracy, precision, recall,
  F1 and ROC-AUC (scikit-learn's definitions; threshold 0.5 on the predicted probability),
  in the style of the model comparisons of the digital-twin literature; `roc_figure` draws
  the ROC curves.
- `regression_table(models, ...)`: R2, median and 90th-percentile relative error, fit and
  prediction times.
- `warfarin_response_task(n, seed)`: the clinically framed task of the docs: "INR in range
  (2-3) at day 28 on a standard 5 mg daily dose", from the covariates, the genotypes and the
  INRs measured (with assay noise) on days 1, 3, 5 and 7. The patients' own variability
  (Hamberg 2007's between-subject variability) is not observed, so the task is not
  separable.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

import pkpd

from ._base import ExtrapolationWarning, Inputs, Surrogate
from ._data import TrainingSet, training_set


def _predict_quietly(model: Surrogate, inputs: Inputs):
    """Held-out virtual patients may lie just outside the training ranges (the extremes of
    continuous covariates); the comparison counts them, it does not need the warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExtrapolationWarning)
        return model.predict(inputs)


def _fit_and_predict(
    make: Callable[[], Surrogate], train: Inputs, y: np.ndarray, test: Inputs, key: int
):
    """A new model fitted on `train` and its predictions on `test`, with the fit time and
    the median of three prediction times (s)."""
    model = make()
    t0 = time.perf_counter()
    model.fit(train, y, key=key)
    fit_s = time.perf_counter() - t0
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        pred = _predict_quietly(model, test)
        times.append(time.perf_counter() - t0)
    return pred, fit_s, float(np.median(times))


def classification_table(
    models: Mapping[str, Callable[[], Surrogate]],
    train: Inputs,
    y_train: Any,
    test: Inputs,
    y_test: Any,
    *,
    key: int = 0,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Fit every model (a factory per name) on `train` and score it on `test`.

    Returns the table (one row per model: accuracy, precision, recall, f1, roc_auc,
    n_test, fit_s, predict_s, out_of_range) and the predicted probabilities by name."""
    from sklearn import metrics

    y_tr = np.asarray(y_train, dtype=float)
    y_te = np.asarray(y_test, dtype=bool)
    rows, probabilities = [], {}
    for name, make in models.items():
        pred, fit_s, predict_s = _fit_and_predict(make, train, y_tr, test, key)
        p = np.asarray(pred.mean, dtype=float)
        label = p >= 0.5
        rows.append(
            {
                "model": name,
                "accuracy": metrics.accuracy_score(y_te, label),
                "precision": metrics.precision_score(y_te, label, zero_division=0.0),  # type: ignore[arg-type]
                "recall": metrics.recall_score(y_te, label),
                "f1": metrics.f1_score(y_te, label),
                "roc_auc": metrics.roc_auc_score(y_te, p),
                "n_test": int(y_te.size),
                "positives": float(y_te.mean()),
                "fit_s": fit_s,
                "predict_s": predict_s,
                "out_of_range": int(pred.out_of_range.sum()),
            }
        )
        probabilities[name] = p
    return pd.DataFrame(rows).set_index("model"), probabilities


def roc_figure(y_test: Any, probabilities: Mapping[str, np.ndarray], *, title: str = ""):
    """ROC curves of the models (a matplotlib Figure)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from sklearn import metrics

    y = np.asarray(y_test, dtype=bool)
    fig, ax = plt.subplots(figsize=(5.5, 5.0))
    for name, p in probabilities.items():
        fpr, tpr, _ = metrics.roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {metrics.roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def regression_table(
    models: Mapping[str, Callable[[], Surrogate]],
    train: Inputs,
    y_train: Any,
    test: Inputs,
    y_test: Any,
    *,
    key: int = 0,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Fit every model on `train`, score it on `test`: R2, median and 90th-percentile
    absolute relative error, interval coverage, fit and prediction times (the median of
    three predictions)."""
    y_tr = np.asarray(y_train, dtype=float)
    y_te = np.asarray(y_test, dtype=float)
    rows, means = [], {}
    for name, make in models.items():
        pred, fit_s, predict_s = _fit_and_predict(make, train, y_tr, test, key)
        m = np.asarray(pred.mean, dtype=float)
        rel = np.abs(m - y_te) / np.abs(y_te)
        covered = (
            float(np.mean((y_te >= pred.lower) & (y_te <= pred.upper)))
            if pred.lower is not None and pred.upper is not None
            else float("nan")
        )
        rows.append(
            {
                "model": name,
                "r2": 1.0 - np.sum((m - y_te) ** 2) / np.sum((y_te - y_te.mean()) ** 2),
                "median_rel_error": float(np.median(rel)),
                "p90_rel_error": float(np.quantile(rel, 0.9)),
                "coverage": covered,
                "n_test": int(y_te.shape[0]),
                "fit_s": fit_s,
                "predict_s": predict_s,
                "out_of_range": int(pred.out_of_range.sum()),
            }
        )
        means[name] = m
    return pd.DataFrame(rows).set_index("model"), means


def _standard_dose(cov):
    n = len(cov["ID"])
    return np.zeros((n, 0)), np.full(n, 5.0)


@functools.lru_cache(maxsize=4)
def warfarin_standard_dosing_trial(days: int = 28):
    """Warfarin 5 mg daily for everyone (no adjustment), INR measured on days 1, 3, 5, 7;
    endpoint: the noise-free INR on the morning after the last dose (`inr_end`)."""
    from twins import DosingArm, FinalLevel, Population, Trial, drugs

    trial = Trial(
        name="warfarin_standard_5mg",
        drug=drugs.get("warfarin_hamberg2007"),
        population=functools.partial(Population.sample, ancestry="White", age=(18.0, 90.0)),
        arms=(
            DosingArm(
                "standard_5mg",
                "5 mg daily",
                "5 mg every day, no adjustment",
                _standard_dose,
                visits=(1, 3, 5, 7),
                dose_step=0.5,
            ),
        ),
        endpoints=(FinalLevel("inr_end", f"INR on day {days + 1} (noise-free)"),),
        days=days,
        band_points=1,  # the bands are not used: no points within the days
        solver=pkpd.FixedStep(2.0),
    )
    return trial


def warfarin_response_task(
    n: int, *, seed: int = 0, days: int = 28
) -> tuple[TrainingSet, np.ndarray]:
    """Simulated patients for "INR in 2-3 at day `days` on 5 mg daily" and their labels.

    Inputs: static covariates and genotypes, and the sequence of the first 7 days (dose,
    measured INR on days 1, 3, 5, 7, measured flag). Returns `(training set, labels)`."""
    trial = warfarin_standard_dosing_trial(days)
    ts = training_set(trial, n, seed=seed, observe=7)
    # The regimen is the same for everyone: constant columns carry no information.
    static = ts.inputs.static
    keep = [c for c in static.columns if np.unique(static[c].to_numpy()).size > 1]
    inputs = Inputs(
        pd.DataFrame(static[keep]), ts.inputs.sequence, ts.inputs.channels, ts.inputs.times
    )
    ts = dataclasses.replace(ts, inputs=inputs)  # the patients left out stay recorded
    inr = ts.targets["inr_end"].to_numpy()
    return ts, ((inr >= 2.0) & (inr <= 3.0)).astype(float)
