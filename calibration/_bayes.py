"""Bayesian estimation with numpyro: population and individual NUTS, population SVI.

The population model is the hierarchical form of `PopulationModel`:

    theta_k            ~ LogNormal(log theta0_k, 1)       (Normal(theta0_k, max(1, |theta0_k|))
                                                           for names in `unconstrained`)
    omega_sd_j         ~ HalfNormal(1)                    (SD of eta_j, log scale)
    L_corr             ~ LKJCholesky(d, 2)                (only with `omega_block=True`)
    sigma_k            ~ HalfNormal(2 sigma0_k)           (residual error SDs)
    z_i                ~ N(0, I_d),  eta_i = diag(omega_sd) L_corr z_i   (non-centred)
    iov_sd_m           ~ HalfNormal(1)                    (SD of kappa_m, with `iov`)
    zk_ik              ~ N(0, I),    kappa_ik = diag(iov_sd) zk_ik       (per occasion k)
    y_i | eta_i, kappa ~ pm.subject_loglik (M3 for censored observations)

With inter-occasion variability (Karlsson & Sheiner 1993, *J Pharmacokinet Biopharm*
21:735-750) every subject has one kappa per IOV parameter and occasion of the data
(`Dataset.occasion_start`), non-centred as the etas; the kappas of occasions a subject does
not have leave its likelihood unchanged, so their posterior is their prior.

sampled by the No-U-Turn Sampler (Hoffman & Gelman 2014) as implemented in numpyro
(Phan, Pradhan & Jankowiak 2019), and returned as ArviZ `InferenceData` (Kumar et al. 2019)
with the rank-normalised split R-hat and bulk/tail ESS of Vehtari et al. (2021).

References: Hoffman MD, Gelman A (2014). *J Mach Learn Res* 15:1593-1623;
Phan D, Pradhan N, Jankowiak M (2019). arXiv:1912.11554;
Kumar R, Carroll C, Hartikainen A, Martin O (2019). *J Open Source Softw* 4:1143;
Vehtari A, Gelman A, Simpson D, Carpenter B, Bürkner P-C (2021). *Bayesian Anal* 16:667-718;
Betancourt M (2016). arXiv:1604.00695 (E-BFMI);
Yao Y, Vehtari A, Simpson D, Gelman A (2018). *Proc ICML* 80:5581-5590 (PSIS diagnostic for VI).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
from numpyro.distributions.transforms import biject_to
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoGuide, AutoMultivariateNormal
from numpyro.infer.initialization import init_to_value
from numpyro.infer.util import log_density

if TYPE_CHECKING:
    import arviz as az

from ._data import Dataset
from ._laplace import ConvergenceWarning, PopulationFit, check_start
from ._model import PopulationModel
from ._posterior_summary import (
    PARETO_K_MAX,
    convergence_stats,
    diagnose,
    diagnosed_variables,
    has_block,
    individual_table,
    population_table,
)
from ._random import key_or_seed

_CHAIN_METHODS = ("vectorized", "sequential", "parallel")
_RESERVED = ("omega_sd", "omega", "corr_chol", "corr", "z", "eta", "individual", "y")
_RESERVED += ("iov_sd", "iov", "zk", "kappa")
#: Supports of the subjects' latent sites (non-centred etas `z`, kappas `zk`).
_LATENT_SUPPORTS = {"z": dist.constraints.real_vector, "zk": dist.constraints.real_matrix}
_JITTER = 0.5  # initial values: +-0.5 (uniform) around the model's values, unconstrained scale


@dataclasses.dataclass(frozen=True)
class BayesFit:
    """A Bayesian fit: posterior draws, a tidy summary and convergence diagnostics.

    - `idata`: ArviZ `InferenceData`. The posterior group holds the thetas by name (natural
      units), `omega_sd` and `omega` (SDs and variances of the etas, log scale, dim
      `eta_name`), `corr` (block Omega), the residual SDs by name, `eta` and the sampler's
      `z` (`subject` x `eta_name`) and `individual` (each subject's parameters, natural units,
      `subject` x `param`); `log_likelihood` holds `y`, the log-likelihood of each subject
      given its etas (`subject`); `sample_stats` the sampler's statistics.
      Individual fits hold `eta`, `z` and `individual` only. With IOV the posterior also
      holds `iov_sd` and `iov` (SDs and variances of the kappas, dim `iov_name`; population
      fits), `kappa` and the sampler's `zk` (`subject` x `occasion` x `iov_name`; an
      occasion a subject does not have keeps its prior draws); `individual` holds the
      parameters without the kappas.
    - `table`: posterior summaries (`pandas.DataFrame`) with the columns of
      `estimates_table` (`estimate` is the posterior median, `se` the posterior SD, `ci_low`,
      `ci_high` the 2.5% and 97.5% quantiles) plus `r_hat` and `ess_bulk`; individual fits
      have a `subject` column instead of `cv_pct` and `shrinkage_pct`.
    - `diagnostics`: `max_r_hat`, `min_ess_bulk`, `min_ess_tail`, `ess_required`,
      `divergences`, `min_bfmi`, `tree_depth_hits`, `wall_time_s` (sampling and compilation),
      `problems` (the messages of the `ConvergenceWarning`, empty when converged); SVI fits
      give `final_loss`, `pareto_k` and `wall_time_s`.
    - `converged`: False when any problem was found (and warned about).
    - `method`: `"nuts"`, `"nuts-individual"` or `"svi"`.
    """

    model: PopulationModel
    idata: az.InferenceData
    table: pd.DataFrame
    diagnostics: dict[str, Any]
    converged: bool
    method: str


# ----------------------------------------------------------------------------- priors


@contextlib.contextmanager
def _numpyro_config():
    """numpyro's internals rely on JAX's standard dtype and rank promotion."""
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield


def default_priors(pm: PopulationModel) -> dict[str, dist.Distribution]:
    """The weakly informative priors of `fit_population_nuts`, by sample-site name.

    - each theta (site named as the theta): `LogNormal(log theta0, 1)`, i.e. a normal prior
      with SD 1 on the log scale (95% within a factor 7 of the initial value); thetas in
      `pm.unconstrained`: `Normal(theta0, max(1, |theta0|))`;
    - `"omega_sd"`: `HalfNormal(1)` for each SD of the etas (median 0.67, a CV of 76%; 95%
      below 1.96);
    - `"corr_chol"` (with `omega_block=True`): `LKJCholesky(d, 2)`, mildly favouring small
      correlations;
    - `"iov_sd"` (with `iov`): `HalfNormal(1)` for each SD of the kappas (as the etas');
    - each residual SD (named as in the error model, `add_sd`, `prop_sd`, `exp_sd`):
      `HalfNormal(2 * initial value)`.

    Pass replacements to the estimators as `priors={"CL": dist.LogNormal(1.0, 0.3)}`; sites
    not named keep these defaults. `"omega_sd"` takes a scalar distribution (used for every
    eta) or one with batch shape `(n_eta,)`; `"iov_sd"` a scalar or batch shape `(n_iov,)`.
    """
    with _numpyro_config():
        return _default_priors(pm)


def _default_priors(pm: PopulationModel) -> dict[str, dist.Distribution]:
    priors: dict[str, dist.Distribution] = {}
    for name, value in pm.theta.items():
        v = float(value)
        if name in pm.unconstrained:
            priors[name] = dist.Normal(v, max(1.0, abs(v)))
        else:
            priors[name] = dist.LogNormal(math.log(v), 1.0)
    priors["omega_sd"] = dist.HalfNormal(1.0)
    if has_block(pm):
        priors["corr_chol"] = dist.LKJCholesky(pm.n_eta, 2.0)
    if pm.iov:
        priors["iov_sd"] = dist.HalfNormal(1.0)
    for name in pm.error.names:
        priors[name] = dist.HalfNormal(2.0 * float(getattr(pm.error, name)))
    return priors


def _check_names(pm: PopulationModel) -> None:
    names = list(pm.theta) + list(pm.error.names)
    clash = sorted({n for n in names if n in _RESERVED} | {n for n in names if names.count(n) > 1})
    if clash:
        raise ValueError(
            f"Bayesian fit: parameter name(s) {clash} clash with other sample sites; "
            f"thetas and residual SDs must have distinct names not in {list(_RESERVED)}."
        )


def _resolve_priors(
    pm: PopulationModel, priors: Mapping[str, dist.Distribution] | None, fn: str
) -> dict[str, dist.Distribution]:
    with _numpyro_config():
        return _resolve(pm, priors, fn)


def _resolve(
    pm: PopulationModel, priors: Mapping[str, dist.Distribution] | None, fn: str
) -> dict[str, dist.Distribution]:
    out = _default_priors(pm)
    for name, prior in (priors or {}).items():
        if name not in out:
            raise ValueError(
                f"{fn}: prior given for {name!r}, which is not a sample site; "
                f"the sites are {list(out)}."
            )
        if not isinstance(prior, dist.Distribution):
            raise TypeError(
                f"{fn}: the prior for {name!r} must be a numpyro distribution, "
                f"got {type(prior).__name__}."
            )
        out[name] = prior
    positive = [n for n in pm.theta if n not in pm.unconstrained]
    positive += ["omega_sd", *(["iov_sd"] if pm.iov else []), *pm.error.names]
    for name in positive:
        support = out[name].support
        if support is None or bool(jnp.any(support(jnp.asarray([-1e-8, -1.0, -1e8])))):
            raise ValueError(
                f"{fn}: the prior for {name!r} must put no mass on negative values (the "
                f"parameter is positive), got {type(out[name]).__name__} with support "
                f"{support}."
            )
    d = pm.n_eta
    sites = [("omega_sd", d, "eta", pm.eta_names)]
    if pm.iov:
        sites.append(("iov_sd", len(pm.iov), "IOV parameter", pm.iov_names))
    for site, n, what, labels in sites:
        sd = out[site]
        if sd.event_shape == () and sd.batch_shape in ((), (n,)):
            out[site] = sd.expand((n,)).to_event(1)
        elif sd.event_shape != (n,) or sd.batch_shape != ():
            raise ValueError(
                f"{fn}: the prior for {site!r} must be scalar or have shape ({n},) (one SD "
                f"per {what} {list(labels)}), got batch shape {sd.batch_shape} and event "
                f"shape {sd.event_shape}."
            )
    for name in list(pm.theta) + list(pm.error.names):
        if out[name].batch_shape != () or out[name].event_shape != ():
            raise ValueError(f"{fn}: the prior for {name!r} must be scalar.")
    if has_block(pm) and out["corr_chol"].event_shape != (d, d):
        raise ValueError(
            f"{fn}: the prior for 'corr_chol' must be over {d}x{d} Cholesky factors "
            f"(e.g. LKJCholesky({d}, 2.0)), got event shape {out['corr_chol'].event_shape}."
        )
    return out


# ----------------------------------------------------------------------------- numpyro models


def _subject_arrays(data: Dataset):
    cov = {k: jnp.asarray(v) for k, v in data.covariates.items()}
    return cov, data.regimen, data.arrays()


def _param_names(pm: PopulationModel, data: Dataset) -> list[str]:
    cov, _, _ = _subject_arrays(data)
    theta = {k: jnp.asarray(float(v)) for k, v in pm.theta.items()}
    c0 = {k: v[0] for k, v in cov.items()}
    return list(pm.individual_params(theta, c0, jnp.zeros(pm.n_eta)))


def _subject_sites(pm: PopulationModel, data: Dataset, names):
    """Non-centred etas (and kappas) of every subject, their likelihood and individual
    parameters. `sites(theta, sigma, chol, iov_sd)`: `iov_sd` the SDs of the kappas (None
    without IOV)."""
    cov, reg, obs = _subject_arrays(data)
    loglik = _loglik(pm)
    individual = _individual(pm, tuple(names))
    n_occ, n_iov = data.n_occasions, len(pm.iov)

    def sites(theta, sigma, chol, iov_sd=None):
        with numpyro.plate("subject", data.n_subjects):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand((pm.n_eta,)).to_event(1))
            eta = numpyro.deterministic("eta", z @ chol.T)
            b = eta
            if n_iov:
                zk = jnp.asarray(
                    numpyro.sample("zk", dist.Normal(0.0, 1.0).expand((n_occ, n_iov)).to_event(2))
                )
                kappa = jnp.asarray(numpyro.deterministic("kappa", zk * jnp.asarray(iov_sd)))
                # Occasion-major, as PopulationModel.n_random orders them.
                b = jnp.concatenate([eta, kappa.reshape(kappa.shape[0], -1)], axis=-1)
            numpyro.factor("y", loglik(theta, sigma, b, cov, reg, obs))
        numpyro.deterministic("individual", individual(theta, eta, cov))

    return sites


# numpyro initialises the sampler eagerly (op by op, and eager reverse-mode differentiation of
# the model compiles many pieces separately), which costs far more than the sampling for these
# small models. The likelihood is therefore one jitted function with a custom VJP whose forward
# pass returns the per-subject gradients as well: eagerly that is one compiled call; inside the
# sampler's jitted loop it is inlined.


def _loglik(pm: PopulationModel):
    """Per-subject log-likelihoods `(theta, sigma, eta, cov, reg, obs) -> (subjects,)`."""

    def one(theta, sigma, eta, c, r, o):
        return pm.subject_loglik({"theta": theta, "sigma": sigma}, c, r, o, eta)

    def one_and_grad(theta, sigma, eta, c, r, o):
        # A subject outside the model's domain has log-likelihood -inf (the sampler rejects
        # the point); its gradient is set to zero, never NaN (0 * inf in the chain rule).
        value, grads = jax.value_and_grad(one, argnums=(0, 1, 2))(theta, sigma, eta, c, r, o)
        ok = jnp.isfinite(value)
        return value, jax.tree_util.tree_map(lambda g: jnp.where(ok, g, 0.0), grads)

    value_and_grad = jax.jit(jax.vmap(one_and_grad, in_axes=(None, None, 0, 0, 0, 0)))

    @jax.custom_vjp
    def loglik(theta, sigma, eta, cov, reg, obs):
        return value_and_grad(theta, sigma, eta, cov, reg, obs)[0]

    def fwd(theta, sigma, eta, cov, reg, obs):
        return value_and_grad(theta, sigma, eta, cov, reg, obs)

    def bwd(grads, ct):
        # Subject i's log-likelihood depends on theta, sigma and eta_i only; the data get no
        # cotangent (None: zeros).
        g_theta, g_sigma, g_eta = grads
        scale = lambda g: jnp.tensordot(ct, g, axes=1)
        return (
            jax.tree_util.tree_map(scale, g_theta),
            jax.tree_util.tree_map(scale, g_sigma),
            ct[:, None] * g_eta,
            None,
            None,
            None,
        )

    loglik.defvjp(fwd, bwd)
    return loglik


def _individual(pm: PopulationModel, names: tuple[str, ...]):
    def individual(theta, eta, cov):
        params = jax.vmap(lambda c, e: pm.individual_params(theta, c, e))(cov, eta)
        n = eta.shape[0]
        return jnp.stack([jnp.broadcast_to(params[k], (n,)) for k in names], axis=-1)

    return jax.jit(individual)


def _population_model(pm: PopulationModel, data: Dataset, priors, names):
    subject_sites = _subject_sites(pm, data, names)

    def model():
        theta = {k: numpyro.sample(k, priors[k]) for k in pm.theta}
        sd = jnp.asarray(numpyro.sample("omega_sd", priors["omega_sd"]))
        numpyro.deterministic("omega", sd**2)
        if has_block(pm):
            lc = jnp.asarray(numpyro.sample("corr_chol", priors["corr_chol"]))
            numpyro.deterministic("corr", lc @ lc.T)
            chol = sd[:, None] * lc
        else:
            chol = jnp.diag(sd)
        iov_sd = None
        if pm.iov:
            iov_sd = jnp.asarray(numpyro.sample("iov_sd", priors["iov_sd"]))
            numpyro.deterministic("iov", iov_sd**2)
        sigma = {k: numpyro.sample(k, priors[k]) for k in pm.error.names}
        subject_sites(theta, sigma, chol, iov_sd)

    return model


def _individual_model(pm: PopulationModel, data: Dataset, phi, names):
    nat = pm.natural(phi)
    chol = pm.omega_cholesky(phi)
    iov_sd = jnp.sqrt(nat["iov"]) if pm.iov else None
    subject_sites = _subject_sites(pm, data, names)

    def model():
        subject_sites(nat["theta"], nat["sigma"], chol, iov_sd)

    return model


def _centre(pm: PopulationModel, data: Dataset, population: bool) -> dict[str, Any]:
    """The model's initial values at every latent site (constrained scale)."""
    values: dict[str, Any] = {"z": jnp.zeros((data.n_subjects, pm.n_eta))}
    if pm.iov:
        values["zk"] = jnp.zeros((data.n_subjects, data.n_occasions, len(pm.iov)))
    if population:
        values |= {k: jnp.asarray(float(v)) for k, v in pm.theta.items()}
        values["omega_sd"] = jnp.sqrt(jnp.asarray([float(v) for v in pm.omega.values()]))
        if has_block(pm):
            values["corr_chol"] = jnp.eye(pm.n_eta)
        if pm.iov:
            values["iov_sd"] = jnp.sqrt(jnp.asarray([float(v) for v in pm.iov.values()]))
        values |= {k: jnp.asarray(float(getattr(pm.error, k))) for k in pm.error.names}
    return values


def _initial_params(supports: Mapping[str, Any], centre, key, num_chains: int):
    """Dispersed starting points: the centre +- `_JITTER` (uniform), unconstrained scale."""
    out = {}
    for i, (name, value) in enumerate(centre.items()):
        u = biject_to(supports[name]).inv(value)
        shape = (num_chains, *u.shape) if num_chains > 1 else u.shape
        noise = jax.random.uniform(jax.random.fold_in(key, i), shape, minval=-1.0, maxval=1.0)
        out[name] = jnp.broadcast_to(u, shape) + _JITTER * noise
    return out


# ----------------------------------------------------------------------------- NUTS


def _run_nuts(
    model,
    supports,
    centre,
    *,
    key,
    num_warmup,
    num_samples,
    num_chains,
    chain_method,
    target_accept,
    progress_bar,
    max_tree_depth,
    fn,
):
    if chain_method not in _CHAIN_METHODS:
        raise ValueError(
            f"{fn}: chain_method must be one of {_CHAIN_METHODS}, got {chain_method!r}."
        )
    if not 0.0 < target_accept < 1.0:
        raise ValueError(f"{fn}: target_accept must be in (0, 1), got {target_accept}.")
    if num_samples < 4 or num_chains < 1 or num_warmup < 0:
        raise ValueError(
            f"{fn}: need num_samples >= 4, num_chains >= 1 and num_warmup >= 0, got "
            f"{num_samples}, {num_chains} and {num_warmup}."
        )
    key_init, key_run = jax.random.split(key)
    init = _initial_params(supports, centre, key_init, num_chains)
    kernel = NUTS(
        model,
        target_accept_prob=target_accept,
        max_tree_depth=max_tree_depth,
        init_strategy=init_to_value(values=centre),
    )
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method=chain_method,
        progress_bar=progress_bar,
    )
    start = time.perf_counter()
    with _numpyro_config():
        mcmc.run(key_run, init_params=init, extra_fields=("num_steps", "energy"))
        jax.block_until_ready(mcmc.get_samples())
    return mcmc, time.perf_counter() - start


