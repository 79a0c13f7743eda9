"""The trial report as a reviewer reads it (issue 22, "Reports a reviewer trusts"), on a real
run of examples/vancomycin_trial.toml (60 patients per arm):

- units on every endpoint (levels in the output's mg/L, the AUC in mg·h/L, none empty);
- a zero proportion has the interval (0, z^2/(n+z^2)) exactly (Wilson at x = 0);
- the AUC24 400-600 window is on the AUC axis, the trough target 10-20 mg/L on the level axis;
- paired differences equal a numpy/scipy computation of the within-patient differences read
  from the results folder (t interval; Newcombe's paired interval typed out here);
- subgroup levels in their natural order; the time-to-event note when times are a visit grid;
- the probability of target attainment against dose against a count from the parquet parts.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from twins.app._report import (
    attainment_by_dose,
    attainment_by_mic,
    attainment_figure,
    attainment_mic_figure,
    band_figure,
    exposure_figure,
    exposure_summary,
    render_report,
)
from twins.app._spec import load_trial
from twins.trials._run import run_trial
from twins.trials._summary import (
    difference_table,
    endpoint_table,
    level_order,
    output_unit,
    paired_newcombe,
    read_results,
    subgroup_table,
    wilson_interval,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
N = 60


@pytest.fixture(scope="module")
def vanc(tmp_path_factory):
    trial, _ = load_trial(EXAMPLES / "vancomycin_trial.toml")
    out = run_trial(
        trial,
        tmp_path_factory.mktemp("vanc") / "run",
        n=N,
        seed=3,
        chunk_size=N,
        progress=False,
        summary=False,
    )
    return read_results(out), pd.read_parquet(out / "patients")


def _endpoint(results, name):
    return next(e for e in results.spec["endpoints"] if e["name"] == name)


def test_units_on_every_endpoint(vanc):
    results, _ = vanc
    table = endpoint_table(results)
    units = dict(zip(table["endpoint"], table["unit"], strict=False))
    assert output_unit(results.spec) == "mg/L"
    assert units["trough_end"] == "mg/L" and units["peak_day7"] == "mg/L"
    assert units["auc24_day7"] == "mg·h/L"
    assert units["time_to_trough_10_20"] == "days"
    assert all(u and u != "output x h" for u in table["unit"])
    html = render_report(results)
    # The spec section shows spec.json as recorded; every table and figure uses the units.
    start, stop = html.index("<h2>Specification</h2>"), html.index("<h2>Population</h2>")
    assert "output x h" not in html[:start] + html[stop:]
    section = html[html.index("<h2>Endpoints</h2>") : html.index("<h2>Exposure</h2>")]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", section)
    names = [c for c in cells if c.startswith(("Trough", "AUC24", "Highest", "Time", "Any"))]
    assert len(names) == len(results.spec["endpoints"])
    for name in names:  # every endpoint name ends with its unit in brackets, none empty
        assert re.search(r"\((mg/L|mg\.h/L|mg·h/L|%|% of time|days)\)$", name), name
    assert "AUC24 on day 7 (mg.h/L) (mg" not in html  # no unit repeated after the label


def test_output_unit_forms():
    assert output_unit({"bands": {"unit": "vancomycin serum concentration, mg/L"}}) == "mg/L"
    assert output_unit({"bands": {"unit": "INR (ratio)"}}) == "INR"
    assert output_unit({}) == ""


def test_zero_proportion_interval_is_exactly_zero():
    z = stats.norm.ppf(0.975)
    for n in (1, 60, 300):
        low, high = wilson_interval(np.array([0, n]), np.array([n, n]))
        assert low[0] == 0.0 and high[1] == 1.0
        # Wilson at x = 0: upper limit z^2 / (n + z^2); at x = n the lower limit n/(n + z^2).
        assert high[0] == pytest.approx(z * z / (n + z * z), rel=1e-12)
        assert low[1] == pytest.approx(n / (n + z * z), rel=1e-12)


def test_reference_lines_on_their_own_axis(vanc):
    results, _ = vanc
    ax = band_figure(results).axes[0]
    assert "mg/L" in ax.get_ylabel()
    horizontal = sorted(
        float(line.get_ydata()[0])
        for line in ax.get_lines()
        if np.ptp(np.asarray(line.get_ydata(), float)) == 0 and len(line.get_ydata()) == 2
    )
    assert horizontal == [10.0, 20.0]  # the trough target, not the AUC's 400/600
    ax = exposure_figure(results, _endpoint(results, "auc24_day7")).axes[0]
    assert "mg·h/L" in ax.get_xlabel().replace("mg.h/L", "mg·h/L")
    vertical = sorted(
        float(line.get_xdata()[0])
        for line in ax.get_lines()
        if np.ptp(np.asarray(line.get_xdata(), float)) == 0
    )
    assert vertical == [400.0, 600.0]
    ax = exposure_figure(results, _endpoint(results, "trough_end")).axes[0]
    assert not ax.get_lines()  # no attainment endpoint on the final level


def test_exposure_summary_quantiles(vanc):
    results, patients = vanc
    s = exposure_summary(results)
    assert set(s["endpoint"]) == {"trough_end", "auc24_day7", "peak_day7"}
    row = s[(s["endpoint"] == "auc24_day7") & (s["arm"] == "per_kg")].iloc[0]
    v = patients.loc[patients["arm"] == "per_kg", "auc24_day7"].dropna().to_numpy(float)
    assert row["n"] == v.size
    np.testing.assert_allclose(
        [row["q0.05"], row["q0.5"], row["q0.95"]], np.quantile(v, [0.05, 0.5, 0.95]), rtol=1e-12
    )


def _pairs(patients, arm, ref, name):
    wide = patients.pivot(index="patient", columns="arm", values=name)
    return wide[[arm, ref]].astype(float).dropna()


def _newcombe_paired(a, b, c, d, z):
    """Newcombe (1998) Stat Med 17:2635-2650, method 10, typed from the paper's formulas."""
    n = a + b + c + d

    def wilson(x):
        p = x / n
        centre = (2 * n * p + z * z) / (2 * (n + z * z))
        half = z * math.sqrt(z * z + 4 * n * p * (1 - p)) / (2 * (n + z * z))
        return centre - half, centre + half

    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b)
    l2, u2 = wilson(a + c)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    if margins == 0:
        phi = 0.0
    else:
        num = a * d - b * c
        num = max(num - n / 2, 0.0) if num > 0 else num
        phi = num / math.sqrt(margins)
    delta = math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    eps = math.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    return 100 * (p1 - p2), 100 * (p1 - p2 - delta), 100 * (p1 - p2 + eps)


