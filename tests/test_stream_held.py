"""Messages that arrive before their Patient: held (acknowledged, stored apart) and
received again when the Patient comes, or dead-lettered after `hold_unknown` seconds;
held messages survive a restart. The reference: a service fed the same messages in order."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
from test_stream_service import make_service, modes, patient_messages, send

from twins.governance import generate_pseudonym_key, generate_signing_key


@pytest.fixture(scope="module")
def keys():
    return generate_pseudonym_key(), generate_signing_key()


def test_messages_before_their_patient_are_held_then_used(tmp_path, keys):
    msgs = [r for _, r in patient_messages("p-1")]
    patient, rest = msgs[0], msgs[1:]
    ordered = make_service(tmp_path, "ordered", key=keys[0], signing=keys[1])
    for r in msgs:
        assert send(ordered, r).outcome == "stored"
    ordered.process()
    early = make_service(tmp_path, "early", key=keys[0], signing=keys[1])
    receipts = [send(early, r) for r in rest]
    assert [r.outcome for r in receipts] == ["held"] * len(rest)
    assert "unknown patient Patient/p-1, held up to 60 s" in receipts[0].reason
    assert send(early, rest[0]).outcome == "held"  # a repeat while held: held again
    assert early.status()["held"] == len(rest) + 1
    assert early.store.dead_letters() == [] and early.store.messages() == []
    assert early.process() == []  # nothing to process yet
    assert send(early, patient).outcome == "stored"  # releases the held messages
    assert early.status()["held"] == 0
    stored = early.store.messages()
    assert [m.rid for m in stored] == [patient["id"]] + [r["id"] for r in rest]
    assert early.store.dead_letters() == []  # the repeat was a duplicate, not an error
    while early.store.pending(1):
        early.process()
    a, b = modes(ordered), modes(early)
    assert sorted(a) == sorted(b) and len(a) == 1
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-9)
    ordered.close()
    early.close()


def test_held_messages_expire_to_dead_letters(tmp_path, keys):
    svc = make_service(tmp_path, key=keys[0], hold_unknown=30)
    level = [r for _, r in patient_messages("p-2")][-1]
    assert send(svc, level).outcome == "held"
    assert svc.expire_held() == 0  # not yet
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=31)
    assert svc.expire_held(now=later) == 1
    [(_, topic, payload, reason, message)] = svc.store.dead_letters()
    assert topic == svc.topics.input("Observation")
    assert "Patient/p-2" in reason and "did not arrive within 30 s" in reason
    assert json.loads(payload)["id"] == level["id"] and message is None
    out = [json.loads(p) for _, t, p, _ in svc.store.outputs() if t == svc.topics.dead_letter]
    assert len(out) == 1 and "did not arrive" in out[0]["reason"]
    assert svc.status()["held"] == 0
    svc.close()
    with pytest.raises(ValueError, match="hold_unknown"):
        make_service(tmp_path, "bad", key=keys[0], hold_unknown=-1)


def test_held_messages_survive_a_restart(tmp_path, keys, monkeypatch):
    msgs = [r for _, r in patient_messages("p-3")]
    first = make_service(tmp_path, key=keys[0], signing=keys[1])
    for r in msgs[1:]:
        assert send(first, r).outcome == "held"
    first.close()
    # restarted: still held; the Patient comes, but the service stops before releasing
    second = make_service(tmp_path, key=keys[0], signing=keys[1])
    assert second.status()["held"] == len(msgs) - 1
    monkeypatch.setattr(type(second), "_release", lambda self, pid: None)
    assert send(second, msgs[0]).outcome == "stored"
    second.close()
    monkeypatch.undo()
    # restarted again: the Patient is known, so the held messages are received at start
    third = make_service(tmp_path, key=keys[0], signing=keys[1])
    assert third.status()["held"] == 0
    assert len(third.store.messages()) == len(msgs)
    while third.store.pending(1):
        third.process()
    assert len(third.posteriors()) == 1
    third.close()
