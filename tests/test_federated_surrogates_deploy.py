"""The federated Flax surrogates on Flower's real deployment engine (issue 18): a SuperLink,
one SuperNode per hospital and each hospital's worker started as processes on 127.0.0.1 by
`fit_surrogate_federated`, two FedAvg rounds, everything stopped afterwards.

The deployed run must give the model of `federated_training` (no Flower: the same
`local_update`, keys and FedAvg weights) on the records that may enter, to float32 summation
order (Flower's `aggregate_arrayrecords` sums the weighted arrays in another order than
`fedavg`'s tensordot: a few float32 ulps, 1e-6 here). The thin ClientApp and the worker
are also checked in this process against `local_update`: the ground of the deployed run, in
under a second, in make test; the deployed runs are in make test-all. A hospital whose
worker fails every request, and one whose worker cannot start, are checked on the deployment
engine too; the round check that fails a run with too few hospitals, without processes.
"""

from __future__ import annotations

import subprocess
import threading
import time

import jax
import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict

from surrogates.federated import (
    DeploymentError,
    FederatedFitError,
    Network,
    RoundAudit,
    _surrogate_client,
    _surrogate_run,
    _surrogate_worker,
    fit_surrogate_federated,
    write_consents,
    write_surrogate_hospital,
)
from surrogates.federated._fedavg import (
    Client,
    LocalTraining,
    federated_training,
    local_update,
    round_key,
)
from surrogates.federated._surrogate_apps import WatchedGrid
from twins.governance import (
    AuditLog,
    Consent,
    Decision,
    Purpose,
    load_signing_key,
    read_entries,
    verify,
    write_pseudonym_key,
    write_signing_key,
)

pytestmark = pytest.mark.slow

LOCAL = LocalTraining(steps=3, sampling_rate=0.3, learning_rate=0.05)
NETWORK = Network("mlp", n_features=6, hidden=(8,), seed=3)


def _hospitals():
    rng = np.random.default_rng(0)
    out = []
    for n, shift in ((40, 0.0), (60, 0.5), (50, -0.5)):  # non-IID: shifted features
        x = (rng.normal(size=(n, 6)) + shift).astype(np.float32)
        out.append(Client(x, (x[:, 0] > shift).astype(np.float32)))
    return out


@pytest.mark.extended  # 73-150 s on 2 shared cores (4 processes import JAX); its ground,
# the thin ClientApp and worker against local_update, is the next test (make test)
def test_the_deployed_fedavg_gives_the_pure_model_with_consent(tmp_path):
    clients = _hospitals()
    names = ("north", "south", "east")
    hospitals = {
        name: str(write_surrogate_hospital(tmp_path / f"{name}.npz", client))
        for name, client in zip(names, clients, strict=True)
    }
    south = _south(tmp_path, clients[1])  # patients 4 and 9 denied federated use
    hospitals["south"] = {k: v for k, v in south.items() if k != "hospital"}
    write_signing_key(tmp_path / "server.key")
    t0 = time.monotonic()
    out = fit_surrogate_federated(
        hospitals,
        network=NETWORK,
        rounds=2,
        local=LOCAL,
        seed=5,
        audit_log=tmp_path / "server.log",
        audit_key=tmp_path / "server.key",
        fit="warfarin MLP, deployed",
        timeout=400,
    )
    elapsed = time.monotonic() - t0
    model = NETWORK.build()
    kept = np.delete(np.arange(60), [4, 9])
    consenting = Client(clients[1].x[kept], clients[1].y[kept])
    pure = federated_training(model.loss, model.params, [clients[0], consenting, clients[2]],
                              rounds=2, local=LOCAL, key=jax.random.key(5))  # fmt: skip
    assert out.params is not None and out.rounds == 2
    for a, b in zip(out.params, model.arrays(pure), strict=True):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # ... and not the model with south's denying patients in it (the test could fail):
    with_all = federated_training(model.loss, model.params, clients, rounds=2, local=LOCAL,
                                  key=jax.random.key(5))  # fmt: skip
    assert max(np.abs(a - b).max()
               for a, b in zip(out.params, model.arrays(with_all), strict=True)) > 1e-4  # fmt: skip
    # Each round: the three hospitals.
    entries = [e.details for e in read_entries(tmp_path / "server.log")
               if e.action.value == "training-round"]  # fmt: skip
    assert [e["round"] for e in entries] == [1, 2] and entries == out.round_log
    for e in entries:
        assert sorted(e["hospitals"]) == ["east", "north", "south"]
        assert e["patient_count"] == 40 + 58 + 50
        assert "missing" not in e
    assert verify(tmp_path / "server.log", tmp_path / "server.key.pub").ok
    # south decided once for the run: two refusals and one data access in its own log.
    actions = [e.action.value for e in read_entries(tmp_path / "south.log")]
    assert actions.count("consent-refusal") == 2 and actions.count("data-access") == 1
    # Bytes: each answering hospital gets and sends the parameters once a round.
    assert out.bytes_up == out.bytes_down
    assert 2 * 3 * model.nbytes < out.bytes_up < 2 * 3 * (model.nbytes + 200 * 4)
    print(f"deployed run: {elapsed:.1f} s")


