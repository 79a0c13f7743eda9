"""Regimen constructors, records -> regimen, padding and event order."""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np
import pandas as pd
import pytest
from helpers import LINEAR_MODELS, REGIMEN_FIELDS

import pkpd

FIELDS = REGIMEN_FIELDS
FLAGS = ("ss_intervals", "has_ss", "has_reset", "has_infusion")
# Jitted: one compilation per regimen structure, far cheaper than eager dispatch. Eager
# calls are compared with jitted ones in test_autodiff.py.
simulate = eqx.filter_jit(pkpd.simulate)


def arrays(reg: pkpd.Regimen) -> dict[str, np.ndarray]:
    return {f: np.asarray(getattr(reg, f)) for f in FIELDS}


def check(reg: pkpd.Regimen, flags: dict | None = None, **expected) -> None:
    """Every field equals `expected` (defaults: one bolus-like event), with dtypes."""
    n = len(expected.get("time", [0.0]))
    defaults = {
        "time": [0.0] * n,
        "amount": [0.0] * n,
        "cmt": [1] * n,
        "rate": [0.0] * n,
        "duration": [0.0] * n,
        "lag": [0.0] * n,
        "bioav": [1.0] * n,
        "evid": [1] * n,
        "ss": [0] * n,
        "ii": [0.0] * n,
        "order": list(range(n)),
        "mask": [True] * n,
    }
    got = arrays(reg)
    for f in FIELDS:
        want = np.asarray(expected.get(f, defaults[f]))
        np.testing.assert_array_equal(got[f], want, err_msg=f)
        kind = {"cmt": "i", "evid": "i", "ss": "i", "mask": "b"}.get(f, "f")
        assert got[f].dtype.kind == kind, (f, got[f].dtype)
    assert reg.n_events == n
    flags = {
        "ss_intervals": 1,
        "has_ss": False,
        "has_reset": False,
        "has_infusion": False,
        **(flags or {}),
    }
    assert {k: getattr(reg, k) for k in FLAGS} == flags


def test_bolus_and_oral():
    check(pkpd.bolus(100.0), amount=[100.0])
    check(
        pkpd.bolus(100.0, time=2.0, cmt=2, lag=0.5, bioav=0.8),
        time=[2.0],
        amount=[100.0],
        cmt=[2],
        lag=[0.5],
        bioav=[0.8],
    )
    check(
        pkpd.oral(50.0, time=3.0, lag=1.0, bioav=0.6),
        time=[3.0],
        amount=[50.0],
        lag=[1.0],
        bioav=[0.6],
    )


def test_infusion():
    flags = {"has_infusion": True}
    check(
        pkpd.infusion(100.0, rate=25.0, time=1.0, cmt=2),
        flags,
        time=[1.0],
        amount=[100.0],
        cmt=[2],
        rate=[25.0],
    )
    check(
        pkpd.infusion(100.0, duration=4.0, bioav=0.5),
        flags,
        amount=[100.0],
        rate=[pkpd.MODELLED_DURATION],
        duration=[4.0],
        bioav=[0.5],
    )
    check(pkpd.infusion(100.0, rate=pkpd.MODELLED_DURATION), flags, amount=[100.0], rate=[-2.0])
    check(pkpd.infusion(100.0, rate=pkpd.MODELLED_RATE), flags, amount=[100.0], rate=[-1.0])


def test_reset():
    check(pkpd.reset(time=5.0), {"has_reset": True}, time=[5.0], evid=[3])


def test_repeat():
    reg = pkpd.repeat(pkpd.bolus(100.0, time=1.0, lag=0.5), ii=12.0, addl=3)
    check(reg, time=[1.0, 13.0, 25.0, 37.0], amount=[100.0] * 4, lag=[0.5] * 4)
    # Several doses: copy k of every dose in turn.
    two = pkpd.bolus(10.0, time=0.0) + pkpd.infusion(20.0, rate=5.0, time=2.0, cmt=2)
    check(
        pkpd.repeat(two, ii=24.0, addl=1),
        {"has_infusion": True},
        time=[0.0, 2.0, 24.0, 26.0],
        amount=[10.0, 20.0, 10.0, 20.0],
        cmt=[1, 2, 1, 2],
        rate=[0.0, 5.0, 0.0, 5.0],
    )
    check(pkpd.repeat(pkpd.bolus(1.0), ii=6.0, addl=0), amount=[1.0])


