"""The pieces a NONMEM control stream is translated into (`calibration.read_nonmem`).

- `NonmemLinearPK`: ADVAN1-4, 11, 12 (any TRANS) as the `pkpd` linear model of the same
  structure (`OneCompartment` ... `ThreeCompartmentOral`, their closed forms), its rate
  constants computed from the `$PK` parameters, the output `F = A(n)/S(n)` (or the `$ERROR`
  prediction) computed from the amounts.
- `NonmemODE`: a `$DES` model (ADVAN6/8/9/13) as a `pkpd.AbstractODEModel`.
- `NonmemResidualError`: NONMEM's residual error as a `calibration` error model, when its
  variance depends on the prediction and its own parameters only (`SIGMA`s, `THETA`s):
  the variance is NONMEM's, `V = sum_kl (dY/dEPS_k)(dY/dEPS_l) SIGMA_kl` at `EPS = 0`.
- `NonmemPopulationModel`: a `PopulationModel` for what the plain one cannot say: `$PK`
  random effects that are not `P = TV * EXP(ETA)` on one parameter, `$OMEGA BLOCK`s,
  `FIX`ed `$OMEGA`s and `$SIGMA`s, data items of each record in `$ERROR` or `$PRED`, and a
  residual error that depends on ETAs or data items (then fitted with `NonmemFOCEI()` or
  `NonmemLaplace()`).

References: Beal SL, Sheiner LB, Boeckmann AJ, Bauer RJ (eds). NONMEM 7.5 Users Guides. ICON
plc, 1989-2020 (Part V: the PREDPP library, ADVAN and TRANS; Part VII: FOCE with interaction).
Almquist J, Leander J, Jirstrand M. Using sensitivity equations for computing gradients of the
FOCE and FOCEI approximations to the population likelihood. J Pharmacokinet Pharmacodyn
2015;42:191-209 (the first-order curvature with the variance's dependence on ETA).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.stats as jss

import pkpd

from ._estimators import FOCEI, Laplace, eta_logprior, value_and_jacobian
from ._model import FrozenDict, PopulationModel, corr_cholesky
from ._nonmem_translate import Expr

# ----------------------------------------------------------------------------- structural


def _amounts(x) -> dict[str, Any]:
    return {f"A({i + 1})": x[..., i] for i in range(x.shape[-1])}


def _column(value, x) -> Any:
    return jnp.expand_dims(jnp.broadcast_to(value, x.shape[:-1]), -1)


class NonmemLinearPK(pkpd.AbstractLinearModel):
    """A NONMEM ADVAN1-4, 11 or 12 model on the `pkpd` linear model of its structure.

    **Fields:** `inner`, the `pkpd` model (its closed form propagates the amounts); `advan`,
    e.g. `"ADVAN4 TRANS4"`; `param_names`, the `$PK` variables it reads; `inner_params`,
    `(name, Expr)` pairs giving each parameter of `inner` from them (rate constants, with
    the central volume set to 1: the amounts do not depend on it); `out`, the observed
    output from the amounts `A(n)` and the parameters (`F = A(n)/S(n)`, or the prediction
    of `$ERROR`); compartments numbered as NONMEM's `CMT`.
    """

    inner: pkpd.AbstractLinearModel
    advan: str = eqx.field(static=True)
    param_names: tuple[str, ...] = eqx.field(static=True)  # type: ignore[assignment]
    state_names: tuple[str, ...] = eqx.field(static=True)  # type: ignore[assignment]
    positive_params: tuple[str, ...] = eqx.field(static=True)  # type: ignore[assignment]
    inner_params: tuple[tuple[str, Expr], ...] = eqx.field(static=True)
    out: Expr = eqx.field(static=True)
    output_names: ClassVar[tuple[str, ...]] = ("F",)

    def _inner(self, params):
        env = {k: params[k] for k in self.param_names}
        return {name: e.evaluate(env) for name, e in self.inner_params}

    def matrix(self, params):
        return self.inner.matrix(self._inner(params))

    def propagate(self, params, x, rate, t0, t1, solver):
        return self.inner.propagate(self._inner(params), x, rate, t0, t1, solver)

    def exposure_transition(self, params, rate, row, offset, dt):
        return self.inner.exposure_transition(self._inner(params), rate, row, offset, dt)

    def output(self, params, x):
        env = {k: params[k] for k in self.param_names} | _amounts(x)
        return _column(self.out.evaluate(env), x)


class NonmemODE(pkpd.AbstractODEModel):
    """A NONMEM `$DES` model: `DADT(n)` from the amounts `A(n)`, the time `T` and the `$PK`
    variables `param_names`; the output as in `NonmemLinearPK`. `solver` (an
    `pkpd.ODESolver`, or None for the engine's) is used for every solve."""

    param_names: tuple[str, ...] = eqx.field(static=True)  # type: ignore[assignment]
    state_names: tuple[str, ...] = eqx.field(static=True)  # type: ignore[assignment]
    positive_params: tuple[str, ...] = eqx.field(static=True)  # type: ignore[assignment]
    autonomous: bool = eqx.field(static=True)  # type: ignore[assignment]
    field: tuple[Expr, ...] = eqx.field(static=True)
    out: Expr = eqx.field(static=True)
    solver: Any = None
    output_names: ClassVar[tuple[str, ...]] = ("F",)

    def vector_field(self, t, x, params):
        env = {k: params[k] for k in self.param_names} | _amounts(x) | {"T": t}
        return jnp.stack([jnp.broadcast_to(e.evaluate(env), jnp.shape(t)) for e in self.field])

    def output(self, params, x):
        env = {k: params[k] for k in self.param_names} | _amounts(x)
        return _column(self.out.evaluate(env), x)

    def propagate(self, params, x, rate, t0, t1, solver):
        return super().propagate(params, x, rate, t0, t1, self.solver or solver)

    def propagate_saving(self, params, x, rate, t0, t1, ts, solver):
        return super().propagate_saving(params, x, rate, t0, t1, ts, self.solver or solver)


class NonmemPred(pkpd.AbstractLinearModel):
    """The structural model of a `$PRED` control stream, which has none: one compartment
    that nothing changes and an output of 0. The predictions are `$PRED`'s, computed by
    `NonmemPopulationModel` from each record's data items."""

    param_names: ClassVar[tuple[str, ...]] = ()
    state_names: ClassVar[tuple[str, ...]] = ("none",)
    output_names: ClassVar[tuple[str, ...]] = ("none",)

    def matrix(self, params):
        return jnp.zeros((1, 1))

    def output(self, params, x):
        return jnp.zeros_like(x[..., 0:1])


# ----------------------------------------------------------------------------- residual error


@dataclasses.dataclass(frozen=True)
class NonmemResidualError:
    """NONMEM's residual error when its variance is a function of the prediction `f` and of
    its own parameters: `SD = sqrt(variance(f, parameters))`.

    **Fields:** `values`, the initial values of its parameters by name (`SIGMA`s as
    variances, `THETA`s as they are), all estimated on the log scale; `variance`, the
    translated `sum_kl (dY/dEPS_k)(dY/dEPS_l) SIGMA_kl` (reading `f` as `__f__`); `form`,
    what it amounts to (`"proportional"`, `"additive"`, `"combined"` or `"custom"`).
    """

    values: FrozenDict
    variance: Expr
    form: str = "custom"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.values)

    def __getattr__(self, name: str) -> float:
        # PopulationModel.initial reads each parameter as an attribute.
        values = self.__dict__.get("values")
        if values is not None and name in values:
            return values[name]
        raise AttributeError(name)

    def sd(self, f, s):
        env = {f"ERR:{k}": s[k] for k in self.names} | {"__f__": f}
        return jnp.sqrt(jnp.broadcast_to(self.variance.evaluate(env), jnp.shape(f)))

    def observe(self, f, s, eps):
        """`f` as measured, for standard normal draws `eps` (simulation of DV)."""
        return f + self.sd(f, s) * eps


