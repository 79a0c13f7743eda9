"""A surrogate of the glucose response of type 1 diabetes patients: an LSTM on the CGM
sequence, trained on closed-loop simulations of `twins.t1d`.

- `glucose_windows(course, plan, patients)`: cut a `twins.t1d.Course` into windows: the
  last `history` CGM readings (5-min grid), the carbohydrate and the insulin boluses over
  the history and the horizon ahead, the patient's descriptors (body weight, carbohydrate
  ratio, correction factor, basal rate), and as target the mechanistic subcutaneous
  glucose (`Gsub`, what the CGM measures, without the sensor's error) at the `horizon`
  sample times ahead. Returns `GlucoseWindows`.
- `GlucoseScenario` and `simulate_windows`: the closed loop of `twins.t1d.simulate_policy`
  under one policy and meal pattern (patients' therapy settings optionally mis-set at
  random), cut into windows.
- `GlucoseSurrogate`: an `LSTMSurrogate` (the project's LSTM network and training loop)
  that predicts the change of glucose from the last CGM reading over the horizon; the
  shared interface (`fit`, `predict` with conformal intervals and out-of-range flags,
  `save`, `load`).
- `clarke_zones`: the Clarke error grid zones (Clarke WL et al. Diabetes Care
  1987;10:622-628); `glucose_fidelity`: RMSE and MAE by horizon, Clarke zones A+B, and
  the consensus metrics of the predicted traces against the mechanistic ones, for the
  surrogate and the last value carried forward.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from twins import t1d

from ._base import Inputs, Prediction
from ._flax import LSTMSurrogate
from ._training import Training, positive_int

#: Readings of history the surrogate reads (4 h of 5-min readings).
HISTORY = 48
#: Sample times ahead it predicts (2 h of 5-min samples).
HORIZON = 24
#: Minutes between samples (the CGM's).
SAMPLE_TIME = 5.0
#: The sequence channels: the CGM reading (mg/dL; 0 ahead), whether it is a reading (1 over
#: the history, 0 ahead), the carbohydrate whose meal starts at the sample (g) and the
#: insulin bolus given there (U).
CHANNELS = ("cgm", "measured", "carbs", "bolus")
#: The static descriptors: body weight (kg), the quest's carbohydrate ratio (g/U) and
#: correction factor (mg/dL per U), and the basal rate (U/h) the patient is given.
STATIC = ("BW", "CR", "CF", "basal")


class GlucoseWindowError(ValueError):
    """Windows the glucose surrogate cannot read (the message names the field and row)."""


@dataclasses.dataclass(frozen=True)
class GlucoseWindows:
    """Windows of closed-loop courses, one row each.

    - `inputs`: `surrogates.Inputs`: `static` (`STATIC` columns), `sequence` (n, history +
      horizon, `CHANNELS`), `times` the sample times relative to the last reading (h).
    - `target`: (n, horizon) the mechanistic subcutaneous glucose at the samples ahead,
      limited to the sensor's range (mg/dL: the CGM reading without the sensor's error);
      `bg` the plasma glucose there (not limited).
    - `last_cgm`: (n,) the last CGM reading (mg/dL): the last-value-carried-forward
      baseline's prediction at every horizon.
    - `patient`: (n,) patient names; `start`: (n,) the sample index of the last reading in
      the course; `scenario`: (n,) the scenario's name.
    """

    inputs: Inputs
    target: np.ndarray
    bg: np.ndarray
    last_cgm: np.ndarray
    patient: np.ndarray
    start: np.ndarray
    scenario: np.ndarray

    def __len__(self) -> int:
        return len(self.target)

    def take(self, index: Any) -> GlucoseWindows:
        """The windows at `index` (positions)."""
        index = np.asarray(index)
        return GlucoseWindows(
            self.inputs.take(index),
            self.target[index],
            self.bg[index],
            self.last_cgm[index],
            self.patient[index],
            self.start[index],
            self.scenario[index],
        )

    @classmethod
    def concatenate(cls, parts: Sequence[GlucoseWindows]) -> GlucoseWindows:
        """The windows of `parts`, one after the other."""
        if not parts:
            raise GlucoseWindowError("GlucoseWindows.concatenate: no windows given.")
        first = parts[0].inputs
        sequences = []
        for k, p in enumerate(parts):
            seq = p.inputs.sequence
            if seq is None or first.sequence is None:
                raise GlucoseWindowError(
                    f"GlucoseWindows.concatenate: part {k} has no sequence (not windows)."
                )
            if p.inputs.channels != first.channels or seq.shape[1:] != first.sequence.shape[1:]:
                raise GlucoseWindowError(
                    f"GlucoseWindows.concatenate: part {k} has another window layout "
                    f"({seq.shape[1:]}, {list(p.inputs.channels)}; expected "
                    f"{first.sequence.shape[1:]}, {list(first.channels)})."
                )
            sequences.append(seq)
        inputs = Inputs(
            pd.concat([p.inputs.static for p in parts], ignore_index=True),
            np.concatenate(sequences),
            first.channels,
            first.times,
        )
        return cls(
            inputs,
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("target", "bg", "last_cgm", "patient", "start", "scenario")
            ),
        )


def window_times(history: int = HISTORY, horizon: int = HORIZON, sample_time: float = SAMPLE_TIME):
    """The sample times of a window relative to its last reading (h): `history` readings
    up to 0, then `horizon` samples ahead."""
    return (np.arange(history + horizon) - (history - 1)) * sample_time / 60.0


def glucose_windows(
    course: t1d.Course,
    plan: t1d.MealPlan,
    patients: Sequence[t1d.VirtualPatient],
    *,
    every: int = 6,
    history: int = HISTORY,
    horizon: int = HORIZON,
    begin: int | None = None,
    scenario: str = "",
    cr: Any = None,
    cf: Any = None,
    sensor: t1d.CGMSensor = t1d.SENSOR,
) -> GlucoseWindows:
    """Cut a closed-loop `course` (`twins.t1d.simulate_policy`) into windows.

    A window ends its history at sample `s` (the reading "now") and holds: the CGM readings
    `s - history + 1 ... s`; the carbohydrate and the boluses of the meals starting at
    samples `s - history + 1 ... s + horizon` (placed at each meal's first sample: the
    meals and doses ahead are inputs, as a planned meal and its bolus are); the patient's
    body weight, carbohydrate ratio, correction factor and basal rate; and as target the
    subcutaneous glucose at `s + 1 ... s + horizon` limited to the sensor's range (39-400
    mg/dL by default: the noise-free CGM reading; the model's glucose can fall far below
    what a sensor reports, to a few mg/dL in a patient given much too much insulin).
    Windows end their history every `every` samples from `begin` (default `history - 1`,
    the first full history) to the last whose horizon fits in the course.

    **Arguments:** `course`; the `plan` it ran; its `patients` (for the descriptors);
    `every`, `history`, `horizon` (samples, >= 1); `begin` (sample index); `scenario` (a
    name kept with each window); `cr`, `cf`: the carbohydrate ratios and correction factors
    the patients' policy used (`(patients,)`; default the quest's), as a clinician would
    record them; `sensor` (its range limits the target).

    **Raises:** `GlucoseWindowError` naming what does not fit (the course and the patients
    or the plan, a course too short for one window).
    """
    every = positive_int("every", every)
    history = positive_int("history", history)
    horizon = positive_int("horizon", horizon)
    cgm = np.asarray(course.cgm, dtype=float)
    gsub = np.asarray(course.gsub, dtype=float)
    bg = np.asarray(course.bg, dtype=float)
    n, samples = cgm.shape
    if len(patients) != n:
        raise GlucoseWindowError(
            f"glucose_windows: the course has {n} patients, {len(patients)} patients given."
        )
    times = np.asarray(course.times, dtype=float)
    dt_min = float(times[1] - times[0]) * 60.0 if times.size > 1 else SAMPLE_TIME
    if abs(dt_min - SAMPLE_TIME) > 1e-9:
        raise GlucoseWindowError(
            f"glucose_windows: the course's samples are {dt_min:g} min apart; the surrogate "
            f"reads a {SAMPLE_TIME:g}-min grid."
        )
    carbs = plan.for_patients(n).reshape(n, -1)
    boluses = np.asarray(course.boluses, dtype=float)
    if boluses.shape != carbs.shape:
        raise GlucoseWindowError(
            f"glucose_windows: the course has {boluses.shape[1]} meals per patient, the plan "
            f"{carbs.shape[1]}."
        )
    per_day = round(24.0 * 60.0 / SAMPLE_TIME)
    slots = np.array(
        [d * per_day + round(t * 60.0 / SAMPLE_TIME) for d in range(plan.days) for t in plan.times]
    )
    carb_grid = np.zeros((n, samples))
    bolus_grid = np.zeros((n, samples))
    carb_grid[:, slots] = carbs
    bolus_grid[:, slots] = boluses
    first = history - 1 if begin is None else int(begin)
    if first < history - 1:
        raise GlucoseWindowError(
            f"glucose_windows: begin = {first} leaves fewer than history = {history} readings."
        )
    ends = np.arange(first, samples - horizon, every)
    if ends.size == 0:
        raise GlucoseWindowError(
            f"glucose_windows: a course of {samples} samples holds no window of {history} + "
            f"{horizon} samples from sample {first}."
        )
    k = ends.size
    rows_p = np.repeat(np.arange(n), k)
    rows_s = np.tile(ends, n)
    span = rows_s[:, None] + np.arange(-(history - 1), horizon + 1)[None]  # (m, L + H)
    seq = np.zeros((rows_p.size, history + horizon, len(CHANNELS)))
    past = np.arange(history + horizon) < history
    seq[:, past, 0] = cgm[rows_p[:, None], span[:, :history]]
    seq[:, past, 1] = 1.0
    seq[:, :, 2] = carb_grid[rows_p[:, None], span[:, : history + horizon]]
    seq[:, :, 3] = bolus_grid[rows_p[:, None], span[:, : history + horizon]]
    ahead = rows_s[:, None] + np.arange(1, horizon + 1)[None]
    cr = np.array([p.carb_ratio for p in patients]) if cr is None else np.asarray(cr, float)
    cf = np.array([p.correction_factor for p in patients]) if cf is None else np.asarray(cf, float)
    static = pd.DataFrame(
        {
            "BW": np.array([p.body_weight for p in patients])[rows_p],
            "CR": cr[rows_p],
            "CF": cf[rows_p],
            "basal": np.asarray(course.basal, dtype=float)[rows_p],
        }
    )
    inputs = Inputs(static, seq, CHANNELS, window_times(history, horizon))
    return GlucoseWindows(
        inputs,
        np.clip(gsub[rows_p[:, None], ahead], sensor.low, sensor.high),
        bg[rows_p[:, None], ahead],
        cgm[rows_p, rows_s],
        np.array([p.name for p in patients], dtype=object)[rows_p],
        rows_s,
        np.full(rows_p.size, scenario, dtype=object),
    )


# ----------------------------------------------------------------------------- scenarios


@dataclasses.dataclass(frozen=True)
class GlucoseScenario:
    """A closed-loop scenario to simulate for the surrogate's data.

    **Fields:**

    - `name`.
    - `policy`: a `twins.t1d.Policy` (`BasalBolus`, `ParametrisedPolicy`,
      `FactorBasalBolus`: its per-day factors drawn log-uniform in `factors`), `theta` its
      parameters.
    - `times`, `mean`, `sd`: the meals (`twins.t1d.random_meals`: times of day, mean and
      SD of the carbohydrate, g); `days`.
    - `settings_sd`: each patient's CR, CF and basal rate multiplied by `exp(N(0, sd^2))`
      (three independent draws): therapy settings that do not fit the patient, so that the
      data hold over- and under-dosing, not one controller's good control. 0: the quest's.
    - `factors`: `(low, high)` of the daily meal-bolus factors of `FactorBasalBolus`.
    """

    name: str
    policy: t1d.Policy
    theta: Any = None
    times: tuple[float, ...] = (7.0, 12.0, 18.0)
    mean: tuple[float, ...] = (45.0, 70.0, 80.0)
    sd: tuple[float, ...] = (10.0, 10.0, 10.0)
    days: int = 3
    settings_sd: float = 0.0
    factors: tuple[float, float] = (0.6, 1.6)


def simulate_windows(
    patients: Sequence[t1d.VirtualPatient],
    scenario: GlucoseScenario,
    *,
    seed: int,
    every: int = 6,
    history: int = HISTORY,
    horizon: int = HORIZON,
) -> tuple[GlucoseWindows, t1d.Course, t1d.MealPlan, dict[str, np.ndarray]]:
    """Simulate `patients` under `scenario` (`twins.t1d.simulate_policy`, vmapped; meals,
    settings and CGM noise from `seed`) and cut the course into windows
    (`glucose_windows`).

    **Returns:** `(windows, course, plan, constants)`: the constants are the patients'
    `cr`, `cf`, `basal` (and `factor`) the policy used.
    """
    patients = list(patients)
    n = len(patients)
    rng = np.random.default_rng([seed, 7])
    plan = t1d.random_meals(
        n, scenario.days, seed=seed, times=scenario.times, mean=scenario.mean, sd=scenario.sd
    )
    consts = t1d.patient_constants(patients)
    if scenario.settings_sd > 0:
        z = rng.standard_normal((3, n)) * scenario.settings_sd
        consts = {
            "cr": consts["cr"] * np.exp(z[0]),
            "cf": consts["cf"] * np.exp(z[1]),
            "basal": consts["basal"] * np.exp(z[2]),
        }
    if isinstance(scenario.policy, t1d.FactorBasalBolus):
        low, high = np.log(scenario.factors)
        consts["factor"] = np.exp(rng.uniform(low, high, (n, scenario.days)))
    params = {k: jnp.asarray(v) for k, v in t1d.stack_params(patients).items()}
    course = t1d.simulate_policy(
        scenario.policy,
        scenario.theta,
        params,
        plan,
        key=jax.random.key(seed),
        constants=consts,
    )
    windows = glucose_windows(
        course,
        plan,
        patients,
        every=every,
        history=history,
        horizon=horizon,
        scenario=scenario.name,
        cr=consts["cr"],
        cf=consts["cf"],
    )
    return windows, course, plan, consts


# ----------------------------------------------------------------------------- surrogate


class GlucoseSurrogate(LSTMSurrogate):
    """An LSTM surrogate of the glucose response: from a window's CGM history, its meals
    and boluses (past and ahead) and the patient's descriptors, the subcutaneous glucose at
    the `horizon` samples ahead (mg/dL).

    It is `LSTMSurrogate` (the project's LSTM network and training loop, a deep ensemble,
    split-conformal intervals per horizon, training ranges) fitted to the change of glucose
    from the last CGM reading, `target - last reading`, which it adds back when it predicts:
    the network learns the response to the inputs rather than the level, and the last value
    carried forward is its starting point. Inputs are `GlucoseWindows.inputs`
    (`glucose_windows`); the grid (`history` readings, `horizon` samples, 5 min apart) and
    the channels must be those it was trained on (`GlucoseWindowError` otherwise), and
    windows whose descriptors, readings, meals or boluses lie outside the training ranges
    are flagged (`Prediction.out_of_range`, `reasons`, an `ExtrapolationWarning`).

    **Arguments:** `history`, `horizon` (samples); the `LSTMSurrogate`'s network and
    training arguments (defaults here: 64 LSTM units, 32-unit static and head layers,
    `GlucoseSurrogate.default_training`: 60 epochs, batches of 256, learning rate 3e-3,
    3 members, patience 8); `calibration_fraction`, `level`.

    References: Hochreiter S, Schmidhuber J. Long short-term memory. Neural Comput
    1997;9:1735-1780. Lakshminarayanan B, Pritzel A, Blundell C. NeurIPS 2017 (deep
    ensembles). Lei J et al. J Am Stat Assoc 2018;113:1094-1111 (split-conformal
    intervals).
    """

    default_training: ClassVar[Training] = Training(
        epochs=60, batch_size=256, learning_rate=3e-3, patience=8
    )

    def __init__(
        self,
        *,
        history: int = HISTORY,
        horizon: int = HORIZON,
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
            "regression",
            hidden=hidden,
            layers=layers,
            static_hidden=static_hidden,
            head_hidden=head_hidden,
            dropout=dropout,
            training=training,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            ensemble=ensemble,
            patience=patience,
            validation_fraction=validation_fraction,
            calibration_fraction=calibration_fraction,
            level=level,
        )
        self.history_steps = positive_int("history", history)
        self.horizon = positive_int("horizon", horizon)

    def hyperparameters(self) -> dict[str, Any]:
        out = {k: v for k, v in super().hyperparameters().items() if k != "task"}
        return {"history": self.history_steps, "horizon": self.horizon, **out}

    def _check_windows(self, inputs: Inputs, who: str) -> None:
        if inputs.sequence is None or inputs.channels != CHANNELS:
            raise GlucoseWindowError(
                f"{who}: expected windows with the sequence channels {list(CHANNELS)} "
                f"(surrogates.glucose_windows), got {list(inputs.channels)}."
            )
        steps = self.history_steps + self.horizon
        if inputs.sequence.shape[1] != steps:
            raise GlucoseWindowError(
                f"{who}: windows of {inputs.sequence.shape[1]} samples; this surrogate reads "
                f"{self.history_steps} readings and {self.horizon} samples ahead ({steps})."
            )
        expected = window_times(self.history_steps, self.horizon)
        if inputs.times is None or not np.allclose(inputs.times, expected, atol=1e-9):
            raise GlucoseWindowError(
                f"{who}: the windows' sample times are not the {SAMPLE_TIME:g}-min grid of "
                f"{self.history_steps} readings up to 0 h and {self.horizon} ahead."
            )
        seq = inputs.sequence
        measured = seq[:, : self.history_steps, 1]
        if not (np.all(measured == 1.0) and np.all(seq[:, self.history_steps :, 1] == 0.0)):
            row = (
                int(np.flatnonzero(~(measured == 1.0).all(1))[0])
                if not np.all(measured == 1.0)
                else int(np.flatnonzero(~(seq[:, self.history_steps :, 1] == 0.0).all(1))[0])
            )
            raise GlucoseWindowError(
                f"{who}: row {row}: channel 'measured' must be 1 over the {self.history_steps} "
                "readings and 0 ahead (every reading present)."
            )
        for c, name in ((2, "carbs"), (3, "bolus")):
            bad = seq[..., c] < 0
            if bad.any():
                i, t = (int(v[0]) for v in np.nonzero(bad))
                raise GlucoseWindowError(
                    f"{who}: row {i}, sample {t}: channel {name!r} is {float(seq[i, t, c]):g}; "
                    "expected >= 0."
                )
        if np.any(seq[:, self.history_steps :, 0] != 0.0):
            row = int(np.flatnonzero((seq[:, self.history_steps :, 0] != 0.0).any(1))[0])
            raise GlucoseWindowError(
                f"{who}: row {row}: channel 'cgm' must be 0 ahead of the last reading (the "
                "readings ahead are what the surrogate predicts)."
            )

    def predict(self, x: Inputs | pd.DataFrame) -> Prediction:
        """Predictions (n, horizon) with their interval and the out-of-range flags; the
        windows' layout is checked first (`GlucoseWindowError`)."""
        who = f"{self.name}.predict"
        if not isinstance(x, Inputs):
            raise GlucoseWindowError(
                f"{who}: expected the windows' surrogates.Inputs (GlucoseWindows.inputs), got "
                f"{type(x).__name__}."
            )
        self._require_fitted("predict")
        self._check_windows(x, who)
        return super().predict(x)

    def _last(self, inputs: Inputs) -> np.ndarray:
        assert inputs.sequence is not None
        return inputs.sequence[:, self.history_steps - 1, 0]

    def _fit(self, inputs: Inputs, y: np.ndarray, *, key: int) -> None:
        who = f"{self.name}.fit"
        self._check_windows(inputs, who)
        if y.ndim != 2 or y.shape[1] != self.horizon:
            raise GlucoseWindowError(
                f"{who}: expected a target of shape (windows, {self.horizon}) (mg/dL), got "
                f"{y.shape}."
            )
        super()._fit(inputs, y - self._last(inputs)[:, None], key=key)

    def _predict(self, inputs: Inputs) -> tuple[np.ndarray, np.ndarray | None]:
        mean, sd = super()._predict(inputs)
        return mean + self._last(inputs)[:, None], sd


