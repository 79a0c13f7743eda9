"""The ClientApp of the federated Flax surrogates on Flower's deployment engine.

Flower 1.42 runs every message a SuperNode receives in a new `flwr-clientapp` process;
importing JAX, Flax and this package and compiling the network there would cost tens of
seconds a round. So this ClientApp is thin (Flower, NumPy and the standard library): it
hands the global parameters to its hospital's worker (`surrogates.federated.
_surrogate_worker`, a process next to the SuperNode that holds the hospital's records, its
consent decision per run and the compiled local update) over the worker's Unix socket
(node config `worker-socket`), in the length-prefixed JSON of `_population_client`
(float32 values round-trip exactly through JSON's float64), and sends the worker's new
parameters back.

Self-contained on purpose: `fit_surrogate_federated` (`_surrogate_run`) copies this file
into the Flower app as `pkpd_surrogate_client.py`, beside `_population_client.py` as
`pkpd_population_client.py` (the wire).

Messages: the server's train message carries the global parameters (`ArrayRecord`
"arrays") and its config (`server-round`; `proximal-mu` under FedProx; the clipping norm
under client-level DP, read by Flower's `fixedclipping_mod` of `client_app_dp`); the reply
carries the new parameters under the same keys, `num-examples` (the hospital's consenting
patients), `unit-weight` 1 (the equal-weight mean of client-level DP), the payload's bytes
and the hospital's name, as `_surrogate_apps.surrogate_client_app`'s reply does. No
training metric leaves the hospital. Run config (`context.run_config`): the network and the
local training (passed to the worker as they are), `seed`, `round-timeout` (s).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod

try:  # in the package
    from ._population_client import ask_worker
except ImportError:  # in the Flower app (the FAB), beside this file
    from pkpd_population_client import ask_worker  # type: ignore[no-redef]


#: Run config entries the hospital's worker has no use for (the server's files).
_SERVER_ONLY = ("result-path", "audit-log", "audit-key", "fit")


def _payload(record: ArrayRecord) -> int:
    return int(sum(len(a.data) for a in record.values()))


def hospital_train(msg: Message, context: Context) -> Message:
    """A hospital's round: the worker's local update from the global parameters."""
    node, cfg = context.node_config, context.run_config
    name = str(node.get("hospital", ""))
    received = msg.content["arrays"]
    config = msg.content["config"]
    assert isinstance(received, ArrayRecord)
    arrays = received.to_numpy_ndarrays()
    timeout = float(cfg.get("round-timeout", 300.0))  # type: ignore[arg-type]
    request: dict[str, Any] = {
        "run": int(msg.metadata.run_id),
        "round": int(config["server-round"]),  # type: ignore[arg-type, index]
        "node": int(node["partition-id"]),  # type: ignore[arg-type]
        "arrays": arrays,
        "config": {k: v for k, v in cfg.items() if k not in _SERVER_ONLY}
        | {"proximal-mu": float(config.get("proximal-mu", 0.0))},  # type: ignore[union-attr, arg-type]
    }
    try:
        reply = ask_worker(str(node["worker-socket"]), request,
                           timeout=timeout if math.isfinite(timeout) else 300.0)  # fmt: skip
    except Exception as error:  # never the details: they may name a patient
        raise RuntimeError(
            f"hospital {name!r}: its worker did not answer ({type(error).__name__})"
        ) from None
    if "error" in reply:
        raise RuntimeError(f"hospital {name!r}: its worker failed: {reply['error']}")
    new = [np.asarray(a, dtype=r.dtype).reshape(r.shape)
           for a, r in zip(reply["arrays"], arrays, strict=True)]  # fmt: skip
    reply_arrays = ArrayRecord(dict(zip(received.keys(), ArrayRecord(new).values(), strict=True)))
    metrics = MetricRecord(
        {
            "num-examples": int(reply["num-examples"]),
            "unit-weight": 1,
            "bytes-down": _payload(received),
            "bytes-up": _payload(reply_arrays),
        }
    )
    content = RecordDict(
        {"arrays": reply_arrays, "metrics": metrics, "hospital": ConfigRecord({"name": name})}
    )
    return Message(content, reply_to=msg)


#: Without differential privacy (FedAvg, FedProx, FedAdam).
client_app = ClientApp()
client_app.train()(hospital_train)

#: Under client-level DP: Flower's `fixedclipping_mod` clips the update to the server's norm.
client_app_dp = ClientApp(mods=[fixedclipping_mod])
client_app_dp.train()(hospital_train)
