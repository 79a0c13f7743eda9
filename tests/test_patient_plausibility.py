"""Impossible and implausible inputs are refused (issue 14).

Two tiers: the hard limits (`DEMOGRAPHIC_RANGES`, `LABS`) refuse always; the plausibility
ranges (`twins._plausibility.PLAUSIBLE_RANGES`) refuse with an `ImplausiblePatientError`
that names every field at once, unless `unusual` says why a value is right. Checked here on
the issue's patient, on extreme but real patients (a neonate, a 250 kg adult, the IWPC
cohort), on tables (every row named), on trial specs (`[population] unusual`), and on the
virtual-population sampler (never implausible, by construction).
"""

import itertools
import math
import pathlib

import numpy as np
import pandas as pd
import pytest

from twins._patient import DEMOGRAPHIC_RANGES, LABS, Patient
from twins._plausibility import (
    PLAUSIBLE_RANGES,
    UNUSUAL_FIELDS,
    ImplausiblePatientError,
    PlausibleRange,
    plausible_range,
)
from twins._population import Demographics, Population
from twins._population_sample import TRUNCATION_SD, _support, _truncated_normal
from twins._population_table import generator
from twins.app._spec import SpecError, trial_from_dict

ROOT = pathlib.Path(__file__).resolve().parents[1]
IWPC_CSV = ROOT / "tests" / "data" / "reference" / "datasets" / "iwpc_warfarin_train.csv.gz"


def _range(field: str, age: float) -> PlausibleRange:
    found = plausible_range(field, age)
    assert found is not None, field
    return found


# --- the ranges themselves ----------------------------------------------------------------


def test_every_range_has_a_source_and_lies_within_the_hard_limits():
    for r in PLAUSIBLE_RANGES:
        assert r.source and r.band and r.low < r.high and r.age_low < r.age_high, r
        if r.field in LABS:
            spec = LABS[r.field]
            assert r.unit == spec.unit and spec.low <= r.low and r.high <= spec.high, r
        elif r.field in DEMOGRAPHIC_RANGES:
            unit, low, high = DEMOGRAPHIC_RANGES[r.field]
            assert r.unit == unit and low <= r.low and r.high <= high, r
        else:
            assert r.field == "bmi" and r.unit == "kg/m²"
    # The growth sources are cited where the bands use them.
    child = [r for r in PLAUSIBLE_RANGES if r.field == "weight" and r.age_high <= 5]
    assert all("WHO Child Growth Standards" in r.source for r in child)
    teen = [r for r in PLAUSIBLE_RANGES if r.field == "weight" and 5 <= r.age_low < 18]
    assert all("2000 CDC Growth Charts" in r.source for r in teen)
    assert "ICD-10" in _range("weight", 0.0).source


def test_age_bands_cover_every_age_once():
    for field in UNUSUAL_FIELDS:
        bands = sorted((r for r in PLAUSIBLE_RANGES if r.field == field), key=lambda r: r.age_low)
        assert bands[0].age_low == 0.0 and bands[-1].age_high == math.inf
        for before, after in itertools.pairwise(bands):
            assert before.age_high == after.age_low, field
    # Labs with plausibility ranges, and those with hard limits only, are all of LABS.
    labs = [f for f in UNUSUAL_FIELDS if f in LABS]
    assert labs == ["serum_creatinine", "albumin", "bilirubin", "inr"]
    assert plausible_range("alt", 40.0) is None


# --- one patient ----------------------------------------------------------------------------


