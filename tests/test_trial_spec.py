"""Trial specs in TOML (`twins.app._spec`): the examples build the trials they claim to build and
run; every mistake is refused with the file, the entry and what was expected."""

import copy
import hashlib
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

import pkpd
import twins
from twins.app._spec import (
    FixedDoses,
    PerKg,
    RunOptions,
    SpecError,
    iwpc_2009_initial,
    load_trial,
    trial_from_dict,
)
from twins.trials import Nomogram, _eupact, population_rows, simulate_chunk
from twins.trials._run import run_trial, spec_hash, trial_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# A small warfarin spec written as a dict; each error test breaks one entry of it.
BASE = {
    "name": "small",
    "drug": "warfarin_hamberg2007",
    "days": 10,
    "subgroups": ["CYP2C9", "age_group"],
    "population": {"ancestry": "White", "age": [45, 89]},
    "arms": [
        {"name": "fixed", "initial": {"loading": [10, 5, 5], "maintenance": 5.0}},
        {
            "name": "titrated",
            "visits": [1, 4, 8],
            "initial": {"rule": "iwpc_2009"},
            "rules": [
                {
                    "days": [4, 8],
                    "nomogram": {
                        "bounds": [1.5, 2.0, 3.0],
                        "change": [0.15, 0.1, 0.0, -0.1],
                        "hold": [0, 0, 0, 1],
                    },
                }
            ],
        },
    ],
    "endpoints": [
        {"type": "time_in_range", "name": "ttr", "low": 2.0, "high": 3.0, "source": "true"},
        {"type": "mean_dose", "name": "dose", "days": 7},
    ],
    "run": {"n": 20, "seed": 1},
}


def _broken(path, value):
    """BASE with the entry at `path` (keys and indices) set to `value` (deleted if ...)."""
    data = copy.deepcopy(BASE)
    target = data
    for part in path[:-1]:
        target = target[part]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


def test_base_spec_builds():
    trial, options = trial_from_dict(BASE)
    assert options == RunOptions(n=20, seed=1)
    assert trial.days == 10 and trial.interval == 24.0  # the drug's interval by default
    fixed, titrated = trial.arms
    assert fixed.initial == FixedDoses(5.0, (10.0, 5.0, 5.0))
    assert titrated.initial is iwpc_2009_initial
    assert titrated.visits == (0, 3, 7)  # stored 0-based by DosingArm
    ((days, rule),) = titrated.rules
    assert days == (3, 7) and rule == Nomogram(
        (1.5, 2.0, 3.0), (0.15, 0.1, 0.0, -0.1), (0, 0, 0, 1)
    )
    assert [e.name for e in trial.endpoints] == ["ttr", "dose"]
    assert trial.endpoints[0] == twins.TimeInRange("ttr", "ttr", 2.0, 3.0, "true")


