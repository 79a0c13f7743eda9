"""The interface every surrogate shares: `fit`, `predict` (with an uncertainty estimate),
`save`, `load`, and the ranges of the data it was trained on.

- `Inputs`: what a surrogate sees for n patients: a table of static features (covariates,
  phenotypes, regimen) and, optionally, time series (n, T, c) such as the doses given and
  the levels measured in the first days.
- `Surrogate.fit(X, y)`: `X` an `Inputs` or a DataFrame of static features; `y` (n,) for one
  endpoint or (n, H) for a trajectory. Regressors hold out a calibration part
  (`calibration_fraction`) and compute split-conformal intervals on it (Vovk V, Gammerman A,
  Shafer G. Algorithmic Learning in a Random World. Springer 2005; Lei J et al. J Am Stat
  Assoc 2018;113:1094-1111): the interval `mean +- q * scale` covers a new patient's value
  with probability `level` whatever the model, where `scale` is the model's own spread
  (ensemble or quantile width) when it has one, else 1.
- `Surrogate.predict(X) -> Prediction`: mean (the class-1 probability for classifiers),
  interval, the model's own spread, and which patients lie outside the training ranges
  (`ExtrapolationWarning` says so too).
- `Surrogate.save(folder)`, `load(folder)`: a folder with `surrogate.json` (class, features,
  ranges, conformal quantiles, hyperparameters, the size and SHA-256 of every other file)
  and the model's own files, in formats that cannot run code when read; `load` checks every
  file before it reads any (`surrogates._files`).
"""

from __future__ import annotations

import abc
import dataclasses
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

from twins.governance import AuditAction, Governance

from . import _files

Task = Literal["regression", "classification"]

#: Version 2: skops instead of pickle for scikit-learn models, and a checksum of every file.
FORMAT_VERSION = 2


class ExtrapolationWarning(UserWarning):
    """Some inputs lie outside the ranges the surrogate was trained on."""


