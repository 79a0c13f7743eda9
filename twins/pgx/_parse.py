"""Reading diplotype strings as labs write them into CPIC's allele names.

Star-allele genes (CYP2C19, CYP2C9, CYP2D6): two haplotypes separated by `/`, each a star
allele with an optional copy number (`*1x2`, `*2x≥3`, `*2xN`), or for CYP2D6 a tandem of star
alleles joined by `+` (`*36+*10`). VKORC1: the rs9923231 (-1639G>A) genotype in several common
spellings. Whether an allele exists is checked by `_lookup.py`, against the tables.

Refused, naming the string: whitespace inside an allele (`'*1 0/*1'` is not `*10/*1`), more
than `MAX_COPIES` gene copies on one chromosome, and copies or tandems of CYP2D6*5 (the
deletion of the whole gene).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeAlias

_STAR = re.compile(
    r"(?:(?P<gene>[A-Za-z][A-Za-z0-9]*))?\*(?P<number>\d+)"
    r"(?:[xX×](?P<copies>\d+|(?:≥|>=)\d+|[nN]))?",
    re.ASCII,
)


#: The most gene copies accepted on one chromosome. The largest amplification reported is
#: twelve copies of CYP2D6*2 in one family (Johansson I et al. Inherited amplification of an
#: active gene in the cytochrome P450 CYP2D locus as a cause of ultrarapid metabolism of
#: debrisoquine. Proc Natl Acad Sci USA 1993;90:11825-11829); a copy number above this is a
#: typing or transcription error, not a patient.
MAX_COPIES = 12

#: CYP2D6*5: the whole gene deleted (Gaedigk A et al. PharmVar GeneFocus: CYP2D6. Clin
#: Pharmacol Ther 2018;103:399-401): no copy of it can be duplicated or stand in a tandem.
_DELETION = {"CYP2D6": 5}

_GENE_PREFIX = re.compile(r"([A-Za-z][A-Za-z0-9]*)\s+\*")
_COPY_SPACES = re.compile(r"\s*([xX×])\s*((?:≥|>=)?)\s*(?=[\dnN])")


@dataclass(frozen=True, slots=True)
class StarAllele:
    """One star allele on one chromosome, with its number of gene copies.

    `copies` is exact unless `at_least` is set (`*2x≥3`: 3 or more copies; `*2xN`: a
    duplication of unknown copy number, 2 or more copies).
    """

    number: int
    copies: int = 1
    at_least: bool = False

    @property
    def base(self) -> str:
        """The single-copy allele name, e.g. `*2` for `*2x3`."""
        return f"*{self.number}"

    @property
    def name(self) -> str:
        """CPIC's spelling: `*2`, `*2x2`, `*2x≥3`, or `*2xN` for an unknown number of copies."""
        if self.copies == 1:
            return self.base
        if self.at_least:
            return f"{self.base}xN" if self.copies == 2 else f"{self.base}x≥{self.copies}"
        return f"{self.base}x{self.copies}"

    @property
    def sort_key(self) -> tuple[int, int, bool]:
        return (self.number, self.copies, self.at_least)


# A haplotype: one star allele, or for CYP2D6 a tandem arrangement such as *36+*10.
Haplotype: TypeAlias = tuple[StarAllele, ...]


def haplotype_name(haplotype: Haplotype) -> str:
    return "+".join(allele.name for allele in haplotype)


def _malformed(gene: str, diplotype: str, why: str) -> ValueError:
    return ValueError(
        f"Malformed {gene} diplotype {diplotype!r}: {why}. Expected two star alleles separated "
        "by '/', such as '*1/*2', '*2/*1', '*1/*2x2', '*1/*2x≥3' or '*4/*2xN' (copy numbers "
        "and tandems such as '*36+*10' for CYP2D6 only)."
    )