def test_repeat_of_steady_state_and_reset():
    """Copies are ordinary doses (SS=0, EVID=1); a reset is not repeated (masked)."""
    ss = pkpd.steady_state(pkpd.bolus(100.0, time=2.0), ii=12.0)
    check(
        pkpd.repeat(ss, ii=12.0, addl=2),
        {"has_ss": True, "has_reset": True},
        time=[2.0, 14.0, 26.0],
        amount=[100.0] * 3,
        ss=[1, 0, 0],
        ii=[12.0] * 3,
    )
    evid4 = pkpd.reset(time=5.0) + pkpd.bolus(70.0, time=5.0)
    check(
        pkpd.repeat(evid4, ii=10.0, addl=1),
        {"has_reset": True},
        time=[5.0, 5.0, 15.0, 15.0],
        amount=[0.0, 70.0, 0.0, 70.0],
        evid=[3, 1, 1, 1],
        mask=[True, True, False, True],
        order=[0.0, 1.0, np.inf, 3.0],
    )


def test_steady_state():
    ss_flags = {"has_ss": True, "has_reset": True}
    check(
        pkpd.steady_state(pkpd.bolus(100.0), ii=12.0), ss_flags, amount=[100.0], ss=[1], ii=[12.0]
    )
    check(
        pkpd.steady_state(pkpd.bolus(100.0), ii=24.0, ss=2),
        ss_flags,
        amount=[100.0],
        ss=[2],
        ii=[24.0],
    )
    # Lag + duration = 0.5 + 100/4 = 25.5 h spans ceil(25.5 / 12) = 3 intervals: 3 + 1.
    check(
        pkpd.steady_state(pkpd.infusion(100.0, rate=4.0, lag=0.5), ii=12.0),
        {**ss_flags, "ss_intervals": 4, "has_infusion": True},
        amount=[100.0],
        rate=[4.0],
        lag=[0.5],
        ss=[1],
        ii=[12.0],
    )
    check(
        pkpd.steady_state(pkpd.infusion(100.0, duration=30.0), ii=12.0),
        {**ss_flags, "ss_intervals": 4, "has_infusion": True},
        amount=[100.0],
        rate=[-2.0],
        duration=[30.0],
        ss=[1],
        ii=[12.0],
    )
    check(
        pkpd.steady_state(pkpd.infusion(0.0, rate=10.0), ii=0.0),
        {**ss_flags, "has_infusion": True},
        rate=[10.0],
        ss=[1],
    )


def test_concatenate_and_plus():
    a = pkpd.bolus(10.0, time=4.0)
    b = pkpd.steady_state(pkpd.infusion(20.0, rate=4.0, cmt=2), ii=2.0)
    c = pkpd.reset(time=1.0)
    expected = dict(
        time=[4.0, 0.0, 1.0],
        amount=[10.0, 20.0, 0.0],
        cmt=[1, 2, 1],
        rate=[0.0, 4.0, 0.0],
        evid=[1, 1, 3],
        ss=[0, 1, 0],
        ii=[0.0, 2.0, 0.0],
    )
    flags = {"ss_intervals": 4, "has_ss": True, "has_reset": True, "has_infusion": True}
    check(a + b + c, flags, **expected)
    check(pkpd.concatenate([a, b, c]), flags, **expected)


def test_pad():
    reg = pkpd.steady_state(pkpd.infusion(20.0, rate=4.0, cmt=2), ii=12.0) + pkpd.bolus(5.0)
    assert reg.pad(2) is reg
    padded = reg.pad(5)
    check(
        padded,
        {"ss_intervals": reg.ss_intervals, "has_ss": True, "has_reset": True, "has_infusion": True},
        time=[0.0] * 5,
        amount=[20.0, 5.0, 0, 0, 0],
        cmt=[2, 1, 1, 1, 1],
        rate=[4.0, 0, 0, 0, 0],
        ss=[1, 0, 0, 0, 0],
        ii=[12.0, 0, 0, 0, 0],
        order=[0.0, 1.0, np.inf, np.inf, np.inf],
        mask=[True, True, False, False, False],
    )


def test_stack():
    regs = [
        pkpd.bolus(1.0, time=2.0),
        pkpd.repeat(pkpd.oral(3.0), ii=8.0, addl=2),
        pkpd.reset(time=1.0) + pkpd.infusion(4.0, rate=2.0),
    ]
    st = pkpd.stack(regs)
    assert st.time.shape == (3, 3) and st.mask.shape == (3, 3)
    np.testing.assert_array_equal(
        np.asarray(st.mask), [[True, False, False], [True] * 3, [True, True, False]]
    )
    np.testing.assert_array_equal(np.asarray(st.time), [[2.0, 0, 0], [0, 8, 16], [1, 0, 0]])
    np.testing.assert_array_equal(np.asarray(st.evid)[2, :2], [3, 1])
    assert (st.has_ss, st.has_reset, st.has_infusion) == (False, True, True)
    for i, r in enumerate(regs):
        for f in FIELDS:
            np.testing.assert_array_equal(
                np.asarray(getattr(st, f))[i], np.asarray(getattr(r.pad(3), f)), err_msg=f
            )


