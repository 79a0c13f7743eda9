"""Shape-annotated type aliases shared across `pkpd` (jaxtyping)."""

from typing import Any, TypeAlias

from jaxtyping import Array, ArrayLike, Bool, Float, Int

#: A scalar value: Python float, NumPy scalar or 0-d JAX array.
Scalar: TypeAlias = float | Float[ArrayLike, ""]
#: A time (h): a Python float or a 0-d array (traced or not).
TimeLike: TypeAlias = float | Float[Array, ""]
#: Model parameters: a mapping from NONMEM-style names ("CL", "V", "KA", "F2", "ALAG2") to values.
Params: TypeAlias = dict[str, Any]
#: Output times of one patient, in hours.
Times: TypeAlias = Float[ArrayLike, " times"]
#: State vector of one patient: the amount (mg) in each compartment, or PD states.
State: TypeAlias = Float[Array, " states"]
EventFloat: TypeAlias = Float[Array, " events"]
EventInt: TypeAlias = Int[Array, " events"]
EventBool: TypeAlias = Bool[Array, " events"]

__all__ = [
    "Array",
    "ArrayLike",
    "EventBool",
    "EventFloat",
    "EventInt",
    "Params",
    "Scalar",
    "State",
    "TimeLike",
    "Times",
]
