"""NONMEM corner cases of `simulate_records` (issue 21), against an independent reference.

The reference is a brute-force superposition simulator written here: the one-compartment
model with first-order absorption in closed form, each dose's contribution summed on its own,
steady state as 200 explicit earlier intervals, and NONMEM's reset rule applied by hand:

- a reset (EVID 3), a reset-and-dose (EVID 4) and an SS=1 dose zero every amount and stop
  every infusion in progress;
- they also "deactivate any previous dose event record which happens to be active"
  (NONMEM Users Guide VI, section V.K; the help entry "SS DATA ITEM": "infusions in progress
  or pending additional doses are cancelled"): the additional (ADDL) doses and the lagged
  doses of an earlier record that have not entered the system by then are never given;
- an SS=2 dose resets nothing and cancels nothing (it adds its steady state).

Nothing of the engine is used by the reference.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import pkpd

CL, V, KA = 1.1, 20.0, 1.5
K = CL / V
PARAMS = {"CL": CL, "V": V, "KA": KA, "ALAG1": "LAGT", "ALAG2": "LAGT", "F1": "BIOAV"}
PARAMS |= {"F2": "BIOAV"}
N_IMPLIED = 200  # earlier intervals of a steady-state dose, given explicitly


# ----------------------------------------------------------------------------- reference


def _unit(cmt: int, tau: np.ndarray) -> np.ndarray:
    """Central amount at `tau` after a unit bolus into `cmt` (0 before it)."""
    tau = np.asarray(tau, float)
    pos = np.maximum(tau, 0.0)
    if cmt == 1:
        y = KA / (KA - K) * (np.exp(-K * pos) - np.exp(-KA * pos))
    else:
        y = np.exp(-K * pos)
    return np.where(tau >= 0, y, 0.0)


def _unit_integral(cmt: int, tau: np.ndarray) -> np.ndarray:
    """Central amount at `tau` after the start of a unit-rate infusion into `cmt`, if it
    never stopped: the integral of `_unit` (0 before it)."""
    pos = np.maximum(np.asarray(tau, float), 0.0)
    if cmt == 1:
        return KA / (KA - K) * ((1 - np.exp(-K * pos)) / K - (1 - np.exp(-KA * pos)) / KA)
    return (1 - np.exp(-K * pos)) / K


def _contribution(dose: dict, t: float) -> float:
    tau = t - dose["arrival"]
    if dose["rate"] > 0:
        g = _unit_integral(dose["cmt"], tau) - _unit_integral(dose["cmt"], tau - dose["dur"])
        return float(dose["rate"] * g)
    return float(dose["amount"] * _unit(dose["cmt"], tau))


def reference(rec: pd.DataFrame) -> np.ndarray:
    """Concentration (mg/L) on every record, after the record's own event."""
    rows = list(rec.itertuples(index=False))
    resets = [
        (r.TIME, i)
        for i, r in enumerate(rows)
        if r.EVID in (3, 4) or (r.EVID in (1, 4) and r.SS == 1)
    ]

    def epoch(key: tuple[float, float]) -> int:
        """Resets before `key` = (time, position) in NONMEM's processing order."""
        return sum(1 for reset in resets if reset < key)

    doses = []
    for i, r in enumerate(rows):
        if r.EVID not in (1, 4):
            continue
        amount = r.AMT * r.BIOAV
        dur = amount / r.RATE if r.RATE > 0 else 0.0
        own = (r.TIME, i + 0.5)  # the record itself, after its own reset
        ep = epoch(own)

        def dose(arrival, since, ep=ep, amount=amount, dur=dur, r=r):
            return {"arrival": arrival, "amount": amount, "rate": r.RATE, "dur": dur,
                    "cmt": r.CMT, "epoch": ep, "since": since}  # fmt: skip

        if r.SS > 0:  # the implied doses: there from this record on, never cancelled
            for k in range(1, N_IMPLIED + 1):
                doses.append(dose(r.TIME - k * r.II + r.LAGT, own))
        for k in range(int(r.ADDL) + 1):
            arrival = r.TIME + k * r.II + r.LAGT
            # Implied (ADDL) and lagged doses enter before the records at their time.
            key = own if (k == 0 and r.LAGT == 0) else (arrival, -1.0)
            if epoch(key) == ep:  # else a reset came first: the dose is never given
                doses.append(dose(arrival, key))
    out = np.zeros(len(rows))
    for o, r in enumerate(rows):
        key = (r.TIME, o + 0.75)
        ep = epoch(key)
        live = [d for d in doses if d["epoch"] == ep and d["since"] < key]
        out[o] = sum(_contribution(d, r.TIME) for d in live) / V
    return out


