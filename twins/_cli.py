"""The `twins` command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="pkpd-twins: PK/PD digital twins and virtual cohorts.", no_args_is_help=True)


@app.callback()
def main() -> None:
    """pkpd-twins command line."""


@app.command()
def demo(
    patients: int = typer.Option(10_000, min=1, help="Number of virtual patients."),
    out: Path = typer.Option(Path("out/demo"), help="Folder for the plot."),
    seed: int = typer.Option(0, help="Seed of the virtual cohort."),
) -> None:
    """Simulate a virtual cohort on a multiple-dose regimen; print a summary, save a plot."""
    from ._demo import plot_band, run_demo

    console = Console()
    with console.status(f"Simulating {patients:,} patients..."):
        result = run_demo(patients, seed=seed)
    table = Table(title="Exposure over 14 days of 100 mg every 12 h (one-compartment, oral)")
    table.add_column("metric")
    for col in ("5%", "median", "95%"):
        table.add_column(col, justify="right")
    for name, values in (
        ("AUC(0-336 h) (mg*h/L)", result.auc),
        ("Cmax (mg/L)", result.cmax),
        ("C at 336 h (mg/L)", result.ctrough),
    ):
        q = np.percentile(values, [5, 50, 95])
        table.add_row(name, *(f"{v:.3g}" for v in q))
    console.print(table)
    rate = patients / result.seconds
    console.print(
        f"{patients:,} patients x {result.times.size} times in {result.seconds:.3f} s "
        f"({rate:,.0f} patients/s; compilation {result.compile_seconds:.2f} s apart)."
    )
    path = plot_band(result, out / "concentration_band.png")
    console.print(f"Plot: {path}")


if __name__ == "__main__":
    app()
