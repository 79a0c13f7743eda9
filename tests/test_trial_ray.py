"""`run_trial_ray` on a local Ray instance (2 CPUs): the same results folder as `run_trial`,
bit for bit; resume; failed chunks reported by name; the example script."""

import dataclasses
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from twins.trials._eupact import eupact_trial
from twins.trials._ray import run_trial_ray
from twins.trials._run import ResumeWarning, run_trial
from twins.trials._trial import DosingArm

try:
    import ray
except ImportError as error:  # a dev dependency (pyproject.toml): never skipped for want of it
    raise ImportError(
        "tests/test_trial_ray.py needs Ray: `make test` installs it with the dev extra "
        "(pip install -e '.[dev]')."
    ) from error

N, CHUNK, SEED = 40, 20, 3
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _parts(folder: Path, kind: str) -> dict[str, pd.DataFrame]:
    return {p.name: pd.read_parquet(p) for p in sorted((folder / kind).glob("part-*.parquet"))}


def _patients(folder: Path) -> pd.DataFrame:
    frame = pd.concat(_parts(folder, "patients").values(), ignore_index=True)
    return frame.sort_values(["patient", "arm"], ignore_index=True)


def _assert_same_results(a: Path, b: Path) -> None:
    """Same parts, same values to the last bit (check_exact), same endpoint summary."""
    for kind in ("patients", "bands"):
        pa, pb = _parts(a, kind), _parts(b, kind)
        assert list(pa) == list(pb) == ["part-00000.parquet", "part-00001.parquet"]
        for name in pa:
            pd.testing.assert_frame_equal(pa[name], pb[name], check_exact=True)
    pd.testing.assert_frame_equal(_patients(a), _patients(b), check_exact=True)
    sa, sb = (json.loads((f / "summary.json").read_text()) for f in (a, b))
    for s in (sa, sb):
        s.pop("provenance")
    assert sa == sb


@pytest.fixture(scope="module")
def local_ray():
    # "local": a new instance even if another one runs here (pytest-xdist workers).
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.mark.extended
def test_ray_equals_sequential_resumes_example(local_ray, tmp_path):
    """One test, so that a single Ray worker compiles the simulation once (about 20 s on
    2 cores) for the run, the resume and the example: two CPUs per task keep the chunks on
    that worker, one after the other. Tasks side by side are exercised by the failure test.
    """
    trial = eupact_trial()
    kw: dict[str, Any] = {"n": N, "seed": SEED, "chunk_size": CHUNK, "progress": False}
    on_ray = run_trial_ray(trial, tmp_path / "ray", num_cpus_per_task=2, **kw)
    sequential = run_trial(trial, tmp_path / "seq", **kw)
    _assert_same_results(on_ray, sequential)
    manifest = json.loads((on_ray / "manifest.json").read_text())
    assert manifest["chunks_done"] == [0, 1] and manifest["complete"]
    assert "finished_utc" in manifest
    assert not (on_ray / "report.html").exists()  # the report is the app's, not the runner's
    assert ray.is_initialized()  # a Ray it did not start is left running

    # Resume: a lost part and an interrupted write; the same parts again, no duplicates.
    folder = shutil.copytree(on_ray, tmp_path / "resumed")
    (folder / "patients" / "part-00001.parquet").unlink()
    (folder / "bands" / "part-00001.parquet.tmp").write_text("an interrupted write")
    with pytest.warns(ResumeWarning, match=r"chunk\(s\) \[1\]"):
        run_trial_ray(trial, folder, num_cpus_per_task=2, **kw)
    _assert_same_results(folder, sequential)
    patients = _patients(folder)
    assert len(patients) == N * len(trial.arms)
    assert not patients.duplicated(["patient", "arm"]).any()
    assert not list(folder.glob("*/*.tmp"))
    # A folder of another run is refused before anything is submitted.
    with pytest.raises(ValueError, match="another trial"):
        run_trial_ray(trial, folder, **{**kw, "seed": SEED + 1})

    # The example script, with small-size flags.
    spec = importlib.util.spec_from_file_location("ray_trial", EXAMPLES / "ray_trial.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--n", "40", "--chunk-size", "20", "--num-cpus-per-task", "2"]
    out = module.main([*argv, "--out", str(tmp_path / "example")])
    assert json.loads((out / "manifest.json").read_text())["complete"]
    assert (out / "summary.json").exists()


