"""`twins federated ...`: federated fits on Flower's deployment engine, from the command line.

Registered through the entry-point group `pkpd_twins.cli` (pyproject.toml):
`register(app)` adds the sub-app `federated`. The heavy imports (JAX, calibration, Flower)
happen inside the commands, so `twins --help` does not pay for them.

- `twins federated fit --model REF --hospital NAME=RECORDS.csv ...`: a population model
  fitted across hospitals (a SuperLink and one SuperNode per hospital started on 127.0.0.1,
  stopped afterwards); prints the estimates, optionally writes them as JSON.
- `twins federated surrogate --hospital NAME=RECORDS.npz ... --n-features N`: the MLP
  surrogate trained across hospitals by FedAvg/FedProx/FedAdam on the deployment engine
  (`fit_surrogate_federated`); prints each round, optionally writes the parameters.
- `twins federated demo`: every part of `DEMO_PARTS` in turn (the population fit across
  five simulated hospitals; the federated surrogates), each printing its own tables.

Exit codes: 0 done; 1 the fit failed (a hospital missing, stopped answering or rejected,
named in the message); 2 a usage error or a process that could not start.
"""

from __future__ import annotations

import importlib
import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

#: The parts of `twins federated demo`, run in this order: name -> `"module:function"`,
#: each `function(console, workdir: Path, *, small: bool, **options) -> None` printing its
#: own tables. A part of another module is added here with one line.
DEMO_PARTS: dict[str, str] = {
    "population": "surrogates.federated._population_demo:demo_part",
    "surrogates": "surrogates.federated._surrogate_demo:demo_part",
}

#: Short names of the models of this package (`--model`).
MODEL_ALIASES = {
    "theophylline": "surrogates.federated._population_models:theophylline",
    "two-compartment": "surrogates.federated._population_models:two_compartment",
}