# ----------------------------------------------------------------------------- from records


def _records() -> pd.DataFrame:
    """One subject: ADDL, an infusion by RATE, an SS=1 dose with ADDL, an EVID 3 reset."""
    rows = [
        # TIME EVID AMT CMT RATE II ADDL SS
        (0.0, 1, 100.0, 1, 0.0, 12.0, 2, 0),
        (0.0, 0, 0.0, 2, 0.0, 0.0, 0, 0),
        (3.0, 1, 50.0, 2, 25.0, 0.0, 0, 0),
        (6.0, 0, 0.0, 2, 0.0, 0.0, 0, 0),
        (30.0, 3, 0.0, 2, 0.0, 0.0, 0, 0),
        (40.0, 1, 80.0, 2, 10.0, 24.0, 1, 1),
        (41.0, 0, 0.0, 2, 0.0, 0.0, 0, 0),
        (70.0, 0, 0.0, 2, 0.0, 0.0, 0, 0),
    ]
    df = pd.DataFrame(rows, columns=["TIME", "EVID", "AMT", "CMT", "RATE", "II", "ADDL", "SS"])
    df.insert(0, "ID", 1)
    return df


def _constructed() -> pkpd.Regimen:
    """The same dosing as `_records`, with constructors."""
    return (
        pkpd.repeat(pkpd.oral(100.0), ii=12.0, addl=2)
        + pkpd.infusion(50.0, rate=25.0, time=3.0, cmt=2)
        + pkpd.reset(time=30.0)
        + pkpd.repeat(
            pkpd.steady_state(pkpd.infusion(80.0, rate=10.0, time=40.0, cmt=2), ii=24.0),
            ii=24.0,
            addl=1,
        )
    )


def _events(reg: pkpd.Regimen) -> list[tuple]:
    """The events as a sorted list; `ii` only counts on steady-state doses."""
    a = arrays(reg)
    a["ii"] = np.where(a["ss"] > 0, a["ii"], 0.0)
    keys = ("time", "amount", "cmt", "rate", "evid", "ss", "ii", "lag", "bioav", "duration")
    return sorted(tuple(float(a[k][i]) for k in keys) for i in np.flatnonzero(a["mask"]))


def test_regimen_from_records_equals_constructors():
    from_records = pkpd.regimen_from_records(_records(), n_states=2)
    built = _constructed()
    assert _events(from_records) == _events(built)
    for flag in ("has_ss", "has_reset", "has_infusion"):
        assert getattr(from_records, flag) == getattr(built, flag), flag
    # Implied (ADDL) doses come before a record at the same time, as NONMEM gives them.
    order = np.asarray(from_records.order)
    assert np.all(order[np.asarray(from_records.evid) == 1][1:3] == -1.0)


def test_regimen_from_records_simulates_as_constructors():
    """records -> regimen -> simulate == constructors -> simulate == simulate_records."""
    case = LINEAR_MODELS[1]  # OneCompartmentOral
    df = _records()
    times = np.array([0.0, 2.0, 3.0, 6.0, 12.0, 29.0, 30.0, 35.0, 40.0, 41.0, 55.0, 64.0, 70.0])
    a = simulate(case.model, case.params, pkpd.regimen_from_records(df, 2), times)
    b = simulate(case.model, case.params, _constructed(), times)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)
    assert np.asarray(b)[7] == 0.0 and np.asarray(b)[5] > 0  # after / before the reset
    obs = df["EVID"].to_numpy() == 0
    pred = pkpd.simulate_records(case.model, case.params, df)["PRED"].to_numpy()[obs]
    at = np.searchsorted(times, df["TIME"].to_numpy()[obs])
    np.testing.assert_allclose(pred, np.asarray(b)[at], rtol=1e-12, atol=1e-14)


