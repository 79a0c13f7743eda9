"""The `twins` CLI's plugin hook (entry-point group pkpd_twins.cli)."""

from __future__ import annotations

import sys
import types
from importlib.metadata import EntryPoint

import typer
from typer.testing import CliRunner

from twins.app import _cli_plugins


def _plugin_module(name: str) -> None:
    module = types.ModuleType(name)

    def register(app: typer.Typer) -> None:
        sub = typer.Typer()

        @sub.command()
        def hello(who: str = "world") -> None:
            print(f"hello {who}")

        app.add_typer(sub, name="greet")

    module.register = register
    sys.modules[name] = module


def test_plugins_add_commands_and_a_broken_one_is_named(monkeypatch, capsys):
    _plugin_module("pkpd_twins_test_plugin")
    points = [
        EntryPoint("greet", "pkpd_twins_test_plugin:register", _cli_plugins.GROUP),
        EntryPoint("broken", "pkpd_twins_no_such_module:register", _cli_plugins.GROUP),
    ]
    monkeypatch.setattr(_cli_plugins, "entry_points", lambda group: points)
    app = typer.Typer()

    @app.command()
    def other() -> None:
        print("other")

    assert _cli_plugins.register_plugins(app) == ["greet"]
    err = capsys.readouterr().err
    assert "'broken'" in err and "pkpd_twins_no_such_module" in err
    result = CliRunner().invoke(app, ["greet", "hello", "--who", "twins"])
    assert result.exit_code == 0, result.output
    assert "hello twins" in result.output
    assert CliRunner().invoke(app, ["other"]).exit_code == 0
