"""twins.pgx against CPIC's own tables.

Every row of every shipped CPIC diplotype table is looked up in both allele orders and must
match the table; CPIC's rules (as implemented) must reproduce every row without the table;
diplotypes that the tables do not list (CYP2D6 copy numbers, tandems) are checked against
hand calculations from CPIC's activity values.
"""

import csv
import dataclasses
import io
import json
from importlib import resources
from pathlib import Path

import pytest

import twins.pgx as pgx
from twins.pgx._lookup import by_rule
from twins.pgx._parse import parse_star_diplotype

DATA = resources.files("twins.pgx") / "data"
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "pgx"

TABLES = {
    "CYP2C19": "CPIC_CYP2C19_diplotype_phenotype_2025-11-05.csv",
    "CYP2C9": "CPIC_CYP2C9_diplotype_phenotype_2025-11-05.csv",
    "CYP2D6": "CPIC_CYP2D6_diplotype_phenotype_2024-08-27.csv",
    "VKORC1": "CPIC_VKORC1_diplotype_phenotype_2025-11-05.csv",
}
# Rows in each shipped table (CPIC 2024-08-27 for CYP2D6, PharmCAT's CPIC export 2025-11-05).
ROW_COUNTS = {"CYP2C19": 666, "CYP2C9": 2850, "CYP2D6": 3828, "VKORC1": 3}


def _rows(gene: str) -> list[dict[str, str]]:
    text = (DATA / TABLES[gene]).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def _expected_score(text: str) -> tuple[float | None, bool]:
    """CPIC's activity score text -> (value, is lower bound); blank and n/a -> None."""
    if text in ("", "n/a"):
        return None, False
    if text.startswith("≥"):
        return float(text[1:]), True
    return float(text), False


def _reversed(diplotype: str) -> str:
    first, second = diplotype.split("/")
    return f"{second}/{first}"


def _check(result: pgx.PhenotypeResult, gene: str, row: dict[str, str]) -> list[str]:
    score, lower = _expected_score(row["activityScore"])
    got = (
        result.gene,
        result.diplotype,
        result.activity_score,
        result.activity_score_is_lower_bound,
        result.phenotype,
    )
    want = (gene, row["diplotype"], score, lower, row["phenotype"])
    return [] if got == want else [f"{got} != {want}"]


# --- the tables, exhaustively ------------------------------------------------------------


@pytest.mark.parametrize("gene", sorted(TABLES))
def test_every_table_row_in_both_orders(gene):
    rows = _rows(gene)
    assert len(rows) == ROW_COUNTS[gene]
    failures = []
    for row in rows:
        assert row["gene"] == gene
        diplotype = row["diplotype"]
        failures += _check(pgx.phenotype(gene, diplotype), gene, row)
        failures += _check(pgx.phenotype(gene, _reversed(diplotype)), gene, row)
    assert not failures, f"{len(failures)} mismatches, e.g. {failures[:5]}"


@pytest.mark.parametrize("gene", ["CYP2C19", "CYP2C9", "CYP2D6"])
def test_cpic_rules_reproduce_every_table_row_without_the_table(gene):
    # The rules that answer for diplotypes the tables do not list are the same rules that
    # produced the tables: check them on every listed diplotype, in both orders.
    failures = []
    for row in _rows(gene):
        for diplotype in (row["diplotype"], _reversed(row["diplotype"])):
            result = by_rule(gene, parse_star_diplotype(gene, diplotype))
            failures += _check(result, gene, row)
    assert not failures, f"{len(failures)} mismatches, e.g. {failures[:5]}"


def test_cyp2d6_listed_duplications_are_copies_times_the_single_allele_value():
    # CPIC's rule for xN, checked on every duplicated allele CPIC itself lists: the value of
    # *AxN is N times the value of *A; *Ax≥3 is at least 3 times; n/a stays n/a.
    activity = json.loads(
        (DATA / "CPIC_CYP2D6_alleles_activity_2024-08-27.json").read_text(encoding="utf-8")
    )
    values = activity["activityValues"]
    duplicated = [name for name in values if "x" in name]
    assert len(duplicated) >= 20
    for name in duplicated:
        base, copies = name.split("x")
        single = values[base]
        if single == "n/a":
            assert values[name] == "n/a", name
        elif copies.startswith("≥"):
            expected = float(single) * int(copies[1:])
            assert values[name] == (f"≥{expected}" if expected > 0 else f"{expected}"), name
        else:
            assert float(values[name]) == float(single) * int(copies), name


