"""The flax.nnx networks of the neural surrogates (`surrogates._flax`), and `Ensemble`, the
trained members of one of them.

- `LSTMNet`: stacked LSTMs over the sequence (n, T, c) (Hochreiter S, Schmidhuber J. Long
  short-term memory. Neural Comput 1997;9:1735-1780), their last hidden state joined to an
  MLP embedding of the static features, then a GELU layer and a linear output.
- `TransformerNet`: every static feature and every time step is a token, with a learned
  [CLS] token, in a small pre-norm Transformer encoder (Vaswani A et al. Attention is all
  you need. NeurIPS 2017); the [CLS] output feeds the linear output.
- `MLPNet`: GELU layers on the static features; `HeadNet`: the hybrid's head, one GELU
  layer on the joined representations.
- Every network is called as `net(static (B, p), sequence (B, T, c) or None, key)`, where
  `key` is a PRNG key in training (dropout on) and None when predicting; `represent`
  returns the pooled hidden state that the last (linear) layer reads.
- The weights are drawn on the host with numpy from the bits of the key (the same
  distributions as flax's default initialisers, without compiling an XLA program per
  shape), in float32 (`DTYPE`), the precision the networks compute in.
- `Ensemble`: the members' structure and stacked parameters (member axis first), as
  `surrogates._training.train` returns them. `Ensemble.apply` runs the members together
  (vmapped, compiled once per structure and input shape) in chunks of up to 4,096 patients.
- Saved with numpy only: one array per parameter, with the member axis first
  (`params_to_arrays`, `params_from_arrays`, `save_arrays`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

DTYPE = jnp.float32
# Patients per forward pass when predicting: the next power of two at or above n, between
# these bounds (a few compiled shapes, bounded memory, and few dispatches: each costs about
# half a millisecond, as much as a small network's arithmetic for 1,000 patients).
_CHUNK_MIN, _CHUNK_MAX = 64, 4096


# ----------------------------------------------------------------------------- networks


def _host_init(kind: str, stddev: float = 1.0):
    """An initialiser drawn with numpy from the bits of the key. flax's own initialisers
    are XLA programs compiled anew for every shape (about half a second each on a CPU,
    seconds for a network); these draw from the same distributions as flax's defaults:
    `"lecun"` (normal truncated at 2 sd, variance 1/fan_in: LeCun Y et al. Efficient
    BackProp. 1998), `"orthogonal"` (Saxe AM et al. ICLR 2014), `"normal"` (`stddev`),
    `"zeros"`, `"ones"`. Called eagerly, when a network is built."""

    def init(key, shape, dtype=DTYPE):
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


class LSTMNet(nnx.Module):
    """Stacked LSTMs over the sequence joined to a two-layer GELU MLP of the static
    features, then a GELU layer (the representation) and a linear output (see
    `LSTMSurrogate`). Without channels the LSTMs are skipped; without static features, the
    MLP."""

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


class TransformerNet(nnx.Module):
    """A pre-norm Transformer encoder over a [CLS] token, one token per static feature
    and one per time step; the [CLS] output, after a LayerNorm (the representation), feeds
    a linear output (see `TransformerSurrogate`)."""

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
        self.cls = nnx.Param(init(rngs.params(), (1, d), DTYPE))
        self.types = nnx.Param(init(rngs.params(), (3, d), DTYPE))  # [CLS], static, time step
        self.feature_value = nnx.Param(init(rngs.params(), (max(n_static, 1), d), DTYPE))
        self.feature_id = nnx.Param(init(rngs.params(), (max(n_static, 1), d), DTYPE))
        self.step_in = _linear(max(n_channels, 1), d, rngs)
        self.step_time = nnx.Param(init(rngs.params(), (max(n_steps, 1), d), DTYPE))
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


class MLPNet(nnx.Module):
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


class HeadNet(nnx.Module):
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


# ----------------------------------------------------------------------------- ensemble


@dataclasses.dataclass(frozen=True)
class Ensemble:
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

    def apply(
        self,
        static: np.ndarray,
        sequence: np.ndarray | None,
        *,
        represent: bool = False,
        per_member: bool = False,
    ) -> np.ndarray:
        """(members, n, outputs or width) from standardised float32 inputs (with
        `per_member`, `static` is (members, n, p): each member its own inputs), in chunks
        (the last padded; see `_CHUNK_MAX`); `represent` gives the pooled hidden states."""
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
            out = self.forward(
                s,  # NumPy arrays go to the compiled function as they are
                q,
                represent=represent,
                per_member=per_member,
            )
            outs.append(np.asarray(out)[:, : index.size])
        return np.concatenate(outs, axis=1).astype(float)


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


def split_params(net: nnx.Module, who: str):
    """The network's graph definition and parameters (it must hold nothing else)."""
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise RuntimeError(f"{who}: the network has state other than parameters: {rest}.")
    return graphdef, params


# ----------------------------------------------------------------------------- saving


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        savez: Any = np.savez  # (its stub types **arrays as its own keywords)
        savez(f, **arrays)
    tmp.replace(path)


def params_to_arrays(params, prefix: str = "param:") -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {prefix + jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def params_from_arrays(
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
