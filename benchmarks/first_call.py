"""Time to the first result: four first calls, each in a fresh process, cold and warm.

For each call and each repeat, one process starts on an empty compilation cache folder
(`PKPD_TWINS_CACHE=<tmp>`; cold: every program is compiled and written) and a second one on the
folder the first filled (warm: programs are read from it). Each figure is the median over the
repeats of the call's own wall time in its process (imports and data set-up excluded; the
result is on the host when the clock stops), `cpu_median_s` the same for the CPU time of the
process over the call (all its threads: steadier than the wall time on a shared machine);
`process_s` is the whole process. `--off` adds
processes with no persistent cache (`PKPD_TWINS_CACHE=off`), the cost of a cold call without
the writes.

- `simulate_records`: 3 subjects, 21 records, `pkpd.TwoCompartment`, steady-state infusions
  (SS=1 then a maintenance infusion), parameters as functions of weight and creatinine
  clearance columns (covariates, one value per record);
- `update`: `twins.DigitalTwin.update` of a vancomycin_goti2018 twin with two levels;
- `recommend`: `DigitalTwin.recommend("AUC24")` of that twin (its update is not timed);
- `foce_theophylline`: `calibration.fit_population` (FOCE-I, standard errors) on the
  theophylline data the project ships (nlmixr2data's theo_sd).

    python benchmarks/first_call.py              # one JSON object on stdout
    python benchmarks/first_call.py --repeats 1 --calls update,recommend --off
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve()
THEO = HERE.parents[1] / "tests" / "data" / "reference" / "datasets" / "theo_sd_nlmixr2data.csv"
CALLS = ("simulate_records", "update", "recommend", "foce_theophylline")


# ------------------------------------------------------------------------- the workloads


def _simulate_records():
    import numpy as np
    import pandas as pd

    import pkpd

    rows = []
    for sid, (wt, crcl) in enumerate(((55.0, 60.0), (72.0, 95.0), (98.0, 130.0)), start=1):
        # SS=1 infusion (1 h) every 12 h, a maintenance infusion at 12 h, 5 levels
        rows.append((sid, 0.0, 1, 1000.0, 1, 1000.0, 12.0, 1, wt, crcl))
        rows.append((sid, 12.0, 1, 1000.0, 1, 1000.0, 0.0, 0, wt, crcl))
        for t in (1.0, 6.0, 11.9, 13.0, 24.0):
            rows.append((sid, t, 0, 0.0, 1, 0.0, 0.0, 0, wt, crcl))
    cols = ["ID", "TIME", "EVID", "AMT", "CMT", "RATE", "II", "SS", "WT", "CRCL"]
    records = pd.DataFrame(rows, columns=cols).sort_values(["ID", "TIME"], kind="stable")

    def params(df: pd.DataFrame):
        wt, crcl = df["WT"].to_numpy(), df["CRCL"].to_numpy()
        return {
            "CL": 4.5 * (crcl / 120.0) ** 0.8,
            "V1": 58.4 * wt / 70.0,
            "Q": 6.5 * np.ones(len(df)),
            "V2": 38.4 * wt / 70.0,
        }

    def call():
        out = pkpd.simulate_records(pkpd.TwoCompartment(), params, records)
        return float(out["PRED"].sum())

    return call


def _twin():
    import twins

    drug = twins.drugs.get("vancomycin_goti2018")
    patient = {"ID": "p1", "AGE": 62.0, "WT": 80.0, "SCR": 1.1, "SEX": 0.0}
    twin = twins.DigitalTwin(drug, patient)
    twin.give(drug.regimen(4, amount=1000.0, interval=12.0))
    return twin


def _update():
    twin = _twin()

    def call():
        twin.update(times=[11.5, 35.5], values=[9.8, 12.1])
        return float(twin.posterior.mode.sum())

    return call


def _recommend():
    twin = _twin()
    twin.update(times=[11.5, 35.5], values=[9.8, 12.1])

    def call():
        rec = twin.recommend("AUC24", key=0)
        return float(rec.dose)

    return call


def _foce_theophylline():
    import pandas as pd

    import calibration as C
    import pkpd

    df = pd.read_csv(THEO)
    df.loc[df["EVID"] == 101, "EVID"] = 1  # rxode2's dose into compartment 1
    df.loc[df["EVID"] == 0, "CMT"] = 2
    data = C.Dataset.from_records(df)
    pm = C.PopulationModel(
        pkpd.OneCompartmentOral(),
        theta={"KA": 1.0, "CL": 3.0, "V": 30.0},
        omega={"KA": 0.3, "CL": 0.1, "V": 0.1},
        error=C.Additive(1.0),
    )

    def call():
        fit = C.fit_population(pm, data)
        return float(fit.ofv)

    return call


WORKLOADS = {
    "simulate_records": _simulate_records,
    "update": _update,
    "recommend": _recommend,
    "foce_theophylline": _foce_theophylline,
}


def worker(name: str) -> None:
    """Run one workload in this process; print one JSON line."""
    import jax.monitoring

    events: dict[str, int] = {}

    def listen(event: str, **kwargs) -> None:
        events[event] = events.get(event, 0) + 1

    jax.monitoring.register_event_listener(listen)
    call = WORKLOADS[name]()
    t0, c0 = time.perf_counter(), time.process_time()
    value = call()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    requests = events.get("/jax/compilation_cache/compile_requests_use_cache", 0)
    hits = events.get("/jax/compilation_cache/cache_hits", 0)
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "value": value,
                      "requests": requests, "hits": hits}))  # fmt: skip


# ------------------------------------------------------------------------------- driver


def _run(name: str, cache: str) -> dict:
    env = dict(os.environ, PKPD_TWINS_CACHE=cache)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(HERE), "--worker", name],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    process_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name} (PKPD_TWINS_CACHE={cache}) failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = process_s
    return result


def _summary(runs: list[dict]) -> dict:
    return {
        "median_s": round(statistics.median(r["seconds"] for r in runs), 3),
        "runs_s": [round(r["seconds"], 3) for r in runs],
        "cpu_median_s": round(statistics.median(r["cpu_seconds"] for r in runs), 3),
        "process_median_s": round(statistics.median(r["process_s"] for r in runs), 3),
        "cache_requests": runs[-1]["requests"],
        "cache_hits": runs[-1]["hits"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=CALLS, help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--calls", default=",".join(CALLS), help="comma-separated subset")
    ap.add_argument("--off", action="store_true", help="also time with no persistent cache")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker)
        return
    import jax

    calls = [c for c in args.calls.split(",") if c]
    unknown = sorted(set(calls) - set(CALLS))
    if unknown:
        ap.error(f"--calls: unknown {unknown}; expected a subset of {list(CALLS)}")
    report: dict = {
        "jax": jax.__version__,
        "cpus": os.cpu_count(),
        "platform": jax.default_backend(),
        "repeats": args.repeats,
        "calls": {},
    }
    for name in calls:
        cold, warm, off, entries = [], [], [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="pkpd-first-call-") as tmp:
                cold.append(_run(name, tmp))
                warm.append(_run(name, tmp))
                files = [p for p in pathlib.Path(tmp).rglob("*-cache") if p.is_file()]
                entries.append((len(files), sum(p.stat().st_size for p in files)))
            if args.off:
                off.append(_run(name, "off"))
        item = {
            "cold": _summary(cold),
            "warm": _summary(warm),
            "cache_entries": entries[-1][0],
            "cache_bytes": entries[-1][1],
        }
        if off:
            item["off"] = _summary(off)
        report["calls"][name] = item
        print(f"{name}: {json.dumps(item)}", file=sys.stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
