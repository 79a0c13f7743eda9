"""Virtual populations: the distributions that `twins.Population.sample` draws from.

The CYP2C9 and VKORC1 genotype counts of the IWPC cohort by race (`iwpc_genotype_counts`),
CPIC's allele frequencies by biogeographic group for CYP2C19, CYP2C9, CYP2D6 and VKORC1
(`cpic_allele_frequencies`, read and checked by `read_allele_frequencies`), the height,
weight and creatinine distributions (`Demographics`), and `sample_table`, which draws the
table of a virtual population from a key.

Sampled patients are always plausible (`twins.PLAUSIBLE_RANGES`): the normal draws behind
height, BMI and creatinine are truncated at `TRUNCATION_SD` standard deviations, and settings
whose truncated distributions reach outside the plausibility ranges (or ages above the
plausible 110 years) are refused before anything is drawn. So a trial of any size never
meets an implausible virtual patient, and `validate_table`'s plausibility check of the drawn
table is a safety net that never fires.

Genotypes drawn from allele frequencies (CPIC's or the caller's) are drawn under
Hardy-Weinberg equilibrium: two alleles drawn independently per patient. CPIC builds its own
diplotype and phenotype frequency tables from these allele frequencies in the same way.

References: International Warfarin Pharmacogenetics Consortium. Estimation of the warfarin
dose with clinical and pharmacogenetic data. N Engl J Med 2009;360(8):753-764 (the cohort
behind the CYP2C9/VKORC1 counts); CPIC allele frequency tables (CC0; cpicpgx.org, accessed
through copies dated 2026-03-13 and 2026-08-19, twins/data/SOURCES.md), with the
biogeographic groups of Huddart R et al. Standardized biogeographic grouping system for
annotating populations in pharmacogenetic research. Clin Pharmacol Ther 2019;105(5):1256-1262;
Fryar CD et al., NHSR no. 122, 2018 and Pottel H et al., Clin Chim Acta 2008;396:49-55 (see
`Demographics`).
"""

from __future__ import annotations

import csv
import functools
import io
import math
import numbers
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from importlib import resources
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from . import pgx
from ._patient import ADULT_AGE, DEMOGRAPHIC_RANGES, as_medications, interpret, normalise_gene
from ._plausibility import find_implausible, plausible_range
from ._population_table import MED_PREFIX, generator

VKORC1_REFERENCE = "rs9923231 reference (C)"
VKORC1_VARIANT = "rs9923231 variant (T)"

IWPC_FREQUENCY_FILE = "IWPC_derived_genotype_frequencies_by_race.csv"

#: The ancestry (race, OMB) categories of the IWPC table.
IWPC_ANCESTRIES: tuple[str, ...] = ("Asian", "Black or African American", "Unknown", "White")

_CYP2C9_DIPLOTYPES: tuple[str, ...] = ("*1/*1", "*1/*2", "*1/*3", "*2/*2", "*2/*3", "*3/*3")
_VKORC1_GENOTYPES: tuple[tuple[str, str], ...] = (
    ("VKORC1_GG", "-1639 GG"),
    ("VKORC1_AG", "-1639 AG"),
    ("VKORC1_AA", "-1639 AA"),
)
IWPC_GENES: tuple[str, ...] = ("CYP2C9", "VKORC1")

#: CPIC's biogeographic groups (Huddart et al. 2019), spelled as CPIC spells them.
CPIC_GROUPS: tuple[str, ...] = (
    "African American/Afro-Caribbean",
    "American",
    "Central/South Asian",
    "East Asian",
    "European",
    "Latino",
    "Near Eastern",
    "Oceanian",
    "Sub-Saharan African",
)

