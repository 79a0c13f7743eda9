"""Live twins over MQTT: latency from a level published to its recommendation received, and
the sustained update rate, batched against one message per batch, in the same run.

Setup (not timed): mosquitto on 127.0.0.1 on a free port; `--patients` virtual patients
(a seeded virtual cohort), of the drugs of `--drugs` in turn (default both: even patients
vancomycin, odd ones warfarin):

- vancomycin: varied weight, height, age, sex and serum creatinine, three 1 g infusions every
  12 h and two troughs (Goti 2018's model);
- warfarin: varied age, CYP2C9 (*1/*1, *1/*2, *1/*3, *2/*3) and VKORC1 (-1639 GG, GA, AA)
  genotypes as FHIR genotype Observations, four 5 mg tablets once daily and two INRs
  (Hamberg 2007's PK/INR model; the twins' default fixed-step solver,
  `twins.drugs.warfarin.TWIN_SOLVER`).

Every level, those of the setup and those streamed, is simulated from the patient's own
"true" parameters (a draw of the published model's between-subject variability, with its
residual error), so the twins fit data their model could have produced. The twins are built
once. Then:

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

`--dosing library` gives every recommendation the drug library's dose constraints
(`twins.io.DosingAdvice`; vancomycin: vials of 250-1000 mg in steps of 250 mg, at most
1 g/h, intervals 8, 12 or 24 h; warfarin: tablets of 1-10 mg, at most two, once daily): the
clinically usable dose, every admissible candidate simulated.

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
        "--drugs",
        default="vancomycin,warfarin",
        help="comma-separated substances of the cohort, patients alternating between them "
        "(vancomycin, warfarin; default both)",
    )
    ap.add_argument(
        "--dosing",
        choices=("none", "library"),
        default="none",
        help="dose constraints of the recommendations: none (the continuous optimum) or "
        "the drug library's (vials of 250-1000 mg, 1 g/h, intervals 8/12/24 h)",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    args.drugs = [d.strip() for d in args.drugs.split(",") if d.strip()]
    unknown = sorted(set(args.drugs) - set(DRUGS))
    if unknown or not args.drugs:
        ap.error(f"--drugs: expected substances of {sorted(DRUGS)}, got {args.drugs}")
    return args


#: substance -> the library drug of its twins
DRUGS = {"vancomycin": "vancomycin_goti2018", "warfarin": "warfarin_hamberg2007"}


def _warm_up(service, pids: list[str], draws: int) -> None:
    """Compile the batched update, dose search and forecast for every batch-size bucket the
    runs can meet (8 to 256 twins of a drug), on the service's own twins, and the batch's
    output keys (`output_keys_many`, 8 to 256 twins in all): a running service
    pays each compilation once, on the first batch of that size; the benchmark measures the
    service after that, and reports the warm-up time apart."""
    import jax

    import twins
    from twins.io._service_twin import output_keys_many

    for size in (8, 16, 32, 64, 128, 256):
        output_keys_many(service.seed, list(range(size)))
    for substance in service.drugs:
        advice = service.dosing.get(substance)
        constraints = advice and advice.constraints
        have = [service.twin(p, substance) for p in pids]
        have = [t for t in have if t is not None]
        if not have:
            continue
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


def _cohort(
    n: int, *, n_stream: int, drugs: list[str], seed: int = 7
) -> tuple[list[list[dict]], list[list[dict]]]:
    """`n` virtual patients' setup messages and `n_stream` later levels each, patient `i` on
    `drugs[i % len(drugs)]` (`_vancomycin_patient`, `_warfarin_patient`), every level
    simulated from the patient's own parameters (a prior draw) with the model's residual
    error."""
    rng = np.random.default_rng(seed)
    setup, stream = [], []
    for i in range(n):
        make = _vancomycin_patient if drugs[i % len(drugs)] == "vancomycin" else _warfarin_patient
        msgs, levels = make(i, rng, n_stream)
        setup.append(msgs)
        stream.append(levels)
    return setup, stream


def _vancomycin_patient(i: int, rng, n_stream: int) -> tuple[list[dict], list[dict]]:
    """Patient, weight, height, creatinine, three 1 g infusions every 12 h, troughs at 11.5
    and 23.5 h; `n_stream` later levels (from 25.5 h, one an hour then every 0.1 h)."""
    import jax
    from live_twin import _observation, dose_message

    import twins

    drug = twins.drugs.get(DRUGS["vancomycin"])
    level_times = [11.5, 23.5] + [25.5 + min(j, 10) + 0.1 * max(j - 10, 0) for j in range(n_stream)]
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
        msgs.append(_observation(f"{pid}-level-{k}", pid, "4092-3", h, round(values[k], 2), "mg/L"))
    later = [
        _observation(f"{pid}-bench-{j}", pid, "4092-3", h, round(v, 2), "mg/L")
        for j, (h, v) in enumerate(zip(level_times[2:], values[2:], strict=True))
    ]
    return msgs, later


_CYP2C9 = ("*1/*1", "*1/*1", "*1/*2", "*1/*3", "*2/*3")
_VKORC1 = ("-1639 GG", "-1639 GA", "-1639 GA", "-1639 AA")


def _genotype(rid: str, pid: str, hgnc: str, gene: str, text: str) -> dict:
    """A genotype Observation (HL7 Genomics Reporting IG: the gene studied as a component)."""
    from live_twin import _at

    loinc = "http://loinc.org"
    out = {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": loinc, "code": "84413-4"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": _at(-24.0 * 30),
        "component": [
            {
                "code": {"coding": [{"system": loinc, "code": "48018-6"}]},
                "valueCodeableConcept": {
                    "coding": [
                        {"system": "http://www.genenames.org", "code": hgnc, "display": gene}
                    ]
                },
            }
        ],
    }
    if gene == "VKORC1":
        out["valueString"] = text
    else:
        out["valueCodeableConcept"] = {"text": f"{gene} {text}"}
    return out


def _warfarin_dose(pid: str, k: int, mg: float) -> dict:
    """The `k`-th tablet dose of `mg` racemic warfarin (once daily from T0)."""
    from live_twin import RXNORM, UCUM, _at

    return {
        "resourceType": "MedicationAdministration",
        "id": f"{pid}-dose-{k}",
        "status": "completed",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "11289"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": _at(24.0 * k),
        "dosage": {
            "route": {"coding": [{"system": "http://snomed.info/sct", "code": "26643006"}]},
            "dose": {"value": mg, "unit": "mg", "system": UCUM, "code": "mg"},
        },
    }


def _warfarin_patient(i: int, rng, n_stream: int) -> tuple[list[dict], list[dict]]:
    """Patient, weight, height, CYP2C9 and VKORC1 genotypes, four 5 mg doses once daily,
    INRs at 47.5 and 71.5 h; `n_stream` later INRs (from 73.5 h, one an hour then every
    0.1 h)."""
    import jax
    from live_twin import _observation

    import twins

    drug = twins.drugs.get(DRUGS["warfarin"])
    pid = f"b{i:04d}"
    sex = "female" if rng.random() < 0.45 else "male"
    age = float(rng.uniform(35, 85))
    height = float(rng.normal(163 if sex == "female" else 177, 7))
    weight = float(np.clip(rng.lognormal(np.log(75), 0.2), 45, 150))
    cyp = _CYP2C9[int(rng.integers(len(_CYP2C9)))]
    vk = _VKORC1[int(rng.integers(len(_VKORC1)))]
    times = [47.5, 71.5] + [73.5 + min(j, 10) + 0.1 * max(j - 10, 0) for j in range(n_stream)]
    twin = twins.DigitalTwin(drug, {"ID": pid, "AGE": age, "CYP2C9": cyp, "VKORC1": vk})
    doses = drug.regimen(4, amount=5.0, interval=24.0)
    key = jax.random.key(20_000 + i)
    fc = twin.forecast(times, doses, key=key, n_draws=1, prediction_interval=True)
    values = [max(float(v), 0.8) for v in fc.draws[0]]
    born = 2026 - int(age)
    msgs = [
        {"resourceType": "Patient", "id": pid, "gender": sex, "birthDate": f"{born}-01-01"},
        _observation(f"{pid}-wt", pid, "29463-7", -1.0, round(weight, 1), "kg"),
        _observation(f"{pid}-ht", pid, "8302-2", -1.0, round(height, 1), "cm"),
        _genotype(f"{pid}-cyp2c9", pid, "HGNC:2623", "CYP2C9", cyp),
        _genotype(f"{pid}-vkorc1", pid, "HGNC:23663", "VKORC1", vk),
    ]
    msgs.extend(_warfarin_dose(pid, k, 5.0) for k in range(4))
    msgs.extend(
        _observation(f"{pid}-inr-{k}", pid, "6301-6", h, round(values[k], 2), "{INR}")
        for k, h in enumerate(times[:2])
    )
    later = [
        _observation(f"{pid}-bench-{j}", pid, "6301-6", h, round(v, 2), "{INR}")
        for j, (h, v) in enumerate(zip(times[2:], values[2:], strict=True))
    ]
    return msgs, later


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
        substances: tuple[str, ...] = ("vancomycin",),
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
        drugs = {s: twins.drugs.get(DRUGS[s]) for s in substances}
        advice = {}
        if dosing != "none":
            advice = {s: DosingAdvice(d.dosing.constraints) for s, d in drugs.items()}
        self.service = TwinService(
            folder / "state.db",
            site=site,
            drugs=drugs,
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
        patients, stream = _cohort(
            args.patients, n_stream=_levels_per_patient(args), drugs=args.drugs
        )
        drug_of = {m[0]["id"]: args.drugs[i % len(args.drugs)] for i, m in enumerate(patients)}
        subs = tuple(args.drugs)
        pids = [m[0]["id"] for m in patients]
        try:
            t0 = time.perf_counter()
            paced = _Run(
                folder / "paced", port, patients, args.draws, 256, dosing=args.dosing,
                substances=subs,
            )  # fmt: skip
            setup = time.perf_counter() - t0
            t0 = time.perf_counter()
            _warm_up(paced.service, pids, args.draws)
            warm = time.perf_counter() - t0
            n = max(1, int(args.rate * args.seconds))
            start = time.monotonic()
            for k in range(n):
                pace = start + k / args.rate
                time.sleep(max(0.0, pace - time.monotonic()))
                paced.publish(stream[k % len(pids)][k // len(pids)])
            lat = paced.latencies(timeout=120 + 5 * n)
            names = list(paced.sent)
            per_drug = {
                s: lat[[j for j, k in enumerate(names) if drug_of[k.split("-")[0]] == s]]
                for s in subs
            }
            paced.close()
            rates, rebuilt = {}, {}
            runs = (("batched", 256, True), ("one_by_one", 1, True), ("batched_replay", 256, False))
            for name, batch, incremental in runs:
                run = _Run(
                    folder / name, port, patients, args.draws, batch, incremental, args.dosing,
                    subs,
                )  # fmt: skip
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
        "drugs": args.drugs,
        "dosing": args.dosing,
        "paced_rate_per_s": args.rate,
        "paced_levels": int(lat.size),
        "latency_s": {f"p{q}": float(np.percentile(lat, q)) for q in (50, 95, 99)},
        "latency_s_by_drug": {
            s: {f"p{q}": float(np.percentile(v, q)) for q in (50, 95, 99)}
            for s, v in per_drug.items()
            if v.size
        },
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
        for s, q in result["latency_s_by_drug"].items():
            print(f"  {s}: p50 {q['p50']:.2f} s, p95 {q['p95']:.2f} s, p99 {q['p99']:.2f} s")
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