# ----------------------------------------------------------------------------- helpers


def records(events: list[dict], obs: np.ndarray, subject: int = 1) -> pd.DataFrame:
    """Dose/reset records plus observations at `obs`, sorted as NONMEM needs them (at equal
    times, the events first, in the order given)."""
    base = {"EVID": 0, "AMT": 0.0, "CMT": 2, "RATE": 0.0, "II": 0.0, "ADDL": 0, "SS": 0}
    base |= {"LAGT": 0.0, "BIOAV": 1.0}
    rows = [base | e | {"_k": 0} for e in events]
    rows += [base | {"TIME": float(t), "_k": 1} for t in obs]
    df = pd.DataFrame(rows)
    df["_i"] = np.arange(len(df))
    df = df.sort_values(["TIME", "_k", "_i"], kind="stable").drop(columns=["_k", "_i"])
    df.insert(0, "ID", subject)
    return df.reset_index(drop=True)


def check(rec: pd.DataFrame, rtol: float = 1e-9, atol: float = 1e-12) -> None:
    got = pkpd.simulate_records(pkpd.OneCompartmentOral(), PARAMS, rec)["PRED"].to_numpy()
    want = np.concatenate([reference(sub) for _, sub in rec.groupby("ID", sort=False)])
    bad = ~np.isclose(got, want, rtol=rtol, atol=atol)
    assert not bad.any(), rec.assign(PRED=got, REF=want)[bad].head(10).to_string()


OBS = np.unique(np.concatenate([np.arange(0.0, 97.0, 1.0), np.arange(0.5, 97.0, 3.0)]))


# ----------------------------------------------------------------------------- the reference


def test_reference_matches_closed_forms():
    """The brute-force reference itself: a bolus, an oral dose and an SS bolus in closed form."""
    rec = records([{"TIME": 0.0, "EVID": 1, "AMT": 100.0, "CMT": 2}], np.array([5.0]))
    np.testing.assert_allclose(reference(rec)[-1], 100 / V * math.exp(-K * 5), rtol=1e-12)
    rec = records(
        [{"TIME": 0.0, "EVID": 1, "AMT": 100.0, "CMT": 2, "SS": 1, "II": 12.0}], np.array([0.0])
    )
    np.testing.assert_allclose(reference(rec)[-1], 100 / V / (1 - math.exp(-K * 12)), rtol=1e-12)


# ----------------------------------------------------------------------------- 1. resets


def test_ss1_cancels_lagged_infusion_of_earlier_ss2_record():
    """The case of the issue: a lagged infusion from an SS=2 record at t=12 whose start falls
    after an SS=1 record at t=24 is never given."""
    events = [
        {"TIME": 0.0, "EVID": 1, "AMT": 100.0, "CMT": 1, "SS": 1, "II": 12.0},
        {"TIME": 12.0, "EVID": 1, "AMT": 60.0, "RATE": 20.0, "SS": 2, "II": 24.0, "LAGT": 14.0},
        {"TIME": 24.0, "EVID": 1, "AMT": 100.0, "CMT": 1, "SS": 1, "II": 12.0},
    ]
    rec = records(events, OBS)
    check(rec)
    # And the lagged infusion really is gone: the same without the SS=2 record.
    without = records([events[0], events[2]], OBS)
    after = rec.TIME.to_numpy() >= 24
    got = pkpd.simulate_records(pkpd.OneCompartmentOral(), PARAMS, rec)["PRED"].to_numpy()
    ref = pkpd.simulate_records(pkpd.OneCompartmentOral(), PARAMS, without)["PRED"].to_numpy()
    np.testing.assert_allclose(got[after], ref[without.TIME.to_numpy() >= 24], rtol=1e-12)