#: The CPIC group whose allele frequencies stand for each IWPC race, for the genes the IWPC
#: table lacks (and for every gene with `genotype_source="cpic"`): the group nearest to the
#: race in the three allele frequencies both sources report (CYP2C9*2, CYP2C9*3 and VKORC1
#: rs9923231 T; Euclidean distance 0.036, 0.010, 0.029 and 0.062; tests/
#: test_population_genes.py recomputes it). "Unknown" (IWPC: race not reported or mixed) is
#: almost as near to European (0.077) as to Latino: the weakest of the four.
IWPC_CPIC_GROUPS: Mapping[str, str] = MappingProxyType(
    {
        "Asian": "East Asian",
        "Black or African American": "African American/Afro-Caribbean",
        "Unknown": "Latino",
        "White": "European",
    }
)

#: The ancestries `Population.sample` takes: the IWPC races, then the CPIC groups.
ANCESTRIES: tuple[str, ...] = IWPC_ANCESTRIES + CPIC_GROUPS

#: CPIC's allele frequency tables shipped in `twins/data/` (see twins/data/SOURCES.md).
CPIC_FREQUENCY_FILES: Mapping[str, str] = MappingProxyType(
    {
        "CYP2C19": "CYP2C19_allele_frequencies_2026-03-13.csv",
        "CYP2C9": "CYP2C9_allele_frequencies_2026-03-13.csv",
        "CYP2D6": "CYP2D6_allele_frequencies_2026-03-13.csv",
        "VKORC1": "VKORC1_allele_frequencies_2026-08-19.csv",
    }
)

#: The reference allele of each gene: CPIC sets its frequency to 1 minus the others'.
REFERENCE_ALLELES: Mapping[str, str] = MappingProxyType(
    {"CYP2C19": "*1", "CYP2C9": "*1", "CYP2D6": "*1", "VKORC1": VKORC1_REFERENCE}
)

#: How far allele frequencies may sum from 1 (CPIC's values are rounded: the shipped groups
#: sum to 1 within 2e-7).
FREQUENCY_SUM_TOLERANCE = 1e-6

# The CPIC-drawn genes use their own random stream each (a SeedSequence child of the key's,
# numbered by the gene's place in twins.pgx.genes()), so adding them leaves every other
# draw of a cohort, and so the cohorts of earlier versions, as they were.
_CPIC_STREAM = 0x43504943  # "CPIC"

#: The standard normal draws behind height, log-BMI and log-creatinine are truncated at this
#: many standard deviations (redrawn beyond it: 6.3e-5 of the mass of each is removed).
TRUNCATION_SD = 4.0


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


def read_allele_frequencies(
    path: str | os.PathLike[str],
) -> Mapping[str, Mapping[str, Mapping[str, float]]]:
    """Allele frequencies by population from a CSV file laid out as CPIC's tables shipped in
    `twins/data/` (one row per allele and population), every row checked.

    **Arguments:**

    - `path`: a UTF-8 CSV file with at least the columns `gene`, `allele`, `population`
      and `frequency` (a fraction from 0 to 1); other columns are ignored. Genes as
      `twins.pgx` names them; star alleles as CPIC names them (`*2`, `*1x2`, `*4x≥3`);
      VKORC1 alleles as CPIC names them, `rs9923231 reference (C)` and
      `rs9923231 variant (T)`.

    **Returns:**

    `{gene: {population: {allele: frequency}}}` (read-only), ready for
    `Population.sample(..., allele_frequencies=...)` once keyed by the ancestries sampled.
    Where a population lacks the gene's reference allele (`*1`; VKORC1's C), its frequency
    is 1 minus the sum of the others, as CPIC computes its own `*1` (for VKORC1, a
    two-allele SNP, that is exact).

    **Raises:**

    `ValueError` naming the file, line, gene, population and allele for a missing column, an
    unsupported gene, an allele `twins.pgx` does not know, a frequency outside [0, 1], an
    allele given twice, or a population whose frequencies sum to more than 1 (or, with the
    reference allele given, to other than 1) by more than `FREQUENCY_SUM_TOLERANCE`.

    References: CPIC allele frequency tables (cpicpgx.org; twins/data/SOURCES.md).
    """
    name = os.fspath(path)
    with open(name, encoding="utf-8", newline="") as handle:
        return _parse_allele_frequencies(handle.read(), name)