def parse_star_diplotype(gene: str, diplotype: str) -> tuple[Haplotype, Haplotype]:
    """`"*1/*2x2"` -> the two haplotypes, in the order given.

    Whitespace is allowed around `/`, `+` and a copy number's `x` (`*2 x ≥3`), and between a
    gene symbol and its `*`, never inside an allele (`'*1 0/*1'` is refused, not read as
    `*10/*1`); a leading gene symbol (`CYP2D6*1/*4`, `CYP2D6 *1/CYP2D6 *4`) is accepted when
    it names `gene`. Copy numbers: `x2`, `x3`, ... (exact), `x≥3` or `x>=3` (at least), `xN`
    (unknown, at least 2). `X` and `×` are read as `x`.
    """
    compact = diplotype.strip()
    if not compact:
        raise _malformed(gene, diplotype, "it is empty")
    sides = [side.strip() for side in compact.split("/")]
    if len(sides) != 2:
        raise _malformed(gene, diplotype, f"found {len(sides) - 1} '/' where one is needed")
    haplotypes: list[Haplotype] = []
    for side in sides:
        if not side:
            raise _malformed(gene, diplotype, "one side of '/' is empty")
        components: list[StarAllele] = []
        for part in (p.strip() for p in side.split("+")):
            tidy = _COPY_SPACES.sub(r"\1\2", _GENE_PREFIX.sub(r"\1*", part, count=1))
            match = _STAR.fullmatch(tidy)
            if match is None:
                why = f"cannot read {part!r} as a star allele"
                if any(c.isspace() for c in part):
                    why += " (no spaces inside an allele: '*10', not '*1 0')"
                if re.fullmatch(r"(?:[A-Za-z][A-Za-z0-9]*)?\*\d+\.\d+", part):
                    why += " (a PharmVar sub-allele; CPIC's tables use core alleles such as '*4')"
                raise _malformed(gene, diplotype, why)
            named = match["gene"]
            if named is not None and named.upper() != gene:
                raise ValueError(
                    f"The {gene} diplotype {diplotype!r} names another gene, {named!r}, in "
                    f"allele {part!r}."
                )
            components.append(_star_allele(gene, diplotype, part, match))
        deleted = _DELETION.get(gene)
        if len(components) > 1 and any(c.number == deleted for c in components):
            raise ValueError(
                f"Invalid {gene} haplotype {side!r} in {diplotype!r}: *{deleted} is the deletion "
                f"of the whole {gene} gene and cannot stand in a tandem with other copies."
            )
        haplotypes.append(tuple(components))
    return haplotypes[0], haplotypes[1]


def _star_allele(gene: str, diplotype: str, part: str, match: re.Match[str]) -> StarAllele:
    number = int(match["number"])
    copies_text = match["copies"]
    if copies_text is None:
        return StarAllele(number)
    if _DELETION.get(gene) == number:
        raise ValueError(
            f"Invalid {gene} allele {part!r} in {diplotype!r}: *{number} is the deletion of the "
            f"whole {gene} gene, which cannot be duplicated; write '*{number}'."
        )
    if copies_text in ("n", "N"):
        return StarAllele(number, copies=2, at_least=True)
    at_least = not copies_text[0].isdigit()
    copies = int(copies_text.lstrip("≥>="))
    if copies < 2:
        raise ValueError(
            f"Invalid copy number in {gene} allele {part!r} of {diplotype!r}: a duplication "
            f"has at least 2 gene copies, got {copies_text!r}; write '*{number}' for one copy."
        )
    if copies > MAX_COPIES:
        raise ValueError(
            f"Invalid copy number in {gene} allele {part!r} of {diplotype!r}: {copies} gene "
            f"copies; at most {MAX_COPIES} are accepted (the largest amplification reported, "
            "Johansson et al. 1993). Check the typing result."
        )
    return StarAllele(number, copies=copies, at_least=at_least)


# --- VKORC1 rs9923231 (-1639G>A) ---------------------------------------------------------

VKORC1_REFERENCE = "rs9923231 reference (C)"
VKORC1_VARIANT = "rs9923231 variant (T)"

# -1639G>A is named on VKORC1's coding strand; rs9923231 C>T on the genomic (+) strand, which
# is how CPIC names the alleles. The same base pair: G pairs with C (reference), A with T.
_VKORC1_VARIANT_COUNT = {"G": 0, "A": 1, "C": 0, "T": 1}
_VKORC1_STRANDS = ({"G", "A"}, {"C", "T"})

