"""Consent decisions of a hospital's patients as a CSV file (node config `consent-path`).

Columns `patient, purpose, decision` and optionally `start, end` (ISO 8601 with a time
zone; empty: open) and `source`; `purpose` is a `twins.governance.Purpose` value
(`federated-training`, `research`, `treatment`), `decision` `permit` or `deny`. Read into a
`twins.governance.ConsentRegistry`, whose rules decide (a deny in force wins; federated
training is opt-in).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from twins.governance import Consent, ConsentRegistry, Purpose

COLUMNS = ("patient", "purpose", "decision", "start", "end", "source")


def read_consents(path: str | os.PathLike) -> ConsentRegistry:
    """A `ConsentRegistry` from a consents CSV (see the module docstring); `ValueError`
    naming the line of a decision that cannot be read."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in COLUMNS[:3] if c not in df.columns]
    if missing:
        raise ValueError(f"consents {path}: missing column(s) {missing}; expected {list(COLUMNS)}.")

    def when(text: str) -> dt.datetime | None:
        return dt.datetime.fromisoformat(text) if text.strip() else None

    consents = []
    for i, row in enumerate(df.to_dict("records")):
        line = i + 2
        try:
            consents.append(
                Consent(
                    patient=str(row["patient"]),
                    purpose=Purpose(str(row["purpose"])),
                    decision=str(row["decision"]),  # type: ignore[arg-type]
                    start=when(str(row.get("start", ""))),
                    end=when(str(row.get("end", ""))),
                    source=str(row.get("source", "")) or f"{Path(path).name}:{line}",
                )
            )
        except (ValueError, TypeError) as error:
            raise ValueError(f"consents {path}, line {line}: {error}") from None
    return ConsentRegistry(consents)


def write_consents(path: str | os.PathLike, consents: Iterable[Consent]) -> Path:
    """Write consents as the CSV `read_consents` reads."""
    rows = [
        {
            "patient": c.patient,
            "purpose": c.purpose.value,
            "decision": c.decision.value,
            "start": "" if c.start is None else c.start.isoformat(),
            "end": "" if c.end is None else c.end.isoformat(),
            "source": c.source,
        }
        for c in consents
    ]
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(path, index=False)
    return Path(path)