# ----------------------------------------------------------------------------- inputs


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Inputs for n patients.

    - `static`: (n, p) numeric features, one column each (covariates, genotype indicators,
      phenotypes, regimen descriptors).
    - `sequence`: optional (n, T, c) time series on a common grid `times` (h), channels named
      by `channels` (for example the dose given and the level measured at each period, with
      a 0/1 channel saying whether a level was measured).
    """

    static: pd.DataFrame
    sequence: np.ndarray | None = None
    channels: tuple[str, ...] = ()
    times: np.ndarray | None = None

    def __post_init__(self):
        if not isinstance(self.static, pd.DataFrame):
            raise TypeError(f"Inputs.static must be a pandas DataFrame, got {type(self.static)}.")
        if self.sequence is None:
            if self.channels:
                raise ValueError("Inputs: channels given without a sequence.")
            return
        seq = np.asarray(self.sequence, dtype=float)
        object.__setattr__(self, "sequence", seq)
        if seq.ndim != 3:
            raise ValueError(f"Inputs.sequence must be (n, T, c), got shape {seq.shape}.")
        if seq.shape[0] != len(self.static):
            raise ValueError(
                f"Inputs: {len(self.static)} rows of static features but {seq.shape[0]} sequences."
            )
        if len(self.channels) != seq.shape[2]:
            raise ValueError(
                f"Inputs: {seq.shape[2]} sequence channels but {len(self.channels)} names "
                f"({list(self.channels)})."
            )
        if self.times is None:
            object.__setattr__(self, "times", np.arange(seq.shape[1], dtype=float))
        times = np.asarray(self.times, dtype=float)
        object.__setattr__(self, "times", times)
        if times.shape != (seq.shape[1],):
            raise ValueError(f"Inputs.times must have {seq.shape[1]} values, got {times.shape}.")

    def __len__(self) -> int:
        return len(self.static)

    @property
    def has_sequence(self) -> bool:
        return self.sequence is not None

    def take(self, index: Any) -> Inputs:
        """The patients at `index` (positions)."""
        index = np.asarray(index)
        return Inputs(
            self.static.iloc[index].reset_index(drop=True),
            None if self.sequence is None else self.sequence[index],
            self.channels,
            self.times,
        )

    def sequence_columns(self) -> list[str]:
        """Names of the flattened sequence columns, `<channel>@<time>h`, time-major."""
        if self.sequence is None:
            return []
        assert self.times is not None
        return [f"{c}@{t:g}h" for t in self.times for c in self.channels]

    def tabular(self) -> pd.DataFrame:
        """Static features followed by the flattened sequence (for tabular models)."""
        if self.sequence is None:
            return self.static.reset_index(drop=True)
        flat = self.sequence.reshape(len(self), -1)
        seq = pd.DataFrame(flat, columns=self.sequence_columns())
        return pd.concat([self.static.reset_index(drop=True), seq], axis=1)


def as_inputs(x: Inputs | pd.DataFrame) -> Inputs:
    if isinstance(x, Inputs):
        return x
    if isinstance(x, pd.DataFrame):
        return Inputs(x)
    raise TypeError(f"Expected surrogates.Inputs or a pandas DataFrame, got {type(x).__name__}.")


# ----------------------------------------------------------------------------- ranges


@dataclasses.dataclass(frozen=True)
class TrainingRanges:
    """Per static feature the [min, max] seen in training (and the set of values when
    there were at most 10: flags and categories), per sequence channel the [min, max]."""

    static: Mapping[str, tuple[float, float]]
    values: Mapping[str, tuple[float, ...]]
    channels: Mapping[str, tuple[float, float]]

    @classmethod
    def of(cls, inputs: Inputs) -> TrainingRanges:
        static, values = {}, {}
        for name in inputs.static.columns:
            col = inputs.static[name].to_numpy(dtype=float)
            col = col[np.isfinite(col)]
            if col.size == 0:
                continue
            static[str(name)] = (float(col.min()), float(col.max()))
            distinct = np.unique(col)
            if distinct.size <= 10:
                values[str(name)] = tuple(float(v) for v in distinct)
        channels = {}
        if inputs.sequence is not None:
            for j, name in enumerate(inputs.channels):
                col = inputs.sequence[..., j]
                col = col[np.isfinite(col)]
                if col.size:
                    channels[name] = (float(col.min()), float(col.max()))
        return cls(static, values, channels)

    def check(self, inputs: Inputs) -> tuple[np.ndarray, list[str]]:
        """`(outside, reasons)`: per patient whether any input is outside the training
        ranges, and which (empty string when none)."""
        n = len(inputs)
        names = list(self.static)
        messages: list[str] = []
        bad = np.zeros((n, 0), dtype=bool)
        values = np.zeros((n, 0))
        if names:
            # One conversion and one comparison for all columns (this runs on every
            # prediction; a loop over pandas columns cost more than a small model).
            columns = inputs.static.columns
            values = np.asarray(inputs.static.to_numpy(dtype=float))
            if list(columns) != names:
                values = values[:, np.asarray(columns.get_indexer(names), dtype=int)]
            bounds = np.array([self.static[k] for k in names], dtype=float)
            low, high = bounds[:, 0], bounds[:, 1]
            tol = 1e-9 * np.maximum(np.maximum(np.abs(low), np.abs(high)), 1.0)
            finite = np.isfinite(values)
            bad = finite & ((values < low - tol) | (values > high + tol))
            for j, name in enumerate(names):
                known = self.values.get(name)
                if known is not None:
                    bad[:, j] = finite[:, j] & ~np.isin(values[:, j], known)
                    messages.append(f"{name} not one of the training values {list(known)}")
                else:
                    messages.append(
                        f"{name} outside the training range [{low[j]:.4g}, {high[j]:.4g}]"
                    )
        seq_bad = np.zeros((n, 0), dtype=bool)
        seq_messages: list[str] = []
        if inputs.sequence is not None:
            cols = []
            for j, name in enumerate(inputs.channels):
                if name not in self.channels:
                    continue
                lo, hi = self.channels[name]
                col = inputs.sequence[..., j]
                tol_c = 1e-9 * max(abs(lo), abs(hi), 1.0)
                cols.append((np.isfinite(col) & ((col < lo - tol_c) | (col > hi + tol_c))).any(1))
                seq_messages.append(f"{name} outside the training range [{lo:.4g}, {hi:.4g}]")
            if cols:
                seq_bad = np.stack(cols, axis=1)
        outside = np.asarray(bad.any(axis=1) | seq_bad.any(axis=1), dtype=bool)
        text = [""] * n
        for i in np.flatnonzero(outside):
            reasons = [f"{messages[j]} ({values[i, j]:.4g})" for j in np.flatnonzero(bad[i])]
            reasons += [seq_messages[j] for j in np.flatnonzero(seq_bad[i])]
            text[i] = "; ".join(reasons)
        return outside, text

    def to_json(self) -> dict[str, Any]:
        return {
            "static": {k: list(v) for k, v in self.static.items()},
            "values": {k: list(v) for k, v in self.values.items()},
            "channels": {k: list(v) for k, v in self.channels.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainingRanges:
        return cls(
            {k: (float(v[0]), float(v[1])) for k, v in data["static"].items()},
            {k: tuple(float(x) for x in v) for k, v in data["values"].items()},
            {k: (float(v[0]), float(v[1])) for k, v in data["channels"].items()},
        )


# ----------------------------------------------------------------------------- predictions


@dataclasses.dataclass(frozen=True)
class Prediction:
    """What `Surrogate.predict` returns for n patients.

    - `mean`: (n,) or (n, H) predictions; for classifiers the probability of class 1.
    - `lower`, `upper`: the split-conformal interval at `level` (regression), or None.
    - `sd`: the model's own spread (ensemble members, trees, quantiles) when it has one.
    - `out_of_range`: (n,) whether the patient's inputs lie outside the training ranges;
      `reasons`: which inputs (empty string when none).
    """

    mean: np.ndarray
    lower: np.ndarray | None
    upper: np.ndarray | None
    sd: np.ndarray | None
    level: float
    out_of_range: np.ndarray
    reasons: tuple[str, ...]

    def label(self, threshold: float = 0.5) -> np.ndarray:
        """Predicted class (classifiers): probability >= threshold."""
        return self.mean >= threshold


# ----------------------------------------------------------------------------- the base


_REGISTRY: dict[str, type[Surrogate]] = {}


def _check_finite(frame: pd.DataFrame, who: str, allow_missing: bool) -> None:
    for name, dtype in frame.dtypes.items():
        if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)):
            raise TypeError(
                f"{who}: feature {name!r} has dtype {dtype}; surrogates take numeric "
                "features (encode categories as indicators, see surrogates.training_set)."
            )
    values = frame.to_numpy(dtype=float)
    bad = np.isinf(values) if allow_missing else ~np.isfinite(values)
    if bad.any():
        j = int(np.flatnonzero(bad.any(axis=0))[0])
        rows = np.flatnonzero(bad[:, j])[:5].tolist()
        what = "infinite" if allow_missing else "missing or infinite"
        raise ValueError(f"{who}: feature {frame.columns[j]!r} is {what} in rows {rows}.")


class Surrogate(abc.ABC):
    """Base class of every surrogate: one interface for fit, predict, save and load.

    Subclasses implement `_fit(inputs, y, *, key)`, `_predict(inputs) ->
    (mean, sd or None)`, `_save_model(folder)`, `_load_model(folder)` and
    `hyperparameters()`; they set `task` and may set `allows_missing` (NaN features are
    handled by the model itself) and `uses_sequence` (the model reads `Inputs.sequence`
    itself rather than a flattened table).
    """

    task: Task = "regression"
    allows_missing: ClassVar[bool] = False
    uses_sequence: ClassVar[bool] = False

    def __init__(self, *, calibration_fraction: float = 0.15, level: float = 0.9):
        if not 0.0 <= calibration_fraction < 0.5:
            raise ValueError(
                f"calibration_fraction must be in [0, 0.5), got {calibration_fraction}."
            )
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level}.")
        self.calibration_fraction = float(calibration_fraction)
        self.level = float(level)
        self.features: tuple[str, ...] = ()
        self.channels: tuple[str, ...] = ()
        self.sequence_length: int | None = None
        self.ranges: TrainingRanges | None = None
        self.conformal_q: np.ndarray | None = None
        self.output_shape: tuple[int, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    # --- what subclasses implement -----------------------------------------------------

    @abc.abstractmethod
    def _fit(self, inputs: Inputs, y: np.ndarray, *, key: int) -> None:
        """Fit on the proper training part (`y` float (n,) or (n, H); 0/1 for classifiers)."""

    @abc.abstractmethod
    def _predict(self, inputs: Inputs) -> tuple[np.ndarray, np.ndarray | None]:
        """`(mean, sd)`; sd None when the model has no spread of its own."""

    @abc.abstractmethod
    def _save_model(self, folder: Path) -> None: ...

    @abc.abstractmethod
    def _load_model(self, folder: Path) -> None: ...

    @abc.abstractmethod
    def hyperparameters(self) -> dict[str, Any]:
        """The constructor's arguments (JSON types), so that `load` can rebuild it."""

    # --- the shared interface ----------------------------------------------------------

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def fitted(self) -> bool:
        return self.ranges is not None

    def _inputs(self, x: Inputs | pd.DataFrame, who: str) -> Inputs:
        inputs = as_inputs(x)
        _check_finite(inputs.static, who, self.allows_missing)
        if inputs.sequence is not None and not self.allows_missing:
            bad = ~np.isfinite(inputs.sequence)
            if bad.any():
                i, t, c = (int(v[0]) for v in np.nonzero(bad))
                raise ValueError(
                    f"{who}: sequence channel {inputs.channels[c]!r} is missing or infinite "
                    f"(row {i}, step {t})."
                )
        return inputs

    def fit(
        self,
        x: Inputs | pd.DataFrame,
        y: Any,
        *,
        key: int = 0,
        governance: Governance | None = None,
    ) -> Surrogate:
        """Fit on inputs `x` and targets `y` ((n,) or (n, H)); returns self.

        Regressors keep `calibration_fraction` of the patients apart (chosen with `key`)
        for the conformal intervals and fit on the rest. With `governance` (a
        `twins.governance.Governance`, as for a training set of a real cohort), the fit is
        recorded in its audit log as a `training-round` entry (the surrogate, the number of
        patients, the features; no identifier)."""
        who = f"{self.name}.fit"
        inputs = self._inputs(x, who)
        target = np.asarray(y, dtype=float)
        if target.ndim not in (1, 2) or target.shape[0] != len(inputs):
            raise ValueError(
                f"{who}: y must be (n,) or (n, H) with n = {len(inputs)} patients, got shape "
                f"{target.shape}."
            )
        bad = ~np.isfinite(target)
        if bad.any():
            rows = np.flatnonzero(bad.reshape(len(target), -1).any(axis=1))[:5].tolist()
            raise ValueError(f"{who}: the target is missing or infinite in rows {rows}.")
        if self.task == "classification":
            if target.ndim != 1 or not np.isin(target, (0.0, 1.0)).all():
                raise ValueError(f"{who}: a classifier takes a (n,) target of 0/1 (or bool).")
            if np.unique(target).size < 2:
                raise ValueError(f"{who}: the target has one class only.")
        if len(inputs) < 20:
            raise ValueError(f"{who}: at least 20 patients are needed, got {len(inputs)}.")
        self.features = tuple(str(c) for c in inputs.static.columns)
        self.channels = inputs.channels
        self.sequence_length = None if inputs.sequence is None else inputs.sequence.shape[1]
        self.output_shape = target.shape[1:]
        if not (isinstance(key, int | np.integer) and key >= 0):
            raise ValueError(f"{who}: key must be an integer >= 0, got {key!r}.")
        rng = np.random.default_rng(key)
        order = rng.permutation(len(inputs))
        n_cal = round(self.calibration_fraction * len(inputs)) if self.task == "regression" else 0
        cal, train = order[:n_cal], np.sort(order[n_cal:])
        self._fit(inputs.take(train), target[train], key=key)
        self.ranges = TrainingRanges.of(inputs)
        if n_cal:
            mean, sd = self._predict(inputs.take(np.sort(cal)))
            truth = target[np.sort(cal)]
            scale = np.ones_like(mean) if sd is None else np.maximum(sd, 1e-12)
            scores = np.abs(truth - mean) / scale
            # The ceil((m + 1) level) / m empirical quantile: finite-sample coverage.
            m = scores.shape[0]
            rank = min(math.ceil((m + 1) * self.level), m)
            self.conformal_q = np.sort(scores, axis=0)[rank - 1]
        if governance is not None:
            governance.audit.append(
                AuditAction.TRAINING_ROUND,
                actor=governance.actor,
                details={
                    "surrogate": self.name,
                    "patient_count": len(inputs),
                    "features": list(self.features),
                    "channels": list(self.channels),
                },
            )
        return self

    def _require_fitted(self, who: str) -> None:
        if not self.fitted:
            raise RuntimeError(f"{self.name}.{who}: the surrogate is not fitted; call fit first.")

    def _conform(self, x: Inputs | pd.DataFrame, who: str) -> Inputs:
        """The inputs checked against what the model was trained on."""
        inputs = self._inputs(x, who)
        missing = [f for f in self.features if f not in inputs.static.columns]
        if missing:
            raise ValueError(
                f"{who}: features {missing} are missing (trained on {list(self.features)})."
            )
        static = inputs.static
        if tuple(static.columns) != self.features:
            static = pd.DataFrame(static[list(self.features)])
        if self.sequence_length is not None:
            if inputs.sequence is None:
                raise ValueError(f"{who}: the surrogate was trained with sequences; none given.")
            if inputs.channels != self.channels:
                raise ValueError(
                    f"{who}: sequence channels {list(inputs.channels)} differ from the "
                    f"training channels {list(self.channels)}."
                )
            if inputs.sequence.shape[1] != self.sequence_length:
                raise ValueError(
                    f"{who}: sequences of {inputs.sequence.shape[1]} steps; trained on "
                    f"{self.sequence_length}."
                )
        elif inputs.sequence is not None:
            raise ValueError(f"{who}: the surrogate was trained without sequences; got some.")
        if not static.index.equals(pd.RangeIndex(len(static))):
            static = static.reset_index(drop=True)
        return Inputs(static, inputs.sequence, inputs.channels, inputs.times)

    def predict(self, x: Inputs | pd.DataFrame) -> Prediction:
        """Predictions with their interval and the out-of-range flags."""
        who = f"{self.name}.predict"
        self._require_fitted("predict")
        inputs = self._conform(x, who)
        assert self.ranges is not None
        outside, reasons = self.ranges.check(inputs)
        if outside.any():
            first = int(np.flatnonzero(outside)[0])
            warnings.warn(
                f"{who}: {int(outside.sum())} of {len(inputs)} patients have inputs outside "
                f"the training ranges (first, row {first}: {reasons[first]}); their "
                "predictions are extrapolations.",
                ExtrapolationWarning,
                stacklevel=2,
            )
        mean, sd = self._predict(inputs)
        lower = upper = None
        if self.conformal_q is not None:
            scale = np.ones_like(mean) if sd is None else np.maximum(sd, 1e-12)
            half = self.conformal_q * scale
            lower, upper = mean - half, mean + half
        return Prediction(mean, lower, upper, sd, self.level, outside, tuple(reasons))

    # --- persistence -------------------------------------------------------------------

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the surrogate to `folder`: `surrogate.json` and the model's own files.

        The folder is written whole beside the target and then moved into place, so that it
        holds exactly what this surrogate wrote (and `load` can refuse any other file). An
        existing folder is replaced only when it is empty or holds a saved surrogate; any
        other folder is refused (`FileExistsError`), so that no user file is overwritten.
        """
        self._require_fitted("save")
        assert self.ranges is not None
        path = Path(folder)
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise FileExistsError(f"{self.name}.save: {path} exists and is not a folder.")
        if path.is_dir() and any(path.iterdir()) and not (path / _files.META).is_file():
            raise FileExistsError(
                f"{self.name}.save: {path} holds files and no saved surrogate; refusing to "
                "overwrite them. Choose an empty or new folder."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".saving", dir=path.parent))
        try:
            self._save_model(staging)
            meta: dict[str, Any] = {
                "format": FORMAT_VERSION,
                "class": type(self).__name__,
                "task": self.task,
                "hyperparameters": self.hyperparameters(),
                "calibration_fraction": self.calibration_fraction,
                "level": self.level,
                "features": list(self.features),
                "channels": list(self.channels),
                "sequence_length": self.sequence_length,
                "output_shape": list(self.output_shape),
                "ranges": self.ranges.to_json(),
                "conformal_q": None
                if self.conformal_q is None
                else np.asarray(self.conformal_q).tolist(),
                "files": _files.file_records(staging),
            }
            meta["checksum"] = _files.meta_checksum(meta)
            (staging / _files.META).write_text(json.dumps(meta, indent=1, allow_nan=False))
            _files.fsync_tree(staging)
            old = None
            if path.exists():
                old = path.with_name(f".{path.name}.{staging.name}.old")
                path.rename(old)
            staging.rename(path)
            if old is not None:
                shutil.rmtree(old)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Surrogate:
        """Read a surrogate written by `save` (any class when called on `Surrogate`).

        Nothing in the folder can run code: the model files are read in formats that hold
        only data, and before any of them is read every file is checked against the size and
        SHA-256 that `surrogate.json` records (see `surrogates._files`).

        **Raises:** `FileNotFoundError` for a folder without `surrogate.json`; `ValueError`
        for a file that is not valid JSON, a format this version does not read, a checksum
        that differs, a file the listing does not name, or an unknown class; `TypeError`
        when the folder holds another class than the one `load` was called on.
        """
        path = Path(folder)
        meta_file = path / _files.META
        if not meta_file.is_file():
            raise FileNotFoundError(f"{path}: no {_files.META}; not a saved surrogate.")
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{meta_file}: not valid JSON ({error}).") from error
        if not isinstance(meta, dict):
            raise ValueError(f"{meta_file}: expected a JSON object, got {type(meta).__name__}.")
        if meta.get("format") != FORMAT_VERSION:
            legacy = (
                " It was written by an earlier version of pkpd-twins, which saved "
                "scikit-learn models with pickle and recorded no checksums; fit and save the "
                "surrogate again."
                if meta.get("format") == 1
                else ""
            )
            raise ValueError(
                f"{meta_file}: format {meta.get('format')!r}; this version reads format "
                f"{FORMAT_VERSION}.{legacy}"
            )
        _files.verify_folder(path, meta, meta_file)
        kind = _REGISTRY.get(meta.get("class"))  # type: ignore[arg-type]
        if kind is None:
            raise ValueError(f"{meta_file}: unknown surrogate class {meta.get('class')!r}.")
        if cls is not Surrogate and not issubclass(kind, cls):
            raise TypeError(f"{meta_file} holds a {meta['class']}, not a {cls.__name__}.")
        try:
            obj = kind(
                **meta["hyperparameters"],
                calibration_fraction=meta["calibration_fraction"],
                level=meta["level"],
            )
            obj.features = tuple(str(f) for f in meta["features"])
            obj.channels = tuple(str(c) for c in meta["channels"])
            obj.sequence_length = meta["sequence_length"]
            obj.output_shape = tuple(int(d) for d in meta["output_shape"])
            obj.ranges = TrainingRanges.from_json(meta["ranges"])
            q = meta["conformal_q"]
            obj.conformal_q = None if q is None else np.asarray(q, dtype=float)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"{meta_file}: not a valid description of a {meta['class']} "
                f"({type(error).__name__}: {error})."
            ) from error
        obj._load_model(path)
        return obj

    def __repr__(self) -> str:
        state = "fitted" if self.fitted else "not fitted"
        return f"{self.name}({self.task}, {len(self.features)} features, {state})"


def load(folder: str | os.PathLike[str]) -> Surrogate:
    """Read any saved surrogate."""
    return Surrogate.load(folder)


def feature_frame(columns: Mapping[str, Sequence[float]]) -> pd.DataFrame:
    """A float DataFrame from columns (a convenience for hand-made inputs)."""
    return pd.DataFrame({k: np.asarray(v, dtype=float) for k, v in columns.items()})
