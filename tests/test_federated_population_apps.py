"""The Flower side of federated population fits without starting processes: the records
the messages carry, the ServerApp's join and rounds over a stand-in grid that hands each
message to the hospital's worker logic, the worker's consent handling, and the CLI."""

from __future__ import annotations

import datetime as dt
import math
import pathlib
import types
import warnings

import numpy as np
import pandas as pd
import pytest
from jax.flatten_util import ravel_pytree
from typer.testing import CliRunner

import calibration as C
from surrogates.federated import (
    FederatedFitError,
    fit_population_server,
    hospital_data,
    hospital_reply,
    read_consents,
    split_by_subject,
    write_consents,
)
from surrogates.federated import _cli as cli
from surrogates.federated import _population_apps as apps
from surrogates.federated import _population_client as client
from surrogates.federated import _population_models as models
from surrogates.federated._population_fit import check_objective_reply
from surrogates.federated._population_worker import HospitalWorker
from twins.governance import (
    Consent,
    Decision,
    Purpose,
    read_entries,
    write_pseudonym_key,
    write_signing_key,
)

CONFIG = {"model": models.THEOPHYLLINE, "covariates": "WT", "estimator": "focei"}
REF = pathlib.Path(__file__).parent / "data" / "reference"


def theo_records() -> pd.DataFrame:
    """nlmixr2's theo_sd: EVID 101 (rxode2: dose into compartment 1) is NONMEM's EVID 1."""
    df = pd.read_csv(REF / "datasets" / "theo_sd_nlmixr2data.csv")
    df.loc[df["EVID"] == 101, "EVID"] = 1
    df.loc[df["EVID"] == 0, "CMT"] = 2
    return df


def test_requests_and_replies_round_trip_exactly():
    points = np.array([[0.1, -1.0 / 3.0, 1e-300], [np.pi, 2.0, -0.0]])
    kind, request = client.decode_request(
        client.encode_request("objective", {"points": points, "start": True})
    )
    assert kind == "objective" and request["start"] is True
    np.testing.assert_array_equal(request["points"], points)
    reply = {"values": np.array([1.5, math.inf]), "n_subjects": np.int64(4), "rejected_subjects": 0}
    content = client.encode_reply("north", reply)
    assert dict(content["reply"]) == {"hospital": "north", "n_subjects": 4, "rejected_subjects": 0}
    np.testing.assert_array_equal(content["arrays"]["values"].numpy(), reply["values"])


def test_the_worker_wire_keeps_floats_exact(tmp_path):
    import socket
    import threading

    path = str(tmp_path / "s.sock")
    payload = {"a": np.array([[0.1, 1e-310], [-np.inf, 2.0 / 3.0]]), "n": 3, "s": "x"}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)

        def echo():
            conn, _ = server.accept()
            with conn:
                client.send_frame(conn, client.recv_frame(conn))

        thread = threading.Thread(target=echo)
        thread.start()
        back = client.ask_worker(path, payload, timeout=10.0)
        thread.join()
    np.testing.assert_array_equal(back["a"], payload["a"])
    assert back["n"] == 3 and back["s"] == "x"


class _Reply:
    def __init__(self, content, src, reply_to):
        self.content = content
        self.metadata = types.SimpleNamespace(src_node_id=src, reply_to_message_id=reply_to)

    def has_error(self):
        return False