@functools.cache
def cpic_allele_frequencies() -> Mapping[str, Mapping[str, Mapping[str, float]]]:
    """CPIC's allele frequencies by biogeographic group, as shipped in `twins/data/`.

    CYP2C19, CYP2C9 and CYP2D6 (CPIC frequency tables dated 2026-03-13; CYP2D6 with its
    copy-number alleles `*1x2`, `*2x≥3`, ...) and VKORC1 rs9923231 (CPIC API values saved
    2026-08-19; no Oceanian value). Non-reference frequencies are CPIC's subject-weighted
    averages over published studies, not one cohort; `*1` is 1 minus the others (so it is
    overestimated where studies did not test every allele); VKORC1's C is 1 minus T. Caveats
    and provenance: twins/data/SOURCES.md.

    **Returns:**

    `{gene: {group: {allele: frequency}}}` (read-only), groups from `CPIC_GROUPS`, read with
    the checks of `read_allele_frequencies`.

    References: CPIC allele frequency tables (CC0; cpicpgx.org) for the guidelines Hicks JK et
    al., Clin Pharmacol Ther 2015;98(2):127-134 (CYP2D6, CYP2C19 and SSRIs); Crews KR et al.,
    Clin Pharmacol Ther 2014;95(4):376-382 (CYP2D6 and codeine); Johnson JA et al., Clin
    Pharmacol Ther 2017;102(3):397-404 (CYP2C9, VKORC1 and warfarin); groups: Huddart R et
    al., Clin Pharmacol Ther 2019;105(5):1256-1262.
    """
    out: dict[str, Mapping[str, Mapping[str, float]]] = {}
    for gene, file in CPIC_FREQUENCY_FILES.items():
        text = (resources.files("twins") / "data" / file).read_text(encoding="utf-8")
        table = _parse_allele_frequencies(text, f"twins/data/{file}")
        if set(table) != {gene}:
            raise ValueError(f"twins/data/{file}: expected gene {gene} only, got {sorted(table)}.")
        unknown = [g for g in table[gene] if g not in CPIC_GROUPS]
        if unknown:
            raise ValueError(f"twins/data/{file}: groups {unknown} are not CPIC groups.")
        out[gene] = table[gene]
    return MappingProxyType(out)


def _parse_allele_frequencies(
    text: str, name: str
) -> Mapping[str, Mapping[str, Mapping[str, float]]]:
    """The checked `{gene: {population: {allele: frequency}}}` of a CSV text (`name` for
    messages); see `read_allele_frequencies`."""
    reader = csv.DictReader(io.StringIO(text))
    columns = ("gene", "allele", "population", "frequency")
    lacking = [c for c in columns if c not in (reader.fieldnames or ())]
    if lacking:
        raise ValueError(
            f"{name}: no column {lacking[0]!r}; an allele frequency table has the columns "
            f"{', '.join(columns)} (got {reader.fieldnames})."
        )
    tables: dict[tuple[str, str], dict[str, float]] = {}
    for line, row in enumerate(reader, start=2):
        gene = normalise_gene(row["gene"], f"{name} line {line}")
        group = (row["population"] or "").strip()
        allele = (row["allele"] or "").strip()
        where = f"{name} line {line} ({gene}, population {group!r}, allele {allele!r})"
        if not group:
            raise ValueError(f"{where}: the population is empty.")
        try:
            frequency = float(row["frequency"])
        except (TypeError, ValueError):
            raise ValueError(
                f"{where}: the frequency must be a number from 0 to 1, got {row['frequency']!r}."
            ) from None
        if not 0.0 <= frequency <= 1.0:  # NaN included
            raise ValueError(f"{where}: the frequency must be from 0 to 1, got {frequency!r}.")
        _check_allele(gene, allele, where)
        table = tables.setdefault((gene, group), {})
        if allele in table:
            raise ValueError(f"{where}: the allele is given twice for this gene and population.")
        table[allele] = frequency
    out: dict[str, dict[str, Mapping[str, float]]] = {}
    for (gene, group), table in tables.items():
        reference = REFERENCE_ALLELES[gene]
        where = f"{name}: {gene}, population {group!r}"
        if reference not in table:
            rest = math.fsum(table.values())
            # CPIC's rule (its *1 is 1 minus the others); clipped only within the tolerance.
            table = {reference: max(0.0, 1.0 - rest), **table} if rest <= 1.0 else table
        out.setdefault(gene, {})[group] = MappingProxyType(_check_frequencies(gene, table, where))
    return MappingProxyType({g: MappingProxyType(t) for g, t in out.items()})


