"""Test configuration: double precision and strict dtype/rank promotion, as diffrax does.

Each pytest-xdist worker gets its own persistent compilation cache folder (a subfolder
named by the worker of the folder `PKPD_TWINS_CACHE` or the user's cache names): two workers
compiling the same program at once wrote and read one entry together, and a worker that
read an entry still being written crashed (a segmentation fault in two fresh-clone runs of
`make test`)."""

import os
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

_worker = os.environ.get("PYTEST_XDIST_WORKER")
_cache = os.environ.get("PKPD_TWINS_CACHE", "").strip()
if _worker and _cache.lower() not in {"off", "0", "false", "no", "none", "disable", "disabled"}:
    import pkpd
    from pkpd._config import default_root

    pkpd.set_compilation_cache((Path(_cache) if _cache else default_root()) / _worker)
