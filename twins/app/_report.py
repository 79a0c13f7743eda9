"""A self-contained HTML report of a virtual trial, built from its results folder alone.

`write_report(DIR)` reads `DIR` with `read_results`, computes the tables of `twins._summary`
and writes one HTML file: figures are PNGs drawn with matplotlib's Agg canvas and embedded
as base64 data URIs, the style sheet is inline, and nothing is loaded from elsewhere, so the
file can be mailed or archived and rebuilt at any time from the folder (`twins report DIR`).
"""

from __future__ import annotations

import json
import math
import os
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from matplotlib.figure import Figure


from .._html import STYLE, escape, fmt_number, html_table, png_img
from ..trials._summary import (
    Results,
    arm_labels,
    arm_names,
    band_quantiles,
    band_resolution,
    difference_table,
    endpoint_table,
    endpoint_unit,
    failure_summary,
    output_unit,
    population_summary,
    read_results,
    reference_arm,
    subgroup_table,
    wilson_interval,
)

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


def _given(x: Any) -> str:
    """A number from the spec, as given (shortest form)."""
    return "–" if x is None else f"{float(x):g}"


def _interval(estimate: Any, low: Any, high: Any) -> str:
    if math.isnan(float(estimate)):
        return "–"
    if math.isnan(float(low)) and math.isnan(float(high)):
        return fmt_number(estimate)
    return f"{fmt_number(estimate)} ({fmt_number(low)} to {fmt_number(high)})"


# --------------------------------------------------------------------------------------------
# Sections


def _header(results: Results) -> str:
    spec, manifest = results.spec, results.manifest
    labels = arm_labels(spec)
    meta = []
    if spec.get("drug"):
        meta.append(f"Drug: <b>{escape(spec['drug'])}</b>")
    if spec.get("duration_days") is not None:
        meta.append(f"Duration: {escape(_given(spec['duration_days']))} days")
    if manifest.get("n_patients") is not None:
        meta.append(f"{escape(manifest['n_patients'])} virtual patients per arm")
    meta.append(
        "Arms: "
        + ", ".join(escape(labels[a]) for a in arm_names(spec))
        + f" (reference: {escape(labels[reference_arm(spec)])})"
    )
    out = [f"<h1>{escape(spec.get('name') or 'Virtual trial')}</h1>"]
    if spec.get("description"):
        out.append(f"<p>{escape(spec['description'])}</p>")
    out.append(f'<p class="meta">{" · ".join(meta)}</p>')
    out.append(_completeness_warning(results))
    out.append(_failure_notice(results))
    rows = [
        [
            f"<b>{escape(labels[a['name']])}</b> ({escape(a['name'])})",
            escape(a.get("description") or ""),
        ]
        for a in spec["arms"]
    ]
    out.append(html_table(["Arm", "Description"], rows))
    return "\n".join(out)


def _completeness_warning(results: Results) -> str:
    manifest = results.manifest
    if manifest.get("complete") is True:
        return ""
    done = manifest.get("chunks_done")
    n_done = len(done) if isinstance(done, list) else "?"
    return (
        '<div class="warning">Warning: this run is incomplete (manifest.json: "complete" is '
        f"{escape(json.dumps(manifest.get('complete')))}; {escape(n_done)} of "
        f"{escape(manifest.get('n_chunks', '?'))} chunks done). The results below are from the "
        "patients simulated so far.</div>"
    )


#: Failed patients listed per arm in the report.
_FAILED_IN_REPORT = 20


def _failure_notice(results: Results) -> str:
    """A warning naming, per arm, the patients that could not be simulated (none: "")."""
    failures = failure_summary(results, limit=_FAILED_IN_REPORT)
    total = sum(f["n_failed"] for f in failures.values())
    if total == 0:
        return ""
    labels = arm_labels(results.spec)
    counts = []
    rows = []
    for arm, f in failures.items():
        k, n = f["n_failed"], f["n_patients"]
        share = f", {fmt_number(100 * k / n)}%" if n else ""
        counts.append(f"{escape(labels.get(arm, arm))}: {escape(k)} of {escape(n)}{share}")
        rows += [
            [escape(labels.get(arm, arm)), escape(p["patient"]), escape(p["reason"])]
            for p in f["failed"]
        ]
        if k > len(f["failed"]):
            rows.append(
                [escape(labels.get(arm, arm)), "…", f"and {escape(k - len(f['failed']))} more"]
            )
    return (
        '<div class="warning">Warning: some patients could not be simulated (by arm: '
        f"{'; '.join(counts)}). Their endpoints are missing: the estimates and n below count "
        "the completed patients only (a failed patient is neither a responder nor a "
        "non-responder). Every failed patient is in the patients/ parts with status "
        '"failed" and its reason; summary.json lists the first 100 per arm.</div>\n'
        "<details open><summary>Patients not simulated (the first "
        f"{_FAILED_IN_REPORT} per arm)</summary>"
        + html_table(["Arm", "Patient", "Reason"], rows)
        + "</details>"
    )


def _spec_section(results: Results) -> str:
    text = json.dumps(results.spec, indent=2, ensure_ascii=False, default=str)
    out = [
        "<h2>Specification</h2>",
        f"<details><summary>spec.json</summary><pre>{escape(text)}</pre></details>",
    ]
    assumptions = results.spec.get("assumptions")
    if assumptions:
        items = assumptions if isinstance(assumptions, list) else [assumptions]
        out.append("<h3>Assumptions</h3><ul>")
        out.extend(f"<li>{escape(a)}</li>" for a in items)
        out.append("</ul>")
    return "\n".join(out)


