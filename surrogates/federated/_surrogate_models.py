"""The Flax surrogates as federated models: the networks of `surrogates._networks` (the MLP
of `MLPSurrogate`, the LSTM of `LSTMSurrogate`, the Transformer encoder of
`TransformerSurrogate`) split into a graph definition and a parameter tree that the pure
functions of `_fedavg` train and the Flower apps ship as arrays.

A `Model` holds the graph definition, the initial parameters and how a record's inputs look:
`"mlp"` reads one flat feature vector per record (the static features and the measured
INRs); `"lstm"` and `"transformer"` read `(static, sequence)` per record (the Transformer's
sequence has the fixed number of steps it was built for: it learns one embedding per
step). `loss` is the binary cross-entropy of
one record (one logit), `probabilities` the predicted probabilities of many. Dropout is off
(DP-SGD's per-example gradients and the equality checks want a deterministic network).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from .._networks import LSTMNet, MLPNet, TransformerNet

Kind = Literal["mlp", "lstm", "transformer"]


@dataclasses.dataclass(frozen=True)
class Model:
    """A federated network: `graphdef`, initial `params` and `kind` (see the module)."""

    kind: Kind
    graphdef: Any
    params: Any

    @functools.cached_property
    def loss(self):
        return _record_loss(self.graphdef, self.kind)

    def probabilities(self, params: Any, x: Any) -> np.ndarray:
        """Predicted probabilities (n,) for the records `x` (leading record axis)."""
        return np.asarray(_probabilities(self.graphdef, self.kind, params, x), dtype=float)

    def arrays(self, params: Any) -> list[np.ndarray]:
        """The parameters as a flat list of numpy arrays (the order of `jax.tree.leaves`)."""
        return [np.asarray(v) for v in jax.tree.leaves(params)]

    def from_arrays(self, arrays: list[np.ndarray]) -> Any:
        """The parameter tree from `arrays` (as `arrays` gives them), checked for shape."""
        leaves, treedef = jax.tree.flatten(self.params)
        if len(arrays) != len(leaves):
            raise ValueError(f"expected {len(leaves)} parameter arrays, got {len(arrays)}.")
        out = []
        for i, (a, ref) in enumerate(zip(arrays, leaves, strict=True)):
            a = np.asarray(a)
            if a.shape != ref.shape:
                raise ValueError(f"parameter array {i} has shape {a.shape}, expected {ref.shape}.")
            out.append(jnp.asarray(a, ref.dtype))
        return jax.tree.unflatten(treedef, out)

    @property
    def size(self) -> int:
        """Number of parameters."""
        return int(sum(np.size(v) for v in jax.tree.leaves(self.params)))

    @property
    def nbytes(self) -> int:
        """Bytes of one copy of the parameters (float32)."""
        return int(sum(np.asarray(v).nbytes for v in jax.tree.leaves(self.params)))


def mlp(n_features: int, *, hidden: tuple[int, ...] = (32, 32), seed: int = 0) -> Model:
    """The MLP surrogate's network (GELU layers, one logit) on `n_features` inputs."""
    net = MLPNet(n_features, 1, hidden=hidden, dropout=0.0, rngs=nnx.Rngs(params=seed))
    graphdef, params = nnx.split(net, nnx.Param)
    return Model("mlp", graphdef, params)


def lstm(
    n_static: int, n_channels: int, *, hidden: int = 16, static_hidden: int = 16, seed: int = 0
) -> Model:
    """The LSTM surrogate's network (one LSTM layer over the sequence, joined to an MLP of the
    static features, one logit)."""
    net = LSTMNet(
        n_static,
        n_channels,
        1,
        hidden=hidden,
        layers=1,
        static_hidden=static_hidden,
        head_hidden=16,
        dropout=0.0,
        rngs=nnx.Rngs(params=seed),
    )
    graphdef, params = nnx.split(net, nnx.Param)
    return Model("lstm", graphdef, params)


def transformer(
    n_static: int,
    n_channels: int,
    n_steps: int,
    *,
    d_model: int = 16,
    heads: int = 2,
    layers: int = 1,
    mlp: int = 32,
    seed: int = 0,
) -> Model:
    """The Transformer surrogate's network (a pre-norm encoder over a [CLS] token, one token
    per static feature and one per time step of `n_steps`; `layers` blocks of `heads`
    attention heads of width `d_model` and a feed-forward layer of `mlp` units; one logit
    from the [CLS] output)."""
    if d_model % heads:
        raise ValueError(f"transformer: d_model {d_model} is not a multiple of heads {heads}.")
    net = TransformerNet(
        n_static,
        n_channels,
        n_steps,
        1,
        d_model=d_model,
        heads=heads,
        layers=layers,
        mlp=mlp,
        dropout=0.0,
        rngs=nnx.Rngs(params=seed),
    )
    graphdef, params = nnx.split(net, nnx.Param)
    return Model("transformer", graphdef, params)


def _logits(graphdef, kind: Kind, params, x):
    net = nnx.merge(graphdef, params)
    if kind == "mlp":
        return net(x, None)[:, 0]  # type: ignore[operator]
    static, sequence = x
    return net(static, sequence)[:, 0]  # type: ignore[operator]


@functools.lru_cache(maxsize=32)
def _record_loss(graphdef, kind: Kind):
    def loss(params, x, y):
        xb = jax.tree.map(lambda a: a[None], x)
        logit = _logits(graphdef, kind, params, xb)[0]
        return optax.sigmoid_binary_cross_entropy(logit, y)

    return loss


@functools.partial(jax.jit, static_argnames=("graphdef", "kind"))
def _probabilities(graphdef, kind: Kind, params, x):
    return jax.nn.sigmoid(_logits(graphdef, kind, params, x))


def scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Accuracy, F1 and ROC-AUC (threshold 0.5), scikit-learn's definitions."""
    from sklearn import metrics

    y = np.asarray(y, bool)
    label = np.asarray(p) >= 0.5
    return {
        "accuracy": float(metrics.accuracy_score(y, label)),
        "f1": float(metrics.f1_score(y, label, zero_division=0.0)),  # type: ignore[arg-type]
        "roc_auc": float(metrics.roc_auc_score(y, p)) if 0 < y.mean() < 1 else math.nan,
    }
