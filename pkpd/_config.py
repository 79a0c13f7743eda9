"""Project-wide JAX settings applied when `pkpd` is imported: double precision by default."""

import jax

jax.config.update("jax_enable_x64", True)
