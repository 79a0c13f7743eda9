"""Endpoint statistics of a virtual trial, computed from its results folder.

`read_results` (in `twins.trials._results`, re-exported here) reads and checks the folder;
the table functions (`endpoint_table`, `difference_table`, `subgroup_table`,
`band_quantiles`, `population_summary`) are pure functions of the `Results` it returns.
They are vectorised with pandas group-bys (a million rows per arm takes seconds); only the
Kaplan-Meier estimates loop, once per group.

Arms are analysed as independent samples (as in a parallel-group trial), also when the same
virtual patients appear in every arm: the intervals of differences are then conservative.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from scipy import stats

from ._results import ENDPOINT_KINDS as ENDPOINT_KINDS
from ._results import DamagedResultsError as DamagedResultsError
from ._results import Results as Results
from ._results import arm_labels as arm_labels
from ._results import arm_names as arm_names
from ._results import check_parts as check_parts
from ._results import published_figure, spec_endpoints
from ._results import read_results as read_results
from ._results import reference_arm as reference_arm

#: Level label used for a missing subgroup or categorical value.
MISSING_LEVEL = "(missing)"

#: Failed patients listed per arm by `failure_summary` (and in summary.json) by default.
FAILED_LISTED = 100

_EPS = 1e-9  # tolerance of the S(t) <= 0.5 comparisons (products of fractions)


# --------------------------------------------------------------------------------------------
# Interval formulas (vectorised)


def _z(level: float) -> float:
    return float(stats.norm.ppf(0.5 + level / 2))


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"Must have 0 < level < 1, we instead got level={level}.")


def wilson_interval(
    successes: np.ndarray, n: np.ndarray, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion (as fractions, 0-1).

    **Arguments:**

    - `successes`, `n`: counts (arrays of equal shape); `n == 0` gives NaN.
    - `level`: confidence level.

    **Returns:**

    `(low, high)`, arrays.

    References: Wilson EB (1927), Probable inference, the law of succession, and statistical
    inference. J Am Stat Assoc 22:209-212.
    """
    x = np.asarray(successes, float)
    n = np.asarray(n, float)
    z = _z(level)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = x / n
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z / denom * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def _t_interval(mean, var, n, level):
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.sqrt(var / n)
        t = stats.t.ppf(0.5 + level / 2, np.where(n > 1, n - 1, np.nan))
    return mean - t * se, mean + t * se


def _welch(m1, v1, n1, m0, v0, n0, level):
    with np.errstate(divide="ignore", invalid="ignore"):
        a, b = v1 / n1, v0 / n0
        se = np.sqrt(a + b)
        df = (a + b) ** 2 / (a**2 / (n1 - 1) + b**2 / (n0 - 1))
        t = np.where(se > 0, stats.t.ppf(0.5 + level / 2, df), 0.0)
    d = m1 - m0
    return d, d - t * se, d + t * se


def _newcombe(x1, n1, x0, n0, level):
    l1, u1 = wilson_interval(x1, n1, level)
    l0, u0 = wilson_interval(x0, n0, level)
    with np.errstate(divide="ignore", invalid="ignore"):
        p1, p0 = x1 / n1, x0 / n0
    d = p1 - p0
    low = d - np.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    high = d + np.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    return 100 * d, 100 * low, 100 * high


