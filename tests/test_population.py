"""`Population`: virtual cohorts and real tables.

Sampling is checked against its sources: genotype counts against the shipped IWPC table
(chi-square goodness of fit at a significance level fixed in advance, 0.001, with the
threshold computed from the degrees of freedom), ancestry mixtures and sex against binomial
tolerances computed from n, and the demographic summaries against the `Demographics`
parameters within standard errors computed from n. Real tables: every kind of bad input
names the row, the patient id and the column; imputation flags are set exactly where values
were missing.
"""

import filecmp
import math
from importlib import resources
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import twins.pgx as pgx
from twins._patient import MissingCovariateError, Patient
from twins._population import Demographics, Population, iwpc_genotype_counts

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "pgx"
IWPC_CSV = resources.files("twins") / "data" / "IWPC_derived_genotype_frequencies_by_race.csv"
ALPHA = 1e-3  # significance level of every distributional check below, fixed in advance
Z = stats.norm.ppf(1 - ALPHA / 2)  # 3.29: two-sided normal quantile for ALPHA
N = 20_000


@pytest.fixture(scope="module")
def white() -> Population:
    return Population.sample(N, key=jax.random.key(20), ancestry="White")


@pytest.fixture(scope="module")
def asian() -> Population:
    return Population.sample(N, key=jax.random.key(21), ancestry="Asian")


def _expected_counts(race: str) -> dict[str, dict[str, float]]:
    """Genotype probabilities straight from the shipped CSV (independent of the sampler)."""
    with IWPC_CSV.open("r", encoding="utf-8") as handle:
        table = pd.read_csv(handle).set_index("race_OMB")
    row = table.loc[race]
    cyp2c9 = {
        d: float(row[f"CYP2C9_{d}"]) for d in ["*1/*1", "*1/*2", "*1/*3", "*2/*2", "*2/*3", "*3/*3"]
    }
    vkorc1 = {f"-1639 {g}": float(row[f"VKORC1_{g}"]) for g in ["GG", "AG", "AA"]}
    return {"CYP2C9": cyp2c9, "VKORC1": vkorc1}


def _chi_square_ok(observed: pd.Series, weights: dict[str, float]) -> None:
    total = sum(weights.values())
    n = int(observed.sum())
    possible = {k: w / total for k, w in weights.items() if w > 0}
    impossible = [k for k, w in weights.items() if w == 0]
    for k in impossible:
        assert observed.get(k, 0) == 0, f"{k} has probability 0 but was drawn"
    assert set(observed.index) <= set(weights)
    counts = np.array([observed.get(k, 0) for k in possible], dtype=float)
    expected = n * np.array(list(possible.values()))
    assert expected.min() >= 5, "chi-square needs expected counts >= 5"
    statistic = float(((counts - expected) ** 2 / expected).sum())
    threshold = stats.chi2.ppf(1 - ALPHA, df=len(possible) - 1)
    assert statistic < threshold, (statistic, threshold, dict(zip(possible, counts, strict=True)))


def test_shipped_iwpc_table_is_the_reference_copy():
    if not REFERENCE.is_dir():
        pytest.skip("../shared/reference/pgx is not present")
    with resources.as_file(IWPC_CSV) as shipped:
        assert filecmp.cmp(shipped, REFERENCE / IWPC_CSV.name, shallow=False)


def test_iwpc_counts_reader():
    counts = iwpc_genotype_counts()
    assert set(counts) == {"Asian", "Black or African American", "Unknown", "White"}
    assert counts["White"]["CYP2C9"]["*1/*3"] == 382
    assert counts["Asian"]["VKORC1"] == {"-1639 GG": 24, "-1639 AG": 222, "-1639 AA": 1135}
    with pytest.raises(TypeError):
        counts["White"]["CYP2C9"]["*1/*1"] = 0  # type: ignore[index]
    for race, genes in counts.items():
        assert genes["CYP2C9"] == _expected_counts(race)["CYP2C9"]


@pytest.mark.parametrize("fixture", ["white", "asian"])
@pytest.mark.parametrize("gene", ["CYP2C9", "VKORC1"])
def test_sampled_genotypes_match_iwpc_counts(fixture, gene, request):
    population = request.getfixturevalue(fixture)
    race = {"white": "White", "asian": "Asian"}[fixture]
    observed = population.to_dataframe()[gene].value_counts()
    _chi_square_ok(observed, _expected_counts(race)[gene])


