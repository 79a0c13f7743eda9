"""Flower's deployment engine on one machine: a SuperLink and one SuperNode per hospital as
separate processes on 127.0.0.1, a Flower app run on them with `flwr run`, and everything
stopped afterwards (also on error).

```python
app = write_app(folder / "app", name="population-fit",
                serverapp="surrogates.federated._population_apps:server_app",
                clientapp="surrogates.federated._population_apps:client_app",
                config={"result-path": str(folder / "result.json")})
with Federation({"north": {"data-path": "north.csv"}, "south": {...}}, workdir=folder,
                worker=None) as fed:     # or a module run next to each SuperNode
    run = fed.run(app, timeout=600, done=(folder / "result.json").exists)
    fed.kill_node("north")               # a site that drops out (fault tests)
```

What each process is (Flower 1.42):

- `flower-superlink`: the coordinator. One HTTP port (`--port`) serves its Fleet API (the
  SuperNodes connect to it), its Control API (`flwr run` submits the app there) and its
  Runtime API; it starts a `flower-superexec`, which starts a `flwr-serverapp` process per run
  (the ServerApp).
- `flower-supernode`, one per hospital: connects to the SuperLink's Fleet API, pulls the
  messages addressed to it and runs each in a `flwr-clientapp` process (through its own
  `flower-superexec`) on its Runtime API port (`--port`). Its `--node-config` (a TOML file
  here) is read by the ClientApp as `context.node_config`: this is how a hospital's data
  path reaches the code that reads it, without passing through the server.
- `flwr run APP CONNECTION`: builds the app folder into a FAB and submits it to the
  Control API; `flwr ls` gives the run's status.

Everything runs with `--insecure` (plain HTTP, no TLS) and without SuperNode
authentication: acceptable on the loopback interface of one machine, never across a
network (docs/federated.md, "Running it for real"). Flower's telemetry, its update check
and its installation of app dependencies at run time are turned off (`FLWR_*` variables in
the processes' environment); its files (installed apps, the CLI's connection config) live
under the federation's `workdir` (`FLWR_HOME`), not in the user's home.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import tomli_w

#: The environment every Flower process of a `Federation` gets: no telemetry, no update
#: check, no `uv sync` of app dependencies at run time (the apps use this environment's
#: packages), and a quick task poll of the SuperExecs (the default 1 s adds to every round).
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.05",
}

_CONNECTION = "pkpd-twins"


class DeploymentError(RuntimeError):
    """A Flower process could not start, stopped, or a run did not finish in time; the
    message names the process and ends with the last lines of its log."""


@dataclasses.dataclass(frozen=True)
class RunResult:
    """A finished `flwr run`: `run_id`, `status` (Flower's, e.g. `"finished:completed"`,
    `"finished:failed"`), `elapsed` (s, from submission to the end of the wait) and `details`
    (Flower's status details)."""

    run_id: int
    status: str
    elapsed: float
    details: str = ""

    @property
    def completed(self) -> bool:
        return self.status == "finished:completed"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_command(name: str) -> str:
    """The path of a Flower console script (`flower-superlink`, `flwr`, ...) of this Python
    environment; `DeploymentError` if it is not installed."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise DeploymentError(
            f"the Flower command {name!r} is not installed in this environment "
            f"({sys.executable}); install the pinned flwr (pip install -e .)."
        )
    return found


def write_app(
    folder: str | os.PathLike,
    *,
    name: str,
    serverapp: str,
    clientapp: str,
    config: Mapping[str, Any] | None = None,
    files: Mapping[str, str | os.PathLike] | None = None,
    publisher: str = "pkpd-twins",
    version: str = "1.0.0",
) -> Path:
    """Write a Flower app folder: a `pyproject.toml` naming its ServerApp and ClientApp
    (`"module:attribute"`: modules of this environment, or files copied into the folder,
    which the FAB that `flwr run` sends then carries).

    **Arguments:**

    - `folder`: created if missing.
    - `name`: the app's name (letters, digits and `-`).
    - `serverapp`, `clientapp`: `"module:attribute"` references of a `flwr.serverapp.ServerApp`
      and a `flwr.clientapp.ClientApp`.
    - `config`: the run config (`context.run_config`): flat keys, values `str`, `int`,
      `float` or `bool`.
    - `files`: name in the folder -> file to copy there (a module the ClientApp process
      imports without importing a heavy package, say).

    **Returns:** the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    run_config = dict(config or {})
    for key, value in run_config.items():
        if not isinstance(value, str | int | float | bool):
            raise TypeError(
                f"write_app: run config {key!r} must be a str, int, float or bool, "
                f"got {type(value).__name__}."
            )
    doc = {
        "project": {
            "name": name,
            "version": version,
            "description": f"pkpd-twins Flower app {name}",
            "license": "Apache-2.0",
            "dependencies": [],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": publisher,
                    "components": {"serverapp": serverapp, "clientapp": clientapp},
                    "config": run_config,
                }
            }
        },
    }
    (folder / "pyproject.toml").write_text(tomli_w.dumps(doc), encoding="utf-8")
    for target, source in (files or {}).items():
        shutil.copyfile(source, folder / target)
    return folder


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    kept = text.strip().splitlines()[-lines:]
    return "\n".join("    " + line for line in kept) or "    (empty log)"


