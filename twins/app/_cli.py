"""The `twins` command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ._cli_audit import register as register_governance
from ._cli_fhir import register as register_fhir
from ._cli_nonmem import register as register_nonmem
from ._cli_plugins import register_plugins
from ._cli_serve import register as register_serve

app = typer.Typer(help="pkpd-twins: PK/PD digital twins and virtual cohorts.", no_args_is_help=True)
register_governance(app)
register_fhir(app)
register_nonmem(app)
register_serve(app)
# `twins federated ...` and other commands of packages above twins (group pkpd_twins.cli)
register_plugins(app)


@app.callback()
def main() -> None:
    """pkpd-twins command line."""


def _x64() -> None:
    import jax

    jax.config.update("jax_enable_x64", True)


def _print_summary(console: Console, out: Path) -> None:
    import json

    summary = json.loads((out / "summary.json").read_text())
    spec = json.loads((out / "spec.json").read_text())
    arms = [a["name"] for a in spec["arms"]]
    table = Table(title=f"{spec['name']}: {summary['n_per_arm']:,} virtual patients per arm")
    for col in ("endpoint", "arm", "estimate (95% CI)", "published"):
        table.add_column(col, justify="left" if col in ("endpoint", "arm") else "right")
    for e in spec["endpoints"]:
        for i, arm in enumerate(arms):
            r = summary[arm][e["name"]]
            table.add_row(
                escape(f"{e['label']} [{r.get('unit') or e['unit']}]") if i == 0 else "",
                arm,
                f"{_num(r['estimate'])} ({_num(r['ci_low'])}-{_num(r['ci_high'])})",
                _num(r["published"]) if r["published"] is not None else "",
                end_section=i == len(arms) - 1,
            )
    console.print(table)
    for arm, rows in summary["differences"].items():
        for name, r in rows.items():
            console.print(
                f"{arm} - {r['reference']}, {name}: {_num(r['difference'])} "
                f"(95% CI {_num(r['ci_low'])} to {_num(r['ci_high'])}, {r['method']})"
            )
    console.print(f"Results: {out}  Report: {out / 'report.html'}")


def _too_many_failures(error: Exception, hint: str) -> typer.Exit:
    """Print why a run stopped on failed patients (one paragraph, on stderr, no traceback)
    with `hint` (how to allow more); the caller raises the returned exit (code 2)."""
    Console(stderr=True, soft_wrap=True).print(
        f"[red]Too many patients could not be simulated:[/red] {escape(str(error))} {escape(hint)}",
        highlight=False,
    )
    return typer.Exit(code=2)


def _fail_usage(message: str) -> typer.Exit:
    Console(stderr=True, soft_wrap=True).print(f"[red]Error:[/red] {escape(message)}")
    return typer.Exit(code=2)


def _folder_name(name: str) -> str:
    """A trial's name as one safe folder name (no separators, no `..`)."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "trial"


