"""A hospital's boosting, and the ClientApp of federated XGBoost on Flower's deployment
engine.

Self-contained on purpose (NumPy, XGBoost and Flower only): Flower 1.42 runs every message
a SuperNode receives in a new `flwr-clientapp` process, and importing JAX and this package
there would cost tens of seconds a round. `fit_xgb_federated` (`_xgb_run`) copies this file
into the Flower app as `pkpd_xgb_client.py`; `surrogates.federated._xgb` imports
`local_boost` from here, so the simulation, the pure rounds and the deployed ClientApp
boost with the same function.

Node config of each SuperNode (local to the hospital): `hospital` (its name), `data-path`
(an `.npz` file with `x` (n, p) features, `y` (n,) labels 0/1 and `patients` (n,) IDs), and
optionally `consent-path`, `audit-log`, `audit-key`, `pseudonym-key` (its consent decisions
and governance: applied at a run's first message by `_surrogate_apps.consented_rows`, which
is then imported once; the rows that may enter are kept in `context.state`).

Messages: the server's train message carries the global model (XGBoost JSON as uint8,
ArrayRecord key "0"; empty in round 1) and the config `learning-rate`, `local-rounds`,
`strategy` ("bagging": reply with the new trees only; "cyclic": the whole model); the reply
carries the trees, `num-examples` and the hospital's name. Nothing else leaves the hospital.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

_STATE_KEY = "consented-rows"


def local_boost(
    model: bytes,
    x: np.ndarray,
    y: np.ndarray,
    params: Mapping[str, Any],
    rounds: int,
    *,
    new_only: bool,
) -> bytes:
    """A hospital's boosting: `rounds` rounds on its records `x`, `y` on top of the global
    `model` (XGBoost JSON; empty: from nothing). Returns XGBoost JSON: only the new trees
    with `new_only` (bagging), else the whole model (cyclic)."""
    import xgboost as xgb

    data = xgb.DMatrix(np.asarray(x, dtype=float), label=np.asarray(y, dtype=float))
    if not model:
        bst = xgb.train(dict(params), data, num_boost_round=rounds)
        return bytes(bst.save_raw("json"))
    bst = xgb.Booster(params=dict(params), model_file=bytearray(model))
    bst.set_param(dict(params))
    start = bst.num_boosted_rounds()
    for i in range(rounds):
        bst.update(data, start + i)
    if new_only:
        bst = bst[start : start + rounds]
    return bytes(bst.save_raw("json"))


def params_from(config: Mapping[str, Any], node: Mapping[str, Any]) -> dict[str, Any]:
    """XGBoost's parameters of a round: the server's `xgb-*` config entries (the same for
    every hospital: `_xgb.Boosting.params`), with its learning rate."""
    params = {k[4:]: v for k, v in config.items() if str(k).startswith("xgb-")}
    params["eta"] = float(config["learning-rate"])
    return params


def _rows(context: Context, node: Mapping[str, Any], patients: np.ndarray) -> np.ndarray:
    if _STATE_KEY in context.state:
        return np.asarray(context.state[_STATE_KEY]["rows"].numpy(), dtype=np.int64)  # type: ignore[union-attr]
    if not str(node.get("consent-path", "")):
        return np.arange(len(patients), dtype=np.int64)
    # Consent decisions: the package's own rules and logging, imported once per run.
    from surrogates.federated._fedavg import Client
    from surrogates.federated._surrogate_apps import HospitalRecords, consented_rows

    records = HospitalRecords(
        str(node.get("hospital", "")),
        Client(np.zeros((len(patients), 1)), np.zeros(len(patients))),
        tuple(str(p) for p in patients),
        {k: v for k, v in node.items() if k != "hospital"},
    )
    return consented_rows(records, context.state)


client_app = ClientApp()


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    """A hospital's round on the deployment engine (see the module docstring)."""
    node = context.node_config
    name = str(node.get("hospital", ""))
    with np.load(str(node["data-path"]), allow_pickle=False) as data:
        x, y, patients = data["x"], data["y"], data["patients"]
    rows = _rows(context, node, patients)
    x, y = x[rows], y[rows]
    config = msg.content["config"]
    received = bytes(np.asarray(msg.content["arrays"]["0"].numpy(), np.uint8).tobytes())  # type: ignore[index]
    bagging = str(config.get("strategy", "bagging")) == "bagging"  # type: ignore[union-attr]
    if len(y) == 0:
        out = b"" if bagging else received
    else:
        params = params_from(config, node)  # type: ignore[arg-type]
        rounds = int(config.get("local-rounds", 1))  # type: ignore[union-attr, arg-type]
        out = local_boost(received, x, y, params, rounds, new_only=bagging)
    content = RecordDict(
        {
            "arrays": ArrayRecord([np.frombuffer(out, dtype=np.uint8)]),
            "metrics": MetricRecord({"num-examples": len(y)}),
            "hospital": ConfigRecord({"name": name}),
        }
    )
    return Message(content, reply_to=msg)