@pytest.mark.parametrize(
    "reset",
    [
        {"EVID": 3, "CMT": 2},
        {"EVID": 4, "AMT": 50.0, "CMT": 2},
        {"EVID": 4, "AMT": 50.0, "CMT": 1, "LAGT": 2.0, "ADDL": 1, "II": 8.0},
        {"EVID": 1, "AMT": 50.0, "CMT": 2, "SS": 1, "II": 12.0},
        {"EVID": 1, "AMT": 50.0, "CMT": 1, "SS": 1, "II": 12.0, "LAGT": 3.0, "ADDL": 2},
        {"EVID": 4, "AMT": 40.0, "CMT": 2, "RATE": 10.0, "SS": 1, "II": 12.0},
        # SS=2 cancels nothing: the pending doses are still given.
        {"EVID": 1, "AMT": 50.0, "CMT": 2, "SS": 2, "II": 12.0},
    ],
    ids=["evid3", "evid4", "evid4-lag-addl", "ss1", "ss1-lag-addl", "ss1-infusion", "ss2"],
)
def test_reset_cancels_pending_addl_and_lagged_doses(reset):
    """Pending ADDL doses (bolus, oral and infusions, lagged or not) and lagged doses of
    earlier records, with a reset at t=30 in the middle of them."""
    events = [
        {"TIME": 0.0, "EVID": 1, "AMT": 100.0, "CMT": 1, "II": 12.0, "ADDL": 5},
        {
            "TIME": 2.0,
            "EVID": 1,
            "AMT": 80.0,
            "CMT": 2,
            "RATE": 8.0,
            "II": 12.0,
            "ADDL": 4,
            "LAGT": 1.5,
        },
        {"TIME": 20.0, "EVID": 1, "AMT": 70.0, "CMT": 2, "LAGT": 15.0},  # enters at 35
        {"TIME": 29.0, "EVID": 1, "AMT": 30.0, "CMT": 2, "RATE": 5.0},  # running at 30
        {"TIME": 30.0, "EVID": 1, "AMT": 25.0, "CMT": 1, "LAGT": 0.5},  # same time, before
        {"TIME": 30.0} | reset,
        {"TIME": 30.0, "EVID": 1, "AMT": 20.0, "CMT": 1, "LAGT": 4.0},  # same time, after
        {"TIME": 60.0, "EVID": 1, "AMT": 60.0, "CMT": 2, "II": 6.0, "ADDL": 3, "LAGT": 1.0},
        {"TIME": 66.0, "EVID": 3, "CMT": 2},  # inside the ADDL train above
    ]
    check(records(events, OBS))


def test_reset_at_the_arrival_time_of_a_pending_dose():
    """An ADDL dose, and a lagged dose, due exactly at the time of a reset (given before the
    records at that time, so wiped by the reset) and just after it (cancelled)."""
    events = [
        {"TIME": 0.0, "EVID": 1, "AMT": 100.0, "CMT": 2, "II": 12.0, "ADDL": 3},
        {"TIME": 10.0, "EVID": 1, "AMT": 50.0, "CMT": 1, "LAGT": 14.0},
        {"TIME": 24.0, "EVID": 3, "CMT": 2},
        {
            "TIME": 30.0,
            "EVID": 1,
            "AMT": 40.0,
            "CMT": 1,
            "LAGT": 6.0000001,
            "ADDL": 1,
            "II": 8.0,
        },
        {"TIME": 36.0, "EVID": 4, "AMT": 10.0, "CMT": 2},
    ]
    check(records(events, np.concatenate([OBS, [24.0, 36.0, 36.0000001, 36.000001]])))


