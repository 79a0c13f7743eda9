"""Neural surrogates in Flax (`flax.nnx`) and optax: an LSTM, a multimodal Transformer and a
stacked hybrid of both with XGBoost.

- `LSTMSurrogate`: the sequence (n, T, c) runs through an LSTM (Hochreiter S, Schmidhuber J.
  Neural Comput 1997;9:1735-1780); its last hidden state, joined to an MLP embedding of the
  static features, feeds a small head.
- `TransformerSurrogate`: every static feature and every time step is a token, with a
  learned [CLS] token, in a small pre-norm Transformer encoder (Vaswani A et al. Attention
  is all you need. NeurIPS 2017); the [CLS] output feeds the head.
- `HybridSurrogate`: XGBoost, an LSTM and a Transformer fitted on one part of the data; a
  small MLP head trained on their representations of the other part (stacking: Wolpert DH.
  Stacked generalization. Neural Netw 1992;5:241-259).

Common to the two networks (and the hybrid's head):

- Uncertainty: a deep ensemble (Lakshminarayanan B, Pritzel A, Blundell C. Simple and
  scalable predictive uncertainty estimation using deep ensembles. NeurIPS 2017) of
  `ensemble` members that differ in their initial weights, batch order and dropout (all
  drawn from `key`). The prediction is the members' average; the model's spread `sd` is the
  standard deviation of the member means (of the probabilities, for classifiers), which
  scales the split-conformal interval of `Surrogate.predict`. With `ensemble=1` there is no
  spread and `sd` is None.
- Inputs and regression targets are standardised (mean and standard deviation of the
  training part, stored with the model); sequence channels are standardised per channel.
- Loss: mean squared error of the standardised targets (regression), binary cross-entropy
  of one logit (classification). Optimiser: AdamW with gradient clipping at norm 1.
- Early stopping: `validation_fraction` of the training part is held out; each member
  stops when it has gone `patience` epochs without improving its validation loss (or
  after `epochs`) and keeps the weights of its best epoch.
- Training is one jitted function per epoch (a `lax.scan` over the minibatches, then the
  validation loss), shared by the members and by later fits with the same shapes. XLA runs
  networks this small on one core, so the members train in parallel threads, one per
  core. Predictions run the members together (vmapped) in chunks of up to 4,096 patients.
- The networks compute in float32 (the precision of the weights); inputs are cast to it
  after standardisation. Predictions are returned as float64 numpy arrays.
- Deterministic: the same data and `key` give the same predictions, bit for bit, on the
  same machine.
- Saved with numpy only: the members' weights (one array per parameter, with the member
  axis first) and the standardisation statistics in `flax.npz`; `load` rebuilds the
  network from the hyperparameters and restores the weights, so predictions after loading
  are identical.
"""

from __future__ import annotations

import abc
import concurrent.futures
import dataclasses
import functools
import itertools
import math
import os
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ._base import Inputs, Surrogate, Task

_DTYPE = jnp.float32
# Patients per forward pass when predicting: the next power of two at or above n, between
# these bounds (a few compiled shapes, bounded memory, and few dispatches: each costs about
# half a millisecond, as much as a small network's arithmetic for 1,000 patients).
_CHUNK_MIN, _CHUNK_MAX = 64, 4096
_MODEL_FILE = "flax.npz"


def _check_task(task: str) -> Task:
    if task not in ("regression", "classification"):
        raise ValueError(f"task must be 'regression' or 'classification', got {task!r}.")
    return task  # type: ignore[return-value]


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _fraction(name: str, value: Any, low: float, high: float) -> float:
    value = float(value)
    if not low < value < high:
        raise ValueError(f"{name} must be in ({low}, {high}), got {value}.")
    return value


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function, without overflow warnings for large |x|."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _scale(x: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation over `axes` (1 where a column is constant)."""
    mean = x.mean(axis=axes)
    sd = x.std(axis=axes)
    return mean, np.where(sd > 1e-12 * np.maximum(np.abs(mean), 1.0), sd, 1.0)


# ----------------------------------------------------------------------------- networks
#
# Every network is called as `net(static (B, p), sequence (B, T, c) or None, key)`, where
# `key` is a PRNG key in training (dropout on) and None when predicting. `represent`
# returns the pooled hidden state that the last (linear) layer reads.


def _host_init(kind: str, stddev: float = 1.0):
    """An initialiser drawn with numpy from the bits of the key. flax's own initialisers
    are XLA programs compiled anew for every shape (about half a second each on a CPU,
    seconds for a network); these draw from the same distributions as flax's defaults:
    `"lecun"` (normal truncated at 2 sd, variance 1/fan_in: LeCun Y et al. Efficient
    BackProp. 1998), `"orthogonal"` (Saxe AM et al. ICLR 2014), `"normal"` (`stddev`),
    `"zeros"`, `"ones"`. Called eagerly, when a network is built."""

    def init(key, shape, dtype=_DTYPE):
        shape = tuple(int(n) for n in shape)
        if kind in ("zeros", "ones"):
            return jnp.asarray(np.full(shape, 0.0 if kind == "zeros" else 1.0), dtype)
        bits = np.asarray(jax.random.key_data(key)).ravel()
        rng = np.random.default_rng([int(b) for b in bits])
        if kind == "normal":
            value = stddev * rng.standard_normal(shape)
        elif kind == "lecun":
            z = rng.standard_normal(shape)
            outside = np.abs(z) > 2.0
            while outside.any():
                z[outside] = rng.standard_normal(int(outside.sum()))
                outside = np.abs(z) > 2.0
            # 0.8796 is the standard deviation of a unit normal truncated at +-2.
            value = z * np.sqrt(1.0 / shape[0]) / 0.87962566103423978
        elif kind == "orthogonal":
            rows, cols = int(np.prod(shape[:-1])), shape[-1]
            z = rng.standard_normal((max(rows, cols), min(rows, cols)))
            q, r = np.linalg.qr(z)
            q = q * np.sign(np.diag(r))
            value = (q.T if rows < cols else q).reshape(shape)
        else:
            raise ValueError(f"unknown initialiser {kind!r}")
        return jnp.asarray(value, dtype)

    return init


