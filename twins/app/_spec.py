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
import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

import pkpd

from .. import drugs as _drugs
from .._plausibility import reason_problem, unusual_name_problem
from .._population import Demographics, Population
from ..trials import (
    AUC,
    IOV,
    Adherence,
    AnyAbove,
    Cmax,
    Ctrough,
    DoseTiming,
    Dropout,
    Dropped,
    Endpoint,
    EventRisk,
    FinalLevel,
    Holidays,
    MeanDose,
    OrnsteinUhlenbeck,
    TargetAttainment,
    TimeInRange,
    TimeToRange,
    Trial,
    Variability,
    Visits,
    coag_trial,
    eupact_trial,
)
from ..trials._coag import Race, WindowTimeInRange, coag_population
from ..trials._endpoints import READINGS, metric_from_reading
from ..trials._run import MAX_FAILED_FRACTION, SEED_MAX
from ._spec_arms import INITIAL_RULES as INITIAL_RULES
from ._spec_arms import NOMOGRAMS as NOMOGRAMS
from ._spec_arms import FixedDoses as FixedDoses
from ._spec_arms import PerKg as PerKg
from ._spec_arms import iwpc_2009_initial as iwpc_2009_initial
from ._spec_arms import read_arms
from ._spec_probe import probe_trial
from ._toml import SpecError as SpecError
from ._toml import TomlReader, key_path, kind_of, read_document