class StandInGrid:
    """The part of `flwr.serverapp.Grid` the ServerApp uses, handing each message to a
    hospital's `HospitalWorker` through the same records a SuperNode would carry
    (`silent`: nodes that never answer)."""

    def __init__(self, workers, *, silent=(), names=None):
        self.workers = dict(enumerate(workers.values(), start=101))
        self.names = names or {n: w.name for n, w in self.workers.items()}
        self.silent = {n for n, w in self.workers.items() if w.name in silent}
        self.outbox = {}
        self.sent = 0

    def get_node_ids(self):
        return list(self.workers)

    def push_messages(self, messages):
        ids = []
        for m in messages:
            assert m.metadata.message_type == client.MESSAGE_TYPE
            dst = m.metadata.dst_node_id
            self.sent += 1
            mid = f"m{self.sent}"
            ids.append(mid)
            if dst in self.silent:
                continue
            kind, request = client.decode_request(m.content)
            worker = self.workers[dst]
            reply = worker.handle({"run": 1, "kind": kind, "request": request, "config": CONFIG})
            self.outbox[mid] = _Reply(client.encode_reply(self.names[dst], reply), dst, mid)
        return ids

    def pull_messages(self, ids):
        return [self.outbox.pop(i) for i in list(ids) if i in self.outbox]


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    """`flwr.app.Message` takes its run and node from the identity of the Flower task it
    runs in (set by flwr-serverapp); here there is none."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


@pytest.fixture(scope="module")
def theo_csvs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hospitals")
    paths = {}
    for name, rec in split_by_subject(theo_records(), ["north", "south", "east"]).items():
        paths[name] = folder / f"{name}.csv"
        rec.to_csv(paths[name], index=False)
    return paths


def _workers(paths, **extra):
    return {n: HospitalWorker({"hospital": n, "data-path": str(p)} | extra.get(n, {}))
            for n, p in paths.items()}  # fmt: skip


def test_serve_over_the_grid_equals_the_in_process_fit(theo_csvs):
    """The ServerApp's `serve` over (stand-in) Flower records gives exactly the numbers of
    `fit_population_server` with the hospitals in this process: the records carry every
    float exactly."""
    cfg = apps.RUN_CONFIG_DEFAULTS | CONFIG | {
        "hospitals": "north,south,east", "max-steps": 2, "standard-errors": False,
        "round-timeout": 5.0, "join-timeout": 5.0,
    }  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", C.ConvergenceWarning)
        summary = apps.serve(StandInGrid(_workers(theo_csvs)), cfg)
        pm = models.theophylline()
        sites = {n: hospital_data(n, pd.read_csv(p), covariates=["WT"])
                 for n, p in theo_csvs.items()}  # fmt: skip

        def ask(kind, request):
            return {n: hospital_reply(pm, s, kind, request, estimator=C.FOCEI())
                    for n, s in sites.items()}  # fmt: skip

        _, want = fit_population_server(pm, list(sites), ask, max_steps=2, standard_errors=False)
    assert summary["x"] == want["x"]
    assert summary["ofv"] == want["ofv"]
    assert summary["hospitals"] == {"north": 4, "south": 4, "east": 4}
    assert len(summary["round_seconds"]) == summary["rounds"] == want["rounds"]


def test_a_hospital_that_never_joins_is_named(theo_csvs):
    grid = StandInGrid(_workers(theo_csvs))
    with pytest.raises(FederatedFitError, match=r"\['west'\] did not join") as info:
        apps.join(grid, ["north", "south", "east", "west"], timeout=0.5)
    assert info.value.hospitals == ("west",) and info.value.round == 0
    nodes, hello = apps.join(grid, ["north", "east"], timeout=0.5)
    assert sorted(nodes) == ["east", "north"] and hello["east"]["n_subjects"] == 4


def test_two_nodes_claiming_one_hospital_are_refused(theo_csvs):
    workers = _workers(theo_csvs)
    grid = StandInGrid(workers, names={101: "north", 102: "north", 103: "east"})
    with pytest.raises(FederatedFitError, match="two SuperNodes say they are hospital 'north'"):
        apps.join(grid, ["north", "east"], timeout=0.5)


def test_a_silent_node_after_joining_stops_the_fit(theo_csvs):
    workers = _workers(theo_csvs)
    grid = StandInGrid(workers)
    nodes, _ = apps.join(grid, ["north", "south", "east"], timeout=0.5)
    grid.silent = {nodes["south"]}
    pm = models.theophylline()
    x = np.asarray(ravel_pytree(pm.initial())[0])[None, :]
    replies = apps._exchange(grid, list(nodes.values()), "objective", {"points": x}, 0.3, 1)
    assert replies[nodes["south"]] is None
    assert (
        check_objective_reply("north", replies[nodes["north"]], n_points=1, n_subjects=None)[1] == 4
    )


def test_the_worker_applies_consent_once_per_run(theo_csvs, tmp_path):
    ids = [str(i) for i in pd.read_csv(theo_csvs["north"])["ID"].unique()]
    write_consents(
        tmp_path / "consents.csv",
        [Consent(i, Purpose.FEDERATED_TRAINING, Decision.PERMIT, source=f"Consent/{i}")
         for i in ids[1:]],
    )  # fmt: skip
    registry = read_consents(tmp_path / "consents.csv")
    now = dt.datetime.now(dt.UTC)
    assert registry.allows(ids[1], Purpose.FEDERATED_TRAINING, now)
    assert not registry.allows(ids[0], Purpose.FEDERATED_TRAINING, now)
    write_signing_key(tmp_path / "audit.key")
    write_pseudonym_key(tmp_path / "psn.key")
    node = {
        "hospital": "north",
        "data-path": str(theo_csvs["north"]),
        "consent-path": str(tmp_path / "consents.csv"),
        "audit-log": str(tmp_path / "audit.log"),
        "audit-key": str(tmp_path / "audit.key"),
        "pseudonym-key": str(tmp_path / "psn.key"),
    }
    worker = HospitalWorker(node)
    for _ in range(2):  # two requests of one run: one decision, logged once
        hello = worker.handle({"run": 7, "kind": "hello", "request": {}, "config": CONFIG})
        assert hello == {"n_subjects": 3, "refused": 1}
    entries = read_entries(tmp_path / "audit.log")
    assert [e.action.value for e in entries] == ["consent-refusal", "data-access"]
    assert entries[1].details["patient_count"] == 3
    # A consent file without governance is refused (nowhere to log the refusals).
    bad = HospitalWorker({k: v for k, v in node.items() if k in ("hospital", "data-path",
                                                                  "consent-path")})  # fmt: skip
    reply = bad.handle({"run": 1, "kind": "hello", "request": {}, "config": CONFIG})
    assert reply == {"error": "ValueError (see the hospital's log)"}


def test_the_cli_is_registered_and_checks_its_arguments(tmp_path):
    from twins.app._cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["federated", "--help"])
    assert result.exit_code == 0, result.output
    assert "fit" in result.output and "demo" in result.output
    result = runner.invoke(app, ["federated", "fit", "--hospital", "north"])
    assert result.exit_code == 2 and "NAME=PATH" in result.output
    result = runner.invoke(app, ["federated", "fit", "--hospital", f"north={tmp_path / 'x.csv'}"])
    assert result.exit_code == 2 and "no file" in result.output
    result = runner.invoke(app, ["federated", "demo", "--part", "nope"])
    assert result.exit_code == 2 and "unknown demo part" in result.output
    assert "population" in cli.DEMO_PARTS
