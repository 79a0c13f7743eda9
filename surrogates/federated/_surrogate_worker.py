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

import argparse
import contextlib
import json
import logging
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import tomli
from flwr.app import RecordDict

from ._population_client import recv_frame, send_frame
from ._surrogate_apps import hospital_update, local_records
from ._surrogate_models import Model
from ._surrogate_run import Network, local_from_config, read_surrogate_hospital

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


def _parent_alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serve(node: Mapping[str, Any], path: str, *, parent_pid: int | None = None) -> None:
    """Serve the hospital's requests on the Unix socket `path` (mode 0600) until the parent
    process ends."""
    worker = SurrogateWorker(node)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        os.chmod(path, 0o600)
        server.listen(4)
        server.settimeout(1.0)
        log.info("hospital %s: worker listening on %s", worker.records.name, path)
        while _parent_alive(parent_pid):
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(None)
                try:
                    message = recv_frame(conn)
                except (ConnectionError, ValueError) as error:  # a probe, or garbage
                    log.debug("hospital %s: no request read: %s", worker.records.name, error)
                    continue
                send_frame(conn, worker.handle(message))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A hospital's federated surrogate worker.")
    parser.add_argument("--node-config", required=True, help="the SuperNode's node config (TOML)")
    parser.add_argument("--socket", required=True, help="the Unix socket to listen on")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when it ends")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    node = tomli.loads(Path(args.node_config).read_text(encoding="utf-8"))
    serve(node, args.socket, parent_pid=args.parent_pid)


if __name__ == "__main__":
    main()
