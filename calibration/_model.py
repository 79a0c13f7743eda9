"""`PopulationModel`: structural model + typical values + between-subject variability + error."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.stats as jss

import pkpd

Covariates = Mapping[str, Any]
TypicalFn = Callable[[Mapping[str, Any], Covariates], dict[str, Any]]


# ----------------------------------------------------------------------------- error models


@dataclasses.dataclass(frozen=True)
class Additive:
    """`DV = IPRED + eps`, `eps ~ N(0, add_sd^2)` (`add_sd` in the units of DV)."""

    add_sd: float

    names = ("add_sd",)

    def sd(self, f, s):
        return jnp.broadcast_to(s["add_sd"], jnp.shape(f))

    def observe(self, f, s, eps):
        """`f` as measured, for standard normal draws `eps` (simulation of DV)."""
        return f + self.sd(f, s) * eps


@dataclasses.dataclass(frozen=True)
class Proportional:
    """`DV = IPRED * (1 + eps)`, `eps ~ N(0, prop_sd^2)` (`prop_sd` a fraction, 0.1 = 10%)."""

    prop_sd: float

    names = ("prop_sd",)

    def sd(self, f, s):
        return s["prop_sd"] * jnp.abs(f)

    def observe(self, f, s, eps):
        """`f` as measured, for standard normal draws `eps` (simulation of DV)."""
        return f + self.sd(f, s) * eps


@dataclasses.dataclass(frozen=True)
class Combined:
    """`SD = sqrt(add_sd^2 + (prop_sd * IPRED)^2)` (nlmixr2's `combined2`, NONMEM's usual form)."""

    add_sd: float
    prop_sd: float

    names = ("add_sd", "prop_sd")

    def sd(self, f, s):
        return jnp.sqrt(s["add_sd"] ** 2 + (s["prop_sd"] * f) ** 2)

    def observe(self, f, s, eps):
        """`f` as measured, for standard normal draws `eps` (simulation of DV)."""
        return f + self.sd(f, s) * eps


@dataclasses.dataclass(frozen=True)
class Exponential:
    """`log DV = log IPRED + eps`, `eps ~ N(0, exp_sd^2)` (log-transform-both-sides)."""

    exp_sd: float

    names = ("exp_sd",)

    def sd(self, f, s):
        return jnp.broadcast_to(s["exp_sd"], jnp.shape(f))

    def observe(self, f, s, eps):
        """`f` as measured, for standard normal draws `eps` (simulation of DV)."""
        return f * jnp.exp(self.sd(f, s) * eps)


SingleError = Additive | Proportional | Combined | Exponential


@dataclasses.dataclass(frozen=True)
class Observation:
    """One kind of observation of a model that observes several outputs (a joint PK/PD fit,
    parent and metabolite, a drug level and a biomarker): the records whose `DVID` equals
    `dvid` measure the model output `output` with the residual error model `error`.

    This is NONMEM's `IF (DVID.EQ.2) Y = ...` block in `$ERROR` and nlmixr2's
    `pca ~ add(pca.sd)` line of a multiple-endpoint model (Fidler et al. 2019, CPT
    Pharmacometrics Syst Pharmacol 8:621-633).

    **Fields:** `dvid`, the value of the data's DVID column (`Dataset.from_records(dvid=)`,
    `"DVID"` by default, or `"CMT"` for data that code the observation type in CMT);
    `output`, a name of the structural model's `output_names` (`"C"`, `"E"` of
    `pkpd.PKPD`); `error`, `Additive`, `Proportional`, `Combined` or `Exponential` with its
    initial values; `name`, the prefix of its residual parameters (`"pca"` gives
    `pca.add_sd`), by default the output's name.
    """

    dvid: float
    output: str
    error: SingleError
    name: str | None = None

    @property
    def label(self) -> str:
        return self.output if self.name is None else self.name


class ByOutput:
    """The residual error of a model that observes several outputs: one `Observation` per
    kind of record, each with its own error model (and M3 censoring), chosen on every
    observation by the value of its DVID.

    `ByOutput(Observation(1, "C", Proportional(0.1), "cp"), Observation(2, "E",
    Additive(5.0), "pca"))`. Its residual parameters are the parts' prefixed by their
    name (`cp.prop_sd`, `pca.add_sd`), estimated like any other.
    """

    def __init__(self, *parts: Observation):
        if len(parts) == 1 and isinstance(parts[0], list | tuple):
            parts = tuple(parts[0])
        if not parts:
            raise ValueError("ByOutput: expected at least one Observation.")
        for k, part in enumerate(parts):
            if not isinstance(part, Observation):
                raise TypeError(
                    f"ByOutput: part {k} is {type(part).__name__}; expected "
                    "calibration.Observation(dvid, output, error)."
                )
            if not isinstance(part.error, SingleError):
                raise TypeError(
                    f"ByOutput: the error of {part.label!r} is {type(part.error).__name__}; "
                    "expected Additive, Proportional, Combined or Exponential."
                )
            if not math.isfinite(float(part.dvid)):
                raise ValueError(f"ByOutput: the dvid of {part.label!r} is {part.dvid!r}.")
        dvids = [float(p.dvid) for p in parts]
        labels = [p.label for p in parts]
        for what, values in (("dvid", dvids), ("name", labels)):
            dup = sorted({str(v) for v in values if values.count(v) > 1})
            if dup:
                raise ValueError(
                    f"ByOutput: each Observation needs its own {what}, got {dup} twice."
                )
        self.parts: tuple[Observation, ...] = tuple(parts)

    @property
    def dvids(self) -> tuple[float, ...]:
        return tuple(float(p.dvid) for p in self.parts)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"{p.label}.{n}" for p in self.parts for n in p.error.names)

    def __getattr__(self, key: str):
        # The initial value of a prefixed residual parameter (`getattr(error, "pca.add_sd")`,
        # as for the single error models' fields).
        if key.startswith("__") or "parts" not in self.__dict__:
            raise AttributeError(key)
        label, _, name = key.rpartition(".")
        for p in self.parts:
            if p.label == label and name in p.error.names:
                return getattr(p.error, name)
        raise AttributeError(f"ByOutput has no residual parameter {key!r}; it has {self.names}.")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByOutput) and self.parts == other.parts

    def __hash__(self) -> int:
        return hash(self.parts)

    def __repr__(self) -> str:
        return f"ByOutput({', '.join(map(repr, self.parts))})"

    def part_sigma(self, s, k: int) -> dict[str, Any]:
        """The residual parameters of part `k` under their own names (`add_sd`, ...)."""
        part = self.parts[k]
        return {n: s[f"{part.label}.{n}"] for n in part.error.names}

    def index(self, dvid):
        """The part (0, 1, ...) of each observation from its DVID value (traced); a value of
        no part gives 0 (refused on the host before: `check_error_data`)."""
        dvid = jnp.asarray(dvid)
        k = jnp.zeros(dvid.shape, jnp.int32)
        for j, v in enumerate(self.dvids):
            k = jnp.where(dvid == v, j, k)
        return k

    def each(self, which, fn, f, *more):
        """`fn(k, part, f_k, *more_k)` of every part `k` on its own observations, summed: the
        other observations get the harmless value 1 (so that a part's error model never sees
        a prediction it cannot take, such as 0 for a proportional error, and no gradient
        through an unused branch is NaN) and a result of 0."""
        which = _need_which(which)
        total = None
        for k, part in enumerate(self.parts):
            mine = which == k
            args = [jnp.where(mine, x, jnp.ones_like(x)) for x in (f, *more)]
            value = jnp.where(mine, fn(k, part, *args), 0.0)
            total = value if total is None else total + value
        return total

    def sd(self, f, s, which=None):
        return self.each(which, lambda k, p, fk: p.error.sd(fk, self.part_sigma(s, k)), f)

    def observe(self, f, s, eps, which=None):
        """`f` as measured, for standard normal draws `eps` (simulation of DV)."""
        return self.each(
            which, lambda k, p, fk, e: p.error.observe(fk, self.part_sigma(s, k), e), f, eps
        )

    def log_scale(self, which):
        """Whether each observation's error is `Exponential` (log-transformed)."""
        flags = jnp.asarray([isinstance(p.error, Exponential) for p in self.parts])
        return flags[_need_which(which)]