def _check_allele(gene: str, allele: Any, where: str) -> None:
    """Refuse an allele `twins.pgx` does not know (VKORC1: CPIC's two names only)."""
    if gene == "VKORC1":
        if allele not in (VKORC1_REFERENCE, VKORC1_VARIANT):
            raise ValueError(
                f"{where}: unknown VKORC1 allele {allele!r}; the alleles are CPIC's "
                f"{VKORC1_REFERENCE!r} and {VKORC1_VARIANT!r} (rs9923231, -1639G>A)."
            )
        return
    if not isinstance(allele, str) or "/" in allele or not allele.strip():
        raise ValueError(f"{where}: alleles are single star alleles, got {allele!r}.")
    try:
        pgx.phenotype(gene, f"{allele}/{allele}")
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from error


def _check_frequencies(gene: str, table: Mapping[Any, Any], where: str) -> dict[str, float]:
    """The allele frequencies of one gene and population, checked: known alleles (one allele
    each, CPIC's names), frequencies in [0, 1] that sum to 1 within
    `FREQUENCY_SUM_TOLERANCE`. Errors start with `where` and name the allele."""
    if not table:
        raise ValueError(f"{where}: no allele frequencies.")
    out: dict[str, float] = {}
    for allele, frequency in table.items():
        if (
            isinstance(frequency, bool)
            or not isinstance(frequency, numbers.Real)
            or not math.isfinite(frequency)
            or not 0.0 <= frequency <= 1.0
        ):
            raise ValueError(
                f"{where}: the frequency of {allele!r} must be from 0 to 1, got {frequency!r}."
            )
        _check_allele(gene, allele, where)
        out[allele] = float(frequency)
    total = math.fsum(out.values())
    if abs(total - 1.0) > FREQUENCY_SUM_TOLERANCE:
        largest = sorted(out.items(), key=lambda item: -item[1])[:5]
        shown = ", ".join(f"{a} {f:.6g}" for a, f in largest)
        more = f" and {len(out) - len(largest)} more" if len(out) > len(largest) else ""
        raise ValueError(
            f"{where}: allele frequencies must sum to 1 (within {FREQUENCY_SUM_TOLERANCE:g}), "
            f"got {total!r} {'(more than 1)' if total > 1 else '(less than 1)'} from "
            f"{shown}{more}; they are not renormalised for you."
        )
    return out