def _coords_dims(data: Dataset, pm: PopulationModel, names):
    coords = {
        "subject": list(np.asarray(data.ids).tolist()),
        "eta_name": list(pm.eta_names),
        "eta_name_": list(pm.eta_names),
        "param": list(names),
        "occasion": list(range(data.n_occasions)),
        "iov_name": list(pm.iov_names),
    }
    dims = {
        "z": ["subject", "eta_name"],
        "eta": ["subject", "eta_name"],
        "individual": ["subject", "param"],
        "omega_sd": ["eta_name"],
        "omega": ["eta_name"],
        "corr_chol": ["eta_name", "eta_name_"],
        "corr": ["eta_name", "eta_name_"],
        "y": ["subject"],
        "iov_sd": ["iov_name"],
        "iov": ["iov_name"],
        "zk": ["subject", "occasion", "iov_name"],
        "kappa": ["subject", "occasion", "iov_name"],
    }
    return coords, dims


def _to_idata(mcmc: MCMC, data: Dataset, pm: PopulationModel, names) -> az.InferenceData:
    import arviz as az  # here, not at import time: importing arviz takes seconds

    coords, dims = _coords_dims(data, pm, names)
    with _numpyro_config():
        idata = az.from_numpyro(mcmc, coords=coords, dims=dims, log_likelihood=True)
    if "observed_data" in idata.groups():
        # numpyro.factor's placeholder observation (an empty array) is not data.
        del idata.observed_data
    return idata