# --- diplotypes the tables do not list: hand-checked against CPIC's values ----------------

# CPIC activity values (CYP2D6, 2024-08-27): *1 = *2 = 1, *4 = *5 = *36 = 0, *9 = *10 = *41 =
# 0.25, *17 = 0.5; *22 has uncertain function (n/a).
HAND_CHECKED = [
    # diplotype, normalised, activity score, lower bound, phenotype
    ("*1/*1x3", "*1/*1x3", 4.0, False, "Ultrarapid Metabolizer"),  # 1 + 3 x 1
    ("*4/*2x3", "*2x3/*4", 3.0, False, "Ultrarapid Metabolizer"),  # 3 x 1 + 0
    ("*10x3/*4", "*4/*10x3", 0.75, False, "Intermediate Metabolizer"),  # 0 + 3 x 0.25
    ("*17x3/*41", "*17x3/*41", 1.75, False, "Normal Metabolizer"),  # 3 x 0.5 + 0.25
    ("*9/*1x4", "*1x4/*9", 4.25, False, "Ultrarapid Metabolizer"),  # 4 x 1 + 0.25
    ("*10x4/*10x4", "*10x4/*10x4", 2.0, False, "Normal Metabolizer"),  # 4 x 0.25 twice
    ("*1/*2xN", "*1/*2xN", 3.0, True, "Ultrarapid Metabolizer"),  # >= 1 + 2 x 1
    ("*4/*17xN", "*4/*17xN", 1.0, True, "Indeterminate"),  # >= 1.0: IM, NM or UM
    ("*1/*10xN", "*1/*10xN", 1.5, True, "Indeterminate"),  # >= 1.5: NM or UM
    ("*1/*10x≥3", "*1/*10x≥3", 1.75, True, "Indeterminate"),  # >= 1.75: NM or UM
    ("*2/*2x≥4", "*2/*2x≥4", 5.0, True, "Ultrarapid Metabolizer"),  # >= 1 + 4
    ("*1/*4xN", "*1/*4xN", 1.0, False, "Intermediate Metabolizer"),  # no-function copies add 0
    ("*1/*36+*10", "*1/*36+*10", 1.25, False, "Normal Metabolizer"),  # tandem: 1 + 0 + 0.25
    ("*4/*36+*10", "*4/*36+*10", 0.25, False, "Intermediate Metabolizer"),
    ("*1/*22", "*1/*22", None, False, "Indeterminate"),  # uncertain function
    ("*22x2/*1", "*1/*22x2", None, False, "Indeterminate"),
]


@pytest.mark.parametrize(("given", "normalised", "score", "lower", "label"), HAND_CHECKED)
def test_cyp2d6_not_in_table_follows_cpic_rules(given, normalised, score, lower, label):
    table = {row["diplotype"] for row in _rows("CYP2D6")}
    assert normalised not in table and _reversed(normalised) not in table
    for diplotype in (given, _reversed(given)):
        result = pgx.phenotype("CYP2D6", diplotype)
        assert result == pgx.PhenotypeResult("CYP2D6", normalised, score, label, lower)


def test_cyp2d6_phenotype_thresholds_at_their_edges():
    # CPIC 2019+ (Caudle 2020): 0 PM; 0.25-1 IM; 1.25-2.25 NM; > 2.25 UM.
    edges = {
        "*4/*5": (0.0, "Poor Metabolizer"),
        "*4/*10": (0.25, "Intermediate Metabolizer"),
        "*1/*4": (1.0, "Intermediate Metabolizer"),
        "*1/*10": (1.25, "Normal Metabolizer"),
        "*1x2/*10": (2.25, "Normal Metabolizer"),
        "*1x2/*17": (2.5, "Ultrarapid Metabolizer"),
    }
    for diplotype, (score, label) in edges.items():
        result = pgx.phenotype("CYP2D6", diplotype)
        assert (result.activity_score, result.phenotype) == (score, label), diplotype


