"""Project-wide JAX settings applied when `pkpd` is imported: double precision by default, and
a persistent compilation cache in the user's cache folder (docs/getting-started.md,
"Compilation cache")."""

from __future__ import annotations

import hashlib
import os
import platform
import warnings
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache as _jax_cache

jax.config.update("jax_enable_x64", True)

ENV = "PKPD_TWINS_CACHE"
"""The environment variable: a folder, or `off` (also `0`, `false`, `no`, `none`)."""
_OFF = frozenset({"off", "0", "false", "no", "none", "disable", "disabled"})

MIN_COMPILE_TIME_S = 0.0
"""Every program is written to the cache, however quick its compilation (JAX's default is
1 s). A first call compiles dozens of small programs (52 for a twin's `update`, 62 for a
FOCE-I fit of theophylline, most under 0.1 s each): with a 0.1 s threshold a warm `update`
took 1.6 s instead of 1.3 s and a warm FOCE-I fit 2.8 s instead of 2.0 s; reading an entry
back takes about a millisecond."""


def _cpu_tag() -> str:
    """Eight hex digits naming the CPU's instruction set. JAX's cache key names the platform
    ("cpu") but not the CPU's features, and XLA compiles for the host's features: a home folder
    shared by machines of different CPUs must not share entries."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = line.split(":", 1)[-1].strip()
                    break
    except OSError:
        pass
    text = f"{platform.system()} {platform.machine()} {flags}"
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _subfolder() -> str:
    """The folder of this jax version and machine under the cache root."""
    return f"jax-{jax.__version__}-{platform.machine() or 'unknown'}-{_cpu_tag()}"


def default_root() -> Path:
    """`$XDG_CACHE_HOME/pkpd-twins/jax` or `~/.cache/pkpd-twins/jax` on Linux,
    `~/Library/Caches/pkpd-twins/jax` on macOS, `%LOCALAPPDATA%\\pkpd-twins\\Cache\\jax` on
    Windows (platformdirs' user cache folder)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("pkpd-twins", appauthor=False)) / "jax"


def _private_folder(folder: Path) -> Path:
    """Create `folder` (and missing parents) with mode 0o700; check that it is the user's own
    and that nobody else can write it. Raises `OSError` saying why not."""
    folder = Path(os.path.abspath(os.path.expanduser(folder)))
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)  # exist_ok: another process may create it too
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    if hasattr(os, "getuid"):  # POSIX: the user's own, writable by nobody else
        st = folder.stat()
        if st.st_uid != os.getuid():
            raise PermissionError(f"{folder} belongs to another user (uid {st.st_uid})")
        if st.st_mode & 0o022:
            raise PermissionError(
                f"{folder} is writable by group or others (mode {st.st_mode & 0o777:o}; "
                "chmod 700 it): whoever can write the cache can change the code that runs"
            )
    if not os.access(folder, os.R_OK | os.W_OK | os.X_OK):
        raise PermissionError(f"{folder} is not writable")
    return folder


def _use(folder: Path | None) -> None:
    if folder is None:
        jax.config.update("jax_compilation_cache_dir", None)
    else:
        jax.config.update("jax_compilation_cache_dir", str(folder))
        if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
            jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
        if "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in os.environ:
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # any size
    _jax_cache.reset_cache()  # JAX opens its cache once, at the first compilation


def set_compilation_cache(path: str | os.PathLike[str] | None) -> Path | None:
    """Use `path` as the persistent JAX compilation cache, or none with `None`.

    Importing `pkpd` turns the cache on in the user's cache folder (`~/.cache/pkpd-twins/jax`
    on Linux) unless the environment variable `PKPD_TWINS_CACHE` names another folder or is
    `off`; this call changes that for the rest of the process (programs already compiled in
    the process are kept). Entries go in a subfolder named by the jax version, the machine and
    its CPU's instruction set, created with mode 0o700. JAX's own cache key already names the
    jax/jaxlib version, the backend and its version, the XLA flags and the compile options.

    Anyone who can write the folder can change the code this process runs, as with any cache
    of executables: keep it private (the folder is refused when it belongs to another user or
    others can write it).

    **Arguments:**

    - `path`: the cache folder (created if missing), or `None` for no persistent cache.

    **Returns:** the folder where entries are written (the subfolder of `path`), or `None`.

    Raises `OSError` when the folder cannot be created, is not the user's own, or is not
    writable.
    """
    if path is None:
        _use(None)
        return None
    folder = _private_folder(Path(path) / _subfolder())
    _use(folder)
    return folder


def _from_environment() -> None:
    """At import: `PKPD_TWINS_CACHE` (a folder or `off`), else JAX's own
    `JAX_COMPILATION_CACHE_DIR` if set, else the user cache folder. A folder that cannot be
    used gives one warning and no cache: the import never fails for it."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in _OFF and value:
        _use(None)
        return
    jax_dir = jax.config.jax_compilation_cache_dir  # pyright: ignore[reportAttributeAccessIssue]
    if not value and jax_dir:  # the user set JAX's own (JAX_COMPILATION_CACHE_DIR)
        return
    try:
        set_compilation_cache(Path(value) if value else default_root())
    except (OSError, ImportError) as error:
        _use(None)
        warnings.warn(
            f"pkpd: no persistent compilation cache ({error}); every process compiles "
            f"afresh. Set {ENV} to a folder of your own, or {ENV}=off to silence this.",
            RuntimeWarning,
            stacklevel=2,
        )


_from_environment()
