"""The shipped CPIC tables: read from `twins/pgx/data/` on first use and cached.

Nothing here interprets a genotype; `_lookup.py` does. Activity values are kept as exact
fractions (CPIC's values are multiples of 0.25), so sums and thresholds are exact.
"""

from __future__ import annotations

import csv
import functools
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from importlib import resources

GENES: tuple[str, ...] = ("CYP2C19", "CYP2C9", "CYP2D6", "VKORC1")

_DIPLOTYPE_FILES: Mapping[str, str] = {
    "CYP2C19": "CPIC_CYP2C19_diplotype_phenotype_2025-11-05.csv",
    "CYP2C9": "CPIC_CYP2C9_diplotype_phenotype_2025-11-05.csv",
    "CYP2D6": "CPIC_CYP2D6_diplotype_phenotype_2024-08-27.csv",
    "VKORC1": "CPIC_VKORC1_diplotype_phenotype_2025-11-05.csv",
}
_CYP2D6_ALLELES_FILE = "CPIC_CYP2D6_alleles_activity_2024-08-27.json"
_ALLELE_FUNCTIONS_FILE = "CPIC_allele_functions_2025-11-05.csv"
_SOURCES_FILE = "sources.json"


def read_data_text(name: str) -> str:
    """The text of one shipped data file, `twins/pgx/data/<name>` (UTF-8)."""
    return (resources.files("twins.pgx") / "data" / name).read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class TableSource:
    """Where a gene's CPIC tables come from.

    **Fields:**

    - `gene`: the gene symbol, e.g. `"CYP2D6"`.
    - `version`: the version string of the CPIC data as exported (`"2024-08-27-21-12"`).
    - `date`: the date of that version (ISO 8601).
    - `source`: what the files are and how they were obtained.
    - `url`: where the export lives.
    - `licence`: the licence of the data.
    - `files`: the file names under `twins/pgx/data/` that hold the gene's tables.
    - `references`: the CPIC publications whose genotype -> phenotype rules apply.
    """

    gene: str
    version: str
    date: str
    source: str
    url: str
    licence: str
    files: tuple[str, ...]
    references: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Score:
    """An activity score: an exact value, or a lower bound (CPIC writes `≥3.0`)."""

    value: Fraction
    at_least: bool = False


@dataclass(frozen=True, slots=True)
class Row:
    """One row of a CPIC diplotype -> phenotype table."""

    diplotype: str
    score: Score | None
    phenotype: str


def parse_score(text: str | None) -> Score | None:
    """CPIC's spelling of an activity value or score -> `Score`; `None` for `n/a` or blank."""
    if text is None:
        return None
    text = text.strip()
    if text in ("", "n/a"):
        return None
    if text.startswith("≥"):
        return Score(Fraction(text[1:]), at_least=True)
    return Score(Fraction(text))


@functools.cache
def sources() -> Mapping[str, TableSource]:
    """Metadata of every gene's tables, from `data/sources.json`."""
    raw = json.loads(read_data_text(_SOURCES_FILE))
    return {
        gene: TableSource(
            gene=gene,
            version=entry["version"],
            date=entry["date"],
            source=entry["source"],
            url=entry["url"],
            licence=entry["licence"],
            files=tuple(entry["files"]),
            references=tuple(entry["references"]),
        )
        for gene, entry in raw.items()
    }


@functools.cache
def diplotype_table(gene: str) -> Mapping[tuple[str, str], Row]:
    """CPIC's diplotype -> (activity score, phenotype) table of `gene`.

    Keys are the two allele names sorted as strings, so that the key of `*2/*1` equals that
    of `*1/*2`.
    """
    rows: dict[tuple[str, str], Row] = {}
    reader = csv.DictReader(io.StringIO(read_data_text(_DIPLOTYPE_FILES[gene])))
    for line, record in enumerate(reader, start=2):
        if record["gene"] != gene:
            raise ValueError(
                f"{_DIPLOTYPE_FILES[gene]} line {line}: expected gene {gene}, "
                f"got {record['gene']!r}."
            )
        first, second = record["diplotype"].split("/")
        key = (min(first, second), max(first, second))
        if key in rows:
            raise ValueError(
                f"{_DIPLOTYPE_FILES[gene]} line {line}: diplotype {record['diplotype']!r} "
                "is listed twice."
            )
        score = parse_score(record["activityScore"])
        rows[key] = Row(record["diplotype"], score, record["phenotype"])
    return rows


@functools.cache
def allele_functions(gene: str) -> Mapping[str, tuple[Score | None, str]]:
    """CPIC allele name -> (activity value or `None`, function) for `gene`.

    CYP2D6 from CPIC's CYP2D6 allele activity file (which also names duplicated alleles such
    as `*1x2` and `*1x≥3`); the other genes from the allele-function extract of PharmCAT's
    CPIC export.
    """
    if gene == "CYP2D6":
        raw = json.loads(read_data_text(_CYP2D6_ALLELES_FILE))
        return {
            entry["name"]: (parse_score(entry["activityValue"]), entry["functionValue"])
            for entry in raw["namedAlleles"]
        }
    reader = csv.DictReader(io.StringIO(read_data_text(_ALLELE_FUNCTIONS_FILE)))
    return {
        record["allele"]: (parse_score(record["activityValue"]), record["functionValue"])
        for record in reader
        if record["gene"] == gene
    }