def test_same_key_same_cohort_and_seed_equals_key():
    kwargs = dict(
        ancestry={"White": 0.6, "Black or African American": 0.4}, medications={"amiodarone": 0.1}
    )
    a = Population.sample(300, key=7, **kwargs).to_dataframe()
    b = Population.sample(300, key=7, **kwargs).to_dataframe()
    c = Population.sample(300, key=jax.random.key(7), **kwargs).to_dataframe()
    d = Population.sample(300, key=8, **kwargs).to_dataframe()
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, c)
    assert not np.array_equal(a["weight"].to_numpy(), d["weight"].to_numpy())
    legacy = Population.sample(300, key=jax.random.PRNGKey(7), **kwargs).to_dataframe()
    pd.testing.assert_frame_equal(a, legacy)


def test_ancestry_mixture_and_sex_within_binomial_tolerance():
    fractions = {"White": 0.5, "Asian": 0.3, "Black or African American": 0.2}
    n = 10_000
    frame = Population.sample(n, key=3, ancestry=fractions, female_fraction=0.3).to_dataframe()
    shares = frame["ancestry"].value_counts() / n
    for name, p in fractions.items():
        assert abs(shares[name] - p) < Z * math.sqrt(p * (1 - p) / n), name
    female = (frame["sex"] == "female").mean()
    assert abs(female - 0.3) < Z * math.sqrt(0.3 * 0.7 / n)
    # Genotypes follow each patient's ancestry: the VKORC1 A allele is frequent in Asian
    # patients (IWPC: 0.90) and rare in Black patients (0.11).
    a_alleles = frame["VKORC1"].map({"-1639 GG": 0, "-1639 AG": 1, "-1639 AA": 2})
    by_group = a_alleles.groupby(frame["ancestry"]).mean() / 2
    assert by_group["Asian"] > 0.85 and by_group["Black or African American"] < 0.15


def test_demographics_match_their_parameters(white):
    frame = white.to_dataframe()
    d = Demographics()
    assert frame["age"].between(18, 80).all()
    for sex, height_mean, height_sd, bmi_mean, scr_median in (
        ("male", d.height_mean_male, d.height_sd_male, d.bmi_mean_male, d.scr_median_male),
        (
            "female",
            d.height_mean_female,
            d.height_sd_female,
            d.bmi_mean_female,
            d.scr_median_female,
        ),
    ):
        rows = frame[frame["sex"] == sex]
        n = len(rows)
        assert abs(rows["height"].mean() - height_mean) < Z * height_sd / math.sqrt(n)
        bmi = rows["weight"] / (rows["height"] / 100) ** 2
        assert abs(bmi.mean() - bmi_mean) < Z * bmi.std() / math.sqrt(n)
        # Median of a log-normal: the sample median is within Z standard errors
        # (SE of a median = sqrt(pi/2) * sd / sqrt(n) on the log scale).
        log_scr = np.log(rows["serum_creatinine"])
        se = math.sqrt(math.pi / 2) * log_scr.std() / math.sqrt(n)
        assert abs(log_scr.median() - math.log(scr_median)) < Z * se
    # Mean weights against NHSR 122 (2015-2016): 89.8 kg men, 77.4 kg women, within 1 kg.
    weights = frame.groupby("sex")["weight"].mean()
    assert weights["male"] == pytest.approx(89.8, abs=1.0)
    assert weights["female"] == pytest.approx(77.4, abs=1.0)


def test_correlations(white):
    frame = white.to_dataframe()
    covariates = white.covariates(required=("CRCL", "EGFR"))
    n = len(frame)
    # Significant at ALPHA: |r| > Z / sqrt(n) (Fisher), and in the expected direction.
    assert np.corrcoef(frame["age"], covariates["CRCL"])[0, 1] < -Z / math.sqrt(n)
    assert np.corrcoef(frame["age"], covariates["EGFR"])[0, 1] < -Z / math.sqrt(n)
    assert np.corrcoef(frame["height"], frame["weight"])[0, 1] > Z / math.sqrt(n)
    # Creatinine is higher in men (Pottel 2008 medians 0.90 vs 0.70 mg/dL).
    scr = frame.groupby("sex")["serum_creatinine"].median()
    assert scr["male"] > scr["female"]


def test_population_covariates_match_patient_covariates(white):
    covariates = white.covariates(medications=("fluconazole",))
    some = white[:25]
    assert len(some) == 25
    for i, patient in enumerate(some):
        single = patient.covariates(medications=("fluconazole",))
        assert list(single) == list(covariates)
        for key, value in single.items():
            array_value = covariates[key][i]
            if value is None:
                assert key.endswith("_AS") and math.isnan(array_value)
            elif isinstance(value, str):
                assert array_value == value, key
            else:
                assert array_value == pytest.approx(value, rel=1e-14), key
    assert covariates["WT"].dtype == np.float64 and covariates["CYP2C9"].dtype == object
    assert set(np.unique(covariates["CYP2C9_AS"])) <= {0.0, 0.5, 1.0, 1.5, 2.0}
    assert np.isnan(covariates["VKORC1_AS"]).all()
    assert (covariates["FLUCONAZOLE"] == 0.0).all()


