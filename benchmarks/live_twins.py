"""Live twins over MQTT: latency from a level published to its recommendation received, and
the sustained update rate, batched against one message per batch, in the same run.

Setup (not timed): mosquitto on 127.0.0.1 on a free port; `--patients` virtual vancomycin
patients of varied weight, height, age, sex and serum creatinine (a seeded virtual cohort),
each with three 1 g infusions every 12 h and two troughs; every level, those of the setup and
those streamed, is simulated from the patient's own "true" parameters (a draw of the
published model's between-subject variability, Goti 2018, with its residual error), so the
twins fit data their model could have produced. The twins are built once. Then:

1. **Paced**: one new level per patient in turn (after the third dose), published at
   `--rate` levels per second for `--seconds`; the latency of each is publish -> the first
   recommendation whose `messages` name it, received by a subscriber (p50, p95, p99).
2. **Saturated**: `--burst` levels published at once (one per patient, round robin), by a
   service with batches (`batch_size` 256: one vmapped MAP, dose search and forecast per
   batch, `twins.update_twins` / `recommend_twins` / `forecast_twins`) and by one with
   `batch_size=1` (each message its own batch: its own calls, audit append and commit), on
   fresh stores; the rate is levels per second from the first publish to the last
   recommendation; the ratio is printed. A third run is batched with every twin rebuilt by
   replay (`incremental=False`): the ratio incremental / replay is the gain of extending
   twins with their new levels (`TwinService`'s incremental update).

Only vancomycin: a warfarin twin's dose search (INR, a nonlinear ODE model solved by
diffrax, by central differences) takes about 4.7 s per twin on this machine, far from a
live rate (docs/live-twins.md, "Limits").

`--dosing library` gives every recommendation the drug library's dose constraints
(`twins.io.DosingAdvice`: vials of 250-1000 mg in steps of 250 mg, at most 1 g/h, intervals
8, 12 or 24 h): the clinically usable dose, every admissible candidate simulated.

    python benchmarks/live_twins.py --patients 20 --rate 1 --seconds 20 --burst 40
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--rate", type=float, default=1.0, help="levels per second (paced)")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of the paced run")
    ap.add_argument("--burst", type=int, default=40, help="levels published at once")
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument(
        "--dosing",
        choices=("none", "library"),
        default="none",
        help="dose constraints of the recommendations: none (the continuous optimum) or "
        "the drug library's (vials of 250-1000 mg, 1 g/h, intervals 8/12/24 h)",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    return ap.parse_args()


def _warm_up(service, pids: list[str], draws: int, constraints=None) -> None:
    """Compile the batched update, dose search and forecast for every batch-size bucket the
    runs can meet (8 to 256 twins), on the service's own twins: a running service pays each
    compilation once, on the first batch of that size; the benchmark measures the service
    after that, and reports the warm-up time apart."""
    import jax

    import twins

    have = [service.twin(p, "vancomycin") for p in pids]
    have = [t for t in have if t is not None]
    size = 8
    while size <= min(256, max(8, 2 * len(have))):
        group = [have[i % len(have)] for i in range(max(1, size // 2 + 1))][:size]
        keys = [jax.random.key(i) for i in range(len(group))]
        twins.update_twins(group)
        recs = twins.recommend_twins(group, keys=keys, n_draws=draws, constraints=constraints)
        twins.forecast_twins(
            group, [[0.0, 6.0, 12.0, 24.0]] * len(group),
            [r.regimen for r in recs], keys=keys, n_draws=draws,
        )  # fmt: skip
        size *= 2


def _levels_per_patient(args: argparse.Namespace) -> int:
    paced = max(1, int(args.rate * args.seconds))
    return -(-max(paced, args.burst) // args.patients)


def _cohort(n: int, *, n_stream: int, seed: int = 7) -> tuple[list[list[dict]], list[list[dict]]]:
    """`n` virtual patients' setup messages (Patient, weight, height, creatinine, three 1 g
    infusions every 12 h, troughs at 11.5 and 23.5 h) and `n_stream` later levels each (from
    25.5 h, one an hour then every 0.1 h), every level simulated from the patient's own
    parameters (a prior draw) with the model's residual error."""
    import jax
    from live_twin import _observation, dose_message

    import twins

    drug = twins.drugs.get("vancomycin_goti2018")
    rng = np.random.default_rng(seed)
    setup, stream = [], []
    level_times = [11.5, 23.5] + [25.5 + min(j, 10) + 0.1 * max(j - 10, 0) for j in range(n_stream)]
    for i in range(n):
        pid = f"b{i:04d}"
        sex = "female" if rng.random() < 0.45 else "male"
        age = float(rng.uniform(20, 85))
        height = float(rng.normal(163 if sex == "female" else 177, 7))
        weight = float(np.clip(rng.lognormal(np.log(75), 0.2), 45, 150))
        scr = float(np.clip(rng.lognormal(np.log(0.95), 0.35), 0.4, 3.5))
        patient = twins.Patient(
            id=pid, age=age, sex=sex, weight=weight, height=height,
            labs={"serum_creatinine": scr},
        )  # fmt: skip
        twin = twins.DigitalTwin(drug, patient)
        doses = drug.regimen(3, amount=1000.0, interval=12.0)
        fc = twin.forecast(level_times, doses, key=jax.random.key(10_000 + i), n_draws=1,
                           prediction_interval=True)  # fmt: skip
        values = [max(float(v), 0.5) for v in fc.draws[0]]
        born = 2026 - int(age)
        msgs = [
            {"resourceType": "Patient", "id": pid, "gender": sex, "birthDate": f"{born}-01-01"},
            _observation(f"{pid}-wt", pid, "29463-7", -1.0, round(weight, 1), "kg"),
            _observation(f"{pid}-ht", pid, "8302-2", -1.0, round(height, 1), "cm"),
            _observation(f"{pid}-scr", pid, "2160-0", -1.0, round(scr, 2), "mg/dL"),
        ]  # fmt: skip
        msgs.extend(dose_message(pid, k) for k in range(3))
        for k, h in enumerate(level_times[:2]):
            msgs.append(
                _observation(f"{pid}-level-{k}", pid, "4092-3", h, round(values[k], 2), "mg/L")
            )
        setup.append(msgs)
        stream.append(
            [
                _observation(f"{pid}-bench-{j}", pid, "4092-3", h, round(v, 2), "mg/L")
                for j, (h, v) in enumerate(zip(level_times[2:], values[2:], strict=True))
            ]
        )
    return setup, stream


