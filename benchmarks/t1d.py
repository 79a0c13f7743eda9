"""T1D cohort simulation throughput (patient-days per second), in one process:

- `twins.t1d.simulate_policy`, basal-bolus with the CGM-read correction (the closed loop), the
  `--n` patients (the 30 of simglucose, repeated) vmapped over `--days` days, after a warm-up
  call that compiles (its time reported apart);
- the same compiled closed loop for one patient at a time, over `--baseline-n` patients (the
  vmapped run's speed-up over a Python loop of patients);
- simglucose's own patient model (`T1DPatient`, scipy `ode` dopri5 stepped every minute, the
  basal-bolus doses of the same meals given as simglucose's pumps give them), over
  `--simglucose-n` patient-days (the independent implementation, run in the same process).

    .venv/bin/python benchmarks/t1d.py --json
    .venv/bin/python benchmarks/t1d.py --json > benchmarks/results/t1d_cpu_2core.json

simglucose is a test dependency (installed by `make` with --no-deps); without it that line
is skipped.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--n", type=int, default=90, help="patients of the vmapped cohort")
    ap.add_argument("--days", type=int, default=3, help="days of meals")
    ap.add_argument("--baseline-n", type=int, default=3, help="patients one at a time")
    ap.add_argument("--simglucose-n", type=int, default=1, help="patient-days of simglucose")
    ap.add_argument("--json", action="store_true")
    return ap.parse_args()


def _simglucose_day(name: str, carbs: list[float], times: list[float], cr: float, cf: float):
    """One day of simglucose's patient model under basal-bolus (its BBController's rule)."""
    import numpy as np
    import pandas as pd
    from test_t1d_simglucose import (  # pyright: ignore[reportMissingImports]
        _simglucose_dir,
        _t1dpatient,
    )

    mod = _t1dpatient()
    table = pd.read_csv(_simglucose_dir() / "params" / "vpatient_params.csv")
    row = table.loc[table.Name == name].squeeze()
    patient = mod.T1DPatient(row)
    basal = row.u2ss * row.BW / 6000.0  # U/min
    meals = {round(t * 60): c for t, c in zip(times, carbs, strict=True)}
    bg = []
    for minute in range(24 * 60):
        c = meals.get(minute, 0.0)
        g = patient.observation.Gsub
        bolus = (c / cr + (g > 150) * (g - 140) / cf) if c > 0 else 0.0
        patient.step(mod.Action(CHO=c, insulin=basal + bolus))
        bg.append(patient.observation.Gsub)
    return np.asarray(bg)


def main() -> None:
    args = _parse()
    import equinox as eqx
    import jax
    import numpy as np

    from twins import t1d

    table = list(t1d.load_patients().values())
    cohort = [table[i % len(table)] for i in range(args.n)]
    plan = t1d.random_meals(args.n, args.days, seed=0)
    policy = t1d.BasalBolus()
    params = {k: jax.numpy.asarray(v) for k, v in t1d.stack_params(cohort).items()}
    consts = {k: jax.numpy.asarray(v) for k, v in t1d.patient_constants(cohort).items()}
    carbs = jax.numpy.asarray(plan.carbs)

    # Patients, constants and meals are inputs: one compilation per number of patients.
    @eqx.filter_jit
    def run(p, c, cb):
        return t1d.simulate_policy(
            policy, None, p, plan, key=jax.random.key(0), constants=c, carbs=cb
        )

    def rows(i, j):
        return jax.tree.map(lambda v: v[i:j], (params, consts, carbs))

    t0 = time.perf_counter()
    jax.block_until_ready(run(params, consts, carbs))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = jax.block_until_ready(run(params, consts, carbs))
    vmapped = time.perf_counter() - t0
    assert np.all(np.isfinite(np.asarray(out.cgm)))

    jax.block_until_ready(run(*rows(0, 1)))  # compile the one-patient shape
    t0 = time.perf_counter()
    for i in range(args.baseline_n):
        jax.block_until_ready(run(*rows(i, i + 1)))
    one_at_a_time = time.perf_counter() - t0

    result = {
        "machine": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "n": args.n,
        "days": args.days,
        "first_call_s": first,
        "vmapped_s": vmapped,
        "vmapped_patient_days_per_s": args.n * args.days / vmapped,
        "one_at_a_time_patients": args.baseline_n,
        "one_at_a_time_s": one_at_a_time,
        "one_at_a_time_patient_days_per_s": args.baseline_n * args.days / one_at_a_time,
    }
    result["vmapped_over_one_at_a_time"] = (
        result["vmapped_patient_days_per_s"] / result["one_at_a_time_patient_days_per_s"]
    )
    try:
        times, carbs = list(plan.times), plan.carbs[0, 0].tolist()
        t0 = time.perf_counter()
        for i in range(args.simglucose_n):
            p = cohort[i]
            _simglucose_day(p.name, carbs, times, p.carb_ratio, p.correction_factor)
        sg = time.perf_counter() - t0
        result["simglucose_patient_days"] = args.simglucose_n
        result["simglucose_s"] = sg
        result["simglucose_patient_days_per_s"] = args.simglucose_n / sg
        result["vmapped_over_simglucose"] = (
            result["vmapped_patient_days_per_s"] / result["simglucose_patient_days_per_s"]
        )
    except (ImportError, RuntimeError) as error:
        result["simglucose"] = f"skipped: {error}"
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
