"""Differential privacy for the federated surrogates: DP-SGD inside a hospital (record level),
clipping and noise of hospitals' updates (client level), and the accounting of both.

Two units of privacy, never mixed:

- **record level** (a patient's record at one hospital): DP-SGD (Abadi M et al. Deep learning
  with differential privacy. CCS 2016). Each local step draws a Poisson sample of the
  hospital's records (each record in with probability q = batch / n), clips every
  per-example gradient to L2 norm `clip` (`clip_per_example`, a vmap of per-example
  gradients), sums them, adds Gaussian noise N(0, (sigma clip)^2) per coordinate and
  divides by the expected batch q n. A record's epsilon at delta is that of
  `rounds x local steps` compositions of the Poisson-subsampled Gaussian mechanism
  (`record_epsilon`). Everything released afterwards (the update sent to the server, the
  global model) is post-processing of these noisy gradients.
- **client level** (a whole hospital, all of its records together): every hospital clips its
  update (new local weights minus the global ones) to L2 norm `clip`
  (`clip_update`), the server averages the clipped updates with equal weights and adds
  N(0, (sigma clip / K)^2) per coordinate for K hospitals (`client_dp_aggregate`), as
  Flower's `DifferentialPrivacyClientSideFixedClipping` with `fixedclipping_mod` does
  (McMahan HB et al. Learning differentially private recurrent language models. ICLR 2018).
  With every hospital in every round there is no amplification by sampling: a hospital's
  epsilon is that of `rounds` compositions of the Gaussian mechanism with multiplier sigma
  (`client_epsilon`).

The accounting is done by Google's dp-accounting (0.6.0): the PLD accountant by default
(privacy loss distributions, a tight upper bound for these mechanisms; Koskela A et al.
AISTATS 2020, Doroshenko V et al. PETS 2022), or the RDP accountant (Mironov I. Renyi
differential privacy. CSF 2017; Mironov I, Talwar K, Zhang L. Renyi differential privacy of
the sampled Gaussian mechanism. 2019), which Flower's own accountant wraps. Nothing is
computed by hand here: epsilon and the noise multiplier for a target epsilon
(`dp_accounting.calibrate_dp_mechanism`) both come from the accountant. See
docs/federated-privacy.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp

Accountant = Literal["pld", "rdp"]

#: The delta at which epsilon is stated unless told otherwise (1e-5: below 1/n for every
#: hospital and federation size used here; see docs/federated-privacy.md).
DELTA = 1e-5


@dataclasses.dataclass(frozen=True)
class RecordDP:
    """DP-SGD inside each hospital: per-example clipping norm and noise multiplier."""

    clip: float
    noise_multiplier: float

    def __post_init__(self):
        if not (self.clip > 0 and math.isfinite(self.clip)):
            raise ValueError(f"RecordDP.clip must be positive and finite, got {self.clip}.")
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(
                f"RecordDP.noise_multiplier must be >= 0, got {self.noise_multiplier}."
            )


@dataclasses.dataclass(frozen=True)
class ClientDP:
    """Client-level DP: each hospital's update clipped to `clip`, noise multiplier `sigma`
    on the (equal-weight) average."""

    clip: float
    noise_multiplier: float

    def __post_init__(self):
        if not (self.clip > 0 and math.isfinite(self.clip)):
            raise ValueError(f"ClientDP.clip must be positive and finite, got {self.clip}.")
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(
                f"ClientDP.noise_multiplier must be >= 0, got {self.noise_multiplier}."
            )


# ----------------------------------------------------------------------------- numerics


def tree_norm(tree: Any) -> jax.Array:
    """The L2 norm of all the leaves of `tree` together."""
    leaves = jax.tree.leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in leaves))


def per_example_gradients(
    per_example_loss: Callable[[Any, Any, Any], jax.Array], params: Any, x: Any, y: Any
) -> Any:
    """The gradient of `per_example_loss(params, x_i, y_i)` for every record i (leading axis
    of every leaf of `x` and `y`): a tree like `params` with a leading record axis."""
    return jax.vmap(jax.grad(per_example_loss), in_axes=(None, 0, 0))(params, x, y)


def per_example_norms(grads: Any) -> jax.Array:
    """(n,): the L2 norm of each record's gradient over all the leaves."""
    leaves = jax.tree.leaves(grads)
    return jnp.sqrt(sum(jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=1) for g in leaves))


