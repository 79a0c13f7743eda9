"""Neural surrogates in Flax (`flax.nnx`) and optax: an MLP (the fast emulator), an LSTM, a
multimodal Transformer and a stacked hybrid of the last two with XGBoost.

- `MLPSurrogate`: GELU layers on the tabular inputs (`Inputs.tabular`), optionally fitting
  log(y).
- `LSTMSurrogate`: the sequence (n, T, c) runs through an LSTM (Hochreiter S, Schmidhuber J.
  Neural Comput 1997;9:1735-1780); its last hidden state, joined to an MLP embedding of the
  static features, feeds a small head.
- `TransformerSurrogate`: every static feature and every time step is a token, with a
  learned [CLS] token, in a small pre-norm Transformer encoder (Vaswani A et al. Attention
  is all you need. NeurIPS 2017); the [CLS] output feeds the head.
- `HybridSurrogate`: XGBoost, an LSTM and a Transformer fitted on one part of the data; a
  small MLP head trained on their representations of the other part (stacking: Wolpert DH.
  Stacked generalization. Neural Netw 1992;5:241-259).

The networks are in `surrogates._networks`, their training in `surrogates._training`.
Common to the networks (and the hybrid's head):

- Training: one `Training` (epochs, batch size, learning rate, weight decay, ensemble
  size, patience, validation fraction), or keywords of the same names; each surrogate's
  defaults are its `default_training`.
- Uncertainty: a deep ensemble (Lakshminarayanan B, Pritzel A, Blundell C. Simple and
  scalable predictive uncertainty estimation using deep ensembles. NeurIPS 2017) of
  `ensemble` members that differ in their initial weights, batch order and dropout (all
  drawn from `key`). The prediction is the members' average; the model's spread `sd` is the
  standard deviation of the member means (of the probabilities, for classifiers), which
  scales the split-conformal interval of `Surrogate.predict`. With `ensemble=1` there is no
  spread and `sd` is None.
- Inputs and regression targets are standardised (mean and standard deviation of the
  training part, stored with the model); sequence channels are standardised per channel.
- Loss, optimiser, early stopping and the compiled epoch: see `surrogates._training`.
  Predictions run the members together (vmapped) in chunks of up to 4,096 patients.
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
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from flax import nnx

from ._base import Inputs, Surrogate, Task
from ._networks import (
    Ensemble,
    HeadNet,
    LSTMNet,
    MLPNet,
    TransformerNet,
    params_from_arrays,
    params_to_arrays,
    save_arrays,
    split_params,
)
from ._training import Training, fraction, positive_int, resolve_training, train

_MODEL_FILE = "flax.npz"


def _check_task(task: str) -> Task:
    if task not in ("regression", "classification"):
        raise ValueError(f"task must be 'regression' or 'classification', got {task!r}.")
    return task  # type: ignore[return-value]


def _dropout(value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {value}.")
    return float(value)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function, without overflow warnings for large |x|."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _scale(x: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation over `axes` (1 where a column is constant)."""
    mean = x.mean(axis=axes)
    sd = x.std(axis=axes)
    return mean, np.where(sd > 1e-12 * np.maximum(np.abs(mean), 1.0), sd, 1.0)


# ----------------------------------------------------------------------------- surrogates


