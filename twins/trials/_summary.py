"""Endpoint statistics of a virtual trial, computed from its results folder.

`read_results` (in `twins.trials._results`, re-exported here) reads and checks the folder;
the table functions (`endpoint_table`, `difference_table`, `subgroup_table`,
`band_quantiles`, `population_summary`) are pure functions of the `Results` it returns.
They are vectorised with pandas group-bys (a million rows per arm takes seconds); only the
Kaplan-Meier estimates loop, once per group.

Every virtual patient is given every arm (the same `patient` id in each arm), so
`difference_table` reports paired differences by default (`paired=True`: the mean of the
within-patient differences with its t interval; for proportions Newcombe's interval for paired
data); `paired=False` gives the independent-sample intervals of a parallel-group trial
(Welch, Newcombe hybrid score), which are conservative here.
"""

from __future__ import annotations

import math
import re
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
        # x = 0 and x = n have limits exactly 0 and 1 (the formula leaves rounding: 8.7e-17).
        low = np.where(x == 0, 0.0, np.clip(centre - half, 0, 1))
        high = np.where(x == n, 1.0, np.clip(centre + half, 0, 1))
    nan = np.isnan(p)
    return np.where(nan, np.nan, low), np.where(nan, np.nan, high)


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
# Units

#: Endpoint types whose value is the model output itself (a level).
_LEVEL_TYPES = frozenset({"FinalLevel", "Cmax", "Ctrough"})


def output_unit(spec: dict[str, Any]) -> str:
    """The unit of the model output of a trial, from `spec["bands"]["unit"]` (the drug's
    `Units.observed`, e.g. `"vancomycin serum concentration, mg/L"` gives `"mg/L"`,
    `"INR (ratio)"` gives `"INR"`); `""` where the spec does not say."""
    text = str((spec.get("bands") or {}).get("unit") or "").strip()
    if "," in text:
        text = text.rsplit(",", 1)[1].strip()
    elif "(" in text:
        text = text.split("(", 1)[0].strip()
    return text


def _auc_unit(unit: str) -> str:
    """Output unit times hours: `mg/L` gives `mg·h/L`."""
    if not unit:
        return "output unit·h"
    if "/" in unit:
        num, den = unit.split("/", 1)
        return f"{num}·h/{den}"
    return f"{unit}·h"


def endpoint_unit(spec: dict[str, Any], endpoint: dict[str, Any]) -> str:
    """The unit of an endpoint of `spec["endpoints"]` with the output's unit filled in: a
    level (final level, Cmax, trough) in the output's unit (`output_unit`), an AUC in that
    unit times hours (mg·h/L), others as the endpoint states (`% of patients`, `days`)."""
    kind, unit = str(endpoint.get("type") or ""), str(endpoint.get("unit") or "")
    out = output_unit(spec)
    if kind == "AUC" or unit == "output x h":
        return _auc_unit(out)
    if kind in _LEVEL_TYPES or (not unit and endpoint.get("kind") == "mean"):
        return out or unit
    return unit


def _spec_endpoints(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """`spec_endpoints` with `endpoint_unit` units."""
    raw = {str(e["name"]): e for e in spec.get("endpoints", [])}
    return [{**e, "unit": endpoint_unit(spec, raw[e["name"]])} for e in spec_endpoints(spec)]


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


#: At most this many distinct times count as a visit grid (`_grid_note`).
GRID_TIMES = 12


def _grid_note(times: np.ndarray, note: str, limits: Sequence[Sequence[float]], g: int) -> str:
    """`note`, plus a remark where the times take only a few values (the visits): the median
    and its limits then fall on those values and the interval collapses onto the grid."""
    t = np.unique(times[np.isfinite(times)])
    if not 0 < t.size <= GRID_TIMES:
        return note
    values = [float(c[g]) for c in limits]
    on_grid = all(not math.isfinite(v) or np.isclose(t, v).any() for v in values)
    if not on_grid:
        return note
    grid = ", ".join(f"{v:g}" for v in t)
    text = (
        f"times observed only at the visits ({grid} days): the median and its limits are visit days"
    )
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) == 3 and finite[1] == finite[2] == finite[0]:
        text += ", and the interval collapses onto one visit"
    return f"{note}; {text}" if note else text


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
        out["note"] = [
            _grid_note(t[order[bounds[g] : bounds[g + 1]]], str(cols[4][g]), cols[1:4], g)
            for g in range(n_groups)
        ]
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


