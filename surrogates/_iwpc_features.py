r"""Features of the IWPC warfarin patients for the machine-learning dose models.

The patients, their stable weekly dose and the inputs of the published predictors come from
`twins.validation` (`iwpc_warfarin(csv)["predictions"]`: `load_iwpc`'s parsing and patient
selection, the IWPC 2009 dose and the Hamberg 2007 twin's dose). This module adds the other
clinical and genotype columns of the IWPC file, read with `twins.validation`'s reader
(`read_iwpc_csv`, `iwpc_flag`, `iwpc_missing`, `iwpc_value_error`), so that a field has the
same value here as there, and each parsed strictly: a value outside the expected ones raises
a `ValueError` naming the row, the file line, the subject and the column. An empty field
means what `twins.validation` says: an empty medication field of the IWPC 2009 algorithm
(amiodarone, the enzyme inducers: the `amiodarone` and `enzyme_inducer` features) is 0, not
taking it, as the algorithm codes it; every other empty field is unknown (NaN, routed by the
trees), never guessed, except VKORC1 -1639, which is also imputed from linked VKORC1 SNPs by
the IWPC's published rules (below).

VKORC1 -1639G>A (rs9923231) imputation, IWPC 2009 Supplementary Appendix: where -1639 is
not genotyped, take it from 1173C>T (rs9934438; C/C -> G/G, C/T -> A/G, T/T -> A/A, any
race), else, for patients whose race is neither Black nor missing, from 2255C>T (rs2359612;
same mapping) or from 1542G>C (rs8050894; G/G -> G/G, C/G -> A/G, C/C -> A/A).

References: International Warfarin Pharmacogenetics Consortium. Estimation of the warfarin
dose with clinical and pharmacogenetic data. N Engl J Med 2009;360(8):753-764 (and its
Supplementary Appendix).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from twins.drugs import warfarin
from twins.validation import (
    CYP2C9_CODES,
    IWPC_COLUMNS,
    iwpc_2009_dose,
    iwpc_flag,
    iwpc_ineligible,
    iwpc_missing,
    iwpc_value_error,
    iwpc_warfarin,
    read_iwpc_csv,
    row_label,
    twin_weekly_dose,
)

# The columns of the IWPC file read here, besides those `twins.validation.load_iwpc` reads.
_SNP_COLUMNS: Mapping[str, tuple[str, str, str]] = {
    # feature name: (column, reference allele, counted variant allele)
    "vkorc1_1639_a": ("VKORC1     -1639 consensus", "G", "A"),
    "vkorc1_497_g": ("VKORC1 497 consensus", "T", "G"),
    "vkorc1_1173_t": ("VKORC1 1173 consensus", "C", "T"),
    "vkorc1_1542_c": ("VKORC1 1542 consensus", "G", "C"),
    "vkorc1_3730_a": ("VKORC1 3730 consensus", "G", "A"),
    "vkorc1_2255_t": ("VKORC1 2255 consensus", "C", "T"),
    "vkorc1_4451_a": ("VKORC1     -4451 consensus", "C", "A"),
}
_FLAG_COLUMNS: Mapping[str, str] = {
    "aspirin": "Aspirin",
    "acetaminophen": "Acetaminophen or Paracetamol (Tylenol)",
    "simvastatin": "Simvastatin (Zocor)",
    "atorvastatin": "Atorvastatin (Lipitor)",
    "fluvastatin": "Fluvastatin (Lescol)",
    "lovastatin": "Lovastatin (Mevacor)",
    "pravastatin": "Pravastatin (Pravachol)",
    "rosuvastatin": "Rosuvastatin (Crestor)",
    "sulfonamide": "Sulfonamide Antibiotics",
    "macrolide": "Macrolide Antibiotics",
    "azole": "Anti-fungal Azoles",
    "herbal": "Herbal Medications, Vitamins, Supplements",
    "smoker": "Current Smoker",
    "diabetes": "Diabetes",
    "heart_failure": "Congestive Heart Failure and/or Cardiomyopathy",
    "valve_replacement": "Valve Replacement",
}
_GENDER = "Gender"
_ETHNICITY = "Ethnicity (OMB)"
_INDICATION = "Indication for Warfarin Treatment"
_TARGET_INR = "Target INR"
_TARGET_RANGE = "Estimated Target INR Range Based on Indication"
_CYP2C9_COLUMN = "CYP2C9 consensus"
_ID = "PharmGKB Subject ID"
EXTRA_COLUMNS: tuple[str, ...] = (
    *(c for c, _, _ in _SNP_COLUMNS.values() if c != "VKORC1     -1639 consensus"),
    *_FLAG_COLUMNS.values(),
    _GENDER,
    _ETHNICITY,
    _INDICATION,
    _TARGET_INR,
    _TARGET_RANGE,
)
REQUIRED_COLUMNS: tuple[str, ...] = (*IWPC_COLUMNS.values(), *EXTRA_COLUMNS)

# IWPC indication codes: 1 DVT, 2 PE, 3 atrial fibrillation/flutter, 4 heart valve,
# 5 cardiomyopathy/LV dilation, 6 stroke, 7 post-orthopedic, 8 other.
_INDICATIONS = tuple(range(1, 9))
_CYP2C9_DIPLOTYPE = re.compile(r"^\*(\w+)/\*(\w+)$")
_TARGET_RANGE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:-|to)\s*(\d+(?:\.\d+)?)\s*$")
_SEX: Mapping[str, float] = {"male": 1.0, "female": 0.0}
_HISPANIC: Mapping[str, float] = {
    "hispanic or latino": 1.0,
    "not hispanic or latino": 0.0,
    "unknown": float("nan"),
}

# Feature sets (column names of the `cohort` DataFrame).
CLINICAL_FEATURES: tuple[str, ...] = (
    "age_decades",
    "height",
    "weight",
    "male",
    "race_white",
    "race_asian",
    "race_black",
    "hispanic",
    *_SNP_COLUMNS,
    "vkorc1_1639_a_imputed",
    "cyp2c9_star2",
    "cyp2c9_star3",
    "cyp2c9_other",
    "amiodarone",
    "enzyme_inducer",
    *_FLAG_COLUMNS,
    *(f"indication_{k}" for k in _INDICATIONS),
    "target_inr",
    "target_inr_range_mid",
)
MECHANISTIC_FEATURES: tuple[str, ...] = ("twin_imputed", "iwpc_2009_imputed")


def _category(value: Any, column: str, table: Mapping[str, float], where: str) -> float:
    """A category coded by `table` (keys in lower case); NaN when empty."""
    if iwpc_missing(value):
        return float("nan")
    key = str(value).strip().lower()
    if key not in table:
        raise iwpc_value_error(where, column, value, f"one of {list(table)} (any case) or empty")
    return table[key]


def _snp(value: Any, column: str, reference: str, variant: str, where: str) -> float:
    """Number of `variant` alleles (0, 1, 2) in a genotype such as "A/G"; NaN when empty."""
    if iwpc_missing(value):
        return float("nan")
    alleles = str(value).strip().split("/")
    if len(alleles) != 2 or any(a not in (reference, variant) for a in alleles):
        raise iwpc_value_error(
            where, column, value, f"two of {reference!r}, {variant!r} as 'X/Y' or empty"
        )
    return float(alleles.count(variant))


def _cyp2c9(value: Any, where: str) -> tuple[float, float, float]:
    """Counts of *2, *3 and other non-*1 alleles; NaN when not genotyped."""
    if iwpc_missing(value):
        return float("nan"), float("nan"), float("nan")
    match = _CYP2C9_DIPLOTYPE.match(str(value).strip())
    if match is None:
        raise iwpc_value_error(where, _CYP2C9_COLUMN, value, "a diplotype such as '*1/*3' or empty")
    alleles = match.groups()
    star2, star3 = alleles.count("2"), alleles.count("3")
    other = sum(a not in ("1", "2", "3") for a in alleles)
    return float(star2), float(star3), float(other)


def _indications(value: Any, where: str) -> list[float]:
    """Multi-hot over the IWPC codes 1-8 ("3; 8", "1 or 2"); all NaN when empty."""
    if iwpc_missing(value):
        return [float("nan")] * len(_INDICATIONS)
    tokens = [t.strip() for t in re.split(r";|,|\bor\b", str(value))]
    codes = set()
    for token in tokens:
        if token not in {str(k) for k in _INDICATIONS}:
            raise iwpc_value_error(where, _INDICATION, value, "IWPC codes 1-8 separated by ';'")
        codes.add(int(token))
    return [float(k in codes) for k in _INDICATIONS]


def _number(value: Any, column: str, where: str) -> float:
    if iwpc_missing(value):
        return float("nan")
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (np.isfinite(number) and number > 0):
        raise iwpc_value_error(where, column, value, "a number > 0 or empty")
    return number


def _range_mid(value: Any, where: str) -> float:
    if iwpc_missing(value):
        return float("nan")
    match = _TARGET_RANGE_PATTERN.match(str(value))
    if match is None:
        raise iwpc_value_error(where, _TARGET_RANGE, value, "a range such as '2-3' or empty")
    low, high = float(match.group(1)), float(match.group(2))
    return 0.5 * (low + high)


def _imputed_1639(race: Any, consensus: Any, rs9934438: Any, rs2359612: Any, rs8050894: Any):
    """VKORC1 -1639 genotype, imputed by the IWPC 2009 rules where not genotyped."""
    if not iwpc_missing(consensus):
        return str(consensus).strip()
    same = {"C/C": "G/G", "C/T": "A/G", "T/C": "A/G", "T/T": "A/A"}
    if not iwpc_missing(rs9934438) and str(rs9934438).strip() in same:
        return same[str(rs9934438).strip()]
    if race in ("Black or African American", "Unknown") or iwpc_missing(race):
        return None
    if not iwpc_missing(rs2359612) and str(rs2359612).strip() in same:
        return same[str(rs2359612).strip()]
    by_1542 = {"G/G": "G/G", "C/G": "A/G", "G/C": "A/G", "C/C": "A/A"}
    if not iwpc_missing(rs8050894) and str(rs8050894).strip() in by_1542:
        return by_1542[str(rs8050894).strip()]
    return None


def excluded(csv_path: str | os.PathLike[str]) -> dict[str, int]:
    """Patients of the file that no model can be scored on, by reason (first reason wins):
    `twins.validation.iwpc_ineligible`, once every column the models read is checked."""
    _read(csv_path)
    return iwpc_ineligible(csv_path)


def _read(csv_path: str | os.PathLike[str]) -> pd.DataFrame:
    return read_iwpc_csv(csv_path, columns=EXTRA_COLUMNS, who="iwpc_dose_models")


def cohort(csv_path: str | os.PathLike[str]) -> pd.DataFrame:
    """The eligible IWPC patients (`twins.validation.load_iwpc`) with every model's inputs.

    Columns: those of `iwpc_warfarin(csv, recalibrated=False)["predictions"]` (`dose` in
    mg/week, `twin`, `iwpc_2009`, ...), the `CLINICAL_FEATURES`, the imputed VKORC1 -1639 genotype
    (`vkorc1_imputed`, text) and the `MECHANISTIC_FEATURES`: `twin_imputed` (the Hamberg
    2007 twin's weekly dose at INR 2.5 with the imputed VKORC1; NaN where CYP2C9 is not one
    of the model's six diplotypes or VKORC1 is unknown) and `iwpc_2009_imputed` (the IWPC
    2009 algorithm with the imputed VKORC1).

    **Raises:** `ValueError` naming the missing column(s), or the row, file line, subject
    and column of a value outside the expected ones.
    """
    raw = _read(csv_path)
    data = iwpc_warfarin(csv_path, recalibrated=False)["predictions"].reset_index(drop=True)
    rows = data["row"].to_numpy(dtype=int)
    sub = raw.iloc[rows].reset_index(drop=True)
    where = [row_label(r, s) for r, s in zip(rows, sub[_ID].tolist(), strict=True)]

    def each(column: str, parse: Callable[[Any, str], Any]) -> list[Any]:
        return [parse(v, w) for v, w in zip(sub[column].tolist(), where, strict=True)]

    features: dict[str, list[float]] = {}
    for name, column in _FLAG_COLUMNS.items():
        features[name] = each(column, lambda v, w, c=column: iwpc_flag(v, c, w))
    for name, (column, ref, var) in _SNP_COLUMNS.items():
        features[name] = each(column, lambda v, w, c=column, r=ref, a=var: _snp(v, c, r, a, w))
    cyp = each(_CYP2C9_COLUMN, _cyp2c9)
    for k, name in enumerate(("cyp2c9_star2", "cyp2c9_star3", "cyp2c9_other")):
        features[name] = [c[k] for c in cyp]
    features["male"] = each(_GENDER, lambda v, w: _category(v, _GENDER, _SEX, w))
    features["hispanic"] = each(_ETHNICITY, lambda v, w: _category(v, _ETHNICITY, _HISPANIC, w))
    races = data["race"].tolist()  # checked by `load_iwpc`
    features["race_white"] = [float(r == "White") for r in races]
    features["race_asian"] = [float(r == "Asian") for r in races]
    features["race_black"] = [float(r == "Black or African American") for r in races]
    indications = each(_INDICATION, _indications)
    for k, code in enumerate(_INDICATIONS):
        features[f"indication_{code}"] = [ind[k] for ind in indications]
    features["target_inr"] = each(_TARGET_INR, lambda v, w: _number(v, _TARGET_INR, w))
    features["target_inr_range_mid"] = each(_TARGET_RANGE, _range_mid)

    imputed = [
        _imputed_1639(race, consensus, a, b, c)
        for race, consensus, a, b, c in zip(
            races,
            data["vkorc1"].tolist(),
            sub["VKORC1 1173 consensus"].tolist(),
            sub["VKORC1 2255 consensus"].tolist(),
            sub["VKORC1 1542 consensus"].tolist(),
            strict=True,
        )
    ]
    features["vkorc1_1639_a_imputed"] = [
        float("nan") if v is None else float(v.count("A")) for v in imputed
    ]
    out = data.assign(**{k: np.asarray(v, dtype=float) for k, v in features.items()})
    out["vkorc1_imputed"] = imputed
    out["iwpc_2009_imputed"] = iwpc_2009_predictions(out, vkorc1="vkorc1_imputed")
    out["twin_imputed"] = _twin(out["age"].tolist(), out["cyp2c9"].tolist(), imputed)
    return out


def iwpc_2009_predictions(data: pd.DataFrame, *, vkorc1: str = "vkorc1") -> np.ndarray:
    """IWPC 2009 weekly dose of each patient of `cohort`, as `twins.validation` computes it
    (CYP2C9 diplotypes without a term in the algorithm count as unknown)."""

    def texts(column: str) -> np.ndarray:
        return np.asarray(
            [None if iwpc_missing(v) else str(v) for v in data[column].tolist()], dtype=object
        )

    cyp = texts("cyp2c9")
    return iwpc_2009_dose(
        age_decades=data["age_decades"].to_numpy(dtype=float),
        height_cm=data["height"].to_numpy(dtype=float),
        weight_kg=data["weight"].to_numpy(dtype=float),
        vkorc1=texts(vkorc1),
        cyp2c9=np.asarray([v if v in CYP2C9_CODES else None for v in cyp], dtype=object),
        race=texts("race"),
        enzyme_inducer=data["enzyme_inducer"].to_numpy(dtype=float),
        amiodarone=data["amiodarone"].to_numpy(dtype=float),
    )


def _twin(ages: list[Any], cyp2c9: list[Any], vkorc1: list[Any]) -> np.ndarray:
    cache: dict[tuple[float, str, str], float] = {}
    out = np.full(len(ages), np.nan)
    for i, (age, cyp, vk) in enumerate(zip(ages, cyp2c9, vkorc1, strict=True)):
        if iwpc_missing(cyp) or iwpc_missing(vk) or cyp not in warfarin.CYP2C9_CL_DECREASE:
            continue
        key = (float(age), str(cyp), str(vk))
        if key not in cache:
            cache[key] = twin_weekly_dose(*key)
        out[i] = cache[key]
    return out