def test_random_record_sets_against_reference():
    """Random mixtures of every feature above (fixed seed), several subjects in one call."""
    rng = np.random.default_rng(21)
    frames = []
    for subject in range(1, 7):
        events, t = [], 0.0
        for _ in range(rng.integers(4, 8)):
            t += float(rng.choice([0.0, 3.0, 5.5, 8.0, 12.0]))
            kind = rng.choice(["bolus", "oral", "infusion", "evid3", "evid4", "ss1", "ss2"])
            cmt = 1 if kind == "oral" else 2
            e = {"TIME": t, "EVID": 1, "AMT": float(rng.uniform(20, 120)), "CMT": cmt}
            e["LAGT"] = float(rng.choice([0.0, 0.0, 2.5, 9.0]))
            e["BIOAV"] = float(rng.choice([1.0, 0.7]))
            if kind == "infusion" or (kind in ("ss1", "ss2") and rng.random() < 0.5):
                e["RATE"] = float(rng.choice([5.0, 20.0, 60.0]))
            if kind in ("ss1", "ss2"):
                e["SS"], e["II"] = (1 if kind == "ss1" else 2), 12.0
                e["LAGT"] = min(e["LAGT"], 9.0)
                if "RATE" in e and e["AMT"] * e["BIOAV"] / e["RATE"] + e["LAGT"] > 40:
                    e["RATE"] = 60.0
            elif kind == "evid3":
                e = {"TIME": t, "EVID": 3, "CMT": 2}
            elif kind == "evid4":
                e["EVID"] = 4
            if kind in ("bolus", "oral", "infusion", "evid4", "ss1") and rng.random() < 0.6:
                e["ADDL"], e["II"] = int(rng.integers(1, 5)), float(rng.choice([6.0, 12.0]))
            events.append(e)
        frames.append(records(events, np.arange(0.0, t + 40.0, 2.0), subject=subject))
    check(pd.concat(frames, ignore_index=True), rtol=1e-8)


# ----------------------------------------------------------------------------- 2. SS=2 limit


DOSES = {
    "bolus": {"CMT": 2},
    "oral": {"CMT": 1},
    # infusion durations (AMT 60): lag + duration < II, = II, runs past II, and past 2 II
    "inf-short": {"CMT": 2, "RATE": 15.0},  # 4 h
    "inf-ends-at-next-dose": {"CMT": 2, "RATE": 60.0 / 9.0},  # 9 h (+ lag 3 = II)
    "inf-equals-ii": {"CMT": 2, "RATE": 5.0},  # 12 h
    "inf-past-ii": {"CMT": 2, "RATE": 3.0},  # 20 h
    "inf-past-2ii": {"CMT": 2, "RATE": 2.0},  # 30 h
    "oral-inf-past-ii": {"CMT": 1, "RATE": 3.0},
}


# Lag 3 h runs by default; lags 0 and 11.5 h (just under II) are the same check compiled
# 32 more times (about 1 s each): extended, to keep this file near 40 s on one core.
LAGS = [pytest.param(0.0, marks=pytest.mark.extended), 3.0]
LAGS += [pytest.param(11.5, marks=pytest.mark.extended)]


@pytest.mark.parametrize("ss", [1, 2])
@pytest.mark.parametrize("lag", LAGS)
@pytest.mark.parametrize("dose", list(DOSES))
def test_steady_state_is_the_limit_of_repeated_doses(dose, lag, ss):
    """A lagged steady-state dose (II=12) on top of an earlier dose, then ADDL doses and a
    later plain dose: the reference gives the 200 earlier intervals explicitly."""
    if dose == "inf-ends-at-next-dose" and lag != 3.0:
        pytest.skip("the end coincides with the next dose only for lag 3")
    events = [
        {"TIME": 0.0, "EVID": 1, "AMT": 90.0, "CMT": 1, "RATE": 45.0},
        {"TIME": 10.0, "EVID": 1, "AMT": 60.0, "SS": ss, "II": 12.0, "ADDL": 2, "LAGT": lag}
        | DOSES[dose],
        {"TIME": 52.0, "EVID": 1, "AMT": 60.0, "LAGT": lag} | DOSES[dose],
    ]
    ends = [10 + lag + k * 12 + 60 / DOSES[dose].get("RATE", 1e9) for k in range(-3, 4)]
    obs = np.concatenate([OBS, [10 + lag, 22 + lag, *[e for e in ends if e > 0]]])
    check(records(events, obs), rtol=1e-8)


