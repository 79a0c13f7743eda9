"""A self-contained HTML report of one digital twin: the patient, the drug and its model, the
doses and levels, the posterior, the forecast with its bands and, on request, a dose
recommendation; other packages add sections (e.g. a surrogate's explanation of its
prediction for this patient, `surrogates.explanation_section`).

Like the trial report (`twins._report`), the file stands alone: figures are PNGs drawn on
matplotlib's Agg canvas and embedded as base64 data URIs, the style sheet is inline, nothing
is loaded from elsewhere.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

if TYPE_CHECKING:
    pass


import pkpd

from .._html import STYLE, escape, fmt_number, html_table, png_img
from .._patient import Patient
from ..drugs import Target

if TYPE_CHECKING:
    from .._twin import DigitalTwin, Forecast, Recommendation

_LEVEL = 0.9


def _number(x: Any) -> str:
    return escape(fmt_number(x))


def _patient_section(twin: DigitalTwin) -> str:
    patient = twin.patient
    out = ["<h2>Patient</h2>"]
    if isinstance(patient, Patient):
        rows = [
            ["ID", escape(patient.id)],
            ["Age", f"{_number(patient.age)} years"],
            ["Sex", escape(patient.sex)],
            ["Weight", f"{_number(patient.weight)} kg"],
            ["Height", f"{_number(patient.height)} cm"],
        ]
        if patient.ancestry is not None:
            rows.append(["Ancestry", escape(patient.ancestry)])
        for name, value in patient.labs.items():
            rows.append([f"Lab: {escape(name)}", _number(value)])
        rows.append(
            ["Medications", escape(", ".join(sorted(patient.medications)) or "none recorded")]
        )
        for name, value in patient.extra.items():
            rows.append([escape(name), _number(value)])
        if patient.imputed:
            rows.append(["Imputed fields", escape(", ".join(sorted(patient.imputed)))])
        for name, reason in sorted(patient.unusual.items()):
            # A value outside its plausibility range, kept on the clinician's word.
            rows.append([f"Unusual {escape(name)}", f"outside the usual range: {escape(reason)}"])
        out.append(html_table(["Field", "Value"], rows))
        cov = patient.covariates()
        derived = [
            [escape(k), _number(cov[k])]
            for k in ("CRCL", "EGFR", "BSA", "LBW")
            if isinstance(cov.get(k), float)
        ]
        if derived:
            out.append("<h3>Derived covariates</h3>")
            out.append(html_table(["Covariate", "Value"], derived, [False, True]))
            out.append(
                '<p class="note">CRCL: Cockcroft-Gault with total body weight (mL/min); '
                "EGFR: CKD-EPI 2021 (mL/min/1.73 m²); BSA: Mosteller (m²); LBW: "
                "Janmahasatian (kg).</p>"
            )
        if patient.genotypes:
            rows = []
            for gene, reported in patient.genotypes.items():
                found = patient.phenotype(gene)
                score = "–" if found.activity_score is None else f"{found.activity_score:g}"
                if found.activity_score_is_lower_bound:
                    score = f"≥ {score}"
                rows.append(
                    [
                        escape(gene),
                        escape(reported),
                        escape(found.diplotype),
                        escape(score),
                        escape(found.phenotype),
                    ]
                )
            out.append("<h3>Genotypes and phenotypes (CPIC)</h3>")
            out.append(
                html_table(
                    ["Gene", "Reported", "CPIC diplotype", "Activity score", "Phenotype"], rows
                )
            )
    else:
        rows = [[escape(k), escape(v)] for k, v in dict(patient).items()]
        out.append(html_table(["Covariate", "Value"], rows))
    model_rows = [[escape(k), _number(v)] for k, v in twin.covariates.items()]
    out.append(f"<h3>What the model of {escape(twin.drug.name)} reads</h3>")
    if model_rows:
        out.append(html_table(["Model covariate", "Value"], model_rows, [False, True]))
    else:
        out.append('<p class="note">The model has no covariates.</p>')
    return "\n".join(out)


def _drug_section(twin: DigitalTwin) -> str:
    drug = twin.drug
    d = drug.dosing
    per_kg = " per kg" if d.per_kg else ""
    usual = f"{d.amount:g} {escape(drug.units.dose)}{per_kg} every {d.interval:g} h"
    if d.duration is not None:
        usual += f", infused over {d.duration:g} h"
    out = [
        "<h2>Drug and model</h2>",
        html_table(
            ["Field", "Value"],
            [
                ["Drug", f"<b>{escape(drug.name)}</b>"],
                ["Model", escape(type(drug.model.model).__name__)],
                ["Reference", escape(drug.reference)],
                ["Route", escape(d.route.describe())],
                ["Usual regimen", usual],
                ["Observed output", escape(drug.units.observed)],
            ],
        ),
    ]
    if drug.targets:
        rows = [
            [escape(t.metric.name), f"{t.low:g}–{t.high:g}", escape(t.unit), escape(t.reference)]
            for t in drug.targets
        ]
        out.append(html_table(["Target", "Window", "Unit", "Reference"], rows))
    if drug.description:
        out.append(
            f"<details><summary>Model description</summary><pre>{escape(drug.description)}</pre>"
            "</details>"
        )
    return "\n".join(out)


def _events(regimen: pkpd.Regimen | None) -> list[list[str]]:
    if regimen is None:
        return []
    mask = np.asarray(regimen.mask, dtype=bool)
    time = np.asarray(regimen.time, dtype=float)[mask]
    amount = np.asarray(regimen.amount, dtype=float)[mask]
    cmt = np.asarray(regimen.cmt)[mask]
    rate = np.asarray(regimen.rate, dtype=float)[mask]
    duration = np.asarray(regimen.duration, dtype=float)[mask]
    rows = []
    for t, a, c, r, dur in zip(time, amount, cmt, rate, duration, strict=True):
        how = "bolus"
        if r > 0:
            how = f"infusion {r:.4g} /h"
        elif r == -2 or dur > 0:
            how = f"infusion over {dur:g} h"
        rows.append([_number(t), _number(a), escape(int(c)), escape(how)])
    return rows


def _doses_section(twin: DigitalTwin) -> str:
    out = ["<h2>Doses given</h2>"]
    rows = _events(twin.history)
    if rows:
        out.append(
            html_table(
                ["Time (h)", f"Amount ({escape(twin.drug.units.dose)})", "Compartment", "Form"],
                rows,
                [True, True, True, False],
            )
        )
    else:
        out.append('<p class="note">No doses recorded.</p>')
    out.append("<h2>Observations</h2>")
    obs = twin.observations
    if len(obs):
        rows = [
            [_number(t), _number(v), "below LLOQ (value = LLOQ)" if int(c) == 1 else ""]
            for t, v, c in zip(obs["TIME"], obs["DV"], obs["CENS"], strict=True)
        ]
        out.append(
            html_table(
                ["Time (h)", escape(twin.drug.units.observed), "Censoring"],
                rows,
                [True, True, False],
            )
        )
    else:
        out.append('<p class="note">No levels observed: the posterior is the population prior.</p>')
    return "\n".join(out)


def _posterior_section(twin: DigitalTwin, key: jax.Array, n_draws: int) -> str:
    post = twin.posterior
    pm = twin.pm
    out = ["<h2>Posterior</h2>"]
    method = {
        "prior": "the population prior (no levels yet)",
        "map": "posterior mode (MAP) with the Laplace approximation around it",
        "nuts": "NUTS draws",
    }.get(post.method, post.method)
    out.append(
        f"<p>{escape(method)}; conditioned on {post.n_observations} level(s); "
        f"{'converged' if post.converged else '<b>NOT converged</b>'}; "
        f"{post.seconds:.2f} s.</p>"
    )
    if not post.converged:
        out.append(
            '<div class="warning">The posterior did not converge: treat the forecast and any '
            "recommendation with caution.</div>"
        )
    prior_sd = np.sqrt(np.diag(np.asarray(twin.omega, dtype=float)))
    post_sd = np.sqrt(np.clip(np.diag(np.asarray(post.cov, dtype=float)), 0.0, None))
    rows = []
    for name, m, s, w in zip(pm.eta_names, post.mode, post_sd, prior_sd, strict=True):
        reduction = 1.0 - s / w if w > 0 else math.nan
        rows.append(
            [escape(name), _number(w), _number(m), _number(s), escape(f"{100 * reduction:.0f}%")]
        )
    out.append("<h3>Random effects (eta)</h3>")
    out.append(
        html_table(
            ["Eta", "Prior SD", "Posterior mode", "Posterior SD", "SD reduction"],
            rows,
            [False, True, True, True, True],
        )
    )
    typical = twin._params(np.zeros(pm.n_eta))
    eta = post.sample(n_draws, key=key)
    draws = jax.vmap(lambda e: pm.individual_params(twin.theta, twin.covariate_arrays, e))(eta)
    q = (1.0 - _LEVEL) / 2.0
    rows = []
    for name, value in post.params.items():
        sample = np.asarray(draws[name], dtype=float) if name in draws else None
        interval = "–"
        if sample is not None and sample.ndim == 1 and np.ptp(sample) > 0:
            lo, hi = np.quantile(sample, [q, 1.0 - q])
            interval = f"{fmt_number(lo)} to {fmt_number(hi)}"
        rows.append(
            [
                escape(name),
                escape(_param_unit(name, twin.drug.units.concentration)),
                _number(typical.get(name)),
                _number(value),
                escape(interval),
            ]
        )
    out.append("<h3>Individual parameters</h3>")
    out.append(
        html_table(
            [
                "Parameter",
                "Unit",
                "Typical (this patient's covariates)",
                "Individual (posterior mode)",
                f"{round(100 * _LEVEL)}% credible interval",
            ],
            rows,
            [False, False, True, True, True],
        )
    )
    out.append(
        f'<p class="note">Intervals from {n_draws} posterior draws. Units from the project\'s '
        "conventions (time h, amounts mg, volumes L, clearances L/h, rate constants 1/h); "
        "'model' where a parameter's unit is the model's own.</p>"
    )
    return "\n".join(out)


def _param_unit(name: str, concentration: str) -> str:
    """The unit of a model parameter by the project's naming conventions (DESIGN.md: time
    h, amounts mg, volumes L): clearances `CL*`/`Q*` L/h, volumes `V*` L, rate constants
    `K*` 1/h, lags `ALAG*`/durations `D<n>`/`MTT` h, `F*` a fraction, `EC50`/`IC50` the
    drug's concentration unit; otherwise "model"."""
    n = name.upper()
    if n.startswith(("CL", "Q")):
        return "L/h"
    if n.startswith("V") and (len(n) == 1 or n[1:].isdigit() or n[1:] in ("C", "P", "SS")):
        return "L"
    if n.startswith("ALAG") or n == "MTT" or (n.startswith("D") and n[1:].isdigit()):
        return "h"
    if n.startswith("K") and not n.startswith("KIN"):
        return "1/h"
    if n.startswith("F") and (len(n) == 1 or n[1:].isdigit()):
        return "fraction"
    if n in ("EC50", "IC50"):
        return concentration
    return "model"


