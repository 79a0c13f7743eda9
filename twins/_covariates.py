"""Derived covariates: renal function, body size and allometric scaling.

Every function is pure and works on Python floats, NumPy arrays and JAX arrays (under `jit`,
`vmap` and `grad` too). Inputs are checked: a value that is not finite or outside the domain of
the formula raises an error naming the argument. On NumPy input the check raises `ValueError`
at once; on JAX input it goes through `equinox.error_if`, so it survives `jit` (and raises a
runtime error carrying the same message).

Sex enters as `female`: `True`/`1` for female, `False`/`0` for male (a boolean array for a
cohort), the same coding as the `SEX` covariate.

Units: age in years, weight in kg, height in cm, serum creatinine in mg/dL (IDMS-traceable; use
`creatinine_umol_to_mg_dl` for µmol/L), clearances in mL/min, eGFR in mL/min/1.73 m², body
surface area in m².
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

#: µmol/L per mg/dL of creatinine (molar mass 113.12 g/mol: 10 dL/L x 1000 µg/mg / 113.12).
CREATININE_UMOL_PER_MG_DL = 88.42

_CM_PER_INCH = 2.54


def _is_jax(*values: Any) -> bool:
    return any(isinstance(v, jax.Array) for v in values)


def _float(value: Any, name: str, jax_path: bool) -> Any:
    """`value` as a float array (JAX or NumPy); bools and strings are refused."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise TypeError(f"{name} must be a number or an array of numbers, got {value!r}.")
    if jax_path:
        array = jnp.asarray(value)
        if not jnp.issubdtype(array.dtype, jnp.floating):
            array = array.astype(jnp.result_type(float))
        return array
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{name} must be a number or an array of numbers, got {value!r}."
        ) from error
    return array


def _check(name: str, value: Any, ok: Any, expected: str, jax_path: bool) -> Any:
    """Raise (NumPy) or attach an `error_if` (JAX) where `ok` is False."""
    if jax_path:
        return eqx.error_if(value, ~ok, f"{name} must be {expected}.")
    ok = np.broadcast_to(np.asarray(ok), np.shape(value))
    if not ok.all():
        values = np.asarray(value)
        if values.ndim == 0:
            raise ValueError(f"{name} must be {expected}, got {float(values)!r}.")
        first = tuple(np.argwhere(~ok)[0].tolist())
        count = int((~ok).sum())
        more = f" ({count} values are not)" if count > 1 else ""
        raise ValueError(
            f"{name} must be {expected}, got {float(values[first])!r} at index "
            f"{first[0] if len(first) == 1 else first}{more}."
        )
    return value


def _positive(name: str, value: Any, unit: str, jax_path: bool) -> Any:
    xp = jnp if jax_path else np
    value = _float(value, name, jax_path)
    ok = xp.isfinite(value) & (value > 0)
    return _check(name, value, ok, f"positive and finite (in {unit})", jax_path)


def _age(value: Any, jax_path: bool, upper: float | None = None) -> Any:
    xp = jnp if jax_path else np
    value = _float(value, "age", jax_path)
    ok = xp.isfinite(value) & (value >= 0)
    expected = "finite and >= 0 (in years)"
    if upper is not None:
        ok = ok & (value < upper)
        expected = f"finite and in [0, {upper:g}) (in years)"
    return _check("age", value, ok, expected, jax_path)


def _female(value: Any, jax_path: bool) -> Any:
    """The sex flag as a boolean array; only True/False or 1/0 are accepted."""
    if isinstance(value, str):
        raise TypeError(
            f"female must be True/False (or 1/0, or a boolean array), got the string {value!r}; "
            "write female=(sex == 'female')."
        )
    if jax_path:
        array = jnp.asarray(value)
        if array.dtype == jnp.bool_:
            return array
        array = eqx.error_if(
            array, (array != 0) & (array != 1), "female must be True/False or 1/0."
        )
        return array == 1
    array = np.asarray(value)
    if array.dtype == np.bool_:
        return array
    try:
        numeric = array.astype(float)
    except (TypeError, ValueError) as error:
        raise TypeError(f"female must be True/False or 1/0, got {value!r}.") from error
    ok = (numeric == 0) | (numeric == 1)
    _check("female", numeric, ok, "True/False or 1/0", False)
    return numeric == 1


def _out(result: Any, jax_path: bool) -> Any:
    """NumPy 0-d results come back as NumPy float scalars (a `float` subclass)."""
    if jax_path or np.ndim(result):
        return result
    return np.float64(result)


def creatinine_umol_to_mg_dl(serum_creatinine_umol_l: Any) -> Any:
    """Serum creatinine from µmol/L to mg/dL.

    SCr[mg/dL] = SCr[µmol/L] / 88.42 (creatinine, 113.12 g/mol).

    **Arguments:**

    - `serum_creatinine_umol_l`: serum creatinine in µmol/L (positive, finite).

    **Returns:**

    Serum creatinine in mg/dL, of the same kind (float, NumPy or JAX array) as the input.
    """
    jax_path = _is_jax(serum_creatinine_umol_l)
    scr = _positive("serum_creatinine_umol_l", serum_creatinine_umol_l, "µmol/L", jax_path)
    return _out(scr / CREATININE_UMOL_PER_MG_DL, jax_path)