# ----------------------------------------------------------------------------- 3. lag >= II


@pytest.mark.parametrize("lag", [12.0, 30.0])
def test_ss_lag_not_shorter_than_ii_is_a_record_error(lag):
    events = [
        {"TIME": 0.0, "EVID": 1, "AMT": 100.0, "CMT": 2},
        {"TIME": 24.0, "EVID": 1, "AMT": 100.0, "CMT": 2, "SS": 1, "II": 12.0, "LAGT": lag},
    ]
    rec = records(events, np.array([1.0, 30.0]), subject=7)
    row = int(np.flatnonzero(rec.SS.to_numpy() == 1)[0])
    with pytest.raises(pkpd.RecordError) as info:
        pkpd.simulate_records(pkpd.OneCompartmentOral(), PARAMS, rec)
    message = str(info.value)
    assert "ID=7" in message and f"row {row}" in message
    assert f"ALAG2 = {lag:g} h" in message and "II = 12 h" in message
    # A lag just under II is accepted.
    rec.loc[row, "LAGT"] = 11.9
    check(rec, rtol=1e-8)


# ----------------------------------------------------------------------------- Regimen API


# Extended: the simulate_records reset tests in this file check the same rule against the
# brute-force reference in make test.
@pytest.mark.extended
def test_simulate_regimen_reset_cancels_repeated_and_lagged_doses():
    """The same rule through `pkpd.simulate` with `repeat` and `reset` (static schedule, and a
    traced lag under `jax.jit`), against the reference of the equivalent records."""
    import equinox as eqx

    lag = 2.0
    regimen = (
        pkpd.repeat(pkpd.oral(100.0, lag=lag), ii=12.0, addl=5)
        + pkpd.infusion(30.0, rate=5.0, time=29.0, cmt=2, lag=lag)
        + pkpd.reset(time=30.0)
        + pkpd.oral(50.0, time=40.0, lag=lag)
    )
    events = [
        {"TIME": 0.0, "EVID": 1, "AMT": 100.0, "CMT": 1, "II": 12.0, "ADDL": 5, "LAGT": lag},
        {"TIME": 29.0, "EVID": 1, "AMT": 30.0, "CMT": 2, "RATE": 5.0, "LAGT": lag},
        {"TIME": 30.0, "EVID": 3, "CMT": 2},
        {"TIME": 40.0, "EVID": 1, "AMT": 50.0, "CMT": 1, "LAGT": lag},
    ]
    times = np.arange(0.0, 80.0, 0.5)
    rec = records(events, times)
    want = reference(rec)[rec.EVID.to_numpy() == 0]
    model = pkpd.OneCompartmentOral()
    params = {"CL": CL, "V": V, "KA": KA}
    np.testing.assert_allclose(pkpd.simulate(model, params, regimen, times), want, rtol=1e-9)
    # The lag as a traced model parameter (ALAG) moves the entries at run time.
    no_lag = (
        pkpd.repeat(pkpd.oral(100.0), ii=12.0, addl=5)
        + pkpd.infusion(30.0, rate=5.0, time=29.0, cmt=2)
        + pkpd.reset(time=30.0)
        + pkpd.oral(50.0, time=40.0)
    )
    jitted = eqx.filter_jit(lambda p: pkpd.simulate(model, p, no_lag, times))
    got = jitted({**params, "ALAG1": jnp.asarray(lag), "ALAG2": jnp.asarray(lag)})
    np.testing.assert_allclose(got, want, rtol=1e-9)