def _grid(twin: DigitalTwin, plan: pkpd.Regimen | None) -> np.ndarray:
    ends = [0.0]
    tau = float(twin.drug.dosing.interval)
    for reg in (twin.history, plan):
        if reg is not None:
            t = np.asarray(reg.time, dtype=float)[np.asarray(reg.mask, dtype=bool)]
            if t.size:
                ends.append(float(t.max()) + 2.0 * tau)
    if len(twin.observations):
        ends.append(float(twin.observations["TIME"].to_numpy(dtype=float).max()) + tau)
    return np.linspace(0.0, max(ends), 400)


def _forecast_figure(fc: Forecast, target: Target | None, title: str) -> str:
    from matplotlib.figure import Figure  # here: matplotlib takes a second to import

    fig = Figure(figsize=(9.0, 4.6), layout="constrained", label=title)
    ax = fig.add_subplot()
    fc.plot(ax=ax, target=target, title=title)
    return png_img(fig)


def _forecast_section(
    twin: DigitalTwin,
    regimen: pkpd.Regimen | None,
    times: Any,
    target: Target | None,
    key: jax.Array,
    n_draws: int,
) -> str:
    grid = _grid(twin, regimen) if times is None else np.asarray(times, dtype=float)
    fc = twin.forecast(grid, regimen, key=key, n_draws=n_draws)
    kind = "prediction" if fc.prediction_interval else "credible"
    planned = "" if regimen is None else " and the planned doses"
    out = [
        "<h2>Forecast</h2>",
        _forecast_figure(fc, target, f"{twin.drug.name}: forecast for {twin.patient_id}"),
        f'<p class="note">Median and central {round(100 * fc.level)}% {kind} band over '
        f"{n_draws} posterior draws, on the doses given{planned}; dots: observed levels; grey "
        "lines: doses.</p>",
    ]
    if regimen is not None:
        out.append("<h3>Planned doses</h3>")
        out.append(
            html_table(
                ["Time (h)", f"Amount ({escape(twin.drug.units.dose)})", "Compartment", "Form"],
                _events(regimen),
                [True, True, True, False],
            )
        )
    return "\n".join(out)


