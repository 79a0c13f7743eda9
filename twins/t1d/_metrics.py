"""The international consensus CGM metrics (Battelino et al. 2019)."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float


class CGMMetrics(eqx.Module):
    """The consensus CGM metrics of one glucose trace (a pytree: `jax.vmap` gives arrays).

    **Fields** (percent of readings, glucose in mg/dL):

    - `time_in_range`: 70-180 mg/dL inclusive.
    - `time_below_70`: below 70 (levels 1 and 2 together); `time_below_54`: below 54
      (level 2).
    - `time_above_180`: above 180 (levels 1 and 2); `time_above_250`: above 250 (level 2).
    - `mean_glucose` (mg/dL).
    - `gmi`: glucose management indicator (%), `3.31 + 0.02392 * mean_glucose`.
    - `cv`: coefficient of variation (%), `100 * SD / mean` with the sample SD (n - 1).

    References: Battelino T, Danne T, Bergenstal RM, et al. (2019). Clinical targets for
    continuous glucose monitoring data interpretation: recommendations from the
    international consensus on time in range. *Diabetes Care* 42:1593-1603; Bergenstal RM,
    Beck RW, Close KL, et al. (2018). Glucose management indicator (GMI). *Diabetes Care*
    41:2275-2280.
    """

    time_in_range: Float[Array, ""]
    time_below_70: Float[Array, ""]
    time_below_54: Float[Array, ""]
    time_above_180: Float[Array, ""]
    time_above_250: Float[Array, ""]
    mean_glucose: Float[Array, ""]
    gmi: Float[Array, ""]
    cv: Float[Array, ""]


def cgm_metrics(glucose: Float[Array, " readings"]) -> CGMMetrics:
    """The consensus CGM metrics of a trace of equally spaced readings.

    Each reading counts for the same time, so a percentage of readings is a percentage of
    time. The consensus asks for 14 days with at least 70 % of the readings for a clinical
    report; that is for the caller to arrange (no reading here may be missing).

    **Arguments:** `glucose`, readings (mg/dL), 1-d, at least 2, finite.

    **Raises:** `ValueError` for fewer than 2 readings or a non-finite one (when concrete).

    **Returns:** a `CGMMetrics`.
    """
    g = jnp.asarray(glucose, dtype=jnp.result_type(float))
    if g.ndim != 1 or g.shape[0] < 2:
        raise ValueError(
            f"cgm_metrics: expected a 1-d trace of at least 2 readings, got shape {g.shape} "
            "(use jax.vmap for several patients)."
        )
    g = eqx.error_if(g, ~jnp.all(jnp.isfinite(g)), "cgm_metrics: expected finite readings.")

    def percent(mask):
        return 100.0 * jnp.mean(mask.astype(g.dtype))

    mean = jnp.mean(g)
    return CGMMetrics(
        time_in_range=percent((g >= 70.0) & (g <= 180.0)),
        time_below_70=percent(g < 70.0),
        time_below_54=percent(g < 54.0),
        time_above_180=percent(g > 180.0),
        time_above_250=percent(g > 250.0),
        mean_glucose=mean,
        gmi=3.31 + 0.02392 * mean,
        cv=100.0 * jnp.std(g, ddof=1) / mean,
    )
