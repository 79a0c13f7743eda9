"""Consent in the federated surrogates' ClientApps (surrogates.federated._surrogate_apps): a
patient who denied federated use never enters a local round, a hospital whose patients all
deny contributes nothing, the decision is made and logged once per run, and the server
writes each round to its audit log.

The ClientApps are called as Flower calls them (a train `Message` and the node's `Context`,
whose `state` Flower keeps between a run's rounds); what they send back is compared with
the local update on the records of the consenting patients, computed here."""

from __future__ import annotations

import time

import jax
import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict

from surrogates.federated import _xgb as X
from surrogates.federated import write_consents
from surrogates.federated._fedavg import Client, LocalTraining, local_update, round_key
from surrogates.federated._surrogate_apps import (
    HospitalRecords,
    RoundAudit,
    consented_rows,
    surrogate_client_app,
)
from surrogates.federated._surrogate_models import mlp
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

LOCAL = LocalTraining(steps=3, sampling_rate=1.0, learning_rate=0.05)


def _client(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return Client(x, (x[:, 0] + rng.normal(size=n) > 0).astype(np.float32))


def _hospital(tmp_path, name, client, *, deny=(), everyone=False, governed=True):
    ids = tuple(f"{name}-{i}" for i in range(len(client)))
    consents = [Consent(i, Purpose.FEDERATED_TRAINING, Decision.PERMIT, source=f"C/{i}")
                for i in ids]  # fmt: skip
    denied = ids if everyone else tuple(ids[i] for i in deny)
    consents += [Consent(i, Purpose.FEDERATED_TRAINING, Decision.DENY, source=f"D/{i}")
                 for i in denied]  # fmt: skip
    write_consents(tmp_path / f"{name}.csv", consents)
    config = {"consent-path": str(tmp_path / f"{name}.csv")}
    if governed:
        write_signing_key(tmp_path / f"{name}.key")
        write_pseudonym_key(tmp_path / f"{name}.psn")
        config |= {
            "audit-log": str(tmp_path / f"{name}.log"),
            "audit-key": str(tmp_path / f"{name}.key"),
            "pseudonym-key": str(tmp_path / f"{name}.psn"),
        }
    return HospitalRecords(name, client, ids, config)


def _context(node):
    return Context(run_id=7, node_id=100 + node, state=RecordDict(), run_config={},
                   node_config={"partition-id": node, "num-partitions": 2})  # fmt: skip


def _message(arrays, server_round, **config):
    """A train message as the SuperLink delivers it (its metadata set)."""
    config = ConfigRecord({"server-round": server_round, **config})
    meta = Metadata(run_id=7, message_id=f"m{server_round}", src_node_id=1, dst_node_id=100,
                    reply_to_message_id="", group_id=str(server_round), created_at=time.time(),
                    ttl=3600.0, message_type="train")  # fmt: skip
    return Message(RecordDict({"arrays": arrays, "config": config}), metadata=meta)


def _actions(path):
    return [e.action.value for e in read_entries(path)]


def test_a_patient_who_denies_is_absent_from_the_local_round(tmp_path):
    model = mlp(4, hidden=(8,))
    client = _client(30, 0)
    records = _hospital(tmp_path, "north", client, deny=(3, 17))
    app = surrogate_client_app(model, [records], local=LOCAL)
    context = _context(0)
    arrays = ArrayRecord(model.arrays(model.params))
    reply = app(_message(arrays, 1), context)
    got = reply.content["arrays"].to_numpy_ndarrays()
    assert reply.content["metrics"]["num-examples"] == 28
    assert reply.content["hospital"]["name"] == "north"

    def update(rows):
        x, y = client.x[rows], client.y[rows]
        new, _ = local_update(model.loss, model.params, model.params, x, y, np.ones_like(y),
                              round_key(jax.random.key(0), 1, 0), local=LOCAL)  # fmt: skip
        return model.arrays(new)

    kept = np.delete(np.arange(30), [3, 17])
    for a, b in zip(got, update(kept), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # ... and not the update with everyone (the test could fail):
    assert max(np.abs(a - b).max() for a, b in zip(got, update(np.arange(30)), strict=True)) > 1e-4
    # Decided and logged once per run: a second round asks and logs nothing more.
    app(_message(arrays, 2), context)
    actions = _actions(tmp_path / "north.log")
    assert actions.count("consent-refusal") == 2 and actions.count("data-access") == 1
    access = [e for e in read_entries(tmp_path / "north.log") if e.action.value == "data-access"]
    assert access[0].details["patient_count"] == 28 and access[0].details["refused_count"] == 2
    assert verify(tmp_path / "north.log", tmp_path / "north.key.pub").ok
    # No entry names a patient: refusals are by pseudonym.
    assert "north-3" not in (tmp_path / "north.log").read_text()


def test_a_site_whose_patients_all_deny_contributes_nothing(tmp_path):
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    model = mlp(4, hidden=(8,))
    open_site = HospitalRecords("south", _client(25, 1), tuple(f"s{i}" for i in range(25)))
    quiet = _hospital(tmp_path, "quiet", _client(20, 2), everyone=True)
    app = surrogate_client_app(model, [open_site, quiet], local=LOCAL)
    arrays = ArrayRecord(model.arrays(model.params))
    replies = [app(_message(arrays, 1), _context(i)).content for i in (0, 1)]
    assert replies[1]["metrics"]["num-examples"] == 0
    # Under client-level DP its weight stays 1 (a zero update: the mean's sensitivity C / K).
    assert replies[1]["metrics"]["unit-weight"] == 1
    for a, b in zip(replies[1]["arrays"].to_numpy_ndarrays(), arrays.to_numpy_ndarrays(),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)  # the global parameters, untouched
    # Flower's FedAvg mean over both is south's update alone.
    mean = aggregate_arrayrecords(replies, "num-examples").to_numpy_ndarrays()
    for a, b in zip(mean, replies[0]["arrays"].to_numpy_ndarrays(), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)
    actions = _actions(tmp_path / "quiet.log")
    assert actions.count("consent-refusal") == 20 and "data-access" not in actions


def test_the_xgboost_client_trains_on_consenting_patients_only(tmp_path):
    client = _client(60, 3)
    records = _hospital(tmp_path, "east", client, deny=(0, 59))
    app = X.xgb_client_app([records])
    empty = ArrayRecord([np.frombuffer(b"", dtype=np.uint8)])
    config = X.train_config(X.Boosting(learning_rate=0.1), "bagging", 1)
    reply = app(_message(empty, 1, **config), _context(0))
    got = bytes(np.asarray(reply.content["arrays"]["0"].numpy(), np.uint8).tobytes())
    kept = np.arange(1, 59)
    expected = X.local_boost(b"", client.x[kept], client.y[kept], X.Boosting().params(0.1), 1,
                             new_only=True)  # fmt: skip
    assert got == expected and reply.content["metrics"]["num-examples"] == 58


def test_consent_decisions_without_governance_are_refused_naming_the_hospital(tmp_path):
    records = _hospital(tmp_path, "west", _client(10, 4), deny=(1,), governed=False)
    with pytest.raises(ValueError, match=r"hospital 'west'.*Governance"):
        consented_rows(records, RecordDict())
    with pytest.raises(ValueError, match="3 patient IDs for 10 records"):
        HospitalRecords("west", _client(10, 4), ("a", "b", "c"))


def test_each_round_is_written_to_the_servers_audit_log(tmp_path):
    from flwr.app import MetricRecord

    write_signing_key(tmp_path / "server.key")
    audit = AuditLog(tmp_path / "server.log", load_signing_key(tmp_path / "server.key"))
    log = RoundAudit(audit, fit="warfarin MLP", strategy="fedavg")
    aggregate = log.metrics_fn()

    def content(name, n):
        return RecordDict({"metrics": MetricRecord({"num-examples": n, "bytes-up": 64}),
                           "hospital": ConfigRecord({"name": name})})  # fmt: skip

    for _ in range(2):
        metrics = aggregate([content("north", 28), content("quiet", 0)], "num-examples")
        assert metrics["bytes-up"] == pytest.approx(64.0)  # Flower's weighted mean, as before
    entries = [e for e in read_entries(tmp_path / "server.log")
               if e.action.value == "training-round"]  # fmt: skip
    assert [e.details["round"] for e in entries] == [1, 2]
    assert entries[0].details["hospitals"] == ["north"]
    assert entries[0].details["no_patients"] == ["quiet"]
    assert entries[0].details["patient_count"] == 28
    assert verify(tmp_path / "server.log", tmp_path / "server.key.pub").ok


def test_the_secagg_client_trains_on_consenting_patients_only(tmp_path):
    """The SecAgg+ hospital (Flower's legacy NumPyClient under `secaggplus_mod`) applies the
    same consent: its update is the local update on the consenting patients' records, a
    site whose patients all deny sends the global parameters back with weight 0 (1 under
    client-level DP), and the decision is logged once per run."""
    from surrogates.federated._surrogate_apps import secagg_hospital

    model = mlp(4, hidden=(8,))
    client = _client(30, 0)
    records = _hospital(tmp_path, "north", client, deny=(3, 17))
    state = RecordDict()
    hospital = secagg_hospital(model, records, 0, state, local=LOCAL)
    params = model.arrays(model.params)
    new, weight, _ = hospital.fit(params, {"server-round": 1})
    assert weight == 28
    kept = np.delete(np.arange(30), [3, 17])
    ref, _ = local_update(model.loss, model.params, model.params, client.x[kept], client.y[kept],
                          np.ones(28, np.float32), round_key(jax.random.key(0), 1, 0),
                          local=LOCAL)  # fmt: skip
    for a, b in zip(new, model.arrays(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    secagg_hospital(model, records, 0, state, local=LOCAL).fit(params, {"server-round": 2})
    actions = _actions(tmp_path / "north.log")
    assert actions.count("consent-refusal") == 2 and actions.count("data-access") == 1
    quiet = _hospital(tmp_path, "quiet", _client(20, 2), everyone=True)
    for clip, expected in ((None, 0), (1.0, 1)):
        back, weight, _ = secagg_hospital(model, quiet, 1, RecordDict(), local=LOCAL,
                                          clip=clip).fit(params, {"server-round": 1})  # fmt: skip
        assert weight == expected
        for a, b in zip(back, params, strict=True):
            np.testing.assert_array_equal(a, b)


class _Proxy:
    """What Flower's legacy strategies read of a ClientProxy here: its node ID."""

    def __init__(self, node_id):
        self.node_id = node_id


class _Manager:
    """A client manager holding the given proxies (FedAvg samples them all)."""

    def __init__(self, proxies):
        self.proxies = proxies

    def num_available(self):
        return len(self.proxies)

    def sample(self, num_clients, min_num_clients=None, criterion=None):
        return list(self.proxies)[:num_clients]


def _digest(arrays):
    """SHA-256 of the arrays, written out here as the docstring states it."""
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        h.update((np.dtype(a.dtype).str + str(tuple(a.shape))).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return "sha256:" + h.hexdigest()


@pytest.mark.parametrize("client_dp", [False, True])
def test_each_secagg_round_is_written_to_the_servers_audit_log(tmp_path, client_dp):
    """The SecAgg+ server's strategy (as SecAggPlusWorkflow calls it: configure_fit, then
    aggregate_fit with every reply's parameters replaced by the unmasked sum) writes one
    entry per round: the round, the hospitals in the sum, the node that dropped out, the
    clear-text weights, the digest of the new global model, the DP settings; a round asked
    for and never aggregated is written as halted; the log verifies."""
    from flwr.common import (
        Code,
        FitRes,
        Status,
        ndarrays_to_parameters,
        parameters_to_ndarrays,
    )
    from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg

    from surrogates.federated._surrogate_apps import SecAggRoundAudit

    write_signing_key(tmp_path / "server.key")
    audit = AuditLog(tmp_path / "server.log", load_signing_key(tmp_path / "server.key"))
    ids = [2**60 + 7, 12, 2**63 - 25]  # Flower's node IDs are 64-bit: beyond JSON's 2^53
    inner = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=3,
                   min_available_clients=3)  # fmt: skip
    dp = None
    if client_dp:
        inner = DifferentialPrivacyClientSideFixedClipping(inner, 0.7, 0.5, 3)
        dp = {"unit": "client", "noise_multiplier": 0.7, "clip": 0.5}
    secagg = {"num_shares": 3, "reconstruction_threshold": 2, "quantization_range": 2**22,
              "clipping_range": 8.0}  # fmt: skip
    log = SecAggRoundAudit(audit, fit="warfarin MLP", dp=dp, secagg=secagg)
    strategy = log.wrap(inner)
    manager = _Manager([_Proxy(i) for i in ids])
    start = [np.zeros((2, 3), np.float32), np.ones(3, np.float32)]
    total = [np.full((2, 3), 0.25, np.float32), np.full(3, 0.5, np.float32)]  # the sum
    got = []
    for server_round, weights in ((1, (28, 0, 40)), (2, (28, 0, None))):
        asked = strategy.configure_fit(server_round, ndarrays_to_parameters(start), manager)
        assert sorted(p.node_id for p, _ in asked) == sorted(ids)
        ok = Status(Code.OK, "")
        results = [
            (_Proxy(i), FitRes(ok, ndarrays_to_parameters(total), 1 if client_dp else w, {}))
            for i, w in zip(ids, weights, strict=True)
            if w is not None
        ]  # round 2: the third hospital dropped out before its masked vector
        params, _ = strategy.aggregate_fit(server_round, results, [])
        got.append(parameters_to_ndarrays(params))
    strategy.configure_fit(3, ndarrays_to_parameters(got[-1]), manager)  # halts
    log.finish()
    entries = [e.details for e in read_entries(tmp_path / "server.log")
               if e.action.value == "training-round"]  # fmt: skip
    assert [(e["round"], e["kind"]) for e in entries] == [(1, "train"), (2, "train"),
                                                          (3, "halted")]  # fmt: skip
    first, second, halted = entries
    assert first["hospital_count"] == 3 and first["dropped_node_ids"] == []
    assert second["hospital_count"] == 2 and second["sampled_count"] == 3
    assert second["dropped_node_ids"] == [str(2**63 - 25)]
    assert sorted(second["node_ids"]) == sorted([str(2**60 + 7), "12"])
    assert halted["dropped_node_ids"] == sorted(str(i) for i in ids)
    assert halted["parameter_digest"] is None
    for entry, params in zip((first, second), got, strict=True):
        assert entry["parameter_digest"] == _digest(params)
        assert entry["dp"] == dp and entry["secagg"] == secagg
    if client_dp:
        # The digest is of the noised model (the sum's mean plus Flower's noise).
        assert max(np.abs(a - b).max() for a, b in zip(got[0], total, strict=True)) > 1e-3
        assert first["patient_count"] is None  # the weights are 1: no count is known
    else:
        for a, b in zip(got[0], total, strict=True):  # FedAvg of equal parameters: them
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)
        assert (first["patient_count"], second["patient_count"]) == (68, 28)
        assert first["no_patient_node_ids"] == ["12"]
    assert log.rounds == entries
    assert verify(tmp_path / "server.log", tmp_path / "server.key.pub").ok


@pytest.mark.extended  # ~60 s on 2 shared cores (Ray's start); the strategy's entries: above
@pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")
def test_a_secagg_run_writes_its_rounds_with_the_final_models_digest(tmp_path):
    """Through Flower's simulation engine (SecAggPlusWorkflow and secaggplus_mod for real):
    one entry per round, every hospital in the sum, none dropped, and the last round's
    digest is that of the model the run ends with."""
    from surrogates.federated._surrogate_apps import (
        Outcome,
        secagg_client_app,
        secagg_server_app,
        simulate,
    )

    write_signing_key(tmp_path / "server.key")
    audit = AuditLog(tmp_path / "server.log", load_signing_key(tmp_path / "server.key"))
    model = mlp(4, hidden=(8,))
    clients = [_client(n, s) for n, s in ((30, 0), (40, 1), (35, 2))]
    outcome = Outcome()
    simulate(
        secagg_server_app(model, hospitals=3, rounds=2, outcome=outcome, audit=audit),
        secagg_client_app(model, clients, local=LOCAL),
        3,
    )
    entries = [e.details for e in read_entries(tmp_path / "server.log")
               if e.action.value == "training-round"]  # fmt: skip
    assert [(e["round"], e["kind"]) for e in entries] == [(1, "train"), (2, "train")]
    for e in entries:
        assert e["hospital_count"] == 3 and e["sampled_count"] == 3
        assert e["dropped_node_ids"] == [] and e["patient_count"] == 105
    assert outcome.params is not None
    assert entries[-1]["parameter_digest"] == _digest(outcome.params)
    assert entries[0]["parameter_digest"] != entries[1]["parameter_digest"]
    assert verify(tmp_path / "server.log", tmp_path / "server.key.pub").ok
