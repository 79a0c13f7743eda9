"""Linear mammillary compartment models (NONMEM ADVAN1-4, 11, 12).

The intravenous models (`OneCompartment`, `TwoCompartment`, `ThreeCompartment`) are
propagated in closed form from the eigenvalues of their rate-constant matrix (the
macro-constants alpha, beta, gamma of the multi-exponential disposition), which are real,
negative and distinct for positive parameters; the models with a depot, whose absorption rate
may coincide with an eigenvalue, keep the matrix exponential (except `OneCompartmentOral`,
written to stay exact at `KA == CL/V`).

References: Bertrand J, Mentre F (2008). Mathematical expressions of the pharmacokinetic and
pharmacodynamic models implemented in the Monolix software. INSERM U738, Paris (sections
1.1-1.3: the roots of the 2- and 3-compartment characteristic polynomials); Gibaldi M,
Perrier D (1982). *Pharmacokinetics*, 2nd ed. Marcel Dekker, ch. 2-3.
"""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Float, Params, State
from ._base import (
    AbstractLinearModel,
    ODESolver,
    get,
    phi1,
    spectral_propagate,
    spectral_transition,
)


class OneCompartment(AbstractLinearModel):
    r"""One-compartment model with intravenous input (NONMEM ADVAN1 TRANS2).

    $$\frac{dA_c}{dt} = -\frac{CL}{V} A_c + r_c(t), \qquad C = A_c / V$$

    **Parameters:** `CL` clearance (L/h), `V` volume (L).
    **Compartments:** 1 central. **Output:** `C` (mg/L).

    Propagated in closed form.

    References: Gibaldi M, Perrier D (1982). *Pharmacokinetics*, 2nd ed. Marcel Dekker;
    Beal SL, Sheiner LB et al. *NONMEM Users Guides*, Part VI (ADVAN1).
    """

    state_names: ClassVar[tuple[str, ...]] = ("central",)
    param_names: ClassVar[tuple[str, ...]] = ("CL", "V")
    positive_params: ClassVar[tuple[str, ...]] = ("CL", "V")
    output_names: ClassVar[tuple[str, ...]] = ("C",)

    def matrix(self, params: Params) -> Float[Array, "1 1"]:
        return jnp.reshape(-get(params, "CL") / get(params, "V"), (1, 1))

    def propagate(self, params, x, rate, t0, t1, solver: ODESolver) -> State:
        del solver
        dt = t1 - t0
        k = get(params, "CL") / get(params, "V")
        decay = jnp.exp(-k * dt)
        return x * decay + rate * dt * phi1(k * dt, decay)

    def exposure_transition(self, params, rate, row, offset, dt):
        k = get(params, "CL") / get(params, "V")
        return spectral_transition(
            jnp.reshape(-k, (1,)), jnp.ones((1, 1, 1), dtype=k.dtype), rate, row, offset, dt
        )

    def output(self, params: Params, x: State) -> Float[Array, " 1"]:
        return x[..., 0:1] / get(params, "V")


class OneCompartmentOral(AbstractLinearModel):
    r"""One-compartment model with first-order absorption (NONMEM ADVAN2 TRANS2).

    $$\frac{dA_d}{dt} = -k_a A_d + r_d, \quad
      \frac{dA_c}{dt} = k_a A_d - \frac{CL}{V} A_c + r_c, \quad C = A_c / V$$

    **Parameters:** `KA` absorption rate constant (1/h), `CL` (L/h), `V` (L).
    **Compartments:** 1 depot, 2 central. **Output:** `C` (mg/L).

    Propagated in closed form, written with $\varphi_1(z) = (1 - e^{-z})/z$ so that it stays
    exact and differentiable when `KA` equals `CL/V`.

    References: Bateman H (1910). *Proc Cambridge Philos Soc* 15:423-427;
    Gibaldi M, Perrier D (1982). *Pharmacokinetics*, 2nd ed.; NONMEM Users Guides Part VI (ADVAN2).
    """

    state_names: ClassVar[tuple[str, ...]] = ("depot", "central")
    param_names: ClassVar[tuple[str, ...]] = ("KA", "CL", "V")
    positive_params: ClassVar[tuple[str, ...]] = ("KA", "CL", "V")
    output_names: ClassVar[tuple[str, ...]] = ("C",)

    def matrix(self, params: Params) -> Float[Array, "2 2"]:
        ka = get(params, "KA")
        k = get(params, "CL") / get(params, "V")
        z = jnp.zeros_like(ka)
        return jnp.stack([jnp.stack([-ka, z]), jnp.stack([ka, -k])])

    def propagate(self, params, x, rate, t0, t1, solver: ODESolver) -> State:
        del solver
        dt = t1 - t0
        ka = get(params, "KA")
        k = get(params, "CL") / get(params, "V")
        ead = jnp.exp(-ka * dt)
        ekd = jnp.exp(-k * dt)
        # g = (exp(-k dt) - exp(-ka dt)) / (ka - k), exact also when ka == k (then dt e^{-k dt}).
        d = ka - k
        z = d * dt
        small = jnp.abs(z) < 1e-3
        series = dt * ekd * (1.0 - z * (0.5 - z * (1.0 / 6.0 - z / 24.0)))
        g = jnp.where(small, series, (ekd - ead) / jnp.where(small, 1.0, d))
        a_d, a_c = x[0], x[1]
        r_d, r_c = rate[0], rate[1]
        k_int = dt * phi1(k * dt, ekd)  # (1 - exp(-k dt)) / k
        new_d = a_d * ead + r_d * dt * phi1(ka * dt, ead)
        new_c = a_c * ekd + a_d * ka * g + r_c * k_int + r_d * (k_int - g)
        return jnp.stack([new_d, new_c])

    def output(self, params: Params, x: State) -> Float[Array, " 1"]:
        return x[..., 1:2] / get(params, "V")


