"""Endpoint statistics of a virtual trial, computed from its results folder.

The trial engine writes a folder (the layout is in `docs/trial-report.md`):

```
DIR/spec.json                     the trial specification
DIR/manifest.json                 run bookkeeping (chunks done, complete, wall time)
DIR/patients/part-00000.parquet   one row per (patient, arm)
DIR/bands/part-00000.parquet      per (arm, day) histogram of the band output
```

`read_results` reads and checks it; the table functions (`endpoint_table`,
`difference_table`, `subgroup_table`, `band_quantiles`, `population_summary`) are pure
functions of the `Results` it returns. They are vectorised with pandas group-bys (a
million rows per arm takes seconds); only the Kaplan-Meier estimates loop, once per group.

Arms are analysed as independent samples (as in a parallel-group trial), also when the same
virtual patients appear in every arm: the intervals of differences are then conservative.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import stats

from ._folder import damaged_parts, unrecorded_parts

#: The endpoint kinds of `spec.json`.
ENDPOINT_KINDS: tuple[str, ...] = ("mean", "proportion", "time_to_event")

#: Level label used for a missing subgroup or categorical value.
MISSING_LEVEL = "(missing)"

_BAND_COLUMNS = ("arm", "day", "bin", "count")
_EPS = 1e-9  # tolerance of the S(t) <= 0.5 comparisons (products of fractions)


@dataclass(frozen=True)
class Results:
    """The contents of a results folder, as read by `read_results`.

    **Fields:**

    - `path`: the results folder.
    - `spec`: `spec.json` as a dict (checked by `read_results`).
    - `manifest`: `manifest.json` as a dict.
    - `patients`: all `patients/part-*.parquet` concatenated in part order, restricted to the
      columns that the spec names (`patient`, `arm`, the endpoint columns, `subgroups`,
      `covariates`, `categorical`); `arm` and the subgroup/categorical columns are pandas
      categoricals (arms in spec order).
    - `bands`: all `bands/part-*.parquet` with the counts of equal (`arm`, `day`, `bin`)
      summed: columns `arm`, `day`, `bin`, `count`, sorted by arm (spec order), day, bin.
      Empty when the spec has no `"bands"`.
    - `patient_parts`: the names of the patient part files read, in order.
    """

    path: Path
    spec: dict[str, Any]
    manifest: dict[str, Any]
    patients: pd.DataFrame
    bands: pd.DataFrame
    patient_parts: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------
# Spec accessors


def arm_names(spec: dict[str, Any]) -> list[str]:
    """The arm names of `spec`, in order."""
    return [str(a["name"]) for a in spec["arms"]]


def arm_labels(spec: dict[str, Any]) -> dict[str, str]:
    """Arm name -> label (the name where no label is given)."""
    return {str(a["name"]): str(a.get("label") or a["name"]) for a in spec["arms"]}


def reference_arm(spec: dict[str, Any]) -> str:
    """The reference (control) arm: `spec["reference_arm"]`, else the first arm."""
    return str(spec.get("reference_arm") or spec["arms"][0]["name"])


def _endpoints(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "name": str(e["name"]),
            "label": str(e.get("label") or e["name"]),
            "kind": str(e["kind"]),
            "unit": str(e.get("unit") or ""),
        }
        for e in spec.get("endpoints", [])
    ]


def _published(spec: dict[str, Any], arm: str, endpoint: str) -> float:
    published = spec.get("published") or {}
    value = (published.get(arm) or {}).get(endpoint) if isinstance(published, dict) else None
    return math.nan if value is None else float(value)


def _unique(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _endpoint_columns(spec: dict[str, Any]) -> list[str]:
    cols: list[str] = []
    for e in _endpoints(spec):
        cols.append(e["name"])
        if e["kind"] == "time_to_event":
            cols.append(e["name"] + "_event")
    return cols


def _category_columns(spec: dict[str, Any]) -> list[str]:
    return _unique([*spec.get("subgroups", []), *spec.get("categorical", [])])


def _required_columns(spec: dict[str, Any]) -> list[str]:
    return _unique(
        [
            "patient",
            "arm",
            *_endpoint_columns(spec),
            *spec.get("subgroups", []),
            *spec.get("covariates", []),
            *spec.get("categorical", []),
        ]
    )


# --------------------------------------------------------------------------------------------
# Reading


def _read_json(file: Path, what: str) -> dict[str, Any]:
    if not file.is_file():
        raise FileNotFoundError(
            f"Missing {file}: expected the {what} (a JSON object) written by the trial engine."
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON: {err}.") from err
    if not isinstance(data, dict):
        raise ValueError(f"{file} must hold a JSON object, we instead got {type(data).__name__}.")
    return data


def _str_list(spec: dict[str, Any], key: str, file: Path) -> None:
    value = spec.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(
            f'{file}: "{key}" must be a list of column names, we instead got {value!r}.'
        )


def _check_spec(spec: dict[str, Any], file: Path) -> None:
    arms = spec.get("arms")
    if not isinstance(arms, list) or not arms:
        raise ValueError(f'{file}: "arms" must be a non-empty list, we instead got {arms!r}.')
    for i, arm in enumerate(arms):
        if not isinstance(arm, dict) or not isinstance(arm.get("name"), str):
            raise ValueError(f'{file}: arms[{i}] must be an object with a "name" (str): {arm!r}.')
    names = arm_names(spec)
    if len(set(names)) != len(names):
        raise ValueError(f"{file}: arm names must be unique, we instead got {names}.")
    if "reference_arm" in spec and spec["reference_arm"] not in names:
        raise ValueError(
            f'{file}: "reference_arm" is {spec["reference_arm"]!r}, which is not one of the '
            f"arms {names}."
        )
    endpoints = spec.get("endpoints", [])
    if not isinstance(endpoints, list):
        raise ValueError(f'{file}: "endpoints" must be a list, we instead got {endpoints!r}.')
    for i, e in enumerate(endpoints):
        if not isinstance(e, dict) or not isinstance(e.get("name"), str):
            raise ValueError(
                f'{file}: endpoints[{i}] must be an object with a "name" (str): {e!r}.'
            )
        if e.get("kind") not in ENDPOINT_KINDS:
            raise ValueError(
                f"{file}: endpoint {e['name']!r} has kind {e.get('kind')!r}; expected one of "
                f"{list(ENDPOINT_KINDS)}."
            )
    ep_names = [e["name"] for e in endpoints]
    if len(set(ep_names)) != len(ep_names):
        raise ValueError(f"{file}: endpoint names must be unique, we instead got {ep_names}.")
    for key in ("subgroups", "covariates", "categorical"):
        _str_list(spec, key, file)
    bands = spec.get("bands")
    if bands is not None:
        edges = np.asarray(bands.get("edges", []) if isinstance(bands, dict) else [], float)
        if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0):
            raise ValueError(
                f'{file}: "bands" must have "edges", at least two strictly increasing numbers; '
                f"we instead got {bands!r}."
            )
    published = spec.get("published")
    if published is not None:
        if not isinstance(published, dict):
            raise ValueError(
                f'{file}: "published" must be an object, we instead got {published!r}.'
            )
        for arm, values in published.items():
            if arm in ("source", "notes"):
                continue
            if arm not in names:
                raise ValueError(
                    f'{file}: "published" names the arm {arm!r}, which is not one of the arms '
                    f"{names}."
                )
            if not isinstance(values, dict):
                raise ValueError(
                    f'{file}: "published"[{arm!r}] must map endpoint names to numbers, we '
                    f"instead got {values!r}."
                )
            for ep, value in values.items():
                if ep not in ep_names:
                    raise ValueError(
                        f'{file}: "published"[{arm!r}] names the endpoint {ep!r}, which is not '
                        f"one of the endpoints {ep_names}."
                    )
                if value is not None and (
                    isinstance(value, bool) or not isinstance(value, int | float)
                ):
                    raise ValueError(
                        f'{file}: "published"[{arm!r}][{ep!r}] must be a number, we instead got '
                        f"{value!r}."
                    )


def _parts(folder: Path) -> list[Path]:
    def key(p: Path) -> tuple[int, str]:
        stem = p.name[len("part-") : -len(".parquet")]
        return (int(stem), p.name) if stem.isdigit() else (-1, p.name)

    return sorted(folder.glob("part-*.parquet"), key=key)


def _check_arms(table: pa.Table, file: Path, names: list[str]) -> None:
    arms = [str(a) for a in table["arm"].unique().to_pylist()]
    unknown = sorted(set(arms) - set(names))
    if unknown:
        raise ValueError(
            f"{file} has rows for the arm(s) {unknown}, which spec.json does not declare "
            f"(declared arms: {names})."
        )


def _read_parts(folder: Path, required: list[str], names: list[str]) -> tuple[list[Path], pa.Table]:
    files = _parts(folder)
    if not files:
        raise FileNotFoundError(
            f"No result parts in {folder}: expected files named part-00000.parquet, "
            "part-00001.parquet, ..."
        )
    tables = []
    for file in files:
        schema = pq.read_schema(file)
        missing = [c for c in required if c not in schema.names]
        if missing:
            raise ValueError(
                f"{file} lacks the column(s) {missing}, required by spec.json; it has "
                f"{schema.names}."
            )
        table = pq.read_table(file, columns=required)
        _check_arms(table, file, names)
        tables.append(table)
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise ValueError(f"The parts in {folder} have incompatible column types: {err}") from err
    return files, table


def _offender(df: pd.DataFrame, bad: np.ndarray) -> str:
    i = int(np.flatnonzero(bad)[0])
    return f"patient {df['patient'].iloc[i]!r} in arm {df['arm'].iloc[i]!r}"


def _check_binary(df: pd.DataFrame, column: str, folder: Path) -> None:
    s = df[column]
    if pd.api.types.is_bool_dtype(s.dtype):
        return
    if not pd.api.types.is_numeric_dtype(s.dtype):
        raise ValueError(
            f"Column {column!r} in {folder} must be bool, we instead got dtype {s.dtype}."
        )
    v = s.to_numpy(dtype=float, na_value=np.nan)
    bad = ~(np.isnan(v) | (v == 0) | (v == 1))
    if bad.any():
        raise ValueError(
            f"Column {column!r} in {folder} must be bool (or 0/1), we instead got "
            f"{v[bad][0]!r} for {_offender(df, bad)}."
        )


def _check_endpoints(df: pd.DataFrame, spec: dict[str, Any], folder: Path) -> None:
    for e in _endpoints(spec):
        name = e["name"]
        if e["kind"] == "proportion":
            _check_binary(df, name, folder)
            continue
        if not pd.api.types.is_numeric_dtype(df[name].dtype) or pd.api.types.is_bool_dtype(
            df[name].dtype
        ):
            raise ValueError(
                f"Column {name!r} in {folder} (endpoint of kind {e['kind']!r}) must be numeric, "
                f"we instead got dtype {df[name].dtype}."
            )
        if e["kind"] == "time_to_event":
            _check_binary(df, name + "_event", folder)
            t = df[name].to_numpy(dtype=float, na_value=np.nan)
            bad = t < 0
            if bad.any():
                raise ValueError(
                    f"Column {name!r} in {folder} holds times in days, which must be >= 0; we "
                    f"instead got {t[bad][0]!r} for {_offender(df, bad)}."
                )


def _read_patients(root: Path, spec: dict[str, Any]) -> tuple[pd.DataFrame, list[Path]]:
    folder = root / "patients"
    names = arm_names(spec)
    files, table = _read_parts(folder, _required_columns(spec), names)
    # Codes from Arrow's dictionary encoding (much faster than pandas on millions of strings).
    arm = table["arm"].combine_chunks().dictionary_encode()
    position = np.array([names.index(str(a)) for a in arm.dictionary.to_pylist()], np.int64)
    arm_codes = position[arm.indices.to_numpy()]
    patient = table["patient"].combine_chunks()
    patient_codes = patient.dictionary_encode().indices.to_numpy()
    pair = patient_codes.astype(np.int64) * len(names) + arm_codes
    dup = np.bincount(pair)[pair] > 1
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        same = pair == pair[i]
        sizes = [pq.ParquetFile(f).metadata.num_rows for f in files]
        part = np.repeat(np.arange(len(files)), sizes)
        where = sorted({files[j].name for j in part[same]})
        raise ValueError(
            f"Patient {patient[i].as_py()!r} appears {int(same.sum())} times in arm "
            f"{names[arm_codes[i]]!r} (in {where} under {folder}); each patient must have one "
            f"row per arm across all parts ({int(dup.sum())} duplicated (patient, arm) rows "
            "in all)."
        )
    rows_per_arm = np.bincount(arm_codes, minlength=len(names))
    empty = [a for a, n in zip(names, rows_per_arm, strict=True) if n == 0]
    if empty:
        raise ValueError(f"The arm(s) {empty} declared in spec.json have no rows in {folder}.")
    categorical = _category_columns(spec)
    for col in categorical:
        if pa.types.is_string(table[col].type) or pa.types.is_large_string(table[col].type):
            i = table.schema.get_field_index(col)
            table = table.set_column(i, col, table[col].dictionary_encode())
    df = table.drop_columns(["arm"]).to_pandas()
    del table
    df.insert(1, "arm", pd.Categorical.from_codes(arm_codes, categories=names))
    for col in categorical:
        c = df[col].astype("category")
        df[col] = c.cat.reorder_categories(sorted(c.cat.categories, key=str))
    _check_endpoints(df, spec, folder)
    return df, files


def _empty_bands(names: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "arm": pd.Categorical([], categories=names),
            "day": np.zeros(0, float),
            "bin": np.zeros(0, np.int32),
            "count": np.zeros(0, np.int64),
        }
    )


def _read_bands(root: Path, spec: dict[str, Any]) -> pd.DataFrame:
    names = arm_names(spec)
    if spec.get("bands") is None:
        return _empty_bands(names)
    folder = root / "bands"
    _, table = _read_parts(folder, list(_BAND_COLUMNS), names)
    df = table.to_pandas()
    n_bins = len(spec["bands"]["edges"]) - 1
    b = df["bin"].to_numpy()
    bad = (b < -1) | (b > n_bins)
    if bad.any():
        raise ValueError(
            f"Bins in {folder} must lie in -1..{n_bins} (spec.json has {n_bins + 1} edges), we "
            f"instead got bin {b[bad][0]} for arm {df['arm'].iloc[int(np.flatnonzero(bad)[0])]!r}."
        )
    if (df["count"].to_numpy() < 0).any():
        raise ValueError(f"Counts in {folder} must be >= 0.")
    df["arm"] = pd.Categorical(df["arm"].astype(str), categories=names)
    df = (
        df.groupby(["arm", "day", "bin"], observed=True, sort=True)["count"]
        .sum()
        .reset_index()
        .astype({"day": np.float64, "bin": np.int32, "count": np.int64})
    )
    return df


class DamagedResultsError(ValueError):
    """A results folder whose parts do not match the records of its manifest."""


def check_parts(root: Path, manifest: Mapping[str, Any]) -> None:
    """Refuse a results folder whose parts differ from `manifest.json`'s records (rows,
    size and SHA-256 of each part, written with it): a recorded part missing or damaged, or
    a part the manifest does not record. The error lists every problem."""
    parts = manifest.get("parts")
    if not isinstance(parts, Mapping):
        raise DamagedResultsError(
            f"{root / 'manifest.json'} records no checksums of the parts, so the results cannot "
            "be checked; it was not written by this version of the trial engine. Run the "
            "trial again into a new folder."
        )
    problems = [f"{rel}: {why}" for rel, why in damaged_parts(root, parts).items()]
    problems += [
        f"{rel}: a part that manifest.json does not record" for rel in unrecorded_parts(root, parts)
    ]
    if problems:
        raise DamagedResultsError(
            f"The results folder {root} is damaged ({len(problems)} problem(s)):\n  "
            + "\n  ".join(problems)
            + "\nRun the trial again with the same arguments into the same folder to simulate "
            "the missing or damaged chunks again; a part that the manifest does not record "
            "was not written by this run: remove it."
        )


def read_results(path: str | os.PathLike[str]) -> Results:
    """Read and check a trial results folder.

    **Arguments:**

    - `path`: the folder holding `spec.json`, `manifest.json`, `patients/part-*.parquet` and
      (when the spec has `"bands"`) `bands/part-*.parquet`.

    **Returns:**

    A `Results`. Only the columns that `spec.json` names are read from the patient parts;
    other columns are ignored.

    **Raises:**

    `FileNotFoundError` for a missing folder, `spec.json`, `manifest.json` or a folder without
    parts; `DamagedResultsError` (a `ValueError`) when a part is missing, damaged or not
    recorded in the manifest (`check_parts`); `ValueError` for an invalid spec, a part
    lacking a required column (named, with the file), an arm not declared in the spec
    (named, with the file), a (patient, arm) pair found more than once (named, with the
    parts), a declared arm without rows, or an endpoint column of the wrong type (named,
    with the first offending patient).
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"Results folder {root} does not exist (or is not a folder).")
    spec = _read_json(root / "spec.json", "trial specification")
    _check_spec(spec, root / "spec.json")
    manifest = _read_json(root / "manifest.json", "run manifest")
    check_parts(root, manifest)
    patients, files = _read_patients(root, spec)
    bands = _read_bands(root, spec)
    return Results(
        path=root,
        spec=spec,
        manifest=manifest,
        patients=patients,
        bands=bands,
        patient_parts=tuple(f.name for f in files),
    )


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
    frames = [_group_stats(results.patients, groups, e, level) for e in _endpoints(results.spec)]
    if not frames:
        return pd.DataFrame({c: [] for c in _ENDPOINT_COLUMNS})
    out = pd.concat(frames, ignore_index=True)
    out["arm"] = out["arm"].astype(str)
    out["published"] = [
        _published(results.spec, a, e) for a, e in zip(out["arm"], out["endpoint"], strict=True)
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
    for e in _endpoints(results.spec):
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
        for e in _endpoints(spec):
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