ErrorModel = SingleError | ByOutput


def _need_which(which):
    if which is None:
        raise ValueError(
            "ByOutput: the observations have no DVID (the data's Dataset.from_records(dvid=) "
            "column): a model that observes several outputs needs to know which each "
            "observation measures."
        )
    return which


def log_scale(error: ErrorModel, which=None):
    """Whether the observations' errors are `Exponential` (a Python bool for a single error
    model; a boolean array, one per observation, for `ByOutput`)."""
    if isinstance(error, ByOutput):
        return error.log_scale(which)
    return isinstance(error, Exponential)


def residual_sd(error: ErrorModel, sigma, f, which=None):
    """The residual SD of each prediction `f` (on the log scale for `Exponential`)."""
    if isinstance(error, ByOutput):
        return error.sd(f, sigma, which)
    return error.sd(f, sigma)


def observe(error: ErrorModel, sigma, f, eps, which=None):
    """`f` as measured for standard normal draws `eps` (simulated DV)."""
    if isinstance(error, ByOutput):
        return error.observe(f, sigma, eps, which)
    return error.observe(f, sigma, eps)


def observation_loglik(error: ErrorModel, sigma, f, dv, observed, blq, lloq, which=None):
    """Log-likelihood of each observation (0 for padding); with `ByOutput` each observation
    takes its own part's error model (`which`: the part of each, `ByOutput.index`).

    Censored observations (`blq`) contribute `log P(DV < LLOQ)` (Beal's M3 method, Beal 2001,
    J Pharmacokinet Pharmacodyn 28:481-504); others the normal density of the residual.
    """
    if isinstance(error, ByOutput):

        def part(k, p, fk, dvk, lloqk):
            s_k = error.part_sigma(sigma, k)
            return observation_loglik(p.error, s_k, fk, dvk, observed, blq, lloqk)

        lloq = jnp.where(blq, lloq, 0.0)
        return jnp.where(observed, error.each(which, part, f, dv, lloq), 0.0)
    sd = error.sd(f, sigma)
    # Unused branches get harmless values, so that their gradients stay finite under `where`.
    lloq = jnp.where(blq, lloq, 0.0)
    if isinstance(error, Exponential):
        safe_f = jnp.where(f > 0, f, 1.0)
        mu = jnp.where(f > 0, jnp.log(safe_f), -jnp.inf)
        y = jnp.log(jnp.where(observed & (dv > 0), dv, 1.0))
        lim = jnp.log(jnp.where(blq & (lloq > 0), lloq, 1.0))
        dens = jss.norm.logpdf(y, mu, sd) - y
        cens = jss.norm.logcdf((lim - mu) / sd)
    else:
        dens = jss.norm.logpdf(dv, f, sd)
        cens = jss.norm.logcdf((lloq - f) / sd)
    ll = jnp.where(blq, cens, dens)
    return jnp.where(observed, ll, 0.0)