def _two_cmt_matrix(cl, v1, q, v2) -> Array:
    k10, k12, k21 = cl / v1, q / v1, q / v2
    return jnp.stack([jnp.stack([-(k10 + k12), k21]), jnp.stack([k12, -k21])])


def _three_cmt_matrix(cl, v1, q2, v2, q3, v3) -> Array:
    k10, k12, k21, k13, k31 = cl / v1, q2 / v1, q2 / v2, q3 / v1, q3 / v3
    z = jnp.zeros_like(k10)
    return jnp.stack(
        [
            jnp.stack([-(k10 + k12 + k13), k21, k31]),
            jnp.stack([k12, -k21, z]),
            jnp.stack([k13, z, -k31]),
        ]
    )


def _two_cmt_spectrum(cl, v1, q, v2) -> tuple[Array, Array]:
    r"""Eigenvalues and spectral projectors of the 2-compartment matrix `K`.

    With $k_{10} = CL/V_1$, $k_{12} = Q/V_1$, $k_{21} = Q/V_2$ the macro-constants are
    $\alpha, \beta = (s \pm \sqrt{\Delta})/2$, $s = k_{10} + k_{12} + k_{21}$,
    $\Delta = (k_{10} + k_{12} - k_{21})^2 + 4 k_{12} k_{21} > 0$ (written so, without
    cancellation), $\beta = k_{10} k_{21} / \alpha$; the eigenvalues are $-\alpha$,
    $-\beta$, and the projectors $(K + \beta I)/(\beta - \alpha)$ and
    $(K + \alpha I)/(\alpha - \beta)$. The gap $\sqrt{\Delta} \ge 2 Q/\sqrt{V_1 V_2}$.

    References: Bertrand J, Mentre F (2008), section 1.2; Gibaldi M, Perrier D (1982), ch. 3.
    """
    k10, k12, k21 = cl / v1, q / v1, q / v2
    root = jnp.sqrt((k10 + k12 - k21) ** 2 + 4.0 * k12 * k21)
    alpha = 0.5 * (k10 + k12 + k21 + root)
    beta = k10 * k21 / alpha
    k = _two_cmt_matrix(cl, v1, q, v2)
    eye = jnp.eye(2, dtype=k.dtype)
    projs = jnp.stack([-(k + beta * eye) / root, (k + alpha * eye) / root])
    return jnp.stack([-alpha, -beta]), projs


