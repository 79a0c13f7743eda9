"""Property-based checks (hypothesis, bounded examples): whatever the input, the answer is
either right or a clear refusal, never a silently wrong result.

- Genotypes: any string read as a diplotype either raises `ValueError`/`TypeError`, or gives
  a result whose own diplotype reads back to the same result, whose alleles appear (as
  digits) in the string given, and whose copy numbers stay within the stated limit.
- NONMEM records: any table either raises `RecordError` naming a subject or a row, or
  passes with every field in its domain, and the observations `Dataset.from_records` keeps
  are exactly the EVID 0, MDV 0 records given.
- Results folders: any byte flipped in any part of a finished run is found by `read_results`.
- Parameters: any values of a two-compartment oral model's parameters and dosing
  parameters (negative, zero, NaN, inf, huge) are either refused with a `ValueError` that
  names one of them (or a `FloatingPointError` when values in the domain overflow), or give
  finite, non-negative concentrations that match the model simulated with the dose shifted
  by the lag and scaled by F by hand.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import calibration as C
import pkpd
import twins.pgx as pgx
from twins.pgx._parse import MAX_COPIES

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# ----------------------------------------------------------------------------- genotypes

_pieces = st.sampled_from(
    ["*", "1", "2", "3", "4", "5", "9", "10", "17", "41", "x", "X", "N", "≥", ">=", "/", "+"]
) | st.sampled_from([" ", "\t", "CYP2D6", "cyp2c19", "CYP2C9", ".", "0", "99"])
_diplotypes = st.lists(_pieces, min_size=1, max_size=10).map("".join)


@SETTINGS
@given(gene=st.sampled_from(["CYP2D6", "CYP2C19", "CYP2C9"]), text=_diplotypes)
def test_a_diplotype_is_read_right_or_refused(gene, text):
    try:
        result = pgx.phenotype(gene, text)
    except (ValueError, TypeError) as error:
        assert str(error), "a refusal must say why"
        return
    # Reading the normalised diplotype again gives the same answer.
    assert pgx.phenotype(gene, result.diplotype) == result
    # Every allele number of the result was written, as such, in the input (never made up by
    # joining digits across a space, as '*1 0' once became *10).
    written = set(re.findall(r"\d+", text))
    for number in re.findall(r"\*(\d+)", result.diplotype):
        assert number in written, (text, result.diplotype)
    for copies in re.findall(r"x(?:≥)?(\d+)", result.diplotype):
        assert 2 <= int(copies) <= MAX_COPIES
    assert np.isfinite(result.activity_score) or np.isnan(result.activity_score)


# ----------------------------------------------------------------------------- records

_field = st.one_of(
    st.sampled_from([0, 1, 2, 3, 4, -1, -2, 0.5, 10, 100.0, np.nan, np.inf, -np.inf]),
    st.floats(min_value=-5, max_value=200, allow_nan=False),
)


@st.composite
def _record_tables(draw):
    n = draw(st.integers(min_value=1, max_value=8))
    ids = draw(st.lists(st.sampled_from([1, 2, "1", "a", 1.0]), min_size=n, max_size=n))
    columns = {"ID": pd.Series(ids, dtype=object)}
    times = draw(st.lists(st.sampled_from([0.0, 1.0, 2.0, 5.0, -1.0]), min_size=n, max_size=n))
    columns["TIME"] = times
    for name in ("EVID", "AMT", "CMT", "RATE", "II", "ADDL", "SS", "MDV", "DV"):
        columns[name] = draw(st.lists(_field, min_size=n, max_size=n))
    return pd.DataFrame(columns)


@SETTINGS
@given(records=_record_tables())
def test_records_are_read_right_or_refused_with_subject_and_row(records):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pkpd.RecordWarning)
        try:
            data = C.Dataset.from_records(records, n_states=2)
        except pkpd.RecordError as error:
            assert re.search(r"row|ID|column|record", str(error)), str(error)
            return
    df = data.records
    assert set(df["EVID"]) <= {0, 1, 2, 3, 4}
    assert set(df["MDV"]) <= {0, 1}
    assert (df["TIME"] >= 0).all() and np.isfinite(df["AMT"]).all()
    # The observations kept are exactly the EVID 0, MDV 0 records, with their DV.
    is_obs = (records["EVID"].astype(float) == 0) & (records["MDV"].astype(float) == 0)
    expected = pd.to_numeric(records.loc[is_obs, "DV"]).to_numpy(dtype=float)
    assert np.isfinite(expected).all()
    got = data.dv[data.observed]
    np.testing.assert_array_equal(np.sort(got), np.sort(expected))
    # One subject per spelling of an ID.
    assert len(data.ids) == len({str(int(i)) if isinstance(i, float) else str(i) for i in df["ID"]})


# ----------------------------------------------------------------------------- results


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from test_trial_report import make_results

    root, _, _ = make_results(tmp_path_factory.mktemp("props") / "r")
    return root


@SETTINGS
@given(data=st.data())
def test_any_flipped_byte_in_a_part_is_found(finished_run, data, tmp_path_factory):
    import shutil

    from twins.trials import DamagedResultsError, read_results

    folder = tmp_path_factory.mktemp("flip") / "r"
    shutil.copytree(finished_run, folder)
    parts = sorted(folder.glob("*/part-*.parquet"))
    part = data.draw(st.sampled_from(parts))
    raw = bytearray(part.read_bytes())
    at = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[at] ^= data.draw(st.integers(min_value=1, max_value=255))
    part.write_bytes(bytes(raw))
    with pytest.raises(DamagedResultsError, match=re.escape(part.name)):
        read_results(folder)


# ----------------------------------------------------------------------------- parameters

_value = st.one_of(
    st.floats(min_value=-10.0, max_value=50.0),
    st.sampled_from([0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-300, 1e300]),
)


@SETTINGS
@given(
    st.fixed_dictionaries(
        {"KA": _value, "CL": _value, "V1": _value, "Q": _value, "V2": _value},
        optional={"F1": _value, "ALAG1": _value},
    )
)
def test_parameters_give_a_right_answer_or_a_named_refusal(params):
    model = pkpd.TwoCompartmentOral()
    times = np.array([0.5, 2.0, 8.0, 24.0])
    dose = pkpd.oral(100.0)
    try:
        y = np.asarray(pkpd.simulate(model, params, dose, times)).ravel()
    except ValueError as error:
        named = [k for k in params if re.search(rf"\b{k} = ", str(error))]
        assert named, f"refusal names no parameter: {error}"
        return
    except FloatingPointError as error:  # in the domain, but the arithmetic overflows
        assert "not finite" in str(error)
        return
    assert np.isfinite(y).all() and (y >= -1e-9 * max(1.0, np.abs(y).max())).all()
    # The same dose with F and the lag applied by hand, on the model without them.
    base = {k: params[k] for k in ("KA", "CL", "V1", "Q", "V2")}
    f, lag = params.get("F1", 1.0), params.get("ALAG1", 0.0)
    by_hand = pkpd.oral(100.0 * f, time=lag) if f > 0 else None
    ref = (
        np.asarray(pkpd.simulate(model, base, by_hand, times)).ravel()
        if by_hand is not None
        else np.zeros_like(y)
    )
    np.testing.assert_allclose(y, ref, rtol=1e-9, atol=1e-12)