def _recommendation_section(
    twin: DigitalTwin, rec: Recommendation, key: jax.Array, n_draws: int
) -> str:
    t = rec.target
    out = [
        "<h2>Dose recommendation</h2>",
        f"<p><b>{escape(str(rec))}</b></p>",
        f'<p class="note">Target: {escape(t.metric.name)} {t.low:g}–{t.high:g} {escape(t.unit)} '
        f"({escape(t.reference)}). The dose maximises the posterior probability of the window "
        f"over {rec.n_doses} doses; the metric is read on the last dosing interval.</p>",
    ]
    if rec.continuous_dose is not None:
        unit = escape(rec.unit)
        rows = [
            ["Continuous optimum", f"{_number(rec.continuous_dose)} {unit}"],
            ["Recommended (admissible) dose", f"{_number(rec.dose)} {unit}"],
            ["Interval", f"{_number(rec.interval)} h"],
            ["Bound by", escape(rec.bound or "none (the optimum is admissible)")],
        ]
        if rec.duration is not None:
            rows.append(["Infusion duration", f"{_number(rec.duration)} h"])
        if rec.loading_dose is not None:
            rows.append(["Loading dose (first)", f"{_number(rec.loading_dose)} {unit}"])
        rows.append(["P(in window) at the recommended dose", escape(f"{rec.probability:.0%}")])
        out.append(html_table(["", "Value"], rows, [False, True]))
    if rec.required_probability is not None and not rec.achieved:
        out.append(
            f'<div class="warning">The required probability ({rec.required_probability:.0%}) '
            f"is not reached: the best dose gives {rec.probability:.0%}.</div>"
        )
    if len(rec.candidates) > 1:
        rows = [
            [
                _number(r["interval"]),
                _number(r["dose"]),
                _number(r["daily_dose"]),
                escape(f"{r['probability']:.0%}"),
                _number(r["metric_median"]),
            ]
            for r in rec.candidates.to_dict("records")
        ]
        out.append(
            html_table(
                [
                    "Interval (h)",
                    "Dose",
                    "Daily dose",
                    "P(in window)",
                    f"Median {escape(t.metric.name)}",
                ],
                rows,
                [True] * 5,
            )
        )
    fc = twin.forecast(_grid(twin, rec.regimen), rec.regimen, key=key, n_draws=n_draws)
    title = f"{twin.drug.name}: forecast under the recommended dose"
    if rec.metric_values is None:
        out.append(_forecast_figure(fc, t, title))
    else:
        out.append(_forecast_and_metric_figure(fc, rec, title))
        out.append(
            f'<p class="note">{escape(t.metric.name)} of each of the {len(rec.metric_values)} '
            "posterior draws at the recommended dose (the draws the probability is computed "
            f"from); shaded: the target window {t.low:g}–{t.high:g} {escape(t.unit)}.</p>"
        )
    return "\n".join(out)