def test_evid4_from_records_equals_reset_plus_dose():
    df = pd.DataFrame(
        {
            "ID": 1,
            "TIME": [0.0, 5.0, 5.0, 9.0],
            "EVID": [1, 4, 0, 0],
            "AMT": [100.0, 60.0, 0.0, 0.0],
            "CMT": [2, 1, 2, 2],
            "RATE": [10.0, 0.0, 0.0, 0.0],
        }
    )
    case = LINEAR_MODELS[1]
    times = np.array([1.0, 4.0, 5.0, 7.0, 9.0, 20.0])
    reg = pkpd.regimen_from_records(df, 2)
    assert np.asarray(reg.evid).tolist() == [1, 4]
    a = simulate(case.model, case.params, reg, times)
    b = simulate(
        case.model,
        case.params,
        pkpd.infusion(100.0, rate=10.0, cmt=2) + pkpd.reset(time=5.0) + pkpd.oral(60.0, time=5.0),
        times,
    )
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)
    assert np.asarray(a)[2] == 0.0  # at 5 h: reset, then a dose into the depot


# ----------------------------------------------------------------------------- padding, order


def _regimens() -> dict[str, pkpd.Regimen]:
    return {
        "bolus_lag": pkpd.repeat(pkpd.oral(100.0, lag=0.7, bioav=0.8), ii=6.0, addl=2),
        "ss_infusion": pkpd.steady_state(pkpd.infusion(100.0, rate=6.0, cmt=2), ii=12.0)
        + pkpd.oral(20.0, time=13.0),
        "reset": pkpd.infusion(80.0, duration=8.0, cmt=2)
        + pkpd.reset(time=4.0)
        + pkpd.oral(30.0, time=4.0),
    }


def test_padding_does_not_change_results():
    """Each regimen alone == the same regimens padded (+5 events), stacked and vmapped.

    The stack also merges the static flags (all True here) and `ss_intervals` (the largest),
    so conservative flags are checked to leave the numbers unchanged as well.
    """
    case = LINEAR_MODELS[1]  # OneCompartmentOral
    regs = _regimens()
    times = np.array([0.0, 0.5, 1.0, 4.0, 6.7, 9.0, 13.0, 20.0])
    n = max(r.n_events for r in regs.values()) + 5
    stacked = pkpd.stack([r.pad(n) for r in regs.values()])
    assert stacked.n_events == n and (stacked.has_ss, stacked.has_reset) == (True, True)
    batched = eqx.filter_jit(jax.vmap(lambda r: pkpd.simulate(case.model, case.params, r, times)))(
        stacked
    )
    for i, (name, reg) in enumerate(regs.items()):
        base = np.asarray(simulate(case.model, case.params, reg, times))
        assert np.max(base) > 0
        np.testing.assert_allclose(
            np.asarray(batched[i]), base, rtol=1e-12, atol=1e-15, err_msg=name
        )


def test_event_order_at_equal_times_follows_the_list():
    """reset + dose keeps the dose; dose + reset removes it (the `+` order is the tie-break)."""
    model, params = pkpd.OneCompartment(), {"CL": 2.0, "V": 10.0}
    times = np.array([5.0, 6.0])
    keep = pkpd.bolus(50.0) + pkpd.reset(time=5.0) + pkpd.bolus(100.0, time=5.0)
    drop = pkpd.bolus(50.0) + pkpd.bolus(100.0, time=5.0) + pkpd.reset(time=5.0)
    np.testing.assert_allclose(
        np.asarray(simulate(model, params, keep, times)),
        [10.0, 10.0 * np.exp(-0.2)],
        rtol=1e-13,
    )
    np.testing.assert_array_equal(np.asarray(simulate(model, params, drop, times)), [0, 0])


def test_stack_to_a_length_on_the_host_equals_padding_each():
    """`stack(regimens, n_events)` (concrete regimens: padded and stacked by NumPy) gives
    the arrays of padding each regimen and stacking them under tracing (the jnp path)."""
    regs = [
        pkpd.repeat(pkpd.infusion(1000.0, duration=1.0), ii=12.0, addl=2),
        pkpd.oral(250.0, time=2.0) + pkpd.reset(time=30.0),
        pkpd.steady_state(pkpd.bolus(100.0), ii=8.0),
    ]
    host = pkpd.stack(regs, 16)
    traced = jax.jit(lambda rs: pkpd.stack(rs, 16))(regs)
    assert host.time.shape == (3, 16)
    for name in REGIMEN_FIELDS:
        np.testing.assert_array_equal(getattr(host, name), getattr(traced, name), err_msg=name)
        assert getattr(host, name).dtype == getattr(traced, name).dtype, name
    assert (host.has_ss, host.has_reset, host.has_infusion) == (True, True, True)
    with pytest.raises(ValueError, match="n_events=2 is shorter"):
        pkpd.stack(regs, 2)
