"""An import written out for others: pseudonymised records, patients and a report.

What is written carries no raw identifier, name or birth date: patient ids and resource
references are pseudonyms (`Pseudonymizer`, one purpose), ages are whole years, and record
times are hours from each patient's origin (the origin datetimes, which are dates of care,
are not written).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from ..governance import Pseudonymizer
from ._read import FhirImport
from ._write import reference_pseudonym


class OutputFolderError(ValueError):
    """The output folder exists and is not empty (or is not a folder)."""


def claim_empty_folder(out: str | os.PathLike) -> Path:
    """`out` as a new or empty folder (created), or `OutputFolderError`: an import writes only
    into a new or empty folder, so that it never mixes with or overwrites other files."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise OutputFolderError(f"{path} exists and is not a folder; choose a new folder.")
    if path.is_dir() and any(path.iterdir()):
        sample = sorted(p.name for p in path.iterdir())[:5]
        raise OutputFolderError(
            f"{path} is not empty (it has {sample}); an import writes only into a new or empty "
            "folder. Choose another folder."
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _ref(source: str, psn: Pseudonymizer) -> str:
    rtype, _, rid = source.partition("/")
    return f"{rtype}/{reference_pseudonym(rtype, rid, psn)}"


def write_import(
    result: FhirImport, out: str | os.PathLike, *, pseudonymizer: Pseudonymizer
) -> dict[str, Path]:
    """Write `result` into the new or empty folder `out`.

    Files:

    - `records.csv`: `FhirImport.records` with `ID` the patient's pseudonym (of the
      patient's id) and `SOURCE` `Type/<pseudonym of "Type/id">`.
    - `patients.csv` and `patients.json`: one row per patient: `id` (pseudonym), `age`
      (completed years at the reference time), `sex`, `weight` (kg), `height` (cm), the
      labs (`twins.LABS` units) and genotypes. No name, birth date or identifier.
    - `report.json`: the `ImportReport` (resource ids as pseudonyms, as in `SOURCE`), the
      reference time, substance, the pseudonymizer's purpose and key id, and the files.

    **Arguments:**

    - `result`: from `read_fhir`.
    - `out`: the folder (created; refused if it exists and is not empty).
    - `pseudonymizer`: makes every pseudonym written.

    **Returns:** name -> path of each file written.
    """
    if not isinstance(pseudonymizer, Pseudonymizer):
        raise TypeError("write_import: expected a Pseudonymizer (pseudonymizer=...).")
    folder = claim_empty_folder(out)
    psn = pseudonymizer
    raw_ids: dict[str, str] = {}

    def patient_psn(pid: str) -> str:
        raw_ids[pid] = psn.pseudonym(pid)
        return raw_ids[pid]

    rows: list[dict[str, Any]] = []
    for pid, p in result.patients.items():
        row: dict[str, Any] = {
            "id": patient_psn(pid),
            "age": int(p.age),
            "sex": p.sex,
            "weight": p.weight,
            "height": p.height,
        }
        row.update({f"lab_{k}": v for k, v in sorted(p.labs.items())})
        row.update({f"genotype_{k}": v for k, v in sorted(p.genotypes.items())})
        rows.append(row)
    records = result.records.copy()
    records["ID"] = [patient_psn(i) for i in records["ID"]]
    records["SOURCE"] = [_ref(s, psn) for s in records["SOURCE"]]
    paths = {name: folder / name for name in
             ("records.csv", "patients.csv", "patients.json", "report.json")}  # fmt: skip
    _write(paths["records.csv"], records.to_csv(index=False))
    _write(paths["patients.csv"], pd.DataFrame(rows).to_csv(index=False))
    _write(paths["patients.json"], json.dumps(rows, indent=2, sort_keys=True) + "\n")
    report = result.report.to_dict()
    for issue in report["issues"]:
        rid = issue["resource_id"]
        pseudo = reference_pseudonym(issue["resource_type"], rid, psn)
        detail = issue["detail"]
        for raw, p in (*raw_ids.items(), (rid, pseudo)):
            detail = detail.replace(raw, p)
        issue["resource_id"], issue["detail"] = pseudo, detail
    report.update(
        {
            "reference_time": result.reference_time.isoformat(),
            "substance": result.substance,
            "patients": len(rows),
            "records": len(records),
            "pseudonyms": {"purpose": psn.purpose, "key_id": psn.key_id},
            "files": sorted(paths),
        }
    )
    _write(paths["report.json"], json.dumps(report, indent=2, sort_keys=True) + "\n")
    return paths
