"""Cohorts of patients as one table: virtual populations and real data sets.

`Population` holds one row per patient in a pandas DataFrame (struct of arrays). It is built
by `Population.sample` (a virtual population), `Population.from_dataframe` (a real cohort)
or `Population.from_patients`, and gives back patients (`pop[i]`), sub-cohorts (`pop[mask]`,
`pop.subgroup(...)`) and the standard covariates as arrays (`pop.covariates()`).

Columns, in this order:

| column | content |
| --- | --- |
| `id` | patient identifier (str) |
| `age`, `weight`, `height` | years, kg, cm (float) |
| `sex` | `"female"` or `"male"` |
| `ancestry` | str or `None` |
| lab names (`serum_creatinine`, `albumin`, ...) | the units of `twins.LABS` (float) |
| gene symbols (`CYP2C9`, `VKORC1`, ...) | the diplotype as given (str), read by `twins.pgx` |
| `med_<name>` | medication taken (bool) |
| `extra_<name>` | other numeric covariates (float) |
| `<column>_imputed` | True where that column's value was imputed (bool) |
"""

from __future__ import annotations

import csv
import functools
import io
import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from importlib import resources
from types import MappingProxyType
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from . import pgx
from ._patient import (
    ADULT_AGE,
    DEMOGRAPHIC_RANGES,
    LABS,
    Patient,
    as_medications,
    as_required,
    check_covariate_names,
    check_required,
    interpret,
    normalise_gene,
    standard_covariates,
)

IWPC_FREQUENCY_FILE = "IWPC_derived_genotype_frequencies_by_race.csv"

#: The ancestry (race, OMB) categories of the IWPC table.
IWPC_ANCESTRIES: tuple[str, ...] = ("Asian", "Black or African American", "Unknown", "White")

_CYP2C9_DIPLOTYPES: tuple[str, ...] = ("*1/*1", "*1/*2", "*1/*3", "*2/*2", "*2/*3", "*3/*3")
_VKORC1_GENOTYPES: tuple[tuple[str, str], ...] = (
    ("VKORC1_GG", "-1639 GG"),
    ("VKORC1_AG", "-1639 AG"),
    ("VKORC1_AA", "-1639 AA"),
)
_IWPC_GENES: tuple[str, ...] = ("CYP2C9", "VKORC1")

_BASE = ("id", "age", "sex", "weight", "height", "ancestry")
_NUMERIC_BASE = ("age", "weight", "height")
_MED = "med_"
_EXTRA = "extra_"
_IMPUTED = "_imputed"


# --- data -----------------------------------------------------------------------------------


@functools.cache
def iwpc_genotype_counts() -> Mapping[str, Mapping[str, Mapping[str, int]]]:
    """Observed CYP2C9 and VKORC1 genotype counts in the IWPC cohort, by race (OMB).

    Read from `twins/data/IWPC_derived_genotype_frequencies_by_race.csv` (see
    `twins/data/SOURCES.md`). CYP2C9 diplotypes other than `*1`, `*2`, `*3` combinations
    (the table's `CYP2C9_other` column, 17 patients in all) are not included: the table does
    not say which alleles they carry.

    **Returns:**

    ancestry -> gene -> genotype -> count, with CYP2C9 diplotypes `"*1/*1"` ... `"*3/*3"`
    and VKORC1 genotypes `"-1639 GG"`, `"-1639 AG"`, `"-1639 AA"`.
    """
    text = (resources.files("twins") / "data" / IWPC_FREQUENCY_FILE).read_text(encoding="utf-8")
    counts: dict[str, Mapping[str, Mapping[str, int]]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        counts[row["race_OMB"]] = MappingProxyType(
            {
                "CYP2C9": MappingProxyType(
                    {d: int(row[f"CYP2C9_{d}"]) for d in _CYP2C9_DIPLOTYPES}
                ),
                "VKORC1": MappingProxyType(
                    {label: int(row[column]) for column, label in _VKORC1_GENOTYPES}
                ),
            }
        )
    return MappingProxyType(counts)


@dataclass(frozen=True)
class Demographics:
    """Distributions of height, weight and serum creatinine for `Population.sample`.

    Height is normal by sex; BMI is log-normal by sex (given by its mean and coefficient of
    variation) and independent of height, and weight = BMI x height², so height and weight
    are positively correlated; serum creatinine is log-normal by sex, independent of the
    rest. All values are approximate.

    Defaults (adults, not specific to any ancestry):

    - Mean heights and BMIs of US adults (20 years and over, 2015-2016, age-adjusted): men
      69.1 in (175.5 cm), BMI 29.1 kg/m²; women 63.7 in (161.8 cm), BMI 29.6 kg/m²; the
      matching mean weights are 197.9 lb (89.8 kg) and 170.6 lb (77.4 kg) (Fryar CD,
      Kruszon-Moran D, Gu Q, Ogden CL. Mean body weight, height, waist circumference, and body
      mass index among adults: United States, 1999-2000 through 2015-2016. National Health
      Statistics Reports no. 122. Hyattsville, MD: National Center for Health Statistics;
      2018). The standard deviations of height (7.5 and 7.0 cm) and the coefficients of
      variation of BMI (0.22 and 0.25) are ours, rounded to give spreads like those of
      NHANES adults; they are not taken from that report.
    - Serum creatinine (IDMS-traceable, enzymatic): median 0.90 mg/dL (men) and 0.70 mg/dL
      (women), with log-scale standard deviations 0.156 and 0.169, which reproduce the
      widths of the ranges 0.63-1.16 mg/dL (men) and 0.48-0.93 mg/dL (women) that Pottel et
      al. report around these means for ages 20 to 70, where they found creatinine constant
      with age (Pottel H, Vrydags N, Mahieu B, Vandewynckele E, Croes K, Martens F.
      Establishing age/sex related serum creatinine reference intervals from hospital
      laboratory data based on different statistical methods. Clin Chim Acta
      2008;396(1-2):49-55). The slow rise they describe after 70 is not modelled, and
      neither is chronic kidney disease: the creatinine of older or sicker cohorts is
      understated. Age acts on renal function through the equations: Cockcroft-Gault CrCL
      falls with (140 - age) and CKD-EPI eGFR with 0.9938^age.

    **Fields:** `height_mean_male`, `height_mean_female`, `height_sd_male`,
    `height_sd_female` (cm); `bmi_mean_male`, `bmi_mean_female` (kg/m²), `bmi_cv_male`,
    `bmi_cv_female`; `scr_median_male`, `scr_median_female` (mg/dL), `scr_log_sd_male`,
    `scr_log_sd_female`. All must be positive and finite.
    """

    height_mean_male: float = 175.5
    height_mean_female: float = 161.8
    height_sd_male: float = 7.5
    height_sd_female: float = 7.0
    bmi_mean_male: float = 29.1
    bmi_mean_female: float = 29.6
    bmi_cv_male: float = 0.22
    bmi_cv_female: float = 0.25
    scr_median_male: float = 0.90
    scr_median_female: float = 0.70
    scr_log_sd_male: float = 0.156
    scr_log_sd_female: float = 0.169

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Real)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(
                    f"Demographics.{item.name} must be a positive finite number, got {value!r}."
                )


