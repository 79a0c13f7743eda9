"""Federated population fits on Flower's real deployment engine: a SuperLink, three
SuperNodes and their workers started as processes on 127.0.0.1 once for the module (a few
seconds each), a fit run through them, a SuperNode killed mid-fit, everything stopped.

The numerics are checked without Flower in tests/test_federated_population.py; here the
deployed fit must give exactly the numbers of the same fit in one process (the messages
carry every float exactly) and so equal the pooled fit.
"""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import threading
import time

import numpy as np
import pandas as pd
import pytest

import calibration as C
from surrogates.federated import (
    THEOPHYLLINE,
    DeploymentError,
    FederatedFitError,
    Federation,
    _deploy,
    fit_population_server,
    hospital_data,
    hospital_reply,
    population_federation,
    run_population_fit,
    split_by_subject,
    write_consents,
)
from surrogates.federated import _population_models as models
from twins.governance import (
    Consent,
    Decision,
    Purpose,
    read_entries,
    verify,
    write_pseudonym_key,
    write_signing_key,
)

pytestmark = pytest.mark.slow

REF = pathlib.Path(__file__).parent / "data" / "reference"
HOSPITALS = ("north", "south", "east")


def theo_records() -> pd.DataFrame:
    df = pd.read_csv(REF / "datasets" / "theo_sd_nlmixr2data.csv")
    df.loc[df["EVID"] == 101, "EVID"] = 1
    df.loc[df["EVID"] == 0, "CMT"] = 2
    return df


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """Three hospitals of theophylline subjects; `east` holds consent decisions (its first
    patient denied federated use) and its own audit log."""
    folder = tmp_path_factory.mktemp("federation")
    parts = split_by_subject(theo_records(), HOSPITALS)
    nodes = {}
    for name, rec in parts.items():
        rec.to_csv(folder / f"{name}.csv", index=False)
        nodes[name] = {"data-path": str(folder / f"{name}.csv")}
    ids = [str(i) for i in pd.unique(parts["east"]["ID"])]
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    write_consents(
        folder / "east-consents.csv",
        [Consent(i, Purpose.FEDERATED_TRAINING, Decision.PERMIT, start=start, source=f"C/{i}")
         for i in ids]
        + [Consent(ids[0], Purpose.FEDERATED_TRAINING, Decision.DENY, start=start, source="C/x")],
    )  # fmt: skip
    write_signing_key(folder / "east-audit.key")
    write_pseudonym_key(folder / "east-psn.key")
    nodes["east"] |= {
        "consent-path": str(folder / "east-consents.csv"),
        "audit-log": str(folder / "east-audit.log"),
        "audit-key": str(folder / "east-audit.key"),
        "pseudonym-key": str(folder / "east-psn.key"),
    }
    write_signing_key(folder / "server.key")
    with population_federation(nodes, workdir=folder / "flower") as fed:
        pids = [p.popen.pid for p in [*fed._supernodes.values(), *fed._workers.values()]]
        yield fed, folder, parts, ids
    assert all(not _deploy._alive(pid) for pid in pids), "a process outlived the federation"