# ----------------------------------------------------------------------------- fidelity


def clarke_zones(reference: Any, prediction: Any) -> np.ndarray:
    """The Clarke error grid zone ("A" to "E") of each pair of glucose values (mg/dL).

    Reference $x$, prediction $y$; in this order, the first that holds:

    - A: $y$ within 20 % of $x$, or both $\\le 70$;
    - E: $x \\ge 180$ and $y \\le 70$, or $x \\le 70$ and $y \\ge 180$ (treatment opposite
      to what is needed);
    - C: $70 \\le x \\le 290$ and $y \\ge x + 110$, or $130 \\le x \\le 180$ and
      $y \\le 7x/5 - 182$ (overcorrection);
    - D: $x \\ge 240$ and $70 \\le y \\le 180$, or $x \\le 175/3$ and $70 \\le y \\le 180$,
      or $175/3 \\le x \\le 70$ and $y \\ge 6x/5$ (a failure to detect);
    - B: the rest (benign errors).

    The grid was drawn for meters against laboratory reference values; here it is applied
    to a surrogate's predicted glucose against the mechanistic model's, as glucose-
    prediction studies do.

    **Arguments:** `reference`, `prediction`: arrays of the same shape, finite, >= 0.

    **Returns:** an array of one-letter strings of that shape.

    References: Clarke WL, Cox D, Gonder-Frederick LA, Carter W, Pohl SL. Evaluating
    clinical accuracy of systems for self-monitoring of blood glucose. Diabetes Care
    1987;10:622-628.
    """
    x = np.asarray(reference, dtype=float)
    y = np.asarray(prediction, dtype=float)
    if x.shape != y.shape:
        raise ValueError(
            f"clarke_zones: reference and prediction have shapes {x.shape} and {y.shape}."
        )
    bad = ~np.isfinite(x) | ~np.isfinite(y) | (x < 0) | (y < 0)
    if bad.any():
        i = tuple(int(v[0]) for v in np.nonzero(bad))
        raise ValueError(
            f"clarke_zones: expected finite glucose >= 0 (mg/dL), got reference {x[i]!r} and "
            f"prediction {y[i]!r} at index {i}."
        )
    zone_a = ((x <= 70) & (y <= 70)) | ((y >= 0.8 * x) & (y <= 1.2 * x))
    zone_e = ((x >= 180) & (y <= 70)) | ((x <= 70) & (y >= 180))
    zone_c = ((x >= 70) & (x <= 290) & (y >= x + 110)) | (
        (x >= 130) & (x <= 180) & (y <= 7.0 / 5.0 * x - 182.0)
    )
    zone_d = (
        ((x >= 240) & (y >= 70) & (y <= 180))
        | ((x <= 175.0 / 3.0) & (y >= 70) & (y <= 180))
        | ((x >= 175.0 / 3.0) & (x <= 70) & (y >= 6.0 / 5.0 * x))
    )
    return np.select([zone_a, zone_e, zone_c, zone_d], ["A", "E", "C", "D"], default="B")


