"""Every example script runs with small-size flags (as numpyro's test_examples.py)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_simulate_cohort_example():
    results = _load("simulate_cohort").main(["--patients", "64"])
    q12 = results["100 mg q12h"]
    q24 = results["200 mg q24h"]
    # Same daily dose and linear kinetics: AUC(0-inf) is the same for every patient; over
    # 0-336 h they differ only by the drug still in the body at 336 h (a few per cent at most
    # here), while a wrong dose or interval would change them by a factor.
    np.testing.assert_allclose(q12["AUC"], q24["AUC"], rtol=0.02)
    assert np.all(q24["Cmax"] > q12["Cmax"])


@pytest.mark.parametrize("scenario", ["mrg09", "mrgtv01"])
def test_nonmem_records_example(scenario):
    assert _load("nonmem_records").main(["--scenario", scenario]) <= 1e-4


def test_vancomycin_twin_example_and_notebook(tmp_path):
    """Two levels -> posterior -> AUC-guided dose, as the script and as the notebook's code
    cells run in order (one test, so the notebook reuses the script's compiled functions): the
    recommended plan's median AUC24 lies in the 400-600 mg*h/L window and the posterior moved
    away from the prior."""
    import json

    out = _load("vancomycin_twin").main(["--draws", "200", "--out", str(tmp_path / "v.png")])
    rec = out["recommendation"]
    assert 400.0 <= rec.metric_median <= 600.0
    assert rec.interval in (8.0, 12.0, 24.0)
    assert out["posterior"].method == "map" and out["posterior"].converged
    assert (tmp_path / "v.png").stat().st_size > 10_000

    nb = json.loads((EXAMPLES / "vancomycin_twin.ipynb").read_text())
    ns: dict = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            code = "".join(cell["source"]).replace("N_DRAWS = 1000", "N_DRAWS = 200")
            exec(compile(code, "vancomycin_twin.ipynb", "exec"), ns)
    assert 400.0 <= ns["rec"].metric_median <= 600.0
    assert ns["rec"].dose == pytest.approx(rec.dose, rel=1e-6)  # same patient, levels, key


@pytest.mark.extended  # a SuperLink, 3 SuperNodes and their workers: about 3 min on 2 cores;
# make test runs the same deployment in tests/test_federated_deploy.py
def test_federated_population_fit_example():
    out = _load("federated_population_fit").main(
        ["--hospitals", "3", "--subjects", "4", "--max-steps", "2"]
    )
    assert out["federated"].ofv == pytest.approx(out["pooled"].ofv, rel=1e-6)
    assert out["individual"].eta.shape == (4, 2)


@pytest.mark.extended  # compiles the closed loop's gradient (about 3 min on 2 cores);
# make test covers the policies and the optimiser in tests/test_t1d_policies.py
def test_t1d_policy_example(tmp_path):
    out = _load("t1d_policy").main(
        ["--steps", "2", "--train-days", "1", "--eval-days", "1", "--per-group", "2",
         "--test-per-group", "1", "--out", str(tmp_path / "r.json")]
    )  # fmt: skip
    assert len(out["history"]) == 3 and len(out["test"]) == 3
    assert set(out["evaluation"]["test"]) == {"basal_bolus", "before", "after"}