def _num(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return f"{x:.1f}" if abs(x) >= 1 else f"{x:.3g}"


@app.command()
def demo(
    n: int = typer.Option(10_000, "--n", min=1, help="Virtual patients per arm."),
    out: Path = typer.Option(Path("out/eupact"), help="Results folder."),
    seed: int = typer.Option(0, help="Seed."),
    chunk_size: int = typer.Option(10_000, min=1, help="Patients per simulated chunk."),
) -> None:
    """The built-in default: the EU-PACT-like warfarin trial (genotype-guided vs standard).

    Writes OUT/report.html and OUT/summary.json (endpoints by arm, published figures beside
    them) and prints the endpoint table. Rerunning into the same folder resumes.
    """
    _x64()
    from ..trials._eupact import eupact_trial
    from ..trials._run import ResultsFolderError, TooManyFailuresError, run_trial
    from ._report import write_report

    console = Console()
    try:
        run_trial(eupact_trial(), out, n=n, seed=seed, chunk_size=chunk_size)
    except ResultsFolderError as error:
        Console(stderr=True, soft_wrap=True).print(
            f"[red]Results folder refused:[/red] {escape(str(error))}", highlight=False
        )
        raise typer.Exit(code=2) from None
    except TooManyFailuresError as error:
        raise _too_many_failures(
            error,
            'The demo allows 5%; to allow more, run a spec of `preset = "eupact"` with '
            "a larger `[run] max_failed_fraction` through `twins trial`.",
        ) from None
    write_report(out)
    _print_summary(console, out)


@app.command()
def trial(
    spec: Path = typer.Argument(..., exists=True, dir_okay=False, help="Trial spec (TOML)."),
    out: Path | None = typer.Option(None, help="Results folder (default: the spec's \\[run] out)."),
    n: int | None = typer.Option(None, "--n", min=1, help="Override \\[run] n."),
    seed: int | None = typer.Option(None, help="Override \\[run] seed."),
    max_failed_fraction: float | None = typer.Option(
        None,
        min=0.0,
        max=1.0,
        help="Override \\[run] max_failed_fraction: the largest fraction of an arm's patients "
        "that may fail to simulate before the run stops (0: none; 1: never stop).",
    ),
) -> None:
    """Run the virtual trial described by a TOML spec; resume it if interrupted.

    Patients that cannot be simulated are recorded (status "failed" in the patients table,
    listed in the report); more than \\[run] max_failed_fraction of an arm's patients (default
    0.05) stops the run with exit code 2, keeping the chunks done.
    """
    _x64()
    import tomllib

    try:
        domain = tomllib.loads(spec.read_text(encoding="utf-8")).get("domain")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        domain = None  # load_trial names the error
    if domain == "t1d":  # a type 1 diabetes trial (twins.t1d): its own runner
        if n is not None or seed is not None or max_failed_fraction is not None:
            raise _fail_usage("--n, --seed and --max-failed-fraction do not apply to T1D specs")
        from ._spec_t1d import run_t1d_spec

        raise typer.Exit(code=run_t1d_spec(spec, out))
    from ..trials._run import ResultsFolderError, TooManyFailuresError, run_trial
    from ._report import write_report
    from ._spec import SpecError, load_trial

    try:
        the_trial, options = load_trial(spec)
    except SpecError as error:
        Console(stderr=True, soft_wrap=True).print(
            f"[red]Error in the trial spec:[/red] {escape(str(error))}"
        )
        raise typer.Exit(code=2) from None
    folder = out or options.out or Path("out") / _folder_name(the_trial.name)
    try:
        run_trial(
            the_trial,
            folder,
            n=n or options.n,
            seed=options.seed if seed is None else seed,
            chunk_size=options.chunk_size,
            trajectories=options.trajectories,
            max_failed_fraction=(
                options.max_failed_fraction if max_failed_fraction is None else max_failed_fraction
            ),
        )
    except ResultsFolderError as error:
        Console(stderr=True, soft_wrap=True).print(
            f"[red]Results folder refused:[/red] {escape(str(error))}", highlight=False
        )
        raise typer.Exit(code=2) from None
    except TooManyFailuresError as error:
        raise _too_many_failures(
            error,
            "On the command line: `--max-failed-fraction` (or `[run] max_failed_fraction` in "
            f"{spec}).",
        ) from None
    write_report(folder)
    _print_summary(Console(), folder)


@app.command()
def report(
    results: Path = typer.Argument(..., exists=True, file_okay=False, help="Results folder."),
    allow_incomplete: bool = typer.Option(
        False, help="Build the report of an unfinished run (marked incomplete in it)."
    ),
) -> None:
    """Rebuild OUT/report.html and OUT/summary.json from a results folder's Parquet parts.

    Refuses (exit code 2) a damaged folder, listing every part that is missing, damaged or
    not recorded, and an unfinished run unless --allow-incomplete is given.
    """
    from ..trials._run import write_summary
    from ..trials._summary import read_results
    from ._report import write_report

    errors = Console(stderr=True, soft_wrap=True)
    try:
        manifest = read_results(results).manifest
    except (FileNotFoundError, ValueError) as error:
        errors.print(
            f"[red]Cannot build the report:[/red] {escape(str(error))}",
            markup=True,
            highlight=False,
        )
        raise typer.Exit(code=2) from None
    if not manifest.get("complete") and not allow_incomplete:
        done = set(manifest.get("chunks_done", []))
        missing = [c for c in range(int(manifest.get("n_chunks", 0))) if c not in done]
        errors.print(
            f"Cannot build the report: the run in {results} is incomplete: chunk(s) {missing} "
            f"of {manifest.get('n_chunks')} are not done. Resume the run (the same command "
            "with the same arguments) or pass --allow-incomplete.",
            highlight=False,
        )
        raise typer.Exit(code=2)
    write_summary(results)
    path = write_report(results)
    Console().print(f"Report: {path}")


@app.command()
def cohort(
    patients: int = typer.Option(10_000, min=1, help="Number of virtual patients."),
    out: Path = typer.Option(Path("out/cohort"), help="Folder for the plot."),
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