def _forecast_and_metric_figure(fc: Forecast, rec: Recommendation, title: str) -> str:
    """The forecast under the recommended dose (left; a level window shaded there) beside a
    histogram of the target metric over the posterior draws at that dose (right), the target
    window shaded on the metric's own axis (an AUC window is not drawn on a concentration
    axis)."""
    t = rec.target
    values = np.asarray(rec.metric_values, dtype=float)
    from matplotlib.figure import Figure  # here: matplotlib takes a second to import

    fig = Figure(figsize=(12.0, 4.6), layout="constrained", label=title)
    left, ax = fig.subplots(1, 2, width_ratios=[3, 1])
    fc.plot(ax=left, target=t, title=title)
    ax.hist(values, bins=40, color="tab:blue", alpha=0.7, label="posterior draws")
    ax.axvspan(t.low, t.high, color="tab:green", alpha=0.15, label="target window")
    ax.axvline(rec.metric_median, color="k", lw=1.0, label="median")
    ax.set_xlabel(f"{t.metric.name} ({t.unit})")
    ax.set_ylabel("draws")
    ax.set_title(f"{t.metric.name} at {rec.dose:.4g} every {rec.interval:g} h")
    ax.legend(loc="upper right", fontsize="small")
    return png_img(fig)


def _check_sections(sections: Sequence[Any]) -> list[tuple[str, str]]:
    if (
        isinstance(sections, tuple)
        and len(sections) == 2
        and all(isinstance(s, str) for s in sections)
    ):
        raise TypeError(
            "write_twin_report: sections must be a sequence of (title, html) pairs; got one "
            "pair: write sections=[(title, html)]."
        )
    checked = []
    for i, section in enumerate(sections):
        ok = isinstance(section, tuple | list) and len(section) == 2
        if not ok or not all(isinstance(s, str) for s in section):
            raise TypeError(
                f"write_twin_report: section {i} must be a (title, html) pair of strings, got "
                f"{section!r:.80}."
            )
        checked.append((section[0], section[1]))
    return checked