class _Run:
    """A broker-connected service on a fresh store, a publisher and a subscriber."""

    def __init__(
        self,
        folder: Path,
        port: int,
        patients: list[list[dict]],
        draws: int,
        batch: int,
        incremental: bool = True,
        dosing: str = "none",
    ):
        import paho.mqtt.client as mqtt

        import twins
        from twins.governance import (
            AuditLog,
            Governance,
            generate_pseudonym_key,
            generate_signing_key,
        )
        from twins.io import DosingAdvice, MqttService, TwinService

        folder.mkdir()
        gov = Governance(
            AuditLog(folder / "audit.jsonl", generate_signing_key()),
            generate_pseudonym_key(),
            actor="twins-serve",
        )
        site = folder.name
        drug = twins.drugs.get("vancomycin_goti2018")
        advice = {} if dosing == "none" else {"vancomycin": DosingAdvice(drug.dosing.constraints)}
        self.service = TwinService(
            folder / "state.db",
            site=site,
            drugs={"vancomycin": drug},
            governance=gov,
            n_draws=draws,
            batch_size=batch,
            incremental=incremental,
            dosing=advice,
        )
        for msgs in patients:  # setup, not timed: the twins exist before the stream
            for r in msgs:
                self.service.receive(self.service.topics.input(r["resourceType"]), json.dumps(r))
        while self.service.store.pending(1):  # (a batch may give no output: go on)
            self.service.process()
        self.runner = MqttService(self.service, "127.0.0.1", port, client_id=f"bench-{site}")
        self.runner.start()
        assert self.runner.connected.wait(10)
        self.got: list[tuple[float, dict]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(self.service.topics.recommendation, qos=1)
        self.client.loop_start()
        time.sleep(0.5)
        self.sent: dict[str, float] = {}

    def _on_message(self, client, userdata, message):
        with self.lock:
            self.got.append((time.monotonic(), json.loads(message.payload)))

    def publish(self, r: dict) -> None:
        self.sent[r["id"]] = time.monotonic()
        topic = self.service.topics.input(r["resourceType"])
        self.client.publish(topic, json.dumps(r), qos=1)

    def latencies(self, timeout: float) -> np.ndarray:
        """Seconds from each level published to the first recommendation naming it."""
        deadline = time.monotonic() + timeout
        rid = {}
        while time.monotonic() < deadline:
            rid = {m.seq: m.rid for m in self.service.store.messages()}
            with self.lock:
                named = {rid.get(s) for _, b in self.got for s in b["messages"]}
            if set(self.sent) <= named:
                break
            time.sleep(0.2)
        first: dict[str, float] = {}
        with self.lock:
            for t, b in self.got:
                for s in b["messages"]:
                    name = rid.get(s)
                    if name in self.sent and name not in first:
                        first[name] = t
        missing = set(self.sent) - set(first)
        if missing:
            raise SystemExit(f"timed out: {len(missing)} level(s) without a recommendation")
        self.last = max(first.values())
        return np.asarray([first[k] - self.sent[k] for k in self.sent])

    def close(self) -> None:
        self.runner.stop()
        self.client.disconnect()
        self.client.loop_stop()
        self.service.close()


def main() -> dict:
    args = _parse()
    import jax

    jax.config.update("jax_enable_x64", True)
    from live_twin import start_broker

    with tempfile.TemporaryDirectory(prefix="live_twins_bench_") as tmp:
        folder = Path(tmp)
        broker, port = start_broker(folder)
        patients, stream = _cohort(args.patients, n_stream=_levels_per_patient(args))
        pids = [m[0]["id"] for m in patients]
        try:
            t0 = time.perf_counter()
            paced = _Run(folder / "paced", port, patients, args.draws, 256, dosing=args.dosing)
            setup = time.perf_counter() - t0
            t0 = time.perf_counter()
            advice = paced.service.dosing.get("vancomycin")
            _warm_up(paced.service, pids, args.draws, advice and advice.constraints)
            warm = time.perf_counter() - t0
            n = max(1, int(args.rate * args.seconds))
            start = time.monotonic()
            for k in range(n):
                pace = start + k / args.rate
                time.sleep(max(0.0, pace - time.monotonic()))
                paced.publish(stream[k % len(pids)][k // len(pids)])
            lat = paced.latencies(timeout=120 + 5 * n)
            paced.close()
            rates, rebuilt = {}, {}
            runs = (("batched", 256, True), ("one_by_one", 1, True), ("batched_replay", 256, False))
            for name, batch, incremental in runs:
                run = _Run(
                    folder / name, port, patients, args.draws, batch, incremental, args.dosing
                )
                before = dict(run.service.counts)
                t1 = time.monotonic()
                for k in range(args.burst):
                    run.publish(stream[k % len(pids)][k // len(pids)])
                done = run.latencies(timeout=120 + 5 * args.burst)
                assert done.size == args.burst
                rates[name] = args.burst / (run.last - t1)
                rebuilt[name] = {k: v - before[k] for k, v in run.service.counts.items()}
                run.close()
        finally:
            broker.terminate()
            broker.wait(10)
    result = {
        "patients": args.patients,
        "dosing": args.dosing,
        "paced_rate_per_s": args.rate,
        "paced_levels": int(lat.size),
        "latency_s": {f"p{q}": float(np.percentile(lat, q)) for q in (50, 95, 99)},
        "burst": args.burst,
        "rate_per_s": rates,
        "batched_over_one_by_one": rates["batched"] / rates["one_by_one"],
        "incremental_over_replay": rates["batched"] / rates["batched_replay"],
        "rebuilt": rebuilt,
        "setup_s": setup,
        "warm_up_s": warm,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        p = result["latency_s"]
        print(f"{args.patients} patients; paced {args.rate:g} levels/s for {args.seconds:g} s "
              f"({lat.size} levels): latency p50 {p['p50']:.2f} s, p95 {p['p95']:.2f} s, "
              f"p99 {p['p99']:.2f} s")  # fmt: skip
        print(f"burst of {args.burst} levels: batched {rates['batched']:.2f} levels/s, one by "
              f"one {rates['one_by_one']:.2f} levels/s, ratio "
              f"{result['batched_over_one_by_one']:.2f}")  # fmt: skip
        print(f"the same burst batched with every twin replayed (incremental=False): "
              f"{rates['batched_replay']:.2f} levels/s; incremental / replay "
              f"{result['incremental_over_replay']:.2f}; twins extended / replayed in the "
              f"batched burst: {rebuilt['batched']}")  # fmt: skip
        print(f"(setup {setup:.1f} s and warm-up {warm:.1f} s, compilation included, not timed)")
    return result


if __name__ == "__main__":
    main()
