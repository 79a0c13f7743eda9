"""examples/live_twin.py runs (small sizes): a broker, the service and a publisher; a
recommendation for each patient's last message, the malformed message dead-lettered, the
audit log verified. Needs mosquitto (apt-get install mosquitto): without it, it fails."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "live_twin.py"


def test_live_twin_example():
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail("mosquitto is not installed: apt-get install mosquitto (.ci/run does so)")
    spec = importlib.util.spec_from_file_location("live_twin", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--patients", "2", "--levels", "1", "--draws", "50", "--pause", "0"])
    per_patient = len(module.messages(0, 1))
    caused = {seq for body in out["recommendations"] for seq in body["messages"]}
    assert {per_patient, 2 * per_patient} <= caused
    for body in out["recommendations"]:
        assert body["resource"]["intent"] == "proposal"
        assert body["patient"].startswith("Patient/psn-results-")
    assert len(out["dead_letters"]) == 1 and "not UTF-8 JSON" in out["dead_letters"][0]["reason"]
    assert len(out["twins"]) == 2
    assert out["verify"].ok
    assert "demo-001" not in repr(out["recommendations"])
