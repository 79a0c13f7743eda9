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
from helpers import shifted_clearance_drug
from typer.testing import CliRunner

import twins
from twins import drugs as D
from twins.app._cli import app
from twins.app._spec import load_trial
from twins.trials import (
    FailedPatientsError,
    TooManyFailuresError,
    _ray,
    _run,
    population_rows,
    read_results,
    run_trial,
    run_trial_ray,
    simulate_chunk,
    simulate_chunk_outcome,
    trial_runners,
)
from twins.trials._run import run_chunk

N, CHUNK = 16, 8
BAD = 3  # the patient (index) whose clearance is <= 0, in chunk 0
ODD_ID = "<script>alert(1)</script>"
QUIET = {"progress": False, "summary": True}


DRUG = shifted_clearance_drug()


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


# ----------------------------------------------------------------------------- run_trial_ray


class _InProcessRay:
    """Just enough of Ray for `run_trial_ray`'s driver, in this process: a task runs
    `run_chunk` when its result is asked for, with the trial's compiled runners (the real
    tasks, `_chunk_task`, are exercised in tests/test_trial_ray.py, which needs Ray)."""

    def __init__(self, trial):
        self.trial, self.submitted = trial, []

    def is_initialized(self):
        return True

    def put(self, payload):
        return payload

    def cluster_resources(self):
        return {"CPU": 1.0}

    def remote(self, _body):
        return _Task(self)

    def wait(self, refs, num_returns, timeout):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        return ref()

    def cancel(self, ref):
        pass


@dataclasses.dataclass
class _Task:
    ray: _InProcessRay

    def options(self, **_):
        return self

    def remote(self, _box, _digest, _x64, out, chunk, n, seed, chunk_size, trajectories):
        self.ray.submitted.append(chunk)
        trial = self.ray.trial
        return lambda: run_chunk(
            trial, out, chunk, n=n, seed=seed, chunk_size=chunk_size,
            trajectories=trajectories, runners=trial_runners(trial),
        )  # fmt: skip


@pytest.fixture
def in_process_ray(bad_trial, monkeypatch):
    fake = _InProcessRay(bad_trial)
    monkeypatch.setattr(_ray, "_import_ray", lambda: fake)
    monkeypatch.setattr(_ray, "_pickle", lambda trial: b"the trial")
    return fake