def kaplan_meier_median(
    time: np.ndarray, event: np.ndarray, level: float = 0.95
) -> tuple[float, float, float, str]:
    """Kaplan-Meier median survival time with its confidence interval.

    The survival function S(t) is `scipy.stats.ecdf` of `scipy.stats.CensoredData` (the
    Kaplan-Meier estimator). The median is the smallest time with S(t) <= 0.5. Its interval
    is the Brookmeyer-Crowley construction: the times at which the pointwise interval of
    S(t) contains 0.5, with the pointwise interval from Greenwood's variance on the log-log
    scale (`confidence_interval(method="log-log")`; SAS PROC LIFETEST's default, R's
    `survfit(conf.type="log-log")`). So the lower limit is the smallest time at which the
    *lower* pointwise limit of S(t) is <= 0.5, and the upper limit the smallest time at which
    the *upper* pointwise limit is <= 0.5. Where the pointwise interval is undefined (S(t) = 0
    or 1) it is taken as the point S(t).

    **Arguments:**

    - `time`: times (days), with NaN for missing values (dropped).
    - `event`: True where the event happened at `time`; False where the time is censored.
    - `level`: confidence level.

    **Returns:**

    `(median, low, high, note)`. A median or limit that is not reached within the follow-up
    is `inf`, and `note` says so ("" otherwise); no values gives NaN with a note.

    References: Kaplan EL, Meier P (1958), Nonparametric estimation from incomplete
    observations. J Am Stat Assoc 53:457-481. Brookmeyer R, Crowley J (1982), A confidence
    interval for the median survival time. Biometrics 38:29-41. Kalbfleisch JD, Prentice RL
    (1980), The Statistical Analysis of Failure Time Data, Wiley (log-log transform).
    """
    time = np.asarray(time, float)
    event = np.asarray(event, bool)
    keep = ~np.isnan(time)
    time, event = time[keep], event[keep]
    if time.size == 0:
        return math.nan, math.nan, math.nan, "no values"
    sf = stats.ecdf(stats.CensoredData(uncensored=time[event], right=time[~event])).sf
    s = sf.probabilities
    with warnings.catch_warnings():
        # Undefined where S(t) is 0 or 1 (log-log of 0 or 1); the limit is then S itself.
        warnings.filterwarnings("ignore", "The confidence interval is undefined", RuntimeWarning)
        ci = sf.confidence_interval(level, method="log-log")
    low = np.where(np.isnan(ci.low.probabilities), s, ci.low.probabilities)
    high = np.where(np.isnan(ci.high.probabilities), s, ci.high.probabilities)

    def first_below_half(curve: np.ndarray) -> float:
        below = np.flatnonzero(curve <= 0.5 + _EPS)
        return float(sf.quantiles[below[0]]) if below.size else math.inf

    median, lo, hi = first_below_half(s), first_below_half(low), first_below_half(high)
    last = float(time.max())
    if math.isinf(median):
        note = f"median not reached (S > 0.5 up to the last time, {last:g} days)"
    elif math.isinf(hi):
        note = "upper confidence limit not reached"
    else:
        note = ""
    return median, lo, hi, note


# --------------------------------------------------------------------------------------------
# Grouped statistics


