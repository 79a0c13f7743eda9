"""Trial results folder -> endpoint statistics and HTML report (twins.trials._summary and
twins.app._report).

The references are computed here independently: scipy.stats.t and ttest_ind for means and
Welch, the Wilson and Newcombe formulas typed out, Greenwood's variance on the log-log scale
for the Kaplan-Meier interval, a hand-worked Kaplan-Meier median, and numpy.quantile of the
samples behind the band histogram.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy import stats

from twins.app._report import write_report
from twins.trials._summary import (
    DamagedResultsError,
    band_quantiles,
    difference_table,
    endpoint_table,
    kaplan_meier_median,
    population_summary,
    read_results,
    subgroup_table,
)

ARMS = ("control", "pgx")
EDGES = np.linspace(0.0, 6.0, 61)  # bin width 0.1
N = 300  # patients per arm
N_PARTS = 3
DAYS = np.arange(1.0, 8.0)
BAND_SAMPLES = 400


def _spec() -> dict:
    return {
        "name": "Synthetic warfarin trial",
        "description": "A test trial <with> markup & 'quotes'.",
        "drug": "warfarin",
        "seed": 7,
        "duration_days": 28.0,
        "arms": [
            {"name": "control", "label": "Standard dosing", "description": "5 mg daily"},
            {"name": "pgx", "label": "Genotype-guided", "description": "IWPC algorithm"},
        ],
        "endpoints": [
            {"name": "inr_mean", "label": "Mean INR", "kind": "mean", "unit": ""},
            {
                "name": "in_range",
                "label": "INR in range at day 28",
                "kind": "proportion",
                "unit": "%",
            },
            {
                "name": "t_stable",
                "label": "Time to stable INR",
                "kind": "time_to_event",
                "unit": "days",
            },
            {"name": "t_bleed", "label": "Time to bleed", "kind": "time_to_event", "unit": "days"},
        ],
        "subgroups": ["genotype"],
        "covariates": ["age", "weight"],
        "categorical": ["sex", "genotype"],
        "bands": {"output": "INR", "unit": "", "edges": EDGES.tolist(), "reference_lines": [2, 3]},
        "published": {
            "control": {"in_range": 55.5},
            "pgx": {"inr_mean": 2.61},
            "source": "Test et al. 2024",
            "notes": "Figures read from a table.",
        },
        "provenance": {"version": "0.1.0", "seed": 7, "spec_hash": "abc123", "started_utc": "x"},
        "assumptions": ["Adherence is perfect.", "No drug interactions."],
    }


def _patients(rng: np.random.Generator) -> pd.DataFrame:
    frames = []
    genotype = rng.choice(["AA", "AG", "GG"], N, p=[0.3, 0.5, 0.2]).astype(object)
    genotype[:4] = None  # missing: the level "(missing)"
    age = rng.uniform(20, 90, N)
    weight = rng.normal(80, 12, N)
    sex = rng.choice(["female", "male"], N)
    for k, arm in enumerate(ARMS):
        hazard = 1 / (10.0 + 5 * k)
        t_event = rng.exponential(1 / hazard, N)
        censor = rng.uniform(5, 40, N)
        t_bleed = rng.exponential(500.0, N)
        inr = rng.normal(2.4 + 0.2 * k, 0.5 + 0.2 * k, N)
        inr[N - 3 :] = np.nan  # missing values are dropped
        frames.append(
            pd.DataFrame(
                {
                    "patient": [f"P{i:04d}" for i in range(N)],
                    "arm": arm,
                    "genotype": genotype,
                    "age": age,
                    "weight": weight,
                    "sex": sex,
                    "inr_mean": inr,
                    "in_range": rng.random(N) < 0.5 + 0.1 * k,
                    "t_stable": np.minimum(t_event, censor),
                    "t_stable_event": t_event <= censor,
                    "t_bleed": np.minimum(t_bleed, 28.0),
                    "t_bleed_event": t_bleed <= 28.0,
                    "unused": rng.random(N),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _band_samples(rng: np.random.Generator) -> dict[tuple[str, float], np.ndarray]:
    samples = {}
    for k, arm in enumerate(ARMS):
        for day in DAYS:
            samples[arm, day] = rng.normal(1.0 + 0.25 * day + 0.3 * k, 0.6, BAND_SAMPLES)
    # A day where most values lie beyond the top edge (overflow) and some below 0.
    samples["pgx", 99.0] = np.concatenate([rng.normal(8.0, 0.5, 380), -np.ones(20)])
    return samples


def _histogram(arm: str, day: float, x: np.ndarray) -> pd.DataFrame:
    b = np.searchsorted(EDGES, x, side="right") - 1  # edges[b] <= x < edges[b+1]; -1; B
    bins, counts = np.unique(b, return_counts=True)
    return pd.DataFrame(
        {
            "arm": arm,
            "day": np.full(bins.size, day),
            "bin": bins.astype(np.int32),
            "count": counts.astype(np.int64),
        }
    )


def make_results(
    root: Path, *, complete: bool = True, seed: int = 0
) -> tuple[Path, pd.DataFrame, dict[tuple[str, float], np.ndarray]]:
    rng = np.random.default_rng(seed)
    patients = _patients(rng)
    samples = _band_samples(rng)
    (root / "patients").mkdir(parents=True)
    (root / "bands").mkdir()
    (root / "spec.json").write_text(json.dumps(_spec()))
    manifest = {
        "n_patients": N,
        "chunk_size": N // N_PARTS,
        "n_chunks": N_PARTS + (0 if complete else 1),
        "chunks_done": list(range(N_PARTS)),
        "complete": complete,
        "wall_s": 12.5,
        "finished_utc": "2024-01-01T00:00:00Z",
    }
    chunk = np.arange(len(patients)) % N // (N // N_PARTS)
    for c in range(N_PARTS):
        patients[chunk == c].to_parquet(root / "patients" / f"part-{c:05d}.parquet")
    # Split every histogram in two parts (first half and second half of the samples) so
    # that counts of equal (arm, day, bin) must add up.
    for part, half in enumerate((slice(0, None, 2), slice(1, None, 2))):
        frame = pd.concat([_histogram(a, d, x[half]) for (a, d), x in samples.items()])
        frame.to_parquet(root / "bands" / f"part-{part:05d}.parquet", index=False)
    manifest["parts"] = record_parts(root)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root, patients, samples


def record_parts(root: Path) -> dict[str, dict[str, object]]:
    """The manifest's record of every part in a results folder (what the engine writes)."""
    return {
        f"{p.parent.name}/{p.name}": {
            "rows": pq.ParquetFile(p).metadata.num_rows,
            "bytes": p.stat().st_size,
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
        }
        for p in sorted(root.glob("*/part-*.parquet"))
    }


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_results(tmp_path_factory.mktemp("trial") / "results")