def clip_per_example(grads: Any, clip: float) -> tuple[Any, jax.Array]:
    """Each record's gradient scaled by min(1, clip / its norm); returns the clipped
    gradients and the norms before clipping."""
    norms = per_example_norms(grads)
    factor = jnp.minimum(1.0, clip / jnp.maximum(norms, 1e-30))

    def scale(g):
        f = factor.astype(g.dtype).reshape((-1,) + (1,) * (g.ndim - 1))
        return g * f

    return jax.tree.map(scale, grads), norms


def gaussian_noise_like(tree: Any, std: Any, key: jax.Array) -> Any:
    """Independent N(0, std^2) for every coordinate of `tree`, in each leaf's dtype."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    noise = [
        jnp.asarray(std, x.dtype) * jax.random.normal(k, x.shape, x.dtype)
        for k, x in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, noise)


def dp_sgd_gradient(
    per_example_loss: Callable[[Any, Any, Any], jax.Array],
    params: Any,
    x: Any,
    y: Any,
    sample: jax.Array,
    expected_batch: Any,
    dp: RecordDP,
    key: jax.Array,
) -> tuple[Any, jax.Array]:
    """The DP-SGD gradient estimate of one step: sum over the records with `sample` = 1 of
    the clipped per-example gradients, plus N(0, (sigma clip)^2) noise per coordinate,
    divided by `expected_batch` (q n for Poisson sampling, which keeps the sensitivity of
    the sum at `clip` whatever the drawn batch size). Returns it and the per-example norms."""
    grads = per_example_gradients(per_example_loss, params, x, y)
    clipped, norms = clip_per_example(grads, dp.clip)
    summed = jax.tree.map(lambda g: jnp.tensordot(sample.astype(g.dtype), g, axes=1), clipped)
    noise = gaussian_noise_like(summed, dp.noise_multiplier * dp.clip, key)
    total = jax.tree.map(jnp.add, summed, noise)
    return jax.tree.map(lambda g: g / expected_batch.astype(g.dtype), total), norms


def clip_update(update: Any, clip: float) -> Any:
    """`update` scaled by min(1, clip / its L2 norm over all leaves) (client-level DP)."""
    norm = tree_norm(update)
    factor = jnp.minimum(1.0, clip / jnp.maximum(norm, 1e-30))
    return jax.tree.map(lambda u: u * factor.astype(u.dtype), update)


def client_dp_aggregate(global_params: Any, client_params: Any, dp: ClientDP, key: jax.Array):
    """The client-level DP aggregate of K hospitals: `client_params` has a leading hospital
    axis; each update (client minus global) is clipped to `dp.clip`, the clipped updates
    are averaged with equal weights, N(0, (sigma clip / K)^2) is added per coordinate, and
    the result is added to the global parameters (Flower's client-side fixed clipping)."""
    k = jax.tree.leaves(client_params)[0].shape[0]
    updates = jax.tree.map(lambda c, g: c - g[None], client_params, global_params)
    clipped = jax.vmap(lambda u: clip_update(u, dp.clip))(updates)
    mean = jax.tree.map(lambda u: jnp.mean(u, axis=0), clipped)
    noise = gaussian_noise_like(mean, dp.noise_multiplier * dp.clip / k, key)
    return jax.tree.map(lambda g, m, z: g + m + z, global_params, mean, noise)


# ----------------------------------------------------------------------------- accounting


def _accountant(kind: Accountant):
    import dp_accounting

    if kind == "pld":
        return dp_accounting.pld.PLDAccountant()
    if kind == "rdp":
        return dp_accounting.rdp.RdpAccountant()
    raise ValueError(f"accountant must be 'pld' or 'rdp', got {kind!r}.")


def _check_delta(delta: float) -> float:
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}.")
    return float(delta)


def record_event(sampling_rate: float, noise_multiplier: float, steps: int):
    """The dp-accounting event of DP-SGD: `steps` compositions of the Poisson-subsampled
    Gaussian mechanism (rate q, multiplier sigma)."""
    import dp_accounting

    if not 0.0 < sampling_rate <= 1.0:
        raise ValueError(f"sampling_rate must be in (0, 1], got {sampling_rate}.")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps}.")
    gaussian = dp_accounting.GaussianDpEvent(float(noise_multiplier))
    if sampling_rate < 1.0:
        gaussian = dp_accounting.PoissonSampledDpEvent(float(sampling_rate), gaussian)
    return dp_accounting.SelfComposedDpEvent(gaussian, int(steps))


