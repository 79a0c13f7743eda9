"""Throughput benchmarks W1 and W2 (../shared/benchmarks/WORKLOADS.md) against baselines.

Every figure is measured in this process: pkpd-twins (JAX) and the NumPy/SciPy baselines of
`baselines.py`, on the same virtual patients. Prints a table, or one JSON object with
`--json`. Timing: one untimed warm-up, then the median of `--repeats` timed runs, from
parameters in memory to the concentration matrix, AUC and Cmax in memory; compilation is
reported apart. On a CPU the patient axis is sharded over one XLA host device per core.

    python benchmarks/run.py --json
    python benchmarks/run.py --n1 1000000 --n2 100000 --no-baselines   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--n1", type=int, default=100_000, help="W1 cohort size")
    ap.add_argument("--n2", type=int, default=10_000, help="W2 cohort size")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-baselines", action="store_true", help="skip NumPy/SciPy baselines")
    ap.add_argument(
        "--scipy-n",
        type=int,
        default=10_000,
        help="cohort size for the stacked SciPy solves (they are slow)",
    )
    ap.add_argument("--loop-n", type=int, default=200, help="patients for the odeint loops")
    ap.add_argument(
        "--devices", type=int, default=0, help="CPU host devices to shard over (0: one per core)"
    )
    ap.add_argument("--workloads", default="W1,W2")
    ap.add_argument(
        "--w2-chunk",
        type=int,
        default=-1,
        help="patients per stacked W2 solve (-1: 512 on a CPU, all at once on a GPU; "
        "0: one solve per patient via jax.vmap)",
    )
    ap.add_argument(
        "--w1-one-device", action="store_true", help="run W1 on one device (no sharding)"
    )
    ap.add_argument(
        "--w1-row-major",
        action="store_true",
        help="return the W1 matrix in the default row-major layout (a transpose more)",
    )
    ap.add_argument(
        "--no-hugepages",
        action="store_true",
        help="leave glibc malloc as it is (4 KiB pages for XLA's large buffers)",
    )
    return ap.parse_args()


ARGS = _parse()
_HUGETLB = "glibc.malloc.hugetlb=1"
if sys.platform == "linux" and not ARGS.no_hugepages:
    # NumPy asks for transparent huge pages on its large arrays (madvise); XLA's CPU buffers
    # come from glibc malloc, which does the same only with this tunable, read at start-up.
    # Without it each fresh output matrix costs one page fault per 4 KiB.
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if _HUGETLB not in tunables:
        env = dict(os.environ, GLIBC_TUNABLES=":".join(filter(None, [tunables, _HUGETLB])))
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
if "jax" not in sys.modules:
    n_dev = ARGS.devices or len(os.sched_getaffinity(0)) or 1
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n_dev}"

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental.layout import Format, Layout  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, str(Path(__file__).resolve().parent))

import baselines as B  # noqa: E402

import pkpd  # noqa: E402


def _devices() -> list:
    devs = jax.devices()
    return devs


MESH = Mesh(np.array(_devices()), ("patients",))


def _shard(params: dict[str, np.ndarray]) -> tuple[dict, int]:
    """Put the cohort on the local devices along the patient axis (a multiple of their count)."""
    n = len(next(iter(params.values())))
    if n % MESH.devices.size:
        raise SystemExit(f"cohort size {n} must be a multiple of the {MESH.devices.size} devices")
    sharding = NamedSharding(MESH, PartitionSpec("patients"))
    return {k: jax.device_put(jnp.asarray(v), sharding) for k, v in params.items()}, n


def _time_jax(fn, *args, repeats: int):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    runs = []
    result = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = jax.block_until_ready(fn(*args))
        runs.append(time.perf_counter() - t0)
    med = float(np.median(runs))
    return med, max(first - med, 0.0), result


def _summary(conc, t):
    """The matrix, AUC (linear trapezoid on the grid) and Cmax (max on the grid).

    The barrier makes XLA store the matrix once and read it for both reductions, rather than
    fuse (and so repeat) its computation into each of them; the trapezoid rule is written as
    one weighted sum.
    """
    conc = jax.lax.optimization_barrier(conc)
    dt = t[1:] - t[:-1]
    w = jnp.concatenate([dt[:1] / 2.0, (dt[1:] + dt[:-1]) / 2.0, dt[-1:] / 2.0])
    return conc, jnp.sum(conc * w[None, :], axis=1), jnp.max(conc, axis=1)


def _exposure_error(auc, cmax, ref, t) -> float:
    """Largest relative error of AUC and Cmax against those of the reference matrix."""
    auc_ref, cmax_ref = B.auc_cmax(ref, t)
    e1 = np.max(np.abs(np.asarray(auc) - auc_ref) / auc_ref)
    e2 = np.max(np.abs(np.asarray(cmax) - cmax_ref) / cmax_ref)
    return float(max(e1, e2))


def bench_w1(n: int, repeats: int, baselines: bool, scipy_n: int, loop_n: int) -> dict:
    w = B.W1
    p = B.cohort_params(w, n)
    params, n_real = _shard({"KA": p["ka"], "CL": p["CL"], "V": p["V"]})
    model = pkpd.OneCompartmentOral()
    regimen = pkpd.repeat(pkpd.oral(float(w.dose_amount)), ii=12.0, addl=27)
    t = np.asarray(w.times, dtype=float)

    mesh = None if ARGS.w1_one_device else MESH
    if mesh is None:
        params = jax.device_put(params, jax.devices()[0])
    sharding = params["KA"].sharding
    # The time-major path produces the matrix one time row at a time; as NumPy's baseline
    # does, it is returned as (patients, times) in column-major layout: no transpose.
    layout = None if ARGS.w1_row_major else Layout(major_to_minor=(1, 0))

    def cohort(q):
        conc, ex = pkpd.simulate_cohort(model, q, regimen, t, mesh=mesh, exposure=True)
        return conc, ex.auc, ex.cmax

    out_shardings = (Format(layout, sharding), sharding, sharding)
    cohort = jax.jit(cohort, out_shardings=out_shardings)
    sec, compile_s, (conc, auc, cmax) = _time_jax(cohort, params, repeats=repeats)
    m = min(n_real, 2000)
    ref = B.w1_superposition(B.take(p, m))
    agree = B.agreement(np.asarray(conc[:m]), ref)
    exposure_err = _exposure_error(auc[:m], cmax[:m], ref, t)
    out = {
        "n": n_real,
        "pkpd_twins": {
            "patients_per_s": n_real / sec,
            "seconds": sec,
            "compile_s": compile_s,
            "agreement": agree,
            "auc_cmax_rel_error": exposure_err,
            "devices": 1 if mesh is None else len(_devices()),
            "matrix_layout": "row-major" if layout is None else "column-major",
        },
    }
    if baselines:
        bl = {}
        s, _ = B.time_it(lambda: B.w1_numpy_hoisted(p), repeats=repeats)
        bl["numpy_hoisted"] = {"n": n_real, "patients_per_s": n_real / s}
        ns = min(scipy_n, n_real)
        ps = B.take(p, ns)
        s, _ = B.time_it(lambda: B.auc_cmax(B.w1_stacked_solve_ivp(ps), t), repeats=1)
        bl["scipy_stacked_solve_ivp_dop853"] = {"n": ns, "patients_per_s": ns / s}
        nl = min(loop_n, n_real)
        pl = B.take(p, nl)
        s, _ = B.time_it(lambda: B.auc_cmax(B.w1_odeint_loop(pl), t), repeats=1)
        bl["scipy_odeint_loop"] = {"n": nl, "patients_per_s": nl / s}
        out["baselines"] = bl
        out["ratios"] = {
            k: out["pkpd_twins"]["patients_per_s"] / v["patients_per_s"] for k, v in bl.items()
        }
    return out


def bench_w2(n: int, repeats: int, baselines: bool, scipy_n: int, loop_n: int) -> dict:
    w = B.W2
    p = B.cohort_params(w, n)
    params, n_real = _shard(
        {"VMAX": p["Vmax"], "KM": p["Km"], "Q": p["Q"], "V1": p["V1"], "V2": p["V2"]}
    )
    model = pkpd.TwoCompartmentMM()
    regimen = pkpd.repeat(pkpd.bolus(float(w.dose_amount)), ii=24.0, addl=6)
    t = np.asarray(w.times, dtype=float)
    solver = pkpd.ODESolver(rtol=B.RTOL, atol=B.ATOL)

    chunk = ARGS.w2_chunk
    if chunk < 0:
        chunk = 512 if jax.default_backend() == "cpu" else None

    def make(order_stacks: bool):
        @eqx.filter_jit
        def cohort(q):
            if chunk == 0:
                conc = jax.vmap(lambda x: pkpd.simulate(model, x, regimen, t, solver=solver))(q)
            else:
                conc = pkpd.simulate_cohort(
                    model,
                    q,
                    regimen,
                    t,
                    solver=solver,
                    mesh=MESH,
                    chunk_size=chunk,
                    order_stacks=order_stacks,
                )
            return _summary(conc, jnp.asarray(t))

        return cohort

    sec, compile_s, (conc, auc, cmax) = _time_jax(make(True), params, repeats=repeats)
    # The same solve with the stacks in arrival order (no grouping by stiffness), for the record.
    sec_unordered = None
    if chunk:
        sec_unordered, _, _ = _time_jax(make(False), params, repeats=repeats)
    m = min(n_real, 50)
    ref = B.w2_reference(B.take(p, m))
    agree = B.agreement(np.asarray(conc[:m]), ref)
    exposure_err = _exposure_error(auc[:m], cmax[:m], ref, t)
    out = {
        "n": n_real,
        "method": "vmap" if chunk == 0 else f"stacked diffrax Tsit5, chunk {chunk or n_real}",
        "rtol": B.RTOL,
        "atol": B.ATOL,
        "pkpd_twins": {
            "patients_per_s": n_real / sec,
            "seconds": sec,
            "compile_s": compile_s,
            "agreement": agree,
            "agreement_ok": agree <= 1e-3,
            "auc_cmax_rel_error": exposure_err,
            "devices": len(_devices()),
            "patients_per_s_stacks_unordered": (
                None if sec_unordered is None else n_real / sec_unordered
            ),
        },
    }
    if baselines:
        bl = {}
        ns = min(scipy_n, n_real)
        ps = B.take(p, ns)
        s, _ = B.time_it(lambda: B.auc_cmax(B.w2_stacked_solve_ivp(ps), t), repeats=repeats)
        bl["scipy_stacked_solve_ivp_rk45"] = {"n": ns, "patients_per_s": ns / s}
        nl = min(loop_n, n_real)
        pl = B.take(p, nl)
        s, _ = B.time_it(lambda: B.auc_cmax(B.w2_odeint_loop(pl), t), repeats=1)
        bl["scipy_odeint_loop"] = {"n": nl, "patients_per_s": nl / s}
        out["baselines"] = bl
        out["ratios"] = {
            k: out["pkpd_twins"]["patients_per_s"] / v["patients_per_s"] for k, v in bl.items()
        }
    return out


def main() -> None:
    a = ARGS
    result = {
        "machine": {
            "platform": jax.default_backend(),
            "device_kind": jax.devices()[0].device_kind,
            "devices": len(jax.devices()),
            "cpu_count": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "jax": jax.__version__,
        },
        "timing": {"repeats": a.repeats, "statistic": "median", "dtype": "float64"},
        "malloc_hugetlb": _HUGETLB in os.environ.get("GLIBC_TUNABLES", ""),
    }
    todo = a.workloads.split(",")
    if "W1" in todo:
        result["W1"] = bench_w1(a.n1, a.repeats, not a.no_baselines, a.scipy_n, a.loop_n)
    if "W2" in todo:
        result["W2"] = bench_w2(a.n2, a.repeats, not a.no_baselines, a.scipy_n, a.loop_n)
    if a.json:
        print(json.dumps(result, indent=2))
        return
    print(f"machine: {result['machine']}")
    for w in ("W1", "W2"):
        if w not in result:
            continue
        r = result[w]
        j = r["pkpd_twins"]
        print(
            f"\n{w}  N={r['n']:,}  pkpd-twins: {j['patients_per_s']:,.0f} patients/s "
            f"(compile {j['compile_s']:.1f} s apart; agreement {j['agreement']:.1e})"
        )
        for k, v in r.get("baselines", {}).items():
            print(
                f"  {k:34s} {v['patients_per_s']:>12,.0f} patients/s (N={v['n']:,})  "
                f"ratio {r['ratios'][k]:.1f}x"
            )


if __name__ == "__main__":
    main()