def _three_cmt_spectrum(cl, v1, q2, v2, q3, v3) -> tuple[Array, Array]:
    r"""Eigenvalues and spectral projectors of the 3-compartment mammillary matrix `K`.

    The macro-constants $\alpha > \beta > \gamma > 0$ are the roots of
    $x^3 - a_2 x^2 + a_1 x - a_0$ with $a_2 = k_{10} + k_{12} + k_{13} + k_{21} + k_{31}$,
    $a_1 = k_{10} k_{31} + k_{21} k_{31} + k_{21} k_{13} + k_{10} k_{21} + k_{31} k_{12}$,
    $a_0 = k_{10} k_{21} k_{31}$, by the trigonometric solution of the cubic (Bertrand &
    Mentre 2008, section 1.3), each polished by one Newton step on the polynomial. `K` is
    similar to a symmetric arrowhead matrix, so for positive parameters its eigenvalues are
    real and distinct (Cauchy interlacing); the projectors are
    $P_i = \prod_{j \ne i} (K - \lambda_j I)/(\lambda_i - \lambda_j)$.

    References: Bertrand J, Mentre F (2008), section 1.3; Gibaldi M, Perrier D (1982), ch. 3.
    """
    k10, k12, k21, k13, k31 = cl / v1, q2 / v1, q2 / v2, q3 / v1, q3 / v3
    a2 = k10 + k12 + k13 + k21 + k31
    a1 = k10 * k31 + k21 * k31 + k21 * k13 + k10 * k21 + k31 * k12
    a0 = k10 * k21 * k31
    # x = y + a2/3: y^3 + p y + q = 0, three real roots (p < 0).
    p = a1 - a2 * a2 / 3.0
    q = -2.0 * a2**3 / 27.0 + a1 * a2 / 3.0 - a0
    m = jnp.sqrt(-p / 3.0)
    arg = jnp.clip(-q / (2.0 * m**3), -1.0, 1.0)
    theta = jnp.arccos(arg) / 3.0
    shifts = jnp.asarray([0.0, -2.0 * np.pi / 3.0, 2.0 * np.pi / 3.0], dtype=m.dtype)
    x = a2 / 3.0 + 2.0 * m * jnp.cos(theta + shifts)  # alpha >= beta >= gamma
    f = ((x - a2) * x + a1) * x - a0
    df = (3.0 * x - 2.0 * a2) * x + a1
    x = x - f / df
    lams = -x
    k = _three_cmt_matrix(cl, v1, q2, v2, q3, v3)
    eye = jnp.eye(3, dtype=k.dtype)
    projs = []
    for i in range(3):
        a, b = [o for o in range(3) if o != i]
        num = (k - lams[a] * eye) @ (k - lams[b] * eye)
        projs.append(num / ((lams[i] - lams[a]) * (lams[i] - lams[b])))
    return lams, jnp.stack(projs)


def _with_depot(k: Array, ka: Array) -> Array:
    """Prepend a first-order absorption depot feeding the first compartment of `k`."""
    n = k.shape[0]
    out = jnp.zeros((n + 1, n + 1), dtype=k.dtype)
    out = out.at[1:, 1:].set(k)
    out = out.at[0, 0].set(-ka).at[1, 0].set(ka)
    return out


class TwoCompartment(AbstractLinearModel):
    r"""Two-compartment model with intravenous input (NONMEM ADVAN3 TRANS4).

    $$\frac{dA_1}{dt} = -\frac{CL + Q}{V_1} A_1 + \frac{Q}{V_2} A_2 + r_1, \quad
      \frac{dA_2}{dt} = \frac{Q}{V_1} A_1 - \frac{Q}{V_2} A_2 + r_2, \quad C = A_1 / V_1$$

    **Parameters:** `CL` (L/h), `V1` central volume (L), `Q` intercompartmental clearance
    (L/h), `V2` peripheral volume (L). **Compartments:** 1 central, 2 peripheral.
    **Output:** `C` (mg/L).

    Propagated in closed form, $A(t) = \sum_{i} e^{\lambda_i t} P_i A(0)$ plus the input
    term, from the eigenvalues $-\alpha, -\beta$ of the rate-constant matrix
    (`_two_cmt_spectrum`); the exposure's integral likewise (`exposure_transition`).

    References: Gibaldi M, Perrier D (1982). *Pharmacokinetics*, 2nd ed., ch. 3;
    Bertrand J, Mentre F (2008). Mathematical expressions of the pharmacokinetic and
    pharmacodynamic models implemented in the Monolix software, section 1.2;
    NONMEM Users Guides Part VI (ADVAN3, TRANS4).
    """

    state_names: ClassVar[tuple[str, ...]] = ("central", "peripheral")
    param_names: ClassVar[tuple[str, ...]] = ("CL", "V1", "Q", "V2")
    positive_params: ClassVar[tuple[str, ...]] = ("CL", "V1", "Q", "V2")
    output_names: ClassVar[tuple[str, ...]] = ("C",)

    def matrix(self, params: Params) -> Float[Array, "2 2"]:
        return _two_cmt_matrix(*(get(params, n) for n in self.param_names))

    def propagate(self, params, x, rate, t0, t1, solver: ODESolver) -> State:
        del solver
        lams, projs = _two_cmt_spectrum(*(get(params, n) for n in self.param_names))
        return spectral_propagate(lams, projs, x, rate, t1 - t0)

    def exposure_transition(self, params, rate, row, offset, dt):
        lams, projs = _two_cmt_spectrum(*(get(params, n) for n in self.param_names))
        return spectral_transition(lams, projs, rate, row, offset, dt)

    def output(self, params: Params, x: State) -> Float[Array, " 1"]:
        return x[..., 0:1] / get(params, "V1")