def render_twin_report(
    twin: DigitalTwin,
    *,
    regimen: pkpd.Regimen | None = None,
    target: str | Target | Recommendation | None = None,
    sections: Sequence[tuple[str, str]] = (),
    times: Any = None,
    key: jax.Array | None = None,
    n_draws: int = 500,
) -> str:
    """The twin's report as an HTML string; see `write_twin_report`."""
    from .._twin import DigitalTwin, Recommendation

    if not isinstance(twin, DigitalTwin):
        raise TypeError(f"write_twin_report: expected a twins.DigitalTwin, got {twin!r:.80}.")
    if regimen is not None and not isinstance(regimen, pkpd.Regimen):
        raise TypeError(
            f"write_twin_report: regimen must be a pkpd.Regimen, got {type(regimen).__name__}."
        )
    extra = _check_sections(sections)
    key = jax.random.key(0) if key is None else key
    k_post, k_fc, _, k_rec_fc = jax.random.split(key, 4)
    rec = None
    if isinstance(target, Recommendation):
        rec = target
    elif target is not None:  # the same key and draws as twin.recommend(target, key=key)
        rec = twin.recommend(target, key=key, n_draws=n_draws)
    shown_target = rec.target if rec is not None else None
    title = f"Digital twin: {twin.patient_id} on {twin.drug.name}"
    body = [
        f"<h1>{escape(title)}</h1>",
        _patient_section(twin),
        _drug_section(twin),
        _doses_section(twin),
        _posterior_section(twin, k_post, n_draws),
        _forecast_section(twin, regimen, times, shown_target, k_fc, n_draws),
    ]
    if rec is not None:
        body.append(_recommendation_section(twin, rec, k_rec_fc, n_draws))
    for heading, fragment in extra:
        body.append(f"<h2>{escape(heading)}</h2>\n{fragment}")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def write_twin_report(
    twin: DigitalTwin,
    path: str | os.PathLike[str],
    *,
    regimen: pkpd.Regimen | None = None,
    target: str | Target | Recommendation | None = None,
    sections: Sequence[tuple[str, str]] = (),
    times: Any = None,
    key: jax.Array | None = None,
    n_draws: int = 500,
) -> Path:
    """Write one self-contained HTML file describing a digital twin.

    Sections: the patient (demographics, labs, medications, derived covariates, genotypes
    with their CPIC activity scores and phenotypes, and the covariates the drug's model
    reads); the drug (model, reference, usual regimen, targets); the doses given and the
    levels observed; the posterior (etas: prior and posterior SD; individual parameters with
    90% credible intervals); the forecast with its band (`DigitalTwin.forecast`, drawn by
    `Forecast.plot`); a dose recommendation (`DigitalTwin.recommend`) with the forecast
    under it when `target` is given; then `sections`.

    **Arguments:**

    - `twin`: a `DigitalTwin` (updated or not).
    - `path`: the HTML file to write (folders are created).
    - `regimen`: planned doses to forecast after those given (default: the history alone).
    - `target`: a `Target` or the metric name of one of the drug's targets (the twin's
      `recommend` is called with its defaults and this call's `key` and `n_draws`, so the
      report shows what `twin.recommend(target, key=key, n_draws=n_draws)` returns), or a
      `Recommendation` already computed (for other options, e.g. `constraints=`), shown as
      given; None: no recommendation.
    - `sections`: extra `(title, html)` sections, in order, e.g.
      `surrogates.explanation_section(...)`; the HTML is inserted as given (trusted).
    - `times`: forecast times (h); default from 0 to two dosing intervals after the last
      dose.
    - `key`, `n_draws`: posterior draws for the intervals and bands (default
      `jax.random.key(0)`: the same twin gives the same file).

    **Returns:** the path written.
    """
    document = render_twin_report(
        twin,
        regimen=regimen,
        target=target,
        sections=sections,
        times=times,
        key=key,
        n_draws=n_draws,
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(document, encoding="utf-8")
    tmp.replace(out)
    return out


__all__ = ["render_twin_report", "write_twin_report"]
