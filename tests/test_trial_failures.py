"""One patient never sinks a cohort: a patient that cannot be simulated is recorded, named
and left out of the estimates, and every other patient's results are unchanged."""

from __future__ import annotations

import dataclasses
import json

import equinox as eqx
import jax
import numpy as np
import pandas as pd
import pytest

import calibration
import pkpd
import twins
from twins import drugs as D
from twins.trials import (
    FailedPatientsError,
    TooManyFailuresError,
    population_rows,
    read_results,
    run_trial,
    simulate_chunk,
    simulate_chunk_outcome,
    trial_runners,
)

N, CHUNK = 16, 8
BAD = 3  # the patient (index) whose clearance is <= 0, in chunk 0
ODD_ID = "<script>alert(1)</script>"
QUIET = {"progress": False, "summary": True}


def _covariates(patient):
    return {
        "WT": D.patient_number(patient, "WT", drug="test", what="kg"),
        "SHIFT": float(patient["SHIFT"]),
    }


def _typical(theta, cov):
    # SHIFT is subtracted from the clearance: SHIFT = 100 L/h gives CL < 0.
    return {
        "KA": theta["KA"],
        "CL": theta["CL"] * cov["WT"] / 70.0 - cov["SHIFT"],
        "V": theta["V"] * cov["WT"] / 70.0,
    }


DRUG = D.Drug(
    name="test_drug",
    model=calibration.PopulationModel(
        pkpd.OneCompartmentOral(),
        theta={"KA": 1.0, "CL": 5.0, "V": 50.0},
        omega={"CL": 0.09, "V": 0.04},
        error=calibration.Proportional(0.1),
        typical=_typical,
    ),
    covariate_fn=_covariates,
    units=D.Units(dose="mg", concentration="mg/L", observed="concentration, mg/L"),
    dosing=D.Dosing(route=D.Oral(), amount=100.0, interval=24.0),
    reference="a test drug",
)


def _population(shift: dict[int, float], *, odd_id: bool = False) -> twins.Population:
    frame = twins.Population.sample(N, key=jax.random.key(0)).to_dataframe()
    frame["extra_SHIFT"] = 0.0
    for i, value in shift.items():
        frame.loc[i, "extra_SHIFT"] = value
    if odd_id:
        frame.loc[BAD, "id"] = ODD_ID
    return twins.Population.from_dataframe(frame)


def _dose(amount):
    def initial(cov):
        n = len(cov["ID"])
        return np.zeros((n, 0)), np.full(n, amount)

    return initial


def _trial(population) -> twins.Trial:
    return twins.Trial(
        name="failures",
        drug=DRUG,
        population=population,
        arms=(
            twins.DosingArm("low", "100 mg", "", _dose(100.0), visits=(1, 3)),
            twins.DosingArm("high", "200 mg", "", _dose(200.0), visits=(1, 3)),
        ),
        endpoints=(
            twins.FinalLevel("trough", "trough"),
            twins.AnyAbove("high_level", "level >= 0.5", 0.5, "true"),
            twins.TimeToRange("to_range", "days to 0.3-10", 0.3, 10.0, "true"),
        ),
        days=4,
    )


def _share_runners(trial, other):
    """`other` differs from `trial` only in its population: its compiled simulations are
    the same functions (they hold the arms and model, not the patients)."""
    trial_runners(other).update(trial_runners(trial))
    return other


@pytest.fixture(scope="module")
def bad_trial():
    return _trial(_population({BAD: 100.0}, odd_id=True))