def test_the_issues_patient_is_refused_with_every_field_named():
    with pytest.raises(ImplausiblePatientError) as caught:
        Patient("ISSUE-14", 120, "male", 0.3, 30, labs={"serum_creatinine": 25})
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.patient_id == "ISSUE-14"
    assert error.fields == ("age", "weight", "height", "bmi", "serum_creatinine")
    message = str(error)
    for text in (
        "Patient 'ISSUE-14'",
        "age = 120 years is outside the plausible 0 to 110 years (all ages)",
        "weight = 0.3 kg is outside the plausible 15 to 350 kg (18 years and over)",
        "height = 30 cm is outside the plausible 100 to 230 cm (18 years and over)",
        "bmi = 3.333 kg/m² (weight / height²) is outside the plausible 10 to 100 kg/m²",
        "serum_creatinine = 25 mg/dL is outside the plausible 0.1 to 15 mg/dL",
        "Patient(..., unusual={'age': '<reason>', 'weight': '<reason>'",
        "the hard limits still apply",
    ):
        assert text in message, text
    found = {f.field: f for f in error.findings}
    assert found["weight"].value == 0.3 and found["weight"].range.band == "18 years and over"
    assert found["serum_creatinine"].range.high == 15.0 and found["age"].row is None


def test_extreme_but_real_patients_pass():
    neonate = Patient("NEO", 0.05, "female", 3.2, 50.0)
    assert neonate.unusual == {}
    Patient("ADULT-250", 45, "male", 250.0, 180.0)  # BMI 77
    Patient("TALL", 30, "male", 120.0, 225.0)
    Patient("ACH", 40, "female", 45.0, 124.0)  # achondroplasia, mean adult height of women
    Patient("OLD", 110, "female", 40.0, 150.0, labs={"serum_creatinine": 1.4})
    Patient("CKD", 60, "male", 80.0, 175.0, labs={"serum_creatinine": 14.9, "inr": 12.0})
    Patient("TEEN", 12, "male", 79.0, 181.0)  # as in test_population
    Patient("CHILD", 9, "female", 28.0, 132.0, labs={"serum_creatinine": 0.45})


def test_a_250_kg_short_adult_and_a_preterm_need_a_reason():
    with pytest.raises(ImplausiblePatientError, match=r"bmi = 111.1 kg/m²") as caught:
        Patient("HEAVY", 45, "female", 250.0, 150.0)
    assert caught.value.fields == ("bmi",)
    Patient("HEAVY", 45, "female", 250.0, 150.0, unusual={"bmi": "super obesity, BMI 111"})
    with pytest.raises(ImplausiblePatientError, match=r"extremely low birth weight") as caught:
        Patient("PRE", 0.01, "female", 0.5, 33.0)
    assert caught.value.fields == ("weight",)
    preterm = Patient(
        "PRE", 0.01, "female", 0.5, 33.0, unusual={"weight": "  extremely preterm neonate "}
    )
    assert preterm.unusual == {"weight": "extremely preterm neonate"}
    assert "unusual={'weight': 'extremely preterm neonate'}" in repr(preterm)
    assert preterm != Patient("PRE", 0.01, "female", 0.5, 33.0, unusual={"weight": "ELBW"})


def test_the_override_lifts_only_the_named_fields_and_never_the_hard_limits():
    with pytest.raises(ImplausiblePatientError) as caught:
        Patient(
            "PRE",
            0.01,
            "female",
            0.5,
            30.0,
            labs={"serum_creatinine": 20.0},
            unusual={"weight": "extremely preterm neonate"},
        )
    assert caught.value.fields == ("height", "serum_creatinine")
    assert "weight" not in str(caught.value).split("If a value")[0]
    both = Patient(
        "PRE",
        0.01,
        "female",
        0.5,
        30.0,
        labs={"serum_creatinine": 20.0},
        unusual={"weight": "preterm", "height": "preterm", "serum_creatinine": "on dialysis"},
    )
    assert set(both.unusual) == {"weight", "height", "serum_creatinine"}
    # Hard limits stay: a plain ValueError, not an ImplausiblePatientError.
    with pytest.raises(ValueError, match=r"weight must be in kg within \[0.3, 400\]") as hard:
        Patient("PRE", 0.01, "female", 0.2, 30.0, unusual={"weight": "preterm"})
    assert not isinstance(hard.value, ImplausiblePatientError)
    with pytest.raises(ValueError, match=r"lab 'serum_creatinine' must be in mg/dL"):
        Patient("X", 60, "male", 80, 175, labs={"serum_creatinine": 30.0},
                unusual={"serum_creatinine": "dialysis"})  # fmt: skip


