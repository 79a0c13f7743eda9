"""Training the networks of `surrogates._networks`: `Training` (the hyperparameters) and
`train` (the loop).

- A deep ensemble (Lakshminarayanan B, Pritzel A, Blundell C. Simple and scalable
  predictive uncertainty estimation using deep ensembles. NeurIPS 2017) of
  `Training.ensemble` members that differ in their initial weights, batch order and
  dropout, all drawn from the fit's key.
- Inputs come standardised, in float32 (the surrogates do that); so do regression
  targets.
- Loss: mean squared error of the standardised targets (regression), binary cross-entropy
  of one logit (classification). Optimiser: AdamW with gradient clipping at norm 1.
- Early stopping: `validation_fraction` of the training part is held out; each member
  stops when it has gone `patience` epochs without improving its validation loss (or
  after `epochs`) and keeps the weights of its best epoch.
- Training is one jitted function per epoch (a `lax.scan` over the minibatches, then the
  validation loss), shared by the members and by later fits with the same shapes. XLA runs
  networks this small on one core, so the members train in parallel threads, one per
  core.
- Deterministic: the same data and key give the same ensemble, bit for bit, on the same
  machine, whatever the number of threads.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ._networks import DTYPE, Ensemble, split_params


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """`value` as an int, if it is an integer (not a bool) >= `minimum`."""
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def fraction(name: str, value: Any, low: float, high: float) -> float:
    """`value` as a float, if it is in the open interval (`low`, `high`)."""
    value = float(value)
    if not low < value < high:
        raise ValueError(f"{name} must be in ({low}, {high}), got {value}.")
    return value


def _non_negative(name: str, value: Any) -> float:
    if not value >= 0.0:
        raise ValueError(f"{name} must be >= 0, got {value}.")
    return float(value)


@dataclasses.dataclass(frozen=True)
class Training:
    """How a neural surrogate trains its networks (`MLPSurrogate`, `LSTMSurrogate`,
    `TransformerSurrogate`, and the head of `HybridSurrogate`).

    Each of those surrogates takes either `training=Training(...)` or the same fields as
    keywords (`MLPSurrogate(epochs=100)`), not both. Every field of a `Training` is set:
    the defaults below are those of `LSTMSurrogate` and `TransformerSurrogate`, and each
    surrogate's own are its `default_training` (for instance
    `dataclasses.replace(MLPSurrogate.default_training, epochs=100)` keeps the MLP's
    other defaults). Saved surrogates store the fields with their other hyperparameters.

    **Arguments:**

    - `epochs`: the most passes over the fitting part (the training part less the
      validation part) that a member makes; early stopping (`patience`) usually ends it
      sooner. An integer >= 1.
    - `batch_size`: patients per minibatch, an integer >= 1 (at most the fitting part).
      Each epoch shuffles the fitting part and drops the rows left over after the last
      full minibatch.
    - `learning_rate`: AdamW's step size (> 0, constant), on the standardised scale of the
      inputs and targets.
    - `weight_decay`: AdamW's decoupled weight decay (>= 0): each step shrinks every
      weight by `learning_rate * weight_decay` times itself, biases and normalisation
      scales included.
    - `ensemble`: members of the deep ensemble, an integer >= 1. With 1 there is no spread
      between members and predictions have no `sd`.
    - `patience`: epochs, an integer >= 1: a member stops when its validation loss has not
      improved for this many epochs, and keeps the weights of its best epoch.
    - `validation_fraction`: the share of the training part (in (0, 0.5); at least one
      patient) held out, at random with the fit's key, for early stopping.
    """

    epochs: int = 200
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    ensemble: int = 3
    patience: int = 10
    validation_fraction: float = 0.15

    def __post_init__(self):
        checked = {
            "epochs": positive_int("epochs", self.epochs),
            "batch_size": positive_int("batch_size", self.batch_size),
            "learning_rate": fraction("learning_rate", self.learning_rate, 0.0, math.inf),
            "weight_decay": _non_negative("weight_decay", self.weight_decay),
            "ensemble": positive_int("ensemble", self.ensemble),
            "patience": positive_int("patience", self.patience),
            "validation_fraction": fraction(
                "validation_fraction", self.validation_fraction, 0.0, 0.5
            ),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)  # (frozen: the normalised values)


def resolve_training(
    defaults: Training, training: Training | None, who: str, **given: float | None
) -> Training:
    """The surrogate's `Training`: `training` as given, or `defaults` with the keywords
    `given` that are not None; both at once is an error."""
    named = {name: value for name, value in given.items() if value is not None}
    if training is None:
        return dataclasses.replace(defaults, **named)
    if not isinstance(training, Training):
        raise TypeError(f"{who}: training must be a Training, got {type(training).__name__}.")
    if named:
        raise ValueError(
            f"{who}: give the training hyperparameters either as training=Training(...) or "
            f"as keywords, not both (got training and {', '.join(sorted(named))})."
        )
    return training


# ----------------------------------------------------------------------------- the loop


@dataclasses.dataclass(frozen=True)
class _Settings:
    """What the compiled epoch depends on besides the shapes (hashable: a static argument)."""

    classify: bool
    batch_size: int
    n_batches: int
    learning_rate: float
    weight_decay: float


def _optimiser(settings: _Settings) -> optax.GradientTransformation:
    return optax.flatten(
        optax.chain(
            optax.clip_by_global_norm(1.0),
            optax.adamw(settings.learning_rate, weight_decay=settings.weight_decay),
        )
    )


def _loss(out, y, mask, classify: bool):
    """Mean loss over the rows where `mask` is 1."""
    if classify:
        per_row = optax.sigmoid_binary_cross_entropy(out[:, 0], y[:, 0])
    else:
        per_row = jnp.mean((out - y) ** 2, axis=-1)
    return jnp.sum(per_row * mask) / jnp.maximum(jnp.sum(mask), 1.0)


@partial(jax.jit, static_argnames=("graphdef", "settings"))
def _epoch(
    params,
    opt_state,
    best,
    best_loss,
    since,
    key,
    epoch,
    order,
    fit,
    val,
    *,
    graphdef,
    settings: _Settings,
):
    """One epoch of one member, then its validation loss and the early-stopping
    bookkeeping. `order` (batches, batch size): the rows of each minibatch; `fit` =
    (static, sequence, y); `val` = (static, sequence, y, mask) in chunks of equal size
    (leading chunk axis). Dropout keys come from the member's `key` and `epoch`."""
    tx = _optimiser(settings)
    static_fit, sequence_fit, y_fit = fit

    def loss(p, static, sequence, y, k):
        net = nnx.merge(graphdef, p)
        mask = jnp.ones(y.shape[0], DTYPE)
        return _loss(net(static, sequence, k), y, mask, settings.classify)

    def step(carry, xs):
        p, state = carry
        index, k = xs
        sequence = None if sequence_fit is None else sequence_fit[index]
        value, grads = jax.value_and_grad(loss)(p, static_fit[index], sequence, y_fit[index], k)
        # optax mixes Python floats with its int32 step count (1 - b1**count), which
        # jax_numpy_dtype_promotion="strict" (the tests' setting) refuses.
        with jax.numpy_dtype_promotion("standard"):
            updates, state = tx.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), value

    keys = jax.random.split(jax.random.fold_in(key, epoch), settings.n_batches)
    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (order, keys))

    def chunk(p, xs):
        # The parameters ride in the carry: nnx.RNN's scan refuses modules whose values
        # come from an outer trace (a closure).
        s, q, y, mask = xs
        net = nnx.merge(graphdef, p)
        return p, _loss(net(s, q, None), y, mask, settings.classify) * jnp.sum(mask)

    _, total = jax.lax.scan(chunk, params, val)
    val_loss = jnp.sum(total) / jnp.sum(val[3])
    improved = val_loss < best_loss
    best = jax.tree.map(lambda new, old: jnp.where(improved, new, old), params, best)
    best_loss = jnp.where(improved, val_loss, best_loss)
    since = jnp.where(improved, 0, since + 1)
    return params, opt_state, best, best_loss, since, jnp.mean(losses), val_loss