def _south(tmp_path, client):
    """south's node config: its records and consent (patients 4 and 9 deny)."""
    ids = [f"south-{i}" for i in range(len(client))]
    consents = [Consent(p, Purpose.FEDERATED_TRAINING, Decision.PERMIT, source=f"C/{p}")
                for p in ids]  # fmt: skip
    consents += [Consent(ids[i], Purpose.FEDERATED_TRAINING, Decision.DENY, source=f"D/{i}")
                 for i in (4, 9)]  # fmt: skip
    write_consents(tmp_path / "south.csv", consents)
    write_signing_key(tmp_path / "south.key")
    write_pseudonym_key(tmp_path / "south.psn")
    return {
        "hospital": "south",
        "data-path": str(write_surrogate_hospital(tmp_path / "south.npz", client, ids)),
        "consent-path": str(tmp_path / "south.csv"),
        "audit-log": str(tmp_path / "south.log"),
        "audit-key": str(tmp_path / "south.key"),
        "pseudonym-key": str(tmp_path / "south.psn"),
    }


#: The sequence networks on the same records: 2 static features and 2 steps of 2 channels.
SEQUENCE_NETWORKS = {
    "mlp": NETWORK,
    "lstm": Network("lstm", n_static=2, n_channels=2, hidden=(4,), static_hidden=4, seed=3),
    "transformer": Network(
        "transformer", n_static=2, n_channels=2, n_steps=2, hidden=(8, 16), heads=2, seed=3
    ),
}


def _as(kind: str, client: Client) -> Client:
    """`client`'s records as the inputs of a network of `kind` (see SEQUENCE_NETWORKS)."""
    if kind == "mlp":
        return client
    x = client.x
    return Client((x[:, :2], x[:, 2:].reshape(len(x), 2, 2)), client.y)


