"""Explanations of surrogate predictions: SHAP values, LIME, their plots, and a per-patient
section for the twin's report.

- `explain(surrogate, inputs, ...) -> Explanation`: SHAP values (Lundberg SM, Lee S-I. A
  unified approach to interpreting model predictions. NeurIPS 2017): per patient and
  feature, the feature's contribution to the prediction, such that the base value plus the
  sum of the contributions is the prediction (additivity, checked by
  `Explanation.additivity`). Two routes:
  - **tree** (`XGBoostSurrogate`, `SklearnSurrogate("random_forest")`): `shap.TreeExplainer`,
    exact and fast (Lundberg SM et al. From local explanations to global understanding with
    explainable AI for trees. Nat Mach Intell 2020;2:56-67), path-dependent without a
    background, interventional with one. It explains the trees' own output, which is the
    prediction for plain regression and random forests, log(prediction) for XGBoost with
    `log_target=True`, and the log-odds for XGBoost classifiers: `Explanation.output_scale`
    says which.
  - **model-agnostic** (every other surrogate, the Flax sequence models included, or any
    surrogate with `method="permutation"` / `"kernel"`): the explained features are the
    columns of `inputs.tabular()` (static features, then the sequence flattened as
    `<channel>@<time>h`); the prediction function rebuilds `Inputs` from such a table and
    calls `surrogate.predict`, so any surrogate works. `"permutation"`:
    `shap.PermutationExplainer` (antithetic permutations; additive exactly) with an
    independent masker over `background` rows; `"kernel"`: Kernel SHAP
    (`shap.KernelExplainer`) over a k-means summary of `background`. Output on the scale the
    user sees: the prediction, or the probability of class 1 for classifiers.
- `lime_explain(...)`: a local linear surrogate around one patient (Ribeiro MT, Singh S,
  Guestrin C. "Why should I trust you?" Explaining the predictions of any classifier. KDD
  2016:1135-1144) with `lime.lime_tabular.LimeTabularExplainer`.
- `summary_plot`, `waterfall_plot`: matplotlib figures (not registered with pyplot);
  `Explanation.to_shap()` gives a `shap.Explanation` for shap's own plots.
- `explanation_section(...)`: an HTML fragment (waterfall, top features, LIME, and a
  warning when the patient lies outside the training ranges) for
  `twins.write_twin_report(twin, path, sections=[...])`; `patient_inputs(trial, patients,
  ...)`: a patient's features as a training set of that trial has them.

The `Explanation` class is in `surrogates._explanation`, the plots in
`surrogates._explain_plots` (both re-exported here).

Randomness (permutations, k-means, LIME's samples) comes from the integer `key`; the same
key gives the same numbers. shap's permutation and kernel explainers draw from NumPy's
global generator: it is seeded with `key` for the call and restored afterwards.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from ._base import ExtrapolationWarning, Inputs, Surrogate, as_inputs
from ._explain_plots import short_number
from ._explain_plots import summary_plot as summary_plot
from ._explain_plots import waterfall_plot as waterfall_plot
from ._explanation import SCALES as SCALES
from ._explanation import Explanation as Explanation
from ._explanation import check_row, import_shap
from ._tabular import SklearnSurrogate, XGBoostSurrogate

if TYPE_CHECKING:
    from twins import Trial

Method = Literal["auto", "tree", "permutation", "kernel"]


@contextlib.contextmanager
def _global_numpy_seed(key: int) -> Iterator[None]:
    """Seed NumPy's global generator (which shap's permutation and kernel explainers use)
    for the block, and restore its previous state afterwards."""
    state = np.random.get_state()  # noqa: NPY002 (shap draws from the global generator)
    np.random.seed(key)  # noqa: NPY002
    try:
        yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


def _check_key(key: Any, who: str) -> int:
    if isinstance(key, bool) or not isinstance(key, int | np.integer) or not 0 <= key < 2**32:
        raise ValueError(f"{who}: key must be an integer in [0, 2**32), got {key!r}.")
    return int(key)


# ----------------------------------------------------------------------------- inputs


def _require_fitted(surrogate: Any, who: str) -> Surrogate:
    if not isinstance(surrogate, Surrogate):
        raise TypeError(f"{who}: expected a fitted surrogates.Surrogate, got {surrogate!r}.")
    if not surrogate.fitted:
        raise RuntimeError(f"{who}: {surrogate.name} is not fitted; call fit first.")
    return surrogate


def _conformed(surrogate: Surrogate, x: Any, who: str, what: str) -> Inputs:
    """`x` as an `Inputs` with the surrogate's features in its order, checked."""
    try:
        inputs = as_inputs(x)
    except TypeError as err:
        raise TypeError(f"{who}: {what}: {err}") from None
    missing = [f for f in surrogate.features if f not in inputs.static.columns]
    if missing:
        raise ValueError(
            f"{who}: {what} lack the features {missing} that {surrogate.name} was trained on "
            f"(given: {list(inputs.static.columns)})."
        )
    if len(inputs) == 0:
        raise ValueError(f"{who}: {what} have no rows.")
    return surrogate._conform(inputs, f"{who} ({what})")


