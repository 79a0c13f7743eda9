"""Continuous glucose monitor readings with the Breton-Kovatchev sensor-noise model."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

#: The noise model's own sampling interval (min): noise is drawn every 15 min and
#: interpolated to the sensor's sample times.
NOISE_INTERVAL = 15.0


class CGMSensor(eqx.Module):
    r"""A CGM sensor: its sample time, its noise model and its reporting range.

    The sensor error is a Johnson SU transform of a first-order autoregressive process
    sampled every 15 min (Breton and Kovatchev 2008):

    $$e_1 = v_1,\quad e_n = \phi\,(e_{n-1} + v_n),\quad v_n \sim N(0, 1)\ \text{i.i.d.},\qquad
      \varepsilon_n = \xi + \lambda \sinh\!\Big(\frac{e_n - \gamma}{\delta}\Big)$$

    interpolated to the sample times by a natural cubic spline; a reading is the
    subcutaneous glucose plus $\varepsilon$, limited to the reporting range
    `[low, high]` (a reading outside it is shown as LOW or HIGH by a real sensor: here it is
    the limit).

    **Fields:**

    - `sample_time`: minutes between readings (5 for current sensors).
    - `pacf`, `gamma`, `lambda_`, `delta`, `xi`: the noise model (mg/dL for `xi`,
      `lambda_`), by default the values of Breton and Kovatchev's fit, as simglucose's
      sensor table gives them (`PACF 0.7, gamma -0.5444, lambda 15.9574, delta 1.6898,
      xi -5.47`).
    - `low`, `high`: the reporting range (mg/dL); by default 39-400.

    References: Breton M, Kovatchev B (2008). Analysis, modeling, and simulation of the
    accuracy of continuous glucose sensors. *J Diabetes Sci Technol* 2:853-862; Xie J
    (2018). Simglucose v0.2.1, https://github.com/jxx123/simglucose (the parameter values).
    """

    sample_time: float = eqx.field(static=True, default=5.0)
    pacf: float = eqx.field(static=True, default=0.7)
    gamma: float = eqx.field(static=True, default=-0.5444)
    lambda_: float = eqx.field(static=True, default=15.9574)
    delta: float = eqx.field(static=True, default=1.6898)
    xi: float = eqx.field(static=True, default=-5.47)
    low: float = eqx.field(static=True, default=39.0)
    high: float = eqx.field(static=True, default=400.0)

    def __check_init__(self):
        checks = (
            ("sample_time", self.sample_time > 0, "> 0 (min)"),
            ("pacf", -1 < self.pacf < 1, "in (-1, 1)"),
            ("lambda_", self.lambda_ > 0, "> 0"),
            ("delta", self.delta > 0, "> 0"),
            ("high", self.high > self.low, f"> low = {self.low}"),
        )
        for name, ok, expect in checks:
            value = getattr(self, name)
            if not (np.isfinite(value) and ok):
                raise ValueError(f"CGMSensor: expected {name} {expect}, got {name}={value!r}.")


def _natural_spline(y: Array, h: float, t: Array) -> Array:
    """Natural cubic spline through `y` at `0, h, 2h, ...`, evaluated at `t` (in range)."""
    n = y.shape[0]
    # Second derivatives m_1..m_{n-2} (m_0 = m_{n-1} = 0): a tridiagonal system.
    rhs = 6.0 * (y[2:] - 2.0 * y[1:-1] + y[:-2]) / h**2
    k = n - 2
    diag = jnp.full((k,), 4.0, dtype=y.dtype)
    lower = jnp.concatenate([jnp.zeros((1,), y.dtype), jnp.ones((k - 1,), y.dtype)])
    upper = jnp.concatenate([jnp.ones((k - 1,), y.dtype), jnp.zeros((1,), y.dtype)])
    inner = jax.lax.linalg.tridiagonal_solve(lower, diag, upper, rhs[:, None])[:, 0]
    m = jnp.concatenate([jnp.zeros((1,), y.dtype), inner, jnp.zeros((1,), y.dtype)])
    i = jnp.clip(jnp.floor(t / h).astype(jnp.int32), 0, n - 2)
    a = (t - i.astype(t.dtype) * h) / h
    b = 1.0 - a
    return b * y[i] + a * y[i + 1] + ((b**3 - b) * m[i] + (a**3 - a) * m[i + 1]) * h**2 / 6.0


def cgm_noise(
    sensor: CGMSensor, n_readings: int, *, key: PRNGKeyArray
) -> Float[Array, " readings"]:
    """The sensor error (mg/dL) at the first `n_readings` sample times (0, `sample_time`, ...).

    **Arguments:** `sensor`; `n_readings` (static); `key`, a JAX PRNG key (the same key gives
    the same numbers).

    **Returns:** the error at each reading.
    """
    if n_readings < 1:
        raise ValueError(f"cgm_noise: expected n_readings >= 1, got {n_readings}.")
    span = (n_readings - 1) * sensor.sample_time
    n_knots = max(int(np.ceil(span / NOISE_INTERVAL)) + 1, 3)
    v = jax.random.normal(key, (n_knots,), dtype=jnp.result_type(float))

    def step(e, vn):
        e = sensor.pacf * (e + vn)
        return e, e

    _, rest = jax.lax.scan(step, v[0], v[1:])
    e = jnp.concatenate([v[:1], rest])
    eps = sensor.xi + sensor.lambda_ * jnp.sinh((e - sensor.gamma) / sensor.delta)
    t = jnp.arange(n_readings, dtype=eps.dtype) * sensor.sample_time
    return _natural_spline(eps, NOISE_INTERVAL, t)


def cgm_readings(
    sensor: CGMSensor, glucose: Float[Array, " readings"], *, key: PRNGKeyArray
) -> Float[Array, " readings"]:
    """CGM readings of a subcutaneous glucose trace sampled at the sensor's sample times.

    **Arguments:**

    - `sensor`: the `CGMSensor`.
    - `glucose`: subcutaneous glucose (mg/dL; the `Gsub` output of `pkpd.UVAPadova`) at
      `0, sample_time, 2 sample_time, ...` minutes.
    - `key`: a JAX PRNG key; the same key gives the same readings. For a cohort, split the
      key and `jax.vmap`.

    **Returns:** `clip(glucose + noise, low, high)` (mg/dL).
    """
    glucose = jnp.asarray(glucose)
    if glucose.ndim != 1:
        raise ValueError(
            f"cgm_readings: expected a 1-d glucose trace, got shape {glucose.shape} "
            "(use jax.vmap for several patients)."
        )
    noise = cgm_noise(sensor, glucose.shape[0], key=key)
    return jnp.clip(glucose + noise, sensor.low, sensor.high)
