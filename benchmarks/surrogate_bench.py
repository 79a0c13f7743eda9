"""Surrogate fidelity and speed on held-out virtual patients (issue 6).

Measured in one process, on patients simulated with the trial engine:

1. **Fidelity** (emulators: the surrogate sees the covariates, the regimen and each
   patient's model parameters, i.e. everything that decides the outcome):
   - vancomycin (Goti 2018), 25 mg/kg loading then 15 mg/kg every 12 h (1-h infusions):
     AUC24 and trough on day 4;
   - warfarin (Hamberg 2007), 5 mg daily: INR on the morning of day 29.
   R2 and relative errors against the mechanistic model; **speed-up** = the mechanistic
   engine's time for the same test patients (jitted, compiled beforehand,
   `simulate_chunk_outcome`: a patient that cannot be simulated is recorded, not raised)
   over the surrogate's `predict` time (input checks included). Patients that cannot be
   simulated are left out of the data sets (`TrainingSet.failures`; `n_failed` in the
   results).
2. **Drug-response classification** ("INR in 2-3 at day 28 on a standard 5 mg daily dose",
   from covariates, genotypes and the INRs measured on days 1-7, between-subject variability
   unobserved): accuracy, precision, recall, F1, ROC-AUC per model, ROC curves.

    .venv/bin/python benchmarks/surrogate_bench.py --json
    .venv/bin/python benchmarks/surrogate_bench.py --n 20000 --json   # the figures in the docs
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="patients per fidelity data set")
    ap.add_argument("--n-classify", type=int, default=6_000, help="patients for the table")
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--no-flax", action="store_true", help="leave out the Flax models")
    ap.add_argument("--part", choices=("all", "fidelity", "classification"), default="all")
    ap.add_argument("--json", action="store_true", help="write results/surrogates_*.json")
    ap.add_argument("--out", type=Path, default=RESULTS)
    return ap.parse_args()


def _vancomycin_trial():
    import numpy as np

    import twins

    def per_kg(cov):
        n = len(cov["ID"])
        return np.full((n, 1), 25.0) * cov["WT"][:, None], 15.0 * cov["WT"]

    arm = twins.DosingArm("per_kg", "15 mg/kg q12h", "", per_kg, visits=(1,), dose_step=250.0)
    return twins.Trial(
        name="vancomycin_per_kg",
        drug=twins.drugs.get("vancomycin_goti2018"),
        population=twins.Population.sample,
        arms=(arm,),
        endpoints=(twins.AUC("auc24", "AUC24 day 4"), twins.Ctrough("trough", "trough")),
        days=8,
        interval=12.0,
    )


def _mechanistic_seconds(trial, ts, seed: int) -> float:
    """Time of the compiled trial engine for the test patients (after one warm-up).

    `simulate_chunk_outcome` (the engine `simulate_chunk` and `run_trial` run) records a
    patient that cannot be simulated instead of raising, so one such patient does not stop
    the benchmark; the time is that of the whole chunk, as before."""
    from twins.trials import population_rows, seed_keys, simulate_chunk_outcome

    pop_key, sim_key = seed_keys(seed)
    n = len(ts)
    pop = population_rows(trial, 0, n, key=pop_key)
    runners: dict = {}
    simulate_chunk_outcome(trial, pop, 0, key=sim_key, runners=runners, size=n)  # compile
    times = []
    for _ in range(3):  # the median of three runs (returns NumPy: nothing left pending)
        t0 = time.perf_counter()
        simulate_chunk_outcome(trial, pop, 0, key=sim_key, runners=runners, size=n)
        times.append(time.perf_counter() - t0)
    return sorted(times)[1]


def _models(task: str, flax: bool):
    import surrogates as S

    first = "linear" if task == "regression" else "logistic"
    if task == "regression":
        xgb = lambda: S.XGBoostSurrogate(
            task, n_estimators=1500, learning_rate=0.08, log_target=True, n_jobs=2
        )
    else:
        xgb = lambda: S.XGBoostSurrogate(task, n_estimators=600, n_jobs=2)
    models = {
        first: lambda: S.SklearnSurrogate("linear", task),
        "random_forest": lambda: S.SklearnSurrogate(
            "random_forest", task, n_estimators=200, n_jobs=2
        ),
        "svm": lambda: S.SklearnSurrogate("svm", task),
        "xgboost": xgb,
    }
    # The fast emulator: three members of 32-32 GELU units (fitted in logs for regression).
    models["mlp"] = lambda: S.MLPSurrogate(task, log_target=task == "regression")
    if flax:
        try:
            from surrogates import _flax
        except ImportError:
            return models
        models["lstm"] = lambda: _flax.LSTMSurrogate(task)
        models["transformer"] = lambda: _flax.TransformerSurrogate(task)
        models["hybrid"] = lambda: _flax.HybridSurrogate(task)
    return models


def main() -> None:
    args = _parse()
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    from surrogates._compare import (
        classification_table,
        regression_table,
        warfarin_response_task,
        warfarin_standard_dosing_trial,
    )
    from surrogates._data import training_set

    out: dict = {
        "machine": platform.processor() or platform.machine(),
        "devices": [str(d) for d in jax.devices()],
        "jax": jax.__version__,
        "n": args.n,
        "test_fraction": args.test_fraction,
        "fidelity": {},
    }
    cases = [
        ("vancomycin", _vancomycin_trial(), ["auc24", "trough"]),
        ("warfarin", warfarin_standard_dosing_trial(28), ["inr_end"]),
    ]
    for drug, trial, targets in cases if args.part in ("all", "fidelity") else []:
        t0 = time.perf_counter()
        ts = training_set(trial, args.n, seed=0, parameters=True, observe=0)
        sim_s = time.perf_counter() - t0
        train, test = ts.split(args.test_fraction, key=1)
        mech_s = _mechanistic_seconds(trial, test, seed=0)
        for target in targets:
            models = _models("regression", False)
            if args.n > 20_000:
                models.pop("svm")  # kernel SVR is quadratic in n
            table, _ = regression_table(
                models, train.inputs, train.targets[target], test.inputs, test.targets[target]
            )
            table["speedup_vs_mechanistic"] = mech_s / table["predict_s"]
            out["fidelity"][f"{drug}:{target}"] = {
                "simulation_s_with_compilation": round(sim_s, 2),
                "mechanistic_s_for_test_patients": round(mech_s, 4),
                "n_train": len(train),
                "n_test": len(test),
                "n_failed": len(ts.failures),
                "table": json.loads(table.round(5).to_json(orient="index")),
            }
            print(f"\n{drug} {target}: mechanistic {mech_s:.3f} s for {len(test)} patients")
            print(table.round(4).to_string())

    if args.part == "fidelity":
        _write(args, out, None, None)
        return
    ts, y = warfarin_response_task(args.n_classify, seed=0)
    order = np.random.default_rng(2).permutation(len(y))
    n_test = round(args.test_fraction * len(y))
    te, tr = np.sort(order[:n_test]), np.sort(order[n_test:])
    models = _models("classification", not args.no_flax)
    table, probs = classification_table(
        models, ts.inputs.take(tr), y[tr], ts.inputs.take(te), y[te]
    )
    print("\nINR 2-3 at day 28 on 5 mg daily (held-out virtual patients)")
    print(table.round(3).to_string())
    out["classification"] = {
        "task": "INR in 2-3 on day 29 morning, 5 mg daily, from covariates, genotypes and "
        "the INRs measured on days 1, 3, 5, 7 (assay noise; BSV unobserved)",
        "n_train": len(tr),
        "n_test": len(te),
        "positives_test": float(y[te].mean()),
        "table": json.loads(table.round(4).to_json(orient="index")),
    }
    _write(args, out, y[te], probs)


def _write(args, out, y_test, probs) -> None:
    if not args.json:
        return
    from surrogates._compare import roc_figure

    args.out.mkdir(parents=True, exist_ok=True)
    if probs is not None:
        fig = roc_figure(y_test, probs, title="INR 2-3 at day 28, 5 mg daily")
        fig.savefig(args.out / "surrogates_roc.png", dpi=110)
    for part in ("fidelity", "classification"):
        if out.get(part):
            path = args.out / f"surrogates_{part}_cpu_2core.json"
            body = {k: v for k, v in out.items() if k not in ("fidelity", "classification")}
            path.write_text(json.dumps({**body, part: out[part]}, indent=1))
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
