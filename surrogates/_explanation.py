"""`Explanation`: SHAP values of a surrogate's predictions, with their checks and tables.

Computed by `surrogates.explain`, plotted by `summary_plot` and `waterfall_plot`;
`Explanation.to_shap` hands it to shap's own plots.

References: Lundberg SM, Lee S-I. A unified approach to interpreting model predictions.
NeurIPS 2017 (SHAP values and their additivity).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

#: `Explanation.output_scale` values.
SCALES = ("prediction", "log(prediction)", "probability", "log-odds")


def import_shap() -> Any:
    """`import shap`, its import-time warnings handled (shap 0.51 builds its colour maps
    with `Colormap.set_bad/over/under`, which matplotlib 3.10 marks as pending deprecation)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"The set_(bad|over|under) function will be deprecated",
            category=PendingDeprecationWarning,
        )
        import shap
    return shap


def check_row(row: Any, n: int, who: str) -> int:
    """`row` as an index into n rows (negative from the end), or a `ValueError` naming `who`."""
    if isinstance(row, bool) or not isinstance(row, int | np.integer) or not -n <= row < n:
        raise ValueError(f"{who}: row must be an integer in [0, {n}), got {row!r}.")
    return int(row) % n


@dataclasses.dataclass(frozen=True)
class Explanation:
    """SHAP values of n patients' predictions over p features.

    - `values`: (n, p) contributions, on `output_scale`;
    - `base_values`: (n,) the base value (the expected output over the background, or over
      the training data for path-dependent trees);
    - `data`: (n, p) the feature values explained; `feature_names`: their p names (static
      features, then the flattened sequence `<channel>@<time>h`);
    - `prediction`: (n,) the surrogate's prediction on `output_scale`;
    - `output_scale`: `"prediction"` (the surrogate's prediction as `predict` returns it),
      `"log(prediction)"` (XGBoost with `log_target` on the tree route), `"probability"`
      (class 1) or `"log-odds"` (XGBoost classifiers on the tree route);
    - `method`: `"tree (path-dependent)"`, `"tree (interventional)"`, `"permutation"` or
      `"kernel"`; `surrogate`: its name; `output`: the output index explained for
      multi-output surrogates (None for one output);
    - `out_of_range`, `reasons`: the surrogate's flags for inputs outside the training ranges.
    """

    values: np.ndarray
    base_values: np.ndarray
    data: np.ndarray
    feature_names: tuple[str, ...]
    prediction: np.ndarray
    output_scale: str
    method: str
    surrogate: str
    output: int | None = None
    out_of_range: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, bool))
    reasons: tuple[str, ...] = ()

    def __post_init__(self):
        n, p = np.shape(self.values)
        if np.shape(self.data) != (n, p) or len(self.feature_names) != p:
            raise ValueError(
                f"Explanation: values {np.shape(self.values)}, data {np.shape(self.data)} and "
                f"{len(self.feature_names)} feature names do not agree."
            )
        if np.shape(self.base_values) != (n,) or np.shape(self.prediction) != (n,):
            raise ValueError(
                f"Explanation: base_values {np.shape(self.base_values)} and prediction "
                f"{np.shape(self.prediction)} must be ({n},)."
            )
        if self.output_scale not in SCALES:
            raise ValueError(
                f"Explanation: output_scale must be one of {SCALES}, got {self.output_scale!r}."
            )

    def __len__(self) -> int:
        return int(np.shape(self.values)[0])

    def frame(self) -> pd.DataFrame:
        """The values as a DataFrame, one column per feature."""
        return pd.DataFrame(self.values, columns=list(self.feature_names))

    def importance(self, groups: Mapping[str, Sequence[str]] | None = None) -> pd.DataFrame:
        """Mean |SHAP| per feature, largest first (`feature`, `mean_abs_shap`, `rank` from 1).

        **Arguments:**

        - `groups`: optional `{name: [features]}`: the values of a group's features are
          summed per patient before the mean absolute value is taken (SHAP values are
          additive, so the sum is the group's contribution; e.g. the genotype indicators of
          one gene). Features in no group stay on their own; a feature in two groups, or a
          name that is not a feature, raises.
        """
        values = self.frame()
        if groups:
            seen: dict[str, str] = {}
            columns: dict[str, Any] = {}
            for name, members in groups.items():
                members = [members] if isinstance(members, str) else list(members)
                unknown = [m for m in members if m not in values.columns]
                if unknown:
                    raise ValueError(
                        f"importance: group {name!r} names {unknown}, which are not features "
                        f"of the explanation ({list(self.feature_names)})."
                    )
                for m in members:
                    if m in seen:
                        raise ValueError(
                            f"importance: feature {m!r} is in groups {seen[m]!r} and {name!r}."
                        )
                    seen[m] = name
                columns[name] = values[members].sum(axis=1)
            for c in values.columns:
                if c not in seen:
                    if c in columns:
                        raise ValueError(f"importance: group name {c!r} is also a feature.")
                    columns[c] = values[c]
            values = pd.DataFrame(columns)
        mean_abs = values.abs().mean(axis=0)
        out = (
            pd.DataFrame({"feature": mean_abs.index, "mean_abs_shap": mean_abs.to_numpy()})
            .sort_values("mean_abs_shap", ascending=False, kind="stable")
            .reset_index(drop=True)
        )
        out["rank"] = np.arange(1, len(out) + 1)
        return out

    def contributions(self, row: int = 0) -> pd.DataFrame:
        """One patient's features: `feature`, `value`, `shap`, largest |shap| first."""
        row = check_row(row, len(self), "Explanation.contributions")
        out = pd.DataFrame(
            {
                "feature": list(self.feature_names),
                "value": self.data[row],
                "shap": self.values[row],
            }
        )
        order = np.argsort(-np.abs(out["shap"].to_numpy()), kind="stable")
        return out.iloc[order].reset_index(drop=True)

    def additivity_gap(self) -> np.ndarray:
        """(n,) base value + sum of the values - prediction, on `output_scale`."""
        return self.base_values + self.values.sum(axis=1) - self.prediction

    def additivity(self, *, rtol: float = 1e-4, atol: float = 1e-4) -> bool:
        """Whether base value + sum of the values equals the prediction for every patient,
        within `atol + rtol * |prediction|` (trees and surrogates compute in float32)."""
        gap = np.abs(self.additivity_gap())
        return bool(np.all(gap <= atol + rtol * np.abs(self.prediction)))

    def to_shap(self):
        """A `shap.Explanation` (for `shap.plots.beeswarm`, `waterfall`, ...)."""
        shap = import_shap()
        return shap.Explanation(
            values=np.asarray(self.values, dtype=float),
            base_values=np.asarray(self.base_values, dtype=float),
            data=np.asarray(self.data, dtype=float),
            feature_names=list(self.feature_names),
        )
