"""Running a `Trial`'s chunks on a Ray cluster (the optional extra `pkpd-twins[ray]`).

`run_trial_ray` writes the same results folder as `twins._trial_run.run_trial`, with the
same numbers (bit for bit on the same hardware), but simulates the chunks as Ray tasks, one
task per chunk, in parallel on every core of a local machine or of a cluster:

- the driver checks or creates the folder (`prepare_folder`) and ships the trial once
  (`ray.put`);
- each task calls `run_chunk`, which writes the chunk's Parquet parts itself, atomically:
  the folder must be on storage that every node sees at the same absolute path;
- the driver updates `manifest.json` as tasks finish, shows the progress and applies
  `max_failed_fraction` to the patients that could not be simulated, as `run_trial` does;
- at the end the driver writes `summary.json`, as `run_trial` does.

A chunk is a pure function of the trial, N, seed and chunk size, so a failed or interrupted
run keeps the chunks already written and running it again resumes it (with `run_trial` or
`run_trial_ray` alike).
"""

from __future__ import annotations

import collections
import hashlib
import math
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import jax

from ..governance import Governance
from ._consent import consented_trial, record_export
from ._run import (
    MAX_FAILED_FRACTION,
    TooManyFailuresError,
    check_failures,
    check_max_failed_fraction,
    check_seed,
    deprecated_report,
    now_utc,
    prepare_folder,
    progress_bar,
    record_chunk,
    run_chunk,
    write_json,
    write_summary,
)
from ._trial import Trial

#: Compiled simulations kept by each worker process, keyed by (trial digest, x64): a worker
#: that runs several chunks of a trial compiles each arm once. Bounded (oldest dropped);
#: it holds no results, only what `run_chunk(runners=...)` would rebuild.
_WORKER_RUNNERS: collections.OrderedDict[tuple[str, bool], tuple[Trial, dict[str, Any]]] = (
    collections.OrderedDict()
)
_WORKER_RUNNERS_MAX = 2


def _import_ray():
    try:
        import ray
    except ImportError as err:
        raise ImportError(
            "run_trial_ray needs Ray, which is an optional dependency of pkpd-twins; install "
            "it with: pip install 'pkpd-twins[ray]'"
        ) from err
    return ray


def _chunk_task(
    box: list[Any],
    digest: str,
    x64: bool,
    out: str,
    chunk: int,
    n: int,
    seed: int,
    chunk_size: int,
    trajectories: bool,
) -> tuple[int, dict[str, Any]]:
    """Body of the Ray task: simulate and write chunk `chunk`; return its patient count
    and its parts' records (`run_chunk`).

    `box` holds the `ObjectRef` of the pickled trial (inside a list, so that Ray does not
    fetch it for workers that already hold the trial's compiled simulation).
    """
    jax.config.update("jax_enable_x64", x64)
    if not (Path(out) / "patients").is_dir():
        raise FileNotFoundError(
            f"run_trial_ray: the results folder {out} is not visible from the Ray worker on "
            f"{socket.gethostname()}; it must be on storage shared by every node, mounted at "
            "the same absolute path as on the driver."
        )
    key = (digest, x64)
    entry = _WORKER_RUNNERS.get(key)
    if entry is None:
        import ray
        from ray import cloudpickle

        entry = (cloudpickle.loads(ray.get(box[0])), {})
        _WORKER_RUNNERS[key] = entry
        while len(_WORKER_RUNNERS) > _WORKER_RUNNERS_MAX:
            _WORKER_RUNNERS.popitem(last=False)
    _WORKER_RUNNERS.move_to_end(key)
    trial, runners = entry
    return run_chunk(
        trial, out, chunk, n=n, seed=seed, chunk_size=chunk_size,
        trajectories=trajectories, runners=runners,
    )  # fmt: skip


