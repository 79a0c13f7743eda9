r"""Validation of the drug library against real patients: warfarin on the IWPC cohort.

`iwpc_warfarin(csv_path)` predicts every eligible patient's stable weekly warfarin dose two
ways and scores both against the dose the patient actually reached:

- **the twin**: the published Hamberg 2007 model (`twins.drugs.warfarin`), used as published
  (no parameter is fitted to these data): the daily dose whose steady-state INR is 2.5 for the
  patient's age, CYP2C9 and VKORC1, in closed form from the average steady-state
  concentration (`warfarin.maintenance_dose`);
- **IWPC 2009**: the International Warfarin Pharmacogenetics Consortium's pharmacogenetic
  dosing algorithm (`iwpc_2009_dose`).

The IWPC file is read here, by one set of functions that every consumer uses
(`load_iwpc`, and `surrogates.validation`'s features: `read_iwpc_csv`, `iwpc_flag`,
`iwpc_positive`, `iwpc_missing`), so that a field has the same value for all of them. Each
field is parsed strictly: a malformed value raises a `ValueError` naming the row, the file
line, the subject and the column. An empty field means what the IWPC 2009 algorithm says it
means, and nothing else: an empty medication field of the algorithm (amiodarone, the enzyme
inducers) is "not taking it" (0; the algorithm codes "1 if taking, otherwise 0"); an empty
genotype or race is the algorithm's "unknown" / "missing or mixed" term; a patient without a
stable dose, age, height or weight is not scored and is counted by reason
(`iwpc_ineligible`, `iwpc_warfarin(...)["ineligible"]`).

References: International Warfarin Pharmacogenetics Consortium. Estimation of the warfarin
dose with clinical and pharmacogenetic data. N Engl J Med 2009;360(8):753-764.
Hamberg AK et al. Clin Pharmacol Ther 2007;81(4):529-538.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .drugs import get as get_drug
from .drugs import warfarin, warfarin_iwpc

# IWPC 2009 pharmacogenetic algorithm (NEJM 2009;360:753, Supplementary Appendix):
# sqrt(weekly dose, mg) = sum of the terms below.
IWPC_2009_COEFFICIENTS: Mapping[str, float] = {
    "intercept": 5.6044,
    "age_decades": -0.2614,
    "height_cm": 0.0087,
    "weight_kg": 0.0128,
    "VKORC1_AG": -0.8677,
    "VKORC1_AA": -1.6974,
    "VKORC1_unknown": -0.4854,
    "CYP2C9_12": -0.5211,
    "CYP2C9_13": -0.9357,
    "CYP2C9_22": -1.0616,
    "CYP2C9_23": -1.9206,
    "CYP2C9_33": -2.3312,
    "CYP2C9_unknown": -0.2188,
    "asian": -0.1092,
    "black": -0.2760,
    "race_missing_or_mixed": -0.1032,
    "enzyme_inducer": 1.1816,
    "amiodarone": -0.5503,
}

_VKORC1 = {
    "G/G": "GG",
    "A/G": "AG",
    "G/A": "AG",
    "A/A": "AA",
    "-1639 GG": "GG",
    "-1639 AG": "AG",
    "-1639 AA": "AA",
}
CYP2C9_CODES = {
    "*1/*1": "11",
    "*1/*2": "12",
    "*1/*3": "13",
    "*2/*2": "22",
    "*2/*3": "23",
    "*3/*3": "33",
}
_RACE = {
    "White": "white",
    "Asian": "asian",
    "Black or African American": "black",
    "Unknown": "missing",
}
_TARGET_INR = 2.5


def iwpc_missing(value: Any) -> bool:
    """Whether a field of the IWPC file is empty (`None`, or NaN as pandas reads it)."""
    return value is None or (isinstance(value, float) and np.isnan(value))


def iwpc_2009_dose(
    *,
    age_decades: Any,
    height_cm: Any,
    weight_kg: Any,
    vkorc1: Any = None,
    cyp2c9: Any = None,
    race: Any = None,
    enzyme_inducer: Any = 0,
    amiodarone: Any = 0,
) -> np.ndarray:
    r"""Weekly warfarin dose (mg) by the IWPC 2009 pharmacogenetic algorithm.

    $$\sqrt{\text{dose}} = 5.6044 - 0.2614\,\text{age (decades)} + 0.0087\,\text{height (cm)}
      + 0.0128\,\text{weight (kg)} - 0.8677\,\text{VKORC1 A/G} - 1.6974\,\text{A/A}
      - 0.4854\,\text{VKORC1 unknown} - 0.5211\,{*1/*2} - 0.9357\,{*1/*3} - 1.0616\,{*2/*2}
      - 1.9206\,{*2/*3} - 2.3312\,{*3/*3} - 0.2188\,\text{CYP2C9 unknown}
      - 0.1092\,\text{Asian} - 0.2760\,\text{Black} - 0.1032\,\text{missing or mixed race}
      + 1.1816\,\text{enzyme inducer} - 0.5503\,\text{amiodarone}$$

    Every argument is a scalar or an array (all broadcast together).

    **Arguments:**

    - `age_decades`: age in decades as IWPC codes it: 1 for 10-19 years, ..., 9 for 90+.
    - `height_cm`, `weight_kg`.
    - `vkorc1`: VKORC1 -1639G>A (rs9923231): `"G/G"`, `"A/G"` (or `"G/A"`), `"A/A"`, the
      `twins.pgx` labels `"-1639 GG"`/`"AG"`/`"AA"`, or `None` (unknown).
    - `cyp2c9`: `"*1/*1"`, `"*1/*2"`, `"*1/*3"`, `"*2/*2"`, `"*2/*3"`, `"*3/*3"`, or `None`
      (unknown). The algorithm has no terms for other alleles: pass `None` for them (as
      done on the IWPC data, where it reproduces the published figures).
    - `race`: `"White"`, `"Asian"`, `"Black or African American"`, or `None`/`"Unknown"`
      (missing or mixed).
    - `enzyme_inducer`: 1 if taking carbamazepine, phenytoin, rifampin or rifampicin.
    - `amiodarone`: 1 if taking amiodarone.

    **Returns:** the weekly dose (mg), an array of the broadcast shape.

    **Raises:** `ValueError` naming the argument, the position and the value for a genotype
    or race outside those lists, or a non-finite number.

    References: International Warfarin Pharmacogenetics Consortium. N Engl J Med
    2009;360(8):753-764 (coefficients from its Supplementary Appendix).
    """
    c = IWPC_2009_COEFFICIENTS
    shape = np.broadcast_shapes(
        *(
            np.shape(x)
            for x in (
                age_decades,
                height_cm,
                weight_kg,
                vkorc1,
                cyp2c9,
                race,
                enzyme_inducer,
                amiodarone,
            )
        )
    )

    def numbers(name, x):
        a = np.broadcast_to(np.asarray(x, dtype=float), shape)
        bad = np.flatnonzero(~np.isfinite(a))
        if bad.size:
            raise ValueError(
                f"iwpc_2009_dose: {name} at position {int(bad[0])} is {a.flat[bad[0]]}; "
                "expected a finite number."
            )
        return a

    def labels(name, x, table) -> np.ndarray:
        """Codes of the table's values; "" for a missing value."""
        a = np.broadcast_to(np.asarray(x, dtype=object), shape)
        out = np.full(shape, "", dtype=object)
        for i, v in enumerate(a.flat):
            if iwpc_missing(v):
                continue
            if isinstance(v, str) and v.strip() in table:
                out.flat[i] = table[v.strip()]
                continue
            raise ValueError(
                f"iwpc_2009_dose: {name} at position {i} is {v!r}; expected one of "
                f"{sorted(table)} or None (unknown)."
            )
        return out

    age = numbers("age_decades", age_decades)
    s = (
        c["intercept"]
        + c["age_decades"] * age
        + c["height_cm"] * numbers("height_cm", height_cm)
        + c["weight_kg"] * numbers("weight_kg", weight_kg)
        + c["enzyme_inducer"] * numbers("enzyme_inducer", enzyme_inducer)
        + c["amiodarone"] * numbers("amiodarone", amiodarone)
    )
    vk = labels("vkorc1", vkorc1, _VKORC1)
    s = s + c["VKORC1_AG"] * (vk == "AG") + c["VKORC1_AA"] * (vk == "AA")
    s = s + c["VKORC1_unknown"] * (vk == "")
    cyp = labels("cyp2c9", cyp2c9, CYP2C9_CODES)
    for key in ("12", "13", "22", "23", "33"):
        s = s + c[f"CYP2C9_{key}"] * (cyp == key)
    s = s + c["CYP2C9_unknown"] * (cyp == "")
    r = labels("race", race, _RACE)
    s = s + c["asian"] * (r == "asian") + c["black"] * (r == "black")
    s = s + c["race_missing_or_mixed"] * ((r == "missing") | (r == ""))
    return np.asarray(s, dtype=float) ** 2


# ----------------------------------------------------------------------------- the IWPC file
#
# The one reader of the IWPC file: `load_iwpc` here and the machine-learning features of
# `surrogates._iwpc_features` read every field through the functions below, so that the same
# field of the same row has the same value in both.

#: The columns of the IWPC file (PharmGKB layout) that `load_iwpc` reads, by key.
IWPC_COLUMNS: Mapping[str, str] = {
    "id": "PharmGKB Subject ID",
    "dose": "Therapeutic Dose of Warfarin",
    "age": "Age",
    "height": "Height (cm)",
    "weight": "Weight (kg)",
    "race": "Race (OMB)",
    "cyp2c9": "CYP2C9 consensus",
    "vkorc1": "VKORC1     -1639 consensus",
    "amiodarone": "Amiodarone (Cordarone)",
    "carbamazepine": "Carbamazepine (Tegretol)",
    "phenytoin": "Phenytoin (Dilantin)",
    "rifampin": "Rifampin or Rifampicin",
}

#: The medication columns of the IWPC 2009 algorithm (amiodarone; the enzyme inducers
#: carbamazepine, phenytoin, rifampin). The algorithm codes each term "1 if the patient takes
#: the drug, otherwise 0" (IWPC, N Engl J Med 2009;360:753-764, Supplementary Appendix), so
#: an empty field counts as not taking it (0), and with this coding the algorithm reproduces
#: its figures on the IWPC file (docs/validation-iwpc.md).
IWPC_ALGORITHM_MEDICATIONS: tuple[str, ...] = (
    IWPC_COLUMNS["amiodarone"],
    IWPC_COLUMNS["carbamazepine"],
    IWPC_COLUMNS["phenytoin"],
    IWPC_COLUMNS["rifampin"],
)
#: Why a patient of the file cannot be scored (the IWPC 2009 algorithm needs these fields,
#: and the stable dose is what is predicted), in the order the reasons are counted.
IWPC_INELIGIBLE: Mapping[str, str] = {
    "dose": "no therapeutic (stable) dose",
    "age": "age not reported",
    "height": "height not reported",
    "weight": "weight not reported",
}
_AGE_BINS = {f"{10 * k} - {10 * k + 9}": k for k in range(1, 9)} | {"90+": 9}
_CYP2C9_DIPLOTYPE = re.compile(r"^\*\w+/\*\w+$")


def dose_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    err = np.abs(predicted - actual)
    return {
        "n": int(actual.size),
        "mae": float(np.mean(err)),
        "within20": float(np.mean(err <= 0.2 * actual)),
        "r2": float(
            1.0 - np.sum((actual - predicted) ** 2) / np.sum((actual - actual.mean()) ** 2)
        ),
    }


def row_label(row: int, subject: Any) -> str:
    """`row 3 (file line 5, subject PA...)`: 0-based data row and the line in the CSV file."""
    return f"row {int(row)} (file line {int(row) + 2}, subject {subject})"


def iwpc_value_error(where: str, column: str, value: Any, expected: str) -> ValueError:
    """The error for a field of the IWPC file: the row (`row_label`), column, value and what
    was expected."""
    return ValueError(f"IWPC file: {where}: column {column!r} is {value!r}; expected {expected}.")


def iwpc_flag(value: Any, column: str, where: str) -> float:
    """A 0/1 field of the IWPC file (a medication, smoking, a condition), read one way for
    every consumer.

    `1`/`0` (also `"1"`, `"0"`, `"YES"`, `"NO"`, any case) give 1.0/0.0. An empty field
    gives 0.0 (not taking it) for the medications of the IWPC 2009 algorithm
    (`IWPC_ALGORITHM_MEDICATIONS`: the algorithm codes them "1 if taking the drug, otherwise
    0"), and NaN (unknown, not guessed) for every other column, which no published rule
    gives a value.

    **Arguments:** the field's `value`, its `column` (the IWPC column name) and `where` (the
    row, from `row_label`).

    **Raises:** `ValueError` naming the row, the column and the value for anything else.

    References: International Warfarin Pharmacogenetics Consortium. N Engl J Med
    2009;360(8):753-764 (Supplementary Appendix: the algorithm's coding).
    """
    if iwpc_missing(value):
        return 0.0 if column in IWPC_ALGORITHM_MEDICATIONS else float("nan")
    text = str(value).strip().upper()
    if text in ("YES", "NO"):
        return float(text == "YES")
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if number not in (0.0, 1.0):
        empty = "empty (not taking it)" if column in IWPC_ALGORITHM_MEDICATIONS else "empty"
        raise iwpc_value_error(where, column, value, f"0, 1, YES, NO or {empty}")
    return number


def iwpc_positive(value: Any, column: str, where: str) -> float:
    """A number > 0 of the IWPC file (a dose, a height, a weight).

    **Raises:** `ValueError` naming the row, the column and the value for anything else,
    an empty field included."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number > 0 or not np.isfinite(number):
        raise iwpc_value_error(where, column, value, "a number > 0")
    return number


def read_iwpc_csv(
    csv_path: str | os.PathLike[str], *, columns: Sequence[str] = (), who: str = "iwpc_warfarin"
) -> pd.DataFrame:
    """The IWPC file as pandas reads it (an empty field is NaN), once its columns are checked.

    **Arguments:** `csv_path` (PharmGKB's column layout, e.g. `iwpc_warfarin_train.csv`),
    `columns` (columns needed besides `IWPC_COLUMNS`), `who` (named in the error).

    **Raises:** `ValueError` naming the file and every missing column.
    """
    raw = pd.read_csv(csv_path)
    wanted = [*IWPC_COLUMNS.values(), *(c for c in columns if c not in IWPC_COLUMNS.values())]
    missing = [c for c in wanted if c not in raw.columns]
    if missing:
        raise ValueError(
            f"{who}: {os.fspath(csv_path)} has no column(s) {missing}; the IWPC file layout "
            "(PharmGKB) is expected."
        )
    return raw


def _ineligible(col: Mapping[str, list[Any]], i: int) -> str | None:
    """The first reason (`IWPC_INELIGIBLE`) why row `i` cannot be scored, or None."""
    for key, reason in IWPC_INELIGIBLE.items():
        if iwpc_missing(col[key][i]):
            return reason
    return None


def iwpc_ineligible(csv_path: str | os.PathLike[str]) -> dict[str, int]:
    """Patients of an IWPC file that `load_iwpc` leaves out, counted by reason (the first of
    `IWPC_INELIGIBLE` that applies; every reason is listed, with 0 where none). On
    `iwpc_warfarin_train.csv`: no therapeutic dose 183, age 28, height 863, weight 27 of
    4,982, leaving 3,881."""
    raw = read_iwpc_csv(csv_path, who="iwpc_ineligible")
    col = {key: raw[name].tolist() for key, name in IWPC_COLUMNS.items()}
    reasons = [_ineligible(col, i) for i in range(len(raw))]
    return {reason: reasons.count(reason) for reason in IWPC_INELIGIBLE.values()}


def load_iwpc(csv_path: str | os.PathLike[str]) -> pd.DataFrame:
    """The IWPC patients eligible for dose prediction, with the inputs both predictors need.

    Eligible: a therapeutic (stable) dose and age, height and weight all reported (on
    `iwpc_warfarin_train.csv`: 3,881 of 4,982 patients; `iwpc_ineligible` counts the others
    by reason). Columns of the result: `id`, `row` (0-based data row of the file), `dose`
    (mg/week), `age_decades`, `age` (years, the middle of the IWPC decade: 10 x decades +
    5), `height`, `weight`, `race` (`None` where empty: the algorithm's "missing or mixed
    race"), `cyp2c9`, `vkorc1` (the consensus genotypes, `None` where empty: the algorithm's
    "unknown"), `enzyme_inducer`, `amiodarone` (0/1, `iwpc_flag`: an empty medication field
    counts as not taking it, the IWPC 2009 algorithm's coding).

    **Raises:** `ValueError` naming the row, the file line, the subject and the column for
    a missing column, an unknown age bin, a dose or body size that is not a number > 0, a
    race, CYP2C9 diplotype or VKORC1 genotype outside those the file uses, or a medication
    field other than 0, 1 or empty.

    References: International Warfarin Pharmacogenetics Consortium. N Engl J Med
    2009;360(8):753-764 (patient selection and coding).
    """
    df = read_iwpc_csv(csv_path)
    col = {key: df[name].tolist() for key, name in IWPC_COLUMNS.items()}
    out: dict[str, list[Any]] = {k: [] for k in _OUT_COLUMNS}
    for i in range(len(df)):
        if _ineligible(col, i) is not None:
            continue
        where = row_label(i, col["id"][i])
        decades = _AGE_BINS.get(str(col["age"][i]).strip())
        if decades is None:
            raise iwpc_value_error(
                where, IWPC_COLUMNS["age"], col["age"][i], f"one of {list(_AGE_BINS)}"
            )
        out["id"].append(col["id"][i])
        out["row"].append(i)
        out["age_decades"].append(float(decades))
        out["age"].append(10.0 * decades + 5.0)
        for key in ("dose", "height", "weight"):
            out[key].append(iwpc_positive(col[key][i], IWPC_COLUMNS[key], where))
        for key, known in (("race", _RACE), ("vkorc1", _VKORC1)):
            value = col[key][i]
            if not iwpc_missing(value) and str(value).strip() not in known:
                raise iwpc_value_error(
                    where, IWPC_COLUMNS[key], value, f"one of {list(known)} or empty"
                )
            out[key].append(None if iwpc_missing(value) else str(value).strip())
        value = col["cyp2c9"][i]
        if not iwpc_missing(value) and not _CYP2C9_DIPLOTYPE.match(str(value).strip()):
            raise iwpc_value_error(
                where, IWPC_COLUMNS["cyp2c9"], value, "a diplotype such as '*1/*3' or empty"
            )
        out["cyp2c9"].append(None if iwpc_missing(value) else str(value).strip())
        inducer = [
            iwpc_flag(col[k][i], IWPC_COLUMNS[k], where)
            for k in ("carbamazepine", "phenytoin", "rifampin")
        ]
        out["enzyme_inducer"].append(max(inducer))
        out["amiodarone"].append(iwpc_flag(col["amiodarone"][i], IWPC_COLUMNS["amiodarone"], where))
    return pd.DataFrame(out)


_OUT_COLUMNS = (
    "id",
    "row",
    "dose",
    "age_decades",
    "age",
    "height",
    "weight",
    "race",
    "cyp2c9",
    "vkorc1",
    "enzyme_inducer",
    "amiodarone",
)


def _texts(data: pd.DataFrame, column: str) -> list[str | None]:
    return [None if iwpc_missing(v) else str(v) for v in data[column].tolist()]


def twin_weekly_dose(age: float, cyp2c9: str, vkorc1: str, *, target_inr: float = 2.5) -> float:
    """Weekly racemic warfarin dose (mg) that the Hamberg 2007 twin predicts.

    The typical patient (eta = 0) of the published model with this age (years), CYP2C9
    diplotype and VKORC1 -1639 genotype; the once-daily dose whose steady-state INR is
    `target_inr` (`warfarin.maintenance_dose`, closed form from the average steady-state
    concentration), times 7. Weight, height, race and co-medication are not in the model.
    """
    drug = get_drug(warfarin.NAME)
    params = drug.typical_params({"AGE": age, "CYP2C9": cyp2c9, "VKORC1": vkorc1})
    return 7.0 * warfarin.maintenance_dose(params, target_inr=target_inr, interval=24.0)


def iwpc_warfarin(
    csv_path: str | os.PathLike[str], *, n_folds: int = 5, recalibrated: bool = True
) -> dict[str, Any]:
    """Stable weekly warfarin dose of the IWPC patients: the twin against IWPC 2009.

    For every eligible patient (`load_iwpc`: stable dose, age, height and weight known):

    - the twin (Hamberg 2007, published values, typical patient): `twin_weekly_dose` at the
      middle of the patient's age decade, for patients whose CYP2C9 is one of the model's
      six diplotypes and whose VKORC1 -1639 genotype is known; the others are counted under
      `"excluded"` (the model has no parameters for them);
    - IWPC 2009 (`iwpc_2009_dose`) for every eligible patient; CYP2C9 diplotypes outside
      the algorithm's list count as unknown.

    **Arguments:**

    - `csv_path`: the IWPC data in PharmGKB's column layout (e.g.
      `iwpc_warfarin_train.csv`).
    - `n_folds`: folds of the cross-validated rescaling (below).
    - `recalibrated`: also cross-validate the recalibrated twin (`"recalibrated_cv"`, five
      MAP fits: most of this function's time); `False` leaves that key and its column out.

    **Returns:** a dict with the twin's `"n"`, `"mae"` (mg/week), `"within20"` (fraction of
    patients predicted within 20% of their actual dose), `"r2"` (1 - SS_res/SS_tot) at top
    level; `"iwpc_2009"` (the same on all eligible patients) and
    `"iwpc_2009_same_patients"` (on the twin's patients); `"excluded"` (patients the twin
    cannot predict: reason -> count); `"ineligible"` (patients of the file that neither
    predictor is scored on, `iwpc_ineligible`: reason -> count);
    `"twin_rescaled_cv"`: the twin's doses times one factor (the geometric mean of actual /
    predicted) fitted on the other folds (patients split by row number modulo `n_folds`),
    scored on the held-out fold, which separates a systematic bias of the published model
    from its ranking of patients; `"recalibrated_cv"`: the recalibrated twin
    (`twins.drugs.warfarin_iwpc`, covariate model re-estimated by MAP on the interval
    likelihood of the stable doses, `warfarin_recalibration_cv`) fitted on the other folds
    and scored on the held-out fold (the same folds), with its per-fold fits under
    `"folds"`; `"method"` (text) and `"predictions"` (a DataFrame; column
    `recalibrated_cv`).
    """
    data = load_iwpc(csv_path)
    cyp2c9, vkorc1 = _texts(data, "cyp2c9"), _texts(data, "vkorc1")
    ages = data["age"].to_numpy(dtype=float)
    iwpc = iwpc_2009_dose(
        age_decades=data["age_decades"].to_numpy(),
        height_cm=data["height"].to_numpy(),
        weight_kg=data["weight"].to_numpy(),
        vkorc1=np.asarray(vkorc1, dtype=object),
        cyp2c9=np.asarray([v if v in CYP2C9_CODES else None for v in cyp2c9], dtype=object),
        race=np.asarray(_texts(data, "race"), dtype=object),
        enzyme_inducer=data["enzyme_inducer"].to_numpy(),
        amiodarone=data["amiodarone"].to_numpy(),
    )
    reasons = np.full(len(data), "", dtype=object)
    reasons[[v is None for v in cyp2c9]] = "CYP2C9 not genotyped"
    outside = [v is not None and v not in warfarin.CYP2C9_CL_DECREASE for v in cyp2c9]
    reasons[np.asarray(outside, dtype=bool) & (reasons == "")] = (
        "CYP2C9 diplotype outside Hamberg 2007 (*5, *6, *11, *13 carriers)"
    )
    reasons[np.asarray([v is None for v in vkorc1]) & (reasons == "")] = (
        "VKORC1 -1639 not genotyped"
    )
    ok = reasons == ""
    cache: dict[tuple[float, str, str], float] = {}
    twin = np.full(len(data), np.nan)
    for i in np.flatnonzero(ok):
        key = (float(ages[i]), str(cyp2c9[i]), str(vkorc1[i]))
        if key not in cache:
            cache[key] = twin_weekly_dose(*key, target_inr=_TARGET_INR)
        twin[i] = cache[key]
    actual = data["dose"].to_numpy()
    result: dict[str, Any] = dose_metrics(actual[ok], twin[ok])
    result["iwpc_2009"] = dose_metrics(actual, iwpc)
    result["iwpc_2009_same_patients"] = dose_metrics(actual[ok], iwpc[ok])
    result["excluded"] = {
        str(r): int(np.sum(reasons == r)) for r in sorted(set(reasons[~ok].tolist()))
    }
    result["ineligible"] = iwpc_ineligible(csv_path)
    # Cross-validated single-factor rescaling of the twin (not a re-fit of the model).
    idx = np.flatnonzero(ok)
    folds = np.arange(idx.size) % n_folds
    rescaled = np.empty(idx.size)
    log_ratio = np.log(actual[idx] / twin[idx])
    factors = []
    for k in range(n_folds):
        factor = float(np.exp(np.mean(log_ratio[folds != k])))
        factors.append(factor)
        rescaled[folds == k] = factor * twin[idx][folds == k]
    result["twin_rescaled_cv"] = dose_metrics(actual[idx], rescaled) | {"factors": factors}
    result["method"] = (
        "twin: Hamberg 2007 typical patient (published values, no fitting), age = middle of "
        "the IWPC decade, once-daily dose with steady-state INR 2.5 from the average "
        "steady-state S-warfarin concentration (closed form); IWPC 2009 pharmacogenetic "
        "algorithm on all eligible patients."
    )
    if not recalibrated:
        result["predictions"] = data.assign(twin=twin, iwpc_2009=iwpc, excluded=reasons)
        return result
    # The recalibrated twin (warfarin_iwpc_recalibrated), cross-validated: its covariate model
    # fitted by MAP on the other folds (the same folds), the held-out fold predicted at eta = 0.
    fit_data = warfarin_recalibration_data(csv_path)
    if not np.array_equal(fit_data["position"], idx):
        raise RuntimeError("iwpc_warfarin: the recalibration patients differ from the twin's.")
    recal = warfarin_recalibration_cv(fit_data, n_folds=n_folds)
    result["recalibrated_cv"] = dose_metrics(actual[idx], recal["predicted"]) | {
        "folds": recal["folds"]
    }
    recal_full = np.full(len(data), np.nan)
    recal_full[idx] = recal["predicted"]
    result["method"] += (
        " Recalibrated twin (warfarin_iwpc_recalibrated): Hamberg 2007 covariate model "
        "re-estimated by MAP on the interval likelihood of the stable doses, 5-fold "
        "cross-validated on the same folds."
    )
    result["predictions"] = data.assign(
        twin=twin, iwpc_2009=iwpc, recalibrated_cv=recal_full, excluded=reasons
    )
    return result


# ----------------------------------------------------------------------------- recalibration

#: The IWPC column with the target INR range of the patient's indication (`"2-3"`,
#: `"1.7-2.8"`, `"2 to 3"`); empty means the usual 2-3.
IWPC_TARGET_RANGE_COLUMN = "Estimated Target INR Range Based on Indication"
_TARGET_RANGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:-|to)\s*(\d+(?:\.\d+)?)\s*$")
_RACE_GROUP = {"white": "white", "asian": "asian", "black": "black", "missing": "missing"}


def iwpc_target_range(value: Any, where: str) -> tuple[float, float]:
    """The target INR range of one patient of the IWPC file: `(lo, hi)`; empty = (2, 3).

    **Raises:** `ValueError` naming the row and the value if it is not `"lo-hi"` or
    `"lo to hi"` with 1 < lo < hi.
    """
    if iwpc_missing(value):
        return (2.0, 3.0)
    match = _TARGET_RANGE.match(str(value))
    lo, hi = (float(match.group(1)), float(match.group(2))) if match else (0.0, 0.0)
    if not 1.0 < lo < hi:
        raise iwpc_value_error(
            where, IWPC_TARGET_RANGE_COLUMN, value, "a range 'lo-hi' with 1 < lo < hi, or empty"
        )
    return (lo, hi)


def warfarin_recalibration_data(csv_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The patients and inputs of the warfarin recalibration (`twins.drugs.warfarin_iwpc`).

    The twin's patients of `iwpc_warfarin` (`load_iwpc`, a CYP2C9 diplotype of Hamberg 2007,
    VKORC1 -1639 genotyped: 3,361 on `iwpc_warfarin_train.csv`), with their stable weekly
    dose, target INR range (`iwpc_target_range`) and covariates.

    **Returns:** `{"cov"` (`warfarin_iwpc.design` arrays), `"dose"` (mg/week), `"lo"`, `"hi"`,
    `"row"` (file row), `"position"` (index into `load_iwpc`'s rows)`}`.
    """
    data = load_iwpc(csv_path)
    raw = read_iwpc_csv(csv_path, columns=[IWPC_TARGET_RANGE_COLUMN])
    cyp2c9, vkorc1 = _texts(data, "cyp2c9"), _texts(data, "vkorc1")
    races = _texts(data, "race")
    keep = [
        i
        for i in range(len(data))
        if cyp2c9[i] in warfarin.CYP2C9_CL_DECREASE and vkorc1[i] is not None
    ]
    rows = data["row"].to_numpy()[keep]
    ranges = [
        iwpc_target_range(
            raw[IWPC_TARGET_RANGE_COLUMN].iloc[r], row_label(r, raw[IWPC_COLUMNS["id"]].iloc[r])
        )
        for r in rows
    ]
    cov = warfarin_iwpc.design(
        age=data["age"].to_numpy()[keep],
        weight=data["weight"].to_numpy()[keep],
        cyp2c9=[cyp2c9[i] for i in keep],
        vkorc1=[_VKORC1[vkorc1[i]] for i in keep],
        race=["missing" if races[i] is None else _RACE[races[i]] for i in keep],
        amiodarone=data["amiodarone"].to_numpy()[keep],
        inducer=data["enzyme_inducer"].to_numpy()[keep],
    )
    return {
        "cov": cov,
        "dose": data["dose"].to_numpy()[keep],
        "lo": np.array([r[0] for r in ranges]),
        "hi": np.array([r[1] for r in ranges]),
        "row": rows,
        "position": np.asarray(keep, dtype=int),
    }


def warfarin_recalibration_cv(
    fit_data: Mapping[str, Any], *, n_folds: int = 5, target_inr: float = _TARGET_INR
) -> dict[str, Any]:
    """K-fold cross-validation of the recalibrated warfarin model (MAP).

    Folds by position modulo `n_folds` among `fit_data`'s patients (as `iwpc_warfarin`
    splits them); for each fold, `warfarin_iwpc.fit_map` on the others and the held-out
    patients' weekly dose at eta = 0 (`warfarin_iwpc.predict_weekly_dose`, steady-state INR
    `target_inr`).

    **Returns:** `{"predicted"` (mg/week per patient), `"folds"` (per fold: `"x"`, `"se"`,
    `"mae"`)`}`.
    """
    n = fit_data["dose"].size
    folds = np.arange(n) % n_folds
    predicted = np.empty(n)
    per_fold = []
    for k in range(n_folds):
        fit = warfarin_iwpc.fit_map(
            fit_data["cov"],
            fit_data["dose"],
            fit_data["lo"],
            fit_data["hi"],
            weights=(folds != k).astype(float),
        )
        test_cov = {c: v[folds == k] for c, v in fit_data["cov"].items()}
        predicted[folds == k] = warfarin_iwpc.predict_weekly_dose(
            fit["x"], test_cov, target_inr=target_inr
        )
        mae = float(np.mean(np.abs(predicted[folds == k] - fit_data["dose"][folds == k])))
        per_fold.append({"x": fit["x"].tolist(), "se": fit["se"].tolist(), "mae": mae})
    return {"predicted": predicted, "folds": per_fold}
