r"""Machine-learning warfarin dose models on real patients (IWPC), against IWPC 2009.

`iwpc_dose_models(train_csv, test_csv)` fits every model on the patients of the first file
and scores its predicted stable weekly dose on the patients of the second;
`iwpc_cross_validation(csv)` does the same by K-fold cross-validation within one file.
The patients and the inputs of the published predictors come from `twins.validation`
(`load_iwpc`, `iwpc_2009_dose`, `twin_weekly_dose`); the other clinical columns are parsed
by `surrogates._iwpc_features` with the same reader (`twins.validation.iwpc_flag`, ...), so
a field has one value in both: an empty amiodarone or enzyme-inducer field is 0 (not taking
it, the IWPC 2009 algorithm's coding), any other empty field is unknown (NaN).

Models (weekly dose in mg; every fitted model predicts $\sqrt{\text{dose}}$, the IWPC's
scale, with squared error, and squares the prediction):

- `"iwpc_2009"`: the published IWPC 2009 pharmacogenetic algorithm, not refitted, with the
  inputs as in `twins.validation` (VKORC1 -1639 as genotyped).
- `"iwpc_2009_imputed"`: the same algorithm with VKORC1 -1639 imputed from linked VKORC1
  SNPs where it was not genotyped, by the IWPC's published rules; nothing fitted.
- `"linear"`: ordinary least squares refit of the IWPC 2009 form (the same 17 terms) on the
  training patients.
- `"random_forest"`: a random forest (Breiman 2001) on the clinical and genotype features,
  hyperparameters fixed a priori (500 trees, a third of the features per split, at least 5
  patients per leaf); missing values handled by the trees.
- `"xgboost"`: gradient-boosted trees (Chen and Guestrin 2016) on the clinical and genotype
  features, missing values (NaN) routed by the trees; depth, minimum child weight and the
  number of trees chosen by inner cross-validation on the training patients.
- `"hybrid"`: XGBoost that also gets the mechanistic predictions: the Hamberg 2007 twin's
  dose and the IWPC 2009 dose (both with imputed VKORC1; the twin's is NaN where it has no
  parameters for the patient). Two forms are candidates in the inner cross-validation,
  these predictions as features only, or also as the starting point (XGBoost's
  `base_margin` = $\sqrt{\text{IWPC 2009 dose}}$, so that the trees fit the residual of
  the published algorithm); the inner cross-validation picks the form as it picks the
  hyperparameters.

Inner cross-validation: 5 folds of the training patients (shuffled with `seed`), a fixed
grid (`XGB_GRID`), learning rate 0.03, row and column subsampling 0.8, up to 2,000 trees
with early stopping after 50 rounds without improvement of the inner-validation root mean
squared error of $\sqrt{\text{dose}}$; the configuration with the lowest mean inner error
wins and is refitted on all training patients with its number of trees. The test patients
are never seen before scoring.

Metrics (`twins.validation`'s): `"mae"` (mg/week), `"within20"` (fraction of patients
with $|\hat d - d| \le 0.2\,d$), `"r2"` ($1 - SS_{res}/SS_{tot}$ on the dose scale),
`"n"` (patients scored). Patients without a stable dose or without age, height or weight
are not scored by any model (the IWPC 2009 algorithm needs them); `iwpc_excluded(csv)`
counts them by reason.

References: International Warfarin Pharmacogenetics Consortium. Estimation of the warfarin
dose with clinical and pharmacogenetic data. N Engl J Med 2009;360(8):753-764.
Chen T, Guestrin C. XGBoost: a scalable tree boosting system. KDD 2016:785-794.
Breiman L. Random forests. Mach Learn 2001;45:5-32.
Hamberg AK et al. A PK-PD model for predicting the impact of age, CYP2C9, and VKORC1
genotype on individualization of warfarin therapy. Clin Pharmacol Ther 2007;81(4):529-538.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import KFold

from twins.validation import CYP2C9_CODES, dose_metrics, iwpc_missing

from ._iwpc_features import CLINICAL_FEATURES, MECHANISTIC_FEATURES, cohort, excluded

__all__ = ["MODELS", "XGB_GRID", "iwpc_cross_validation", "iwpc_dose_models", "iwpc_excluded"]

MODELS: tuple[str, ...] = (
    "iwpc_2009",
    "iwpc_2009_imputed",
    "linear",
    "random_forest",
    "xgboost",
    "hybrid",
)
# Inner-CV grid, fixed before looking at any result: shallow trees (dose effects are mostly
# additive on the sqrt scale, as the IWPC regression found) to moderately deep ones.
XGB_GRID: tuple[Mapping[str, float], ...] = tuple(
    {"max_depth": depth, "min_child_weight": weight}
    for depth in (2, 3, 4, 6)
    for weight in (5.0, 20.0)
)
_XGB_FIXED: Mapping[str, Any] = {
    "objective": "reg:squarederror",
    "eval_metric": "rmse",
    "eta": 0.03,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "tree_method": "hist",
}
_MAX_ROUNDS = 2000
_EARLY_STOPPING = 50
_INNER_FOLDS = 5


def iwpc_excluded(csv_path: str | os.PathLike[str]) -> dict[str, int]:
    """Patients of an IWPC file that no model is scored on, counted by reason (the first
    that applies): `"no therapeutic (stable) dose"`, `"age not reported"`, `"height not
    reported"`, `"weight not reported"`. On `iwpc_warfarin_train.csv`: 183, 28, 863 and 27
    of 4,982 patients, leaving the 3,881 that `twins.validation.load_iwpc` selects
    (`twins.validation.iwpc_ineligible`, once every column the models read is checked)."""
    return excluded(csv_path)


def iwpc_dose_models(
    train_csv: str | os.PathLike[str],
    test_csv: str | os.PathLike[str],
    *,
    seed: int = 0,
    n_jobs: int = 1,
    grid: Sequence[Mapping[str, float]] = XGB_GRID,
) -> dict[str, dict[str, float]]:
    """Fit the warfarin dose models on one IWPC file and score them on another.

    **Arguments:**

    - `train_csv`, `test_csv`: IWPC data in PharmGKB's column layout (e.g.
      `iwpc_warfarin_train.csv`); every column in `surrogates._iwpc_features.REQUIRED_COLUMNS`
      must be present (empty values are allowed where the module docstring says so).
    - `seed`: seeds the inner cross-validation split, the subsampling of XGBoost and the
      random forest; the same seed gives the same numbers on the same machine.
    - `n_jobs`: threads for XGBoost and the random forest.
    - `grid`: the XGBoost configurations tried by inner cross-validation (default
      `XGB_GRID`); each a mapping of XGBoost parameters.

    **Returns:** `{model: {"mae": mg/week, "within20": fraction, "r2": ..., "n": patients}}`
    for the models of the module docstring, scored on the eligible patients of `test_csv`
    (`iwpc_excluded(test_csv)` counts the others).

    **Raises:** `ValueError` naming the file and the missing column(s), or the row, file
    line, subject and column of a value outside the expected ones.
    """
    train, test = cohort(train_csv), cohort(test_csv)
    predictions, _ = _fit_predict(train, test, seed=seed, n_jobs=n_jobs, grid=grid)
    actual = test["dose"].to_numpy(dtype=float)
    return {name: _scores(actual, pred) for name, pred in predictions.items()}


def iwpc_cross_validation(
    csv_path: str | os.PathLike[str],
    *,
    folds: int = 5,
    seed: int = 0,
    n_jobs: int = 1,
    grid: Sequence[Mapping[str, float]] = XGB_GRID,
) -> dict[str, Any]:
    """The models of `iwpc_dose_models` by K-fold cross-validation on one IWPC file.

    The eligible patients are shuffled with `seed` and split into `folds` folds; each model
    is fitted on the other folds (its hyperparameters by inner cross-validation within
    them) and scored on the held-out fold.

    **Returns:** a dict with `"mean"` (`{model: metrics}`, each metric the mean over folds,
    `"n"` the total number of patients scored), `"sd"` (standard deviation over folds of
    `"mae"`, `"within20"` and `"r2"`), `"pooled"` (metrics of all out-of-fold predictions
    together), `"folds"` (a list of `{model: metrics}` per fold), `"choices"` (per fold, what
    the inner cross-validation chose for `"xgboost"` and `"hybrid"`: `max_depth`,
    `min_child_weight`, `n_trees` and, for the hybrid, `residual` = 1 when it boosts the
    residual of IWPC 2009, 0 when it takes the mechanistic predictions as features only),
    `"excluded"` (patients not scored, by reason: `iwpc_excluded`) and `"predictions"` (a
    DataFrame: `id`, `row`, `fold`, `dose` and each model's out-of-fold prediction).
    """
    if folds < 2:
        raise ValueError(f"iwpc_cross_validation: folds must be >= 2, got {folds}.")
    data = cohort(csv_path)
    actual = data["dose"].to_numpy(dtype=float)
    fold_of = np.empty(len(data), dtype=int)
    oof = {name: np.full(len(data), np.nan) for name in MODELS}
    per_fold: list[dict[str, dict[str, float]]] = []
    choices: list[dict[str, dict[str, float]]] = []
    splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (fit_idx, test_idx) in enumerate(splitter.split(np.arange(len(data)))):
        fold_of[test_idx] = k
        predictions, chosen = _fit_predict(
            data.iloc[fit_idx].reset_index(drop=True),
            data.iloc[test_idx].reset_index(drop=True),
            seed=seed + k,
            n_jobs=n_jobs,
            grid=grid,
        )
        per_fold.append({n: _scores(actual[test_idx], p) for n, p in predictions.items()})
        choices.append(chosen)
        for name, pred in predictions.items():
            oof[name][test_idx] = pred
    mean = {
        name: {
            "mae": float(np.mean([f[name]["mae"] for f in per_fold])),
            "within20": float(np.mean([f[name]["within20"] for f in per_fold])),
            "r2": float(np.mean([f[name]["r2"] for f in per_fold])),
            "n": int(sum(f[name]["n"] for f in per_fold)),
        }
        for name in MODELS
    }
    sd = {
        name: {
            m: float(np.std([f[name][m] for f in per_fold], ddof=1))
            for m in ("mae", "within20", "r2")
        }
        for name in MODELS
    }
    table = data[["id", "row", "dose"]].assign(fold=fold_of, **oof)
    return {
        "mean": mean,
        "sd": sd,
        "pooled": {name: _scores(actual, oof[name]) for name in MODELS},
        "folds": per_fold,
        "choices": choices,
        "excluded": iwpc_excluded(csv_path),
        "predictions": table,
    }


# ----------------------------------------------------------------------------- internals


def _scores(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    m = dose_metrics(np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float))
    return {"mae": m["mae"], "within20": m["within20"], "r2": m["r2"], "n": m["n"]}


def _iwpc_design(data: pd.DataFrame) -> np.ndarray:
    """The 17 terms of the IWPC 2009 algorithm (without the intercept)."""
    vk = data["vkorc1"].tolist()
    cyp = [c if c in CYP2C9_CODES else None for c in data["cyp2c9"].tolist()]
    race = data["race"].tolist()
    norm = {"G/G": "GG", "A/G": "AG", "G/A": "AG", "A/A": "AA"}
    vk = [None if iwpc_missing(v) else norm.get(str(v), str(v)) for v in vk]
    cols = [
        data["age_decades"].to_numpy(dtype=float),
        data["height"].to_numpy(dtype=float),
        data["weight"].to_numpy(dtype=float),
        np.asarray([v == "AG" for v in vk], dtype=float),
        np.asarray([v == "AA" for v in vk], dtype=float),
        np.asarray([v is None for v in vk], dtype=float),
        *(
            np.asarray([CYP2C9_CODES.get(str(c)) == key for c in cyp], dtype=float)
            for key in ("12", "13", "22", "23", "33")
        ),
        np.asarray([c is None for c in cyp], dtype=float),
        np.asarray([r == "Asian" for r in race], dtype=float),
        np.asarray([r == "Black or African American" for r in race], dtype=float),
        np.asarray([iwpc_missing(r) or r == "Unknown" for r in race], dtype=float),
        data["enzyme_inducer"].to_numpy(dtype=float),
        data["amiodarone"].to_numpy(dtype=float),
    ]
    return np.column_stack(cols)


def _features(data: pd.DataFrame, *, mechanistic: bool) -> np.ndarray:
    names = list(CLINICAL_FEATURES)
    if mechanistic:
        names += list(MECHANISTIC_FEATURES)
    return data[names].to_numpy(dtype=float)


def _tune_and_fit(
    x: np.ndarray,
    y: np.ndarray,
    candidates: Sequence[tuple[Mapping[str, Any], np.ndarray | None]],
    *,
    seed: int,
    n_jobs: int,
) -> tuple[xgb.Booster, bool, dict[str, float]]:
    """Inner CV over (parameters, base margin or None); refit the best on all of x.

    Returns the booster, whether it uses the base margin, and the choice made."""
    inner = list(KFold(n_splits=_INNER_FOLDS, shuffle=True, random_state=seed).split(x))
    best: tuple[float, dict[str, Any], int, np.ndarray | None] | None = None
    for params, margin in candidates:
        dtrain = xgb.DMatrix(x, label=y, base_margin=margin, nthread=n_jobs)
        full = dict(_XGB_FIXED) | dict(params) | {"seed": seed, "nthread": n_jobs}
        history = xgb.cv(
            full,
            dtrain,
            num_boost_round=_MAX_ROUNDS,
            folds=inner,
            early_stopping_rounds=_EARLY_STOPPING,
            as_pandas=False,
            seed=seed,
        )
        assert isinstance(history, dict)
        errors = np.asarray(history["test-rmse-mean"])
        if best is None or errors[-1] < best[0]:
            best = (float(errors[-1]), full, len(errors), margin)
    assert best is not None
    _, params, rounds, margin = best
    dtrain = xgb.DMatrix(x, label=y, base_margin=margin, nthread=n_jobs)
    booster = xgb.train(params, dtrain, num_boost_round=rounds)
    choice = {
        "max_depth": float(params["max_depth"]),
        "min_child_weight": float(params["min_child_weight"]),
        "n_trees": float(rounds),
    }
    return booster, margin is not None, choice


def _fit_predict(
    train: pd.DataFrame,
    test: pd.DataFrame,
    *,
    seed: int,
    n_jobs: int,
    grid: Sequence[Mapping[str, float]],
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, float]]]:
    """Every model fitted on `train`, its predictions (mg/week) for `test`, and the
    hyperparameters the inner cross-validation chose."""
    y = np.sqrt(train["dose"].to_numpy(dtype=float))
    out: dict[str, np.ndarray] = {
        "iwpc_2009": test["iwpc_2009"].to_numpy(dtype=float),
        "iwpc_2009_imputed": test["iwpc_2009_imputed"].to_numpy(dtype=float),
    }

    linear = LinearRegression().fit(_iwpc_design(train), y)
    out["linear"] = np.clip(linear.predict(_iwpc_design(test)), 0.0, None) ** 2

    x_train, x_test = _features(train, mechanistic=False), _features(test, mechanistic=False)
    forest = RandomForestRegressor(
        n_estimators=500,
        max_features=1 / 3,
        min_samples_leaf=5,
        random_state=seed,
        n_jobs=n_jobs,
    ).fit(x_train, y)
    out["random_forest"] = np.clip(forest.predict(x_test), 0.0, None) ** 2

    booster, _, xgb_choice = _tune_and_fit(
        x_train, y, [(p, None) for p in grid], seed=seed, n_jobs=n_jobs
    )
    out["xgboost"] = np.clip(booster.predict(xgb.DMatrix(x_test, nthread=n_jobs)), 0.0, None) ** 2

    h_train, h_test = _features(train, mechanistic=True), _features(test, mechanistic=True)
    margin_train = np.sqrt(train["iwpc_2009_imputed"].to_numpy(dtype=float))
    margin_test = np.sqrt(test["iwpc_2009_imputed"].to_numpy(dtype=float))
    candidates = [(p, None) for p in grid] + [(p, margin_train) for p in grid]
    booster, uses_margin, hybrid_choice = _tune_and_fit(
        h_train, y, candidates, seed=seed, n_jobs=n_jobs
    )
    dtest = xgb.DMatrix(h_test, base_margin=margin_test if uses_margin else None, nthread=n_jobs)
    out["hybrid"] = np.clip(booster.predict(dtest), 0.0, None) ** 2
    hybrid_choice["residual"] = float(uses_margin)
    return out, {"xgboost": xgb_choice, "hybrid": hybrid_choice}
