"""NumPy/SciPy baselines and references for the benchmark workloads W1 and W2.

The workloads, the between-subject variability, the agreement metric and the timing rules are
fixed in `../shared/benchmarks/WORKLOADS.md`. This module is pure NumPy/SciPy (no JAX), so that
the baselines are measured in the same process as the JAX implementations they are compared with.

Units throughout: time in h, amounts in mg, volumes in L, clearances in L/h, rates in 1/h,
concentrations in mg/L.

Public names:

- `Workload`, `W1`, `W2`: workload definitions.
- `draw_eta`, `cohort_params`, `take`: the fixed virtual cohort.
- `w1_superposition`: W1 reference (closed-form superposition).
- `w1_numpy_hoisted`, `w1_odeint_loop`, `w1_stacked_solve_ivp`: W1 baselines.
- `w2_reference`: W2 reference (`solve_ivp` DOP853 at tight tolerance, per patient).
- `w2_odeint_loop`, `w2_stacked_solve_ivp`: W2 baselines.
- `auc_cmax`, `agreement`, `time_it`: metrics and timing.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import statistics
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray
from scipy.integrate import odeint, solve_ivp

__all__ = [
    "ATOL",
    "N_MAX",
    "REF_ATOL",
    "REF_RTOL",
    "RTOL",
    "SEED",
    "W1",
    "W2",
    "Workload",
    "agreement",
    "auc_cmax",
    "cohort_params",
    "draw_eta",
    "take",
    "time_it",
    "w1_numpy_hoisted",
    "w1_odeint_loop",
    "w1_stacked_solve_ivp",
    "w1_superposition",
    "w2_odeint_loop",
    "w2_reference",
    "w2_stacked_solve_ivp",
]

FloatArray = NDArray[np.float64]
Params = dict[str, FloatArray]
T = TypeVar("T")

#: Seed of the standard-normal matrix shared by every implementation.
SEED = 20261123
#: Rows drawn once; a cohort of N uses the first N rows.
N_MAX = 100_000

#: Tolerances of the baseline solvers (WORKLOADS.md).
RTOL = 1e-6
ATOL = 1e-9
#: Tolerances of the W2 reference solve.
REF_RTOL = 1e-11
REF_ATOL = 1e-13


def _frozen(values: Sequence[float] | NDArray[np.floating]) -> FloatArray:
    array = np.array(values, dtype=np.float64)
    array.flags.writeable = False
    return array


@dataclasses.dataclass(frozen=True, eq=False)
class Workload:
    """A benchmark workload: structural model inputs, variability and regimen.

    **Arguments:**

    - `name`: the workload's name in WORKLOADS.md.
    - `param_names`: parameter names, in the fixed order of the columns of the eta matrix.
    - `typical`: typical values (medians), in the order of `param_names`.
    - `cv`: coefficients of variation (fractions), in the order of `param_names`.
    - `dose_amount`: amount of each dose (mg).
    - `dose_times`: dose times (h).
    - `times`: output times (h).
    - `dose_compartment`: state index that receives the doses (0: depot for W1, A1 for W2).
    """

    name: str
    param_names: tuple[str, ...]
    typical: tuple[float, ...]
    cv: tuple[float, ...]
    dose_amount: float
    dose_times: FloatArray
    times: FloatArray
    dose_compartment: int = 0

    @property
    def n_par(self) -> int:
        """Number of individual parameters."""
        return len(self.param_names)

    @property
    def omega(self) -> FloatArray:
        """Standard deviations of the log-normal random effects, `sqrt(log(1 + CV^2))`."""
        return np.sqrt(np.log1p(np.square(np.asarray(self.cv, dtype=np.float64))))


#: W1 "oral-1cmt-md": one compartment, first-order absorption; ka (1/h), CL (L/h), V (L).
W1 = Workload(
    name="oral-1cmt-md",
    param_names=("ka", "CL", "V"),
    typical=(1.0, 5.0, 50.0),
    cv=(0.3, 0.3, 0.2),
    dose_amount=100.0,
    dose_times=_frozen(np.arange(28) * 12.0),
    times=_frozen(np.arange(337, dtype=np.float64)),
    dose_compartment=0,
)

#: W2 "2cmt-mm-iv": two compartments, IV bolus, Michaelis-Menten elimination;
#: Vmax (mg/h), Km (mg/L), Q (L/h), V1 (L), V2 (L).
W2 = Workload(
    name="2cmt-mm-iv",
    param_names=("Vmax", "Km", "Q", "V1", "V2"),
    typical=(50.0, 10.0, 10.0, 20.0, 40.0),
    cv=(0.3, 0.3, 0.3, 0.3, 0.3),
    dose_amount=500.0,
    dose_times=_frozen(np.arange(7) * 24.0),
    times=_frozen(np.arange(169, dtype=np.float64)),
    dose_compartment=0,
)


# --------------------------------------------------------------------------------------------
# Cohort
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def draw_eta(n_max: int, n_par: int, seed: int = SEED) -> FloatArray:
    """The standard-normal matrix of the cohort, drawn once and cached.

    **Arguments:**

    - `n_max`: number of rows (patients) to draw.
    - `n_par`: number of columns (parameters).
    - `seed`: seed of `np.random.default_rng`.

    **Returns:**

    A read-only `(n_max, n_par)` float64 array of independent N(0, 1) draws.
    """
    eta = np.random.default_rng(seed).standard_normal((n_max, n_par))
    eta.flags.writeable = False
    return eta


def cohort_params(workload: Workload, n: int) -> Params:
    """Individual parameters of the first `n` patients of the fixed cohort.

    `theta_i = TV * exp(omega * z_i)` with `omega = sqrt(log(1 + CV^2))` and `z_i` row `i` of
    `draw_eta(max(n, N_MAX), n_par)`, so that every N simulates the same first patients (the
    generator fills rows in order, so a larger draw extends a smaller one).

    **Arguments:**

    - `workload`: `W1` or `W2`.
    - `n`: number of patients, `n >= 1` (above `N_MAX` for accelerator runs).

    **Returns:**

    A dict from parameter name to a float64 array of shape `(n,)`, in the workload's units.
    """
    if n < 1:
        raise ValueError(f"Must have n >= 1, we instead got n with value {n}.")
    z = draw_eta(max(n, N_MAX), workload.n_par)[:n]
    theta = np.asarray(workload.typical) * np.exp(workload.omega * z)
    return {name: np.ascontiguousarray(theta[:, j]) for j, name in enumerate(workload.param_names)}


def take(params: Params, n: int) -> Params:
    """The first `n` patients of a parameter dict (e.g. the subset used for a reference)."""
    return {name: values[:n] for name, values in params.items()}


def _n_patients(params: Params) -> int:
    sizes = {np.shape(v)[0] for v in params.values()}
    if len(sizes) != 1:
        raise ValueError(f"Expected parameter arrays of one common length, got lengths {sizes}.")
    return sizes.pop()


# --------------------------------------------------------------------------------------------
# Metrics and timing
# --------------------------------------------------------------------------------------------


def auc_cmax(conc: FloatArray, t: FloatArray) -> tuple[FloatArray, FloatArray]:
    """AUC by the linear trapezoid and Cmax, both on the output grid.

    **Arguments:**

    - `conc`: concentrations (mg/L), shape `(n, len(t))`.
    - `t`: output times (h).

    **Returns:**

    `(auc, cmax)`: AUC (mg*h/L) and Cmax (mg/L), each of shape `(n,)`.
    """
    conc = np.asarray(conc)
    auc = np.asarray(np.trapezoid(conc, np.asarray(t), axis=1), dtype=np.float64)
    return auc, conc.max(axis=1)


def agreement(conc: FloatArray, conc_ref: FloatArray) -> float:
    """Worst relative error over a cohort: `max_i max_t |C - C_ref| / max_t C_ref`.

    **Arguments:**

    - `conc`: concentrations to check (mg/L), shape `(n, times)`.
    - `conc_ref`: reference concentrations (mg/L), same shape.

    **Returns:**

    The maximum over patients of the error relative to the patient's reference Cmax. Above 1e-3
    means a bug (WORKLOADS.md).
    """
    conc = np.asarray(conc)
    conc_ref = np.asarray(conc_ref)
    if conc.shape != conc_ref.shape:
        raise ValueError(f"Expected equal shapes, got {conc.shape} and reference {conc_ref.shape}.")
    err = np.abs(conc - conc_ref).max(axis=1) / conc_ref.max(axis=1)
    return float(err.max())


def time_it(fn: Callable[[], T], repeats: int = 3) -> tuple[float, T]:
    """Median wall time of `fn()` after one untimed warm-up call.

    **Arguments:**

    - `fn`: a callable without arguments; it must finish its work before returning.
    - `repeats`: number of timed calls (at least 1; WORKLOADS.md asks for at least 3).

    **Returns:**

    `(median_seconds, result)`, where `result` is the return value of the last timed call.
    """
    if repeats < 1:
        raise ValueError(f"Must have repeats >= 1, we instead got {repeats}.")
    result = fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


# --------------------------------------------------------------------------------------------
# Piecewise integration between doses
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class _Segment:
    t0: float  # start (h); doses at t0 are given before integrating
    t1: float  # end (h)
    n_doses: int  # doses at t0
    eval_times: FloatArray  # t0, the output times in (t0, t1), t1
    record: NDArray[np.intp]  # positions in eval_times of the outputs recorded here
    out: NDArray[np.intp]  # the matching columns of the output grid


@dataclasses.dataclass(frozen=True, eq=False)
class _Plan:
    segments: tuple[_Segment, ...]
    final_doses: int  # doses at the last output time
    final_out: NDArray[np.intp]  # output columns at the last output time


def _plan(times: FloatArray, dose_times: FloatArray) -> _Plan:
    """Split `[times[0], times[-1]]` at the dose times; outputs at a dose time are post-dose."""
    times = np.asarray(times, dtype=np.float64)
    dose_times = np.asarray(dose_times, dtype=np.float64)
    if np.any(np.diff(times) <= 0):
        raise ValueError("Expected strictly increasing output times.")
    if np.any(dose_times < times[0]):
        raise ValueError(
            f"Expected dose times >= the first output time {times[0]}, got {dose_times.min()}."
        )
    doses = dose_times[dose_times <= times[-1]]
    bounds = np.unique(np.concatenate([times[:1], doses, times[-1:]]))
    segments = []
    for b0, b1 in itertools.pairwise(bounds):
        out = np.flatnonzero((times >= b0) & (times < b1))
        eval_times = np.unique(np.concatenate([[b0], times[out], [b1]]))
        segments.append(
            _Segment(
                t0=float(b0),
                t1=float(b1),
                n_doses=int(np.count_nonzero(doses == b0)),
                eval_times=eval_times,
                record=np.searchsorted(eval_times, times[out]),
                out=out,
            )
        )
    return _Plan(
        segments=tuple(segments),
        final_doses=int(np.count_nonzero(doses == times[-1])),
        final_out=np.array([len(times) - 1]),
    )


# integrate(t0, t1, y0, eval_times) -> states at eval_times, shape (len(eval_times), n_states)
_Integrate = Callable[[float, float, FloatArray, FloatArray], FloatArray]


def _run_piecewise(
    integrate: _Integrate,
    y0: FloatArray,
    dose: FloatArray,
    plan: _Plan,
    n_times: int,
    observe: Callable[[FloatArray], FloatArray],
) -> FloatArray:
    """Integrate from dose to dose; `observe` maps states `(m, n_states)` to outputs `(m, ...)`."""
    y = np.array(y0, dtype=np.float64)
    out: FloatArray | None = None
    for seg in plan.segments:
        y = y + seg.n_doses * dose
        states = integrate(seg.t0, seg.t1, y, seg.eval_times)
        obs = observe(states[seg.record])
        if out is None:
            out = np.empty((n_times, *obs.shape[1:]))
        out[seg.out] = obs
        y = states[-1]
    y = y + plan.final_doses * dose
    obs = observe(y[None, :])
    if out is None:
        out = np.empty((n_times, *obs.shape[1:]))
    out[plan.final_out] = obs
    return out


def _odeint_integrator(
    rhs: Callable[..., object], args: tuple[float, ...], rtol: float, atol: float, label: str
) -> _Integrate:
    def integrate(t0: float, t1: float, y0: FloatArray, eval_times: FloatArray) -> FloatArray:
        del t0, t1  # eval_times starts at t0 and ends at t1
        states, info = odeint(
            rhs, y0, eval_times, args=args, rtol=rtol, atol=atol, tfirst=True, full_output=True
        )
        if info["message"] != "Integration successful.":
            raise RuntimeError(f"odeint failed for {label}: {info['message']}")
        return states

    return integrate


def _solve_ivp_integrator(
    rhs: Callable[[float, FloatArray], FloatArray],
    method: str,
    rtol: float,
    atol: float,
    label: str,
) -> _Integrate:
    def integrate(t0: float, t1: float, y0: FloatArray, eval_times: FloatArray) -> FloatArray:
        sol = solve_ivp(rhs, (t0, t1), y0, method=method, t_eval=eval_times, rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(
                f"solve_ivp ({method}) failed for {label} on [{t0}, {t1}] h: {sol.message}"
            )
        return sol.y.T

    return integrate


def _dose_vector(workload: Workload, n_states: int, n: int = 1) -> FloatArray:
    """State-shaped dose vector; a stacked state is compartment-major (`n` per compartment)."""
    dose = np.zeros(n_states * n)
    start = workload.dose_compartment * n
    dose[start : start + n] = workload.dose_amount
    return dose


# --------------------------------------------------------------------------------------------
# W1: one compartment, first-order oral absorption
# --------------------------------------------------------------------------------------------


def _bateman(ka: FloatArray, k: FloatArray, tau: FloatArray) -> FloatArray:
    """`(exp(-k*tau) - exp(-ka*tau)) / (ka - k)` (h), stable for `ka` close to `k`.

    Symmetric in `ka` and `k`: written as `exp(-lo*tau) * (1 - exp(-d*tau)) / d` with
    `lo = min(ka, k)` and `d = |ka - k|`, so nothing overflows or cancels, and with the limit
    `tau * exp(-k*tau)` where `ka == k`.
    """
    lo = np.minimum(ka, k)
    d = np.abs(ka - k)
    zero = d == 0
    safe_d = np.where(zero, 1.0, d)
    ratio = np.where(zero, tau, -np.expm1(-d * tau) / safe_d)
    return np.exp(-lo * tau) * ratio


def _w1_rates(params: Params) -> tuple[FloatArray, FloatArray, FloatArray]:
    ka = np.asarray(params["ka"], dtype=np.float64)
    v = np.asarray(params["V"], dtype=np.float64)
    k = np.asarray(params["CL"], dtype=np.float64) / v
    return ka, k, v


def w1_superposition(
    params: Params, t: FloatArray | None = None, *, chunk: int = 4096
) -> FloatArray:
    """W1 reference: closed-form superposition of every dose.

    `C(t) = sum_{t_d <= t} D * ka / V * (exp(-k*tau) - exp(-ka*tau)) / (ka - k)` with
    `tau = t - t_d`, `k = CL/V` and F = 1; the limit `D * ka / V * tau * exp(-k*tau)` where
    `ka == k`. Continuous at dose times, so post-dose and pre-dose values agree.

    **Arguments:**

    - `params`: `ka` (1/h), `CL` (L/h), `V` (L), each of shape `(n,)`.
    - `t`: output times (h); `W1.times` (0, 1, ..., 336) by default.
    - `chunk`: patients per block, to bound memory for large cohorts.

    **Returns:**

    Concentrations (mg/L), shape `(n, len(t))`.
    """
    t = W1.times if t is None else np.asarray(t, dtype=np.float64)
    ka, k, v = _w1_rates(params)
    n = ka.shape[0]
    conc = np.zeros((n, t.shape[0]))
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        ka_b, k_b = ka[lo:hi, None], k[lo:hi, None]
        scale = (W1.dose_amount * ka[lo:hi] / v[lo:hi])[:, None]
        block = conc[lo:hi]
        for td in W1.dose_times:
            j0 = int(np.searchsorted(t, td, side="left"))
            tau = t[j0:] - td
            block[:, j0:] += scale * _bateman(ka_b, k_b, tau[None, :])
    return conc


def _grid_doses(workload: Workload, t: FloatArray) -> tuple[float, FloatArray]:
    """Uniform step of `t` and the dose amount (mg) given at each grid point."""
    dt = np.diff(t)
    step = float(dt[0])
    if step <= 0 or not np.allclose(dt, step, rtol=0, atol=1e-12 * max(1.0, abs(t[-1]))):
        raise ValueError("Expected a uniform, increasing output grid.")
    doses = workload.dose_times[workload.dose_times <= t[-1]]
    idx = np.rint((doses - t[0]) / step).astype(np.intp)
    if np.any(idx < 0) or not np.allclose(t[0] + idx * step, doses, rtol=0, atol=1e-9):
        raise ValueError(f"Expected dose times on the output grid, got {doses}.")
    amount = np.zeros(t.shape[0])
    np.add.at(amount, idx, workload.dose_amount)
    return step, amount


def w1_numpy_hoisted(params: Params) -> tuple[FloatArray, FloatArray, FloatArray]:
    """W1 baseline: vectorised event-to-event propagation on the 1 h grid, exponentials hoisted.

    Per patient, `exp(-ka*dt)`, `exp(-k*dt)` and the depot->central transfer coefficient
    `ka * (exp(-k*dt) - exp(-ka*dt)) / (ka - k)` are computed once; the 336 steps then only
    multiply and add, in place, over the whole cohort. Doses go into the depot after the step
    that reaches their time, so outputs at dose times are post-dose.

    The concentration matrix is built time-major (each step writes one contiguous row) and
    returned as its transpose: shape `(n, 337)`, Fortran-ordered, no copy.

    **Arguments:**

    - `params`: `ka` (1/h), `CL` (L/h), `V` (L), each of shape `(n,)`.

    **Returns:**

    `(conc, auc, cmax)`: concentrations (mg/L) of shape `(n, 337)` on `W1.times`, AUC(0-336)
    (mg*h/L, linear trapezoid) and Cmax (mg/L), each of shape `(n,)`.
    """
    t = W1.times
    step, dose_at = _grid_doses(W1, t)
    ka, k, v = _w1_rates(params)
    n = ka.shape[0]
    e_ka = np.exp(-ka * step)
    e_k = np.exp(-k * step)
    transfer = ka * _bateman(ka, k, np.asarray(step))
    inv_v = 1.0 / v

    conc_tn = np.empty((t.shape[0], n))
    depot = np.full(n, dose_at[0])
    central = np.zeros(n)
    tmp = np.empty(n)
    np.multiply(central, inv_v, out=conc_tn[0])
    for j in range(1, t.shape[0]):
        np.multiply(depot, transfer, out=tmp)
        central *= e_k
        central += tmp
        depot *= e_ka
        if dose_at[j]:
            depot += dose_at[j]
        np.multiply(central, inv_v, out=conc_tn[j])

    cmax = conc_tn.max(axis=0)
    auc = (conc_tn.sum(axis=0) - 0.5 * (conc_tn[0] + conc_tn[-1])) * step
    return conc_tn.T, auc, cmax


def _w1_rhs_one(t: float, y: FloatArray, ka: float, k: float) -> tuple[float, float]:
    depot = y[0]
    return -ka * depot, ka * depot - k * y[1]


def w1_odeint_loop(params: Params, n: int | None = None) -> FloatArray:
    """W1 baseline: a loop over patients, `scipy.integrate.odeint` (LSODA) between doses.

    **Arguments:**

    - `params`: `ka` (1/h), `CL` (L/h), `V` (L), each of shape `(N,)`.
    - `n`: simulate the first `n` patients only; all of them by default.

    **Returns:**

    Concentrations (mg/L), shape `(n, 337)` on `W1.times`; post-dose at dose times.
    """
    ka, k, v = _w1_rates(params)
    n_pat = ka.shape[0] if n is None else n
    plan = _plan(W1.times, W1.dose_times)
    dose = _dose_vector(W1, 2)
    conc = np.empty((n_pat, W1.times.shape[0]))
    for i in range(n_pat):
        integrate = _odeint_integrator(
            _w1_rhs_one, (float(ka[i]), float(k[i])), RTOL, ATOL, f"W1 patient {i}"
        )
        inv_v = 1.0 / float(v[i])
        conc[i] = _run_piecewise(
            integrate, np.zeros(2), dose, plan, W1.times.shape[0], lambda y, s=inv_v: y[:, 1] * s
        )
    return conc


def w1_stacked_solve_ivp(params: Params, method: str = "DOP853") -> FloatArray:
    """W1 baseline: the whole cohort as one stacked system, `solve_ivp` between doses.

    The state is `[A_d (n), A_c (n)]` (mg); all patients share one step size. rtol 1e-6,
    atol 1e-9.

    **Arguments:**

    - `params`: `ka` (1/h), `CL` (L/h), `V` (L), each of shape `(n,)`.
    - `method`: a `solve_ivp` method name.

    **Returns:**

    Concentrations (mg/L), shape `(n, 337)` on `W1.times`; post-dose at dose times.
    """
    ka, k, v = _w1_rates(params)
    n = ka.shape[0]

    def rhs(t: float, y: FloatArray) -> FloatArray:
        depot, central = y[:n], y[n:]
        absorbed = ka * depot
        return np.concatenate([-absorbed, absorbed - k * central])

    integrate = _solve_ivp_integrator(rhs, method, RTOL, ATOL, f"the W1 cohort (n={n})")
    conc_tn = _run_piecewise(
        integrate,
        np.zeros(2 * n),
        _dose_vector(W1, 2, n),
        _plan(W1.times, W1.dose_times),
        W1.times.shape[0],
        lambda y: y[:, n:] / v,
    )
    return conc_tn.T


# --------------------------------------------------------------------------------------------
# W2: two compartments, IV bolus, Michaelis-Menten elimination
# --------------------------------------------------------------------------------------------


def _w2_params(params: Params) -> tuple[FloatArray, ...]:
    vmax, km, q, v1, v2 = (np.asarray(params[name], dtype=np.float64) for name in W2.param_names)
    return vmax, km, q / v1, q / v2, v1


def _w2_rhs_one(
    t: float, y: FloatArray, vmax: float, km: float, k12: float, k21: float, v1: float
) -> tuple[float, float]:
    a1 = y[0]
    c1 = a1 / v1
    transfer = k12 * a1 - k21 * y[1]  # Q*C1 - Q*A2/V2
    return -vmax * c1 / (km + c1) - transfer, transfer


def _w2_loop(params: Params, n: int | None, integrator: Callable[..., _Integrate]) -> FloatArray:
    vmax, km, k12, k21, v1 = _w2_params(params)
    n_pat = vmax.shape[0] if n is None else n
    plan = _plan(W2.times, W2.dose_times)
    dose = _dose_vector(W2, 2)
    conc = np.empty((n_pat, W2.times.shape[0]))
    for i in range(n_pat):
        args = (float(vmax[i]), float(km[i]), float(k12[i]), float(k21[i]), float(v1[i]))
        inv_v1 = 1.0 / args[-1]
        conc[i] = _run_piecewise(
            integrator(args, f"W2 patient {i}"),
            np.zeros(2),
            dose,
            plan,
            W2.times.shape[0],
            lambda y, s=inv_v1: y[:, 0] * s,
        )
    return conc


def w2_odeint_loop(params: Params, n: int | None = None) -> FloatArray:
    """W2 baseline: a loop over patients, `scipy.integrate.odeint` (LSODA) between doses.

    `C1 = A1/V1`, `dA1/dt = -Vmax*C1/(Km + C1) - Q*C1 + Q*A2/V2`, `dA2/dt = Q*C1 - Q*A2/V2`;
    rtol 1e-6, atol 1e-9.

    **Arguments:**

    - `params`: `Vmax` (mg/h), `Km` (mg/L), `Q` (L/h), `V1` (L), `V2` (L), each of shape `(N,)`.
    - `n`: simulate the first `n` patients only; all of them by default.

    **Returns:**

    C1 (mg/L), shape `(n, 169)` on `W2.times`; post-dose at dose times.
    """

    def integrator(args: tuple[float, ...], label: str) -> _Integrate:
        return _odeint_integrator(_w2_rhs_one, args, RTOL, ATOL, label)

    return _w2_loop(params, n, integrator)


def w2_reference(params: Params) -> FloatArray:
    """W2 reference: per patient, `solve_ivp(DOP853, rtol=1e-11, atol=1e-13)` between doses.

    Slow (about a second per patient or less); use it on a subset, e.g. `take(params, 50)`.

    **Arguments:**

    - `params`: `Vmax` (mg/h), `Km` (mg/L), `Q` (L/h), `V1` (L), `V2` (L), each of shape `(n,)`.

    **Returns:**

    C1 (mg/L), shape `(n, 169)` on `W2.times`; post-dose at dose times.
    """

    def integrator(args: tuple[float, ...], label: str) -> _Integrate:
        def rhs(t: float, y: FloatArray) -> FloatArray:
            return np.array(_w2_rhs_one(t, y, *args))

        return _solve_ivp_integrator(rhs, "DOP853", REF_RTOL, REF_ATOL, label)

    return _w2_loop(params, None, integrator)


def w2_stacked_solve_ivp(params: Params, method: str = "RK45") -> FloatArray:
    """W2 baseline: the whole cohort as one stacked system, `solve_ivp` between doses.

    The state is `[A1 (n), A2 (n)]` (mg); all patients share one step size. rtol 1e-6,
    atol 1e-9.

    **Arguments:**

    - `params`: `Vmax` (mg/h), `Km` (mg/L), `Q` (L/h), `V1` (L), `V2` (L), each of shape `(n,)`.
    - `method`: a `solve_ivp` method name.

    **Returns:**

    C1 (mg/L), shape `(n, 169)` on `W2.times`; post-dose at dose times.
    """
    vmax, km, k12, k21, v1 = _w2_params(params)
    n = vmax.shape[0]
    inv_v1 = 1.0 / v1

    def rhs(t: float, y: FloatArray) -> FloatArray:
        a1, a2 = y[:n], y[n:]
        c1 = a1 * inv_v1
        transfer = k12 * a1 - k21 * a2
        return np.concatenate([-vmax * c1 / (km + c1) - transfer, transfer])

    integrate = _solve_ivp_integrator(rhs, method, RTOL, ATOL, f"the W2 cohort (n={n})")
    conc_tn = _run_piecewise(
        integrate,
        np.zeros(2 * n),
        _dose_vector(W2, 2, n),
        _plan(W2.times, W2.dose_times),
        W2.times.shape[0],
        lambda y: y[:, :n] * inv_v1,
    )
    return conc_tn.T