_VKORC1 = re.compile(
    r"(?:VKORC1[\s:]*)?"
    r"(?:(?:rs9923231|(?:c\.)?[-−]?1639)"
    r"(?:\s*(?P<ref>[GC])\s*>\s*(?P<alt>[AT]))?[\s:]*)?"
    r"(?:(?P<a1>[ACGT])\s*[/|]?\s*(?P<a2>[ACGT])"
    r"|(?P<zygosity>het(?:erozygous|erozygote)?|hom(?:ozygous|ozygote)?(?:\s+variant)?))?",
    re.IGNORECASE,
)

_VKORC1_HELP = (
    "expected the rs9923231 (VKORC1 -1639G>A) genotype, such as 'G/A', 'A/G', 'GA', 'AA', "
    "'rs9923231 C/T', '-1639 GG', '-1639G>A heterozygous', '-1639G>A homozygous' or CPIC's "
    f"'{VKORC1_REFERENCE}/{VKORC1_VARIANT}'"
)


def parse_vkorc1(diplotype: str) -> tuple[str, str]:
    """The rs9923231 genotype as two CPIC allele names, reference first.

    Accepted: CPIC's own names (`rs9923231 reference (C)/rs9923231 variant (T)`, either
    order); two alleles on the coding strand (`G`, `A`; as in -1639G>A) or on the genomic
    strand (`C`, `T`; as in rs9923231 C>T), with or without `/` or `|` and with an optional
    `VKORC1`, `rs9923231`, `-1639` or `c.-1639` prefix (`G/A`, `AG`, `rs9923231 C/T`,
    `-1639 GA`); or the variant and its zygosity (`-1639G>A heterozygous`, `rs9923231 C>T
    homozygous`). Case and whitespace do not matter. One strand per genotype.
    """
    text = " ".join(diplotype.split())
    lowered = text.lower()
    if "reference" in lowered or "variant (" in lowered:
        names = {VKORC1_REFERENCE.lower(): VKORC1_REFERENCE, VKORC1_VARIANT.lower(): VKORC1_VARIANT}
        sides = [" ".join(side.split()).lower() for side in text.split("/")]
        if len(sides) != 2 or any(side not in names for side in sides):
            raise ValueError(f"Malformed VKORC1 genotype {diplotype!r}: {_VKORC1_HELP}.")
        return _vkorc1_pair(sum(names[side] == VKORC1_VARIANT for side in sides))
    match = _VKORC1.fullmatch(text)
    if match is None or (match["a1"] is None and match["zygosity"] is None):
        raise ValueError(f"Malformed VKORC1 genotype {diplotype!r}: {_VKORC1_HELP}.")
    ref, alt = match["ref"], match["alt"]
    if ref is not None and alt is not None:
        ref, alt = ref.upper(), alt.upper()
        if (ref, alt) not in (("G", "A"), ("C", "T")):
            raise ValueError(
                f"Malformed VKORC1 genotype {diplotype!r}: rs9923231 is G>A on the coding strand "
                f"(-1639G>A) or C>T on the genomic strand, got {ref}>{alt}."
            )
    if match["zygosity"] is not None:
        if ref is None:
            raise ValueError(
                f"Malformed VKORC1 genotype {diplotype!r}: a zygosity needs the variant it "
                "refers to, such as '-1639G>A heterozygous'; or give both alleles, 'G/A'."
            )
        return _vkorc1_pair(1 if match["zygosity"].lower().startswith("het") else 2)
    a1, a2 = match["a1"].upper(), match["a2"].upper()
    alleles = {a1, a2}
    if not any(alleles <= strand for strand in _VKORC1_STRANDS):
        raise ValueError(
            f"Malformed VKORC1 genotype {diplotype!r}: alleles {sorted(alleles)} mix strands; use "
            "G and A (coding strand, -1639G>A) or C and T (genomic strand, rs9923231 C>T)."
        )
    if ref is not None and not alleles <= {ref, alt}:
        raise ValueError(
            f"Malformed VKORC1 genotype {diplotype!r}: alleles {sorted(alleles)} do not match "
            f"the variant {ref}>{alt}."
        )
    return _vkorc1_pair(_VKORC1_VARIANT_COUNT[a1] + _VKORC1_VARIANT_COUNT[a2])


def _vkorc1_pair(variant_alleles: int) -> tuple[str, str]:
    return (
        VKORC1_VARIANT if variant_alleles == 2 else VKORC1_REFERENCE,
        VKORC1_REFERENCE if variant_alleles == 0 else VKORC1_VARIANT,
    )
