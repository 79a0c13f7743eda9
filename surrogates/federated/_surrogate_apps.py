"""Flower apps for the federated surrogates: a ServerApp and a ClientApp per hospital that call
the pure functions of `_fedavg` and `_dp`, run through Flower's simulation engine
(`flwr.simulation.run_simulation`, Ray backend) and, unchanged, through its deployment
engine.

- `surrogate_server_app(model, rounds=..., server=...)`: Flower 1.42's message-API
  strategies: `FedAvg`, `FedProx` (it sends `proximal-mu`; the ClientApp adds the proximal
  term), `FedAdam` (its own server formulas, which `_fedavg.fedadam_step` reproduces). With
  `server.client_dp` the strategy is wrapped in `DifferentialPrivacyClientSideFixedClipping`
  (noise multiplier sigma on the equal-weight mean, with Flower's RDP accountant, which
  wraps dp-accounting), and the ClientApp carries `fixedclipping_mod`. Client-level DP with
  FedAdam is refused: Flower's wrapper adds the noise after the inner strategy's step, so
  FedAdam's normalised step would be computed from the un-noised mean and the noise would
  not bound a hospital's influence.
- `surrogate_client_app(model, clients, local=...)`: hospital `partition-id` trains on its
  records with `local_update` (its key: `round_key(key, round, partition-id)`, as in
  `federated_training`, so the Flower run and the pure simulation give the same model). The
  reply carries the parameters and `num-examples` (and `unit-weight` = 1, the weight of the
  equal-weight mean under client-level DP); no training metrics leave a hospital in a DP
  run.
- SecAgg+ (Bell JH et al. Secure single-server aggregation with (poly)logarithmic
  overhead. CCS 2020), `secagg_server_app` and `secagg_client_app`: Flower's
  `SecAggPlusWorkflow` and `secaggplus_mod`, which exist for Flower's legacy (NumPyClient)
  API only, so these two apps use it. The server sees only the (quantised) sum of the masked
  updates; with client-level DP each hospital clips its own update before masking (the
  server cannot clip what it cannot see), and the server's legacy
  `DifferentialPrivacyClientSideFixedClipping` adds the noise to the sum.
- `simulate(server_app, client_app, hospitals)`: `run_simulation` with one CPU per ClientApp
  and Flower's and Ray's telemetry off (FLWR_TELEMETRY_ENABLED=0,
  RAY_USAGE_STATS_ENABLED=0: nothing leaves the machine).

The apps hand their result to the caller through `Outcome` (the final parameters, the
bytes each hospital sent and received per round, Flower's epsilon).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

for _name in ("FLWR_TELEMETRY_ENABLED", "RAY_USAGE_STATS_ENABLED"):
    os.environ.setdefault(_name, "0")  # before flwr or ray is imported: no telemetry

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ._dp import DELTA, clip_update  # noqa: E402
from ._fedavg import Client, LocalTraining, Server, local_update, round_key  # noqa: E402
from ._surrogate_models import Model  # noqa: E402


@dataclasses.dataclass
class Outcome:
    """What a ServerApp leaves for its caller: `params` (the final global parameters as
    numpy arrays), `bytes_up` / `bytes_down` (the serialised parameter payload each hospital
    sent / received, summed over rounds and hospitals), `rounds`, and `epsilon` (Flower's
    accountant, client-level DP only)."""

    params: list[np.ndarray] | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    rounds: int = 0
    epsilon: float | None = None


def _payload(record) -> int:
    """Bytes of an ArrayRecord's serialised arrays."""
    return int(sum(len(a.data) for a in record.values()))


def _local_params(model: Model, arrays) -> Any:
    return model.from_arrays(arrays)


def _train(
    model: Model, client: Client, arrays: list[np.ndarray], server_round: int, node: int,
    local: LocalTraining, key: jax.Array, proximal_mu: float,
) -> list[np.ndarray]:  # fmt: skip
    """A hospital's round: `local_update` from the global `arrays`."""
    import dataclasses as dc

    params = _local_params(model, arrays)
    if proximal_mu > 0:
        local = dc.replace(local, proximal_mu=float(proximal_mu))
    x = jax.tree.map(np.asarray, client.x)
    y = np.asarray(client.y)
    mask = np.ones_like(y)
    new, _ = local_update(
        model.loss, params, params, x, y, mask, round_key(key, server_round, node), local=local
    )
    return model.arrays(new)


