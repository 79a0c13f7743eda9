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

The checks of the table (and the imputation of missing numbers) are in
`twins._population_table`, the distributions of virtual populations in
`twins._population_sample`; `Demographics`, `iwpc_genotype_counts`,
`cpic_allele_frequencies`, `read_allele_frequencies`, `CPIC_GROUPS` and `IWPC_CPIC_GROUPS`
are re-exported here.

Every row is checked against the hard limits and then the plausibility ranges
(`twins.PLAUSIBLE_RANGES`), like a `Patient`. A population may lift the plausibility range of
whole columns, with a reason (`from_dataframe(..., unusual={"weight": "NICU cohort"})`); its
patients carry that `unusual` mapping. Sampled populations never need it: the samplers draw
only plausible patients (`Population.sample`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd

from . import pgx
from ._patient import (
    ADULT_AGE,
    LABS,
    Patient,
    as_medications,
    as_required,
    check_required,
    interpret,
    standard_covariates,
)
from ._population_sample import CPIC_GROUPS as CPIC_GROUPS
from ._population_sample import IWPC_ANCESTRIES as IWPC_ANCESTRIES
from ._population_sample import IWPC_CPIC_GROUPS as IWPC_CPIC_GROUPS
from ._population_sample import IWPC_FREQUENCY_FILE as IWPC_FREQUENCY_FILE
from ._population_sample import Demographics as Demographics
from ._population_sample import cpic_allele_frequencies as cpic_allele_frequencies
from ._population_sample import iwpc_genotype_counts as iwpc_genotype_counts
from ._population_sample import read_allele_frequencies as read_allele_frequencies
from ._population_sample import sample_table
from ._population_table import (
    BASE_COLUMNS,
    EXTRA_PREFIX,
    IMPUTED_SUFFIX,
    MED_PREFIX,
    NO_UNUSUAL,
    table_unusual,
    validate_table,
)
from .governance import ConsentRegistry

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
    - `pop.to_dataframe()`, `pop.ids`, `pop.genes`, `pop.labs`, `pop.medications`,
      `pop.unusual` (the plausibility ranges lifted, column -> reason; kept by `pop[mask]`
      and `subgroup`, not by `to_dataframe`);
    - `pop.consents`: the patients' consent decisions (a `twins.governance.ConsentRegistry`
      given to `from_dataframe`, `from_patients` or `with_consents`, kept by `pop[mask]`
      and `subgroup`), or None. A population that carries them is a real cohort whose uses
      are governed: a trial (`twins.run_trial`) or a surrogate training set takes only the
      patients who consented to research, and logs every refusal (see docs/governance.md).
    """

    __slots__ = ("_consents", "_frame", "_unusual")
    _frame: pd.DataFrame
    _unusual: Mapping[str, str]
    _consents: ConsentRegistry | None

    def __init__(self, frame: pd.DataFrame):
        self._frame = validate_table(_as_frame(frame), missing="error", key=None)
        self._unusual = NO_UNUSUAL
        self._consents = None

    @classmethod
    def _from_valid(
        cls,
        frame: pd.DataFrame,
        unusual: Mapping[str, str] = NO_UNUSUAL,
        consents: ConsentRegistry | None = None,
    ) -> Population:
        population = object.__new__(cls)
        population._frame = frame
        population._unusual = unusual
        population._consents = _check_consents(consents)
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
        unusual: Mapping[str, str] | None = None,
        consents: ConsentRegistry | None = None,
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
        - `unusual`: column -> reason, to lift the plausibility range of whole columns
          (`{"weight": "NICU cohort"}`): `age`, `weight`, `height`, `bmi` (weight /
          height²) and the lab columns `serum_creatinine`, `albumin`, `bilirubin`, `inr`
          that the table has. The hard limits still apply. Every patient of the population
          carries the mapping (`pop[i].unusual`).
        - `consents`: the patients' consent decisions, by the ids of the `id` column (a
          `twins.governance.ConsentRegistry`): the population's research uses then take
          only the patients who consented (see the class docstring).

        **Returns:**

        A `Population`.

        **Raises:**

        `ValueError` naming the row (counted from 0 in table order), patient id and column
        for unknown or missing columns, duplicate ids, non-numeric values or values outside
        the hard limits, missing values (with `missing="error"`), unknown alleles, an
        `unusual` entry with an unknown column or an empty reason, and so on; then
        `twins.ImplausiblePatientError` naming every row, patient id and column with a value
        outside its plausibility range (all rows are checked before it is raised).

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
        lifted = table_unusual({} if unusual is None else unusual, frame.columns)
        return cls._from_valid(
            validate_table(frame, missing=missing, key=key, unusual=lifted), lifted, consents
        )

    @classmethod
    def from_patients(
        cls, patients: Iterable[Patient], *, consents: ConsentRegistry | None = None
    ) -> Population:
        """A population from `Patient` objects (`consents`: as in `from_dataframe`).

        Every patient must have the same labs, genes and extras (a table column cannot be
        missing for some patients); medications become `med_<name>` flags, False for the
        patients who do not take them. The population's `unusual` is the union of the
        patients' (different reasons for one field are joined with `"; "`), and every
        patient taken from it carries that union.
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
            row.update({MED_PREFIX + m: m in p.medications for m in meds})
            row.update({EXTRA_PREFIX + e: p.extra[e] for e in extras})
            rows.append(row)
        columns = [
            *BASE_COLUMNS,
            *labs,
            *genes,
            *(MED_PREFIX + m for m in meds),
            *(EXTRA_PREFIX + e for e in extras),
        ]
        frame = pd.DataFrame(rows, columns=columns)
        imputed_names = sorted({n for p in patients for n in p.imputed})
        for name in imputed_names:
            frame[name + IMPUTED_SUFFIX] = [name in p.imputed for p in patients]
        reasons: dict[str, list[str]] = {}
        for p in patients:
            for name, reason in p.unusual.items():
                if reason not in reasons.setdefault(name, []):
                    reasons[name].append(reason)
        lifted = table_unusual({k: "; ".join(v) for k, v in reasons.items()}, frame.columns)
        return cls._from_valid(
            validate_table(frame, missing="error", key=None, unusual=lifted), lifted, consents
        )

    @classmethod
    def sample(
        cls,
        n: int,
        *,
        key: Any,
        ancestry: str | Mapping[str, float] = "White",
        age: tuple[float, float] = (18.0, 80.0),
        female_fraction: float = 0.5,
        genes: Iterable[str] | None = None,
        allele_frequencies: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
        genotype_source: Literal["iwpc", "cpic"] = "iwpc",
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

        Sampled patients are always plausible (`twins.PLAUSIBLE_RANGES`): height, log-BMI
        and log-creatinine are drawn from normals truncated at 4 SD, and settings whose
        truncated ranges leave the plausibility ranges of adults (an `age` beyond 110
        years, `demographics` that reach a height below 100 cm, a BMI above 100, ...) are
        refused with a `ValueError` before anything is drawn.

        Genotypes, for every gene `twins.pgx` reads by default (`genes`), by ancestry:

        - `CYP2C9` and `VKORC1` of the IWPC races (`"White"`, `"Asian"`, `"Black or
          African American"`, `"Unknown"`): drawn from the genotype counts observed in the
          IWPC cohort by race (OMB), `iwpc_genotype_counts()` (twins/data/SOURCES.md):
          CYP2C9 `*1/*1` ... `*3/*3`, VKORC1 `-1639 GG`/`AG`/`AA`, the two genes
          independently (the table gives no joint counts; they lie on different
          chromosomes). The 17 IWPC patients with other CYP2C9 diplotypes are left out of
          the counts, since the table does not name their alleles. These draws are those of
          earlier versions, bit for bit, so warfarin cohorts and trials are unchanged.
        - Every other gene and ancestry, and every gene with `genotype_source="cpic"`: CPIC's
          allele frequencies by biogeographic group (`twins.cpic_allele_frequencies()`,
          twins/data/SOURCES.md), two alleles drawn independently (Hardy-Weinberg
          equilibrium, as CPIC computes its own diplotype frequencies; no source says
          otherwise). CYP2D6 includes CPIC's copy-number alleles (`*1x2`, `*2x≥3`, ...), each
          one chromosome's haplotype, so `*1/*2x2` is Ultrarapid (activity score 3) through
          `twins.pgx`; with `x≥3` the score is a lower bound, and a lower bound that leaves
          the phenotype open is Indeterminate, as in CPIC. An IWPC race draws from the CPIC
          group `twins.IWPC_CPIC_GROUPS` maps it to: White -> European, Asian -> East Asian,
          Black or African American -> African American/Afro-Caribbean, Unknown -> Latino
          (the nearest group in the CYP2C9*2, CYP2C9*3 and VKORC1 allele frequencies both
          sources give; Unknown, which is mixed or unreported race, is nearly as near to
          European). The IWPC "Asian" patients were mostly East Asian (VKORC1 A 0.90 against
          CPIC's East Asian 0.87 and Central/South Asian 0.16); South Asian patients are
          better sampled as `"Central/South Asian"`. CPIC's values are averages over
          published studies weighted by their subjects, not one cohort, and `*1` is 1 minus
          the others, so rare alleles that studies did not test are counted as `*1`. CPIC
          gives no VKORC1 frequency for Oceanian: leave VKORC1 out of `genes` there.
        - The CPIC draws come from a random stream of their own per gene (from `key`): the
          other draws of a cohort do not depend on which CPIC genes are sampled.
        - `allele_frequencies`, where given for a gene, replaces its source (Hardy-Weinberg
          draws from the caller's frequencies, as in earlier versions).

        Diplotypes are stored in CPIC's spelling (`*1/*2x2`), VKORC1 as `-1639 GG`/`AG`/`AA`;
        phenotypes and activity scores come from `twins.pgx` (`pop.covariates()`:
        `CYP2D6_AS`, `CYP2D6_PHENOTYPE`, ...).

        **Arguments:**

        - `n`: number of patients (>= 1).
        - `key`: a JAX PRNG key (`jax.random.key(0)`) or an integer seed; the same key gives
          the same cohort, bit for bit (`s` and `jax.random.key(s)` give the same one).
        - `ancestry`: one IWPC category (`"White"`, `"Asian"`, `"Black or African
          American"`, `"Unknown"`) or CPIC biogeographic group (`twins.CPIC_GROUPS`:
          `"European"`, `"East Asian"`, `"Sub-Saharan African"`, ...), or a mapping
          category -> fraction (summing to 1).
        - `age`: `(low, high)` in years, 18 <= low < high <= 110 (the distributions are for
          adults; ages above 110 are implausible).
        - `female_fraction`: probability of a female patient, in [0, 1].
        - `genes`: the genes drawn from the shipped tables; default all four
          (`twins.pgx.genes()`); `()` for none.
        - `allele_frequencies`: `{gene: {ancestry: {allele: frequency}}}`, drawn under
          Hardy-Weinberg equilibrium whether or not `genes` names the gene; for each sampled
          ancestry the frequencies must be in [0, 1] and sum to 1 (within 1e-6; not
          renormalised), and every allele must be known to `twins.pgx` (VKORC1: CPIC's
          `"rs9923231 reference (C)"` and `"rs9923231 variant (T)"`). A CSV in CPIC's
          layout is read by `twins.read_allele_frequencies`.
        - `genotype_source`: `"iwpc"` (default): CYP2C9 and VKORC1 of the IWPC races from
          the IWPC counts; `"cpic"`: from CPIC's frequencies of the mapped group, like the
          other genes.
        - `medications`: `{name: prevalence}`, each drawn independently (e.g.
          `{"amiodarone": 0.05}`); none by default.
        - `demographics`: a `Demographics`, or a mapping ancestry -> `Demographics`
          covering every sampled ancestry; default `Demographics()`.

        **Returns:**

        A `Population` with ids `V00001`, `V00002`, ..., the `serum_creatinine` lab and
        the sampled genes and medications.

        **Raises:**

        `ValueError` for an unknown ancestry or gene, frequencies that are not a
        distribution over known alleles (naming the gene, ancestry and allele), a gene CPIC
        gives no frequencies for in a sampled group (VKORC1, Oceanian), or settings that could
        give implausible patients.

        References: International Warfarin Pharmacogenetics Consortium. Estimation of the
        warfarin dose with clinical and pharmacogenetic data. N Engl J Med
        2009;360(8):753-764 (the cohort behind the CYP2C9/VKORC1 counts); CPIC allele
        frequency tables (cpicpgx.org, CC0; twins/data/SOURCES.md) with the groups of
        Huddart R et al., Clin Pharmacol Ther 2019;105(5):1256-1262; Fryar CD et al.,
        NHSR no. 122, 2018 and Pottel H et al., Clin Chim Acta 2008;396:49-55 (see
        `Demographics`).
        """
        frame = sample_table(
            n,
            key=key,
            ancestry=ancestry,
            age=age,
            female_fraction=female_fraction,
            genes=genes,
            allele_frequencies=allele_frequencies,
            genotype_source=genotype_source,
            medications=medications,
            demographics=demographics,
        )
        return cls._from_valid(validate_table(frame, missing="error", key=None))

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
            return self._rows(self._frame.iloc[index])
        array = np.asarray(index)
        if array.dtype == bool:
            if array.shape != (len(self),):
                raise IndexError(
                    f"A boolean mask must have shape ({len(self)},), got {array.shape}."
                )
            return self._rows(self._frame.iloc[np.flatnonzero(array)])
        if array.ndim == 1 and (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
            if array.size and (array.max() >= len(self) or array.min() < -len(self)):
                raise IndexError(f"Patient indices out of range for a population of {len(self)}.")
            positions = array.astype(int) % max(len(self), 1)
            return self._rows(self._frame.iloc[positions])
        raise TypeError(
            f"A population is indexed by an integer, a slice, a boolean mask or an integer "
            f"array, got {index!r}."
        )

    def _rows(self, frame: pd.DataFrame) -> Population:
        return Population._from_valid(frame.reset_index(drop=True), self._unusual, self._consents)

    def with_consents(self, consents: ConsentRegistry | None) -> Population:
        """The same patients carrying `consents` (a `ConsentRegistry` keyed by their ids;
        None: none)."""
        return Population._from_valid(self._frame, self._unusual, consents)

    def with_ids(self, ids: Iterable[str]) -> Population:
        """The same patients under new ids (one per row, unique; for pseudonyms), carrying
        no consents (those were keyed by the old ids)."""
        new = [str(i) for i in ids]
        if len(new) != len(self) or len(set(new)) != len(new):
            raise ValueError(
                f"with_ids: expected {len(self)} unique ids, got {len(new)} "
                f"({len(set(new))} unique)."
            )
        frame = self._frame.copy()
        frame["id"] = np.asarray(new, dtype=object)
        return Population._from_valid(frame, self._unusual, None)

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
    def consents(self) -> ConsentRegistry | None:
        """The patients' consent decisions, or None (see the class docstring)."""
        return self._consents

    @property
    def unusual(self) -> Mapping[str, str]:
        """The plausibility ranges lifted for the whole population: column -> reason
        (read-only; empty for a sampled population)."""
        return self._unusual

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
        return tuple(c[len(MED_PREFIX) :] for c in self._frame.columns if c.startswith(MED_PREFIX))

    @property
    def extras(self) -> tuple[str, ...]:
        """Names of the extra covariates."""
        return tuple(
            c[len(EXTRA_PREFIX) :] for c in self._frame.columns if c.startswith(EXTRA_PREFIX)
        )

    def __repr__(self) -> str:
        counts = self._frame["ancestry"].fillna("None").value_counts()
        mix = ", ".join(f"{k}: {v}" for k, v in counts.items())
        unusual = f", unusual={dict(self._unusual)!r}" if self._unusual else ""
        return (
            f"Population(n={len(self)}, ancestry={{{mix}}}, labs={list(self.labs)}, "
            f"genes={list(self.genes)}, medications={list(self.medications)}{unusual})"
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
            medications=frozenset(m for m in self.medications if bool(row[MED_PREFIX + m])),
            extra={e: float(row[EXTRA_PREFIX + e]) for e in self.extras},
            imputed=frozenset(
                c[: -len(IMPUTED_SUFFIX)]
                for c in self._frame.columns
                if c.endswith(IMPUTED_SUFFIX) and bool(row[c])
            ),
            unusual=self._unusual,
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
                result[key] = frame[MED_PREFIX + name].to_numpy(dtype=float)
            else:
                result[key] = np.zeros(len(self), dtype=float)
        for name in self.extras:
            result[name.upper()] = frame[EXTRA_PREFIX + name].to_numpy(dtype=float)
        if required:
            if len(self) == 0:
                blame, blame_age = "(empty population)", math.inf
            else:
                i = int(np.argmin(adult)) if not adult.all() else 0
                blame, blame_age = str(self.ids[i]), float(age[i])
            check_required(required, result, unavailable, blame, blame_age, self.labs)
        return result


# --- helpers -------------------------------------------------------------------------------------


def _check_consents(consents: Any) -> ConsentRegistry | None:
    if consents is not None and not isinstance(consents, ConsentRegistry):
        raise TypeError(
            "consents must be a twins.governance.ConsentRegistry or None, got "
            f"{type(consents).__name__}."
        )
    return consents


def _as_frame(df: Any) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"Expected a pandas DataFrame, got {type(df).__name__}.")
    return df
