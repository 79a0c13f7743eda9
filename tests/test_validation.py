"""Bad input raises an error naming the subject, the row and what was expected."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

import pkpd

MODEL = pkpd.OneCompartmentOral()  # compartments: 1 depot, 2 central
PARAMS = {"CL": 1.1, "V": 20.0, "KA": 1.5}


def records(**changes) -> pd.DataFrame:
    """Two subjects, 7 (rows 0-2) and 9 (rows 3-5); `changes` replace whole columns."""
    df = pd.DataFrame(
        {
            "ID": [7, 7, 7, 9, 9, 9],
            "TIME": [0.0, 1.0, 2.0, 0.0, 4.0, 8.0],
            "EVID": [1, 0, 0, 1, 0, 0],
            "AMT": [100.0, 0.0, 0.0, 50.0, 0.0, 0.0],
            "CMT": [1, 2, 2, 1, 2, 2],
            "WT": [70.0, 70.0, 70.0, 80.0, 80.0, 80.0],
        }
    )
    for col, values in changes.items():
        df[col] = values
    return df


def where(subject: int, row: int) -> str:
    return re.escape(f"subject ID={subject}, row {row}:")


def test_valid_records_simulate():
    """The base records are valid, so each case below fails for its one change only."""
    out = pkpd.simulate_records(MODEL, PARAMS, records())
    assert np.all(np.isfinite(out["PRED"])) and out["PRED"].iloc[2] > 0


@pytest.mark.parametrize(
    ("changes", "subject", "row", "expected"),
    [
        ({"AMT": [100.0, 0, 0, -5.0, 0, 0]}, 9, 3, "AMT is -5.0; expected a finite amount >= 0"),
        ({"AMT": [100.0, 0, 0, np.nan, 0, 0]}, 9, 3, "column AMT is nan; expected a number"),
        ({"AMT": [100.0, 0, 0, "x", 0, 0]}, 9, 3, "column AMT is 'x'; expected a number"),
        ({"AMT": [100.0, 0, 0, 0.0, 0, 0]}, 9, 3, "AMT is 0 on a dose record; expected AMT > 0"),
        ({"TIME": [0.0, 1.0, np.nan, 0, 4, 8]}, 7, 2, "column TIME is nan; expected a number"),
        ({"TIME": [0.0, 1.0, 2.0, 0, 4, np.inf]}, 9, 5, "column TIME is inf; expected a finite"),
        # Infinite codes and counts are refused by name before any arithmetic on them (EVID=inf
        # once raised a numpy RuntimeWarning from the rxode2 check; ADDL=inf passed as an integer).
        ({"EVID": [1, 0, 0, np.inf, 0, 0]}, 9, 3, "column EVID is inf; expected a finite"),
        ({"CMT": [1, 2, 2, 1, -np.inf, 2]}, 9, 4, "column CMT is -inf; expected a finite"),
        (
            {"ADDL": [0, 0, 0, np.inf, 0, 0], "II": [0, 0, 0, 12.0, 0, 0]},
            9,
            3,
            "column ADDL is inf; expected a finite",
        ),
        ({"TIME": [-1.0, 1.0, 2.0, 0, 4, 8]}, 7, 0, "TIME is -1.0; expected a finite time >= 0"),
        (
            {"TIME": [0.0, 1.0, 2.0, 0, 8, 4]},
            9,
            5,
            "TIME is 4.0, before the previous record of this subject; expected times sorted",
        ),
        (
            {"CMT": [1, 2, 2, 3, 2, 2]},
            9,
            3,
            "CMT is 3.0; expected a dosing compartment from 1 to 2",
        ),
        ({"CMT": [1, 2, 5, 1, 2, 2]}, 7, 2, "CMT is 5.0; the model has 2 compartments"),
        ({"CMT": [1, 2, 2, 1, 1.5, 2]}, 9, 4, "CMT is 1.5; expected a compartment number"),
        ({"EVID": [1, 0, 0, 5, 0, 0]}, 9, 3, "EVID is 5.0; expected 0, 1, 2, 3 or 4"),
        (
            {"EVID": [1, 0, 0, 101, 0, 0]},
            9,
            3,
            "EVID is 101.0; expected 0, 1, 2, 3 or 4. This looks like rxode2's classic event code",
        ),
        ({"II": [0, 0, 0, 12.0, 0, 0]}, 9, 3, "II is 12.0 without ADDL or SS; expected ADDL > 0"),
        ({"ADDL": [0, 0, 0, 3, 0, 0]}, 9, 3, "ADDL is 3.0 with II = 0; expected II > 0"),
        (
            {"ADDL": [0, 0, 0, 1.5, 0, 0], "II": [0, 0, 0, 12.0, 0, 0]},
            9,
            3,
            "ADDL is 1.5; expected an integer >= 0",
        ),
        ({"II": [0, 0, 0, -2.0, 0, 0]}, 9, 3, "II is -2.0; expected an interval >= 0"),
        ({"SS": [0, 0, 0, 1, 0, 0]}, 9, 3, "SS is 1.0 with II = 0; expected II > 0"),
        ({"SS": [0, 0, 0, 3, 0, 0], "II": [0, 0, 0, 12, 0, 0]}, 9, 3, "SS is 3.0; expected 0, 1"),
        ({"RATE": [0, 0, 0, -3.0, 0, 0]}, 9, 3, "RATE is -3.0; expected 0 (bolus), > 0"),
        ({"RATE": [-2.0, 0, 0, 0, 0, 0]}, 7, 0, "RATE=-2 needs the parameter D1"),
        ({"RATE": [0, 0, 0, -1.0, 0, 0]}, 9, 3, "RATE=-1 needs the parameter R1"),
    ],
    ids=lambda v: None,
)
def test_bad_records(changes, subject, row, expected):
    with pytest.raises(pkpd.RecordError, match=where(subject, row) + " " + re.escape(expected)):
        pkpd.simulate_records(MODEL, PARAMS, records(**changes))


@pytest.mark.parametrize("column", ["ID", "TIME", "EVID", "AMT", "CMT"])
def test_missing_required_column(column):
    df = records().drop(columns=[column])
    with pytest.raises(
        pkpd.RecordError, match=re.escape(f"missing required column(s) ['{column}']")
    ):
        pkpd.simulate_records(MODEL, PARAMS, df)
    with pytest.raises(pkpd.RecordError, match="expected at least"):
        pkpd.regimen_from_records(df[df["ID"] == 7] if "ID" in df else df)


def test_records_of_a_subject_not_contiguous():
    df = records(ID=[7, 7, 9, 9, 7, 7], TIME=[0.0, 1.0, 0.0, 2.0, 3.0, 4.0])
    with pytest.raises(
        pkpd.RecordError, match=where(7, 4) + " the records of this subject are not"
    ):
        pkpd.simulate_records(MODEL, PARAMS, df)


def test_not_a_dataframe_and_empty():
    with pytest.raises(pkpd.RecordError, match="expected a pandas DataFrame of records, got dict"):
        pkpd.simulate_records(MODEL, PARAMS, records().to_dict())
    with pytest.raises(pkpd.RecordError, match="expected at least one record"):
        pkpd.simulate_records(MODEL, PARAMS, records().iloc[:0])


def test_errors_name_the_row_label_of_the_caller():
    """Rows are named by the caller's index labels, also after filtering."""
    df = records(AMT=[100.0, 0, 0, -5.0, 0, 0])
    df.index = [10, 11, 12, 13, 14, 15]
    with pytest.raises(pkpd.RecordError, match=where(9, 13)):
        pkpd.simulate_records(MODEL, PARAMS, df)
    with pytest.raises(pkpd.RecordError, match=where(9, 13)):
        pkpd.validate_records(df, n_states=2)


