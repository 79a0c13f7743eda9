"""Property-based checks of the patient checks and the trial specs (hypothesis, bounded).

- A patient drawn anywhere inside the plausible box of its age band (age, weight, height,
  BMI, labs) is built and round-trips (`dataclasses.replace`, a `Population` table and back);
  moved outside the plausible range of one field, but inside its hard limits, it raises
  `ImplausiblePatientError` naming that field, and `unusual` for the fields named lets it
  through.
- A random table is refused exactly at the rows and fields that lie outside their ranges.
- A virtual population with random demographics is refused before drawing, or every patient
  drawn is plausible.
- A small random trial spec (valid and misspelt keys in `[population]` and at the top, values
  of every TOML type) either loads or raises a `ValueError` (`SpecError`) naming the entry;
  never another exception.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tempfile
from pathlib import Path

import pandas as pd
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from twins._patient import DEMOGRAPHIC_RANGES, LABS, Patient
from twins._plausibility import (
    PLAUSIBLE_RANGES,
    ImplausiblePatientError,
    PlausibleRange,
    find_implausible,
    plausible_range,
)
from twins._population import Demographics, Population
from twins.app._spec import SpecError, trial_from_dict

SETTINGS = settings(max_examples=60, deadline=None)
LAB_FIELDS = [r.field for r in PLAUSIBLE_RANGES if r.field in LABS]


def _range(field: str, age: float) -> PlausibleRange:
    found = plausible_range(field, age)
    assert found is not None, field
    return found


# ----------------------------------------------------------------------------- patients


def _within(draw, low: float, high: float) -> float:
    return draw(st.floats(low, high, allow_nan=False, allow_infinity=False))


@st.composite
def plausible_patients(draw) -> dict:
    age = _within(draw, 0.0, 110.0)
    w = _range("weight", age)
    h = _range("height", age)
    b = _range("bmi", age)
    height = _within(draw, h.low, h.high)
    metres2 = (height / 100.0) ** 2
    low = max(b.low, w.low / metres2)
    high = min(b.high, w.high / metres2)
    assume(low < high)
    weight = _within(draw, low, high) * metres2
    assume(w.low <= weight <= w.high and b.low <= weight / metres2 <= b.high)
    labs = {}
    for name in draw(st.sets(st.sampled_from(LAB_FIELDS))):
        r = _range(name, age)
        labs[name] = _within(draw, r.low, r.high)
    return {
        "id": draw(st.sampled_from(["P1", "X-9", "neo"])),
        "age": age,
        "sex": draw(st.sampled_from(["female", "male"])),
        "weight": weight,
        "height": height,
        "labs": labs,
    }


def _hard(field: str) -> tuple[float, float]:
    if field in LABS:
        return LABS[field].low, LABS[field].high
    _, low, high = DEMOGRAPHIC_RANGES[field]
    return low, high


@SETTINGS
@given(fields=plausible_patients())
def test_a_plausible_patient_is_built_and_round_trips(fields):
    patient = Patient(**fields)
    assert patient.unusual == {}
    assert dataclasses.replace(patient) == patient
    assert Patient(**fields) == patient and hash(Patient(**fields)) == hash(patient)
    table = Population.from_patients([patient]).to_dataframe()
    assert Population.from_dataframe(table)[0] == patient


@SETTINGS
@given(
    fields=plausible_patients(),
    field=st.sampled_from(["age", "weight", "height", *LAB_FIELDS]),
    side=st.sampled_from(["low", "high"]),
    where=st.floats(0.0, 1.0),
)
def test_outside_one_range_the_field_is_named_and_unusual_lifts_it(fields, field, side, where):
    fields = {**fields, "labs": dict(fields["labs"])}
    if field in LABS:
        fields["labs"].setdefault(field, _range(field, fields["age"]).low)
    if field == "age":
        assume(fields["age"] >= 18.0)  # so that the other fields keep their (adult) band
    r = _range(field, fields["age"] if field != "age" else 0.0)
    hard_low, hard_high = _hard(field)
    if side == "low":
        assume(hard_low < r.low)
        value = hard_low + where * (r.low - hard_low)
        assume(value < r.low)
    else:
        value = r.high + where * (hard_high - r.high)
        assume(r.high < value <= hard_high)
    if field in LABS:
        fields["labs"][field] = value
    else:
        fields[field] = value
    try:
        Patient(**fields)
    except ImplausiblePatientError as error:
        assert field in error.fields and error.patient_id == fields["id"]
        # Changing weight or height may also move the BMI out: nothing else is named.
        assert set(error.fields) <= {field, "bmi"}
        assert f"{field} = " in str(error) and "unusual=" in str(error)
        reasons = {name: "checked with the ward" for name in error.fields}
        patient = Patient(**fields, unusual=reasons)
        assert patient.unusual == reasons
    else:
        raise AssertionError(f"{field} = {value!r} outside {r} was accepted")


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.floats(0.0, 120.0),  # age
            st.floats(0.3, 400.0),  # weight
            st.floats(30.0, 250.0),  # height
            st.floats(0.05, 25.0),  # serum creatinine
        ),
        min_size=1,
        max_size=12,
    ),
    lifted=st.sets(st.sampled_from(["age", "weight", "height", "bmi", "serum_creatinine"])),
)
def test_a_table_is_refused_exactly_where_its_values_are_implausible(rows, lifted):
    frame = pd.DataFrame(rows, columns=["age", "weight", "height", "serum_creatinine"])
    frame.insert(0, "id", [f"r{i}" for i in range(len(rows))])
    frame.insert(2, "sex", "female")
    expected = set()
    for i, (age, weight, height, scr) in enumerate(rows):
        values = {
            "age": age,
            "weight": weight,
            "height": height,
            "bmi": weight / (height / 100.0) ** 2,
            "serum_creatinine": scr,
        }
        for name, value in values.items():
            r = _range(name, age)
            if name not in lifted and not r.low <= value <= r.high:
                expected.add((i, name))
    unusual = {name: "a reason" for name in lifted}
    try:
        pop = Population.from_dataframe(frame, unusual=unusual)
    except ImplausiblePatientError as error:
        assert {(f.row, f.field) for f in error.findings} == expected
        assert all(f.patient_id == f"r{f.row}" for f in error.findings)
    else:
        assert not expected and len(pop) == len(rows) and pop.unusual == unusual


@settings(max_examples=40, deadline=None)
@given(
    height_mean=st.floats(120.0, 210.0),
    height_sd=st.floats(0.5, 12.0),
    bmi_mean=st.floats(13.0, 50.0),
    bmi_cv=st.floats(0.01, 0.3),
    scr_median=st.floats(0.2, 6.0),
    scr_log_sd=st.floats(0.01, 0.6),
    seed=st.integers(0, 2**32),
)
def test_sampled_patients_are_plausible_or_the_settings_refused(
    height_mean, height_sd, bmi_mean, bmi_cv, scr_median, scr_log_sd, seed
):
    demographics = Demographics(
        height_mean_female=height_mean,
        height_sd_female=height_sd,
        bmi_mean_female=bmi_mean,
        bmi_cv_female=bmi_cv,
        scr_median_female=scr_median,
        scr_log_sd_female=scr_log_sd,
    )
    try:
        pop = Population.sample(300, key=seed, demographics=demographics, female_fraction=1.0)
    except ValueError as error:
        event("refused")
        assert not isinstance(error, ImplausiblePatientError)  # refused before drawing
        assert "could give implausible patients" in str(error)
        assert re.search(r"(height|bmi|scr)_\w+_female", str(error))
        return
    event("sampled")
    frame = pop.to_dataframe()
    columns = ("age", "weight", "height", "serum_creatinine")
    assert not find_implausible({c: frame[c].to_numpy() for c in columns}, pop.ids)


# ----------------------------------------------------------------------------- trial specs

_FOLDER = Path(tempfile.mkdtemp(prefix="twins-spec-properties-"))
pd.DataFrame(
    {
        "id": ["d1", "d2", "d3", "d4"],
        "age": [70.0, 55.0, 81.0, 63.0],
        "sex": ["female", "male", "male", "female"],
        "weight": [60.0, 90.0, 75.0, 68.0],
        "height": [160.0, 180.0, 172.0, 158.0],
        "serum_creatinine": [8.1, 16.5, 12.0, 1.2],
    }
).to_csv(_FOLDER / "pop.csv", index=False)

_NAMES = [
    "weight",
    "wieght",
    "serum_creatinine",
    "bmi",
    "alt",
    "White",
    "Asian",
    "amiodarone",
    "height_sd_male",
    "height_mean_female",
]
_SCALARS = st.one_of(
    st.booleans(),
    st.integers(-5, 200),
    st.floats(-1e3, 1e3) | st.sampled_from([math.nan, math.inf, 0.5]),
    st.sampled_from(["White", "Asian", "European", "", " ", "pop.csv", "nope.csv", "NICU"]),
)
_VALUES = st.one_of(
    _SCALARS,
    st.lists(st.floats(-10.0, 150.0) | st.sampled_from(["CYP2C9", "VKORC1"]), max_size=3),
    st.dictionaries(st.sampled_from(_NAMES), _SCALARS, max_size=3),
)
_POPULATION_KEYS = [
    "ancestry",
    "age",
    "female_fraction",
    "genes",
    "medications",
    "demographics",
    "unusual",
    "csv",
    "column_map",
    "allele_frequencies",
    "agee",
    "unusal",
    "Age",
    "weight",
]
_TOP_KEYS = ["populaton", "unusual", "name", "days", "subgroups"]


def _spec(population: dict, top: dict) -> dict:
    spec = {
        "name": "random",
        "drug": "vancomycin_goti2018",
        "days": 2,
        "population": population,
        "arms": [{"name": "a", "initial": {"maintenance": 1000}}],
        "endpoints": [{"type": "final_level", "name": "trough"}],
        "run": {"n": 4},
    }
    spec.update(top)
    return spec


_VALID_SAMPLED = st.fixed_dictionaries(
    {},
    optional={
        "ancestry": st.sampled_from(["White", "Asian", {"White": 0.5, "Asian": 0.5}]),
        "age": st.sampled_from([[18, 80], [40, 110], [18.5, 19]]),
        "female_fraction": st.floats(0.0, 1.0),
        "genes": st.sampled_from([[], ["CYP2C9"], ["VKORC1", "CYP2C9"]]),
        "medications": st.just({"amiodarone": 0.05}),
    },
)
_VALID_CSV = st.fixed_dictionaries(
    {
        "csv": st.just("pop.csv"),
        "unusual": st.sampled_from(
            [{"serum_creatinine": "dialysis"}, {"serum_creatinine": "HD", "weight": "ok"}]
        ),
    },
    optional={"column_map": st.just({"serum_creatinine": "serum_creatinine"})},
)
_RANDOM = st.dictionaries(st.sampled_from(_POPULATION_KEYS), _VALUES, max_size=4)


@settings(max_examples=100, deadline=None)
@given(
    population=st.one_of(_VALID_SAMPLED, _VALID_CSV, _RANDOM),
    change=st.dictionaries(st.sampled_from(_POPULATION_KEYS), _VALUES, max_size=1),
    top=st.dictionaries(st.sampled_from(_TOP_KEYS), _VALUES, max_size=1),
)
def test_a_random_spec_loads_or_names_the_entry(population, change, top):
    population = {**population, **change}
    spec = _spec(population, top)
    try:
        trial, options = trial_from_dict(spec, base_dir=_FOLDER)
    except ValueError as error:
        assert isinstance(error, SpecError), repr(error)
        message = str(error)
        event("refused")
        found = re.match(r"<dict>: ([^:]+): ", message)
        assert found, message
        entry = found.group(1)
        first = re.split(r"[.\[]", entry)[0].strip('"')
        assert first in spec or entry == "top level", message
        if first == "population":
            # the key of [population] named, without an element index (`age[0]`)
            rest = re.split(r"[.\[]", entry[len("population") :].lstrip("."))[0].strip('"')
            assert not rest or rest in population, message
    else:
        event("loaded")
        assert trial.population is not None and options.n == 4