# Extended: about 2-4 min on 2 cores (every FOCE-I step is a Flower round through three
# SuperNodes). make test keeps its ground: the deployment engine itself (the killed-SuperNode
# test below runs the same processes) and the federated objective equal to the pooled one
# (tests/test_federated_population.py, theophylline across three hospitals, in process).
@pytest.mark.extended
def test_the_deployed_fit_equals_the_in_process_fit_and_the_pooled_fit(deployment):
    fed, folder, parts, east_ids = deployment
    result = run_population_fit(
        fed,
        THEOPHYLLINE,
        audit_log=folder / "server.log",
        audit_key=folder / "server.key",
        fit="theophylline (tests)",
        round_timeout=180.0,
    )
    # Consent at the hospital: east's first patient never entered.
    assert result.hospitals == {"north": 4, "south": 4, "east": 3}
    assert result.diagnostics["refused"] == {"north": 0, "south": 0, "east": 1}
    kept = {n: r[r["ID"].astype(str) != east_ids[0]] for n, r in parts.items()}
    sites = {n: hospital_data(n, r, covariates=["WT"]) for n, r in kept.items()}

    def ask(kind, request):
        return {n: hospital_reply(result.model, s, kind, request, estimator=C.FOCEI())
                for n, s in sites.items()}  # fmt: skip

    same, _ = fit_population_server(result.model, list(sites), ask)
    assert result.ofv == same.ofv
    np.testing.assert_array_equal(result.table["estimate"], same.table["estimate"])
    np.testing.assert_array_equal(result.cov_phi, same.cov_phi)
    pooled = C.fit_population(
        result.model, C.Dataset.from_records(pd.concat(kept.values()), covariates=["WT"])
    )
    assert result.ofv == pytest.approx(pooled.ofv, rel=1e-6)
    np.testing.assert_allclose(result.table["estimate"], pooled.table["estimate"], rtol=5e-5)
    # Every round in the server's log (counts only), the log intact; the hospital's own
    # log holds its refusal and the data access.
    entries = read_entries(folder / "server.log")
    assert verify(folder / "server.log", folder / "server.key.pub").ok
    assert [e.details["kind"] for e in entries].count("objective") == result.rounds - 1
    assert all(e.details["patient_count"] == 11 for e in entries)
    east = [e.action.value for e in read_entries(folder / "east-audit.log")]
    assert east == ["consent-refusal", "data-access"]
    assert all(1.0 < s < 180.0 for s in result.diagnostics["round_seconds"])


def test_a_killed_supernode_fails_the_fit_naming_the_hospital(deployment):
    """A hospital whose SuperNode is killed mid-fit: the population objective would change
    without it, so the fit stops at that round, naming it (after the round's timeout)."""
    fed, _, _, _ = deployment
    # First a short fit with the usual round timeout: the hospitals' workers compile their
    # objective in its first round (it may take longer than the 15 s timeout used below,
    # which would then name every hospital).
    warm = run_population_fit(fed, THEOPHYLLINE, max_steps=1, standard_errors=False)
    assert np.isfinite(warm.ofv)
    log = fed.logs["supernode-south"]
    sent = log.read_text().count("Sending:")
    done = threading.Event()

    def kill_after_two_rounds():
        deadline = time.monotonic() + 300
        while (
            not done.is_set()
            and log.read_text().count("Sending:") < sent + 3
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        if not done.is_set():
            fed.kill_node("south")

    killer = threading.Thread(target=kill_after_two_rounds)
    killer.start()
    started = time.monotonic()
    named = r"no answer from hospital\(s\) 'south'"
    try:
        with pytest.raises(FederatedFitError, match=named) as info:
            run_population_fit(fed, THEOPHYLLINE, round_timeout=15.0)
    finally:
        done.set()
        killer.join()
    assert info.value.hospitals == ("south",)
    assert info.value.round is not None and info.value.round >= 2
    assert time.monotonic() - started < 200
    assert not fed.node_alive("south") and fed.node_alive("north") and fed.node_alive("east")


def test_a_process_that_cannot_start_is_named(tmp_path, monkeypatch):
    script = tmp_path / "broken"
    script.write_text("#!/bin/sh\necho 'cannot bind the port' >&2\nexit 3\n")
    os.chmod(script, 0o755)
    monkeypatch.setattr(_deploy, "flower_command", lambda name: str(script))
    fed = Federation({"north": {"data-path": "x.csv"}}, workdir=tmp_path / "w", start_timeout=20)
    with pytest.raises(DeploymentError, match=r"superlink exited with code 3") as info:
        with fed:
            pass
    assert "cannot bind the port" in str(info.value)


def test_an_app_reference_is_checked(tmp_path):
    app = _deploy.write_app(
        tmp_path / "app", name="x", serverapp="a:b", clientapp="c:d", config={"k": 1}
    )
    assert (app / "pyproject.toml").exists()
    with pytest.raises(TypeError, match="run config 'k' must be"):
        _deploy.write_app(tmp_path / "app2", name="x", serverapp="a:b", clientapp="c:d",
                          config={"k": [1]})  # fmt: skip
    with pytest.raises(ValueError, match="hospital names"):
        Federation({"no spaces": {}})
    assert models.load_model(THEOPHYLLINE).n_eta == 3