def test_cyp2d6_at_least_three_copies_matches_cpic_spelling():
    listed = pgx.phenotype("CYP2D6", "*1/*1x≥3")
    assert (listed.activity_score, listed.activity_score_is_lower_bound) == (4.0, True)
    assert listed.phenotype == "Ultrarapid Metabolizer"
    for spelling in ("*1x>=3/*1", "*1 x ≥3 / *1", "*1X>=3/*1"):
        assert pgx.phenotype("CYP2D6", spelling) == listed
    # No-function copies: CPIC writes 0.0, not ≥0.0.
    zero = pgx.phenotype("CYP2D6", "*4x≥3/*1")
    assert (zero.activity_score, zero.activity_score_is_lower_bound) == (1.0, False)


# --- spellings and order -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("gene", "spellings", "diplotype", "label"),
    [
        ("CYP2D6", ["*1/*2x2", "*2x2/*1", " *1 / *2x2 ", "*1/*2X2", "*1/*2×2"], "*1/*2x2",
         "Ultrarapid Metabolizer"),
        ("cyp2d6", ["CYP2D6*4/*1", "CYP2D6 *1/CYP2D6 *4", "cyp2d6*1/*4"], "*1/*4",
         "Intermediate Metabolizer"),
        ("CYP2C9", ["*1/*3", "*3/*1", "CYP2C9*3/*1", "*3 /*1"], "*1/*3",
         "Intermediate Metabolizer"),
        ("CYP2C19", ["*17/*1", "*1/*17", " CYP2C19 *1 / *17"], "*1/*17", "Rapid Metabolizer"),
        ("CYP2C19", ["*2/*9", "*9/*2"], "*2/*9", "Likely Poor Metabolizer"),
    ],
)  # fmt: skip
def test_spellings_and_allele_order(gene, spellings, diplotype, label):
    results = {pgx.phenotype(gene, spelling) for spelling in spellings}
    assert len(results) == 1
    (result,) = results
    assert (result.gene, result.diplotype, result.phenotype) == (gene.upper(), diplotype, label)


VKORC1_GG = "rs9923231 reference (C)/rs9923231 reference (C)"
VKORC1_AG = "rs9923231 reference (C)/rs9923231 variant (T)"
VKORC1_AA = "rs9923231 variant (T)/rs9923231 variant (T)"


@pytest.mark.parametrize(
    ("spelling", "diplotype", "label"),
    [
        ("G/G", VKORC1_GG, "-1639 GG"),
        ("GG", VKORC1_GG, "-1639 GG"),
        ("C/C", VKORC1_GG, "-1639 GG"),
        ("-1639 GG", VKORC1_GG, "-1639 GG"),
        ("G/A", VKORC1_AG, "-1639 AG"),
        ("A/G", VKORC1_AG, "-1639 AG"),
        ("ga", VKORC1_AG, "-1639 AG"),
        ("rs9923231 GA", VKORC1_AG, "-1639 AG"),
        ("rs9923231 C/T", VKORC1_AG, "-1639 AG"),
        ("rs9923231 T|C", VKORC1_AG, "-1639 AG"),
        ("VKORC1 -1639 AG", VKORC1_AG, "-1639 AG"),
        ("c.-1639G>A G/A", VKORC1_AG, "-1639 AG"),
        ("-1639G>A heterozygous", VKORC1_AG, "-1639 AG"),
        ("rs9923231 C>T het", VKORC1_AG, "-1639 AG"),
        ("rs9923231 variant (T)/rs9923231 reference (C)", VKORC1_AG, "-1639 AG"),
        ("A/A", VKORC1_AA, "-1639 AA"),
        ("TT", VKORC1_AA, "-1639 AA"),
        ("-1639G>A homozygous", VKORC1_AA, "-1639 AA"),
    ],
)
def test_vkorc1_spellings(spelling, diplotype, label):
    result = pgx.phenotype("VKORC1", spelling)
    assert result == pgx.PhenotypeResult("VKORC1", diplotype, None, label)


