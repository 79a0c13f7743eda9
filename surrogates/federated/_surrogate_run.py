"""The federated Flax surrogates on Flower's deployment engine: a SuperLink and one SuperNode
per hospital as processes on 127.0.0.1 (`_deploy.Federation`), each SuperNode with its
hospital's worker (`_surrogate_worker`: the records, the consent decision, the compiled local
update), the ServerApp of `_surrogate_apps` (`serve_surrogate`: Flower's FedAvg, FedProx or
FedAdam, client-level DP by its client-side fixed clipping) and the thin ClientApp of
`_surrogate_client`. The same rounds as `_fedavg.federated_training` and as the simulation
engine's apps: hospital k (its `partition-id`, the order of `hospitals`) trains with
`round_key(key(seed), round, k)`.

Run config (`context.run_config`): the network (`NETWORK_KEYS`: `model-kind` "mlp", "lstm"
or "transformer", `n-features` or `n-static` and `n-channels` (and `n-steps`), `hidden`,
`static-hidden`, `heads`, `layers`, `model-seed`), the local training (`LOCAL_KEYS`:
`local-steps`, `batch-size`, `sampling-rate` (0: none), `learning-rate`, `optimizer`,
`record-clip`, `record-noise` (0: no DP-SGD)), the server (`strategy`, `proximal-mu`,
`eta`, `beta-1`, `beta-2`, `tau`, `client-clip`, `client-noise` (0: no client-level DP),
`delta`), `hospitals`, `rounds`, `seed`, `round-timeout`, `result-path` (the ServerApp
writes its JSON summary there and the parameters beside it as `.npz`), `audit-log`,
`audit-key` (the server's audit log: a `training-round` entry per round), `fit` (its name).

Node config of each SuperNode (local to the hospital): `hospital`, `partition-id`,
`data-path` (an `.npz` of `write_surrogate_hospital`: `x` or `static` and `sequence`, `y`,
`patients`), `worker-socket`, and optionally `consent-path`, `audit-log`, `audit-key`,
`pseudonym-key` (its consent decisions and governance, `_surrogate_apps.consented_rows`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from . import _population_client, _surrogate_client
from ._deploy import DeploymentError, Federation, write_app, write_json_atomic
from ._dp import DELTA, ClientDP, RecordDP
from ._fedavg import Client, LocalTraining, Server
from ._population_apps import open_run_audit
from ._population_fit import FederatedFitError
from ._population_run import node_configs
from ._surrogate_apps import HospitalRecords, Outcome, serve_surrogate
from ._surrogate_models import Model, lstm, mlp, transformer

SERVER_APP = "surrogates.federated._surrogate_run:server_app"
CLIENT_MODULE = "pkpd_surrogate_client"
#: The hospital worker next to each SuperNode (`Federation(worker=...)`).
WORKER = "surrogates.federated._surrogate_worker"

NETWORK_KEYS = ("model-kind", "n-features", "n-static", "n-channels", "n-steps", "hidden",
                "static-hidden", "heads", "layers", "model-seed")  # fmt: skip
LOCAL_KEYS = ("local-steps", "batch-size", "sampling-rate", "learning-rate", "optimizer",
              "record-clip", "record-noise")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Network:
    """A federated surrogate's network, as every process of a deployed run rebuilds it:
    `kind` "mlp" (`n_features` inputs, `hidden` layers), "lstm" (`n_static` static
    features, `n_channels` sequence channels, LSTM size `hidden[0]`, `static_hidden`) or
    "transformer" (`n_static`, `n_channels`, `n_steps` time steps; `hidden` = (model
    width, feed-forward units), `heads` attention heads, `layers` blocks), and the `seed` of
    its initial parameters (`_surrogate_models.mlp`, `.lstm`, `.transformer`)."""

    kind: Literal["mlp", "lstm", "transformer"] = "mlp"
    n_features: int = 0
    hidden: tuple[int, ...] = (32, 32)
    n_static: int = 0
    n_channels: int = 0
    static_hidden: int = 16
    seed: int = 0
    n_steps: int = 0
    heads: int = 2
    layers: int = 1

    def __post_init__(self):
        if self.kind not in ("mlp", "lstm", "transformer"):
            raise ValueError(
                f"Network.kind must be 'mlp', 'lstm' or 'transformer', got {self.kind!r}."
            )
        if self.kind == "mlp" and self.n_features < 1:
            raise ValueError(f"Network: an mlp needs n_features >= 1, got {self.n_features}.")
        if self.kind != "mlp" and (self.n_static < 1 or self.n_channels < 1):
            raise ValueError(
                f"Network: an {self.kind} needs n_static and n_channels >= 1, got "
                f"{self.n_static} and {self.n_channels}."
            )
        if not self.hidden or any(int(h) != h or h < 1 for h in self.hidden):
            raise ValueError(f"Network.hidden must be sizes >= 1, got {self.hidden}.")
        if self.kind == "transformer":
            if self.n_steps < 1:
                raise ValueError(f"Network: a transformer needs n_steps >= 1, got {self.n_steps}.")
            if len(self.hidden) != 2:
                raise ValueError(
                    "Network: a transformer's hidden is (model width, feed-forward units), "
                    f"got {self.hidden}."
                )
            if self.heads < 1 or self.layers < 1 or self.hidden[0] % self.heads:
                raise ValueError(
                    f"Network: a transformer needs heads >= 1 dividing the width {self.hidden[0]}"
                    f" and layers >= 1, got heads {self.heads}, layers {self.layers}."
                )

    def build(self) -> Model:
        """The `Model` (graph and initial parameters)."""
        if self.kind == "mlp":
            return mlp(self.n_features, hidden=tuple(self.hidden), seed=self.seed)
        if self.kind == "transformer":
            return transformer(self.n_static, self.n_channels, self.n_steps,
                               d_model=self.hidden[0], mlp=self.hidden[1], heads=self.heads,
                               layers=self.layers, seed=self.seed)  # fmt: skip
        return lstm(self.n_static, self.n_channels, hidden=self.hidden[0],
                    static_hidden=self.static_hidden, seed=self.seed)  # fmt: skip

    def config(self) -> dict[str, Any]:
        """The run config entries (`NETWORK_KEYS`)."""
        return {
            "model-kind": self.kind, "n-features": int(self.n_features),
            "n-static": int(self.n_static), "n-channels": int(self.n_channels),
            "n-steps": int(self.n_steps),
            "hidden": ",".join(str(int(h)) for h in self.hidden),
            "static-hidden": int(self.static_hidden), "heads": int(self.heads),
            "layers": int(self.layers), "model-seed": int(self.seed),
        }  # fmt: skip

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Network:
        return cls(
            kind=str(cfg["model-kind"]),  # type: ignore[arg-type]
            n_features=int(cfg.get("n-features", 0)),
            hidden=tuple(int(h) for h in str(cfg.get("hidden", "32,32")).split(",") if h),
            n_static=int(cfg.get("n-static", 0)),
            n_channels=int(cfg.get("n-channels", 0)),
            static_hidden=int(cfg.get("static-hidden", 16)),
            seed=int(cfg.get("model-seed", 0)),
            n_steps=int(cfg.get("n-steps", 0)),
            heads=int(cfg.get("heads", 2)),
            layers=int(cfg.get("layers", 1)),
        )


def local_config(local: LocalTraining) -> dict[str, Any]:
    """A hospital's local training as run config entries (`LOCAL_KEYS`)."""
    if local.proximal_mu:
        raise ValueError(
            "fit_surrogate_federated: give FedProx's mu as proximal_mu (the server sends it "
            "each round), not LocalTraining.proximal_mu."
        )
    return {
        "local-steps": int(local.steps), "batch-size": int(local.batch_size),
        "sampling-rate": float(local.sampling_rate or 0.0),
        "learning-rate": float(local.learning_rate), "optimizer": local.optimizer,
        "record-clip": 0.0 if local.dp is None else float(local.dp.clip),
        "record-noise": -1.0 if local.dp is None else float(local.dp.noise_multiplier),
    }  # fmt: skip