def fit_population_nuts(
    pm: PopulationModel,
    data: Dataset,
    *,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 4,
    key: jax.Array | int | None = None,
    priors: Mapping[str, dist.Distribution] | None = None,
    chain_method: str = "vectorized",
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    progress_bar: bool = False,
    seed: int | jax.Array | None = None,
) -> BayesFit:
    """Full Bayesian population fit by NUTS (numpyro), with loud convergence diagnostics.

    The model and its priors are in the module docstring and `default_priors`. The etas are
    sampled non-centred (`eta_i = L z_i`, `z_i ~ N(0, I)`), which avoids the funnel between
    the etas and their SDs that defeats NUTS with few observations per subject; with IOV
    so are the kappas of each subject and occasion (`kappa_ik = iov_sd * zk_ik`).

    **Arguments:**

    - `pm`: the population model; its thetas, omegas and residual SDs centre the priors and
      the starting points (each chain starts at a uniform jitter of +-0.5 around them on the
      unconstrained scale, so that R-hat can see chains that disagree).
    - `data`: a `Dataset`.
    - `num_warmup`, `num_samples`, `num_chains`: draws per chain; adaptation of the step size
      and the diagonal mass matrix happens in warm-up. Use at least 4 chains for R-hat.
    - `key`: a JAX PRNG key (`jax.random.key(...)`) or an int; the same key gives the same
      draws. (Omitting it uses `jax.random.key(0)` with a `DeprecationWarning`; in the next
      release it raises `TypeError`.)
    - `seed`: deprecated spelling of `key` (a `DeprecationWarning`).
    - `priors`: replacements for some of `default_priors(pm)`, by site name, e.g.
      `{"CL": dist.LogNormal(jnp.log(3.0), 0.25), "omega_sd": dist.HalfNormal(0.5)}`.
    - `chain_method`: `"vectorized"` (chains vmapped in one program; the default),
      `"sequential"` or `"parallel"` (one chain per device: needs as many JAX devices as
      chains, e.g. `XLA_FLAGS=--xla_force_host_platform_device_count=4` set before importing
      JAX).
    - `target_accept`: NUTS's target acceptance probability; raise it (0.9, 0.95) when there
      are divergences.
    - `max_tree_depth`: NUTS's maximum tree depth (at most `2**max_tree_depth - 1` steps).
    - `progress_bar`: numpyro's progress bar.

    **Returns:** a `BayesFit`. Any R-hat above `RHAT_MAX` (1.01), bulk- or tail-ESS below
    `ESS_PER_CHAIN_MIN` (100) per chain, any divergent transition or an E-BFMI below 0.3
    emits a `ConvergenceWarning` naming the parameters and values, and sets
    `converged=False`.
    """
    fn = "fit_population_nuts"
    key = key_or_seed(key, seed, fn, default=0)
    _check_names(pm)
    check_start(pm, data, pm.initial(), fn, "the model's initial values")
    resolved = _resolve_priors(pm, priors, fn)
    names = _param_names(pm, data)
    model = _population_model(pm, data, resolved, names)
    supports = {k: p.support for k, p in resolved.items()} | _LATENT_SUPPORTS
    centre = _centre(pm, data, population=True)
    mcmc, wall = _run_nuts(
        model,
        supports,
        centre,
        key=key,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method=chain_method,
        target_accept=target_accept,
        progress_bar=progress_bar,
        max_tree_depth=max_tree_depth,
        fn=fn,
    )
    idata = _to_idata(mcmc, data, pm, names)
    stats = convergence_stats(idata, diagnosed_variables(pm))
    diagnostics, problems = diagnose(idata, stats, num_chains, max_tree_depth)
    diagnostics["wall_time_s"] = wall
    table = population_table(pm, idata, stats, np.isfinite(data.occasion_start))
    return _finish(pm, idata, table, diagnostics, problems, "nuts", fn)