def _flat_names(surrogate: Surrogate, inputs: Inputs) -> tuple[str, ...]:
    return tuple(str(c) for c in inputs.tabular().columns)


def _rebuild(
    table: np.ndarray,
    names: Sequence[str],
    n_static: int,
    channels: tuple[str, ...],
    times: np.ndarray | None,
) -> Inputs:
    """`Inputs` from rows of a flattened table (static columns, then `<channel>@<time>h`
    time-major, as `Inputs.tabular` writes them)."""
    table = np.asarray(table, dtype=float).reshape(-1, len(names))
    static = pd.DataFrame(table[:, :n_static], columns=list(names[:n_static]))
    if times is None:
        return Inputs(static)
    seq = table[:, n_static:].reshape(len(table), len(times), len(channels))
    return Inputs(static, seq, channels, times)


def _prediction_function(surrogate: Surrogate, template: Inputs, output: int | None):
    """`f(table (m, p)) -> (m,)`: the surrogate's prediction (class-1 probability for
    classifiers) of rows of the flattened table, output `output` for multi-output ones."""
    names = _flat_names(surrogate, template)
    n_static = template.static.shape[1]

    def f(table: np.ndarray) -> np.ndarray:
        inputs = _rebuild(table, names, n_static, template.channels, template.times)
        # Masked rows mix the patient's values with background values: combinations can
        # fall outside the training ranges by construction; the explained patients
        # themselves are checked (and warned about) once, in `explain`.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExtrapolationWarning)
            mean = np.asarray(surrogate.predict(inputs).mean, dtype=float)
        return mean if output is None else mean[:, output]

    return f


def _background(
    surrogate: Surrogate, background: Any, n_max: int | None, key: int, who: str
) -> np.ndarray:
    """The background as rows of the flattened table (at most `n_max`, drawn with `key`)."""
    inputs = _conformed(surrogate, background, who, "the background")
    table = inputs.tabular().to_numpy(dtype=float)
    if n_max is not None and len(table) > n_max:
        index = np.random.default_rng(key).choice(len(table), n_max, replace=False)
        table = table[np.sort(index)]
    return table


def _output_index(surrogate: Surrogate, output: int | None, who: str) -> int | None:
    shape = tuple(surrogate.output_shape)
    if shape == ():
        if output not in (None, 0):
            raise ValueError(f"{who}: {surrogate.name} has one output; got output={output!r}.")
        return None
    h = int(np.prod(shape))
    if output is None:
        raise ValueError(
            f"{who}: {surrogate.name} predicts {h} outputs (a trajectory); explain one at a "
            f"time with output=<index in [0, {h})>."
        )
    if isinstance(output, bool) or not isinstance(output, int | np.integer) or not 0 <= output < h:
        raise ValueError(f"{who}: output must be an integer in [0, {h}), got {output!r}.")
    return int(output)


