"""Federated XGBoost (surrogates.federated._xgb): Flower's FedXgbBagging / FedXgbCyclic with a
ClientApp per hospital.

References the tests compare with: XGBoost itself on the pooled records (one hospital's
bagging is centralised boosting, tree for tree; K hospitals holding the same records give K
identical trees at eta / K, i.e. one centralised tree at eta), the accuracy of centralised
XGBoost on IID splits of a known logistic model, hand-broken models for the server's checks,
and the pure simulation for Flower's simulation engine."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from surrogates.federated import _xgb as X
from surrogates.federated._fedavg import Client
from surrogates.federated._population_fit import FederatedFitError
from surrogates.federated._surrogate_apps import HospitalRecords, simulate
from twins.governance import (
    Consent,
    Decision,
    Purpose,
    read_entries,
    write_pseudonym_key,
    write_signing_key,
)

pytestmark = pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")

P = 6


def _logistic(n, *, seed, shift=0.0):
    """Records of a known logistic model with an interaction (trees must find it)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, P)) + shift
    logit = 1.5 * x[:, 0] - x[:, 1] + 1.2 * x[:, 2] * (x[:, 3] > 0) - 0.3
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(float)
    return Client(x.astype(np.float32), y)


def _pooled(clients):
    return Client(np.concatenate([c.x for c in clients]), np.concatenate([c.y for c in clients]))


def test_one_hospitals_bagging_is_centralised_boosting_tree_for_tree():
    c = _logistic(300, seed=1)
    fed = X.bagging_training([c], rounds=6)
    central = X.centralised(c, rounds=6)
    assert len(X.trees_of(fed.model)) == 6
    for a, b in zip(X.trees_of(fed.model), X.trees_of(central), strict=True):
        assert X._tree_values(a) == X._tree_values(b)
    test = _logistic(500, seed=2)
    np.testing.assert_array_equal(X.predict(fed.model, test.x), X.predict(central, test.x))


def test_identical_hospitals_add_k_trees_at_eta_over_k_one_centralised_tree():
    """Three hospitals with the same records grow the same tree; at eta / 3 the sum of the
    three is the centralised tree at eta (leaf values to float32 rounding)."""
    c = _logistic(300, seed=3)
    fed = X.bagging_training([c, c, c], rounds=1)
    central = X.centralised(c, rounds=1)
    trees = X.trees_of(fed.model)
    assert len(trees) == 3
    (tree,) = X.trees_of(central)
    assert all(X._tree_values(t)[:3] == X._tree_values(tree)[:3] for t in trees)  # same splits
    leaves = np.asarray(tree["left_children"]) == -1
    leaf_fed = 3 * np.asarray(trees[0]["split_conditions"])[leaves]
    np.testing.assert_allclose(leaf_fed, np.asarray(tree["split_conditions"])[leaves], rtol=1e-6)
    test = _logistic(400, seed=4)
    np.testing.assert_allclose(X.predict(fed.model, test.x), X.predict(central, test.x),
                               rtol=0, atol=1e-6)  # fmt: skip


# On IID splits the federation must come within this of centralised XGBoost trained for the
# same rounds on the pooled records, on 6,000 held-out records (the standard error of a
# difference in accuracy is about 0.006 there).
IID_TOLERANCE = {"accuracy": 0.02, "roc_auc": 0.015}


def test_iid_bagging_and_cyclic_are_within_tolerance_of_centralised():
    from surrogates.federated._surrogate_models import scores

    train = _logistic(1800, seed=5)
    order = np.random.default_rng(6).permutation(1800)
    sites = [Client(train.x[i], train.y[i]) for i in np.array_split(order, 3)]
    test = _logistic(6000, seed=7)
    rounds = 20
    central = scores(test.y, X.predict(X.centralised(train, rounds=rounds), test.x))
    bag = X.bagging_training(sites, rounds=rounds)
    cyc = X.cyclic_training(sites, rounds=rounds)
    for out in (bag, cyc):
        got = scores(test.y, X.predict(out.model, test.x))
        for key, tol in IID_TOLERANCE.items():
            assert abs(got[key] - central[key]) < tol, (key, got, central)
    assert central["roc_auc"] > 0.8  # the task is learnt, not a coin toss
    # Payload: bagging sends one tree per hospital per round and receives the growing model.
    assert bag.bytes_down > bag.bytes_up > 0