def test_indexing_iteration_and_subgroups():
    population = Population.sample(200, key=5, ancestry={"White": 0.5, "Asian": 0.5})
    assert len(population) == 200
    assert isinstance(population[0], Patient) and population[-1].id == "V00200"
    with pytest.raises(IndexError):
        population[200]
    patients = list(population)
    assert [p.id for p in patients] == list(population.ids)
    frame = population.to_dataframe()
    mask = (frame["sex"] == "female").to_numpy()
    females = population[mask]
    assert len(females) == mask.sum() and all(p.sex == "female" for p in females)
    asian_women = population.subgroup(sex="female", ancestry="Asian")
    assert list(asian_women.ids) == list(frame[mask & (frame["ancestry"] == "Asian")]["id"])
    old = population.subgroup(lambda df: df["age"] > 60)
    assert (old.to_dataframe()["age"] > 60).all()
    picked = population[np.array([3, 1])]
    assert list(picked.ids) == ["V00004", "V00002"]
    pm = population.subgroup(population.covariates()["CYP2C9_PHENOTYPE"] == "Poor Metabolizer")
    assert all(p.phenotype("CYP2C9").phenotype == "Poor Metabolizer" for p in pm)
    with pytest.raises(ValueError, match="boolean mask of shape"):
        population.subgroup(np.ones(3, dtype=bool))
    roundtrip = Population.from_patients(patients)
    pd.testing.assert_frame_equal(roundtrip.to_dataframe(), frame)
    pd.testing.assert_frame_equal(Population.from_dataframe(frame).to_dataframe(), frame)
    pd.testing.assert_frame_equal(Population(frame).to_dataframe(), frame)
    assert len(population[[]]) == 0 and len(population[np.zeros(200, dtype=bool)]) == 0


def test_allele_frequencies_under_hardy_weinberg():
    # Made-up frequencies for the test only (not a population estimate).
    frequencies = {"*1": 0.6, "*2": 0.15, "*17": 0.25}
    population = Population.sample(
        N, key=11, genes=(), allele_frequencies={"CYP2C19": {"White": frequencies}}
    )
    assert population.genes == ("CYP2C19",)
    observed = population.to_dataframe()["CYP2C19"].value_counts()
    expected: dict[str, float] = {}
    alleles = list(frequencies)
    for i, a in enumerate(alleles):
        for b in alleles[i:]:
            name = pgx.phenotype("CYP2C19", f"{a}/{b}").diplotype
            expected[name] = frequencies[a] * frequencies[b] * (1 if a == b else 2)
    _chi_square_ok(observed, expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ancestry": "Caucasian"}, r"Unknown ancestry 'Caucasian'"),
        ({"ancestry": {"White": 0.5, "Asian": 0.4}}, r"fractions must sum to 1"),
        ({"age": (10, 40)}, r"age must be \(low, high\) with 18 <= low < high <= 120"),
        ({"female_fraction": 1.5}, r"female_fraction must be in \[0, 1\]"),
        ({"genes": ("CYP3A4",)}, r"genes: unsupported gene 'CYP3A4'"),
        ({"medications": {"amiodarone": 2.0}}, r"prevalence of medication 'amiodarone'"),
        (
            {"allele_frequencies": {"CYP2D6": {"White": {"*1": 0.5, "*4": 0.4}}}},
            r"allele_frequencies\['CYP2D6'\]\['White'\]: allele frequencies must sum to 1",
        ),
        (
            {"allele_frequencies": {"CYP2D6": {"White": {"*1": 0.5, "*999": 0.5}}}},
            r"Unknown CYP2D6 allele '\*999'",
        ),
        (
            {"allele_frequencies": {"CYP2D6": {"Asian": {"*1": 1.0}}}},
            r"no frequencies for the sampled ancestries \['White'\]",
        ),
        ({"demographics": {"Asian": Demographics()}}, r"no entry for the sampled ancestries"),
    ],
)
def test_sample_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Population.sample(10, key=0, **kwargs)