def local_from_config(cfg: Mapping[str, Any]) -> LocalTraining:
    """The `LocalTraining` of `local_config`'s entries."""
    dp = None
    if float(cfg.get("record-noise", -1.0)) >= 0:
        dp = RecordDP(float(cfg["record-clip"]), float(cfg["record-noise"]))
    rate = float(cfg.get("sampling-rate", 0.0))
    return LocalTraining(
        steps=int(cfg["local-steps"]),
        batch_size=int(cfg["batch-size"]),
        learning_rate=float(cfg["learning-rate"]),
        optimizer=str(cfg["optimizer"]),  # type: ignore[arg-type]
        dp=dp,
        sampling_rate=rate if rate > 0 else None,
    )


def write_surrogate_hospital(
    path: str | os.PathLike, client: Client, patients: Sequence[Any] | None = None
) -> Path:
    """Write a hospital's training records as the `.npz` its SuperNode's `data-path` names:
    `x` (an MLP's features) or `static` and `sequence` (an LSTM's or a Transformer's),
    `y`, and `patients` (each record's patient ID, for its consent decisions; `0..n-1` if
    not given). The
    arrays keep their dtypes (the reference runs' float32)."""
    path = Path(path)
    n = len(client)
    ids = [str(i) for i in range(n)] if patients is None else [str(p) for p in patients]
    if len(ids) != n:
        raise ValueError(f"write_surrogate_hospital {path}: {len(ids)} patient IDs for {n} "
                         "records.")  # fmt: skip
    if isinstance(client.x, tuple | list):
        static, sequence = client.x
        arrays = {"static": np.asarray(static), "sequence": np.asarray(sequence)}
    else:
        arrays = {"x": np.asarray(client.x)}
    np.savez(path, **arrays, y=np.asarray(client.y), patients=np.asarray(ids))
    return path