@pytest.mark.parametrize(
    "path, value, where, expected",
    [
        (("dayz",), 10, "dayz", "unknown key (did you mean 'days'?)"),
        (("days",), "84", "days", "expected an integer, got the string '84'"),
        (("days",), 0, "days", "expected an integer >= 1, got 0"),
        (("name",), ..., "top level", "missing required key 'name'"),
        (("drug",), "warfarine", "drug", "available: ['citalopram_akil2016'"),
        (("interval_h",), -1, "interval_h", "expected a number > 0"),
        (("reference_arm",), "control", "reference_arm", "expected one of ['fixed', 'titrated']"),
        (("subgroups",), ["CYP2C9", "CYP3A5"], "subgroups[1]", "unknown subgroup 'CYP3A5'"),
        (("covariates",), ["AGE", "CYP2C9"], "covariates[1]", "unknown numeric covariate"),
        (("population", "ancestry"), "Martian", "population", "Unknown ancestry 'Martian'"),
        (("population", "age"), [45], "population.age", "expected [low, high]"),
        (("population", "female_fraction"), 1.5, "population.female_fraction", "<= 1"),
        (("population", "medication"), {}, "population.medication", "did you mean 'medications'"),
        (("arms",), [], "arms", "expected at least 1 entries, got 0"),
        (("arms", 0, "initial"), ..., "arms[0]", "missing required key 'initial'"),
        (("arms", 0, "name"), "my arm", "arms[0].name", "expected a word"),
        (("arms", 1, "name"), "fixed", "arms[1].name", "'fixed' is also arms[0]"),
        (("arms", 0, "dose_step"), True, "arms[0].dose_step", "expected a number, got the boolean"),
        (("arms", 0, "visits"), [4, 1], "arms[0].visits", "strictly increasing"),
        (("arms", 0, "visits"), [1, 12], "arms[0].visits", "fall after the end of the trial"),
        (("arms", 0, "initial", "rule"), "iwpc", "arms[0].initial.rule", "'eupact_control'"),
        (("arms", 0, "initial", "maintenance"), 0, "arms[0].initial.maintenance", "> 0"),
        (("arms", 0, "initial", "loading"), 10, "arms[0].initial.loading", "expected an array"),
        (
            ("arms", 0, "initial"),
            {"rule": "per_kg", "amount_mg_per_kg": 0.1, "max": 10},
            "arms[0].initial.max",
            "did you mean 'max_mg'",
        ),
        (("arms", 1, "rules", 0, "days"), [4, 6], "arms[1].rules[0].days", "[6] are not visit"),
        (("arms", 1, "rules", 0, "nomogramm"), {}, "arms[1].rules[0].nomogramm", "unknown key"),
        (("arms", 1, "rules", 0, "nomogram"), "jaffer", "arms[1].rules[0].nomogram", "'eupact'"),
        (
            ("arms", 1, "rules", 0, "nomogram", "change"),
            [0.15, 0.1, 0.0],
            "arms[1].rules[0].nomogram.change",
            "expected 4 fractional changes",
        ),
        (
            ("arms", 1, "rules", 0, "nomogram", "change"),
            [0.15, 0.1, "0", -0.1],
            "arms[1].rules[0].nomogram.change[2]",
            "expected a number, got the string '0'",
        ),
        (
            ("arms", 1, "rules", 0, "nomogram", "change"),
            [0.15, 0.1, 0.0, -1.0],
            "arms[1].rules[0].nomogram.change[3]",
            "expected a number > -1",
        ),
        (
            ("arms", 1, "rules", 0, "nomogram", "bounds"),
            [1.5, 3.0, 2.0],
            "arms[1].rules[0].nomogram.bounds",
            "strictly increasing",
        ),
        (
            ("arms", 1, "rules", 0, "nomogram", "hold"),
            [0, 0, 0, 0.5],
            "arms[1].rules[0].nomogram.hold[3]",
            "expected an integer",
        ),
        (("endpoints", 0, "type"), "ttr", "endpoints[0].type", "'time_in_range'"),
        (("endpoints", 0, "type"), ..., "endpoints[0]", "missing required key 'type'"),
        (("endpoints", 0, "threshold"), 4, "endpoints[0].threshold", "unknown key"),
        (("endpoints", 0, "source"), "noisy", "endpoints[0].source", "['measured', 'true']"),
        (("endpoints", 0, "high"), 1.0, "endpoints[0]", "expected low < high"),
        (("endpoints", 1, "days"), 28, "endpoints[1].days", "at most the trial's 10 periods"),
        (("endpoints", 1, "name"), "ttr", "endpoints[1].name", "'ttr' is also endpoints[0]"),
        (("run", "n"), 0, "run.n", "expected an integer >= 1, got 0"),
        (("run", "n"), 10.0, "run.n", "expected an integer, got the float 10.0"),
        (("run", "seeds"), 1, "run.seeds", "did you mean 'seed'"),
        (("run", "trajectories"), "yes", "run.trajectories", "expected true or false"),
        (("run", "max_failed_fraction"), 1.5, "run.max_failed_fraction", "a number <= 1"),
        (("run", "max_failed_fraction"), -0.1, "run.max_failed_fraction", "a number >= 0"),
        (("run", "max_failed_fraction"), "5%", "run.max_failed_fraction", "the string '5%'"),
        (("run", "max_failed_fraction"), True, "run.max_failed_fraction", "got the boolean"),
        (("run", "max_failed_fraction"), float("nan"), "run.max_failed_fraction", "finite"),
        (("run", "max_failed"), 0.1, "run.max_failed", "did you mean 'max_failed_fraction'"),
        (("published",), {"titrated": {"tr": 60.0}}, "published.titrated.tr", "unknown key"),
        (("bands",), {"low": 0.0, "high": 5.0}, "bands.low", "expected a number > 0"),
        (("bands",), {"low": 1.0, "bins": 9}, "bands.high", "give low and high with low, bins"),
        (("bands",), {"points_per_period": 0}, "bands.points_per_period", "integer >= 1"),
    ],
)
def test_errors_name_the_entry(path, value, where, expected):
    with pytest.raises(SpecError) as info:
        trial_from_dict(_broken(path, value), source="spec.toml")
    message = str(info.value)
    assert message.startswith(f"spec.toml: {where}: "), message
    assert expected in message, message