def _tree_model(**change):
    model = json.loads(X.centralised(_logistic(200, seed=8), rounds=1))
    tree = model["learner"]["gradient_booster"]["model"]["trees"][0]
    for key, value in change.items():
        if key in tree:
            tree[key] = value(tree[key])
        else:
            value(model)
    return json.dumps(model).encode()


def test_the_server_rejects_malformed_models_saying_why():
    b = X.Boosting()
    ok = dict(n_features=P, new_trees=1, max_leaf=b.max_leaf())
    assert X.check_model(_tree_model(), **ok) == 1
    cases = {
        b"not json at all": "not an XGBoost JSON model",
        b'{"learner": {}}': "not an XGBoost JSON model",
        _tree_model(split_conditions=lambda v: [float("nan"), *v[1:]]): "not finite",
        _tree_model(split_conditions=lambda v: [v[0]] + [100.0] * (len(v) - 1)): "beyond eta",
        _tree_model(split_indices=lambda v: [P + 3, *v[1:]]): "outside 0-5",
    }
    for model, why in cases.items():
        with pytest.raises(ValueError, match=why):
            X.check_model(model, **ok)
    with pytest.raises(ValueError, match="6 features, expected 7"):
        X.check_model(_tree_model(), **{**ok, "n_features": 7})
    with pytest.raises(ValueError, match="1 trees, expected 2"):
        X.check_model(_tree_model(), **{**ok, "new_trees": 2})
    # Cyclic: the earlier trees must come back unchanged.
    c = _logistic(200, seed=8)
    one = X.centralised(c, rounds=1)
    params = b.params()
    two = X.local_boost(one, c.x, c.y, params, 1, new_only=False)
    assert X.check_model(two, **ok, previous=one) == 2
    other = X.local_boost(X.centralised(_logistic(200, seed=9), rounds=1), c.x, c.y, params, 1,
                          new_only=False)  # fmt: skip
    with pytest.raises(ValueError, match="tree 0 of the global model was changed"):
        X.check_model(other, **ok, previous=one)


def test_what_the_server_sees_counts_of_patients_per_node_and_their_values():
    """A round-1 tree tells the server how many of the hospital's patients fall in each
    node (sum_hessian x 4 at p = 0.5) and thresholds that are patients' own values."""
    c = _logistic(250, seed=10)
    tree = X.trees_of(X.bagging_training([c], rounds=1).model)[0]
    left = np.asarray(tree["left_children"])
    counts = 4 * np.asarray(tree["sum_hessian"])
    np.testing.assert_allclose(counts[0], 250, rtol=1e-6)
    np.testing.assert_allclose(counts[left == -1].sum(), 250, rtol=1e-6)
    for node in np.flatnonzero(left != -1):
        feature, threshold = tree["split_indices"][node], tree["split_conditions"][node]
        assert np.any(np.isclose(c.x[:, feature], threshold, rtol=0, atol=1e-6))


def _records(tmp_path, name, client, deny=(), everyone_denies=False):
    """A hospital with consent decisions: every patient permits federated use, `deny`
    denies (or everyone, with `everyone_denies`)."""
    ids = tuple(f"{name}-{i:03d}" for i in range(len(client)))
    from surrogates.federated import write_consents

    consents = [Consent(i, Purpose.FEDERATED_TRAINING, Decision.PERMIT, source=f"C/{i}")
                for i in ids]  # fmt: skip
    denied = ids if everyone_denies else tuple(ids[i] for i in deny)
    consents += [Consent(i, Purpose.FEDERATED_TRAINING, Decision.DENY, source=f"D/{i}")
                 for i in denied]  # fmt: skip
    write_consents(tmp_path / f"{name}.csv", consents)
    write_signing_key(tmp_path / f"{name}.key")
    write_pseudonym_key(tmp_path / f"{name}.psn")
    config = {
        "consent-path": str(tmp_path / f"{name}.csv"),
        "audit-log": str(tmp_path / f"{name}.log"),
        "audit-key": str(tmp_path / f"{name}.key"),
        "pseudonym-key": str(tmp_path / f"{name}.psn"),
    }
    return HospitalRecords(name, client, ids, config)


