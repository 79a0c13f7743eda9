"""The `twins nonmem` commands: NONMEM control streams in (`twins nonmem import`).

Exit codes: 0 read; 2 a usage error, pharmpy missing, or a control stream that cannot be
translated (the message names the record or statement and the construct).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

nonmem_app = typer.Typer(
    help="NONMEM control streams in (calibration.read_nonmem).", no_args_is_help=True
)


def _fail(message: str) -> typer.Exit:
    Console(stderr=True, soft_wrap=True).print(f"[red]Error:[/red] {escape(message)}")
    return typer.Exit(code=2)


def _num(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return f"{v:.6g}"


@nonmem_app.command("import")
def nonmem_import(
    model: Path = typer.Argument(..., exists=True, help="The NONMEM control stream (.ctl, .mod)."),
    out: Path | None = typer.Option(
        None, help="Write the summary (JSON: model, parameters, data, translation) here."
    ),
    evaluate: bool = typer.Option(
        False,
        help="Also compute -2LL (FOCE-I) at NONMEM's final estimates (.ext) and compare it "
        "with NONMEM's OFV (compiles the model: seconds).",
    ),
) -> None:
    """Read a NONMEM control stream: print the structural model, the parameters with their
    initial (and, with a .ext beside it, final) estimates, the data read and what was not
    translated."""
    import jax

    jax.config.update("jax_enable_x64", True)
    from calibration import NonmemTranslationError, read_nonmem

    try:
        imp = read_nonmem(model)
    except ImportError as error:
        raise _fail(str(error)) from None
    except (NonmemTranslationError, FileNotFoundError, ValueError) as error:
        raise _fail(f"{model}: {error}") from None
    summary = imp.summary()
    console = Console(soft_wrap=True)
    console.print(f"[bold]{escape(imp.problem)}[/bold]  ({escape(str(imp.path))})")
    console.print(f"Model: {escape(summary['structural_model'])}; {imp.subroutines}")
    console.print(
        f"Population model: {summary['population_model']}; estimation in the control stream: "
        f"{escape(imp.method)}"
    )
    d = summary["data"]
    console.print(
        f"Data: {escape(str(d['file']))}: {d['records']} records, {d['subjects']} subjects, "
        f"{d['observations']} observations, {d['doses']} doses; covariates "
        f"{', '.join(d['covariates']) or 'none'}"
    )
    table = Table(title="Parameters")
    for col in ("name", "kind", "initial", "lower", "upper", "fix", "final"):
        table.add_column(col)
    final = summary.get("nonmem_output", {}).get("estimates") or {}
    for p in summary["parameters"]:
        table.add_row(
            p["name"],
            p["kind"],
            _num(p["initial"]),
            _num(p["lower"]),
            _num(p["upper"]),
            "FIX" if p["fix"] else "",
            _num(final.get(p["name"])),
        )
    console.print(table)
    for line in summary["translation"]:
        console.print(f"  translated: {escape(line)}")
    for line in summary["untranslated"]:
        console.print(f"  not translated: {escape(line)}")
    if "nonmem_output" in summary and summary["nonmem_output"]["ofv"] is not None:
        console.print(
            f"NONMEM OFV {summary['nonmem_output']['ofv']:.4f} (-2LL with the "
            f"n log(2 pi) constant: {summary['nonmem_output']['minus_2ll']:.4f})"
        )
        if evaluate:
            m2ll = imp.objective()
            summary["nonmem_output"]["minus_2ll_here"] = m2ll
            console.print(f"-2LL here at NONMEM's final estimates (FOCE-I): {m2ll:.4f}")
    if out is not None:
        out.write_text(json.dumps(summary, indent=2, default=str) + "\n")
        console.print(f"Summary written to {escape(str(out))}")


def register(app: typer.Typer) -> None:
    """Add `twins nonmem ...` to the `twins` command line."""
    app.add_typer(nonmem_app, name="nonmem")