# --- randomness -------------------------------------------------------------------------------


def _generator(key: Any) -> np.random.Generator:
    """A NumPy generator determined by a JAX PRNG key or an integer seed.

    An integer `s` gives the same numbers as `jax.random.key(s)`.
    """
    if isinstance(key, (bool, np.bool_)):
        raise TypeError(f"key must be a JAX PRNG key or an integer seed, got {key!r}.")
    if isinstance(key, numbers.Integral):
        key = jax.random.key(int(key))
    if isinstance(key, jax.Array):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            data = jax.random.key_data(key)
        elif key.dtype == jnp.uint32 and key.ndim == 1:
            data = key
        else:
            raise TypeError(
                f"key must be a JAX PRNG key (jax.random.key) or an integer seed, got an array "
                f"of dtype {key.dtype} and shape {key.shape}."
            )
        if data.ndim != 1:
            raise TypeError(f"key must be a single PRNG key, got a batch of shape {key.shape}.")
        return np.random.default_rng(np.asarray(data, dtype=np.uint32).tolist())
    raise TypeError(
        f"key must be a JAX PRNG key or an integer seed, got {type(key).__name__} {key!r}."
    )


# --- validation ---------------------------------------------------------------------------------


def _rows(ids: np.ndarray | None, positions: Iterable[int]) -> str:
    return ", ".join(
        f"row {i}" + (f" (id {ids[i]!r})" if ids is not None else "") for i in positions
    )


def _first_rows(mask: np.ndarray, ids: np.ndarray | None, limit: int = 3) -> str:
    positions = np.flatnonzero(mask)
    text = _rows(ids, positions[:limit].tolist())
    if len(positions) > limit:
        text += f" and {len(positions) - limit} more rows"
    return text


def _classify(columns: Iterable[str]) -> dict[str, list[str]]:
    roles: dict[str, list[str]] = {
        "base": [],
        "lab": [],
        "gene": [],
        "med": [],
        "extra": [],
        "imputed": [],
        "unknown": [],
    }
    for column in columns:
        if not isinstance(column, str):
            roles["unknown"].append(column)
        elif column in _BASE:
            roles["base"].append(column)
        elif column in LABS:
            roles["lab"].append(column)
        elif column in pgx.genes():
            roles["gene"].append(column)
        elif column.startswith(_MED) and len(column) > len(_MED):
            roles["med"].append(column)
        elif column.startswith(_EXTRA) and len(column) > len(_EXTRA):
            roles["extra"].append(column)
        elif column.endswith(_IMPUTED):
            roles["imputed"].append(column)
        else:
            roles["unknown"].append(column)
    return roles


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    column = frame[name]
    if not isinstance(column, pd.Series):
        raise ValueError(f"Column {name!r} appears more than once.")
    return column


def _ids(column: pd.Series) -> np.ndarray:
    values = column.to_numpy(dtype=object)
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        if isinstance(value, (bool, np.bool_)) or value is None or value is pd.NA:
            raise ValueError(f"row {i}: id must be a string or an integer, got {value!r}.")
        if isinstance(value, numbers.Integral):
            out[i] = str(int(value))
        elif isinstance(value, numbers.Real):
            number = float(value)
            if not number.is_integer():
                raise ValueError(
                    f"row {i}: id must be a string or an integer, got {value!r}"
                    + (" (missing)" if math.isnan(number) else "")
                    + "."
                )
            out[i] = str(int(number))
        elif isinstance(value, str) and value.strip():
            out[i] = value
        else:
            raise ValueError(
                f"row {i}: id must be a non-empty string or an integer, got {value!r}."
            )
    duplicated = pd.Series(out).duplicated(keep=False).to_numpy()
    if duplicated.any():
        first = out[np.flatnonzero(duplicated)[0]]
        rows = np.flatnonzero(out == first)
        raise ValueError(
            f"Duplicate patient id {first!r} in rows {rows.tolist()}: ids must be unique."
        )
    return out


def _numeric(column: pd.Series, name: str, ids: np.ndarray) -> np.ndarray:
    """Floats with NaN where the value is missing (None/NaN); anything else non-numeric raises."""
    values = column.to_numpy(dtype=object)
    is_bool = np.array([isinstance(v, (bool, np.bool_)) for v in values], dtype=bool)
    if is_bool.any():
        raise ValueError(f"{_first_rows(is_bool, ids)}: {name} must be a number, got a boolean.")
    numeric = np.asarray(pd.to_numeric(column, errors="coerce"), dtype=float)
    unreadable = np.isnan(numeric) & column.notna().to_numpy()
    if unreadable.any():
        i = int(np.flatnonzero(unreadable)[0])
        raise ValueError(
            f"{_first_rows(unreadable, ids)}: {name} must be a number, got {values[i]!r}."
        )
    infinite = np.isinf(numeric)
    if infinite.any():
        raise ValueError(f"{_first_rows(infinite, ids)}: {name} must be finite, got infinity.")
    return numeric


