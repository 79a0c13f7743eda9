"""The HTML report of a T1D trial, from its results folder alone (`write_t1d_report`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure


from .._html import STYLE, escape, fmt_number, html_table, png_img

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _cell(r: dict[str, Any]) -> str:
    return f"{fmt_number(r['mean'])} ({fmt_number(r['ci_low'])} to {fmt_number(r['ci_high'])})"


def _bands_figure(bands: pd.DataFrame, arms: list[dict[str, Any]]) -> Figure:
    from matplotlib.figure import Figure  # here: matplotlib takes a second to import

    fig = Figure(figsize=(10, 3.2 * ((len(arms) + 1) // 2)), label="glucose profile by arm")
    rows = (len(arms) + 1) // 2
    for i, arm in enumerate(arms):
        ax = fig.add_subplot(rows, 2, i + 1)
        b = bands[bands["arm"] == arm["name"]]
        colour = _COLOURS[i % len(_COLOURS)]
        ax.fill_between(b["hour"], b["q05"], b["q95"], color=colour, alpha=0.15, lw=0)
        ax.fill_between(b["hour"], b["q25"], b["q75"], color=colour, alpha=0.35, lw=0)
        ax.plot(b["hour"], b["q50"], color=colour, lw=1.5)
        for y in (54, 70, 180, 250):
            ax.axhline(y, color="#888", lw=0.6, ls=":" if y in (54, 250) else "-")
        ax.set_title(arm["label"], fontsize=10)
        ax.set_xlim(0, 24)
        ax.set_ylim(30, 400)
        ax.set_xticks(range(0, 25, 3))
        ax.set_xlabel("time of day (h)")
        ax.set_ylabel("CGM (mg/dL)")
    fig.tight_layout()
    return fig


def _history_figure(history: list[float]) -> Figure:
    from matplotlib.figure import Figure  # here: matplotlib takes a second to import

    fig = Figure(figsize=(5, 3), label="optimisation history")
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(np.arange(len(history)), history, marker=".", lw=1)
    ax.set_xlabel("Adam step")
    ax.set_ylabel("smooth TIR - w TBR70 (%)")
    ax.set_title("training objective", fontsize=10)
    fig.tight_layout()
    return fig


def write_t1d_report(folder: str | os.PathLike[str]) -> Path:
    """Write `folder/report.html` from `summary.json`, `spec.json` and `bands.csv` (a
    self-contained file: figures embedded as PNGs). **Returns:** its path."""
    folder = Path(folder)
    summary = json.loads((folder / "summary.json").read_text())
    spec = json.loads((folder / "spec.json").read_text())
    bands = pd.read_csv(folder / "bands.csv")
    arms = spec["arms"]
    endpoints = spec["endpoints"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{escape(spec['name'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(spec['name'])}</h1>",
        f"<p class='meta'>{escape(spec.get('description', ''))}</p>",
        f"<p class='meta'>{summary['n_patients']} virtual patients per arm, "
        f"{summary['days']} days (endpoints from day {summary['run_in_days'] + 1}); "
        "every arm on the same patients, meals and CGM noise. Model: UVA/Padova "
        "(pkpd.UVAPadova), patients of simglucose.</p>",
        "<h2>Endpoints</h2>",
        "<p class='note'>Mean over patients (95 % t interval) of each patient's consensus CGM "
        "metrics (Battelino et al., Diabetes Care 2019;42:1593-1603).</p>",
    ]
    header = ["endpoint", *[escape(a["label"]) for a in arms]]
    rows = []
    for e in endpoints:
        rows.append(
            [f"{escape(e['label'])} [{escape(e['unit'])}]"]
            + [_cell(summary["arms"][a["name"]][e["name"]]) for a in arms]
        )
    parts.append(html_table(header, rows, [False] + [True] * len(arms)))
    if summary["differences"]:
        ref = spec["reference_arm"]
        label = next(a["label"] for a in arms if a["name"] == ref)
        parts.append(f"<h2>Differences against {escape(label)}</h2>")
        parts.append(
            "<p class='note'>Paired over patients (the same patients in every arm): mean "
            "difference (95 % t interval).</p>"
        )
        others = [a for a in arms if a["name"] != ref]
        rows = [
            [f"{escape(e['label'])}"]
            + [_cell(summary["differences"][a["name"]][e["name"]]) for a in others]
            for e in endpoints
        ]
        parts.append(
            html_table(
                ["endpoint", *[escape(a["label"]) for a in others]],
                rows,
                [False] + [True] * len(others),
            )
        )
    parts.append("<h2>Glucose profile</h2>")
    parts.append(
        "<p class='note'>CGM readings by time of day over every patient and day: median, "
        "25-75 % and 5-95 % bands; lines at 54, 70, 180 and 250 mg/dL.</p>"
    )
    parts.append(png_img(_bands_figure(bands, arms)))
    parts.append("<h2>By age group and split</h2>")
    for key, title in (("by_group", "age group"), ("by_split", "training / held-out split")):
        rows = []
        for a in arms:
            for level, values in summary[key][a["name"]].items():
                rows.append(
                    [escape(a["label"]), escape(level), str(values["time_in_range"]["n"])]
                    + [
                        _cell(values[e])
                        for e in ("time_in_range", "time_below_70", "time_below_54")
                    ]
                )
        parts.append(f"<h3>By {escape(title)}</h3>")
        parts.append(
            html_table(
                ["arm", title, "n", "TIR 70-180 (%)", "TBR <70 (%)", "TBR <54 (%)"],
                rows,
                [False, False, True, True, True, True],
            )
        )
    extra = summary.get("extra", {})
    for arm, info in extra.items():
        opt = info.get("optimisation")
        if opt:
            parts.append(f"<h2>Optimisation of {escape(arm)}</h2>")
            parts.append(
                f"<p>Adam, {len(opt['history']) - 1} steps on {len(opt['train'])} training "
                f"patients (held out: {escape(', '.join(opt['test']))}); parameters "
                f"{escape(json.dumps(opt['theta']))}.</p>"
            )
            parts.append(png_img(_history_figure(opt["history"])))
        twin = info.get("twin")
        if twin:
            f = np.asarray(twin["factors"], dtype=float)
            parts.append(f"<h2>Twins of {escape(arm)}</h2>")
            parts.append(
                "<p>Carbohydrate-ratio factor chosen each day (median and range over "
                "patients): "
                + escape(
                    ", ".join(
                        f"day {d + 1}: {np.median(f[:, d]):.2f} ({f[:, d].min():.2f}-"
                        f"{f[:, d].max():.2f})"
                        for d in range(f.shape[1])
                    )
                )
                + ".</p>"
            )
    parts.append("</body></html>")
    path = folder / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