# --- Indeterminate and errors ------------------------------------------------------------


def test_indeterminate_stays_indeterminate():
    for gene in ("CYP2C9", "CYP2C19"):
        indeterminate = [r["diplotype"] for r in _rows(gene) if r["phenotype"] == "Indeterminate"]
        assert len(indeterminate) > 300
        for diplotype in indeterminate:
            result = pgx.phenotype(gene, diplotype)
            assert (result.phenotype, result.activity_score) == ("Indeterminate", None)
    # CYP2D6 alleles of uncertain or unknown function are not in CPIC's diplotype table.
    for diplotype in ("*1/*22", "*43/*43", "*1x2/*28", "*4/*43x2"):
        result = pgx.phenotype("CYP2D6", diplotype)
        assert (result.phenotype, result.activity_score) == ("Indeterminate", None)


@pytest.mark.parametrize(
    ("gene", "diplotype", "names"),
    [
        ("CYP2D6", "*1/*999", ["CYP2D6", "*999"]),
        ("CYP2D6", "*999x2/*1", ["CYP2D6", "*999"]),
        ("CYP2D6", "*1/*36+*999", ["CYP2D6", "*999"]),
        ("CYP2C9", "*1/*76", ["CYP2C9", "*76"]),
        ("CYP2C19", "*1/*20", ["CYP2C19", "*20"]),
    ],
)
def test_unknown_allele_names_gene_and_allele(gene, diplotype, names):
    with pytest.raises(ValueError, match="Unknown") as error:
        pgx.phenotype(gene, diplotype)
    for name in names:
        assert name in str(error.value)


@pytest.mark.parametrize(
    ("gene", "diplotype"),
    [
        ("CYP2D6", ""),
        ("CYP2D6", "   "),
        ("CYP2D6", "*1"),
        ("CYP2D6", "*1/"),
        ("CYP2D6", "/*1"),
        ("CYP2D6", "*1/*2/*3"),
        ("CYP2D6", "*1//*2"),
        ("CYP2D6", "1/2"),
        ("CYP2D6", "*1*2"),
        ("CYP2D6", "*1/*2x"),
        ("CYP2D6", "*1/*2x1"),
        ("CYP2D6", "*1/*2x0"),
        ("CYP2D6", "*1/*2+"),
        ("CYP2D6", "*1/*4.001"),
        ("CYP2D6", "CYP2C19*1/*2"),
        ("CYP2C19", "*1/*2x2"),
        ("CYP2C9", "*1x2/*1"),
        ("CYP2C9", "*1/*2+*3"),
        ("VKORC1", ""),
        ("VKORC1", "G"),
        ("VKORC1", "G/T"),
        ("VKORC1", "GAG"),
        ("VKORC1", "*1/*2"),
        ("VKORC1", "-1639G>A"),
        ("VKORC1", "heterozygous"),
        ("VKORC1", "-1639G>T het"),
        ("VKORC1", "-1639G>A C/T"),
        ("VKORC1", "rs9923231 reference (C)"),
    ],
)
def test_malformed_diplotypes_raise_clear_errors(gene, diplotype):
    with pytest.raises(ValueError) as error:
        pgx.phenotype(gene, diplotype)
    message = str(error.value)
    assert gene.upper() in message and repr(diplotype) in message


