"""The population part of `twins federated demo`: five simulated hospitals (non-IID), one
with consent decisions and its own audit log, a two-compartment model with covariates
fitted across them on Flower's deployment engine, and the same fit on the pooled records
for comparison."""

from __future__ import annotations

import datetime as dt
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

import calibration
from twins.governance import (
    Consent,
    Decision,
    Purpose,
    read_entries,
    verify,
    write_pseudonym_key,
    write_signing_key,
)

from ._population_consents import write_consents
from ._population_models import COVARIATES, TWO_COMPARTMENT, load_model, simulate_hospitals
from ._population_run import fit_population_federated


def prepare_hospitals(folder: Path, *, n_hospitals: int = 5, subjects: int = 8, key: int = 0):
    """Write the hospitals' records (CSV) into `folder`; the first hospital also gets
    consent decisions (two of its patients refuse federated use: one denies, one never
    answered) and its own audit log and keys. Returns `(node configs, records kept)`, the
    second the pooled records of the patients who may enter."""
    folder.mkdir(parents=True, exist_ok=True)
    records = simulate_hospitals(n_hospitals, subjects, key=key)
    nodes: dict[str, dict[str, Any]] = {}
    kept = []
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    for i, (name, rec) in enumerate(records.items()):
        path = folder / f"{name}.csv"
        rec.to_csv(path, index=False)
        nodes[name] = {"data-path": str(path)}
        if i == 0:
            ids = [str(x) for x in dict.fromkeys(rec["ID"].tolist())]
            consents = [
                Consent(p, Purpose.FEDERATED_TRAINING, Decision.PERMIT, start=start,
                        source=f"Consent/{name}-{k}")
                for k, p in enumerate(ids[:-1])
            ]  # fmt: skip
            consents.append(
                Consent(ids[0], Purpose.FEDERATED_TRAINING, Decision.DENY, start=start,
                        source=f"Consent/{name}-withdrawn")
            )  # fmt: skip
            write_consents(folder / f"{name}-consents.csv", consents)
            write_signing_key(folder / f"{name}-audit.key")
            write_pseudonym_key(folder / f"{name}-pseudonym.key")
            nodes[name] |= {
                "consent-path": str(folder / f"{name}-consents.csv"),
                "audit-log": str(folder / f"{name}-audit.log"),
                "audit-key": str(folder / f"{name}-audit.key"),
                "pseudonym-key": str(folder / f"{name}-pseudonym.key"),
            }
            rec = rec[rec["ID"].astype(str).isin(ids[1:-1])]
        kept.append(rec)
    return nodes, pd.concat(kept, ignore_index=True)


def _num(x: float) -> str:
    return f"{x:.4g}" if abs(x) >= 1e-3 else f"{x:.3e}"


def demo_part(console: Console, workdir: Path, *, small: bool = False, **options: Any) -> None:
    """Run and print the federated population fit of the demo (`options`: `subjects`,
    `max_steps`, `estimator`)."""
    subjects = int(options.get("subjects") or (6 if small else 8))
    max_steps = int(options.get("max_steps") or 500)
    estimator = str(options.get("estimator") or "focei")
    folder = workdir / "population"
    nodes, pooled_records = prepare_hospitals(folder, subjects=subjects)
    write_signing_key(folder / "server-audit.key")
    console.print(
        f"[bold]Federated population fit[/bold]: two-compartment model with covariates, "
        f"{len(nodes)} hospitals x {subjects} simulated patients (non-IID), {estimator}, "
        "on Flower's deployment engine (a SuperLink and one SuperNode per hospital on "
        "127.0.0.1, plain HTTP on loopback)"
    )
    started = time.perf_counter()
    fed = fit_population_federated(
        TWO_COMPARTMENT,
        nodes,
        estimator=estimator,
        max_steps=max_steps,
        audit_log=folder / "server-audit.log",
        audit_key=folder / "server-audit.key",
        fit="demo two-compartment",
        workdir=folder / "flower",
    )
    fed_seconds = time.perf_counter() - started
    pm = load_model(TWO_COMPARTMENT)
    pooled_data = calibration.Dataset.from_records(
        pooled_records, covariates=COVARIATES[TWO_COMPARTMENT]
    )
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", calibration.ConvergenceWarning)
        pooled = calibration.fit_population(
            pm, pooled_data, estimator=fed.estimator, max_steps=max_steps
        )
    pooled_seconds = time.perf_counter() - started

    sites = Table(title="Hospitals (records stay there; counts only cross the network)")
    for col in ("hospital", "patients in the fit", "refused (consent)", "mean CrCL, mL/min"):
        sites.add_column(col, justify="left" if col == "hospital" else "right")
    refused = fed.diagnostics.get("refused", {})
    for name, cfg in nodes.items():
        crcl = pd.read_csv(cfg["data-path"]).groupby("ID")["CRCL"].first().mean()
        sites.add_row(name, str(fed.hospitals[name]), str(refused.get(name, 0)), f"{crcl:.0f}")
    console.print(sites)

    est = Table(title="Estimates: federated vs the same fit on the pooled records")
    for col in ("parameter", "federated", "pooled", "relative difference", "RSE %"):
        est.add_column(col, justify="left" if col == "parameter" else "right")
    a = fed.table.set_index(["kind", "parameter"])
    b = pooled.table.set_index(["kind", "parameter"])
    for idx in a.index:
        x, y = float(a.loc[idx, "estimate"]), float(b.loc[idx, "estimate"])
        rel = abs(x - y) / abs(y) if y else abs(x - y)
        est.add_row(
            f"{idx[0]} {idx[1]}", _num(x), _num(y), f"{rel:.1e}", f"{a.loc[idx, 'rse_pct']:.1f}"
        )
    rel_ofv = abs(fed.ofv - pooled.ofv) / abs(pooled.ofv)
    est.add_row(
        "-2LL", f"{fed.ofv:.4f}", f"{pooled.ofv:.4f}", f"{rel_ofv:.1e}", "", end_section=True
    )
    console.print(est)
    rounds = fed.diagnostics.get("round_seconds", [])
    entries = read_entries(folder / "server-audit.log")
    report = verify(folder / "server-audit.log", folder / "server-audit.key.pub")
    console.print(
        f"{fed.rounds} rounds ({fed.n_steps} BFGS steps), {np.mean(rounds):.1f} s per round, "
        f"{fed_seconds:.0f} s federated (processes started and stopped) vs {pooled_seconds:.0f} s "
        f"pooled; server audit log: {len(entries)} entries, "
        f"{'verified' if report.ok else 'NOT verified'}."
    )