@dataclasses.dataclass(frozen=True)
class NonmemGeneralError:
    """A residual error whose variance depends on ETAs or on data items of each record (not
    on the prediction alone): it cannot be written as `SD(f)`. `NonmemPopulationModel`
    computes it (`observation_moments`); fit with `NonmemFOCEI()` or `NonmemLaplace()`.
    `values`: the initial values of its free `SIGMA`s (variances)."""

    values: FrozenDict
    form: str = "general"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.values)

    def __getattr__(self, name: str) -> float:
        values = self.__dict__.get("values")
        if values is not None and name in values:
            return values[name]
        raise AttributeError(name)

    def sd(self, f, s):
        raise TypeError(
            "this NONMEM model's residual error depends on ETAs or on data items of each record, "
            "not on the prediction alone, so it has no SD(f); fit it with NonmemImport.fit() "
            "(calibration.read_nonmem(path).fit()), whose estimator NonmemFOCEI computes it."
        )

    def observe(self, f, s, eps):
        return self.sd(f, s)


# ----------------------------------------------------------------------------- population


@dataclasses.dataclass(frozen=True)
class Program:
    """`$PK` (or `$PRED`, `$ERROR`) statements in order: `(name, Expr)` pairs evaluated one
    after the other, each seeing the values of the earlier ones."""

    statements: tuple[tuple[str, Expr], ...]

    def run(self, env: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(env)
        for name, e in self.statements:
            out[name] = e.evaluate(out)
        return out


@dataclasses.dataclass(frozen=True)
class NonmemSpec:
    """What `NonmemPopulationModel` needs beyond `PopulationModel`'s fields (hashable).

    - `thetas`: the free THETAs (name -> initial); `log_thetas`: those estimated on the log
      scale (the others on the natural scale);
    - `etas`: names of the ETAs (NONMEM's order, those of a `0 FIX` variance left out);
      `blocks`: `((eta indices), (initial covariance rows, lower triangle), fixed)`;
    - `sigmas`: the free SIGMA variances by name (with `error` general) and `sigma_fixed`;
    - `pk`: the `$PK` program (reads `THETA:`-, `ETA:`-prefixed and data names), `inputs`
      the structural parameters it gives;
    - `mean`, `variance`: the prediction and NONMEM's residual variance of each observation
      (reading the structural parameters, the amounts `A(n)`, THETAs, ETAs, SIGMAs and data
      items); `record_items`: data items read per record (per-observation arrays);
    - `general_error`: the variance depends on more than the prediction.
    """

    thetas: FrozenDict
    log_thetas: tuple[str, ...]
    etas: tuple[str, ...]
    blocks: tuple[tuple[tuple[int, ...], tuple[float, ...], bool], ...]
    sigmas: FrozenDict
    pk: Program
    inputs: tuple[str, ...]
    mean: Expr
    variance: Expr
    record_items: tuple[str, ...]
    general_error: bool
    has_states: bool
    predict_ok: bool = True


def _lower(values: tuple[float, ...], d: int):
    m = [[0.0] * d for _ in range(d)]
    k = 0
    for i in range(d):
        for j in range(i + 1):
            m[i][j] = m[j][i] = values[k]
            k += 1
    return m


def block_parameters(cov) -> tuple[list[float], list[float]]:
    """`(log_sd, partial correlations as atanh)` of a covariance matrix, the inverse of
    `NonmemPopulationModel.omega_cholesky` (canonical partial correlations, Lewandowski,
    Kurowicka & Joe 2009)."""
    import numpy as np

    c = np.asarray(cov, dtype=float)
    sd = np.sqrt(np.diag(c))
    r = c / np.outer(sd, sd)
    lchol = np.linalg.cholesky(r)
    d = c.shape[0]
    z = []
    for i in range(1, d):
        used = 0.0
        for j in range(i):
            v = lchol[i, j]
            zz = v / math.sqrt(max(1.0 - used, 1e-300))
            z.append(math.atanh(max(min(zz, 1 - 1e-15), -1 + 1e-15)))
            used += v * v
    return list(np.log(sd)), z


class NonmemPopulationModel(PopulationModel):
    """A `PopulationModel` translated from a NONMEM control stream that the plain one
    cannot express (see the module's docstring): the individual parameters are NONMEM's
    `$PK` with its ETAs wherever they appear, Omega is block diagonal as `$OMEGA`'s blocks
    (a `FIX`ed block keeps its values), and each observation's prediction and residual
    variance are NONMEM's (`observation_moments`).

    The estimated values (`initial()`): `theta` the free THETAs (log scale for those with a
    lower bound >= 0, natural otherwise); `omega` `log_sd` (one per ETA, fixed ones
    ignored) and `corr` (partial correlations within blocks); `sigma` the free SIGMA
    variances and the THETAs of the residual error (log scale). `omega` (the field) is
    empty: the ETAs are `eta_names`, their covariance `natural(phi)["omega"]`.

    Works with `fit_population`, `individual_map`, `calibration.objective_values` and,
    when the residual error depends on the prediction alone, `residuals` and
    `simulate_dataset`; a residual error that depends on ETAs or data items needs
    `estimator=NonmemFOCEI()` (or `NonmemLaplace()`).
    """

    spec: NonmemSpec = eqx.field(static=True, default=None)  # type: ignore[assignment]

    # --- random effects -------------------------------------------------------------

    @property
    def eta_names(self) -> tuple[str, ...]:
        return self.spec.etas

    @property
    def n_eta(self) -> int:
        return len(self.spec.etas)

    def initial(self) -> dict[str, Any]:
        s = self.spec
        theta = {
            k: jnp.asarray(math.log(v) if k in s.log_thetas else float(v))
            for k, v in s.thetas.items()
        }
        log_sd = [0.0] * self.n_eta
        corr: list[float] = []
        for idx, values, fixed in s.blocks:
            ls, z = block_parameters(_lower(values, len(idx)))
            for k, i in enumerate(idx):
                log_sd[i] = ls[k]
            if not fixed:
                corr += z
        omega = {"log_sd": jnp.asarray(log_sd)}
        if corr:
            omega["corr"] = jnp.asarray(corr)
        sigma = {k: jnp.log(jnp.asarray(float(getattr(self.error, k)))) for k in self.error.names}
        return {"theta": theta, "omega": omega, "sigma": sigma}

    def natural(self, phi) -> dict[str, Any]:
        s = self.spec
        theta = {k: (jnp.exp(v) if k in s.log_thetas else v) for k, v in phi["theta"].items()}
        chol = self.omega_cholesky(phi)
        sigma = {k: jnp.exp(v) for k, v in phi["sigma"].items()}
        return {"theta": theta, "omega": chol @ chol.T, "sigma": sigma}

    def omega_cholesky(self, phi):
        d = self.n_eta
        out = jnp.zeros((d, d))
        log_sd = phi["omega"]["log_sd"]
        corr = phi["omega"].get("corr")
        k = 0
        for idx, values, fixed in self.spec.blocks:
            n = len(idx)
            ix = jnp.asarray(idx)
            if fixed:
                import numpy as np

                lb = jnp.asarray(np.linalg.cholesky(np.asarray(_lower(values, n))))
            else:
                sd = jnp.exp(log_sd[ix])
                m = n * (n - 1) // 2
                if m:
                    assert corr is not None
                    lc = corr_cholesky(corr[k : k + m], n)
                    k += m
                else:
                    lc = jnp.ones((1, 1))
                lb = sd[:, None] * lc
            out = out.at[ix[:, None], ix[None, :]].set(lb)
        return out

    def random_cholesky(self, phi, n_occasions: int):
        return self.omega_cholesky(phi)

    # --- individual parameters and predictions -------------------------------------

    def _env(self, theta, covariates, eta) -> dict[str, Any]:
        env = {f"THETA:{k}": v for k, v in theta.items()}
        env |= {f"ETA:{n}": eta[i] for i, n in enumerate(self.spec.etas)}
        env |= {k: v for k, v in covariates.items() if k not in self.spec.record_items}
        return env

    def individual_params(self, theta, covariates, eta, kappa=None) -> dict[str, Any]:
        out = self.spec.pk.run(self._env(theta, covariates, eta))
        return {k: out[k] for k in self.spec.inputs}

    def subject_in_domain(self, theta, covariates, b, n_occasions: int, obs=None):
        from ._model import in_domain

        return in_domain(self.model, self.individual_params(theta, covariates, b))

    def observation_moments(self, nat, covariates, regimen, obs, b, *, variance=True):
        """Prediction and NONMEM's residual variance of each observation of one subject (at
        `obs["time"]`; data items of each record are per-observation arrays in
        `covariates`). `variance=False` gives the prediction only (and None)."""
        t = obs["time"]
        s = self.spec
        env = self._env(nat["theta"], covariates, b)
        params = self.individual_params(nat["theta"], covariates, b)
        env |= params
        env |= {k: covariates[k] for k in s.record_items}
        env["TIME"] = t
        if s.has_states:
            x = pkpd.simulate_states(self.model, params, regimen, t, checks=False)
            env |= _amounts(x)
        n = jnp.shape(t)[0]
        mean = jnp.broadcast_to(s.mean.evaluate(env), (n,))
        if not variance:
            return mean, None
        env |= {f"ERR:{k}": v for k, v in nat["sigma"].items()} | {"__f__": mean}
        var = jnp.broadcast_to(s.variance.evaluate(env), (n,))
        return mean, var

    def predict_random(self, theta, covariates, regimen, obs, b):
        return self.observation_moments({"theta": theta}, covariates, regimen, obs, b,
                                        variance=False)[0]  # fmt: skip

    def predict(self, params, regimen, times):
        if not self.spec.predict_ok:
            raise NotImplementedError(
                "this NONMEM model's predictions read data items of each record ($PRED, or "
                "$ERROR with record-level items): use predict_random or "
                "NonmemImport.predictions"
            )
        return super().predict(params, regimen, times)

    def subject_loglik(self, nat, covariates, regimen, obs, eta):
        mean, var = self.observation_moments(nat, covariates, regimen, obs, eta)
        ll = _normal_loglik(mean, var, obs)
        ok = self.subject_in_domain(nat["theta"], covariates, eta, 1)
        return jnp.where(ok, jnp.sum(ll), -jnp.inf)


def _normal_loglik(mean, var, obs):
    ll = jss.norm.logpdf(obs["dv"], mean, jnp.sqrt(var))
    return jnp.where(obs["observed"], ll, 0.0)


# ----------------------------------------------------------------------------- estimators


def _general_terms(pm: NonmemPopulationModel, nat, chol, cov, reg, obs):
    def moments(eta):
        mean, var = pm.observation_moments(nat, cov, reg, obs, eta)
        assert var is not None
        return jnp.concatenate([mean, var])

    def outside(eta, value):
        ok = pm.subject_in_domain(nat["theta"], cov, eta, 1)
        return jnp.where(ok, value, jnp.inf)

    def nll(mv):
        n = mv.shape[0] // 2
        return -jnp.sum(_normal_loglik(mv[:n], mv[n:], obs))

    def f(eta):
        return outside(eta, nll(moments(eta)) - eta_logprior(chol, eta))

    return moments, nll, f, outside


def _is_general(pm) -> bool:
    return isinstance(pm, NonmemPopulationModel) and pm.spec.general_error


class NonmemFOCEI(FOCEI):
    """`calibration.FOCEI()` for every NONMEM model: where the residual variance `V`
    depends on ETA other than through the prediction `f` (an ETA on the residual error,
    `$PRED` with data items in `Y`), the first-order curvature is `J_f' V^-1 J_f +
    1/2 J_V' V^-2 J_V + Omega^-1` (Almquist et al. 2015), as NONMEM's FOCE-I; for other
    models it is `FOCEI()` itself."""

    def local_model(self, pm, nat, chol, cov, reg, obs):
        if not _is_general(pm):
            return super().local_model(pm, nat, chol, cov, reg, obs)
        moments, nll, f, outside = _general_terms(pm, nat, chol, cov, reg, obs)
        d = chol.shape[0]
        chol_inv = jax.scipy.linalg.solve_triangular(chol, jnp.eye(d), lower=True)
        omega_inv = chol_inv.T @ chol_inv
        observed = obs["observed"]

        def fgh(eta):
            mv, jac = value_and_jacobian(moments, eta)
            n = mv.shape[0] // 2
            mean, var = mv[:n], mv[n:]
            jf, jv = jac[:n], jac[n:]
            r = jnp.where(observed, obs["dv"] - mean, 0.0)
            w = jnp.where(observed, 1.0 / var, 0.0)
            g_mean = -r * w
            g_var = jnp.where(observed, 0.5 * (w - r**2 * w**2), 0.0)
            fval = outside(eta, nll(mv) - eta_logprior(chol, eta))
            grad = jf.T @ g_mean + jv.T @ g_var + omega_inv @ eta
            h = (jf * w[:, None]).T @ jf + (jv * (0.5 * w**2)[:, None]).T @ jv + omega_inv
            return fval, grad, h

        return f, fgh


class NonmemLaplace(Laplace):
    """`calibration.Laplace()` for every NONMEM model (the exact Hessian of the negative
    log joint, with NONMEM's residual variance of each observation)."""

    def local_model(self, pm, nat, chol, cov, reg, obs):
        if not _is_general(pm):
            return super().local_model(pm, nat, chol, cov, reg, obs)
        _, _, f, _ = _general_terms(pm, nat, chol, cov, reg, obs)

        def grad_and_aux(eta):
            value, grad = jax.value_and_grad(f)(eta)
            return grad, (value, grad)

        def fgh(eta):
            hess, (value, grad) = jax.jacfwd(grad_and_aux, has_aux=True)(eta)
            return value, grad, hess

        return f, fgh
