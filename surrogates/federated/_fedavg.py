"""The numerical work of a federated round, in pure JAX/optax: local training at a hospital
(SGD or Adam, the FedProx proximal term, DP-SGD), and the server's aggregation (FedAvg,
FedAdam, client-level DP). The Flower apps (`surrogates.federated._surrogate_apps`) call
these functions; `federated_training` runs the same rounds without Flower, all hospitals of
a round vmapped in one compiled call.

- `local_update(loss, params, global, x, y, mask, key, local)`: `local.steps` steps on one
  hospital's records (`mask` marks the real rows of a padded array). Each step draws a
  Poisson sample of the records (each in with probability q = batch_size / n, as DP-SGD's
  accounting assumes; the same sampling without DP). Without DP the step's gradient is the
  mean gradient of the drawn records; with `local.dp` (a `RecordDP`) it is DP-SGD's noisy
  clipped sum over the expected batch q n (`surrogates.federated._dp.dp_sgd_gradient`).
  FedProx (Li T et al. Federated optimization in heterogeneous networks. MLSys 2020) adds
  mu (w - w_global) to the gradient, after the noise (it depends on no record). The
  optimiser starts afresh each round.
- `aggregate(global, client_params, n, key, server)`: FedAvg (McMahan HB et al.
  Communication-efficient learning of deep networks from decentralized data. AISTATS 2017)
  weights hospital k by n_k / sum n; with `server.client_dp` the updates are clipped and
  averaged with equal weights and noised (`client_dp_aggregate`). FedAdam (Reddi S et al.
  Adaptive federated optimization. ICLR 2021) then takes the averaged update
  delta = avg - global as a pseudo-gradient, with Flower 1.42's formulas (`fedadam_step`:
  m = b1 m + (1 - b1) delta, v = b2 v + (1 - b2) delta^2, w += eta_t m / (sqrt(v) + tau),
  eta_t = eta sqrt(1 - b2^(t+1)) / (1 - b1^(t+1)) at round t), so that this simulation and
  Flower's strategy compute the same numbers.
- Keys: hospital k's key in round r (1-based) is `round_key(key, r, k)`, here and in the
  Flower ClientApp, so the two give the same model for the same seed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._dp import ClientDP, RecordDP, client_dp_aggregate, dp_sgd_gradient

Loss = Callable[[Any, Any, Any], jax.Array]
Strategy = Literal["fedavg", "fedprox", "fedadam"]


@dataclasses.dataclass(frozen=True)
class LocalTraining:
    """A hospital's work in one round.

    - `steps`: optimiser steps per round; `batch_size`: the expected batch (Poisson rate
      q = batch_size / n, at most 1), or `sampling_rate`: q itself, the same at every
      hospital whatever its size (then DP-SGD's record-level epsilon is the same at every
      hospital for one noise multiplier); `learning_rate`; `optimizer`: "sgd" or "adam"
      (fresh each round).
    - `proximal_mu`: FedProx's mu (0: plain FedAvg's local objective).
    - `dp`: a `RecordDP` for DP-SGD (record-level privacy), or None.
    """

    steps: int = 10
    batch_size: int = 64
    learning_rate: float = 0.01
    optimizer: Literal["sgd", "adam"] = "adam"
    proximal_mu: float = 0.0
    dp: RecordDP | None = None
    sampling_rate: float | None = None

    def __post_init__(self):
        if int(self.steps) != self.steps or self.steps < 1:
            raise ValueError(f"LocalTraining.steps must be an integer >= 1, got {self.steps}.")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise ValueError(
                f"LocalTraining.batch_size must be an integer >= 1, got {self.batch_size}."
            )
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"LocalTraining.learning_rate must be > 0, got {self.learning_rate}.")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(
                f"LocalTraining.optimizer must be 'sgd' or 'adam', got {self.optimizer!r}."
            )
        if self.sampling_rate is not None and not 0 < self.sampling_rate <= 1:
            raise ValueError(
                f"LocalTraining.sampling_rate must be in (0, 1], got {self.sampling_rate}."
            )
        if not self.proximal_mu >= 0:
            raise ValueError(f"LocalTraining.proximal_mu must be >= 0, got {self.proximal_mu}.")

    def rate(self, n: int) -> float:
        """q: each record's chance of being in a step's batch at a hospital of n records."""
        if self.sampling_rate is not None:
            return float(self.sampling_rate)
        return min(1.0, self.batch_size / n)


@dataclasses.dataclass(frozen=True)
class Server:
    """The server's side of a round: `strategy` ("fedavg", "fedprox": FedAvg's aggregation,
    with the clients' proximal term; "fedadam"), FedAdam's `eta`, `beta_1`, `beta_2`, `tau`
    (Flower 1.42's defaults), and `client_dp` (a `ClientDP`) for client-level DP."""

    strategy: Strategy = "fedavg"
    eta: float = 0.1
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3
    client_dp: ClientDP | None = None

    def __post_init__(self):
        if self.strategy not in ("fedavg", "fedprox", "fedadam"):
            raise ValueError(
                f"Server.strategy must be 'fedavg', 'fedprox' or 'fedadam', got {self.strategy!r}."
            )


def round_key(key: jax.Array, server_round: int, client: int) -> jax.Array:
    """Hospital `client`'s key in round `server_round` (1-based)."""
    return jax.random.fold_in(jax.random.fold_in(key, server_round), client)


def server_key(key: jax.Array, server_round: int) -> jax.Array:
    """The server's noise key in round `server_round` (client-level DP); round 0's branch
    of the key, which no hospital uses (rounds start at 1)."""
    return jax.random.fold_in(jax.random.fold_in(key, 0), server_round)


def _optimizer(local: LocalTraining) -> optax.GradientTransformation:
    if local.optimizer == "sgd":
        return optax.sgd(local.learning_rate)
    return optax.adam(local.learning_rate)


@functools.partial(jax.jit, static_argnames=("loss", "local"))
def local_update(
    loss: Loss,
    params: Any,
    global_params: Any,
    x: Any,
    y: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    *,
    local: LocalTraining,
) -> tuple[Any, dict[str, jax.Array]]:
    """`local.steps` steps from `params` on one hospital's records (see the module
    docstring). `loss(params, x_i, y_i)` is one record's loss; `x` (a tree) and `y` have a
    leading record axis, padded rows have `mask` 0. Returns the new parameters and the
    step-averaged training loss of the drawn batches and fraction of clipped gradients
    (diagnostics for the hospital: not differentially private, never sent in DP runs)."""
    n = jnp.sum(mask)
    if local.sampling_rate is not None:
        q = jnp.asarray(local.sampling_rate, mask.dtype)
    else:
        q = jnp.minimum(1.0, local.batch_size / jnp.maximum(n, 1.0))
    tx = _optimizer(local)
    state = tx.init(params)

    def mean_loss(p, sample):
        per = jax.vmap(loss, in_axes=(None, 0, 0))(p, x, y)
        return jnp.sum(per * sample) / jnp.maximum(jnp.sum(sample), 1.0)

    def step(carry, k):
        p, s = carry
        k_sample, k_noise = jax.random.split(k)
        sample = jax.random.bernoulli(k_sample, q, mask.shape).astype(mask.dtype) * mask
        value = mean_loss(p, sample)
        if local.dp is None:
            grads = jax.grad(mean_loss)(p, sample)
            clipped = jnp.zeros((), mask.dtype)
        else:
            grads, norms = dp_sgd_gradient(loss, p, x, y, sample, q * n, local.dp, k_noise)
            over = (norms > local.dp.clip).astype(sample.dtype)
            clipped = jnp.sum(over * sample) / jnp.maximum(jnp.sum(sample), 1.0)
        if local.proximal_mu > 0:
            grads = jax.tree.map(
                lambda g, w, w0: g + local.proximal_mu * (w - w0), grads, p, global_params
            )
        # optax mixes Python floats with its int32 step count, which the strict dtype
        # promotion of the tests refuses.
        with jax.numpy_dtype_promotion("standard"):
            updates, s = tx.update(grads, s, p)
            p = optax.apply_updates(p, updates)
        return (p, s), (value, clipped)

    (params, _), (values, clipped) = jax.lax.scan(
        step, (params, state), jax.random.split(key, local.steps)
    )
    return params, {"loss": jnp.mean(values), "clipped": jnp.mean(clipped)}


def fedavg(client_params: Any, weights: jax.Array) -> Any:
    """The weighted average of the hospitals' parameters (leading hospital axis)."""
    w = weights / jnp.sum(weights)
    return jax.tree.map(lambda c: jnp.tensordot(w.astype(c.dtype), c, axes=1), client_params)


def fedadam_init(params: Any) -> dict[str, Any]:
    """FedAdam's server state (first and second moments, zero)."""
    zeros = jax.tree.map(jnp.zeros_like, params)
    return {"m": zeros, "v": zeros}


def fedadam_step(
    global_params: Any, averaged: Any, state: dict[str, Any], server_round: int, server: Server
) -> tuple[Any, dict[str, Any]]:
    """One FedAdam server step on the pseudo-gradient delta = averaged - global, with the
    formulas of Flower 1.42's `FedAdam` (module docstring)."""
    delta = jax.tree.map(jnp.subtract, averaged, global_params)
    b1, b2 = server.beta_1, server.beta_2
    m = jax.tree.map(lambda m0, d: b1 * m0 + (1 - b1) * d, state["m"], delta)
    v = jax.tree.map(lambda v0, d: b2 * v0 + (1 - b2) * d * d, state["v"], delta)
    t = jnp.asarray(server_round, jnp.result_type(float)) + 1.0
    eta = server.eta * jnp.sqrt(1 - b2**t) / (1 - b1**t)
    new = jax.tree.map(
        lambda w, mm, vv: w + eta.astype(w.dtype) * mm / (jnp.sqrt(vv) + server.tau),
        global_params,
        m,
        v,
    )
    return new, {"m": m, "v": v}


@functools.partial(jax.jit, static_argnames=("server",))
def aggregate(
    global_params: Any,
    client_params: Any,
    n: jax.Array,
    key: jax.Array,
    server: Server,
    state: dict[str, Any] | None = None,
    server_round: Any = 1,
) -> tuple[Any, dict[str, Any] | None]:
    """The new global parameters from the hospitals' (leading hospital axis), and the
    server state (FedAdam's moments; None otherwise)."""
    if server.client_dp is not None:
        averaged = client_dp_aggregate(global_params, client_params, server.client_dp, key)
    else:
        averaged = fedavg(client_params, n)
    if server.strategy != "fedadam":
        return averaged, None
    return fedadam_step(
        global_params, averaged, state or fedadam_init(global_params), server_round, server
    )


# ----------------------------------------------------------------------------- simulation


@dataclasses.dataclass(frozen=True)
class Client:
    """One hospital's training records: `x` (a tree of arrays with a leading record axis)
    and `y` (n,)."""

    x: Any
    y: np.ndarray

    def __len__(self) -> int:
        return int(np.shape(self.y)[0])


def stack_clients(clients: Sequence[Client]) -> tuple[Any, jax.Array, jax.Array, jax.Array]:
    """The hospitals' records padded to the largest and stacked: (x, y, mask, n)."""
    size = max(len(c) for c in clients)

    def pad(a):
        a = np.asarray(a)
        return np.pad(a, [(0, size - a.shape[0])] + [(0, 0)] * (a.ndim - 1))

    xs = jax.tree.map(
        lambda *leaves: jnp.asarray(np.stack([pad(v) for v in leaves])), *[c.x for c in clients]
    )
    y = jnp.asarray(np.stack([pad(c.y) for c in clients]))
    mask = jnp.asarray(np.stack([pad(np.ones(len(c), np.asarray(c.y).dtype)) for c in clients]))
    n = jnp.asarray(np.array([len(c) for c in clients], dtype=np.asarray(clients[0].y).dtype))
    return xs, y, mask, n


@functools.partial(jax.jit, static_argnames=("loss", "local"))
def _clients_round(loss, params, x, y, mask, keys, *, local):
    return jax.vmap(
        lambda xx, yy, mm, kk: local_update(loss, params, params, xx, yy, mm, kk, local=local)
    )(x, y, mask, keys)


def federated_training(
    loss: Loss,
    params: Any,
    clients: Sequence[Client],
    *,
    rounds: int,
    local: LocalTraining,
    server: Server = Server(),
    key: jax.Array,
    callback: Callable[[int, Any], None] | None = None,
) -> Any:
    """`rounds` rounds of federated training from `params` over `clients` (every hospital
    every round), without Flower: the same `local_update` and `aggregate` as the Flower
    apps, the hospitals of a round in one vmapped call. `callback(round, params)` after each
    round. Returns the final global parameters."""
    if server.strategy == "fedprox" and local.proximal_mu <= 0:
        raise ValueError("Server.strategy 'fedprox' needs LocalTraining.proximal_mu > 0.")
    x, y, mask, n = stack_clients(clients)
    state = None
    k = len(clients)
    for r in range(1, rounds + 1):
        keys = jnp.stack([round_key(key, r, i) for i in range(k)])
        client_params, _ = _clients_round(loss, params, x, y, mask, keys, local=local)
        params, state = aggregate(params, client_params, n, server_key(key, r), server, state, r)
        if callback is not None:
            callback(r, params)
    return params
