"""Dosing regimens: a pytree of fixed-size event arrays with NONMEM semantics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._custom_types import Array, ArrayLike, EventBool, EventFloat, EventInt

#: `rate` code of an infusion whose rate is a model parameter (NONMEM `RATE=-1`, parameter `Rn`).
MODELLED_RATE = -1.0
#: `rate` code of an infusion whose duration is a model parameter (NONMEM `RATE=-2`, `Dn`).
MODELLED_DURATION = -2.0
#: The most earlier dosing intervals a steady-state dose's lag plus infusion may span: the
#: steady state sums the doses still running, and the work grows with their number (an
#: infusion of 1 h every 0.01 h would be 100 overlapping infusions; every 1e-6 h, a million).
#: An infusion much longer than its interval is a constant infusion: `SS=1, AMT=0, RATE>0,
#: II=0` (`steady_state(infusion(0, rate=...), ii=0)`).
MAX_SS_INTERVALS = 64


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)  # pyright: ignore[reportAttributeAccessIssue]


def _join(parts: Sequence[Any], *, stack: bool = False) -> Array:
    """`jnp.concatenate` (or `jnp.stack`) of `parts`; when none is traced, joined on the host
    by NumPy and transferred once (a regimen built from records or planned for a twin is
    concrete: one transfer instead of a dispatched operation per piece)."""
    if all(_is_concrete(p) for p in parts):
        host = [np.asarray(p) for p in parts]
        return jnp.asarray(np.stack(host) if stack else np.concatenate(host))
    return jnp.stack(list(parts)) if stack else jnp.concatenate(list(parts))


def _check(cond: Any, message: str) -> None:
    """Raise `ValueError(message)` when a concrete condition is false (skipped under tracing)."""
    if _is_concrete(cond) and not bool(np.all(np.asarray(cond))):
        raise ValueError(message)


#: The values of padding events (`Regimen.pad`): no dose (`mask=False`, amount 0), sorted last.
_PAD_FILL: dict[str, Any] = {
    "time": 0.0,
    "amount": 0.0,
    "cmt": 1,
    "rate": 0.0,
    "duration": 0.0,
    "lag": 0.0,
    "bioav": 1.0,
    "evid": 1,
    "ss": 0,
    "ii": 0.0,
    "order": np.inf,
    "mask": False,
}


class Regimen(eqx.Module):
    """A dosing regimen for one patient: event arrays of one fixed length.

    Every event is one NONMEM dose or reset record with its additional doses (`ADDL`)
    already expanded. Padding events (`mask=False`) have no effect, so that regimens of
    different lengths can be padded to one size (`Regimen.pad`, `stack`) and `jax.vmap`ped
    together. Build regimens with `bolus`, `infusion`, `oral`, `repeat`, `steady_state`,
    `reset` and `+`, or from NONMEM records with `pkpd.regimen_from_records`.

    **Fields** (one entry per event):

    - `time`: record time (h).
    - `amount`: dose amount (mg), before bioavailability.
    - `cmt`: dosing compartment, 1-based as NONMEM's `CMT`.
    - `rate`: `0` for a bolus, `> 0` a zero-order infusion rate (mg/h), `-1` the rate is the
      model parameter `R<cmt>`, `-2` the duration is `D<cmt>` (or `duration` when the
      parameters carry no `D<cmt>`).
    - `duration`: infusion duration (h) used with `rate == -2`.
    - `lag`: lag time of this dose (h), added to the model's `ALAG<cmt>`.
    - `bioav`: bioavailable fraction of this dose, multiplied by the model's `F<cmt>`.
    - `evid`: 1 dose, 3 reset, 4 reset and dose.
    - `ss`: 0 none, 1 steady state (reset first), 2 steady state added to the current state.
    - `ii`: interdose interval (h) of a steady-state dose; 0 with `amount == 0`, `rate > 0`
      and `ss == 1` means a constant infusion at steady state.
    - `order`: tie-break at equal times (smaller first).
    - `mask`: `False` on padding events.
    - `addl_offset`: how many events before this one the dose record that initiated it
      sits: `0` for a record's own dose, `k * n` for the `k`-th additional dose (`ADDL`) of
      `repeat` over `n` events; `None` (the default) means 0 for every event. A reset
      (EVID 3 or 4, or SS=1) cancels the doses of earlier records that have not entered the
      system yet: their additional doses and their lagged doses (NONMEM Users Guide VI,
      section V.K).

    `ss_intervals` (static) bounds how many earlier intervals a steady-state dose's lag plus
    infusion duration may span; it is raised automatically by the constructors where the
    values are known. `has_ss` (static) says whether any event may be a steady-state dose:
    steady states are only computed when it is true. `has_reset` and `has_infusion` (static)
    say whether any event may be a reset (EVID 3/4) or an infusion; when false the engine
    leaves those timeline entries out. Constructors set all three from the values.
    """

    time: EventFloat
    amount: EventFloat
    cmt: EventInt
    rate: EventFloat
    duration: EventFloat
    lag: EventFloat
    bioav: EventFloat
    evid: EventInt
    ss: EventInt
    ii: EventFloat
    order: EventFloat
    mask: EventBool
    addl_offset: EventInt | None = None
    ss_intervals: int = eqx.field(static=True, default=1)
    has_ss: bool = eqx.field(static=True, default=False)
    has_reset: bool = eqx.field(static=True, default=True)
    has_infusion: bool = eqx.field(static=True, default=True)

    @property
    def n_events(self) -> int:
        """Number of event slots (padding included)."""
        return self.time.shape[-1]

    def __add__(self, other: Regimen) -> Regimen:
        if not isinstance(other, Regimen):
            return NotImplemented
        return concatenate([self, other])

    def pad(self, n_events: int) -> Regimen:
        """Pad with no-effect events to `n_events` slots.

        **Arguments:**

        - `n_events`: the new length; must be at least `self.n_events`.

        **Returns:** a `Regimen` whose extra events have `mask=False`.
        """
        extra = n_events - self.n_events
        if extra < 0:
            raise ValueError(
                f"Cannot pad a regimen of {self.n_events} events to {n_events}: "
                "expected n_events >= the current number of events."
            )
        if extra == 0:
            return self
        arrays = {
            name: _join([getattr(self, name), np.full((extra,), value, getattr(self, name).dtype)])
            for name, value in _PAD_FILL.items()
        }
        if self.addl_offset is not None:
            arrays["addl_offset"] = _join(
                [self.addl_offset, np.zeros((extra,), self.addl_offset.dtype)]
            )
        return Regimen(
            **arrays,
            ss_intervals=self.ss_intervals,
            has_ss=self.has_ss,
            has_reset=self.has_reset,
            has_infusion=self.has_infusion,
        )


_FLOAT_FIELDS = ("time", "amount", "rate", "duration", "lag", "bioav", "ii", "order")
_INT_FIELDS = ("cmt", "evid", "ss")


def _make(n: int, ss_intervals: int = 1, **values: Any) -> Regimen:
    """Build a `Regimen` of `n` events, broadcasting scalar values."""
    # the values of a padding event, but in record order and real (`mask`)
    defaults: dict[str, Any] = {
        **_PAD_FILL,
        "order": np.arange(n, dtype=np.float64),
        "mask": True,
    }
    defaults.update(values)
    arrays: dict[str, Array] = {}
    for name, value in defaults.items():
        if name in _FLOAT_FIELDS:
            dtype = jnp.result_type(float)
        elif name in _INT_FIELDS:
            dtype = jnp.int32
        else:
            dtype = jnp.bool_
        arrays[name] = jnp.broadcast_to(jnp.asarray(value, dtype=dtype), (n,))
    # What the constructor builds decides the static flags (values may be traced).
    flags: dict[str, Any] = {
        "has_ss": False,
        "has_reset": "evid" in values,
        "has_infusion": "rate" in values,
    }
    return Regimen(**arrays, ss_intervals=ss_intervals, **flags)


def _validate_dose(
    what: str,
    amount: ArrayLike,
    time: ArrayLike,
    cmt: int,
    lag: ArrayLike,
    bioav: ArrayLike,
) -> None:
    _check(
        np.isfinite(amount) & (np.asarray(amount) >= 0) if _is_concrete(amount) else True,
        f"{what}: expected a finite amount >= 0 (mg), got amount={amount}.",
    )
    _check(
        np.isfinite(time) if _is_concrete(time) else True,
        f"{what}: expected a finite dose time (h), got time={time}.",
    )
    if not (isinstance(cmt, int | np.integer) and cmt >= 1):
        raise ValueError(f"{what}: expected a compartment number cmt >= 1, got cmt={cmt!r}.")
    _check(
        np.isfinite(lag) & (np.asarray(lag) >= 0) if _is_concrete(lag) else True,
        f"{what}: expected a finite lag time >= 0 (h), got lag={lag}.",
    )
    _check(
        np.isfinite(bioav) & (np.asarray(bioav) >= 0) if _is_concrete(bioav) else True,
        f"{what}: expected a finite bioavailability >= 0, got bioav={bioav}.",
    )


def bolus(
    amount: ArrayLike,
    *,
    time: ArrayLike = 0.0,
    cmt: int = 1,
    lag: ArrayLike = 0.0,
    bioav: ArrayLike = 1.0,
) -> Regimen:
    """One bolus dose (NONMEM `EVID=1`, `RATE=0`).

    **Arguments:**

    - `amount`: dose (mg).
    - `time`: dose time (h).
    - `cmt`: compartment receiving the dose (1-based; 1 is the depot of oral models and the
      central compartment of intravenous models).
    - `lag`: lag time (h), added to the model's `ALAG<cmt>` if it has one.
    - `bioav`: bioavailable fraction, multiplied by the model's `F<cmt>` if it has one.

    **Returns:** a one-event `Regimen`.
    """
    _validate_dose("bolus", amount, time, cmt, lag, bioav)
    return _make(1, time=time, amount=amount, cmt=cmt, lag=lag, bioav=bioav)


def oral(
    amount: ArrayLike,
    *,
    time: ArrayLike = 0.0,
    lag: ArrayLike = 0.0,
    bioav: ArrayLike = 1.0,
) -> Regimen:
    """One oral dose: a bolus into the depot (compartment 1) of a first-order absorption model.

    **Arguments:** as `bolus`, without `cmt`.

    **Returns:** a one-event `Regimen`.
    """
    return bolus(amount, time=time, cmt=1, lag=lag, bioav=bioav)


def infusion(
    amount: ArrayLike,
    *,
    rate: ArrayLike | None = None,
    duration: ArrayLike | None = None,
    time: ArrayLike = 0.0,
    cmt: int = 1,
    lag: ArrayLike = 0.0,
    bioav: ArrayLike = 1.0,
) -> Regimen:
    """One zero-order infusion, given by its rate or by its duration (exactly one of them).

    With a `rate`, NONMEM keeps the rate and delivers `bioav * amount`, so the duration is
    `bioav * amount / rate`. With a `duration`, the rate is `bioav * amount / duration`
    (NONMEM `RATE=-2`); the duration is differentiable. Pass `rate=pkpd.MODELLED_RATE` or
    `duration=None, rate=pkpd.MODELLED_DURATION` to take them from the model parameters
    `R<cmt>` / `D<cmt>`.

    **Arguments:**

    - `amount`: dose (mg).
    - `rate`: infusion rate (mg/h), or one of the modelled codes.
    - `duration`: infusion duration (h).
    - `time`, `cmt`, `lag`, `bioav`: as `bolus`.

    **Returns:** a one-event `Regimen`.
    """
    _validate_dose("infusion", amount, time, cmt, lag, bioav)
    if (rate is None) == (duration is None):
        if not (
            rate is not None and _is_concrete(rate) and float(rate) == MODELLED_DURATION  # type: ignore[arg-type]
        ):
            raise ValueError(
                "infusion: expected exactly one of rate= (mg/h) or duration= (h), got "
                f"rate={rate!r} and duration={duration!r}."
            )
    if duration is not None:
        _check(
            np.isfinite(duration) & (np.asarray(duration) > 0) if _is_concrete(duration) else True,
            f"infusion: expected a finite duration > 0 (h), got duration={duration}.",
        )
        return _make(
            1,
            time=time,
            amount=amount,
            cmt=cmt,
            lag=lag,
            bioav=bioav,
            rate=MODELLED_DURATION,
            duration=duration,
        )
    assert rate is not None
    if _is_concrete(rate):
        r = float(rate)  # type: ignore[arg-type]
        if not (np.isfinite(r) and (r > 0 or r in (MODELLED_RATE, MODELLED_DURATION))):
            raise ValueError(
                f"infusion: expected a finite rate > 0 (mg/h), -1 (modelled rate) or -2 "
                f"(modelled duration), got rate={rate}."
            )
    return _make(1, time=time, amount=amount, cmt=cmt, lag=lag, bioav=bioav, rate=rate)


def reset(*, time: ArrayLike = 0.0) -> Regimen:
    """Reset every compartment to zero and stop running infusions (NONMEM `EVID=3`).

    **Arguments:**

    - `time`: reset time (h).

    **Returns:** a one-event `Regimen`.
    """
    _check(
        np.isfinite(time) if _is_concrete(time) else True,
        f"reset: expected a finite time (h), got time={time}.",
    )
    return _make(1, time=time, evid=3)


def repeat(regimen: Regimen, *, ii: float, addl: int) -> Regimen:
    """Repeat every dose of `regimen` `addl` more times, every `ii` hours (NONMEM `ADDL`/`II`).

    The copies keep the lag, bioavailability and infusion settings of the dose they repeat,
    and are ordinary doses (not steady state), as NONMEM gives them.

    **Arguments:**

    - `regimen`: the dose(s) to repeat.
    - `ii`: interdose interval (h), > 0.
    - `addl`: number of additional doses, >= 0 (a Python int: it sets the array size).

    **Returns:** a `Regimen` with `(addl + 1) * regimen.n_events` events.
    """
    if not isinstance(addl, int | np.integer) or addl < 0:
        raise ValueError(f"repeat: expected addl to be an int >= 0, got addl={addl!r}.")
    _check(
        np.isfinite(ii) & (np.asarray(ii) > 0) if _is_concrete(ii) else True,
        f"repeat: expected an interdose interval ii > 0 (h), got ii={ii}.",
    )
    n = regimen.n_events
    own = _offsets(regimen)
    copies = []
    for k in range(addl + 1):
        shifted = eqx.tree_at(lambda r: r.time, regimen, regimen.time + k * ii)
        # The k-th copy of event j points back to event j of the first copy (k * n events
        # before), or further back to the record that initiated event j itself.
        shifted = _with_offsets(shifted, own + k * n)
        if k > 0:
            doses = regimen.evid != 3
            shifted = eqx.tree_at(
                lambda r: (r.ss, r.evid, r.mask),
                shifted,
                (jnp.zeros_like(regimen.ss), jnp.ones_like(regimen.evid), regimen.mask & doses),
            )
        copies.append(shifted)
    return concatenate(copies)


def _offsets(regimen: Regimen) -> Array:
    """`regimen.addl_offset`, zeros where it is `None`."""
    if regimen.addl_offset is None:
        return jnp.zeros(regimen.time.shape, jnp.int32)
    return regimen.addl_offset


def _with_offsets(regimen: Regimen, offsets: Array) -> Regimen:
    return Regimen(
        **{f: getattr(regimen, f) for f in _ALL_FIELDS},
        addl_offset=jnp.asarray(offsets, jnp.int32),
        ss_intervals=regimen.ss_intervals,
        has_ss=regimen.has_ss,
        has_reset=regimen.has_reset,
        has_infusion=regimen.has_infusion,
    )


def steady_state(regimen: Regimen, *, ii: float = 0.0, ss: int = 1) -> Regimen:
    """Mark the doses of `regimen` as steady-state doses (NONMEM `SS=1` or `SS=2`).

    With `ss=1` the state is reset and replaced by the periodic steady state reached after
    infinitely many identical doses every `ii` hours before the dose time; with `ss=2` that
    steady state is added to the current state. An infusion with `amount=0` given by its
    `rate` and `ii=0` sets the constant-infusion steady state.

    **Arguments:**

    - `regimen`: the dose(s).
    - `ii`: interdose interval (h).
    - `ss`: 1 or 2.

    **Returns:** the marked `Regimen`.
    """
    if ss not in (1, 2):
        raise ValueError(f"steady_state: expected ss=1 or ss=2, got ss={ss!r}.")
    _check(
        np.isfinite(ii) & (np.asarray(ii) >= 0) if _is_concrete(ii) else True,
        f"steady_state: expected ii >= 0 (h), got ii={ii}.",
    )
    if _is_concrete(ii) and np.all(np.asarray(ii) == 0):
        # ii = 0 only makes sense for a constant infusion (NONMEM: AMT=0, RATE>0, II=0).
        try:
            amount, rate = np.asarray(regimen.amount), np.asarray(regimen.rate)
            doses = np.asarray(regimen.mask) & (np.asarray(regimen.evid) != 3)
        except jax.errors.TracerArrayConversionError:
            doses = None
        if doses is not None and not np.all((rate[doses] > 0) & (amount[doses] == 0)):
            raise ValueError(
                "steady_state: expected ii > 0 (h), or ii=0 for a constant infusion at steady "
                "state (amount=0 given by its rate > 0); got ii=0 with "
                f"amount={amount[doses].tolist()} and rate={rate[doses].tolist()}."
            )
    out = eqx.tree_at(
        lambda r: (r.ss, r.ii),
        regimen,
        (jnp.full_like(regimen.ss, ss), jnp.full_like(regimen.ii, ii)),
    )
    return Regimen(
        **{f: getattr(out, f) for f in _ALL_FIELDS},
        addl_offset=out.addl_offset,
        ss_intervals=_ss_bound(out),
        has_ss=True,
        has_reset=True,
        has_infusion=out.has_infusion,
    )


_ALL_FIELDS = (*_FLOAT_FIELDS, *_INT_FIELDS, "mask")


def _ss_bound(regimen: Regimen) -> int:
    """Smallest `ss_intervals` covering the concrete lag + duration of steady-state doses."""
    try:
        ii = np.asarray(regimen.ii)
        span = np.asarray(regimen.lag) + np.where(
            np.asarray(regimen.rate) == MODELLED_DURATION,
            np.asarray(regimen.duration),
            np.where(
                np.asarray(regimen.rate) > 0,
                np.asarray(regimen.amount)
                * np.asarray(regimen.bioav)
                / np.where(np.asarray(regimen.rate) > 0, np.asarray(regimen.rate), 1.0),
                0.0,
            ),
        )
    except jax.errors.TracerArrayConversionError:
        return regimen.ss_intervals
    use = (np.asarray(regimen.ss) > 0) & (ii > 0) & np.asarray(regimen.mask)
    if not use.any():
        return regimen.ss_intervals
    ratio = span[use] / ii[use]
    worst = int(np.argmax(ratio))
    if not ratio[worst] <= MAX_SS_INTERVALS:
        raise ValueError(
            f"steady_state: the lag + infusion of {span[use][worst]:g} h spans "
            f"{ratio[worst]:.3g} dosing intervals of II = {ii[use][worst]:g} h; at most "
            f"{MAX_SS_INTERVALS} are supported (pkpd.MAX_SS_INTERVALS). For an infusion much "
            "longer than its interval use a constant infusion at steady state (AMT=0, "
            "RATE > 0, II=0)."
        )
    need = int(np.max(np.ceil(ratio))) + 1
    return max(regimen.ss_intervals, need)


def concatenate(regimens: Sequence[Regimen]) -> Regimen:
    """Join regimens into one; event order (the tie-break at equal times) follows the list."""
    if not regimens:
        raise ValueError("concatenate: expected at least one regimen, got none.")
    arrays = {f: _join([getattr(r, f) for r in regimens]) for f in _ALL_FIELDS}
    n = arrays["time"].shape[0]
    mask = arrays["mask"]
    if _is_concrete(mask):
        rank = np.arange(n, dtype=arrays["order"].dtype)
        arrays["order"] = jnp.asarray(np.where(np.asarray(mask), rank, np.inf))
    else:
        arrays["order"] = jnp.where(mask, jnp.arange(n, dtype=arrays["order"].dtype), jnp.inf)
    if any(r.addl_offset is not None for r in regimens):
        # Offsets count events back inside each part, so they survive the concatenation.
        arrays["addl_offset"] = _join([_offsets(r) for r in regimens])
    return Regimen(**arrays, **_merge_flags(regimens))


def _merge_flags(regimens: Sequence[Regimen]) -> dict[str, Any]:
    return {
        "ss_intervals": max(r.ss_intervals for r in regimens),
        "has_ss": any(r.has_ss for r in regimens),
        "has_reset": any(r.has_reset for r in regimens),
        "has_infusion": any(r.has_infusion for r in regimens),
    }


def stack(regimens: Sequence[Regimen], n_events: int | None = None) -> Regimen:
    """Pad regimens to one length and stack them along a new leading (patient) axis.

    The result `jax.vmap`s over patients: `jax.vmap(simulate, (None, 0, 0, None))`.
    `n_events`: the length (default: the longest regimen's); concrete regimens are padded
    and stacked on the host and transferred once per field.
    """
    if not regimens:
        raise ValueError("stack: expected at least one regimen, got none.")
    n = max(r.n_events for r in regimens)
    if n_events is not None:
        if n_events < n:
            raise ValueError(
                f"stack: n_events={n_events} is shorter than the longest regimen ({n} events)."
            )
        n = int(n_events)
    offsets = any(r.addl_offset is not None for r in regimens)
    if all(_is_concrete(getattr(r, f)) for r in regimens for f in _ALL_FIELDS):
        arrays = {}
        for f, value in _PAD_FILL.items():
            host = [np.asarray(getattr(r, f)) for r in regimens]
            arrays[f] = jnp.asarray(
                np.stack(
                    [np.concatenate([h, np.full(n - h.shape[-1], value, h.dtype)]) for h in host]
                )
            )
        if offsets:
            host = [np.asarray(_offsets(r)) for r in regimens]
            arrays["addl_offset"] = jnp.asarray(
                np.stack([np.concatenate([h, np.zeros(n - h.shape[-1], h.dtype)]) for h in host])
            )
        return Regimen(**arrays, **_merge_flags(regimens))
    padded = [r.pad(n) for r in regimens]
    arrays = {f: _join([getattr(r, f) for r in padded], stack=True) for f in _ALL_FIELDS}
    if offsets:
        arrays["addl_offset"] = _join([_offsets(r) for r in padded], stack=True)
    return Regimen(**arrays, **_merge_flags(regimens))