def _population_section(results: Results) -> str:
    spec = results.spec
    pop = population_summary(results)
    out = ["<h2>Population</h2>"]
    if pop.empty:
        out.append('<p class="note">The spec names no covariates.</p>')
        return "\n".join(out)
    arms = arm_names(spec)
    labels = arm_labels(spec)
    header = ["Variable", *(escape(labels[a]) for a in arms)]
    records = pop.to_dict("records")
    cell = {(r["variable"], r["level"], r["arm"]): r for r in records}
    rows = []
    seen: set[str] = set()
    for rec in records:
        variable = rec["variable"]
        if variable in seen:
            continue
        seen.add(variable)
        if rec["type"] == "numeric":
            cells = []
            for a in arms:
                r = cell.get((variable, None, a))
                cells.append(
                    "–"
                    if r is None
                    else f"{fmt_number(r['mean'])} ± {fmt_number(r['sd'])}; "
                    f"{fmt_number(r['median'])} [{fmt_number(r['q25'])}–{fmt_number(r['q75'])}] "
                    f"(n={int(r['n'])})"
                )
            rows.append([f"<b>{escape(variable)}</b>", *(escape(c) for c in cells)])
        else:
            rows.append([f"<b>{escape(variable)}</b>", *([""] * len(arms))])
            levels = dict.fromkeys(r["level"] for r in records if r["variable"] == variable)
            for level in levels:
                cells = []
                for a in arms:
                    r = cell.get((variable, level, a))
                    cells.append(
                        "0 (0%)"
                        if r is None
                        else f"{int(r['count'])} ({fmt_number(r['percent'])}%)"
                    )
                rows.append([f"&nbsp;&nbsp;{escape(level)}", *(escape(c) for c in cells)])
    out.append(html_table(header, rows, [False] + [True] * len(arms)))
    out.append(
        '<p class="note">Numeric: mean ± SD; median [interquartile range] (n). '
        "Categorical: count (percentage of the arm).</p>"
    )
    return "\n".join(out)


def _level_targets(results: Results) -> list[tuple[float, float | None, str]]:
    """Target windows on the output's own axis (a level: trough or peak), for the band plot:
    `(low, high, label)`. From the drug's `targets` whose metric is a level (`Trough`,
    `Peak`); an AUC window (mg·h/L) is not a level and is drawn on its own axis in the
    exposure section instead. Where the drug is not in the registry, `bands.reference_lines`
    less the bounds of the spec's AUC and Cmax attainment endpoints."""
    spec = results.spec
    unit = output_unit(spec)
    try:
        from .. import drugs

        drug = drugs.get(str(spec.get("drug")))
    except KeyError:  # a drug the registry does not know: use the spec
        drug = None
    if drug is not None:
        out = []
        for t in drug.targets:
            metric = type(t.metric).__name__
            if metric not in ("Trough", "Peak"):
                continue
            what = "trough" if metric == "Trough" else "peak"
            out.append((t.low, t.high, f"{what} target {_window_text(t.low, t.high, unit)}"))
        return out
    exposure = {
        float(v)
        for e in spec.get("endpoints", [])
        if e.get("type") == "TargetAttainment"
        for v in (e.get("low"), e.get("high"))
        if v is not None
    }
    lines = [float(v) for v in (spec.get("bands") or {}).get("reference_lines") or []]
    return [
        (v, None, f"reference {fmt_number(v)} {unit}".strip()) for v in lines if v not in exposure
    ]


def _window_text(low: float | None, high: float | None, unit: str) -> str:
    if low is not None and high is not None:
        text = f"{_given(low)}–{_given(high)}"
    elif low is not None:
        text = f"≥ {_given(low)}"
    else:
        text = f"≤ {_given(high)}"
    return f"{text} {unit}".strip()