def surrogate_client_app(
    model: Model,
    clients: Sequence[Client],
    *,
    local: LocalTraining,
    seed: int = 0,
    client_dp: bool = False,
):
    """The ClientApp of hospital `partition-id` (its records: `clients[partition-id]`)."""
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.clientapp.mod import fixedclipping_mod

    data = list(clients)
    app = ClientApp(mods=[fixedclipping_mod] if client_dp else [])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        node = int(context.node_config["partition-id"])
        client = data[node]
        received = msg.content["arrays"]
        config = msg.content["config"]
        assert isinstance(received, ArrayRecord)
        arrays = received.to_numpy_ndarrays()
        new = _train(
            model, client, arrays, int(config["server-round"]), node, local,  # type: ignore[arg-type]
            jax.random.key(seed), float(config.get("proximal-mu", 0.0)),  # type: ignore[arg-type]
        )  # fmt: skip
        reply_arrays = ArrayRecord(
            dict(zip(received.keys(), ArrayRecord(new).values(), strict=True))
        )
        metrics = MetricRecord(
            {
                "num-examples": len(client),
                "unit-weight": 1,
                "bytes-down": _payload(received),
                "bytes-up": _payload(reply_arrays),
            }
        )
        return Message(RecordDict({"arrays": reply_arrays, "metrics": metrics}), reply_to=msg)

    return app


def _strategy(server: Server, hospitals: int, proximal_mu: float, delta: float):
    from flwr.serverapp import strategy as fs

    weight = "unit-weight" if server.client_dp is not None else "num-examples"
    common = {
        "fraction_train": 1.0,
        "fraction_evaluate": 0.0,
        "min_train_nodes": hospitals,
        "min_available_nodes": hospitals,
        "weighted_by_key": weight,
    }
    if server.strategy == "fedavg":
        inner = fs.FedAvg(**common)  # type: ignore[arg-type]
    elif server.strategy == "fedprox":
        inner = fs.FedProx(**common, proximal_mu=proximal_mu)  # type: ignore[arg-type]
    else:
        if server.client_dp is not None:
            raise ValueError(
                "client-level DP with FedAdam: Flower's DifferentialPrivacyClientSideFixed"
                "Clipping adds the noise after FedAdam's step on the un-noised mean, which "
                "does not bound a hospital's influence; use fedavg or fedprox."
            )
        inner = fs.FedAdam(
            **common,  # type: ignore[arg-type]
            eta=server.eta,
            beta_1=server.beta_1,
            beta_2=server.beta_2,
            tau=server.tau,
        )
    if server.client_dp is None:
        return inner
    from flwr.supercore.privacy_accounting import (
        NeighboringRelation,
        PrivacyConfig,
        SamplingMethod,
    )
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=delta,
            population_size=hospitals,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    return fs.DifferentialPrivacyClientSideFixedClipping(
        inner,
        noise_multiplier=server.client_dp.noise_multiplier,
        clipping_norm=server.client_dp.clip,
        num_sampled_clients=hospitals,
        accountant=accountant,
    )


def surrogate_server_app(
    model: Model,
    *,
    hospitals: int,
    rounds: int,
    server: Server | None = None,
    proximal_mu: float = 0.0,
    delta: float = DELTA,
    outcome: Outcome | None = None,
):
    """The ServerApp: `rounds` rounds of `server.strategy` over `hospitals` hospitals, every
    hospital every round, no federated evaluation (no metric leaves a hospital but its size);
    the result goes into `outcome`."""
    from flwr.app import ArrayRecord, ConfigRecord, Context
    from flwr.serverapp import Grid, ServerApp

    server = server or Server()
    if server.strategy == "fedprox" and proximal_mu <= 0:
        raise ValueError("fedprox needs proximal_mu > 0.")
    sink = outcome if outcome is not None else Outcome()
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        assert server is not None
        strategy = _strategy(server, hospitals, proximal_mu, delta)
        result = strategy.start(
            grid,
            ArrayRecord(model.arrays(model.params)),
            num_rounds=rounds,
            train_config=ConfigRecord({}),
        )
        sink.params = result.arrays.to_numpy_ndarrays()
        sink.rounds = rounds
        for metrics in result.train_metrics_clientapp.values():
            # FedAvg's metric mean weights by the same key: each hospital sends and gets
            # the same number of bytes, so the mean times the hospitals is the round's sum.
            sink.bytes_up += round(float(metrics["bytes-up"]) * hospitals)  # type: ignore[arg-type]
            sink.bytes_down += round(float(metrics["bytes-down"]) * hospitals)  # type: ignore[arg-type]
        spent = getattr(strategy, "privacy_spent", lambda: None)()
        sink.epsilon = None if spent is None else float(spent.epsilon)

    return app


