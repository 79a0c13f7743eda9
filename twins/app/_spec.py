"""Trial specs in TOML: a file that describes a `Trial` and how to run it.

`load_trial("spec.toml")` reads the file (stdlib `tomllib`) and returns `(trial,
options)`: the `twins._trial.Trial` and the `RunOptions` of its `[run]` table, ready for
`run_trial(trial, options.out, n=options.n, seed=options.seed, ...)`.
`trial_from_dict(data)` does the same from a dict (what `tomllib` returns), for Python users.

The schema is documented in docs/howto-trial-spec.md. Everything in a spec is checked
before anything is simulated: unknown keys are refused (a typo must not pass silently),
and every error is a `SpecError` that names the file, the entry (`arms[1].rules[0].
nomogram.change`) and what was expected. A few patients are drawn at load time to check
that the drug, the initial-dose rules, the subgroups and the summary covariates find the
covariates they need.

The spec only *builds* a `Trial` from the engine's own classes (`DosingArm`, `Nomogram`,
the endpoints), so the same spec and seed give the same numbers as the same `Trial` built
in Python.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import itertools
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

import pkpd

from .. import drugs as _drugs
from .._population import Demographics, Population
from ..trials import (
    AUC,
    AnyAbove,
    Cmax,
    Ctrough,
    DosingArm,
    Endpoint,
    FinalLevel,
    MeanDose,
    Nomogram,
    TargetAttainment,
    TimeInRange,
    TimeToRange,
    Trial,
    TwinArm,
    _eupact,
    model_covariates,
)
from ..trials._run import DERIVED_SUBGROUPS, SEED_MAX

T = TypeVar("T")


#: The most dosing periods a spec may ask for (ten years of daily doses): the compiled
#: simulation holds every period of a chunk in memory, and `days = 1000000000` hung.
MAX_DAYS = 3650


class SpecError(ValueError):
    """A trial spec that cannot be built. The message names the file, the entry and what
    was expected."""


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How to run a trial: the `[run]` table of a spec.

    **Fields:**

    - `n`: virtual patients per arm (every patient receives every arm), >= 1.
    - `seed`: the seed (0 to 2**63 - 1); the same spec and seed give the same numbers.
    - `chunk_size`: patients simulated per jitted call (bounds memory; the results do not
      depend on it), >= 1.
    - `out`: the results folder, a subfolder of the spec's folder (relative to it; a spec
      may not name an absolute path or climb out with `..`); `None` when the spec does not
      say, and the caller chooses.
    - `trajectories`: also store every patient's output and dose in every period.
    """

    n: int = 1000
    seed: int = 0
    chunk_size: int = 10_000
    out: Path | None = None
    trajectories: bool = False


# ----------------------------------------------------------------------------- named rules


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
    ed = _eupact.iwpc_daily_dose(cov)
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
    "eupact_genotype": _eupact.genotype_initial,
    "eupact_control": _eupact.control_initial,
}

#: Named nomograms.
NOMOGRAMS: dict[str, Nomogram] = {"eupact": _eupact.NOMOGRAM}

#: Endpoint types: spec name -> class of `twins._trial`.
ENDPOINTS: dict[str, type[Endpoint]] = {
    "time_in_range": TimeInRange,
    "any_above": AnyAbove,
    "time_to_range": TimeToRange,
    "mean_dose": MeanDose,
    "final_level": FinalLevel,
    "auc": AUC,
    "cmax": Cmax,
    "ctrough": Ctrough,
    "target_attainment": TargetAttainment,
}

#: Whole trials by name (`preset = "eupact"`).
PRESETS: dict[str, Callable[[], Trial]] = {"eupact": _eupact.eupact_trial}

_SOURCES = ("measured", "true")
_SAMPLE_KEYS = (
    "ancestry",
    "age",
    "female_fraction",
    "genes",
    "allele_frequencies",
    "medications",
    "demographics",
)
_TOP_KEYS = (
    "name",
    "description",
    "drug",
    "days",
    "interval_h",
    "output",
    "reference_arm",
    "subgroups",
    "covariates",
    "solver_dt_h",
    "exposure_steps",
    "assumptions",
    "population",
    "arms",
    "endpoints",
    "bands",
    "published",
    "published_differences",
    "run",
)
_PROBE_PATIENTS = 8