def _metrics(trace: np.ndarray) -> dict[str, np.ndarray]:
    m = jax.vmap(t1d.cgm_metrics)(jnp.asarray(trace))
    return {
        "time_in_range": np.asarray(m.time_in_range),
        "time_below_70": np.asarray(m.time_below_70),
        "mean_glucose": np.asarray(m.mean_glucose),
    }


def glucose_fidelity(
    windows: GlucoseWindows, prediction: np.ndarray, *, horizons: Sequence[int] = (6, 12, 24)
) -> dict[str, Any]:
    """How close `prediction` (n, horizon) is to the mechanistic glucose of `windows`, and
    how close the last value carried forward (LVCF) is.

    - `rmse`, `mae` (mg/dL) at each of `horizons` (samples ahead: 6 = 30 min) and over
      every sample of the horizon, for the surrogate and LVCF;
    - `clarke_ab`: the share of points in Clarke zones A or B (`clarke_zones`, reference
      the mechanistic glucose), and `clarke_a`, over every sample of the horizon;
    - `consensus`: where the windows tile each patient's course without overlap (windows
      `horizon` samples apart), the per-patient time in range 70-180 and below 70 and the
      mean glucose (`twins.t1d.cgm_metrics`) of the predicted traces and of the mechanistic
      one, their mean over patients and the mean absolute difference.

    **Returns:** a dict of floats (JSON-ready).
    """
    pred = np.asarray(prediction, dtype=float)
    truth = windows.target
    if pred.shape != truth.shape:
        raise ValueError(
            f"glucose_fidelity: prediction has shape {pred.shape}; the windows' target "
            f"{truth.shape}."
        )
    lvcf = np.repeat(windows.last_cgm[:, None], truth.shape[1], axis=1)
    out: dict[str, Any] = {"windows": len(windows), "horizon_samples": truth.shape[1]}
    for label, guess in (("surrogate", pred), ("lvcf", lvcf)):
        err = guess - truth
        row: dict[str, Any] = {
            "rmse": float(np.sqrt(np.mean(err**2))),
            "mae": float(np.mean(np.abs(err))),
        }
        for h in horizons:
            if 1 <= h <= truth.shape[1]:
                e = err[:, h - 1]
                row[f"rmse_{h * SAMPLE_TIME:g}min"] = float(np.sqrt(np.mean(e**2)))
                row[f"mae_{h * SAMPLE_TIME:g}min"] = float(np.mean(np.abs(e)))
        zones = clarke_zones(truth, np.maximum(guess, 0.0))
        row["clarke_a"] = float(np.mean(zones == "A"))
        row["clarke_ab"] = float(np.mean((zones == "A") | (zones == "B")))
        out[label] = row
    out["consensus"] = _consensus(windows, pred, lvcf)
    return out


