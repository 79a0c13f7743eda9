"""Type 1 diabetes trial specs (TOML, `domain = "t1d"`): `read_t1d_spec` and
`t1d_trial_from_dict` build a `twins.t1d.T1DTrial` with the conventions of the drug trial
specs (`TomlReader`: an unknown key refused with the closest known one, every error a
`SpecError` naming the file and the entry, `[run] out` inside the spec's folder);
`twins trial SPEC.toml` runs it with `twins.t1d.run_trial` (docs/t1d.md)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..t1d import MealPlan, Optimisation, T1DArm, T1DTrial, load_patients
from ..t1d._trial import POLICIES
from ._toml import SpecError, TomlReader, key_path, read_document

_TOP = (
    "name",
    "description",
    "domain",
    "reference_arm",
    "run_in_days",
    "patients",
    "meals",
    "arms",
    "run",
)


def t1d_trial_from_dict(
    data: Mapping[str, Any],
    *,
    base_dir: str | os.PathLike[str] | None = None,
    source: str = "<dict>",
) -> tuple[T1DTrial, Path | None]:
    """Build a `T1DTrial` from a spec given as a dict (what `tomllib` returns).

    **Returns:** `(trial, out)`: `out` the `[run] out` folder (inside the spec's folder),
    or `None`. **Raises:** `twins.app.SpecError` naming `source`, the entry and what was
    expected.
    """
    r = TomlReader(source, Path.cwd() if base_dir is None else Path(base_dir))
    top = r.table(data, "", required=("name", "domain", "arms"), optional=_TOP)
    r.string(top["domain"], "domain", ("t1d",))
    name = r.string(top["name"], "name")
    if not name.strip():
        raise r.error("name", "expected a non-empty name.")
    kwargs: dict[str, Any] = {"name": name}
    if "description" in top:
        kwargs["description"] = r.string(top["description"], "description")
    pt = r.table(
        top.get("patients", {}),
        "patients",
        optional=("names", "groups", "sampled_per_patient", "sampled_sd", "include_nominal"),
    )
    table = load_patients()
    if "names" in pt and "groups" in pt:
        raise r.error("patients", "give names or groups, not both.")
    if "names" in pt:
        names = r.strings(pt["names"], key_path("patients", "names"))
        for i, nm in enumerate(names):
            if nm not in table:
                raise r.error(
                    f"patients.names[{i}]",
                    f"no patient {nm!r}; expected names like adult#001 ({len(table)} patients: "
                    "adolescent#001-#010, adult#001-#010, child#001-#010).",
                )
        kwargs["patients"] = names
    if "groups" in pt:
        groups = r.strings(pt["groups"], key_path("patients", "groups"))
        for i, g in enumerate(groups):
            r.string(g, f"patients.groups[{i}]", ("adolescent", "adult", "child"))
        kwargs["patients"] = tuple(nm for nm, p in table.items() if p.group in groups)
    if "sampled_per_patient" in pt:
        kwargs["sampled_per_patient"] = r.integer(
            pt["sampled_per_patient"], "patients.sampled_per_patient", low=0, high=1000
        )
    if "sampled_sd" in pt:
        kwargs["sampled_sd"] = r.number(pt["sampled_sd"], "patients.sampled_sd", low=0.0, high=2.0)
    if "include_nominal" in pt:
        kwargs["include_nominal"] = r.boolean(pt["include_nominal"], "patients.include_nominal")
    ml = r.table(top.get("meals", {}), "meals", optional=("days", "times", "mean", "sd"))
    if "days" in ml:
        kwargs["days"] = r.integer(ml["days"], "meals.days", low=1, high=365)
    for key, field in (("times", "meal_times"), ("mean", "meal_mean"), ("sd", "meal_sd")):
        if key in ml:
            kwargs[field] = r.numbers(ml[key], f"meals.{key}", low=0.0)
    lengths = {
        k: len(kwargs.get(f, ()))
        for k, f in (("times", "meal_times"), ("mean", "meal_mean"), ("sd", "meal_sd"))
    }
    given = {k: v for k, v in lengths.items() if k in ml}
    if given and len(set(given.values())) > 1:
        raise r.error("meals", f"expected as many times, means and sds, got {given}.")
    if "times" in ml:
        for key in ("mean", "sd"):
            if key not in ml and len(kwargs["meal_times"]) != 3:
                raise r.error(
                    f"meals.{key}",
                    f"expected one {key} per meal time ({len(kwargs['meal_times'])}).",
                )
    if "run_in_days" in top:
        kwargs["run_in_days"] = r.integer(top["run_in_days"], "run_in_days", low=0)
    arms = r.array(
        top["arms"],
        "arms",
        lambda v, w: _arm(r, v, w, len(kwargs.get("meal_times", (1, 2, 3)))),
        min_len=1,
    )
    kwargs["arms"] = tuple(arms)
    names = [a.name for a in arms]
    for i, a in enumerate(arms):
        if names.index(a.name) != i:
            raise r.error(
                f"arms[{i}].name",
                f"arm names must be unique; {a.name!r} is also arms[{names.index(a.name)}].",
            )
    if "reference_arm" in top:
        kwargs["reference_arm"] = r.string(top["reference_arm"], "reference_arm", tuple(names))
    run = r.table(top.get("run", {}), "run", optional=("seed", "out"))
    if "seed" in run:
        kwargs["seed"] = r.integer(run["seed"], "run.seed", low=0, high=2**31 - 1)
    out = r.out_folder(run["out"], "run.out") if "out" in run else None
    try:
        trial = T1DTrial(**kwargs)
        MealPlan(times=trial.meal_times, carbs=np.zeros((1, len(trial.meal_times))))
    except ValueError as error:
        raise r.error("", str(error)) from error
    return trial, out


def _arm(r, value: Any, where: str, n_meals: int) -> T1DArm:
    if not isinstance(value, Mapping):
        raise r.error(where, "expected a table.")
    t = r.table(
        value, where, required=("name", "policy"),
        optional=("label", "theta", "optimise", "prior_sd"),
    )  # fmt: skip
    name = r.word(t["name"], key_path(where, "name"))
    policy = r.string(t["policy"], key_path(where, "policy"), POLICIES)
    kwargs: dict[str, Any] = {"name": name, "policy": policy, "label": name}
    if "label" in t:
        kwargs["label"] = r.string(t["label"], key_path(where, "label"))
    for key, allowed in (
        ("theta", ("parametrised",)),
        ("optimise", ("parametrised",)),
        ("prior_sd", ("twin_guided",)),
    ):
        if key in t and policy not in allowed:
            raise r.error(
                key_path(where, key), f"only for policy {' or '.join(allowed)}, not {policy!r}."
            )
    if "theta" in t:
        w = key_path(where, "theta")
        th = r.table(t["theta"], w, optional=("log_meal", "log_correction", "log_basal"))
        theta: dict[str, Any] = {}
        if "log_meal" in th:
            vals = r.numbers(th["log_meal"], key_path(w, "log_meal"))
            if len(vals) != n_meals:
                raise r.error(
                    key_path(w, "log_meal"),
                    f"expected one value per meal ({n_meals}), got {len(vals)}.",
                )
            theta["log_meal"] = vals
        for k in ("log_correction", "log_basal"):
            if k in th:
                theta[k] = r.number(th[k], key_path(w, k))
        kwargs["theta"] = theta
    if "optimise" in t:
        w = key_path(where, "optimise")
        o = r.table(
            t["optimise"], w, optional=tuple(f.name for f in dataclasses.fields(Optimisation))
        )
        ok: dict[str, Any] = {}
        if "steps" in o:
            ok["steps"] = r.integer(o["steps"], key_path(w, "steps"), low=0, high=10_000)
        if "learning_rate" in o:
            ok["learning_rate"] = r.number(
                o["learning_rate"], key_path(w, "learning_rate"), low=0.0, low_open=True
            )
        if "days" in o:
            ok["days"] = r.integer(o["days"], key_path(w, "days"), low=1, high=60)
        if "test_per_group" in o:
            ok["test_per_group"] = r.integer(
                o["test_per_group"], key_path(w, "test_per_group"), low=1, high=9
            )
        if "tbr_weight" in o:
            ok["tbr_weight"] = r.number(o["tbr_weight"], key_path(w, "tbr_weight"), low=0.0)
        kwargs["optimise"] = Optimisation(**ok)
    if "prior_sd" in t:
        kwargs["prior_sd"] = r.number(
            t["prior_sd"], key_path(where, "prior_sd"), low=0.0, low_open=True, high=3.0
        )
    return T1DArm(**kwargs)


def read_t1d_spec(path_or_text: str | os.PathLike[str]) -> tuple[T1DTrial, Path | None]:
    """Read a T1D trial spec from a TOML file (or TOML text); `t1d_trial_from_dict`'s result.

    Relative paths (`[run] out`) are relative to the file's folder. **Raises:**
    `twins.app.SpecError` naming the file, the entry and what was expected;
    `FileNotFoundError` for a file that does not exist.
    """
    data, source, base = read_document(path_or_text, "read_t1d_spec")
    return t1d_trial_from_dict(data, base_dir=base, source=source)


def run_t1d_spec(spec: Path, out: Path | None = None) -> int:
    """`twins trial SPEC.toml` for a T1D spec: read it, run it with `twins.t1d.run_trial`,
    print each arm's time in range and below 70 mg/dL with their 95% intervals. Returns the
    exit code (2: the spec is refused, with the reason on stderr)."""
    import sys

    from ..t1d import run_trial

    try:
        trial, spec_out = read_t1d_spec(spec)
    except (SpecError, FileNotFoundError) as error:
        print(f"Error in the T1D trial spec: {error}", file=sys.stderr)
        return 2
    folder = out or spec_out or Path("out") / trial.name
    result = run_trial(trial, folder)
    arms = {a.name: a.label for a in trial.arms}
    for arm, values in result.summary["arms"].items():
        tir, tbr = values["time_in_range"], values["time_below_70"]
        print(
            f"{arms[arm]}: TIR {tir['mean']:.1f} % ({tir['ci_low']:.1f}-{tir['ci_high']:.1f}), "
            f"TBR<70 {tbr['mean']:.2f} % ({tbr['ci_low']:.2f}-{tbr['ci_high']:.2f})"
        )
    print(f"Results: {folder}  Report: {folder / 'report.html'}")
    return 0
