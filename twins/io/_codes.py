"""The codes `twins.io` reads: LOINC observations, HGNC genes, drugs, routes, purposes.

Sources: LOINC 2.80 (Regenstrief Institute; the codes and long common names below),
HGNC (HUGO Gene Nomenclature Committee; gene ids), RxNorm (U.S. National Library of
Medicine; ingredient codes) and WHO ATC 2025, SNOMED CT (route codes), HL7 v3 ActReason
(consent purposes), the HL7 Genomics Reporting IG STU2 (genotype observations). Molar
mass of creatinine (C4H7N3O): 113.12 g/mol from the IUPAC 2021 standard atomic weights
(C 12.011, H 1.008, N 14.007, O 15.999), as PubChem CID 588 gives it.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping

LOINC_SYSTEM = "http://loinc.org"
HGNC_SYSTEM = "http://www.genenames.org"
RXNORM_SYSTEM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC_SYSTEM = "http://www.whocc.no/atc"
SNOMED_SYSTEM = "http://snomed.info/sct"
ACT_REASON_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
#: The project's own code system: consent purpose `federated-training`, forecast method.
TWINS_SYSTEM = "https://pkpd-twins.readthedocs.io/fhir/CodeSystem/twins"
TWINS_EXTENSION = "https://pkpd-twins.readthedocs.io/fhir/StructureDefinition/"

CREATININE_MOLAR_MASS = 113.12  # g/mol, C4H7N3O


@dataclasses.dataclass(frozen=True)
class LoincCode:
    """One LOINC code that `read_fhir` reads.

    **Fields:** `code`, `name` (LOINC long common name), `kind` (`"weight"`, `"height"`,
    `"lab"`, `"level"`, `"genotype"`), `field` (the `Patient` field, `twins.LABS` name or
    substance the value goes to), `unit` (the UCUM unit it is converted to), `sampling`
    (for levels: `"trough"`, `"peak"`, `"random"` or `""`), `molar_mass` (g/mol, for
    substance concentrations), `enzyme` (an enzyme activity: `[IU]` read as `U`).
    """

    code: str
    name: str
    kind: str
    field: str
    unit: str
    sampling: str = ""
    molar_mass: float | None = None
    enzyme: bool = False


def _table(*codes: LoincCode) -> Mapping[str, LoincCode]:
    return types.MappingProxyType({c.code: c for c in codes})


_SCR = CREATININE_MOLAR_MASS

#: Observation codes read, by LOINC code (see docs/fhir.md).
LOINC: Mapping[str, LoincCode] = _table(
    LoincCode("29463-7", "Body weight", "weight", "weight", "kg"),
    LoincCode("3141-9", "Body weight Measured", "weight", "weight", "kg"),
    LoincCode("8302-2", "Body height", "height", "height", "cm"),
    LoincCode("3137-7", "Body height Measured", "height", "height", "cm"),
    LoincCode(
        "2160-0",
        "Creatinine [Mass/volume] in Serum or Plasma",
        "lab",
        "serum_creatinine",
        "mg/dL",
        molar_mass=_SCR,
    ),
    LoincCode(
        "14682-9",
        "Creatinine [Moles/volume] in Serum or Plasma",
        "lab",
        "serum_creatinine",
        "mg/dL",
        molar_mass=_SCR,
    ),
    LoincCode(
        "33863-2", "Cystatin C [Mass/volume] in Serum or Plasma", "lab", "cystatin_c", "mg/L"
    ),
    LoincCode("1751-7", "Albumin [Mass/volume] in Serum or Plasma", "lab", "albumin", "g/dL"),
    LoincCode(
        "1742-6",
        "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
        "lab",
        "alt",
        "U/L",
        enzyme=True,
    ),
    LoincCode(
        "1920-8",
        "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
        "lab",
        "ast",
        "U/L",
        enzyme=True,
    ),
    LoincCode(
        "6768-6",
        "Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma",
        "lab",
        "alp",
        "U/L",
        enzyme=True,
    ),
    LoincCode(
        "1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma", "lab", "bilirubin", "mg/dL"
    ),
    LoincCode("3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", "lab", "bun", "mg/dL"),
    LoincCode("718-7", "Hemoglobin [Mass/volume] in Blood", "lab", "hemoglobin", "g/dL"),
    LoincCode(
        "777-3", "Platelets [#/volume] in Blood by Automated count", "lab", "platelets", "10*9/L"
    ),
    LoincCode("6301-6", "INR in Platelet poor plasma by Coagulation assay", "lab", "inr", "1"),
    LoincCode("34714-6", "INR in Blood by Coagulation assay", "lab", "inr", "1"),
    LoincCode(
        "4092-3",
        "Vancomycin [Mass/volume] in Serum or Plasma --trough",
        "level",
        "vancomycin",
        "mg/L",
        "trough",
    ),
    LoincCode(
        "4089-9",
        "Vancomycin [Mass/volume] in Serum or Plasma --peak",
        "level",
        "vancomycin",
        "mg/L",
        "peak",
    ),
    LoincCode(
        "20578-1",
        "Vancomycin [Mass/volume] in Serum or Plasma --random",
        "level",
        "vancomycin",
        "mg/L",
        "random",
    ),
    LoincCode(
        "4090-7", "Vancomycin [Mass/volume] in Serum or Plasma", "level", "vancomycin", "mg/L"
    ),
    LoincCode(
        "4049-3", "Theophylline [Mass/volume] in Serum or Plasma", "level", "theophylline", "mg/L"
    ),
    LoincCode("84413-4", "Genotype display name", "genotype", "genotype", ""),
)

#: Genomics Reporting IG: the component naming the gene of a genotype observation.
GENE_STUDIED = "48018-6"

#: Genes read from genotype observations: HGNC id -> symbol.
HGNC: Mapping[str, str] = types.MappingProxyType(
    {"HGNC:2623": "CYP2C9", "HGNC:2621": "CYP2C19", "HGNC:2625": "CYP2D6", "HGNC:23663": "VKORC1"}
)


@dataclasses.dataclass(frozen=True)
class Substance:
    """A drug whose doses and levels `read_fhir` puts in the records.

    **Fields:** `name`, `rxnorm` and `atc` (codes that identify its medications),
    `levels` (the LOINC codes of its observed levels: the records' `DV`), `unit` (of
    `DV`, UCUM), `dose_unit` (of `AMT`, UCUM).
    """

    name: str
    rxnorm: tuple[str, ...]
    atc: tuple[str, ...]
    levels: tuple[str, ...]
    unit: str
    dose_unit: str = "mg"


#: Substances whose records `read_fhir(..., substance=...)` builds.
SUBSTANCES: Mapping[str, Substance] = types.MappingProxyType(
    {
        "vancomycin": Substance(
            "vancomycin",
            ("11124",),
            ("J01XA01",),
            ("4092-3", "4089-9", "20578-1", "4090-7"),
            "mg/L",
        ),
        "warfarin": Substance("warfarin", ("11289",), ("B01AA03",), ("6301-6", "34714-6"), "1"),
        "theophylline": Substance("theophylline", ("10438",), ("R03DA04",), ("4049-3",), "mg/L"),
    }
)

#: SNOMED CT routes: code -> `"intravenous"` or `"oral"`.
ROUTES: Mapping[str, str] = types.MappingProxyType({"47625008": "intravenous", "26643006": "oral"})

#: Consent purposes: (system, code) -> `twins.governance.Purpose` value.
PURPOSES: Mapping[tuple[str, str], str] = types.MappingProxyType(
    {
        (ACT_REASON_SYSTEM, "TREAT"): "treatment",
        (ACT_REASON_SYSTEM, "HRESCH"): "research",
        (ACT_REASON_SYSTEM, "CLINTRCH"): "research",
        (TWINS_SYSTEM, "federated-training"): "federated-training",
    }
)