def test_unknown_parameter_column():
    with pytest.raises(
        pkpd.RecordError, match=re.escape("parameter CL: column 'CLEARANCE' not in the records")
    ):
        pkpd.simulate_records(MODEL, {**PARAMS, "CL": "CLEARANCE"}, records())


@pytest.mark.parametrize(
    ("spec", "subject", "row"),
    [
        ("WT", 9, 4),  # a column with a NaN on one record
        (lambda r: np.where(r["TIME"] > 3.0, np.nan, 1.1), 9, 4),  # a function returning NaN
        (np.array([1.1, 1.1, 1.1, 1.1, 1.1, np.inf]), 9, 5),  # one value per record
        (np.nan, 7, 0),  # a scalar: every record
    ],
)
def test_nan_parameter(spec, subject, row):
    df = records(WT=[70.0, 70.0, 70.0, 80.0, np.nan, 80.0])
    with pytest.raises(
        pkpd.RecordError,
        match=where(subject, row) + " parameter CL is (nan|inf); expected a finite",
    ):
        pkpd.simulate_records(MODEL, {**PARAMS, "CL": spec}, df)


def test_parameter_of_wrong_length():
    with pytest.raises(pkpd.RecordError, match=r"parameter CL: expected a scalar or one value per"):
        pkpd.simulate_records(MODEL, {**PARAMS, "CL": np.ones(4)}, records())