def test_sample_key_and_demographics_errors():
    with pytest.raises(TypeError, match="key must be a JAX PRNG key or an integer seed"):
        Population.sample(10, key="seed")
    with pytest.raises(ValueError, match="n must be a positive integer"):
        Population.sample(0, key=0)
    with pytest.raises(ValueError, match=r"Demographics.height_sd_male must be a positive"):
        Demographics(height_sd_male=-1.0)
    tall = Population.sample(
        2000, key=1, ancestry={"White": 0.5, "Asian": 0.5},
        demographics={"White": Demographics(height_mean_male=190.0, height_mean_female=180.0),
                      "Asian": Demographics()},
    )  # fmt: skip
    heights = tall.to_dataframe().groupby("ancestry")["height"].mean()
    assert heights["White"] > heights["Asian"] + 10


# --- real tables --------------------------------------------------------------------------------


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "PatientID": ["a1", "a2", "a3", "a4"],
            "AGE_YRS": [54, 71, 38, 66],
            "sex": ["female", "Male", "male", "female"],
            "weight": [61.0, 88.5, 79.0, 70.2],
            "height": [160.0, 178.0, 181.0, 166.0],
            "serum_creatinine": [0.7, 1.3, 0.95, 0.8],
            "CYP2C9": ["*1/*1", "*1/*3", "*2/*1", "*1/*1"],
            "VKORC1": ["G/A", "rs9923231 GG", "-1639 AA", "A/G"],
            "med_amiodarone": [0, 1, 0, 0],
            "extra_DIAL": [0.0, 0.0, 1.0, 0.0],
            "Comments": ["", "", "note", ""],
        }
    )


MAP = {"PatientID": "id", "AGE_YRS": "age", "Comments": None}


def test_from_dataframe_with_column_map():
    population = Population.from_dataframe(_table(), column_map=MAP)
    frame = population.to_dataframe()
    assert list(frame.columns) == [
        "id", "age", "sex", "weight", "height", "ancestry", "serum_creatinine",
        "CYP2C9", "VKORC1", "med_amiodarone", "extra_DIAL",
    ]  # fmt: skip
    assert frame["sex"].tolist() == ["female", "male", "male", "female"]
    assert frame["ancestry"].isna().all()
    covariates = population.covariates(required=("CRCL", "VKORC1_PHENOTYPE", "DIAL", "AMIODARONE"))
    assert covariates["VKORC1_PHENOTYPE"].tolist() == [
        "-1639 AG",
        "-1639 GG",
        "-1639 AA",
        "-1639 AG",
    ]
    assert covariates["AMIODARONE"].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert covariates["DIAL"].tolist() == [0.0, 0.0, 1.0, 0.0]
    # a2: 71-year-old man, 88.5 kg, SCr 1.3: (140 - 71) * 88.5 / (72 * 1.3) = 65.24 mL/min.
    assert covariates["CRCL"][1] == pytest.approx(69 * 88.5 / (72 * 1.3))
    assert population[1].medications == frozenset({"amiodarone"})


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda df: df.drop(columns=["Comments"]),
            r"column_map names columns that are not in the table: \['Comments'\]",
        ),
        (lambda df: df.assign(Notes=1), r"Unknown columns \['Notes'\].*column_map=\{old: None\}"),
        (lambda df: df.drop(columns=["height"]), r"Missing required columns \['height'\]"),
        (
            lambda df: df.assign(PatientID=["a1", "a2", "a1", "a4"]),
            r"Duplicate patient id 'a1' in rows \[0, 2\]",
        ),
        (
            lambda df: df.assign(sex=["female", "M", "male", "female"]),
            r"row 1 \(id 'a2'\): sex must be 'female' or 'male', got 'M'",
        ),
        (
            lambda df: df.assign(weight=[61.0, 88.5, 790.0, 70.2]),
            r"row 2 \(id 'a3'\): weight must be in kg within \[0.3, 400\], got 790.0",
        ),
        (
            lambda df: df.assign(serum_creatinine=[0.7, 115.0, 0.95, 0.8]),
            r"row 1 \(id 'a2'\): lab 'serum_creatinine' must be in mg/dL .*µmol/L",
        ),
        (
            lambda df: df.assign(weight=[61.0, "heavy", 79.0, 70.2]),
            r"row 1 \(id 'a2'\): weight must be a number, got 'heavy'",
        ),
        (
            lambda df: df.assign(serum_creatinine=[0.7, np.nan, 0.95, None]),
            r"row 1 \(id 'a2'\), row 3 \(id 'a4'\): serum_creatinine is missing .*missing='impute'",
        ),
        (
            lambda df: df.assign(CYP2C9=["*1/*1", "*1/*3", "*1/*99", "*1/*1"]),
            r"row 2 \(id 'a3'\): CYP2C9 genotype '\*1/\*99'.*Unknown CYP2C9 allele '\*99'",
        ),
        (
            lambda df: df.assign(CYP2C9=["*1/*1", None, "*1/*2", "*1/*1"]),
            r"row 1 \(id 'a2'\): CYP2C9 must be a non-empty string.*never imputed",
        ),
        (
            lambda df: df.assign(med_amiodarone=[0, 2, 0, 0]),
            r"row 1 \(id 'a2'\): med_amiodarone must be True/False or 1/0, got 2",
        ),
        (
            lambda df: df.assign(extra_DIAL=[0.0, np.nan, 1.0, 0.0]),
            r"row 1 \(id 'a2'\): extra_DIAL is missing; extra covariates are never imputed",
        ),
        (lambda df: df.assign(extra_alb=1.0), r"extra 'alb' would give covariate key 'ALB'"),
    ],
)
def test_from_dataframe_errors_name_row_id_and_column(change, message):
    with pytest.raises(ValueError, match=message):
        Population.from_dataframe(change(_table()), column_map=MAP)