def client_event(noise_multiplier: float, rounds: int):
    """The dp-accounting event of client-level DP with every hospital in every round:
    `rounds` compositions of the Gaussian mechanism (no amplification by sampling)."""
    import dp_accounting

    if int(rounds) != rounds or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds}.")
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(float(noise_multiplier)), int(rounds)
    )


def epsilon_of(event, delta: float = DELTA, accountant: Accountant = "pld") -> float:
    """Epsilon at `delta` of a dp-accounting event, from the accountant."""
    delta = _check_delta(delta)
    acc = _accountant(accountant)
    with _quiet_absl():
        acc.compose(event)
        return float(acc.get_epsilon(delta))


@contextlib.contextmanager
def _quiet_absl():
    """dp-accounting's RDP accountant logs (absl, WARNING) each fractional order whose series
    does not converge and leaves that order out (a looser, still valid bound): not news."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def record_epsilon(
    sampling_rate: float,
    noise_multiplier: float,
    steps: int,
    delta: float = DELTA,
    *,
    accountant: Accountant = "pld",
) -> float:
    """A record's epsilon at `delta` after `steps` DP-SGD steps (Poisson rate q, multiplier
    sigma); inf without noise."""
    if noise_multiplier <= 0:
        return math.inf
    return epsilon_of(record_event(sampling_rate, noise_multiplier, steps), delta, accountant)


def client_epsilon(
    noise_multiplier: float, rounds: int, delta: float = DELTA, *, accountant: Accountant = "pld"
) -> float:
    """A hospital's epsilon at `delta` after `rounds` rounds of client-level DP (all
    hospitals every round); inf without noise."""
    if noise_multiplier <= 0:
        return math.inf
    return epsilon_of(client_event(noise_multiplier, rounds), delta, accountant)


def _calibrate(make_event, epsilon: float, delta: float, accountant: Accountant) -> float:
    """The smallest parameter whose event has epsilon <= `epsilon` at `delta`, to 1e-3:
    bracketed with the RDP accountant (cheap at any sigma), then searched with the chosen
    one. The PLD accountant is not asked about a tiny sigma: its privacy loss distribution
    grows without bound there (gigabytes)."""
    import dp_accounting

    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be positive and finite, got {epsilon}.")
    delta = _check_delta(delta)

    def search(kind: Accountant, bracket) -> float:
        with _quiet_absl():
            return float(
                dp_accounting.calibrate_dp_mechanism(
                    lambda: _accountant(kind), make_event, float(epsilon), delta, bracket, tol=1e-3
                )
            )

    rdp = search("rdp", dp_accounting.LowerEndpointAndGuess(1e-2, 1.0))
    if accountant == "rdp":
        return rdp
    high = rdp
    while epsilon_of(make_event(high), delta, accountant) > epsilon:  # PLD above RDP: rare
        high *= 1.5
    low = max(0.25 * high, 0.2)
    if epsilon_of(make_event(low), delta, accountant) <= epsilon:
        return low
    return search(accountant, dp_accounting.ExplicitBracketInterval(low, high))


def record_noise_multiplier(
    sampling_rate: float,
    steps: int,
    epsilon: float,
    delta: float = DELTA,
    *,
    accountant: Accountant = "pld",
) -> float:
    """The smallest DP-SGD noise multiplier (to 1e-3) whose record-level epsilon at `delta`
    after `steps` steps at Poisson rate q is at most `epsilon`
    (`dp_accounting.calibrate_dp_mechanism`)."""
    return _calibrate(lambda s: record_event(sampling_rate, s, steps), epsilon, delta, accountant)


def client_noise_multiplier(
    rounds: int, epsilon: float, delta: float = DELTA, *, accountant: Accountant = "pld"
) -> float:
    """The smallest client-level noise multiplier (to 1e-3) whose per-hospital epsilon at
    `delta` after `rounds` rounds (every hospital every round) is at most `epsilon`."""
    return _calibrate(lambda s: client_event(s, rounds), epsilon, delta, accountant)
