"""Run the EU-PACT-like warfarin trial on Ray, one task per chunk of patients.

Needs the optional extra: `pip install 'pkpd-twins[ray]'`. Without `--address` it starts a
local Ray instance on this machine's cores (or joins the cluster in `RAY_ADDRESS`); with
`--address auto` it joins the cluster started by `ray start --head`, whose workers must all
see `--out` at the same absolute path (shared storage). Running it again resumes an
interrupted run. Prints the endpoint table from `summary.json`.

    python examples/ray_trial.py --n 2000 --chunk-size 500 --out results/eupact-ray
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="virtual patients per arm")
    ap.add_argument("--chunk-size", type=int, default=500, help="patients per Ray task")
    ap.add_argument("--address", default=None, help='Ray cluster: "auto", "ray://host:10001"')
    ap.add_argument("--out", type=Path, default=Path("results/eupact-ray"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-cpus-per-task", type=float, default=1, help="CPUs per Ray task")
    args = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)

    from twins import write_report
    from twins.trials import eupact_trial, run_trial_ray

    start = time.perf_counter()
    out = run_trial_ray(
        eupact_trial(),
        args.out,
        n=args.n,
        seed=args.seed,
        chunk_size=args.chunk_size,
        address=args.address,
        num_cpus_per_task=args.num_cpus_per_task,
    )
    wall = time.perf_counter() - start
    write_report(out)  # report.html beside the results
    spec = json.loads((out / "spec.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    print(f"{out}: {args.n} patients per arm in {manifest['n_chunks']} chunks, {wall:.1f} s")
    arms = [a["name"] for a in spec["arms"]]
    print(f"{'endpoint':16s}" + "".join(f"{a:>28s}" for a in arms))
    for endpoint in summary[arms[0]]:
        cells = [_cell(summary[arm][endpoint]) for arm in arms]
        print(f"{endpoint:16s}" + "".join(f"{c:>28s}" for c in cells))
    return out


def _cell(entry: dict) -> str:
    """`estimate (ci_low-ci_high)`; summary.json writes an unreached median as "inf"."""
    x, lo, hi = (entry[k] for k in ("estimate", "ci_low", "ci_high"))
    f = lambda v: f"{v:.1f}" if isinstance(v, int | float) else str(v)
    return f"{f(x)} ({f(lo)}-{f(hi)})"


if __name__ == "__main__":
    main()