def test_unsupported_gene_and_wrong_types():
    with pytest.raises(ValueError, match=r"Unsupported gene 'CYP3A5'.*CYP2D6"):
        pgx.phenotype("CYP3A5", "*1/*3")
    with pytest.raises(TypeError, match="CYP2D6 diplotype must be a string"):
        pgx.phenotype("CYP2D6", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Unsupported gene"):
        pgx.source("TPMT")


def test_result_is_frozen():
    result = pgx.phenotype("CYP2D6", "*1/*1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.phenotype = "Poor Metabolizer"  # type: ignore[misc]


# --- metadata and provenance -------------------------------------------------------------


def test_genes_and_sources():
    assert pgx.genes() == ("CYP2C19", "CYP2C9", "CYP2D6", "VKORC1")
    sources_md = (DATA / "SOURCES.md").read_text(encoding="utf-8")
    for gene in pgx.genes():
        meta = pgx.source(gene.lower())
        assert meta.gene == gene
        assert "CC0" in meta.licence
        assert meta.url.startswith("https://")
        assert meta.references and all("Clin" in ref for ref in meta.references)
        assert TABLES[gene] in meta.files
        for name in meta.files:
            assert (DATA / name).is_file(), name
            assert meta.date in name, (meta.date, name)
            assert name in sources_md
        assert meta.version.startswith(meta.date) and meta.version in sources_md
    cyp2d6 = json.loads(
        (DATA / "CPIC_CYP2D6_alleles_activity_2024-08-27.json").read_text(encoding="utf-8")
    )
    assert cyp2d6["version"] == pgx.source("CYP2D6").version


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared/reference/pgx not available")
def test_shipped_files_equal_the_reference_copies():
    for name in [*TABLES.values(), "CPIC_CYP2D6_alleles_activity_2024-08-27.json"]:
        assert (DATA / name).read_bytes() == (REFERENCE / name).read_bytes(), name
    shipped = list(
        csv.DictReader(
            io.StringIO((DATA / "CPIC_allele_functions_2025-11-05.csv").read_text(encoding="utf-8"))
        )
    )
    expected = []
    for gene in ("CYP2C19", "CYP2C9", "VKORC1"):
        export = json.loads(
            (REFERENCE / f"PharmCAT_cpic_phenotype_{gene}.json").read_text(encoding="utf-8")
        )
        assert export["version"] == pgx.source(gene).version
        expected += [
            {
                "gene": gene,
                "allele": allele["name"],
                "activityValue": allele["activityValue"] or "",
                "functionValue": allele["functionValue"],
            }
            for allele in export["namedAlleles"]
        ]
    assert shipped == expected


@pytest.mark.parametrize(
    "diplotype, message",
    [
        ("*1 0/*1", r"cannot read '\*1 0' as a star allele \(no spaces inside an allele"),
        ("*1/*1x99", r"'\*1x99' of '\*1/\*1x99': 99 gene copies; at most 12"),
        ("*1/*2x≥13", "13 gene copies; at most 12"),
        ("*5x2/*1", r"\*5 is the deletion of the whole CYP2D6 gene, which cannot be duplicated"),
        ("*5xN/*1", r"cannot be duplicated"),
        ("*1/*5+*10", r"haplotype '\*5\+\*10'.*cannot stand in a tandem"),
    ],
)
def test_impossible_cyp2d6_diplotypes_are_refused(diplotype, message):
    with pytest.raises(ValueError, match=message):
        pgx.phenotype("CYP2D6", diplotype)


def test_spaces_are_read_only_between_alleles():
    # '*1 0' was once read as *10; spaces around '/', '+', a copy number's 'x' and after a
    # gene symbol are still fine, and give the same result as the compact spelling.
    assert pgx.phenotype("CYP2D6", " *1 / *2 x 2 ") == pgx.phenotype("CYP2D6", "*1/*2x2")
    assert pgx.phenotype("CYP2D6", "CYP2D6 *1/CYP2D6 *4") == pgx.phenotype("CYP2D6", "*1/*4")
    assert pgx.phenotype("CYP2D6", "*1/*36 + *10") == pgx.phenotype("CYP2D6", "*1/*36+*10")
    # Twelve copies (the largest amplification reported) are accepted: activity 1 + 12 x 1.
    assert pgx.phenotype("CYP2D6", "*1/*2x12").activity_score == 13.0
    with pytest.raises(ValueError, match="no spaces inside an allele"):
        pgx.phenotype("CYP2C19", "*1/*1 7")
