"""The results folder of a virtual trial, read and checked: `read_results` -> `Results`.

The trial engine writes a folder (the layout is in `docs/trial-report.md`):

```
DIR/spec.json                     the trial specification
DIR/manifest.json                 run bookkeeping (chunks done, complete, wall time)
DIR/patients/part-00000.parquet   one row per (patient, arm)
DIR/bands/part-00000.parquet      per (arm, day) histogram of the band output (at every
                                  recorded time: `band_points` per dosing period, or in a
                                  folder written before them the level before each dose)
```

`read_results` reads it and checks it against `spec.json` and the checksums of
`manifest.json`; the spec accessors (`arm_names`, `arm_labels`, `reference_arm`,
`spec_endpoints`, `published_figure`) read the spec it holds. The statistics computed from
a `Results` are in `twins.trials._summary`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ._folder import damaged_parts, unrecorded_parts

#: The endpoint kinds of `spec.json`.
ENDPOINT_KINDS: tuple[str, ...] = ("mean", "proportion", "time_to_event")

_BAND_COLUMNS = ("arm", "day", "bin", "count")


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


def spec_endpoints(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The endpoints of `spec`, in order: `name`, `label` (the name where none is given),
    `kind` and `unit` (`""` where none is given)."""
    return [
        {
            "name": str(e["name"]),
            "label": str(e.get("label") or e["name"]),
            "kind": str(e["kind"]),
            "unit": str(e.get("unit") or ""),
        }
        for e in spec.get("endpoints", [])
    ]


def published_figure(spec: dict[str, Any], arm: str, endpoint: str) -> float:
    """The `spec["published"]` figure of `arm` and `endpoint`, or NaN where none is given."""
    published = spec.get("published") or {}
    value = (published.get(arm) or {}).get(endpoint) if isinstance(published, dict) else None
    return math.nan if value is None else float(value)


def _unique(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _endpoint_columns(spec: dict[str, Any]) -> list[str]:
    cols: list[str] = []
    for e in spec_endpoints(spec):
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


def _read_part(file: Path, required: list[str], names: list[str]) -> pa.Table:
    """The columns `required` of one part, checked: every column present, no arm outside
    `names`."""
    schema = pq.read_schema(file)
    missing = [c for c in required if c not in schema.names]
    if missing:
        raise ValueError(
            f"{file} lacks the column(s) {missing}, required by spec.json; it has {schema.names}."
        )
    table = pq.read_table(file, columns=required)
    _check_arms(table, file, names)
    return table


def _read_parts(folder: Path, required: list[str], names: list[str]) -> tuple[list[Path], pa.Table]:
    files = _parts(folder)
    if not files:
        raise FileNotFoundError(
            f"No result parts in {folder}: expected files named part-00000.parquet, "
            "part-00001.parquet, ..."
        )
    tables = [_read_part(file, required, names) for file in files]
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
    for e in spec_endpoints(spec):
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
    """The band histograms of all parts, summed part by part into one dense table of
    (arm, time, bin) counts: memory is bounded by one part and the table (arms x times x
    bins), not by the number of parts (a run of 10^6 patients per arm writes ~50-100)."""
    names = arm_names(spec)
    if spec.get("bands") is None:
        return _empty_bands(names)
    folder = root / "bands"
    files = _parts(folder)
    if not files:
        raise FileNotFoundError(
            f"No result parts in {folder}: expected files named part-00000.parquet, "
            "part-00001.parquet, ..."
        )
    n_bins = len(spec["bands"]["edges"]) - 1
    days = np.zeros(0, np.float64)
    dense = np.zeros((len(names), 0, n_bins + 2), np.int64)  # column j: bin j - 1
    for file in files:
        table = _read_part(file, list(_BAND_COLUMNS), names)
        arm = table["arm"].combine_chunks().cast(pa.string()).dictionary_encode()
        position = np.array([names.index(str(a)) for a in arm.dictionary.to_pylist()], np.int64)
        arm_codes = position[arm.indices.to_numpy()]
        day = table["day"].to_numpy().astype(np.float64)
        b = table["bin"].to_numpy().astype(np.int64)
        count = table["count"].to_numpy()
        bad = (b < -1) | (b > n_bins)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"Bins in {file} must lie in -1..{n_bins} (spec.json has {n_bins + 1} edges), "
                f"we instead got bin {b[i]} for arm {names[arm_codes[i]]!r}."
            )
        if (count < 0).any():
            raise ValueError(f"Counts in {file} must be >= 0.")
        new = np.setdiff1d(day, days)
        if new.size:  # times not seen in earlier parts (usually only in the first part)
            merged = np.union1d(days, new)
            grown = np.zeros((len(names), merged.size, n_bins + 2), np.int64)
            grown[:, np.searchsorted(merged, days)] = dense
            days, dense = merged, grown
        np.add.at(dense, (arm_codes, np.searchsorted(days, day), b + 1), count.astype(np.int64))
    a, t, j = np.nonzero(dense)  # sorted by arm (spec order), time, bin
    return pd.DataFrame(
        {
            "arm": pd.Categorical.from_codes(a, categories=names),
            "day": days[t],
            "bin": (j - 1).astype(np.int32),
            "count": dense[a, t, j],
        }
    )


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