def read_surrogate_hospital(node: Mapping[str, Any]) -> HospitalRecords:
    """A hospital's `HospitalRecords` from its node config (`hospital`, `data-path`, and its
    consent keys)."""
    name = str(node.get("hospital", ""))
    path = str(node.get("data-path", ""))
    if not name or not path:
        raise ValueError("the node config needs 'hospital' and 'data-path'.")
    with np.load(path, allow_pickle=False) as data:
        keys = set(data.files)
        if "x" in keys:
            x: Any = data["x"]
        elif {"static", "sequence"} <= keys:
            x = (data["static"], data["sequence"])
        else:
            raise ValueError(
                f"hospital {name!r}: {path} has neither 'x' nor 'static' and 'sequence' "
                f"(it has {sorted(keys)})."
            )
        y, patients = data["y"], data["patients"]
    config = {k: v for k, v in node.items()
              if k in ("consent-path", "audit-log", "audit-key", "pseudonym-key")}  # fmt: skip
    return HospitalRecords(name, Client(x, y), tuple(str(p) for p in patients), config)


# ----------------------------------------------------------------------------- the ServerApp

server_app = ServerApp()


def _server(cfg: Mapping[str, Any]) -> Server:
    noise = float(cfg.get("client-noise", -1.0))
    base = Server()
    return Server(
        strategy=str(cfg.get("strategy", "fedavg")),  # type: ignore[arg-type]
        eta=float(cfg.get("eta", base.eta)),
        beta_1=float(cfg.get("beta-1", base.beta_1)),
        beta_2=float(cfg.get("beta-2", base.beta_2)),
        tau=float(cfg.get("tau", base.tau)),
        client_dp=ClientDP(float(cfg["client-clip"]), noise) if noise >= 0 else None,
    )


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    result = Path(str(cfg["result-path"]))
    out = Outcome()
    try:
        serve_surrogate(
            grid,
            Network.from_config(cfg).build(),
            hospitals=int(cfg["hospitals"]),  # type: ignore[arg-type]
            rounds=int(cfg["rounds"]),  # type: ignore[arg-type]
            server=_server(cfg),
            proximal_mu=float(cfg.get("proximal-mu", 0.0)),  # type: ignore[arg-type]
            delta=float(cfg.get("delta", DELTA)),  # type: ignore[arg-type]
            outcome=out,
            audit=open_run_audit(cfg),
            fit=str(cfg.get("fit", "federated surrogate")),
            min_hospitals=int(cfg.get("min-hospitals", 0)) or None,  # type: ignore[arg-type]
            names=[n for n in str(cfg.get("hospital-names", "")).split(",") if n],
            round_timeout=float(cfg.get("round-timeout", 300.0)),  # type: ignore[arg-type]
        )
    except FederatedFitError as error:
        failed = {"ok": False, "error": str(error), "hospitals": list(error.hospitals)}
        write_json_atomic(result, failed | {"round": error.round, "round_log": out.round_log})
        raise
    except Exception as error:
        failed = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        write_json_atomic(result, failed | {"round_log": out.round_log})
        raise
    assert out.params is not None
    np.savez(result.with_suffix(".npz"), *out.params)
    summary = {"ok": True, "rounds": out.rounds, "bytes_up": out.bytes_up}
    summary |= {"bytes_down": out.bytes_down, "epsilon": out.epsilon}
    write_json_atomic(result, summary | {"n_arrays": len(out.params), "round_log": out.round_log})