def _group_codes(frame: pd.DataFrame, keys: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """Group number of each row (-1 where a key is missing) and the observed groups' keys,
    sorted by the keys' category order; from categorical codes, without a pandas group-by
    (which is several times slower on millions of rows)."""
    cats = [pd.Categorical(frame[k]) for k in keys]
    combined = np.zeros(len(frame), np.int64)
    missing = np.zeros(len(frame), bool)
    for c in cats:
        codes = np.asarray(c.codes, np.int64)
        missing |= codes < 0
        combined = combined * len(c.categories) + np.maximum(codes, 0)
    counts = np.bincount(combined[~missing], minlength=1)
    present = np.flatnonzero(counts)
    lookup = np.full(counts.size, -1, np.int64)
    lookup[present] = np.arange(present.size)
    group = np.where(missing, -1, lookup[combined])
    index = {}
    rest = present
    for k, c in zip(keys[::-1], cats[::-1], strict=True):
        n = len(c.categories)
        index[k] = pd.Categorical.from_codes(rest % n, dtype=c.dtype)
        rest = rest // n
    return group, pd.DataFrame({k: index[k] for k in keys})


def _group_stats(
    frame: pd.DataFrame,
    groups: tuple[np.ndarray, pd.DataFrame],
    endpoint: dict[str, Any],
    level: float,
) -> pd.DataFrame:
    """Per group (`groups` from `_group_codes`): n, estimate, ci_low, ci_high, note, and `_m`,
    `_v` (internal: mean and variance for means, successes for proportions)."""
    name, kind = endpoint["name"], endpoint["kind"]
    codes, out = groups[0], groups[1].copy()
    n_groups = len(out)
    if kind in ("mean", "proportion"):
        v = frame[name].to_numpy(dtype=float, na_value=np.nan)
        ok = ~np.isnan(v) & (codes >= 0)
        n = np.bincount(codes[ok], minlength=n_groups).astype(float)
        total = np.bincount(codes[ok], weights=v[ok], minlength=n_groups)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = total / n
            dev = v[ok] - mean[codes[ok]]
            var = np.bincount(codes[ok], weights=dev * dev, minlength=n_groups) / (n - 1)
        var = np.where(n > 1, var, np.nan)
        if kind == "mean":
            low, high = _t_interval(mean, var, n, level)
            out["estimate"], out["_m"], out["_v"] = mean, mean, var
            note = np.where(n == 0, "no values", np.where(n == 1, "one value: no interval", ""))
        else:
            low, high = wilson_interval(total, n, level)
            out["estimate"], low, high = 100 * mean, 100 * low, 100 * high
            out["_m"], out["_v"] = total, np.nan
            note = np.where(n == 0, "no values", "")
        out["n"] = n.astype(np.int64)
        out["ci_low"], out["ci_high"], out["note"] = low, high, note
    else:
        t = frame[name].to_numpy(dtype=float, na_value=np.nan)
        e = frame[name + "_event"].to_numpy(dtype=float, na_value=np.nan)
        ok = ~(np.isnan(t) | np.isnan(e)) & (codes >= 0)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(n_groups + 1))
        rows = []
        for g in range(n_groups):
            idx = order[bounds[g] : bounds[g + 1]]
            idx = idx[ok[idx]]
            rows.append((idx.size, *kaplan_meier_median(t[idx], e[idx] == 1, level)))
        cols = list(zip(*rows, strict=True)) if rows else [[]] * 5
        out["n"] = np.asarray(cols[0], np.int64)
        out["estimate"] = np.asarray(cols[1], float)
        out["ci_low"], out["ci_high"] = np.asarray(cols[2], float), np.asarray(cols[3], float)
        out["note"] = np.asarray(cols[4], object)
        out["_m"], out["_v"] = np.nan, np.nan
    out["endpoint"], out["label"] = name, endpoint["label"]
    out["kind"], out["unit"] = kind, endpoint["unit"]
    out["note"] = out["note"].astype(str)
    return out


def _differences(
    stats_: pd.DataFrame, on: list[str], kind: str, reference: str, level: float
) -> pd.DataFrame:
    """Rows of `stats_` for non-reference arms, joined with the reference row with equal `on`;
    adds difference, diff_low, diff_high."""
    arm = stats_["arm"].astype(str)
    ref = stats_[arm == reference]
    other = stats_[arm != reference]
    cols = [*on, "n", "estimate", "_m", "_v"]
    merged = other.merge(ref.loc[:, cols], on=on, how="left", suffixes=("", "_ref"))
    n1, n0 = merged["n"].to_numpy(float), merged["n_ref"].to_numpy(float)
    if kind == "mean":
        d, low, high = _welch(
            merged["_m"].to_numpy(float),
            merged["_v"].to_numpy(float),
            n1,
            merged["_m_ref"].to_numpy(float),
            merged["_v_ref"].to_numpy(float),
            n0,
            level,
        )
    else:
        d, low, high = _newcombe(
            merged["_m"].to_numpy(float), n1, merged["_m_ref"].to_numpy(float), n0, level
        )
    merged["difference"], merged["diff_low"], merged["diff_high"] = d, low, high
    return merged


# --------------------------------------------------------------------------------------------
# Public tables

_ENDPOINT_COLUMNS = [
    "arm",
    "endpoint",
    "label",
    "kind",
    "unit",
    "n",
    "estimate",
    "ci_low",
    "ci_high",
    "published",
    "note",
]