def _describe_error(err: BaseException) -> str:
    cause = getattr(err, "cause", None)  # ray.exceptions.RayTaskError: the task's exception
    if isinstance(cause, BaseException):
        err = cause
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def run_trial_ray(
    trial: Trial,
    out: str | os.PathLike[str],
    *,
    n: int,
    seed: int = 0,
    chunk_size: int = 10_000,
    trajectories: bool = False,
    address: str | None = None,
    num_cpus_per_task: float = 1,
    max_in_flight: int | None = None,
    progress: bool = True,
    summary: bool = True,
    report: bool | None = None,
    max_failed_fraction: float = MAX_FAILED_FRACTION,
    governance: Governance | None = None,
) -> Path:
    """Run a trial with one Ray task per chunk and write its results folder; resume it if
    interrupted.

    The results (`spec.json`, the Parquet parts, `summary.json`) are those of
    `run_trial` with the same trial, N, seed and chunk size, bit for bit on the same hardware;
    the two can resume each other's runs. Each worker sets JAX's precision to the driver's
    (`jax_enable_x64`, on since importing `pkpd` turns it on) before simulating, and compiles
    the simulation once per trial, for all the chunks it runs.

    **Arguments:**

    - `trial`: the `Trial`. It is pickled (cloudpickle) once and sent to the workers, which
      must be able to import `pkpd-twins` and whatever module defines the trial's functions.
    - `out`: the results folder (created). Every Ray worker writes its chunk's parts into it
      directly: it must be on storage shared by all nodes (NFS, a cluster file system),
      mounted at the same absolute path as on the driver. A local Ray instance satisfies
      this trivially.
    - `n`: virtual patients per arm (every patient receives every arm).
    - `seed`: the seed; the same trial, N and seed give the same numbers.
    - `chunk_size`: patients per task (the memory of a task is bounded by it; the results do
      not depend on it).
    - `trajectories`: also store each patient's daily output and dose (large).
    - `address`: the Ray cluster when Ray is not initialised yet: `None` connects to the
      cluster in `RAY_ADDRESS` or a running local one, or else starts a local instance;
      `"auto"` an existing cluster; `"ray://host:10001"` through Ray Client. Ignored when
      `ray.init` was already called (the existing connection is used and left open).
    - `num_cpus_per_task`: CPUs Ray reserves for each task (a scheduling hint).
    - `max_in_flight`: at most this many tasks submitted and not finished (default twice
      the cluster's CPUs divided by `num_cpus_per_task`).
    - `progress`: show a progress bar with the throughput and the ETA.
    - `summary`: write `summary.json` at the end (`twins.write_report(out)` writes the
      HTML report).
    - `report`: deprecated, as in `run_trial`.
    - `max_failed_fraction`: the largest fraction of an arm's `n` patients that may fail
      (0 to 1, default 0.05), as in `run_trial`: failed patients are recorded in
      `patients/` and left out of the estimates, and once more than this fraction of an
      arm's patients have failed in the chunks recorded, no new chunk is started; the
      chunks already running finish and are recorded, then `TooManyFailuresError` is
      raised. Checked as each chunk is recorded and on resuming; a larger value resumes a
      stopped run.
    - `governance`: as in `run_trial` (a real cohort's consents; the workers get only the
      patients taken, under their pseudonyms).

    **Returns:** the results folder.

    **Raises:** `ImportError` without Ray; `ValueError` if `out` holds the results of a
    different trial, N, seed or chunk size; `TypeError` if the trial cannot be pickled;
    `RuntimeError` naming every chunk that failed and its error (no new chunk is started
    after a failure; the chunks already running finish, and every chunk written stays, so
    running again resumes). `TooManyFailuresError` (a `ValueError`, as from `run_trial`)
    when more patients could not be simulated than `max_failed_fraction` allows, with the
    counts of every chunk recorded (when chunks also failed, the `RuntimeError` says so).
    """
    ray = _import_ray()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"run_trial_ray: n must be a positive integer, got {n!r}.")
    check_seed(seed, "run_trial_ray")
    summary = deprecated_report(report, summary, "run_trial_ray")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(
            f"run_trial_ray: chunk_size must be a positive integer, got {chunk_size!r}."
        )
    if not (isinstance(num_cpus_per_task, int | float) and num_cpus_per_task > 0):
        raise ValueError(
            f"run_trial_ray: num_cpus_per_task must be > 0, got {num_cpus_per_task!r}."
        )
    if max_in_flight is not None and (
        isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1
    ):
        raise ValueError(
            f"run_trial_ray: max_in_flight must be None or a positive integer, got "
            f"{max_in_flight!r}."
        )
    check_max_failed_fraction(max_failed_fraction, "run_trial_ray")
    chunk_size = min(chunk_size, n)
    out = Path(out).resolve()  # the workers need the absolute path
    original, trial = (
        trial,
        consented_trial(trial, governance, use=f"trial {trial.name!r}", output_purpose="results"),
    )
    manifest = prepare_folder(
        trial, out, n=n, seed=seed, chunk_size=chunk_size, trajectories=trajectories
    )
    check_failures(trial, out, manifest, max_failed_fraction, "run_trial_ray")
    todo = [c for c in range(manifest["n_chunks"]) if c not in set(manifest["chunks_done"])]
    payload = _pickle(trial) if todo else b""
    started_ray = bool(todo) and not ray.is_initialized()
    if started_ray:
        with warnings.catch_warnings():
            # JAX warns on any fork once its backend is up (prepare_folder starts it); Ray's
            # forks exec its own programs (raylet, GCS) at once, which is safe.
            warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
            ray.init(address=address)
    try:
        failures = _run_tasks(
            ray, trial, out, manifest, todo, payload, n=n, seed=seed, chunk_size=chunk_size,
            trajectories=trajectories, num_cpus_per_task=num_cpus_per_task,
            max_in_flight=max_in_flight, progress=progress,
            max_failed_fraction=max_failed_fraction,
        )  # fmt: skip
    finally:
        if started_ray:
            ray.shutdown()  # a local instance we started stops; a cluster only loses us
    try:
        check_failures(trial, out, manifest, max_failed_fraction, "run_trial_ray")
        too_many = None
    except TooManyFailuresError as err:
        if not failures:
            raise
        too_many = err
    if failures:
        lines = [
            f"chunk {c} (patients {c * chunk_size} to {min((c + 1) * chunk_size, n) - 1}): "
            f"{_describe_error(err)}"
            for c, err in failures
        ]
        written = len(manifest["chunks_done"])
        raise RuntimeError(
            f"run_trial_ray: {len(failures)} of {manifest['n_chunks']} chunks failed:\n  "
            + "\n  ".join(lines)
            + f"\n{written} of {manifest['n_chunks']} chunks are written in {out}; run again "
            "with the same arguments to resume."
            + (f"\nBesides, too many patients failed. {too_many}" if too_many else "")
        ) from failures[0][1]
    if summary:
        write_summary(out)
    record_export(governance, original, trial, out, n)
    return out