def _tree_capable(surrogate: Surrogate, output: int | None) -> bool:
    if isinstance(surrogate, XGBoostSurrogate):
        return output is None  # multi-output trees (vector leaves): model-agnostic route
    return isinstance(surrogate, SklearnSurrogate) and surrogate.kind == "random_forest"


# ----------------------------------------------------------------------------- explain


def explain(
    surrogate: Surrogate,
    inputs: Inputs | pd.DataFrame,
    *,
    background: Inputs | pd.DataFrame | None = None,
    method: Method = "auto",
    output: int | None = None,
    max_evals: int | None = None,
    n_background: int = 100,
    key: int = 0,
) -> Explanation:
    """SHAP values of a surrogate's predictions for `inputs`.

    **Arguments:**

    - `surrogate`: a fitted `Surrogate`.
    - `inputs`: the patients to explain (`Inputs`, or a DataFrame of static features); they
      must have every feature the surrogate was trained on (extra columns are ignored).
    - `background`: patients standing for "feature unknown" (typically training patients):
      needed by the model-agnostic methods; for trees it switches from the path-dependent
      to the interventional algorithm. At most `n_background` rows are used (drawn with
      `key`); for `"kernel"`, a k-means summary of that many.
    - `method`: `"auto"` (trees for XGBoost and random forests, `"permutation"` for every
      other surrogate and for multi-output XGBoost), `"tree"`, `"permutation"` or
      `"kernel"`.
    - `output`: the output index to explain for multi-output (trajectory) surrogates.
    - `max_evals`: model evaluations per patient for `"permutation"` (default 10
      antithetic permutations: `10 * (2 p + 1)`; at least `2 p + 1`) and `"kernel"`
      (its `nsamples`; default shap's `2 p + 2048`). Each evaluation predicts every
      background row.
    - `key`: integer seed (background draw, permutations, k-means).

    **Returns:** an `Explanation`. Its `output_scale`: on the tree route the trees' own
    output (the prediction; log(prediction) for XGBoost with `log_target`; log-odds for XGBoost
    classifiers; probability for random-forest classifiers); on the model-agnostic routes the
    prediction as `predict` returns it (class-1 probability for classifiers). Use
    `method="permutation"` to explain a log-target or classifier XGBoost on the prediction's
    own scale.

    Warns `ExtrapolationWarning` when explained patients lie outside the training ranges
    (the flags are kept in the explanation). Raises `ValueError` naming the missing
    features, a missing background, or a bad `output`.

    References: Lundberg SM, Lee S-I. NeurIPS 2017 (SHAP, Kernel SHAP); Lundberg SM et al.
    Nat Mach Intell 2020;2:56-67 (TreeExplainer); Strumbelj E, Kononenko I. Knowl Inf Syst
    2014;41:647-665 (permutation sampling of Shapley values).
    """
    who = "explain"
    surrogate = _require_fitted(surrogate, who)
    key = _check_key(key, who)
    if method not in ("auto", "tree", "permutation", "kernel"):
        raise ValueError(
            f"{who}: method must be 'auto', 'tree', 'permutation' or 'kernel', got {method!r}."
        )
    if not (isinstance(n_background, int) and n_background >= 1):
        raise ValueError(f"{who}: n_background must be an integer >= 1, got {n_background!r}.")
    x = _conformed(surrogate, inputs, who, "the inputs")
    out = _output_index(surrogate, output, who)
    names = _flat_names(surrogate, x)
    table = x.tabular().to_numpy(dtype=float)
    prediction = surrogate.predict(x)  # warns for patients outside the training ranges
    mean = np.asarray(prediction.mean, dtype=float)
    mean = mean if out is None else mean.reshape(len(x), -1)[:, out]
    tree = _tree_capable(surrogate, out)
    if method == "tree" and not tree:
        raise ValueError(
            f"{who}: method='tree' needs an XGBoost surrogate with one output or a random "
            f"forest; {surrogate.name} is neither. Use 'permutation' or 'kernel'."
        )
    chosen = ("tree" if tree else "permutation") if method == "auto" else method
    bg = None
    if background is not None:
        bg = _background(surrogate, background, n_background, key, who)
    common = dict(
        data=table,
        feature_names=names,
        surrogate=surrogate.name,
        output=out,
        out_of_range=np.asarray(prediction.out_of_range, dtype=bool),
        reasons=tuple(prediction.reasons),
    )
    if chosen == "tree":
        values, base, scale, label = _tree_values(surrogate, table, bg, out)
        shown = mean
        if scale == "log(prediction)":
            shown = np.log(mean)
        elif scale == "log-odds":
            p = np.clip(mean, 1e-300, 1.0)
            shown = np.log(p) - np.log1p(-np.minimum(p, 1.0 - 1e-16))
        return Explanation(
            values=values,
            base_values=base,
            prediction=shown,
            output_scale=scale,
            method=label,
            **common,  # type: ignore[arg-type]
        )
    if bg is None:
        raise ValueError(
            f"{who}: method {chosen!r} ({surrogate.name}) needs a background: patients whose "
            "values stand for an unknown feature, e.g. background=training_inputs "
            f"(up to n_background={n_background} rows are used)."
        )
    f = _prediction_function(surrogate, x, out)
    p = len(names)
    scale = "probability" if surrogate.task == "classification" else "prediction"
    if chosen == "permutation":
        evals = 10 * (2 * p + 1) if max_evals is None else int(max_evals)
        if evals < 2 * p + 1:
            raise ValueError(
                f"{who}: max_evals must be at least 2 p + 1 = {2 * p + 1} for {p} features "
                f"(one antithetic permutation), got {max_evals}."
            )
        values, base = _permutation_values(f, table, bg, evals, key)
    else:
        values, base = _kernel_values(f, table, bg, max_evals, key)
    return Explanation(
        values=values,
        base_values=base,
        prediction=mean,
        output_scale=scale,
        method=chosen,
        **common,  # type: ignore[arg-type]
    )