def endpoint_table(results: Results, *, level: float = 0.95) -> pd.DataFrame:
    """Per arm and endpoint: the estimate with its confidence interval.

    - `"mean"`: sample mean with the Student t interval (`n - 1` degrees of freedom).
    - `"proportion"`: percentage (0-100) with the Wilson score interval.
    - `"time_to_event"`: Kaplan-Meier median (days) with the Brookmeyer-Crowley interval on
      the log-log scale (see `kaplan_meier_median`). A median or limit not reached within
      the follow-up is `inf`, and the `note` column says so.

    Missing values (NaN) are dropped; `n` counts the values used.

    **Arguments:**

    - `results`: from `read_results`.
    - `level`: confidence level.

    **Returns:**

    A DataFrame, one row per (arm, endpoint) in spec order, with columns `arm`, `endpoint`,
    `label`, `kind`, `unit`, `n`, `estimate`, `ci_low`, `ci_high`, `published` (the
    `spec["published"]` figure, in the units of `estimate`, or NaN) and `note` ("" or why a
    value is infinite or missing).

    References: Wilson EB (1927), J Am Stat Assoc 22:209-212. Kaplan EL, Meier P (1958),
    J Am Stat Assoc 53:457-481. Brookmeyer R, Crowley J (1982), Biometrics 38:29-41.
    """
    _check_level(level)
    groups = _group_codes(results.patients, ["arm"])
    frames = [
        _group_stats(results.patients, groups, e, level) for e in spec_endpoints(results.spec)
    ]
    if not frames:
        return pd.DataFrame({c: [] for c in _ENDPOINT_COLUMNS})
    out = pd.concat(frames, ignore_index=True)
    out["arm"] = out["arm"].astype(str)
    out["published"] = [
        published_figure(results.spec, a, e)
        for a, e in zip(out["arm"], out["endpoint"], strict=True)
    ]
    order = {a: i for i, a in enumerate(arm_names(results.spec))}
    out = out.sort_values("arm", key=lambda s: s.map(order), kind="stable")
    return out.loc[:, _ENDPOINT_COLUMNS].reset_index(drop=True)


_DIFFERENCE_COLUMNS = [
    "arm",
    "reference",
    "endpoint",
    "label",
    "kind",
    "unit",
    "n",
    "n_reference",
    "estimate",
    "reference_estimate",
    "difference",
    "ci_low",
    "ci_high",
    "method",
]


def difference_table(results: Results, *, level: float = 0.95) -> pd.DataFrame:
    """Per non-reference arm and endpoint of kind `"mean"` or `"proportion"`: the difference
    arm minus reference arm with its confidence interval.

    - `"mean"`: difference of means with the Welch interval (unequal variances,
      Welch-Satterthwaite degrees of freedom).
    - `"proportion"`: difference of percentages (percentage points) with Newcombe's hybrid
      score interval (his method 10, from the two Wilson intervals).

    Arms are treated as independent samples; where the same virtual patients are in every arm,
    this interval is conservative (a paired analysis would be narrower).

    **Arguments:**

    - `results`: from `read_results`.
    - `level`: confidence level.

    **Returns:**

    A DataFrame with columns `arm`, `reference`, `endpoint`, `label`, `kind`, `unit` (the
    endpoint's unit for means, `"percentage points"` for proportions), `n`, `n_reference`,
    `estimate`, `reference_estimate`, `difference`, `ci_low`, `ci_high`, `method`.

    References: Welch BL (1947), The generalization of 'Student's' problem when several
    different population variances are involved. Biometrika 34:28-35. Newcombe RG (1998),
    Interval estimation for the difference between independent proportions: comparison of
    eleven methods. Stat Med 17:873-890. Wilson EB (1927), J Am Stat Assoc 22:209-212.
    """
    _check_level(level)
    reference = reference_arm(results.spec)
    groups = _group_codes(results.patients, ["arm"])
    frames = []
    for e in spec_endpoints(results.spec):
        if e["kind"] == "time_to_event":
            continue
        s = _group_stats(results.patients, groups, e, level)
        s["arm"] = s["arm"].astype(str)
        d = _differences(s, ["endpoint"], e["kind"], reference, level)
        d["reference"] = reference
        d["n_reference"] = d["n_ref"].astype(np.int64)
        d["reference_estimate"] = d["estimate_ref"]
        d["ci_low"], d["ci_high"] = d["diff_low"], d["diff_high"]
        d["method"] = "Welch" if e["kind"] == "mean" else "Newcombe hybrid score"
        if e["kind"] == "proportion":
            d["unit"] = "percentage points"
        frames.append(d[_DIFFERENCE_COLUMNS])
    if not frames:
        return pd.DataFrame({c: [] for c in _DIFFERENCE_COLUMNS})
    out = pd.concat(frames, ignore_index=True)
    order = {a: i for i, a in enumerate(arm_names(results.spec))}
    out = out.sort_values("arm", key=lambda s: s.map(order), kind="stable")
    return out.reset_index(drop=True)