def _check_range(
    name: str, values: np.ndarray, ids: np.ndarray, imputed: np.ndarray | None = None
) -> None:
    if name in LABS:
        spec = LABS[name]
        unit, low, high, hint = spec.unit, spec.low, spec.high, spec.hint
        what = f"lab {name!r}"
    else:
        unit, low, high = DEMOGRAPHIC_RANGES[name]
        hint, what = "", name
    outside = ~np.isnan(values) & ((values < low) | (values > high))
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        note = ""
        if imputed is not None and imputed[i]:
            note = " (an imputed value: check the observed data that predict it)"
        elif hint and values[i] > high:
            note = f"; {hint}"
        raise ValueError(
            f"{_first_rows(outside, ids)}: {what} must be in {unit} within [{low:g}, {high:g}], "
            f"got {float(values[i])!r}{note}."
        )


def _flags(column: pd.Series, name: str, ids: np.ndarray) -> np.ndarray:
    values = column.to_numpy(dtype=object)
    out = np.zeros(len(values), dtype=bool)
    for i, value in enumerate(values):
        if isinstance(value, (bool, np.bool_)):
            out[i] = bool(value)
        elif isinstance(value, numbers.Real) and value in (0, 1):
            out[i] = bool(value)
        else:
            raise ValueError(
                f"{_rows(ids, [i])}: {name} must be True/False or 1/0, got {value!r}"
                + (
                    " (missing)"
                    if value is None or (isinstance(value, float) and math.isnan(value))
                    else ""
                )
                + "."
            )
    return out


def _strings(column: pd.Series, name: str, ids: np.ndarray, optional: bool) -> np.ndarray:
    values = column.to_numpy(dtype=object)
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        missing = (
            value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))
        )
        if missing and optional:
            out[i] = None
        elif isinstance(value, str) and value.strip():
            out[i] = value
        else:
            raise ValueError(
                f"{_rows(ids, [i])}: {name} must be a non-empty string, got {value!r}"
                + (" (missing; genotypes, sex and ids are never imputed)" if missing else "")
                + "."
            )
    return out


def _impute(
    table: dict[str, np.ndarray],
    columns: list[str],
    predictors: list[np.ndarray],
    ids: np.ndarray,
    key: Any,
) -> dict[str, np.ndarray]:
    """MICE (IterativeImputer, sample_posterior=True) on the log of the positive columns.

    Returns the boolean imputed mask for each column that had missing values; `table` is
    updated in place.
    """
    masks = {name: np.isnan(table[name]) for name in columns}
    masks = {name: mask for name, mask in masks.items() if mask.any()}
    if not masks:
        return {}
    if key is None:
        raise ValueError(
            "missing='impute' draws random numbers (posterior samples): pass key= (a JAX PRNG "
            "key or an integer seed) so that the imputation is reproducible."
        )
    for name, mask in masks.items():
        if mask.all():
            raise ValueError(
                f"Column {name!r} has no observed value, so it cannot be imputed; drop the "
                "column (column_map={...: None}) or provide values."
            )
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer

    seed = int(_generator(key).integers(0, 2**32 - 1))
    logs = np.column_stack([np.log(table[name]) for name in columns])
    design = np.column_stack([logs, *[p.astype(float) for p in predictors]])
    imputer = IterativeImputer(sample_posterior=True, random_state=seed, max_iter=10)
    completed = np.asarray(imputer.fit_transform(design), dtype=float)
    for j, name in enumerate(columns):
        mask = masks.get(name)
        if mask is not None:
            table[name] = np.where(mask, np.exp(completed[:, j]), table[name])
            _check_range(name, table[name], ids, imputed=mask)
    return masks


def _validate(
    frame: pd.DataFrame, *, missing: Literal["error", "impute"], key: Any
) -> pd.DataFrame:
    """The canonical, checked table of a cohort (a new DataFrame)."""
    if missing not in ("error", "impute"):
        raise ValueError(f"missing must be 'error' or 'impute', got {missing!r}.")
    roles = _classify(frame.columns)
    if roles["unknown"]:
        raise ValueError(
            f"Unknown columns {roles['unknown']}. Accepted: {', '.join(_BASE)}; labs "
            f"{', '.join(LABS)}; genes {', '.join(pgx.genes())}; 'med_<name>' (bool); "
            "'extra_<name>' (number); '<column>_imputed' (bool). Rename with column_map={old: "
            "new}, or drop a column explicitly with column_map={old: None}."
        )
    required = ["id", "age", "sex", "weight", "height"]
    absent = [name for name in required if name not in frame.columns]
    if absent:
        raise ValueError(
            f"Missing required columns {absent}; a population needs {', '.join(required)} "
            "(and optionally ancestry, labs, genes, med_<name>, extra_<name>)."
        )
    if len(set(frame.columns)) != len(frame.columns):
        duplicated = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
        raise ValueError(f"Columns {duplicated} appear more than once.")

    ids = _ids(_column(frame, "id"))
    table: dict[str, np.ndarray] = {"id": ids}
    sex = _strings(_column(frame, "sex"), "sex", ids, optional=False)
    lowered = np.array([s.strip().lower() for s in sex], dtype=object)
    wrong = ~np.isin(lowered, ["female", "male"])
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        raise ValueError(
            f"{_first_rows(wrong, ids)}: sex must be 'female' or 'male', got {sex[i]!r}; recode "
            "first, e.g. df['sex'] = df['sex'].map({'F': 'female', 'M': 'male'})."
        )
    ancestry = (
        _strings(_column(frame, "ancestry"), "ancestry", ids, optional=True)
        if "ancestry" in frame.columns
        else np.full(len(frame), None, dtype=object)
    )

    numeric_columns = [*_NUMERIC_BASE, *[c for c in LABS if c in roles["lab"]]]
    for name in numeric_columns:
        table[name] = _numeric(_column(frame, name), name, ids)
        _check_range(name, table[name], ids)

    meds = sorted(roles["med"])
    extras = sorted(roles["extra"])
    check_covariate_names(
        [m[len(_MED) :] for m in meds], [e[len(_EXTRA) :] for e in extras], "Population"
    )
    for name in meds:
        table[name] = _flags(_column(frame, name), name, ids)
    for name in extras:
        values = _numeric(_column(frame, name), name, ids)
        if np.isnan(values).any():
            raise ValueError(
                f"{_first_rows(np.isnan(values), ids)}: {name} is missing; extra covariates "
                "are never imputed."
            )
        table[name] = values

    given_flags: dict[str, np.ndarray] = {}
    for name in roles["imputed"]:
        base = name[: -len(_IMPUTED)]
        if base not in numeric_columns:
            raise ValueError(
                f"Column {name!r} flags imputed values of {base!r}, which is not a numeric "
                f"column of this table ({', '.join(numeric_columns)})."
            )
        given_flags[base] = _flags(_column(frame, name), name, ids)

    has_missing = {name: np.isnan(table[name]) for name in numeric_columns}
    has_missing = {name: m for name, m in has_missing.items() if m.any()}
    if has_missing and missing == "error":
        name, mask = next(iter(has_missing.items()))
        counts = ", ".join(f"{n}: {int(m.sum())}" for n, m in has_missing.items())
        raise ValueError(
            f"{_first_rows(mask, ids)}: {name} is missing (missing values by column: {counts}). "
            "Pass missing='impute' (with key=) to impute them by MICE with <column>_imputed "
            "flags, or fill or drop them yourself."
        )
    imputed = _impute(
        table,
        numeric_columns,
        [lowered == "female", *[table[m] for m in meds], *[table[e] for e in extras]],
        ids,
        key,
    )

    genes = [g for g in pgx.genes() if g in roles["gene"]]
    for gene in genes:
        values = _strings(_column(frame, gene), gene, ids, optional=False)
        first_row: dict[str, int] = {}
        for i, value in enumerate(values):
            first_row.setdefault(value, i)
        for value, i in first_row.items():
            interpret(gene, value, _rows(ids, [i]))
        table[gene] = values

    out = pd.DataFrame(
        {
            "id": pd.Series(ids, dtype=object),
            "age": table["age"],
            "sex": pd.Series(lowered, dtype=object),
            "weight": table["weight"],
            "height": table["height"],
            "ancestry": pd.Series(ancestry, dtype=object),
        }
    )
    for name in numeric_columns[len(_NUMERIC_BASE) :]:
        out[name] = table[name]
    for gene in genes:
        out[gene] = pd.Series(table[gene], dtype=object)
    for name in meds:
        out[name] = table[name]
    for name in extras:
        out[name] = table[name]
    for name in numeric_columns:
        flag = given_flags.get(name)
        new = imputed.get(name)
        if flag is not None or new is not None:
            combined = np.zeros(len(out), dtype=bool)
            for part in (flag, new):
                if part is not None:
                    combined |= part
            out[name + _IMPUTED] = combined
    return out


