"""The ServerApp of a federated population fit: calibration's outer loop
(`fit_population_server`) over Flower's grid. Each hospital's SuperNode runs the ClientApp of
`_population_client` (thin: it hands requests to the hospital's `_population_worker`).
`fit_population_federated` starts the processes and runs them.

Run config (`context.run_config`, the same for the ServerApp and the ClientApps): `model`
(a `"module:attribute"` reference, `load_model`), `covariates` (comma-separated), `estimator`
(`focei`, `laplace`), `hospitals` (comma-separated: every one must join and answer every
round), `result-path` (where the ServerApp writes its JSON result), `max-steps`, `gtol`,
`standard-errors`, `round-timeout`, `join-timeout` (s), `audit-log`, `audit-key` (the
server's audit log and its signing key; empty: no log), `fit` (the fit's name).

Node config of each SuperNode (`context.node_config`, local to the hospital): `hospital`
(its name), `data-path` (its NONMEM records, CSV), `worker-socket` (its worker), and
optionally `consent-path` (`_population_consents`), `audit-log`, `audit-key`,
`pseudonym-key` (the hospital's own audit log and keys: its refusals and data access).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from twins.governance import AuditLog, load_signing_key

from ._population_client import MESSAGE_TYPE, decode_reply, encode_request
from ._population_fit import FederatedFitError, estimator_named, fit_population_server
from ._population_models import load_model

log = logging.getLogger("surrogates.federated.population")

SERVER_APP = "surrogates.federated._population_apps:server_app"
#: The ClientApp: `_population_client.py`, copied into the app folder under this name.
CLIENT_MODULE = "pkpd_population_client"
CLIENT_APP = f"{CLIENT_MODULE}:client_app"

#: The run config keys and their defaults (the app's `[tool.flwr.app.config]`).
RUN_CONFIG_DEFAULTS: dict[str, str | int | float | bool] = {
    "model": "",
    "covariates": "",
    "estimator": "focei",
    "hospitals": "",
    "result-path": "",
    "max-steps": 500,
    "gtol": 1e-3,
    "standard-errors": True,
    "round-timeout": 300.0,
    "join-timeout": 120.0,
    "audit-log": "",
    "audit-key": "",
    "fit": "population fit",
}

server_app = ServerApp()


# ----------------------------------------------------------------------------- the server


class _Pull:
    """One pending reply, pulled in a daemon thread: Flower's `pull_messages` blocks (for
    up to hours) on a reply whose sender died while uploading it, and one such reply must
    not hold up the round's deadline or the other hospitals' replies."""

    def __init__(self, grid: Grid, message_id: str):
        self.grid, self.message_id = grid, message_id
        self.reply: Message | None = None
        self._thread: threading.Thread | None = None

    def poll(self) -> None:
        """Start a pull unless one is under way."""
        if self.reply is None and (self._thread is None or not self._thread.is_alive()):
            self._thread = threading.Thread(target=self._pull, daemon=True)
            self._thread.start()

    def _pull(self) -> None:
        try:
            for reply in self.grid.pull_messages([self.message_id]):
                if reply.metadata.reply_to_message_id == self.message_id:
                    self.reply = reply
        except Exception as error:  # a transport error: the round's deadline decides
            log.warning("pulling reply %s failed: %s", self.message_id[:12], error)

    def wait(self, seconds: float) -> None:
        if self._thread is not None:
            self._thread.join(seconds)


def _exchange(
    grid: Grid, nodes: list[int], kind: str, request: Mapping[str, Any], timeout: float, rnd: int
) -> dict[int, dict[str, Any] | None]:
    """Send one request to each node and wait up to `timeout` s: node -> reply (`None` for a
    node whose reply did not arrive, whole, in time). Each reply is pulled every 0.2 s
    (`Grid.send_and_receive` waits 3 s between pulls, which would add up to 3 s to every
    round), each in its own thread (`_Pull`)."""
    messages = [
        Message(encode_request(kind, request), node, MESSAGE_TYPE, group_id=str(rnd))
        for node in nodes
    ]
    ids = list(grid.push_messages(messages))
    pulls = {node: _Pull(grid, mid) for node, mid in zip(nodes, ids, strict=True) if mid}
    deadline = time.monotonic() + timeout
    while True:
        waiting = [p for p in pulls.values() if p.reply is None]
        if not waiting or time.monotonic() >= deadline:
            break
        for pull in waiting:
            pull.poll()
        waiting[0].wait(min(0.2, max(0.0, deadline - time.monotonic())))
        time.sleep(0.05)
    out: dict[int, dict[str, Any] | None] = dict.fromkeys(nodes)
    for node, pull in pulls.items():
        if pull.reply is not None:
            out[node] = decode_reply(pull.reply)
    return out


def join(grid: Grid, hospitals: list[str], timeout: float) -> tuple[dict[str, int], dict[str, Any]]:
    """`({hospital: node ID}, {hospital: its hello reply})`: every SuperNode is asked who
    it is; every hospital of `hospitals` must answer within `timeout` s (a
    `FederatedFitError` names those that did not, or two nodes claiming one name)."""
    deadline = time.monotonic() + timeout
    names: dict[int, str] = {}
    hello: dict[str, Any] = {}
    asked: set[int] = set()
    while True:
        new = [n for n in grid.get_node_ids() if n not in asked]
        if new:
            left = max(1.0, deadline - time.monotonic())
            for node, reply in _exchange(grid, new, "hello", {}, left, 0).items():
                if reply is None:
                    continue  # not answering (a node that went away): ask again later
                asked.add(node)
                name = str(reply.get("hospital", ""))
                if name in hello and name in names.values():
                    raise FederatedFitError(
                        f"two SuperNodes say they are hospital {name!r}; refusing to mix them.",
                        hospitals=[name],
                        round=0,
                    )
                names[node] = name
                hello[name] = reply
        errors = {h: hello[h]["error"] for h in hospitals if h in hello and "error" in hello[h]}
        if errors:
            h, why = next(iter(errors.items()))
            raise FederatedFitError(
                f"hospital {h!r} reported: {why}", hospitals=list(errors), round=0
            )
        missing = [h for h in hospitals if h not in hello]
        if not missing:
            return {name: node for node, name in names.items() if name in hospitals}, hello
        if time.monotonic() >= deadline:
            raise FederatedFitError(
                f"hospital(s) {missing} did not join the federation within {timeout:g} s "
                f"(answered: {sorted(hello)}).",
                hospitals=missing,
                round=0,
            )
        time.sleep(0.5)


def open_run_audit(cfg: Mapping[str, Any]) -> AuditLog | None:
    """The server's audit log named by the run config (`audit-log`, signed with the key
    file `audit-key`), or None without `audit-log`."""
    path, key = str(cfg.get("audit-log", "")), str(cfg.get("audit-key", ""))
    if not path:
        return None
    if not key:
        raise ValueError("run config audit-log needs audit-key (the log's signing key file).")
    return AuditLog(path, load_signing_key(key))


def serve(grid: Grid, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ServerApp's work: join the hospitals, run `fit_population_server` over the grid,
    return the JSON-able summary (with the join's counts and each round's seconds)."""
    pm = load_model(str(cfg["model"]))
    est = estimator_named(str(cfg.get("estimator", "focei")))
    hospitals = [h for h in str(cfg["hospitals"]).split(",") if h]
    if not hospitals:
        raise ValueError("run config 'hospitals' names no hospital.")
    audit = open_run_audit(cfg)
    round_timeout = float(cfg.get("round-timeout", 300.0))
    nodes, hello = join(grid, hospitals, float(cfg.get("join-timeout", 120.0)))
    log.info("joined: %s", {h: hello[h].get("n_subjects") for h in hospitals})
    seconds: list[float] = []

    def ask(kind: str, request: Mapping[str, Any]):
        started = time.monotonic()
        order = [nodes[h] for h in hospitals]
        replies = _exchange(grid, order, kind, request, round_timeout, len(seconds) + 1)
        seconds.append(time.monotonic() - started)
        return {h: replies[nodes[h]] for h in hospitals}

    _, summary = fit_population_server(
        pm,
        hospitals,
        ask,
        estimator=est,
        max_steps=int(cfg.get("max-steps", 500)),
        gtol=float(cfg.get("gtol", 1e-3)),
        standard_errors=bool(cfg.get("standard-errors", True)),
        audit=audit,
        fit=str(cfg.get("fit", "population fit")),
    )
    summary["refused"] = {h: int(hello[h].get("refused", 0)) for h in hospitals}
    summary["round_seconds"] = seconds
    return summary


def write_result(path: str | os.PathLike, result: Mapping[str, Any]) -> None:
    """Write the ServerApp's result atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result), encoding="utf-8")
    os.replace(tmp, path)


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    result_path = str(cfg.get("result-path", ""))
    try:
        summary = serve(grid, cfg)
    except FederatedFitError as error:
        log.error("federated fit failed: %s", error)
        if result_path:
            write_result(
                result_path,
                {"ok": False, "error": str(error), "hospitals": list(error.hospitals),
                 "round": error.round, "kind": "FederatedFitError"},
            )  # fmt: skip
        raise
    except Exception as error:
        log.exception("federated fit failed")
        if result_path:
            write_result(
                result_path,
                {"ok": False, "error": f"{type(error).__name__}: {error}", "hospitals": [],
                 "round": None, "kind": type(error).__name__},
            )  # fmt: skip
        raise
    if result_path:
        write_result(result_path, {"ok": True, "summary": summary})