# ----------------------------------------------------------------------------- the model


class FrozenDict(Mapping[str, float]):
    """A read-only mapping of names to floats that keeps its order and is hashable.

    The initial values of a `PopulationModel` (`theta`, `omega`, `iov`): static under
    `jax.jit`, so they must hash; their order is the order of the etas, which a pytree dict
    would not keep (JAX sorts dict keys). Equal to any mapping with the same items; two
    `FrozenDict`s are equal when their items, in order, are.
    """

    __slots__ = ("_items", "_values")

    def __init__(self, values: Mapping[str, Any] | None = None):
        items = tuple((str(k), float(v)) for k, v in dict(values or {}).items())
        self._items = items
        self._values = dict(items)

    def __getitem__(self, name: str) -> float:
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenDict):
            return self._items == other._items
        if isinstance(other, Mapping):
            return self._values == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return repr(self._values)


class PopulationModel(eqx.Module):
    """A nonlinear mixed-effects model around a `pkpd` structural model.

    Individual parameters are log-normal around covariate-dependent typical values,
    `P_i = TV(theta, covariates_i) * exp(eta_i)`, `eta_i ~ N(0, Omega)`, and observations
    follow `error` around the model output (M3 likelihood for censored values).

    **Fields:**

    - `model`: a `pkpd` model (its first output is observed, or `output`).
    - `theta`: fixed effects by name with their initial values. Positive values are estimated
      on the log scale (so they stay positive); names in `unconstrained` on the natural scale
      (covariate exponents, slopes).
    - `omega`: initial between-subject variances (log scale) by model parameter name; these
      parameters get an eta. `omega_block=True` estimates a full covariance (correlations).
    - `error`: `Additive`, `Proportional`, `Combined` or `Exponential` with initial values;
      or, for a model that observes several outputs (joint PK/PD), `ByOutput` with one
      `Observation` (DVID value, model output, error model) per kind of record.
    - `typical`: `typical(theta, covariates) -> {param: value}` for every model parameter;
      by default each model parameter is the theta of the same name.
    - `output`: index of the observed model output (with a single error model).
    - `unconstrained`: names of thetas estimated on the natural scale.
    - `iov`: initial inter-occasion variances (log scale) by model parameter name. On
      occasion `k` (the data's `OCC`) the parameter is `TV * exp(eta_i + kappa_ik)` with
      `kappa_ik ~ N(0, omega_iov^2)` independent across occasions (Karlsson & Sheiner 1993,
      J Pharmacokinet Biopharm 21:735-750); parameters change at the start of each occasion
      (`pkpd.simulate_piecewise`). A parameter may have BSV, IOV or both.
    - `solver`: how an ODE model is integrated in the estimators (`pkpd.ODESolver`, Tsit5
      by default). Its `throw=False` (the default here) turns a solve that fails at some
      trial point (random effects that make the system too stiff for the step limit) into
      a rejected point instead of an error that stops the fit.

    A `PopulationModel` is an `equinox.Module` (a frozen dataclass and a pytree): its leaves
    are those of the structural model; everything else is static. `theta`, `omega` and `iov`
    are read-only mappings (`FrozenDict`) of floats, in the order given (the order of the
    etas), compared and hashed by value. Jitted code takes the model as an argument
    (`jax.jit` or `equinox.filter_jit`): equal models share one compilation. (The estimated
    population parameters are not fields: they are the `initial()` pytree, `phi`.)
    """

    model: pkpd.AbstractModel
    theta: FrozenDict = eqx.field(static=True, converter=FrozenDict)
    omega: FrozenDict = eqx.field(static=True, converter=FrozenDict)
    error: ErrorModel = eqx.field(static=True)
    typical: TypicalFn | None = eqx.field(default=None, static=True)
    omega_block: bool = eqx.field(default=False, static=True)
    output: int = eqx.field(default=0, static=True)
    unconstrained: tuple[str, ...] = eqx.field(default=(), static=True, converter=tuple)
    iov: FrozenDict = eqx.field(default=FrozenDict(), static=True, converter=FrozenDict)
    solver: pkpd.ODESolver = eqx.field(default_factory=lambda: pkpd.ODESolver(throw=False))

    def __check_init__(self):
        for name, value in self.theta.items():
            if name not in self.unconstrained and not value > 0:
                raise ValueError(
                    f"PopulationModel: theta {name}={value} must be > 0 (estimated on the log "
                    "scale); list it in `unconstrained` to estimate it on the natural scale."
                )
        for name, value in self.omega.items():
            if name not in self.model.param_names:
                raise ValueError(
                    f"PopulationModel: omega for {name!r}, which is not a parameter of "
                    f"{type(self.model).__name__} {list(self.model.param_names)}."
                )
            if not value > 0:
                raise ValueError(f"PopulationModel: omega {name}={value} must be > 0.")
        for name, value in self.iov.items():
            if name not in self.model.param_names:
                raise ValueError(
                    f"PopulationModel: iov for {name!r}, which is not a parameter of "
                    f"{type(self.model).__name__} {list(self.model.param_names)}."
                )
            if not value > 0:
                raise ValueError(f"PopulationModel: iov {name}={value} must be > 0.")
        if isinstance(self.error, ByOutput):
            for part in self.error.parts:
                if part.output not in self.model.output_names:
                    raise ValueError(
                        f"PopulationModel: Observation {part.label!r} measures output "
                        f"{part.output!r}, which {type(self.model).__name__} does not have; "
                        f"its outputs are {list(self.model.output_names)}."
                    )
        elif not (hasattr(self.error, "names") and hasattr(self.error, "sd")):
            raise TypeError(
                f"PopulationModel: error is {type(self.error).__name__}; expected Additive, "
                "Proportional, Combined, Exponential or ByOutput."
            )
        if self.typical is None:
            missing = [p for p in self.model.param_names if p not in self.theta]
            if missing:
                raise ValueError(
                    f"PopulationModel: no theta for {missing}; give one theta per model "
                    "parameter or a `typical(theta, covariates)` function."
                )

    @property
    def eta_names(self) -> tuple[str, ...]:
        return tuple(self.omega)

    @property
    def n_eta(self) -> int:
        return len(self.omega)

    @property
    def iov_names(self) -> tuple[str, ...]:
        return tuple(self.iov)

    def n_random(self, n_occasions: int) -> int:
        """Random effects of one subject: its etas, then one kappa per IOV parameter and
        occasion (occasion-major)."""
        return self.n_eta + n_occasions * len(self.iov)

    def random_cholesky(self, phi, n_occasions: int):
        """Lower Cholesky factor of the covariance of all random effects of one subject:
        Omega, then the IOV variances repeated for each occasion (block diagonal)."""
        chol = self.omega_cholesky(phi)
        if not self.iov:
            return chol
        kap = jnp.tile(jnp.exp(phi["iov"]["log_sd"]), n_occasions)
        return jax.scipy.linalg.block_diag(chol, jnp.diag(kap))

    # --- unconstrained parameterisation -------------------------------------------------

    def initial(self) -> dict[str, Any]:
        """Initial population parameters on the unconstrained scale (a pytree)."""
        theta = {
            k: jnp.asarray(float(v) if k in self.unconstrained else math.log(v))
            for k, v in self.theta.items()
        }
        sd = jnp.sqrt(jnp.asarray([float(v) for v in self.omega.values()]))
        omega = {"log_sd": jnp.log(sd)}
        if self.omega_block:
            d = self.n_eta
            omega["corr"] = jnp.zeros(d * (d - 1) // 2)
        sigma = {k: jnp.log(jnp.asarray(float(getattr(self.error, k)))) for k in self.error.names}
        phi = {"theta": theta, "omega": omega, "sigma": sigma}
        if self.iov:
            phi["iov"] = {
                "log_sd": jnp.log(jnp.sqrt(jnp.asarray([float(v) for v in self.iov.values()])))
            }
        return phi

    def natural(self, phi) -> dict[str, Any]:
        """Population parameters on their natural scale: theta, Omega (matrix) and sigma."""
        theta = {k: (v if k in self.unconstrained else jnp.exp(v)) for k, v in phi["theta"].items()}
        chol = self.omega_cholesky(phi)
        sigma = {k: jnp.exp(v) for k, v in phi["sigma"].items()}
        nat = {"theta": theta, "omega": chol @ chol.T, "sigma": sigma}
        if self.iov:
            nat["iov"] = jnp.exp(2.0 * phi["iov"]["log_sd"])
        return nat

    def omega_cholesky(self, phi):
        """Lower Cholesky factor of Omega: SDs times the Cholesky factor of the correlation."""
        sd = jnp.exp(phi["omega"]["log_sd"])
        d = sd.shape[0]
        if not self.omega_block or d < 2:
            return jnp.diag(sd)
        return sd[:, None] * corr_cholesky(phi["omega"]["corr"], d)

    # --- individual predictions and likelihood ----------------------------------------

    def individual_params(self, theta, covariates, eta, kappa=None) -> dict[str, Any]:
        """Parameters of one subject from natural-scale theta, its covariates and its eta
        (and, for a model with IOV, the kappas of one occasion)."""
        tv = dict(theta) if self.typical is None else dict(self.typical(theta, covariates))
        missing = [p for p in self.model.param_names if p not in tv]
        if missing:
            raise ValueError(f"PopulationModel.typical returned no value for {missing}.")
        for k, name in enumerate(self.eta_names):
            tv[name] = tv[name] * jnp.exp(eta[k])
        if kappa is not None:
            for k, name in enumerate(self.iov_names):
                tv[name] = tv[name] * jnp.exp(kappa[k])
        return {k: tv[k] for k in self.model.param_names if k in tv} | {
            k: v for k, v in tv.items() if k not in self.model.param_names and _dosing(k)
        }

    def which(self, obs):
        """The `ByOutput` part of each observation of one subject (from `obs["dvid"]`), or
        None for a single error model."""
        if not isinstance(self.error, ByOutput):
            return None
        return self.error.index(_need_which(obs.get("dvid")))

    def observe(self, sigma, f, eps, obs):
        """One subject's predictions `f` as measured, for standard normal draws `eps`: the
        error model of each observation (its `ByOutput` part, from `obs["dvid"]`) with
        natural-scale residual parameters `sigma` (a simulated DV)."""
        return observe(self.error, sigma, f, eps, self.which(obs))

    def _observed(self, y, dvid):
        """The output each observation measures: `output`, or with `ByOutput` the output of
        its part (chosen by its DVID)."""
        if y.ndim == 1:
            return y
        if not isinstance(self.error, ByOutput):
            return y[:, self.output]
        names = self.model.output_names
        cols = jnp.asarray([names.index(p.output) for p in self.error.parts])
        col = cols[self.error.index(_need_which(dvid))]
        return jnp.take_along_axis(y, col[:, None], axis=1)[:, 0]

    def predict(self, params, regimen, times, order=None, dvid=None):
        """Model output observed at `times` for one subject (`order`: each observation's
        place among the events at its time, `Dataset.obs_order`; None: after them; `dvid`:
        each observation's DVID, which picks its output for `ByOutput`).

        The engine's run-time domain checks are off (`checks=False`): estimators evaluate
        trial points outside the domain and reject them themselves (`subject_in_domain`,
        +inf objective), and concrete parameters are still checked on the host."""
        y = pkpd.simulate(
            self.model, params, regimen, times, checks=False, order=order, solver=self.solver
        )
        return self._observed(y, dvid)

    def row_params(self, theta, covariates, obs, b):
        """Parameters of one subject on each of its rows (`(rows,)` each), for data with
        time-varying covariates (`Dataset.from_records(interpolation=...)`): the typical
        values at each row's covariates (`obs["row_cov"]`; the others at their baseline),
        times `exp(eta)` and, for a model with IOV, `exp(kappa)` of each row's occasion
        (`obs["row_occ"]`, `Dataset.row_occasion`). `b` holds the random effects as in
        `predict_random`."""
        rows = obs["row_cov"]
        base = {k: v for k, v in covariates.items() if k not in rows}
        eta = b[: self.n_eta]
        if not self.iov:
            return jax.vmap(lambda c: self.individual_params(theta, {**base, **c}, eta))(rows)
        kappa = b[self.n_eta :].reshape(-1, len(self.iov))[obs["row_occ"]]
        return jax.vmap(lambda c, k: self.individual_params(theta, {**base, **c}, eta, k))(
            rows, kappa
        )

    def predict_random(self, theta, covariates, regimen, obs, b):
        """Predictions at `obs["time"]` for one subject's random effects `b` (etas, then the
        kappas of each occasion when the model has IOV: `n_random` values), in record order
        at equal times when `obs` holds `order` (`Dataset.record_arrays`).

        With time-varying covariates (`obs` holds `row_time`, `row_cov`, `obs_row` and
        `row_occ`: see `Dataset.row_arrays`) the parameters are evaluated on every row (with
        the kappas of each row's occasion) and the subject is simulated by
        `pkpd.simulate_recordwise`, as `pkpd.simulate_records` does."""
        eta = b[: self.n_eta]
        if "row_time" in obs:
            params = self.row_params(theta, covariates, obs, b)
            y = pkpd.simulate_recordwise(
                self.model, params, obs["row_time"], regimen, obs["obs_row"], checks=False,
                solver=self.solver,
            )  # fmt: skip
            y = self._observed(y, obs.get("dvid"))
            # Parameters outside the domain on some row (a covariate model's typical value
            # can go negative later in time): no prediction, so that the estimators, which
            # check the domain at the baseline covariates, reject the point.
            return jnp.where(in_domain(self.model, params), y, jnp.nan)
        if not self.iov:
            params = self.individual_params(theta, covariates, eta)
            return self.predict(params, regimen, obs["time"], obs.get("order"), obs.get("dvid"))
        start = obs["occasion_start"]
        kappa = b[self.n_eta :].reshape(start.shape[0], len(self.iov))
        params = jax.vmap(lambda k: self.individual_params(theta, covariates, eta, k))(kappa)
        order = obs.get("order")
        # With record order, each observation takes its own occasion's output parameters
        # (a trough at the time the next occasion starts belongs to the one before).
        segment = None if order is None or "occasion" not in obs else obs["occasion"]
        y = pkpd.simulate_piecewise(self.model, params, start[1:], regimen, obs["time"],
                                    checks=False, order=order, output_segment=segment,
                                    solver=self.solver)  # fmt: skip  # as predict
        return self._observed(y, obs.get("dvid"))

    def subject_in_domain(self, theta, covariates, b, n_occasions: int, obs=None):
        """Whether one subject's parameters for its random effects `b` (see
        `predict_random`) are all inside the structural model's domain (finite, positive
        clearances and volumes, ...: `pkpd.AbstractModel.domain_errors`); a traced boolean.
        A negative typical value from a covariate model is outside for every eta. With the
        subject's observations `obs` of data with time-varying covariates, the parameters
        on every row are checked."""
        eta = b[: self.n_eta]
        if obs is not None and "row_time" in obs:
            return in_domain(self.model, self.row_params(theta, covariates, obs, b))
        if not self.iov:
            return in_domain(self.model, self.individual_params(theta, covariates, eta))
        kappa = b[self.n_eta :].reshape(n_occasions, len(self.iov))
        ok = jax.vmap(
            lambda k: in_domain(self.model, self.individual_params(theta, covariates, eta, k))
        )(kappa)
        return jnp.all(ok)

    def subject_loglik(self, nat, covariates, regimen, obs, eta):
        """log p(y_i | b_i) for one subject (natural-scale population parameters `nat`;
        `eta` holds all its random effects, see `predict_random`); `-inf` when its
        parameters are outside the model's domain (`subject_in_domain`), so that a sampler
        or optimiser rejects the point instead of using a prediction of a negative
        clearance."""
        f = self.predict_random(nat["theta"], covariates, regimen, obs, eta)
        ll = observation_loglik(
            self.error, nat["sigma"], f, obs["dv"], obs["observed"], obs["blq"], obs["lloq"],
            self.which(obs),
        )  # fmt: skip
        n_occasions = obs["occasion_start"].shape[-1]
        ok = self.subject_in_domain(nat["theta"], covariates, eta, n_occasions, obs)
        return jnp.where(ok, jnp.sum(ll), -jnp.inf)


def _domain_rules(model: pkpd.AbstractModel) -> dict[str, Callable[[Any], Any]]:
    """`name -> predicate of a valid value`, the rules `pkpd.AbstractModel.domain_errors`
    states (finiteness is checked for every parameter)."""
    rules: dict[str, Callable[[Any], Any]] = {}
    for name in model.positive_params:
        rules[name] = lambda v: v > 0
    for i in range(model.n_states):
        rules[f"F{i + 1}"] = lambda v: v >= 0
        rules[f"ALAG{i + 1}"] = lambda v: v >= 0
        rules[f"D{i + 1}"] = lambda v: v > 0
        rules[f"R{i + 1}"] = lambda v: v > 0
    return rules


def in_domain(model: pkpd.AbstractModel, params: Mapping[str, Any]):
    """True when every parameter of one subject is inside the model's domain: finite, and
    the rules of `pkpd.AbstractModel.domain_errors`. Works on traced values (inside `jit`
    and `vmap`), where pkpd's own check cannot look; a scalar boolean array."""
    rules = _domain_rules(model)
    ok = jnp.asarray(True)
    for name, value in params.items():
        v = jnp.asarray(value)
        good = jnp.isfinite(v)
        if name in rules:
            good = good & rules[name](v)
        ok = ok & jnp.all(good)
    return ok


def _dosing(name: str) -> bool:
    return any(name.startswith(p) and name[len(p) :].isdigit() for p in ("F", "ALAG", "D", "R"))


def eta_logprior(chol, eta):
    """log N(eta; 0, L L^T) with `chol` = L."""
    d = eta.shape[-1]
    z = jax.scipy.linalg.solve_triangular(chol, eta, lower=True)
    return -0.5 * jnp.sum(z**2) - jnp.sum(jnp.log(jnp.diag(chol))) - 0.5 * d * math.log(2 * math.pi)


def occasion_index(occasion_start, times):
    """The occasion of each time, the one place that says how times map to occasions: the
    last occasion that has started at or before it (0-based; a time at an occasion's start
    belongs to the new occasion, as `pkpd.simulate_piecewise` takes the new segment's
    parameters there; times before the first start belong to occasion 0).

    `occasion_start` holds one subject's occasion start times (h), sorted, `+inf` for
    occasions it does not have (`Dataset.occasion_start[i]`). Estimation
    (`PopulationModel.predict_random`, through `pkpd.simulate_piecewise` with the changes
    at `occasion_start[1:]`), simulation (`simulate_dataset`) and the diagnostics and
    forecasts (`residuals`, `forecast_new_occasion`) all follow this rule; for data read by
    `Dataset.from_records` it gives each observation's `OCC` occasion (`Dataset.occasion`),
    as `tests/test_iov_estimators.py` checks. Works on traced arrays."""
    start = jnp.asarray(occasion_start)
    t = jnp.asarray(times)
    k = jnp.searchsorted(start, t, side="right") - 1
    return jnp.clip(k, 0, start.shape[-1] - 1)


def random_effect_names(pm: PopulationModel, n_occasions: int) -> tuple[str, ...]:
    """Labels of one subject's random effects in their order (`PopulationModel.n_random`):
    the etas by parameter name, then `kappa_<param>[<occasion>]` (0-based occasion, the
    kappas occasion-major)."""
    kappas = tuple(f"kappa_{p}[{k}]" for k in range(n_occasions) for p in pm.iov_names)
    return tuple(pm.eta_names) + kappas


def corr_cholesky(u, d: int):
    """The Cholesky factor of a `d x d` correlation matrix from its unconstrained canonical
    partial correlations `u` (`z = tanh(u)`, lower triangle row by row; Lewandowski,
    Kurowicka & Joe 2009, J Multivar Anal 100:1989-2001):
    `L[i, j] = z[i, j] sqrt(1 - sum_{k<j} L[i, k]^2)`, `L[i, i] = sqrt(1 - sum_k L[i, k]^2)`."""
    z = jnp.tanh(u)
    zm = jnp.zeros((d, d)).at[jnp.tril_indices(d, -1)].set(z)
    rows = [jnp.zeros(d).at[0].set(1.0)]
    for i in range(1, d):
        vals = []
        used = jnp.zeros(())
        for j in range(i):
            v = zm[i, j] * jnp.sqrt(1.0 - used)
            vals.append(v)
            used = used + v**2
        rows.append(
            jnp.concatenate([jnp.stack(vals), jnp.sqrt(1.0 - used)[None], jnp.zeros(d - i - 1)])
        )
    return jnp.stack(rows)