class TwoCompartmentOral(AbstractLinearModel):
    r"""Two-compartment model with first-order absorption (NONMEM ADVAN4 TRANS4).

    As `TwoCompartment`, with a depot `dA_d/dt = -KA A_d` feeding the central compartment.

    **Parameters:** `KA` (1/h), `CL`, `V1`, `Q`, `V2`. **Compartments:** 1 depot, 2 central,
    3 peripheral. **Output:** `C = A_2 / V1` (mg/L).

    References: Gibaldi M, Perrier D (1982). *Pharmacokinetics*, 2nd ed.;
    NONMEM Users Guides Part VI (ADVAN4, TRANS4).
    """

    state_names: ClassVar[tuple[str, ...]] = ("depot", "central", "peripheral")
    param_names: ClassVar[tuple[str, ...]] = ("KA", "CL", "V1", "Q", "V2")
    positive_params: ClassVar[tuple[str, ...]] = ("KA", "CL", "V1", "Q", "V2")
    output_names: ClassVar[tuple[str, ...]] = ("C",)

    def matrix(self, params: Params) -> Float[Array, "3 3"]:
        k = _two_cmt_matrix(*(get(params, n) for n in ("CL", "V1", "Q", "V2")))
        return _with_depot(k, get(params, "KA"))

    def output(self, params: Params, x: State) -> Float[Array, " 1"]:
        return x[..., 1:2] / get(params, "V1")


class ThreeCompartment(AbstractLinearModel):
    r"""Three-compartment mammillary model with intravenous input (NONMEM ADVAN11 TRANS4).

    Central compartment 1 exchanges with peripheral compartments 2 (`Q2`, `V2`) and 3
    (`Q3`, `V3`); elimination `CL` from the central compartment; `C = A_1 / V1`.

    **Parameters:** `CL`, `V1`, `Q2`, `V2`, `Q3`, `V3` (L/h and L). **Output:** `C` (mg/L).

    Propagated in closed form from the eigenvalues $-\alpha, -\beta, -\gamma$ of the
    rate-constant matrix (`_three_cmt_spectrum`), the exposure's integral likewise.

    References: Gibaldi M, Perrier D (1982). *Pharmacokinetics*, 2nd ed.;
    Bertrand J, Mentre F (2008). Mathematical expressions of the pharmacokinetic and
    pharmacodynamic models implemented in the Monolix software, section 1.3;
    NONMEM Users Guides Part VI (ADVAN11, TRANS4).
    """

    state_names: ClassVar[tuple[str, ...]] = ("central", "peripheral1", "peripheral2")
    param_names: ClassVar[tuple[str, ...]] = ("CL", "V1", "Q2", "V2", "Q3", "V3")
    positive_params: ClassVar[tuple[str, ...]] = ("CL", "V1", "Q2", "V2", "Q3", "V3")
    output_names: ClassVar[tuple[str, ...]] = ("C",)

    def matrix(self, params: Params) -> Float[Array, "3 3"]:
        return _three_cmt_matrix(*(get(params, n) for n in self.param_names))

    def propagate(self, params, x, rate, t0, t1, solver: ODESolver) -> State:
        del solver
        lams, projs = _three_cmt_spectrum(*(get(params, n) for n in self.param_names))
        return spectral_propagate(lams, projs, x, rate, t1 - t0)

    def exposure_transition(self, params, rate, row, offset, dt):
        lams, projs = _three_cmt_spectrum(*(get(params, n) for n in self.param_names))
        return spectral_transition(lams, projs, rate, row, offset, dt)

    def output(self, params: Params, x: State) -> Float[Array, " 1"]:
        return x[..., 0:1] / get(params, "V1")


class ThreeCompartmentOral(AbstractLinearModel):
    r"""Three-compartment model with first-order absorption (NONMEM ADVAN12 TRANS4).

    As `ThreeCompartment` with a depot (compartment 1, `KA`) feeding the central
    compartment (2); peripheral compartments 3 and 4. `C = A_2 / V1`.

    **Parameters:** `KA`, `CL`, `V1`, `Q2`, `V2`, `Q3`, `V3`. **Output:** `C` (mg/L).

    References: Gibaldi M, Perrier D (1982). *Pharmacokinetics*, 2nd ed.;
    NONMEM Users Guides Part VI (ADVAN12, TRANS4).
    """

    state_names: ClassVar[tuple[str, ...]] = ("depot", "central", "peripheral1", "peripheral2")
    param_names: ClassVar[tuple[str, ...]] = ("KA", "CL", "V1", "Q2", "V2", "Q3", "V3")
    positive_params: ClassVar[tuple[str, ...]] = ("KA", "CL", "V1", "Q2", "V2", "Q3", "V3")
    output_names: ClassVar[tuple[str, ...]] = ("C",)

    def matrix(self, params: Params) -> Float[Array, "4 4"]:
        k = _three_cmt_matrix(*(get(params, n) for n in ("CL", "V1", "Q2", "V2", "Q3", "V3")))
        return _with_depot(k, get(params, "KA"))

    def output(self, params: Params, x: State) -> Float[Array, " 1"]:
        return x[..., 1:2] / get(params, "V1")
