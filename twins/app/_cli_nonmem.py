"""The `twins nonmem` commands: NONMEM control streams in (`twins nonmem import`)."""

from __future__ import annotations

import typer

nonmem_app = typer.Typer(help="NONMEM control streams in (calibration.read_nonmem).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add `twins nonmem ...` to the `twins` command line."""
    app.add_typer(nonmem_app, name="nonmem")