def _tree_values(
    surrogate: Surrogate, table: np.ndarray, bg: np.ndarray | None, out: int | None
) -> tuple[np.ndarray, np.ndarray, str, str]:
    shap = import_shap()
    n = len(table)
    label = "tree (path-dependent)" if bg is None else "tree (interventional)"
    if isinstance(surrogate, XGBoostSurrogate):
        model, x, data = surrogate.model, table, bg
        if surrogate.task == "classification":
            scale = "log-odds"
        else:
            scale = "log(prediction)" if surrogate.log_target else "prediction"
    else:
        assert isinstance(surrogate, SklearnSurrogate)
        # The forest sees standardised features: a one-to-one map per feature, which leaves
        # every feature's Shapley value unchanged; `data` keeps the original values.
        prep = surrogate.model[:-1]
        model = surrogate.model[-1]
        x = prep.transform(table)
        data = None if bg is None else prep.transform(bg)
        scale = "probability" if surrogate.task == "classification" else "prediction"
    if data is None:
        explainer = shap.TreeExplainer(model, feature_perturbation="tree_path_dependent")
    else:
        explainer = shap.TreeExplainer(model, data=data, feature_perturbation="interventional")
    result = explainer(x, check_additivity=False)
    values = np.asarray(result.values, dtype=float)
    base = np.asarray(result.base_values, dtype=float)
    if values.ndim == 3:  # classes (random-forest classifier) or outputs (multi-output)
        j = 1 if surrogate.task == "classification" else (0 if out is None else out)
        values = values[:, :, j]
        base = base.reshape(n, -1)[:, j]
    base = np.broadcast_to(base.reshape(-1), (n,)).copy() if base.size in (1, n) else base
    return values, base, scale, label


def _permutation_values(
    f, table: np.ndarray, bg: np.ndarray, max_evals: int, key: int
) -> tuple[np.ndarray, np.ndarray]:
    shap = import_shap()
    masker = shap.maskers.Independent(bg, max_samples=len(bg))
    with _global_numpy_seed(key):
        explainer = shap.PermutationExplainer(f, masker, seed=key)
        result = explainer(table, max_evals=max_evals, silent=True)
    values = np.asarray(result.values, dtype=float)
    base = np.asarray(result.base_values, dtype=float).reshape(len(table))
    return values, base