def _consensus(windows: GlucoseWindows, pred: np.ndarray, lvcf: np.ndarray) -> dict[str, Any]:
    """Per-patient consensus metrics over windows that tile the course (see
    `glucose_fidelity`); empty when the windows overlap."""
    horizon = windows.target.shape[1]
    keys = [f"{s}|{p}" for s, p in zip(windows.scenario, windows.patient, strict=True)]
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    traces: dict[str, list[np.ndarray]] = {"mechanistic": [], "surrogate": [], "lvcf": []}
    for rows in groups.values():
        rows = sorted(rows, key=lambda i: windows.start[i])
        starts = windows.start[rows]
        if len(rows) < 2 or np.any(np.diff(starts) != horizon):
            return {}
        traces["mechanistic"].append(windows.target[rows].ravel())
        traces["surrogate"].append(pred[rows].ravel())
        traces["lvcf"].append(lvcf[rows].ravel())
    length = {t.size for t in traces["mechanistic"]}
    if len(length) != 1:  # courses of different lengths: one call per length
        return {}
    result: dict[str, Any] = {"patients": len(groups), "hours": length.pop() * SAMPLE_TIME / 60}
    stacked = {k: _metrics(np.stack(v)) for k, v in traces.items()}
    for name in ("time_in_range", "time_below_70", "mean_glucose"):
        truth = stacked["mechanistic"][name]
        result[name] = {"mechanistic": float(np.mean(truth))}
        for label in ("surrogate", "lvcf"):
            guess = stacked[label][name]
            result[name][label] = float(np.mean(guess))
            result[name][f"{label}_mean_abs_difference"] = float(np.mean(np.abs(guess - truth)))
    return result
