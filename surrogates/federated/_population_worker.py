"""A hospital's worker for federated population fits: a process next to its SuperNode
that holds the hospital's records, the consent decision of each run and the compiled model
between rounds, and answers its ClientApp over a Unix socket.

    python -m surrogates.federated._population_worker --node-config NODE.toml --socket PATH

`NODE.toml` is the SuperNode's node config (`hospital`, `data-path`, and optionally
`consent-path`, `audit-log`, `audit-key`, `pseudonym-key`): the data path reaches the worker
from the hospital's own configuration, never from the server. Requests
(`surrogates.federated._population_client.send_frame`): `{"run", "kind", "request",
"config": {"model", "covariates", "estimator"}}`; answers: `hospital_reply`'s form.
Patients who did not consent to federated use are left out at a run's first request (the
refusals and the data access logged then, once per run). The worker exits when its parent
(`--parent-pid`) does.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import tomli

from twins.governance import AuditLog, Governance, load_signing_key, read_pseudonym_key_file

from ._population_client import recv_frame, send_frame
from ._population_consents import read_consents
from ._population_fit import (
    HospitalData,
    _sanitised,
    estimator_named,
    hospital_data,
    hospital_reply,
)
from ._population_models import load_model

log = logging.getLogger("surrogates.federated.population")


def hospital_governance(node: Mapping[str, Any]) -> Governance | None:
    """The hospital's `Governance` from its node config (`audit-log`, `audit-key`,
    `pseudonym-key`: all three, or none)."""
    audit, key, psn = (str(node.get(k, "")) for k in ("audit-log", "audit-key", "pseudonym-key"))
    if not (audit or key or psn):
        return None
    if not (audit and key and psn):
        raise ValueError(
            "a hospital's governance needs all of audit-log, audit-key and pseudonym-key in "
            "its node config."
        )
    return Governance(
        audit=AuditLog(audit, load_signing_key(key)),
        key=read_pseudonym_key_file(psn),
        actor=f"hospital {node.get('hospital', '')}",
    )


class HospitalWorker:
    """Answers one hospital's requests (`handle`), keeping per run the subjects that may
    enter and per model the compiled objective (JAX's cache, in this process)."""

    def __init__(self, node: Mapping[str, Any]):
        self.node = dict(node)
        self.name = str(node.get("hospital", ""))
        if not self.name or not node.get("data-path"):
            raise ValueError("the node config needs 'hospital' and 'data-path'.")
        self._sites: dict[tuple[int, str], HospitalData] = {}
        self._models: dict[str, Any] = {}

    def site(self, run: int, covariates: str) -> HospitalData:
        key = (run, covariates)
        if key not in self._sites:
            records = pd.read_csv(str(self.node["data-path"]))
            path = str(self.node.get("consent-path", ""))
            self._sites[key] = hospital_data(
                self.name,
                records,
                covariates=[c for c in covariates.split(",") if c],
                consents=read_consents(path) if path else None,
                governance=hospital_governance(self.node),
            )
        return self._sites[key]

    def handle(self, message: Mapping[str, Any]) -> dict[str, Any]:
        try:
            cfg = message.get("config", {})
            site = self.site(int(message["run"]), str(cfg.get("covariates", "")))
            kind = str(message["kind"])
            if kind == "hello":
                return {"n_subjects": site.data.n_subjects, "refused": site.refused}
            ref = str(cfg["model"])
            if ref not in self._models:
                self._models[ref] = load_model(ref)
            est = estimator_named(str(cfg.get("estimator", "focei")))
            return hospital_reply(self._models[ref], site, kind, message["request"], estimator=est)
        except Exception as error:  # the server hears the kind; the details stay in this log
            log.exception("hospital %s: the request failed", self.name)
            return {"error": _sanitised(error)}


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
    worker = HospitalWorker(node)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        os.chmod(path, 0o600)
        server.listen(4)
        server.settimeout(1.0)
        log.info("hospital %s: worker listening on %s", worker.name, path)
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
                    log.debug("hospital %s: no request read: %s", worker.name, error)
                    continue
                send_frame(conn, worker.handle(message))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A hospital's federated population-fit worker.")
    parser.add_argument("--node-config", required=True, help="the SuperNode's node config (TOML)")
    parser.add_argument("--socket", required=True, help="the Unix socket to listen on")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when it ends")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    node = tomli.loads(Path(args.node_config).read_text(encoding="utf-8"))
    serve(node, args.socket, parent_pid=args.parent_pid)


if __name__ == "__main__":
    main()
