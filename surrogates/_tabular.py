"""Tabular surrogates: XGBoost and the scikit-learn baselines.

Both take the static features followed by the flattened sequence (`Inputs.tabular()`).

- `XGBoostSurrogate`: gradient-boosted trees (Chen T, Guestrin C. XGBoost: a scalable tree
  boosting system. KDD 2016:785-794). Regression with one target also fits the 16th and 84th
  conditional quantiles (`reg:quantileerror`), whose half-distance is the model's spread
  (used to scale the conformal interval: conformalised quantile regression, Romano Y,
  Patterson E, Candes E. NeurIPS 2019). Missing features (NaN) are allowed: the trees learn
  where to send them.
- `SklearnSurrogate`: the baselines of the model comparisons: `"linear"` (ordinary least
  squares; logistic regression for classifiers), `"random_forest"` (Breiman L. Mach Learn
  2001;45:5-32; spread = standard deviation over the trees) and `"svm"` (support vector
  regression / classification with an RBF kernel, probabilities by Platt scaling: Platt J.
  Advances in Large Margin Classifiers 1999), each after standardising the features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._base import Inputs, Surrogate, Task


def _check_task(task: str) -> Task:
    if task not in ("regression", "classification"):
        raise ValueError(f"task must be 'regression' or 'classification', got {task!r}.")
    return task  # type: ignore[return-value]


class XGBoostSurrogate(Surrogate):
    """XGBoost on the tabular inputs; see the module docstring.

    `n_estimators`, `max_depth`, `learning_rate`, `subsample`, `colsample_bytree`,
    `min_child_weight` and `reg_lambda` are XGBoost's; `early_stopping_rounds` (with an
    internal 10% validation split of the training part) stops adding trees when the
    validation loss stops improving; `log_target` fits log(y) (positive exposures such as
    AUC = dose / CL become additive in logs) and predicts exp of it (the geometric mean);
    `n_jobs` threads (default 1: XGBoost's OpenMP threads slow down by orders of
    magnitude when the cores are oversubscribed, e.g. under `pytest -n 2`; raise it on an
    idle machine)."""

    allows_missing = True

    def __init__(
        self,
        task: Task = "regression",
        *,
        n_estimators: int = 600,
        max_depth: int = 6,
        learning_rate: float = 0.05,
        subsample: float = 0.9,
        colsample_bytree: float = 0.9,
        min_child_weight: float = 1.0,
        reg_lambda: float = 1.0,
        early_stopping_rounds: int | None = 30,
        quantiles: bool = True,
        log_target: bool = False,
        n_jobs: int = 1,
        calibration_fraction: float = 0.15,
        level: float = 0.9,
    ):
        super().__init__(calibration_fraction=calibration_fraction, level=level)
        self.task = _check_task(task)
        self.params = {
            "n_estimators": int(n_estimators),
            "max_depth": int(max_depth),
            "learning_rate": float(learning_rate),
            "subsample": float(subsample),
            "colsample_bytree": float(colsample_bytree),
            "min_child_weight": float(min_child_weight),
            "reg_lambda": float(reg_lambda),
        }
        self.early_stopping_rounds = early_stopping_rounds
        self.quantiles = bool(quantiles)
        self.log_target = bool(log_target)
        if self.log_target and self.task != "regression":
            raise ValueError("log_target applies to regression only.")
        self.n_jobs = int(n_jobs)
        self.model: Any = None
        self.quantile_model: Any = None

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "task": self.task,
            **self.params,
            "early_stopping_rounds": self.early_stopping_rounds,
            "quantiles": self.quantiles,
            "log_target": self.log_target,
            "n_jobs": self.n_jobs,
        }

    def _estimator(self, key: int, **extra):
        import xgboost as xgb

        kind = xgb.XGBClassifier if self.task == "classification" else xgb.XGBRegressor
        return kind(
            **self.params,
            tree_method="hist",
            random_state=key,
            n_jobs=self.n_jobs,
            early_stopping_rounds=self.early_stopping_rounds,
            **extra,
        )

    def _fit(self, inputs: Inputs, y: np.ndarray, *, key: int) -> None:
        x = inputs.tabular().to_numpy(dtype=float)
        if self.log_target:
            if not (y > 0).all():
                rows = np.flatnonzero((y <= 0).reshape(len(y), -1).any(axis=1))[:5].tolist()
                raise ValueError(f"{self.name}: log_target needs y > 0; rows {rows} are not.")
            y = np.log(y)
        rng = np.random.default_rng(key + 1)
        order = rng.permutation(len(x))
        n_val = max(int(0.1 * len(x)), 1) if self.early_stopping_rounds else 0
        val, fit = order[:n_val], order[n_val:]
        eval_set = [(x[val], y[val])] if n_val else None
        extra: dict[str, Any] = {}
        if self.task == "regression" and y.ndim == 2:
            extra["multi_strategy"] = "multi_output_tree"
        self.model = self._estimator(key, **extra)
        self.model.fit(x[fit], y[fit], eval_set=eval_set, verbose=False)
        self.quantile_model = None
        if self.task == "regression" and y.ndim == 1 and self.quantiles:
            # As many trees as the mean model kept (no second early stopping).
            trees = getattr(self.model, "best_iteration", None)
            trees = self.params["n_estimators"] if trees is None else int(trees) + 1
            self.quantile_model = self._estimator(
                key, objective="reg:quantileerror", quantile_alpha=np.array([0.16, 0.84])
            )
            self.quantile_model.set_params(n_estimators=trees, early_stopping_rounds=None)
            self.quantile_model.fit(x[fit], y[fit], verbose=False)

    def _predict(self, inputs: Inputs) -> tuple[np.ndarray, np.ndarray | None]:
        x = inputs.tabular().to_numpy(dtype=float)
        if self.task == "classification":
            return self.model.predict_proba(x)[:, 1], None
        back = np.exp if self.log_target else (lambda v: v)
        mean = back(np.asarray(self.model.predict(x), dtype=float))
        if self.quantile_model is None:
            return mean, None
        q = back(np.asarray(self.quantile_model.predict(x), dtype=float))
        return mean, np.maximum(0.5 * np.abs(q[:, 1] - q[:, 0]), 1e-12)

    def _save_model(self, folder: Path) -> None:
        self.model.save_model(folder / "xgboost.ubj")
        if self.quantile_model is not None:
            self.quantile_model.save_model(folder / "xgboost_quantiles.ubj")
        elif (folder / "xgboost_quantiles.ubj").exists():
            (folder / "xgboost_quantiles.ubj").unlink()

    def _load_model(self, folder: Path) -> None:
        self.model = self._estimator(0)
        self.model.load_model(folder / "xgboost.ubj")
        self.quantile_model = None
        if (folder / "xgboost_quantiles.ubj").exists():
            self.quantile_model = self._estimator(0, objective="reg:quantileerror")
            self.quantile_model.load_model(folder / "xgboost_quantiles.ubj")

    @property
    def booster(self):
        """The fitted `xgboost.Booster` (for SHAP's TreeExplainer)."""
        return self.model.get_booster()


Baseline = Literal["linear", "random_forest", "svm"]


class SklearnSurrogate(Surrogate):
    """A scikit-learn baseline (`kind`: `"linear"`, `"random_forest"`, `"svm"`); see the
    module docstring. Saved with skops (`sklearn.skops`), which reads back only reviewed
    types and runs no code."""

    def __init__(
        self,
        kind: Baseline = "linear",
        task: Task = "regression",
        *,
        n_estimators: int = 300,
        min_samples_leaf: int = 2,
        c: float = 1.0,
        n_jobs: int = 1,
        calibration_fraction: float = 0.15,
        level: float = 0.9,
    ):
        super().__init__(calibration_fraction=calibration_fraction, level=level)
        if kind not in ("linear", "random_forest", "svm"):
            raise ValueError(f"kind must be 'linear', 'random_forest' or 'svm', got {kind!r}.")
        self.kind = kind
        self.task = _check_task(task)
        self.n_estimators = int(n_estimators)
        self.min_samples_leaf = int(min_samples_leaf)
        self.c = float(c)
        self.n_jobs = int(n_jobs)
        self.model: Any = None

    @property
    def name(self) -> str:
        return f"SklearnSurrogate[{self.kind}]"

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "task": self.task,
            "n_estimators": self.n_estimators,
            "min_samples_leaf": self.min_samples_leaf,
            "c": self.c,
            "n_jobs": self.n_jobs,
        }

    def _estimator(self, key: int):
        from sklearn import ensemble, linear_model, svm
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        classify = self.task == "classification"
        if self.kind == "linear":
            core = (
                linear_model.LogisticRegression(max_iter=2000)
                if classify
                else linear_model.LinearRegression()
            )
        elif self.kind == "random_forest":
            kind = ensemble.RandomForestClassifier if classify else ensemble.RandomForestRegressor
            core = kind(
                n_estimators=self.n_estimators,
                min_samples_leaf=self.min_samples_leaf,
                random_state=key,
                n_jobs=self.n_jobs,
            )
        else:
            from sklearn.calibration import CalibratedClassifierCV

            core = (
                CalibratedClassifierCV(
                    svm.SVC(C=self.c),
                    method="sigmoid",
                    ensemble=False,  # type: ignore[arg-type]  # bool since scikit-learn 1.6
                )
                if classify
                else svm.SVR(C=self.c)
            )
        return make_pipeline(StandardScaler(), core)

    def _fit(self, inputs: Inputs, y: np.ndarray, *, key: int) -> None:
        x = inputs.tabular().to_numpy(dtype=float)
        self.model = self._estimator(key)
        if self.kind == "svm" and self.task == "regression":
            # SVR has one output and an epsilon in the target's units: fit the standardised
            # target, one model per output.
            self._y_mean = y.mean(axis=0)
            self._y_sd = np.where(y.std(axis=0) > 0, y.std(axis=0), 1.0)
            z = (y - self._y_mean) / self._y_sd
            if y.ndim == 2:
                from sklearn.multioutput import MultiOutputRegressor

                self.model = MultiOutputRegressor(self.model)
            self.model.fit(x, z)
            return
        self.model.fit(x, y)
        if self.kind == "random_forest":
            # Threads sum the trees in any order: predict on one for bit-identical results.
            self.model[-1].set_params(n_jobs=1)

    def _predict(self, inputs: Inputs) -> tuple[np.ndarray, np.ndarray | None]:
        x = inputs.tabular().to_numpy(dtype=float)
        if self.task == "classification":
            return self.model.predict_proba(x)[:, 1], None
        if self.kind == "svm":
            return self.model.predict(x) * self._y_sd + self._y_mean, None
        mean = np.asarray(self.model.predict(x), dtype=float)
        if self.kind == "random_forest":
            forest = self.model[-1]
            xs = self.model[:-1].transform(x)
            per_tree = np.stack([t.predict(xs) for t in forest.estimators_])
            return mean, np.maximum(per_tree.std(axis=0), 1e-12)
        return mean, None

    def _save_model(self, folder: Path) -> None:
        import skops.io

        state: dict[str, Any] = {"model": self.model}
        if self.kind == "svm" and self.task == "regression":
            state.update(y_mean=np.asarray(self._y_mean), y_sd=np.asarray(self._y_sd))
        skops.io.dump(state, folder / _SKOPS_FILE)

    def _load_model(self, folder: Path) -> None:
        import skops.io
        from sklearn.multioutput import MultiOutputRegressor
        from sklearn.pipeline import Pipeline

        path = folder / _SKOPS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; the saved {self.name} is incomplete.")
        allowed = _TRUSTED.get(self.kind, ())
        try:
            found = skops.io.get_untrusted_types(file=path)
        except Exception as error:  # zipfile, JSON and schema errors of a foreign file
            raise ValueError(
                f"{path}: not a skops file ({type(error).__name__}: {error}); refusing to load it."
            ) from error
        untrusted = [t for t in found if t not in allowed]
        if untrusted:
            raise ValueError(
                f"{path}: holds types that a saved {self.name} never holds ({untrusted}); "
                "refusing to load it."
            )
        try:
            state = skops.io.load(path, trusted=list(allowed))
        except Exception as error:
            raise ValueError(
                f"{path}: skops could not read it ({type(error).__name__}: {error}); refusing "
                "to load it."
            ) from error
        model = state.get("model") if isinstance(state, dict) else None
        if not isinstance(model, Pipeline | MultiOutputRegressor):
            raise ValueError(f"{path}: does not hold a {self.name} model.")
        if self.kind == "random_forest":
            if not isinstance(model, Pipeline):
                raise ValueError(f"{path}: does not hold a {self.name} model.")
            _check_forest(model[-1], path)
        self.model = model
        if "y_mean" in state:
            self._y_mean = np.asarray(state["y_mean"], dtype=float)
            self._y_sd = np.asarray(state["y_sd"], dtype=float)