# ----------------------------------------------------------------------------- the run


def surrogate_federation(
    hospitals: Mapping[str, Any], *, workdir: str | os.PathLike | None = None, **kwargs: Any
) -> Federation:
    """A `Federation` for the federated surrogates: one SuperNode and one worker per
    hospital (`hospitals` as in `fit_surrogate_federated`; hospital k of the mapping's order
    is `partition-id` k); start it with `with`."""
    nodes = node_configs(hospitals, "its records, .npz (write_surrogate_hospital)")
    for k, cfg in enumerate(nodes.values()):
        cfg["partition-id"] = k
    return Federation(nodes, workdir=workdir, worker=WORKER, **kwargs)


def fit_surrogate_federated(
    hospitals: Mapping[str, Any],
    *,
    network: Network,
    rounds: int,
    local: LocalTraining | None = None,
    server: Server | None = None,
    proximal_mu: float = 0.0,
    delta: float = DELTA,
    seed: int = 0,
    min_hospitals: int | None = None,
    audit_log: str | os.PathLike | None = None,
    audit_key: str | os.PathLike | None = None,
    fit: str = "federated surrogate",
    workdir: str | os.PathLike | None = None,
    round_timeout: float = 300.0,
    timeout: float = 600.0,
) -> Outcome:
    """A Flax surrogate (the MLP or the LSTM) trained across hospitals on Flower's deployment
    engine: a SuperLink and one SuperNode (with its worker) per hospital started as processes
    on 127.0.0.1 (plain HTTP on the loopback interface), the run submitted with `flwr run`,
    every process stopped afterwards, also on error. FedAvg (McMahan HB et al. AISTATS 2017),
    FedProx (Li T et al. MLSys 2020) or FedAdam (Reddi S et al. ICLR 2021) as
    `surrogate_server_app` runs them, with the same keys as `federated_training`, so the same
    seeds give the same model (to float32 summation order).

    **Arguments:**

    - `hospitals`: name -> its records (an `.npz` path, `write_surrogate_hospital`) or its
      node config (`data-path`, and `consent-path`, `audit-log`, `audit-key`,
      `pseudonym-key`: patients who did not consent never enter a local round). The paths
      reach the hospital's SuperNode and worker only. Hospital k (in this order) trains with
      `round_key(key(seed), round, k)`.
    - `network`: the `Network` (every process rebuilds it; its `seed` gives the initial
      parameters).
    - `rounds`; `local`: each hospital's `LocalTraining` (DP-SGD with `local.dp`; default
      `LocalTraining()`); `server`: the strategy (default FedAvg) and client-level DP
      (`server.client_dp`); `proximal_mu`: FedProx's mu; `delta`: Flower's accountant's
      delta; `seed`: the hospitals' keys.
    - `min_hospitals`: the fewest hospitals whose replies a round may average (default:
      every one); a round with fewer fails, naming the missing hospitals.
    - `audit_log`, `audit_key`: the server's audit log and its signing key; `fit`: its name.
    - `workdir`: logs, node configs, the app (a temporary folder by default);
      `round_timeout`: seconds a hospital's worker has for a round (the first includes
      compiling); `timeout`: seconds for the run.

    **Returns:** an `Outcome` (the final parameters, bytes, Flower's epsilon, the rounds'
    log).

    **Raises:** `FederatedFitError` naming the hospitals when a round has fewer than
    `min_hospitals` replies (a hospital's ClientApp or worker failed, or its SuperNode
    stopped); `DeploymentError` when a process cannot start, the run fails otherwise or
    does not finish in time.
    """
    local = local or LocalTraining()
    server = server or Server()
    if server.strategy == "fedprox" and proximal_mu <= 0:
        raise ValueError("fit_surrogate_federated: fedprox needs proximal_mu > 0.")
    if server.client_dp is not None and server.strategy == "fedadam":
        raise ValueError("fit_surrogate_federated: client-level DP with FedAdam is refused "
                         "(see _surrogate_apps); use fedavg or fedprox.")  # fmt: skip
    with surrogate_federation(hospitals, workdir=workdir) as federation:
        return run_surrogate_fit(
            federation, network=network, rounds=rounds, local=local, server=server,
            proximal_mu=proximal_mu, delta=delta, seed=seed, min_hospitals=min_hospitals,
            audit_log=audit_log, audit_key=audit_key, fit=fit, round_timeout=round_timeout,
            timeout=timeout,
        )  # fmt: skip