_SUBGROUP_COLUMNS = [
    "arm",
    "subgroup",
    "level",
    "endpoint",
    "label",
    "kind",
    "unit",
    "n",
    "estimate",
    "ci_low",
    "ci_high",
    "note",
    "difference",
    "difference_ci_low",
    "difference_ci_high",
]


def _levels(column: Any) -> pd.Series:
    s = pd.Series(column).astype("category")
    if s.isna().any():
        s = s.cat.add_categories([MISSING_LEVEL]).fillna(MISSING_LEVEL)
    return s


def subgroup_table(results: Results, *, level: float = 0.95) -> pd.DataFrame:
    """`endpoint_table` and `difference_table` within each level of each subgroup column.

    The statistics are those of `endpoint_table` (t, Wilson, Kaplan-Meier with
    Brookmeyer-Crowley) and `difference_table` (Welch, Newcombe hybrid score). A missing
    subgroup value forms the level `"(missing)"`. A (level, arm) without patients has no row.

    **Arguments:**

    - `results`: from `read_results`.
    - `level`: confidence level.

    **Returns:**

    A DataFrame with columns `arm`, `subgroup` (the column name), `level` (str), `endpoint`,
    `label`, `kind`, `unit`, `n`, `estimate`, `ci_low`, `ci_high`, `note`, and
    `difference`, `difference_ci_low`, `difference_ci_high` (arm minus reference in that level;
    NaN for the reference arm and for time-to-event endpoints). Rows are ordered by subgroup
    (spec order), endpoint (spec order), level (sorted) and arm (spec order).

    References: as `endpoint_table` and `difference_table`.
    """
    _check_level(level)
    spec = results.spec
    reference = reference_arm(spec)
    frames = []
    for sub in spec.get("subgroups", []):
        keys = pd.DataFrame(
            {"level": _levels(results.patients[sub]), "arm": results.patients["arm"]}
        )
        groups = _group_codes(keys, ["level", "arm"])
        for e in spec_endpoints(spec):
            s = _group_stats(results.patients, groups, e, level)
            s["arm"], s["level"] = s["arm"].astype(str), s["level"].astype(str)
            if e["kind"] == "time_to_event":
                s["difference"] = s["difference_ci_low"] = s["difference_ci_high"] = np.nan
            else:
                d = _differences(s, ["level"], e["kind"], reference, level)
                d = d.loc[:, ["level", "arm", "difference", "diff_low", "diff_high"]]
                d.columns = [
                    "level",
                    "arm",
                    "difference",
                    "difference_ci_low",
                    "difference_ci_high",
                ]
                s = s.merge(d, on=["level", "arm"], how="left")
            s["subgroup"] = sub
            frames.append(s[_SUBGROUP_COLUMNS])
    if not frames:
        return pd.DataFrame({c: [] for c in _SUBGROUP_COLUMNS})
    return pd.concat(frames, ignore_index=True)


def band_resolution(results: Results) -> tuple[float, float]:
    """The smallest and largest bin width of the band histogram (the resolution of
    `band_quantiles`), in the unit of the band output."""
    widths = np.diff(np.asarray(results.spec["bands"]["edges"], float))
    return float(widths.min()), float(widths.max())


