"""Sub-commands that packages above `twins` add to the `twins` command line.

`twins` may not import upward (`surrogates` builds on `twins`), so commands such as
`twins federated ...` are registered by the package that owns them, through the entry-point
group ``pkpd_twins.cli`` in its pyproject.toml: each entry point names a ``register(app)``
function that adds a typer sub-app. A plugin that cannot be loaded is reported on stderr with
its name and the error; the other commands keep working.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import typer

GROUP = "pkpd_twins.cli"


def register_plugins(app: typer.Typer) -> list[str]:
    """Call each ``pkpd_twins.cli`` entry point's ``register(app)``; return the names loaded."""
    loaded = []
    for point in sorted(entry_points(group=GROUP), key=lambda p: p.name):
        try:
            register = point.load()
            register(app)
        except Exception as error:  # a broken plugin must not take the whole CLI down
            print(
                f"twins: the '{point.name}' commands ({point.value}) could not be loaded: "
                f"{type(error).__name__}: {error}",
                file=sys.stderr,
            )
            continue
        loaded.append(point.name)
    return loaded