# --- the cohort -----------------------------------------------------------------------------------


class Population:
    """A cohort of patients as one table (one row per patient; see the module docstring).

    Build one with `Population.sample` (virtual), `Population.from_dataframe` (real data)
    or `Population.from_patients`; `Population(frame)` is `from_dataframe(frame)` with the
    defaults. The table is not modified in place: `to_dataframe()` returns a copy.

    **Use:**

    - `len(pop)`; `pop[i]` -> `Patient`; `for patient in pop`;
    - `pop[mask]`, `pop[indices]`, `pop[start:stop]`, `pop.subgroup(...)` -> `Population`;
    - `pop.covariates()` -> dict of arrays with the keys of `Patient.covariates`;
    - `pop.to_dataframe()`, `pop.ids`, `pop.genes`, `pop.labs`, `pop.medications`.
    """

    __slots__ = ("_frame",)
    _frame: pd.DataFrame

    def __init__(self, frame: pd.DataFrame):
        self._frame = _validate(_as_frame(frame), missing="error", key=None)

    @classmethod
    def _from_valid(cls, frame: pd.DataFrame) -> Population:
        population = object.__new__(cls)
        population._frame = frame
        return population

    # --- constructors --------------------------------------------------------------------

    @classmethod
    def from_dataframe(
        cls,
        df: pd.DataFrame,
        column_map: Mapping[str, str | None] | None = None,
        *,
        missing: Literal["error", "impute"] = "error",
        key: Any = None,
    ) -> Population:
        """A population from a table of real patients, every row checked.

        **Arguments:**

        - `df`: one row per patient. Columns: `id`, `age` (years), `sex` (`"female"` /
          `"male"`), `weight` (kg), `height` (cm); optionally `ancestry`, lab columns named
          as in `twins.LABS` and in its units, gene columns (`CYP2C9`, `CYP2C19`, `CYP2D6`,
          `VKORC1`) holding diplotypes as `twins.pgx` reads them, `med_<name>` (True/False
          or 1/0), `extra_<name>` (numbers) and `<column>_imputed` flags (as written by
          `to_dataframe`). Any other column raises.
        - `column_map`: renames applied first, `{source name: our name}`; map a column to
          `None` to drop it (explicitly).
        - `missing`: what to do with missing numbers (NaN or None) in `age`, `weight`,
          `height` and lab columns. `"error"` (default): raise, naming the first patient
          and column. `"impute"`: multiple imputation by chained equations, one draw
          (scikit-learn `IterativeImputer` with `sample_posterior=True`, seeded from `key`),
          on the logarithms of these columns (so imputed values are positive) with sex,
          medication flags and extras as predictors; a `<column>_imputed` boolean column is
          added for each column that had missing values, True exactly where a value was
          imputed. Imputed values are range-checked like observed ones. Ids, sex,
          genotypes, medication flags and extras are never imputed: missing ones raise.
        - `key`: a JAX PRNG key or an integer seed, required for `missing="impute"`.

        **Returns:**

        A `Population`.

        **Raises:**

        `ValueError` naming the row (counted from 0 in table order), patient id and column
        for unknown or missing columns, duplicate ids, non-numeric or out-of-range values,
        missing values (with `missing="error"`), unknown alleles, and so on.

        References: van Buuren S, Groothuis-Oudshoorn K. mice: Multivariate Imputation by
        Chained Equations in R. J Stat Softw 2011;45(3):1-67.
        """
        frame = _as_frame(df)
        if column_map is not None:
            if not isinstance(column_map, Mapping):
                raise TypeError(f"column_map must be a mapping, got {column_map!r}.")
            absent = [name for name in column_map if name not in frame.columns]
            if absent:
                raise ValueError(
                    f"column_map names columns that are not in the table: {absent}; the "
                    f"table has {list(frame.columns)}."
                )
            drop = [name for name, new in column_map.items() if new is None]
            rename = {name: new for name, new in column_map.items() if new is not None}
            frame = frame.drop(columns=drop).rename(columns=rename)
        return cls._from_valid(_validate(frame, missing=missing, key=key))

    @classmethod
    def from_patients(cls, patients: Iterable[Patient]) -> Population:
        """A population from `Patient` objects.

        Every patient must have the same labs, genes and extras (a table column cannot be
        missing for some patients); medications become `med_<name>` flags, False for the
        patients who do not take them.
        """
        patients = list(patients)
        for patient in patients:
            if not isinstance(patient, Patient):
                raise TypeError(f"from_patients takes Patient objects, got {patient!r}.")
        labs = sorted({name for p in patients for name in p.labs}, key=list(LABS).index)
        genes = sorted({g for p in patients for g in p.genotypes})
        extras = sorted({e for p in patients for e in p.extra})
        meds = sorted({m for p in patients for m in p.medications})
        for patient in patients:
            for kind, have, want in (
                ("lab", patient.labs, labs),
                ("genotype", patient.genotypes, genes),
                ("extra", patient.extra, extras),
            ):
                lacking = [name for name in want if name not in have]
                if lacking:
                    raise ValueError(
                        f"Patient {patient.id!r}: no {kind} {lacking[0]!r}, which other "
                        "patients have; a Population holds each column for every patient."
                    )
        rows = []
        for p in patients:
            row: dict[str, Any] = {
                "id": p.id,
                "age": p.age,
                "sex": p.sex,
                "weight": p.weight,
                "height": p.height,
                "ancestry": p.ancestry,
            }
            row.update({name: p.labs[name] for name in labs})
            row.update({gene: p.genotypes[gene] for gene in genes})
            row.update({_MED + m: m in p.medications for m in meds})
            row.update({_EXTRA + e: p.extra[e] for e in extras})
            rows.append(row)
        columns = [*_BASE, *labs, *genes, *(_MED + m for m in meds), *(_EXTRA + e for e in extras)]
        frame = pd.DataFrame(rows, columns=columns)
        imputed_names = sorted({n for p in patients for n in p.imputed})
        for name in imputed_names:
            frame[name + _IMPUTED] = [name in p.imputed for p in patients]
        return cls._from_valid(_validate(frame, missing="error", key=None))

    @classmethod
    def sample(
        cls,
        n: int,
        *,
        key: Any,
        ancestry: str | Mapping[str, float] = "White",
        age: tuple[float, float] = (18.0, 80.0),
        female_fraction: float = 0.5,
        genes: Iterable[str] = _IWPC_GENES,
        allele_frequencies: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
        medications: Mapping[str, float] | None = None,
        demographics: Demographics | Mapping[str, Demographics] | None = None,
    ) -> Population:
        """A virtual population of adults.

        Draws, in order and all from `key`: ancestry; sex (female with probability
        `female_fraction`); age, uniform on `age`; height (normal by sex), BMI (log-normal
        by sex) and weight = BMI x height²; serum creatinine (log-normal by sex); genotypes;
        medications. The distributions and their sources are in `Demographics`; all are
        approximate. Age, sex, height, weight and creatinine do not depend on ancestry
        unless `demographics` is given per ancestry.

        Genotypes by ancestry:

        - `CYP2C9` and `VKORC1` (`genes`): drawn from the genotype counts observed in the
          IWPC cohort by race (OMB), `iwpc_genotype_counts()` (twins/data/SOURCES.md):
          CYP2C9 `*1/*1` ... `*3/*3`, VKORC1 `-1639 GG`/`AG`/`AA`. The two genes are drawn
          independently (the table gives no joint counts; they lie on different
          chromosomes). The 17 IWPC patients with other CYP2C9 diplotypes are left out of
          the counts, since the table does not name their alleles.
        - `CYP2C19` and `CYP2D6` are not sampled by default: this package ships no allele
          frequency table for them that it could cite with confidence. Pass
          `allele_frequencies` to sample them (or to replace the IWPC counts for CYP2C9)
          from allele frequencies under Hardy-Weinberg equilibrium, e.g. transcribed from
          the CPIC/PharmGKB frequency tables for your population.

        **Arguments:**

        - `n`: number of patients (>= 1).
        - `key`: a JAX PRNG key (`jax.random.key(0)`) or an integer seed; the same key gives
          the same cohort, bit for bit (`s` and `jax.random.key(s)` give the same one).
        - `ancestry`: one IWPC category (`"White"`, `"Asian"`, `"Black or African
          American"`, `"Unknown"`) or a mapping category -> fraction (summing to 1).
        - `age`: `(low, high)` in years, 18 <= low < high <= 120 (the distributions are for
          adults).
        - `female_fraction`: probability of a female patient, in [0, 1].
        - `genes`: which of `CYP2C9`, `VKORC1` to draw from the IWPC counts.
        - `allele_frequencies`: `{gene: {ancestry: {allele: frequency}}}` for star-allele
          genes (`CYP2C19`, `CYP2C9`, `CYP2D6`); for each sampled ancestry the frequencies
          must be non-negative and sum to 1 (within 1e-6), and every allele must be known
          to `twins.pgx`. Diplotypes are stored in CPIC's spelling.
        - `medications`: `{name: prevalence}`, each drawn independently (e.g.
          `{"amiodarone": 0.05}`); none by default.
        - `demographics`: a `Demographics`, or a mapping ancestry -> `Demographics`
          covering every sampled ancestry; default `Demographics()`.

        **Returns:**

        A `Population` with ids `V00001`, `V00002`, ..., the `serum_creatinine` lab and
        the sampled genes and medications.

        References: International Warfarin Pharmacogenetics Consortium. Estimation of the
        warfarin dose with clinical and pharmacogenetic data. N Engl J Med
        2009;360(8):753-764 (the cohort behind the CYP2C9/VKORC1 counts); Fryar CD et al.,
        NHSR no. 122, 2018 and Pottel H et al., Clin Chim Acta 2008;396:49-55 (see
        `Demographics`).
        """
        rng = _generator(key)
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}.")
        n = int(n)
        groups = _ancestry_fractions(ancestry)
        low, high = _age_range(age)
        if (
            isinstance(female_fraction, bool)
            or not isinstance(female_fraction, numbers.Real)
            or not 0.0 <= female_fraction <= 1.0
        ):
            raise ValueError(f"female_fraction must be in [0, 1], got {female_fraction!r}.")
        per_group = _demographics(demographics, groups)
        iwpc_genes = _iwpc_genes(genes)
        hwe = _allele_frequencies(allele_frequencies, groups)
        prevalences = _prevalences(medications)

        labels = list(groups)
        which = rng.choice(len(labels), size=n, p=np.array([groups[g] for g in labels]))
        female = rng.random(n) < female_fraction
        ages = rng.uniform(low, high, size=n)
        z = rng.standard_normal((3, n))

        def parameter(male: str, female_name: str) -> np.ndarray:
            values = np.array(
                [[getattr(per_group[g], male), getattr(per_group[g], female_name)] for g in labels]
            )
            return values[which, female.astype(int)]

        height = (
            parameter("height_mean_male", "height_mean_female")
            + parameter("height_sd_male", "height_sd_female") * z[0]
        )
        bmi_mean = parameter("bmi_mean_male", "bmi_mean_female")
        bmi_sigma = np.sqrt(np.log1p(parameter("bmi_cv_male", "bmi_cv_female") ** 2))
        bmi = np.exp(np.log(bmi_mean) - bmi_sigma**2 / 2 + bmi_sigma * z[1])
        weight = bmi * (height / 100.0) ** 2
        scr = parameter("scr_median_male", "scr_median_female") * np.exp(
            parameter("scr_log_sd_male", "scr_log_sd_female") * z[2]
        )

        frame = pd.DataFrame(
            {
                "id": [f"V{i + 1:0{max(5, len(str(n)))}d}" for i in range(n)],
                "age": ages,
                "sex": np.where(female, "female", "male").astype(object),
                "weight": weight,
                "height": height,
                "ancestry": np.array(labels, dtype=object)[which],
                "serum_creatinine": scr,
            }
        )
        counts = iwpc_genotype_counts()
        for gene in pgx.genes():
            if gene in hwe:
                frame[gene] = _draw_hwe(rng, gene, hwe[gene], labels, which)
            elif gene in iwpc_genes:
                table = {g: counts[g][gene] for g in labels}
                frame[gene] = _draw_observed(rng, table, labels, which)
        for name, prevalence in prevalences.items():
            frame[_MED + name] = rng.random(n) < prevalence
        return cls._from_valid(_validate(frame, missing="error", key=None))

    # --- access --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._frame)

    def __iter__(self) -> Iterator[Patient]:
        for i in range(len(self)):
            yield self._patient(i)

    def __getitem__(self, index: Any) -> Any:
        """`pop[i]` -> `Patient`; a slice, boolean mask or integer array -> `Population`."""
        if isinstance(index, (numbers.Integral,)) and not isinstance(index, (bool, np.bool_)):
            i = int(index)
            if not -len(self) <= i < len(self):
                raise IndexError(f"Patient index {i} out of range for a population of {len(self)}.")
            return self._patient(i % len(self))
        if isinstance(index, slice):
            return Population._from_valid(self._frame.iloc[index].reset_index(drop=True))
        array = np.asarray(index)
        if array.dtype == bool:
            if array.shape != (len(self),):
                raise IndexError(
                    f"A boolean mask must have shape ({len(self)},), got {array.shape}."
                )
            rows = np.flatnonzero(array)
            return Population._from_valid(self._frame.iloc[rows].reset_index(drop=True))
        if array.ndim == 1 and (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
            if array.size and (array.max() >= len(self) or array.min() < -len(self)):
                raise IndexError(f"Patient indices out of range for a population of {len(self)}.")
            positions = array.astype(int) % max(len(self), 1)
            return Population._from_valid(self._frame.iloc[positions].reset_index(drop=True))
        raise TypeError(
            f"A population is indexed by an integer, a slice, a boolean mask or an integer "
            f"array, got {index!r}."
        )

    def subgroup(
        self,
        where: np.ndarray | Callable[[pd.DataFrame], Any] | None = None,
        **equals: Any,
    ) -> Population:
        """The patients that match.

        **Arguments:**

        - `where`: a boolean mask of length `len(self)`, or a function of the table (a copy of
          `to_dataframe()`) returning one.
        - `equals`: column == value conditions, all of which must hold, e.g.
          `pop.subgroup(sex="female", ancestry="Asian", CYP2C9="*1/*3")`.

        **Returns:**

        A `Population` with the matching rows, in their order.
        """
        mask = np.ones(len(self), dtype=bool)
        if where is not None:
            chosen = where(self.to_dataframe()) if callable(where) else where
            chosen = np.asarray(chosen)
            if chosen.dtype != bool or chosen.shape != (len(self),):
                raise ValueError(
                    f"subgroup needs a boolean mask of shape ({len(self)},), got dtype "
                    f"{chosen.dtype} and shape {chosen.shape}."
                )
            mask &= chosen
        for column, value in equals.items():
            if column not in self._frame.columns:
                raise ValueError(
                    f"subgroup: no column {column!r}; columns are {list(self._frame.columns)}."
                )
            mask &= (self._frame[column] == value).to_numpy(dtype=bool)
        return self[mask]

    def to_dataframe(self) -> pd.DataFrame:
        """The table, one row per patient (a copy)."""
        return self._frame.copy()

    @property
    def ids(self) -> np.ndarray:
        """Patient ids, in row order (object array of str)."""
        return self._frame["id"].to_numpy(dtype=object)

    @property
    def labs(self) -> tuple[str, ...]:
        """Names of the lab columns."""
        return tuple(c for c in self._frame.columns if c in LABS)

    @property
    def genes(self) -> tuple[str, ...]:
        """Gene symbols with a genotype column."""
        return tuple(c for c in self._frame.columns if c in pgx.genes())

    @property
    def medications(self) -> tuple[str, ...]:
        """Medication names with a flag column."""
        return tuple(c[len(_MED) :] for c in self._frame.columns if c.startswith(_MED))

    @property
    def extras(self) -> tuple[str, ...]:
        """Names of the extra covariates."""
        return tuple(c[len(_EXTRA) :] for c in self._frame.columns if c.startswith(_EXTRA))

    def __repr__(self) -> str:
        counts = self._frame["ancestry"].fillna("None").value_counts()
        mix = ", ".join(f"{k}: {v}" for k, v in counts.items())
        return (
            f"Population(n={len(self)}, ancestry={{{mix}}}, labs={list(self.labs)}, "
            f"genes={list(self.genes)}, medications={list(self.medications)})"
        )

    def _patient(self, i: int) -> Patient:
        row = self._frame.iloc[i]
        return Patient(
            id=row["id"],
            age=float(row["age"]),
            sex=row["sex"],
            weight=float(row["weight"]),
            height=float(row["height"]),
            ancestry=row["ancestry"],
            labs={name: float(row[name]) for name in self.labs},
            genotypes={gene: row[gene] for gene in self.genes},
            medications=frozenset(m for m in self.medications if bool(row[_MED + m])),
            extra={e: float(row[_EXTRA + e]) for e in self.extras},
            imputed=frozenset(
                c[: -len(_IMPUTED)]
                for c in self._frame.columns
                if c.endswith(_IMPUTED) and bool(row[c])
            ),
        )

    # --- covariates ----------------------------------------------------------------------

    def covariates(
        self, required: Iterable[str] | str = (), *, medications: Iterable[str] | str = ()
    ) -> dict[str, np.ndarray]:
        """The standard covariates of every patient, as arrays (one entry per patient).

        Same keys and rules as `Patient.covariates`: `ID` (object array), `AGE`, `WT`, `HT`,
        `SEX` (1.0 female), `SCR`, `CRCL` (Cockcroft-Gault, total body weight), `EGFR`
        (CKD-EPI 2021), `BSA` (Mosteller), `LBW` (Janmahasatian), `ALB`; for each gene column
        `<GENE>` (the diplotype in CPIC's spelling, object array), `<GENE>_AS` and
        `<GENE>_PHENOTYPE` (object array); medication flags (1.0/0.0) for each `med_` column
        and each name in `medications`; extras under their upper-cased names. Numeric arrays
        are float64.

        A key is present only when it can be computed for every patient: `SCR`, `CRCL`,
        `EGFR` need the `serum_creatinine` column, `ALB` the `albumin` column; `CRCL`,
        `EGFR` and `LBW` need every patient to be at least 18 (adult equations). In
        `<GENE>_AS`, NaN stands where CPIC gives no activity score (where
        `Patient.covariates` gives `None`: CYP2C19, VKORC1, Indeterminate diplotypes).

        **Arguments:**

        - `required`: keys that must be present.
        - `medications`: medication names to report as flags even if nobody takes them.

        **Raises:**

        `MissingCovariateError` naming a patient and the missing lab, genotype or condition
        for a required key that cannot be computed; `ValueError` for an unknown key.
        """
        required = as_required(required)
        frame = self._frame
        age = frame["age"].to_numpy(dtype=float)
        female = (frame["sex"] == "female").to_numpy(dtype=bool)
        labs = {name: frame[name].to_numpy(dtype=float) for name in self.labs}
        adult = age >= ADULT_AGE
        values, unavailable = standard_covariates(
            age,
            female,
            frame["weight"].to_numpy(dtype=float),
            frame["height"].to_numpy(dtype=float),
            labs,
            all_adults=bool(adult.all()),
        )
        result: dict[str, np.ndarray] = {"ID": self.ids}
        result.update({k: np.asarray(v, dtype=float) for k, v in values.items()})
        for gene in self.genes:
            column = frame[gene].to_numpy(dtype=object)
            unique, inverse = np.unique(column.astype(str), return_inverse=True)
            found = [interpret(gene, value, f"Population column {gene}") for value in unique]
            result[gene] = np.array([f.diplotype for f in found], dtype=object)[inverse]
            result[f"{gene}_AS"] = np.array(
                [np.nan if f.activity_score is None else f.activity_score for f in found],
                dtype=float,
            )[inverse]
            result[f"{gene}_PHENOTYPE"] = np.array([f.phenotype for f in found], dtype=object)[
                inverse
            ]
        names = set(self.medications) | set(as_medications(medications, "Population"))
        for name in sorted(names):
            key = name.upper()
            if key in result:
                raise ValueError(
                    f"Population: medication {name!r} would give covariate key {key!r}, which "
                    "is already taken by another covariate."
                )
            if name in self.medications:
                result[key] = frame[_MED + name].to_numpy(dtype=float)
            else:
                result[key] = np.zeros(len(self), dtype=float)
        for name in self.extras:
            result[name.upper()] = frame[_EXTRA + name].to_numpy(dtype=float)
        if required:
            if len(self) == 0:
                blame, blame_age = "(empty population)", math.inf
            else:
                i = int(np.argmin(adult)) if not adult.all() else 0
                blame, blame_age = str(self.ids[i]), float(age[i])
            check_required(required, result, unavailable, blame, blame_age, self.labs)
        return result


# --- helpers for sample ---------------------------------------------------------------------------


def _as_frame(df: Any) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"Expected a pandas DataFrame, got {type(df).__name__}.")
    return df


