"""CPIC genotype -> activity score -> phenotype.

Where CPIC's shipped diplotype table lists a diplotype, its row is the answer. Otherwise the
answer follows CPIC's rules from the allele activity values or functions in the same release:

- CYP2D6 (Caudle 2020): activity score = sum of the activity values of every gene copy; a
  duplicated allele `*AxN` counts N times the value of `*A` (CPIC's own `*1x2` = 2.0,
  `*41x3` = 0.75); `*Ax≥3` and `*AxN` (unknown copy number, at least 2) give a lower bound.
  0 = Poor, 0.25-1 = Intermediate, 1.25-2.25 = Normal, > 2.25 = Ultrarapid Metabolizer; a
  lower bound that does not settle the phenotype (e.g. `≥1.5`) is Indeterminate.
- CYP2C9 (Theken 2020): activity score = sum of the two activity values; 0-0.5 = Poor,
  1-1.5 = Intermediate, 2 = Normal Metabolizer.
- CYP2C19 (Lee 2022): function-based, from the two allele functions (no activity score).
- VKORC1 (Johnson 2017): the rs9923231 (-1639G>A) genotype, `-1639 GG`, `AG` or `AA`.

An allele of uncertain or unknown function makes the phenotype Indeterminate, with no
activity score, as in CPIC's tables.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from fractions import Fraction

from ._parse import (
    Haplotype,
    StarAllele,
    haplotype_name,
    parse_star_diplotype,
    parse_vkorc1,
)
from ._tables import (
    GENES,
    Row,
    Score,
    TableSource,
    allele_functions,
    diplotype_table,
    sources,
)

INDETERMINATE = "Indeterminate"
_POOR = "Poor Metabolizer"
_INTERMEDIATE = "Intermediate Metabolizer"
_NORMAL = "Normal Metabolizer"
_RAPID = "Rapid Metabolizer"
_ULTRARAPID = "Ultrarapid Metabolizer"
_LIKELY_INTERMEDIATE = "Likely Intermediate Metabolizer"
_LIKELY_POOR = "Likely Poor Metabolizer"

# CYP2D6 activity score -> phenotype, CPIC since 2019 (Caudle 2020, Table 2).
_CYP2D6_INTERMEDIATE_BELOW = Fraction(5, 4)  # 0 < AS < 1.25: Intermediate
_CYP2D6_NORMAL_UP_TO = Fraction(9, 4)  # 1.25 <= AS <= 2.25: Normal; above: Ultrarapid

# CYP2C9 activity score -> phenotype (Theken 2020, Table 1): AS < 1 Poor, < 2 Intermediate.
_CYP2C9_INTERMEDIATE_FROM = Fraction(1)
_CYP2C9_NORMAL_FROM = Fraction(2)

# CYP2C19 pair of allele functions -> phenotype (Lee 2022, Table 1).
_NORMAL_FN, _INCREASED_FN = "Normal function", "Increased function"
_DECREASED_FN, _NO_FN = "Decreased function", "No function"
_CYP2C19_BY_FUNCTIONS: dict[frozenset[str], str] = {
    frozenset({_NORMAL_FN}): _NORMAL,
    frozenset({_NORMAL_FN, _INCREASED_FN}): _RAPID,
    frozenset({_INCREASED_FN}): _ULTRARAPID,
    frozenset({_NORMAL_FN, _NO_FN}): _INTERMEDIATE,
    frozenset({_INCREASED_FN, _NO_FN}): _INTERMEDIATE,
    frozenset({_NO_FN}): _POOR,
    frozenset({_NORMAL_FN, _DECREASED_FN}): _LIKELY_INTERMEDIATE,
    frozenset({_INCREASED_FN, _DECREASED_FN}): _LIKELY_INTERMEDIATE,
    frozenset({_DECREASED_FN}): _LIKELY_INTERMEDIATE,
    frozenset({_DECREASED_FN, _NO_FN}): _LIKELY_POOR,
}
_INDETERMINATE_FUNCTIONS = frozenset({"Uncertain function", "Unknown function"})


@dataclass(frozen=True, slots=True)
class PhenotypeResult:
    """The CPIC interpretation of one diplotype.

    **Fields:**

    - `gene`: the gene symbol, e.g. `"CYP2D6"`.
    - `diplotype`: the diplotype in CPIC's spelling and order (`"*1/*2x2"`; for VKORC1
      `"rs9923231 reference (C)/rs9923231 variant (T)"`): the table's own string where CPIC
      lists it.
    - `activity_score`: the activity score, or `None` where CPIC gives none (CYP2C19 and
      VKORC1, which are function-based, and Indeterminate diplotypes).
    - `phenotype`: CPIC's label: `"Poor Metabolizer"`, `"Intermediate Metabolizer"`,
      `"Likely Intermediate Metabolizer"`, `"Normal Metabolizer"`, `"Rapid Metabolizer"`,
      `"Ultrarapid Metabolizer"`, `"Indeterminate"`, ...; for VKORC1 `"-1639 GG"`,
      `"-1639 AG"` or `"-1639 AA"`.
    - `activity_score_is_lower_bound`: `True` where the score is a lower bound because the
      copy number is (CPIC's `≥4.0` for `*1/*1x≥3` is `activity_score=4.0` with this flag).
    """

    gene: str
    diplotype: str
    activity_score: float | None
    phenotype: str
    activity_score_is_lower_bound: bool = False


def genes() -> tuple[str, ...]:
    """The genes that `phenotype` interprets.

    **Returns:**

    `("CYP2C19", "CYP2C9", "CYP2D6", "VKORC1")`.
    """
    return GENES


def source(gene: str) -> TableSource:
    """Source, version, date and licence of the CPIC tables shipped for `gene`.

    **Arguments:**

    - `gene`: a gene symbol from `genes()` (case-insensitive).

    **Returns:**

    A `TableSource` with the version and date of the CPIC data, where it was obtained, its
    licence, the data file names and the CPIC publications whose rules apply.
    """
    return sources()[_gene(gene)]


def phenotype(gene: str, diplotype: str) -> PhenotypeResult:
    """CPIC activity score and phenotype of a diplotype.

    **Arguments:**

    - `gene`: `"CYP2D6"`, `"CYP2C9"`, `"CYP2C19"` or `"VKORC1"` (case-insensitive).
    - `diplotype`: for the CYP genes two star alleles separated by `/` in either order, with
      whitespace anywhere and an optional gene prefix: `"*1/*2"`, `"*2/*1"`, `"CYP2D6 *1/*4"`.
      CYP2D6 also takes copy numbers, `"*1/*2x2"`, `"*1/*2x3"`, `"*1/*2x≥3"` (or `x>=3`),
      `"*1/*2xN"` (unknown copy number, 2 or more), and tandems such as `"*1/*36+*10"`. For
      VKORC1 the rs9923231 (-1639G>A) genotype: `"G/A"`, `"AG"`, `"rs9923231 C/T"`,
      `"-1639 GG"`, `"-1639G>A heterozygous"`, or CPIC's
      `"rs9923231 reference (C)/rs9923231 variant (T)"`.

    **Returns:**

    A `PhenotypeResult`: the diplotype in CPIC's spelling, the activity score (`None` where
    CPIC gives none) and CPIC's phenotype label. Where CPIC's diplotype table lists the
    diplotype, the answer is that row; otherwise it follows CPIC's rules (module docstring of
    `twins.pgx`). An allele of uncertain or unknown function gives `"Indeterminate"` with no
    score.

    **Raises:**

    `ValueError` naming the gene and the allele for an unsupported gene, an allele that
    CPIC's table for the gene does not define, a copy number or tandem outside CYP2D6, or a
    diplotype that cannot be read. `TypeError` if `diplotype` is not a string.

    References: Caudle KE et al., Clin Transl Sci 2020;13:116-124 (CYP2D6); Theken KN et al.,
    Clin Pharmacol Ther 2020;108:191-200 (CYP2C9); Lee CR et al., Clin Pharmacol Ther
    2022;112:959-967 (CYP2C19); Johnson JA et al., Clin Pharmacol Ther 2017;102:397-404
    (VKORC1).
    """
    gene = _gene(gene)
    if not isinstance(diplotype, str):
        raise TypeError(
            f"The {gene} diplotype must be a string such as '*1/*2', got "
            f"{type(diplotype).__name__} {diplotype!r}."
        )
    return _phenotype(gene, diplotype)


@functools.lru_cache(maxsize=65_536)
def _phenotype(gene: str, diplotype: str) -> PhenotypeResult:
    # Cached: cohorts repeat the same few diplotypes (results are frozen; errors not cached).
    if gene == "VKORC1":
        first, second = parse_vkorc1(diplotype)
        row = diplotype_table(gene)[(min(first, second), max(first, second))]
        return _from_row(gene, row)
    haplotypes = parse_star_diplotype(gene, diplotype)
    _check_alleles(gene, diplotype, haplotypes)
    names = sorted(haplotype_name(h) for h in haplotypes)
    row = diplotype_table(gene).get((names[0], names[1]))
    if row is not None:
        return _from_row(gene, row)
    return by_rule(gene, haplotypes)


def by_rule(gene: str, haplotypes: tuple[Haplotype, Haplotype]) -> PhenotypeResult:
    """The CPIC rule for a star-allele diplotype, without looking at the diplotype table.

    `phenotype` uses it where the table does not list the diplotype; tests check that it
    reproduces every row of CPIC's tables.
    """
    ordered = sorted(haplotypes, key=lambda h: tuple(a.sort_key for a in h))
    diplotype = "/".join(haplotype_name(h) for h in ordered)
    if gene == "CYP2C19":
        functions = [allele_functions(gene)[h[0].base][1] for h in haplotypes]
        if _INDETERMINATE_FUNCTIONS.intersection(functions):
            return PhenotypeResult(gene, diplotype, None, INDETERMINATE)
        label = _CYP2C19_BY_FUNCTIONS.get(frozenset(functions))
        if label is None:
            raise ValueError(
                f"No CPIC rule for CYP2C19 {diplotype} with allele functions {functions}."
            )
        return PhenotypeResult(gene, diplotype, None, label)
    scores = [_haplotype_score(gene, h) for h in haplotypes]
    if scores[0] is None or scores[1] is None:
        return PhenotypeResult(gene, diplotype, None, INDETERMINATE)
    total = Score(
        scores[0].value + scores[1].value,
        at_least=scores[0].at_least or scores[1].at_least,
    )
    label = _cyp2d6_phenotype(total) if gene == "CYP2D6" else _cyp2c9_phenotype(total)
    return PhenotypeResult(gene, diplotype, float(total.value), label, total.at_least)


def _gene(gene: str) -> str:
    if not isinstance(gene, str):
        raise TypeError(f"The gene must be a string such as 'CYP2D6', got {gene!r}.")
    symbol = gene.strip().upper()
    if symbol not in GENES:
        raise ValueError(f"Unsupported gene {gene!r}: expected one of {', '.join(GENES)}.")
    return symbol


def _check_alleles(gene: str, diplotype: str, haplotypes: tuple[Haplotype, Haplotype]) -> None:
    known = allele_functions(gene)
    for haplotype in haplotypes:
        if gene != "CYP2D6" and (haplotype[0].copies > 1 or len(haplotype) > 1):
            raise ValueError(
                f"{gene} allele {haplotype_name(haplotype)!r} in {diplotype!r}: CPIC defines "
                f"copy numbers and tandem arrangements only for CYP2D6; {gene} takes single "
                "star alleles such as '*1/*2'."
            )
        for allele in haplotype:
            if allele.base not in known:
                examples = ", ".join([name for name in known if "x" not in name][:6])
                version = sources()[gene].version
                raise ValueError(
                    f"Unknown {gene} allele {allele.base!r} in {diplotype!r}: CPIC's {gene} "
                    f"table (version {version}) defines {examples}, ... ({len(known)} names); "
                    f"see twins.pgx.source({gene!r}) for the tables."
                )


def _allele_score(gene: str, allele: StarAllele) -> Score | None:
    """Activity value of one allele with its copies: CPIC's own value where it lists the
    allele (`*1x2`, `*1x≥3`, `*41x3`), else copies x the single-copy value."""
    table = allele_functions(gene)
    if allele.name in table:
        return table[allele.name][0]
    single = table[allele.base][0]
    if single is None:
        return None
    value = single.value * allele.copies
    return Score(value, at_least=allele.at_least and value > 0)


def _haplotype_score(gene: str, haplotype: Haplotype) -> Score | None:
    """Sum over the gene copies of one chromosome (a tandem such as `*36+*10` adds up)."""
    total = Score(Fraction(0))
    for allele in haplotype:
        score = _allele_score(gene, allele)
        if score is None:
            return None
        total = Score(total.value + score.value, total.at_least or score.at_least)
    return total


def _cyp2d6_phenotype(score: Score) -> str:
    if score.at_least and score.value <= _CYP2D6_NORMAL_UP_TO:
        # Only the ultrarapid range is unbounded above: a lower bound at or below 2.25 could
        # still be Normal or Ultrarapid (or Intermediate to Ultrarapid).
        return INDETERMINATE
    if score.value == 0:
        return _POOR
    if score.value < _CYP2D6_INTERMEDIATE_BELOW:
        return _INTERMEDIATE
    if score.value <= _CYP2D6_NORMAL_UP_TO:
        return _NORMAL
    return _ULTRARAPID


def _cyp2c9_phenotype(score: Score) -> str:
    if score.at_least:  # not reachable with single-copy alleles; kept for safety
        return INDETERMINATE
    if score.value < _CYP2C9_INTERMEDIATE_FROM:
        return _POOR
    if score.value < _CYP2C9_NORMAL_FROM:
        return _INTERMEDIATE
    return _NORMAL


def _from_row(gene: str, row: Row) -> PhenotypeResult:
    if row.score is None:
        return PhenotypeResult(gene, row.diplotype, None, row.phenotype)
    return PhenotypeResult(
        gene, row.diplotype, float(row.score.value), row.phenotype, row.score.at_least
    )