def _descendants(pid: int) -> list[int]:
    """The processes started below `pid` (SuperExecs, ServerApp and ClientApp processes),
    found with psutil where it is installed; [] otherwise (they then stop on their own:
    each Flower process watches its parent's pid)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with flax's orbax here
        return []
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True
    return True


@dataclasses.dataclass
class _Process:
    name: str
    popen: subprocess.Popen
    log: Path
    port: int

    def tail(self) -> str:
        return _tail(self.log)


class Federation:
    """A SuperLink and one SuperNode per hospital, started as processes on 127.0.0.1.

    **Arguments:**

    - `nodes`: hospital name -> its node config (`context.node_config` of the ClientApp:
      flat keys, values `str`, `int`, `float` or `bool`; the hospital's data path goes here).
      The hospital's name is added as `hospital` unless given.
    - `workdir`: where the logs, node configs and Flower's files go (`FLWR_HOME`); a new
      temporary folder (removed on close) by default.
    - `start_timeout`: seconds each process may take to be ready.
    - `env`: more environment variables for the processes (e.g. `PKPD_TWINS_CACHE`).
    - `worker`: a Python module run next to each SuperNode (before it) as
      `python -m WORKER --node-config NODE.toml --socket PATH --parent-pid PID`: a
      hospital's long-lived compute process (Flower runs every message in a new ClientApp
      process; a worker keeps what is costly to rebuild, such as compiled JAX functions).
      The SuperNode's node config then has `worker-socket` (a Unix socket in a folder of
      mode 0700); the worker is ready when the socket accepts connections.

    Used as a context manager: `__enter__` starts every process (a process that exits or is
    not ready in time raises `DeploymentError` naming it, with its log's last lines, and
    everything started is stopped), `__exit__` stops them all (SIGTERM, then SIGKILL after
    a few seconds, children too). `run` submits an app with `flwr run` and waits for it.

    Attributes once started: `address` (the SuperLink's `127.0.0.1:port`), `workdir`,
    `logs` (process name -> log file: `superlink`, `supernode-<hospital>`).
    """

    def __init__(
        self,
        nodes: Mapping[str, Mapping[str, Any]],
        *,
        workdir: str | os.PathLike | None = None,
        start_timeout: float = 180.0,
        env: Mapping[str, str] | None = None,
        worker: str | None = None,
    ):
        if not nodes:
            raise ValueError("Federation: give at least one hospital (nodes={name: config}).")
        for name in nodes:
            if not isinstance(name, str) or not name or not name.replace("-", "").isalnum():
                raise ValueError(
                    f"Federation: hospital names must be letters, digits and '-', got {name!r}."
                )
        self.nodes = {name: dict(cfg) for name, cfg in nodes.items()}
        self._own_workdir = workdir is None
        self.workdir = Path(
            tempfile.mkdtemp(prefix="pkpd-federation-") if workdir is None else workdir
        )
        self.start_timeout = float(start_timeout)
        self._extra_env = dict(env or {})
        self._superlink: _Process | None = None
        self._supernodes: dict[str, _Process] = {}
        self._workers: dict[str, _Process] = {}
        self.worker = worker
        # Unix socket paths are limited to ~100 bytes: a short private folder in /tmp.
        self._sockets = Path(tempfile.mkdtemp(prefix="pkfed-")) if worker else None
        self.address = ""

    # ------------------------------------------------------------------ environment

    @property
    def flwr_home(self) -> Path:
        return self.workdir / "flwr-home"

    @property
    def logs(self) -> dict[str, Path]:
        out = {} if self._superlink is None else {"superlink": self._superlink.log}
        out |= {f"supernode-{n}": p.log for n, p in self._supernodes.items()}
        out |= {f"worker-{n}": p.log for n, p in self._workers.items()}
        return out

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(FLOWER_ENV)
        env.update(self._extra_env)
        env["FLWR_HOME"] = str(self.flwr_home)
        # The processes Flower starts (flower-superexec, flwr-serverapp, flwr-clientapp) are
        # found on PATH: this environment's first.
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # ------------------------------------------------------------------ start and stop

    def __enter__(self) -> Federation:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _spawn(self, name: str, args: list[str], port: int) -> _Process:
        log = self.workdir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            try:
                popen = subprocess.Popen(
                    args,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self._env(),
                    cwd=self.workdir,
                    start_new_session=True,
                )
            except OSError as error:
                raise DeploymentError(
                    f"{name} could not be started ({args[0]}): {error}"
                ) from error
        return _Process(name, popen, log, port)

    def _wait_ready(self, proc: _Process, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            code = proc.popen.poll()
            if code is not None:
                raise DeploymentError(
                    f"{proc.name} exited with code {code} while starting "
                    f"(log {proc.log}):\n{proc.tail()}"
                )
            if ready():
                return
            time.sleep(0.1)
        raise DeploymentError(
            f"{proc.name} was not ready within {self.start_timeout:g} s (log {proc.log}):\n"
            f"{proc.tail()}"
        )

    def start(self) -> None:
        """Start the SuperLink, then every hospital's worker and SuperNode (all at once),
        and wait until each is ready."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self._superlink = self._spawn(
            "superlink",
            [
                flower_command("flower-superlink"),
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--disable-runtime-dependency-installation",
            ],
            port,
        )
        self._wait_ready(self._superlink, lambda: _listening(port))
        self._write_connection()
        waits = [self._launch_node(name, cfg) for name, cfg in self.nodes.items()]
        for wait in waits:
            wait()

    def start_node(self, name: str, config: Mapping[str, Any] | None = None) -> None:
        """Start (or restart) hospital `name`'s worker and SuperNode and wait until the
        SuperNode is registered with the SuperLink."""
        self._launch_node(name, config)()

    def _launch_node(self, name: str, config: Mapping[str, Any] | None) -> Callable[[], None]:
        """Spawn the hospital's worker and SuperNode; return the wait for both."""
        if self._superlink is None:
            raise DeploymentError("Federation: start the SuperLink first (use it as a `with`).")
        cfg = dict(self.nodes.get(name, {}) if config is None else config)
        cfg.setdefault("hospital", name)
        for key, value in cfg.items():
            if not isinstance(value, str | int | float | bool):
                raise TypeError(
                    f"Federation: node config {key!r} of hospital {name!r} must be a str, int, "
                    f"float or bool, got {type(value).__name__}."
                )
        node_toml = self.workdir / "nodes" / f"{name}.toml"
        node_toml.parent.mkdir(parents=True, exist_ok=True)
        worker: _Process | None = None
        sock = ""
        if self.worker is not None:
            assert self._sockets is not None
            sock = str(self._sockets / f"{name}.sock")
            cfg["worker-socket"] = sock
        self.nodes[name] = cfg
        node_toml.write_text(tomli_w.dumps(cfg), encoding="utf-8")
        if self.worker is not None:
            worker = self._spawn(
                f"worker-{name}",
                [sys.executable, "-m", self.worker, "--node-config", str(node_toml),
                 "--socket", sock, "--parent-pid", str(os.getpid())],
                0,
            )  # fmt: skip
            self._workers[name] = worker
        port = free_port()
        proc = self._spawn(
            f"supernode-{name}",
            [
                flower_command("flower-supernode"),
                "--insecure",
                "--superlink",
                self.address,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--node-config",
                str(node_toml),
                "--max-retries",
                "10",
            ],
            port,
        )
        self._supernodes[name] = proc

        def wait() -> None:
            if worker is not None:
                self._wait_ready(worker, lambda: _unix_listening(sock))
            self._wait_ready(proc, lambda: "SuperNode ID:" in _read(proc.log))

        return wait

    def kill_node(self, name: str) -> None:
        """Kill hospital `name`'s SuperNode and everything it started (SIGKILL): a site that
        drops out without saying goodbye (for fault tests and demos)."""
        proc = self._supernodes.get(name)
        if proc is None:
            raise KeyError(f"Federation: no SuperNode for hospital {name!r}.")
        self._stop(proc, sig=signal.SIGKILL)
        if name in self._workers:
            self._stop(self._workers[name], sig=signal.SIGKILL)

    def _stop(self, proc: _Process, sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
        pids = [proc.popen.pid, *_descendants(proc.popen.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=grace)
        for pid in pids[1:]:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=grace)

    def close(self) -> None:
        """Stop every SuperNode, then the SuperLink (SIGTERM, SIGKILL after 5 s), with the
        processes they started; remove the temporary workdir if this federation made it."""
        for proc in [*self._supernodes.values(), *self._workers.values()]:
            self._stop(proc)
        self._supernodes.clear()
        self._workers.clear()
        if self._superlink is not None:
            self._stop(self._superlink)
            self._superlink = None
        if self._sockets is not None:
            shutil.rmtree(self._sockets, ignore_errors=True)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ------------------------------------------------------------------ runs

    def _write_connection(self) -> None:
        """The Flower CLI's connection to this SuperLink (FLWR_HOME/config.toml)."""
        doc = {
            "superlink": {
                "default": _CONNECTION,
                _CONNECTION: {"address": self.address, "insecure": True},
            }
        }
        (self.flwr_home / "config.toml").write_text(tomli_w.dumps(doc), encoding="utf-8")

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run the Flower CLI (`flwr ARGS...`) against this federation's SuperLink."""
        try:
            return subprocess.run(
                [flower_command("flwr"), *args],
                capture_output=True,
                text=True,
                env=self._env(),
                cwd=self.workdir,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise DeploymentError(
                f"`flwr {' '.join(args)}` did not return within {timeout:g} s"
            ) from error

    def status(self, run_id: int) -> tuple[str, str]:
        """`(status, details)` of a run, as `flwr ls` reports them."""
        out = self.flwr("ls", _CONNECTION, "--run-id", str(run_id), "--format", "json")
        try:
            runs = json.loads(out.stdout)["runs"]
            return str(runs[0]["status"]), str(runs[0].get("status-details", ""))
        except (ValueError, KeyError, IndexError) as error:
            raise DeploymentError(
                f"`flwr ls` gave no status for run {run_id}: {out.stdout}{out.stderr}"
            ) from error

    def run(
        self,
        app: str | os.PathLike,
        *,
        run_config: Mapping[str, Any] | None = None,
        timeout: float = 600.0,
        done: Callable[[], bool] | None = None,
        poll: float = 15.0,
    ) -> RunResult:
        """Submit the app folder `app` with `flwr run` and wait until the run finishes.

        **Arguments:**

        - `app`: a Flower app folder (`write_app`).
        - `run_config`: overrides of its run config (keys it declares).
        - `timeout`: seconds to wait; past it the run is stopped (`flwr stop`) and
          `DeploymentError` raised, with the SuperLink's log's last lines.
        - `done`: checked every 0.2 s: when it returns True (the ServerApp wrote its
          result, say) the wait ends early and the run's status is read once.
        - `poll`: seconds between `flwr ls` status checks while waiting.

        **Returns:** a `RunResult` (`completed` tells a finished run from a failed one; the
        app's own result is wherever the app writes it).
        """
        if self._superlink is None:
            raise DeploymentError("Federation.run: the federation is not started.")
        args = ["run", str(Path(app).resolve()), _CONNECTION, "--format", "json"]
        if run_config:
            overrides = self.workdir / f"run-config-{time.monotonic_ns()}.toml"
            overrides.write_text(tomli_w.dumps(dict(run_config)), encoding="utf-8")
            args += ["--run-config", str(overrides)]
        started = time.monotonic()
        out = self.flwr(*args)
        try:
            reply = json.loads(out.stdout)
            run_id = int(reply["run-id"])
        except (ValueError, KeyError, TypeError) as error:
            raise DeploymentError(
                f"`flwr run` did not start the app {app}: {out.stdout.strip()} "
                f"{out.stderr.strip()}\nSuperLink log:\n{self._superlink.tail()}"
            ) from error
        deadline = started + timeout
        next_poll = time.monotonic() + poll
        while True:
            self._check_alive()
            if done is not None and done():
                break
            now = time.monotonic()
            if now >= next_poll:
                status, details = self.status(run_id)
                if status.startswith("finished"):
                    return RunResult(run_id, status, time.monotonic() - started, details)
                next_poll = now + poll
            if now >= deadline:
                self.flwr("stop", str(run_id), _CONNECTION)
                raise DeploymentError(
                    f"run {run_id} of {app} did not finish within {timeout:g} s (stopped).\n"
                    f"SuperLink log:\n{self._superlink.tail()}"
                )
            time.sleep(0.2)
        # The app said it is done: its status turns `finished` once its process exits.
        status, details = self.status(run_id)
        end = time.monotonic() + 30.0
        while not status.startswith("finished") and time.monotonic() < end:
            time.sleep(0.5)
            status, details = self.status(run_id)
        return RunResult(run_id, status, time.monotonic() - started, details)

    def _check_alive(self) -> None:
        assert self._superlink is not None
        code = self._superlink.popen.poll()
        if code is not None:
            raise DeploymentError(
                f"the SuperLink exited with code {code} during a run:\n{self._superlink.tail()}"
            )

    def node_alive(self, name: str) -> bool:
        """Whether hospital `name`'s SuperNode process is running."""
        proc = self._supernodes.get(name)
        return proc is not None and proc.popen.poll() is None


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _unix_listening(path: str) -> bool:
    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(path) == 0


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def write_json_atomic(path: Path, doc: Mapping[str, Any]) -> None:
    """Write `doc` as JSON to `path` through a temporary file and a rename: a reader sees
    the whole document or none (a ServerApp's result file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, default=str), encoding="utf-8")
    os.replace(tmp, path)