@pytest.mark.extended
def test_ray_failed_chunks_are_named(local_ray, tmp_path):
    def no_dose(cov):
        raise ValueError(f"no dose for patient {cov['ID'][0]}")

    arm = DosingArm(name="broken", label="Broken", description="", initial=no_dose, visits=(1,))
    trial = dataclasses.replace(eupact_trial(), arms=(arm,), reference_arm=None)
    with pytest.raises(RuntimeError) as info:
        run_trial_ray(trial, tmp_path, n=N, chunk_size=CHUNK, progress=False)
    message = str(info.value)
    assert "2 of 2 chunks failed" in message
    assert "chunk 0 (patients 0 to 19): ValueError: no dose for patient V0000001" in message
    assert "chunk 1 (patients 20 to 39): ValueError: no dose for patient V0000021" in message
    assert "run again with the same arguments to resume" in message
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["chunks_done"] == [] and not manifest["complete"]
    assert "finished_utc" not in manifest


def test_ray_arguments_and_missing_ray(tmp_path, monkeypatch):
    trial = eupact_trial()
    with pytest.raises(ValueError, match="n must be a positive integer"):
        run_trial_ray(trial, tmp_path, n=0)
    with pytest.raises(ValueError, match="max_in_flight"):
        run_trial_ray(trial, tmp_path, n=4, max_in_flight=0)
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'pkpd-twins\[ray\]'"):
        run_trial_ray(trial, tmp_path, n=4)


def _failing_trial() -> Any:
    """A small trial whose patient 3 has a clearance <= 0 (outside the model's domain). Its
    functions are local, so that cloudpickle sends them by value to the workers."""
    import jax
    import numpy as np

    import calibration
    import pkpd
    import twins
    from twins import drugs as D

    def covariates(patient):
        wt = D.patient_number(patient, "WT", drug="test", what="kg")
        return {"WT": wt, "SHIFT": float(patient["SHIFT"])}

    def typical(theta, cov):
        cl = theta["CL"] * cov["WT"] / 70.0 - cov["SHIFT"]
        return {"KA": theta["KA"], "CL": cl, "V": theta["V"] * cov["WT"] / 70.0}

    def initial(cov):
        n = len(cov["ID"])
        return np.zeros((n, 0)), np.full(n, 100.0)

    drug = D.Drug(
        name="test_drug",
        model=calibration.PopulationModel(
            pkpd.OneCompartmentOral(),
            theta={"KA": 1.0, "CL": 5.0, "V": 50.0},
            omega={"CL": 0.09, "V": 0.04},
            error=calibration.Proportional(0.1),
            typical=typical,
        ),
        covariate_fn=covariates,
        units=D.Units(dose="mg", concentration="mg/L", observed="concentration, mg/L"),
        dosing=D.Dosing(route=D.Oral(), amount=100.0, interval=24.0),
        reference="a test drug",
    )
    frame = twins.Population.sample(N, key=jax.random.key(0)).to_dataframe()
    frame["extra_SHIFT"] = 0.0
    frame.loc[3, "extra_SHIFT"] = 100.0
    return twins.Trial(
        name="ray_failures",
        drug=drug,
        population=twins.Population.from_dataframe(frame),
        arms=(twins.DosingArm("low", "100 mg", "", initial, visits=(1, 3)),),
        endpoints=(twins.FinalLevel("trough", "trough"),),
        days=4,
    )


@pytest.mark.extended
def test_ray_stops_past_max_failed_fraction(local_ray, tmp_path):
    """The tasks record a patient outside the domain as `run_trial` does, and the driver
    applies `max_failed_fraction` as each chunk is recorded: no chunk after the limit is
    passed is started; a larger limit resumes the run to `run_trial`'s results."""
    from twins.trials import TooManyFailuresError

    trial = _failing_trial()
    kw: dict[str, Any] = {"n": N, "chunk_size": CHUNK, "progress": False}
    ray_kw: dict[str, Any] = {**kw, "num_cpus_per_task": 2, "max_in_flight": 1}
    out = tmp_path / "ray"
    message = r"run_trial_ray: trial 'ray_failures', arm 'low': 1 of the 40 patients \(2\.5%\)"
    with pytest.raises(TooManyFailuresError, match=message):
        run_trial_ray(trial, out, **ray_kw, max_failed_fraction=0.0)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["chunks_done"] == [0] and "finished_utc" not in manifest
    assert manifest["parts"]["patients/part-00000.parquet"]["failed"]["low"]["n"] == 1
    assert not (out / "patients" / "part-00001.parquet").exists()
    run_trial_ray(trial, out, **ray_kw, max_failed_fraction=1 / 40)  # exactly: it passes
    sequential = run_trial(trial, tmp_path / "seq", **kw, max_failed_fraction=1.0)
    _assert_same_results(out, sequential)
    assert (_patients(out)["status"] == "failed").sum() == 1