def _ancestry_fractions(ancestry: str | Mapping[str, float]) -> dict[str, float]:
    groups = {ancestry: 1.0} if isinstance(ancestry, str) else dict(ancestry)
    if not groups:
        raise ValueError("ancestry must name at least one category.")
    for name, fraction in groups.items():
        if name not in IWPC_ANCESTRIES:
            raise ValueError(
                f"Unknown ancestry {name!r}: Population.sample uses the IWPC categories "
                f"{', '.join(map(repr, IWPC_ANCESTRIES))}."
            )
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, numbers.Real)
            or not math.isfinite(fraction)
            or fraction < 0
        ):
            raise ValueError(f"The fraction of ancestry {name!r} must be >= 0, got {fraction!r}.")
    total = math.fsum(groups.values())
    if abs(total - 1.0) > 1e-9:
        raise ValueError(f"Ancestry fractions must sum to 1, got {total!r} for {groups}.")
    return {name: float(fraction) for name, fraction in groups.items()}


def _age_range(age: tuple[float, float]) -> tuple[float, float]:
    try:
        low, high = (float(a) for a in age)
    except (TypeError, ValueError) as error:
        raise ValueError(f"age must be a pair (low, high) in years, got {age!r}.") from error
    if not (ADULT_AGE <= low < high <= DEMOGRAPHIC_RANGES["age"][2]):
        raise ValueError(
            f"age must be (low, high) with {ADULT_AGE:g} <= low < high <= 120, got {age!r}; the "
            "height, weight and creatinine distributions are for adults."
        )
    return low, high