@pytest.mark.parametrize("kind", ["mlp", "lstm", "transformer"])
def test_the_thin_client_and_the_worker_give_the_local_update(tmp_path, kind):
    """The deployed hospital in one process: the ClientApp of `_surrogate_client` (as Flower
    calls it) asks the worker (`_surrogate_worker.serve` on a Unix socket) and replies with
    exactly `local_update` on the consenting records (JSON carries float32 exactly), for
    the MLP and for the two sequence networks (their records as `static` and `sequence`)."""
    client = _as(kind, _hospitals()[1])
    network = SEQUENCE_NETWORKS[kind]
    node = _south(tmp_path, client) | {"partition-id": 1}
    sock = str(tmp_path / "w.sock")
    parent = subprocess.Popen(["sleep", "120"])  # the worker serves while this lives
    thread = threading.Thread(target=_surrogate_worker.serve, args=(node, sock),
                              kwargs={"parent_pid": parent.pid}, daemon=True)  # fmt: skip
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "w.sock").exists():
            assert time.monotonic() < deadline, "the worker did not listen within 60 s"
            time.sleep(0.05)
        model = network.build()
        run_config = network.config() | _surrogate_run.local_config(LOCAL) | {"seed": 5}
        context = Context(run_id=7, node_id=101, state=RecordDict(), run_config=run_config,
                          node_config=node | {"worker-socket": sock})  # fmt: skip
        arrays = ArrayRecord(model.arrays(model.params))
        meta = Metadata(run_id=7, message_id="m1", src_node_id=1, dst_node_id=101,
                        reply_to_message_id="", group_id="2", created_at=time.time(),
                        ttl=3600.0, message_type="train")  # fmt: skip
        content = RecordDict({"arrays": arrays,
                              "config": ConfigRecord({"server-round": 2})})  # fmt: skip
        reply = _surrogate_client.client_app(Message(content, metadata=meta), context).content
    finally:
        parent.kill()
        parent.wait()
        thread.join(timeout=10)
    kept = np.delete(np.arange(60), [4, 9])
    x_kept = jax.tree.map(lambda a: a[kept], client.x)
    ref, _ = local_update(model.loss, model.params, model.params, x_kept,
                          client.y[kept], np.ones(58, np.float32),
                          round_key(jax.random.key(5), 2, 1), local=LOCAL)  # fmt: skip
    assert list(reply["arrays"].keys()) == list(arrays.keys())
    for a, b in zip(reply["arrays"].to_numpy_ndarrays(), model.arrays(ref), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert reply["metrics"]["num-examples"] == 58 and reply["hospital"]["name"] == "south"
    assert not thread.is_alive()


@pytest.mark.extended  # a deployed run (4 processes import JAX); its ground, the thin
# ClientApp and worker of each network against local_update, is in make test
@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_the_deployed_sequence_networks_give_the_pure_model(tmp_path, kind):
    """The LSTM and the Transformer on the deployment engine (records as `static` and
    `sequence` in each hospital's .npz): two FedAvg rounds give `federated_training`'s
    model to float32 summation order, as the MLP's run does."""
    clients = [_as(kind, c) for c in _hospitals()]
    network = SEQUENCE_NETWORKS[kind]
    hospitals = {
        name: str(write_surrogate_hospital(tmp_path / f"{name}.npz", client))
        for name, client in zip(("north", "south", "east"), clients, strict=True)
    }
    # SGD, not Adam: Adam's step m / sqrt(v) turns float32 rounding in a gradient that is
    # zero in exact arithmetic (the attention's key bias: softmax is invariant to it) into
    # steps of the learning rate's size, so the same update summed in another order (the
    # vmapped hospitals of federated_training) would differ by far more than rounding.
    local = LocalTraining(steps=3, sampling_rate=0.3, learning_rate=0.2, optimizer="sgd")
    out = fit_surrogate_federated(hospitals, network=network, rounds=2, local=local, seed=5,
                                  timeout=400)  # fmt: skip
    model = network.build()
    pure = federated_training(model.loss, model.params, clients, rounds=2, local=local,
                              key=jax.random.key(5))  # fmt: skip
    assert out.params is not None and out.rounds == 2
    moved = 0.0
    for a, b, start in zip(out.params, model.arrays(pure), model.arrays(model.params),
                           strict=True):  # fmt: skip
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
        moved = max(moved, float(np.abs(a - start).max()))
    assert moved > 1e-3  # the rounds trained the network (the check could fail)


@pytest.mark.extended  # 130-260 s on 2 shared cores (two deployed runs, 3 workers each)
def test_a_hospital_that_fails_is_named_and_never_averaged(tmp_path):
    """west's worker starts but fails every request (its consent file is missing): by
    default the run fails naming west; with min_hospitals=2 the rounds average north and
    east (the pure model of those two) and name west as missing."""
    clients = _hospitals()
    hospitals = {
        "north": str(write_surrogate_hospital(tmp_path / "north.npz", clients[0])),
        "east": str(write_surrogate_hospital(tmp_path / "east.npz", clients[2])),
        "west": {"data-path": str(write_surrogate_hospital(tmp_path / "west.npz", clients[1])),
                 "consent-path": str(tmp_path / "no-such-consents.csv")},
    }  # fmt: skip
    with pytest.raises(FederatedFitError, match=r"round 1: 2 of 3 .*missing: west") as e:
        fit_surrogate_federated(hospitals, network=NETWORK, rounds=2, local=LOCAL,
                                timeout=400)  # fmt: skip
    assert e.value.hospitals == ("west",)
    out = fit_surrogate_federated(hospitals, network=NETWORK, rounds=2, local=LOCAL,
                                  min_hospitals=2, timeout=400)  # fmt: skip
    assert [r["missing"] for r in out.round_log] == [["west"], ["west"]]
    model = NETWORK.build()
    pure = federated_training(model.loss, model.params, [clients[0], clients[2]], rounds=2,
                              local=LOCAL, key=jax.random.key(0))  # fmt: skip
    assert out.params is not None
    for a, b in zip(out.params, model.arrays(pure), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.extended  # ~20 s (a worker's import); Federation's naming: test_federated_deploy
def test_a_worker_that_cannot_start_is_named(tmp_path):
    np.savez(tmp_path / "bad.npz", y=np.zeros(3), patients=np.array(["a", "b", "c"]))
    with pytest.raises(DeploymentError, match=r"(?s)worker-north exited.*neither 'x' nor"):
        fit_surrogate_federated({"north": str(tmp_path / "bad.npz")}, network=NETWORK,
                                rounds=1, local=LOCAL, timeout=60)  # fmt: skip


def _reply(name, n):
    return RecordDict({"metrics": MetricRecord({"num-examples": n}),
                       "hospital": ConfigRecord({"name": name})})  # fmt: skip


def test_a_round_with_too_few_hospitals_fails_naming_the_missing(tmp_path):
    write_signing_key(tmp_path / "server.key")
    audit = AuditLog(tmp_path / "server.log", load_signing_key(tmp_path / "server.key"))
    log = RoundAudit(audit, fit="f", strategy="fedavg", expected=3, minimum=2,
                     names=("north", "south", "east"))  # fmt: skip
    aggregate = log.metrics_fn()
    aggregate([_reply("north", 10), _reply("east", 5)], "num-examples")  # 2 of 3: enough
    with pytest.raises(FederatedFitError, match=r"round 2: 1 of 3 .*missing: south, east") as e:
        aggregate([_reply("north", 10)], "num-examples")
    assert e.value.hospitals == ("south", "east") and e.value.round == 2
    kinds = [(d.details["round"], d.details["kind"]) for d in read_entries(tmp_path / "server.log")]
    assert kinds == [(1, "train"), (2, "failed")]
    assert log.rounds[0]["missing"] == ["south"]
    with pytest.raises(FederatedFitError, match="only 1 of 3 rounds"):
        log.check_complete(3)
    assert verify(tmp_path / "server.log", tmp_path / "server.key.pub").ok
    with pytest.raises(ValueError, match=r"must be in 1\.\.3"):
        RoundAudit(None, fit="f", strategy="fedavg", expected=3, minimum=4)


class _Grid:
    """The two calls of Flower's Grid that the strategies make, answered from lists."""

    def __init__(self, nodes, replies):
        self.nodes, self.replies, self.other = list(nodes), replies, "kept"

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None):
        return self.replies


def _message(node, content):
    meta = Metadata(run_id=1, message_id=f"r{node}", src_node_id=node, dst_node_id=1,
                    reply_to_message_id="", group_id="1", created_at=time.time(),
                    ttl=60.0, message_type="train")  # fmt: skip
    return Message(content, metadata=meta)


def test_a_hospital_whose_node_left_between_rounds_is_named(tmp_path):
    """Flower's strategies wait without end for `min_available_nodes`; `WatchedGrid` stops
    that wait after the round timeout, writes the round as failed and names the hospital
    whose SuperNode left (its node id known from its reply in round 1)."""
    write_signing_key(tmp_path / "server.key")
    audit = AuditLog(tmp_path / "server.log", load_signing_key(tmp_path / "server.key"))
    log = RoundAudit(audit, fit="f", strategy="fedavg", expected=3,
                     names=("north", "south", "east"))  # fmt: skip
    contents = [_reply(n, 10) for n in ("north", "south", "east")]
    inner = _Grid([11, 12, 13], [_message(11 + i, c) for i, c in enumerate(contents)])
    grid = WatchedGrid(inner, least=3, wait=0.5, audit=log)
    assert grid.get_node_ids() == [11, 12, 13] and grid.other == "kept"
    replies = grid.send_and_receive([], timeout=5.0)
    assert grid.names == {11: "north", 12: "south", 13: "east"}
    log.metrics_fn()([r.content for r in replies], "num-examples")  # round 1, all three
    inner.nodes = [11, 13]  # south's SuperNode stopped after round 1
    t0 = time.monotonic()
    with pytest.raises(FederatedFitError, match=r"round 2: 2 of 3 .*missing: south") as e:
        while time.monotonic() - t0 < 10:  # Flower's loop: a look every second
            grid.get_node_ids()
            time.sleep(0.05)
    assert 0.5 <= time.monotonic() - t0 < 5
    assert e.value.hospitals == ("south",) and e.value.round == 2
    entries = read_entries(tmp_path / "server.log")
    rounds = [(d.details["round"], d.details["kind"]) for d in entries]
    assert rounds == [(1, "train"), (2, "failed")] and log.rounds[-1]["missing"] == ["south"]
    # A node back in time resets the clock: no error while enough are connected.
    inner.nodes = [11, 12, 13]
    again = WatchedGrid(inner, least=2, wait=0.2, audit=log)
    inner.nodes = [11]
    again.get_node_ids()
    inner.nodes = [11, 13]
    time.sleep(0.3)
    assert again.get_node_ids() == [11, 13]


def test_the_surrogate_cli_checks_its_arguments(tmp_path):
    from typer.testing import CliRunner

    from twins.app._cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["federated", "surrogate", "--help"])
    assert result.exit_code == 0 and "--n-features" in result.output, result.output
    result = runner.invoke(app, ["federated", "surrogate", "--hospital", "north",
                                 "--n-features", "6"])  # fmt: skip
    assert result.exit_code == 2 and "NAME=PATH" in result.output
    path = write_surrogate_hospital(tmp_path / "north.npz", _hospitals()[0])
    result = runner.invoke(app, ["federated", "surrogate", "--hospital", f"north={path}",
                                 "--n-features", "0"])  # fmt: skip
    assert result.exit_code == 2 and "n_features >= 1" in result.output, result.output
    result = runner.invoke(app, ["federated", "surrogate", "--hospital", f"north={path}",
                                 "--n-features", "6", "--audit-log", "a.log"])  # fmt: skip
    assert result.exit_code == 2 and "go together" in result.output
    for args, message in (
        (["--model", "gru"], "mlp, lstm or transformer"),
        (["--model", "lstm", "--n-static", "2"], "n_static and n_channels >= 1"),
        (["--model", "transformer", "--n-static", "2", "--n-channels", "2"], "n_steps >= 1"),
        (["--model", "transformer", "--n-static", "2", "--n-channels", "2", "--n-steps",
          "2", "--hidden", "6,8", "--heads", "4"], "heads >= 1 dividing the width 6"),
    ):  # fmt: skip
        result = runner.invoke(app, ["federated", "surrogate", "--hospital", f"north={path}",
                                     *args])  # fmt: skip
        assert result.exit_code == 2 and message in result.output, (args, result.output)


