"""Nonlinear and user-defined PK models integrated with diffrax, and transit absorption."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp

from .._custom_types import Array, Float, Params, State, TimeLike
from ._base import AbstractLinearModel, AbstractODEModel, get


def _mm_rate(params: Params, c: Array) -> Array:
    """Michaelis-Menten elimination rate `VMAX * C / (KM + |C|)` (mg/h).

    For `C >= 0` this is `VMAX * C / (KM + C)`, bit for bit. The absolute value only matters
    where a solver step overshoots below zero, which a small `KM` invites: the rate is then
    negative and brings the amount back, where `VMAX * C / (KM + C)` would keep eliminating
    past the pole at `C = -KM` and run the amount off to large negative values without any
    error (with `KM = 1e-6` mg/L, -7 mg/L after 48 h). An explicit solver now reaches its step
    limit instead (the problem is stiff: use an implicit solver such as `diffrax.Kvaerno5()`).
    """
    return get(params, "VMAX") * c / (get(params, "KM") + jnp.abs(c))


class OneCompartmentMM(AbstractODEModel):
    r"""One-compartment model with intravenous input and Michaelis-Menten elimination.

    $$\frac{dA}{dt} = -\frac{V_{max}\, C}{K_M + C} + r(t), \qquad C = A / V$$

    **Parameters:** `VMAX` maximal elimination rate (mg/h), `KM` concentration at half the
    maximal rate (mg/L), `V` volume (L).
    **Compartments:** 1 central. **Output:** `C` (mg/L).

    Integrated with diffrax between events (`pkpd.ODESolver`).

    References: Wagner JG (1973). *J Pharmacokinet Biopharm* 1:103-121;
    Ludden TM (1991). *Clin Pharmacokinet* 20:429-446.
    """

    state_names: ClassVar[tuple[str, ...]] = ("central",)
    param_names: ClassVar[tuple[str, ...]] = ("VMAX", "KM", "V")
    positive_params: ClassVar[tuple[str, ...]] = ("VMAX", "KM", "V")
    autonomous: ClassVar[bool] = True
    output_names: ClassVar[tuple[str, ...]] = ("C",)

    def vector_field(self, t: TimeLike, x: State, params: Params) -> State:
        c = x[0] / get(params, "V")
        return jnp.stack([-_mm_rate(params, c)])

    def output(self, params: Params, x: State) -> Float[Array, " 1"]:
        return x[..., 0:1] / get(params, "V")


class OneCompartmentOralMM(AbstractODEModel):
    r"""One-compartment model with first-order absorption and Michaelis-Menten elimination.

    $$\frac{dA_d}{dt} = -k_a A_d + r_d, \quad
      \frac{dA_c}{dt} = k_a A_d - \frac{V_{max}\, C}{K_M + C} + r_c, \quad C = A_c / V$$

    **Parameters:** `KA` absorption rate constant (1/h), `VMAX` (mg/h), `KM` (mg/L), `V` (L).
    **Compartments:** 1 depot, 2 central. **Output:** `C` (mg/L).

    References: Wagner JG (1973). *J Pharmacokinet Biopharm* 1:103-121;
    Ludden TM (1991). *Clin Pharmacokinet* 20:429-446.
    """

    state_names: ClassVar[tuple[str, ...]] = ("depot", "central")
    param_names: ClassVar[tuple[str, ...]] = ("KA", "VMAX", "KM", "V")
    positive_params: ClassVar[tuple[str, ...]] = ("KA", "VMAX", "KM", "V")
    autonomous: ClassVar[bool] = True
    output_names: ClassVar[tuple[str, ...]] = ("C",)

    def vector_field(self, t: TimeLike, x: State, params: Params) -> State:
        absorbed = get(params, "KA") * x[0]
        c = x[1] / get(params, "V")
        return jnp.stack([-absorbed, absorbed - _mm_rate(params, c)])

    def output(self, params: Params, x: State) -> Float[Array, " 1"]:
        return x[..., 1:2] / get(params, "V")


def _two_cmt_mm_field(params: Params, a1: Array, a2: Array) -> tuple[Array, Array]:
    c1 = a1 / get(params, "V1")
    q = get(params, "Q")
    transfer = q * c1 - q * a2 / get(params, "V2")
    return -_mm_rate(params, c1) - transfer, transfer


class TwoCompartmentMM(AbstractODEModel):
    r"""Two-compartment model with intravenous input and Michaelis-Menten elimination.

    $$\frac{dA_1}{dt} = -\frac{V_{max}\, C_1}{K_M + C_1} - Q\, C_1 + \frac{Q}{V_2} A_2 + r_1,
      \quad \frac{dA_2}{dt} = Q\, C_1 - \frac{Q}{V_2} A_2 + r_2, \quad C_1 = A_1 / V_1$$

    This is benchmark workload W2 ("2cmt-mm-iv").

    **Parameters:** `VMAX` (mg/h), `KM` (mg/L), `V1` central volume (L), `Q`
    intercompartmental clearance (L/h), `V2` peripheral volume (L).
    **Compartments:** 1 central, 2 peripheral. **Output:** `C` $= A_1/V_1$ (mg/L).

    References: Wagner JG (1973). *J Pharmacokinet Biopharm* 1:103-121;
    Ludden TM (1991). *Clin Pharmacokinet* 20:429-446.
    """

    state_names: ClassVar[tuple[str, ...]] = ("central", "peripheral")
    param_names: ClassVar[tuple[str, ...]] = ("VMAX", "KM", "V1", "Q", "V2")
    positive_params: ClassVar[tuple[str, ...]] = ("VMAX", "KM", "V1", "Q", "V2")
    autonomous: ClassVar[bool] = True
    output_names: ClassVar[tuple[str, ...]] = ("C",)

    def vector_field(self, t: TimeLike, x: State, params: Params) -> State:
        return jnp.stack(_two_cmt_mm_field(params, x[0], x[1]))

    def output(self, params: Params, x: State) -> Float[Array, " 1"]:
        return x[..., 0:1] / get(params, "V1")


class TwoCompartmentOralMM(AbstractODEModel):
    r"""Two-compartment model with first-order absorption and Michaelis-Menten elimination.

    As `TwoCompartmentMM`, with a depot $dA_d/dt = -k_a A_d + r_d$ feeding the central
    compartment.

    **Parameters:** `KA` (1/h), `VMAX` (mg/h), `KM` (mg/L), `V1` (L), `Q` (L/h), `V2` (L).
    **Compartments:** 1 depot, 2 central, 3 peripheral. **Output:** `C` $= A_2/V_1$ (mg/L).

    References: Wagner JG (1973). *J Pharmacokinet Biopharm* 1:103-121;
    Ludden TM (1991). *Clin Pharmacokinet* 20:429-446.
    """

    state_names: ClassVar[tuple[str, ...]] = ("depot", "central", "peripheral")
    param_names: ClassVar[tuple[str, ...]] = ("KA", "VMAX", "KM", "V1", "Q", "V2")
    positive_params: ClassVar[tuple[str, ...]] = ("KA", "VMAX", "KM", "V1", "Q", "V2")
    autonomous: ClassVar[bool] = True
    output_names: ClassVar[tuple[str, ...]] = ("C",)

    def vector_field(self, t: TimeLike, x: State, params: Params) -> State:
        absorbed = get(params, "KA") * x[0]
        d1, d2 = _two_cmt_mm_field(params, x[1], x[2])
        return jnp.stack([-absorbed, absorbed + d1, d2])

    def output(self, params: Params, x: State) -> Float[Array, " 1"]:
        return x[..., 1:2] / get(params, "V1")


class TransitAbsorption(AbstractLinearModel):
    r"""Transit-compartment absorption into a one-compartment model (Savic et al. 2007).

    A dose passes through a chain of $n + 1$ compartments $A_0, \dots, A_n$ emptying at
    the same rate constant $k_{tr}$, then an absorption compartment $A_a$ (rate constant
    $k_a$) into the central compartment:

    $$\frac{dA_0}{dt} = -k_{tr} A_0, \quad
      \frac{dA_i}{dt} = k_{tr} A_{i-1} - k_{tr} A_i \; (i = 1..n), \quad
      \frac{dA_a}{dt} = k_{tr} A_n - k_a A_a, \quad
      \frac{dA_c}{dt} = k_a A_a - \frac{CL}{V} A_c$$

    with $k_{tr} = (n + 1) / MTT$, so that `MTT` is the mean time from the dose to the
    arrival in the absorption compartment, and $C = A_c / V$. After a bolus $D$ into $A_0$,
    $A_n(t) = D (k_{tr} t)^n e^{-k_{tr} t} / n!$, the input of Savic et al.

    **Fields:** `n_transit` (static int $n \ge 0$), the number of transit compartments
    after the dosing compartment.

    **Parameters:** `MTT` mean transit time (h), `KA` absorption rate constant (1/h),
    `CL` clearance (L/h), `V` volume (L).

    **Compartments:** 1 dosing compartment ($A_0$, the first of the chain: dose here),
    $2, \dots, n + 1$ the transit compartments $A_1..A_n$, $n + 2$ the absorption
    compartment, $n + 3$ central. **Output:** `C` (mg/L).

    The model is linear, so it is propagated exactly by the matrix exponential (no ODE
    solver; `pkpd.AsODE(TransitAbsorption(n))` integrates it with diffrax instead). Only
    integer `n` is supported (Savic's gamma-function form for real `n` holds for a single
    dose only).

    References: Savic RM, Jonker DM, Kerbusch T, Karlsson MO (2007).
    *J Pharmacokinet Pharmacodyn* 34:711-726.
    """

    n_transit: int = eqx.field(static=True)
    param_names: ClassVar[tuple[str, ...]] = ("MTT", "KA", "CL", "V")
    positive_params: ClassVar[tuple[str, ...]] = ("MTT", "KA", "CL", "V")
    output_names: ClassVar[tuple[str, ...]] = ("C",)

    def __check_init__(self):
        if not (isinstance(self.n_transit, int) and self.n_transit >= 0):
            raise ValueError(
                f"TransitAbsorption: expected n_transit to be an int >= 0, got "
                f"n_transit={self.n_transit!r}."
            )

    @property
    def state_names(self) -> tuple[str, ...]:  # type: ignore[override]
        transit = tuple(f"transit{i}" for i in range(1, self.n_transit + 1))
        return ("dose", *transit, "absorption", "central")

    def matrix(self, params: Params) -> Float[Array, "states states"]:
        n = self.n_transit
        ktr = (n + 1) / get(params, "MTT")
        ka = get(params, "KA")
        k = get(params, "CL") / get(params, "V")
        chain = jnp.arange(n + 1)
        out = jnp.zeros((n + 3, n + 3), dtype=ktr.dtype)
        out = out.at[chain, chain].set(-ktr).at[chain + 1, chain].set(ktr)
        return out.at[n + 1, n + 1].set(-ka).at[n + 2, n + 1].set(ka).at[n + 2, n + 2].set(-k)

    def output(self, params: Params, x: State) -> Float[Array, " 1"]:
        i = self.n_transit + 2
        return x[..., i : i + 1] / get(params, "V")


class ODEModel(AbstractODEModel):
    r"""A model given by a user function, integrated with diffrax between events.

    The preferred way to write a new model is a subclass of `pkpd.AbstractODEModel`, which
    declares its names as class variables and gives the vector field and the output as
    methods; dosing, lag times, bioavailability, infusions and steady states then work as
    for the built-in models:

    ```python
    class OneCompartmentMMLinear(pkpd.AbstractODEModel):
        '''Parallel linear and saturable elimination. References: ...'''

        state_names = ("central",)
        param_names = ("CL", "VMAX", "KM", "V")
        output_names = ("C",)

        def vector_field(self, t, x, params):
            c = x[0] / params["V"]
            elim = params["CL"] * c + params["VMAX"] * c / (params["KM"] + c)
            return jnp.stack([-elim])

        def output(self, params, x):
            return x[..., 0:1] / params["V"]
    ```

    `ODEModel` builds the same from functions, without a class:

    ```python
    def field(t, x, params):
        return jnp.stack([-params["K"] * x[0]])

    def concentration(params, x):
        return x[0:1] / params["V"]

    model = pkpd.ODEModel(
        field,
        state_names=("central",),
        param_names=("K", "V"),
        output_fn=concentration,
        output_names=("C",),
    )
    ```

    **Arguments:**

    - `fn`: the vector field `fn(t, x, params) -> dx/dt` without dosing input (amount/h),
      an array of the shape of the state.
    - `state_names`: names of the states; dose compartment `i` is `state_names[i - 1]`.
    - `param_names`: the parameters `fn` and `output_fn` read (checked by `simulate`).
    - `positive`: those of them that must be > 0 (`simulate` refuses other values, naming
      them); the others may take any finite value.
    - `output_fn`: `output_fn(params, x) -> outputs`, a 1-d array with one value per
      `output_names`. By default the outputs are the states themselves.
    - `output_names`: names of the outputs (by default `state_names`).
    - `initial_fn`: `initial_fn(params) -> x0`, the state before any dose and after a reset
      (a PD baseline, say). By default zero.

    The functions are static fields: pass plain Python functions (not `jax.jit`-wrapped
    ones) defined once, e.g. at module level, so that a jitted `simulate` does not compile
    again for a new but equal function object.
    """

    fn: Callable[[TimeLike, State, Params], State] = eqx.field(static=True)
    state_names: tuple[str, ...] = eqx.field(static=True)  # type: ignore[assignment]
    param_names: tuple[str, ...] = eqx.field(static=True)  # type: ignore[assignment]
    output_names: tuple[str, ...] = eqx.field(static=True)  # type: ignore[assignment]
    output_fn: Callable[[Params, State], Array] | None = eqx.field(static=True)
    initial_fn: Callable[[Params], State] | None = eqx.field(static=True)
    positive_params: tuple[str, ...] = eqx.field(static=True)  # type: ignore[assignment]

    def __init__(
        self,
        fn: Callable[[TimeLike, State, Params], State],
        *,
        state_names: tuple[str, ...],
        param_names: tuple[str, ...],
        output_fn: Callable[[Params, State], Array] | None = None,
        output_names: tuple[str, ...] | None = None,
        initial_fn: Callable[[Params], State] | None = None,
        positive: tuple[str, ...] = (),
    ):
        if not callable(fn):
            raise TypeError(f"ODEModel: expected fn to be callable (t, x, params), got {fn!r}.")
        state_names = tuple(state_names)
        if not state_names:
            raise ValueError("ODEModel: expected at least one state name, got none.")
        if output_names is None:
            if output_fn is not None:
                raise ValueError(
                    "ODEModel: expected output_names together with output_fn, got output_fn alone."
                )
            output_names = state_names
        self.fn = fn
        self.state_names = state_names
        self.param_names = tuple(param_names)
        self.output_names = tuple(output_names)
        self.output_fn = output_fn
        self.initial_fn = initial_fn
        unknown = sorted(set(positive) - set(self.param_names))
        if unknown:
            raise ValueError(f"ODEModel: positive names {unknown} are not parameters.")
        self.positive_params = tuple(positive)

    def vector_field(self, t: TimeLike, x: State, params: Params) -> State:
        return jnp.asarray(self.fn(t, x, params), dtype=x.dtype)

    def output(self, params: Params, x: State) -> Float[Array, " outputs"]:
        if self.output_fn is None:
            return x
        return jnp.atleast_1d(self.output_fn(params, x))

    def initial_state(self, params: Params) -> State:
        if self.initial_fn is None:
            return jnp.zeros(self.n_states, dtype=jnp.result_type(float))
        x0 = jnp.asarray(self.initial_fn(params), dtype=jnp.result_type(float))
        return jnp.broadcast_to(x0, (self.n_states,))