federated_app = typer.Typer(
    help="Federated fits across hospitals whose records never leave them (Flower).",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add `twins federated` to the `twins` command line (entry point `pkpd_twins.cli`)."""
    app.add_typer(federated_app, name="federated")


def _fail(message: str, code: int = 2) -> typer.Exit:
    Console(stderr=True, soft_wrap=True).print(f"[red]Error:[/red] {escape(message)}")
    return typer.Exit(code=code)


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise _fail(f"{what} must be NAME=PATH, got {item!r}.")
        if name in out:
            raise _fail(f"{what} {name!r} given twice.")
        out[name] = path
    return out


def _hospitals(hospital: list[str], consent: list[str] | None) -> dict[str, dict[str, Any]]:
    """Node configs from `--hospital NAME=RECORDS.csv` (or `NAME=NODE.toml`, a whole node
    config) and `--consent NAME=CONSENTS.csv`."""
    import tomli

    nodes: dict[str, dict[str, Any]] = {}
    for name, path in _pairs(hospital, "--hospital").items():
        p = Path(path)
        if not p.exists():
            raise _fail(f"--hospital {name}: no file {p}.")
        if p.suffix == ".toml":
            nodes[name] = tomli.loads(p.read_text(encoding="utf-8"))
        else:
            nodes[name] = {"data-path": str(p)}
    for name, path in _pairs(consent, "--consent").items():
        if name not in nodes:
            raise _fail(f"--consent {name}: no --hospital {name}.")
        nodes[name]["consent-path"] = str(Path(path))
    return nodes


def _table(fit: Any, title: str) -> Table:
    table = Table(title=title)
    for col in ("parameter", "estimate", "SE", "RSE %", "95% CI", "shrinkage %"):
        table.add_column(col, justify="left" if col == "parameter" else "right")
    for _, row in fit.table.iterrows():
        shrink = row["shrinkage_pct"]
        table.add_row(
            f"{row['kind']} {row['parameter']}",
            f"{row['estimate']:.4g}",
            f"{row['se']:.3g}",
            f"{row['rse_pct']:.1f}",
            f"{row['ci_low']:.4g} - {row['ci_high']:.4g}",
            "" if shrink != shrink else f"{shrink:.1f}",
        )
    return table


@federated_app.command("fit")
def fit_command(
    hospital: Annotated[
        list[str],
        typer.Option(
            help="A hospital: NAME=RECORDS.csv (NONMEM records) or NAME=NODE.toml (its node "
            "config: data-path, consent-path, audit-log, audit-key, pseudonym-key). Repeat "
            "for each hospital; every one must answer every round."
        ),
    ],
    model: Annotated[
        str,
        typer.Option(
            help="The population model: 'theophylline', 'two-compartment' or a reference "
            "'package.module:attribute' to a calibration.PopulationModel (or a function "
            "returning one) that every process can import."
        ),
    ] = "theophylline",
    covariates: Annotated[
        str | None,
        typer.Option(
            help="The model's covariate columns, comma-separated (known for the "
            "models of this package)."
        ),
    ] = None,
    consent: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=CONSENTS.csv: that hospital's consent decisions "
            "(patient,purpose,decision,start,end,source); needs its audit-log, "
            "audit-key and pseudonym-key (give a NODE.toml)."
        ),
    ] = None,
    estimator: Annotated[str, typer.Option(help="focei or laplace.")] = "focei",
    max_steps: Annotated[int, typer.Option(help="Most BFGS steps of the outer loop.")] = 500,
    standard_errors: Annotated[bool, typer.Option(help="Compute the covariance step.")] = True,
    audit_log: Annotated[
        Path | None, typer.Option(help="The server's audit log (a training-round entry per round).")
    ] = None,
    audit_key: Annotated[
        Path | None, typer.Option(help="The audit log's signing key (twins audit keygen).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write the estimates and the fit as JSON.")
    ] = None,
    workdir: Annotated[
        Path | None, typer.Option(help="Keep the Flower processes' logs and files here.")
    ] = None,
    round_timeout: Annotated[
        float, typer.Option(help="Seconds per round for every hospital.")
    ] = 300.0,
    join_timeout: Annotated[
        float, typer.Option(help="Seconds for every hospital to join.")
    ] = 120.0,
) -> None:
    """Fit a population model across hospitals on Flower's deployment engine: the outer loop
    at the server, each hospital's subjects' -log L computed by its own SuperNode."""
    from ._deploy import DeploymentError
    from ._population_fit import FederatedFitError
    from ._population_run import fit_population_federated

    if (audit_log is None) != (audit_key is None):
        raise _fail("--audit-log and --audit-key go together.")
    nodes = _hospitals(hospital, consent)
    if not nodes:
        raise _fail("give at least one --hospital NAME=RECORDS.csv.")
    reference = MODEL_ALIASES.get(model, model)
    console = Console(soft_wrap=True)
    try:
        fit = fit_population_federated(
            reference,
            nodes,
            covariates=None if covariates is None else [c for c in covariates.split(",") if c],
            estimator=estimator,
            max_steps=max_steps,
            standard_errors=standard_errors,
            audit_log=audit_log,
            audit_key=audit_key,
            workdir=workdir,
            round_timeout=round_timeout,
            join_timeout=join_timeout,
        )
    except FederatedFitError as error:
        raise _fail(str(error), code=1) from None
    except (DeploymentError, ValueError, TypeError) as error:
        raise _fail(str(error)) from None
    console.print(_table(fit, f"Federated {fit.method} fit of {reference}"))
    console.print(
        f"-2LL {fit.ofv:.4f}; {fit.n_subjects} subjects in {len(fit.hospitals)} hospitals "
        f"({', '.join(f'{k} {v}' for k, v in fit.hospitals.items())}); {fit.rounds} rounds; "
        f"{'converged' if fit.converged else 'NOT converged'}."
    )
    if out is not None:
        out.write_text(
            json.dumps(
                {
                    "model": reference,
                    "method": fit.method,
                    "ofv": fit.ofv,
                    "converged": fit.converged,
                    "n_steps": fit.n_steps,
                    "rounds": fit.rounds,
                    "hospitals": fit.hospitals,
                    "table": fit.table.to_dict(orient="records"),
                    "cov_phi": None if fit.cov_phi is None else fit.cov_phi.tolist(),
                    "diagnostics": fit.diagnostics,
                },
                indent=2,
                default=str,
            ),
            encoding="utf-8",
        )
        console.print(f"Wrote {out}.")


@federated_app.command("surrogate")
def surrogate_command(
    hospital: Annotated[
        list[str],
        typer.Option(
            help="A hospital: NAME=RECORDS.npz (write_surrogate_hospital: x, y, patients) or "
            "NAME=NODE.toml (its node config: data-path, consent-path, audit-log, audit-key, "
            "pseudonym-key). Repeat for each hospital."
        ),
    ],
    model: Annotated[str, typer.Option(help="The network: mlp, lstm or transformer.")] = "mlp",
    n_features: Annotated[
        int, typer.Option(help="The MLP's inputs (columns of x); for --model mlp.")
    ] = 0,
    n_static: Annotated[
        int, typer.Option(help="Static features (columns of `static`); lstm, transformer.")
    ] = 0,
    n_channels: Annotated[
        int, typer.Option(help="Channels of `sequence` (its last axis); lstm, transformer.")
    ] = 0,
    n_steps: Annotated[
        int, typer.Option(help="Time steps of `sequence` (its second axis); transformer.")
    ] = 0,
    heads: Annotated[int, typer.Option(help="The Transformer's attention heads.")] = 2,
    layers: Annotated[int, typer.Option(help="The Transformer's encoder blocks.")] = 1,
    consent: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=CONSENTS.csv: that hospital's consent decisions; needs its audit-log, "
            "audit-key and pseudonym-key (give a NODE.toml)."
        ),
    ] = None,
    hidden: Annotated[
        str | None,
        typer.Option(
            help="Sizes, comma-separated: the MLP's layers (default 32,32), the LSTM's size "
            "(16), the Transformer's width and feed-forward units (16,32)."
        ),
    ] = None,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 10,
    strategy: Annotated[str, typer.Option(help="fedavg, fedprox or fedadam.")] = "fedavg",
    proximal_mu: Annotated[float, typer.Option(help="FedProx's mu.")] = 0.0,
    local_steps: Annotated[int, typer.Option(help="Local steps per round.")] = 10,
    sampling_rate: Annotated[
        float, typer.Option(help="Each record's chance to be in a local step's batch.")
    ] = 0.1,
    learning_rate: Annotated[float, typer.Option(help="Adam's step size.")] = 0.01,
    seed: Annotated[int, typer.Option(help="The initial parameters' and hospitals' seed.")] = 0,
    min_hospitals: Annotated[
        int | None, typer.Option(help="Fewest hospitals a round may average (default all).")
    ] = None,
    audit_log: Annotated[
        Path | None, typer.Option(help="The server's audit log (a training-round entry per round).")
    ] = None,
    audit_key: Annotated[
        Path | None, typer.Option(help="The audit log's signing key (twins audit keygen).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Write the final parameters (.npz) and a JSON summary beside."),
    ] = None,
    workdir: Annotated[
        Path | None, typer.Option(help="Keep the Flower processes' logs and files here.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds for the whole run.")] = 1800.0,
) -> None:
    """Train the MLP, LSTM or Transformer surrogate across hospitals on Flower's deployment
    engine: a SuperLink and one SuperNode (with its worker) per hospital on 127.0.0.1,
    stopped afterwards."""
    from ._deploy import DeploymentError
    from ._fedavg import LocalTraining, Server
    from ._population_fit import FederatedFitError
    from ._surrogate_run import Network, fit_surrogate_federated

    if (audit_log is None) != (audit_key is None):
        raise _fail("--audit-log and --audit-key go together.")
    nodes = _hospitals(hospital, consent)
    if not nodes:
        raise _fail("give at least one --hospital NAME=RECORDS.npz.")
    console = Console(soft_wrap=True)
    try:
        if model not in ("mlp", "lstm", "transformer"):
            raise ValueError(f"--model must be mlp, lstm or transformer, got {model!r}.")
        default = {"mlp": "32,32", "lstm": "16", "transformer": "16,32"}[model]
        sizes = tuple(int(h) for h in (hidden or default).split(",") if h)
        network = Network(
            model,  # type: ignore[arg-type]
            n_features=n_features, hidden=sizes, n_static=n_static, n_channels=n_channels,
            n_steps=n_steps, heads=heads, layers=layers, seed=seed,
        )  # fmt: skip
        local = LocalTraining(
            steps=local_steps, sampling_rate=sampling_rate, learning_rate=learning_rate
        )
        result = fit_surrogate_federated(
            nodes,
            network=network,
            rounds=rounds,
            local=local,
            server=Server(strategy),  # type: ignore[arg-type]
            proximal_mu=proximal_mu,
            seed=seed,
            min_hospitals=min_hospitals,
            audit_log=audit_log,
            audit_key=audit_key,
            workdir=workdir,
            timeout=timeout,
        )
    except FederatedFitError as error:
        raise _fail(str(error), code=1) from None
    except (DeploymentError, ValueError, TypeError) as error:
        raise _fail(str(error)) from None
    names = {"mlp": "MLP", "lstm": "LSTM", "transformer": "Transformer"}
    table = Table(
        title=f"Federated {strategy} of the {names[model]} surrogate ({len(nodes)} hospitals)"
    )
    for col in ("round", "hospitals", "patients", "missing"):
        table.add_column(col, justify="left" if col in ("hospitals", "missing") else "right")
    for r in result.round_log:
        table.add_row(str(r["round"]), ", ".join(sorted(r.get("hospitals", []))),
                      str(r.get("patient_count", "")), ", ".join(r.get("missing", [])))  # fmt: skip
    console.print(table)
    console.print(f"{result.rounds} rounds; {result.bytes_up:,} bytes up, "
                  f"{result.bytes_down:,} bytes down.")  # fmt: skip
    if out is not None:
        import numpy as np

        assert result.params is not None
        np.savez(out.with_suffix(".npz"), *result.params)
        out.with_suffix(".json").write_text(
            json.dumps({"network": network.config(), "rounds": result.rounds,
                        "strategy": strategy, "bytes_up": result.bytes_up,
                        "bytes_down": result.bytes_down, "round_log": result.round_log},
                       indent=2, default=str),
            encoding="utf-8",
        )  # fmt: skip
        console.print(f"Wrote {out.with_suffix('.npz')} and {out.with_suffix('.json')}.")


@federated_app.command("demo")
def demo_command(
    part: Annotated[
        list[str] | None,
        typer.Option(help=f"Run only these parts ({', '.join(DEMO_PARTS)}); default all."),
    ] = None,
    small: Annotated[bool, typer.Option(help="Fewer patients (a quicker run).")] = False,
    subjects: Annotated[int | None, typer.Option(help="Patients per hospital.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Most outer steps of the fit.")] = None,
    workdir: Annotated[
        Path | None, typer.Option(help="Keep the hospitals' files and the logs here.")
    ] = None,
) -> None:
    """Run a small federation end to end on this machine (5 hospitals) and print the tables."""
    names = list(DEMO_PARTS) if not part else part
    unknown = [n for n in names if n not in DEMO_PARTS]
    if unknown:
        raise _fail(f"unknown demo part(s) {unknown}; the parts are {list(DEMO_PARTS)}.")
    console = Console(soft_wrap=True)
    with tempfile.TemporaryDirectory(prefix="pkpd-federated-demo-") as tmp:
        root = Path(tmp) if workdir is None else workdir
        root.mkdir(parents=True, exist_ok=True)
        for name in names:
            module, _, function = DEMO_PARTS[name].partition(":")
            run = getattr(importlib.import_module(module), function)
            run(console, root / name, small=small, subjects=subjects, max_steps=max_steps)