def test_paired_differences_against_the_results_folder(vanc):
    results, patients = vanc
    table = difference_table(results)
    independent = difference_table(results, paired=False)
    z = stats.norm.ppf(0.975)
    for arm in ("per_kg", "trough_guided"):
        for name in ("trough_end", "auc24_day7", "peak_day7"):
            pair = _pairs(patients, arm, "fixed_1g", name)
            diff = (pair[arm] - pair["fixed_1g"]).to_numpy()
            ci = stats.ttest_1samp(diff, 0.0).confidence_interval(0.95)
            row = table[(table["arm"] == arm) & (table["endpoint"] == name)].iloc[0]
            assert row["n"] == diff.size
            assert row["difference"] == pytest.approx(diff.mean(), rel=1e-12)
            assert row["ci_low"] == pytest.approx(ci.low, rel=1e-10)
            assert row["ci_high"] == pytest.approx(ci.high, rel=1e-10)
            assert row["method"].startswith("paired")
            wide = independent[(independent["arm"] == arm) & (independent["endpoint"] == name)]
            # The same patients in both arms: the within-patient interval is narrower.
            assert row["ci_high"] - row["ci_low"] < float(
                (wide["ci_high"] - wide["ci_low"]).iloc[0]
            )
        for name in ("trough_ge20", "auc24_400_600"):
            pair = _pairs(patients, arm, "fixed_1g", name) > 0.5
            x, y = pair[arm].to_numpy(), pair["fixed_1g"].to_numpy()
            counts = [int(np.sum(x & y)), int(np.sum(x & ~y)), int(np.sum(~x & y))]
            counts.append(int(np.sum(~x & ~y)))
            expected = _newcombe_paired(*counts, z)
            row = table[(table["arm"] == arm) & (table["endpoint"] == name)].iloc[0]
            np.testing.assert_allclose(
                [row["difference"], row["ci_low"], row["ci_high"]], expected, rtol=1e-10
            )
            assert row["method"] == "Newcombe paired score"


def test_paired_newcombe_edge_cases():
    # No discordant pairs: difference 0, and the interval still has width (Wilson limits).
    d, lo, hi = paired_newcombe(np.array([10.0]), np.array([0.0]), np.array([0.0]), [10.0])
    assert d[0] == 0.0 and lo[0] < 0 < hi[0]
    # All pairs (1, 0): difference 100 points, upper limit 100.
    d, lo, hi = paired_newcombe([0.0], [20.0], [0.0], [0.0])
    assert d[0] == 100.0 and hi[0] == pytest.approx(100.0) and lo[0] < 100.0
    d, lo, hi = paired_newcombe([0.0], [0.0], [0.0], [0.0])
    assert np.isnan(d[0]) and np.isnan(lo[0])