def _pickle(trial: Trial) -> bytes:
    from ray import cloudpickle

    try:
        return cloudpickle.dumps(trial)  # pyright: ignore[reportPrivateImportUsage]
    except Exception as err:
        raise TypeError(
            f"run_trial_ray: trial {trial.name!r} must be picklable (cloudpickle) to be sent "
            f"to the Ray workers, but pickling it failed with {type(err).__name__}: {err}"
        ) from err


def _run_tasks(
    ray: Any,
    trial: Trial,
    out: Path,
    manifest: dict[str, Any],
    todo: list[int],
    payload: bytes,
    *,
    n: int,
    seed: int,
    chunk_size: int,
    trajectories: bool,
    num_cpus_per_task: float,
    max_in_flight: int | None,
    progress: bool,
    max_failed_fraction: float,
) -> list[tuple[int, BaseException]]:
    """Submit the chunks in `todo` (at most `max_in_flight` at a time), record each one done
    in `manifest.json` as it finishes, and return the failed ones (sorted by chunk) with
    their errors. After a failure, or once more patients could not be simulated than
    `max_failed_fraction` allows (`check_failures`), no new chunk is submitted; those
    running finish and are recorded (the caller raises)."""
    done = list(manifest["chunks_done"])
    wall0 = float(manifest.get("wall_s", 0.0))
    started = time.perf_counter()
    failures: list[tuple[int, BaseException]] = []
    too_many = False  # more failed patients than max_failed_fraction allows
    finished = False
    try:
        with progress_bar(progress) as bar:
            already = sum(min((c + 1) * chunk_size, n) - c * chunk_size for c in done)
            task = bar.add_task(trial.name, total=n, completed=already, rate="")
            if todo:
                digest = hashlib.sha256(payload).hexdigest()
                x64 = bool(jax.config.read("jax_enable_x64"))
                box = [ray.put(payload)]  # shipped once, fetched once per worker process
                remote = ray.remote(_chunk_task)
                if max_in_flight is None:
                    cpus = ray.cluster_resources().get("CPU", 1.0)
                    max_in_flight = max(1, 2 * math.floor(cpus / num_cpus_per_task))
                queue = collections.deque(todo)
                running: dict[Any, int] = {}
                simulated = 0
                try:
                    while running or (queue and not failures and not too_many):
                        while (
                            queue and not failures and not too_many and len(running) < max_in_flight
                        ):
                            c = queue.popleft()
                            ref = remote.options(
                                num_cpus=num_cpus_per_task, name=f"{trial.name}:chunk-{c:05d}"
                            ).remote(box, digest, x64, str(out), c, n, seed, chunk_size,
                                     trajectories)  # fmt: skip
                            running[ref] = c
                        ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                        for ref in ready:
                            c = running.pop(ref)
                            try:
                                count, records = ray.get(ref)
                            except Exception as err:  # the task's error, or a lost worker
                                failures.append((c, err))
                                continue
                            simulated += count
                            record_chunk(manifest, c, records)
                            manifest.update(wall_s=wall0 + time.perf_counter() - started)
                            write_json(out / "manifest.json", manifest)
                            bar.update(task, advance=count)
                            try:
                                check_failures(trial, out, manifest, max_failed_fraction)
                            except TooManyFailuresError:
                                too_many = True  # raised by the caller, counts up to date
                        rate = simulated * len(trial.arms) / (time.perf_counter() - started)
                        bar.update(task, rate=f"{rate:,.0f} patient-arms/s")
                except BaseException:  # interrupted (Ctrl-C) or the driver failed
                    for ref in running:
                        ray.cancel(ref)
                    raise
        finished = not failures and not too_many
    finally:
        manifest.update(wall_s=wall0 + time.perf_counter() - started)
        if finished:
            manifest.update(finished_utc=now_utc())
        write_json(out / "manifest.json", manifest)
    return sorted(failures, key=lambda f: f[0])
