"""Live twins over MQTT: a broker, the twin service and a small publisher, in one script.

1. Starts Eclipse Mosquitto (`apt-get install mosquitto`) on 127.0.0.1 on a free port, with
   a generated config in a working folder.
2. Starts a `twins.io.TwinService` for site `demo` on it (`twins.io.MqttService`: QoS 1,
   a persistent session), with throwaway DEMO keys (a pseudonym key, an audit signing key;
   a hospital keeps its own apart from the data, see docs/governance.md).
3. Publishes, for a few invented patients, FHIR R4 messages as an integration engine would:
   the Patient, weight, height and serum creatinine, vancomycin infusions every 12 h, and
   trough levels drawn between them, one at a time, plus one malformed message.
4. Prints each recommendation (a MedicationRequest of `intent = proposal` on
   `twins/demo/out/recommendation`) as it arrives, with the message that caused it, and the
   dead letter; at the end, verifies the audit log.

Run: `python examples/live_twin.py` (`--patients 2 --draws 100` for a quicker run; `--out
DIR` keeps the working folder: the service's SQLite store, the audit log, the keys).
See docs/live-twins.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import jax

import twins
from twins.governance import AuditLog, Governance, verify, write_pseudonym_key, write_signing_key
from twins.io import MqttService, TwinService

SITE = "demo"
T0 = dt.datetime(2026, 3, 8, 8, 0, tzinfo=dt.UTC)
UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def _at(h: float) -> str:
    return (T0 + dt.timedelta(hours=h)).isoformat()


def _observation(rid: str, pid: str, loinc: str, h: float, value: float, unit: str) -> dict:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": _at(h),
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def dose_message(pid: str, k: int) -> dict:
    """The `k`-th 1 g vancomycin infusion (1 h, every 12 h from T0) of patient `pid`."""
    return {
        "resourceType": "MedicationAdministration",
        "id": f"{pid}-dose-{k}",
        "status": "completed",
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": "11124", "display": "vancomycin"}]
        },
        "subject": {"reference": f"Patient/{pid}"},
        "effectivePeriod": {"start": _at(12.0 * k), "end": _at(12.0 * k + 1.0)},
        "dosage": {"dose": {"value": 1.0, "unit": "g", "system": UCUM, "code": "g"}},
    }


def messages(i: int, n_levels: int) -> list[dict]:
    """An invented patient's messages, in the order a ward would send them."""
    pid = f"demo-{i + 1:03d}"
    out = [
        {"resourceType": "Patient", "id": pid, "gender": "female" if i % 2 else "male",
         "birthDate": f"{1950 + 7 * i}-04-1{i % 9}"},
        _observation(f"{pid}-wt", pid, "29463-7", -1.0, 62.0 + 9 * i, "kg"),
        _observation(f"{pid}-ht", pid, "8302-2", -1.0, 165.0 + 4 * i, "cm"),
        _observation(f"{pid}-scr", pid, "2160-0", -1.0, 0.8 + 0.25 * i, "mg/dL"),
    ]  # fmt: skip
    for k in range(n_levels + 1):
        out.append(dose_message(pid, k))
        if k < n_levels:  # a trough just before the next dose
            trough = 7.0 + 2.0 * k + 1.5 * i
            h = 12.0 * k + 11.5
            out.append(_observation(f"{pid}-level-{k}", pid, "4092-3", h, trough, "mg/L"))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(folder: Path) -> tuple[subprocess.Popen, int]:
    """Mosquitto on 127.0.0.1 on a free port, its config, data and log in `folder`."""
    exe = shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto")
    if exe is None:
        raise SystemExit("mosquitto is not installed: apt-get install mosquitto")
    port = _free_port()
    (folder / "broker").mkdir()
    conf = folder / "broker" / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        f"persistence_location {folder / 'broker'}/\nlog_dest file {folder / 'broker' / 'log'}\n"
        f"user {getpass.getuser()}\n"  # as root, mosquitto would otherwise run as 'mosquitto'
    )
    proc = subprocess.Popen(
        [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"mosquitto did not start (see {folder / 'broker' / 'log'})")


def _describe(body: dict) -> str:
    r = body["resource"]
    ext = {e["url"].rsplit("/", 1)[-1]: e for e in r.get("extension", [])}
    p = ext["probability"]["valueDecimal"]
    metric = ext["target-metric"]["valueString"]
    lo, hi = ext["target-low"]["valueDecimal"], ext["target-high"]["valueDecimal"]
    cause = body["cause"]
    return (
        f"{body['patient'][:28]}…  after {cause['reference'][:36]}… (message "
        f"{cause['message']}): {r['dosageInstruction'][0]['text']}; P({lo:g} <= {metric} <= "
        f"{hi:g}) = {p:.0%}"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=3)
    parser.add_argument("--levels", type=int, default=2, help="Levels per patient.")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--pause", type=float, default=0.1, help="Seconds between messages.")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=None, help="Keep the working folder here.")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    import paho.mqtt.client as mqtt

    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="live_twin_")
        folder = Path(tmp.name)
    else:
        folder = args.out
        folder.mkdir(parents=True, exist_ok=False)
    broker, port = start_broker(folder)
    (folder / "keys").mkdir(mode=0o700)
    key = write_pseudonym_key(folder / "keys" / "pseudonym.key")  # DEMO keys only
    signing = write_signing_key(folder / "keys" / "audit.key")
    gov = Governance(AuditLog(folder / "audit.jsonl", signing), key, actor="twins-serve")
    service = TwinService(
        folder / "state.db",
        site=SITE,
        drugs={"vancomycin": twins.drugs.get("vancomycin_goti2018")},
        governance=gov,
        intervals=(8.0, 12.0, 24.0),
        n_draws=args.draws,
    )
    runner = MqttService(service, "127.0.0.1", port, status_every=2.0).start()
    got: list[dict] = []
    dead: list[dict] = []
    lock = threading.Lock()

    def on_message(client, userdata, message):
        body = json.loads(message.payload)
        with lock:
            (got if message.topic.endswith("recommendation") else dead).append(body)
        if message.topic.endswith("recommendation"):
            print("  recommendation:", _describe(body), flush=True)
        else:
            print("  dead letter:", body["reason"], flush=True)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe([(service.topics.recommendation, 1), (service.topics.dead_letter, 1)])
    client.loop_start()
    try:
        if not runner.connected.wait(10):
            raise SystemExit("the service did not connect to the broker")
        print(f"broker 127.0.0.1:{port}; service: site {SITE!r}, in {service.topics.subscription}")
        plan = [m for i in range(args.patients) for m in messages(i, args.levels)]
        print(f"publishing {len(plan)} FHIR messages ({args.patients} patients) and a bad one")
        for r in plan:
            topic = service.topics.input(r["resourceType"])
            client.publish(topic, json.dumps(r), qos=1).wait_for_publish(10)
            time.sleep(args.pause)
        client.publish(service.topics.input("Observation"), b'{"resourceType": "Observ', qos=1)
        last = len(plan)
        sizes = [len(messages(i, args.levels)) for i in range(args.patients)]
        lasts = [sum(sizes[: i + 1]) for i in range(args.patients)]  # each patient's last
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            with lock:
                seen = {s for b in got for s in b["messages"]}
                if all(n in seen for n in lasts) and dead:
                    break
            time.sleep(0.2)
        else:
            raise SystemExit(f"timed out: recommendations for messages {sorted(seen)} of {last}")
        while not runner.idle() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        runner.stop()
        client.disconnect()
        client.loop_stop()
        broker.terminate()
        broker.wait(10)
    report = verify(folder / "audit.jsonl", signing.public_key())
    print(f"audit log: {report.summary()}")
    result = {
        "recommendations": got,
        "dead_letters": dead,
        "twins": service.posteriors(),
        "status": service.status(),
        "verify": report,
        "folder": None if tmp is not None else folder,
    }
    service.close()
    if tmp is not None:
        tmp.cleanup()
    return result


if __name__ == "__main__":
    main()
