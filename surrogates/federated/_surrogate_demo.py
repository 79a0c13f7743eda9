"""The federated surrogates' part of `twins federated demo`: Table 3 on the drug-response
task for one federation of 5 hospitals (`surrogate_table`), centralised and federated,
without differential privacy and at epsilon 0.5 (record and hospital level), and XGBoost
(centralised, Flower's FedXgbBagging and FedXgbCyclic; no DP), printed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ._table3 import surrogate_table


def demo_part(console: Console, workdir: Path, *, small: bool = False, **options: Any) -> None:
    """Print the table (5 hospitals; 3 rounds and 600 patients with `small`, else 10 and
    2,000) and write it to `workdir/surrogates.csv`."""
    rounds, n_total = (3, 600) if small else (10, 2000)
    console.print(
        f"[bold]Federated surrogates[/bold]: 5 hospitals, {n_total} patients, {rounds} rounds "
        "(warfarin INR 2-3 response; epsilon 0.5 at delta 1e-5; XGBoost without DP: "
        "docs/federated-privacy.md)"
    )
    frame = surrogate_table(5, rounds=rounds, n_total=n_total, xgboost_rounds=rounds)
    workdir.mkdir(parents=True, exist_ok=True)
    frame.to_csv(workdir / "surrogates.csv", index=False)
    table = Table("setting", "model", "DP unit", "noise multiplier", "epsilon", "accuracy",
                  "F1", "ROC-AUC", "bytes sent")  # fmt: skip
    for r in frame.to_dict("records"):
        eps = r.get("epsilon_pld")
        sigma = r.get("noise_multiplier")
        table.add_row(
            str(r["setting"]),
            str(r.get("model", "")),
            str(r["unit"]),
            "-" if sigma is None or not math.isfinite(sigma) else f"{sigma:.2f}",
            "-" if eps is None or not math.isfinite(eps) else f"{eps:.2f}",
            f"{r['accuracy']:.3f}",
            f"{r['f1']:.3f}",
            f"{r['roc_auc']:.3f}",
            f"{int(r.get('bytes_up', 0) + r.get('bytes_down', 0)):,}",
        )
    console.print(table)