@pytest.mark.extended  # 45-70 s (Ray's start, 5 hospitals, 3 rounds); make test checks the
# server's rejection, consent and the bagging numerics without Flower (tests above and
# test_federated_surrogate_consent.py), and Flower's simulation engine in
# test_federated_surrogates_flower.py
def test_flower_bagging_rejects_a_malformed_site_names_it_and_honours_consent(tmp_path):
    """Flower's simulation engine, 5 hospitals, 3 rounds: `north` (one patient denies),
    `south`, `east`; `quiet` (every patient denies: contributes nothing); `rogue` (sends a
    broken model each round: rejected and named). The global model is the pure
    simulation's over north without its denying patient, south and east."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from twins.governance import AuditLog

    sites = [_logistic(n, seed=20 + i) for i, n in enumerate((120, 150, 100, 80, 90))]
    records = [
        _records(tmp_path, "north", sites[0], deny=(5,)),
        HospitalRecords("south", sites[1], tuple(f"s{i}" for i in range(150))),
        HospitalRecords("east", sites[2], tuple(f"e{i}" for i in range(100))),
        _records(tmp_path, "quiet", sites[3], everyone_denies=True),
        sites[4],
    ]
    honest = X.xgb_client_app(records)
    app = ClientApp()

    @app.train()
    def train(msg, context):
        if int(context.node_config["partition-id"]) != 4:
            return honest(msg, context)
        bad = np.frombuffer(b'{"learner": "broken"}', dtype=np.uint8)
        content = RecordDict({"arrays": ArrayRecord([bad]),
                              "metrics": MetricRecord({"num-examples": 90}),
                              "hospital": ConfigRecord({"name": "rogue"})})  # fmt: skip
        return Message(content, reply_to=msg)

    write_signing_key(tmp_path / "server.key")
    from twins.governance import load_signing_key

    audit = AuditLog(tmp_path / "server.log", load_signing_key(tmp_path / "server.key"))
    out = X.XgbOutcome()
    simulate(X.xgb_server_app(hospitals=5, rounds=3, n_features=P, outcome=out, audit=audit),
             app, 5)  # fmt: skip
    assert out.error is None and out.rounds == 3
    kept = np.delete(np.arange(120), 5)
    honest_sites = [Client(sites[0].x[kept], sites[0].y[kept]), sites[1], sites[2]]
    expected = _expected_bagging(honest_sites, k=5, rounds=3)  # eta / 5: five in the run
    assert len(X.trees_of(out.model)) == 9  # 3 contributing hospitals x 3 rounds
    probe = _logistic(300, seed=30)
    np.testing.assert_allclose(X.predict(out.model, probe.x), X.predict(expected, probe.x),
                               rtol=0, atol=1e-6)  # fmt: skip
    # The rogue hospital: rejected and named in every round.
    assert sorted(out.rejected) == [1, 2, 3]
    assert all(list(r) == ["rogue"] for r in out.rejected.values())
    # Each round in the server's audit log: who contributed, how many patients, who not.
    rounds = [e for e in read_entries(tmp_path / "server.log")
              if e.action.value == "training-round"]  # fmt: skip
    assert [e.details["round"] for e in rounds] == [1, 2, 3]
    for entry in rounds:
        d = entry.details
        assert sorted(d["hospitals"]) == ["east", "north", "south"]
        assert d["hospital_count"] == 3 and d["patient_count"] == 119 + 150 + 100
        assert "quiet" in d["no_patients"] and "rogue" in d["rejected"]
    # Consent at the hospitals: north logged its refusal once (not once a round), quiet all.
    north = [e.action.value for e in read_entries(tmp_path / "north.log")]
    assert north.count("consent-refusal") == 1 and north.count("data-access") == 1
    assert [e.action.value for e in read_entries(tmp_path / "quiet.log")].count(
        "consent-refusal"
    ) == 80


def _expected_bagging(clients, *, k, rounds):
    """Bagging of `clients` at eta / k (k hospitals in the run, some contributing
    nothing), Flower's aggregate_bagging, written out here."""
    from flwr.serverapp.strategy.strategy_utils import aggregate_bagging

    params = X.Boosting().params(0.3 / k)
    model = b""
    for _ in range(rounds):
        new = model
        for c in clients:
            new = aggregate_bagging(new, X.local_boost(model, c.x, c.y, params, 1, new_only=True))
        model = new
    return model