@pytest.mark.extended  # 91 s on 2 shared cores (a deployed run and a 30 s round timeout)
def test_a_supernode_killed_mid_run_fails_the_run_naming_it(tmp_path):
    """east's SuperNode (and worker) is killed once round 1 is in the server's audit log:
    round 2 gets two replies within its timeout and the run fails naming east; nothing is
    averaged over the two that are left."""
    from surrogates.federated import run_surrogate_fit, surrogate_deployment

    clients = _hospitals()
    hospitals = {
        name: str(write_surrogate_hospital(tmp_path / f"{name}.npz", client))
        for name, client in zip(("north", "south", "east"), clients, strict=True)
    }
    write_signing_key(tmp_path / "server.key")
    log = tmp_path / "server.log"
    with surrogate_deployment(hospitals) as federation:
        killed = threading.Event()

        def kill_east_after_round_one():
            deadline = time.monotonic() + 400
            while time.monotonic() < deadline:
                if log.exists() and '"round":1' in log.read_text(encoding="utf-8"):
                    federation.kill_node("east")
                    killed.set()
                    return
                time.sleep(0.2)

        watcher = threading.Thread(target=kill_east_after_round_one, daemon=True)
        watcher.start()
        with pytest.raises(FederatedFitError, match=r"round 2: 2 of 3 .*missing: east") as e:
            run_surrogate_fit(federation, network=NETWORK, rounds=3, local=LOCAL,
                              audit_log=log, audit_key=tmp_path / "server.key",
                              round_timeout=30, timeout=500)  # fmt: skip
        watcher.join(timeout=10)
    assert killed.is_set() and e.value.hospitals == ("east",)
    kinds = [(d.details["round"], d.details["kind"]) for d in read_entries(log)]
    assert kinds == [(1, "train"), (2, "failed")]
    assert verify(log, tmp_path / "server.key.pub").ok