def test_missing_covariates_of_a_population():
    table = _table().drop(columns=["serum_creatinine"])
    population = Population.from_dataframe(table, column_map=MAP)
    covariates = population.covariates()
    assert not {"SCR", "CRCL", "EGFR", "ALB"} & set(covariates)
    with pytest.raises(
        MissingCovariateError, match="Patient 'a1': covariate 'CRCL' needs 'serum_creatinine'"
    ):
        population.covariates(required=("CRCL",))
    child = _table().assign(AGE_YRS=[54, 71, 12, 66])
    young = Population.from_dataframe(child, column_map=MAP)
    assert "CRCL" not in young.covariates() and "SCR" in young.covariates()
    with pytest.raises(
        MissingCovariateError, match=r"Patient 'a3': covariate 'EGFR' needs 'age'.*12 years old"
    ):
        young.covariates(required=("EGFR",))
    with pytest.raises(MissingCovariateError, match="needs 'CYP2D6'"):
        young.covariates(required=("CYP2D6_AS",))


def _with_gaps() -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    population = Population.sample(400, key=9, medications={"amiodarone": 0.2})
    frame = population.to_dataframe()
    rng = np.random.default_rng(4)
    frame["albumin"] = rng.normal(4.2, 0.35, len(frame))
    masks = {}
    for column, share in (("serum_creatinine", 0.15), ("albumin", 0.2), ("weight", 0.05)):
        mask = rng.random(len(frame)) < share
        frame.loc[mask, column] = np.nan
        masks[column] = mask
    return frame, masks


def test_imputation_flags_exactly_the_missing_values():
    frame, masks = _with_gaps()
    imputed = Population.from_dataframe(frame, missing="impute", key=jax.random.key(1))
    out = imputed.to_dataframe()
    for column, mask in masks.items():
        flags = out[f"{column}_imputed"].to_numpy()
        assert flags.dtype == bool and np.array_equal(flags, mask), column
        assert np.array_equal(
            out.loc[~mask, column].to_numpy(), frame.loc[~mask, column].to_numpy()
        )
        assert np.isfinite(out[column]).all() and (out[column] > 0).all()
    assert "height_imputed" not in out.columns and "age_imputed" not in out.columns
    row = int(np.flatnonzero(masks["weight"])[0])
    assert "weight" in imputed[row].imputed
    # Reproducible by key; another key draws other values.
    again = Population.from_dataframe(frame, missing="impute", key=jax.random.key(1)).to_dataframe()
    pd.testing.assert_frame_equal(out, again)
    other = Population.from_dataframe(frame, missing="impute", key=2).to_dataframe()
    missing = masks["serum_creatinine"]
    assert not np.allclose(
        other.loc[missing, "serum_creatinine"], out.loc[missing, "serum_creatinine"]
    )
    # The flags survive a round trip through a table and through Patients.
    pd.testing.assert_frame_equal(Population.from_dataframe(out).to_dataframe(), out)
    assert (
        Population.from_patients(list(imputed)).to_dataframe()["weight_imputed"].tolist()
        == masks["weight"].tolist()
    )


def test_imputation_needs_a_key_and_observed_values():
    frame, _ = _with_gaps()
    with pytest.raises(ValueError, match=r"missing='impute' draws random numbers.*pass key="):
        Population.from_dataframe(frame, missing="impute")
    with pytest.raises(ValueError, match="missing must be 'error' or 'impute'"):
        Population.from_dataframe(frame, missing="drop")  # type: ignore[arg-type]
    empty = frame.assign(albumin=np.nan)
    with pytest.raises(ValueError, match="Column 'albumin' has no observed value"):
        Population.from_dataframe(empty, missing="impute", key=0)
