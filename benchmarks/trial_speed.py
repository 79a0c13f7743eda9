"""Virtual-trial throughput: the EU-PACT-like warfarin trial (2 arms, 12 weeks, INR-guided).

Issue 5's target on the 2-core CPU: 100,000 patients, two arms, INR-guided dose adjustment
at every scheduled INR check, in under 60 s after compilation; memory below 2 GiB at
N = 1,000,000. Measured here, in one process:

- the full `run_trial` (population sampling, covariates, simulation, endpoints, Parquet
  parts with their checksums; no summary, no report) for `--n` patients per arm, after a
  warm-up run that compiles;
- the same engine with diffrax's adaptive solver (`pkpd.ODESolver()`, Tsit5, rtol 1e-6)
  instead of the default `pkpd.FixedStep(2.0)` on `--baseline-n` patients: the ratio of
  patient-arms per second is the speed-up of the fixed-step solver;
- with `--memory-n`, a child process runs `run_trial` (report included) for that N and
  reports its peak resident memory;
- with `--behaviour-n`, the plain trial against the same trial with the three
  within-patient elements on (`all_three`: the adherence chain, IOV on EC50 by visit, an
  Ornstein-Uhlenbeck process on CL) and with all seven elements on (`all_on`: those, dose
  timing, drug holidays, slipped and missed visits), `run_trial` for that N each, best of
  `--behaviour-reps` interleaved timed runs after a warm-up (issue 19's target: all on at
  most 1.5x the plain trial's time);
- with `--ablation-n`, the EU-PACT endpoints for that N with each element switched on in
  turn, then all (simulate_chunk; seed 0): which element moves which endpoint.

The sizes in `behaviour` are illustrative, not published values for this model (none is
shipped: docs/trials.md, Within-patient variability): the benchmark measures cost, and the
ablation shows directions, not predictions.

    .venv/bin/python benchmarks/trial_speed.py --json
    .venv/bin/python benchmarks/trial_speed.py --n 100000 --memory-n 1000000 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="patients per arm")
    ap.add_argument("--chunk-size", type=int, default=20_000)
    ap.add_argument("--baseline-n", type=int, default=500, help="patients for diffrax")
    ap.add_argument("--memory-n", type=int, default=0, help="N for the memory run (0: skip)")
    ap.add_argument("--behaviour-n", type=int, default=0, help="N for plain vs all on (0: skip)")
    ap.add_argument("--behaviour-reps", type=int, default=2, help="timed runs (best of)")
    ap.add_argument("--ablation-n", type=int, default=0, help="N for the ablation (0: skip)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", type=str, default="", help=argparse.SUPPRESS)
    return ap.parse_args()


def _setup():
    import jax

    jax.config.update("jax_enable_x64", True)
    import twins

    return jax, twins


def behaviour(twins) -> dict:
    """Illustrative within-patient behaviour and visit realism (not published sizes):
    `{element: Trial keyword arguments}`, each element alone (docs/trials.md, the
    ablation tables)."""
    return {
        **within(twins),
        "visit_slips": {"visits": twins.Visits(slip_sd_days=1.5, slip_max_days=3)},
        "missed_visits": {"visits": twins.Visits(p_missed=0.15)},
        "dose_timing": {"adherence": twins.Adherence(timing=timing(twins))},
        "holidays": {"adherence": twins.Adherence(holidays=holidays(twins))},
    }


def timing(twins):
    return twins.DoseTiming(sd_h=2.0, max_h=4.0, due_h=10.0, reference="illustrative")


def holidays(twins):
    return twins.Holidays(p_start=0.01, periods=3, reference="illustrative")


def within(twins) -> dict:
    """The three within-patient elements: the adherence chain, IOV on EC50, OU on CL."""
    return {
        "adherence": {"adherence": twins.Adherence(0.10, 0.40, reference="illustrative")},
        "iov_ec50": {
            "variability": twins.Variability((twins.IOV("EC50", 0.2, reference="illustrative"),))
        },
        "ou_cl": {
            "variability": twins.Variability(
                (twins.OrnsteinUhlenbeck("CL", 0.1, 10.0, reference="illustrative"),)
            )
        },
    }


def all_three(twins) -> dict:
    """The three elements of `within` at once."""
    b = within(twins)
    terms = b["iov_ec50"]["variability"].terms + b["ou_cl"]["variability"].terms
    return {**b["adherence"], "variability": twins.Variability(terms)}


def all_on(twins) -> dict:
    """Every element of `behaviour` at once (all seven): the adherence chain with dose
    timing and holidays, IOV on EC50, OU on CL, slipped and missed visits."""
    three = all_three(twins)
    chain = three["adherence"]
    adherence = dataclasses.replace(chain, timing=timing(twins), holidays=holidays(twins))
    visits = twins.Visits(slip_sd_days=1.5, slip_max_days=3, p_missed=0.15,
                          reference="illustrative")  # fmt: skip
    return {**three, "adherence": adherence, "visits": visits}


def _ablation(twins, jax, n: int) -> dict:
    import numpy as np

    from twins.trials import population_rows, simulate_chunk

    plain = twins.eupact_trial()
    configs = {"plain": {}, **behaviour(twins), "all_three": all_three(twins),
               "all": all_on(twins)}  # fmt: skip
    pop = population_rows(plain, 0, n, key=jax.random.key(0))
    table = {}
    for name, kw in configs.items():
        trial = dataclasses.replace(plain, **kw)
        ends, _ = simulate_chunk(trial, pop, 0, key=jax.random.key(1))
        table[name] = {
            arm: {
                "ttr": round(float(np.mean(e["ttr"])), 1),
                "inr_ge4_pct": round(100.0 * float(np.mean(e["inr_ge4"])), 1),
                "median_time_to_target_days": float(np.median(e["time_to_target"])),
                "weekly_dose_mg": round(float(np.mean(e["weekly_dose"])), 1),
            }
            for arm, e in ends.items()
        }
    return table


def _behaviour_cost(twins, trial, args, tmp: Path, quiet: dict) -> dict:
    """The plain trial against the same trial with the three within-patient elements on
    and with all seven elements on (`all_on`), `run_trial` for `--behaviour-n` patients
    each, interleaved, best of `--behaviour-reps` after a warm-up that compiles; wall
    and CPU seconds (`time.process_time`, all threads)."""
    nb = args.behaviour_n
    runs = {
        "plain": trial,
        "all_three": dataclasses.replace(trial, **all_three(twins)),
        "all_on": dataclasses.replace(trial, **all_on(twins)),
    }
    for label, tr in runs.items():
        twins.run_trial(tr, tmp / f"{label}_w", n=min(nb, args.chunk_size),
                        chunk_size=args.chunk_size, **quiet)  # fmt: skip
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for rep in range(args.behaviour_reps):  # interleaved
        for label, tr in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            twins.run_trial(tr, tmp / f"{label}_{rep}", n=nb, chunk_size=args.chunk_size,
                            **quiet)  # fmt: skip
            wall[label] = min(wall.get(label, 1e99), time.perf_counter() - t0)
            cpu[label] = min(cpu.get(label, 1e99), time.process_time() - c0)
    out: dict = {"behaviour_n": nb, "behaviour_reps": args.behaviour_reps}
    for label in runs:
        out[f"behaviour_{label}_wall_s"] = round(wall[label], 2)
        out[f"behaviour_{label}_cpu_s"] = round(cpu[label], 2)
    for label in ("all_three", "all_on"):
        out[f"behaviour_{label}_cost_ratio"] = round(wall[label] / wall["plain"], 2)
        out[f"behaviour_{label}_cpu_ratio"] = round(cpu[label] / cpu["plain"], 2)
    return out


def _child(args: argparse.Namespace) -> None:
    _, twins = _setup()
    t0 = time.perf_counter()
    out = twins.run_trial(
        twins.eupact_trial(), args.child, n=args.memory_n, chunk_size=args.chunk_size,
        progress=False,
    )  # fmt: skip
    twins.write_report(out)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"wall_s": time.perf_counter() - t0, "peak_rss_mib": peak_kib / 1024}))


def main() -> None:
    args = _parse()
    if args.child:
        _child(args)
        return
    jax, twins = _setup()
    import pkpd

    trial = twins.eupact_trial()
    out: dict = {
        "machine": platform.processor() or platform.machine(),
        "devices": [str(d) for d in jax.devices()],
        "jax": jax.__version__,
        "trial": trial.name,
        "arms": len(trial.arms),
        "days": trial.days,
        "solver": repr(trial.solver),
    }
    with tempfile.TemporaryDirectory() as tmp:
        quiet = {"progress": False, "summary": False}
        t0 = time.perf_counter()
        twins.run_trial(trial, Path(tmp) / "warm", n=args.chunk_size, chunk_size=args.chunk_size,
                        **quiet)  # fmt: skip
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        twins.run_trial(trial, Path(tmp) / "run", n=args.n, chunk_size=args.chunk_size, **quiet)
        wall = time.perf_counter() - t0
        rate = args.n * len(trial.arms) / wall
        out.update(
            n_per_arm=args.n,
            chunk_size=args.chunk_size,
            wall_s=round(wall, 2),
            patient_arms_per_s=round(rate),
            first_chunk_with_compilation_s=round(warm, 2),
            compilation_s_estimate=round(warm - args.chunk_size * len(trial.arms) / rate, 2),
        )
        base = dataclasses.replace(trial, solver=pkpd.ODESolver())
        nb = args.baseline_n
        twins.run_trial(base, Path(tmp) / "bwarm", n=nb, chunk_size=nb, **quiet)
        t0 = time.perf_counter()
        twins.run_trial(base, Path(tmp) / "brun", n=nb, chunk_size=nb, **quiet)
        bwall = time.perf_counter() - t0
        brate = nb * len(trial.arms) / bwall
        out.update(
            baseline="same engine, diffrax Tsit5 adaptive (rtol 1e-6, atol 1e-9)",
            baseline_n=nb,
            baseline_patient_arms_per_s=round(brate),
            speedup_vs_baseline=round(rate / brate, 1),
        )
        if args.behaviour_n:
            out.update(_behaviour_cost(twins, trial, args, Path(tmp), quiet))
        if args.ablation_n:
            out["ablation_n"] = args.ablation_n
            out["ablation"] = _ablation(twins, jax, args.ablation_n)
        if args.memory_n:
            cmd = [sys.executable, __file__, "--child", str(Path(tmp) / "mem")]
            cmd += ["--memory-n", str(args.memory_n), "--chunk-size", str(args.chunk_size)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            mem = json.loads(res.stdout.strip().splitlines()[-1])
            out.update(
                memory_n=args.memory_n,
                memory_run_wall_s=round(mem["wall_s"], 1),
                memory_peak_rss_mib=round(mem["peak_rss_mib"]),
            )
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:>32}: {v}")


if __name__ == "__main__":
    main()
