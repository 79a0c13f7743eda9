"""Federated XGBoost on Flower's deployment engine: a SuperLink and one SuperNode per
hospital as processes on 127.0.0.1 (`_deploy.Federation`), the ServerApp of `_xgb`
(Flower's FedXgbBagging or FedXgbCyclic, every reply checked) and the self-contained
ClientApp of `_xgb_client` (each hospital's records and consent decisions reach it through
its node config only).

Run config (`context.run_config`): `hospitals` (how many), `rounds`, `n-features`,
`strategy` (`bagging`, `cyclic`), `min-hospitals` (0: a majority), `seed`, the trees'
settings (`max-depth`, `learning-rate`, `min-child-weight`, `reg-lambda`,
`max-delta-step`, `local-rounds`, `scale-by-hospitals`), `result-path` (the ServerApp writes
its JSON summary there, and the model beside it as `.json`), `audit-log`, `audit-key` (the
server's audit log: a `training-round` entry per round), `fit` (its name), `round-timeout`
(seconds; `_xgb.serve_xgb`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ._deploy import DeploymentError, Federation, write_app, write_json_atomic
from ._population_apps import open_run_audit
from ._population_fit import FederatedFitError
from ._population_run import node_configs
from ._xgb import Boosting, XgbOutcome, serve_xgb

SERVER_APP = "surrogates.federated._xgb_run:server_app"
CLIENT_MODULE = "pkpd_xgb_client"
CLIENT_APP = f"{CLIENT_MODULE}:client_app"

server_app = ServerApp()


def _boosting(cfg: Mapping[str, Any]) -> Boosting:
    base = Boosting()
    return Boosting(
        max_depth=int(cfg.get("max-depth", base.max_depth)),
        learning_rate=float(cfg.get("learning-rate", base.learning_rate)),
        min_child_weight=float(cfg.get("min-child-weight", base.min_child_weight)),
        reg_lambda=float(cfg.get("reg-lambda", base.reg_lambda)),
        max_delta_step=float(cfg.get("max-delta-step", base.max_delta_step)),
        local_rounds=int(cfg.get("local-rounds", base.local_rounds)),
        scale_by_hospitals=bool(cfg.get("scale-by-hospitals", base.scale_by_hospitals)),
    )


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    result = Path(str(cfg["result-path"]))
    out = XgbOutcome()
    minimum = int(cfg.get("min-hospitals", 0))
    summary: dict[str, Any] = {"rounds": 0, "bytes_up": 0, "bytes_down": 0}
    try:
        serve_xgb(
            grid,
            hospitals=int(cfg["hospitals"]),
            rounds=int(cfg["rounds"]),
            n_features=int(cfg["n-features"]),
            strategy=str(cfg.get("strategy", "bagging")),  # type: ignore[arg-type]
            boosting=_boosting(cfg),
            min_hospitals=minimum or None,
            outcome=out,
            audit=open_run_audit(cfg),
            fit=str(cfg.get("fit", "federated XGBoost")),
            seed=int(cfg.get("seed", 0)),
            round_timeout=float(cfg.get("round-timeout", 300.0)),  # type: ignore[arg-type]
        )
    except FederatedFitError as error:
        summary.update(ok=False, error=str(error), hospitals=list(error.hospitals),
                       round=error.round)  # fmt: skip
        write_json_atomic(result, summary | {"rejected": out.rejected, "round_log": out.round_log})
        raise
    result.with_suffix(".model.json").write_bytes(out.model)
    summary.update(ok=True, rounds=out.rounds, bytes_up=out.bytes_up, bytes_down=out.bytes_down,
                   rejected=out.rejected, round_log=out.round_log)  # fmt: skip
    write_json_atomic(result, summary)


def write_hospital(path: str | os.PathLike, x: Any, y: Any, patients: Any) -> Path:
    """Write a hospital's records as the `.npz` its SuperNode's `data-path` names."""
    path = Path(path)
    np.savez(path, x=np.asarray(x, dtype=float), y=np.asarray(y, dtype=float),
             patients=np.asarray([str(p) for p in patients]))  # fmt: skip
    return path


def fit_xgb_federated(
    hospitals: Mapping[str, Any],
    *,
    rounds: int,
    n_features: int,
    strategy: str = "bagging",
    boosting: Boosting | None = None,
    min_hospitals: int | None = None,
    audit_log: str | os.PathLike | None = None,
    audit_key: str | os.PathLike | None = None,
    fit: str = "federated XGBoost",
    seed: int = 0,
    workdir: str | os.PathLike | None = None,
    timeout: float = 600.0,
    round_timeout: float = 300.0,
) -> XgbOutcome:
    """Federated XGBoost on Flower's deployment engine: a SuperLink and one SuperNode per
    hospital started as processes on 127.0.0.1 (plain HTTP on the loopback interface), the
    run submitted with `flwr run`, every process stopped afterwards, also on error.

    **Arguments:**

    - `hospitals`: name -> its records (an `.npz` path, `write_hospital`) or its node
      config (`data-path`, and `consent-path`, `audit-log`, `audit-key`, `pseudonym-key`).
      The paths reach the hospital's SuperNode only.
    - `rounds`, `n_features`, `strategy`, `boosting`, `min_hospitals`, `seed`: as
      `_xgb.serve_xgb`; `audit_log`, `audit_key`: the server's audit log; `fit`: its name.
    - `workdir`: logs, node configs, the app (a temporary folder by default);
      `timeout`: seconds for the run; `round_timeout`: seconds the server waits for a
      round's replies and for enough hospitals to be connected (`_xgb.serve_xgb`).

    **Returns:** an `XgbOutcome` (the model, bytes, rejections, the rounds' log).

    **Raises:** `FederatedFitError` naming the hospitals when a round has too few accepted
    models; `DeploymentError` when a process cannot start or the run does not finish.
    """
    boosting = boosting or Boosting()
    nodes = node_configs(hospitals, "its records, .npz")
    from . import _xgb_client

    with Federation(nodes, workdir=workdir) as federation:
        stamp = time.monotonic_ns()
        result = federation.workdir / f"xgb-result-{stamp}.json"
        config = {
            "hospitals": len(nodes), "rounds": int(rounds), "n-features": int(n_features),
            "strategy": strategy, "min-hospitals": int(min_hospitals or 0), "seed": int(seed),
            "max-depth": boosting.max_depth, "learning-rate": boosting.learning_rate,
            "min-child-weight": boosting.min_child_weight, "reg-lambda": boosting.reg_lambda,
            "max-delta-step": boosting.max_delta_step, "local-rounds": boosting.local_rounds,
            "scale-by-hospitals": boosting.scale_by_hospitals, "result-path": str(result),
            "audit-log": "" if audit_log is None else str(Path(audit_log).resolve()),
            "audit-key": "" if audit_key is None else str(Path(audit_key).resolve()),
            "fit": fit, "round-timeout": float(round_timeout),
        }  # fmt: skip
        app = write_app(
            federation.workdir / f"xgb-app-{stamp}",
            name="federated-xgboost",
            serverapp=SERVER_APP,
            clientapp=CLIENT_APP,
            config=config,
            files={f"{CLIENT_MODULE}.py": _xgb_client.__file__},
        )
        run = federation.run(app, timeout=timeout, done=result.exists, poll=5.0)
        if not result.exists():
            raise DeploymentError(
                f"the federated XGBoost ServerApp ended ({run.status}: {run.details}) without "
                f"writing its result (logs in {federation.workdir / 'logs'})."
            )
        summary = json.loads(result.read_text(encoding="utf-8"))
        out = XgbOutcome(
            rounds=int(summary["rounds"]),
            bytes_up=int(summary["bytes_up"]),
            bytes_down=int(summary["bytes_down"]),
            rejected={int(r): dict(v) for r, v in summary.get("rejected", {}).items()},
            round_log=list(summary.get("round_log", [])),
        )
        if not summary.get("ok"):
            out.error = str(summary.get("error"))
            raise FederatedFitError(
                out.error, hospitals=summary.get("hospitals", ()), round=summary.get("round")
            )
        out.model = result.with_suffix(".model.json").read_bytes()
        return out
