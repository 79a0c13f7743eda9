"""The glucose-response surrogate (`surrogates.GlucoseSurrogate`, an LSTM on the CGM
sequence): its fidelity on held-out patients and scenarios, and its speed against the
mechanistic closed loop on the same windows, in one process.

- Patients: the 30 of simglucose split as the policy optimisation splits them
  (`twins.t1d.split_patients(test_per_group=3, seed=0)`: 21 train, 9 held out), and
  `--per-patient` variants of each sampled around them (`sample_population`, insulin
  sensitivity varied); a variant belongs to its nominal patient's side.
- Training: closed-loop simulations (`twins.t1d.simulate_policy`) of the training side
  under three scenarios: basal-bolus with the quest's settings (meals at 07:00, 12:00,
  18:00); basal-bolus with each patient's CR, CF and basal rate mis-set at random (SD 0.25
  of the log; meals at 08:00, 13:00, 19:30); and a meal bolus scaled by a random factor
  each day (0.6-1.6, `FactorBasalBolus`; meals at 07:00, 12:00, 18:00, SD 15 g); windows
  every 30 min.
- Held out: the 9 patients and their variants under the three training scenarios (new
  meals and CGM noise); and a scenario not trained on: the gradient-optimised policy of
  docs/t1d.md (`ParametrisedPolicy`) with four meals a day (06:30, 12:30, a 20-g snack at
  16:00, 19:00), for the held-out and for the training patients. Windows are a horizon
  apart, so that they tile each course (the consensus metrics of the traces).
- Speed: `GlucoseSurrogate.predict` (input checks, training-range flags and intervals
  included) on the held-out windows, against the compiled, vmapped closed loop of the same
  patients over the same days (`simulate_policy` under `jax.jit`, compilation excluded),
  both the median of 3 runs; windows per second each.

    .venv/bin/python benchmarks/t1d_surrogate.py --json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--per-patient", type=int, default=3, help="variants of each patient")
    ap.add_argument("--days", type=int, default=3, help="days per simulation")
    ap.add_argument("--every", type=int, default=6, help="samples between training windows")
    ap.add_argument("--hidden", type=int, default=64, help="LSTM units")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--ensemble", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    return ap.parse_args()


def main() -> None:
    args = _parse()
    import equinox as eqx
    import jax
    import numpy as np

    from surrogates import (
        GlucoseScenario,
        GlucoseSurrogate,
        GlucoseWindows,
        glucose_fidelity,
        simulate_windows,
    )
    from twins import t1d

    patients = t1d.load_patients()
    train, test = t1d.split_patients(patients, test_per_group=3, seed=0)
    sampled, nominal = t1d.sample_population(list(patients.values()), args.per_patient, seed=1)
    held = {p.name for p in test}
    train_cohort = train + [s for s, n in zip(sampled, nominal, strict=True) if n.name not in held]
    test_cohort = test + [s for s, n in zip(sampled, nominal, strict=True) if n.name in held]

    days = args.days
    scenarios = [
        GlucoseScenario("basal-bolus", t1d.BasalBolus(), days=days),
        GlucoseScenario(
            "basal-bolus, settings mis-set",
            t1d.BasalBolus(),
            times=(8.0, 13.0, 19.5),
            mean=(40.0, 65.0, 75.0),
            settings_sd=0.25,
            days=days,
        ),
        GlucoseScenario(
            "daily meal-bolus factors",
            t1d.FactorBasalBolus(),
            sd=(15.0, 15.0, 15.0),
            settings_sd=0.15,
            factors=(0.6, 1.6),
            days=days,
        ),
    ]
    optimised = {
        "log_meal": np.log([0.81, 0.68, 0.68, 0.55]),
        "log_correction": np.log(1.24),
        "log_basal": np.log(1.01),
    }
    unseen = GlucoseScenario(
        "optimised policy, 4 meals (not trained on)",
        t1d.ParametrisedPolicy(n_meals=4),
        theta={k: jax.numpy.asarray(v) for k, v in optimised.items()},
        times=(6.5, 12.5, 16.0, 19.0),
        mean=(45.0, 70.0, 20.0, 75.0),
        sd=(10.0, 10.0, 5.0, 10.0),
        days=days,
    )

    model = GlucoseSurrogate(hidden=args.hidden, epochs=args.epochs, ensemble=args.ensemble)
    horizon = model.horizon  # samples ahead (5 min apart)
    t0 = time.perf_counter()
    parts = [
        simulate_windows(train_cohort, s, seed=10 + k, every=args.every)[0]
        for k, s in enumerate(scenarios)
    ]
    data = GlucoseWindows.concatenate(parts)
    evaluation = {}
    for k, s in enumerate(scenarios):
        w, *_ = simulate_windows(test_cohort, s, seed=100 + k, every=horizon)
        evaluation[f"held-out patients | {s.name}"] = w
    w_unseen, *_ = simulate_windows(test_cohort, unseen, seed=200, every=horizon)
    evaluation[f"held-out patients | {unseen.name}"] = w_unseen
    w_unseen_train, *_ = simulate_windows(train_cohort, unseen, seed=201, every=horizon)
    evaluation[f"training patients | {unseen.name}"] = w_unseen_train
    simulate_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    model.fit(data.inputs, data.target, key=0)
    fit_s = time.perf_counter() - t0

    table = {}
    flagged = {}
    for name, w in evaluation.items():
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            pred = model.predict(w.inputs)
        table[name] = glucose_fidelity(w, pred.mean)
        inside = (pred.lower <= w.target) & (w.target <= pred.upper)  # type: ignore[operator]
        table[name]["interval_coverage"] = float(np.mean(inside))
        flagged[name] = float(np.mean(pred.out_of_range))
    held_all = GlucoseWindows.concatenate(
        [w for name, w in evaluation.items() if name.startswith("held-out")]
    )
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        pred_all = model.predict(held_all.inputs)

    # --- speed: the surrogate on held-out windows vs the closed loop of the same days.
    speed_name = f"held-out patients | {scenarios[0].name}"
    w_speed = evaluation[speed_name]
    plan = t1d.random_meals(len(test_cohort), days, seed=100)
    policy = scenarios[0].policy
    params = {k: jax.numpy.asarray(v) for k, v in t1d.stack_params(test_cohort).items()}
    consts = {k: jax.numpy.asarray(v) for k, v in t1d.patient_constants(test_cohort).items()}
    carbs = jax.numpy.asarray(plan.carbs)

    @eqx.filter_jit
    def run(p, c, cb):
        return t1d.simulate_policy(
            policy, None, p, plan, key=jax.random.key(100), constants=c, carbs=cb
        )

    t0 = time.perf_counter()
    course = jax.block_until_ready(run(params, consts, carbs))
    mech_first = time.perf_counter() - t0
    # The same course as the evaluation's (the same meals, noise and policy).
    sim_gsub = np.asarray(course.gsub)
    names = [p.name for p in test_cohort]
    rows = np.array([names.index(p) for p in w_speed.patient])
    ahead = w_speed.start[:, None] + np.arange(1, horizon + 1)[None]
    same = float(np.max(np.abs(sim_gsub[rows[:, None], ahead] - w_speed.target)))
    mech = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(run(params, consts, carbs))
        mech.append(time.perf_counter() - t0)
    sur = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.predict(w_speed.inputs)  # warm-up (compiles the forward pass for this shape)
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            model.predict(w_speed.inputs)
            sur.append(time.perf_counter() - t0)
    n_windows = len(w_speed)
    mech_s, sur_s = float(np.median(mech)), float(np.median(sur))
    result = {
        "machine": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "args": vars(args),
        "history_h": model.history_steps * 5 / 60,
        "horizon_h": model.horizon * 5 / 60,
        "train_patients": len(train_cohort),
        "test_patients": len(test_cohort),
        "train_windows": len(data),
        "simulate_s": simulate_s,
        "fit_s": fit_s,
        "epochs_run": int(model.history["train"].shape[0]),
        "fidelity": table,
        "fidelity_all_held_out": glucose_fidelity(held_all, pred_all.mean),
        "out_of_range_share": flagged,
        "speed": {
            "windows": n_windows,
            "scenario": speed_name,
            "mechanistic_first_call_s": mech_first,
            "mechanistic_s": mech_s,
            "mechanistic_windows_per_s": n_windows / mech_s,
            "mechanistic_vs_evaluation_max_abs_mg_dl": same,
            "surrogate_predict_s": sur_s,
            "surrogate_windows_per_s": n_windows / sur_s,
            "speed_up": mech_s / sur_s,
        },
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
