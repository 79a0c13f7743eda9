"""The live twin service's incremental update (`extend` in twins/io/_service_twin.py)
against the full replay of every patient's messages (`TwinService(incremental=False)`).

Two services with the same keys are fed the same messages in the same batches: new levels
(on time, late, at a time another level has, of status preliminary), then what must fall
back to a replay (a lab, a retraction, a new version, a new dose, a level before the
patient's origin, a level on the next day, a consent that forbids treatment). After every
batch both must have written the same outputs, the same dead letters and the same
posteriors; the incremental one must have extended twins where it could.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from test_stream_service import _obs, dose, level, patient_messages, send

import twins
from twins.governance import AuditLog, Governance, generate_pseudonym_key, generate_signing_key
from twins.io import TwinService

SITE = "ward-7"


def _service(tmp_path, name, keys, incremental):
    folder = tmp_path / name
    folder.mkdir()
    gov = Governance(AuditLog(folder / "audit.jsonl", keys[1]), keys[0], actor="twins-serve")
    return TwinService(
        folder / "state.db",
        site=SITE,
        drugs={"vancomycin": twins.drugs.get("vancomycin_goti2018")},
        governance=gov,
        n_draws=50,
        incremental=incremental,
    )


def _retract(resource: dict) -> dict:
    r = copy.deepcopy(resource)
    r["status"] = "entered-in-error"
    r["meta"] = {"versionId": "2"}
    return r


def _batches() -> list[list[dict]]:
    setup = []
    for pid in ("p-1", "p-2", "p-3"):
        setup += [r for _, r in patient_messages(pid, n_doses=3)]
    p1_late = level("p-1", 3, 5.5, 14.0)
    prelim = level("p-3", 4, 30.5, 12.0)
    prelim["status"] = "preliminary"
    p2_new_version = level("p-2", 2, 30.0, 13.0)
    p2_new_version["meta"] = {"versionId": "2"}
    p2_new_version["valueQuantity"]["value"] = 12.5
    deny = {
        "resourceType": "Consent",
        "id": "p-3-deny",
        "status": "active",
        "scope": {"coding": [{"code": "treatment"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "57016-8"}]}],
        "patient": {"reference": "Patient/p-3"},
        "provision": {
            "type": "deny",
            "purpose": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
            ],
        },
    }
    return [
        setup,
        # new levels: extended
        [level("p-1", 2, 35.5, 12.0), level("p-2", 2, 30.0, 13.0)],
        # a late level, a level at the time of another, a preliminary one: extended
        [p1_late, level("p-3", 2, 23.5, 10.5), prelim],
        # a lab, a new version of a level, a new dose, a retraction: replayed
        [
            _obs("p-1-scr-2", "p-1", "2160-0", 30.0, 1.6, "mg/dL"),
            p2_new_version,
            dose("p-3", 3, 36.0),
            _retract(p1_late),
        ],
        # after a replay, a new level is extended again; a level before the origin and one
        # on the next day are replayed; a consent that forbids treatment is replayed
        [level("p-1", 4, 37.0, 11.0), level("p-2", 3, -3.0, 1.0), level("p-3", 5, 47.5, 9.0)],
        [level("p-1", 5, 39.0, 10.0), deny, level("p-3", 6, 48.0, 9.5)],
    ]


def _state(svc: TwinService):
    dead = [(reason, message) for _, _, _, reason, message in svc.store.dead_letters()]
    return svc.posteriors(), dead


def _same(a, b, where):
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        # the same arrays in the same order: the same numbers (a few ulps allowed for the
        # summation order of the compiled program, which does not change here)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=0, err_msg=where)
    else:
        assert a == b, where


@pytest.mark.slow
def test_incremental_updates_equal_full_replays(tmp_path):
    keys = generate_pseudonym_key(), generate_signing_key()
    fast = _service(tmp_path, "fast", keys, True)
    full = _service(tmp_path, "full", keys, False)
    extended_after = []
    for k, batch in enumerate(_batches()):
        for r in batch:
            a, b = send(fast, r), send(full, r)
            assert (a.outcome, a.reason) == (b.outcome, b.reason), (k, r["id"])
        while fast.store.pending(1) or full.store.pending(1):
            out_fast, out_full = fast.process(), full.process()
            _same(json.loads(json.dumps(out_fast)), json.loads(json.dumps(out_full)), f"batch {k}")
        _same(_state(fast), _state(full), f"state after batch {k}")
        extended_after.append(fast.counts["extended"])
    assert full.counts["extended"] == 0
    # (cumulative counts of extended twins after each batch)
    assert extended_after[0] == 0
    assert extended_after[1] == 2  # p-1, p-2
    assert extended_after[2] == 4  # p-1 (late level), p-3 (equal time and preliminary)
    assert extended_after[3] == 4  # lab, new version, dose, retraction: all replayed
    assert extended_after[4] == 5  # p-1; p-2 (before the origin) and p-3 (next day) replayed
    assert extended_after[5] == 6  # p-1; p-3 (its consent) replayed
    reasons = [reason for _, _, _, reason, _ in full.store.dead_letters()]
    assert any("consent forbids treatment" in r for r in reasons), reasons
    fast.close()
    full.close()