@pytest.mark.parametrize(
    "unusual, error, message",
    [
        ({"wieght": "x"}, ValueError, r"unusual\['wieght'\]: unknown field .*'weight'\?"),
        ({"BMI": "x"}, ValueError, r"unknown field 'BMI' \(did you mean 'bmi'\?\)"),
        ({"weight": ""}, ValueError, r"unusual\['weight'\]: the reason must be a non-empty"),
        ({"weight": "   "}, ValueError, r"the reason must be a non-empty string"),
        ({"weight": None}, ValueError, r"the reason must be a non-empty string"),
        ({"alt": "hepatitis"}, ValueError, r"lab 'alt' has hard limits only"),
        ({"inr": "warfarin"}, ValueError, r"no 'inr' value to lift the range of"),
        ({1: "x"}, ValueError, r"field names must be strings"),
        (["weight"], TypeError, r"unusual must be a mapping field -> reason"),
    ],
)
def test_bad_overrides_are_refused(unusual, error, message):
    with pytest.raises(error, match=r"Patient 'P1': .*" + message):
        Patient("P1", 40, "male", 80.0, 180.0, unusual=unusual)


# --- tables -----------------------------------------------------------------------------------


def _nicu() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ["n1", "n2", "n3", "n4"],
            "age": [0.01, 0.02, 0.05, 0.1],
            "sex": ["female", "male", "female", "male"],
            "weight": [0.6, 3.2, 0.8, 4.1],
            "height": [33.0, 50.0, 34.0, 54.0],
            "serum_creatinine": [0.9, 0.6, 1.1, 0.4],
        }
    )


def test_a_table_names_every_implausible_row():
    with pytest.raises(ImplausiblePatientError) as caught:
        Population.from_dataframe(_nicu())
    error = caught.value
    assert [(f.row, f.patient_id, f.field) for f in error.findings] == [
        (0, "n1", "weight"),
        (2, "n3", "weight"),
    ]
    message = str(error)
    assert "Population: 2 patients with implausible values" in message
    assert "row 0 (id 'n1'): weight = 0.6 kg is outside the plausible 1 to 17 kg" in message
    assert "row 2 (id 'n3'): weight = 0.8 kg" in message
    assert "Population.from_dataframe(..., unusual={'weight': '<reason>'})" in message


def test_a_long_list_of_findings_is_cut_but_kept_whole():
    frame = pd.DataFrame(
        {
            "id": [f"p{i}" for i in range(30)],
            "age": 40.0,
            "sex": "male",
            "weight": 80.0,
            "height": 180.0,
            "serum_creatinine": 20.0,
        }
    )
    with pytest.raises(ImplausiblePatientError, match=r"and 20 more") as caught:
        Population.from_dataframe(frame)
    assert len(caught.value.findings) == 30


def test_a_population_override_is_per_column_and_carried_by_its_patients():
    with pytest.raises(ImplausiblePatientError) as caught:
        Population.from_dataframe(
            _nicu().assign(serum_creatinine=[0.9, 0.6, 16.0, 0.4]),
            unusual={"weight": "NICU cohort"},
        )
    assert caught.value.fields == ("serum_creatinine",)
    pop = Population.from_dataframe(_nicu(), unusual={"weight": "NICU cohort"})
    assert pop.unusual == {"weight": "NICU cohort"} and "unusual=" in repr(pop)
    assert pop[0].unusual == {"weight": "NICU cohort"} and pop[0].weight == 0.6
    assert pop[1:].unusual == pop.unusual and pop.subgroup(sex="male").unusual == pop.unusual
    again = Population.from_patients(list(pop))
    assert again.unusual == pop.unusual
    assert again.to_dataframe().equals(pop.to_dataframe())
    for unusual, message in (
        ({"wieght": "NICU"}, r"Population: unusual\['wieght'\]: unknown field"),
        ({"weight": ""}, r"Population: unusual\['weight'\]: the reason must be a non-empty"),
        ({"albumin": "NICU"}, r"no 'albumin' value .*the table has: age, weight, height, bmi"),
    ):
        with pytest.raises(ValueError, match=message):
            Population.from_dataframe(_nicu(), unusual=unusual)