def test_run_trial_ray_applies_max_failed_fraction(bad_trial, bad_run, in_process_ray, tmp_path):
    out = tmp_path / "ray"
    kw = {"n": N, "chunk_size": CHUNK, "progress": False, "max_in_flight": 1}
    message = r"run_trial_ray: trial 'failures', arm 'low': 1 of the 16 patients \(6.25%\)"
    with pytest.raises(TooManyFailuresError, match=message):
        run_trial_ray(bad_trial, out, **kw)  # default: 0.05
    # Stopped after the chunk that holds the failed patient: no new chunk submitted.
    assert in_process_ray.submitted == [0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["chunks_done"] == [0] and manifest["complete"] is False
    assert "finished_utc" not in manifest and not (out / "summary.json").exists()
    assert not (out / "patients" / "part-00001.parquet").exists()
    # Resuming with the same limit stops before submitting anything.
    with pytest.raises(TooManyFailuresError, match=message):
        run_trial_ray(bad_trial, out, **kw)
    assert in_process_ray.submitted == [0]
    # Exactly the failed fraction passes: the run completes, equal to run_trial's.
    run_trial_ray(bad_trial, out, **kw, max_failed_fraction=1 / 16)
    assert in_process_ray.submitted == [0, 1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True and "finished_utc" in manifest
    reference = json.loads((bad_run / "manifest.json").read_text())
    assert manifest["parts"] == reference["parts"]
    assert json.loads((out / "summary.json").read_text())["failures"]["low"]["n_failed"] == 1
    for bad in (-0.1, 1.5, True, "0.1", float("nan")):
        with pytest.raises(ValueError, match="run_trial_ray: max_failed_fraction must be a"):
            run_trial_ray(bad_trial, tmp_path / "x", n=N, max_failed_fraction=bad)


def test_run_trial_ray_records_the_running_chunks_before_it_stops(
    bad_trial, in_process_ray, tmp_path
):
    """Two chunks in flight: the one past the limit stops new submissions, the other one
    is still recorded, and the error counts every chunk recorded."""
    bad = _share_runners(bad_trial, _trial(_population({BAD: 100.0, CHUNK + 1: 100.0})))
    in_process_ray.trial = bad
    out = tmp_path / "ray"
    with pytest.raises(TooManyFailuresError, match=r"arm 'low': 2 of the 16 patients \(12.5%\)"):
        run_trial_ray(bad, out, n=N, chunk_size=CHUNK, progress=False, max_in_flight=2)
    assert in_process_ray.submitted == [0, 1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["chunks_done"] == [0, 1] and "finished_utc" not in manifest
    assert not (out / "summary.json").exists()


# ----------------------------------------------------------------------------- spec and CLI


def _spec_folder(tmp_path, max_failed_fraction=None):
    """A tiny trial spec of DRUG (registered as "test_drug") whose CSV cohort holds the
    patient outside the domain."""
    _population({BAD: 100.0}).to_dataframe().to_csv(tmp_path / "patients.csv", index=False)
    run = (
        f"max_failed_fraction = {max_failed_fraction}\n" if max_failed_fraction is not None else ""
    )
    spec = tmp_path / "spec.toml"
    spec.write_text(
        'name = "cli_failures"\ndrug = "test_drug"\ndays = 4\n\n'
        '[population]\ncsv = "patients.csv"\n\n'
        '[[arms]]\nname = "low"\ninitial = { maintenance = 100.0 }\n\n'
        '[[endpoints]]\ntype = "final_level"\nname = "trough"\n\n'
        f'[run]\nn = {N}\nchunk_size = {CHUNK}\nout = "res"\n{run}'
    )
    return spec


@pytest.fixture
def test_drug(monkeypatch):
    monkeypatch.setitem(D._FACTORIES, "test_drug", lambda: DRUG)


def test_the_spec_max_failed_fraction_reaches_run_trial(tmp_path, test_drug, monkeypatch):
    spec = _spec_folder(tmp_path, 0.25)
    _, options = load_trial(spec)
    assert options.max_failed_fraction == 0.25
    (tmp_path / "default").mkdir()
    _, default = load_trial(_spec_folder(tmp_path / "default"))
    assert default.max_failed_fraction == twins.trials.MAX_FAILED_FRACTION == 0.05
    seen = []

    def spy(trial, out, **kwargs):
        seen.append(kwargs["max_failed_fraction"])
        raise TooManyFailuresError("stopped by the spy")

    monkeypatch.setattr(_run, "run_trial", spy)
    runner = CliRunner()
    assert runner.invoke(app, ["trial", str(spec)]).exit_code == 2
    assert runner.invoke(app, ["trial", str(spec), "--max-failed-fraction", "0.5"]).exit_code == 2
    assert seen == [0.25, 0.5]
    result = runner.invoke(app, ["trial", str(spec), "--max-failed-fraction", "1.5"])
    assert result.exit_code == 2 and seen == [0.25, 0.5]  # refused by the option's range


def test_cli_stops_past_max_failed_fraction_with_exit_code_2(tmp_path, test_drug):
    spec = _spec_folder(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["trial", str(spec)])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    paragraph = " ".join(result.stderr.split())
    assert paragraph.startswith("Too many patients could not be simulated: run_trial: trial")
    assert "arm 'low': 1 of the 16 patients (6.25%) could not be simulated" in paragraph
    assert "On the command line: `--max-failed-fraction` (or `[run] max_failed_fraction`" in (
        paragraph
    )
    assert len(result.stderr.strip().splitlines()) == 1  # one paragraph
    folder = tmp_path / "res"
    assert json.loads((folder / "manifest.json").read_text())["chunks_done"] == [0]
    assert not (folder / "report.html").exists()
    # The override resumes the run to the end.
    result = runner.invoke(app, ["trial", str(spec), "--max-failed-fraction", "0.0625"])
    assert result.exit_code == 0, result.output
    assert json.loads((folder / "manifest.json").read_text())["complete"] is True
    assert (folder / "report.html").is_file()


def test_the_plausibility_overrides_are_in_the_provenance(bad_trial, bad_run, tmp_path):
    frame = _population({}).to_dataframe()
    frame.loc[BAD, "weight"] = 400.0  # implausible for an adult, allowed with a reason
    unusual = {"weight": "bariatric cohort", "bmi": "bariatric cohort"}
    trial = _share_runners(
        bad_trial, _trial(twins.Population.from_dataframe(frame, unusual=unusual))
    )
    out = run_trial(trial, tmp_path / "run", n=N, chunk_size=CHUNK, **QUIET)
    spec = json.loads((out / "spec.json").read_text())
    assert spec["population"]["unusual"] == {
        "bmi": "bariatric cohort",
        "weight": "bariatric cohort",
    }
    summary = json.loads((out / "summary.json").read_text())
    assert summary["provenance"]["unusual"] == spec["population"]["unusual"]
    assert all(f["n_failed"] == 0 for f in summary["failures"].values())
    run_trial(trial, out, n=N, chunk_size=CHUNK, **QUIET)  # the same spec hash: it resumes
    # Without overrides neither records any.
    assert "unusual" not in json.loads((bad_run / "spec.json").read_text())["population"]
    assert "unusual" not in json.loads((bad_run / "summary.json").read_text())["provenance"]
