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

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd

from twins.governance import AuditLog, Governance, load_signing_key, read_pseudonym_key_file

from ._population_consents import read_consents
from ._population_fit import (
    HospitalData,
    _sanitised,
    estimator_named,
    hospital_data,
    hospital_reply,
)
from ._population_models import load_model
from ._worker_socket import serve_requests, worker_main

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


def serve(node: Mapping[str, Any], path: str, *, parent_pid: int | None = None) -> None:
    """Serve the hospital's requests on the Unix socket `path` (mode 0600) until the parent
    process ends."""
    worker = HospitalWorker(node)
    serve_requests(worker, worker.name, path, parent_pid=parent_pid)


def main(argv: list[str] | None = None) -> None:
    worker_main(argv, "A hospital's federated population-fit worker.", serve)


if __name__ == "__main__":
    main()