def _kernel_values(
    f, table: np.ndarray, bg: np.ndarray, max_evals: int | None, key: int
) -> tuple[np.ndarray, np.ndarray]:
    shap = import_shap()
    k = min(len(bg), 20)
    with _global_numpy_seed(key):
        summary = shap.kmeans(bg, k) if k < len(bg) else bg
        explainer = shap.KernelExplainer(f, summary)
        values = explainer.shap_values(
            table, nsamples="auto" if max_evals is None else int(max_evals), silent=True
        )
    values = np.asarray(values, dtype=float).reshape(table.shape)
    base = np.full(len(table), float(np.asarray(explainer.expected_value).reshape(-1)[0]))
    return values, base


# ----------------------------------------------------------------------------- LIME


def lime_explain(
    surrogate: Surrogate,
    inputs: Inputs | pd.DataFrame,
    row: int = 0,
    *,
    background: Inputs | pd.DataFrame,
    num_features: int = 10,
    num_samples: int = 2000,
    output: int | None = None,
    key: int = 0,
) -> pd.DataFrame:
    """LIME for one patient: a weighted linear model fitted to the surrogate's predictions
    on samples around the patient, over discretised features (quartiles; 0/1 features as
    categories).

    **Arguments:**

    - `surrogate`, `inputs`, `row`: the patient `row` of `inputs`.
    - `background`: patients giving the features' distributions (quartiles, sampling);
      typically training patients (at most 5,000 rows are used, drawn with `key`).
    - `num_features`: features in the local model; `num_samples`: perturbed samples.
    - `output`: the output index for multi-output surrogates.
    - `key`: integer seed; the same key gives the same table.

    **Returns:** a DataFrame, one row per feature of the local model, largest |weight|
    first: `feature`, `condition` (LIME's description, e.g. `"AGE > 76.5"`), `value` (the
    patient's), `weight` (the local model's coefficient: the change in the prediction, or
    the class-1 probability, when the condition holds). `attrs` holds `intercept`,
    `local_prediction`, `prediction` and `score` (R^2 of the local model).

    References: Ribeiro MT, Singh S, Guestrin C. KDD 2016:1135-1144.
    """
    who = "lime_explain"
    surrogate = _require_fitted(surrogate, who)
    key = _check_key(key, who)
    if not (isinstance(num_features, int) and num_features >= 1):
        raise ValueError(f"{who}: num_features must be an integer >= 1, got {num_features!r}.")
    x = _conformed(surrogate, inputs, who, "the inputs")
    row = check_row(row, len(x), who)
    out = _output_index(surrogate, output, who)
    names = _flat_names(surrogate, x)
    table = x.tabular().to_numpy(dtype=float)
    bg = _background(surrogate, background, 5000, key, who)
    if np.isnan(table[row]).any() or np.isnan(bg).any():
        where = "the patient" if np.isnan(table[row]).any() else "the background"
        raise ValueError(f"{who}: LIME needs complete features; {where} has missing values.")
    f = _prediction_function(surrogate, x, out)
    classify = surrogate.task == "classification"

    def predict_fn(rows: np.ndarray) -> np.ndarray:
        p = f(rows)
        return np.column_stack([1.0 - p, p]) if classify else p

    from lime.lime_tabular import LimeTabularExplainer

    categorical = [j for j in range(bg.shape[1]) if np.isin(bg[:, j], (0.0, 1.0)).all()]
    explainer = LimeTabularExplainer(
        bg,
        mode="classification" if classify else "regression",
        feature_names=list(names),
        categorical_features=categorical,
        discretize_continuous=True,
        random_state=key,
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        # Quartile bins of a constant feature have zero width: LIME's truncated-normal
        # sampling then divides by zero for that feature alone (it keeps its one value).
        exp = explainer.explain_instance(
            table[row],
            predict_fn,
            labels=(1,),
            num_features=min(num_features, len(names)),
            num_samples=num_samples,
        )
    pairs = exp.as_list(label=1)
    index = [j for j, _ in exp.as_map()[1]]
    frame = pd.DataFrame(
        {
            "feature": [names[j] for j in index],
            "condition": [c for c, _ in pairs],
            "value": [table[row, j] for j in index],
            "weight": [float(w) for _, w in pairs],
        }
    )
    frame.attrs.update(
        intercept=float(np.asarray(exp.intercept[1])),
        local_prediction=float(np.asarray(exp.local_pred).reshape(-1)[0]),
        prediction=float(f(table[row : row + 1])[0]),
        score=float(exp.score),
    )
    return frame


# ----------------------------------------------------------------------------- report


def patient_inputs(
    trial: Trial,
    patients: Any,
    *,
    arm: str | None = None,
    medications: Iterable[str] = (),
    features: Sequence[str] | None = None,
) -> Inputs:
    """Patients' static features as `surrogates.training_set(trial, ..., arm=arm)` builds
    them (covariates, genotype indicators, medication flags, ancestry, the arm's initial
    doses), for a surrogate trained on that trial.

    **Arguments:**

    - `trial`: the `twins.Trial`; `arm`: its arm (default the first).
    - `patients`: a `twins.Patient`, several, or a `twins.Population`.
    - `medications`: medication names to report as 0/1 flags for every patient (those the
      trial's population samples, e.g. `("amiodarone",)`; a `Patient`'s medication set is
      taken to be complete).
    - `features`: the features to return, in order (e.g. `surrogate.features`); ancestry
      indicators of groups absent here are 0. Default: every feature computed.

    Raises `ValueError` naming the features that cannot be computed for these patients
    (a genotype or lab they lack).
    """
    from twins import Patient, Population

    from ._data import static_features

    who = "patient_inputs"
    if isinstance(patients, Population):
        pop = patients
    else:
        items = [patients] if isinstance(patients, Patient) else list(patients)
        pop = Population.from_patients(items)
    names = [a.name for a in trial.arms]
    arm_name = names[0] if arm is None else arm
    if arm_name not in names:
        raise ValueError(f"{who}: arm {arm_name!r} is not one of the trial's {names}.")
    cov = pop.covariates(medications=tuple(medications))
    state = trial.arms[names.index(arm_name)].start(cov)
    static = static_features(trial, pop, cov, state)
    if features is None:
        static = static.loc[:, static.notna().any()]
        return Inputs(static.reset_index(drop=True))
    missing = [f for f in features if f not in static.columns and not f.startswith("ancestry_")]
    if missing:
        raise ValueError(
            f"{who}: cannot compute the features {missing} for patients "
            f"{list(pop.ids)[:5]} (computed: {list(static.columns)}); a medication flag "
            "needs medications=(...), a genotype indicator the patient's genotype."
        )
    for f in features:
        if f not in static.columns:
            static[f] = 0.0
    return Inputs(pd.DataFrame(static[list(features)]).reset_index(drop=True))


def explanation_section(
    surrogate: Surrogate,
    patient_inputs: Inputs | pd.DataFrame,
    *,
    background: Inputs | pd.DataFrame,
    title: str = "Surrogate explanation",
    row: int = 0,
    method: Method = "auto",
    output: int | None = None,
    num_features: int = 10,
    target: str | None = None,
    key: int = 0,
) -> tuple[str, str]:
    """A per-patient explanation as a `(title, html)` section for the twin's report
    (`twins.write_twin_report(twin, path, sections=[...])`): the surrogate's prediction and
    interval, a SHAP waterfall plot (embedded PNG), the top features by |SHAP|, the LIME
    table, and a warning when the patient's inputs lie outside the surrogate's training
    ranges.

    **Arguments:** `surrogate`; `patient_inputs` (the patient at `row`); `background`
    (training patients; also used by LIME); `method`, `output`, `key` as in `explain`;
    `num_features`: rows of the tables; `target`: what the surrogate predicts, for the text
    (e.g. `"mean weekly dose, weeks 9-12 (mg/week)"`).
    """
    from twins._html import escape, fmt_number, html_table, png_img

    who = "explanation_section"
    surrogate = _require_fitted(surrogate, who)
    x = _conformed(surrogate, patient_inputs, who, "the patient inputs")
    row = check_row(row, len(x), who)
    one = x.take([row])
    with warnings.catch_warnings():
        # Shown in the section itself (below), rather than as a Python warning.
        warnings.simplefilter("ignore", ExtrapolationWarning)
        pred = surrogate.predict(one)
        exp = explain(surrogate, one, background=background, method=method, output=output, key=key)
        lime = lime_explain(
            surrogate,
            one,
            0,
            background=background,
            num_features=num_features,
            output=output,
            key=key,
        )
    out = exp.output
    mean = np.asarray(pred.mean, dtype=float).reshape(1, -1)[0, 0 if out is None else out]
    parts: list[str] = []
    if pred.out_of_range[0]:
        parts.append(
            '<div class="warning">This patient lies outside the surrogate\'s training ranges: '
            f"{escape(pred.reasons[0])}. The prediction and its explanation are "
            "extrapolations.</div>"
        )
    what = f" of {escape(target)}" if target else ""
    interval = ""
    if pred.lower is not None and pred.upper is not None:
        lo = np.asarray(pred.lower, dtype=float).reshape(1, -1)[0, 0 if out is None else out]
        hi = np.asarray(pred.upper, dtype=float).reshape(1, -1)[0, 0 if out is None else out]
        interval = (
            f" ({round(100 * pred.level)}% conformal interval {fmt_number(lo)} to {fmt_number(hi)})"
        )
    kind = "probability" if surrogate.task == "classification" else "prediction"
    parts.append(
        f"<p>{escape(surrogate.name)}'s {kind}{what}: <b>{fmt_number(mean)}</b>{interval}"
        + (f"; output {out}" if out is not None else "")
        + ".</p>"
    )
    parts.append(
        f'<p class="note">SHAP values (method: {escape(exp.method)}) on the '
        f"{escape(exp.output_scale)} scale: base "
        f"value {fmt_number(exp.base_values[0])} plus the contributions below gives "
        f"{fmt_number(exp.prediction[0])}. Contributions describe the surrogate, which imitates "
        "the mechanistic simulations it was trained on; they are not causal effects.</p>"
    )
    fig = waterfall_plot(exp, 0, max_display=min(num_features + 1, len(exp.feature_names)))
    parts.append(png_img(fig))
    contrib = exp.contributions(0).iloc[:num_features]
    parts.append("<h4>Top features by |SHAP|</h4>")
    parts.append(
        html_table(
            ["Feature", "Value", f"SHAP ({escape(exp.output_scale)})"],
            [
                [escape(f), escape(short_number(v)), escape(f"{s:+.4g}")]
                for f, v, s in zip(
                    contrib["feature"], contrib["value"], contrib["shap"], strict=True
                )
            ],
            [False, True, True],
        )
    )
    parts.append("<h4>LIME (local linear model)</h4>")
    parts.append(
        html_table(
            ["Condition", "Value", "Weight"],
            [
                [escape(c), escape(short_number(v)), escape(f"{w:+.4g}")]
                for c, v, w in zip(lime["condition"], lime["value"], lime["weight"], strict=True)
            ],
            [False, True, True],
        )
    )
    parts.append(
        f'<p class="note">LIME: intercept {fmt_number(lime.attrs["intercept"])}, local prediction '
        f"{fmt_number(lime.attrs['local_prediction'])} (R² of the local model "
        f"{lime.attrs['score']:.2f}); Ribeiro et al., KDD 2016. SHAP: Lundberg and Lee, "
        "NeurIPS 2017; Lundberg et al., Nat Mach Intell 2020.</p>"
    )
    return title, "\n".join(parts)
