"""Pharmacodynamic models and their composition with any PK model (`PKPD`).

A PD model is driven by the concentration `C(t)` (mg/L) of a PK model. It may have states
of its own (an effect compartment, a response variable) and gives the effect `E`:

- direct effects (`Emax`, `SigmoidEmax`): `E = f(C)`, no states;
- linear links (`EffectCompartment`): `dy/dt = a y + b C` and `E = f(y)`;
- general dynamics (`IndirectResponseI` ... `IndirectResponseIV`): `dy/dt = g(t, C, y)`.

`PKPD(pk, pd)` joins them into one model whose state is the PK states followed by the PD
states. It stays analytic (closed form or matrix exponential) whenever the PK model is
linear and the PD model is a direct effect or a linear link; otherwise it is integrated
with diffrax.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float, Params, State, TimeLike
from ._base import (
    AbstractLinearModel,
    AbstractModel,
    AsODE,
    FixedStep,
    ODESolver,
    get,
    phi1,
    phi2,
    saving_by_propagation,
)
from ._linear import (
    OneCompartment,
    OneCompartmentOral,
    ThreeCompartment,
    ThreeCompartmentOral,
    TwoCompartment,
    TwoCompartmentOral,
    _three_cmt_spectrum,
    _two_cmt_spectrum,
)


class AbstractPDModel(eqx.Module):
    """A PD model driven by a concentration; composed with a PK model by `PKPD`.

    Subclasses declare `state_names` (possibly empty) and `param_names`, and give:

    - `vector_field(t, c, y, params)`: `dy/dt` of the PD states `y` at concentration `c`;
    - `effect(params, c, y)`: the effect `E` at concentration `c` and PD state `y`;
    - `initial_state(params)`: the PD states before any dose and after a reset (zero by
      default; a baseline for turnover models).
    """

    state_names: ClassVar[tuple[str, ...]]
    param_names: ClassVar[tuple[str, ...]]
    #: Parameters that must be > 0 (see `pkpd.AbstractModel.positive_params`).
    positive_params: ClassVar[tuple[str, ...]] = ()
    #: Whether `vector_field` ignores `t` (see `pkpd.AbstractModel.autonomous`).
    autonomous: ClassVar[bool] = False

    @property
    def n_states(self) -> int:
        return len(self.state_names)

    def initial_state(self, params: Params) -> Float[Array, " pd_states"]:
        del params
        return jnp.zeros(self.n_states, dtype=jnp.result_type(float))

    @abc.abstractmethod
    def vector_field(
        self,
        t: TimeLike,
        c: Float[Array, ""],
        y: Float[Array, " pd_states"],
        params: Params,
    ) -> Float[Array, " pd_states"]:
        """Time derivative of the PD states at concentration `c` (mg/L)."""

    @abc.abstractmethod
    def effect(
        self, params: Params, c: Float[Array, "*batch"], y: Float[Array, "*batch pd_states"]
    ) -> Float[Array, "*batch"]:
        """The effect at concentration `c` (mg/L) and PD state `y`."""


class AbstractDirectEffect(AbstractPDModel):
    """A direct (instantaneous) effect `E = f(C)`: no PD states."""

    autonomous: ClassVar[bool] = True

    state_names: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def effect_of(self, params: Params, c: Float[Array, "*batch"]) -> Float[Array, "*batch"]:
        """The effect at concentration `c` (mg/L)."""

    def vector_field(self, t, c, y, params):
        del t, c, params
        return y

    def effect(self, params, c, y):
        del y
        return self.effect_of(params, c)


class AbstractLinearPDModel(AbstractPDModel):
    """A PD model with linear dynamics `dy/dt = a y + b C` (a linear link such as an effect
    compartment). Composed with a linear PK model it keeps `PKPD` linear and exact."""

    autonomous: ClassVar[bool] = True

    @abc.abstractmethod
    def linear_parts(
        self, params: Params
    ) -> tuple[Float[Array, "pd_states pd_states"], Float[Array, " pd_states"]]:
        """`(a, b)` of `dy/dt = a y + b C` (1/h)."""

    def vector_field(self, t, c, y, params):
        del t
        a, b = self.linear_parts(params)
        return a @ y + b * c


class Emax(AbstractDirectEffect):
    r"""Direct hyperbolic Emax model.

    $$E = E_0 + \frac{E_{max}\, C}{EC_{50} + C}$$

    **Parameters:** `E0` baseline effect, `EMAX` maximal effect (units of the effect;
    negative for an inhibitory drug), `EC50` concentration of half-maximal effect (mg/L).
    **States:** none.

    References: Holford NHG, Sheiner LB (1981). *Clin Pharmacokinet* 6:429-453.
    """

    param_names: ClassVar[tuple[str, ...]] = ("E0", "EMAX", "EC50")
    positive_params: ClassVar[tuple[str, ...]] = ("EC50",)

    def effect_of(self, params: Params, c: Float[Array, "*batch"]) -> Float[Array, "*batch"]:
        return get(params, "E0") + get(params, "EMAX") * c / (get(params, "EC50") + c)


class SigmoidEmax(AbstractDirectEffect):
    r"""Direct sigmoid Emax (Hill) model.

    $$E = E_0 + \frac{E_{max}\, C^{\gamma}}{EC_{50}^{\gamma} + C^{\gamma}}$$

    **Parameters:** `E0` baseline effect, `EMAX` maximal effect, `EC50` (mg/L), `GAMMA` Hill
    coefficient (dimensionless, > 0). **States:** none.

    Evaluated as $E_0 + E_{max}\,\sigma(\gamma(\log C - \log EC_{50}))$ with the logistic
    $\sigma$, which is exact, cannot overflow, and has finite gradients at $C = 0$ (where
    $E = E_0$).

    References: Hill AV (1910). *J Physiol* 40:iv-vii;
    Holford NHG, Sheiner LB (1981). *Clin Pharmacokinet* 6:429-453.
    """

    param_names: ClassVar[tuple[str, ...]] = ("E0", "EMAX", "EC50", "GAMMA")
    positive_params: ClassVar[tuple[str, ...]] = ("EC50", "GAMMA")

    def effect_of(self, params: Params, c: Float[Array, "*batch"]) -> Float[Array, "*batch"]:
        positive = c > 0
        safe_c = jnp.where(positive, c, 1.0)
        z = get(params, "GAMMA") * (jnp.log(safe_c) - jnp.log(get(params, "EC50")))
        frac = jnp.where(positive, jax.nn.sigmoid(z), 0.0)
        return get(params, "E0") + get(params, "EMAX") * frac


class EffectCompartment(AbstractLinearPDModel):
    r"""Effect-compartment (biophase) link with a direct effect on the effect-site
    concentration.

    $$\frac{dC_e}{dt} = k_{e0}\,(C - C_e), \qquad E = f(C_e)$$

    where $f$ is `drug_effect` (`Emax()` by default, or `SigmoidEmax()`).

    **Fields:** `drug_effect`, a direct effect model (`pkpd.Emax`, `pkpd.SigmoidEmax`).

    **Parameters:** `KE0` equilibration rate constant (1/h), then those of `drug_effect`
    (`E0`, `EMAX`, `EC50` (mg/L) [, `GAMMA`]).
    **States:** `effect`, the effect-site concentration $C_e$ (mg/L), zero at baseline.

    References: Sheiner LB, Stanski DR, Vozeh S, Miller RD, Ham J (1979).
    *Clin Pharmacol Ther* 25:358-371.
    """

    drug_effect: AbstractDirectEffect = Emax()

    state_names: ClassVar[tuple[str, ...]] = ("effect",)

    @property
    def param_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("KE0", *self.drug_effect.param_names)

    @property
    def positive_params(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("KE0", *self.drug_effect.positive_params)

    def linear_parts(self, params: Params) -> tuple[Float[Array, "1 1"], Float[Array, " 1"]]:
        ke0 = get(params, "KE0")
        return jnp.reshape(-ke0, (1, 1)), jnp.reshape(ke0, (1,))

    def effect(self, params, c, y):
        del c
        return self.drug_effect.effect_of(params, y[..., 0])


class AbstractIndirectResponse(AbstractPDModel):
    r"""Indirect response (turnover) models of Dayneka, Garg and Jusko (1993).

    A response $R$ is produced at zero-order rate $k_{in}$ and lost at first-order rate
    $k_{out}$; the drug inhibits or stimulates one of the two. The baseline
    $R_0 = k_{in}/k_{out}$ is the initial state (and the state after a reset). The effect
    is $E = R$.
    """

    autonomous: ClassVar[bool] = True

    state_names: ClassVar[tuple[str, ...]] = ("response",)

    def initial_state(self, params: Params) -> Float[Array, " 1"]:
        return jnp.reshape(get(params, "KIN") / get(params, "KOUT"), (1,))

    def effect(self, params, c, y):
        del c
        return y[..., 0]


def _inhibition(params: Params, c: Array) -> Array:
    return get(params, "IMAX") * c / (get(params, "IC50") + c)


def _stimulation(params: Params, c: Array) -> Array:
    return get(params, "EMAX") * c / (get(params, "EC50") + c)


class IndirectResponseI(AbstractIndirectResponse):
    r"""Indirect response model I: inhibition of the production of the response.

    $$\frac{dR}{dt} = k_{in}\left(1 - \frac{I_{max} C}{IC_{50} + C}\right) - k_{out} R,
      \qquad R(0) = k_{in}/k_{out}, \qquad E = R$$

    **Parameters:** `KIN` production rate (units of R per h), `KOUT` loss rate constant
    (1/h), `IMAX` maximal fractional inhibition (0 < IMAX <= 1), `IC50` (mg/L).
    **States:** `response` $R$.

    References: Dayneka NL, Garg V, Jusko WJ (1993). *J Pharmacokinet Biopharm* 21:457-478.
    """

    param_names: ClassVar[tuple[str, ...]] = ("KIN", "KOUT", "IMAX", "IC50")
    positive_params: ClassVar[tuple[str, ...]] = ("KIN", "KOUT", "IC50")

    def vector_field(self, t, c, y, params):
        kin, kout = get(params, "KIN"), get(params, "KOUT")
        return kin * (1.0 - _inhibition(params, c)) - kout * y


class IndirectResponseII(AbstractIndirectResponse):
    r"""Indirect response model II: inhibition of the loss of the response.

    $$\frac{dR}{dt} = k_{in} - k_{out}\left(1 - \frac{I_{max} C}{IC_{50} + C}\right) R,
      \qquad R(0) = k_{in}/k_{out}, \qquad E = R$$

    **Parameters:** `KIN` (units of R per h), `KOUT` (1/h), `IMAX` (0 < IMAX <= 1),
    `IC50` (mg/L). **States:** `response` $R$.

    References: Dayneka NL, Garg V, Jusko WJ (1993). *J Pharmacokinet Biopharm* 21:457-478.
    """

    param_names: ClassVar[tuple[str, ...]] = ("KIN", "KOUT", "IMAX", "IC50")
    positive_params: ClassVar[tuple[str, ...]] = ("KIN", "KOUT", "IC50")

    def vector_field(self, t, c, y, params):
        kin, kout = get(params, "KIN"), get(params, "KOUT")
        return kin - kout * (1.0 - _inhibition(params, c)) * y


class IndirectResponseIII(AbstractIndirectResponse):
    r"""Indirect response model III: stimulation of the production of the response.

    $$\frac{dR}{dt} = k_{in}\left(1 + \frac{E_{max} C}{EC_{50} + C}\right) - k_{out} R,
      \qquad R(0) = k_{in}/k_{out}, \qquad E = R$$

    **Parameters:** `KIN` (units of R per h), `KOUT` (1/h), `EMAX` maximal fractional
    stimulation (> 0), `EC50` (mg/L). **States:** `response` $R$.

    References: Dayneka NL, Garg V, Jusko WJ (1993). *J Pharmacokinet Biopharm* 21:457-478.
    """

    param_names: ClassVar[tuple[str, ...]] = ("KIN", "KOUT", "EMAX", "EC50")
    positive_params: ClassVar[tuple[str, ...]] = ("KIN", "KOUT", "EC50")

    def vector_field(self, t, c, y, params):
        kin, kout = get(params, "KIN"), get(params, "KOUT")
        return kin * (1.0 + _stimulation(params, c)) - kout * y


class IndirectResponseIV(AbstractIndirectResponse):
    r"""Indirect response model IV: stimulation of the loss of the response.

    $$\frac{dR}{dt} = k_{in} - k_{out}\left(1 + \frac{E_{max} C}{EC_{50} + C}\right) R,
      \qquad R(0) = k_{in}/k_{out}, \qquad E = R$$

    **Parameters:** `KIN` (units of R per h), `KOUT` (1/h), `EMAX` (> 0), `EC50` (mg/L).
    **States:** `response` $R$.

    References: Dayneka NL, Garg V, Jusko WJ (1993). *J Pharmacokinet Biopharm* 21:457-478.
    """

    param_names: ClassVar[tuple[str, ...]] = ("KIN", "KOUT", "EMAX", "EC50")
    positive_params: ClassVar[tuple[str, ...]] = ("KIN", "KOUT", "EC50")

    def vector_field(self, t, c, y, params):
        kin, kout = get(params, "KIN"), get(params, "KOUT")
        return kin - kout * (1.0 + _stimulation(params, c)) * y


class PKPD(AbstractModel):
    r"""A PK model and a PD model driven by its concentration, as one model.

    $$\frac{d}{dt}\begin{pmatrix} x \\ y \end{pmatrix} =
      \begin{pmatrix} f_{PK}(t, x) + r(t) \\ g_{PD}(t, C(x), y) \end{pmatrix},
      \qquad C = \text{pk.output}(x)_1, \qquad E = \text{pd.effect}(C, y)$$

    **Fields:** `pk`, any PK model (its first output, the concentration in mg/L, drives the
    PD model); `pd`, a PD model (`Emax`, `SigmoidEmax`, `EffectCompartment`,
    `IndirectResponseI` ... `IV`).

    **Parameters:** those of `pk` followed by those of `pd`, in one `params` dict; the two
    must not share a name. NONMEM dosing parameters (`F<n>`, `ALAG<n>`, ...) refer to the
    PK compartments as before.

    **Compartments:** the PK compartments with their numbering (doses go there), then the
    PD states. **Outputs:** `C` (mg/L) and `E`, in that order.

    **Integration:** with a direct effect the state is the PK state and is propagated by the
    PK model itself (closed form for linear PK). With a linear PK model and a linear link
    (`EffectCompartment`) the joint system is linear and propagated exactly by the matrix
    exponential (`is_linear` is true; the PK output must then be linear in the state, as
    `C = A/V` is). Otherwise the joint system is integrated with diffrax.

    References: Holford NHG, Sheiner LB (1981). *Clin Pharmacokinet* 6:429-453.
    """

    pk: AbstractModel
    pd: AbstractPDModel

    output_names: ClassVar[tuple[str, ...]] = ("C", "E")

    def __check_init__(self):
        if not isinstance(self.pk, AbstractModel):
            raise TypeError(f"PKPD: expected pk to be a pkpd model, got {self.pk!r}.")
        if not isinstance(self.pd, AbstractPDModel):
            raise TypeError(
                f"PKPD: expected pd to be a PD model (e.g. pkpd.Emax()), got {self.pd!r}."
            )
        shared = sorted(set(self.pk.param_names) & set(self.pd.param_names))
        if shared:
            raise ValueError(
                f"PKPD: expected the PK and PD models to have distinct parameter names, got "
                f"{shared} in both {type(self.pk).__name__} and {type(self.pd).__name__}."
            )
        shared = sorted(set(self.pk.state_names) & set(self.pd.state_names))
        if shared:
            raise ValueError(
                f"PKPD: expected the PK and PD models to have distinct state names, got "
                f"{shared} in both."
            )

    @property
    def state_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return (*self.pk.state_names, *self.pd.state_names)

    @property
    def param_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return (*self.pk.param_names, *self.pd.param_names)

    @property
    def positive_params(self) -> tuple[str, ...]:  # type: ignore[override]
        return (*self.pk.positive_params, *self.pd.positive_params)

    @property
    def autonomous(self) -> bool:  # type: ignore[override]
        return self.pk.autonomous and self.pd.autonomous

    @property
    def is_linear(self) -> bool:  # type: ignore[override]
        linear_pd = isinstance(self.pd, AbstractDirectEffect | AbstractLinearPDModel)
        return self.pk.is_linear and linear_pd

    def _concentration(self, params: Params, x_pk: Array) -> Array:
        return self.pk.output(params, x_pk)[..., 0]

    def initial_state(self, params: Params) -> State:
        return jnp.concatenate([self.pk.initial_state(params), self.pd.initial_state(params)])

    def vector_field(self, t: TimeLike, x: State, params: Params) -> State:
        n = self.pk.n_states
        if self.pd.n_states == 0:
            return self.pk.vector_field(t, x, params)
        x_pk, y = x[:n], x[n:]
        c = self._concentration(params, x_pk)
        dy = self.pd.vector_field(t, c, y, params)
        return jnp.concatenate([self.pk.vector_field(t, x_pk, params), dy])

    def output(self, params: Params, x: State) -> Float[Array, " 2"]:
        n = self.pk.n_states
        c = self._concentration(params, x[..., :n])
        return jnp.stack([c, self.pd.effect(params, c, x[..., n:])], axis=-1)

    def matrix(self, params: Params) -> Float[Array, "states states"]:
        """The rate-constant matrix of the joint system (only when `is_linear`)."""
        if not self.is_linear:
            raise TypeError(
                f"PKPD.matrix: expected a linear PK model and a direct or linear PD model, got "
                f"{type(self.pk).__name__} and {type(self.pd).__name__}."
            )
        k = self.pk.matrix(params)  # type: ignore[attr-defined]
        if self.pd.n_states == 0:
            return k
        assert isinstance(self.pd, AbstractLinearPDModel)
        n, m = self.pk.n_states, self.pd.n_states
        # C = c_row @ x: the (linear) PK output as a row vector.
        c_row = jax.jacfwd(lambda x: self._concentration(params, x))(jnp.zeros(n, k.dtype))
        a, b = self.pd.linear_parts(params)
        top = jnp.concatenate([k, jnp.zeros((n, m), k.dtype)], axis=1)
        bottom = jnp.concatenate([jnp.outer(b, c_row), a], axis=1)
        return jnp.concatenate([top, bottom], axis=0)

    def propagate(
        self,
        params: Params,
        x: State,
        rate: State,
        t0: TimeLike,
        t1: TimeLike,
        solver: ODESolver,
    ) -> State:
        if self.pd.n_states == 0:
            return self.pk.propagate(params, x, rate, t0, t1, solver)
        if self.is_linear:
            return _LinearView(self).propagate(params, x, rate, t0, t1, solver)
        if isinstance(solver, FixedStep) and self.pk.is_linear:
            return self._split_steps(params, x, rate, t0, t1, solver)
        return AsODE(self).propagate(params, x, rate, t0, t1, solver)

    def _split_steps(self, params, x, rate, t0, t1, solver: FixedStep) -> State:
        """Linear PK exactly, PD by RK4 driven by the exact concentration (`FixedStep`)."""
        n = self.pk.n_states
        n_steps, h = solver.n_steps(t0, t1)
        # The half-step transition Phi = e^{K h/2} and the input's increment Gamma @ rate,
        # Gamma = int_0^{h/2} e^{Ks} ds, once per window: in closed form for the mammillary
        # models (`_spectral_half_step`), else by the matrix exponential of [[K, I], [0, 0]].
        spectrum = _SPECTRA.get(type(self.pk))
        if spectrum is not None:
            lams, projs, ka = spectrum(params)
            phi, inc = _spectral_half_step(lams, projs, ka, rate[:n], h / 2)
        else:
            k = self.pk.matrix(params)  # type: ignore[attr-defined]
            eye = jnp.eye(n, dtype=k.dtype)
            aug = jnp.zeros((2 * n, 2 * n), dtype=k.dtype)
            aug = aug.at[:n, :n].set(k * (h / 2)).at[:n, n:].set(eye * (h / 2))
            e = jax.scipy.linalg.expm(aug)
            phi, inc = e[:n, :n], e[:n, n:] @ rate[:n]
        rate_pd = rate[n:]

        def field(t, c, y):
            return self.pd.vector_field(t, c, y, params) + rate_pd

        def body(i, carry):
            xa, y, ca = carry
            t = t0 + i.astype(h.dtype) * h
            xm = phi @ xa + inc
            xb = phi @ xm + inc
            cm = self._concentration(params, xm)
            cb = self._concentration(params, xb)
            k1 = field(t, ca, y)
            k2 = field(t + h / 2, cm, y + h / 2 * k1)
            k3 = field(t + h / 2, cm, y + h / 2 * k2)
            k4 = field(t + h, cb, y + h * k3)
            return xb, y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), cb

        x_pk, y = x[:n], x[n:]
        init = (x_pk, y, self._concentration(params, x_pk))
        x_pk, y, _ = jax.lax.fori_loop(0, n_steps, body, init)
        return jnp.concatenate([x_pk, y])

    def propagate_saving(
        self,
        params: Params,
        x: State,
        rate: State,
        t0: TimeLike,
        t1: TimeLike,
        ts: Float[Array, " saves"],
        solver: ODESolver,
    ) -> tuple[Float[Array, "saves states"], State]:
        """As `propagate`, also returning the states at `ts` (used when not `is_linear`)."""
        if isinstance(solver, FixedStep):
            return saving_by_propagation(
                lambda y, a, b: self.propagate(params, y, rate, a, b, solver), x, t0, t1, ts
            )
        if self.pd.n_states == 0:
            return self.pk.propagate_saving(  # type: ignore[attr-defined]
                params, x, rate, t0, t1, ts, solver
            )
        return AsODE(self).propagate_saving(params, x, rate, t0, t1, ts, solver)


def _spectral_half_step(lams, projs, ka, rate, tau) -> tuple[Array, Array]:
    r"""`(Phi, Gamma @ rate)` over `tau` of a mammillary model, exactly, from the spectral
    decomposition $K = \sum_i \lambda_i P_i$ of its intravenous part (distinct eigenvalues,
    as `_two_cmt_spectrum` gives) and, when `ka` is not `None`, a first-order depot (state 0,
    rate constant `ka`) feeding the intravenous part's first state:

    - intravenous part: $e^{K\tau} = I + \sum_i (e^{\lambda_i \tau} - 1) P_i$ and
      $\Gamma = \tau (I + \sum_i (\varphi_1(-\lambda_i \tau) - 1) P_i)$, as
      `spectral_transition` writes them;
    - depot: $d(\tau) = e^{-k_a \tau} d_0 + \tau \varphi_1(k_a \tau) r_d$; what it feeds,
      $k_a \sum_i g_i P_i e_1 d_0 + \sum_i (\Gamma_i - g_i) P_i e_1 r_d$ with
      $g_i = \int_0^\tau e^{\lambda_i (\tau - s)} e^{-k_a s} ds
      = \tau e^{-m \tau} \varphi_1((M - m) \tau)$ ($m$, $M$ the smaller and larger of
      $k_a$ and $-\lambda_i$): exact also when $k_a = -\lambda_i$ (the coincidence for
      which the depot models keep the matrix exponential elsewhere), and no overflow.

    The step of `PKPD` with `FixedStep`: the matrix exponential of the `2n`-square augmented
    system cost, per window and draw, about as much as all the window's RK4 steps.

    References: Gibaldi M, Perrier D (1982). *Pharmacokinetics*, 2nd ed., ch. 2-3 (the
    Bateman function, the depot's input through the disposition's exponentials).
    """
    z = -lams * tau  # > 0
    em1 = jnp.expm1(-z)  # e^{lambda tau} - 1
    d1 = -z * phi2(z)  # phi1(z) - 1
    m = projs.shape[-1]
    eye = jnp.eye(m, dtype=projs.dtype)
    if ka is None:
        phi = eye + jnp.einsum("i,ijk->jk", em1, projs)
        return phi, tau * (rate + d1 @ (projs @ rate))
    r_d, r_iv = rate[0], rate[1:]
    phi_iv = eye + jnp.einsum("i,ijk->jk", em1, projs)
    k = -lams
    lo, hi = jnp.minimum(k, ka), jnp.maximum(k, ka)
    g = tau * jnp.exp(-lo * tau) * phi1((hi - lo) * tau)
    gamma = tau * phi1(z)  # int_0^tau e^{lambda_i s} ds
    first = projs[:, :, 0]  # P_i e_1, (modes, states)
    e_ka = jnp.exp(-ka * tau)
    fed = ka * (g @ first)  # Phi's depot column below the depot
    inc_iv = tau * (r_iv + d1 @ (projs @ r_iv)) + r_d * ((gamma - g) @ first)
    top = jnp.concatenate([jnp.reshape(e_ka, (1,)), jnp.zeros(m, projs.dtype)])
    bottom = jnp.concatenate([fed[:, None], phi_iv], axis=1)
    phi = jnp.concatenate([top[None, :], bottom], axis=0)
    inc = jnp.concatenate([jnp.reshape(r_d * tau * phi1(ka * tau, e_ka), (1,)), inc_iv])
    return phi, inc


def _one_cmt(params, ka=None):
    k = get(params, "CL") / get(params, "V")
    return jnp.reshape(-k, (1,)), jnp.ones((1, 1, 1), dtype=k.dtype), ka


def _two_cmt(params, ka=None):
    return (*_two_cmt_spectrum(*(get(params, n) for n in ("CL", "V1", "Q", "V2"))), ka)


def _three_cmt(params, ka=None):
    names = ("CL", "V1", "Q2", "V2", "Q3", "V3")
    return (*_three_cmt_spectrum(*(get(params, n) for n in names)), ka)


#: PK model -> `(eigenvalues, projectors, KA or None)` of `_spectral_half_step`.
_SPECTRA = {
    OneCompartment: _one_cmt,
    TwoCompartment: _two_cmt,
    ThreeCompartment: _three_cmt,
    OneCompartmentOral: lambda p: _one_cmt(p, get(p, "KA")),
    TwoCompartmentOral: lambda p: _two_cmt(p, get(p, "KA")),
    ThreeCompartmentOral: lambda p: _three_cmt(p, get(p, "KA")),
}


class _LinearView(AbstractLinearModel):
    """A linear `PKPD` seen as an `AbstractLinearModel` (matrix-exponential propagation)."""

    model: PKPD

    @property
    def state_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.model.state_names

    @property
    def param_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.model.param_names

    @property
    def positive_params(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.model.positive_params

    @property
    def autonomous(self) -> bool:  # type: ignore[override]
        return self.model.autonomous

    @property
    def output_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.model.output_names

    def matrix(self, params):
        return self.model.matrix(params)

    def output(self, params, x):
        return self.model.output(params, x)