@dataclass(frozen=True)
class Demographics:
    """Distributions of height, weight and serum creatinine for `Population.sample`.

    Height is normal by sex; BMI is log-normal by sex (given by its mean and coefficient of
    variation) and independent of height, and weight = BMI x height², so height and weight
    are positively correlated; serum creatinine is log-normal by sex, independent of the
    rest. Each of the three is truncated at `TRUNCATION_SD` (4) standard deviations (on the
    log scale for BMI and creatinine), and `Population.sample` refuses demographics whose
    truncated ranges leave the plausibility ranges of adults (`twins.PLAUSIBLE_RANGES`:
    height 100 to 230 cm, BMI 10 to 100 kg/m², weight 15 to 350 kg, creatinine 0.1 to 15
    mg/dL): sampled patients are always plausible. All values are approximate.

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


# --- sampling ---------------------------------------------------------------------------------


def sample_table(
    n: int,
    *,
    key: Any,
    ancestry: str | Mapping[str, float] = "White",
    age: tuple[float, float] = (18.0, 80.0),
    female_fraction: float = 0.5,
    genes: Iterable[str] | None = None,
    allele_frequencies: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    genotype_source: str = "iwpc",
    medications: Mapping[str, float] | None = None,
    demographics: Demographics | Mapping[str, Demographics] | None = None,
) -> pd.DataFrame:
    """The table of a virtual population, before `validate_table`: the draws of
    `twins.Population.sample`, which documents the arguments, the distributions and their
    sources."""
    rng = generator(key)
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
    _check_support(per_group, low, high)
    chosen = _genes(genes)
    given = _allele_frequencies(allele_frequencies, groups)
    sources = _gene_sources(chosen, given, genotype_source, groups)
    prevalences = _prevalences(medications)

    labels = list(groups)
    which = rng.choice(len(labels), size=n, p=np.array([groups[g] for g in labels]))
    female = rng.random(n) < female_fraction
    ages = rng.uniform(low, high, size=n)
    z = _truncated_normal(rng, (3, n))

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
    cpic = cpic_allele_frequencies()
    entropy = rng.bit_generator.seed_seq.entropy  # type: ignore[attr-defined]
    for index, gene in enumerate(pgx.genes()):
        if gene in given:  # the caller's frequencies: from `rng`, as in earlier versions
            frame[gene] = _draw_hwe(rng, gene, given[gene], labels, which)
            continue
        if gene not in sources:
            continue
        column = np.empty(n, dtype=object)
        iwpc = {g: counts[g][gene] for g in labels if sources[gene][g] == "iwpc"}
        if iwpc:  # IWPC counts, from `rng` exactly as in earlier versions
            inside = np.isin(which, [labels.index(g) for g in iwpc])
            column[inside] = _draw_observed(rng, iwpc, labels, which)[inside]
        frequencies = {
            g: cpic[gene][source] for g, source in sources[gene].items() if source != "iwpc"
        }
        if frequencies:  # CPIC frequencies, from the gene's own stream
            stream = np.random.default_rng(
                np.random.SeedSequence(entropy, spawn_key=(_CPIC_STREAM, index))
            )
            inside = np.isin(which, [labels.index(g) for g in frequencies])
            column[inside] = _draw_hwe(stream, gene, frequencies, labels, which)[inside]
        frame[gene] = column
    for name, prevalence in prevalences.items():
        frame[MED_PREFIX + name] = rng.random(n) < prevalence
    return frame


def _truncated_normal(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Standard normal draws truncated at +-TRUNCATION_SD, by rejection: a draw beyond is
    redrawn from a child generator (`rng.spawn`, which does not advance `rng`), so the draws
    inside, and everything drawn from `rng` afterwards, are those of plain normal draws."""
    z = rng.standard_normal(shape)
    outside = np.abs(z) > TRUNCATION_SD
    if outside.any():
        child = rng.spawn(1)[0]
        while outside.any():
            z[outside] = child.standard_normal(int(outside.sum()))
            outside = np.abs(z) > TRUNCATION_SD
    return z