def fit_individual_nuts(
    pm: PopulationModel,
    data: Dataset,
    population: PopulationFit | Mapping[str, Any] | None = None,
    *,
    subject: Any | Sequence[Any] | None = None,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 4,
    key: jax.Array | int | None = None,
    chain_method: str = "vectorized",
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    progress_bar: bool = False,
    seed: int | jax.Array | None = None,
) -> BayesFit:
    """NUTS for subjects' etas given fixed population values (the individual posterior).

    `p(eta_i | y_i) ∝ p(y_i | eta_i) N(eta_i; 0, Omega)` with theta, Omega and the residual
    error fixed. Several subjects are sampled in one run; their posteriors are independent
    (the joint density factorises), but they share the step size and the number of draws, so
    for many subjects with very different data separate calls can be more efficient.

    **Arguments:**

    - `pm`, `data`: the model and the subjects.
    - `population`: a `PopulationFit`, population parameters on the unconstrained scale
      (`pm.initial()` form), or None for the model's initial values (a prior model).
    - `subject`: an ID or a list of IDs (values of `data.ids`; None: every subject). Select
      by position with `data.subset([...])`.
    - the sampler arguments and `key` (`seed`, deprecated) as in `fit_population_nuts`.

    **Returns:** a `BayesFit` whose posterior holds `eta`, `z` and `individual` (parameters in
    natural units), and whose table has one row per subject and parameter (kind `eta` and
    `individual`). With IOV the kappas of every occasion are sampled too (`kappa`, `zk`;
    table rows of kind `kappa` with their `occasion`; `random_effect_draws(fit, id)` gives a
    subject's etas and kappas for `forecast_new_occasion`). Convergence problems warn as in
    `fit_population_nuts`.
    """
    fn = "fit_individual_nuts"
    key = key_or_seed(key, seed, fn, default=0)
    if subject is not None:
        wanted = list(subject) if isinstance(subject, list | tuple | np.ndarray) else [subject]
        ids = np.asarray(data.ids).tolist()
        missing = [s for s in wanted if s not in ids]
        if missing:
            raise ValueError(f"{fn}: subject ID(s) {missing} not in the data (IDs {ids[:20]}).")
        data = data.subset([ids.index(s) for s in wanted])
    if isinstance(population, PopulationFit):
        phi = population.phi
    else:
        phi = pm.initial() if population is None else population
    check_start(pm, data, phi, fn, "the population values given")
    names = _param_names(pm, data)
    model = _individual_model(pm, data, phi, names)
    mcmc, wall = _run_nuts(
        model,
        _LATENT_SUPPORTS,
        _centre(pm, data, population=False),
        key=key,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method=chain_method,
        target_accept=target_accept,
        progress_bar=progress_bar,
        max_tree_depth=max_tree_depth,
        fn=fn,
    )
    idata = _to_idata(mcmc, data, pm, names)
    stats = convergence_stats(idata, ["eta", *(["kappa"] if pm.iov else [])])
    diagnostics, problems = diagnose(idata, stats, num_chains, max_tree_depth)
    diagnostics["wall_time_s"] = wall
    table = individual_table(idata, stats, np.isfinite(data.occasion_start))
    return _finish(pm, idata, table, diagnostics, problems, "nuts-individual", fn)