def test_missing_model_parameter():
    with pytest.raises(ValueError, match=re.escape("missing parameter(s) ['KA']")):
        pkpd.simulate_records(MODEL, {"CL": 1.1, "V": 20.0}, records())
    with pytest.raises(ValueError, match=re.escape("missing parameter(s) ['V']")):
        pkpd.simulate(pkpd.OneCompartment(), {"CL": 1.0}, pkpd.bolus(1.0), np.array([1.0]))


def test_regimen_from_records_checks_one_subject():
    with pytest.raises(pkpd.RecordError, match=r"expected the records of one subject, got IDs"):
        pkpd.regimen_from_records(records())
    with pytest.raises(pkpd.RecordError, match=where(7, 0) + " TIME is -1.0"):
        pkpd.regimen_from_records(records(TIME=[-1.0, 1, 2, 0, 4, 8]).iloc[:3])


# ----------------------------------------------------------------------------- constructors


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: pkpd.bolus(-1.0), "bolus: expected a finite amount >= 0 (mg), got amount=-1.0"),
        (lambda: pkpd.bolus(np.nan), "bolus: expected a finite amount >= 0 (mg), got amount=nan"),
        (lambda: pkpd.oral(-3.0), "expected a finite amount >= 0 (mg), got amount=-3.0"),
        (lambda: pkpd.bolus(1.0, time=np.nan), "bolus: expected a finite dose time (h)"),
        (
            lambda: pkpd.bolus(1.0, cmt=0),
            "bolus: expected a compartment number cmt >= 1, got cmt=0",
        ),
        (lambda: pkpd.bolus(1.0, cmt=1.5), "expected a compartment number cmt >= 1, got cmt=1.5"),
        (lambda: pkpd.bolus(1.0, lag=-1.0), "bolus: expected a finite lag time >= 0 (h)"),
        (lambda: pkpd.bolus(1.0, bioav=-0.5), "bolus: expected a finite bioavailability >= 0"),
        (
            lambda: pkpd.infusion(100.0),
            "infusion: expected exactly one of rate= (mg/h) or duration= (h), got rate=None and "
            "duration=None",
        ),
        (
            lambda: pkpd.infusion(100.0, rate=10.0, duration=2.0),
            "infusion: expected exactly one of rate= (mg/h) or duration= (h)",
        ),
        (lambda: pkpd.infusion(100.0, rate=-5.0), "infusion: expected a finite rate > 0 (mg/h)"),
        (lambda: pkpd.infusion(100.0, rate=0.0), "infusion: expected a finite rate > 0 (mg/h)"),
        (lambda: pkpd.infusion(100.0, rate=np.nan), "infusion: expected a finite rate > 0 (mg/h)"),
        (lambda: pkpd.infusion(100.0, duration=0.0), "expected a finite duration > 0 (h)"),
        (lambda: pkpd.infusion(100.0, duration=-1.0), "expected a finite duration > 0 (h)"),
        (lambda: pkpd.infusion(-1.0, rate=5.0), "infusion: expected a finite amount >= 0 (mg)"),
        (lambda: pkpd.reset(time=np.nan), "reset: expected a finite time (h), got time=nan"),
        (
            lambda: pkpd.repeat(pkpd.bolus(1.0), ii=0.0, addl=2),
            "repeat: expected an interdose interval ii > 0 (h), got ii=0.0",
        ),
        (
            lambda: pkpd.repeat(pkpd.bolus(1.0), ii=12.0, addl=-1),
            "repeat: expected addl to be an int >= 0, got addl=-1",
        ),
        (
            lambda: pkpd.repeat(pkpd.bolus(1.0), ii=12.0, addl=1.5),
            "repeat: expected addl to be an int >= 0, got addl=1.5",
        ),
        (
            lambda: pkpd.steady_state(pkpd.bolus(1.0), ii=12.0, ss=3),
            "steady_state: expected ss=1 or ss=2, got ss=3",
        ),
        (
            lambda: pkpd.steady_state(pkpd.bolus(1.0), ii=-1.0),
            "steady_state: expected ii >= 0 (h), got ii=-1.0",
        ),
        (
            lambda: pkpd.steady_state(pkpd.bolus(1.0), ii=0.0),
            "steady_state: expected ii > 0 (h)",
        ),
        (
            lambda: pkpd.steady_state(pkpd.infusion(10.0, rate=2.0), ii=0.0),
            "steady_state: expected ii > 0 (h)",
        ),
        (
            lambda: pkpd.bolus(1.0).pad(0),
            "Cannot pad a regimen of 1 events to 0: expected n_events >= the current number",
        ),
        (lambda: pkpd.stack([]), "stack: expected at least one regimen, got none"),
        (lambda: pkpd.concatenate([]), "concatenate: expected at least one regimen, got none"),
    ],
    ids=lambda v: None,
)
def test_bad_constructor_arguments(build, expected):
    with pytest.raises(ValueError, match=re.escape(expected)):
        build()