def test_subgroup_paired_within_level(vanc):
    results, patients = vanc
    sub = subgroup_table(results)
    rows = sub[(sub["subgroup"] == "sex") & (sub["endpoint"] == "trough_end")]
    for level in ("female", "male"):
        row = rows[(rows["arm"] == "per_kg") & (rows["level"] == level)].iloc[0]
        keep = patients[patients["sex"] == level]
        pair = _pairs(keep, "per_kg", "fixed_1g", "trough_end")
        diff = (pair["per_kg"] - pair["fixed_1g"]).to_numpy()
        ci = stats.ttest_1samp(diff, 0.0).confidence_interval(0.95)
        assert row["difference"] == pytest.approx(diff.mean(), rel=1e-12)
        assert row["difference_ci_low"] == pytest.approx(ci.low, rel=1e-10)


def test_subgroup_levels_in_natural_order(vanc):
    assert level_order([">75", "65-75", "<65"]) == ["<65", "65-75", ">75"]
    assert level_order(["(missing)", ">=90", "<30", "60-89", "30-59"]) == [
        "<30",
        "30-59",
        "60-89",
        ">=90",
        "(missing)",
    ]
    assert level_order(["male", "female"]) == ["female", "male"]
    results, patients = vanc
    sub = subgroup_table(results)
    seen = list(dict.fromkeys(sub.loc[sub["subgroup"] == "renal_function", "level"]))
    natural = [v for v in ["<30", "30-59", "60-89", ">=90"] if v in set(patients["renal_function"])]
    assert seen == natural and len(seen) >= 2


def test_time_to_event_says_it_is_on_the_visit_grid(vanc):
    results, patients = vanc
    table = endpoint_table(results)
    rows = table[table["endpoint"] == "time_to_trough_10_20"]
    times = np.unique(patients["time_to_trough_10_20"].dropna())
    assert times.size <= 4  # visits before doses 5, 9, 13 (and the end)
    for r in rows.to_dict("records"):
        assert "visit" in r["note"]
        grid = re.search(r"\(([\d., ]+) days\)", r["note"]).group(1)
        assert [float(v) for v in grid.split(",")] == pytest.approx(list(times))


def test_attainment_against_dose(vanc):
    results, patients = vanc
    table = attainment_by_dose(results, _endpoint(results, "auc24_400_600"))
    per = patients[patients["arm"] == "per_kg"].dropna(subset=["auc24_400_600"])
    counts = per.groupby("final_dose")["auc24_400_600"].agg(["size", "sum"])
    mine = table[table["arm"] == "per_kg"].set_index("dose")
    np.testing.assert_array_equal(mine["n"], counts["size"])
    np.testing.assert_allclose(mine["estimate"], 100 * counts["sum"] / counts["size"])
    fig = attainment_figure(results, _endpoint(results, "auc24_400_600"))
    assert fig is not None
    ax = fig.axes[0]
    assert "dose (mg)" in ax.get_xlabel() and "%" in ax.get_ylabel()


def test_report_html_says_paired(vanc):
    results, _ = vanc
    html = render_report(results)
    assert "Paired differences" in html and "Newcombe paired score" in html
    assert 'alt="pta auc24_400_600"' in html
    assert "e-17" not in html and "e-16" not in html


def test_reference_lines_of_a_drug_not_in_the_registry(vanc):
    results, _ = vanc
    spec = dict(results.spec)
    spec["drug"] = "not_a_registered_drug"
    assert spec["bands"]["reference_lines"] == [400.0, 600.0]  # the AUC window, as recorded
    ax = band_figure(dataclasses.replace(results, spec=spec)).axes[0]
    # 400/600 are the bounds of the AUC attainment endpoint: not drawn on the mg/L axis.
    assert not [line for line in ax.get_lines() if len(line.get_ydata()) == 2]
    spec["bands"] = {**spec["bands"], "reference_lines": [15.0]}
    ax = band_figure(dataclasses.replace(results, spec=spec)).axes[0]
    flat = [line.get_ydata()[0] for line in ax.get_lines() if len(line.get_ydata()) == 2]
    assert flat == [15.0]


def test_attainment_against_mic(vanc):
    # Vancomycin's AUC target is stated at MIC 1 mg/L (Rybak 2020): AUC24/MIC >= 400.
    results, patients = vanc
    table = attainment_by_mic(results, _endpoint(results, "auc24_400_600"))
    assert list(table["mic"].unique()) == [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    for arm in ("fixed_1g", "trough_guided"):
        auc = patients.loc[patients["arm"] == arm, "auc24_day7"].dropna().to_numpy(float)
        for mic in (0.5, 1.0, 2.0):
            row = table[(table["arm"] == arm) & (table["mic"] == mic)].iloc[0]
            assert row["attained"] == int(np.sum(auc >= 400.0 * mic))
            assert row["estimate"] == pytest.approx(100 * np.mean(auc >= 400.0 * mic))
    assert attainment_mic_figure(results, _endpoint(results, "auc24_400_600")) is not None
    spec = {**results.spec, "drug": "not_a_registered_drug"}
    unknown = dataclasses.replace(results, spec=spec)
    assert attainment_by_mic(unknown, _endpoint(results, "auc24_400_600")).empty