#: The most dosing periods a spec may ask for (ten years of daily doses): the compiled
#: simulation holds every period of a chunk in memory, and `days = 1000000000` hung.
MAX_DAYS = 3650


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
    - `max_failed_fraction`: the largest fraction of an arm's patients that may fail to
      simulate (outside the model's domain, non-finite, raising) before the run stops with
      `TooManyFailuresError`, 0 to 1 (`run_trial(max_failed_fraction=...)`; default
      `twins.trials.MAX_FAILED_FRACTION`, 0.05). It does not change the numbers (nor the
      spec hash), so a stopped run resumes with a larger value.
    """

    n: int = 1000
    seed: int = 0
    chunk_size: int = 10_000
    out: Path | None = None
    trajectories: bool = False
    max_failed_fraction: float = MAX_FAILED_FRACTION


# ----------------------------------------------------------------------------- the schema

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
    "dropped": Dropped,
    "event_risk": EventRisk,
    "window_time_in_range": WindowTimeInRange,
}

#: Subgroups a spec names that are not `twins.trials.NAMED_SUBGROUPS` (COAG's race).
SPEC_SUBGROUPS: dict[str, Any] = {"race": Race()}

#: Population samplers other than `Population.sample` (`[population] sampler = "coag"`):
#: name -> (sampler, its keyword arguments a spec may give).
SAMPLERS: dict[str, tuple[Callable[..., Population], tuple[str, ...]]] = {
    "coag": (coag_population, ("black_fraction", "age")),
}

#: Whole trials by name (`preset = "eupact"`).
PRESETS: dict[str, Callable[[], Trial]] = {"eupact": eupact_trial, "coag": coag_trial}

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
    "adherence",
    "variability",
    "dropout",
    "visits",
    "run",
)
#: What a spec with a preset may have besides (the patients' behaviour over the trial).
_PRESET_KEYS = ("preset", "run", "adherence", "variability", "dropout", "visits")


def _read_spec(r: TomlReader, data: Any) -> tuple[Trial, RunOptions]:
    if isinstance(data, Mapping) and data.get("domain") == "t1d":
        # A type 1 diabetes trial (meals, boluses, CGM) has its own runner, twins.t1d.
        raise r.error(
            "domain",
            "a type 1 diabetes trial spec (domain = 't1d') runs with `twins trial SPEC.toml` "
            "(twins.app.read_t1d_spec and twins.t1d.run_trial), not with the drug trial engine.",
        )
    if isinstance(data, Mapping) and "preset" in data:
        extra = [k for k in data if k not in _PRESET_KEYS]
        if extra:
            raise r.error(
                key_path("", str(extra[0])),
                "a spec with a preset may only have [run], [adherence], [variability], "
                "[dropout] and [visits] tables besides; write the trial out in full to change "
                "anything else.",
            )
        top = dict(data)
        name = r.string(top["preset"], "preset", tuple(PRESETS))
        trial = PRESETS[name]()
        behaviour = _behaviour(r, top)
        if behaviour:
            try:
                trial = dataclasses.replace(trial, **behaviour)
            except (TypeError, ValueError) as error:
                raise r.error("", str(error)) from error
        options = _run_options(r, top.get("run", {}), trial)
        return trial, options
    top = r.table(
        data, "", required=("name", "drug", "days", "arms", "endpoints"), optional=_TOP_KEYS
    )
    name = r.string(top["name"], "name")
    if not name.strip():
        raise r.error("name", "expected a non-empty name.")
    drug = _drug(r, top["drug"])
    days = r.integer(top["days"], "days", low=1, high=MAX_DAYS)
    interval = drug.dosing.interval
    if "interval_h" in top:
        interval = r.number(top["interval_h"], "interval_h", low=0.0, low_open=True)
    output = _output(r, top["output"], drug) if "output" in top else None
    population = _population(r, top.get("population", {}))
    arms = read_arms(r, top["arms"], days)
    arm_names = [a.name for a in arms]
    endpoints = _endpoints(r, top["endpoints"], days)
    endpoint_names = [e.name for e in endpoints]
    reference = None
    if "reference_arm" in top:
        reference = r.string(top["reference_arm"], "reference_arm", tuple(arm_names))
    kwargs: dict[str, Any] = {}
    if "subgroups" in top:
        names = r.strings(top["subgroups"], "subgroups")
        kwargs["subgroups"] = tuple(SPEC_SUBGROUPS.get(g, g) for g in names)
    if "covariates" in top:
        kwargs["covariates"] = r.strings(top["covariates"], "covariates")
    if "solver_dt_h" in top:
        dt = r.number(top["solver_dt_h"], "solver_dt_h", low=0.0, low_open=True)
        kwargs["solver"] = pkpd.FixedStep(dt)
    if "exposure_steps" in top:
        kwargs["exposure_steps"] = r.integer(top["exposure_steps"], "exposure_steps", low=2)
    if "assumptions" in top:
        kwargs["assumptions"] = r.strings(top["assumptions"], "assumptions")
    if "description" in top:
        kwargs["description"] = r.string(top["description"], "description")
    if "bands" in top:
        kwargs.update(_bands(r, top["bands"]))
    if "published" in top:
        kwargs["published"] = _published(r, top["published"], arm_names, endpoint_names)
    if "published_differences" in top:
        kwargs["published_differences"] = _published_differences(
            r, top["published_differences"], arm_names, endpoint_names
        )
    kwargs.update(_behaviour(r, top))
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
        raise r.error("", str(error)) from error
    options = _run_options(r, top.get("run", {}), trial)
    probe_trial(r, trial)
    return trial, options


def _behaviour(r: TomlReader, top: Mapping[str, Any]) -> dict[str, Any]:
    """The `adherence` and `variability` keyword arguments of `Trial` from the spec's
    `[adherence]` and `[variability]` tables (absent tables: nothing)."""
    out: dict[str, Any] = {}
    if "adherence" in top:
        out["adherence"] = _adherence(r, top["adherence"])
    if "variability" in top:
        out["variability"] = _variability(r, top["variability"])
    if "dropout" in top:
        out["dropout"] = _dropout(r, top["dropout"])
    if "visits" in top:
        out["visits"] = _visits(r, top["visits"])
    return out


def _visits(r: TomlReader, value: Any) -> Visits:
    """`[visits]`: `slip_sd_days` and `slip_max_days` (slips), `p_missed` (missed visits),
    `fixed_days` (days that neither slip nor are missed; default [1]), `reference`."""
    t = r.table(
        value,
        "visits",
        optional=("slip_sd_days", "slip_max_days", "p_missed", "fixed_days", "reference"),
    )
    slip = [k for k in ("slip_sd_days", "slip_max_days") if k in t]
    if len(slip) == 1:
        missing = "slip_max_days" if slip == ["slip_sd_days"] else "slip_sd_days"
        raise r.error(
            f"visits.{missing}",
            "slips need both slip_sd_days (the SD of the discretised normal, days) and "
            "slip_max_days (the largest slip either way, whole days).",
        )
    fixed = (1,)
    if "fixed_days" in t:
        fixed = tuple(
            r.array(t["fixed_days"], "visits.fixed_days", lambda v, w: r.integer(v, w, low=1))
        )
    if not slip and "p_missed" not in t:
        raise r.error("visits", "expected slip_sd_days and slip_max_days, or p_missed, or both.")
    p_missed = 0.0
    if "p_missed" in t:
        p_missed = r.number(t["p_missed"], "visits.p_missed", low=0.0)
        if not p_missed < 1.0:
            raise r.error("visits.p_missed", f"expected a probability < 1, got {p_missed!r}.")
    return Visits(
        r.number(t["slip_sd_days"], "visits.slip_sd_days", low=0.0) if slip else 0.0,
        r.integer(t["slip_max_days"], "visits.slip_max_days", low=0) if slip else 0,
        p_missed,
        fixed,
        r.string(t["reference"], "visits.reference") if "reference" in t else "",
    )


def _timing(r: TomlReader, value: Any) -> DoseTiming:
    """`[adherence.timing]`: `sd_h`, `max_h`, optional `due_h` and `reference`."""
    w = "adherence.timing"
    t = r.table(value, w, ("sd_h", "max_h"), ("due_h", "reference"))
    sd = r.number(t["sd_h"], f"{w}.sd_h", low=0.0)
    top = r.number(t["max_h"], f"{w}.max_h", low=0.0)
    due = r.number(t["due_h"], f"{w}.due_h", low=0.0) if "due_h" in t else None
    try:
        return DoseTiming(sd, top, due, r.string(t["reference"], f"{w}.reference")
                          if "reference" in t else "")  # fmt: skip
    except ValueError as error:
        raise r.error(f"{w}.due_h", str(error)) from None


def _holidays(r: TomlReader, value: Any) -> Holidays:
    """`[adherence.holidays]`: `p_start`, `periods`, optional `reference`."""
    w = "adherence.holidays"
    t = r.table(value, w, ("p_start", "periods"), ("reference",))
    p = r.number(t["p_start"], f"{w}.p_start", low=0.0)
    if not p < 1.0:
        raise r.error(f"{w}.p_start", f"expected a probability < 1, got {p!r}.")
    return Holidays(
        p,
        r.integer(t["periods"], f"{w}.periods", low=1),
        r.string(t["reference"], f"{w}.reference") if "reference" in t else "",
    )


def _dropout(r: TomlReader, value: Any) -> Dropout:
    """`[dropout]`: `rate_per_year` (random), `above` and `p_after_above` (informative),
    `reference`."""
    t = r.table(value, "dropout", optional=("rate_per_year", "above", "p_after_above", "reference"))
    if not any(k in t for k in ("rate_per_year", "above")):
        raise r.error("dropout", "expected rate_per_year (random) or above (informative), or both.")
    return Dropout(
        r.number(t["rate_per_year"], "dropout.rate_per_year", low=0.0)
        if "rate_per_year" in t
        else 0.0,
        r.number(t["above"], "dropout.above") if "above" in t else None,
        r.number(t["p_after_above"], "dropout.p_after_above", low=0.0, high=1.0)
        if "p_after_above" in t
        else 1.0,
        r.string(t["reference"], "dropout.reference") if "reference" in t else "",
    )


def _adherence(r: TomlReader, value: Any) -> Adherence:
    """`[adherence]`: `p_miss_after_taken` and `p_take_after_missed` (the two-state Markov
    model), or `p_taken` alone (independent doses); `reference` optional; `[adherence.timing]`
    (dose-timing jitter) and `[adherence.holidays]` (drug holidays), each optional (with
    either, the chain's keys may be left out: every dose then taken but for the holidays)."""
    where = "adherence"
    t = r.table(
        value,
        where,
        optional=(
            "p_miss_after_taken",
            "p_take_after_missed",
            "p_taken",
            "reference",
            "timing",
            "holidays",
        ),
    )
    extra: dict[str, Any] = {}
    if "timing" in t:
        extra["timing"] = _timing(r, t["timing"])
    if "holidays" in t:
        extra["holidays"] = _holidays(r, t["holidays"])
    chain = _chain(r, t)
    return dataclasses.replace(chain, **extra) if extra else chain


def _chain(r: TomlReader, t: Mapping[str, Any]) -> Adherence:
    """The chain of `[adherence]` (`_adherence`); every dose taken when neither the chain's
    keys nor `p_taken` are given beside `timing` or `holidays`."""
    where = "adherence"
    reference = r.string(t["reference"], "adherence.reference") if "reference" in t else ""
    markov = [k for k in ("p_miss_after_taken", "p_take_after_missed") if k in t]
    if not markov and "p_taken" not in t and ("timing" in t or "holidays" in t):
        return Adherence(reference=reference)
    if "p_taken" in t:
        if markov:
            raise r.error(
                where,
                f"give either p_taken (independent doses) or p_miss_after_taken and "
                f"p_take_after_missed (a Markov chain), not both (got p_taken and {markov}).",
            )
        p = r.number(t["p_taken"], "adherence.p_taken", low=0.0, low_open=True, high=1.0)
        return Adherence.independent(p, reference)
    if len(markov) != 2:
        missing = [k for k in ("p_miss_after_taken", "p_take_after_missed") if k not in t]
        raise r.error(
            where,
            f"missing {missing}: give p_miss_after_taken and p_take_after_missed (a Markov "
            "chain), or p_taken (independent doses).",
        )
    a = r.number(t["p_miss_after_taken"], "adherence.p_miss_after_taken", low=0.0, high=1.0)
    b = r.number(t["p_take_after_missed"], "adherence.p_take_after_missed", low=0.0, high=1.0)
    try:
        return Adherence(a, b, reference)
    except ValueError as error:
        raise r.error(where, str(error)) from None


def _variability(r: TomlReader, value: Any) -> Variability:
    """`[variability]`: `[[variability.iov]]` (`parameter`, `sd`, optional `every_days`:
    occasions by time window, else by visit; `reference`) and `[[variability.ou]]`
    (`parameter`, `sd`, `correlation_days`, `reference`)."""
    t = r.table(value, "variability", optional=("iov", "ou"))
    terms: list[Any] = []

    def iov(v: Any, where: str) -> IOV:
        e = r.table(v, where, ("parameter", "sd"), ("every_days", "reference"))
        every = None
        if "every_days" in e:
            every = r.number(e["every_days"], key_path(where, "every_days"), low=0.0, low_open=True)
        return IOV(
            r.string(e["parameter"], key_path(where, "parameter")),
            r.number(e["sd"], key_path(where, "sd"), low=0.0),
            every,
            r.string(e["reference"], key_path(where, "reference")) if "reference" in e else "",
        )

    def ou(v: Any, where: str) -> OrnsteinUhlenbeck:
        e = r.table(v, where, ("parameter", "sd", "correlation_days"), ("reference",))
        return OrnsteinUhlenbeck(
            r.string(e["parameter"], key_path(where, "parameter")),
            r.number(e["sd"], key_path(where, "sd"), low=0.0),
            r.number(
                e["correlation_days"], key_path(where, "correlation_days"), low=0.0, low_open=True
            ),
            r.string(e["reference"], key_path(where, "reference")) if "reference" in e else "",
        )

    if "iov" in t:
        terms += r.array(t["iov"], "variability.iov", iov)
    if "ou" in t:
        terms += r.array(t["ou"], "variability.ou", ou)
    if not terms:
        raise r.error("variability", "expected at least one [[variability.iov]] or "
                      "[[variability.ou]] entry.")  # fmt: skip
    return Variability(tuple(terms))


def _drug(r: TomlReader, value: Any) -> _drugs.Drug:
    name = r.string(value, "drug")
    try:
        return _drugs.get(name)
    except KeyError as error:
        raise r.error(
            "drug", f"no drug {name!r} in twins.drugs; available: {list(_drugs.available())}."
        ) from error


def _output(r: TomlReader, value: Any, drug: _drugs.Drug) -> int:
    names = tuple(drug.model.model.output_names)
    if isinstance(value, str):
        return names.index(r.string(value, "output", names))
    index = r.integer(value, "output", low=0)
    if index >= len(names):
        raise r.error(
            "output", f"expected an index < {len(names)} (outputs {list(names)}), got {index}."
        )
    return index


def _population(r: TomlReader, value: Any) -> Population | Callable[..., Population]:
    where = "population"
    if isinstance(value, Mapping) and "csv" in value:
        table = r.table(value, where, required=("csv",), optional=("column_map", "unusual"))
        return _csv_population(r, table)
    if isinstance(value, Mapping) and "unusual" in value:
        raise r.error(
            key_path(where, "unusual"),
            "unusual lifts plausibility ranges for patients read from a file (`csv = ...`); "
            "sampled patients are always within the plausibility ranges, so there is nothing "
            "to lift.",
        )
    if isinstance(value, Mapping) and "sampler" in value:
        return _named_sampler(r, value)
    table = r.table(value, where, optional=_SAMPLE_KEYS)
    kwargs: dict[str, Any] = {}
    if "ancestry" in table:
        v = table["ancestry"]
        w = key_path(where, "ancestry")
        if isinstance(v, Mapping):
            kwargs["ancestry"] = {
                k: r.number(x, key_path(w, k), low=0.0) for k, x in r.mapping(v, w).items()
            }
        else:
            kwargs["ancestry"] = r.string(v, w)
    if "age" in table:
        age = r.numbers(table["age"], key_path(where, "age"))
        if len(age) != 2:
            raise r.error(
                key_path(where, "age"), f"expected [low, high] in years, got {list(age)}."
            )
        kwargs["age"] = age
    if "female_fraction" in table:
        kwargs["female_fraction"] = r.number(
            table["female_fraction"], key_path(where, "female_fraction"), low=0.0, high=1.0
        )
    if "genes" in table:
        kwargs["genes"] = r.strings(table["genes"], key_path(where, "genes"))
    if "medications" in table:
        w = key_path(where, "medications")
        meds = r.mapping(table["medications"], w)
        kwargs["medications"] = {
            k: r.number(x, key_path(w, k), low=0.0, high=1.0) for k, x in meds.items()
        }
    if "allele_frequencies" in table:
        kwargs["allele_frequencies"] = _allele_frequencies(r, table["allele_frequencies"])
    if "demographics" in table:
        kwargs["demographics"] = _demographics(r, table["demographics"])
    sampler = functools.partial(Population.sample, **kwargs)
    try:
        sampler(1, key=0)
    except (TypeError, ValueError) as error:
        raise r.error(where, f"Population.sample refused these settings: {error}") from error
    return sampler


def _named_sampler(r: TomlReader, value: Mapping[str, Any]) -> Callable[..., Population]:
    """`[population] sampler = "coag"` with that sampler's keyword arguments (`SAMPLERS`)."""
    where = "population"
    name = r.string(value["sampler"], key_path(where, "sampler"), tuple(SAMPLERS))
    func, allowed = SAMPLERS[name]
    table = r.table(value, where, required=("sampler",), optional=allowed)
    kwargs: dict[str, Any] = {}
    for key in allowed:
        if key not in table:
            continue
        w = key_path(where, key)
        if key == "age":
            age = r.numbers(table[key], w)
            if len(age) != 2:
                raise r.error(w, f"expected [low, high] in years, got {list(age)}.")
            kwargs[key] = age
        else:
            kwargs[key] = r.number(table[key], w, low=0.0, high=1.0)
    sampler = functools.partial(func, **kwargs)
    try:
        sampler(1, key=0)
    except (TypeError, ValueError) as error:
        raise r.error(where, f"the {name!r} sampler refused these settings: {error}") from error
    return sampler


def _csv_population(r: TomlReader, table: dict[str, Any]) -> Population:
    import pandas as pd

    where = key_path("population", "csv")
    path = r.path(table["csv"], where)
    if not path.is_file():
        raise r.error(where, f"no such file {str(path)!r}.")
    column_map = None
    if "column_map" in table:
        w = key_path("population", "column_map")
        raw = r.mapping(table["column_map"], w)
        column_map = {k: r.string(v, key_path(w, k)) for k, v in raw.items()}
    unusual = _unusual(r, table["unusual"]) if "unusual" in table else None
    try:
        frame = pd.read_csv(path)
        return Population.from_dataframe(frame, column_map, unusual=unusual)
    except (TypeError, ValueError) as error:
        raise r.error(where, f"cannot read the patients of {str(path)!r}: {error}") from error


def _unusual(r: TomlReader, value: Any) -> dict[str, str]:
    """`[population] unusual = { weight = "NICU cohort" }`: field -> reason."""
    where = key_path("population", "unusual")
    out: dict[str, str] = {}
    for name, reason in r.mapping(value, where).items():
        w = key_path(where, name)
        problem = unusual_name_problem(name)
        if problem is not None:
            raise r.error(w, f"{problem}.")
        text = r.string(reason, w)
        problem = reason_problem(text)
        if problem is not None:
            raise r.error(w, f"{problem}.")
        out[name] = text
    return out


def _allele_frequencies(r: TomlReader, value: Any) -> dict[str, dict[str, dict[str, float]]]:
    where = key_path("population", "allele_frequencies")
    out: dict[str, dict[str, dict[str, float]]] = {}
    for gene, by_ancestry in r.mapping(value, where).items():
        wg = key_path(where, gene)
        out[gene] = {}
        for ancestry, alleles in r.mapping(by_ancestry, wg).items():
            wa = key_path(wg, ancestry)
            out[gene][ancestry] = {
                a: r.number(f, key_path(wa, a), low=0.0, high=1.0)
                for a, f in r.mapping(alleles, wa).items()
            }
    return out


def _demographics(r: TomlReader, value: Any) -> Demographics | dict[str, Demographics]:
    where = key_path("population", "demographics")
    fields = tuple(f.name for f in dataclasses.fields(Demographics))
    if not isinstance(value, Mapping):
        raise r.error(where, f"expected a table, got {kind_of(value)}.")
    if all(isinstance(v, Mapping) for v in value.values()) and value:
        # One table per ancestry.
        return {
            str(k): _demographics_one(r, v, key_path(where, str(k)), fields)
            for k, v in value.items()
        }
    return _demographics_one(r, value, where, fields)


def _demographics_one(
    r: TomlReader, value: Any, where: str, fields: tuple[str, ...]
) -> Demographics:
    table = r.table(value, where, optional=fields)
    values = {k: r.number(v, key_path(where, k), low=0.0, low_open=True) for k, v in table.items()}
    return Demographics(**values)


def _endpoints(r: TomlReader, value: Any, days: int) -> list[Endpoint]:
    endpoints = r.array(value, "endpoints", lambda v, w: _endpoint(r, v, w, days), min_len=1)
    seen: dict[str, int] = {}
    for i, e in enumerate(endpoints):
        if e.name in seen:
            raise r.error(
                f"endpoints[{i}].name",
                f"endpoint names must be unique; {e.name!r} is also endpoints[{seen[e.name]}].",
            )
        seen[e.name] = i
    return endpoints


def _endpoint(r: TomlReader, value: Any, where: str, days: int) -> Endpoint:
    if not isinstance(value, Mapping):
        raise r.error(where, f"expected a table, got {kind_of(value)}.")
    if "type" not in value:
        raise r.error(where, f"missing required key 'type' (one of {sorted(ENDPOINTS)}).")
    kind = r.string(value["type"], key_path(where, "type"))
    if kind not in ENDPOINTS:
        raise r.error(
            key_path(where, "type"),
            f"unknown endpoint type {kind!r}; expected one of {sorted(ENDPOINTS)}.",
        )
    cls = ENDPOINTS[kind]
    params = tuple(
        f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("name", "label")
    )
    table = r.table(value, where, required=("type", "name"), optional=("label", *params))
    name = r.word(table["name"], key_path(where, "name"))
    kwargs: dict[str, Any] = {
        "name": name,
        "label": r.string(table.get("label", name), key_path(where, "label")),
    }
    for key in params:
        if key not in table:
            continue
        w = key_path(where, key)
        if key == "source":
            kwargs[key] = r.string(table[key], w, _SOURCES)
        elif key == "metric":
            kwargs[key] = r.string(table[key], w, READINGS)
        elif key in ("bounds", "rates"):
            kwargs[key] = r.numbers(table[key], w)
        elif key == "reference":
            kwargs[key] = r.string(table[key], w)
        elif key == "consecutive":
            kwargs[key] = r.integer(table[key], w, low=1)
        elif key == "days":
            kwargs[key] = r.integer(table[key], w, low=1)
            if kwargs[key] > days:
                raise r.error(w, f"expected at most the trial's {days} periods, got {kwargs[key]}.")
        else:
            kwargs[key] = r.number(table[key], w)
    if "metric" in kwargs:  # a spec names it; the endpoint takes the twins.drugs type
        kwargs["metric"], kwargs["hours"] = metric_from_reading(
            kwargs["metric"], kwargs.get("hours")
        )
    try:
        probe = cls(**kwargs)
    except ValueError as error:
        raise r.error(where, str(error)) from error
    fields = {f.name: getattr(probe, f.name) for f in dataclasses.fields(probe)}
    low, high = fields.get("low"), fields.get("high")
    if low is not None and high is not None and not low < high:
        raise r.error(where, f"expected low < high, got low = {low:g} and high = {high:g}.")
    return probe


def _bands(r: TomlReader, value: Any) -> dict[str, Any]:
    """`[bands]`: the histogram's edges (`low` and `high` together, `bins`, `scale`) and
    `points_per_period` (`Trial.band_points`), each optional."""
    where = "bands"
    table = r.table(value, where, optional=("low", "high", "bins", "scale", "points_per_period"))
    out: dict[str, Any] = {}
    if "points_per_period" in table:
        out["band_points"] = r.integer(
            table["points_per_period"], key_path(where, "points_per_period"), low=1
        )
    edge_keys = [k for k in ("low", "high", "bins", "scale") if k in table]
    if not edge_keys:
        return out
    for k in ("low", "high"):
        if k not in table:
            raise r.error(
                key_path(where, k), f"missing: give low and high with {', '.join(edge_keys)}."
            )
    scale = r.string(table.get("scale", "log"), key_path(where, "scale"), ("log", "linear"))
    low = r.number(table["low"], key_path(where, "low"), low=0.0, low_open=scale == "log")
    high = r.number(table["high"], key_path(where, "high"))
    if not high > low:
        raise r.error(key_path(where, "high"), f"expected high > low = {low:g}, got {high:g}.")
    bins = r.integer(table.get("bins", 400), key_path(where, "bins"), low=1)
    edges = (
        np.geomspace(low, high, bins + 1) if scale == "log" else np.linspace(low, high, bins + 1)
    )
    out["bands_edges"] = tuple(edges.tolist())
    return out


def _published(r: TomlReader, value: Any, arms: list[str], endpoints: list[str]) -> dict[str, Any]:
    where = "published"
    table = r.table(value, where, optional=("source", "notes", *arms))
    out: dict[str, Any] = {}
    for key, v in table.items():
        w = key_path(where, key)
        if key in ("source", "notes"):
            out[key] = r.string(v, w)
        else:
            figures = r.table(v, w, optional=tuple(endpoints))
            out[key] = {e: r.number(x, key_path(w, e)) for e, x in figures.items()}
    return out


def _published_differences(
    r: TomlReader, value: Any, arms: list[str], endpoints: list[str]
) -> dict[str, Any]:
    where = "published_differences"
    table = r.table(value, where, optional=tuple(arms))
    out: dict[str, Any] = {}
    for arm, v in table.items():
        w = key_path(where, arm)
        figures = r.table(v, w, optional=tuple(endpoints))
        out[arm] = {}
        for e, x in figures.items():
            we = key_path(w, e)
            entry = r.table(x, we, required=("estimate",), optional=("ci_low", "ci_high"))
            out[arm][e] = {k: r.number(y, key_path(we, k)) for k, y in entry.items()}
    return out


def _run_options(r: TomlReader, value: Any, trial: Trial) -> RunOptions:
    where = "run"
    table = r.table(value, where, optional=tuple(f.name for f in dataclasses.fields(RunOptions)))
    defaults = RunOptions()
    n = r.integer(table.get("n", defaults.n), key_path(where, "n"), low=1)
    if isinstance(trial.population, Population) and n > len(trial.population):
        raise r.error(
            key_path(where, "n"),
            f"the population file has {len(trial.population)} patients; n must not exceed it, "
            f"got {n}.",
        )
    return RunOptions(
        n=n,
        seed=r.integer(
            table.get("seed", defaults.seed), key_path(where, "seed"), low=0, high=SEED_MAX
        ),
        chunk_size=r.integer(
            table.get("chunk_size", defaults.chunk_size), key_path(where, "chunk_size"), low=1
        ),
        out=r.out_folder(table["out"], key_path(where, "out")) if "out" in table else None,
        trajectories=r.boolean(
            table.get("trajectories", defaults.trajectories), key_path(where, "trajectories")
        ),
        max_failed_fraction=r.number(
            table.get("max_failed_fraction", defaults.max_failed_fraction),
            key_path(where, "max_failed_fraction"),
            low=0.0,
            high=1.0,
        ),
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
    return _read_spec(TomlReader(source, base), data)


def load_trial(path_or_text: str | os.PathLike[str]) -> tuple[Trial, RunOptions]:
    """Read a trial spec from a TOML file (or TOML text) and build the trial.

    **Arguments:**

    - `path_or_text`: a path to a `.toml` file, or the TOML text itself (a string that
      holds a newline or an `=` and is not an existing file). Relative paths inside a file
      are relative to the file's folder; inside text, to the current directory.

    **Returns:** `(trial, options)`: a `twins._trial.Trial` and the `RunOptions` of the
    `[run]` table, for `run_trial(trial, options.out, n=options.n, seed=options.seed,
    chunk_size=options.chunk_size, trajectories=options.trajectories,
    max_failed_fraction=options.max_failed_fraction)`.

    **Raises:** `SpecError` naming the file, the entry (`arms[1].rules[0].nomogram.change`)
    and what was expected; `FileNotFoundError` for a path that does not exist.
    """
    data, source, base = read_document(path_or_text, "load_trial")
    return _read_spec(TomlReader(source, base), data)


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