def creatinine_mg_dl_to_umol(serum_creatinine: Any) -> Any:
    """Serum creatinine from mg/dL to µmol/L: SCr[µmol/L] = 88.42 x SCr[mg/dL].

    **Arguments:**

    - `serum_creatinine`: serum creatinine in mg/dL (positive, finite).

    **Returns:**

    Serum creatinine in µmol/L.
    """
    jax_path = _is_jax(serum_creatinine)
    scr = _positive("serum_creatinine", serum_creatinine, "mg/dL", jax_path)
    return _out(scr * CREATININE_UMOL_PER_MG_DL, jax_path)


def cockcroft_gault(age: Any, weight: Any, serum_creatinine: Any, *, female: Any) -> Any:
    """Creatinine clearance by Cockcroft-Gault.

    CrCL [mL/min] = (140 - age) x weight / (72 x SCr) x (0.85 if female)

    The weight is the caller's choice: total body weight as in the original paper, or ideal,
    lean or adjusted body weight (`ideal_body_weight`, `lean_body_weight`), as a drug's
    dosing rule prescribes. The equation was derived in adults (18-92 years) from
    non-standardised (Jaffe) creatinine; `Patient` computes it for adults only.

    **Arguments:**

    - `age`: years, in [0, 140).
    - `weight`: kg.
    - `serum_creatinine`: mg/dL.
    - `female`: True/1 for female (factor 0.85), False/0 for male.

    **Returns:**

    Creatinine clearance in mL/min (not normalised to body surface area).

    References: Cockcroft DW, Gault MH. Prediction of creatinine clearance from serum
    creatinine. Nephron 1976;16(1):31-41.
    """
    jax_path = _is_jax(age, weight, serum_creatinine, female)
    xp = jnp if jax_path else np
    age = _age(age, jax_path, upper=140.0)
    weight = _positive("weight", weight, "kg", jax_path)
    scr = _positive("serum_creatinine", serum_creatinine, "mg/dL", jax_path)
    is_female = _female(female, jax_path)
    crcl = (140.0 - age) * weight / (72.0 * scr) * xp.where(is_female, 0.85, 1.0)
    return _out(crcl, jax_path)


def ckd_epi_2021(age: Any, serum_creatinine: Any, *, female: Any) -> Any:
    """Estimated GFR by the race-free CKD-EPI 2021 creatinine equation.

    eGFR [mL/min/1.73 m²] = 142 x min(SCr/κ, 1)^α x max(SCr/κ, 1)^-1.200 x 0.9938^age
    x 1.012 [if female], with κ = 0.7 (female) or 0.9 (male) and α = -0.241 (female) or
    -0.302 (male); SCr in mg/dL, IDMS-traceable. For adults (age >= 18).

    **Arguments:**

    - `age`: years (>= 0; the equation is validated for adults).
    - `serum_creatinine`: mg/dL.
    - `female`: True/1 for female, False/0 for male.

    **Returns:**

    eGFR in mL/min/1.73 m².

    References: Inker LA, Eneanya ND, Coresh J, et al. New creatinine- and cystatin C-based
    equations to estimate GFR without race. N Engl J Med 2021;385(19):1737-1749.
    """
    jax_path = _is_jax(age, serum_creatinine, female)
    xp = jnp if jax_path else np
    age = _age(age, jax_path)
    scr = _positive("serum_creatinine", serum_creatinine, "mg/dL", jax_path)
    is_female = _female(female, jax_path)
    kappa = xp.where(is_female, 0.7, 0.9)
    alpha = xp.where(is_female, -0.241, -0.302)
    ratio = scr / kappa
    egfr = (
        142.0
        * xp.minimum(ratio, 1.0) ** alpha
        * xp.maximum(ratio, 1.0) ** -1.200
        * 0.9938**age
        * xp.where(is_female, 1.012, 1.0)
    )
    return _out(egfr, jax_path)


def bmi(weight: Any, height: Any) -> Any:
    """Body mass index: BMI [kg/m²] = weight / (height / 100)².

    **Arguments:**

    - `weight`: kg.
    - `height`: cm.

    **Returns:**

    BMI in kg/m².

    References: Keys A, Fidanza F, Karvonen MJ, Kimura N, Taylor HL. Indices of relative
    weight and obesity. J Chronic Dis 1972;25(6):329-343.
    """
    jax_path = _is_jax(weight, height)
    weight = _positive("weight", weight, "kg", jax_path)
    height = _positive("height", height, "cm", jax_path)
    return _out(weight / (height / 100.0) ** 2, jax_path)