def band_figure(results: Results) -> Figure | None:
    """The median and 5-95% bands of the output over the course, per arm, with the level
    targets (`_level_targets`) as horizontal lines on the same axis; None without bands."""
    bands = results.spec.get("bands")
    if bands is None:
        return None
    quant = band_quantiles(results, (0.05, 0.5, 0.95))
    if quant.empty:
        return None
    output, unit = str(bands.get("output", "output")), output_unit(results.spec)
    labels = arm_labels(results.spec)
    from matplotlib.figure import Figure  # here: matplotlib takes a second to import

    fig = Figure(figsize=(9, 4.6), layout="constrained", label=f"{output} bands")
    ax = fig.add_subplot()
    # Points within the periods (`points_per_period`): a curve, drawn without markers; the
    # levels before each dose only (a folder written before them): points joined by lines.
    marker = "." if _points_per_period(bands) == 1 else None
    for i, arm in enumerate(arm_names(results.spec)):
        mask = (quant["arm"] == arm).to_numpy()
        if not mask.any():
            continue
        colour = _COLOURS[i % len(_COLOURS)]
        day, q05, q50, q95 = (
            quant[c].to_numpy(float)[mask] for c in ("day", "q0.05", "q0.5", "q0.95")
        )
        ax.fill_between(day, q05, q95, color=colour, alpha=0.18)
        ax.plot(day, q50, color=colour, lw=1.8 if marker else 1.4, marker=marker,
                label=f"{labels[arm]} (median)")  # fmt: skip
    for k, (low, high, text) in enumerate(_level_targets(results)):
        style = ("--", ":", "-.")[k % 3]
        for j, y in enumerate(v for v in (low, high) if v is not None):
            ax.axhline(float(y), color="0.35", ls=style, lw=1, label=text if j == 0 else None)
    ax.set_xlabel("Day")
    ax.set_ylabel(f"{output} ({unit})" if unit else output)
    ax.set_title(
        "\n".join(
            textwrap.wrap(f"{output}: median (line) and 5–95% of patients (band) per arm", 80)
        )
    )
    ax.legend(loc="best", frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _points_per_period(bands: dict[str, Any]) -> int:
    """The times per dosing period at which the band output was recorded: the spec's
    `bands.points_per_period`; 1 (the level before each dose) where it has none, as in a
    folder written before the output within the periods was recorded."""
    return int(bands.get("points_per_period") or 1)


def _band_section(results: Results) -> str:
    bands = results.spec.get("bands")
    out = ["<h2>Output over the course</h2>"]
    if bands is None:
        out.append('<p class="note">The spec has no band output.</p>')
        return "\n".join(out)
    fig = band_figure(results)
    if fig is None:
        out.append('<p class="note">No band counts were written.</p>')
        return "\n".join(out)
    unit = output_unit(results.spec)
    days = np.unique(band_quantiles(results, (0.5,))["day"].to_numpy(float))
    lo, hi = band_resolution(results)
    edges = bands["edges"]
    width = fmt_number(lo) if math.isclose(lo, hi) else f"{fmt_number(lo)} to {fmt_number(hi)}"
    width = f"{width} {unit}" if unit else width
    step = np.diff(days)
    span = f"from day {_given(days[0])} to {_given(days[-1])}"
    if step.size and np.allclose(step, step[0]):
        every = f"every {fmt_number(float(step[0]))} days "
        grid = span if _points_per_period(bands) > 1 else every + span
    else:
        grid = ", ".join(fmt_number(d) for d in days) if days.size <= 30 else span
    other = [
        e
        for e in results.spec.get("endpoints", [])
        if e.get("type") == "TargetAttainment" and e.get("metric") in ("auc", "cmax")
    ]
    elsewhere = (
        " (a target on another metric, such as an AUC, is drawn on that metric's axis under "
        "Exposure)"
        if other
        else ""
    )
    points = _points_per_period(bands)
    interval = results.spec.get("interval_h")
    if points > 1:
        period = f" of {_given(interval)} h" if interval else ""
        every = f", every {float(interval) / points:.4g} h" if interval else ""
        what = (
            f"{points} per dosing period{period}{every}, the first the level before the dose, "
            "so that the peaks and the shape of the curve within each period are drawn; "
        )
    else:
        what = (
            "the level before each dose only: the run recorded no points within the periods "
            "(band_points = 1, or a folder written before they were recorded); "
        )
    out.append(png_img(fig))
    out.append(
        f'<p class="note">The level over the whole course at the {days.size} times the run '
        f"recorded ({escape(what)}{escape(grid)}), median (line) and 5–95% of patients (band). "
        f"Quantiles interpolated linearly within histogram bins of width {escape(width)} (the "
        f"resolution). Values below {escape(_given(edges[0]))} or at/above "
        f"{escape(_given(edges[-1]))} are counted at those edges. Horizontal lines: the drug's "
        f"targets for this level only{elsewhere}.</p>"
    )
    return "\n".join(out)


#: Endpoint types that are exposure metrics, and the attainment metric that refers to them.
_EXPOSURE_TYPES = {"AUC": "auc", "Cmax": "cmax", "Ctrough": "trough", "FinalLevel": "level"}


def _exposure_endpoints(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in spec.get("endpoints", []) if e.get("type") in _EXPOSURE_TYPES]


def _windows_for(spec: dict[str, Any], endpoint: dict[str, Any]) -> list[dict[str, Any]]:
    """The spec's target-attainment endpoints on the metric and window of `endpoint`."""
    metric = _EXPOSURE_TYPES[endpoint["type"]]
    return [
        e
        for e in spec.get("endpoints", [])
        if e.get("type") == "TargetAttainment"
        and e.get("metric") == metric
        and e.get("end_h") == endpoint.get("end_h")
        and float(e.get("hours", 24.0)) == float(endpoint.get("hours", 24.0))
    ]


def exposure_summary(results: Results) -> pd.DataFrame:
    """Median and 5-95% of patients of each exposure endpoint (AUC, Cmax, trough, final
    level) per arm: columns `endpoint`, `label`, `unit`, `arm`, `n`, `q0.05`, `q0.5`,
    `q0.95` (numpy's linear quantiles of the completed patients' values)."""
    spec, patients = results.spec, results.patients
    rows = []
    for e in _exposure_endpoints(spec):
        for arm in arm_names(spec):
            v = patients.loc[patients["arm"].astype(str) == arm, e["name"]]
            v = v.to_numpy(float, na_value=np.nan)
            v = v[np.isfinite(v)]
            q = np.quantile(v, [0.05, 0.5, 0.95]) if v.size else [np.nan] * 3
            rows.append(
                {
                    "endpoint": e["name"],
                    "label": str(e.get("label") or e["name"]),
                    "unit": endpoint_unit(spec, e),
                    "arm": arm,
                    "n": int(v.size),
                    "q0.05": float(q[0]),
                    "q0.5": float(q[1]),
                    "q0.95": float(q[2]),
                }
            )
    return pd.DataFrame(
        rows, columns=["endpoint", "label", "unit", "arm", "n", "q0.05", "q0.5", "q0.95"]
    )


def exposure_figure(results: Results, endpoint: dict[str, Any]) -> Figure:
    """Distribution of one exposure endpoint per arm (histograms on a shared axis in its own
    unit) with the windows of the spec's attainment endpoints on that metric as vertical
    lines on the same axis."""
    spec, patients = results.spec, results.patients
    unit = endpoint_unit(spec, endpoint)
    label = str(endpoint.get("label") or endpoint["name"])
    from matplotlib.figure import Figure  # here: matplotlib takes a second to import

    fig = Figure(figsize=(8.5, 3.8), layout="constrained", label=f"exposure {endpoint['name']}")
    ax = fig.add_subplot()
    values = {
        arm: patients.loc[patients["arm"].astype(str) == arm, endpoint["name"]].to_numpy(
            float, na_value=np.nan
        )
        for arm in arm_names(spec)
    }
    finite = np.concatenate([v[np.isfinite(v)] for v in values.values()] or [np.zeros(0)])
    labels = arm_labels(spec)
    if finite.size:
        bins = np.histogram_bin_edges(finite, bins=40)
        for i, (arm, v) in enumerate(values.items()):
            ax.hist(
                v[np.isfinite(v)],
                bins=bins,
                histtype="step",
                lw=1.6,
                color=_COLOURS[i % len(_COLOURS)],
                label=labels[arm],
            )
    for k, w in enumerate(_windows_for(spec, endpoint)):
        style = ("--", ":", "-.")[k % 3]
        bounds = [v for v in (w.get("low"), w.get("high")) if v is not None]
        for j, x in enumerate(bounds):
            text = f"target {_window_text(w.get('low'), w.get('high'), unit)}"
            ax.axvline(float(x), color="0.3", ls=style, lw=1, label=text if j == 0 else None)
    ax.set_xlabel(_with_unit(label, unit))
    ax.set_ylabel("Patients")
    ax.set_title("\n".join(textwrap.wrap(f"{label}: distribution per arm", 80)))
    ax.legend(loc="best", frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _final_doses(results: Results) -> pd.DataFrame | None:
    """`patient`, `arm`, `dose` (the `final_dose` column of the patient parts, which
    `read_results` does not keep), or None where the parts have no such column."""
    files = [results.path / "patients" / name for name in results.patient_parts]
    if not files or "final_dose" not in pq.ParquetFile(files[0]).schema_arrow.names:
        return None
    frame = pd.concat(
        [pq.read_table(f, columns=["patient", "arm", "final_dose"]).to_pandas() for f in files],
        ignore_index=True,
    )
    return pd.DataFrame(
        {
            "patient": frame["patient"].astype(str),
            "arm": frame["arm"].astype(str),
            "dose": frame["final_dose"].to_numpy(float, na_value=np.nan),
        }
    )


def attainment_by_dose(results: Results, endpoint: dict[str, Any]) -> pd.DataFrame:
    """Probability of target attainment of a proportion endpoint against the patients' final
    dose (`final_dose`, mg), per arm and dose: columns `arm`, `dose`, `n`, `attained`,
    `estimate` (%), `ci_low`, `ci_high` (Wilson, %). Empty without a `final_dose` column."""
    patients = results.patients
    cols = ["arm", "dose", "n", "attained", "estimate", "ci_low", "ci_high"]
    doses = _final_doses(results)
    if doses is None:
        return pd.DataFrame(columns=cols)
    frame = pd.DataFrame(
        {
            "patient": patients["patient"].astype(str),
            "arm": patients["arm"].astype(str),
            "y": patients[endpoint["name"]].to_numpy(float, na_value=np.nan),
        }
    )
    frame = frame.merge(doses, on=["patient", "arm"], how="left", validate="one_to_one")
    frame = frame.dropna()
    g = frame.groupby(["arm", "dose"], sort=True)["y"].agg(["size", "sum"]).reset_index()
    low, high = wilson_interval(g["sum"].to_numpy(float), g["size"].to_numpy(float))
    return pd.DataFrame(
        {
            "arm": g["arm"],
            "dose": g["dose"],
            "n": g["size"].astype(np.int64),
            "attained": g["sum"].astype(np.int64),
            "estimate": 100 * g["sum"] / g["size"],
            "ci_low": 100 * low,
            "ci_high": 100 * high,
        }
    )


#: Fewest patients at a dose for its attainment to be drawn.
_PTA_MIN_N = 5


def attainment_figure(results: Results, endpoint: dict[str, Any]) -> Figure | None:
    """Probability of target attainment (%) against the final dose, one line per arm with
    Wilson intervals, doses with at least `_PTA_MIN_N` patients; None where no arm has two
    such doses (nothing to plot against dose)."""
    table = attainment_by_dose(results, endpoint)
    table = table[table["n"] >= _PTA_MIN_N]
    if table.empty or table.groupby("arm")["dose"].nunique().max() < 2:
        return None
    spec = results.spec
    labels = arm_labels(spec)
    from matplotlib.figure import Figure  # here: matplotlib takes a second to import

    fig = Figure(figsize=(8.5, 3.8), layout="constrained", label=f"pta {endpoint['name']}")
    ax = fig.add_subplot()
    for i, arm in enumerate(arm_names(spec)):
        t = table[table["arm"] == arm]
        if t.empty:
            continue
        d, e = t["dose"].to_numpy(float), t["estimate"].to_numpy(float)
        ax.errorbar(
            d,
            e,
            yerr=[e - t["ci_low"].to_numpy(float), t["ci_high"].to_numpy(float) - e],
            fmt="o-",
            ms=4,
            capsize=2,
            color=_COLOURS[i % len(_COLOURS)],
            label=labels[arm],
        )
    dose_unit = "mg"
    ax.set_xlabel(f"Final dose ({dose_unit})")
    ax.set_ylabel("Patients attaining (%)")
    ax.set_ylim(-2, 102)
    label = str(endpoint.get("label") or endpoint["name"])
    ax.set_title("\n".join(textwrap.wrap(f"Probability of target attainment: {label}", 80)))
    ax.legend(loc="best", frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    return fig


#: MIC values (mg/L) of the PTA-against-MIC plot: the EUCAST doubling dilutions.
MIC_GRID = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _reference_mic(results: Results) -> float | None:
    """The MIC (mg/L) at which the drug's AUC target is stated (its `Target.note`, e.g.
    vancomycin's "... MIC 1 mg/L" of Rybak 2020), or None (no such drug or note)."""
    try:
        from .. import drugs

        drug = drugs.get(str(results.spec.get("drug")))
    except KeyError:
        return None
    for t in drug.targets:
        if type(t.metric).__name__ == "AUCOver":
            m = re.search(r"MIC\s*([0-9.]+)\s*mg/L", str(t.note or ""))
            if m:
                return float(m.group(1))
    return None


def attainment_by_mic(results: Results, endpoint: dict[str, Any]) -> pd.DataFrame:
    """Probability of attaining AUC/MIC at least the attainment endpoint's `low` x the
    drug's reference MIC (`_reference_mic`; for vancomycin AUC24/MIC >= 400 at MIC 1 mg/L,
    Rybak 2020), per arm and MIC of `MIC_GRID`, from the patients' AUC of the same window:
    columns `arm`, `mic`, `n`, `attained`, `estimate` (%), `ci_low`, `ci_high` (Wilson).
    Empty where the drug states no MIC, the endpoint is not on the AUC or has no `low`, or
    the spec has no AUC endpoint of that window."""
    cols = ["arm", "mic", "n", "attained", "estimate", "ci_low", "ci_high"]
    ref = _reference_mic(results)
    low = endpoint.get("low")
    auc = [
        e
        for e in _exposure_endpoints(results.spec)
        if e.get("type") == "AUC" and endpoint in _windows_for(results.spec, e)
    ]
    if ref is None or low is None or endpoint.get("metric") != "auc" or not auc:
        return pd.DataFrame(columns=cols)
    patients = results.patients
    rows = []
    for arm in arm_names(results.spec):
        v = patients.loc[patients["arm"].astype(str) == arm, auc[0]["name"]]
        v = v.to_numpy(float, na_value=np.nan)
        v = v[np.isfinite(v)]
        for mic in MIC_GRID:
            rows.append((arm, mic, v.size, int(np.sum(v / mic >= float(low) / ref))))
    frame = pd.DataFrame(rows, columns=["arm", "mic", "n", "attained"])
    lo, hi = wilson_interval(frame["attained"].to_numpy(float), frame["n"].to_numpy(float))
    frame["estimate"] = 100 * frame["attained"] / frame["n"]
    frame["ci_low"], frame["ci_high"] = 100 * lo, 100 * hi
    return frame[cols]


def attainment_mic_figure(results: Results, endpoint: dict[str, Any]) -> Figure | None:
    """PTA (%) against MIC (log axis), one line per arm (`attainment_by_mic`); None where
    that table is empty."""
    table = attainment_by_mic(results, endpoint)
    if table.empty:
        return None
    labels = arm_labels(results.spec)
    ratio = float(endpoint["low"]) / float(_reference_mic(results) or 1.0)
    from matplotlib.figure import Figure  # here: matplotlib takes a second to import

    fig = Figure(figsize=(8.5, 3.8), layout="constrained", label=f"pta-mic {endpoint['name']}")
    ax = fig.add_subplot()
    for i, arm in enumerate(arm_names(results.spec)):
        t = table[table["arm"] == arm]
        e = t["estimate"].to_numpy(float)
        ax.errorbar(
            t["mic"].to_numpy(float),
            e,
            yerr=[e - t["ci_low"].to_numpy(float), t["ci_high"].to_numpy(float) - e],
            fmt="o-",
            ms=4,
            capsize=2,
            color=_COLOURS[i % len(_COLOURS)],
            label=labels[arm],
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(MIC_GRID, [f"{m:g}" for m in MIC_GRID])
    ax.set_xlabel("MIC (mg/L)")
    ax.set_ylabel("Patients attaining (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"Probability of AUC/MIC ≥ {ratio:g} against MIC", fontsize=10)
    ax.legend(loc="best", frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _exposure_section(results: Results) -> str:
    spec = results.spec
    out = ["<h2>Exposure</h2>"]
    summary = exposure_summary(results)
    if summary.empty:
        out.append('<p class="note">The spec has no exposure endpoint (AUC, Cmax, level).</p>')
    else:
        labels = arm_labels(spec)
        rows = [
            [
                escape(_with_unit(r["label"], r["unit"])),
                escape(labels.get(r["arm"], r["arm"])),
                escape(r["n"]),
                escape(fmt_number(r["q0.5"])),
                escape(f"{fmt_number(r['q0.05'])} to {fmt_number(r['q0.95'])}"),
            ]
            for r in summary.to_dict("records")
        ]
        out.append(
            html_table(
                ["Exposure", "Arm", "n", "Median", "5–95% of patients"],
                rows,
                [False, False, True, True, True],
            )
        )
        for e in _exposure_endpoints(spec):
            out.append(png_img(exposure_figure(results, e)))
    pta = [e for e in spec.get("endpoints", []) if e.get("type") == "TargetAttainment"]
    drawn = 0
    for e in pta:
        fig = attainment_figure(results, e)
        if fig is not None:
            out.append(png_img(fig))
            drawn += 1
    mic_drawn = 0
    for e in pta:
        fig = attainment_mic_figure(results, e)
        if fig is not None:
            out.append(png_img(fig))
            mic_drawn += 1
    if pta and not drawn:
        out.append(
            '<p class="note">Target attainment against dose: every arm gives (nearly) one '
            "dose, so there is no dose axis to plot it on.</p>"
        )
    if pta:
        out.append(
            '<p class="note">Probability of target attainment: the share of patients whose '
            "exposure lies in the window, per arm and final dose (patients grouped by the dose "
            f"they were on at the end; doses with fewer than {_PTA_MIN_N} patients left out), "
            "with Wilson intervals. In an arm whose dose follows weight or levels the dose "
            "was chosen by the patient's own kinetics, so a point is the attainment of the "
            "patients given that dose, not what that dose would give everyone. "
            + (
                "Against MIC: the share of patients with AUC/MIC at least the window's lower "
                "bound over the MIC at which the drug's target is stated (vancomycin: AUC24/MIC "
                "≥ 400 at MIC 1 mg/L, Rybak 2020), for each MIC of the doubling dilutions; "
                "the upper bound (a toxicity limit) does not scale with MIC.</p>"
                if mic_drawn
                else "Against MIC: not drawn, the drug states no MIC for its AUC target.</p>"
            )
        )
    return "\n".join(out)


def _endpoint_section(results: Results, table: pd.DataFrame, level: float) -> str:
    spec = results.spec
    labels = arm_labels(spec)
    has_published = bool(np.isfinite(table["published"].to_numpy(float)).any())
    pct = f"{round(100 * level)}%"
    header = ["Endpoint", "Arm", "n", f"Estimate ({pct} CI)"]
    if has_published:
        header.append("Published")
    header.append("Note")
    rows = []
    previous = None
    order = {e["name"]: i for i, e in enumerate(spec.get("endpoints", []))}
    for r in sorted(table.to_dict("records"), key=lambda r: order[r["endpoint"]]):
        name = escape(_with_unit(r["label"], _unit(r)))
        row = [
            name if r["endpoint"] != previous else "",
            escape(labels.get(r["arm"], r["arm"])),
            escape(r["n"]),
            escape(_interval(r["estimate"], r["ci_low"], r["ci_high"])),
        ]
        if has_published:
            row.append(escape(_given(r["published"])) if np.isfinite(r["published"]) else "")
        row.append(escape(r["note"]))
        rows.append(row)
        previous = r["endpoint"]
    out = ["<h2>Endpoints</h2>"]
    if table.empty:
        out.append('<p class="note">The spec names no endpoints.</p>')
        return "\n".join(out)
    out.append(html_table(header, rows, [False, False, True, True, True]))
    published = spec.get("published") or {}
    if has_published and published.get("source"):
        out.append(f'<p class="note">Published figures: {escape(published["source"])}</p>')
    if has_published and published.get("notes"):
        out.append(f'<p class="note">{escape(published["notes"])}</p>')
    out.append(
        '<p class="note">Means: sample mean with the t interval. Proportions: percentage with '
        "the Wilson score interval (Wilson 1927). Times to event: Kaplan-Meier median "
        "(Kaplan and Meier 1958) with the Brookmeyer-Crowley interval (1982) from Greenwood's "
        '"log-log" pointwise interval; "not reached" means the median or limit lies beyond '
        "the follow-up.</p>"
    )
    return "\n".join(out)


def _with_unit(label: Any, unit: Any) -> str:
    """`label (unit)`, unless the label already states the unit (`mg.h/L` for `mg·h/L`)."""
    label, unit = str(label), str(unit or "")
    if not unit or unit.replace("·", ".") in label.replace("·", "."):
        return label
    return f"{label} ({unit})"


def _unit(r: dict[Any, Any]) -> str:
    return "%" if r["kind"] == "proportion" else str(r["unit"])


def _difference_section(results: Results, table: pd.DataFrame, level: float) -> str:
    labels = arm_labels(results.spec)
    ref = labels[reference_arm(results.spec)]
    out = [f"<h2>Differences against {escape(ref)}</h2>"]
    if table.empty:
        out.append('<p class="note">No endpoint of kind mean or proportion.</p>')
        return "\n".join(out)
    pct = f"{round(100 * level)}%"
    rows = [
        [
            escape(_with_unit(r["label"], r["unit"])),
            escape(labels.get(r["arm"], r["arm"])),
            escape(r["n"]),
            escape(fmt_number(r["estimate"])),
            escape(fmt_number(r["reference_estimate"])),
            escape(_interval(r["difference"], r["ci_low"], r["ci_high"])),
            escape(r["method"]),
        ]
        for r in table.to_dict("records")
    ]
    header = [
        "Endpoint",
        "Arm",
        "Pairs",
        "Arm estimate",
        f"{escape(ref)}",
        f"Difference ({pct} CI)",
        "Method",
    ]
    out.append(html_table(header, rows, [False, False, True, True, True, True]))
    out.append(
        '<p class="note">Paired differences, arm minus reference: every virtual patient was '
        "given every arm, so each difference is within one patient (Pairs: patients with a "
        "value in both arms). Means: the mean of the within-patient differences with its t "
        "interval. Proportions: percentage points, Newcombe's interval for paired "
        "proportions (Newcombe 1998, Stat Med 17:2635-2650). The independent-sample "
        "intervals (Welch; Newcombe's hybrid score) are wider here: "
        "<code>difference_table(results, paired=False)</code>.</p>"
    )
    return "\n".join(out)


def _forest_figure(
    results: Results, endpoint: dict[str, Any], overall: pd.DataFrame, sub: pd.DataFrame
) -> str:
    spec = results.spec
    labels = arm_labels(spec)
    ref = reference_arm(spec)
    others = [a for a in arm_names(spec) if a != ref]
    # Row layout, top to bottom: Overall, then per subgroup a header and its levels.
    rows: list[tuple[str, str | None, str | None]] = [("Overall", None, None)]
    for s in spec.get("subgroups", []):
        levels = list(dict.fromkeys(sub.loc[sub["subgroup"] == s, "level"]))
        if not levels:
            continue
        rows.append((s, None, "header"))
        rows.extend((f"  {lv}", s, lv) for lv in levels)
    height = 1.2 + 0.28 * len(rows) * (0.8 + 0.2 * max(len(others), 1))
    from matplotlib.figure import Figure  # here: matplotlib takes a second to import

    fig = Figure(figsize=(8.5, height), layout="constrained", label=f"forest {endpoint['name']}")
    ax = fig.add_subplot()
    n_rows = len(rows)
    step = 0.5 / max(len(others), 1)
    spans: list[tuple[float, float, float]] = []
    for k, arm in enumerate(others):
        colour = _COLOURS[(arm_names(spec).index(arm)) % len(_COLOURS)]
        ys, xs, lo, hi = [], [], [], []
        for i, (_, s, lv) in enumerate(rows):
            if lv == "header":
                continue
            if s is None:
                r = overall[overall["arm"] == arm]
                cols = ("difference", "ci_low", "ci_high")
            else:
                r = sub[(sub["arm"] == arm) & (sub["subgroup"] == s) & (sub["level"] == lv)]
                cols = ("difference", "difference_ci_low", "difference_ci_high")
            if r.empty:
                continue
            d, a, b = (float(r.iloc[0][c]) for c in cols)
            if not np.isfinite(d):
                continue
            spans.append((d, a, b))
            ys.append(n_rows - 1 - i - (k - (len(others) - 1) / 2) * step)
            xs.append(d)
            lo.append(d - a if np.isfinite(a) else 0.0)
            hi.append(b - d if np.isfinite(b) else 0.0)
        ax.errorbar(
            xs,
            ys,
            xerr=[lo, hi],
            fmt="o",
            color=colour,
            ms=4,
            capsize=2,
            label=labels[arm],
        )
    ax.axvline(0, color="0.3", lw=1)
    _limit_axis(ax, spans)
    ax.set_yticks(range(n_rows))
    ax.set_yticklabels([name for name, _, _ in reversed(rows)], fontsize=8.5)
    for tick, (_, _, lv) in zip(ax.get_yticklabels(), reversed(rows), strict=True):
        if lv == "header" or lv is None:
            tick.set_fontweight("bold")
    ax.set_ylim(-0.7, n_rows - 0.3)
    unit = (
        "percentage points"
        if endpoint["kind"] == "proportion"
        else endpoint_unit(spec, {**endpoint, "type": endpoint.get("type")})
    )
    arm_text = labels[others[0]] if len(others) == 1 else "arm"
    ax.set_xlabel(f"{arm_text} − {labels[ref]}" + (f" ({unit})" if unit else ""))
    title = f"{endpoint['label']}: paired difference against {labels[ref]}"
    ax.set_title("\n".join(textwrap.wrap(title, 75)), fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    for i, (_, _, lv) in enumerate(rows):
        if lv == "header":
            ax.axhline(n_rows - 1 - i + 0.5, color="0.8", lw=0.8)
    if len(others) > 1:
        fig.legend(loc="outside lower center", ncols=min(len(others), 4), frameon=False)
    return png_img(fig)


def _limit_axis(ax: Any, spans: list[tuple[float, float, float]]) -> None:
    """x limits that show every estimate and every interval up to 5 times the median
    half-width; wider intervals (a level with 2 patients) run off the axis edge instead of
    squashing the others, and the axis title says so."""
    finite = [(d, a, b) for d, a, b in spans if np.isfinite(a) and np.isfinite(b)]
    if len(finite) < 3:
        return
    half = np.array([(b - a) / 2 for _, a, b in finite])
    cap = 5 * float(np.median(half))
    kept = [(a, b) for (_, a, b), h in zip(finite, half, strict=True) if h <= cap]
    if len(kept) == len(finite) or not kept:
        return
    lo = min(min(a for a, _ in kept), *(d for d, _, _ in spans), 0.0)
    hi = max(max(b for _, b in kept), *(d for d, _, _ in spans), 0.0)
    pad = 0.08 * (hi - lo or 1.0)
    ax.set_xlim(lo - pad, hi + pad)
    ax.text(
        0.99,
        0.01,
        f"{len(finite) - len(kept)} wide interval(s) cut at the axis edge (see the table)",
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=7.5,
        color="0.35",
    )


def _subgroup_section(
    results: Results, differences: pd.DataFrame, sub: pd.DataFrame, level: float
) -> str:
    spec = results.spec
    out = ["<h2>Subgroups</h2>"]
    if not spec.get("subgroups"):
        out.append('<p class="note">The spec names no subgroups.</p>')
        return "\n".join(out)
    if len(arm_names(spec)) < 2:
        out.append('<p class="note">One arm: no differences to show.</p>')
    else:
        for e in spec.get("endpoints", []):
            if e["kind"] == "time_to_event":
                continue
            endpoint = {
                "name": e["name"],
                "label": str(e.get("label") or e["name"]),
                "kind": e["kind"],
                "type": e.get("type"),
                "unit": str(e.get("unit") or ""),
            }
            out.append(
                _forest_figure(
                    results,
                    endpoint,
                    differences.loc[differences["endpoint"] == e["name"]],
                    sub.loc[sub["endpoint"] == e["name"]],
                )
            )
    pct = f"{round(100 * level)}%"
    labels = arm_labels(spec)
    rows = [
        [
            escape(r["subgroup"]),
            escape(r["level"]),
            escape(r["label"]),
            escape(labels.get(r["arm"], r["arm"])),
            escape(r["n"]),
            escape(_interval(r["estimate"], r["ci_low"], r["ci_high"])),
            escape(_interval(r["difference"], r["difference_ci_low"], r["difference_ci_high"])),
        ]
        for r in sub.to_dict("records")
    ]
    header = ["Subgroup", "Level", "Endpoint", "Arm", "n", f"Estimate ({pct} CI)"]
    header.append(f"Difference ({pct} CI)")
    out.append(
        "<details><summary>Subgroup table</summary>"
        + html_table(header, rows, [False, False, False, False, True, True, True])
        + "</details>"
    )
    out.append(
        '<p class="note">Forest plots: paired difference against the reference arm with its '
        f"{pct} interval, levels in their natural order, overall (top) and within each "
        "subgroup level; no adjustment for multiplicity.</p>"
    )
    return "\n".join(out)


def _provenance_section(results: Results) -> str:
    spec, manifest = results.spec, results.manifest
    prov = spec.get("provenance") or {}
    rows: list[list[str]] = []

    def add(name: str, value: Any, fmt: Callable[[Any], str] = str) -> None:
        if value is not None:
            rows.append([escape(name), escape(fmt(value))])

    add("version", prov.get("version"))
    add("seed", prov.get("seed", spec.get("seed")))
    add("spec hash", prov.get("spec_hash"))
    add("started (UTC)", prov.get("started_utc"))
    for key, value in prov.items():
        if key not in ("version", "seed", "spec_hash", "started_utc"):
            add(key, value if isinstance(value, str | int | float) else json.dumps(value))
    add("finished (UTC)", manifest.get("finished_utc"))
    add("wall time", manifest.get("wall_s"), lambda s: f"{float(s):.1f} s")
    add("patients per arm", manifest.get("n_patients"))
    add("chunk size", manifest.get("chunk_size"))
    done = manifest.get("chunks_done")
    if isinstance(done, list):
        add("chunks done", f"{len(done)} of {manifest.get('n_chunks', '?')}")
    add("patient parts read", len(results.patient_parts))
    complete = manifest.get("complete")
    rows.append(
        [
            "complete",
            "yes" if complete is True else '<b style="color:#a00">NO: incomplete run</b>',
        ]
    )
    add("results folder", str(results.path))
    return "\n".join(
        [
            "<h2>Provenance</h2>",
            _completeness_warning(results),
            html_table(["Item", "Value"], rows),
        ]
    )


def render_report(results: Results, *, level: float = 0.95) -> str:
    """The report of `results` as an HTML string (see `write_report`).

    **Arguments:**

    - `results`: from `twins._summary.read_results`.
    - `level`: confidence level of the intervals.

    **Returns:**

    The HTML document (str).
    """
    endpoints = endpoint_table(results, level=level)
    differences = difference_table(results, level=level)
    sub = subgroup_table(results, level=level)
    title = escape(results.spec.get("name") or "Virtual trial")
    body = [
        _header(results),
        _spec_section(results),
        _population_section(results),
        _band_section(results),
        _endpoint_section(results, endpoints, level),
        _exposure_section(results),
        _difference_section(results, differences, level),
        _subgroup_section(results, differences, sub, level),
        _provenance_section(results),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def write_report(path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Write the HTML report of a trial results folder.

    The report is one self-contained file (figures embedded as base64 PNG, inline style, no
    external scripts or style sheets) built from the folder alone. Its sections: title and
    description (with a warning when the run is incomplete); the spec (JSON, folded) and its
    assumptions; the population per arm; the band output's median and 5-95% band over the
    course with the drug's targets for that level; the endpoints (with units) and their
    confidence intervals beside the published figures; exposure (median and 5-95% per arm,
    histograms with their attainment windows, PTA against dose and MIC); the paired
    differences against the reference arm; subgroup forest plots (levels in natural order);
    provenance.

    Statistics (see `twins.trials._summary`): t interval for means, Wilson score interval for
    proportions, Kaplan-Meier median with the Brookmeyer-Crowley interval for times to event;
    paired differences (every virtual patient gets every arm): the t interval of the
    within-patient differences (means) and Newcombe's interval for paired proportions
    (Newcombe 1998, Stat Med 17:2635-2650).

    **Arguments:**

    - `path`: the results folder (`spec.json`, `manifest.json`, `patients/`, `bands/`).
    - `out`: the HTML file to write; default `path/report.html`.

    **Returns:**

    The path of the report written.

    References: Wilson EB (1927), J Am Stat Assoc 22:209-212. Newcombe RG (1998), Stat Med
    17:873-890. Kaplan EL, Meier P (1958), J Am Stat Assoc 53:457-481. Brookmeyer R,
    Crowley J (1982), Biometrics 38:29-41. Welch BL (1947), Biometrika 34:28-35.
    """
    results = read_results(path)
    target = Path(out) if out is not None else results.path / "report.html"
    document = render_report(results)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(document, encoding="utf-8")
    return target
