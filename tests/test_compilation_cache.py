"""The persistent compilation cache that `import pkpd` turns on (pkpd/_config.py): entries
written by one process are read by the next (JAX's monitoring events count the hits), `off`
leaves no folder, an unusable folder warns without failing the import, and
`pkpd.set_compilation_cache` moves or stops it. Each check runs in a fresh process, since JAX
opens its cache once per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# One jitted program, its result and JAX's cache events, as one JSON line ("requests" counts
# compilations that computed a cache key, which JAX does even with no cache folder).
_COMPILE = """
import json, warnings
warnings.simplefilter("default")
events = []
with warnings.catch_warnings(record=True) as caught:
    import pkpd
import jax, jax.monitoring, jax.numpy as jnp
jax.monitoring.register_event_listener(lambda event, **kw: events.append(event))
f = jax.jit(lambda x: jnp.cumsum(jnp.sin(x) * 2.0) @ x)
value = float(f(jnp.arange(7.0)))
print(json.dumps({
    "value": value,
    "dir": jax.config.jax_compilation_cache_dir,
    "hits": events.count("/jax/compilation_cache/cache_hits"),
    "requests": events.count("/jax/compilation_cache/compile_requests_use_cache"),
    "warnings": [str(w.message) for w in caught],
}))
"""


def _run(env_value: str | None, code: str = _COMPILE, **env: str) -> dict:
    cache_vars = ("PKPD_TWINS_CACHE", "JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(cache_vars)}
    if env_value is not None:
        environ["PKPD_TWINS_CACHE"] = env_value
    environ.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _entries(folder) -> list:
    return sorted(p for p in folder.rglob("*-cache") if p.is_file())


def test_second_process_reads_what_the_first_wrote(tmp_path):
    root = tmp_path / "cache"
    first = _run(str(root))
    entries = _entries(root)
    assert entries, "the first process wrote no cache entry"
    (sub,) = root.iterdir()  # one subfolder: this jax version and machine
    assert sub.name.startswith("jax-") and first["dir"] == str(sub)
    assert first["requests"] >= 1 and first["hits"] == 0 and first["warnings"] == []
    if os.name == "posix":
        assert (root.stat().st_mode & 0o777) == 0o700 and (sub.stat().st_mode & 0o777) == 0o700
    mtimes = {p: p.stat().st_mtime_ns for p in entries}
    second = _run(str(root))
    assert second["value"] == first["value"]
    assert second["hits"] >= 1 and second["hits"] == second["requests"]
    assert {p: p.stat().st_mtime_ns for p in _entries(root)} == mtimes  # read, not rewritten


def test_off_leaves_no_folder(tmp_path):
    home = tmp_path / "home"
    for off in ("off", "0"):
        out = _run(off, HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
        assert out["dir"] is None and out["hits"] == 0 and out["warnings"] == []
    assert not home.exists()


def test_default_folder_is_the_user_cache(tmp_path):
    cache_home = tmp_path / "xdg"
    out = _run(None, XDG_CACHE_HOME=str(cache_home))
    if sys.platform.startswith("linux"):
        assert out["dir"].startswith(str(cache_home / "pkpd-twins" / "jax" / "jax-"))
        assert _entries(cache_home)


_AS_ROOT = hasattr(os, "getuid") and os.getuid() == 0


@pytest.mark.parametrize("how", ["under-a-file", "read-only"])
def test_unusable_folder_warns_and_imports(tmp_path, how):
    if how == "read-only" and (_AS_ROOT or os.name != "posix"):
        pytest.skip("root writes read-only folders")
    parent = tmp_path / how
    if how == "under-a-file":
        parent.write_text("a file, not a folder")
    else:
        parent.mkdir(mode=0o500)  # as a read-only home
    try:
        out = _run(str(parent / "cache"))
    finally:
        if how == "read-only":
            parent.chmod(0o700)
    assert out["dir"] is None and out["hits"] == 0
    assert len(out["warnings"]) == 1 and "no persistent compilation cache" in out["warnings"][0]


def test_folder_others_can_write_is_refused(tmp_path):
    root = tmp_path / "shared"
    out = _run(str(root))
    sub = root / os.path.basename(out["dir"])
    sub.chmod(0o777)  # as if someone opened it up
    again = _run(str(root))
    assert again["dir"] is None and again["hits"] == 0  # the entries there are not read
    assert len(again["warnings"]) == 1 and "writable by group or others" in again["warnings"][0]


def test_set_compilation_cache_moves_and_stops_it(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    code = f"""
import json, pathlib, pkpd, jax, jax.numpy as jnp
folder = pkpd.set_compilation_cache({str(tmp_path / "moved")!r})
jax.jit(lambda x: jnp.cos(x) * 3.0)(jnp.ones(3)).block_until_ready()
written = len(list(folder.glob("*-cache")))
stopped = pkpd.set_compilation_cache(None)
jax.jit(lambda x: jnp.tan(x) - 1.0)(jnp.ones(3)).block_until_ready()
try:
    pkpd.set_compilation_cache({str(a_file / "cache")!r})
    raised = None
