"""The papers' Table 3 on the project's drug-response task: centralised vs 5, 10 and 20
non-IID hospitals, without DP and at epsilon 0.5 for each unit of privacy (record level:
DP-SGD in each hospital; client level: each hospital's clipped update, noise on the mean),
and accuracy against epsilon for both units.

    python benchmarks/federated_table3.py                      # the full run (100 rounds)
    python benchmarks/federated_table3.py --rounds 30 --n-total 3000 --sweep 0.5,2,8
    python benchmarks/federated_table3.py --xgboost-only --xgboost-rounds 30 --n-total 3000

Writes benchmarks/results/federated_table3_cpu_2core.json (and prints the tables). See
docs/federated-privacy.md for what the numbers mean and where they differ from the papers'.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hospitals", default="5,10,20", help="federation sizes (comma-separated)")
    p.add_argument("--n-total", type=int, default=4000, help="patients in each federation")
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--epsilon", type=float, default=0.5)
    p.add_argument("--sweep", default="0.5,1,2,4,8,16", help="epsilons of the sweep ('' none)")
    p.add_argument("--sweep-hospitals", type=int, default=10)
    p.add_argument("--strategy", default="fedavg", choices=("fedavg", "fedprox", "fedadam"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--xgboost-rounds",
        type=int,
        default=30,
        help="rounds of the XGBoost rows (centralised, FedXgbBagging, FedXgbCyclic; 0: none)",
    )
    p.add_argument(
        "--xgboost-only",
        action="store_true",
        help="only the XGBoost rows, written to federated_xgb_cpu_2core.json",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent / "results" / "federated_table3_cpu_2core.json",
    )
    return p.parse_args()


def main() -> None:
    args = _parse()
    import jax

    jax.config.update("jax_enable_x64", True)
    import pandas as pd

    from surrogates.federated._table3 import (
        PAPER_TABLE3,
        Settings,
        accuracy_vs_epsilon,
        federation,
        surrogate_table,
    )

    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 30)
    sizes = [int(k) for k in args.hospitals.split(",") if k]
    settings = Settings()
    t0 = time.perf_counter()
    if args.xgboost_only:
        _xgboost_only(args, sizes, t0)
        return
    table = surrogate_table(
        sizes, n_total=args.n_total, rounds=args.rounds, epsilon=args.epsilon,
        strategy=args.strategy, settings=settings, seed=args.seed,
        xgboost_rounds=args.xgboost_rounds or None,
    )  # fmt: skip
    shown = [
        "setting", "unit", "noise_multiplier", "epsilon_pld", "epsilon_rdp", "accuracy", "f1",
        "roc_auc", "rounds", "bytes_up", "bytes_down", "label_js", "covariate_js", "train_s",
    ]  # fmt: skip
    print(table[shown].round(4).to_string())
    divergence = {
        k: json.loads(federation(k, args.n_total, seed=args.seed).divergence.round(5).to_json())
        for k in sizes
    }
    sweep = None
    epsilons = [float(e) for e in args.sweep.split(",") if e]
    if epsilons:
        sweep = accuracy_vs_epsilon(
            args.sweep_hospitals, epsilons, n_total=args.n_total, rounds=args.rounds,
            settings=settings, seed=args.seed,
        )  # fmt: skip
        cols = ["unit", "epsilon_target", "noise_multiplier", "accuracy", "f1", "roc_auc"]
        print(sweep[cols].round(4).to_string())
    out = {
        "machine": platform.processor() or platform.machine(),
        "devices": [str(d) for d in jax.devices()],
        "jax": jax.__version__,
        "note": "2-core CPU shared with other jobs while it ran: times are indicative only",
        "task": "INR in 2-3 on day 29 on each hospital's warfarin regimen; covariates, "
        "genotypes, INRs of days 1, 3, 5, 7; held-out union of the hospitals' 20%",
        "settings": {
            "n_total": args.n_total,
            "rounds": args.rounds,
            "strategy": args.strategy,
            "local_steps": settings.local.steps,
            "sampling_rate": settings.local.sampling_rate,
            "learning_rate": settings.local.learning_rate,
            "optimizer": settings.local.optimizer,
            "record_clip": settings.record_clip,
            "client_clip": settings.client_clip,
            "delta": settings.delta,
            "accountant": "dp-accounting 0.6.0 PLD (calibration), RDP reported beside",
            "model": f"{settings.model} {settings.hidden}",
        },
        "paper_table3": PAPER_TABLE3,
        "table": json.loads(table.round(5).to_json(orient="records")),
        "divergence": divergence,
        "sweep": None if sweep is None else json.loads(sweep.round(5).to_json(orient="records")),
        "total_s": round(time.perf_counter() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


def _xgboost_only(args: argparse.Namespace, sizes: list[int], t0: float) -> None:
    """The XGBoost rows alone (centralised XGBoost on the pooled training parts, Flower's
    FedXgbBagging and FedXgbCyclic over each federation), beside the paper's Table 3."""
    import dataclasses

    import jax
    import pandas as pd

    from surrogates.federated._table3 import PAPER_TABLE3, federation
    from surrogates.federated._xgb import Boosting, xgb_rows

    boosting = Boosting()
    rows = []
    for k in sizes:
        fed = federation(k, args.n_total, seed=args.seed)
        for row in xgb_rows(fed, rounds=args.xgboost_rounds, boosting=boosting, seed=args.seed):
            row["federation"] = k
            rows.append(row)
    table = pd.DataFrame(rows)
    shown = ["federation", "setting", "model", "accuracy", "f1", "roc_auc", "rounds", "trees",
             "bytes_up", "bytes_down", "train_s"]  # fmt: skip
    print(table[shown].round(4).to_string())
    out = {
        "machine": platform.processor() or platform.machine(),
        "devices": [str(d) for d in jax.devices()],
        "note": "2-core CPU shared with other jobs while it ran: times are indicative only",
        "settings": {
            "n_total": args.n_total,
            "rounds": args.xgboost_rounds,
            "boosting": dataclasses.asdict(boosting),
        },
        "paper_table3": PAPER_TABLE3,
        "table": json.loads(table.round(5).to_json(orient="records")),
        "total_s": round(time.perf_counter() - t0, 1),
    }
    path = args.out.with_name("federated_xgb_cpu_2core.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
