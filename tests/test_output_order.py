"""`pkpd.simulate(order=...)`: outputs placed among the events at their own time, in record
order as NONMEM places observation records (checked against `simulate_records`, which
advances record by record through its own path)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import pkpd

RECORDS = pd.DataFrame(
    [
        dict(ID=1, TIME=0.0, EVID=1, AMT=100.0, CMT=1, RATE=0.0, MDV=1),
        dict(ID=1, TIME=6.0, EVID=0, AMT=0.0, CMT=1, RATE=0.0, MDV=0),
        dict(ID=1, TIME=12.0, EVID=0, AMT=0.0, CMT=1, RATE=0.0, MDV=0),  # trough, listed first
        dict(ID=1, TIME=12.0, EVID=1, AMT=100.0, CMT=1, RATE=50.0, MDV=1),  # a 2 h infusion
        dict(ID=1, TIME=12.0, EVID=0, AMT=0.0, CMT=1, RATE=0.0, MDV=0),  # listed after it
        dict(ID=1, TIME=24.0, EVID=0, AMT=0.0, CMT=1, RATE=0.0, MDV=0),
        dict(ID=1, TIME=24.0, EVID=3, AMT=0.0, CMT=1, RATE=0.0, MDV=1),  # reset after it
        dict(ID=1, TIME=24.0, EVID=1, AMT=100.0, CMT=1, RATE=0.0, MDV=1),
        dict(ID=1, TIME=24.0, EVID=0, AMT=0.0, CMT=1, RATE=0.0, MDV=0),
        dict(ID=1, TIME=30.0, EVID=0, AMT=0.0, CMT=1, RATE=0.0, MDV=0),
    ]
)

CASES = [
    (pkpd.OneCompartment(), {"CL": 2.0, "V": 20.0}),
    (pkpd.TwoCompartment(), {"CL": 2.0, "V1": 20.0, "Q": 3.0, "V2": 40.0}),
    (pkpd.OneCompartmentMM(), {"VMAX": 10.0, "KM": 2.0, "V": 20.0}),
]


@pytest.mark.parametrize(("model", "params"), CASES, ids=lambda v: type(v).__name__)
def test_outputs_in_record_order_match_simulate_records(model, params):
    reg = pkpd.regimen_from_records(RECORDS, model.n_states)
    obs = (RECORDS["EVID"] == 0).to_numpy()
    times = RECORDS["TIME"].to_numpy()[obs]
    order = np.flatnonzero(obs).astype(float)  # each observation's record position
    ref = pkpd.simulate_records(model, params, RECORDS)["PRED"].to_numpy()[obs]
    got = np.asarray(pkpd.simulate(model, params, reg, times, order=order))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9)
    # Without `order`, every output at 24 h is after the reset and the bolus: the trough
    # differs; at 12 h the infusion has just started, so before and after it are the same.
    after = np.asarray(pkpd.simulate(model, params, reg, times))
    assert after[3] > got[3] + 1e-3
    # (1e-5: for ODE models the two calls integrate along different step sequences, the
    # default with one solve per dosing interval; both within the solver's tolerance)
    np.testing.assert_allclose(np.delete(after, 3), np.delete(got, 3), rtol=1e-5)


def test_piecewise_output_segment_and_order():
    """`simulate_piecewise` with `order` and `output_segment`: a trough at the time the
    next segment starts, listed before its dose, with the previous segment's volume."""
    model, params = pkpd.OneCompartment(), {"CL": np.array([2.0, 2.0]), "V": np.array([20.0, 40.0])}
    reg = pkpd.regimen_from_records(RECORDS.iloc[:5], model.n_states)
    times, order = np.array([6.0, 12.0, 12.0]), np.array([1.0, 2.0, 4.0])
    got = np.asarray(
        pkpd.simulate_piecewise(
            model, params, np.array([12.0]), reg, times, order=order, output_segment=[0, 0, 1]
        )
    )
    # By hand: the bolus of 100 mg decays with k = 0.1 /h; at 12 h the trough uses V = 20,
    # then the amount carried over (and the infusion just started) is read with V = 40.
    a12 = 100.0 * np.exp(-0.1 * 12.0)
    np.testing.assert_allclose(got, [100.0 / 20 * np.exp(-0.6), a12 / 20.0, a12 / 40.0], rtol=1e-9)
    with pytest.raises(ValueError, match="one order per output time"):
        pkpd.simulate(model, {"CL": 2.0, "V": 20.0}, reg, times, order=order[:2])
