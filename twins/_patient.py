"""One patient: demographics, labs, genotypes, medications, and the covariates derived from them.

`Patient` is a frozen dataclass checked at construction. `Patient.covariates()` returns the
standard covariate dictionary that drug models read (keys `AGE`, `WT`, `HT`, `SEX`, `SCR`,
`CRCL`, `EGFR`, `BSA`, `LBW`, `ALB`, `<GENE>`, `<GENE>_AS`, `<GENE>_PHENOTYPE`, medication
flags and extras); `twins.Population.covariates()` returns the same keys as arrays.

Values are checked in two tiers: the hard limits here (`DEMOGRAPHIC_RANGES`, `LABS`: refused
always) and the plausibility ranges of `twins._plausibility` (refused with an
`ImplausiblePatientError` listing every field, unless `unusual` says why a value is right).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from . import pgx
from ._covariates import (
    bmi,
    bsa_mosteller,
    ckd_epi_2021,
    cockcroft_gault,
    ideal_body_weight,
    lean_body_weight,
)
from ._plausibility import (
    UNUSUAL_FIELDS,
    ImplausiblePatientError,
    find_implausible,
    normalise_unusual,
)

#: Patients younger than this get no adult-only covariates (CRCL, EGFR, LBW).
ADULT_AGE = 18.0

#: The standard covariate keys, in the order `covariates()` returns them.
STANDARD_COVARIATES: tuple[str, ...] = (
    "AGE",
    "WT",
    "HT",
    "SEX",
    "SCR",
    "CRCL",
    "EGFR",
    "BSA",
    "LBW",
    "ALB",
)

SEXES: tuple[str, ...] = ("female", "male")

#: Hard limits of the demographic fields: (unit, low, high), inclusive. Values outside are
#: refused always; the narrower, age-banded plausibility ranges are `twins.PLAUSIBLE_RANGES`.
DEMOGRAPHIC_RANGES: Mapping[str, tuple[str, float, float]] = MappingProxyType(
    {
        "age": ("years", 0.0, 120.0),
        "weight": ("kg", 0.3, 400.0),
        "height": ("cm", 30.0, 250.0),
    }
)


@dataclass(frozen=True)
class LabSpec:
    """An accepted laboratory value.

    **Fields:**

    - `name`: the key in `Patient.labs` and the column name in a `Population`.
    - `unit`: the unit the value must be given in.
    - `description`: what the value is.
    - `low`, `high`: the hard limits (inclusive); values outside them raise always, since they
      are almost always a unit mistake. Some labs also have a narrower plausibility range
      (`twins.PLAUSIBLE_RANGES`), which `unusual` can lift.
    - `hint`: what a value above `high` usually means.
    """

    name: str
    unit: str
    description: str
    low: float
    high: float
    hint: str = ""


def _labs(*specs: LabSpec) -> Mapping[str, LabSpec]:
    return MappingProxyType({spec.name: spec for spec in specs})


#: The laboratory values a `Patient` accepts, by name, with their units and hard limits.
LABS: Mapping[str, LabSpec] = _labs(
    LabSpec(
        "serum_creatinine",
        "mg/dL",
        "serum creatinine (IDMS-traceable assay)",
        0.05,
        25.0,
        "a value this high is usually µmol/L: convert with creatinine_umol_to_mg_dl "
        "(divide by 88.42)",
    ),
    LabSpec("cystatin_c", "mg/L", "serum cystatin C", 0.1, 15.0),
    LabSpec(
        "albumin",
        "g/dL",
        "serum albumin",
        0.5,
        7.0,
        "a value this high is usually g/L: divide by 10",
    ),
    LabSpec(
        "bilirubin",
        "mg/dL",
        "total serum bilirubin",
        0.01,
        60.0,
        "a value this high is usually µmol/L: divide by 17.1",
    ),
    LabSpec("alt", "U/L", "alanine aminotransferase", 1.0, 20000.0),
    LabSpec("ast", "U/L", "aspartate aminotransferase", 1.0, 20000.0),
    LabSpec("alp", "U/L", "alkaline phosphatase", 1.0, 10000.0),
    LabSpec("inr", "ratio", "international normalised ratio (prothrombin time)", 0.5, 20.0),
    LabSpec(
        "bun",
        "mg/dL",
        "blood urea nitrogen",
        1.0,
        300.0,
        "a value this high may be urea in mg/dL (BUN = urea / 2.14) or mmol/L",
    ),
    LabSpec(
        "hemoglobin",
        "g/dL",
        "haemoglobin",
        1.0,
        25.0,
        "a value this high is usually g/L: divide by 10",
    ),
    LabSpec("platelets", "10^9/L", "platelet count", 1.0, 3000.0),
)


class MissingCovariateError(ValueError):
    """A covariate was required but cannot be computed for a patient.

    **Attributes:**

    - `patient_id`: the patient's `id`.
    - `field`: what is missing: a lab name (`"serum_creatinine"`), a gene symbol
      (`"CYP2D6"`), or `"age"` for adult-only equations in a child.
    - `covariate`: the covariate key that was asked for (`"CRCL"`), if any.
    - `detail`: why, in words.
    """

    def __init__(
        self,
        patient_id: str,
        field: str,
        covariate: str | None = None,
        detail: str | None = None,
    ):
        self.patient_id = patient_id
        self.field = field
        self.covariate = covariate
        self.detail = detail
        what = f"covariate {covariate!r} needs {field!r}" if covariate else f"{field!r} is needed"
        why = f": {detail}" if detail else ", which is missing"
        super().__init__(f"Patient {patient_id!r}: {what}{why}.")


def check_lab(name: str, value: Any, where: str) -> float:
    """A lab value as a float, or a `ValueError` naming `where` and the lab."""
    spec = LABS.get(name)
    if spec is None:
        raise ValueError(
            f"{where}: unknown lab {name!r}; accepted labs (with units): "
            + ", ".join(f"{s.name} ({s.unit})" for s in LABS.values())
            + "."
        )
    number = _number(value, f"{where}: lab {name!r}")
    if not (spec.low <= number <= spec.high):
        hint = f"; {spec.hint}" if spec.hint and number > spec.high else ""
        raise ValueError(
            f"{where}: lab {name!r} must be in {spec.unit} within the plausible range "
            f"[{spec.low:g}, {spec.high:g}], got {number!r}{hint}."
        )
    return number


def check_demographic(name: str, value: Any, where: str) -> float:
    unit, low, high = DEMOGRAPHIC_RANGES[name]
    number = _number(value, f"{where}: {name}")
    if not (low <= number <= high):
        raise ValueError(
            f"{where}: {name} must be in {unit} within [{low:g}, {high:g}], got {number!r}."
        )
    return number


def _number(value: Any, what: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {value!r}.")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite, got {number!r}.")
    return number


def normalise_sex(value: Any, where: str) -> str:
    if isinstance(value, str) and value.strip().lower() in SEXES:
        return value.strip().lower()
    raise ValueError(f"{where}: sex must be 'female' or 'male', got {value!r}.")


def normalise_gene(gene: Any, where: str) -> str:
    if not isinstance(gene, str) or gene.strip().upper() not in pgx.genes():
        raise ValueError(
            f"{where}: unsupported gene {gene!r}; genotypes are read by twins.pgx, which "
            f"interprets {', '.join(pgx.genes())}."
        )
    return gene.strip().upper()


def interpret(gene: str, diplotype: Any, where: str) -> pgx.PhenotypeResult:
    """`twins.pgx.phenotype`, with errors that name `where`."""
    try:
        return pgx.phenotype(gene, diplotype)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{where}: {gene} genotype {diplotype!r}: {error}") from error


def normalise_name(name: Any, what: str, where: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: {what} names must be non-empty strings, got {name!r}.")
    return name.strip()


def _adult_detail(age: float) -> str:
    return (
        f"Cockcroft-Gault, CKD-EPI 2021 and Janmahasatian lean body weight are adult "
        f"equations (age >= {ADULT_AGE:g}); the patient is {age:g} years old"
    )


def check_covariate_names(medications: Iterable[str], extras: Iterable[str], where: str) -> None:
    """Medication and extra names must not give covariate keys that are already taken."""
    taken: dict[str, str] = {key: "a standard covariate" for key in ("ID", *STANDARD_COVARIATES)}
    for gene in pgx.genes():
        for key in gene_keys(gene):
            taken[key] = f"the {gene} genotype"
    for kind, names in (("medication", medications), ("extra", extras)):
        for name in names:
            key = name.upper()
            if key in taken:
                raise ValueError(
                    f"{where}: {kind} {name!r} would give covariate key {key!r}, which is "
                    f"already {taken[key]}."
                )
            taken[key] = f"{kind} {name!r}"


def _no_lab_detail(lab: str, labs_given: Iterable[str]) -> str:
    given = ", ".join(sorted(labs_given)) or "none"
    return f"no {lab} lab ({LABS[lab].unit}) was given (labs given: {given})"


def standard_covariates(
    age: Any,
    female: Any,
    weight: Any,
    height: Any,
    labs: Mapping[str, Any],
    *,
    all_adults: bool,
) -> tuple[dict[str, Any], dict[str, tuple[str, str | None]]]:
    """The standard covariates that can be computed, and why the others cannot.

    Works on scalars (one patient) and on arrays (a cohort) alike. Returns `(values,
    unavailable)`: `unavailable` maps a key to `(field, detail)` for `MissingCovariateError`.
    """
    values: dict[str, Any] = {
        "AGE": age,
        "WT": weight,
        "HT": height,
        "SEX": np.asarray(female, dtype=float) if np.ndim(female) else float(bool(female)),
    }
    unavailable: dict[str, tuple[str, str | None]] = {}
    scr = labs.get("serum_creatinine")
    if scr is None:
        for key in ("SCR", "CRCL", "EGFR"):
            unavailable[key] = ("serum_creatinine", None)
    else:
        values["SCR"] = scr
        if all_adults:
            values["CRCL"] = cockcroft_gault(age, weight, scr, female=female)
            values["EGFR"] = ckd_epi_2021(age, scr, female=female)
        else:
            unavailable["CRCL"] = unavailable["EGFR"] = ("age", "adult")
    values["BSA"] = bsa_mosteller(weight, height)
    if all_adults:
        values["LBW"] = lean_body_weight(weight, height, female=female)
    else:
        unavailable["LBW"] = ("age", "adult")
    if labs.get("albumin") is None:
        unavailable["ALB"] = ("albumin", None)
    else:
        values["ALB"] = labs["albumin"]
    ordered = {key: values[key] for key in STANDARD_COVARIATES if key in values}
    return ordered, unavailable


def gene_keys(gene: str) -> tuple[str, str, str]:
    return (gene, f"{gene}_AS", f"{gene}_PHENOTYPE")


def check_required(
    required: Iterable[str],
    available: Mapping[str, Any],
    unavailable: Mapping[str, tuple[str, str | None]],
    patient_id: str,
    age: float,
    labs_given: Iterable[str],
) -> None:
    """Raise for the first required key that is not in `available`."""
    for key in required:
        if key in available:
            continue
        if key in unavailable:
            missing, detail = unavailable[key]
            if detail == "adult":
                detail = _adult_detail(age)
            elif detail is None:
                detail = _no_lab_detail(missing, labs_given)
            raise MissingCovariateError(patient_id, missing, key, detail)
        for gene in pgx.genes():
            if key in gene_keys(gene):
                raise MissingCovariateError(patient_id, gene, key, f"no {gene} genotype was given")
        raise ValueError(
            f"Patient {patient_id!r}: unknown covariate {key!r} required. Known: "
            f"{', '.join(STANDARD_COVARIATES)}; <GENE>, <GENE>_AS and <GENE>_PHENOTYPE for "
            f"{', '.join(pgx.genes())}; a medication flag such as 'AMIODARONE' (list the "
            "medication in medications=(...) to get 0.0 for patients who do not take it); or "
            "the upper-cased name of an `extra` covariate."
        )


def as_required(required: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(required, str):
        return (required,)
    keys = tuple(required)
    for key in keys:
        if not isinstance(key, str):
            raise TypeError(f"required covariate names must be strings, got {key!r}.")
    return keys


def as_medications(medications: Iterable[str] | str, where: str) -> tuple[str, ...]:
    if isinstance(medications, str):
        medications = (medications,)
    return tuple(normalise_name(m, "medication", where).lower() for m in medications)


@dataclass(frozen=True, repr=False)
class Patient:
    """One patient: demographics, labs, genotypes as the lab reports them, and medications.

    **Fields:**

    - `id`: patient identifier (a string; an integer is converted).
    - `age`: years, within the hard limits [0, 120] and plausible up to 110.
    - `sex`: `"female"` or `"male"` (case-insensitive; stored lower-case).
    - `weight`: total body weight, kg, within the hard limits [0.3, 400] and the plausible
      range of the patient's age band (adults 15 to 350 kg; `twins.PLAUSIBLE_RANGES`).
    - `height`: cm, within the hard limits [30, 250] and the plausible range of the age band
      (adults 100 to 230 cm); weight / height² must also lie in the band's plausible BMI
      range (adults 10 to 100 kg/m²).
    - `ancestry`: optional free text, e.g. the IWPC race categories `"White"`, `"Asian"`,
      `"Black or African American"`, `"Unknown"` (`twins.Population.sample` uses those).
    - `labs`: lab name -> value, in the units of `twins.LABS`: `serum_creatinine` (mg/dL),
      `cystatin_c` (mg/L), `albumin` (g/dL), `bilirubin` (total, mg/dL), `alt`, `ast`,
      `alp` (U/L), `inr`, `bun` (mg/dL), `hemoglobin` (g/dL), `platelets` (10^9/L). An
      unknown name, a non-finite value, or a value outside the hard limits raises; so does a
      `serum_creatinine`, `albumin`, `bilirubin` or `inr` outside its plausibility range.
    - `genotypes`: gene -> diplotype as the lab reports it, read by `twins.pgx`
      (`{"CYP2C9": "*1/*3", "VKORC1": "-1639 AG", "CYP2D6": "*1/*1x2"}`; VKORC1 also as
      `"rs9923231 GA"`, `"G/A"`, `"C/T"`, ...). Gene symbols are case-insensitive and stored
      upper-case; an unknown allele raises, naming the patient.
    - `medications`: names of the drugs the patient takes (`{"amiodarone"}`), stored
      lower-case; the set is taken to be complete (a drug not in it is not taken).
    - `extra`: other numeric covariates, name -> value (`{"dialysis": 1.0}`); their
      upper-cased names become covariate keys.
    - `imputed`: names of the fields whose values were imputed (`"weight"`,
      `"serum_creatinine"`, ...), set by `Population.from_dataframe(..., missing="impute")`.
    - `unusual`: field -> reason, for values that are right although outside their
      plausibility range: `{"weight": "extremely preterm neonate"}`. Each named field's
      plausibility range is lifted (its hard limits still apply); the fields are `"age"`,
      `"weight"`, `"height"`, `"bmi"` and the labs `serum_creatinine`, `albumin`, `bilirubin`,
      `inr` (the patient must have the lab). Reasons must be non-empty; they are kept (read-only,
      stripped) so that reports can show them.

    **Raises:**

    `ValueError` (or `TypeError` for a wrong type) naming the patient and the field, for a
    value outside the hard limits, an unknown lab, an unsupported gene or unknown allele, a
    name that collides with a standard covariate key, or an `unusual` entry with an unknown
    field or an empty reason; then, once everything else is valid,
    `twins.ImplausiblePatientError` (a `ValueError`) naming every field outside its
    plausibility range, with its value, the range and its age band.
    """

    id: str
    age: float
    sex: str
    weight: float
    height: float
    ancestry: str | None = None
    labs: Mapping[str, float] = field(default_factory=dict)
    genotypes: Mapping[str, str] = field(default_factory=dict)
    medications: frozenset[str] = frozenset()
    extra: Mapping[str, float] = field(default_factory=dict)
    imputed: frozenset[str] = frozenset()
    unusual: Mapping[str, str] = field(default_factory=dict)
    _phenotypes: Mapping[str, pgx.PhenotypeResult] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        pid = self.id
        if isinstance(pid, (numbers.Integral,)) and not isinstance(pid, (bool, np.bool_)):
            pid = str(int(pid))
        if not isinstance(pid, str) or not pid.strip():
            raise ValueError(f"Patient id must be a non-empty string, got {self.id!r}.")
        set_(self, "id", pid)
        where = f"Patient {pid!r}"
        for name in ("age", "weight", "height"):
            set_(self, name, check_demographic(name, getattr(self, name), where))
        set_(self, "sex", normalise_sex(self.sex, where))
        if self.ancestry is not None:
            set_(self, "ancestry", normalise_name(self.ancestry, "ancestry", where))

        if not isinstance(self.labs, Mapping):
            raise TypeError(f"{where}: labs must be a mapping name -> value, got {self.labs!r}.")
        labs = {}
        for name, value in self.labs.items():
            labs[name] = check_lab(name, value, where)
        set_(self, "labs", MappingProxyType(labs))

        if not isinstance(self.genotypes, Mapping):
            raise TypeError(
                f"{where}: genotypes must be a mapping gene -> diplotype, got {self.genotypes!r}."
            )
        genotypes: dict[str, str] = {}
        phenotypes: dict[str, pgx.PhenotypeResult] = {}
        for gene, diplotype in self.genotypes.items():
            symbol = normalise_gene(gene, where)
            if symbol in genotypes:
                raise ValueError(f"{where}: gene {symbol} is given twice in genotypes.")
            phenotypes[symbol] = interpret(symbol, diplotype, where)
            genotypes[symbol] = diplotype
        set_(self, "genotypes", MappingProxyType(dict(sorted(genotypes.items()))))
        set_(self, "_phenotypes", MappingProxyType(dict(sorted(phenotypes.items()))))

        if isinstance(self.medications, str):
            raise TypeError(
                f"{where}: medications must be a set of names, got the string "
                f"{self.medications!r}; write frozenset({{{self.medications!r}}})."
            )
        set_(self, "medications", frozenset(as_medications(self.medications, where)))

        if not isinstance(self.extra, Mapping):
            raise TypeError(f"{where}: extra must be a mapping name -> value.")
        extra = {}
        for name, value in self.extra.items():
            name = normalise_name(name, "extra", where)
            extra[name] = _number(value, f"{where}: extra {name!r}")
        set_(self, "extra", MappingProxyType(extra))
        check_covariate_names(self.medications, self.extra, where)

        imputed = frozenset(self.imputed)
        allowed = {"age", "weight", "height", *labs}
        if not imputed <= allowed:
            raise ValueError(
                f"{where}: imputed names {sorted(imputed - allowed)} are not numeric fields "
                f"of this patient (expected some of {sorted(allowed)})."
            )
        set_(self, "imputed", imputed)

        unusual = normalise_unusual(
            self.unusual,
            where,
            ("age", "weight", "height", "bmi", *(n for n in labs if n in UNUSUAL_FIELDS)),
            "the patient has",
        )
        set_(self, "unusual", unusual)
        found = find_implausible(
            {"age": self.age, "weight": self.weight, "height": self.height, **labs},
            [pid],
            lifted=unusual,
            rows=False,
        )
        if found:
            raise ImplausiblePatientError(found, where, "Patient(..., unusual={example})")

    def __hash__(self) -> int:
        return hash(
            (
                self.id,
                self.age,
                self.sex,
                self.weight,
                self.height,
                self.ancestry,
                tuple(sorted(self.labs.items())),
                tuple(sorted(self.genotypes.items())),
                self.medications,
                tuple(sorted(self.extra.items())),
                self.imputed,
                tuple(self.unusual.items()),
            )
        )

    def __repr__(self) -> str:
        parts = [
            f"id={self.id!r}",
            f"age={self.age!r}",
            f"sex={self.sex!r}",
            f"weight={self.weight!r}",
            f"height={self.height!r}",
        ]
        if self.ancestry is not None:
            parts.append(f"ancestry={self.ancestry!r}")
        for name in ("labs", "genotypes", "extra", "unusual"):
            if getattr(self, name):
                parts.append(f"{name}={dict(getattr(self, name))!r}")
        for name in ("medications", "imputed"):
            if getattr(self, name):
                parts.append(f"{name}={set(sorted(getattr(self, name)))!r}")
        return f"Patient({', '.join(parts)})"

    @property
    def female(self) -> bool:
        """`True` for a female patient."""
        return self.sex == "female"

    def phenotype(self, gene: str) -> pgx.PhenotypeResult:
        """CPIC activity score and phenotype of the patient's diplotype for `gene`.

        **Arguments:**

        - `gene`: a gene symbol of `twins.pgx.genes()` (case-insensitive).

        **Returns:**

        The `twins.pgx.PhenotypeResult` of the genotype given for this patient.

        **Raises:**

        `MissingCovariateError` if the patient has no genotype for `gene`; `ValueError` for
        a gene that `twins.pgx` does not interpret.
        """
        symbol = normalise_gene(gene, f"Patient {self.id!r}")
        if symbol not in self._phenotypes:
            raise MissingCovariateError(self.id, symbol, None, f"no {symbol} genotype was given")
        return self._phenotypes[symbol]

    def _scr(self, covariate: str) -> float:
        if "serum_creatinine" not in self.labs:
            raise MissingCovariateError(
                self.id,
                "serum_creatinine",
                covariate,
                _no_lab_detail("serum_creatinine", self.labs),
            )
        return self.labs["serum_creatinine"]

    def _adult(self, covariate: str) -> None:
        if self.age < ADULT_AGE:
            raise MissingCovariateError(self.id, "age", covariate, _adult_detail(self.age))

    def crcl(self, weight: float | None = None) -> float:
        """Creatinine clearance by Cockcroft-Gault, mL/min (`twins.cockcroft_gault`).

        **Arguments:**

        - `weight`: the weight to use, kg; default the total body weight. Pass, for
          example, `patient.ibw()` or `patient.lbw()` where a dosing rule asks for it.

        **Returns:**

        CrCL in mL/min.

        **Raises:**

        `MissingCovariateError` without a `serum_creatinine` lab or for a patient under 18.

        References: Cockcroft DW, Gault MH. Nephron 1976;16(1):31-41.
        """
        scr = self._scr("CRCL")
        self._adult("CRCL")
        used = self.weight if weight is None else weight
        return float(cockcroft_gault(self.age, used, scr, female=self.female))

    def egfr(self) -> float:
        """eGFR by the race-free CKD-EPI 2021 equation, mL/min/1.73 m² (`twins.ckd_epi_2021`).

        **Raises:**

        `MissingCovariateError` without a `serum_creatinine` lab or for a patient under 18.

        References: Inker LA et al. N Engl J Med 2021;385(19):1737-1749.
        """
        scr = self._scr("EGFR")
        self._adult("EGFR")
        return float(ckd_epi_2021(self.age, scr, female=self.female))

    def bsa(self, formula: Callable[[Any, Any], Any] = bsa_mosteller) -> float:
        """Body surface area, m².

        **Arguments:**

        - `formula`: `twins.bsa_mosteller` (default; Mosteller 1987) or `twins.bsa_dubois`
          (DuBois & DuBois 1916), or any function `(weight_kg, height_cm) -> m²`.
        """
        return float(formula(self.weight, self.height))

    def lbw(self) -> float:
        """Lean body weight by Janmahasatian et al. 2005, kg (`twins.lean_body_weight`).

        **Raises:**

        `MissingCovariateError` for a patient under 18 (an adult equation).

        References: Janmahasatian S et al. Clin Pharmacokinet 2005;44(10):1051-1065.
        """
        self._adult("LBW")
        return float(lean_body_weight(self.weight, self.height, female=self.female))

    def ibw(self) -> float:
        """Ideal body weight by Devine 1974, kg (`twins.ideal_body_weight`).

        References: Devine BJ. Drug Intell Clin Pharm 1974;8:650-655.
        """
        return float(ideal_body_weight(self.height, female=self.female))

    def bmi(self) -> float:
        """Body mass index, kg/m² (`twins.bmi`)."""
        return float(bmi(self.weight, self.height))

    def covariates(
        self, required: Iterable[str] | str = (), *, medications: Iterable[str] | str = ()
    ) -> dict[str, float | str | None]:
        """The standard covariate dictionary for drug models.

        Keys (each present when it can be computed):

        | key | value |
        | --- | --- |
        | `ID` | the patient id (str), for messages |
        | `AGE` | years |
        | `WT` | total body weight, kg |
        | `HT` | height, cm |
        | `SEX` | 1.0 female, 0.0 male |
        | `SCR` | serum creatinine, mg/dL (needs the `serum_creatinine` lab) |
        | `CRCL` | Cockcroft-Gault with total body weight, mL/min (SCr; adults) |
        | `EGFR` | CKD-EPI 2021, mL/min/1.73 m² (SCr; adults) |
        | `BSA` | Mosteller, m² |
        | `LBW` | Janmahasatian lean body weight, kg (adults) |
        | `ALB` | albumin, g/dL (needs the `albumin` lab) |
        | `<GENE>` | the diplotype as normalised by `twins.pgx` (CPIC's spelling) |
        | `<GENE>_AS` | CPIC activity score, or `None` where CPIC gives none |
        | `<GENE>_PHENOTYPE` | CPIC phenotype label |
        | `AMIODARONE`, ... | 1.0 if taken; 0.0 for a name in `medications` that is not taken |
        | extras | `extra` values under their upper-cased names |

        A covariate whose input is missing (no `serum_creatinine` for `CRCL`, no genotype
        for `CYP2D6_AS`) or that is not defined (adult equations below 18 years) is left
        out, unless it is listed in `required`.

        **Arguments:**

        - `required`: keys that must be present.
        - `medications`: medication names to report as flags for every patient (1.0 or 0.0).

        **Returns:**

        `dict` key -> float (or str, or `None` for a missing activity score).

        **Raises:**

        `MissingCovariateError` (a `ValueError`) naming the patient and the missing lab,
        genotype or condition for a required key that cannot be computed; `ValueError` for a
        required key that is none of the above.
        """
        required = as_required(required)
        where = f"Patient {self.id!r}"
        values, unavailable = standard_covariates(
            self.age,
            self.female,
            self.weight,
            self.height,
            self.labs,
            all_adults=self.age >= ADULT_AGE,
        )
        result: dict[str, float | str | None] = {"ID": self.id}
        result.update({k: float(v) for k, v in values.items()})
        for gene, found in self._phenotypes.items():
            result[gene] = found.diplotype
            result[f"{gene}_AS"] = found.activity_score
            result[f"{gene}_PHENOTYPE"] = found.phenotype
        for name in sorted(set(self.medications) | set(as_medications(medications, where))):
            key = name.upper()
            if key in result:
                raise ValueError(
                    f"{where}: medication {name!r} would give covariate key {key!r}, which is "
                    "already taken by another covariate."
                )
            result[key] = 1.0 if name in self.medications else 0.0
        for name, value in self.extra.items():
            result[name.upper()] = value
        check_required(required, result, unavailable, self.id, self.age, self.labs)
        return result