def _demographics(
    demographics: Demographics | Mapping[str, Demographics] | None, groups: Mapping[str, float]
) -> dict[str, Demographics]:
    if demographics is None:
        demographics = Demographics()
    if isinstance(demographics, Demographics):
        return {g: demographics for g in groups}
    lacking = [g for g in groups if g not in demographics]
    if lacking:
        raise ValueError(f"demographics has no entry for the sampled ancestries {lacking}.")
    for g in groups:
        if not isinstance(demographics[g], Demographics):
            raise TypeError(f"demographics[{g!r}] must be a Demographics, got {demographics[g]!r}.")
    return {g: demographics[g] for g in groups}


def _iwpc_genes(genes: Iterable[str]) -> set[str]:
    if isinstance(genes, str):
        genes = (genes,)
    chosen = set()
    for gene in genes:
        symbol = normalise_gene(gene, "Population.sample")
        if symbol not in _IWPC_GENES:
            raise ValueError(
                f"Population.sample: {symbol} is not in the IWPC table (which has "
                f"{', '.join(_IWPC_GENES)}); give allele_frequencies for it instead."
            )
        chosen.add(symbol)
    return chosen


def _allele_frequencies(
    allele_frequencies: Mapping[str, Mapping[str, Mapping[str, float]]] | None,
    groups: Mapping[str, float],
) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for gene, by_group in (allele_frequencies or {}).items():
        symbol = normalise_gene(gene, "Population.sample allele_frequencies")
        if symbol == "VKORC1":
            raise ValueError(
                "allele_frequencies: VKORC1 is drawn from the IWPC genotype counts; "
                "allele_frequencies takes star-allele genes (CYP2C19, CYP2C9, CYP2D6)."
            )
        if symbol in out:
            raise ValueError(f"allele_frequencies: gene {symbol} is given twice.")
        lacking = [g for g in groups if g not in by_group]
        if lacking:
            raise ValueError(
                f"allele_frequencies[{symbol!r}] has no frequencies for the sampled "
                f"ancestries {lacking}."
            )
        out[symbol] = {}
        for group in groups:
            table = dict(by_group[group])
            where = f"allele_frequencies[{symbol!r}][{group!r}]"
            if not table:
                raise ValueError(f"{where} is empty.")
            for allele, frequency in table.items():
                if (
                    isinstance(frequency, bool)
                    or not isinstance(frequency, numbers.Real)
                    or not math.isfinite(frequency)
                    or frequency < 0
                ):
                    raise ValueError(
                        f"{where}: frequency of {allele!r} must be >= 0, got {frequency!r}."
                    )
                if not isinstance(allele, str) or "/" in allele:
                    raise ValueError(f"{where}: alleles are single star alleles, got {allele!r}.")
                interpret(symbol, f"{allele}/{allele}", where)
            total = math.fsum(table.values())
            if abs(total - 1.0) > 1e-6:
                raise ValueError(
                    f"{where}: allele frequencies must sum to 1 (within 1e-6), got {total!r}; "
                    "they are not renormalised for you."
                )
            out[symbol][group] = {a: float(f) for a, f in table.items()}
    return out