# ----------------------------------------------------------------------------- SecAgg+


def secagg_client_app(
    model: Model,
    clients: Sequence[Client],
    *,
    local: LocalTraining,
    seed: int = 0,
    clip: float | None = None,
):
    """The SecAgg+ ClientApp (Flower's legacy NumPyClient API, `secaggplus_mod`): hospital
    `partition-id` trains as in `surrogate_client_app`; with `clip` (client-level DP) it
    clips its own update to that norm before SecAgg+ masks it and reports a weight of 1."""
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp

    data = list(clients)

    class Hospital(NumPyClient):
        def __init__(self, node: int):
            self.node = node

        def fit(self, parameters, config):
            client = data[self.node]
            new = _train(
                model, client, list(parameters), int(config["server-round"]), self.node,
                local, jax.random.key(seed), 0.0,
            )  # fmt: skip
            weight = len(client)
            if clip is not None:
                old = _local_params(model, list(parameters))
                update = jax.tree.map(lambda a, b: a - b, _local_params(model, new), old)
                clipped = clip_update(update, clip)
                new = model.arrays(jax.tree.map(lambda a, b: a + b, old, clipped))
                weight = 1
            return new, weight, {}

    def client_fn(context):
        return Hospital(int(context.node_config["partition-id"])).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod])


class _RoundConfig:
    """`on_fit_config_fn` of the legacy strategy: the round number for the hospitals."""

    def __call__(self, server_round: int) -> dict[str, Any]:
        return {"server-round": server_round}


def secagg_server_app(
    model: Model,
    *,
    hospitals: int,
    rounds: int,
    noise_multiplier: float | None = None,
    clip: float | None = None,
    outcome: Outcome | None = None,
    quantization_range: int = 2**22,
    clipping_range: float = 8.0,
):
    """The SecAgg+ ServerApp: FedAvg (legacy strategy) whose fit round runs through
    `SecAggPlusWorkflow` (every hospital holds a share of every other's key: `num_shares` =
    the hospitals, reconstruction threshold 2/3 of them); with `noise_multiplier` and `clip`,
    wrapped in the legacy `DifferentialPrivacyClientSideFixedClipping` (noise on the sum the
    server unmasks; the hospitals clip). Parameters must lie within +-`clipping_range` to be
    quantised (to `quantization_range` levels)."""
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    sink = outcome if outcome is not None else Outcome()
    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        strategy: Any = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=hospitals,
            min_available_clients=hospitals,
            initial_parameters=ndarrays_to_parameters(model.arrays(model.params)),
            on_fit_config_fn=_RoundConfig(),
        )
        if noise_multiplier is not None:
            if clip is None:
                raise ValueError("secagg_server_app: client-level DP needs clip.")
            strategy = DifferentialPrivacyClientSideFixedClipping(
                strategy, noise_multiplier, clip, hospitals
            )
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy
        )
        workflow = DefaultWorkflow(
            fit_workflow=SecAggPlusWorkflow(
                num_shares=hospitals if hospitals > 2 else 1.0,
                reconstruction_threshold=max(2, (2 * hospitals) // 3),
                quantization_range=quantization_range,
                clipping_range=clipping_range,
            )
        )
        workflow(grid, legacy)
        from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

        record = legacy.state.array_records[MAIN_PARAMS_RECORD]
        sink.params = record.to_numpy_ndarrays()
        sink.rounds = rounds

    return app


# ----------------------------------------------------------------------------- simulation


def simulate(server_app, client_app, hospitals: int, *, cpus_per_client: float = 1.0) -> None:
    """Run the apps through Flower's simulation engine (`run_simulation`, Ray backend), one
    virtual SuperNode per hospital (`partition-id` 0 to hospitals - 1)."""
    import logging

    from flwr.simulation import run_simulation

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=hospitals,
        backend_config={
            "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
            "init_args": {"logging_level": logging.ERROR, "log_to_driver": False},
        },
    )