def _support(d: Demographics, sex: str) -> dict[str, tuple[float, float]]:
    """The (low, high) that the truncated draws of `d` can reach for one sex."""
    k = TRUNCATION_SD
    mean, sd = getattr(d, f"height_mean_{sex}"), getattr(d, f"height_sd_{sex}")
    height = (mean - k * sd, mean + k * sd)
    sigma = math.sqrt(math.log1p(getattr(d, f"bmi_cv_{sex}") ** 2))
    mu = math.log(getattr(d, f"bmi_mean_{sex}")) - sigma**2 / 2
    bmi = (math.exp(mu - k * sigma), math.exp(mu + k * sigma))
    weight = (bmi[0] * (height[0] / 100.0) ** 2, bmi[1] * (height[1] / 100.0) ** 2)
    median, log_sd = getattr(d, f"scr_median_{sex}"), getattr(d, f"scr_log_sd_{sex}")
    scr = (median * math.exp(-k * log_sd), median * math.exp(k * log_sd))
    return {"height": height, "bmi": bmi, "weight": weight, "serum_creatinine": scr}


_SUPPORT_FIELDS = {
    "height": "height_mean_{sex}, height_sd_{sex}",
    "bmi": "bmi_mean_{sex}, bmi_cv_{sex}",
    "weight": "height_mean_{sex}, height_sd_{sex}, bmi_mean_{sex}, bmi_cv_{sex}",
    "serum_creatinine": "scr_median_{sex}, scr_log_sd_{sex}",
}


def _check_support(per_group: Mapping[str, Demographics], low: float, high: float) -> None:
    """Refuse settings whose truncated draws could give an implausible patient."""
    top = plausible_range("age", low)
    if top is not None and high > top.high:
        raise ValueError(
            f"Population.sample: age reaches {high:g} years, beyond the plausible {top.low:g} "
            f"to {top.high:g} years (twins.PLAUSIBLE_RANGES); sampled patients are always "
            f"plausible, so the age range must end by {top.high:g}."
        )
    problems = []
    for group, d in per_group.items():
        for sex, word in (("female", "women"), ("male", "men")):
            lowest = getattr(d, f"height_mean_{sex}") - TRUNCATION_SD * getattr(
                d, f"height_sd_{sex}"
            )
            if lowest <= 0:
                problems.append(
                    f"ancestry {group!r}, {word}: height down to {lowest:.4g} cm "
                    f"({_SUPPORT_FIELDS['height'].format(sex=sex)})"
                )
                continue
            support = _support(d, sex)
            for age in (low, high):
                corners = {
                    "age": [age, age],
                    "height": list(support["height"]),
                    "weight": list(support["weight"]),
                    "serum_creatinine": list(support["serum_creatinine"]),
                }
                for found in find_implausible(corners, ["low", "high"]):
                    r = found.range
                    side = "down to" if found.row == 0 else "up to"
                    text = (
                        f"ancestry {group!r}, {word}: {found.field} {side} {found.value:.4g} "
                        f"{r.unit} ({_SUPPORT_FIELDS[found.field].format(sex=sex)}), outside "
                        f"the plausible {r.low:g} to {r.high:g} {r.unit} ({r.band})"
                    )
                    if text not in problems:
                        problems.append(text)
    if problems:
        raise ValueError(
            "Population.sample: these demographics could give implausible patients (the "
            f"normal draws are truncated at {TRUNCATION_SD:g} SD): "
            + "; ".join(problems)
            + ". Sampled patients are always within the plausibility ranges "
            "(twins.PLAUSIBLE_RANGES): narrow or move these distributions."
        )