def _chunked(x: np.ndarray, size: int) -> np.ndarray:
    """`x` padded with zeros to a multiple of `size` rows, split into (chunks, size, ...)."""
    chunks = -(-x.shape[0] // size)
    x = np.pad(x, [(0, chunks * size - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
    return x.reshape(chunks, size, *x.shape[1:])


@partial(jax.jit, static_argnames=("settings",))
def _optimiser_init(params, *, settings: _Settings):
    return _optimiser(settings).init(params)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def train(
    make: Callable[[nnx.Rngs], nnx.Module],
    static: np.ndarray,
    sequence: np.ndarray | None,
    y: np.ndarray,
    *,
    training: Training,
    key: int,
    classify: bool,
    per_member: bool = False,
    who: str,
) -> tuple[Ensemble, dict[str, np.ndarray]]:
    """Train `training.ensemble` networks built by `make` on standardised float32 inputs
    (`y`: (n, outputs), the standardised targets or the 0/1 labels; with
    `per_member`, `static` is (members, n, p): each member its own inputs); returns the
    ensemble (each member at its best validation loss) and the loss history (epochs,
    members), NaN after a member stopped.

    The members train in threads, as many at once as there are cores: XLA runs these
    small networks on one core, and JAX releases the GIL while it computes. Each member's
    numbers depend only on its own inputs and keys, so the result does not depend on the
    threads."""
    members, epochs, patience = training.ensemble, training.epochs, training.patience
    n = y.shape[0]
    order = np.random.default_rng((key, 1)).permutation(n)
    n_val = max(round(training.validation_fraction * n), 1)
    if n - n_val < 2:
        raise ValueError(f"{who}: {n} patients are too few to hold out a validation part.")
    val_index, fit_index = np.sort(order[:n_val]), np.sort(order[n_val:])
    batch = min(training.batch_size, fit_index.size)
    settings = _Settings(
        classify=classify,
        batch_size=batch,
        n_batches=fit_index.size // batch,
        learning_rate=float(training.learning_rate),
        weight_decay=float(training.weight_decay),
    )
    chunk = min(n_val, 1024)

    def data(x_static):
        fit = (
            jnp.asarray(x_static[fit_index]),
            None if sequence is None else jnp.asarray(sequence[fit_index]),
            jnp.asarray(y[fit_index]),
        )
        val = (
            jnp.asarray(_chunked(x_static[val_index], chunk)),
            None if sequence is None else jnp.asarray(_chunked(sequence[val_index], chunk)),
            jnp.asarray(_chunked(y[val_index], chunk)),
            jnp.asarray(_chunked(np.ones(n_val, np.float32), chunk)),
        )
        return fit, val

    shared = None if per_member else data(static)
    graphdef, starts = None, []
    for m, k in enumerate(jax.random.split(jax.random.key(key), members)):
        k_init, k_train = jax.random.split(k)
        graphdef, params = split_params(make(nnx.Rngs(params=k_init)), who)
        opt_state = _optimiser_init(params, settings=settings)
        starts.append((params, opt_state, k_train, data(static[m]) if per_member else shared))
    used = settings.n_batches * batch
    compiled = threading.Event()

    def run(m: int):
        params, opt_state, member_key, (fit, val) = starts[m]
        best, best_loss, since = params, jnp.asarray(jnp.inf, DTYPE), jnp.asarray(0, jnp.int32)
        # Shuffling on the host: a permutation inside the compiled epoch costs a second
        # of compilation and nothing at run time.
        shuffle = np.random.default_rng((key, 2, m))
        history = []
        for epoch in range(epochs):
            order = shuffle.permutation(fit_index.size)[:used].reshape(-1, batch)
            params, opt_state, best, best_loss, since, train_loss, val_loss = _epoch(
                params,
                opt_state,
                best,
                best_loss,
                since,
                member_key,
                jnp.asarray(epoch, jnp.int32),
                jnp.asarray(order, jnp.int32),
                fit,
                val,
                graphdef=graphdef,
                settings=settings,
            )
            compiled.set()
            history.append((float(train_loss), float(val_loss)))
            if not np.isfinite(history[-1][0]):
                raise FloatingPointError(
                    f"{who}: the training loss of member {m} is not finite at epoch {epoch}; "
                    f"lower learning_rate (now {training.learning_rate})."
                )
            if int(since) >= patience:
                break
        return best, np.array(history)

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(members, _cores())) as pool:
        # The first member compiles the epoch alone; the others then reuse it.
        first = pool.submit(run, 0)
        while not compiled.wait(0.05) and not first.done():
            pass
        futures = [first] + [pool.submit(run, m) for m in range(1, members)]
        results = [f.result() for f in futures]
    params = jax.tree.map(
        lambda *leaves: jnp.asarray(np.stack([np.asarray(x) for x in leaves])),
        *[best for best, _ in results],
    )
    longest = max(len(h) for _, h in results)
    history = np.full((longest, members, 2), np.nan)
    for m, (_, h) in enumerate(results):
        history[: len(h), m] = h
    return Ensemble(graphdef, params), {"train": history[..., 0], "validation": history[..., 1]}
