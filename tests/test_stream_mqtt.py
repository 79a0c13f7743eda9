"""The twin service on a real Eclipse Mosquitto broker (paho-mqtt 2.x, MQTT 5, QoS 1).

Each test starts its own `mosquitto` on 127.0.0.1 on a free port, with a generated config
(persistence on, in tmp_path), and stops it at the end. Without `mosquitto` the tests FAIL
(`apt-get install mosquitto`); they are never skipped. Every wait is bounded.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_stream_service import (
    SITE,
    assert_doses_and_levels_updated,
    assert_processed_once,
    assert_same_twins,
    make_service,
    modes,
    patient_messages,
    send,
)

from twins.governance import (
    generate_signing_key,
    read_entries,
    write_pseudonym_key,
    write_signing_key,
)
from twins.io import MqttService

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Mosquitto:
    """A mosquitto process with a generated config in `folder` (persistence on); `settings`
    are the listener's config lines (default: anonymous clients allowed, plain TCP)."""

    def __init__(self, folder: Path, *, settings: str = "allow_anonymous true\n"):
        exe = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
        )
        if exe is None:
            pytest.fail(
                "mosquitto (the Eclipse Mosquitto MQTT broker) is not installed; install it "
                "with `apt-get install mosquitto` (.ci/run does so)."
            )
        self.exe = exe
        self.folder = folder
        self.port = _free_port()
        self.config = folder / "mosquitto.conf"
        (folder / "data").mkdir()
        self.config.write_text(
            f"listener {self.port} {HOST}\n"
            f"{settings}"
            "persistence true\n"
            f"persistence_location {folder / 'data'}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 100000\n"
            f"log_dest file {folder / 'mosquitto.log'}\n"
            f"user {getpass.getuser()}\n"
        )
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> None:
        with open(self.folder / "stderr.log", "ab") as err:
            self.process = subprocess.Popen(
                [self.exe, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=err
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        logs = [self.folder / "stderr.log", self.folder / "mosquitto.log"]
        text = "\n".join(p.read_text(errors="replace") for p in logs if p.exists())
        pytest.fail(f"mosquitto ({self.exe}) did not start on {HOST}:{self.port}:\n{text}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None


@pytest.fixture
def broker(tmp_path):
    folder = tmp_path / "broker"
    folder.mkdir()
    b = Mosquitto(folder)
    b.start()
    yield b
    b.stop()


class Listener:
    """A client that records what the service publishes (`twins/<site>/#`)."""

    def __init__(self, port: int):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe(f"twins/{SITE}/#", qos=1)
        self.client.on_subscribe = lambda *_: self._ready.set()
        self.client.on_message = self._on_message
        self.client.connect(HOST, port)
        self.client.loop_start()
        assert self._ready.wait(10), "the listener could not subscribe"

    def _on_message(self, client, userdata, message):
        if "/in/" in message.topic:
            return
        with self._lock:
            self.messages.append((message.topic, json.loads(message.payload)))

    def on(self, topic: str) -> list[dict]:
        with self._lock:
            return [b for t, b in self.messages if t == topic]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def publish(port: int, items, *, delay: float = 0.0) -> None:
    """Publish `(resource type, resource)` items with QoS 1 (each acknowledged)."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect(HOST, port)
    c.loop_start()
    try:
        for rtype, r in items:
            payload = r if isinstance(r, bytes) else json.dumps(r)
            c.publish(f"twins/{SITE}/in/{rtype}", payload, qos=1).wait_for_publish(10)
            if delay:
                time.sleep(delay)
    finally:
        c.disconnect()
        c.loop_stop()


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _done(service) -> int:
    return sum(m.state != "pending" for m in service.store.messages())


def test_a_published_level_gets_a_recommendation(broker, tmp_path):
    svc = make_service(tmp_path)
    listener = Listener(broker.port)
    runner = MqttService(svc, HOST, broker.port, status_every=0.5).start()
    try:
        assert runner.connected.wait(10), "the service did not connect"
        msgs = patient_messages("p-1")
        publish(broker.port, msgs)
        publish(broker.port, [("Observation", b"{not json")])
        topics = svc.topics
        wait_for(
            lambda: any(len(msgs) in b["messages"] for b in listener.on(topics.recommendation)),
            60,
            "the recommendation caused by the last level",
        )
        wait_for(lambda: listener.on(topics.dead_letter), 10, "the dead letter")
        # The status is periodic: one published before the twin was counted may arrive
        # after the recommendation; wait for one that counts it.
        wait_for(
            lambda: any(s.get("twins") == 1 for s in listener.on(topics.status)),
            10,
            "a status message counting the twin",
        )
        rec = [b for b in listener.on(topics.recommendation) if len(msgs) in b["messages"]][-1]
        assert rec["resource"]["resourceType"] == "MedicationRequest"
        assert rec["resource"]["intent"] == "proposal"
        assert rec["cause"]["message"] == len(msgs)
        assert rec["cause"]["reference"].startswith("Observation/psn-results-")
        assert "not UTF-8 JSON" in listener.on(topics.dead_letter)[0]["reason"]
        status = [s for s in listener.on(topics.status) if s.get("twins") == 1][-1]
        assert status["state"] == "running"
        everything = json.dumps(listener.messages)
        for raw in ("p-1-", "MRN-", "Family-", "1961-05-02"):
            assert raw not in everything.replace(json.dumps(listener.on(topics.dead_letter)), "")
        wait_for(runner.idle, 10, "every output acknowledged by the broker")
    finally:
        runner.stop()
        listener.close()
        svc.close()


def test_service_and_broker_restarts_catch_up(broker, tmp_path):
    """Messages published while the service is down, then while the broker restarts, all
    reach the twins once: the same twins as every message given in order."""
    msgs = (
        patient_messages("p-1")
        + patient_messages("p-2", n_doses=3, levels=((23.0, 12.0),))
        + patient_messages("p-3", n_doses=2, levels=((11.5, 7.5),))
    )
    ref = make_service(tmp_path, "ref")
    key = ref.governance.key
    for _, r in msgs:
        send(ref, r)
    ref.process()
    signing = generate_signing_key()
    first = make_service(tmp_path, key=key, signing=signing)
    runner = MqttService(first, HOST, broker.port).start()
    assert runner.connected.wait(10)
    publish(broker.port, msgs[:10])
    wait_for(lambda: _done(first) == 10 and runner.idle(), 60, "the first 10 messages")
    runner.stop()
    first.close()
    publish(broker.port, msgs[10:16])  # the service is down: the broker keeps them
    second = make_service(tmp_path, key=key, signing=signing)
    runner = MqttService(second, HOST, broker.port).start()
    try:
        wait_for(lambda: _done(second) == 16, 60, "the messages sent while it was down")
        broker.stop()
        wait_for(lambda: not runner.connected.is_set(), 10, "the service to see the broker go")
        broker.start()
        publish(broker.port, msgs[16:])  # maybe before the service has reconnected
        wait_for(lambda: _done(second) == len(msgs), 60, "every message after the restart")
        wait_for(runner.idle, 20, "every output published")
    finally:
        runner.stop()
    assert len(second.store.messages()) == len(msgs)
    assert second.store.dead_letters() == []
    assert_same_twins(modes(second), modes(ref))
    assert_processed_once(tmp_path / "svc" / "audit.jsonl", len(msgs))
    assert_doses_and_levels_updated(second, tmp_path / "svc" / "audit.jsonl")
    second.close()
    ref.close()


def _db_counts(path: Path) -> tuple[int, int, int]:
    """(messages, processed, unpublished outputs) read from the service's database."""
    if not path.exists():
        return 0, 0, 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        n = db.execute("SELECT COUNT(*), SUM(state!='pending') FROM messages").fetchone()
        u = db.execute("SELECT COUNT(*) FROM outbox WHERE published=0").fetchone()[0]
    except sqlite3.OperationalError:  # the tables are not made yet
        return 0, 0, 0
    finally:
        db.close()
    return int(n[0]), int(n[1] or 0), int(u)


# Extended: two `twins serve` processes each import JAX and compile the twin's functions
# (about a minute on 2 cores). In make test, test_crash_between_audit_and_commit_is_not_repeated
# (test_stream_service.py) crashes a service between its audit append and its commit and
# restarts it, and test_service_and_broker_restarts_catch_up restarts the service and the
# broker mid-stream over MQTT; this test adds a real SIGKILL of the command-line service.
@pytest.mark.extended
def test_sigkill_mid_stream_then_restart(broker, tmp_path):
    msgs = [
        m
        for i in range(4)
        for m in patient_messages(f"p-{i}", n_doses=3, levels=((11.5, 8.0 + i), (23.5, 10.0)))
    ]
    keys = tmp_path / "keys"
    keys.mkdir()
    key = write_pseudonym_key(keys / "pseudonym.key")
    signing = write_signing_key(keys / "audit.key")
    state, audit = tmp_path / "state.db", tmp_path / "audit.jsonl"
    cmd = [
        sys.executable, "-m", "twins.app._cli", "serve",
        "--broker", f"{HOST}:{broker.port}", "--site", SITE,
        "--state", str(state), "--audit", str(audit),
        "--signing-key", str(keys / "audit.key"), "--key-file", str(keys / "pseudonym.key"),
        "--draws", "100", "--compilation-cache", str(tmp_path / "jax-cache"),
        "--status-every", "1",
    ]  # fmt: skip
    logs = tmp_path / "serve.log"
    listener = Listener(broker.port)
    half = len(msgs) // 2
    with open(logs, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            status = f"twins/{SITE}/status"
            wait_for(lambda: listener.on(status), 120, f"the service's status (log: {logs})")
            publish(broker.port, msgs[:half], delay=0.05)
            wait_for(lambda: _db_counts(state)[1] >= 8, 240, "some messages processed")
            proc.send_signal(signal.SIGKILL)  # mid-stream: messages stored, not all processed
            proc.wait(10)
            before = _db_counts(state)
            assert before[1] < len(msgs)
            publish(broker.port, msgs[half:])  # while it is dead: the broker keeps them
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            wait_for(
                lambda: _db_counts(state) == (len(msgs), len(msgs), 0),
                240,
                f"every message processed after the restart (log: {logs})",
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            listener.close()
    ref = make_service(tmp_path, "ref", key=key, signing=signing)
    for _, r in msgs:
        send(ref, r)
    ref.process()
    db = sqlite3.connect(state)
    restarted = {
        (p, s): np.asarray(json.loads(post)["mode"])
        for p, s, post in db.execute("SELECT patient, substance, posterior FROM twins")
    }
    assert db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0] == 0
    db.close()
    assert_same_twins(restarted, modes(ref))
    assert_processed_once(audit, len(msgs))
    db = sqlite3.connect(state)
    rids = dict(db.execute("SELECT seq, rid FROM messages").fetchall())
    db.close()
    named = {
        seq
        for e in read_entries(audit)
        if e.action.value == "twin-update"
        for seq in e.details["messages"]
    }
    wanted = {seq for seq, rid in rids.items() if "-dose-" in rid or "-level-" in rid}
    assert wanted <= named, sorted(wanted - named)
    ref.close()


def test_serve_refuses_bad_arguments(tmp_path):
    """`twins serve` stops with exit code 2 and a reason, before connecting."""
    from typer.testing import CliRunner

    from twins.app._cli import app

    keys = tmp_path / "keys"
    keys.mkdir()
    write_pseudonym_key(keys / "pseudonym.key")
    write_signing_key(keys / "audit.key")
    base = ["serve", "--site", SITE, "--state", str(tmp_path / "s.db")]
    base += ["--audit", str(tmp_path / "a.jsonl"), "--signing-key", str(keys / "audit.key")]
    base += ["--key-file", str(keys / "pseudonym.key")]
    runner = CliRunner()
    for extra, why in (
        (["--broker", "localhost:port"], "HOST:PORT"),
        (["--broker", "127.0.0.1:1883", "--drug", "aspirin=x"], "SUBSTANCE=DRUG"),
        (["--broker", "127.0.0.1:1883", "--drug", "vancomycin=no_such_model"], "--drug"),
    ):
        result = runner.invoke(app, base + extra)
        assert result.exit_code == 2, (extra, result.output)
        assert why in result.output, (why, result.output)
    assert not (tmp_path / "s.db").exists()
