"""A hospital's worker for the federated Flax surrogates on Flower's deployment engine: a
process next to its SuperNode that holds the hospital's records, each run's consent decision
and the compiled local update between rounds, and answers its thin ClientApp
(`_surrogate_client`) over a Unix socket.

    python -m surrogates.federated._surrogate_worker --node-config NODE.toml --socket PATH

`NODE.toml` is the SuperNode's node config (`hospital`, `partition-id`, `data-path`, and
optionally `consent-path`, `audit-log`, `audit-key`, `pseudonym-key`): the data path reaches
the worker from the hospital's own configuration, never from the server. Requests (the wire
of `_population_client`): `{"run", "round", "node", "arrays", "config"}` (the global
parameters and the run config's network, local training and `seed`); answers:
`{"arrays", "num-examples"}` (the new parameters; the consenting patients' count) or
`{"error"}` (its kind only: the details, which may name a patient, stay in this process's
log). Patients who did not consent to federated use are left out at a run's first request
(`_surrogate_apps.consented_rows`: the refusals and the data access logged then, once per
run). The worker exits when its parent (`--parent-pid`) does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flwr.app import RecordDict

from ._surrogate_apps import hospital_update, local_records
from ._surrogate_models import Model
from ._surrogate_run import Network, local_from_config, read_surrogate_hospital
from ._worker_socket import serve_requests, worker_main

log = logging.getLogger("surrogates.federated.surrogates")


class SurrogateWorker:
    """Answers one hospital's requests (`handle`), keeping per run its consent decision
    (Flower's `context.state` form, a `RecordDict`) and per network the `Model` (whose
    compiled local update JAX keeps in this process)."""

    def __init__(self, node: Mapping[str, Any]):
        self.node = dict(node)
        self.records = read_surrogate_hospital(self.node)
        self._states: dict[int, RecordDict] = {}
        self._models: dict[str, Model] = {}

    def model(self, cfg: Mapping[str, Any]) -> Model:
        network = Network.from_config(cfg)
        key = json.dumps(network.config(), sort_keys=True)
        if key not in self._models:
            self._models[key] = network.build()
        return self._models[key]

    def handle(self, message: Mapping[str, Any]) -> dict[str, Any]:
        try:
            cfg = message["config"]
            run = int(message["run"])
            state = self._states.setdefault(run, RecordDict())
            _, client = local_records(self.records, state)
            arrays = [np.asarray(a) for a in message["arrays"]]
            if len(client) == 0:  # no patient may enter: the global parameters, weight 0
                return {"arrays": arrays, "num-examples": 0}
            model = self.model(cfg)
            new = hospital_update(
                model, client, arrays, int(message["round"]), int(message["node"]),
                local_from_config(cfg), jax.random.key(int(cfg.get("seed", 0))),
                float(cfg.get("proximal-mu", 0.0)),
            )  # fmt: skip
            return {"arrays": new, "num-examples": len(client)}
        except Exception as error:  # the ClientApp hears the kind; the details stay here
            log.exception("hospital %s: the request failed", self.records.name)
            return {"error": type(error).__name__}


def serve(node: Mapping[str, Any], path: str, *, parent_pid: int | None = None) -> None:
    """Serve the hospital's requests on the Unix socket `path` (mode 0600) until the parent
    process ends."""
    worker = SurrogateWorker(node)
    serve_requests(worker, worker.records.name, path, parent_pid=parent_pid)


def main(argv: list[str] | None = None) -> None:
    worker_main(argv, "A hospital's federated surrogate worker.", serve)


if __name__ == "__main__":
    main()