def band_quantiles(results: Results, q: Sequence[float] = (0.05, 0.5, 0.95)) -> pd.DataFrame:
    """Quantiles of the band output per arm and day, from the histogram.

    Within a bin the values are taken as uniformly spread, so a quantile is interpolated
    linearly between the bin's edges: its resolution is the bin width (`band_resolution`).
    A quantile falling in the underflow bin (-1, value < `edges[0]`) reports `edges[0]`; one
    in the overflow bin (B, value >= `edges[B]`) reports `edges[B]`: read those as
    "<= edges[0]" and ">= edges[B]".

    **Arguments:**

    - `results`: from `read_results`.
    - `q`: probabilities in [0, 1].

    **Returns:**

    A DataFrame with columns `arm`, `day`, `n` (the number of values counted) and one column
    per probability, named `f"q{p:g}"` (`q0.05`, `q0.5`, `q0.95` by default); one row per
    (arm, day), sorted. Empty when the spec has no bands.
    """
    probs = np.asarray(q, float)
    if probs.ndim != 1 or np.any((probs < 0) | (probs > 1)):
        raise ValueError(f"Must have 0 <= q <= 1 (a sequence), we instead got q={q!r}.")
    names = [f"q{p:g}" for p in probs]
    bands = results.bands
    if results.spec.get("bands") is None or bands.empty:
        return pd.DataFrame({"arm": [], "day": [], "n": [], **{c: [] for c in names}})
    edges = np.asarray(results.spec["bands"]["edges"], float)
    n_bins = edges.size - 1
    codes, out = _group_codes(bands, ["arm", "day"])
    out["day"] = out["day"].astype(np.float64)
    counts = np.zeros((len(out), n_bins + 2))
    np.add.at(counts, (codes, bands["bin"].to_numpy() + 1), bands["count"].to_numpy(float))
    cum = np.cumsum(counts, axis=1)
    total = cum[:, -1]
    # Column j of `counts` is bin j - 1; lower/upper value of each column.
    lower = np.concatenate([[edges[0]], edges[:-1], [edges[-1]]])
    upper = np.concatenate([[edges[0]], edges[1:], [edges[-1]]])
    rows = np.arange(len(out))
    out["arm"] = out["arm"].astype(str)
    out["n"] = total.astype(np.int64)
    for p, name in zip(probs, names, strict=True):
        target = p * total
        # First column whose cumulative count reaches the target (the first non-empty one
        # for p = 0).
        j = np.where(target > 0, (cum < target[:, None]).sum(1), (cum <= 0).sum(1))
        j = np.minimum(j, n_bins + 1)
        before = np.where(j > 0, cum[rows, np.maximum(j - 1, 0)], 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.clip((target - before) / counts[rows, j], 0, 1)
        value = lower[j] + frac * (upper[j] - lower[j])
        out[name] = np.where(total > 0, value, np.nan)
    return out


_POPULATION_COLUMNS = [
    "arm",
    "variable",
    "type",
    "level",
    "n",
    "mean",
    "sd",
    "median",
    "q25",
    "q75",
    "count",
    "percent",
]


def population_summary(results: Results) -> pd.DataFrame:
    """Per arm: the numeric covariates (mean, SD, median, interquartile range) and the
    categorical ones (count and percentage of each level).

    **Arguments:**

    - `results`: from `read_results`; the columns are `spec["covariates"]` (numeric) and
      `spec["categorical"]`.

    **Returns:**

    A DataFrame with columns `arm`, `variable`, `type` (`"numeric"` or `"categorical"`),
    `level` (the category as str; `"(missing)"` for missing values; None for numeric rows),
    `n` (non-missing values for numeric rows, the arm's rows for categorical ones), `mean`,
    `sd` (n - 1 denominator), `median`, `q25`, `q75` (NaN for categorical rows), `count` and
    `percent` (of the arm's rows; NaN for numeric rows). Ordered by arm (spec order), then
    the variables in spec order, numeric first.
    """
    spec, df = results.spec, results.patients
    frames = []
    numeric = list(spec.get("covariates", []))
    if numeric:
        values = df[numeric].apply(pd.to_numeric, errors="coerce").astype(float)
        values["arm"] = df["arm"]
        g = values.groupby("arm", observed=True, sort=True)
        stat = {
            "n": g.count(),
            "mean": g.mean(),
            "sd": g.std(),
            "median": g.median(),
            "q25": g.quantile(0.25),
            "q75": g.quantile(0.75),
        }
        long = pd.concat(
            {k: v.stack(future_stack=True) for k, v in stat.items()}, axis=1
        ).reset_index(names=["arm", "variable"])
        long["type"], long["level"] = "numeric", None
        long["count"] = long["percent"] = np.nan
        frames.append(long)
    names = arm_names(spec)
    arm_rows = dict(
        zip(names, np.bincount(pd.Categorical(df["arm"]).codes, minlength=len(names)), strict=True)
    )
    for col in spec.get("categorical", []):
        keys = pd.DataFrame({"arm": df["arm"], "level": _levels(df[col])})
        group, counts = _group_codes(keys, ["arm", "level"])
        counts["count"] = np.bincount(group[group >= 0], minlength=len(counts)).astype(float)
        counts["arm"], counts["level"] = counts["arm"].astype(str), counts["level"].astype(str)
        n = np.array([arm_rows[a] for a in counts["arm"]], float)
        counts["n"] = n
        counts["percent"] = 100 * counts["count"].to_numpy(float) / n
        counts["variable"], counts["type"] = col, "categorical"
        for c in ("mean", "sd", "median", "q25", "q75"):
            counts[c] = np.nan
        frames.append(counts)
    if not frames:
        return pd.DataFrame({c: [] for c in _POPULATION_COLUMNS})
    out = pd.concat([f[_POPULATION_COLUMNS] for f in frames], ignore_index=True)
    variables = {v: i for i, v in enumerate([*numeric, *spec.get("categorical", [])])}
    arms = {a: i for i, a in enumerate(arm_names(spec))}
    out["arm"] = out["arm"].astype(str)
    out = out.sort_values(
        ["arm", "variable"],
        key=lambda s: s.map(arms) if s.name == "arm" else s.map(variables),
        kind="stable",
    ).reset_index(drop=True)
    out["n"] = out["n"].astype(np.int64)
    out["count"] = out["count"].astype(float)
    return out


def failure_summary(results: Results, *, limit: int = FAILED_LISTED) -> dict[str, Any]:
    """The patients that could not be simulated, by arm (`run_trial` writes them with
    `status` "failed", `failure` the reason and their endpoints missing; `endpoint_table`
    and the other tables leave them out, so their `n` counts the completed patients only).

    **Arguments:**

    - `results`: from `read_results`; the `status` and `failure` columns are read from its
      patient parts (parts without a `status` column have no failed patients).
    - `limit`: how many failed patients to list per arm (the first, in part and row order).

    **Returns:**

    `{arm: {"n_patients": rows of the arm, "n_failed": count, "failed": [{"patient": id,
    "reason": reason}, ...]}}`, every arm of the spec in order; `failed` holds at most
    `limit` entries (`n_failed` counts them all).
    """
    names = arm_names(results.spec)
    rows = np.bincount(
        pd.Categorical(results.patients["arm"], categories=names).codes, minlength=len(names)
    )
    out = {
        a: {"n_patients": int(r), "n_failed": 0, "failed": []}
        for a, r in zip(names, rows, strict=True)
    }
    for part in results.patient_parts:
        file = results.path / "patients" / part
        if "status" not in pq.read_schema(file).names:
            continue
        table = pq.read_table(
            file, columns=["patient", "arm", "failure"], filters=[("status", "==", "failed")]
        )
        for pid, arm, why in zip(
            *(table[c].to_pylist() for c in ("patient", "arm", "failure")), strict=True
        ):
            entry = out[str(arm)]
            entry["n_failed"] += 1
            if len(entry["failed"]) < limit:
                entry["failed"].append({"patient": str(pid), "reason": str(why)})
    return out