def test_from_patients_joins_different_reasons():
    a = Patient("a", 0.01, "female", 0.6, 33.0, unusual={"weight": "ELBW"})
    b = Patient("b", 0.02, "male", 0.7, 34.0, unusual={"weight": "NICU"})
    c = Patient("c", 0.02, "male", 3.0, 50.0)
    pop = Population.from_patients([a, b, c])
    assert pop.unusual == {"weight": "ELBW; NICU"}
    assert pop[2].unusual == {"weight": "ELBW; NICU"}


def test_imputed_implausible_values_say_so():
    frame = pd.DataFrame(
        {
            "id": ["a", "b", "c", "d", "e"],
            "age": [40.0, 50.0, 60.0, 45.0, 55.0],
            "sex": ["male"] * 5,
            "weight": [80.0, 90.0, 85.0, 75.0, 70.0],
            "height": [180.0, 175.0, 178.0, 182.0, 176.0],
            "serum_creatinine": [14.0, 15.0, 14.5, 14.8, np.nan],
        }
    )
    # The observed values lie just inside; an imputed one may fall outside: whichever it is,
    # a refusal says that the value was imputed.
    for seed in range(20):
        try:
            Population.from_dataframe(frame, missing="impute", key=seed)
        except ImplausiblePatientError as error:
            assert error.findings[0].imputed and "an imputed value" in str(error)
            return
    pytest.skip("no imputed value fell outside the plausible range in 20 seeds")


def test_the_iwpc_cohort_is_plausible():
    """4,982 real warfarin patients (heights 125-202 cm, weights 30-238 kg, BMI 13-80, INR
    0.8-5.1) pass as the adults they are: real extremes are not refused."""
    df = pd.read_csv(IWPC_CSV)
    keep = df[["Height (cm)", "Weight (kg)"]].notna().all(axis=1)
    df = df[keep]
    inr = df["INR on Reported Therapeutic Dose of Warfarin"]
    frame = pd.DataFrame(
        {
            "id": df["PharmGKB Subject ID"].to_numpy(),
            "age": 50.0,
            "sex": "male",
            "weight": df["Weight (kg)"].to_numpy(),
            "height": df["Height (cm)"].to_numpy(),
            "inr": inr.fillna(2.5).to_numpy(),
        }
    )
    assert len(Population.from_dataframe(frame)) == len(frame) > 4000


# --- virtual populations ------------------------------------------------------------------------


def test_the_sampler_draws_only_plausible_patients():
    # The default distributions, truncated at 4 SD, lie inside the adult ranges ...
    for sex in ("female", "male"):
        support = _support(Demographics(), sex)
        for field, (low, high) in support.items():
            r = _range(field, 18.0)
            assert r.low <= low and high <= r.high, (sex, field, low, high)
    # ... so a large cohort has no implausible patient (validate_table would refuse it).
    pop = Population.sample(20_000, key=5, age=(18.0, 110.0))
    assert len(pop) == 20_000 and pop.unusual == {}


def test_truncation_keeps_the_draws_inside_and_redraws_the_rest():
    z = _truncated_normal(generator(11), (3, 200_000))
    plain = generator(11).standard_normal((3, 200_000))
    inside = np.abs(plain) <= TRUNCATION_SD
    assert (~inside).any()  # some draws were beyond 4 SD and were redrawn
    assert np.array_equal(z[inside], plain[inside])
    assert np.abs(z).max() <= TRUNCATION_SD


def test_sampler_settings_that_could_give_implausible_patients_are_refused():
    with pytest.raises(ValueError, match=r"age reaches 120 years, beyond the plausible 0 to 110"):
        Population.sample(10, key=0, age=(18, 120))
    wide = Demographics(height_sd_female=20.0)
    with pytest.raises(
        ValueError,
        match=r"ancestry 'White', women: .*height down to 81.8 cm \(height_mean_female, "
        r"height_sd_female\), outside the plausible 100 to 230 cm",
    ):
        Population.sample(10, key=0, demographics=wide)
    with pytest.raises(ValueError, match=r"men: serum_creatinine up to .*scr_log_sd_male"):
        Population.sample(10, key=0, demographics=Demographics(scr_log_sd_male=1.0))


