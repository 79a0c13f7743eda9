"""One randomness convention: a keyword-only `key`, a JAX PRNG key or an int."""

from __future__ import annotations

import warnings
from typing import Any

import jax
import numpy as np


def as_key(key: Any, fn: str) -> jax.Array:
    """`key` as a JAX PRNG key: a key (`jax.random.key(...)`, or a raw `PRNGKey`) as it is,
    an int through `jax.random.key`. Raises `TypeError` naming `fn` for anything else,
    `None` included (a function that draws random numbers asks for its key)."""
    if isinstance(key, jax.Array):
        return key
    if isinstance(key, int | np.integer) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if key is None:
        raise TypeError(
            f"{fn} draws random numbers: pass key=jax.random.key(...) (or an int); the same "
            "key gives the same numbers."
        )
    raise TypeError(
        f"{fn}: key must be a JAX PRNG key (jax.random.key(...)) or an int, got "
        f"{type(key).__name__} {key!r:.60}."
    )


def key_or_seed(key: Any, seed: Any, fn: str, *, default: int | None = None) -> jax.Array:
    """The key of a function whose randomness used to come from `seed=` (deprecated: a
    `DeprecationWarning`) and, when `default` is set, from a silent default seed (a missing
    key now warns, naming the old default, and will raise `TypeError` in the next
    release)."""
    if seed is not None:
        if key is not None:
            raise TypeError(f"{fn}: give key= or the deprecated seed=, not both.")
        warnings.warn(
            f"{fn}: seed= is deprecated; pass key=jax.random.key(seed) (an int works too).",
            DeprecationWarning,
            stacklevel=3,
        )
        return as_key(seed, fn)
    if key is None and default is not None:
        warnings.warn(
            f"{fn}: no key given, so jax.random.key({default}) is used as before; pass "
            f"key=jax.random.key(...) (or an int). Omitting key will raise a TypeError in "
            "the next release.",
            DeprecationWarning,
            stacklevel=3,
        )
        return jax.random.key(default)
    return as_key(key, fn)