@pytest.fixture(scope="module")
def bad_run(bad_trial, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad") / "run"
    return run_trial(bad_trial, out, n=N, chunk_size=CHUNK, max_failed_fraction=1.0, **QUIET)


def _patients(folder) -> pd.DataFrame:
    return pd.read_parquet(folder / "patients").sort_values(["arm", "patient"], kind="stable")


def test_a_failed_patient_is_recorded_and_the_others_are_bitwise_unchanged(
    bad_trial, bad_run, tmp_path
):
    frame = _patients(bad_run)
    failed = frame[frame["status"] == "failed"]
    assert sorted(failed["arm"]) == ["high", "low"] and set(failed["patient"]) == {ODD_ID}
    for reason in failed["failure"]:
        assert "CL = -" in reason and "(expected > 0)" in reason and "domain" in reason
    assert failed[["trough", "high_level", "to_range", "final_dose"]].isna().all().all()
    completed = frame[frame["status"] == "completed"]
    assert len(completed) == 2 * (N - 1) and (completed["failure"] == "").all()
    # The same patients with the bad one replaced by a good one at the same index (the
    # same keys: etas and noise come from the patient's index).
    good = _share_runners(bad_trial, _trial(_population({}, odd_id=True)))
    reference = _patients(run_trial(good, tmp_path / "good", n=N, chunk_size=CHUNK, **QUIET))
    assert (reference["status"] == "completed").all()
    assert reference.loc[reference["patient"] == ODD_ID, "trough"].notna().all()
    others = reference["patient"] != ODD_ID
    pd.testing.assert_frame_equal(completed, reference[others], check_exact=True)
    assert completed["high_level"].dtype == "boolean"  # nullable: never False for missing
    # The bands count the completed patients only.
    bands = pd.read_parquet(bad_run / "bands").groupby(["arm", "day"])["count"].sum()
    assert (bands == N - 1).all()


def test_the_failed_fraction_stops_the_run_and_a_larger_one_resumes_it(
    bad_trial, bad_run, tmp_path
):
    out = tmp_path / "run"
    message = (
        r"arm 'low': 1 of the 16 patients \(6.25%\) could not be simulated, more than "
        r"max_failed_fraction=0.05 allows \(0 patients\); the run stops\. First: "
        r"<script>alert\(1\)</script>: parameters outside the model's domain: CL = -"
    )
    with pytest.raises(TooManyFailuresError, match=message) as info:
        run_trial(bad_trial, out, n=N, chunk_size=CHUNK, **QUIET)  # default: 0.05
    assert "run again with a larger max_failed_fraction (at least 0.0625" in str(info.value)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["chunks_done"] == [0] and manifest["complete"] is False
    record = manifest["parts"]["patients/part-00000.parquet"]["failed"]
    assert record["low"]["n"] == 1 and record["low"]["first"][0][0] == ODD_ID
    assert not (out / "patients" / "part-00001.parquet").exists()
    assert not (out / "summary.json").exists()
    # Resuming with the same limit stops again at once; 0 stops on any failure.
    with pytest.raises(TooManyFailuresError, match=r"6\.25%"):
        run_trial(bad_trial, out, n=N, chunk_size=CHUNK, max_failed_fraction=0.0, **QUIET)
    assert json.loads((out / "manifest.json").read_text())["chunks_done"] == [0]
    # Exactly the failed fraction is allowed ("more than" stops): the run completes, and
    # equals the run that never stopped.
    run_trial(bad_trial, out, n=N, chunk_size=CHUNK, max_failed_fraction=1 / 16, **QUIET)
    assert json.loads((out / "manifest.json").read_text())["complete"] is True
    pd.testing.assert_frame_equal(_patients(out), _patients(bad_run), check_exact=True)
    for bad in (-0.1, 1.5, True, "0.1", float("nan")):
        with pytest.raises(ValueError, match="max_failed_fraction must be a number from 0"):
            run_trial(bad_trial, tmp_path / "x", n=N, max_failed_fraction=bad, **QUIET)


def test_the_summary_counts_the_failed_and_estimates_over_the_completed(bad_run):
    summary = json.loads((bad_run / "summary.json").read_text())
    frame = pd.read_parquet(bad_run / "patients")
    for arm in ("low", "high"):
        failures = summary["failures"][arm]
        assert failures["n_failed"] == 1 and failures["n_patients"] == N
        assert failures["failed"][0]["patient"] == ODD_ID
        assert "CL = -" in failures["failed"][0]["reason"]
        rows = frame[(frame["arm"] == arm) & (frame["status"] == "completed")]
        flags = rows["high_level"].to_numpy(dtype=bool)
        assert 0 < flags.sum() < N - 1  # a proportion where a miscount would show
        entry = summary[arm]["high_level"]
        assert entry["n"] == N - 1
        assert entry["estimate"] == pytest.approx(100 * flags.mean(), rel=1e-12)
        assert entry["estimate"] != pytest.approx(100 * flags.sum() / N)  # not a non-responder
        assert summary[arm]["trough"]["n"] == N - 1
        assert summary[arm]["trough"]["estimate"] == pytest.approx(rows["trough"].mean())
        assert summary[arm]["to_range"]["n"] == N - 1
    results = read_results(bad_run)
    column = results.patients["high_level"]
    assert column.dtype == "boolean" and column.isna().sum() == 2  # missing, not False


def test_the_report_names_the_failed_patients_escaped(bad_run, tmp_path):
    html = twins.write_report(bad_run, tmp_path / "report.html").read_text()
    assert "some patients could not be simulated (by arm: 100 mg: 1 of 16, 6.25%" in html
    assert "Patients not simulated" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and ODD_ID not in html
    assert "CL = -" in html and "(expected &gt; 0)" in html


def test_resume_after_a_kill_with_a_failed_patient_is_bitwise_equal(bad_trial, bad_run, tmp_path):
    out = run_trial(bad_trial, tmp_path / "r", n=N, chunk_size=CHUNK, max_failed_fraction=1.0,
                    **QUIET)  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    # Killed after chunk 0's parts were renamed, before the manifest recorded them.
    for rel in ("patients/part-00000.parquet", "bands/part-00000.parquet"):
        del manifest["parts"][rel]
    manifest.update(chunks_done=[1], complete=False)
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "summary.json").unlink()
    run_trial(bad_trial, out, n=N, chunk_size=CHUNK, max_failed_fraction=1.0, **QUIET)
    again = json.loads((out / "manifest.json").read_text())
    reference = json.loads((bad_run / "manifest.json").read_text())
    assert again["parts"] == reference["parts"]  # the same bytes (SHA-256), failures too
    assert again["parts"]["patients/part-00000.parquet"]["failed"]["high"]["n"] == 1
    summary = json.loads((out / "summary.json").read_text())
    expected = json.loads((bad_run / "summary.json").read_text())
    for s in (summary, expected):
        del s["provenance"]
    assert summary == expected