def test_steady_state_constant_infusion_is_accepted():
    """ii=0 is valid for the constant infusion at steady state (amount 0, given by rate).

    Its values are checked in test_linear_models.py (ss_constant_infusion) and mrg29.
    """
    reg = pkpd.steady_state(pkpd.infusion(0.0, rate=10.0, cmt=1), ii=0.0)
    assert np.asarray(reg.ss).tolist() == [1] and np.asarray(reg.ii).tolist() == [0.0]
    with pytest.raises(ValueError, match=re.escape("got ii=0 with amount=[0.0, 5.0]")):
        pkpd.steady_state(reg + pkpd.bolus(5.0), ii=0.0)


def test_regimen_plus_non_regimen():
    with pytest.raises(TypeError):
        pkpd.bolus(1.0) + 3  # type: ignore[operator]


def test_simulate_bad_times():
    with pytest.raises(
        ValueError, match=r"expected a 1-d array of output times, got shape \(2, 2\)"
    ):
        pkpd.simulate(
            pkpd.OneCompartment(), {"CL": 1.0, "V": 1.0}, pkpd.bolus(1.0), np.ones((2, 2))
        )


# ----------------------------------------------------------------------------- known gaps


def test_simulate_rejects_unknown_compartment():
    with pytest.raises(ValueError, match="cmt"):
        pkpd.simulate(
            pkpd.OneCompartment(),
            {"CL": 1.0, "V": 10.0},
            pkpd.bolus(100.0, cmt=3),
            np.array([0.0, 1.0]),
        )


def test_simulate_modelled_duration_needs_parameter():
    with pytest.raises(ValueError, match="D1"):
        pkpd.simulate(
            pkpd.OneCompartment(),
            {"CL": 1.0, "V": 10.0},
            pkpd.infusion(100.0, rate=pkpd.MODELLED_DURATION),
            np.array([0.0, 1.0]),
        )


def test_simulate_modelled_rate_needs_parameter():
    with pytest.raises(ValueError, match="R1"):
        pkpd.simulate(
            pkpd.OneCompartment(),
            {"CL": 1.0, "V": 10.0},
            pkpd.infusion(100.0, rate=pkpd.MODELLED_RATE),
            np.array([0.0, 1.0]),
        )