def test_too_few_accepted_models_stop_the_round_naming_the_rejected():
    from flwr.app import ArrayRecord, Message, Metadata, MetricRecord, RecordDict

    def reply(data, n=50):
        content = RecordDict({"arrays": ArrayRecord([np.frombuffer(data, dtype=np.uint8)]),
                              "metrics": MetricRecord({"num-examples": n})})  # fmt: skip
        meta = Metadata(run_id=1, message_id="r", src_node_id=5, dst_node_id=1,
                        reply_to_message_id="m", group_id="1", created_at=time.time(),
                        ttl=3600.0, message_type="train")  # fmt: skip
        return Message(content, metadata=meta)

    good = X.centralised(_logistic(100, seed=40), rounds=1)
    sink = X.XgbOutcome()
    from surrogates.federated._surrogate_apps import RoundAudit

    log = RoundAudit(None, fit="t", strategy="fedxgb-bagging")
    with pytest.raises(FederatedFitError, match="minimum is 2") as info:
        X._screen("bagging", 1, [reply(good), reply(b"garbage")], n_features=P,
                  boosting=X.Boosting(), eta=0.3, previous=b"", min_hospitals=2, sink=sink,
                  audit=log)  # fmt: skip
    assert info.value.round == 1 and len(info.value.hospitals) == 1
    assert log.rounds[0]["outcome"] == "failed"


@pytest.mark.extended  # ~60-150 s on 2 shared cores (a SuperLink, 3 SuperNodes, 2 rounds)
def test_the_deployment_engine_gives_the_pure_bagging_model_with_consent(tmp_path):
    """Flower's deployment engine (SuperLink + one SuperNode per hospital as processes on
    127.0.0.1, the self-contained ClientApp reading each hospital's .npz and consent
    decisions from its node config): the global model is the pure simulation's on the
    consenting patients (the same trees), and every round is in the server's audit log."""
    from surrogates.federated._xgb_run import fit_xgb_federated, write_hospital

    sites = [_logistic(n, seed=50 + i) for i, n in enumerate((90, 110, 70))]
    nodes = {}
    for i, c in enumerate(sites):
        name = ("north", "south", "east")[i]
        path = write_hospital(tmp_path / f"{name}.npz", c.x, c.y,
                              [f"{name}-{j:03d}" for j in range(len(c))])  # fmt: skip
        nodes[name] = {"data-path": str(path)}
    north = _records(tmp_path, "north", sites[0], deny=(7,))
    nodes["north"] |= dict(north.config)
    write_signing_key(tmp_path / "server.key")
    out = fit_xgb_federated(nodes, rounds=2, n_features=P, audit_log=tmp_path / "server.log",
                            audit_key=tmp_path / "server.key", workdir=tmp_path / "flower",
                            timeout=400)  # fmt: skip
    kept = np.delete(np.arange(90), 7)
    pure = X.bagging_training([Client(sites[0].x[kept], sites[0].y[kept]), *sites[1:]], rounds=2)
    # The same trees; Flower appends them in the order the replies arrive, so the float32
    # sum of a prediction may differ in its last bit.
    assert sorted(map(X._tree_values, X.trees_of(out.model))) == sorted(
        map(X._tree_values, X.trees_of(pure.model))
    )
    probe = _logistic(300, seed=60)
    np.testing.assert_allclose(X.predict(out.model, probe.x), X.predict(pure.model, probe.x),
                               rtol=0, atol=1e-6)  # fmt: skip
    assert (out.bytes_up, out.bytes_down) == (pure.bytes_up, pure.bytes_down)
    rounds = [e.details for e in read_entries(tmp_path / "server.log")
              if e.action.value == "training-round"]  # fmt: skip
    assert [d["round"] for d in rounds] == [1, 2]
    assert all(d["patient_count"] == 89 + 110 + 70 for d in rounds)
    assert [e.action.value for e in read_entries(tmp_path / "north.log")].count(
        "consent-refusal"
    ) == 1