def random_effect_draws(fit: BayesFit, subject: Any) -> np.ndarray:
    """The posterior draws of one subject's random effects, `(chains * draws, n_random)`:
    its etas, then (IOV) the kappas of every occasion, occasion-major (the order of
    `PopulationModel.n_random` and `random_effect_names`), the form `forecast_new_occasion`
    and `sbc` take. `subject` is an ID (a value of the fit's `subject` coordinate)."""
    idata: Any = fit.idata
    post = idata.posterior
    ids = list(post.coords["subject"].values.tolist())
    if subject not in ids:
        raise ValueError(f"random_effect_draws: no subject with ID {subject!r} (IDs {ids[:20]}).")
    eta = np.asarray(post["eta"].sel(subject=subject))
    out = eta.reshape(-1, eta.shape[-1])
    if "kappa" in post:
        kappa = np.asarray(post["kappa"].sel(subject=subject))  # chain, draw, occasion, iov
        out = np.concatenate([out, kappa.reshape(out.shape[0], -1)], axis=1)
    return out


def _finish(pm, idata, table, diagnostics, problems, method, fn) -> BayesFit:
    diagnostics["problems"] = problems
    if problems:
        warnings.warn(
            f"{fn}: convergence problems: " + "; ".join(problems),
            ConvergenceWarning,
            stacklevel=3,
        )
    return BayesFit(
        model=pm,
        idata=idata,
        table=table,
        diagnostics=diagnostics,
        converged=not problems,
        method=method,
    )