def test_initial_rule_without_its_covariates_fails_at_load():
    """The IWPC rule needs genotypes: a population without them is refused before any
    simulation, naming the arm."""
    data = _broken(("population", "genes"), [])
    data.update(drug="vancomycin_goti2018", subgroups=[])
    with pytest.raises(SpecError, match=r"<dict>: arms\[1\]\.initial: .*VKORC1_PHENOTYPE"):
        trial_from_dict(data)


def test_file_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('preset = "eupact"\n[run]\nn = 0\n')
    with pytest.raises(SpecError, match=r"bad\.toml: run\.n: expected an integer >= 1, got 0"):
        load_trial(path)
    path.write_text('name = "x"\ndays = = 3\n')
    with pytest.raises(SpecError, match=r"bad\.toml: not valid TOML: .*line 2"):
        load_trial(str(path))
    with pytest.raises(FileNotFoundError, match=r"missing\.toml"):
        load_trial(tmp_path / "missing.toml")
    with pytest.raises(SpecError, match=r"<text>: preset: expected one of \['eupact', 'coag'\]"):
        load_trial('preset = "eupac"\n')
    with pytest.raises(SpecError, match=r"<text>: days: a spec with a preset may only have"):
        load_trial('preset = "eupact"\ndays = 28\n')


def test_preset_is_the_builtin_trial(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('preset = "eupact"\n[run]\nn = 7\nseed = 3\nout = "res"\n')
    trial, options = load_trial(path)
    assert options == RunOptions(n=7, seed=3, out=tmp_path / "res")
    reference = _eupact.eupact_trial()
    assert _spec_of(trial) == _spec_of(reference)
    assert trial.population.keywords == reference.population.keywords


def _spec_of(trial):
    return spec_hash(trial_spec(trial, n=1, seed=0, chunk_size=1))


def test_eupact_full_form_is_the_builtin_trial():
    """examples/eupact.toml, written out in full, builds the trial of `eupact_trial()`: the
    same population, drug, solver, arms (initial-dose functions, visits, nomograms, dose
    step), endpoints and published figures, and so the same numbers patient by patient.

    The simulation of each arm (what the runner compiles) depends only on the drug, the
    output, the days, the interval, the solver and the arm's visits, rules and dose step,
    all checked equal here; the two trials then share the compiled runners (the full,
    separately compiled comparison is `test_eupact_full_form_numbers_extended`)."""
    trial, options = load_trial(EXAMPLES / "eupact.toml")
    reference = _eupact.eupact_trial()
    assert options == RunOptions(n=10_000, seed=0, chunk_size=10_000, out=EXAMPLES / "out/eupact")
    for field in ("drug", "days", "interval", "output", "solver", "endpoints", "subgroups"):
        assert getattr(trial, field) == getattr(reference, field), field
    for field in ("covariates", "reference_arm", "published", "published_differences"):
        assert getattr(trial, field) == getattr(reference, field), field
    assert trial.population.keywords == reference.population.keywords
    assert trial.population.func == reference.population.func
    assert len(trial.arms) == len(reference.arms)
    for arm, ref in zip(trial.arms, reference.arms, strict=True):
        for field in ("name", "initial", "visits", "rules", "dose_step"):
            assert getattr(arm, field) == getattr(ref, field), (arm.name, field)
    # The whole description (texts included) is the same, so is the spec hash.
    assert _spec_of(trial) == _spec_of(reference)

    key = jax.random.key(11)
    pop_key, sim_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
    pop = population_rows(trial, 0, 40, key=pop_key)
    ref_pop = population_rows(reference, 0, 40, key=pop_key)
    pd.testing.assert_frame_equal(pop.to_dataframe(), ref_pop.to_dataframe())
    runners = {}
    expected, _ = simulate_chunk(reference, ref_pop, 0, key=sim_key, runners=runners)
    got, _ = simulate_chunk(trial, pop, 0, key=sim_key, runners=runners)
    assert got.keys() == expected.keys()
    for arm in expected:
        assert got[arm].keys() == expected[arm].keys()
        for name, values in expected[arm].items():
            np.testing.assert_array_equal(got[arm][name], values, err_msg=f"{arm} {name}")
    assert 0 < np.mean(expected["control"]["ttr"]) < 100


@pytest.mark.extended
def test_eupact_full_form_numbers_extended(tmp_path):
    """The same, each trial compiled and run on its own: the results tables are equal."""
    trial, _ = load_trial(EXAMPLES / "eupact.toml")
    kwargs = dict(n=200, seed=5, chunk_size=100, progress=False, summary=False)
    run_trial(trial, tmp_path / "spec", **kwargs)
    run_trial(_eupact.eupact_trial(), tmp_path / "builtin", **kwargs)
    got = pd.read_parquet(tmp_path / "spec" / "patients")
    expected = pd.read_parquet(tmp_path / "builtin" / "patients")
    assert len(got) == 400
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


def test_vancomycin_example_runs(tmp_path):
    trial, options = load_trial(EXAMPLES / "vancomycin_trial.toml")
    assert options.out == EXAMPLES / "out" / "vancomycin_trial"
    assert trial.drug.name == "vancomycin_goti2018" and trial.interval == 12.0
    fixed, per_kg, _ = trial.arms
    assert fixed.initial == FixedDoses(1000.0)
    assert per_kg.initial == PerKg(15.0, (25.0,), max_mg=2000.0, max_loading_mg=3000.0)
    out = run_trial(
        trial, tmp_path / "van", n=50, seed=0, chunk_size=50, progress=False, summary=False
    )
    patients = pd.read_parquet(out / "patients")
    assert len(patients) == 150
    by_arm = patients.groupby("arm")
    assert (by_arm["final_dose"].unique()["fixed_1g"] == [1000.0]).all()
    # 15 mg/kg rounded to 250 mg, at most 2 g: the weight decides the dose.
    dose = np.clip(np.round(15.0 * patients["WT"] / 250.0), 1, None) * 250.0
    per = patients["arm"] == "per_kg"
    np.testing.assert_array_equal(patients.loc[per, "final_dose"], np.minimum(dose[per], 2000.0))
    trough = by_arm["trough_end"].median()
    assert 5.0 < trough["fixed_1g"] < 30.0 and 5.0 < trough["per_kg"] < 40.0
    assert set(patients["renal_function"]) <= {">=90", "60-89", "30-59", "<30"}
    # AUC24 of the last day: between 24 h at the mean trough and 24 h at the peak.
    auc = patients["auc24_day7"]
    assert (auc > 24.0 * patients["trough_end"]).all() and (
        auc < 24.0 * patients["peak_day7"]
    ).all()
    np.testing.assert_array_equal(patients["auc24_400_600"], (auc >= 400) & (auc <= 600))


def test_exposure_endpoints_from_a_spec(tmp_path):
    text = (EXAMPLES / "vancomycin_trial.toml").read_text()
    bad = text.replace("hours = 24.0                   #", "end_h = 30.0\nhours = 24.0 #")
    path = tmp_path / "bad.toml"
    path.write_text(bad)
    with pytest.raises(SpecError, match=r"auc24_day7.*dose times"):
        load_trial(path)
    path.write_text(text.replace('metric = "auc"', 'metric = "aucc"'))
    with pytest.raises(SpecError, match=r"endpoints\[\d\]\.metric"):
        load_trial(path)


def test_initial_rules():
    cov = {
        "ID": np.array(["a", "b"], dtype=object),
        "WT": np.array([50.0, 150.0]),
    }
    loading, maintenance = PerKg(15.0, (25.0, 20.0), max_mg=2000.0, max_loading_mg=3000.0)(cov)
    np.testing.assert_array_equal(loading, [[1250.0, 1000.0], [3000.0, 3000.0]])
    np.testing.assert_array_equal(maintenance, [750.0, 2000.0])
    loading, maintenance = FixedDoses(5.0, (10.0, 5.0))(cov)
    np.testing.assert_array_equal(loading, [[10.0, 5.0], [10.0, 5.0]])
    np.testing.assert_array_equal(maintenance, [5.0, 5.0])
    pop = twins.Population.sample(5, key=0)
    cov = pop.covariates()
    loading, maintenance = iwpc_2009_initial(cov)
    assert loading.shape == (5, 0)
    np.testing.assert_array_equal(maintenance, _eupact.iwpc_daily_dose(cov))


def test_csv_population(tmp_path):
    frame = pd.DataFrame(
        {
            "id": ["P1", "P2", "P3"],
            "age": [70.0, 55.0, 81.0],
            "sex": ["female", "male", "male"],
            "weight": [60.0, 90.0, 75.0],
            "height": [160.0, 180.0, 172.0],
            "creatinine": [0.8, 1.1, 1.4],
        }
    )
    frame.to_csv(tmp_path / "patients.csv", index=False)
    spec = {
        "name": "csv",
        "drug": "vancomycin_goti2018",
        "days": 4,
        "population": {
            "csv": "patients.csv",
            "column_map": {"creatinine": "serum_creatinine"},
        },
        "arms": [{"name": "a", "initial": {"maintenance": 1000}}],
        "endpoints": [{"type": "final_level", "name": "trough"}],
        "run": {"n": 3, "out": "res"},
    }
    trial, options = trial_from_dict(spec, base_dir=tmp_path)
    assert isinstance(trial.population, twins.Population) and len(trial.population) == 3
    assert options.out == tmp_path / "res"
    with pytest.raises(SpecError, match=r"run\.n: the population file has 3 patients"):
        trial_from_dict({**spec, "run": {"n": 4}}, base_dir=tmp_path)
    with pytest.raises(SpecError, match=r"population\.csv: cannot read the patients .*creatinine"):
        trial_from_dict({**spec, "population": {"csv": "patients.csv"}}, base_dir=tmp_path)
    with pytest.raises(SpecError, match=r"population\.csv: no such file"):
        trial_from_dict({**spec, "population": {"csv": "nope.csv"}}, base_dir=tmp_path)
    # The drug's covariates are checked at load: Goti 2018 needs serum creatinine.
    no_scr = frame.drop(columns="creatinine")
    no_scr.to_csv(tmp_path / "no_scr.csv", index=False)
    with pytest.raises(SpecError, match=r"<dict>: drug: vancomycin_goti2018 cannot find"):
        trial_from_dict({**spec, "population": {"csv": "no_scr.csv"}}, base_dir=tmp_path)


def test_csv_population_records_its_plausibility_overrides(tmp_path):
    """`[population] unusual` is in the described population (spec.json, the spec hash);
    without it the description, and so the hash of existing runs, is what it was."""
    frame = pd.DataFrame(
        {
            "id": ["P1", "P2"],
            "age": [70.0, 55.0],
            "sex": ["female", "male"],
            "weight": [60.0, 400.0],
            "height": [160.0, 180.0],
            "serum_creatinine": [0.8, 1.1],
        }
    )
    frame.to_csv(tmp_path / "patients.csv", index=False)
    spec = {
        "name": "csv",
        "drug": "vancomycin_goti2018",
        "days": 4,
        "population": {
            "csv": "patients.csv",
            "unusual": {"weight": " bariatric cohort ", "bmi": "bariatric cohort"},
        },
        "arms": [{"name": "a", "initial": {"maintenance": 1000}}],
        "endpoints": [{"type": "final_level", "name": "trough"}],
        "run": {"n": 2},
    }
    trial, _ = trial_from_dict(spec, base_dir=tmp_path)
    table = trial.population.to_dataframe().to_csv(index=False).encode()
    plain = {"fixed_cohort_rows": 2, "sha256": hashlib.sha256(table).hexdigest()}
    described = trial.describe()["population"]
    assert described == {
        **plain,
        "unusual": {"bmi": "bariatric cohort", "weight": "bariatric cohort"},
    }
    assert list(described["unusual"]) == ["bmi", "weight"]  # sorted: the hash is stable
    # Another reason is another spec (the folder of the first is refused, not resumed).
    other = copy.deepcopy(spec)
    other["population"]["unusual"]["weight"] = "another reason"
    assert _spec_of(trial_from_dict(other, base_dir=tmp_path)[0]) != _spec_of(trial)
    # Without overrides: exactly the description (and hash) of before.
    frame.loc[1, "weight"] = 90.0
    frame.to_csv(tmp_path / "plausible.csv", index=False)
    spec["population"] = {"csv": "plausible.csv"}
    plausible, _ = trial_from_dict(spec, base_dir=tmp_path)
    assert plausible.population.unusual == {}
    table = plausible.population.to_dataframe().to_csv(index=False).encode()
    assert plausible.describe()["population"] == {
        "fixed_cohort_rows": 2,
        "sha256": hashlib.sha256(table).hexdigest(),
    }


def test_population_options_reach_the_sampler():
    data = _broken(
        ("population",),
        {
            "ancestry": {"White": 0.5, "Asian": 0.5},
            "age": [20, 40],
            "female_fraction": 1.0,
            "medications": {"amiodarone": 1.0},
            "demographics": {"height_mean_female": 150.0},
        },
    )
    trial, _ = trial_from_dict(data)
    pop = trial.population(200, key=0).to_dataframe()
    assert (pop["sex"] == "female").all() and pop["med_amiodarone"].all()
    assert pop["age"].between(20, 40).all() and set(pop["ancestry"]) == {"White", "Asian"}
    assert abs(pop["height"].mean() - 150.0) < 3.0
    assert trial.population.keywords["demographics"] == twins.Demographics(height_mean_female=150.0)


def test_optional_fields():
    data = copy.deepcopy(BASE)
    data.update(
        description="d",
        interval_h=12.0,
        output="C",
        reference_arm="titrated",
        solver_dt_h=0.5,
        assumptions=["a", "b"],
        covariates=["AGE"],
        bands={"low": 1.0, "high": 10.0, "bins": 9, "scale": "linear", "points_per_period": 3},
        published={"source": "s", "fixed": {"ttr": 50}},
        published_differences={"titrated": {"ttr": {"estimate": 1.0, "ci_low": 0, "ci_high": 2}}},
    )
    trial, options = trial_from_dict(data)
    assert trial.interval == 12.0 and trial.output_index == 0 and trial.reference_arm == "titrated"
    assert trial.solver == pkpd.FixedStep(0.5)
    assert trial.bands_edges == tuple(float(x) for x in range(1, 11)) and trial.band_points == 3
    only_points = copy.deepcopy(BASE) | {"bands": {"points_per_period": 1}}
    plain, _ = trial_from_dict(only_points)
    assert plain.band_points == 1 and plain.bands_edges == trial_from_dict(BASE)[0].bands_edges
    assert trial.published == {"source": "s", "fixed": {"ttr": 50.0}}
    assert trial.published_differences["titrated"]["ttr"]["ci_high"] == 2.0
    assert trial.assumptions == ("a", "b") and trial.covariates == ("AGE",)
    assert options == RunOptions(n=20, seed=1)
    assert options.max_failed_fraction == twins.trials.MAX_FAILED_FRACTION
    for value in (0, 1, 0.25):
        _, options = trial_from_dict(_broken(("run", "max_failed_fraction"), value))
        assert options == RunOptions(n=20, seed=1, max_failed_fraction=value)
    # It does not change the numbers, so it is not in the spec hash: a stopped run resumes.
    assert _spec_of(trial_from_dict(_broken(("run", "max_failed_fraction"), 0.5))[0]) == (
        _spec_of(trial_from_dict(BASE)[0])
    )


def test_howto_minimal_spec_loads():
    """The minimal spec of docs/howto-trial-spec.md is valid."""
    doc = (ROOT / "docs" / "howto-trial-spec.md").read_text()
    text = doc.split("## A minimal spec", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    trial, options = load_trial(text)
    assert [a.name for a in trial.arms] == ["fixed", "iwpc"] and options.n == 1000


def test_twin_guided_arm_from_a_spec():
    spec = copy.deepcopy(BASE)
    spec["arms"].append(
        {
            "name": "twin",
            "visits": [1, 4, 8],
            "initial": {"loading": [10, 5, 5], "maintenance": 5.0},
            "twin": {"target": "INR", "recommend_on": [4, 8], "n_draws": 100},
        }
    )
    trial, _ = trial_from_dict(spec)
    arm = trial.arms[-1]
    assert isinstance(arm, twins.TwinArm)
    assert arm.target == "INR" and arm.recommend_on == (4, 8) and arm.n_draws == 100
    assert arm.describe()["rule"].startswith("DigitalTwin.recommend")
    bad = copy.deepcopy(spec)
    bad["arms"][-1]["twin"]["recommend_on"] = [5]
    with pytest.raises(SpecError, match=r"arms\[2\]\.twin\.recommend_on: days \[5\] are not"):
        trial_from_dict(bad)
    bad = copy.deepcopy(spec)
    bad["arms"][-1]["twin"]["target"] = "AUC24"
    with pytest.raises(SpecError, match="target 'AUC24' is not one of warfarin"):
        trial_from_dict(bad)
    bad = copy.deepcopy(spec)
    bad["arms"][-1]["rules"] = copy.deepcopy(BASE["arms"][1]["rules"])
    with pytest.raises(SpecError, match="sets its own doses"):
        trial_from_dict(bad)
