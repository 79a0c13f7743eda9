"""Federated XGBoost on the drug-response task: Flower's tree-based strategies
(`FedXgbBagging`, `FedXgbCyclic` of `flwr.serverapp.strategy`, Flower 1.42) with a ClientApp
per hospital that boosts on its own patients.

XGBoost: Chen T, Guestrin C. XGBoost: a scalable tree boosting system. KDD 2016:785-794.
The tree-based federation follows Flower's XGBoost strategies (Flower's documentation,
"Federated XGBoost", and its `fedxgb_bagging` / `fedxgb_cyclic` code; bagging of boosted
trees across parties as in Ma C et al. Gradient-less federated gradient boosting trees with
learnable learning rates. EuroMLSys 2023).

- **Bagging** (`FedXgbBagging`): in round 1 every hospital grows one tree from nothing; from
  round 2 each loads the global model, grows one more tree on its own patients (one
  boosting round: Flower's `aggregate_bagging` appends `num_parallel_tree` trees of each
  reply) and sends only that tree. The server appends every hospital's tree to the global
  model, so a round adds K trees. Flower's quickstart gives each tree the full learning
  rate, so a round moves K times as far as a centralised boosting round; here the server
  sends each hospital the learning rate eta / K (`Boosting.scale_by_hospitals`), so that a
  round of K trees is the mean of K Newton steps, comparable with one centralised round.
- **Cyclic** (`FedXgbCyclic`): one hospital per round, in turn; it boosts `local_rounds`
  rounds on top of the global model at the full learning rate and sends the whole model,
  which becomes the global one.

The server checks every reply before it is aggregated (`check_model`): JSON that XGBoost
wrote, `binary:logistic`, the agreed number of features, base score and number of new
trees, feature indices in range, every leaf finite and within eta x `max_delta_step` (the
bound XGBoost puts on a leaf), and for cyclic the earlier trees unchanged. A reply that
fails is **rejected and named** (the hospital, the round, why) in the log, the `Outcome`
and the audit; the round goes on with the others if at least `min_hospitals` are left,
otherwise it fails with a `FederatedFitError` naming them. A hospital with no consenting
patient contributes nothing (`num-examples` 0; `_surrogate_apps.consented_rows`).

**No differential privacy.** Nothing here adds noise: the server (and, through the global
model, every hospital) sees each hospital's trees as they are: every split's feature and
threshold, which with the `hist` method is one of the hospital's patients' own values, the
leaf values, and each node's `sum_hessian`, the sum of p(1 - p) over the patients in that
node: in round 1 (p = 0.5 for everyone) that is a quarter of the number of the hospital's
patients in each node, exactly (docs/federated-privacy.md, tested). SecAgg+ cannot hide
trees (they are appended, not summed). Use bagging XGBoost only where the hospitals accept
that the server sees such counts and thresholds.

`bagging_training` / `cyclic_training` run the same rounds without Flower (the same
`local_boost` and Flower's own `aggregate_bagging`), so a Flower run gives the same trees
(appended in the order the replies arrive: a prediction's float32 sum may differ in its
last bit); `centralised` boosts on the pooled patients; `xgb_rows` gives Table 3's rows.
`fit_xgb_federated` (`_xgb_run`) runs it on Flower's deployment engine.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from twins.governance import AuditLog

from ._fedavg import Client
from ._population_fit import FederatedFitError
from ._surrogate_apps import (
    HospitalRecords,
    RoundAudit,
    WatchedGrid,
    hospital_of,
    local_records,
)
from ._xgb_client import local_boost, params_from

log = logging.getLogger("surrogates.federated.xgboost")

XgbStrategy = Literal["bagging", "cyclic"]
#: The base score (probability) every model starts from: fixed, not estimated from a
#: hospital's data (XGBoost 3 estimates it from the first data it sees; the first hospital
#: to reply would then set it for everyone).
BASE_SCORE = 0.5


@dataclasses.dataclass(frozen=True)
class Boosting:
    """The trees' settings, the same at every hospital and for the centralised model
    (chosen once, not tuned on the held-out patients).

    - `max_depth` (4), `learning_rate` eta (0.3), `min_child_weight` (1), `reg_lambda` (1):
      XGBoost's; `max_delta_step` (1): the cap on a leaf's Newton step, so that every leaf
      lies within eta x `max_delta_step` (the server's check of an oversized reply).
    - `local_rounds`: boosting rounds per visit under cyclic (bagging: 1, Flower's).
    - `scale_by_hospitals`: bagging's trees get eta / K (see the module docstring).
    - `threads`: XGBoost's threads (1: the cores are shared).
    """

    max_depth: int = 4
    learning_rate: float = 0.3
    min_child_weight: float = 1.0
    reg_lambda: float = 1.0
    max_delta_step: float = 1.0
    local_rounds: int = 1
    scale_by_hospitals: bool = True
    threads: int = 1

    def __post_init__(self):
        if int(self.local_rounds) != self.local_rounds or self.local_rounds < 1:
            raise ValueError(
                f"Boosting.local_rounds must be an integer >= 1, got {self.local_rounds}."
            )
        if not (self.learning_rate > 0 and self.max_delta_step > 0):
            raise ValueError("Boosting.learning_rate and max_delta_step must be > 0.")

    def params(self, learning_rate: float | None = None, *, seed: int = 0) -> dict[str, Any]:
        """XGBoost's parameters (`learning_rate` overrides eta)."""
        return {
            "objective": "binary:logistic",
            "eval_metric": "logloss",
            "tree_method": "hist",
            "base_score": BASE_SCORE,
            "eta": float(self.learning_rate if learning_rate is None else learning_rate),
            "max_depth": int(self.max_depth),
            "min_child_weight": float(self.min_child_weight),
            "lambda": float(self.reg_lambda),
            "max_delta_step": float(self.max_delta_step),
            "nthread": int(self.threads),
            "seed": int(seed),
        }

    def max_leaf(self, learning_rate: float | None = None) -> float:
        """The largest leaf value XGBoost can write: eta x `max_delta_step`."""
        eta = self.learning_rate if learning_rate is None else learning_rate
        return float(eta * self.max_delta_step)


# ----------------------------------------------------------------------------- local work


def predict(model: bytes, x: np.ndarray) -> np.ndarray:
    """The model's probabilities for the records `x`."""
    import xgboost as xgb

    bst = xgb.Booster(params={"nthread": 1}, model_file=bytearray(model))
    return np.asarray(bst.predict(xgb.DMatrix(np.asarray(x, dtype=float))), dtype=float)


def trees_of(model: bytes) -> list[dict[str, Any]]:
    """The trees of an XGBoost JSON model, as XGBoost wrote them (what a server sees)."""
    return json.loads(model)["learner"]["gradient_booster"]["model"]["trees"]


def check_model(
    model: bytes, *, n_features: int, new_trees: int, max_leaf: float,
    previous: bytes | None = None,
) -> int:  # fmt: skip
    """Check a hospital's reply; `ValueError` saying what is wrong. `new_trees`: the trees
    it must hold (bagging), or add to `previous` (cyclic: `previous`'s trees unchanged).
    Returns its number of trees."""
    try:
        doc = json.loads(bytes(model))
        learner = doc["learner"]
        booster = learner["gradient_booster"]
        trees = booster["model"]["trees"]
        objective = learner["objective"]["name"]
        features = int(learner["learner_model_param"]["num_feature"])
        base = float(str(learner["learner_model_param"]["base_score"]).strip("[]"))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise ValueError(f"not an XGBoost JSON model ({type(error).__name__}: {error})") from None
    if booster.get("name") != "gbtree" or objective != "binary:logistic":
        raise ValueError(
            f"a {booster.get('name')!r} model of {objective!r}, expected gbtree of "
            "'binary:logistic'"
        )
    if features != n_features:
        raise ValueError(f"{features} features, expected {n_features}")
    if not math.isclose(base, BASE_SCORE, rel_tol=0, abs_tol=1e-7):
        raise ValueError(f"base score {base}, expected {BASE_SCORE}")
    old = [] if previous is None else trees_of(previous)
    if len(trees) != len(old) + new_trees:
        raise ValueError(f"{len(trees)} trees, expected {len(old) + new_trees}")
    for i, (mine, theirs) in enumerate(zip(trees, old, strict=False)):
        if _tree_values(mine) != _tree_values(theirs):
            raise ValueError(f"tree {i} of the global model was changed")
    for i, tree in enumerate(trees[len(old) :], start=len(old)):
        try:
            left = np.asarray(tree["left_children"])
            split = np.asarray(tree["split_indices"])
            value = np.asarray(tree["split_conditions"], dtype=float)
            base_w = np.asarray(tree["base_weights"], dtype=float)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"tree {i} cannot be read ({type(error).__name__})") from None
        if not (np.all(np.isfinite(value)) and np.all(np.isfinite(base_w))):
            raise ValueError(f"tree {i} holds a value that is not finite")
        inner = left != -1
        if np.any(split[inner] < 0) or np.any(split[inner] >= n_features):
            raise ValueError(f"tree {i} splits on a feature outside 0-{n_features - 1}")
        leaves = value[~inner]
        if leaves.size and np.max(np.abs(leaves)) > max_leaf * (1 + 1e-6):
            raise ValueError(
                f"tree {i} has a leaf of {np.max(np.abs(leaves)):.4g}, beyond eta x "
                f"max_delta_step = {max_leaf:.4g}"
            )
    return len(trees)


def _tree_values(tree: Mapping[str, Any]) -> tuple:
    keys = ("left_children", "right_children", "split_indices", "split_conditions")
    return tuple(tuple(tree[k]) for k in keys)


@dataclasses.dataclass
class XgbOutcome:
    """What the XGBoost ServerApp leaves for its caller: `model` (XGBoost JSON), `rounds`,
    `bytes_up` / `bytes_down` (the model payload the hospitals sent / received, summed over
    rounds and hospitals), `rejected` (round -> {hospital: why}), `round_log`
    (`RoundAudit.rounds`) and `error` (why the run stopped, or None)."""

    model: bytes = b""
    rounds: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    rejected: dict[int, dict[str, str]] = dataclasses.field(default_factory=dict)
    round_log: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    error: str | None = None


# ----------------------------------------------------------------------------- without Flower


def train_config(
    boosting: Boosting, strategy: XgbStrategy, hospitals: int, *, seed: int = 0
) -> dict[str, Any]:
    """What the server sends every hospital each round: the learning rate (eta / K under
    bagging with `scale_by_hospitals`), the local rounds, the strategy, and XGBoost's
    parameters as `xgb-<name>` (the same trees' settings at every hospital)."""
    eta = _eta(boosting, strategy, hospitals)
    params = boosting.params(eta, seed=seed)
    return {
        "learning-rate": eta,
        "local-rounds": 1 if strategy == "bagging" else boosting.local_rounds,
        "strategy": strategy,
        **{f"xgb-{k}": v for k, v in params.items() if k != "eta"},
    }


def _eta(boosting: Boosting, strategy: XgbStrategy, hospitals: int) -> float:
    if strategy == "bagging" and boosting.scale_by_hospitals:
        return boosting.learning_rate / hospitals
    return boosting.learning_rate


def bagging_training(
    clients: Sequence[Client], *, rounds: int, boosting: Boosting = Boosting(), seed: int = 0
) -> XgbOutcome:
    """Bagging without Flower: the rounds of the Flower apps (every hospital every round,
    `local_boost` from the global model, Flower's `aggregate_bagging` in the order of
    `clients`; a hospital without records contributes nothing). Returns the global model
    and the payload each way (each hospital gets the global model, sends its new tree)."""
    from flwr.serverapp.strategy.strategy_utils import aggregate_bagging

    params = boosting.params(_eta(boosting, "bagging", len(clients)), seed=seed)
    out = XgbOutcome(rounds=rounds)
    model = b""
    for _ in range(rounds):
        new = model
        for c in clients:
            out.bytes_down += len(model)
            if len(c):
                tree = local_boost(model, c.x, c.y, params, 1, new_only=True)
                out.bytes_up += len(tree)
                new = aggregate_bagging(new, tree)
        model = new
    out.model = model
    return out


def cyclic_training(
    clients: Sequence[Client], *, rounds: int, boosting: Boosting = Boosting(), seed: int = 0
) -> XgbOutcome:
    """Cyclic without Flower: round r visits hospital (r - 1) mod K, which boosts
    `local_rounds` rounds on the global model and sends it back whole (a hospital without
    records passes it on)."""
    params = boosting.params(seed=seed)
    out = XgbOutcome(rounds=rounds)
    model = b""
    for r in range(rounds):
        c = clients[r % len(clients)]
        out.bytes_down += len(model)
        if len(c):
            model = local_boost(model, c.x, c.y, params, boosting.local_rounds, new_only=False)
        out.bytes_up += len(model)
    out.model = model
    return out


def centralised(
    client: Client, *, rounds: int, boosting: Boosting = Boosting(), seed: int = 0
) -> bytes:
    """XGBoost on the pooled records: `rounds` boosting rounds at the full learning rate."""
    return local_boost(b"", client.x, client.y, boosting.params(seed=seed), rounds, new_only=False)


# ----------------------------------------------------------------------------- Flower apps


def _array_bytes(content: Any) -> bytes:
    record = next(iter(content.array_records.values()))
    return bytes(np.asarray(record["0"].numpy(), dtype=np.uint8).tobytes())


def _screen(
    strategy: XgbStrategy, server_round: int, replies: Sequence[Any], *, n_features: int,
    boosting: Boosting, eta: float, previous: bytes, min_hospitals: int, sink: XgbOutcome,
    audit: RoundAudit,
) -> list[Any]:  # fmt: skip
    """The replies that may be aggregated; the rejected ones logged and named; a
    `FederatedFitError` when fewer than `min_hospitals` (bagging) remain."""
    kept, contents, rejected = [], [], {}
    for msg in replies:
        if msg.has_error():
            rejected[f"node {msg.metadata.src_node_id}"] = (
                f"its ClientApp failed ({msg.error.reason})"
            )
            continue
        content = msg.content
        name = hospital_of(content) or f"node {msg.metadata.src_node_id}"
        try:
            metrics = next(iter(content.metric_records.values()))
            n = int(metrics["num-examples"])
            data = _array_bytes(content)
            sink.bytes_up += len(data)
            if n > 0:
                check_model(
                    data, n_features=n_features, max_leaf=boosting.max_leaf(eta),
                    new_trees=1 if strategy == "bagging" else boosting.local_rounds,
                    previous=previous if strategy == "cyclic" and previous else None,
                )  # fmt: skip
            elif strategy == "cyclic" and data != previous:
                raise ValueError("no patients, yet it changed the model")
        except (ValueError, KeyError, TypeError, StopIteration) as error:
            rejected[name] = str(error)
            log.warning(
                "round %d: the reply of hospital %r was rejected: %s", server_round, name, error
            )
            continue
        contents.append(content)
        if n > 0 or strategy == "cyclic":
            kept.append(msg)
    if rejected:
        sink.rejected[server_round] = rejected
    contributing = [
        c for c in contents if int(next(iter(c.metric_records.values()))["num-examples"]) > 0
    ]
    # Bagging needs `min_hospitals` accepted models; cyclic's one hospital must not be
    # rejected (a hospital without patients passes the model on).
    short = len(contributing) < min_hospitals if strategy == "bagging" else bool(rejected)
    if short:
        audit.record(server_round, contents, outcome="failed", rejected=rejected)
        raise FederatedFitError(
            f"round {server_round}: {len(contributing)} hospital(s) with an accepted model "
            f"(the minimum is {min_hospitals if strategy == 'bagging' else 1}); rejected: "
            + ("; ".join(f"{h}: {why}" for h, why in rejected.items()) or "none"),
            hospitals=list(rejected),
            round=server_round,
        )
    audit.record(server_round, contents, rejected=rejected)
    return kept


def _checked_strategy(
    strategy: XgbStrategy, *, hospitals: int, n_features: int, boosting: Boosting,
    min_hospitals: int, sink: XgbOutcome, audit: RoundAudit,
):  # fmt: skip
    """Flower's FedXgbBagging / FedXgbCyclic, each reply screened (`_screen`) first."""
    from flwr.serverapp.strategy import FedXgbBagging, FedXgbCyclic

    eta = _eta(boosting, strategy, hospitals)

    class CheckedBagging(FedXgbBagging):
        def configure_train(self, server_round, arrays, config, grid):
            messages = list(super().configure_train(server_round, arrays, config, grid))
            sink.bytes_down += len(self.current_bst or b"") * len(messages)
            return messages

        def aggregate_train(self, server_round, replies):
            kept = _screen("bagging", server_round, list(replies), n_features=n_features,
                           boosting=boosting, eta=eta, previous=self.current_bst or b"",
                           min_hospitals=min_hospitals, sink=sink, audit=audit)  # fmt: skip
            return super().aggregate_train(server_round, kept)

    class CheckedCyclic(FedXgbCyclic):
        current: bytes = b""

        def configure_train(self, server_round, arrays, config, grid):
            self.current = bytes(np.asarray(arrays["0"].numpy(), np.uint8).tobytes())
            messages = list(super().configure_train(server_round, arrays, config, grid))
            sink.bytes_down += len(self.current) * len(messages)
            return messages

        def aggregate_train(self, server_round, replies):
            kept = _screen("cyclic", server_round, list(replies), n_features=n_features,
                           boosting=boosting, eta=eta, previous=self.current,
                           min_hospitals=1, sink=sink, audit=audit)  # fmt: skip
            return super().aggregate_train(server_round, kept)

    # Bagging: a round starts once `min_hospitals` are connected (a SuperNode that stopped
    # leaves Flower's list of nodes: waiting for all would wait for ever) and takes every
    # connected one; cyclic waits for all (its turns go round every hospital).
    if strategy == "bagging":
        common = {"fraction_evaluate": 0.0, "min_available_nodes": min_hospitals}
        return CheckedBagging(fraction_train=1.0, min_train_nodes=min_hospitals, **common)  # type: ignore[arg-type]
    common = {"fraction_evaluate": 0.0, "min_available_nodes": hospitals}
    return CheckedCyclic(fraction_train=1.0, **common)  # type: ignore[arg-type]


def serve_xgb(
    grid: Any,
    *,
    hospitals: int,
    rounds: int,
    n_features: int,
    strategy: XgbStrategy = "bagging",
    boosting: Boosting = Boosting(),
    min_hospitals: int | None = None,
    outcome: XgbOutcome | None = None,
    audit: AuditLog | None = None,
    fit: str = "federated XGBoost",
    seed: int = 0,
    round_timeout: float = 3600.0,
) -> XgbOutcome:
    """The ServerApp's work over Flower's `grid`: `rounds` rounds of Flower's
    `FedXgbBagging` (every hospital every round) or `FedXgbCyclic` (one a round) over
    `hospitals` hospitals, each reply checked (`check_model`), no federated evaluation.
    `min_hospitals` (bagging): the accepted models a round needs (default: a majority,
    K // 2 + 1). The result goes into `outcome` (returned), each round into `audit`
    (`RoundAudit`); `FederatedFitError` naming the rejected hospitals when a round has
    too few.

    `round_timeout`: seconds the server waits for a round's replies (Flower's `timeout`:
    a hospital whose SuperNode died mid-round is then missing from the round, which goes
    on if enough are left), and for enough hospitals to be connected before a round
    (`_surrogate_apps.WatchedGrid`: `min_hospitals` for bagging, all of them for cyclic,
    whose turn order needs every hospital), after which the round fails naming the
    hospitals whose SuperNodes left. Flower itself would wait without end."""
    from flwr.app import ArrayRecord, ConfigRecord

    if strategy not in ("bagging", "cyclic"):
        raise ValueError(f"strategy must be 'bagging' or 'cyclic', got {strategy!r}.")
    need = hospitals // 2 + 1 if min_hospitals is None else int(min_hospitals)
    if not 1 <= need <= hospitals:
        raise ValueError(f"min_hospitals must be in 1-{hospitals}, got {need}.")
    sink = outcome if outcome is not None else XgbOutcome()
    log_rounds = RoundAudit(audit, fit=fit, strategy=f"fedxgb-{strategy}")
    sink.round_log = log_rounds.rounds
    strat = _checked_strategy(strategy, hospitals=hospitals, n_features=n_features,
                              boosting=boosting, min_hospitals=need, sink=sink,
                              audit=log_rounds)  # fmt: skip
    least = need if strategy == "bagging" else hospitals
    watched = WatchedGrid(
        grid, least=least, wait=float(round_timeout), audit=log_rounds, expected=hospitals
    )
    try:
        result = strat.start(
            watched,
            ArrayRecord([np.frombuffer(b"", dtype=np.uint8)]),
            num_rounds=rounds,
            timeout=float(round_timeout),
            train_config=ConfigRecord(train_config(boosting, strategy, hospitals, seed=seed)),
        )
    except FederatedFitError as error:
        sink.error = str(error)
        raise
    sink.model = bytes(np.asarray(result.arrays["0"].numpy(), np.uint8).tobytes())
    sink.rounds = rounds
    return sink


def xgb_server_app(*, outcome: XgbOutcome | None = None, **options: Any):
    """The ServerApp of `serve_xgb` (its keyword arguments), its result in `outcome`."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    sink = outcome if outcome is not None else XgbOutcome()
    strategy = options.get("strategy", "bagging")
    if strategy not in ("bagging", "cyclic"):
        raise ValueError(f"strategy must be 'bagging' or 'cyclic', got {strategy!r}.")
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        serve_xgb(grid, outcome=sink, **options)

    return app


def xgb_client_app(clients: Sequence[Client | HospitalRecords]):
    """The ClientApp of hospital `partition-id` (its records `clients[partition-id]`; a
    `HospitalRecords` applies its patients' consent first): boosts on its own consenting
    patients from the global model with the parameters, learning rate and rounds the server
    sends (`train_config`), and replies with the new trees (bagging) or the whole model
    (cyclic). On the deployment engine: `_xgb_client.client_app`."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    data = list(clients)
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        node = int(context.node_config["partition-id"])
        name, client = local_records(data[node], context.state)
        config = msg.content["config"]
        received = _array_bytes(msg.content)
        bagging = str(config.get("strategy", "bagging")) == "bagging"
        if len(client) == 0:  # no consenting patient: nothing new
            out = b"" if bagging else received
        else:
            params = params_from(config, context.node_config)  # type: ignore[arg-type]
            rounds = int(config.get("local-rounds", 1))  # type: ignore[arg-type]
            out = local_boost(received, client.x, client.y, params, rounds, new_only=bagging)
        content = RecordDict(
            {
                "arrays": ArrayRecord([np.frombuffer(out, dtype=np.uint8)]),
                "metrics": MetricRecord({"num-examples": len(client)}),
            }
        )
        if name:
            content["hospital"] = ConfigRecord({"name": name})
        return Message(content, reply_to=msg)

    return app


# ----------------------------------------------------------------------------- Table 3 rows


def xgb_rows(
    fed: Any,
    *,
    rounds: int = 30,
    boosting: Boosting = Boosting(),
    strategies: Sequence[XgbStrategy] = ("bagging", "cyclic"),
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Table 3's XGBoost rows for the federation `fed` (a `_table3.FederatedTask`): the
    centralised model (`rounds` boosting rounds on the pooled training parts) and each
    federated strategy (`rounds` rounds; bagging adds K trees a round at eta / K), scored
    on the held-out union. Bytes: the model payload each way (without Flower's framing)."""
    import time

    from ._surrogate_models import scores

    clients = fed.clients("mlp")
    pooled, test = fed.pooled("mlp"), fed.pooled("mlp", "test")
    k = len(clients)
    rows = []
    t0 = time.perf_counter()
    model = centralised(pooled, rounds=rounds, boosting=boosting, seed=seed)
    rows.append(_row("centralised", 1, "xgboost", model, test, rounds, 0, 0, t0, scores))
    for strategy in strategies:
        t0 = time.perf_counter()
        train = bagging_training if strategy == "bagging" else cyclic_training
        out = train(clients, rounds=rounds, boosting=boosting, seed=seed)
        rows.append(_row(f"federated, {k} hospitals", k, f"xgboost {strategy}", out.model, test,
                         rounds, out.bytes_up, out.bytes_down, t0, scores))  # fmt: skip
    return rows


def _row(setting, k, model_name, model, test, rounds, up, down, t0, scores):
    import time

    return {
        "setting": setting,
        "hospitals": k,
        "model": model_name,
        "unit": "none",
        "epsilon_target": math.inf,
        **scores(test.y, predict(model, test.x)),
        "rounds": rounds,
        "trees": len(trees_of(model)),
        "bytes_up": up,
        "bytes_down": down,
        "n_test": len(test),
        "train_s": time.perf_counter() - t0,
    }