def run_surrogate_fit(
    federation: Federation,
    *,
    network: Network,
    rounds: int,
    local: LocalTraining | None = None,
    server: Server | None = None,
    proximal_mu: float = 0.0,
    delta: float = DELTA,
    seed: int = 0,
    min_hospitals: int | None = None,
    audit_log: str | os.PathLike | None = None,
    audit_key: str | os.PathLike | None = None,
    fit: str = "federated surrogate",
    round_timeout: float = 300.0,
    timeout: float = 600.0,
) -> Outcome:
    """Run a federated surrogate on a started `Federation` of `surrogate_federation` (its
    SuperNodes' node configs hold the hospitals' data paths; every hospital of it takes
    part). Arguments and result as `fit_surrogate_federated`."""
    if federation.worker != WORKER:
        raise ValueError(
            "run_surrogate_fit: the federation's SuperNodes need the surrogate worker "
            "(surrogate_federation(...), or Federation(..., worker=WORKER))."
        )
    local = local or LocalTraining()
    server = server or Server()
    base = {**network.config(), **local_config(local)}
    stamp = time.monotonic_ns()
    result = federation.workdir / f"surrogate-result-{stamp}.json"
    dp = server.client_dp
    config = base | {
        "strategy": server.strategy, "proximal-mu": float(proximal_mu),
        "eta": server.eta, "beta-1": server.beta_1, "beta-2": server.beta_2,
        "tau": server.tau, "client-clip": 0.0 if dp is None else float(dp.clip),
        "client-noise": -1.0 if dp is None else float(dp.noise_multiplier),
        "delta": float(delta), "hospitals": len(federation.nodes), "rounds": int(rounds),
        "seed": int(seed), "round-timeout": float(round_timeout),
        "result-path": str(result),
        "audit-log": "" if audit_log is None else str(Path(audit_log).resolve()),
        "audit-key": "" if audit_key is None else str(Path(audit_key).resolve()),
        "fit": fit, "min-hospitals": int(min_hospitals or 0),
        "hospital-names": ",".join(federation.nodes),
    }  # fmt: skip
    app = write_app(
        federation.workdir / f"surrogate-app-{stamp}",
        name="federated-surrogate",
        serverapp=SERVER_APP,
        clientapp=f"{CLIENT_MODULE}:{'client_app_dp' if dp is not None else 'client_app'}",
        config=config,
        files={
            f"{CLIENT_MODULE}.py": _surrogate_client.__file__,
            "pkpd_population_client.py": _population_client.__file__,
        },
    )
    run = federation.run(app, timeout=timeout, done=result.exists, poll=5.0)
    if not result.exists():
        raise DeploymentError(
            f"the federated surrogate's ServerApp ended ({run.status}: {run.details}) "
            f"without writing its result (logs in {federation.workdir / 'logs'})."
        )
    summary = json.loads(result.read_text(encoding="utf-8"))
    if not summary.get("ok") and "hospitals" in summary:
        raise FederatedFitError(str(summary["error"]), hospitals=summary["hospitals"],
                                round=summary.get("round"))  # fmt: skip
    if not summary.get("ok"):
        raise DeploymentError(
            f"the federated surrogate's run failed: {summary.get('error')} (logs in "
            f"{federation.workdir / 'logs'})."
        )
    with np.load(result.with_suffix(".npz")) as arrays:
        params = [arrays[f"arr_{i}"] for i in range(int(summary["n_arrays"]))]
    return Outcome(
        params=params,
        bytes_up=int(summary["bytes_up"]),
        bytes_down=int(summary["bytes_down"]),
        rounds=int(summary["rounds"]),
        epsilon=summary.get("epsilon"),
        round_log=list(summary.get("round_log", [])),
    )