def bsa_mosteller(weight: Any, height: Any) -> Any:
    """Body surface area by Mosteller: BSA [m²] = sqrt(height [cm] x weight [kg] / 3600).

    **Arguments:**

    - `weight`: kg.
    - `height`: cm.

    **Returns:**

    Body surface area in m².

    References: Mosteller RD. Simplified calculation of body-surface area. N Engl J Med
    1987;317(17):1098.
    """
    jax_path = _is_jax(weight, height)
    xp = jnp if jax_path else np
    weight = _positive("weight", weight, "kg", jax_path)
    height = _positive("height", height, "cm", jax_path)
    return _out(xp.sqrt(height * weight / 3600.0), jax_path)


def bsa_dubois(weight: Any, height: Any) -> Any:
    """Body surface area by DuBois & DuBois: BSA [m²] = 0.007184 x weight^0.425 x height^0.725.

    **Arguments:**

    - `weight`: kg.
    - `height`: cm.

    **Returns:**

    Body surface area in m².

    References: Du Bois D, Du Bois EF. A formula to estimate the approximate surface area if
    height and weight be known. Arch Intern Med 1916;17(6):863-871.
    """
    jax_path = _is_jax(weight, height)
    weight = _positive("weight", weight, "kg", jax_path)
    height = _positive("height", height, "cm", jax_path)
    return _out(0.007184 * weight**0.425 * height**0.725, jax_path)


def lean_body_weight(weight: Any, height: Any, *, female: Any) -> Any:
    """Lean body weight by Janmahasatian et al.

    LBW [kg] = 9270 x weight / (6680 + 216 x BMI) for men and
    9270 x weight / (8780 + 244 x BMI) for women, BMI = weight / (height/100)² in kg/m².
    Derived in adults.

    **Arguments:**

    - `weight`: total body weight, kg.
    - `height`: cm.
    - `female`: True/1 for female, False/0 for male.

    **Returns:**

    Lean body weight in kg.

    References: Janmahasatian S, Duffull SB, Ash S, Ward LC, Byrne NM, Green B. Quantification
    of lean bodyweight. Clin Pharmacokinet 2005;44(10):1051-1065.
    """
    jax_path = _is_jax(weight, height, female)
    xp = jnp if jax_path else np
    weight = _positive("weight", weight, "kg", jax_path)
    height = _positive("height", height, "cm", jax_path)
    is_female = _female(female, jax_path)
    index = weight / (height / 100.0) ** 2
    denominator = xp.where(is_female, 8780.0 + 244.0 * index, 6680.0 + 216.0 * index)
    return _out(9270.0 * weight / denominator, jax_path)


def ideal_body_weight(height: Any, *, female: Any) -> Any:
    """Ideal body weight by Devine.

    IBW [kg] = 50 (men) or 45.5 (women) + 2.3 kg per inch of height over 60 inches
    (height in inches = height [cm] / 2.54). Devine's rule was written for heights of 5 ft
    (152.4 cm) and more; below that the same line is extrapolated, and a height for which it
    gives no positive weight (below about 102 cm for women, 84 cm for men) raises.

    **Arguments:**

    - `height`: cm.
    - `female`: True/1 for female, False/0 for male.

    **Returns:**

    Ideal body weight in kg.

    References: Devine BJ. Gentamicin therapy. Drug Intell Clin Pharm 1974;8:650-655.
    """
    jax_path = _is_jax(height, female)
    xp = jnp if jax_path else np
    height = _positive("height", height, "cm", jax_path)
    is_female = _female(female, jax_path)
    ibw = xp.where(is_female, 45.5, 50.0) + 2.3 * (height / _CM_PER_INCH - 60.0)
    ibw = _check(
        "ideal_body_weight",
        ibw,
        ibw > 0,
        "positive: the Devine line gives no weight for this height (cm)",
        jax_path,
    )
    return _out(ibw, jax_path)


def allometric(weight: Any, exponent: Any, reference: Any = 70.0) -> Any:
    """Allometric size factor: (weight / reference)^exponent.

    Multiply a typical value for a `reference`-kg adult by this factor; the usual exponents
    are 0.75 for clearances and 1 for volumes.

    **Arguments:**

    - `weight`: kg.
    - `exponent`: the allometric exponent (finite).
    - `reference`: the reference weight in kg (default 70).

    **Returns:**

    The dimensionless size factor.

    References: Anderson BJ, Holford NHG. Mechanism-based concepts of size and maturity in
    pharmacokinetics. Annu Rev Pharmacol Toxicol 2008;48:303-332.
    """
    jax_path = _is_jax(weight, exponent, reference)
    xp = jnp if jax_path else np
    weight = _positive("weight", weight, "kg", jax_path)
    reference = _positive("reference", reference, "kg", jax_path)
    exponent = _float(exponent, "exponent", jax_path)
    exponent = _check("exponent", exponent, xp.isfinite(exponent), "finite", jax_path)
    return _out((weight / reference) ** exponent, jax_path)
