"""Running a `Trial` at scale: chunks, Parquet parts written atomically, resume, progress.

`run_trial(trial, out, n=..., seed=...)` writes the results folder that `twins._summary`
and `twins.app._report` read (layout in docs/trial-report.md):

```
out/spec.json                    the trial as run, with its hash and provenance
out/manifest.json                chunks done, complete or not, wall time
out/patients/part-00000.parquet  one row per (patient, arm): covariates, subgroups, endpoints
out/bands/part-00000.parquet     per (arm, time) histogram of the noise-free output, at
                                 `Trial.band_points` times per dosing period
out/trajectories/part-....parquet  per patient and day, only with trajectories=True
out/summary.json                 endpoint table by arm, with the published figures
out/report.html                  the report (written by `twins.write_report`, not here)
```

A chunk counts as done when its `patients` part exists; every part is written to a
temporary name and renamed (atomic on POSIX), so an interrupted run leaves either a whole
part or none. Running again with the same trial, N, seed and chunk size into the same
folder skips the chunks already done; a folder holding another trial is refused.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .._population import Population
from ..governance import Governance
from ._consent import consented_trial, record_export
from ._folder import PART_FOLDERS, PART_NAME, damaged_parts, durable_replace
from ._subgroups import NAMED_SUBGROUPS, SubgroupError
from ._summary import difference_table, endpoint_table, failure_summary, read_results
from ._trial import Trial, population_rows, simulate_chunk_outcome, trial_runners

#: The largest seed (JAX keys are made from a 64-bit signed integer).
SEED_MAX = 2**63 - 1

#: The default of `run_trial(max_failed_fraction=...)`: a run stops once more than this
#: fraction of an arm's patients could not be simulated.
MAX_FAILED_FRACTION = 0.05

#: Failed patients named per chunk and arm in `manifest.json` (and in a stopped run's error).
FAILED_SHOWN = 5

#: Subgroups known by name (`twins.trials.NAMED_SUBGROUPS`), besides any
#: `Population.covariates()` key: name -> what it is.
DERIVED_SUBGROUPS: dict[str, str] = {k: g.description for k, g in NAMED_SUBGROUPS.items()}


def _version() -> str:
    try:
        return metadata.version("pkpd-twins")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "unknown"


def now_utc() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    text = json.dumps(data, indent=2, default=_json_default) + "\n"
    durable_replace(path.with_name(path.name + ".tmp"), text.encode(), path)


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _write_parquet(path: Path, frame: pd.DataFrame) -> dict[str, Any]:
    """Write a part durably; return its record for the manifest (rows, bytes, SHA-256)."""
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    data = sink.getvalue().to_pybytes()
    durable_replace(path.with_name(path.name + ".tmp"), data, path)
    return {"rows": len(frame), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def trial_spec(trial: Trial, *, n: int, seed: int, chunk_size: int) -> dict[str, Any]:
    """`spec.json` without provenance: everything that determines the numbers."""
    spec = trial.describe()
    spec.update(
        {
            "seed": int(seed),
            "n_per_arm": int(n),
            "chunk_size": int(chunk_size),
            "subgroups": list(trial.subgroup_names),
            "covariates": list(trial.covariates),
            "categorical": ["sex", *[g for g in trial.subgroup_names if g != "sex"]],
            "bands": {
                "output": trial.drug.model.model.output_names[trial.output_index],
                "unit": trial.drug.units.observed,
                "edges": list(trial.bands_edges),
                "reference_lines": [
                    v for t in trial.drug.targets[:1] for v in (t.low, t.high) if v is not None
                ],
            },
        }
    )
    if trial.band_points != 1:  # 1: the levels before each dose only, as before the field
        spec["bands"]["points_per_period"] = int(trial.band_points)
    if trial.published:
        spec["published"] = dict(trial.published)
    if trial.published_differences:
        spec["published_differences"] = dict(trial.published_differences)
    return spec


def spec_hash(spec: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the spec (without provenance)."""
    body = {k: v for k, v in spec.items() if k != "provenance"}
    text = json.dumps(body, sort_keys=True, default=_json_default, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _subgroup_columns(
    trial: Trial, population: Population, cov: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    frame = population.to_dataframe()
    out: dict[str, np.ndarray] = {}
    groups = {g.name: g for g in (*trial.subgroups, NAMED_SUBGROUPS["sex"])}  # type: ignore[union-attr]
    for name, group in groups.items():
        try:
            group.check(cov)
            out[name] = group.levels(frame, cov)
        except SubgroupError as error:
            raise ValueError(f"Trial {trial.name!r}: {error}") from None
    return out


#: Recorded times binned at once by `_bands` (bounds its temporaries: a chunk of 20,000
#: patients x 64 times is 10 MB of bin indices, whatever the number of times).
_BAND_BLOCK = 64


def _bands(
    arm: str, days: np.ndarray, level: np.ndarray, edges: np.ndarray, keep: np.ndarray
) -> pd.DataFrame:
    """The histogram of `level[keep]` `(patients, times)` at each of the `days`, as rows
    `arm, day, bin, count` (non-zero counts only), binned a block of times at a time."""
    n_bins = edges.size - 1
    width = n_bins + 2
    counts = np.zeros((days.size, width), np.int64)
    rows = np.flatnonzero(keep)
    for lo in range(0, days.size, _BAND_BLOCK):
        block = level[rows, lo : lo + _BAND_BLOCK]
        # -1 below edges[0], n_bins at/above the top; column = bin + 1 (0 .. n_bins + 1)
        offset = np.searchsorted(edges, block, side="right")
        flat = (np.arange(block.shape[1])[None, :] * width + offset).ravel()
        counts[lo : lo + block.shape[1]] = np.bincount(
            flat, minlength=block.shape[1] * width
        ).reshape(block.shape[1], width)
    day_i, off_i = np.nonzero(counts)
    return pd.DataFrame(
        {
            "arm": arm,
            "day": days[day_i].astype(float),
            "bin": (off_i - 1).astype(np.int32),
            "count": counts[day_i, off_i].astype(np.int64),
        }
    )


def _chunk_frames(
    trial: Trial,
    population: Population,
    endpoints: Mapping[str, Mapping[str, np.ndarray]],
    courses: Mapping[str, Any],
    failures: Mapping[str, Mapping[int, str]],
    trajectories: bool,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """The chunk's patient rows, band counts and (optionally) trajectories. A patient that
    failed in an arm keeps its row there (`status` "failed", `failure` the reason, endpoint
    values and `final_dose` missing) and adds nothing to the bands or trajectories."""
    cov = population.covariates()
    groups = _subgroup_columns(trial, population, cov)
    base = {"patient": population.ids.astype(str)}
    for name in trial.covariates:
        if name not in cov:
            raise ValueError(f"Trial {trial.name!r}: unknown covariate {name!r} for the summary.")
        base[name] = np.asarray(cov[name], dtype=float)
    base.update(groups)
    edges = np.asarray(trial.bands_edges, dtype=float)
    n = len(population)
    rows, bands, trajs = [], [], []
    for arm in trial.arms:
        bad = np.zeros(n, dtype=bool)
        bad[list(failures[arm.name])] = True
        keep = ~bad
        frame = pd.DataFrame({**base, "arm": arm.name})
        for key, values in endpoints[arm.name].items():
            frame[key] = _missing_where(np.asarray(values), bad)
        course = courses[arm.name]
        frame["final_dose"] = np.where(bad, np.nan, course["doses"][:, -1])
        frame["status"] = np.where(bad, "failed", "completed")
        frame["failure"] = [str(r) for r in course["failure"]]
        rows.append(frame)
        bands.append(_bands(arm.name, course["curve_days"], course["curve"], edges, keep))
        if trajectories:
            level = course["level"][keep]
            k, m = level.shape
            doses = np.concatenate([course["doses"][keep], np.full((k, 1), np.nan)], axis=1)
            trajs.append(
                pd.DataFrame(
                    {
                        "patient": np.repeat(base["patient"][keep], m),
                        "arm": arm.name,
                        "day": np.tile(course["days"], k),
                        "level": level.ravel(),
                        "dose": doses.ravel(),
                    }
                )
            )
    patients = pd.concat(rows, ignore_index=True)
    patients["arm"] = patients["arm"].astype(str)
    return (
        patients,
        pd.concat(bands, ignore_index=True),
        pd.concat(trajs, ignore_index=True) if trajectories else None,
    )


def _missing_where(values: np.ndarray, bad: np.ndarray) -> Any:
    """An endpoint column with the rows `bad` missing. Flags and integers become pandas'
    nullable types (`boolean`, `Int64`; Parquet `bool`, `int64` with nulls) in every chunk,
    so that all parts have one schema whether patients failed in them or not."""
    if values.dtype == bool:
        out = pd.array(values, dtype="boolean")
    elif np.issubdtype(values.dtype, np.integer):
        out = pd.array(values, dtype="Int64")
    elif np.issubdtype(values.dtype, np.floating):
        return np.where(bad, np.nan, values)
    else:
        out = pd.array(values.astype(object), dtype=object)
    out[bad] = pd.NA if out.dtype != object else None
    return out


def progress_bar(enabled: bool):
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} patients"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not enabled,
    )


#: The files a trial writes at the top of its folder.
_TOP_FILES = ("spec.json", "manifest.json", "summary.json", "report.html")


class ResultsFolderError(ValueError):
    """A results folder that a trial may not write into, or that is damaged."""


class ResumeWarning(UserWarning):
    """A resumed run found a recorded part missing or damaged and simulates its chunk again."""


class TooManyFailuresError(ValueError):
    """More of an arm's patients could not be simulated than `max_failed_fraction` allows.

    Raised by `run_trial` and `run_trial_ray` (the chunks written are kept: running again
    with a larger `max_failed_fraction` resumes the run; `twins trial`:
    `--max-failed-fraction`) and by `surrogates.training_set` (nothing is kept: build the
    set again with a larger limit, or mend the patients named)."""


def failed_patients(manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The patients that could not be simulated in the chunks done, by arm, from the
    records of `manifest.json`: `{arm: {"n": count, "first": [[id, reason], ...]}}` (the
    first `FAILED_SHOWN`, in patient order); arms without failures are left out."""
    out: dict[str, dict[str, Any]] = {}
    for chunk in sorted(manifest.get("chunks_done", [])):
        record = manifest["parts"].get(f"patients/part-{chunk:05d}.parquet", {})
        for arm, failed in record.get("failed", {}).items():
            entry = out.setdefault(arm, {"n": 0, "first": []})
            entry["n"] += int(failed["n"])
            entry["first"] += failed["first"][: FAILED_SHOWN - len(entry["first"])]
    return out


def check_failures(
    trial: Trial,
    out: Path,
    manifest: Mapping[str, Any],
    max_failed_fraction: float,
    who: str = "run_trial",
) -> None:
    """Raise `TooManyFailuresError` when, in the chunks done, more than
    `max_failed_fraction` of an arm's `manifest["n_patients"]` patients failed (`who`
    begins the message)."""
    n = int(manifest["n_patients"])
    for arm, failed in failed_patients(manifest).items():
        k = failed["n"]
        if k / n <= max_failed_fraction:
            continue
        first = "; ".join(f"{pid}: {why}" for pid, why in failed["first"])
        more = f" (and {k - len(failed['first'])} more)" if k > len(failed["first"]) else ""
        done = len(manifest["chunks_done"])
        raise TooManyFailuresError(
            f"{who}: trial {trial.name!r}, arm {arm!r}: {k} of the {n} patients "
            f"({100 * k / n:.3g}%) could not be simulated, more than "
            f"max_failed_fraction={max_failed_fraction:g} allows "
            f"({math.floor(max_failed_fraction * n)} patients); the run stops. First: "
            f"{first}{more}. The {done} of {manifest['n_chunks']} chunk(s) done are kept in "
            f"{out} (manifest.json records them; every failed patient is in patients/ with "
            "status 'failed' and its reason). Check these patients' parameters or the "
            "solver; to accept the failures, run again with a larger max_failed_fraction "
            f"(at least {k / n:.3g}; 1 never stops), which resumes the run."
        )


def _chunk_parts(chunk: int, trajectories: bool) -> list[str]:
    name = f"part-{chunk:05d}.parquet"
    return [f"{sub}/{name}" for sub in PART_FOLDERS if trajectories or sub != "trajectories"]


def _claim_folder(out: Path, digest: str) -> dict[str, Any] | None:
    """Check that a trial with spec hash `digest` may write into `out`: a new or empty
    folder (returns None), or a folder this trial wrote (returns its manifest). Anything
    else is refused before anything in it is touched."""
    if out.exists() and not out.is_dir():
        raise ResultsFolderError(f"run_trial: {out} exists and is not a folder.")
    if not out.exists() or not any(out.iterdir()):
        return None
    spec_file, manifest_file = out / "spec.json", out / "manifest.json"
    if not (spec_file.is_file() and manifest_file.is_file()):
        sample = sorted(p.name for p in out.iterdir())[:5]
        raise ResultsFolderError(
            f"run_trial: {out} is not empty and holds no trial results (it has {sample}); a "
            "trial writes only into a new or empty folder, or resumes a run it wrote itself. "
            "Choose another folder."
        )
    try:
        old = json.loads(spec_file.read_text())
        manifest = json.loads(manifest_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultsFolderError(
            f"run_trial: {out}: spec.json or manifest.json is not valid JSON ({error}); the "
            "folder is damaged. Use another folder."
        ) from error
    old_hash = old.get("provenance", {}).get("spec_hash") if isinstance(old, dict) else None
    if not isinstance(manifest, dict) or manifest.get("spec_hash") is None:
        raise ResultsFolderError(
            f"run_trial: {out}: manifest.json carries no spec hash: the folder was not written "
            "by this version of run_trial (which records a checksum of every part). Use "
            "another folder."
        )
    if old_hash != digest or manifest.get("spec_hash") != digest:
        raise ResultsFolderError(
            f"run_trial: {out} holds the results of another trial or another N, seed or "
            f"chunk size (spec hash {old_hash!r}, this run {digest!r}); use another folder or "
            "delete it."
        )
    if not isinstance(manifest.get("parts"), dict):
        raise ResultsFolderError(f"run_trial: {out}: manifest.json has no record of parts.")
    return manifest


def prepare_folder(
    trial: Trial,
    out: str | os.PathLike[str],
    *,
    n: int,
    seed: int,
    chunk_size: int,
    trajectories: bool = False,
) -> dict[str, Any]:
    """Create (or check, when resuming) a results folder; return its manifest.

    A trial writes only into a new or empty folder, or into a folder it wrote itself
    (recognised by `spec.json` and `manifest.json` carrying this run's spec hash); any other
    folder is refused (`ResultsFolderError`) before anything in it is touched. When
    resuming, it removes only its own temporary files (`*.tmp` of the names it writes),
    checks every recorded part against its size and SHA-256, and lists the chunks whose
    parts are all present and intact as done. A chunk with a recorded part missing or
    damaged is simulated again (`ResumeWarning` says which); a part written but never
    recorded (the run was killed in between) is written again.
    """
    out = Path(out)
    spec = trial_spec(trial, n=n, seed=seed, chunk_size=chunk_size)
    digest = spec_hash(spec)
    manifest = _claim_folder(out, digest)
    for sub in PART_FOLDERS[: 3 if trajectories else 2]:
        folder = out / sub
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise ResultsFolderError(f"run_trial: {folder} must be a folder (not a link).")
        folder.mkdir(parents=True, exist_ok=True)
    if manifest is None:
        spec["provenance"] = {
            "version": _version(),
            "seed": int(seed),
            "spec_hash": digest,
            "started_utc": now_utc(),
            "jax": jax.__version__,
            "devices": [str(d) for d in jax.devices()],
        }
        write_json(out / "spec.json", spec)
        manifest = {"spec_hash": digest, "wall_s": 0.0, "parts": {}}
    else:
        for name in _TOP_FILES:
            _remove_own_tmp(out / f"{name}.tmp")
        for sub in PART_FOLDERS:
            if (out / sub).is_dir() and not (out / sub).is_symlink():
                for stray in (out / sub).glob("part-*.parquet.tmp"):
                    if PART_NAME.fullmatch(stray.name[: -len(".tmp")]):
                        _remove_own_tmp(stray)
    n_chunks = math.ceil(n / chunk_size)
    parts: dict[str, Any] = manifest["parts"]
    damaged = damaged_parts(out, parts)
    for rel in damaged:
        del parts[rel]
    done, redo = [], []
    for c in range(n_chunks):
        names = _chunk_parts(c, trajectories)
        if all(rel in parts for rel in names):
            done.append(c)
        elif any(rel in damaged for rel in names):
            redo.append(c)
    if redo:
        warnings.warn(
            f"run_trial: {out}: chunk(s) {redo} had a part missing or damaged "
            f"({sorted(damaged)}); simulating them again.",
            ResumeWarning,
            stacklevel=3,
        )
    manifest.update(
        {
            "n_patients": n,
            "chunk_size": chunk_size,
            "n_chunks": n_chunks,
            "chunks_done": done,
            "complete": len(done) == n_chunks,
        }
    )
    write_json(out / "manifest.json", manifest)
    return manifest


def _remove_own_tmp(path: Path) -> None:
    if path.is_file() and not path.is_symlink():
        path.unlink()


def record_chunk(manifest: dict[str, Any], chunk: int, records: Mapping[str, Any]) -> None:
    """Record a chunk's written parts (`run_chunk`'s records) and the chunk as done."""
    manifest["parts"].update(records)
    done = set(manifest["chunks_done"]) | {chunk}
    manifest.update(chunks_done=sorted(done), complete=len(done) == manifest["n_chunks"])


def check_max_failed_fraction(value: Any, who: str) -> float:
    """A run's `max_failed_fraction`: a number from 0 to 1."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{who}: max_failed_fraction must be a number from 0 to 1, got {value!r}.")
    return float(value)


def run_trial(
    trial: Trial,
    out: str | os.PathLike[str],
    *,
    n: int,
    seed: int = 0,
    chunk_size: int = 10_000,
    trajectories: bool = False,
    progress: bool = True,
    summary: bool = True,
    mesh: Any = None,
    report: bool | None = None,
    max_failed_fraction: float = MAX_FAILED_FRACTION,
    governance: Governance | None = None,
) -> Path:
    """Run a trial and write its results folder; resume it if interrupted.

    **Arguments:**

    - `trial`: the `Trial`.
    - `out`: the results folder (created).
    - `n`: virtual patients per arm (every patient receives every arm).
    - `seed`: the seed; the same trial, N and seed give the same numbers.
    - `chunk_size`: patients simulated per jitted call (memory is bounded by it; the
      results do not depend on it).
    - `trajectories`: also store each patient's daily output and dose (large).
    - `progress`: show a progress bar with patients per second and the ETA.
    - `summary`: write `summary.json` (the endpoint table) at the end. The HTML report is
      written by `twins.write_report(out)` (and by `twins trial` and `twins demo`).
    - `mesh`: a `jax.sharding.Mesh` with one axis to shard the patient axis of each chunk
      over several devices (`chunk_size` must be a multiple of the device count).
    - `report`: deprecated (run_trial no longer writes `report.html`): `report=False` is
      `summary=False`; call `twins.write_report(out)` for the report.
    - `max_failed_fraction`: the largest fraction of an arm's `n` patients that may fail
      (parameters outside the model's domain, a non-finite or raising simulation; see
      `simulate_chunk_outcome`), 0 to 1. A failed patient keeps its rows in `patients/`
      (`status` "failed", `failure` the reason, endpoints missing) and is left out of the
      estimates; once more than this fraction of an arm's patients have failed, the run
      stops (`TooManyFailuresError`). 0: any failure stops the run; 1: never. It does not
      change the numbers, so a stopped run resumes with a larger value.
    - `governance`: a `twins.governance.Governance` (audit log, pseudonym key, actor):
      required when the trial's fixed population carries consents (`Population.consents`).
      Only the patients who consented to research at the time of the run are taken
      (renamed by pseudonyms of purpose `"results"`), each refusal and each patient used is
      logged, and the finished folder too (an `export` entry); `n` counts the patients
      taken. Ignored for sampled populations.

    **Returns:** the results folder.

    **Raises:** `ResultsFolderError` (a `ValueError`) if `out` is not a new or empty
    folder nor one this trial wrote (see `prepare_folder`); for example when it holds the
    results of a different trial, N, seed or chunk size (its spec hash differs).
    `TooManyFailuresError` (a `ValueError`) when more patients failed than
    `max_failed_fraction` allows, checked as each chunk completes (and on resuming): it
    names the arm, the count, the fraction and the first patients with their reasons; the
    chunks written are kept and recorded.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"run_trial: n must be a positive integer, got {n!r}.")
    check_seed(seed, "run_trial")
    summary = deprecated_report(report, summary, "run_trial")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"run_trial: chunk_size must be a positive integer, got {chunk_size!r}.")
    chunk_size = min(chunk_size, n)
    check_max_failed_fraction(max_failed_fraction, "run_trial")
    if mesh is not None and chunk_size % mesh.size:
        raise ValueError(
            f"run_trial: chunk_size {chunk_size} must be a multiple of the {mesh.size} devices."
        )
    out = Path(out)
    original, trial = (
        trial,
        consented_trial(trial, governance, use=f"trial {trial.name!r}", output_purpose="results"),
    )
    manifest = prepare_folder(
        trial, out, n=n, seed=seed, chunk_size=chunk_size, trajectories=trajectories
    )
    n_chunks = manifest["n_chunks"]
    done = list(manifest["chunks_done"])
    check_failures(trial, out, manifest, max_failed_fraction)

    runners = trial_runners(trial)
    wall0 = float(manifest.get("wall_s", 0.0))
    started = time.perf_counter()
    todo = [c for c in range(n_chunks) if c not in set(done)]
    del done
    with progress_bar(progress) as bar:
        already = n - sum(min((c + 1) * chunk_size, n) - c * chunk_size for c in todo)
        task = bar.add_task(trial.name, total=n, completed=already, rate="")
        for c in todo:
            t0 = time.perf_counter()
            count, records = run_chunk(
                trial, out, c, n=n, seed=seed, chunk_size=chunk_size,
                trajectories=trajectories, runners=runners, mesh=mesh,
            )  # fmt: skip
            record_chunk(manifest, c, records)
            manifest.update(wall_s=wall0 + time.perf_counter() - started)
            write_json(out / "manifest.json", manifest)
            rate = count * len(trial.arms) / (time.perf_counter() - t0)
            bar.update(task, advance=count, rate=f"{rate:,.0f} patient-arms/s")
            check_failures(trial, out, manifest, max_failed_fraction)
    manifest.update(finished_utc=now_utc(), wall_s=wall0 + time.perf_counter() - started)
    write_json(out / "manifest.json", manifest)
    if summary:
        write_summary(out)
    record_export(governance, original, trial, out, n)
    return out


def deprecated_report(report: bool | None, summary: bool, who: str) -> bool:
    """The `summary` flag, given the deprecated `report` one (warned about when given)."""
    if report is None:
        return summary
    warnings.warn(
        f"{who}(report=...) is deprecated: {who} writes summary.json (summary=...) and no "
        "longer the HTML report; call twins.write_report(out) for report.html.",
        DeprecationWarning,
        stacklevel=3,
    )
    return summary and bool(report)


def run_chunk(
    trial: Trial,
    out: str | os.PathLike[str],
    chunk: int,
    *,
    n: int,
    seed: int,
    chunk_size: int,
    trajectories: bool = False,
    runners: dict[str, Any] | None = None,
    mesh: Any = None,
) -> tuple[int, dict[str, Any]]:
    """Simulate chunk `chunk` of a run and write its parts (bands, trajectories, then
    patients, each durably and atomically). Returns the number of patients in it and the
    parts' records for the manifest (`{"patients/part-00003.parquet": {rows, bytes,
    sha256, failed}, ...}`, see `record_chunk`). The patients part's `failed` record holds,
    per arm with failed patients, their count `n` and the first `FAILED_SHOWN` as
    `[id, reason]` (`simulate_chunk_outcome`; every failed patient is in the part, with
    `status` "failed").

    A pure function of its arguments (and of nothing already written): running a chunk twice
    writes the same parts, which is what makes resuming (and fanning chunks out to Ray
    workers) safe. The folder's subfolders must exist (`prepare_folder`).
    """
    out = Path(out)
    pop_key, sim_key = seed_keys(seed)
    lo, hi = chunk * chunk_size, min((chunk + 1) * chunk_size, n)
    if not 0 <= lo < hi:
        raise ValueError(f"run_chunk: chunk {chunk} is outside the {n} patients.")
    pop = population_rows(trial, lo, hi, key=pop_key)
    outcome = simulate_chunk_outcome(
        trial, pop, lo, key=sim_key, runners=runners, mesh=mesh, size=chunk_size
    )
    patients, bands, trajs = _chunk_frames(
        trial, pop, outcome.endpoints, outcome.courses, outcome.failures, trajectories
    )
    name = f"part-{chunk:05d}.parquet"
    records = {f"bands/{name}": _write_parquet(out / "bands" / name, bands)}
    if trajs is not None:
        (out / "trajectories").mkdir(exist_ok=True)
        records[f"trajectories/{name}"] = _write_parquet(out / "trajectories" / name, trajs)
    records[f"patients/{name}"] = _write_parquet(out / "patients" / name, patients)
    ids = pop.ids.astype(str)
    records[f"patients/{name}"]["failed"] = {
        arm: {"n": len(f), "first": [[ids[i], why] for i, why in list(f.items())[:FAILED_SHOWN]]}
        for arm, f in outcome.failures.items()
        if f
    }
    return hi - lo, records


def check_seed(seed: Any, who: str) -> int:
    """A run's seed: an integer from 0 to `SEED_MAX`."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"{who}: seed must be an integer, got {seed!r}.")
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"{who}: seed must be between 0 and 2**63 - 1, got {seed}.")
    return int(seed)


def seed_keys(seed: int) -> tuple[Any, Any]:
    """The keys of a run's seed: `(population, simulation)`; the patients and their
    variability and assay noise depend on nothing else (see `simulate_chunk`)."""
    key = jax.random.key(seed)
    return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)


def summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The endpoint table of a results folder as a dict keyed by arm name.

    `{arm: {endpoint: {label, unit, kind, n, estimate, ci_low, ci_high, published}}}`, plus
    `"differences"` (`{arm: {endpoint: {difference, ci_low, ci_high, method}}}` against the
    reference arm), `"published"` (the published figures, their source and notes, and
    `"differences"`), `"n_per_arm"`, `"complete"`, `"failures"` and `"provenance"` (with
    `"unusual"`, `{column: reason}`, when the patients were read with plausibility ranges
    lifted; `spec.json` records it under `"population"`).

    `"failures"` is `{arm: {n_patients, n_failed, failed: [{patient, reason}, ...]}}`, the
    patients that could not be simulated (the first `FAILED_LISTED`, 100, listed; see
    `failure_summary`). The estimates are over the completed patients only: `n` counts
    them, and a failed patient is neither a responder nor a non-responder.
    """
    results = read_results(path)
    table = endpoint_table(results)
    diffs = difference_table(results)
    spec = results.spec
    out: dict[str, Any] = {}
    for row in table.to_dict("records"):
        entry = {
            k: _plain(row[k])
            for k in ("label", "unit", "kind", "n", "estimate", "ci_low", "ci_high", "published")
        }
        out.setdefault(str(row["arm"]), {})[str(row["endpoint"])] = entry
    out["differences"] = {}
    for row in diffs.to_dict("records"):
        out["differences"].setdefault(str(row["arm"]), {})[str(row["endpoint"])] = {
            k: _plain(row[k]) for k in ("reference", "difference", "ci_low", "ci_high", "method")
        }
    published = dict(spec.get("published") or {})
    if spec.get("published_differences"):
        published["differences"] = spec["published_differences"]
    out["published"] = published
    out["n_per_arm"] = results.manifest.get("n_patients")
    out["complete"] = results.manifest.get("complete")
    out["failures"] = failure_summary(results)
    out["provenance"] = {**spec.get("provenance", {}), "wall_s": results.manifest.get("wall_s")}
    unusual = (spec.get("population") or {}).get("unusual")
    if unusual:
        out["provenance"]["unusual"] = dict(unusual)
    return out


def _plain(x: Any) -> Any:
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def write_summary(path: str | os.PathLike[str]) -> Path:
    """Write `summary.json` (see `summary`) into the results folder."""
    target = Path(path) / "summary.json"
    write_json(target, summary(path))
    return target