def paired_newcombe(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Difference of two paired proportions, in percentage points, with Newcombe's interval
    for paired data (his method 10: from the two Wilson intervals and the phi coefficient).

    `a`: both outcomes 1; `b`: arm 1 and reference 0; `c`: arm 0 and reference 1; `d`: both
    0 (arrays of pair counts). The difference is `(b - c) / n`; with `p1 = (a + b) / n`,
    `p2 = (a + c) / n`, their Wilson limits `l1, u1, l2, u2` and the phi coefficient `phi`
    of the 2x2 table (its numerator `ad - bc` lowered by `n / 2`, not below 0, where it is
    positive; 0 where a margin is 0) the limits are
    `diff - sqrt((p1-l1)^2 - 2 phi (p1-l1)(u2-p2) + (u2-p2)^2)` and
    `diff + sqrt((u1-p1)^2 - 2 phi (u1-p1)(p2-l2) + (p2-l2)^2)`.

    **Returns:** `(difference, low, high)` in percentage points; NaN where `n == 0`.

    References: Newcombe RG (1998), Improved confidence intervals for the difference
    between binomial proportions based on paired data. Stat Med 17:2635-2650.
    """
    a, b, c, d = (np.asarray(x, float) for x in (a, b, c, d))
    n = a + b + c + d
    l1, u1 = wilson_interval(a + b, n, level)
    l2, u2 = wilson_interval(a + c, n, level)
    with np.errstate(divide="ignore", invalid="ignore"):
        p1, p2 = (a + b) / n, (a + c) / n
        num = a * d - b * c
        num = np.where(num > 0, np.maximum(num - n / 2, 0.0), num)
        den = np.sqrt((a + b) * (c + d) * (a + c) * (b + d))
        phi = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    diff = p1 - p2
    dl1, du1, dl2, du2 = p1 - l1, u1 - p1, p2 - l2, u2 - p2
    low = diff - np.sqrt(np.maximum(dl1**2 - 2 * phi * dl1 * du2 + du2**2, 0.0))
    high = diff + np.sqrt(np.maximum(du1**2 - 2 * phi * du1 * dl2 + dl2**2, 0.0))
    return 100 * diff, 100 * low, 100 * high


def _paired(
    patients: pd.DataFrame, endpoint: dict[str, Any], reference: str, by: str | None, level: float
) -> pd.DataFrame:
    """Paired differences arm minus reference, by patient id (and `by`, a patient column):
    columns arm, [by], n_pairs, difference, diff_low, diff_high."""
    name, kind = endpoint["name"], endpoint["kind"]
    keys = ["patient"] + ([by] if by else [])
    frame = patients.loc[:, [*keys, "arm", name]].copy()
    frame["arm"] = frame["arm"].astype(str)
    if by:
        frame[by] = _levels(frame[by]).astype(str)
    values = frame.pivot_table(index=keys, columns="arm", values=name, aggfunc="first")
    rows = []
    columns = ["arm", *([by] if by else []), "n_pairs", "difference", "diff_low", "diff_high"]
    if reference not in values.columns:
        return pd.DataFrame(columns=columns)
    for arm in values.columns:
        if arm == reference:
            continue
        pair = values.loc[:, [arm, reference]].astype(float).dropna()
        groups = pair.groupby(level=by, observed=True) if by else [(None, pair)]
        for lv, g in groups:
            x, y = g[arm].to_numpy(float), g[reference].to_numpy(float)
            n = x.size
            if kind == "mean":
                diff = x - y
                m = float(diff.mean()) if n else math.nan
                if n > 1:
                    se = float(diff.std(ddof=1)) / math.sqrt(n)
                    t = float(stats.t.ppf(0.5 + level / 2, n - 1))
                    low, high = m - t * se, m + t * se
                else:
                    low = high = math.nan
            else:
                x, y = x > 0.5, y > 0.5
                counts = [np.sum(x & y), np.sum(x & ~y), np.sum(~x & y), np.sum(~x & ~y)]
                m, low, high = (float(v) for v in paired_newcombe(*counts, level=level))
            rows.append(
                {
                    "arm": arm,
                    **({by: lv} if by else {}),
                    "n_pairs": n,
                    "difference": m,
                    "diff_low": low,
                    "diff_high": high,
                }
            )
    return pd.DataFrame(rows, columns=columns)


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
        _group_stats(results.patients, groups, e, level) for e in _spec_endpoints(results.spec)
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


def difference_table(results: Results, *, level: float = 0.95, paired: bool = True) -> pd.DataFrame:
    """Per non-reference arm and endpoint of kind `"mean"` or `"proportion"`: the difference
    arm minus reference arm with its confidence interval.

    - `"mean"`: difference of means with the Welch interval (unequal variances,
      Welch-Satterthwaite degrees of freedom).
    - `"proportion"`: difference of percentages (percentage points) with Newcombe's hybrid
      score interval (his method 10, from the two Wilson intervals).

    With `paired=True` (the default) the differences are within patients: every virtual
    patient is given every arm, so each pair is one patient's value in the arm and in the
    reference arm (pairs with a missing value in either are dropped; `n` then counts the
    pairs). Means: the mean of the paired differences with the t interval (`n - 1` degrees
    of freedom); proportions: Newcombe's interval for paired proportions (`paired_newcombe`).
    With `paired=False` the arms are treated as independent samples (the two bullets
    above), as in a parallel-group trial; with the same patients in every arm that interval
    is conservative.

    **Arguments:**

    - `results`: from `read_results`.
    - `level`: confidence level.
    - `paired`: paired (within-patient) differences, or independent samples.

    **Returns:**

    A DataFrame with columns `arm`, `reference`, `endpoint`, `label`, `kind`, `unit` (the
    endpoint's unit for means, `"percentage points"` for proportions), `n`, `n_reference`,
    `estimate`, `reference_estimate`, `difference`, `ci_low`, `ci_high`, `method` (which
    says paired or independent).

    References: Welch BL (1947), The generalization of 'Student's' problem when several
    different population variances are involved. Biometrika 34:28-35. Newcombe RG (1998),
    Interval estimation for the difference between independent proportions: comparison of
    eleven methods. Stat Med 17:873-890. Wilson EB (1927), J Am Stat Assoc 22:209-212.
    Newcombe RG (1998), Improved confidence intervals for the difference between binomial
    proportions based on paired data. Stat Med 17:2635-2650.
    """
    _check_level(level)
    reference = reference_arm(results.spec)
    groups = _group_codes(results.patients, ["arm"])
    frames = []
    for e in _spec_endpoints(results.spec):
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
        if paired:
            pr = _paired(results.patients, e, reference, None, level)
            d = d.drop(columns=["difference", "diff_low", "diff_high"]).merge(
                pr, on="arm", how="left"
            )
            d["n"] = d["n_reference"] = d["n_pairs"].fillna(0).astype(np.int64)
            d["ci_low"], d["ci_high"] = d["diff_low"], d["diff_high"]
            d["method"] = (
                "paired t (within-patient differences)"
                if e["kind"] == "mean"
                else "Newcombe paired score"
            )
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


_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def _level_key(level: Any) -> tuple[int, float, int, str]:
    text = str(level).strip()
    if text == MISSING_LEVEL:
        return (2, math.inf, 0, text)
    m = _NUMBER.search(text.lstrip("<>=≤≥ "))
    if m is None:
        return (1, math.inf, 0, text.lower())
    prefix = text[: len(text) - len(text.lstrip("<>=≤≥ "))].strip()
    # `<65` before `65-75` before `>75`, `<=30` before `30-59`, `>=90` after `60-89`.
    rank = -1 if prefix.startswith(("<", "≤")) else (1 if prefix.startswith((">", "≥")) else 0)
    return (0, float(m.group()), rank, text)


def level_order(levels: Sequence[Any]) -> list[str]:
    """Subgroup levels in their natural order: labels that start with a number (after `<`,
    `>`, `<=`, `>=`) by that number, `<65` before `65-75` before `>75`; then words
    alphabetically; `"(missing)"` last."""
    return sorted(dict.fromkeys(str(v) for v in levels), key=_level_key)


def _levels(column: Any) -> pd.Series:
    s = pd.Series(column)
    missing = s.isna()
    s = s.astype(object).where(~missing, MISSING_LEVEL).astype(str)
    return s.astype(pd.CategoricalDtype(level_order(s.unique()), ordered=True))


def subgroup_table(results: Results, *, level: float = 0.95, paired: bool = True) -> pd.DataFrame:
    """`endpoint_table` and `difference_table` within each level of each subgroup column.

    The statistics are those of `endpoint_table` (t, Wilson, Kaplan-Meier with
    Brookmeyer-Crowley) and `difference_table` (Welch, Newcombe hybrid score). A missing
    subgroup value forms the level `"(missing)"`. A (level, arm) without patients has no row.

    **Arguments:**

    - `results`: from `read_results`.
    - `level`: confidence level.
    - `paired`: differences within patients (default, as `difference_table`), or between
      independent samples.

    **Returns:**

    A DataFrame with columns `arm`, `subgroup` (the column name), `level` (str), `endpoint`,
    `label`, `kind`, `unit`, `n`, `estimate`, `ci_low`, `ci_high`, `note`, and
    `difference`, `difference_ci_low`, `difference_ci_high` (arm minus reference in that level;
    NaN for the reference arm and for time-to-event endpoints). Rows are ordered by subgroup
    (spec order), endpoint (spec order), level (natural order, `level_order`: `<65`,
    `65-75`, `>75`; words alphabetically) and arm (spec order).

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
        for e in _spec_endpoints(spec):
            s = _group_stats(results.patients, groups, e, level)
            s["arm"], s["level"] = s["arm"].astype(str), s["level"].astype(str)
            if e["kind"] == "time_to_event":
                s["difference"] = s["difference_ci_low"] = s["difference_ci_high"] = np.nan
            else:
                if paired:
                    d = _paired(
                        results.patients.assign(level=keys["level"]), e, reference, "level", level
                    )
                    if d.empty:
                        d = pd.DataFrame(columns=["level", "arm", "diff_low", "diff_high"])
                    d["level"] = d["level"].astype(str)
                    d = d.reindex(columns=["level", "arm", "difference", "diff_low", "diff_high"])
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