def _ancestry_fractions(ancestry: str | Mapping[str, float]) -> dict[str, float]:
    groups = {ancestry: 1.0} if isinstance(ancestry, str) else dict(ancestry)
    if not groups:
        raise ValueError("ancestry must name at least one category.")
    for name, fraction in groups.items():
        if name not in ANCESTRIES:
            raise ValueError(
                f"Unknown ancestry {name!r}: Population.sample takes the IWPC categories "
                f"{', '.join(map(repr, IWPC_ANCESTRIES))} or the CPIC biogeographic groups "
                f"{', '.join(map(repr, CPIC_GROUPS))}."
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


def _genes(genes: Iterable[str] | None) -> tuple[str, ...]:
    """The genes drawn from the shipped tables (default: all that `twins.pgx` reads)."""
    if genes is None:
        return pgx.genes()
    if isinstance(genes, str):
        genes = (genes,)
    chosen = set()
    for gene in genes:
        symbol = normalise_gene(gene, "Population.sample genes")
        if symbol in chosen:
            raise ValueError(f"Population.sample genes: {symbol} is given twice.")
        chosen.add(symbol)
    return tuple(g for g in pgx.genes() if g in chosen)


def _gene_sources(
    genes: tuple[str, ...],
    given: Mapping[str, Any],
    genotype_source: str,
    groups: Mapping[str, float],
) -> dict[str, dict[str, str]]:
    """gene -> sampled ancestry -> `"iwpc"` (the IWPC counts of that race) or the CPIC group
    whose frequencies draw it, for the genes drawn from the shipped tables."""
    if genotype_source not in ("iwpc", "cpic"):
        raise ValueError(
            f"Population.sample: genotype_source must be 'iwpc' (CYP2C9 and VKORC1 of the IWPC "
            f"races from the IWPC counts, the default) or 'cpic' (every gene from CPIC's "
            f"allele frequencies), got {genotype_source!r}."
        )
    cpic = cpic_allele_frequencies()
    out: dict[str, dict[str, str]] = {}
    for gene in genes:
        if gene in given:
            continue
        out[gene] = {}
        for group in groups:
            if genotype_source == "iwpc" and gene in IWPC_GENES and group in IWPC_ANCESTRIES:
                out[gene][group] = "iwpc"
                continue
            cpic_group = IWPC_CPIC_GROUPS.get(group, group)
            if cpic_group not in cpic[gene]:
                mapped = f" (the CPIC group for {group!r})" if cpic_group != group else ""
                raise ValueError(
                    f"Population.sample: CPIC gives no {gene} allele frequencies for "
                    f"{cpic_group!r}{mapped} (twins/data/{CPIC_FREQUENCY_FILES[gene]}); leave "
                    f"{gene} out of genes, or give allele_frequencies={{{gene!r}: "
                    f"{{{group!r}: {{...}}}}}} from a source you can cite."
                )
            out[gene][group] = cpic_group
    return out


def _allele_frequencies(
    allele_frequencies: Mapping[str, Mapping[str, Mapping[str, float]]] | None,
    groups: Mapping[str, float],
) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for gene, by_group in (allele_frequencies or {}).items():
        symbol = normalise_gene(gene, "Population.sample allele_frequencies")
        if symbol in out:
            raise ValueError(f"allele_frequencies: gene {symbol} is given twice.")
        if not isinstance(by_group, Mapping):
            raise TypeError(
                f"allele_frequencies[{symbol!r}] must map each sampled ancestry to "
                f"{{allele: frequency}}, got {by_group!r}."
            )
        lacking = [g for g in groups if g not in by_group]
        if lacking:
            raise ValueError(
                f"allele_frequencies[{symbol!r}] has no frequencies for the sampled "
                f"ancestries {lacking}."
            )
        out[symbol] = {}
        for group in groups:
            where = f"allele_frequencies[{symbol!r}][{group!r}]"
            table = by_group[group]
            if not isinstance(table, Mapping):
                raise TypeError(f"{where} must be a mapping allele -> frequency, got {table!r}.")
            out[symbol][group] = _check_frequencies(symbol, table, where)
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
    out = np.full(len(which), None, dtype=object)
    for g, group in enumerate(labels):
        if group not in counts:
            continue
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
    out = np.full(len(which), None, dtype=object)
    for g, group in enumerate(labels):
        if group not in frequencies:
            continue
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
                result = interpret(gene, diplotype, "Population.sample")
                # VKORC1 as the IWPC draws spell it (-1639 GG/AG/AA); star alleles in CPIC's.
                spelling[pair] = result.phenotype if gene == "VKORC1" else result.diplotype
            names[j] = spelling[pair]
        out[rows] = names
    return out