except OSError as error:
    raised = type(error).__name__
print(json.dumps({{"folder": str(folder), "written": written,
    "after": len(list(folder.glob("*-cache"))), "stopped": stopped,
    "dir": jax.config.jax_compilation_cache_dir, "raised": raised}}))
"""
    out = _run("off", code)
    assert out["folder"].startswith(str(tmp_path / "moved" / "jax-"))
    assert out["written"] >= 1 and out["after"] == out["written"]
    assert out["stopped"] is None and out["dir"] is None
    assert out["raised"] is not None


# A first call whose checks were host callbacks inside its compiled programs (`eqx.error_if`:
# JAX never writes such a program to its cache). They are now made on the host before the
# call, so a second process reads every program back: hits == requests.
_FIRST_CALLS = {
    "simulate_records": """
import pandas as pd, pkpd
rows = [(1, 0.0, 1, 1000.0, 1, 1000.0, 12.0, 1, 70.0), (1, 12.0, 1, 1000.0, 1, 500.0, 0.0, 0, 72.0),
        (1, 6.0, 0, 0.0, 1, 0.0, 0.0, 0, 71.0), (1, 24.0, 0, 0.0, 1, 0.0, 0.0, 0, 73.0)]
records = pd.DataFrame(rows, columns=["ID", "TIME", "EVID", "AMT", "CMT", "RATE", "II", "SS", "WT"])
records = records.sort_values("TIME", kind="stable")
params = lambda df: {"CL": 4.5 * (df["WT"].to_numpy() / 70.0) ** 0.75, "V1": 40.0, "Q": 6.5,
                     "V2": 38.0}
out = pkpd.simulate_records(pkpd.TwoCompartment(), params, records, interpolation={"WT": "locf"})
value = float(out["PRED"].sum())
""",
    "recommend": """
import twins
drug = twins.drugs.get("vancomycin_goti2018")
twin = twins.DigitalTwin(drug, {"ID": "p1", "AGE": 62.0, "WT": 80.0, "SCR": 1.1, "SEX": 0.0})
twin.give(drug.regimen(4, amount=1000.0, interval=12.0))
twin.update(times=[11.5, 35.5], values=[9.8, 12.1])
value = float(twin.recommend("AUC24", key=0).dose)
""",
}

_COUNT = """
import json, jax.monitoring
events = []
jax.monitoring.register_event_listener(lambda event, **kw: events.append(event))
{call}
print(json.dumps({{"value": value, "hits": events.count("/jax/compilation_cache/cache_hits"),
    "requests": events.count("/jax/compilation_cache/compile_requests_use_cache")}}))
"""


@pytest.mark.parametrize(
    "call",
    [
        "simulate_records",
        # Four processes building a twin (about 40 s on 2 cores); the mechanism is the same
        # as simulate_records' (checks on the host, no eqx.error_if in the program).
        pytest.param("recommend", marks=pytest.mark.extended),
    ],
)
def test_first_calls_are_read_back_whole(tmp_path, call):
    code = _COUNT.format(call=_FIRST_CALLS[call])
    first = _run(str(tmp_path / "cache"), code)
    second = _run(str(tmp_path / "cache"), code)
    assert second["value"] == first["value"]
    assert first["requests"] >= 1 and second["hits"] == second["requests"], (first, second)
