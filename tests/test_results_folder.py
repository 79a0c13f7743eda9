"""The results folder: a trial writes only where it may, deletes only its own temporary
files, and never builds results or a report from damaged parts."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import twins
from twins.app._cli import app
from twins.app._spec import SpecError, trial_from_dict
from twins.trials._run import ResultsFolderError, ResumeWarning, run_trial

QUIET = {"progress": False, "summary": False}


@pytest.fixture(scope="module")
def short():
    # The EU-PACT trial over 20 days: the same shape as test_trial's, so the compiled
    # simulation is shared when both run in one process.
    return dataclasses.replace(twins.eupact_trial(days=20), name="eupact_short")


def _read(folder):
    parts = sorted((folder / "patients").glob("part-*.parquet"))
    frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    return frame.sort_values(["arm", "patient"]).reset_index(drop=True)


def test_a_folder_of_other_files_is_refused_and_left_untouched(tmp_path, short):
    home = tmp_path / "home"
    (home / "project").mkdir(parents=True)
    files = {
        "project/draft.tmp": b"unsaved work",
        "report.html": b"<p>mine</p>",
        "summary.json": b"{}",
        "manifest.json": b'{"mine": true}',
    }
    for name, data in files.items():
        (home / name).write_bytes(data)
    with pytest.raises(ResultsFolderError, match="not empty and holds no trial results"):
        run_trial(short, home, n=10, chunk_size=10, **QUIET)
    assert {str(p.relative_to(home)) for p in home.rglob("*") if p.is_file()} == set(files)
    for name, data in files.items():
        assert (home / name).read_bytes() == data
    # A file where the folder should be.
    (tmp_path / "plain").write_text("x")
    with pytest.raises(ResultsFolderError, match="is not a folder"):
        run_trial(short, tmp_path / "plain", n=10, chunk_size=10, **QUIET)


def test_resume_repairs_damaged_parts_and_removes_only_its_own_tmp(tmp_path, short):
    a = run_trial(short, tmp_path / "a", n=30, chunk_size=10, **QUIET)
    reference = _read(a)
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["spec_hash"] and len(manifest["parts"]) == 6  # patients + bands, 3 chunks
    assert manifest["parts"]["patients/part-00000.parquet"]["rows"] == 20  # 10 x 2 arms
    # Damage: 8 flipped bytes in one part, a deleted bands part, a truncated patients part.
    part = a / "patients" / "part-00000.parquet"
    data = bytearray(part.read_bytes())
    data[300:308] = bytes(b ^ 0xFF for b in data[300:308])
    part.write_bytes(bytes(data))
    (a / "bands" / "part-00001.parquet").unlink()
    third = a / "patients" / "part-00002.parquet"
    third.write_bytes(third.read_bytes()[:50])
    # Leftovers: our own temporary part (removed) and a user's file named *.tmp (kept).
    (a / "patients" / "part-00001.parquet.tmp").write_bytes(b"partial")
    (a / "notes.tmp").write_text("mine")
    (a / "patients" / "notes.tmp").write_text("mine")
    with pytest.raises(ValueError, match="3 problem"):
        twins.read_results(a)
    with pytest.warns(ResumeWarning, match=r"chunk\(s\) \[0, 1, 2\]"):
        run_trial(short, a, n=30, chunk_size=10, **QUIET)
    pd.testing.assert_frame_equal(_read(a), reference)
    assert not (a / "patients" / "part-00001.parquet.tmp").exists()
    assert (a / "notes.tmp").read_text() == "mine"
    assert (a / "patients" / "notes.tmp").read_text() == "mine"
    assert twins.read_results(a).manifest["complete"]
    # Parts rewritten by the repair carry the same bytes as the first run's.
    again = json.loads((a / "manifest.json").read_text())["parts"]
    assert again == manifest["parts"]


def test_killed_between_part_and_manifest_is_redone(tmp_path, short):
    a = run_trial(short, tmp_path / "a", n=20, chunk_size=10, **QUIET)
    reference = _read(a)
    manifest = json.loads((a / "manifest.json").read_text())
    # As if killed after chunk 1's parts were renamed but before the manifest was written.
    for rel in ("patients/part-00001.parquet", "bands/part-00001.parquet"):
        del manifest["parts"][rel]
    manifest.update(chunks_done=[0], complete=False)
    (a / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="does not record"):
        twins.read_results(a)
    run_trial(short, a, n=20, chunk_size=10, **QUIET)  # no warning: nothing recorded was lost
    pd.testing.assert_frame_equal(_read(a), reference)
    assert twins.read_results(a).manifest["chunks_done"] == [0, 1]


def _spec(out: str) -> dict:
    return {"preset": "eupact", "run": {"n": 10, "out": out}}


def test_spec_out_stays_in_the_spec_folder(tmp_path):
    base = tmp_path / "specs"
    base.mkdir()
    _, options = trial_from_dict(_spec("results/run1"), base_dir=base)
    assert options.out == (base / "results" / "run1").resolve()
    for bad, message in (
        ("/etc", "expected a folder relative to the spec's folder"),
        ("~/x", "expected a folder relative to the spec's folder"),
        ("../../../../root", "leaves the spec's folder"),
        ("results/../../x", "leaves the spec's folder"),
        (".", "leaves the spec's folder"),
    ):
        with pytest.raises(SpecError, match=message):
            trial_from_dict(_spec(bad), base_dir=base)
    # A link inside the folder that points out of it.
    os.symlink(tmp_path, base / "escape")
    with pytest.raises(SpecError, match="leaves the spec's folder"):
        trial_from_dict(_spec("escape/x"), base_dir=base)


def test_days_beyond_the_work_limit_are_refused_by_the_spec():
    text = (Path(__file__).parents[1] / "examples" / "eupact.toml").read_text()
    with pytest.raises(SpecError, match=r"days: expected an integer <= 3650, got 1000000000"):
        twins.app.load_trial(text.replace("days = 84", "days = 1000000000"))


def test_seed_out_of_range_is_refused_by_the_spec_and_run_trial(tmp_path, short):
    with pytest.raises(SpecError, match=r"run\.seed.*<= 9223372036854775807"):
        trial_from_dict({"preset": "eupact", "run": {"seed": 2**64 - 1}})
    with pytest.raises(ValueError, match=r"seed must be between 0 and 2\*\*63 - 1"):
        run_trial(short, tmp_path / "s", n=10, seed=2**63, **QUIET)
    assert not (tmp_path / "s").exists()


def test_cli_default_folder_cannot_leave_out_and_report_refuses_damage(tmp_path, short):
    spec = tmp_path / "t.toml"
    eupact = (Path(__file__).parents[1] / "examples" / "eupact.toml").read_text()
    eupact = eupact.replace('name = "eupact_virtual"', 'name = "../../escape"')
    spec.write_text("\n".join(x for x in eupact.splitlines() if not x.startswith("out =")))
    runner = CliRunner()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = runner.invoke(app, ["trial", str(spec), "--n", "5"])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "escape"
    assert (folder / "report.html").is_file()
    assert not (tmp_path.parent / "escape").exists()
    # Damage a part: `twins report` lists it and exits 2 without writing.
    (folder / "report.html").unlink()
    (folder / "bands" / "part-00000.parquet").unlink()
    result = runner.invoke(app, ["report", str(folder)])
    assert result.exit_code == 2
    assert "bands/part-00000.parquet: recorded in manifest.json but missing" in result.output
    assert not (folder / "report.html").exists()
    # A run into a folder of other files is refused by the CLI with exit code 2.
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    result = runner.invoke(app, ["trial", str(spec), "--n", "5", "--out", str(other)])
    assert result.exit_code == 2 and "Results folder refused" in result.output


def test_cli_report_refuses_an_unfinished_run(tmp_path, short):
    folder = tmp_path / "r"
    run_trial(short, folder, n=20, chunk_size=10, **QUIET)
    manifest = json.loads((folder / "manifest.json").read_text())
    for rel in ("patients/part-00001.parquet", "bands/part-00001.parquet"):
        del manifest["parts"][rel]
        (folder / rel).unlink()
    manifest.update(chunks_done=[0], complete=False)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(app, ["report", str(folder)])
    assert result.exit_code == 2, result.output
    assert "incomplete: chunk(s) [1] of 2 are not done" in result.output
    assert not (folder / "report.html").exists()
    result = CliRunner().invoke(app, ["report", str(folder), "--allow-incomplete"])
    assert result.exit_code == 0, result.output
    assert "incomplete" in (folder / "report.html").read_text()