# ----------------------------------------------------------------------------- reading values


def _kind(value: Any) -> str:
    """What a TOML value is, in words."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the float {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list | tuple):
        return f"an array of {len(value)}"
    if isinstance(value, Mapping):
        return "a table"
    return f"{type(value).__name__} {value!r}"


def _key(where: str, key: str) -> str:
    part = key if key.replace("_", "").isalnum() else f'"{key}"'
    return f"{where}.{part}" if where else part


class _Reader:
    """Reads one spec; knows where it came from, for error messages and relative paths."""

    def __init__(self, source: str, base_dir: Path):
        self.source = source
        self.base_dir = base_dir

    def error(self, where: str, message: str) -> SpecError:
        return SpecError(f"{self.source}: {where or 'top level'}: {message}")

    # --- generic values ----------------------------------------------------------------

    def table(
        self,
        value: Any,
        where: str,
        required: tuple[str, ...] = (),
        optional: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise self.error(where, f"expected a table, got {_kind(value)}.")
        allowed = tuple(dict.fromkeys((*required, *optional)))
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.error(
                    _key(where, str(key)),
                    f"unknown key{hint}; expected one of {sorted(allowed)}.",
                )
        for key in required:
            if key not in value:
                raise self.error(where, f"missing required key {key!r}.")
        return dict(value)

    def mapping(self, value: Any, where: str) -> dict[str, Any]:
        """A table with free keys (names of ancestries, medications, alleles)."""
        if not isinstance(value, Mapping):
            raise self.error(where, f"expected a table, got {_kind(value)}.")
        return {str(k): v for k, v in value.items()}

    def string(self, value: Any, where: str, choices: tuple[str, ...] | None = None) -> str:
        if not isinstance(value, str):
            raise self.error(where, f"expected a string, got {_kind(value)}.")
        if choices is not None and value not in choices:
            raise self.error(where, f"expected one of {list(choices)}, got {value!r}.")
        return value

    def word(self, value: Any, where: str) -> str:
        text = self.string(value, where)
        if not text or not text.replace("_", "").isalnum() or not text.isascii():
            raise self.error(where, f"expected a word of [A-Za-z0-9_], got {text!r}.")
        return text

    def number(
        self,
        value: Any,
        where: str,
        *,
        low: float | None = None,
        low_open: bool = False,
        high: float | None = None,
    ) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(where, f"expected a number, got {_kind(value)}.")
        x = float(value)
        if not math.isfinite(x):
            raise self.error(where, f"expected a finite number, got {value!r}.")
        if low is not None and (x <= low if low_open else x < low):
            raise self.error(
                where, f"expected a number {'>' if low_open else '>='} {low:g}, got {value!r}."
            )
        if high is not None and x > high:
            raise self.error(where, f"expected a number <= {high:g}, got {value!r}.")
        return x

    def integer(
        self, value: Any, where: str, *, low: int | None = None, high: int | None = None
    ) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(where, f"expected an integer, got {_kind(value)}.")
        if low is not None and value < low:
            raise self.error(where, f"expected an integer >= {low}, got {value}.")
        if high is not None and value > high:
            raise self.error(where, f"expected an integer <= {high}, got {value}.")
        return int(value)

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(where, f"expected true or false, got {_kind(value)}.")
        return value

    def array(
        self, value: Any, where: str, item: Callable[[Any, str], T], *, min_len: int = 0
    ) -> list[T]:
        if not isinstance(value, list | tuple):
            raise self.error(where, f"expected an array, got {_kind(value)}.")
        if len(value) < min_len:
            raise self.error(where, f"expected at least {min_len} entries, got {len(value)}.")
        return [item(v, f"{where}[{i}]") for i, v in enumerate(value)]

    def strings(self, value: Any, where: str) -> tuple[str, ...]:
        return tuple(self.array(value, where, self.string))

    def numbers(self, value: Any, where: str, **bounds: Any) -> tuple[float, ...]:
        return tuple(self.array(value, where, lambda v, w: self.number(v, w, **bounds)))

    def path(self, value: Any, where: str) -> Path:
        path = Path(self.string(value, where)).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def out_folder(self, value: Any, where: str) -> Path:
        """The results folder of `[run] out`: relative to the spec's folder, and inside it.
        A spec may not send results elsewhere (an absolute path, `~`, `..` or a link that
        leaves the folder); the user can, with `--out` on the command line."""
        text = self.string(value, where)
        path = Path(text)
        if not text.strip() or path.is_absolute() or text.startswith("~"):
            raise self.error(
                where,
                f"expected a folder relative to the spec's folder, got {text!r}; a spec may not "
                "write its results elsewhere (pass `--out` on the command line, or `out=` to "
                "run_trial, to choose any folder).",
            )
        base = self.base_dir.resolve()
        resolved = (base / path).resolve()
        if resolved == base or not resolved.is_relative_to(base):
            raise self.error(
                where,
                f"{text!r} leaves the spec's folder {str(base)!r} (it resolves to "
                f"{str(resolved)!r}); a spec may only write into a subfolder of its own folder "
                "(pass `--out` on the command line to choose any folder).",
            )
        return resolved

    # --- the spec ----------------------------------------------------------------------

    def spec(self, data: Any) -> tuple[Trial, RunOptions]:
        if isinstance(data, Mapping) and "preset" in data:
            extra = [k for k in data if k not in ("preset", "run")]
            if extra:
                raise self.error(
                    _key("", str(extra[0])),
                    "a spec with a preset may only have a [run] table besides; write the "
                    "trial out in full to change anything else.",
                )
            top = dict(data)
            name = self.string(top["preset"], "preset", tuple(PRESETS))
            trial = PRESETS[name]()
            options = self.run(top.get("run", {}), trial)
            return trial, options
        top = self.table(
            data, "", required=("name", "drug", "days", "arms", "endpoints"), optional=_TOP_KEYS
        )
        name = self.string(top["name"], "name")
        if not name.strip():
            raise self.error("name", "expected a non-empty name.")
        drug = self.drug(top["drug"])
        days = self.integer(top["days"], "days", low=1, high=MAX_DAYS)
        interval = drug.dosing.interval
        if "interval_h" in top:
            interval = self.number(top["interval_h"], "interval_h", low=0.0, low_open=True)
        output = self.output(top["output"], drug) if "output" in top else None
        population = self.population(top.get("population", {}))
        arms = self.arms(top["arms"], days)
        arm_names = [a.name for a in arms]
        endpoints = self.endpoints(top["endpoints"], days)
        endpoint_names = [e.name for e in endpoints]
        reference = None
        if "reference_arm" in top:
            reference = self.string(top["reference_arm"], "reference_arm", tuple(arm_names))
        kwargs: dict[str, Any] = {}
        if "subgroups" in top:
            kwargs["subgroups"] = self.strings(top["subgroups"], "subgroups")
        if "covariates" in top:
            kwargs["covariates"] = self.strings(top["covariates"], "covariates")
        if "solver_dt_h" in top:
            dt = self.number(top["solver_dt_h"], "solver_dt_h", low=0.0, low_open=True)
            kwargs["solver"] = pkpd.FixedStep(dt)
        if "exposure_steps" in top:
            kwargs["exposure_steps"] = self.integer(top["exposure_steps"], "exposure_steps", low=2)
        if "assumptions" in top:
            kwargs["assumptions"] = self.strings(top["assumptions"], "assumptions")
        if "description" in top:
            kwargs["description"] = self.string(top["description"], "description")
        if "bands" in top:
            kwargs["bands_edges"] = self.bands(top["bands"])
        if "published" in top:
            kwargs["published"] = self.published(top["published"], arm_names, endpoint_names)
        if "published_differences" in top:
            kwargs["published_differences"] = self.published_differences(
                top["published_differences"], arm_names, endpoint_names
            )
        try:
            trial = Trial(
                name=name,
                drug=drug,
                population=population,
                arms=tuple(arms),
                endpoints=tuple(endpoints),
                days=days,
                interval=float(interval),
                output=output,
                reference_arm=reference,
                **kwargs,
            )
        except (TypeError, ValueError) as error:
            raise self.error("", str(error)) from error
        options = self.run(top.get("run", {}), trial)
        self.probe(trial)
        return trial, options

    def drug(self, value: Any) -> _drugs.Drug:
        name = self.string(value, "drug")
        try:
            return _drugs.get(name)
        except KeyError as error:
            raise self.error(
                "drug", f"no drug {name!r} in twins.drugs; available: {list(_drugs.available())}."
            ) from error

    def output(self, value: Any, drug: _drugs.Drug) -> int:
        names = tuple(drug.model.model.output_names)
        if isinstance(value, str):
            return names.index(self.string(value, "output", names))
        index = self.integer(value, "output", low=0)
        if index >= len(names):
            raise self.error(
                "output", f"expected an index < {len(names)} (outputs {list(names)}), got {index}."
            )
        return index

    # --- population --------------------------------------------------------------------

    def population(self, value: Any) -> Population | Callable[..., Population]:
        where = "population"
        if isinstance(value, Mapping) and "csv" in value:
            table = self.table(value, where, required=("csv",), optional=("column_map",))
            return self.csv_population(table)
        table = self.table(value, where, optional=_SAMPLE_KEYS)
        kwargs: dict[str, Any] = {}
        if "ancestry" in table:
            v = table["ancestry"]
            w = _key(where, "ancestry")
            if isinstance(v, Mapping):
                kwargs["ancestry"] = {
                    k: self.number(x, _key(w, k), low=0.0) for k, x in self.mapping(v, w).items()
                }
            else:
                kwargs["ancestry"] = self.string(v, w)
        if "age" in table:
            age = self.numbers(table["age"], _key(where, "age"))
            if len(age) != 2:
                raise self.error(
                    _key(where, "age"), f"expected [low, high] in years, got {list(age)}."
                )
            kwargs["age"] = age
        if "female_fraction" in table:
            kwargs["female_fraction"] = self.number(
                table["female_fraction"], _key(where, "female_fraction"), low=0.0, high=1.0
            )
        if "genes" in table:
            kwargs["genes"] = self.strings(table["genes"], _key(where, "genes"))
        if "medications" in table:
            w = _key(where, "medications")
            meds = self.mapping(table["medications"], w)
            kwargs["medications"] = {
                k: self.number(x, _key(w, k), low=0.0, high=1.0) for k, x in meds.items()
            }
        if "allele_frequencies" in table:
            kwargs["allele_frequencies"] = self.allele_frequencies(table["allele_frequencies"])
        if "demographics" in table:
            kwargs["demographics"] = self.demographics(table["demographics"])
        sampler = functools.partial(Population.sample, **kwargs)
        try:
            sampler(1, key=0)
        except (TypeError, ValueError) as error:
            raise self.error(where, f"Population.sample refused these settings: {error}") from error
        return sampler

    def csv_population(self, table: dict[str, Any]) -> Population:
        import pandas as pd

        where = _key("population", "csv")
        path = self.path(table["csv"], where)
        if not path.is_file():
            raise self.error(where, f"no such file {str(path)!r}.")
        column_map = None
        if "column_map" in table:
            w = _key("population", "column_map")
            raw = self.mapping(table["column_map"], w)
            column_map = {k: self.string(v, _key(w, k)) for k, v in raw.items()}
        try:
            frame = pd.read_csv(path)
            return Population.from_dataframe(frame, column_map)
        except (TypeError, ValueError) as error:
            raise self.error(
                where, f"cannot read the patients of {str(path)!r}: {error}"
            ) from error

    def allele_frequencies(self, value: Any) -> dict[str, dict[str, dict[str, float]]]:
        where = _key("population", "allele_frequencies")
        out: dict[str, dict[str, dict[str, float]]] = {}
        for gene, by_ancestry in self.mapping(value, where).items():
            wg = _key(where, gene)
            out[gene] = {}
            for ancestry, alleles in self.mapping(by_ancestry, wg).items():
                wa = _key(wg, ancestry)
                out[gene][ancestry] = {
                    a: self.number(f, _key(wa, a), low=0.0, high=1.0)
                    for a, f in self.mapping(alleles, wa).items()
                }
        return out

    def demographics(self, value: Any) -> Demographics | dict[str, Demographics]:
        where = _key("population", "demographics")
        fields = tuple(f.name for f in dataclasses.fields(Demographics))
        if not isinstance(value, Mapping):
            raise self.error(where, f"expected a table, got {_kind(value)}.")
        if all(isinstance(v, Mapping) for v in value.values()) and value:
            # One table per ancestry.
            return {
                str(k): self.demographics_one(v, _key(where, str(k)), fields)
                for k, v in value.items()
            }
        return self.demographics_one(value, where, fields)

    def demographics_one(self, value: Any, where: str, fields: tuple[str, ...]) -> Demographics:
        table = self.table(value, where, optional=fields)
        values = {
            k: self.number(v, _key(where, k), low=0.0, low_open=True) for k, v in table.items()
        }
        return Demographics(**values)

    # --- arms --------------------------------------------------------------------------

    def arms(self, value: Any, days: int) -> list[DosingArm]:
        arms = self.array(value, "arms", lambda v, w: self.arm(v, w, days), min_len=1)
        seen: dict[str, int] = {}
        for i, arm in enumerate(arms):
            if arm.name in seen:
                raise self.error(
                    f"arms[{i}].name",
                    f"arm names must be unique; {arm.name!r} is also arms[{seen[arm.name]}].",
                )
            seen[arm.name] = i
        return arms

    def arm(self, value: Any, where: str, days: int) -> DosingArm:
        table = self.table(
            value,
            where,
            required=("name", "initial"),
            optional=("label", "description", "visits", "dose_step", "rules", "twin"),
        )
        name = self.word(table["name"], _key(where, "name"))
        label = self.string(table.get("label", name), _key(where, "label"))
        description = self.string(table.get("description", ""), _key(where, "description"))
        visits: tuple[int, ...] = ()
        if "visits" in table:
            w = _key(where, "visits")
            visits = tuple(self.array(table["visits"], w, lambda v, ww: self.integer(v, ww, low=1)))
            if list(visits) != sorted(set(visits)):
                raise self.error(w, f"expected strictly increasing days, got {list(visits)}.")
            late = [v for v in visits if v > days + 1]
            if late:
                raise self.error(
                    w,
                    f"visits on days {late} fall after the end of the trial (days = {days}: the "
                    f"last visit can be day {days + 1}, the morning after the last period).",
                )
        dose_step = 0.5
        if "dose_step" in table:
            dose_step = self.number(
                table["dose_step"], _key(where, "dose_step"), low=0.0, low_open=True
            )
        initial = self.initial(table["initial"], _key(where, "initial"))
        rules = ()
        if "rules" in table:
            rules = tuple(
                self.array(
                    table["rules"], _key(where, "rules"), lambda v, w: self.rule(v, w, visits)
                )
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
                    raise self.error(
                        _key(where, "twin"), "a twin-guided arm sets its own doses: no rules."
                    )
                return TwinArm(**common, **self.twin(table["twin"], _key(where, "twin"), visits))
            return DosingArm(**common, rules=rules)
        except (TypeError, ValueError) as error:
            if isinstance(error, SpecError):
                raise
            raise self.error(where, str(error)) from error

    def twin(self, value: Any, where: str, visits: tuple[int, ...]) -> dict[str, Any]:
        """`twin = { target = "INR", recommend_on = [4, 8], n_draws = 200 }`."""
        table = self.table(value, where, optional=("target", "recommend_on", "n_draws"))
        out: dict[str, Any] = {}
        if "target" in table:
            out["target"] = self.string(table["target"], _key(where, "target"))
        if "recommend_on" in table:
            w = _key(where, "recommend_on")
            days = tuple(self.array(table["recommend_on"], w, lambda v, ww: self.integer(v, ww)))
            missing = [d for d in days if d not in visits]
            if missing:
                raise self.error(w, f"days {missing} are not visit days {list(visits)}.")
            out["recommend_on"] = days
        if "n_draws" in table:
            out["n_draws"] = self.integer(table["n_draws"], _key(where, "n_draws"), low=50)
        return out

    def initial(self, value: Any, where: str) -> Callable:
        if isinstance(value, Mapping) and "rule" in value:
            rule = self.string(value["rule"], _key(where, "rule"))
            if rule not in INITIAL_RULES:
                raise self.error(
                    _key(where, "rule"),
                    f"unknown initial-dose rule {rule!r}; expected one of {sorted(INITIAL_RULES)}, "
                    "or fixed doses { loading = [...], maintenance = ... } without 'rule'.",
                )
            required, optional = INITIAL_RULES[rule]
            table = self.table(value, where, required=("rule", *required), optional=optional)
            if rule in _NAMED_INITIAL:
                return _NAMED_INITIAL[rule]
            loading = ()
            if "loading_mg_per_kg" in table:
                loading = self.numbers(
                    table["loading_mg_per_kg"], _key(where, "loading_mg_per_kg"), low=0.0
                )
            caps = {
                k: self.number(table[k], _key(where, k), low=0.0, low_open=True)
                for k in ("max_mg", "max_loading_mg")
                if k in table
            }
            amount = self.number(
                table["amount_mg_per_kg"], _key(where, "amount_mg_per_kg"), low=0.0, low_open=True
            )
            return PerKg(amount, loading, **caps)
        table = self.table(value, where, required=("maintenance",), optional=("loading",))
        maintenance = self.number(
            table["maintenance"], _key(where, "maintenance"), low=0.0, low_open=True
        )
        loading = ()
        if "loading" in table:
            loading = self.numbers(table["loading"], _key(where, "loading"), low=0.0)
        return FixedDoses(maintenance, loading)

    def rule(
        self, value: Any, where: str, visits: tuple[int, ...]
    ) -> tuple[tuple[int, ...], Nomogram]:
        table = self.table(value, where, required=("days", "nomogram"))
        w = _key(where, "days")
        days = tuple(
            self.array(table["days"], w, lambda v, ww: self.integer(v, ww, low=1), min_len=1)
        )
        missing = sorted(set(days) - set(visits))
        if missing:
            raise self.error(
                w, f"days {missing} are not visit days of the arm (visits {list(visits)})."
            )
        return days, self.nomogram(table["nomogram"], _key(where, "nomogram"))

    def nomogram(self, value: Any, where: str) -> Nomogram:
        if isinstance(value, str):
            return NOMOGRAMS[self.string(value, where, tuple(NOMOGRAMS))]
        table = self.table(
            value, where, required=("bounds", "change", "hold"), optional=("reference",)
        )
        wb = _key(where, "bounds")
        bounds = self.numbers(table["bounds"], wb)
        if not bounds or any(b1 <= b0 for b0, b1 in itertools.pairwise(bounds)):
            raise self.error(wb, f"expected strictly increasing cut points, got {list(bounds)}.")
        bands = len(bounds) + 1
        wc = _key(where, "change")
        change = self.numbers(table["change"], wc, low=-1.0, low_open=True)
        if len(change) != bands:
            raise self.error(
                wc,
                f"expected {bands} fractional changes (one per band: len(bounds) + 1), got "
                f"{len(change)}.",
            )
        wh = _key(where, "hold")
        hold = tuple(self.array(table["hold"], wh, lambda v, ww: self.integer(v, ww, low=0)))
        if len(hold) != bands:
            raise self.error(
                wh, f"expected {bands} numbers of doses withheld (one per band), got {len(hold)}."
            )
        reference = self.string(table.get("reference", ""), _key(where, "reference"))
        try:
            return Nomogram(bounds, change, hold, reference)
        except (TypeError, ValueError) as error:
            raise self.error(where, str(error)) from error

    # --- endpoints ---------------------------------------------------------------------

    def endpoints(self, value: Any, days: int) -> list[Endpoint]:
        endpoints = self.array(
            value, "endpoints", lambda v, w: self.endpoint(v, w, days), min_len=1
        )
        seen: dict[str, int] = {}
        for i, e in enumerate(endpoints):
            if e.name in seen:
                raise self.error(
                    f"endpoints[{i}].name",
                    f"endpoint names must be unique; {e.name!r} is also endpoints[{seen[e.name]}].",
                )
            seen[e.name] = i
        return endpoints

    def endpoint(self, value: Any, where: str, days: int) -> Endpoint:
        if not isinstance(value, Mapping):
            raise self.error(where, f"expected a table, got {_kind(value)}.")
        if "type" not in value:
            raise self.error(where, f"missing required key 'type' (one of {sorted(ENDPOINTS)}).")
        kind = self.string(value["type"], _key(where, "type"))
        if kind not in ENDPOINTS:
            raise self.error(
                _key(where, "type"),
                f"unknown endpoint type {kind!r}; expected one of {sorted(ENDPOINTS)}.",
            )
        cls = ENDPOINTS[kind]
        params = tuple(
            f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("name", "label")
        )
        table = self.table(value, where, required=("type", "name"), optional=("label", *params))
        name = self.word(table["name"], _key(where, "name"))
        kwargs: dict[str, Any] = {
            "name": name,
            "label": self.string(table.get("label", name), _key(where, "label")),
        }
        for key in params:
            if key not in table:
                continue
            w = _key(where, key)
            if key == "source":
                kwargs[key] = self.string(table[key], w, _SOURCES)
            elif key == "metric":
                kwargs[key] = self.string(table[key], w, ("auc", "cmax", "trough"))
            elif key == "days":
                kwargs[key] = self.integer(table[key], w, low=1)
                if kwargs[key] > days:
                    raise self.error(
                        w, f"expected at most the trial's {days} periods, got {kwargs[key]}."
                    )
            else:
                kwargs[key] = self.number(table[key], w)
        try:
            probe = cls(**kwargs)
        except ValueError as error:
            raise self.error(where, str(error)) from error
        low, high = getattr(probe, "low", None), getattr(probe, "high", None)
        if low is not None and high is not None and not low < high:
            raise self.error(where, f"expected low < high, got low = {low:g} and high = {high:g}.")
        return probe

    # --- the rest ----------------------------------------------------------------------

    def bands(self, value: Any) -> tuple[float, ...]:
        where = "bands"
        table = self.table(value, where, required=("low", "high"), optional=("bins", "scale"))
        scale = self.string(table.get("scale", "log"), _key(where, "scale"), ("log", "linear"))
        low = self.number(table["low"], _key(where, "low"), low=0.0, low_open=scale == "log")
        high = self.number(table["high"], _key(where, "high"))
        if not high > low:
            raise self.error(_key(where, "high"), f"expected high > low = {low:g}, got {high:g}.")
        bins = self.integer(table.get("bins", 400), _key(where, "bins"), low=1)
        edges = (
            np.geomspace(low, high, bins + 1)
            if scale == "log"
            else np.linspace(low, high, bins + 1)
        )
        return tuple(edges.tolist())

    def published(self, value: Any, arms: list[str], endpoints: list[str]) -> dict[str, Any]:
        where = "published"
        table = self.table(value, where, optional=("source", "notes", *arms))
        out: dict[str, Any] = {}
        for key, v in table.items():
            w = _key(where, key)
            if key in ("source", "notes"):
                out[key] = self.string(v, w)
            else:
                figures = self.table(v, w, optional=tuple(endpoints))
                out[key] = {e: self.number(x, _key(w, e)) for e, x in figures.items()}
        return out

    def published_differences(
        self, value: Any, arms: list[str], endpoints: list[str]
    ) -> dict[str, Any]:
        where = "published_differences"
        table = self.table(value, where, optional=tuple(arms))
        out: dict[str, Any] = {}
        for arm, v in table.items():
            w = _key(where, arm)
            figures = self.table(v, w, optional=tuple(endpoints))
            out[arm] = {}
            for e, x in figures.items():
                we = _key(w, e)
                entry = self.table(x, we, required=("estimate",), optional=("ci_low", "ci_high"))
                out[arm][e] = {k: self.number(y, _key(we, k)) for k, y in entry.items()}
        return out

    def run(self, value: Any, trial: Trial) -> RunOptions:
        where = "run"
        table = self.table(
            value, where, optional=tuple(f.name for f in dataclasses.fields(RunOptions))
        )
        defaults = RunOptions()
        n = self.integer(table.get("n", defaults.n), _key(where, "n"), low=1)
        if isinstance(trial.population, Population) and n > len(trial.population):
            raise self.error(
                _key(where, "n"),
                f"the population file has {len(trial.population)} patients; n must not exceed it, "
                f"got {n}.",
            )
        return RunOptions(
            n=n,
            seed=self.integer(
                table.get("seed", defaults.seed), _key(where, "seed"), low=0, high=SEED_MAX
            ),
            chunk_size=self.integer(
                table.get("chunk_size", defaults.chunk_size), _key(where, "chunk_size"), low=1
            ),
            out=self.out_folder(table["out"], _key(where, "out")) if "out" in table else None,
            trajectories=self.boolean(
                table.get("trajectories", defaults.trajectories), _key(where, "trajectories")
            ),
        )

    def probe(self, trial: Trial) -> None:
        """Draw a few patients and check that everything finds the covariates it needs."""
        if isinstance(trial.population, Population):
            pop = trial.population[np.arange(min(_PROBE_PATIENTS, len(trial.population)))]
        else:
            pop = trial.population(_PROBE_PATIENTS, key=0)
        cov = pop.covariates()
        cov["ANCESTRY"] = pop.to_dataframe()["ancestry"].to_numpy(dtype=object)
        try:
            model_covariates(trial.drug, cov)
        except (KeyError, TypeError, ValueError) as error:
            raise self.error(
                "drug",
                f"{trial.drug.name} cannot find its covariates in the population: {error}",
            ) from error
        for i, arm in enumerate(trial.arms):
            try:
                arm.start(cov)
            except (KeyError, TypeError, ValueError) as error:
                detail = (
                    f"missing covariate {error} (the population has {sorted(cov)})"
                    if isinstance(error, KeyError)
                    else str(error)
                )
                raise self.error(
                    f"arms[{i}].initial", f"the initial doses cannot be computed: {detail}."
                ) from error
        known = sorted(set(cov) | set(DERIVED_SUBGROUPS))
        for i, group in enumerate(trial.subgroups):
            need = {"age_group": "AGE", "renal_function": "CRCL"}.get(group)
            if group not in known or (need is not None and need not in cov):
                raise self.error(
                    f"subgroups[{i}]",
                    f"unknown subgroup {group!r} for this population; expected one of {known}.",
                )
        numeric = sorted(k for k, v in cov.items() if np.asarray(v).dtype.kind == "f")
        for i, name in enumerate(trial.covariates):
            if name not in numeric:
                raise self.error(
                    f"covariates[{i}]",
                    f"unknown numeric covariate {name!r} for this population; expected one of "
                    f"{numeric}.",
                )


# ----------------------------------------------------------------------------- entry points


def trial_from_dict(
    data: Mapping[str, Any],
    *,
    base_dir: str | os.PathLike[str] | None = None,
    source: str = "<dict>",
) -> tuple[Trial, RunOptions]:
    """Build a trial and its run options from a spec given as a dict.

    **Arguments:**

    - `data`: the spec, as `tomllib` returns it (docs/howto-trial-spec.md).
    - `base_dir`: the folder that relative paths (`population.csv`, `run.out`) are relative
      to; default the current directory.
    - `source`: what to call the spec in error messages.

    **Returns:** `(trial, options)`: a `twins._trial.Trial` and the `RunOptions`.

    **Raises:** `SpecError` naming `source`, the entry and what was expected.
    """
    base = Path.cwd() if base_dir is None else Path(base_dir)
    return _Reader(source, base).spec(data)


def load_trial(path_or_text: str | os.PathLike[str]) -> tuple[Trial, RunOptions]:
    """Read a trial spec from a TOML file (or TOML text) and build the trial.

    **Arguments:**

    - `path_or_text`: a path to a `.toml` file, or the TOML text itself (a string that
      holds a newline or an `=` and is not an existing file). Relative paths inside a file
      are relative to the file's folder; inside text, to the current directory.

    **Returns:** `(trial, options)`: a `twins._trial.Trial` and the `RunOptions` of the
    `[run]` table, for `run_trial(trial, options.out, n=options.n, seed=options.seed,
    chunk_size=options.chunk_size, trajectories=options.trajectories)`.

    **Raises:** `SpecError` naming the file, the entry (`arms[1].rules[0].nomogram.change`)
    and what was expected; `FileNotFoundError` for a path that does not exist.
    """
    text: str
    if isinstance(path_or_text, os.PathLike) or not _looks_like_text(path_or_text):
        path = Path(path_or_text)
        if not path.is_file():
            raise FileNotFoundError(f"load_trial: no trial spec file {str(path)!r}.")
        text, source, base = path.read_text(encoding="utf-8"), str(path), path.resolve().parent
    else:
        text, source, base = path_or_text, "<text>", Path.cwd()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{source}: not valid TOML: {error}.") from error
    return _Reader(source, base).spec(data)


def _looks_like_text(value: str) -> bool:
    if not isinstance(value, str):
        raise TypeError(f"load_trial: expected a path or TOML text, got {type(value).__name__}.")
    if "\n" in value:
        return True
    return "=" in value and not Path(value).is_file()


__all__ = [
    "ENDPOINTS",
    "INITIAL_RULES",
    "NOMOGRAMS",
    "PRESETS",
    "FixedDoses",
    "PerKg",
    "RunOptions",
    "SpecError",
    "iwpc_2009_initial",
    "load_trial",
    "trial_from_dict",
]
