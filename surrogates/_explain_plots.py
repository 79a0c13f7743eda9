"""Plots of an `Explanation`: `summary_plot` (beeswarm or bars of mean |SHAP|) and
`waterfall_plot` (one patient's prediction built up from the base value). matplotlib
figures, not registered with pyplot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure


from ._explanation import Explanation, check_row


def _axis_label(explanation: Explanation) -> str:
    return {
        "prediction": "contribution to the prediction",
        "log(prediction)": "contribution to log(prediction)",
        "probability": "contribution to the probability",
        "log-odds": "contribution to the log-odds",
    }[explanation.output_scale]


def summary_plot(
    explanation: Explanation,
    *,
    kind: Literal["beeswarm", "bar"] = "beeswarm",
    max_display: int = 12,
) -> Figure:
    """The features ranked by mean |SHAP| over the patients: a beeswarm (one dot per
    patient, coloured by the feature's value, low blue to high red) or bars of mean |SHAP|.

    **Returns:** a matplotlib `Figure` (not registered with pyplot; show it in a notebook by
    evaluating it, or `fig.savefig(...)`).
    """
    if kind not in ("beeswarm", "bar"):
        raise ValueError(f"summary_plot: kind must be 'beeswarm' or 'bar', got {kind!r}.")
    imp = explanation.importance()
    top = imp["feature"].tolist()[:max_display]
    names = list(explanation.feature_names)
    cols = [names.index(f) for f in top]
    k = len(cols)
    from matplotlib.figure import Figure  # here: matplotlib takes a second to import

    fig = Figure(figsize=(7.5, 0.45 * k + 1.6), label="SHAP summary")
    ax = fig.add_subplot()
    ys = np.arange(k)[::-1]  # the most important at the top
    if kind == "bar":
        ax.barh(ys, imp["mean_abs_shap"].to_numpy()[:k], color="#1f77b4")
        ax.set_xlabel(f"mean |SHAP| ({explanation.output_scale})")
    else:
        from matplotlib import cm, colormaps, colors

        cmap = colormaps["coolwarm"]
        for y, j in zip(ys, cols, strict=True):
            v = explanation.values[:, j]
            d = explanation.data[:, j]
            offsets = _swarm(v, 0.4)
            finite = np.isfinite(d)
            shade = _shade(d)
            ax.scatter(v[~finite], y + offsets[~finite], s=9, color="0.6", linewidths=0, alpha=0.8)
            ax.scatter(
                v[finite],
                y + offsets[finite],
                s=9,
                c=shade[finite],
                cmap=cmap,
                vmin=0.0,
                vmax=1.0,
                linewidths=0,
                alpha=0.8,
            )
        ax.axvline(0.0, color="0.5", lw=0.8, zorder=0)
        mappable = cm.ScalarMappable(norm=colors.Normalize(0.0, 1.0), cmap=cmap)
        bar = fig.colorbar(mappable, ax=ax, ticks=[0.0, 1.0], aspect=40, pad=0.02)
        bar.ax.set_yticklabels(["low", "high"])
        bar.set_label("feature value")
        ax.set_xlabel(f"SHAP value: {_axis_label(explanation)}")
    ax.set_yticks(ys)
    ax.set_yticklabels(top)
    ax.set_title(f"{explanation.surrogate}: SHAP ({explanation.method}, n = {len(explanation)})")
    fig.tight_layout()
    return fig


def _shade(d: np.ndarray) -> np.ndarray:
    """Feature values mapped to [0, 1] between their 5th and 95th percentiles (min and max
    when those coincide; 0.5 for a constant); NaN stays NaN."""
    finite = d[np.isfinite(d)]
    if finite.size == 0:
        return np.full(d.shape, np.nan)
    lo, hi = np.percentile(finite, [5, 95])
    if not hi > lo:
        lo, hi = finite.min(), finite.max()
    if not hi > lo:
        return np.where(np.isfinite(d), 0.5, np.nan)
    return np.clip((d - lo) / (hi - lo), 0.0, 1.0)


def _swarm(values: np.ndarray, width: float) -> np.ndarray:
    """Vertical offsets that stack points with close values side by side (deterministic)."""
    n = values.size
    if n == 0:
        return np.zeros(0)
    span = float(np.ptp(values)) or 1.0
    bins = np.round(100 * (values - values.min()) / span).astype(int)
    order = np.lexsort((np.arange(n), bins))
    offsets = np.zeros(n)
    layer, last = 0, None
    for i in order:
        if bins[i] != last:
            layer = 0
        offsets[i] = np.ceil(layer / 2) * (1 if layer % 2 else -1)
        layer += 1
        last = bins[i]
    top = np.abs(offsets).max()
    return offsets * (width / top) if top > 0 else offsets


def short_number(x: float) -> str:
    """`x` to 4 significant digits, `"nan"` where not finite (tables and plot labels)."""
    return "nan" if not np.isfinite(x) else f"{x:.4g}"


def waterfall_plot(explanation: Explanation, row: int = 0, *, max_display: int = 10) -> Figure:
    """One patient's prediction built up from the base value, one bar per feature (the
    largest `max_display - 1` contributions; the rest summed in one bar), red up, blue down.

    **Returns:** a matplotlib `Figure` (not registered with pyplot).
    """
    row = check_row(row, len(explanation), "waterfall_plot")
    if not (isinstance(max_display, int) and max_display >= 2):
        raise ValueError(f"waterfall_plot: max_display must be an integer >= 2, got {max_display}.")
    contrib = explanation.contributions(row)
    shown = contrib.iloc[: max_display - 1] if len(contrib) > max_display else contrib
    rest = contrib.iloc[len(shown) :]
    labels = [
        f"{f} = {short_number(v)}" for f, v in zip(shown["feature"], shown["value"], strict=True)
    ]
    steps = shown["shap"].tolist()
    if len(rest):
        labels.append(f"{len(rest)} other features")
        steps.append(float(rest["shap"].sum()))
    # Bottom to top: the smallest first, so that the largest sits next to the prediction.
    labels, steps = labels[::-1], steps[::-1]
    base = float(explanation.base_values[row])
    from matplotlib.figure import Figure  # here: matplotlib takes a second to import

    fig = Figure(figsize=(7.5, 0.42 * len(steps) + 1.8), label="SHAP waterfall")
    ax = fig.add_subplot()
    left = base
    span = max(abs(s) for s in steps) if steps else 1.0
    for y, s in enumerate(steps):
        colour = "#ff0d57" if s >= 0 else "#1e88e5"
        ax.barh(y, s, left=left, color=colour, height=0.7)
        ax.text(
            left + s + (0.01 * span if s >= 0 else -0.01 * span),
            y,
            f"{s:+.3g}",
            va="center",
            ha="left" if s >= 0 else "right",
            fontsize=8,
        )
        left += s
    ends = np.cumsum([base, *steps])
    low, high = float(ends.min()), float(ends.max())
    pad = 0.15 * (high - low or 1.0)
    ax.set_xlim(low - pad, high + pad)
    ax.axvline(base, color="0.5", lw=0.8, ls="--")
    ax.axvline(left, color="0.2", lw=0.8)
    ax.set_yticks(np.arange(len(steps)))
    ax.set_yticklabels(labels, fontsize=9)
    ax.set_xlabel(
        f"{explanation.output_scale}: base value {base:.4g} -> f(x) = "
        f"{float(explanation.prediction[row]):.4g}"
    )
    ax.set_title(f"{explanation.surrogate}: why this prediction (row {row})")
    fig.tight_layout()
    return fig
