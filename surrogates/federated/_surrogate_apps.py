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

Consent: a hospital given as `HospitalRecords` (its records, its patients' IDs and its
node config: `consent-path`, `audit-log`, `audit-key`, `pseudonym-key`, as a population
fit's SuperNode) decides at the first message of a run which patients may enter
(`consented_rows`: `_population_fit.consented_ids`, `Purpose.FEDERATED_TRAINING`, opt-in, each
refusal in the hospital's own audit log) and keeps that decision in Flower's
`context.state` for the run's later rounds; patients who did not consent never enter a local
round. A hospital none of whose patients consented contributes nothing: it returns the
global parameters with `num-examples` 0, weight 0 in FedAvg's mean. Under client-level DP
its `unit-weight` stays 1: its update is zero (nothing of it in the sum), and the
equal-weight mean stays over every hospital, so the sensitivity of the mean stays C / K,
the value the noise is calibrated for (a weight of 0 would make it C / (K - 1)).

Audit: with `audit` (the server's `twins.governance.AuditLog`) the ServerApp writes one
`training-round` entry per round (`RoundAudit`: the hospitals, `hospital_count`,
`patient_count`, as the population fit does), never a patient. The SecAgg+ ServerApp writes
one per round too (`SecAggRoundAudit`): it sees only the sum, so its entry has the round, the
number of hospitals in the sum, the node IDs that dropped out, the clear-text weights' sum,
the new global model's digest and the DP and SecAgg+ settings.

The apps hand their result to the caller through `Outcome` (the final parameters, the
bytes each hospital sent and received per round, Flower's epsilon).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

for _name in ("FLWR_TELEMETRY_ENABLED", "RAY_USAGE_STATS_ENABLED"):
    os.environ.setdefault(_name, "0")  # before flwr or ray is imported: no telemetry

from collections.abc import Mapping  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from twins.governance import AuditAction, AuditLog  # noqa: E402

from ._dp import DELTA, clip_update  # noqa: E402
from ._fedavg import Client, LocalTraining, Server, local_update, round_key  # noqa: E402
from ._population_consents import read_consents  # noqa: E402
from ._population_fit import FederatedFitError, consented_ids  # noqa: E402
from ._population_worker import hospital_governance  # noqa: E402
from ._surrogate_models import Model  # noqa: E402

#: What a federated surrogate's use of a patient is, in the hospitals' audit logs.
USE = "federated surrogate training"


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
    round_log: list[dict[str, Any]] = dataclasses.field(default_factory=list)


# ----------------------------------------------------------------------------- consent


@dataclasses.dataclass(frozen=True)
class HospitalRecords:
    """One hospital's training records for a ClientApp: `name`, `client` (its records),
    `patients` (the patient ID of each record, in row order: the IDs its consent decisions
    use) and `config` (its node config: `consent-path` with `audit-log`, `audit-key`,
    `pseudonym-key`, as `_population_worker.hospital_governance` reads them; empty: no
    consent decisions, every record enters)."""

    name: str
    client: Client
    patients: tuple[str, ...]
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if len(self.patients) != len(self.client):
            raise ValueError(
                f"hospital {self.name!r}: {len(self.patients)} patient IDs for "
                f"{len(self.client)} records."
            )


_STATE_KEY = "consented-rows"


def consented_rows(records: HospitalRecords, state: Any) -> np.ndarray:
    """The rows of `records` whose patients may enter this run's local rounds.

    Decided once per run, at its first message: with a `consent-path` in `records.config`,
    `consented_ids` (the population fit's, `Purpose.FEDERATED_TRAINING` at the governance's
    time; each refusal and one `data-access` entry in the hospital's audit log) keeps the
    patients with a permit in force; every row enters without one. The rows are kept in
    Flower's `context.state` (`state`, local to the hospital), so later rounds neither ask
    nor log again. A hospital none of whose patients consented gets no rows (it contributes
    nothing; its refusals are logged)."""
    from flwr.app import Array, ArrayRecord

    if _STATE_KEY in state:
        return np.asarray(state[_STATE_KEY]["rows"].numpy(), dtype=np.int64)
    cfg = records.config
    n = len(records.client)
    if not str(cfg.get("consent-path", "")):
        rows = np.arange(n, dtype=np.int64)
    else:
        consents = read_consents(str(cfg["consent-path"]))
        governance = hospital_governance({"hospital": records.name, **cfg})
        try:
            kept, _ = consented_ids(records.name, list(records.patients), consents, governance,
                                    use=USE)  # fmt: skip
        except FederatedFitError:  # no patient consented: the refusals are logged
            kept = []
        keep = set(kept)
        rows = np.array([i for i, p in enumerate(records.patients) if p in keep], np.int64)
    state[_STATE_KEY] = ArrayRecord({"rows": Array(rows)})
    return rows


def local_records(entry: Client | HospitalRecords, state: Any) -> tuple[str, Client]:
    """A hospital's name and the records that may enter its local round."""
    if isinstance(entry, Client):
        return "", entry
    rows = consented_rows(entry, state)
    client = entry.client
    return entry.name, Client(jax.tree.map(lambda a: np.asarray(a)[rows], client.x),
                              np.asarray(client.y)[rows])  # fmt: skip


# ----------------------------------------------------------------------------- audit


class RoundAudit:
    """The server's record of each training round: `rounds` (one dict per round) and, with
    `audit`, a `training-round` entry per round in that log (`fit`, `round`, `kind`
    "train", `strategy`, the `hospitals` that contributed, `hospital_count`,
    `patient_count`, and whatever the strategy adds: rejected hospitals, bytes), as the
    population fit writes its rounds. No entry names a patient."""

    def __init__(self, audit: AuditLog | None, *, fit: str, strategy: str,
                 actor: str = "federated server", expected: int | None = None,
                 minimum: int | None = None, names: Sequence[str] = ()):  # fmt: skip
        self.audit, self.fit, self.strategy, self.actor = audit, fit, strategy, actor
        self.expected, self.names = expected, tuple(names)
        self.minimum = expected if minimum is None else minimum
        if expected is not None and not 1 <= (self.minimum or 0) <= expected:
            raise ValueError(
                f"RoundAudit: the minimum of hospitals per round must be in 1..{expected}, "
                f"got {minimum}."
            )
        self.rounds: list[dict[str, Any]] = []

    def record(self, server_round: int, contents: Sequence[Any], **extra: Any) -> None:
        """Record round `server_round` from the replies' contents (`RecordDict`s). With
        `expected` hospitals, a round that fewer than `minimum` (default: all) answered
        without error is written with `kind` "failed" and raises `FederatedFitError`
        naming the hospitals that did not answer (from `names`, when given) before its
        aggregate is used: nothing is silently averaged over missing hospitals. A round
        with at least `minimum` records the `missing` ones."""
        counts = {}
        for i, content in enumerate(contents):
            name = hospital_of(content) or f"hospital {i}"
            metrics = next(iter(content.metric_records.values()))
            counts[name] = int(metrics.get("num-examples", 0))
        contributed = [h for h, c in counts.items() if c > 0]
        if self.expected is not None and len(counts) < self.expected:
            missing = [n for n in self.names if n not in counts]
            extra = {"missing": missing, "missing_count": self.expected - len(counts), **extra}
            if len(counts) < (self.minimum or 0):
                self._failed(server_round, counts, extra)
        details = {
            "fit": self.fit,
            "round": int(server_round),
            "kind": "train",
            "strategy": self.strategy,
            "hospitals": contributed,
            "hospital_count": len(contributed),
            "patient_count": int(sum(counts.values())),
            "no_patients": [h for h, c in counts.items() if c == 0],
            **extra,
        }
        self.rounds.append(details)
        if self.audit is not None:
            self.audit.append(AuditAction.TRAINING_ROUND, actor=self.actor, details=details)

    def _failed(self, server_round: int, counts: Mapping[str, int], extra: dict) -> None:
        details = {"fit": self.fit, "round": int(server_round), "kind": "failed",
                   "strategy": self.strategy, "answered": sorted(counts), **extra}  # fmt: skip
        self.rounds.append(details)
        if self.audit is not None:
            self.audit.append(AuditAction.TRAINING_ROUND, actor=self.actor, details=details)
        missing = extra["missing"] or [f"{extra['missing_count']} hospital(s)"]
        raise FederatedFitError(
            f"round {server_round}: {len(counts)} of {self.expected} hospitals answered "
            f"(missing: {', '.join(missing)}); the round needs at least {self.minimum}, and "
            "nothing is averaged over missing hospitals.",
            hospitals=extra["missing"],
            round=int(server_round),
        )

    def not_connected(
        self, connected: int, missing: Sequence[str], waited: float, *,
        least: int | None = None, expected: int | None = None,
    ) -> None:  # fmt: skip
        """Write the next round as `kind` "failed" and raise `FederatedFitError`: only
        `connected` of the hospitals were connected for `waited` seconds (the `missing` ones,
        when known, left Flower's list of nodes between rounds). `least`, `expected`: the
        hospitals a round needs and those of the federation, where this log was not told
        (`expected` None: the strategy screens its rounds itself, as federated XGBoost's)."""
        server_round = len([r for r in self.rounds if r.get("kind") == "train"]) + 1
        if self.expected is not None:
            expected = self.expected
        expected = connected if expected is None else expected
        needed = self.minimum if self.minimum is not None else least
        extra = {"missing": list(missing), "missing_count": max(expected - connected, 0),
                 "reason": f"{connected} hospitals connected for {waited:.0f} s"}  # fmt: skip
        details = {"fit": self.fit, "round": server_round, "kind": "failed",
                   "strategy": self.strategy, "answered": [], **extra}  # fmt: skip
        self.rounds.append(details)
        if self.audit is not None:
            self.audit.append(AuditAction.TRAINING_ROUND, actor=self.actor, details=details)
        named = list(missing) or [f"{extra['missing_count']} hospital(s)"]
        raise FederatedFitError(
            f"round {server_round}: {connected} of {expected} hospitals connected for "
            f"{waited:.0f} s (missing: {', '.join(named)}); the round needs at least "
            f"{needed}, and nothing is averaged over missing hospitals.",
            hospitals=list(missing),
            round=server_round,
        )

    def check_complete(self, rounds: int) -> None:
        """`FederatedFitError` unless every one of `rounds` rounds was recorded (a round in
        which no hospital answered without error is never aggregated by Flower)."""
        done = [r for r in self.rounds if r.get("kind") == "train"]
        if self.expected is not None and len(done) < rounds:
            raise FederatedFitError(
                f"only {len(done)} of {rounds} rounds had answers from the hospitals; a round "
                "in which none answered was left out.",
                round=len(done) + 1,
            )

    def metrics_fn(self):
        """A `train_metrics_aggr_fn` for Flower's strategies: Flower's weighted mean of the
        metrics, and the round recorded (one call per round)."""
        from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

        def aggregate(contents, weight_key):
            self.record(len(self.rounds) + 1, contents)
            return aggregate_metricrecords(contents, weight_key)

        return aggregate


def hospital_of(content: Any) -> str:
    """The hospital's name a reply carries (`ConfigRecord` `"hospital"`), or ""."""
    record = content.config_records.get("hospital") if hasattr(content, "config_records") else None
    return "" if record is None else str(record.get("name", ""))


class WatchedGrid:
    """Flower's `grid` as the strategies use it, with a bound on waiting for hospitals.

    Flower's strategies start a round once `min_available_nodes` are connected, and wait
    for that without end (`strategy_utils.sample_nodes`): a SuperNode that stopped between
    rounds, and so left Flower's list of nodes, would hold the run until its overall
    timeout, unnamed. Here, once fewer than `least` nodes have been connected for `wait`
    seconds, `get_node_ids` has `audit` (a `RoundAudit`) write the round as failed and
    raise `FederatedFitError`, naming the hospitals whose nodes left (known from their
    earlier replies, which carry the hospital's name; `expected`: the federation's
    hospitals, for the message). Everything else is the grid's."""

    def __init__(
        self, grid: Any, *, least: int, wait: float, audit: RoundAudit,
        expected: int | None = None,
    ):  # fmt: skip
        self._grid, self.least, self.wait, self.audit = grid, int(least), float(wait), audit
        self.expected = expected  # the federation's hospitals, for the message
        self.names: dict[int, str] = {}  # node id -> hospital, from the replies
        self._short_since: float | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def get_node_ids(self):
        nodes = list(self._grid.get_node_ids())
        if len(nodes) >= self.least:
            self._short_since = None
            return nodes
        now = time.monotonic()
        if self._short_since is None:
            self._short_since = now
        elif now - self._short_since >= self.wait:
            gone = sorted({n for node, n in self.names.items() if node not in nodes})
            self.audit.not_connected(len(nodes), gone, now - self._short_since,
                                     least=self.least, expected=self.expected)  # fmt: skip
        return nodes

    def send_and_receive(self, messages, *args: Any, **kwargs: Any):
        replies = list(self._grid.send_and_receive(messages, *args, **kwargs))
        for reply in replies:
            if not reply.has_error() and (name := hospital_of(reply.content)):
                self.names[int(reply.metadata.src_node_id)] = name
        return replies


def _payload(record) -> int:
    """Bytes of an ArrayRecord's serialised arrays."""
    return int(sum(len(a.data) for a in record.values()))


def _local_params(model: Model, arrays) -> Any:
    return model.from_arrays(arrays)


def hospital_update(
    model: Model, client: Client, arrays: list[np.ndarray], server_round: int, node: int,
    local: LocalTraining, key: jax.Array, proximal_mu: float,
) -> list[np.ndarray]:  # fmt: skip
    """A hospital's round: `local_update` on `client`'s records from the global `arrays`,
    with hospital `node`'s key of round `server_round` (`round_key(key, server_round,
    node)`, as `federated_training` draws it) and FedProx's `proximal_mu` (0: none).
    Returns the new parameters as arrays. The ClientApps of the simulation and the
    hospitals' workers of the deployment engine (`_surrogate_worker`) both call it."""
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
    clients: Sequence[Client | HospitalRecords],
    *,
    local: LocalTraining,
    seed: int = 0,
    client_dp: bool = False,
):
    """The ClientApp of hospital `partition-id` (its records: `clients[partition-id]`; a
    `HospitalRecords` applies its patients' consent first, `consented_rows`)."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.clientapp.mod import fixedclipping_mod

    data = list(clients)
    app = ClientApp(mods=[fixedclipping_mod] if client_dp else [])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        node = int(context.node_config["partition-id"])
        name, client = local_records(data[node], context.state)
        received = msg.content["arrays"]
        config = msg.content["config"]
        assert isinstance(received, ArrayRecord)
        arrays = received.to_numpy_ndarrays()
        if len(client) == 0:  # no patient may enter: the global parameters, weight 0
            new = arrays
        else:
            new = hospital_update(
                model, client, arrays, int(config["server-round"]), node, local,  # type: ignore[arg-type]
                jax.random.key(seed), float(config.get("proximal-mu", 0.0)),  # type: ignore[arg-type]
            )  # fmt: skip
        reply_arrays = ArrayRecord(
            dict(zip(received.keys(), ArrayRecord(new).values(), strict=True))
        )
        metrics = MetricRecord(
            {
                "num-examples": len(client),
                "unit-weight": 1,  # also without patients: see the module docstring
                "bytes-down": _payload(received),
                "bytes-up": _payload(reply_arrays),
            }
        )
        content = RecordDict({"arrays": reply_arrays, "metrics": metrics})
        if name:
            content["hospital"] = ConfigRecord({"name": name})
        return Message(content, reply_to=msg)

    return app


def _strategy(
    server: Server, hospitals: int, proximal_mu: float, delta: float,
    rounds: RoundAudit | None = None, min_hospitals: int | None = None,
):  # fmt: skip
    from flwr.serverapp import strategy as fs

    weight = "unit-weight" if server.client_dp is not None else "num-examples"
    # Every connected hospital each round; a round starts once `min_hospitals` are connected
    # (a SuperNode that stopped leaves Flower's list of nodes: waiting for all would wait
    # for ever), and `RoundAudit` fails a round with fewer replies than that.
    least = hospitals if min_hospitals is None else int(min_hospitals)
    common: dict[str, Any] = {
        "fraction_train": 1.0,
        "fraction_evaluate": 0.0,
        "min_train_nodes": least,
        "min_available_nodes": least,
        "weighted_by_key": weight,
    }
    if rounds is not None:
        common["train_metrics_aggr_fn"] = rounds.metrics_fn()
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
    audit: AuditLog | None = None,
    fit: str = "federated surrogate",
    min_hospitals: int | None = None,
):
    """The ServerApp: `rounds` rounds of `server.strategy` over `hospitals` hospitals, every
    hospital every round, no federated evaluation (no metric leaves a hospital but its size);
    the result goes into `outcome`, each round into `audit` (`RoundAudit`) and
    `outcome.round_log`. A round answered by fewer than `min_hospitals` (default: all)
    fails (`serve_surrogate`)."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    server = server or Server()
    if server.strategy == "fedprox" and proximal_mu <= 0:
        raise ValueError("fedprox needs proximal_mu > 0.")
    sink = outcome if outcome is not None else Outcome()
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        assert server is not None
        serve_surrogate(grid, model, hospitals=hospitals, rounds=rounds, server=server,
                        proximal_mu=proximal_mu, delta=delta, outcome=sink, audit=audit,
                        fit=fit, min_hospitals=min_hospitals)  # fmt: skip

    return app


def serve_surrogate(
    grid: Any,
    model: Model,
    *,
    hospitals: int,
    rounds: int,
    server: Server,
    proximal_mu: float = 0.0,
    delta: float = DELTA,
    outcome: Outcome,
    audit: AuditLog | None = None,
    fit: str = "federated surrogate",
    min_hospitals: int | None = None,
    names: Sequence[str] = (),
    round_timeout: float = 3600.0,
) -> Outcome:
    """The body of the surrogates' ServerApp on Flower's `grid` (simulation or deployment
    engine): `rounds` rounds of `server.strategy` from `model.params`, each round into
    `audit` (`RoundAudit`); the final parameters, bytes and Flower's epsilon into
    `outcome`, which is returned. A round answered by fewer than `min_hospitals` (default:
    every hospital) raises `FederatedFitError` naming the missing ones (from `names`, the
    hospitals' names, when given) before its aggregate is used (`RoundAudit`);
    `round_timeout`: seconds the server waits for a round's replies (Flower's `timeout`)."""
    from flwr.app import ArrayRecord, ConfigRecord

    if server.strategy == "fedprox" and proximal_mu <= 0:
        raise ValueError("fedprox needs proximal_mu > 0.")
    log = RoundAudit(audit, fit=fit, strategy=server.strategy, expected=hospitals,
                     minimum=min_hospitals, names=names)  # fmt: skip
    outcome.round_log = log.rounds
    if server.client_dp is not None and min_hospitals is not None and min_hospitals < hospitals:
        raise ValueError(
            f"client-level DP with min_hospitals={min_hospitals} < {hospitals} hospitals: the "
            "noise is calibrated to the equal-weight mean over every hospital; a round over "
            "fewer would have a larger sensitivity than the accountant assumes."
        )
    strategy = _strategy(server, hospitals, proximal_mu, delta, log, min_hospitals)
    least = hospitals if min_hospitals is None else int(min_hospitals)
    result = strategy.start(
        WatchedGrid(grid, least=least, wait=float(round_timeout), audit=log),
        ArrayRecord(model.arrays(model.params)),
        num_rounds=rounds,
        timeout=float(round_timeout),
        train_config=ConfigRecord({}),
    )
    log.check_complete(rounds)
    outcome.params = result.arrays.to_numpy_ndarrays()
    outcome.rounds = rounds
    for metrics in result.train_metrics_clientapp.values():
        # FedAvg's metric mean weights by the same key: each hospital sends and gets
        # the same number of bytes, so the mean times the hospitals is the round's sum.
        outcome.bytes_up += round(float(metrics["bytes-up"]) * hospitals)  # type: ignore[arg-type]
        outcome.bytes_down += round(float(metrics["bytes-down"]) * hospitals)  # type: ignore[arg-type]
    spent = getattr(strategy, "privacy_spent", lambda: None)()
    outcome.epsilon = None if spent is None else float(spent.epsilon)
    return outcome


# ----------------------------------------------------------------------------- SecAgg+


def secagg_client_app(
    model: Model,
    clients: Sequence[Client | HospitalRecords],
    *,
    local: LocalTraining,
    seed: int = 0,
    clip: float | None = None,
):
    """The SecAgg+ ClientApp (Flower's legacy NumPyClient API, `secaggplus_mod`): hospital
    `partition-id` trains as in `surrogate_client_app`, on the records of its consenting
    patients only (a `HospitalRecords` applies its patients' consent first, decided and
    logged once per run, `consented_rows`); with `clip` (client-level DP) it clips its own
    update to that norm before SecAgg+ masks it and reports a weight of 1. A hospital none
    of whose patients may enter sends the global parameters back unchanged, with weight 0
    (1 under client-level DP: a zero update)."""
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp

    data = list(clients)

    def client_fn(context):
        node = int(context.node_config["partition-id"])
        return secagg_hospital(
            model, data[node], node, context.state, local=local, seed=seed, clip=clip
        ).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod])


def secagg_hospital(
    model: Model,
    entry: Client | HospitalRecords,
    node: int,
    state: Any,
    *,
    local: LocalTraining,
    seed: int = 0,
    clip: float | None = None,
):
    """The `NumPyClient` of one hospital of `secagg_client_app` (node `node`; `state`, the
    run's node state that Flower keeps between rounds, holds its consent decision)."""
    from flwr.client import NumPyClient

    class Hospital(NumPyClient):
        def fit(self, parameters, config):
            _, client = local_records(entry, state)
            if len(client) == 0:  # no patient may enter
                return list(parameters), (1 if clip is not None else 0), {}
            new = hospital_update(
                model, client, list(parameters), int(config["server-round"]), node,
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

    return Hospital()


def parameter_digest(arrays: Sequence[np.ndarray]) -> str:
    """`"sha256:<hex>"` of a model's parameter arrays: SHA-256 over, array by array in
    order, `"<dtype.str><shape>"` (e.g. `"<f4(8, 6)"`) as ASCII followed by the array's
    C-order bytes. Names the global model of a round in the audit log without holding it."""
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode("ascii"))
        h.update(a.tobytes())
    return "sha256:" + h.hexdigest()


class SecAggRoundAudit:
    """What the SecAgg+ server knows of each round, in its audit log.

    Flower's `SecAggPlusWorkflow` hands the strategy only the unmasked sum (every reply's
    parameters replaced by it), but the server still knows the round, the node IDs it asked
    (`configure_fit`), those whose masked vector entered the sum (the replies' proxies), the
    weight each sent in the clear (`num_examples`: its consenting patients' count, or 1
    under client-level DP), the failures, the new global model and the settings. `wrap`
    puts a legacy `Strategy` around the server's strategy that writes one `training-round`
    entry per round (`fit`, `round`, `kind` "train", `strategy`, `secure_aggregation`
    "secagg+", `hospital_count`, `sampled_count`, `node_ids` and `dropped_node_ids`
    (Flower's node IDs as strings: they exceed JSON's 2^53), `no_patient_node_ids` (weight
    0), `failures`, `patient_count` (the weights' sum; None under client-level DP, where
    the weights are 1), `parameter_digest` of the new global model (`parameter_digest`,
    after the DP noise), `dp` (`unit` "client", `noise_multiplier`, `clip`; or None) and
    `secagg` (shares, threshold, quantisation)). A round that was asked for but never
    aggregated (SecAgg+ halts when too few hospitals are left to unmask the sum) gets an
    entry of `kind` "halted" at the next round or at `finish`. No entry names a patient or
    a hospital: the server does not see which hospital a node is."""

    def __init__(
        self,
        audit: AuditLog | None,
        *,
        fit: str,
        dp: Mapping[str, Any] | None,
        secagg: Mapping[str, Any],
        actor: str = "federated server",
    ):
        self.audit, self.fit, self.actor = audit, fit, actor
        self.dp = None if dp is None else dict(dp)
        self.secagg = dict(secagg)
        self.rounds: list[dict[str, Any]] = []
        self._sampled: dict[int, list[str]] = {}

    def _write(self, details: dict[str, Any]) -> None:
        self.rounds.append(details)
        if self.audit is not None:
            self.audit.append(AuditAction.TRAINING_ROUND, actor=self.actor, details=details)

    def _base(self, server_round: int, kind: str) -> dict[str, Any]:
        return {"fit": self.fit, "round": int(server_round), "kind": kind,
                "strategy": "fedavg", "secure_aggregation": "secagg+"}  # fmt: skip

    def configured(self, server_round: int, node_ids: Sequence[int]) -> None:
        """Round `server_round` asked the nodes `node_ids` (a halted earlier round is
        written now)."""
        self.finish()
        self._sampled[int(server_round)] = sorted(str(int(n)) for n in node_ids)

    def aggregated(
        self,
        server_round: int,
        weights: Mapping[int, float],
        failures: int,
        params: Sequence[np.ndarray] | None,
    ) -> None:
        """Round `server_round`'s sum entered the strategy: `weights` (node ID -> the weight
        it sent), `failures`, and the new global parameters `params` (None: no update)."""
        sampled = self._sampled.pop(int(server_round), [])
        took = sorted(str(int(n)) for n in weights)
        weight = {str(int(n)): float(w) for n, w in weights.items()}
        details = self._base(server_round, "train") | {
            "hospital_count": len(took),
            "sampled_count": len(sampled),
            "node_ids": took,
            "dropped_node_ids": [n for n in sampled if n not in took],
            "no_patient_node_ids": [n for n in took if weight[n] == 0],
            "failures": int(failures),
            "patient_count": None if self.dp is not None else int(sum(weight.values())),
            "parameter_digest": None if params is None else parameter_digest(params),
            "dp": self.dp,
            "secagg": self.secagg,
        }
        self._write(details)

    def finish(self) -> None:
        """Write the rounds asked for but never aggregated (`kind` "halted")."""
        for server_round in sorted(self._sampled):
            sampled = self._sampled.pop(server_round)
            self._write(self._base(server_round, "halted") | {
                "hospital_count": 0, "sampled_count": len(sampled), "node_ids": [],
                "dropped_node_ids": sampled, "parameter_digest": None, "dp": self.dp,
                "secagg": self.secagg,
            })  # fmt: skip

    def wrap(self, strategy: Any) -> Any:
        """A legacy Flower `Strategy` that delegates every call to `strategy` and records
        each round (`configured` at `configure_fit`, `aggregated` after `aggregate_fit`)."""
        from flwr.common import parameters_to_ndarrays
        from flwr.server.strategy import Strategy

        log = self

        class Audited(Strategy):
            def initialize_parameters(self, client_manager):
                return strategy.initialize_parameters(client_manager)

            def configure_fit(self, server_round, parameters, client_manager):
                pairs = strategy.configure_fit(server_round, parameters, client_manager)
                log.configured(server_round, [proxy.node_id for proxy, _ in pairs])
                return pairs

            def aggregate_fit(self, server_round, results, failures):
                params, metrics = strategy.aggregate_fit(server_round, results, failures)
                weights = {proxy.node_id: res.num_examples for proxy, res in results}
                arrays = None if params is None else parameters_to_ndarrays(params)
                log.aggregated(server_round, weights, len(failures), arrays)
                return params, metrics

            def configure_evaluate(self, server_round, parameters, client_manager):
                return strategy.configure_evaluate(server_round, parameters, client_manager)

            def aggregate_evaluate(self, server_round, results, failures):
                return strategy.aggregate_evaluate(server_round, results, failures)

            def evaluate(self, server_round, parameters):
                return strategy.evaluate(server_round, parameters)

        return Audited()


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
    audit: AuditLog | None = None,
    fit: str = "federated surrogate (SecAgg+)",
):
    """The SecAgg+ ServerApp: FedAvg (legacy strategy) whose fit round runs through
    `SecAggPlusWorkflow` (every hospital holds a share of every other's key: `num_shares` =
    the hospitals, reconstruction threshold 2/3 of them); with `noise_multiplier` and `clip`,
    wrapped in the legacy `DifferentialPrivacyClientSideFixedClipping` (noise on the sum the
    server unmasks; the hospitals clip). Parameters must lie within +-`clipping_range` to be
    quantised (to `quantization_range` levels). Each round goes into `audit` and
    `outcome.round_log` (`SecAggRoundAudit`: the round, how many hospitals' masked updates
    entered the sum, the node IDs that dropped out, the new model's digest, the DP and
    SecAgg+ settings; no patient, no hospital's update)."""
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
        secagg = {
            "num_shares": hospitals if hospitals > 2 else 1.0,
            "reconstruction_threshold": max(2, (2 * hospitals) // 3),
            "quantization_range": int(quantization_range),
            "clipping_range": float(clipping_range),
        }
        dp = None
        if noise_multiplier is not None:
            dp = {"unit": "client", "noise_multiplier": float(noise_multiplier),
                  "clip": float(clip)}  # type: ignore[arg-type]  # fmt: skip
        log = SecAggRoundAudit(audit, fit=fit, dp=dp, secagg=secagg)
        sink.round_log = log.rounds
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=rounds), strategy=log.wrap(strategy)
        )
        workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(**secagg))
        workflow(grid, legacy)
        log.finish()
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