# --- trial specs ---------------------------------------------------------------------------------


def _dialysis() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ["d1", "d2", "d3", "d4"],
            "age": [70.0, 55.0, 81.0, 63.0],
            "sex": ["female", "male", "male", "female"],
            "weight": [60.0, 90.0, 75.0, 68.0],
            "height": [160.0, 180.0, 172.0, 158.0],
            "serum_creatinine": [8.1, 16.5, 12.0, 17.2],
        }
    )


def _spec(population: dict) -> dict:
    return {
        "name": "nicu",
        "drug": "vancomycin_goti2018",
        "days": 2,
        "population": population,
        "arms": [{"name": "a", "initial": {"maintenance": 10}}],
        "endpoints": [{"type": "final_level", "name": "trough"}],
        "run": {"n": 4},
    }


def test_a_spec_lifts_a_column_with_unusual(tmp_path):
    _dialysis().to_csv(tmp_path / "hd.csv", index=False)
    with pytest.raises(
        SpecError,
        match=r"(?s)population\.csv: .*row 1 \(id 'd2'\): serum_creatinine = 16.5 mg/dL",
    ):
        trial_from_dict(_spec({"csv": "hd.csv"}), base_dir=tmp_path)
    lifted = {"serum_creatinine": "haemodialysis unit"}
    trial, _ = trial_from_dict(_spec({"csv": "hd.csv", "unusual": lifted}), base_dir=tmp_path)
    assert trial.population.unusual == lifted
    assert trial.population[1].unusual == lifted


@pytest.mark.parametrize(
    "population, message",
    [
        (
            {"csv": "nicu.csv", "unusal": {"weight": "NICU"}},
            r"population\.unusal: unknown key \(did you mean 'unusual'\?\)",
        ),
        (
            {"csv": "nicu.csv", "unusual": {"wieght": "NICU"}},
            r"population\.unusual\.wieght: unknown field 'wieght' \(did you mean 'weight'\?\)",
        ),
        (
            {"csv": "nicu.csv", "unusual": {"serum_creatinine": " "}},
            r"population\.unusual\.serum_creatinine: the reason must be a non-empty string",
        ),
        (
            {"csv": "nicu.csv", "unusual": {"weight": 1}},
            r"population\.unusual\.weight: expected a string, got the integer 1",
        ),
        (
            {"csv": "nicu.csv", "unusual": "weight"},
            r"population\.unusual: expected a table",
        ),
        (
            {"csv": "nicu.csv", "unusual": {"albumin": "x"}},
            r"population\.csv: .*unusual\['albumin'\]: no 'albumin' value",
        ),
        (
            {"age": [18, 80], "unusual": {"weight": "NICU"}},
            r"population\.unusual: unusual lifts plausibility ranges for patients read from",
        ),
        (
            {"age": [18, 120]},
            r"population: Population\.sample refused these settings: .*age reaches 120",
        ),
    ],
)
def test_spec_mistakes_in_unusual_are_refused(tmp_path, population, message):
    _dialysis().to_csv(tmp_path / "nicu.csv", index=False)
    with pytest.raises(SpecError, match=message):
        trial_from_dict(_spec(population), base_dir=tmp_path)


def test_the_twin_report_shows_why_a_value_is_unusual():
    import twins
    from twins.app._twin_report import _patient_section

    patient = twins.Patient(
        id="BIG", age=45, sex="male", weight=400.0, height=180.0,
        labs={"serum_creatinine": 1.0},
        unusual={"weight": "<b>bariatric</b> clinic", "bmi": "bariatric clinic"},
    )  # fmt: skip
    html = _patient_section(twins.DigitalTwin(twins.drugs.get("vancomycin_goti2018"), patient))
    assert "Unusual weight" in html and "&lt;b&gt;bariatric&lt;/b&gt; clinic" in html
    assert "<b>" not in html
    assert "Unusual bmi" in html