def test_simulate_chunk_names_the_failed_patient(bad_trial):
    pop = population_rows(bad_trial, 0, CHUNK, key=jax.random.key(1))
    outcome = simulate_chunk_outcome(bad_trial, pop, 0, key=jax.random.key(2), size=CHUNK)
    assert list(outcome.failures["low"]) == [BAD]
    with pytest.raises(FailedPatientsError, match=r"arm 'low': 1 patient\(s\) \(<script>") as info:
        simulate_chunk(bad_trial, pop, 0, key=jax.random.key(2), size=CHUNK)
    error = info.value
    assert set(error.failures) == {"low", "high"}
    assert list(error.failures["high"]) == [ODD_ID]
    assert "CL = -" in error.failures["high"][ODD_ID]
    trough = error.endpoints["low"]["trough"]
    assert np.isnan(trough[BAD])
    keep = np.arange(CHUNK) != BAD
    np.testing.assert_array_equal(trough[keep], outcome.endpoints["low"]["trough"][keep])
    assert np.isnan(error.courses["low"]["level"][BAD]).all()


@dataclasses.dataclass(frozen=True, eq=False)
class _FragileArm(twins.DosingArm):
    """100 mg daily; the simulation raises (`eqx.error_if`, at run time) for patients with
    the covariate FRAGILE = 1, as a solver that reaches its step limit would."""

    def start(self, covariates):
        state = super().start(covariates)
        return {**state, "fragile": np.asarray(covariates["SHIFT"], dtype=float)}

    def step(self, period, measured, is_visit, state):
        amount, new = super().step(period, measured, is_visit, state)
        amount = eqx.error_if(amount, state["fragile"] > 0, "a fragile patient")
        return amount, {**new, "fragile": state["fragile"]}


def test_a_patient_that_makes_the_simulation_raise_is_found_and_the_others_kept():
    def trial(shift):
        # SHIFT = 0.01 keeps CL > 0: only the arm raises.
        arm = _FragileArm("fragile", "f", "", _dose(100.0), visits=(1, 3))
        return dataclasses.replace(_trial(_population(shift)), arms=(arm,))

    fragile = trial({5: 0.01, 6: 0.01})
    pop = population_rows(fragile, 0, CHUNK, key=jax.random.key(1))
    outcome = simulate_chunk_outcome(fragile, pop, 0, key=jax.random.key(2), size=CHUNK)
    assert list(outcome.failures["fragile"]) == [5, 6]
    assert "the simulation raised an error: a fragile patient" in outcome.failures["fragile"][5]
    plain = _share_runners(fragile, trial({}))
    pop = population_rows(plain, 0, CHUNK, key=jax.random.key(1))
    reference = simulate_chunk_outcome(plain, pop, 0, key=jax.random.key(2), size=CHUNK)
    assert reference.failures == {"fragile": {}}
    keep = ~np.isin(np.arange(CHUNK), [5, 6])
    for name in ("level", "measured", "doses"):
        np.testing.assert_array_equal(
            outcome.courses["fragile"][name][keep], reference.courses["fragile"][name][keep]
        )
    # An error that every patient raises alike is no patient's: it is raised.
    everyone = _share_runners(fragile, trial(dict.fromkeys(range(N), 0.01)))
    pop = population_rows(everyone, 0, CHUNK, key=jax.random.key(1))
    with pytest.raises(RuntimeError, match="a fragile patient"):
        simulate_chunk_outcome(everyone, pop, 0, key=jax.random.key(2), size=CHUNK)