def _wilson(x, n, z):
    p = x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


# --------------------------------------------------------------------------------------------


def test_read_results(folder):
    root, patients, _ = folder
    res = read_results(root)
    assert len(res.patients) == len(patients)
    assert list(res.patients["arm"].cat.categories) == list(ARMS)
    assert "unused" not in res.patients.columns
    assert res.patient_parts == tuple(f"part-{c:05d}.parquet" for c in range(N_PARTS))
    assert res.manifest["complete"] is True
    # Bands: counts from the two parts summed.
    total = res.bands.groupby(["arm", "day"], observed=True)["count"].sum()
    assert total.loc[("control", 1.0)] == BAND_SAMPLES


def test_endpoint_table_means_and_proportions(folder):
    root, patients, _ = folder
    table = endpoint_table(read_results(root), level=0.9)
    assert list(table.columns) == [
        "arm", "endpoint", "label", "kind", "unit", "n", "estimate", "ci_low", "ci_high",
        "published", "note",
    ]  # fmt: skip
    assert len(table) == len(ARMS) * 4
    z = stats.norm.ppf(0.95)
    for arm in ARMS:
        x = patients.loc[patients["arm"] == arm, "inr_mean"].dropna().to_numpy()
        row = table[(table["arm"] == arm) & (table["endpoint"] == "inr_mean")].iloc[0]
        half = stats.t.ppf(0.95, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
        assert row["n"] == x.size == N - 3
        assert row["estimate"] == pytest.approx(x.mean(), rel=1e-12)
        assert row["ci_low"] == pytest.approx(x.mean() - half, rel=1e-10)
        assert row["ci_high"] == pytest.approx(x.mean() + half, rel=1e-10)

        b = patients.loc[patients["arm"] == arm, "in_range"].to_numpy()
        row = table[(table["arm"] == arm) & (table["endpoint"] == "in_range")].iloc[0]
        lo, hi = _wilson(b.sum(), b.size, z)
        assert row["estimate"] == pytest.approx(100 * b.mean(), rel=1e-12)
        assert row["ci_low"] == pytest.approx(100 * lo, rel=1e-10)
        assert row["ci_high"] == pytest.approx(100 * hi, rel=1e-10)
    published = table.set_index(["arm", "endpoint"])["published"]
    assert published.loc[("control", "in_range")] == 55.5
    assert published.loc[("pgx", "inr_mean")] == 2.61
    assert np.isnan(published.loc[("control", "inr_mean")])


def test_wilson_known_value():
    # Wilson (1927) interval for 81 successes in 263 trials: 0.2553 to 0.3662 (95%), as
    # tabulated by Newcombe RG (1998), Two-sided confidence intervals for the single
    # proportion, Stat Med 17:857-872, Table II.
    from twins.trials._summary import wilson_interval

    lo, hi = wilson_interval(np.array([81.0]), np.array([263.0]), 0.95)
    assert lo[0] == pytest.approx(0.2553, abs=1e-4)
    assert hi[0] == pytest.approx(0.3662, abs=1e-4)


def test_kaplan_meier_median_hand_worked():
    # t: 1, 2, 2+, 3, 4+, 5, 6, 7+ (+ = censored). At risk / events:
    # t=1: 8/1 -> S = 7/8 = 0.875; t=2: 7/1 -> 0.75; t=3: 5/1 -> 0.6; t=5: 3/1 -> 0.4;
    # t=6: 2/1 -> 0.2. The median is the first time with S <= 0.5: t = 5.
    t = np.array([1, 2, 2, 3, 4, 5, 6, 7.0])
    e = np.array([1, 1, 0, 1, 0, 1, 1, 0], bool)
    median, _, _, note = kaplan_meier_median(t, e)
    assert median == 5.0
    # All events, S(5) = 0.5 exactly: the smallest time with S <= 0.5 is 5.
    median, _, _, _ = kaplan_meier_median(np.arange(1.0, 11.0), np.ones(10, bool))
    assert median == 5.0
    # Never below 0.5: not reached -> inf, and the note says so.
    median, _, high, note = kaplan_meier_median(
        np.array([1.0, 2, 3, 4, 5]), np.array([1, 0, 0, 0, 0], bool)
    )
    assert median == math.inf and high == math.inf
    assert "not reached" in note


def test_kaplan_meier_interval_against_greenwood_loglog():
    rng = np.random.default_rng(3)
    t_event = rng.exponential(10.0, 200)
    censor = rng.uniform(0, 30, 200)
    t = np.round(np.minimum(t_event, censor), 1)
    e = t_event <= censor
    median, low, high, _ = kaplan_meier_median(t, e, level=0.95)
    # Kaplan-Meier with Greenwood's variance, log-log pointwise interval, written out.
    times = np.unique(t[e])
    at_risk = np.array([(t >= s).sum() for s in times])
    events = np.array([((t == s) & e).sum() for s in times])
    s = np.cumprod(1 - events / at_risk)
    greenwood = np.cumsum(events / (at_risk * (at_risk - events)))
    z = stats.norm.ppf(0.975)
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.sqrt(greenwood) / np.abs(np.log(s))
    s_low, s_high = s ** np.exp(z * se), s ** np.exp(-z * se)
    assert median == times[np.argmax(s <= 0.5)]
    assert low == times[np.argmax(s_low <= 0.5)]
    assert high == times[np.argmax(s_high <= 0.5)]
    assert low < median < high


def test_time_to_event_in_endpoint_table(folder):
    root, patients, _ = folder
    table = endpoint_table(read_results(root))
    for arm in ARMS:
        p = patients[patients["arm"] == arm]
        ref = kaplan_meier_median(p["t_stable"].to_numpy(), p["t_stable_event"].to_numpy())
        row = table[(table["arm"] == arm) & (table["endpoint"] == "t_stable")].iloc[0]
        assert (row["estimate"], row["ci_low"], row["ci_high"]) == ref[:3]
        assert np.isfinite(row["estimate"])
        # Exponential with censoring: the median is near 10 log 2 (control) / 15 log 2.
        true = (10.0 + 5 * ARMS.index(arm)) * math.log(2)
        assert row["ci_low"] < true * 1.3 and row["ci_high"] > true / 1.3


def test_median_not_reached_is_inf(folder):
    root, _, _ = folder
    table = endpoint_table(read_results(root))
    rows = table[table["endpoint"] == "t_bleed"]
    assert (rows["estimate"] == math.inf).all() and (rows["ci_high"] == math.inf).all()
    assert rows["note"].str.contains("not reached").all()


def test_reference_arm(tmp_path):
    root, patients, _ = make_results(tmp_path / "r")
    spec = json.loads((root / "spec.json").read_text())
    spec["reference_arm"] = "pgx"
    (root / "spec.json").write_text(json.dumps(spec))
    table = difference_table(read_results(root))
    assert list(table["arm"]) == ["control", "control"]
    assert set(table["reference"]) == {"pgx"}
    x = patients.groupby("arm")["inr_mean"].mean()
    row = table[table["endpoint"] == "inr_mean"].iloc[0]
    assert row["difference"] == pytest.approx(x["control"] - x["pgx"], rel=1e-12)


def test_difference_table(folder):
    root, patients, _ = folder
    table = difference_table(read_results(root), paired=False)
    assert list(table.columns) == [
        "arm", "reference", "endpoint", "label", "kind", "unit", "n", "n_reference",
        "estimate", "reference_estimate", "difference", "ci_low", "ci_high", "method",
    ]  # fmt: skip
    assert list(table["endpoint"]) == ["inr_mean", "in_range"]
    assert set(table["arm"]) == {"pgx"} and set(table["reference"]) == {"control"}
    x1 = patients.loc[patients["arm"] == "pgx", "inr_mean"].dropna().to_numpy()
    x0 = patients.loc[patients["arm"] == "control", "inr_mean"].dropna().to_numpy()
    ci = stats.ttest_ind(x1, x0, equal_var=False).confidence_interval(0.95)
    row = table[table["endpoint"] == "inr_mean"].iloc[0]
    assert row["difference"] == pytest.approx(x1.mean() - x0.mean(), rel=1e-12)
    assert row["ci_low"] == pytest.approx(ci.low, rel=1e-10)
    assert row["ci_high"] == pytest.approx(ci.high, rel=1e-10)
    # Newcombe (1998) method 10 from the Wilson limits.
    b1 = patients.loc[patients["arm"] == "pgx", "in_range"].to_numpy()
    b0 = patients.loc[patients["arm"] == "control", "in_range"].to_numpy()
    z = stats.norm.ppf(0.975)
    p1, p0 = b1.mean(), b0.mean()
    l1, u1 = _wilson(b1.sum(), b1.size, z)
    l0, u0 = _wilson(b0.sum(), b0.size, z)
    d = p1 - p0
    row = table[table["endpoint"] == "in_range"].iloc[0]
    assert row["unit"] == "percentage points"
    assert row["difference"] == pytest.approx(100 * d, rel=1e-12)
    assert row["ci_low"] == pytest.approx(100 * (d - math.hypot(p1 - l1, u0 - p0)), rel=1e-10)
    assert row["ci_high"] == pytest.approx(100 * (d + math.hypot(u1 - p1, p0 - l0)), rel=1e-10)


def test_newcombe_known_value():
    # Newcombe (1998), Table II example (a): 56/70 - 48/80, method 10: 0.0524 to 0.3339.
    from twins.trials._summary import _newcombe

    d, lo, hi = _newcombe(
        np.array([56.0]), np.array([70.0]), np.array([48.0]), np.array([80.0]), 0.95
    )
    assert d[0] == pytest.approx(20.0)
    assert lo[0] == pytest.approx(5.24, abs=0.01)
    assert hi[0] == pytest.approx(33.39, abs=0.01)


def test_subgroup_table(folder):
    root, patients, _ = folder
    table = subgroup_table(read_results(root), paired=False)
    for col in ("arm", "subgroup", "level", "endpoint", "n", "estimate", "ci_low", "ci_high",
                "difference", "difference_ci_low", "difference_ci_high"):  # fmt: skip
        assert col in table.columns
    assert set(table["level"]) == {"AA", "AG", "GG", "(missing)"}
    missing = table[(table["level"] == "(missing)") & (table["endpoint"] == "in_range")]
    assert list(missing["n"]) == [4, 4]
    sub = patients[patients["genotype"] == "AG"]
    x1 = sub.loc[sub["arm"] == "pgx", "inr_mean"].dropna().to_numpy()
    x0 = sub.loc[sub["arm"] == "control", "inr_mean"].dropna().to_numpy()
    row = table[
        (table["level"] == "AG") & (table["arm"] == "pgx") & (table["endpoint"] == "inr_mean")
    ].iloc[0]
    assert row["n"] == x1.size and row["estimate"] == pytest.approx(x1.mean(), rel=1e-12)
    ci = stats.ttest_ind(x1, x0, equal_var=False).confidence_interval(0.95)
    assert row["difference_ci_low"] == pytest.approx(ci.low, rel=1e-10)
    assert row["difference_ci_high"] == pytest.approx(ci.high, rel=1e-10)
    ref_rows = table[table["arm"] == "control"]
    assert ref_rows["difference"].isna().all()
    tte = table[(table["endpoint"] == "t_stable") & (table["arm"] == "control")]
    ctrl = sub[sub["arm"] == "control"]
    median = kaplan_meier_median(ctrl["t_stable"].to_numpy(), ctrl["t_stable_event"].to_numpy())
    assert tte[tte["level"] == "AG"]["estimate"].iloc[0] == median[0]


def test_band_quantiles(folder):
    root, _, samples = folder
    res = read_results(root)
    q = band_quantiles(res, (0.05, 0.5, 0.95))
    assert list(q.columns) == ["arm", "day", "n", "q0.05", "q0.5", "q0.95"]
    width = EDGES[1] - EDGES[0]
    for (arm, day), x in samples.items():
        row = q[(q["arm"] == arm) & (q["day"] == day)].iloc[0]
        assert row["n"] == x.size
        if day == 99.0:
            # 95% above the top edge: the overflow reports the edge; 5% at -1: underflow.
            assert row["q0.95"] == EDGES[-1] and row["q0.5"] == EDGES[-1]
            assert row["q0.05"] == EDGES[-1] or row["q0.05"] == EDGES[0]
            continue
        for p in (0.05, 0.5, 0.95):
            expected = np.clip(np.quantile(x, p), EDGES[0], EDGES[-1])
            assert abs(row[f"q{p:g}"] - expected) <= width


def test_band_quantiles_underflow():
    from twins.trials._summary import Results

    edges = [0.0, 1.0, 2.0]
    bands = pd.DataFrame(
        {
            "arm": pd.Categorical(["a"] * 3),
            "day": [1.0] * 3,
            "bin": np.array([-1, 0, 2], np.int32),
            "count": np.array([10, 10, 0], np.int64),
        }
    )
    spec = {"arms": [{"name": "a"}], "bands": {"edges": edges}}
    res = Results(Path("."), spec, {}, pd.DataFrame(), bands)
    q = band_quantiles(res, (0.0, 0.25, 0.75, 1.0))
    assert q["q0.25"].iloc[0] == 0.0  # in the underflow bin: the lower edge
    assert q["q0.75"].iloc[0] == pytest.approx(0.5)  # half-way through bin 0
    assert q["q0"].iloc[0] == 0.0 and q["q1"].iloc[0] == 1.0


def test_population_summary(folder):
    root, patients, _ = folder
    pop = population_summary(read_results(root))
    assert list(pop.columns) == [
        "arm", "variable", "type", "level", "n", "mean", "sd", "median", "q25", "q75",
        "count", "percent",
    ]  # fmt: skip
    x = patients.loc[patients["arm"] == "pgx", "age"].to_numpy()
    row = pop[(pop["arm"] == "pgx") & (pop["variable"] == "age")].iloc[0]
    assert row["mean"] == pytest.approx(x.mean(), rel=1e-12)
    assert row["sd"] == pytest.approx(x.std(ddof=1), rel=1e-12)
    assert row["median"] == pytest.approx(np.median(x), rel=1e-12)
    assert row["q25"] == pytest.approx(np.quantile(x, 0.25), rel=1e-12)
    sex = pop[(pop["arm"] == "control") & (pop["variable"] == "sex")]
    n_female = int((patients.loc[patients["arm"] == "control", "sex"] == "female").sum())
    assert sex.set_index("level").loc["female", "count"] == n_female
    assert sex["percent"].sum() == pytest.approx(100.0)
    assert list(pop["arm"].unique()) == list(ARMS)


# --------------------------------------------------------------------------------------------
# Errors


def test_missing_spec(tmp_path):
    root, _, _ = make_results(tmp_path / "r")
    (root / "spec.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"spec\.json"):
        read_results(root)


def _rerecord(root: Path) -> None:
    """Record the parts as they are now (the checks below are of what a part holds, for
    parts whose checksums are in order)."""
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["parts"] = record_parts(root)
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_no_parts(tmp_path):
    root, _, _ = make_results(tmp_path / "r")
    for f in (root / "patients").iterdir():
        f.unlink()
    _rerecord(root)
    with pytest.raises(FileNotFoundError, match="No result parts"):
        read_results(root)


def test_duplicate_patient_across_parts(tmp_path):
    root, patients, _ = make_results(tmp_path / "r")
    extra = patients[(patients["patient"] == "P0001") & (patients["arm"] == "pgx")]
    extra.to_parquet(root / "patients" / "part-00003.parquet")
    _rerecord(root)
    with pytest.raises(ValueError, match=r"P0001.*'pgx'.*part-00000.*part-00003"):
        read_results(root)


def test_undeclared_arm(tmp_path):
    root, patients, _ = make_results(tmp_path / "r")
    extra = patients.iloc[:3].assign(arm="placebo", patient=["X1", "X2", "X3"])
    extra.to_parquet(root / "patients" / "part-00003.parquet")
    _rerecord(root)
    with pytest.raises(ValueError, match=r"part-00003.*placebo"):
        read_results(root)


def test_missing_column(tmp_path):
    root, _, _ = make_results(tmp_path / "r")
    file = root / "patients" / "part-00001.parquet"
    pd.read_parquet(file).drop(columns=["in_range"]).to_parquet(file)
    _rerecord(root)
    with pytest.raises(ValueError, match=r"part-00001.*in_range"):
        read_results(root)


def test_damaged_missing_and_foreign_parts_are_refused_with_the_list(tmp_path):
    root, patients, _ = make_results(tmp_path / "r")
    # Eight flipped bytes inside a finished part (its values, not its footer).
    file = root / "patients" / "part-00001.parquet"
    data = bytearray(file.read_bytes())
    data[200:208] = bytes(b ^ 0xFF for b in data[200:208])
    file.write_bytes(bytes(data))
    # A deleted bands part, a truncated and an empty patients part, a foreign part.
    (root / "bands" / "part-00001.parquet").unlink()
    third = root / "patients" / "part-00002.parquet"
    third.write_bytes(third.read_bytes()[:100])
    (root / "patients" / "part-00000.parquet").write_bytes(b"")
    patients.iloc[:2].to_parquet(root / "patients" / "part-00007.parquet")
    with pytest.raises(DamagedResultsError) as info:
        read_results(root)
    text = str(info.value)
    assert "5 problem(s)" in text
    for line in (
        "patients/part-00000.parquet: damaged",
        "patients/part-00001.parquet: damaged",
        "patients/part-00002.parquet: damaged",
        "bands/part-00001.parquet: recorded in manifest.json but missing",
        "patients/part-00007.parquet: a part that manifest.json does not record",
    ):
        assert line in text, line
    with pytest.raises(DamagedResultsError):
        write_report(root)
    assert not (root / "report.html").exists()


def test_a_manifest_without_part_records_is_refused(tmp_path):
    root, _, _ = make_results(tmp_path / "r")
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["parts"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DamagedResultsError, match="records no checksums of the parts"):
        read_results(root)


# --------------------------------------------------------------------------------------------
# Report


def test_write_report(tmp_path):
    root, _, _ = make_results(tmp_path / "r")
    path = write_report(root)
    assert path == root / "report.html"
    assert [p.name for p in root.glob("*.html")] == ["report.html"]
    text = path.read_text(encoding="utf-8")
    for s in ("Standard dosing", "Genotype-guided", "Mean INR", "INR in range at day 28",
              "Time to stable INR", "not reached", "55.5", "2.61", "Test et al. 2024", "abc123",
              "Adherence is perfect.", "Subgroups", "Provenance"):  # fmt: skip
        assert s in text, s
    assert text.count('<img src="data:image/png;base64,') == 3  # bands + 2 forest plots
    assert not re.search(r"<(script|link)\b", text, re.IGNORECASE)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.IGNORECASE)
    assert "A test trial &lt;with&gt; markup &amp; &#x27;quotes&#x27;." in text
    assert 'class="warning"' not in text
    out = write_report(root, tmp_path / "elsewhere" / "r.html")
    assert out.is_file()


def test_report_incomplete_warning(tmp_path):
    root, _, _ = make_results(tmp_path / "r", complete=False)
    text = write_report(root).read_text(encoding="utf-8")
    assert 'class="warning"' in text
    assert "incomplete" in text
    assert "3 of 4 chunks done" in text