class _FlaxSurrogate(Surrogate):
    """What the MLP, LSTM and Transformer surrogates share: standardisation, the ensemble,
    the training loop, `represent`, save and load. Subclasses say how to build the network
    and set `default_training`."""

    uses_sequence = True
    default_training: ClassVar[Training]

    def __init__(
        self,
        task: Task,
        *,
        dropout: float,
        training: Training,
        calibration_fraction: float,
        level: float,
    ):
        super().__init__(calibration_fraction=calibration_fraction, level=level)
        self.task = _check_task(task)
        self.dropout = _dropout(dropout)
        self.training = training
        self.model: Ensemble | None = None
        self.stats: dict[str, np.ndarray] = {}
        self.dims: dict[str, int] = {}
        self.history: dict[str, np.ndarray] = {}

    def _training_hyperparameters(self) -> dict[str, Any]:
        """`dropout` and the fields of `training`, as keywords of the constructor."""
        return {"dropout": self.dropout, **dataclasses.asdict(self.training)}

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
        self.model, self.history = train(
            self._network,
            static_z,
            sequence_z,
            z,
            training=self.training,
            key=key,
            classify=classify,
            who=who,
        )

    # --- prediction --------------------------------------------------------------------

    def _members(self, inputs: Inputs) -> np.ndarray:
        """Per member predictions (members, n, n_out) on the original scale (the
        probabilities for classifiers)."""
        assert self.model is not None
        out = self.model.apply(*self._arrays(inputs))
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
        return self.model.apply(*self._arrays(inputs), represent=True)

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
        arrays = params_to_arrays(self.model.params)
        arrays.update({f"stat:{k}": v for k, v in self.stats.items()})
        arrays.update({f"dim:{k}": np.asarray(v) for k, v in self.dims.items()})
        save_arrays(folder / _MODEL_FILE, arrays)

    def _load_model(self, folder: Path) -> None:
        path = folder / _MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; the saved {self.name} is incomplete.")
        with np.load(path, allow_pickle=False) as arrays:
            self.dims = {k[4:]: int(arrays[k]) for k in arrays.files if k.startswith("dim:")}
            self.stats = {k[5:]: arrays[k] for k in arrays.files if k.startswith("stat:")}
            graphdef, template = split_params(self._network(nnx.Rngs(0)), self.name)
            params = params_from_arrays(template, self.training.ensemble, arrays, path)
        self.model = Ensemble(graphdef, params)


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
    - `training`: a `Training`, or its fields as keywords (`epochs`, `batch_size`,
      `learning_rate`, `weight_decay`, `ensemble`, `patience`, `validation_fraction`), not
      both. Fields not given take `LSTMSurrogate.default_training`, `Training()`: 200
      epochs, batches of 64, learning rate 3e-3, weight decay 1e-4, 3 members, patience 10,
      validation fraction 0.15.
    - `calibration_fraction`, `level`: the split-conformal interval (see `Surrogate`).

    References: Hochreiter S, Schmidhuber J. Long short-term memory. Neural Comput
    1997;9:1735-1780. Lakshminarayanan B, Pritzel A, Blundell C. Simple and scalable
    predictive uncertainty estimation using deep ensembles. NeurIPS 2017.
    """

    default_training: ClassVar[Training] = Training()

    def __init__(
        self,
        task: Task = "regression",
        *,
        hidden: int = 64,
        layers: int = 1,
        static_hidden: int = 32,
        head_hidden: int = 32,
        dropout: float = 0.0,
        training: Training | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        learning_rate: float | None = None,
        weight_decay: float | None = None,
        ensemble: int | None = None,
        patience: int | None = None,
        validation_fraction: float | None = None,
        calibration_fraction: float = 0.15,
        level: float = 0.9,
    ):
        super().__init__(
            task,
            dropout=dropout,
            training=resolve_training(
                self.default_training,
                training,
                type(self).__name__,
                epochs=epochs,
                batch_size=batch_size,
                learning_rate=learning_rate,
                weight_decay=weight_decay,
                ensemble=ensemble,
                patience=patience,
                validation_fraction=validation_fraction,
            ),
            calibration_fraction=calibration_fraction,
            level=level,
        )
        self.hidden = positive_int("hidden", hidden)
        self.layers = positive_int("layers", layers)
        self.static_hidden = positive_int("static_hidden", static_hidden)
        self.head_hidden = positive_int("head_hidden", head_hidden)

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
        return LSTMNet(
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
    - `training`, or its fields as keywords: as for `LSTMSurrogate`, with the same
      defaults (`TransformerSurrogate.default_training`, `Training()`).
    - `calibration_fraction`, `level`: the split-conformal interval (see `Surrogate`).

    References: Vaswani A, Shazeer N, Parmar N et al. Attention is all you need. NeurIPS
    2017 (the encoder; pre-norm placement as in Xiong R et al. ICML 2020).
    Lakshminarayanan B, Pritzel A, Blundell C. Simple and scalable predictive uncertainty
    estimation using deep ensembles. NeurIPS 2017.
    """

    default_training: ClassVar[Training] = Training()

    def __init__(
        self,
        task: Task = "regression",
        *,
        d_model: int = 32,
        heads: int = 4,
        layers: int = 2,
        mlp: int = 64,
        dropout: float = 0.0,
        training: Training | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        learning_rate: float | None = None,
        weight_decay: float | None = None,
        ensemble: int | None = None,
        patience: int | None = None,
        validation_fraction: float | None = None,
        calibration_fraction: float = 0.15,
        level: float = 0.9,
    ):
        super().__init__(
            task,
            dropout=dropout,
            training=resolve_training(
                self.default_training,
                training,
                type(self).__name__,
                epochs=epochs,
                batch_size=batch_size,
                learning_rate=learning_rate,
                weight_decay=weight_decay,
                ensemble=ensemble,
                patience=patience,
                validation_fraction=validation_fraction,
            ),
            calibration_fraction=calibration_fraction,
            level=level,
        )
        self.d_model = positive_int("d_model", d_model)
        self.heads = positive_int("heads", heads)
        if self.d_model % self.heads:
            raise ValueError(f"heads ({heads}) must divide d_model ({d_model}).")
        self.layers = positive_int("layers", layers)
        self.mlp = positive_int("mlp", mlp)

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
        return TransformerNet(
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
    - `training`, or its fields as keywords: as for `LSTMSurrogate`. Fields not given take
      `MLPSurrogate.default_training`: 300 epochs, batches of 128, learning rate 3e-3,
      weight decay 1e-5, 3 members, patience 20, validation fraction 0.15.
    - `calibration_fraction`, `level`: the split-conformal interval (see `Surrogate`).

    References: Rumelhart DE, Hinton GE, Williams RJ. Learning representations by
    back-propagating errors. Nature 1986;323:533-536. Hendrycks D, Gimpel K. Gaussian error
    linear units (GELUs). arXiv:1606.08415, 2016. Lakshminarayanan B, Pritzel A, Blundell C.
    Simple and scalable predictive uncertainty estimation using deep ensembles. NeurIPS 2017.
    """

    uses_sequence = False
    default_training: ClassVar[Training] = Training(
        epochs=300, batch_size=128, weight_decay=1e-5, patience=20
    )

    def __init__(
        self,
        task: Task = "regression",
        *,
        hidden: tuple[int, ...] | list[int] = (32, 32),
        dropout: float = 0.0,
        log_target: bool = False,
        training: Training | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        learning_rate: float | None = None,
        weight_decay: float | None = None,
        ensemble: int | None = None,
        patience: int | None = None,
        validation_fraction: float | None = None,
        calibration_fraction: float = 0.15,
        level: float = 0.9,
    ):
        super().__init__(
            task,
            dropout=dropout,
            training=resolve_training(
                self.default_training,
                training,
                type(self).__name__,
                epochs=epochs,
                batch_size=batch_size,
                learning_rate=learning_rate,
                weight_decay=weight_decay,
                ensemble=ensemble,
                patience=patience,
                validation_fraction=validation_fraction,
            ),
            calibration_fraction=calibration_fraction,
            level=level,
        )
        widths = tuple(hidden)
        if not widths:
            raise ValueError("hidden must name at least one layer width.")
        self.hidden = tuple(positive_int("hidden", w) for w in widths)
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
        return MLPNet(
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
    - `head_hidden`, `dropout`: the head.
    - `training`, or its fields as keywords (`epochs`, `batch_size`, `learning_rate`,
      `weight_decay`, `ensemble`, `patience`, `validation_fraction`), not both: the head's
      training (see `Training`); `ensemble` is also the number of members of each
      network. Fields not given take `HybridSurrogate.default_training`: 300 epochs,
      batches of 64, learning rate 1e-3, weight decay 1e-3, 3 members, patience 20,
      validation fraction 0.2.
    - `calibration_fraction`, `level`: the split-conformal interval (see `Surrogate`).

    The parts are saved in sub-folders `xgboost/`, `lstm/`, `transformer/` (each a saved
    surrogate) and the head in `head.npz`.

    References: Wolpert DH. Stacked generalization. Neural Netw 1992;5:241-259. The parts:
    see `XGBoostSurrogate`, `LSTMSurrogate`, `TransformerSurrogate`.
    """

    uses_sequence = True
    default_training: ClassVar[Training] = Training(
        epochs=300, learning_rate=1e-3, weight_decay=1e-3, patience=20, validation_fraction=0.2
    )

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
        training: Training | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        learning_rate: float | None = None,
        weight_decay: float | None = None,
        ensemble: int | None = None,
        patience: int | None = None,
        validation_fraction: float | None = None,
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
            if "training" in given:  # (options are JSON values, saved as they are)
                raise ValueError(f"HybridSurrogate: give {name}'s training as keywords.")
            self.options[name] = given
        self.options["xgboost"] = {"quantiles": False, **self.options["xgboost"]}
        self.head_fraction = fraction("head_fraction", head_fraction, 0.0, 1.0)
        self.head_hidden = positive_int("head_hidden", head_hidden)
        self.dropout = _dropout(dropout)
        self.training = resolve_training(
            self.default_training,
            training,
            type(self).__name__,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            ensemble=ensemble,
            patience=patience,
            validation_fraction=validation_fraction,
        )
        self.parts: dict[str, Surrogate] = self._parts()
        self.head: Ensemble | None = None
        self.stats: dict[str, np.ndarray] = {}
        self.history: dict[str, np.ndarray] = {}

    def _parts(self) -> dict[str, Surrogate]:
        from ._tabular import XGBoostSurrogate

        common: dict[str, Any] = {"calibration_fraction": 0.0, "level": self.level}
        nets: dict[str, Any] = {**common, "ensemble": self.training.ensemble}
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
            **dataclasses.asdict(self.training),
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
        tree = np.broadcast_to(tree[None], (self.training.ensemble, *tree.shape))
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
        self.head, self.history = train(
            self._head_network(features.shape[2], target.shape[1]),
            self._standardise(features),
            None,
            z,
            training=self.training,
            key=seeds[4],
            classify=classify,
            per_member=True,
            who=who,
        )

    def _head_network(self, n_in: int, n_out: int) -> Callable[[nnx.Rngs], nnx.Module]:
        return lambda rngs: HeadNet(
            n_in, n_out, hidden=self.head_hidden, dropout=self.dropout, rngs=rngs
        )

    def _standardise(self, features: np.ndarray) -> np.ndarray:
        z = (features - self.stats["feature_mean"][:, None]) / self.stats["feature_sd"][:, None]
        return z.astype(np.float32)

    def _predict(self, inputs: Inputs) -> tuple[np.ndarray, np.ndarray | None]:
        assert self.head is not None
        features = self._standardise(self._features(inputs))
        out = self.head.apply(features, None, per_member=True)
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
        arrays = params_to_arrays(self.head.params)
        arrays.update({f"stat:{k}": v for k, v in self.stats.items()})
        save_arrays(folder / "head.npz", arrays)

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
            graphdef, template = split_params(make(nnx.Rngs(0)), self.name)
            params = params_from_arrays(template, self.training.ensemble, arrays, path)
        self.head = Ensemble(graphdef, params)
