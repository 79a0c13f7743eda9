"""The table of a population: its columns, their checks, and the imputation of missing
numbers.

`validate_table(frame, missing=..., key=..., unusual=...)` turns a DataFrame into the
canonical table that `twins.Population` holds (the layout is in `twins._population`'s
docstring): known columns only, ids unique, numbers finite and within the hard limits,
genotypes read by `twins.pgx`, medication flags boolean; missing numbers refused, or imputed
by chained equations (MICE) with `<column>_imputed` flags; then every row's values checked
against the plausibility ranges (`twins._plausibility`), all rows at once, except in the
columns that `unusual` names. Every error names the row, the patient id and the column.
`generator(key)` is the NumPy generator that a JAX key or an integer seed determines, shared
with the sampling of virtual populations.

References: van Buuren S, Groothuis-Oudshoorn K. mice: Multivariate Imputation by Chained
Equations in R. J Stat Softw 2011;45(3):1-67.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from . import pgx
from ._patient import DEMOGRAPHIC_RANGES, LABS, check_covariate_names, interpret
from ._plausibility import (
    UNUSUAL_FIELDS,
    ImplausiblePatientError,
    find_implausible,
    normalise_unusual,
)

#: Columns of every population table, in this order.
BASE_COLUMNS: tuple[str, ...] = ("id", "age", "sex", "weight", "height", "ancestry")
_NUMERIC_BASE = ("age", "weight", "height")
#: Prefix of a medication flag column (`med_amiodarone`).
MED_PREFIX = "med_"
#: Prefix of an extra numeric covariate column (`extra_<name>`).
EXTRA_PREFIX = "extra_"
#: Suffix of the column flagging imputed values of a numeric column (`<column>_imputed`).
IMPUTED_SUFFIX = "_imputed"
#: How an `ImplausiblePatientError` of a table says to accept the values.
_HOW = (
    "Population.from_dataframe(..., unusual={example}), for the whole column (in a trial spec: "
    "an `unusual` table under [population], next to `csv`)"
)
NO_UNUSUAL: Mapping[str, str] = MappingProxyType({})


# --- randomness -------------------------------------------------------------------------------


def generator(key: Any) -> np.random.Generator:
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
        elif column in BASE_COLUMNS:
            roles["base"].append(column)
        elif column in LABS:
            roles["lab"].append(column)
        elif column in pgx.genes():
            roles["gene"].append(column)
        elif column.startswith(MED_PREFIX) and len(column) > len(MED_PREFIX):
            roles["med"].append(column)
        elif column.startswith(EXTRA_PREFIX) and len(column) > len(EXTRA_PREFIX):
            roles["extra"].append(column)
        elif column.endswith(IMPUTED_SUFFIX):
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

    seed = int(generator(key).integers(0, 2**32 - 1))
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


def table_unusual(unusual: Any, columns: Iterable[Any]) -> Mapping[str, str]:
    """The `unusual` of a table with these columns, checked (`normalise_unusual`): field ->
    reason, for `age`, `weight`, `height`, `bmi` and the lab columns with plausibility
    ranges that the table has."""
    present = set(columns)
    available = [
        *_NUMERIC_BASE,
        "bmi",
        *(c for c in LABS if c in present and c in UNUSUAL_FIELDS),
    ]
    return normalise_unusual(unusual, "Population", available, "the table has")


def _check_plausible(
    table: Mapping[str, np.ndarray],
    columns: list[str],
    ids: np.ndarray,
    imputed: Mapping[str, np.ndarray],
    unusual: Mapping[str, str],
) -> None:
    found = find_implausible({c: table[c] for c in columns}, ids, lifted=unusual)
    if not found:
        return
    marked = []
    for item in found:
        sources = ("weight", "height") if item.field == "bmi" else (item.field,)
        assert item.row is not None
        was_imputed = any(name in imputed and bool(imputed[name][item.row]) for name in sources)
        marked.append(dataclasses.replace(item, imputed=was_imputed))
    raise ImplausiblePatientError(marked, "Population", _HOW)


def validate_table(
    frame: pd.DataFrame,
    *,
    missing: Literal["error", "impute"],
    key: Any,
    unusual: Mapping[str, str] = NO_UNUSUAL,
) -> pd.DataFrame:
    """The canonical, checked table of a cohort (a new DataFrame; the layout is in
    `twins._population`'s docstring): every row and column checked, missing numbers
    imputed (`missing="impute"`, seeded from `key`) or refused (`"error"`), then every
    value checked against its plausibility range except in the columns of `unusual` (as
    `table_unusual` returns it).

    **Raises:** `ValueError` naming the row, the patient id and the column;
    `ImplausiblePatientError` naming every row and column outside the plausibility ranges."""
    if missing not in ("error", "impute"):
        raise ValueError(f"missing must be 'error' or 'impute', got {missing!r}.")
    roles = _classify(frame.columns)
    if roles["unknown"]:
        raise ValueError(
            f"Unknown columns {roles['unknown']}. Accepted: {', '.join(BASE_COLUMNS)}; labs "
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
        [m[len(MED_PREFIX) :] for m in meds], [e[len(EXTRA_PREFIX) :] for e in extras], "Population"
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
        base = name[: -len(IMPUTED_SUFFIX)]
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
    _check_plausible(table, numeric_columns, ids, imputed, unusual)

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
            out[name + IMPUTED_SUFFIX] = combined
    return out
