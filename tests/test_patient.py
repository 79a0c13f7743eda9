"""Derived covariates and `Patient`.

Each formula is checked against a value worked out by hand from the published equation
(the arithmetic is written out in the comments), on floats, NumPy arrays and JAX arrays (eager
and jitted), with gradients against finite differences; then `Patient`: validation messages
that name the patient and the field, genotypes read through `twins.pgx`, and the standard
covariate dictionary with its missing-lab policy.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twins.pgx as pgx
from twins._covariates import (
    allometric,
    bmi,
    bsa_dubois,
    bsa_mosteller,
    ckd_epi_2021,
    cockcroft_gault,
    creatinine_mg_dl_to_umol,
    creatinine_umol_to_mg_dl,
    ideal_body_weight,
    lean_body_weight,
)
from twins._patient import LABS, MissingCovariateError, Patient

# --- formulas on worked examples -------------------------------------------------------------


def test_cockcroft_gault_worked_examples():
    # (140 - 60) * 72 / (72 * 1.0) = 80 mL/min; a woman: 80 * 0.85 = 68.
    assert cockcroft_gault(60, 72, 1.0, female=False) == pytest.approx(80.0, rel=1e-15)
    assert cockcroft_gault(60, 72, 1.0, female=True) == pytest.approx(68.0, rel=1e-15)
    # 80-year-old woman, 50 kg, SCr 1.2: (60 * 50) / (72 * 1.2) * 0.85 = 3000 / 86.4 * 0.85
    # = 34.7222... * 0.85 = 29.5138...
    assert cockcroft_gault(80, 50, 1.2, female=True) == pytest.approx(29.513888888888889)


def test_ckd_epi_2021_worked_examples():
    # At SCr = kappa both spline terms are 1: eGFR = 142 * 0.9938**age (* 1.012 if female).
    # Man, 40 y, SCr 0.9: ln(0.9938) = -0.00621930; x40 = -0.248772; exp = 0.779758;
    # x142 = 110.726.
    assert ckd_epi_2021(40, 0.9, female=False) == pytest.approx(110.726, abs=1e-3)
    # Woman, 50 y, SCr 1.0 (above kappa 0.7): (1/0.7)**-1.200 = exp(-1.2 * 0.3566749)
    # = 0.651805; 0.9938**50 = exp(-0.310965) = 0.732740; 142 * 0.651805 * 0.732740 * 1.012
    # = 68.633.
    assert ckd_epi_2021(50, 1.0, female=True) == pytest.approx(68.633, abs=1e-3)
    # Man, 30 y, SCr 0.7 (below kappa 0.9, alpha -0.302): (0.7/0.9)**-0.302
    # = exp(0.302 * 0.2513144) = 1.078851; 0.9938**30 = exp(-0.186579) = 0.829793;
    # 142 * 1.078851 * 0.829793 = 127.122.
    assert ckd_epi_2021(30, 0.7, female=False) == pytest.approx(127.122, abs=1e-3)


def test_ckd_epi_2021_is_continuous_and_decreasing_in_creatinine():
    for female, kappa in ((True, 0.7), (False, 0.9)):
        below = ckd_epi_2021(55, kappa * (1 - 1e-9), female=female)
        above = ckd_epi_2021(55, kappa * (1 + 1e-9), female=female)
        assert below == pytest.approx(above, rel=1e-8)
        scr = np.linspace(0.3, 5.0, 200)
        assert np.all(np.diff(ckd_epi_2021(55.0, scr, female=female)) < 0)


def test_body_size_worked_examples():
    # Mosteller: sqrt(180 * 80 / 3600) = sqrt(4) = 2 m².
    assert bsa_mosteller(80, 180) == pytest.approx(2.0, rel=1e-15)
    # DuBois: 0.007184 * 70**0.425 * 170**0.725; 70**0.425 = exp(0.425 * 4.2484952)
    # = 6.0837; 170**0.725 = exp(0.725 * 5.1357984) = 41.407; product 1.8097.
    assert bsa_dubois(70, 170) == pytest.approx(1.8097, abs=1e-4)
    # BMI 70 / 1.75**2 = 22.857.
    assert bmi(70, 175) == pytest.approx(22.857142857142858)
    # Janmahasatian, man 70 kg, 175 cm: 9270 * 70 / (6680 + 216 * 22.857143)
    # = 648900 / 11617.142857 = 55.857.
    assert lean_body_weight(70, 175, female=False) == pytest.approx(55.857107, rel=1e-6)
    # Woman 60 kg, 165 cm: BMI 22.038567; 9270 * 60 / (8780 + 244 * 22.038567)
    # = 556200 / 14157.410 = 39.2868.
    assert lean_body_weight(60, 165, female=True) == pytest.approx(39.2868, abs=1e-4)
    # Devine: a 6 ft man 50 + 2.3 * 12 = 77.6 kg; a 5 ft woman 45.5 kg; 5 ft 4 in woman 54.7.
    assert ideal_body_weight(6 * 12 * 2.54, female=False) == pytest.approx(77.6)
    assert ideal_body_weight(60 * 2.54, female=True) == pytest.approx(45.5)
    assert ideal_body_weight(64 * 2.54, female=True) == pytest.approx(54.7)


def test_allometric_and_creatinine_units():
    assert allometric(35.0, 0.75) == pytest.approx(0.5**0.75)  # 0.594604
    assert allometric(70.0, 0.75) == 1.0
    assert allometric(20.0, 1.0, reference=10.0) == pytest.approx(2.0)
    assert creatinine_umol_to_mg_dl(88.42) == pytest.approx(1.0)
    assert creatinine_mg_dl_to_umol(1.13) == pytest.approx(99.9146)
    assert creatinine_umol_to_mg_dl(creatinine_mg_dl_to_umol(0.77)) == pytest.approx(0.77)


# --- floats, NumPy, JAX -----------------------------------------------------------------------

AGE = np.array([25.0, 47.0, 63.0, 81.0])
WT = np.array([58.0, 91.0, 72.5, 49.0])
HT = np.array([162.0, 183.0, 171.0, 150.0])
SCR = np.array([0.62, 1.05, 0.91, 1.4])
FEMALE = np.array([True, False, False, True])

FORMULAS = {
    "cockcroft_gault": lambda a, w, h, s, f: cockcroft_gault(a, w, s, female=f),
    "ckd_epi_2021": lambda a, w, h, s, f: ckd_epi_2021(a, s, female=f),
    "bsa_mosteller": lambda a, w, h, s, f: bsa_mosteller(w, h),
    "bsa_dubois": lambda a, w, h, s, f: bsa_dubois(w, h),
    "lean_body_weight": lambda a, w, h, s, f: lean_body_weight(w, h, female=f),
    "ideal_body_weight": lambda a, w, h, s, f: ideal_body_weight(h, female=f),
    "bmi": lambda a, w, h, s, f: bmi(w, h),
    "allometric": lambda a, w, h, s, f: allometric(w, 0.75),
}


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_arrays_match_floats_and_jax_matches_numpy(name):
    formula = FORMULAS[name]
    arrays = formula(AGE, WT, HT, SCR, FEMALE)
    assert isinstance(arrays, np.ndarray) and arrays.shape == (4,)
    for i in range(4):
        scalar = formula(float(AGE[i]), float(WT[i]), float(HT[i]), float(SCR[i]), bool(FEMALE[i]))
        assert isinstance(scalar, float)
        assert scalar == pytest.approx(arrays[i], rel=1e-14)
    inputs = [jnp.asarray(x) for x in (AGE, WT, HT, SCR, FEMALE)]
    eager = formula(*inputs)
    jitted = jax.jit(formula)(*inputs)
    assert isinstance(eager, jax.Array)
    np.testing.assert_allclose(np.asarray(eager), arrays, rtol=1e-13)
    np.testing.assert_allclose(np.asarray(jitted), arrays, rtol=1e-13)


def test_gradients_match_finite_differences():
    def crcl_of_scr(scr):
        return cockcroft_gault(63.0, 72.5, scr, female=False)

    def egfr_of_scr(scr):
        return ckd_epi_2021(63.0, scr, female=True)

    for function, point in ((crcl_of_scr, 0.91), (egfr_of_scr, 1.3), (egfr_of_scr, 0.55)):
        step = 1e-6
        numeric = (function(point + step) - function(point - step)) / (2 * step)
        assert float(jax.grad(function)(jnp.asarray(point))) == pytest.approx(numeric, rel=1e-7)
    # Closed form: d CrCL / d SCr = -CrCL / SCr.
    assert float(jax.grad(crcl_of_scr)(jnp.asarray(0.91))) == pytest.approx(
        -crcl_of_scr(0.91) / 0.91
    )


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: cockcroft_gault(60, -72, 1.0, female=False), r"weight must be positive"),
        (lambda: cockcroft_gault(60, 72, 0.0, female=False), r"serum_creatinine must be positive"),
        (
            lambda: cockcroft_gault(150, 72, 1.0, female=False),
            r"age must be finite and in \[0, 140",
        ),
        (lambda: ckd_epi_2021(float("nan"), 1.0, female=False), r"age must be finite"),
        (lambda: bsa_mosteller(70, float("inf")), r"height must be positive and finite \(in cm\)"),
        (
            lambda: bsa_mosteller(np.array([70.0, 80.0, -1.0]), 170.0),
            r"weight must be positive .* got -1.0 at index 2",
        ),
        (lambda: ckd_epi_2021(50, 1.0, female=2), r"female must be True/False or 1/0"),
        (lambda: ideal_body_weight(90.0, female=True), r"Devine line gives no weight"),
        (lambda: allometric(70.0, float("nan")), r"exponent must be finite"),
    ],
)
def test_bad_inputs_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_bad_types_and_jitted_checks():
    with pytest.raises(TypeError, match="female must be True/False"):
        ckd_epi_2021(50, 1.0, female="female")
    with pytest.raises(TypeError, match="weight must be a number"):
        bsa_mosteller("70", 170)
    with pytest.raises(Exception, match="weight must be positive and finite"):
        jax.jit(lambda w: bsa_mosteller(w, 170.0))(jnp.asarray(-3.0)).block_until_ready()


# --- Patient ------------------------------------------------------------------------------------


def _patient(**changes):
    fields = {
        "id": "P1",
        "age": 60,
        "sex": "Male",
        "weight": 72,
        "height": 175,
        "ancestry": "White",
        "labs": {"serum_creatinine": 1.0, "albumin": 4.1},
        "genotypes": {"cyp2c9": "*3/*1", "VKORC1": "-1639 AG", "CYP2D6": "*1/*1x2"},
        "medications": {"Amiodarone"},
        "extra": {"dialysis": 0.0},
    }
    fields.update(changes)
    return Patient(**fields)


def test_patient_normalises_and_is_frozen():
    patient = _patient()
    assert patient.sex == "male" and not patient.female
    assert isinstance(patient.age, float)
    assert dict(patient.genotypes) == {
        "CYP2C9": "*3/*1",
        "CYP2D6": "*1/*1x2",
        "VKORC1": "-1639 AG",
    }
    assert patient.medications == frozenset({"amiodarone"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        patient.age = 61  # type: ignore[misc]
    with pytest.raises(TypeError):
        patient.labs["albumin"] = 3.0  # type: ignore[index]
    assert patient == _patient() and hash(patient) == hash(_patient())
    assert patient != _patient(weight=73)
    assert Patient(7, 30, "female", 60, 165).id == "7"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"age": 121}, r"Patient 'P1': age must be in years within \[0, 120\], got 121.0"),
        ({"age": -1}, r"Patient 'P1': age must be in years"),
        ({"weight": 0.2}, r"Patient 'P1': weight must be in kg within \[0.3, 400\]"),
        ({"weight": 401}, r"Patient 'P1': weight must be in kg"),
        ({"height": 29}, r"Patient 'P1': height must be in cm within \[30, 250\]"),
        ({"height": 251}, r"Patient 'P1': height must be in cm"),
        ({"weight": float("nan")}, r"Patient 'P1': weight must be finite"),
        ({"sex": "F"}, r"Patient 'P1': sex must be 'female' or 'male', got 'F'"),
        ({"id": ""}, r"Patient id must be a non-empty string"),
        (
            {"labs": {"creatinine": 1.0}},
            r"Patient 'P1': unknown lab 'creatinine'.*serum_creatinine \(mg/dL\)",
        ),
        (
            {"labs": {"serum_creatinine": 88.0}},
            r"Patient 'P1': lab 'serum_creatinine' must be in mg/dL .* µmol/L",
        ),
        ({"labs": {"albumin": 41.0}}, r"lab 'albumin' must be in g/dL .* g/L: divide by 10"),
        ({"labs": {"inr": float("nan")}}, r"Patient 'P1': lab 'inr' must be finite"),
        (
            {"genotypes": {"CYP2C9": "*1/*99"}},
            r"Patient 'P1': CYP2C9 genotype '\*1/\*99'.*Unknown CYP2C9 allele '\*99'",
        ),
        ({"genotypes": {"CYP3A5": "*1/*3"}}, r"Patient 'P1': unsupported gene 'CYP3A5'"),
        ({"genotypes": {"VKORC1": "-1639 GX"}}, r"Patient 'P1': VKORC1 genotype '-1639 GX'"),
        ({"genotypes": {"CYP2C9": "*1/*1", "cyp2c9": "*1/*2"}}, r"gene CYP2C9 is given twice"),
        ({"extra": {"alb": 1.0}}, r"extra 'alb' would give covariate key 'ALB'"),
        ({"medications": {"cyp2d6"}}, r"medication 'cyp2d6' would give covariate key 'CYP2D6'"),
        ({"imputed": {"albumin", "bilirubin"}}, r"imputed names \['bilirubin'\]"),
    ],
)
def test_patient_errors_name_patient_and_field(changes, message):
    with pytest.raises(ValueError, match=message):
        _patient(**changes)


def test_patient_type_errors():
    with pytest.raises(TypeError, match="Patient 'P1': age must be a real number"):
        _patient(age=True)
    with pytest.raises(TypeError, match="medications must be a set of names"):
        _patient(medications="amiodarone")
    with pytest.raises(TypeError, match=r"Patient 'P1': .*VKORC1 diplotype must be a string"):
        _patient(genotypes={"VKORC1": 1})


def test_vkorc1_spellings_give_the_same_covariates():
    spellings = ["-1639 AG", "rs9923231 GA", "G/A", "A/G", "rs9923231 C/T", "-1639G>A het"]
    seen = set()
    for spelling in spellings:
        covariates = _patient(genotypes={"VKORC1": spelling}).covariates()
        assert covariates["VKORC1_PHENOTYPE"] == "-1639 AG"
        assert covariates["VKORC1_AS"] is None
        seen.add(covariates["VKORC1"])
    assert seen == {pgx.phenotype("VKORC1", "G/A").diplotype}


def test_covariates_contract():
    patient = _patient()
    covariates = patient.covariates(medications=("fluconazole",))
    assert list(covariates) == [
        "ID", "AGE", "WT", "HT", "SEX", "SCR", "CRCL", "EGFR", "BSA", "LBW", "ALB",
        "CYP2C9", "CYP2C9_AS", "CYP2C9_PHENOTYPE",
        "CYP2D6", "CYP2D6_AS", "CYP2D6_PHENOTYPE",
        "VKORC1", "VKORC1_AS", "VKORC1_PHENOTYPE",
        "AMIODARONE", "FLUCONAZOLE", "DIALYSIS",
    ]  # fmt: skip
    assert covariates["SEX"] == 0.0 and _patient(sex="female").covariates()["SEX"] == 1.0
    # Cockcroft-Gault on total body weight: (140 - 60) * 72 / (72 * 1.0) = 80 mL/min.
    assert covariates["CRCL"] == pytest.approx(80.0)
    assert covariates["EGFR"] == pytest.approx(ckd_epi_2021(60, 1.0, female=False))
    assert covariates["BSA"] == pytest.approx(math.sqrt(175 * 72 / 3600))
    assert covariates["LBW"] == pytest.approx(lean_body_weight(72, 175, female=False))
    assert covariates["ALB"] == 4.1 and covariates["SCR"] == 1.0
    assert covariates["CYP2C9"] == "*1/*3"
    assert covariates["CYP2C9_AS"] == 1.0
    assert covariates["CYP2C9_PHENOTYPE"] == "Intermediate Metabolizer"
    assert covariates["CYP2D6_AS"] == 3.0
    assert covariates["CYP2D6_PHENOTYPE"] == "Ultrarapid Metabolizer"
    assert covariates["AMIODARONE"] == 1.0 and covariates["FLUCONAZOLE"] == 0.0
    assert covariates["DIALYSIS"] == 0.0
    for key, value in covariates.items():
        assert value is None or isinstance(value, (float, str)), key


def test_missing_lab_is_absent_unless_required():
    patient = _patient(labs={"albumin": 4.1})
    covariates = patient.covariates()
    assert not {"SCR", "CRCL", "EGFR"} & set(covariates)
    assert covariates["ALB"] == 4.1
    with pytest.raises(MissingCovariateError) as caught:
        patient.covariates(required=("WT", "CRCL"))
    error = caught.value
    assert isinstance(error, ValueError)
    assert (error.patient_id, error.field, error.covariate) == ("P1", "serum_creatinine", "CRCL")
    assert "Patient 'P1'" in str(error) and "serum_creatinine" in str(error)
    with pytest.raises(
        MissingCovariateError, match="Patient 'P1': covariate 'ALB' needs 'albumin'"
    ):
        _patient(labs={}).covariates(required="ALB")
    with pytest.raises(
        MissingCovariateError, match="covariate 'CYP2C19_PHENOTYPE' needs 'CYP2C19'"
    ):
        patient.covariates(required=("CYP2C19_PHENOTYPE",))
    with pytest.raises(MissingCovariateError, match="covariate 'CRCL' needs 'serum_creatinine'"):
        patient.crcl()
    with pytest.raises(MissingCovariateError, match="no CYP2C19 genotype"):
        patient.phenotype("CYP2C19")


def test_children_get_no_adult_equations():
    child = Patient("C1", 9, "female", 28, 132, labs={"serum_creatinine": 0.45})
    covariates = child.covariates()
    assert covariates["SCR"] == 0.45 and "BSA" in covariates
    assert not {"CRCL", "EGFR", "LBW"} & set(covariates)
    with pytest.raises(MissingCovariateError, match=r"adult equations .* 9 years old") as caught:
        child.covariates(required=["EGFR"])
    assert caught.value.field == "age"
    with pytest.raises(MissingCovariateError, match="'LBW' needs 'age'"):
        child.lbw()


def test_required_unknown_key_and_medication_flags():
    patient = _patient()
    patient.covariates(required=("AMIODARONE", "DIALYSIS", "VKORC1_PHENOTYPE"))
    with pytest.raises(
        ValueError, match=r"unknown covariate 'FLUCONAZOLE'.*medications="
    ) as caught:
        patient.covariates(required=("FLUCONAZOLE",))
    assert not isinstance(caught.value, MissingCovariateError)
    flags = patient.covariates(required=("FLUCONAZOLE",), medications=["Fluconazole"])
    assert flags["FLUCONAZOLE"] == 0.0


def test_patient_methods():
    patient = _patient(sex="female", weight=95, height=160)
    assert patient.crcl() == pytest.approx(cockcroft_gault(60, 95, 1.0, female=True))
    ibw = ideal_body_weight(160, female=True)
    assert patient.ibw() == pytest.approx(ibw)
    assert patient.crcl(weight=patient.ibw()) == pytest.approx(
        cockcroft_gault(60, ibw, 1.0, female=True)
    )
    assert patient.egfr() == pytest.approx(ckd_epi_2021(60, 1.0, female=True))
    assert patient.bsa() == pytest.approx(bsa_mosteller(95, 160))
    assert patient.bsa(formula=bsa_dubois) == pytest.approx(bsa_dubois(95, 160))
    assert patient.lbw() == pytest.approx(lean_body_weight(95, 160, female=True))
    assert patient.bmi() == pytest.approx(95 / 1.6**2)
    assert patient.phenotype("cyp2d6") == pgx.phenotype("CYP2D6", "*1/*1x2")


def test_lab_registry_documents_units():
    assert LABS["serum_creatinine"].unit == "mg/dL"
    assert LABS["albumin"].unit == "g/dL"
    assert LABS["alt"].unit == LABS["ast"].unit == "U/L"
    for spec in LABS.values():
        assert 0 < spec.low < spec.high and spec.description
