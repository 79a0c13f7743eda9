"""Sympy expressions of a NONMEM model (from pharmpy) as JAX functions, safely.

`translate(expr, where=...)` turns a sympy expression into an `Expr`: a small, hashable tree
of tuples over an allow-list of node types (numbers, symbols, `Add`, `Mul`, `Pow`, `exp`,
`log`, `sqrt`, `Abs`, `Min`/`Max`, `Piecewise`, relations and `And`/`Or`/`Not`, a few
elementary functions). `Expr.evaluate(env)` computes it with `jax.numpy` by walking the tree:
no model text is ever passed to `eval` or `exec`, and nothing the project loads runs code.
Any other node raises `NonmemTranslationError` naming the statement and the construct.

References: Beal SL, Sheiner LB, Boeckmann AJ, Bauer RJ (eds). NONMEM 7.5 Users Guides.
ICON plc, Gaithersburg, MD, 1989-2020 (Part VIII: abbreviated code, its operators and
functions). Meurer A et al. SymPy: symbolic computing in Python. PeerJ Comput Sci 2017;3:e103.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp


class NonmemTranslationError(ValueError):
    """A part of a NONMEM control stream that cannot be translated: the message names the
    record or statement (and its line where known) and the construct."""


# Node kinds of the tree: ("c", value), ("v", name), (op, child, ...).
_FUNCTIONS = {
    "exp": jnp.exp,
    "log": jnp.log,
    "sqrt": jnp.sqrt,
    "abs": jnp.abs,
    "sin": jnp.sin,
    "cos": jnp.cos,
    "tan": jnp.tan,
    "asin": jnp.arcsin,
    "acos": jnp.arccos,
    "atan": jnp.arctan,
    "floor": jnp.floor,
    "ceil": jnp.ceil,
    "sign": jnp.sign,
    "erf": None,  # jax.scipy.special.erf, imported lazily below
    "gamma": None,
    "loggamma": None,
}
_SYMPY_FUNCTIONS = {
    "exp": "exp",
    "log": "log",
    "Abs": "abs",
    "sin": "sin",
    "cos": "cos",
    "tan": "tan",
    "asin": "asin",
    "acos": "acos",
    "atan": "atan",
    "floor": "floor",
    "ceiling": "ceil",
    "sign": "sign",
    "erf": "erf",
    "gamma": "gamma",
    "loggamma": "loggamma",
}
_RELATIONS = {
    "StrictLessThan": "<",
    "LessThan": "<=",
    "StrictGreaterThan": ">",
    "GreaterThan": ">=",
    "Equality": "==",
    "Unequality": "!=",
}


@dataclasses.dataclass(frozen=True)
class Expr:
    """A translated expression: a tree of tuples, compared and hashed by value (so models
    holding it compile once), evaluated with `jax.numpy` by `evaluate`."""

    tree: tuple

    @property
    def names(self) -> frozenset[str]:
        """The variables it reads."""
        out: set[str] = set()
        _names(self.tree, out)
        return frozenset(out)

    def evaluate(self, env: Mapping[str, Any]) -> Any:
        """The value for the variables `env` (name -> number or array); arrays broadcast."""
        return _eval(self.tree, env)

    def __repr__(self) -> str:
        return f"Expr({_show(self.tree)})"


def _names(t: tuple, out: set[str]) -> None:
    kind = t[0]
    if kind == "v":
        out.add(t[1])
    elif kind == "c":
        return
    elif kind == "pw":
        for cond, val in t[1]:
            _names(cond, out)
            _names(val, out)
    else:
        for child in t[2:] if kind in ("f", "cmp") else t[1:]:
            _names(child, out)


def _show(t: tuple) -> str:
    kind = t[0]
    if kind == "c":
        return repr(t[1])
    if kind == "v":
        return t[1]
    if kind == "f":
        return f"{t[1]}({_show(t[2])})"
    if kind == "cmp":
        return f"({_show(t[2])} {t[1]} {_show(t[3])})"
    if kind == "pw":
        return "piecewise(" + ", ".join(f"{_show(v)} if {_show(c)}" for c, v in t[1]) + ")"
    return "(" + f" {kind} ".join(_show(c) for c in t[1:]) + ")"


def _special(name: str):
    import jax.scipy.special as jss

    return {"erf": jss.erf, "gamma": lambda x: jnp.exp(jss.gammaln(x)), "loggamma": jss.gammaln}[
        name
    ]


def _eval(t: tuple, env: Mapping[str, Any]) -> Any:
    kind = t[0]
    if kind == "c":
        return t[1]
    if kind == "v":
        try:
            return env[t[1]]
        except KeyError:
            raise NonmemTranslationError(
                f"no value for {t[1]!r} in a translated expression"
            ) from None
    if kind == "+":
        out = _eval(t[1], env)
        for c in t[2:]:
            out = out + _eval(c, env)
        return out
    if kind == "*":
        out = _eval(t[1], env)
        for c in t[2:]:
            out = out * _eval(c, env)
        return out
    if kind == "^":
        base, power = t[1], t[2]
        b = _eval(base, env)
        if power[0] == "c":
            p = power[1]
            if p == 0.5:
                return jnp.sqrt(b)
            if p == -0.5:
                return 1.0 / jnp.sqrt(b)
            if float(p).is_integer() and abs(p) <= 8:
                return b ** int(p)  # exact for negative bases, as FORTRAN's X**2
        return jnp.power(b, _eval(power, env))
    if kind == "f":
        fn = _FUNCTIONS[t[1]] or _special(t[1])
        return fn(_eval(t[2], env))
    if kind == "min":
        return jnp.minimum(*(_eval(c, env) for c in t[1:3]))
    if kind == "max":
        return jnp.maximum(*(_eval(c, env) for c in t[1:3]))
    if kind == "cmp":
        a, b = _eval(t[2], env), _eval(t[3], env)
        op = t[1]
        if op == "<":
            return jnp.less(a, b)
        if op == "<=":
            return jnp.less_equal(a, b)
        if op == ">":
            return jnp.greater(a, b)
        if op == ">=":
            return jnp.greater_equal(a, b)
        if op == "==":
            return jnp.equal(a, b)
        return jnp.not_equal(a, b)
    if kind == "and":
        out = _eval(t[1], env)
        for c in t[2:]:
            out = jnp.logical_and(out, _eval(c, env))
        return out
    if kind == "or":
        out = _eval(t[1], env)
        for c in t[2:]:
            out = jnp.logical_or(out, _eval(c, env))
        return out
    if kind == "not":
        return jnp.logical_not(_eval(t[1], env))
    if kind == "pw":
        # The first true condition wins (sympy's and NONMEM's IF/ELSE IF order): build from
        # the last branch backwards.
        branches = t[1]
        out = _eval(branches[-1][1], env)
        for cond, val in reversed(branches[:-1]):
            out = jnp.where(_eval(cond, env), _eval(val, env), out)
        return out
    raise NonmemTranslationError(f"unknown node {kind!r}")  # pragma: no cover


def translate(expr: Any, *, where: str, rename: Mapping[str, str] | None = None) -> Expr:
    """`expr` (a sympy expression) as an `Expr`; `where` names the statement in errors;
    `rename` maps sympy symbol names to the names `evaluate` will look up."""
    import sympy

    rename = dict(rename or {})

    def go(e: Any) -> tuple:
        if isinstance(e, sympy.Symbol):
            return ("v", rename.get(e.name, e.name))
        if e is sympy.true or e == sympy.true:
            return ("c", True)
        if e is sympy.false or e == sympy.false:
            return ("c", False)
        if isinstance(e, sympy.Number | sympy.NumberSymbol):
            if isinstance(e, sympy.Float | sympy.Integer | sympy.Rational | sympy.NumberSymbol):
                value = float(e)
                if not math.isfinite(value):
                    raise NonmemTranslationError(f"{where}: the constant {e} is not finite")
                return ("c", value)
            raise NonmemTranslationError(f"{where}: the number {e} ({type(e).__name__})")
        if isinstance(e, sympy.Add):
            return ("+", *(go(a) for a in e.args))
        if isinstance(e, sympy.Mul):
            return ("*", *(go(a) for a in e.args))
        if isinstance(e, sympy.Pow):
            return ("^", go(e.args[0]), go(e.args[1]))
        if isinstance(e, sympy.Piecewise):
            branches = tuple((go(c), go(v)) for v, c in e.args)  # pyright: ignore[reportGeneralTypeIssues]
            if branches[-1][0] != ("c", True):
                raise NonmemTranslationError(
                    f"{where}: an IF without ELSE whose value is used where no earlier value exists"
                )
            return ("pw", branches)
        if isinstance(e, sympy.Min | sympy.Max):
            args = [go(a) for a in e.args]
            op = "min" if isinstance(e, sympy.Min) else "max"
            out = args[0]
            for a in args[1:]:
                out = (op, out, a)
            return out
        name = type(e).__name__
        if name in _RELATIONS:
            return ("cmp", _RELATIONS[name], go(e.args[0]), go(e.args[1]))
        if isinstance(e, sympy.And):
            return ("and", *(go(a) for a in e.args))
        if isinstance(e, sympy.Or):
            return ("or", *(go(a) for a in e.args))
        if isinstance(e, sympy.Not):
            return ("not", go(e.args[0]))
        if isinstance(e, sympy.ITE):  # if-then-else of conditions (from folded IFs)
            return ("pw", ((go(e.args[0]), go(e.args[1])), (("c", True), go(e.args[2]))))
        if isinstance(e, sympy.Function) and name in _SYMPY_FUNCTIONS and len(e.args) == 1:
            return ("f", _SYMPY_FUNCTIONS[name], go(e.args[0]))
        raise NonmemTranslationError(
            f"{where}: cannot translate {name} ({e}); supported: numbers, variables, + - * / "
            "**, EXP, LOG, SQRT, ABS, MIN, MAX, trigonometric functions, IF/ELSE and "
            "comparisons"
        )

    return Expr(go(expr))