_SKOPS_FILE = "sklearn.skops"

#: Types beyond skops' default trusted set that each baseline's file holds, reviewed:
#: - `Tree`: the node arrays of a fitted tree. skops does not trust it because scikit-learn
#:   indexes its child and feature arrays without bounds checks; `_check_forest` checks
#:   every index before the model is used.
#: - `_CalibratedClassifier`, `_SigmoidCalibration`: Platt scaling's two numbers and the
#:   classifier they wrap (the SVM classifier).
_TRUSTED: dict[str, tuple[str, ...]] = {
    "random_forest": ("sklearn.tree._tree.Tree",),
    "svm": ("sklearn.calibration._CalibratedClassifier", "sklearn.calibration._SigmoidCalibration"),
}


def _check_forest(forest: Any, path: Path) -> None:
    """Refuse a forest whose trees index outside their own arrays (a crafted file would
    make scikit-learn read out of bounds): every internal node's children come after it
    and exist, its feature is one of the model's, and leaves have no children."""
    n_features = int(forest.n_features_in_)
    for i, estimator in enumerate(forest.estimators_):
        tree = estimator.tree_
        n = int(tree.node_count)
        left = np.asarray(tree.children_left)
        right = np.asarray(tree.children_right)
        feature = np.asarray(tree.feature)
        node = np.arange(n)
        leaf = left == -1
        ok = (
            left.shape == right.shape == feature.shape == (n,)
            and n >= 1
            and bool(np.all(right[leaf] == -1))
            and bool(np.all((left[~leaf] > node[~leaf]) & (left[~leaf] < n)))
            and bool(np.all((right[~leaf] > node[~leaf]) & (right[~leaf] < n)))
            and bool(np.all((feature[~leaf] >= 0) & (feature[~leaf] < n_features)))
            and bool(np.all(np.isfinite(np.asarray(tree.threshold)[~leaf])))
            and np.asarray(tree.value).shape[0] == n
        )
        if not ok:
            raise ValueError(
                f"{path}: tree {i} of the random forest has node indices outside its arrays; "
                "the file is damaged or crafted. Refusing to load it."
            )
