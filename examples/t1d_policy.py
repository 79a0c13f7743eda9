"""Optimise an insulin dosing policy by gradients through the vmapped T1D cohort, and check it
on patients it was not trained on.

The 30 virtual patients of simglucose are split by age group (3 of each 10 held out by
default); `twins.t1d.ParametrisedPolicy` (per-meal carbohydrate-ratio scalings, a correction
scaling and a basal scaling, on the log scale) starts as basal-bolus with the quest's CR and
CF and is optimised with Adam on the smooth endpoint (time in range 70-180 minus 4 x time
below 70, logistic indicators of width 5 mg/dL) through `twins.t1d.simulate_policy` on the
training patients' meals. The time in range and below 70 / 54 mg/dL (counted, on the CGM) are
reported before and after, on the training and on the held-out patients, over new meals and
new CGM noise, and against fixed basal-bolus (simglucose's BBController).

    python examples/t1d_policy.py                      # 30 steps, 2 training days, 7 days
    python examples/t1d_policy.py --steps 2 --train-days 1 --eval-days 1 --per-group 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from twins import t1d


def _metrics(course) -> dict[str, float]:
    m = jax.vmap(t1d.cgm_metrics)(course.cgm)
    return {
        "time_in_range": float(np.mean(m.time_in_range)),
        "time_below_70": float(np.mean(m.time_below_70)),
        "time_below_54": float(np.mean(m.time_below_54)),
        "time_above_180": float(np.mean(m.time_above_180)),
        "mean_glucose": float(np.mean(m.mean_glucose)),
        "objective": float(t1d.objective(course.cgm)),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="Adam steps.")
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--train-days", type=int, default=2, help="Days of training meals.")
    parser.add_argument("--eval-days", type=int, default=7, help="Days of evaluation meals.")
    parser.add_argument(
        "--per-group", type=int, default=10, help="Patients per age group (the first N)."
    )
    parser.add_argument("--test-per-group", type=int, default=3, help="Held out per group.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="Write the results as JSON.")
    args = parser.parse_args(argv)

    patients = t1d.load_patients()
    chosen = [
        p
        for g in ("adolescent", "adult", "child")
        for p in [q for q in patients.values() if q.group == g][: args.per_group]
    ]
    train, test = t1d.split_patients(chosen, test_per_group=args.test_per_group, seed=args.seed)
    policy = t1d.ParametrisedPolicy()
    train_plan = t1d.random_meals(len(train), args.train_days, seed=args.seed + 1)
    t0 = time.perf_counter()
    fit = t1d.optimise_policy(
        policy,
        train,
        train_plan,
        key=jax.random.key(args.seed + 1),
        steps=args.steps,
        learning_rate=args.learning_rate,
    )
    print(
        f"optimised {args.steps} steps on {len(train)} patients in "
        f"{time.perf_counter() - t0:.0f} s (first step with compilation "
        f"{fit.compile_seconds:.0f} s); objective {fit.history[0]:.2f} -> {fit.history[-1]:.2f}"
    )
    print("theta:", {k: np.round(v, 3).tolist() for k, v in fit.theta.items()})

    results: dict = {
        "train": [p.name for p in train],
        "test": [p.name for p in test],
        "history": fit.history.tolist(),
        "theta": {k: np.asarray(v).tolist() for k, v in fit.theta.items()},
        "evaluation": {},
    }
    arms = (
        ("basal_bolus", t1d.BasalBolus(), None),
        ("before", policy, fit.theta0),
        ("after", policy, fit.theta),
    )
    print(f"{'set':6} {'arm':12} {'TIR %':>7} {'TBR<70 %':>9} {'TBR<54 %':>9} {'TAR>180 %':>10}")
    for name, who in (("train", train), ("test", test)):
        plan = t1d.random_meals(len(who), args.eval_days, seed=args.seed + 2)
        # the patients and meals are static (closed over); the policy and theta are inputs
        run = eqx.filter_jit(
            lambda pol, th, who=who, plan=plan: t1d.simulate_policy(
                pol, th, who, plan, key=jax.random.key(args.seed + 2)
            )
        )
        results["evaluation"][name] = {}
        for arm, pol, theta in arms:
            m = _metrics(run(pol, theta))
            results["evaluation"][name][arm] = m
            print(
                f"{name:6} {arm:12} {m['time_in_range']:7.1f} {m['time_below_70']:9.2f} "
                f"{m['time_below_54']:9.2f} {m['time_above_180']:10.1f}"
            )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