# ----------------------------------------------------------------------------- SVI


def fit_population_svi(
    pm: PopulationModel,
    data: Dataset,
    *,
    guide: type[AutoGuide] = AutoMultivariateNormal,
    num_steps: int = 5000,
    learning_rate: float = 0.01,
    num_draws: int = 2000,
    key: jax.Array | int | None = None,
    priors: Mapping[str, dist.Distribution] | None = None,
    progress_bar: bool = False,
    seed: int | jax.Array | None = None,
) -> BayesFit:
    """Variational population fit (numpyro SVI): fast and approximate.

    Fits a Gaussian on the unconstrained scale to the posterior of the same hierarchical model
    as `fit_population_nuts` by maximising the ELBO with Adam. Use it for quick looks, for
    starting values or for models too large for NUTS; use NUTS for the reported posterior.
    `AutoMultivariateNormal` (the default) keeps the correlations between parameters;
    `AutoNormal` (mean field) is cheaper and underestimates posterior spread more. Uncertainty
    from VI is typically too narrow; the Pareto k-hat of the importance ratios
    `p(theta, y) / q(theta)` says whether the approximation can be trusted (Yao et al. 2018):
    k-hat above 0.7 emits a `ConvergenceWarning` and sets `converged=False`.

    **Arguments:**

    - `pm`, `data`, `priors`, `key` (`seed`, deprecated): as in `fit_population_nuts`.
    - `guide`: a numpyro autoguide class (`numpyro.infer.autoguide.AutoMultivariateNormal`,
      `AutoNormal`, `AutoLowRankMultivariateNormal`, ...), started at the model's values.
    - `num_steps`, `learning_rate`: Adam's iterations and step size.
    - `num_draws`: draws from the fitted approximation (the `posterior` group, one chain).

    **Returns:** a `BayesFit` (`method="svi"`) whose table has `r_hat` and `ess_bulk` NaN (the
    draws are independent) and whose diagnostics hold `final_loss` (the negative ELBO, mean
    of the last 10% of steps), `pareto_k` and `wall_time_s`.
    """
    import arviz as az  # here, not at import time: importing arviz takes seconds

    fn = "fit_population_svi"
    key = key_or_seed(key, seed, fn, default=0)
    _check_names(pm)
    if num_steps < 1 or num_draws < 10 or not learning_rate > 0:
        raise ValueError(
            f"{fn}: need num_steps >= 1, num_draws >= 10 and learning_rate > 0, got "
            f"{num_steps}, {num_draws} and {learning_rate}."
        )
    check_start(pm, data, pm.initial(), fn, "the model's initial values")
    resolved = _resolve_priors(pm, priors, fn)
    names = _param_names(pm, data)
    model = _population_model(pm, data, resolved, names)
    centre = _centre(pm, data, population=True)
    approx = guide(model, init_loc_fn=init_to_value(values=centre))
    svi = SVI(model, approx, numpyro.optim.Adam(learning_rate), Trace_ELBO())
    key_fit, key_draw = jax.random.split(key)
    latent = [*pm.theta, "omega_sd", *(["corr_chol"] if has_block(pm) else []), *pm.error.names]
    latent += ["z", *(["iov_sd", "zk"] if pm.iov else [])]
    deterministic = ["omega", *(["corr"] if has_block(pm) else []), "eta", "individual"]
    deterministic += ["iov", "kappa"] if pm.iov else []

    def draw(key, params):
        log_q, guide_trace = log_density(numpyro.handlers.seed(approx, key), (), {}, params)
        values = {k: guide_trace[k]["value"] for k in latent}
        log_p, model_trace = log_density(model, (), {}, values)
        return log_p - log_q, values | {k: model_trace[k]["value"] for k in deterministic}

    start = time.perf_counter()
    with _numpyro_config():
        result = svi.run(key_fit, num_steps, progress_bar=progress_bar)
        keys = jax.random.split(key_draw, num_draws)
        log_w, draws = jax.jit(jax.vmap(draw, in_axes=(0, None)))(keys, result.params)
        jax.block_until_ready(draws)
    wall = time.perf_counter() - start
    losses = np.asarray(result.losses)
    final_loss = float(np.mean(losses[-max(1, num_steps // 10) :]))
    log_w = np.asarray(log_w)
    problems = []
    if not np.all(np.isfinite(log_w)) or not math.isfinite(final_loss):
        problems.append(
            f"the ELBO or the importance ratios are not finite (final loss {final_loss:.4g})"
        )
        pareto_k = math.inf
    else:
        _, k_hat = az.psislw(log_w)
        pareto_k = float(np.asarray(k_hat))
        if not pareto_k <= PARETO_K_MAX:
            problems.append(
                f"Pareto k-hat = {pareto_k:.2f} > {PARETO_K_MAX}: the variational "
                "approximation is not close enough to the posterior (use fit_population_nuts)"
            )
    coords, dims = _coords_dims(data, pm, names)
    posterior = {k: np.asarray(v)[None] for k, v in draws.items()}
    idata = az.from_dict(posterior=posterior, coords=coords, dims=dims)
    table = population_table(pm, idata, None, np.isfinite(data.occasion_start))
    diagnostics: dict[str, Any] = {
        "final_loss": final_loss,
        "pareto_k": pareto_k,
        "num_steps": num_steps,
        "num_draws": num_draws,
        "wall_time_s": wall,
        "losses": losses,
    }
    return _finish(pm, idata, table, diagnostics, problems, "svi", fn)