@pytest.mark.extended  # ~45-60 s on 2 shared cores (Ray's start); cyclic's numerics above
def test_flower_cyclic_visits_one_hospital_a_round_and_gives_the_pure_model():
    """Flower's FedXgbCyclic through the simulation engine: one hospital a round (in the
    order Flower registers the nodes, read from the round log), each boosting 2 rounds on
    the global model; the model is those boosting rounds done in that order here."""
    sites = [_logistic(n, seed=70 + i) for i, n in enumerate((80, 100, 90))]
    names = ("north", "south", "east")
    records = [HospitalRecords(nm, c, tuple(f"{nm}{i}" for i in range(len(c))))
               for nm, c in zip(names, sites, strict=True)]  # fmt: skip
    out = X.XgbOutcome()
    boosting = X.Boosting(local_rounds=2)
    server = X.xgb_server_app(hospitals=3, rounds=3, n_features=P, strategy="cyclic",
                              boosting=boosting, outcome=out)  # fmt: skip
    simulate(server, X.xgb_client_app(records), 3)
    visited = [r["hospitals"] for r in out.round_log]
    assert sorted(h for (h,) in visited) == sorted(names)  # each once, one a round
    model = b""
    for (h,) in visited:
        c = sites[names.index(h)]
        model = X.local_boost(model, c.x, c.y, boosting.params(), 2, new_only=False)
    assert len(X.trees_of(out.model)) == 6
    assert [X._tree_values(t) for t in X.trees_of(out.model)] == [
        X._tree_values(t) for t in X.trees_of(model)
    ]


@pytest.mark.extended  # ~30-60 s (simulating the 5 hospitals' patients)
def test_table3_has_xgboost_rows_beside_the_networks():
    from surrogates.federated._table3 import surrogate_table

    table = surrogate_table(5, n_total=600, rounds=1, xgboost_rounds=3)
    xgb = table[table["model"].astype(str).str.startswith("xgboost")]
    assert list(xgb["setting"]) == ["centralised"] + ["federated, 5 hospitals"] * 2
    assert list(xgb["trees"]) == [3, 15, 3]  # bagging: 5 trees a round
    assert (xgb["unit"] == "none").all() and (xgb["federation"] == 5).all()
    assert ((xgb["accuracy"] > 0.3) & (xgb["accuracy"] < 1)).all()
    assert (xgb.loc[xgb["model"] == "xgboost bagging", "bytes_down"] > 0).all()
    assert (table.loc[~table.index.isin(xgb.index), "model"] == ["mlp"] * 2
            + ["mlp (fedavg)"] * 3).all()  # fmt: skip


class _Grid:
    """Flower's Grid as the XGBoost strategies call it: the connected nodes, and replies
    (none here: every hospital's reply was lost); it notes the timeout it is given."""

    def __init__(self, nodes):
        self.nodes, self.timeouts = list(nodes), []

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None):
        self.timeouts.append(timeout)
        return []


@pytest.mark.parametrize("strategy", ["bagging", "cyclic"])
def test_a_round_waits_a_bounded_time_for_hospitals_and_replies(strategy, monkeypatch):
    """Flower's strategies wait without end for `min_available_nodes` and an hour for
    replies: `serve_xgb` bounds both by `round_timeout`. Bagging needs `min_hospitals`
    connected (2 of 3 here: the round is sent, with the timeout, and fails for want of
    accepted models); cyclic needs every hospital, so with one missing it fails once the
    timeout has passed, saying how many were connected."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)  # a ServerApp's run, as Flower sets it
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    grid = _Grid([11, 12])
    t0 = time.monotonic()
    if strategy == "bagging":
        with pytest.raises(FederatedFitError, match=r"round 1: 0 hospital\(s\).*minimum is 2"):
            X.serve_xgb(grid, hospitals=3, rounds=2, n_features=P, strategy=strategy,
                        min_hospitals=2, round_timeout=0.7)  # fmt: skip
        assert grid.timeouts == [0.7]
    else:
        match = r"round 1: 2 of 3 hospitals connected for \d+ s .*needs at least 3"
        with pytest.raises(FederatedFitError, match=match):
            X.serve_xgb(grid, hospitals=3, rounds=2, n_features=P, strategy=strategy,
                        round_timeout=0.7)  # fmt: skip
        assert grid.timeouts == [] and 0.7 <= time.monotonic() - t0 < 10