def _prevalences(medications: Mapping[str, float] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, prevalence in (medications or {}).items():
        normalised = as_medications((name,), "Population.sample medications")[0]
        if (
            isinstance(prevalence, bool)
            or not isinstance(prevalence, numbers.Real)
            or not 0.0 <= prevalence <= 1.0
        ):
            raise ValueError(
                f"The prevalence of medication {name!r} must be in [0, 1], got {prevalence!r}."
            )
        if normalised in out:
            raise ValueError(f"Medication {normalised!r} is given twice.")
        out[normalised] = float(prevalence)
    return dict(sorted(out.items()))


def _draw_observed(
    rng: np.random.Generator,
    counts: Mapping[str, Mapping[str, int]],
    labels: list[str],
    which: np.ndarray,
) -> np.ndarray:
    out = np.empty(len(which), dtype=object)
    for g, group in enumerate(labels):
        rows = np.flatnonzero(which == g)
        genotypes = list(counts[group])
        weights = np.array([counts[group][x] for x in genotypes], dtype=float)
        out[rows] = np.array(genotypes, dtype=object)[
            rng.choice(len(genotypes), size=len(rows), p=weights / weights.sum())
        ]
    return out


def _draw_hwe(
    rng: np.random.Generator,
    gene: str,
    frequencies: Mapping[str, Mapping[str, float]],
    labels: list[str],
    which: np.ndarray,
) -> np.ndarray:
    out = np.empty(len(which), dtype=object)
    for g, group in enumerate(labels):
        rows = np.flatnonzero(which == g)
        alleles = list(frequencies[group])
        p = np.array([frequencies[group][a] for a in alleles])
        p = p / p.sum()  # sums to 1 within 1e-6 (checked); exact for the sampler
        first = rng.choice(len(alleles), size=len(rows), p=p)
        second = rng.choice(len(alleles), size=len(rows), p=p)
        spelling: dict[tuple[int, int], str] = {}
        names = np.empty(len(rows), dtype=object)
        for j, pair in enumerate(zip(first.tolist(), second.tolist(), strict=True)):
            if pair not in spelling:
                diplotype = f"{alleles[pair[0]]}/{alleles[pair[1]]}"
                spelling[pair] = interpret(gene, diplotype, "Population.sample").diplotype
            names[j] = spelling[pair]
        out[rows] = names
    return out
