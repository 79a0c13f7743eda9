"""The arms of a trial spec: dosing arms, twin-guided arms and their dosing rules.

`read_arms` reads the `[[arms]]` of a spec into `DosingArm`s and `TwinArm`s: the initial
doses (fixed, per kg, or a named rule: `INITIAL_RULES`), the visit days, and the dose
rules at visits (a named nomogram, `NOMOGRAMS`, or one written out). Errors are
`SpecError`s naming the entry (`arms[1].rules[0].nomogram.change`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..trials import DosingArm, Nomogram, TwinArm
from ..trials._coag import (
    GAGE_2008_CLINICAL,
    GAGE_2008_PHARMACOGENETIC,
    LENZINI_2010_CLINICAL,
    LENZINI_2010_PHARMACOGENETIC,
    RevisionArm,
)
from ..trials._eupact import NOMOGRAM, control_initial, genotype_initial, iwpc_daily_dose
from ._toml import SpecError, TomlReader, key_path


@dataclasses.dataclass(frozen=True)
class FixedDoses:
    """Initial doses that are the same for every patient: `loading` (mg, one per period of
    the first `len(loading)` periods), then `maintenance` (mg per period)."""

    maintenance: float
    loading: tuple[float, ...] = ()

    def __call__(self, cov: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        n = len(cov["ID"])
        loading = np.broadcast_to(np.asarray(self.loading, dtype=float), (n, len(self.loading)))
        return loading.copy(), np.full(n, float(self.maintenance))


@dataclasses.dataclass(frozen=True)
class PerKg:
    """Weight-based initial doses (mg; WT, total body weight, in kg): loading doses
    `loading_mg_per_kg[i] * WT`, each capped at `max_loading_mg`, then `amount_mg_per_kg * WT`
    every period, capped at `max_mg` (no cap where `None`)."""

    amount_mg_per_kg: float
    loading_mg_per_kg: tuple[float, ...] = ()
    max_mg: float | None = None
    max_loading_mg: float | None = None

    def __call__(self, cov: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        wt = np.asarray(cov["WT"], dtype=float)
        cap = math.inf if self.max_mg is None else float(self.max_mg)
        cap_loading = math.inf if self.max_loading_mg is None else float(self.max_loading_mg)
        per_kg = np.asarray(self.loading_mg_per_kg, dtype=float)
        loading = np.minimum(wt[:, None] * per_kg[None, :], cap_loading)
        return loading, np.minimum(self.amount_mg_per_kg * wt, cap)


def iwpc_2009_initial(cov: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """No loading dose; the IWPC 2009 pharmacogenetic warfarin dose / 7 every day (mg).

    References: International Warfarin Pharmacogenetics Consortium. Estimation of the
    warfarin dose with clinical and pharmacogenetic data. N Engl J Med 2009;360(8):753-764.
    """
    ed = iwpc_daily_dose(cov)
    return np.zeros((ed.size, 0)), ed


#: Named initial-dose rules: name -> (parameters: required, optional).
INITIAL_RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "iwpc_2009": ((), ()),
    "eupact_genotype": ((), ()),
    "eupact_control": ((), ()),
    "per_kg": (("amount_mg_per_kg",), ("loading_mg_per_kg", "max_mg", "max_loading_mg")),
}

_NAMED_INITIAL: dict[str, Callable[[Mapping[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]] = {
    "iwpc_2009": iwpc_2009_initial,
    "eupact_genotype": genotype_initial,
    "eupact_control": control_initial,
}

#: Named nomograms.
NOMOGRAMS: dict[str, Nomogram] = {"eupact": NOMOGRAM}

#: Initiation algorithms of an arm with a `revision` (`RevisionArm`, COAG): name -> coefficients.
INITIATION_RULES: dict[str, Mapping[str, float]] = {
    "gage_2008_pharmacogenetic": GAGE_2008_PHARMACOGENETIC,
    "gage_2008_clinical": GAGE_2008_CLINICAL,
}

#: Revision algorithms (`revision = { rule = ..., days = [4, 5] }`): name -> coefficients.
REVISION_RULES: dict[str, Mapping[str, float]] = {
    "lenzini_2010_pharmacogenetic": LENZINI_2010_PHARMACOGENETIC,
    "lenzini_2010_clinical": LENZINI_2010_CLINICAL,
}


def read_arms(r: TomlReader, value: Any, days: int) -> list[DosingArm]:
    """The `arms` array of a spec with `days` dosing periods: one arm per entry, names
    unique."""
    arms = r.array(value, "arms", lambda v, w: _arm(r, v, w, days), min_len=1)
    seen: dict[str, int] = {}
    for i, arm in enumerate(arms):
        if arm.name in seen:
            raise r.error(
                f"arms[{i}].name",
                f"arm names must be unique; {arm.name!r} is also arms[{seen[arm.name]}].",
            )
        seen[arm.name] = i
    return arms


def _arm(r: TomlReader, value: Any, where: str, days: int) -> DosingArm:
    table = r.table(
        value,
        where,
        required=("name", "initial"),
        optional=("label", "description", "visits", "dose_step", "rules", "twin", "revision"),
    )
    name = r.word(table["name"], key_path(where, "name"))
    label = r.string(table.get("label", name), key_path(where, "label"))
    description = r.string(table.get("description", ""), key_path(where, "description"))
    visits: tuple[int, ...] = ()
    if "visits" in table:
        w = key_path(where, "visits")
        visits = tuple(r.array(table["visits"], w, lambda v, ww: r.integer(v, ww, low=1)))
        if list(visits) != sorted(set(visits)):
            raise r.error(w, f"expected strictly increasing days, got {list(visits)}.")
        late = [v for v in visits if v > days + 1]
        if late:
            raise r.error(
                w,
                f"visits on days {late} fall after the end of the trial (days = {days}: the "
                f"last visit can be day {days + 1}, the morning after the last period).",
            )
    dose_step = 0.5
    if "dose_step" in table:
        dose_step = r.number(
            table["dose_step"], key_path(where, "dose_step"), low=0.0, low_open=True
        )
    if "revision" in table:
        return _revision_arm(r, table, where, name, label, description, visits, dose_step)
    initial = _initial(r, table["initial"], key_path(where, "initial"))
    rules = ()
    if "rules" in table:
        rules = tuple(
            r.array(table["rules"], key_path(where, "rules"), lambda v, w: _rule(r, v, w, visits))
        )
    common = {
        "name": name,
        "label": label,
        "description": description,
        "initial": initial,
        "visits": visits,
        "dose_step": dose_step,
    }
    try:
        if "twin" in table:
            if rules:
                raise r.error(
                    key_path(where, "twin"), "a twin-guided arm sets its own doses: no rules."
                )
            return TwinArm(**common, **_twin(r, table["twin"], key_path(where, "twin"), visits))
        return DosingArm(**common, rules=rules)
    except (TypeError, ValueError) as error:
        if isinstance(error, SpecError):
            raise
        raise r.error(where, str(error)) from error


def _revision_arm(
    r: TomlReader,
    table: Mapping[str, Any],
    where: str,
    name: str,
    label: str,
    description: str,
    visits: tuple[int, ...],
    dose_step: float,
) -> RevisionArm:
    """An arm with an initiation and a revision algorithm (`RevisionArm`, COAG's arms):
    `initial = { rule = "gage_2008_pharmacogenetic" }` and `revision = { rule =
    "lenzini_2010_pharmacogenetic", days = [4, 5] }`, then nomogram `rules` as usual."""
    if "twin" in table:
        raise r.error(key_path(where, "twin"), "an arm with a revision algorithm has no twin.")
    wi = key_path(where, "initial")
    init = r.table(table["initial"], wi, required=("rule",))
    initiation = INITIATION_RULES[
        r.string(init["rule"], key_path(wi, "rule"), tuple(INITIATION_RULES))
    ]
    wr = key_path(where, "revision")
    rev = r.table(table["revision"], wr, required=("rule", "days"))
    revision = REVISION_RULES[r.string(rev["rule"], key_path(wr, "rule"), tuple(REVISION_RULES))]
    wd = key_path(wr, "days")
    days = tuple(r.array(rev["days"], wd, lambda v, ww: r.integer(v, ww, low=2), min_len=1))
    missing = sorted(set(days) - set(visits))
    if missing:
        raise r.error(wd, f"days {missing} are not visit days of the arm (visits {list(visits)}).")
    rules = ()
    if "rules" in table:
        rules = tuple(
            r.array(table["rules"], key_path(where, "rules"), lambda v, w: _rule(r, v, w, visits))
        )
    try:
        return RevisionArm(
            name=name,
            label=label,
            description=description,
            initiation=initiation,
            revision=revision,
            visits=visits,
            revision_days=days,
            rules=rules,
            dose_step=dose_step,
        )
    except (TypeError, ValueError) as error:
        raise r.error(where, str(error)) from error


def _twin(r: TomlReader, value: Any, where: str, visits: tuple[int, ...]) -> dict[str, Any]:
    """`twin = { target = "INR", recommend_on = [4, 8], n_draws = 200 }`."""
    table = r.table(value, where, optional=("target", "recommend_on", "n_draws"))
    out: dict[str, Any] = {}
    if "target" in table:
        out["target"] = r.string(table["target"], key_path(where, "target"))
    if "recommend_on" in table:
        w = key_path(where, "recommend_on")
        days = tuple(r.array(table["recommend_on"], w, lambda v, ww: r.integer(v, ww)))
        missing = [d for d in days if d not in visits]
        if missing:
            raise r.error(w, f"days {missing} are not visit days {list(visits)}.")
        out["recommend_on"] = days
    if "n_draws" in table:
        out["n_draws"] = r.integer(table["n_draws"], key_path(where, "n_draws"), low=50)
    return out


def _initial(r: TomlReader, value: Any, where: str) -> Callable:
    if isinstance(value, Mapping) and "rule" in value:
        rule = r.string(value["rule"], key_path(where, "rule"))
        if rule not in INITIAL_RULES:
            raise r.error(
                key_path(where, "rule"),
                f"unknown initial-dose rule {rule!r}; expected one of {sorted(INITIAL_RULES)}, "
                "or fixed doses { loading = [...], maintenance = ... } without 'rule'.",
            )
        required, optional = INITIAL_RULES[rule]
        table = r.table(value, where, required=("rule", *required), optional=optional)
        if rule in _NAMED_INITIAL:
            return _NAMED_INITIAL[rule]
        loading = ()
        if "loading_mg_per_kg" in table:
            loading = r.numbers(
                table["loading_mg_per_kg"], key_path(where, "loading_mg_per_kg"), low=0.0
            )
        caps = {
            k: r.number(table[k], key_path(where, k), low=0.0, low_open=True)
            for k in ("max_mg", "max_loading_mg")
            if k in table
        }
        amount = r.number(
            table["amount_mg_per_kg"], key_path(where, "amount_mg_per_kg"), low=0.0, low_open=True
        )
        return PerKg(amount, loading, **caps)
    table = r.table(value, where, required=("maintenance",), optional=("loading",))
    maintenance = r.number(
        table["maintenance"], key_path(where, "maintenance"), low=0.0, low_open=True
    )
    loading = ()
    if "loading" in table:
        loading = r.numbers(table["loading"], key_path(where, "loading"), low=0.0)
    return FixedDoses(maintenance, loading)


def _rule(
    r: TomlReader, value: Any, where: str, visits: tuple[int, ...]
) -> tuple[tuple[int, ...], Nomogram]:
    table = r.table(value, where, required=("days", "nomogram"))
    w = key_path(where, "days")
    days = tuple(r.array(table["days"], w, lambda v, ww: r.integer(v, ww, low=1), min_len=1))
    missing = sorted(set(days) - set(visits))
    if missing:
        raise r.error(w, f"days {missing} are not visit days of the arm (visits {list(visits)}).")
    return days, _nomogram(r, table["nomogram"], key_path(where, "nomogram"))


def _nomogram(r: TomlReader, value: Any, where: str) -> Nomogram:
    if isinstance(value, str):
        return NOMOGRAMS[r.string(value, where, tuple(NOMOGRAMS))]
    table = r.table(value, where, required=("bounds", "change", "hold"), optional=("reference",))
    wb = key_path(where, "bounds")
    bounds = r.numbers(table["bounds"], wb)
    if not bounds or any(b1 <= b0 for b0, b1 in itertools.pairwise(bounds)):
        raise r.error(wb, f"expected strictly increasing cut points, got {list(bounds)}.")
    bands = len(bounds) + 1
    wc = key_path(where, "change")
    change = r.numbers(table["change"], wc, low=-1.0, low_open=True)
    if len(change) != bands:
        raise r.error(
            wc,
            f"expected {bands} fractional changes (one per band: len(bounds) + 1), got "
            f"{len(change)}.",
        )
    wh = key_path(where, "hold")
    hold = tuple(r.array(table["hold"], wh, lambda v, ww: r.integer(v, ww, low=0)))
    if len(hold) != bands:
        raise r.error(
            wh, f"expected {bands} numbers of doses withheld (one per band), got {len(hold)}."
        )
    reference = r.string(table.get("reference", ""), key_path(where, "reference"))
    try:
        return Nomogram(bounds, change, hold, reference)
    except (TypeError, ValueError) as error:
        raise r.error(where, str(error)) from error