_LECUN, _ZEROS, _ONES = _host_init("lecun"), _host_init("zeros"), _host_init("ones")


def _linear(n_in: int, n_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(n_in, n_out, kernel_init=_LECUN, bias_init=_ZEROS, rngs=rngs)


def _layer_norm(d: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(d, scale_init=_ONES, bias_init=_ZEROS, rngs=rngs)


def _rngs(key: jax.Array | None) -> nnx.Rngs | None:
    return None if key is None else nnx.Rngs(dropout=key)


class _LSTMNet(nnx.Module):
    def __init__(
        self,
        n_static: int,
        n_channels: int,
        n_out: int,
        *,
        hidden: int,
        layers: int,
        static_hidden: int,
        head_hidden: int,
        dropout: float,
        rngs: nnx.Rngs,
    ):
        self.static = (
            nnx.List(
                [
                    _linear(n_static, static_hidden, rngs),
                    _linear(static_hidden, static_hidden, rngs),
                ]
            )
            if n_static
            else None
        )
        self.rnns = nnx.List(
            [
                nnx.RNN(
                    nnx.OptimizedLSTMCell(
                        n_channels if i == 0 else hidden,
                        hidden,
                        kernel_init=_LECUN,
                        recurrent_kernel_init=_host_init("orthogonal"),
                        bias_init=_ZEROS,
                        rngs=rngs,
                    ),
                    rngs=False,
                )
                for i in range(layers if n_channels else 0)
            ]
        )
        width = (hidden if n_channels else 0) + (static_hidden if n_static else 0)
        self.fuse = _linear(width, head_hidden, rngs)
        self.drop = nnx.Dropout(dropout)
        self.out = _linear(head_hidden, n_out, rngs)
        self.hidden = hidden

    def represent(self, static, sequence, key=None):
        parts = []
        if self.static is not None:
            h = static
            for layer in self.static:
                h = nnx.gelu(layer(h))
            parts.append(h)
        if len(self.rnns):
            h = sequence
            for rnn in self.rnns:
                zeros = jnp.zeros((h.shape[0], self.hidden), h.dtype)
                # The carry is (memory, hidden state); the output, all hidden states.
                h = cast(jax.Array, rnn(h, initial_carry=(zeros, zeros)))
            parts.append(h[:, -1])  # the last hidden state
        h = nnx.gelu(self.fuse(jnp.concatenate(parts, axis=-1)))
        return self.drop(h, deterministic=key is None, rngs=_rngs(key))

    def __call__(self, static, sequence, key=None):
        return self.out(self.represent(static, sequence, key))


class _Block(nnx.Module):
    """Pre-norm encoder block: x + MHA(LN(x)), then x + MLP(LN(x)), dropout on both."""

    def __init__(self, d: int, heads: int, mlp: int, dropout: float, *, rngs: nnx.Rngs):
        self.norm1 = _layer_norm(d, rngs)
        self.attention = nnx.MultiHeadAttention(
            heads,
            d,
            qkv_features=d,
            out_features=d,
            decode=False,
            kernel_init=_LECUN,
            bias_init=_ZEROS,
            keep_rngs=False,
            rngs=rngs,
        )
        self.norm2 = _layer_norm(d, rngs)
        self.mlp_in = _linear(d, mlp, rngs)
        self.mlp_out = _linear(mlp, d, rngs)
        self.drop = nnx.Dropout(dropout)

    def __call__(self, x, rngs: nnx.Rngs | None):
        h = self.attention(self.norm1(x), deterministic=True)
        x = x + self.drop(h, deterministic=rngs is None, rngs=rngs)
        h = self.mlp_out(nnx.gelu(self.mlp_in(self.norm2(x))))
        return x + self.drop(h, deterministic=rngs is None, rngs=rngs)


class _TransformerNet(nnx.Module):
    def __init__(
        self,
        n_static: int,
        n_channels: int,
        n_steps: int,
        n_out: int,
        *,
        d_model: int,
        heads: int,
        layers: int,
        mlp: int,
        dropout: float,
        rngs: nnx.Rngs,
    ):
        init = _host_init("normal", 0.02)
        d = d_model
        self.cls = nnx.Param(init(rngs.params(), (1, d), _DTYPE))
        self.types = nnx.Param(init(rngs.params(), (3, d), _DTYPE))  # [CLS], static, time step
        self.feature_value = nnx.Param(init(rngs.params(), (max(n_static, 1), d), _DTYPE))
        self.feature_id = nnx.Param(init(rngs.params(), (max(n_static, 1), d), _DTYPE))
        self.step_in = _linear(max(n_channels, 1), d, rngs)
        self.step_time = nnx.Param(init(rngs.params(), (max(n_steps, 1), d), _DTYPE))
        self.blocks = nnx.List([_Block(d, heads, mlp, dropout, rngs=rngs) for _ in range(layers)])
        self.norm = _layer_norm(d, rngs)
        self.drop = nnx.Dropout(dropout)
        self.out = _linear(d, n_out, rngs)
        self.n_static = n_static
        self.n_channels = n_channels

    def represent(self, static, sequence, key=None):
        rngs = _rngs(key)
        types = self.types[...]
        batch = static.shape[0]
        cls = self.cls[...] + types[0:1]
        tokens = [jnp.broadcast_to(cls[None], (batch, 1, cls.shape[-1]))]
        if self.n_static:
            # Each feature: its standardised value times a learned vector, plus a learned
            # identity of the feature.
            tokens.append(
                static[:, :, None] * self.feature_value[...][None]
                + (self.feature_id[...] + types[1:2])[None]
            )
        if self.n_channels:
            tokens.append(self.step_in(sequence) + (self.step_time[...] + types[2:3])[None])
        x = self.drop(jnp.concatenate(tokens, axis=1), deterministic=rngs is None, rngs=rngs)
        for block in self.blocks:
            x = block(x, rngs)
        return self.norm(x[:, 0])

    def __call__(self, static, sequence, key=None):
        return self.out(self.represent(static, sequence, key))


class _MLPNet(nnx.Module):
    """A plain multilayer perceptron on the static features (GELU layers)."""

    def __init__(
        self, n_in: int, n_out: int, *, hidden: tuple[int, ...], dropout: float, rngs: nnx.Rngs
    ):
        widths = (n_in, *hidden)
        self.layers = nnx.List([_linear(a, b, rngs) for a, b in itertools.pairwise(widths)])
        self.drop = nnx.Dropout(dropout)
        self.out = _linear(widths[-1], n_out, rngs)

    def represent(self, static, sequence, key=None):
        h = static
        for layer in self.layers:
            h = nnx.gelu(layer(h))
        return self.drop(h, deterministic=key is None, rngs=_rngs(key))

    def __call__(self, static, sequence, key=None):
        return self.out(self.represent(static, sequence, key))


class _HeadNet(nnx.Module):
    """The hybrid's head: an MLP on the joined representations."""

    def __init__(self, n_in: int, n_out: int, *, hidden: int, dropout: float, rngs: nnx.Rngs):
        self.hidden = _linear(n_in, hidden, rngs)
        self.drop = nnx.Dropout(dropout)
        self.out = _linear(hidden, n_out, rngs)

    def represent(self, static, sequence, key=None):
        h = nnx.gelu(self.hidden(static))
        return self.drop(h, deterministic=key is None, rngs=_rngs(key))

    def __call__(self, static, sequence, key=None):
        return self.out(self.represent(static, sequence, key))


# ----------------------------------------------------------------------------- training


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
        mask = jnp.ones(y.shape[0], _DTYPE)
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


@dataclasses.dataclass(frozen=True)
class _Ensemble:
    """Trained members: the network's structure and the stacked parameters (member axis
    first)."""

    graphdef: Any
    params: Any

    @functools.cached_property
    def forward(self) -> Callable[..., jax.Array]:
        """The members' forward pass with these parameters, compiled once per structure and
        input shape.

        The parameters are passed as a flat list of arrays and the compiled function is
        looked up once per ensemble, so a call hashes neither the graph definition nor the
        parameter tree (that cost more than the small networks' arithmetic for a few
        thousand patients). Ensembles of the same structure share the compiled function."""
        leaves, treedef = jax.tree.flatten(self.params)
        return partial(_compiled_forward(self.graphdef, treedef), list(leaves))


@functools.lru_cache(maxsize=64)
def _compiled_forward(graphdef, treedef) -> Callable[..., jax.Array]:
    @partial(jax.jit, static_argnames=("represent", "per_member"))
    def run(flat, static, sequence, *, represent: bool, per_member: bool):
        params = jax.tree.unflatten(treedef, flat)

        def member(p, s, q):
            net = nnx.merge(graphdef, p)
            return net.represent(s, q) if represent else net(s, q)  # type: ignore[attr-defined]

        axis = 0 if per_member else None
        return jax.vmap(member, in_axes=(0, axis, axis))(params, static, sequence)

    return run


def _split_params(net: nnx.Module, who: str):
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise RuntimeError(f"{who}: the network has state other than parameters: {rest}.")
    return graphdef, params


@partial(jax.jit, static_argnames=("settings",))
def _optimiser_init(params, *, settings: _Settings):
    return _optimiser(settings).init(params)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _train(
    make: Callable[[nnx.Rngs], nnx.Module],
    static: np.ndarray,
    sequence: np.ndarray | None,
    y: np.ndarray,
    *,
    members: int,
    key: int,
    classify: bool,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    patience: int,
    validation_fraction: float,
    per_member: bool = False,
    who: str,
) -> tuple[_Ensemble, dict[str, np.ndarray]]:
    """Train `members` networks built by `make` on standardised float32 inputs (with
    `per_member`, `static` is (members, n, p): each member its own inputs); returns the
    ensemble (each member at its best validation loss) and the loss history (epochs,
    members), NaN after a member stopped.

    The members train in threads, as many at once as there are cores: XLA runs these
    small networks on one core, and JAX releases the GIL while it computes. Each member's
    numbers depend only on its own inputs and keys, so the result does not depend on the
    threads."""
    n = y.shape[0]
    order = np.random.default_rng((key, 1)).permutation(n)
    n_val = max(round(validation_fraction * n), 1)
    if n - n_val < 2:
        raise ValueError(f"{who}: {n} patients are too few to hold out a validation part.")
    val_index, fit_index = np.sort(order[:n_val]), np.sort(order[n_val:])
    batch = min(batch_size, fit_index.size)
    settings = _Settings(
        classify=classify,
        batch_size=batch,
        n_batches=fit_index.size // batch,
        learning_rate=float(learning_rate),
        weight_decay=float(weight_decay),
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
        graphdef, params = _split_params(make(nnx.Rngs(params=k_init)), who)
        opt_state = _optimiser_init(params, settings=settings)
        starts.append((params, opt_state, k_train, data(static[m]) if per_member else shared))
    used = settings.n_batches * batch
    compiled = threading.Event()

    def run(m: int):
        params, opt_state, member_key, (fit, val) = starts[m]
        best, best_loss, since = params, jnp.asarray(jnp.inf, _DTYPE), jnp.asarray(0, jnp.int32)
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
                    f"lower learning_rate (now {learning_rate})."
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
    return _Ensemble(graphdef, params), {"train": history[..., 0], "validation": history[..., 1]}


def _apply(
    ensemble: _Ensemble,
    static: np.ndarray,
    sequence: np.ndarray | None,
    *,
    represent: bool = False,
    per_member: bool = False,
) -> np.ndarray:
    """(members, n, outputs or width), in chunks (the last padded; see `_CHUNK_MAX`)."""
    axis = 1 if per_member else 0
    n = static.shape[axis]
    size = min(_CHUNK_MAX, max(_CHUNK_MIN, 1 << max(n - 1, 0).bit_length()))
    outs = []
    for start in range(0, n, size):
        index = np.arange(start, min(start + size, n))
        pad = size - index.size
        s = np.take(static, index, axis=axis)
        s = np.pad(s, [(0, pad) if a == axis else (0, 0) for a in range(s.ndim)])
        q = None if sequence is None else np.pad(sequence[index], [(0, pad), (0, 0), (0, 0)])
        out = ensemble.forward(
            s,  # NumPy arrays go to the compiled function as they are
            q,
            represent=represent,
            per_member=per_member,
        )
        outs.append(np.asarray(out)[:, : index.size])
    return np.concatenate(outs, axis=1).astype(float)


def _save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        savez: Any = np.savez  # (its stub types **arrays as its own keywords)
        savez(f, **arrays)
    tmp.replace(path)


def _params_to_arrays(params, prefix: str = "param:") -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {prefix + jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def _params_from_arrays(
    template, members: int, arrays: Any, where: Path, prefix: str = "param:"
) -> Any:
    """The template's parameters (one member) replaced by the saved stacked arrays."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    expected = {prefix + jax.tree_util.keystr(path) for path, _ in leaves}
    saved = {name for name in arrays.files if name.startswith(prefix)}
    if expected != saved:
        raise ValueError(
            f"{where}: saved parameters do not match the network built from the "
            f"hyperparameters (missing {sorted(expected - saved)}, unexpected "
            f"{sorted(saved - expected)})."
        )
    values = []
    for path, leaf in leaves:
        name = prefix + jax.tree_util.keystr(path)
        value = arrays[name]
        if value.shape != (members, *leaf.shape) or value.dtype != leaf.dtype:
            raise ValueError(
                f"{where}: parameter {name} has shape {value.shape} and dtype {value.dtype}; "
                f"expected {(members, *leaf.shape)} and {leaf.dtype}."
            )
        values.append(jnp.asarray(value))
    return jax.tree_util.tree_unflatten(treedef, values)


# ----------------------------------------------------------------------------- surrogates


class _FlaxSurrogate(Surrogate):
    """What the LSTM and Transformer surrogates share: standardisation, the ensemble, the
    training loop, `represent`, save and load. Subclasses say how to build the network."""

    uses_sequence = True

    def __init__(
        self,
        task: Task,
        *,
        epochs: int,
        batch_size: int,
        learning_rate: float,
        weight_decay: float,
        dropout: float,
        ensemble: int,
        patience: int,
        validation_fraction: float,
        calibration_fraction: float,
        level: float,
    ):
        super().__init__(calibration_fraction=calibration_fraction, level=level)
        self.task = _check_task(task)
        self.epochs = _positive_int("epochs", epochs)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.learning_rate = _fraction("learning_rate", learning_rate, 0.0, math.inf)
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
        self.weight_decay = float(weight_decay)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        self.dropout = float(dropout)
        self.ensemble = _positive_int("ensemble", ensemble)
        self.patience = _positive_int("patience", patience)
        self.validation_fraction = _fraction("validation_fraction", validation_fraction, 0.0, 0.5)
        self.model: _Ensemble | None = None
        self.stats: dict[str, np.ndarray] = {}
        self.dims: dict[str, int] = {}
        self.history: dict[str, np.ndarray] = {}

    def _training_hyperparameters(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "weight_decay": self.weight_decay,
            "dropout": self.dropout,
            "ensemble": self.ensemble,
            "patience": self.patience,
            "validation_fraction": self.validation_fraction,
        }

    @abc.abstractmethod
    def _network(self, rngs: nnx.Rngs) -> nnx.Module:
        """A fresh network for `self.dims` (n_static, n_channels, n_steps, n_out)."""

    # --- standardisation --------------------------------------------------------------

    def _arrays(self, inputs: Inputs) -> tuple[np.ndarray, np.ndarray | None]:
        static = inputs.static.to_numpy(dtype=float)
        static = (static - self.stats["static_mean"]) / self.stats["static_sd"]
        sequence = None
        if inputs.sequence is not None and self.dims["n_channels"]:
            sequence = (inputs.sequence - self.stats["sequence_mean"]) / self.stats["sequence_sd"]
            sequence = sequence.astype(np.float32)
        return static.astype(np.float32), sequence

    def _fit(self, inputs: Inputs, y: np.ndarray, *, key: int) -> None:
        who = f"{self.name}.fit"
        static = inputs.static.to_numpy(dtype=float)
        if static.shape[1] == 0 and inputs.sequence is None:
            raise ValueError(f"{who}: no static features and no sequence: nothing to learn from.")
        mean, sd = _scale(static, (0,))
        self.stats = {"static_mean": mean, "static_sd": sd}
        n_channels = n_steps = 0
        if inputs.sequence is not None:
            n_steps, n_channels = inputs.sequence.shape[1:]
            mean, sd = _scale(inputs.sequence, (0, 1))
            self.stats.update(sequence_mean=mean, sequence_sd=sd)
        target = y.reshape(len(y), -1)
        classify = self.task == "classification"
        if classify:
            self.stats.update(y_mean=np.zeros(1), y_sd=np.ones(1))
        else:
            mean, sd = _scale(target, (0,))
            self.stats.update(y_mean=mean, y_sd=sd)
        self.dims = {
            "n_static": static.shape[1],
            "n_channels": int(n_channels),
            "n_steps": int(n_steps),
            "n_out": target.shape[1],
        }
        z = ((target - self.stats["y_mean"]) / self.stats["y_sd"]).astype(np.float32)
        static_z, sequence_z = self._arrays(inputs)
        self.model, self.history = _train(
            self._network,
            static_z,
            sequence_z,
            z,
            members=self.ensemble,
            key=key,
            classify=classify,
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            patience=self.patience,
            validation_fraction=self.validation_fraction,
            who=who,
        )

    # --- prediction --------------------------------------------------------------------

    def _members(self, inputs: Inputs) -> np.ndarray:
        """Per member predictions (members, n, n_out) on the original scale (the
        probabilities for classifiers)."""
        assert self.model is not None
        out = _apply(self.model, *self._arrays(inputs))
        if self.task == "classification":
            return _sigmoid(out)
        return out * self.stats["y_sd"] + self.stats["y_mean"]

    def _predict(self, inputs: Inputs) -> tuple[np.ndarray, np.ndarray | None]:
        members = self._members(inputs)
        mean = members.mean(axis=0)
        sd = members.std(axis=0) if members.shape[0] > 1 else None
        if self.output_shape == () or self.task == "classification":
            mean = mean[:, 0]
            sd = None if sd is None else sd[:, 0]
        return mean, sd

    def _represent(self, inputs: Inputs) -> np.ndarray:
        assert self.model is not None
        return _apply(self.model, *self._arrays(inputs), represent=True)

    def represent(self, x: Inputs | Any, *, member: int | None = None) -> np.ndarray:
        """The pooled hidden state that the network's last (linear) layer reads: (n, d)
        for one ensemble `member`, or the members' side by side, (n, members * d), when
        `member` is None."""
        self._require_fitted("represent")
        inputs = self._conform(x, f"{self.name}.represent")
        reps = self._represent(inputs)
        if member is None:
            return np.concatenate(list(reps), axis=1)
        if not 0 <= member < reps.shape[0]:
            raise ValueError(
                f"{self.name}.represent: member must be in [0, {reps.shape[0]}), got {member}."
            )
        return reps[member]

    # --- persistence -------------------------------------------------------------------

    def _save_model(self, folder: Path) -> None:
        assert self.model is not None
        arrays = _params_to_arrays(self.model.params)
        arrays.update({f"stat:{k}": v for k, v in self.stats.items()})
        arrays.update({f"dim:{k}": np.asarray(v) for k, v in self.dims.items()})
        _save_arrays(folder / _MODEL_FILE, arrays)

    def _load_model(self, folder: Path) -> None:
        path = folder / _MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; the saved {self.name} is incomplete.")
        with np.load(path, allow_pickle=False) as arrays:
            self.dims = {k[4:]: int(arrays[k]) for k in arrays.files if k.startswith("dim:")}
            self.stats = {k[5:]: arrays[k] for k in arrays.files if k.startswith("stat:")}
            graphdef, template = _split_params(self._network(nnx.Rngs(0)), self.name)
            params = _params_from_arrays(template, self.ensemble, arrays, path)
        self.model = _Ensemble(graphdef, params)


class LSTMSurrogate(_FlaxSurrogate):
    """An LSTM over the sequence joined to an MLP of the static features; a deep ensemble.

    Architecture: the standardised sequence (n, T, c) runs through `layers` stacked LSTMs
    (`nnx.RNN` over `nnx.OptimizedLSTMCell`, `hidden` units); the last time step's hidden
    state is joined to a two-layer GELU MLP embedding (`static_hidden` units) of the
    standardised static features; a GELU layer of `head_hidden` units (the representation,
    see `represent`) then a linear layer give the H outputs (one logit for classifiers).
    Without a sequence (static features only) the LSTM is skipped and the model is an MLP
    on the static features.

    **Arguments:**

    - `task`: `"regression"` or `"classification"`.
    - `hidden`, `layers`, `static_hidden`, `head_hidden`: the network's sizes; `dropout`
      on the representation (off by default).
    - `epochs` (at most), `batch_size`, `learning_rate` (AdamW), `weight_decay`,
      `patience` (epochs without a better validation loss before a member stops),
      `validation_fraction` (of the training part, for early stopping), `ensemble`
      (members of the deep ensemble).
    - `calibration_fraction`, `level`: the split-conformal interval (see `Surrogate`).

    References: Hochreiter S, Schmidhuber J. Long short-term memory. Neural Comput
    1997;9:1735-1780. Lakshminarayanan B, Pritzel A, Blundell C. Simple and scalable
    predictive uncertainty estimation using deep ensembles. NeurIPS 2017.
    """

    def __init__(
        self,
        task: Task = "regression",
        *,
        hidden: int = 64,
        layers: int = 1,
        static_hidden: int = 32,
        head_hidden: int = 32,
        dropout: float = 0.0,
        epochs: int = 200,
        batch_size: int = 64,
        learning_rate: float = 3e-3,
        weight_decay: float = 1e-4,
        ensemble: int = 3,
        patience: int = 10,
        validation_fraction: float = 0.15,
        calibration_fraction: float = 0.15,
        level: float = 0.9,
    ):
        super().__init__(
            task,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            dropout=dropout,
            ensemble=ensemble,
            patience=patience,
            validation_fraction=validation_fraction,
            calibration_fraction=calibration_fraction,
            level=level,
        )
        self.hidden = _positive_int("hidden", hidden)
        self.layers = _positive_int("layers", layers)
        self.static_hidden = _positive_int("static_hidden", static_hidden)
        self.head_hidden = _positive_int("head_hidden", head_hidden)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "hidden": self.hidden,
            "layers": self.layers,
            "static_hidden": self.static_hidden,
            "head_hidden": self.head_hidden,
            **self._training_hyperparameters(),
        }

    def _network(self, rngs: nnx.Rngs) -> nnx.Module:
        return _LSTMNet(
            self.dims["n_static"],
            self.dims["n_channels"],
            self.dims["n_out"],
            hidden=self.hidden,
            layers=self.layers,
            static_hidden=self.static_hidden,
            head_hidden=self.head_hidden,
            dropout=self.dropout,
            rngs=rngs,
        )


class TransformerSurrogate(_FlaxSurrogate):
    """A multimodal Transformer encoder over static-feature and time-step tokens; a deep
    ensemble.

    Tokens (width `d_model`): a learned [CLS] token; one per static feature (its
    standardised value times a learned vector, plus a learned embedding of the feature's
    identity); one per time step (a linear projection of its standardised channels plus a
    learned embedding of the step: every patient shares the time grid). Each token adds a
    learned type embedding ([CLS], static, time step). `layers` pre-norm encoder blocks
    (multi-head self-attention with `heads` heads, then a GELU MLP of `mlp` units, each with
    a residual connection and dropout) and a final LayerNorm; the [CLS] output (the
    representation, see `represent`) feeds a linear layer giving the H outputs (one logit
    for classifiers). Works with static features only, or with a sequence only.

    **Arguments:**

    - `task`: `"regression"` or `"classification"`.
    - `d_model`, `heads` (must divide `d_model`), `layers`, `mlp`, `dropout`: the encoder
      (dropout is off by default: simulated cohorts are large and early stopping already
      regularises; it helped neither accuracy nor time on the test cohort).
    - `epochs` (at most), `batch_size`, `learning_rate` (AdamW), `weight_decay`,
      `patience`, `validation_fraction`, `ensemble`: training, as for `LSTMSurrogate`.
    - `calibration_fraction`, `level`: the split-conformal interval (see `Surrogate`).

    References: Vaswani A, Shazeer N, Parmar N et al. Attention is all you need. NeurIPS
    2017 (the encoder; pre-norm placement as in Xiong R et al. ICML 2020).
    Lakshminarayanan B, Pritzel A, Blundell C. Simple and scalable predictive uncertainty
    estimation using deep ensembles. NeurIPS 2017.
    """

    def __init__(
        self,
        task: Task = "regression",
        *,
        d_model: int = 32,
        heads: int = 4,
        layers: int = 2,
        mlp: int = 64,
        dropout: float = 0.0,
        epochs: int = 200,
        batch_size: int = 64,
        learning_rate: float = 3e-3,
        weight_decay: float = 1e-4,
        ensemble: int = 3,
        patience: int = 10,
        validation_fraction: float = 0.15,
        calibration_fraction: float = 0.15,
        level: float = 0.9,
    ):
        super().__init__(
            task,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            dropout=dropout,
            ensemble=ensemble,
            patience=patience,
            validation_fraction=validation_fraction,
            calibration_fraction=calibration_fraction,
            level=level,
        )
        self.d_model = _positive_int("d_model", d_model)
        self.heads = _positive_int("heads", heads)
        if self.d_model % self.heads:
            raise ValueError(f"heads ({heads}) must divide d_model ({d_model}).")
        self.layers = _positive_int("layers", layers)
        self.mlp = _positive_int("mlp", mlp)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "d_model": self.d_model,
            "heads": self.heads,
            "layers": self.layers,
            "mlp": self.mlp,
            **self._training_hyperparameters(),
        }

    def _network(self, rngs: nnx.Rngs) -> nnx.Module:
        return _TransformerNet(
            self.dims["n_static"],
            self.dims["n_channels"],
            self.dims["n_steps"],
            self.dims["n_out"],
            d_model=self.d_model,
            heads=self.heads,
            layers=self.layers,
            mlp=self.mlp,
            dropout=self.dropout,
            rngs=rngs,
        )


class MLPSurrogate(_FlaxSurrogate):
    """A multilayer perceptron on the tabular inputs; a deep ensemble. The fast emulator.

    The static features and the flattened sequence (`Inputs.tabular`) are standardised and
    run through GELU layers of the widths in `hidden`; a linear layer gives the H outputs
    (one logit for classifiers). With `log_target=True` (regression) the network fits
    log(y), so that exposures such as AUC = dose / CL become additive, and predicts the
    exponential of the members' mean (a geometric mean); the spread is carried back by
    the delta method (sd = prediction x sd of the members' logs).

    It is the surrogate to use when prediction time matters: one small jitted matrix
    product per layer, for all members at once. `benchmarks/surrogate_bench.py` measures
    its fidelity and speed against the trial engine.

    **Arguments:**

    - `task`: `"regression"` or `"classification"`.
    - `hidden`: the widths of the hidden layers; `dropout` on the last (off by default);
      `log_target` (regression, y > 0).
    - `epochs` (at most), `batch_size`, `learning_rate` (AdamW), `weight_decay`,
      `patience`, `validation_fraction`, `ensemble`: training, as for `LSTMSurrogate`.
    - `calibration_fraction`, `level`: the split-conformal interval (see `Surrogate`).

    References: Rumelhart DE, Hinton GE, Williams RJ. Learning representations by
    back-propagating errors. Nature 1986;323:533-536. Hendrycks D, Gimpel K. Gaussian error
    linear units (GELUs). arXiv:1606.08415, 2016. Lakshminarayanan B, Pritzel A, Blundell C.
    Simple and scalable predictive uncertainty estimation using deep ensembles. NeurIPS 2017.
    """

    uses_sequence = False

    def __init__(
        self,
        task: Task = "regression",
        *,
        hidden: tuple[int, ...] | list[int] = (32, 32),
        dropout: float = 0.0,
        log_target: bool = False,
        epochs: int = 300,
        batch_size: int = 128,
        learning_rate: float = 3e-3,
        weight_decay: float = 1e-5,
        ensemble: int = 3,
        patience: int = 20,
        validation_fraction: float = 0.15,
        calibration_fraction: float = 0.15,
        level: float = 0.9,
    ):
        super().__init__(
            task,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            dropout=dropout,
            ensemble=ensemble,
            patience=patience,
            validation_fraction=validation_fraction,
            calibration_fraction=calibration_fraction,
            level=level,
        )
        widths = tuple(hidden)
        if not widths:
            raise ValueError("hidden must name at least one layer width.")
        self.hidden = tuple(_positive_int("hidden", w) for w in widths)
        self.log_target = bool(log_target)
        if self.log_target and self.task != "regression":
            raise ValueError("log_target applies to regression only.")

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "hidden": list(self.hidden),
            "log_target": self.log_target,
            **self._training_hyperparameters(),
        }

    def _network(self, rngs: nnx.Rngs) -> nnx.Module:
        return _MLPNet(
            self.dims["n_static"],
            self.dims["n_out"],
            hidden=self.hidden,
            dropout=self.dropout,
            rngs=rngs,
        )

    @staticmethod
    def _flat(inputs: Inputs) -> Inputs:
        return inputs if inputs.sequence is None else Inputs(inputs.tabular())

    def _fit(self, inputs: Inputs, y: np.ndarray, *, key: int) -> None:
        if self.log_target:
            if not (y > 0).all():
                rows = np.flatnonzero((y <= 0).reshape(len(y), -1).any(axis=1))[:5].tolist()
                raise ValueError(f"{self.name}: log_target needs y > 0; rows {rows} are not.")
            y = np.log(y)
        super()._fit(self._flat(inputs), y, key=key)

    def _members(self, inputs: Inputs) -> np.ndarray:
        return super()._members(self._flat(inputs))

    def _represent(self, inputs: Inputs) -> np.ndarray:
        return super()._represent(self._flat(inputs))

    def _predict(self, inputs: Inputs) -> tuple[np.ndarray, np.ndarray | None]:
        mean, sd = super()._predict(inputs)
        if self.log_target:
            mean = np.exp(mean)
            sd = None if sd is None else mean * sd
        return mean, sd


# ----------------------------------------------------------------------------- hybrid

_RESERVED = ("task", "ensemble", "calibration_fraction", "level")


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1.0 - 1e-6)
    return np.log(p / (1.0 - p))


class HybridSurrogate(Surrogate):
    """XGBoost, an LSTM and a Transformer, fused by a small MLP head (stacking).

    Fitting: the training part is split at random (with `key`) into a base part
    (1 - `head_fraction`) and a head part (`head_fraction`). `XGBoostSurrogate` (on
    `Inputs.tabular()`), `LSTMSurrogate` and `TransformerSurrogate` are fitted on the base
    part only. The head is then trained on the head part, which none of them saw, from
    their representations there: XGBoost's prediction (the logit of its probability for
    classifiers) and each network's pooled hidden state (`represent`). A held-out split
    rather than out-of-fold predictions, because hidden states of models fitted on
    different folds live in different coordinates; the head must read the same models it
    will be given at prediction time. The price is that the base models see less data.

    Uncertainty: the head is a deep ensemble of `ensemble` MLPs (one GELU layer of
    `head_hidden` units, trained as the networks are); head member m reads member m of the
    LSTM and of the Transformer ensembles (and the one XGBoost), so the spread of the
    members covers the networks' disagreement as well as the head's.

    **Arguments:**

    - `task`: `"regression"` or `"classification"`.
    - `xgboost`, `lstm`, `transformer`: keyword arguments of each part (dicts of JSON
      values; not `task`, `ensemble`, `calibration_fraction` or `level`, which the hybrid
      sets). XGBoost defaults to `quantiles=False` (only its mean is used).
    - `head_fraction`: the share of the training part that trains the head.
    - `head_hidden`, `dropout`, `epochs`, `batch_size`, `learning_rate`, `weight_decay`,
      `patience`, `validation_fraction`: the head and its training.
    - `ensemble`: members of the head and of each network.
    - `calibration_fraction`, `level`: the split-conformal interval (see `Surrogate`).

    The parts are saved in sub-folders `xgboost/`, `lstm/`, `transformer/` (each a saved
    surrogate) and the head in `head.npz`.

    References: Wolpert DH. Stacked generalization. Neural Netw 1992;5:241-259. The parts:
    see `XGBoostSurrogate`, `LSTMSurrogate`, `TransformerSurrogate`.
    """

    uses_sequence = True

    def __init__(
        self,
        task: Task = "regression",
        *,
        xgboost: dict[str, Any] | None = None,
        lstm: dict[str, Any] | None = None,
        transformer: dict[str, Any] | None = None,
        head_fraction: float = 0.3,
        head_hidden: int = 32,
        dropout: float = 0.1,
        epochs: int = 300,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-3,
        ensemble: int = 3,
        patience: int = 20,
        validation_fraction: float = 0.2,
        calibration_fraction: float = 0.15,
        level: float = 0.9,
    ):
        super().__init__(calibration_fraction=calibration_fraction, level=level)
        self.task = _check_task(task)
        self.options: dict[str, dict[str, Any]] = {}
        for name, given in (("xgboost", xgboost), ("lstm", lstm), ("transformer", transformer)):
            given = dict(given or {})
            bad = [k for k in given if k in _RESERVED]
            if bad:
                raise ValueError(f"HybridSurrogate: {name} options {bad} are set by the hybrid.")
            self.options[name] = given
        self.options["xgboost"] = {"quantiles": False, **self.options["xgboost"]}
        self.head_fraction = _fraction("head_fraction", head_fraction, 0.0, 1.0)
        self.head_hidden = _positive_int("head_hidden", head_hidden)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        self.dropout = float(dropout)
        self.epochs = _positive_int("epochs", epochs)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.learning_rate = _fraction("learning_rate", learning_rate, 0.0, math.inf)
        self.weight_decay = float(weight_decay)
        self.ensemble = _positive_int("ensemble", ensemble)
        self.patience = _positive_int("patience", patience)
        self.validation_fraction = _fraction("validation_fraction", validation_fraction, 0.0, 0.5)
        self.parts: dict[str, Surrogate] = self._parts()
        self.head: _Ensemble | None = None
        self.stats: dict[str, np.ndarray] = {}
        self.history: dict[str, np.ndarray] = {}

    def _parts(self) -> dict[str, Surrogate]:
        from ._tabular import XGBoostSurrogate

        common: dict[str, Any] = {"calibration_fraction": 0.0, "level": self.level}
        nets: dict[str, Any] = {**common, "ensemble": self.ensemble}
        return {
            "xgboost": XGBoostSurrogate(self.task, **self.options["xgboost"], **common),
            "lstm": LSTMSurrogate(self.task, **self.options["lstm"], **nets),
            "transformer": TransformerSurrogate(self.task, **self.options["transformer"], **nets),
        }

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "task": self.task,
            **{name: dict(options) for name, options in self.options.items()},
            "head_fraction": self.head_fraction,
            "head_hidden": self.head_hidden,
            "dropout": self.dropout,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "weight_decay": self.weight_decay,
            "ensemble": self.ensemble,
            "patience": self.patience,
            "validation_fraction": self.validation_fraction,
        }

    def _features(self, inputs: Inputs) -> np.ndarray:
        """(members, n, width): XGBoost's prediction and the networks' representations,
        per head member."""
        tree, _ = self.parts["xgboost"]._predict(inputs)
        tree = tree.reshape(len(inputs), -1)
        if self.task == "classification":
            tree = _logit(tree)
        lstm = self.parts["lstm"]
        transformer = self.parts["transformer"]
        assert isinstance(lstm, _FlaxSurrogate) and isinstance(transformer, _FlaxSurrogate)
        reps = [lstm._represent(inputs), transformer._represent(inputs)]
        tree = np.broadcast_to(tree[None], (self.ensemble, *tree.shape))
        return np.concatenate([tree, *reps], axis=2)

    def _fit(self, inputs: Inputs, y: np.ndarray, *, key: int) -> None:
        who = f"{self.name}.fit"
        n = len(inputs)
        seeds = [int(s) for s in np.random.SeedSequence(key).generate_state(5)]
        order = np.random.default_rng(seeds[0]).permutation(n)
        n_head = round(self.head_fraction * n)
        if n_head < 20 or n - n_head < 20:
            raise ValueError(
                f"{who}: {n} training patients with head_fraction {self.head_fraction} leave "
                f"{n - n_head} for the base models and {n_head} for the head; each needs 20."
            )
        base, head = np.sort(order[n_head:]), np.sort(order[:n_head])
        self.parts = self._parts()
        for seed, part in zip(seeds[1:4], self.parts.values(), strict=True):
            part.fit(inputs.take(base), y[base], key=seed)
        features = self._features(inputs.take(head))
        mean, sd = _scale(features, (1,))
        self.stats = {"feature_mean": mean, "feature_sd": sd}
        target = y[head].reshape(n_head, -1)
        classify = self.task == "classification"
        if classify:
            self.stats.update(y_mean=np.zeros(1), y_sd=np.ones(1))
        else:
            mean, sd = _scale(target, (0,))
            self.stats.update(y_mean=mean, y_sd=sd)
        z = ((target - self.stats["y_mean"]) / self.stats["y_sd"]).astype(np.float32)
        self.head, self.history = _train(
            self._head_network(features.shape[2], target.shape[1]),
            self._standardise(features),
            None,
            z,
            members=self.ensemble,
            key=seeds[4],
            classify=classify,
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            patience=self.patience,
            validation_fraction=self.validation_fraction,
            per_member=True,
            who=who,
        )

    def _head_network(self, n_in: int, n_out: int) -> Callable[[nnx.Rngs], nnx.Module]:
        return lambda rngs: _HeadNet(
            n_in, n_out, hidden=self.head_hidden, dropout=self.dropout, rngs=rngs
        )

    def _standardise(self, features: np.ndarray) -> np.ndarray:
        z = (features - self.stats["feature_mean"][:, None]) / self.stats["feature_sd"][:, None]
        return z.astype(np.float32)

    def _predict(self, inputs: Inputs) -> tuple[np.ndarray, np.ndarray | None]:
        assert self.head is not None
        features = self._standardise(self._features(inputs))
        out = _apply(self.head, features, None, per_member=True)
        if self.task == "classification":
            members = _sigmoid(out)
        else:
            members = out * self.stats["y_sd"] + self.stats["y_mean"]
        mean = members.mean(axis=0)
        sd = members.std(axis=0) if members.shape[0] > 1 else None
        if self.output_shape == () or self.task == "classification":
            mean = mean[:, 0]
            sd = None if sd is None else sd[:, 0]
        return mean, sd

    def part_predictions(self, x: Inputs | Any) -> dict[str, np.ndarray]:
        """Each part's own mean prediction (to compare the hybrid with its parts)."""
        self._require_fitted("part_predictions")
        inputs = self._conform(x, f"{self.name}.part_predictions")
        return {name: part._predict(inputs)[0] for name, part in self.parts.items()}

    def _save_model(self, folder: Path) -> None:
        assert self.head is not None
        for name, part in self.parts.items():
            part.save(folder / name)
        arrays = _params_to_arrays(self.head.params)
        arrays.update({f"stat:{k}": v for k, v in self.stats.items()})
        _save_arrays(folder / "head.npz", arrays)

    def _load_model(self, folder: Path) -> None:
        for name, kind in (
            ("xgboost", None),
            ("lstm", LSTMSurrogate),
            ("transformer", TransformerSurrogate),
        ):
            part = Surrogate.load(folder / name) if kind is None else kind.load(folder / name)
            self.parts[name] = part
        path = folder / "head.npz"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; the saved {self.name} is incomplete.")
        with np.load(path, allow_pickle=False) as arrays:
            self.stats = {k[5:]: arrays[k] for k in arrays.files if k.startswith("stat:")}
            n_in = self.stats["feature_mean"].shape[1]
            n_out = self.stats["y_mean"].shape[0]
            make = self._head_network(n_in, n_out)
            graphdef, template = _split_params(make(nnx.Rngs(0)), self.name)
            params = _params_from_arrays(template, self.ensemble, arrays, path)
        self.head = _Ensemble(graphdef, params)
