"""`fit_population_federated`: a federated population fit run for real on Flower's
deployment engine (a SuperLink and one SuperNode per hospital, `_deploy.Federation`)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import _population_client
from ._deploy import DeploymentError, Federation, write_app
from ._population_apps import CLIENT_APP, CLIENT_MODULE, RUN_CONFIG_DEFAULTS, SERVER_APP
from ._population_fit import (
    FederatedFitError,
    FederatedPopulationFit,
    assemble_fit,
    estimator_named,
)
from ._population_models import COVARIATES, load_model

#: The hospital worker each SuperNode of a population fit needs (`Federation(worker=...)`).
WORKER = "surrogates.federated._population_worker"


def population_federation(
    hospitals: Mapping[str, Any], *, workdir: str | os.PathLike | None = None, **kwargs: Any
) -> Federation:
    """A `Federation` for population fits: one SuperNode and one worker per hospital
    (`hospitals` as in `fit_population_federated`); start it with `with`."""
    return Federation(node_configs(hospitals), workdir=workdir, worker=WORKER, **kwargs)


def node_configs(
    hospitals: Mapping[str, Any], records: str = "its NONMEM records, CSV"
) -> dict[str, dict[str, Any]]:
    """Hospital -> node config, from `{name: data path}` or `{name: node config}` (a
    mapping with `data-path` and optionally `consent-path`, `audit-log`, `audit-key`,
    `pseudonym-key`); paths made absolute. `records` says what the data path holds."""
    out = {}
    for name, value in hospitals.items():
        cfg = {"data-path": value} if isinstance(value, str | os.PathLike) else dict(value)
        for key in ("data-path", "consent-path", "audit-log", "audit-key", "pseudonym-key"):
            if cfg.get(key):
                cfg[key] = str(Path(cfg[key]).resolve())
        if "data-path" not in cfg:
            raise ValueError(f"hospital {name!r}: no data-path ({records}).")
        out[str(name)] = cfg
    return out


def run_population_fit(
    federation: Federation,
    model: str,
    *,
    hospitals: Sequence[str] | None = None,
    covariates: Sequence[str] | None = None,
    estimator: str = "focei",
    max_steps: int = 500,
    gtol: float = 1e-3,
    standard_errors: bool = True,
    audit_log: str | os.PathLike | None = None,
    audit_key: str | os.PathLike | None = None,
    fit: str = "population fit",
    round_timeout: float = 300.0,
    join_timeout: float = 120.0,
    timeout: float = 1800.0,
) -> FederatedPopulationFit:
    """Run a federated population fit on a started `Federation` (its SuperNodes' node
    configs hold the hospitals' data paths). Arguments as `fit_population_federated`;
    `hospitals` defaults to every hospital of the federation.
    """
    if federation.worker != WORKER:
        raise ValueError(
            "run_population_fit: the federation's SuperNodes need the population worker "
            "(population_federation(...), or Federation(..., worker=WORKER))."
        )
    names = list(federation.nodes) if hospitals is None else [str(h) for h in hospitals]
    pm = load_model(model)
    est = estimator_named(estimator)
    cov = COVARIATES.get(model, ()) if covariates is None else tuple(covariates)
    stamp = time.monotonic_ns()
    result = federation.workdir / f"result-{stamp}.json"
    config = dict(RUN_CONFIG_DEFAULTS)
    config.update(
        {
            "model": model,
            "covariates": ",".join(cov),
            "estimator": est.name,
            "hospitals": ",".join(names),
            "result-path": str(result),
            "max-steps": int(max_steps),
            "gtol": float(gtol),
            "standard-errors": bool(standard_errors),
            "round-timeout": float(round_timeout),
            "join-timeout": float(join_timeout),
            "audit-log": "" if audit_log is None else str(Path(audit_log).resolve()),
            "audit-key": "" if audit_key is None else str(Path(audit_key).resolve()),
            "fit": fit,
        }
    )
    app = write_app(
        federation.workdir / f"app-{stamp}",
        name="population-fit",
        serverapp=SERVER_APP,
        clientapp=CLIENT_APP,
        config=config,
        files={f"{CLIENT_MODULE}.py": _population_client.__file__},
    )
    run = federation.run(app, timeout=timeout, done=result.exists)
    if not result.exists():
        raise DeploymentError(
            f"the federated fit's ServerApp ended ({run.status}: {run.details}) without "
            f"writing its result.\nSuperLink log:\n{_tail(federation.logs['superlink'])}"
        )
    out = json.loads(result.read_text(encoding="utf-8"))
    if not out.get("ok"):
        raise FederatedFitError(
            str(out.get("error", "the federated fit failed")),
            hospitals=out.get("hospitals", ()),
            round=out.get("round"),
        )
    summary = out["summary"]
    fit_result = assemble_fit(pm, est, summary)
    fit_result.diagnostics.update(
        {
            "run_id": run.run_id,
            "refused": summary.get("refused", {}),
            "round_seconds": summary.get("round_seconds", []),
            "elapsed_seconds": run.elapsed,
        }
    )
    return fit_result


def fit_population_federated(
    model: str,
    hospitals: Mapping[str, Any],
    *,
    covariates: Sequence[str] | None = None,
    estimator: str = "focei",
    max_steps: int = 500,
    gtol: float = 1e-3,
    standard_errors: bool = True,
    audit_log: str | os.PathLike | None = None,
    audit_key: str | os.PathLike | None = None,
    fit: str = "population fit",
    workdir: str | os.PathLike | None = None,
    round_timeout: float = 300.0,
    join_timeout: float = 120.0,
    timeout: float = 1800.0,
) -> FederatedPopulationFit:
    """A population model fitted across hospitals whose records never leave them, on
    Flower's deployment engine: a SuperLink and one SuperNode per hospital are started as
    processes on 127.0.0.1 (plain HTTP on the loopback interface), the fit runs as a
    ServerApp (calibration's outer loop) and ClientApps (each hospital's subjects), and
    every process is stopped afterwards, also on error.

    **Arguments:**

    - `model`: the population model as a reference `"package.module:attribute"` (a
      `calibration.PopulationModel`, or a function returning one) that every process
      imports, e.g. `surrogates.federated.THEOPHYLLINE`.
    - `hospitals`: name -> its NONMEM records (a CSV path), or its node config (`data-path`,
      and `consent-path`, `audit-log`, `audit-key`, `pseudonym-key` for consent; see
      `surrogates.federated._population_apps`). The data path reaches the hospital's
      SuperNode through its node config only; the server never sees it.
    - `covariates`: the model's covariate columns (known for the models of this package).
    - `estimator`: `"focei"` or `"laplace"`.
    - `max_steps`, `gtol`, `standard_errors`: as in `calibration.fit_population`.
    - `audit_log`, `audit_key`: the server's audit log and its signing key (each round gets
      a `training-round` entry).
    - `fit`: the fit's name, for the log.
    - `workdir`: logs, node configs, the app and Flower's files (a temporary folder,
      removed afterwards, by default).
    - `round_timeout`: seconds every hospital has to answer a round (the first includes
      starting its process and compiling the model); `join_timeout`: to join; `timeout`:
      for the whole run.

    **Returns:** a `FederatedPopulationFit`.

    **Raises:** `FederatedFitError` naming the hospital(s) when one does not join, stops
    answering (its SuperNode killed), reports an error or sends a rejected answer: the fit
    needs every hospital in every round. `DeploymentError` when a Flower process cannot
    start, stops, or the run does not finish within `timeout`.
    """
    with population_federation(hospitals, workdir=workdir) as federation:
        return run_population_fit(
            federation,
            model,
            covariates=covariates,
            estimator=estimator,
            max_steps=max_steps,
            gtol=gtol,
            standard_errors=standard_errors,
            audit_log=audit_log,
            audit_key=audit_key,
            fit=fit,
            round_timeout=round_timeout,
            join_timeout=join_timeout,
            timeout=timeout,
        )


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
