"""The COAG preset: its dosing algorithms against the published formulas computed by hand,
the day-4/5 revision inside the arm, the endpoint window, the race subgroup, the population,
and the preset through a spec.

The expected doses below are written from the published equations (Gage BF et al. Clin
Pharmacol Ther 2008;84:326-331; Lenzini P et al. Clin Pharmacol Ther 2010;87:572-578) with
the coefficients typed here again, not read from twins.trials._coag, so that a wrong
coefficient or a wrong covariate coding in the module fails.
"""

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import twins
from twins.app._spec import RunOptions, SpecError, load_trial
from twins.trials import _coag, population_rows, simulate_chunk
from twins.trials._eupact import NOMOGRAM
from twins.trials._run import run_trial, spec_hash, trial_spec

EXAMPLES = Path(__file__).parents[1] / "examples"


# ----------------------------------------------------------------------------- by hand


def gage_pg_by_hand(age, bsa, n_a, n2, n3, black, amio, smoker, dvt, target=2.5):
    return math.exp(
        0.9751 - 0.3238 * n_a + 0.4317 * bsa - 0.4008 * n3 - 0.00745 * age - 0.2066 * n2
        + 0.2029 * target - 0.2538 * amio + 0.0922 * smoker - 0.0901 * black + 0.0664 * dvt
    )  # fmt: skip


def gage_clinical_by_hand(age, bsa, black, amio, smoker, dvt, target=2.5):
    return math.exp(
        0.613 + 0.425 * bsa - 0.0075 * age + 0.156 * black + 0.216 * target - 0.257 * amio
        + 0.108 * smoker + 0.0784 * dvt
    )  # fmt: skip


def lenzini_pg_by_hand(inr, d2, d3, d4, age, bsa, n_a, n2, n3, black, stroke, diab, amio, fluva):
    weekly = math.exp(
        3.10894 - 0.00767 * age - 0.51611 * math.log(inr) - 0.23032 * n_a - 0.14745 * n2
        - 0.30770 * n3 + 0.24597 * bsa + 0.26729 * 2.5 - 0.09644 * black - 0.20590 * stroke
        - 0.11216 * diab - 0.10350 * amio - 0.19275 * fluva + 0.01690 * d2 + 0.02018 * d3
        + 0.01065 * d4
    )  # fmt: skip
    return weekly / 7.0


def lenzini_clinical_by_hand(inr, d2, d3, d4, age, bsa, black, stroke, diab, amio, fluva):
    weekly = math.exp(
        2.81602 - 0.76679 * math.log(inr) - 0.00590 * age + 0.27815 * 2.5 - 0.16759 * diab
        + 0.17675 * bsa - 0.22844 * stroke - 0.25487 * fluva + 0.07123 * black
        - 0.11137 * amio + 0.03471 * d2 + 0.03047 * d3 + 0.01929 * d4
    )  # fmt: skip
    return weekly / 7.0


def _round(x, step=0.5):
    return max(round(x / step), 1) * step


# Three patients: (age, weight, height, ancestry, CYP2C9 as tested, VKORC1, amiodarone,
# fluvastatin, smoker, DVT/PE, diabetes, stroke).
PATIENTS = [
    (62.0, 80.0, 175.0, "White", "*1/*3", "-1639 AG", 0.0, 0.0, 1.0, 1.0, 0.0, 0.0),
    (45.0, 95.0, 168.0, "Black or African American", "*1/*1", "-1639 GG",
     0.0, 1.0, 0.0, 0.0, 1.0, 1.0),
    (78.0, 58.0, 160.0, "White", "*2/*2", "-1639 AA", 1.0, 0.0, 0.0, 1.0, 0.0, 0.0),
]  # fmt: skip


def _covariates():
    """`Population.covariates()`-like arrays (with ANCESTRY, as the engine adds it)."""
    cols = list(zip(*PATIENTS, strict=True))
    age, wt, ht = (np.array(c, float) for c in cols[:3])
    return {
        "ID": np.array(["A", "B", "C"], dtype=object),
        "AGE": age,
        "WT": wt,
        "HT": ht,
        "BSA": np.sqrt(wt * ht / 3600.0),  # Mosteller
        "ANCESTRY": np.array(cols[3], dtype=object),
        "CYP2C9": np.array(cols[4], dtype=object),
        "VKORC1_PHENOTYPE": np.array(cols[5], dtype=object),
        "AMIODARONE": np.array(cols[6]),
        "FLUVASTATIN": np.array(cols[7]),
        "SMOKER": np.array(cols[8]),
        "DVT_PE": np.array(cols[9]),
        "DIABETES": np.array(cols[10]),
        "STROKE": np.array(cols[11]),
    }


def _hand_inputs(i):
    age, wt, ht, anc, cyp, vk, amio, fluva, smoker, dvt, diab, stroke = PATIENTS[i]
    bsa = math.sqrt(wt * ht / 3600.0)
    n_a = {"-1639 GG": 0, "-1639 AG": 1, "-1639 AA": 2}[vk]
    alleles = cyp.split("/")
    black = float(anc == "Black or African American")
    return dict(
        age=age, bsa=bsa, n_a=n_a, n2=alleles.count("*2"), n3=alleles.count("*3"),
        black=black, amio=amio, fluva=fluva, smoker=smoker, dvt=dvt, diab=diab, stroke=stroke,
    )  # fmt: skip


def test_gage_2008_doses_match_the_published_formulas():
    x = _coag.algorithm_covariates(_covariates())
    pg = _coag.gage_2008_dose(
        _coag.GAGE_2008_PHARMACOGENETIC, **{k: x[k] for k in _coag.GAGE_2008_PHARMACOGENETIC
                                            if k != "intercept"}
    )  # fmt: skip
    clin = _coag.gage_2008_dose(
        _coag.GAGE_2008_CLINICAL, **{k: x[k] for k in _coag.GAGE_2008_CLINICAL if k != "intercept"}
    )
    for i in range(len(PATIENTS)):
        h = _hand_inputs(i)
        want_pg = gage_pg_by_hand(h["age"], h["bsa"], h["n_a"], h["n2"], h["n3"], h["black"],
                                  h["amio"], h["smoker"], h["dvt"])  # fmt: skip
        want_clin = gage_clinical_by_hand(
            h["age"], h["bsa"], h["black"], h["amio"], h["smoker"], h["dvt"]
        )
        assert pg[i] == pytest.approx(want_pg, rel=1e-12)
        assert clin[i] == pytest.approx(want_clin, rel=1e-12)
    # Worked by hand, patient A: BSA = sqrt(80 x 175 / 3600) = 1.97203 m^2;
    # 0.9751 - 0.3238 + 0.4317 x 1.97203 - 0.4008 - 0.00745 x 62 + 0.2029 x 2.5 + 0.0922
    # + 0.0664 = 1.30578, exp(1.30578) = 3.6905 mg/day.
    assert pg[0] == pytest.approx(3.6905, abs=1e-4)
    with pytest.raises(ValueError, match="missing covariates"):
        _coag.gage_2008_dose(_coag.GAGE_2008_CLINICAL, age=60.0)


def test_lenzini_2010_doses_match_the_published_formulas():
    x = _coag.algorithm_covariates(_covariates())
    for i in range(len(PATIENTS)):
        h = _hand_inputs(i)
        inr, d2, d3, d4 = 1.6, 5.0, 5.0, 4.5
        xi = {k: v[i] for k, v in x.items()}
        got_pg = _coag.lenzini_2010_dose(
            _coag.LENZINI_2010_PHARMACOGENETIC, ln_inr=math.log(inr), dose_2=d2, dose_3=d3,
            dose_4=d4, **{k: xi[k] for k in _coag.LENZINI_2010_PHARMACOGENETIC
                          if k in xi},
        )  # fmt: skip
        got_clin = _coag.lenzini_2010_dose(
            _coag.LENZINI_2010_CLINICAL, ln_inr=math.log(inr), dose_2=d2, dose_3=d3,
            dose_4=d4, **{k: xi[k] for k in _coag.LENZINI_2010_CLINICAL if k in xi},
        )  # fmt: skip
        want_pg = lenzini_pg_by_hand(inr, d2, d3, d4, h["age"], h["bsa"], h["n_a"], h["n2"],
                                     h["n3"], h["black"], h["stroke"], h["diab"], h["amio"],
                                     h["fluva"])  # fmt: skip
        want_clin = lenzini_clinical_by_hand(
            inr, d2, d3, d4, h["age"], h["bsa"], h["black"], h["stroke"], h["diab"], h["amio"],
            h["fluva"],
        )  # fmt: skip
        assert float(got_pg) == pytest.approx(want_pg, rel=1e-12)
        assert float(got_clin) == pytest.approx(want_clin, rel=1e-12)
    with pytest.raises(ValueError, match="missing covariates"):
        _coag.lenzini_2010_dose(_coag.LENZINI_2010_CLINICAL, ln_inr=0.0)


def test_algorithms_read_the_tested_genotype_not_the_model_one():
    """COAG genotyped CYP2C9 *2 and *3 only: with the population's tested counts (extras) the
    algorithms see them, whatever the model's diplotype; a missing input is named."""
    cov = _covariates()
    cov["CYP2C9"] = np.array(["*1/*2", "*1/*2", "*2/*2"], dtype=object)  # model's diplotypes
    cov["CYP2C9_STAR2"] = np.array([0.0, 0.0, 2.0])  # B: *1/*8 tested as *1/*1
    cov["CYP2C9_STAR3"] = np.array([1.0, 0.0, 0.0])
    x = _coag.algorithm_covariates(cov)
    np.testing.assert_array_equal(x["cyp2c9_2"], [0, 0, 2])
    np.testing.assert_array_equal(x["cyp2c9_3"], [1, 0, 0])
    np.testing.assert_array_equal(x["black"], [0, 1, 0])
    np.testing.assert_array_equal(x["vkorc1_a"], [1, 0, 2])
    del cov["SMOKER"]
    with pytest.raises(ValueError, match=r"no 'SMOKER' \(current smoker"):
        _coag.algorithm_covariates(cov)


def _arm(name):
    return next(a for a in _coag.coag_trial().arms if a.name == name)


def _drive(arm, cov, inr_by_day, days=12):
    """Run `arm.step` eagerly for each patient; `inr_by_day[i][day]` the measured INR on
    the morning of a (1-based) day. Returns the amounts given, (patients, days)."""
    state0 = arm.start(cov)
    visits = {v + 1 for v in arm.visits}
    out = []
    for i in range(len(cov["ID"])):
        st = {k: jnp.asarray(v[i]) for k, v in state0.items()}
        amounts = []
        for p in range(days):
            day = p + 1
            inr = inr_by_day[i].get(day, 1.0)
            amount, st = arm.step(jnp.int32(p), jnp.asarray(inr), jnp.asarray(day in visits), st)
            amounts.append(float(amount))
        out.append(amounts)
    return np.array(out)


@pytest.mark.parametrize("which", ["genotype_guided", "clinical"])
def test_revision_on_days_4_and_5_then_the_nomogram(which):
    arm = _arm(which)
    cov = _covariates()
    inrs = [
        {4: 1.3, 5: 1.7, 7: 2.4, 10: 3.5},
        {4: 1.9, 5: 2.6, 7: 1.4, 10: 2.2},
        {4: 2.8, 5: 3.4, 7: 5.6, 10: 2.5},
    ]
    got = _drive(arm, cov, inrs)
    for i in range(len(PATIENTS)):
        h = _hand_inputs(i)
        if which == "genotype_guided":
            start = gage_pg_by_hand(h["age"], h["bsa"], h["n_a"], h["n2"], h["n3"], h["black"],
                                    h["amio"], h["smoker"], h["dvt"])  # fmt: skip

            def revise(inr, d2, d3, d4, h=h):
                return lenzini_pg_by_hand(inr, d2, d3, d4, h["age"], h["bsa"], h["n_a"],
                                          h["n2"], h["n3"], h["black"], h["stroke"], h["diab"],
                                          h["amio"], h["fluva"])  # fmt: skip
        else:
            start = gage_clinical_by_hand(
                h["age"], h["bsa"], h["black"], h["amio"], h["smoker"], h["dvt"]
            )

            def revise(inr, d2, d3, d4, h=h):
                return lenzini_clinical_by_hand(inr, d2, d3, d4, h["age"], h["bsa"],
                                                h["black"], h["stroke"], h["diab"], h["amio"],
                                                h["fluva"])  # fmt: skip

        d1 = _round(start)
        day4 = _round(revise(inrs[i][4], d1, d1, 0.0))  # day 4 not yet dosed
        day5 = _round(revise(inrs[i][5], d1, d1, day4))
        expected = [d1, d1, d1, day4, day5, day5]
        # day 7: the nomogram from the INR of that morning (EU-PACT's table)
        new, hold = NOMOGRAM(jnp.asarray(inrs[i][7]), jnp.asarray(day5))
        day7 = _round(float(new))
        held = int(hold)
        expected += [0.0 if held > 0 else day7, 0.0 if held > 1 else day7, day7]
        new10, hold10 = NOMOGRAM(jnp.asarray(inrs[i][10]), jnp.asarray(day7))
        day10 = _round(float(new10))
        expected += [0.0 if int(hold10) > 0 else day10, 0.0 if int(hold10) > 1 else day10]
        expected += [day10]
        np.testing.assert_allclose(got[i], expected, err_msg=f"{which} patient {i}")
    # the INRs chosen move the dose: a revision that did nothing would fail above
    assert len(set(got[:, 3]) | set(got[:, 4])) > 2


def test_revision_arm_refuses_bad_days():
    kwargs = dict(
        name="x", label="x", description="", initiation=_coag.GAGE_2008_CLINICAL,
        revision=_coag.LENZINI_2010_CLINICAL,
    )  # fmt: skip
    with pytest.raises(ValueError, match="revision_days must be increasing days in 2-5"):
        _coag.RevisionArm(**kwargs, revision_days=(4, 6))
    with pytest.raises(ValueError, match=r"revision days \[5\] are not visit days"):
        _coag.RevisionArm(**kwargs, visits=(1, 4, 7), revision_days=(4, 5))
    with pytest.raises(ValueError, match=r"rule days \[5\] fall on or before"):
        _coag.RevisionArm(**kwargs, rules=(((5, 7), NOMOGRAM),))


# ----------------------------------------------------------------------------- endpoint


def _dense_ttr(t, y, a, b, low, high, n=400_001):
    grid = np.linspace(a, b, n)
    values = np.interp(grid, t, y)
    inside = ((values >= low) & (values <= high)).astype(float)
    return 100.0 * np.trapezoid(inside, grid) / (b - a)


def test_window_ttr_against_a_dense_grid():
    """Rosendaal over day 5-28 with the window edges inside and on visit intervals, against
    the fraction of a fine grid of the interpolated INR in range."""
    visit_days = np.array([0.0, 3.0, 4.0, 6.0, 9.0, 13.0, 20.0, 27.0])  # days 1, 4, 5, ... 28
    measured = np.array(
        [
            [1.0, 1.4, 1.9, 2.6, 3.4, 2.8, 1.7, 2.2],
            [1.0, 2.1, 2.5, 2.5, 2.5, 2.9, 3.0, 2.0],
            [1.0, 1.2, 1.3, 1.5, 1.6, 1.8, 1.9, 1.95],
        ]
    )
    course = {"visit_days": visit_days, "measured": measured}
    for start, end in ((5, 28), (4.5, 25.5), (1, 28)):
        e = _coag.WindowTimeInRange("w", "w", 2.0, 3.0, start, end)
        got = e(course)["w"]
        for i in range(3):
            want = _dense_ttr(visit_days, measured[i], start - 1, end - 1, 2.0, 3.0)
            assert got[i] == pytest.approx(want, abs=2e-3), (start, end, i)
    np.testing.assert_allclose(
        _coag.WindowTimeInRange("w", "w", 2.0, 3.0, 5, 28)(course)["w"][1], 100.0
    )
    assert _coag.WindowTimeInRange("w", "w", 2.0, 3.0, 5, 28)(course)["w"][2] == 0.0
    # the whole series: the same as the engine's TimeInRange
    whole = twins.TimeInRange("t", "t", 2.0, 3.0)(course)["t"]
    np.testing.assert_allclose(
        _coag.WindowTimeInRange("w", "w", 2.0, 3.0, 1, 28)(course)["w"], whole, rtol=1e-12
    )
    with pytest.raises(ValueError, match="not covered by the values"):
        _coag.WindowTimeInRange("w", "w", 2.0, 3.0, 5, 30)(course)
    with pytest.raises(ValueError, match="start_day < end_day"):
        _coag.WindowTimeInRange("w", "w", 2.0, 3.0, 28, 5)
    # dropout: only the observed intervals count
    observed = np.ones_like(measured, dtype=bool)
    observed[0, 5:] = False  # patient 0 left after day 10
    got = _coag.WindowTimeInRange("w", "w", 2.0, 3.0, 5, 28)({**course, "observed": observed})["w"]
    want = _dense_ttr(visit_days[:5], measured[0, :5], 4.0, 9.0, 2.0, 3.0)
    assert got[0] == pytest.approx(want, abs=2e-3)


def test_race_subgroup():
    frame = pd.DataFrame({"ancestry": ["Black or African American", "White", None, "Asian"]})
    got = _coag.Race().levels(frame, {})
    assert list(got) == ["Black", "non-Black", "non-Black", "non-Black"]


# ----------------------------------------------------------------------------- population


def test_population_frequencies_and_the_cyp2c9_mapping():
    pop = _coag.coag_population(6000, key=jax.random.key(3))
    frame = pop.to_dataframe()
    black = (frame["ancestry"] == "Black or African American").to_numpy()
    p = black.mean()
    assert abs(p - 0.27) < 4 * math.sqrt(0.27 * 0.73 / len(frame))
    # the model sees only Hamberg's diplotypes
    assert set(frame["CYP2C9"]) <= set(twins.drugs.warfarin.CYP2C9_CL_DECREASE)
    # carriers of an untested decreased- or no-function allele among Black patients: CPIC's
    # African American frequencies (Hardy-Weinberg), *5, *6, *8, *11
    freq = twins.cpic_allele_frequencies()["CYP2C9"]["African American/Afro-Caribbean"]
    q = sum(freq[a] for a in ("*5", "*6", "*8", "*11"))
    expected = 1 - (1 - q) ** 2
    other = frame["extra_cyp2c9_other"].to_numpy()
    n_black = black.sum()
    assert abs((other[black] > 0).mean() - expected) < 4 * math.sqrt(
        expected * (1 - expected) / n_black
    )
    # a carrier's model diplotype has a decreased allele the tested counts do not show
    star2 = frame["extra_cyp2c9_star2"].to_numpy()
    star3 = frame["extra_cyp2c9_star3"].to_numpy()
    model_alleles = [d.split("/") for d in frame["CYP2C9"]]
    reduced = np.array([2 - a.count("*1") for a in model_alleles])
    np.testing.assert_array_equal(reduced, star2 + star3 + other)
    for name, rate in (("smoker", 0.15), ("dvt_pe", 0.60), ("diabetes", 0.20)):
        got = frame[f"extra_{name}"].mean()
        assert abs(got - rate) < 4 * math.sqrt(rate * (1 - rate) / len(frame)), name
    again = _coag.coag_population(50, key=jax.random.key(3)).to_dataframe()
    pd.testing.assert_frame_equal(
        again, _coag.coag_population(50, key=jax.random.key(3)).to_dataframe()
    )


# ----------------------------------------------------------------------------- the trial


def test_preset_spec_and_example_are_the_builtin_trial(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('preset = "coag"\n[run]\nn = 7\n')
    trial, options = load_trial(path)

    def spec(t):
        return spec_hash(trial_spec(t, n=1, seed=0, chunk_size=1))

    assert spec(trial) == spec(_coag.coag_trial())
    trial, options = load_trial(EXAMPLES / "coag.toml")
    assert options == RunOptions(n=1015, seed=0, chunk_size=1015, out=EXAMPLES / "out/coag")
    assert spec(trial) == spec(_coag.coag_trial())
    assert twins.coag_trial is _coag.coag_trial


def test_small_trial_runs_and_reports_by_race():
    trial = _coag.coag_trial()
    pop = population_rows(trial, 0, 24, key=jax.random.key(0))
    endpoints, courses = simulate_chunk(trial, pop, 0, key=jax.random.key(1))
    for arm in ("genotype_guided", "clinical"):
        e = endpoints[arm]
        assert np.all((e["ttr_window"] >= 0) & (e["ttr_window"] <= 100))
        doses = courses[arm]["doses"]
        # days 1-3 equal (the initiation dose), a revision on days 4 and 5
        np.testing.assert_array_equal(doses[:, 0], doses[:, 1])
        np.testing.assert_array_equal(doses[:, 0], doses[:, 2])
        assert courses[arm]["visit_days"].tolist() == [0, 3, 4, 6, 9, 13, 20, 27]
    # the two arms differ in days 1-5 only through the algorithms
    assert not np.array_equal(
        courses["genotype_guided"]["doses"][:, :5], courses["clinical"]["doses"][:, :5]
    )
    levels = _coag.Race().levels(pop.to_dataframe(), pop.covariates())
    assert set(levels) <= {"Black", "non-Black"}


def _example_with(tmp_path, old, new):
    text = (EXAMPLES / "coag.toml").read_text()
    assert old in text
    path = tmp_path / "c.toml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    "old, new, match",
    [
        (
            'revision = { rule = "lenzini_2010_pharmacogenetic", days = [4, 5] }',
            'revision = { rule = "lenzini", days = [4, 5] }',
            r"arms\[0\]\.revision\.rule: expected one of \['lenzini_2010_pharmacogenetic'",
        ),
        (
            'revision = { rule = "lenzini_2010_pharmacogenetic", days = [4, 5] }',
            'revision = { rule = "lenzini_2010_pharmacogenetic", days = [4, 6] }',
            r"arms\[0\]\.revision\.days: days \[6\] are not visit days",
        ),
        (
            'initial = { rule = "gage_2008_clinical" }',
            'initial = { rule = "iwpc_2009" }',
            r"arms\[1\]\.initial\.rule: expected one of \['gage_2008_pharmacogenetic'",
        ),
        ('sampler = "coag"', 'sampler = "kimmel"', r"population\.sampler: expected one of"),
        ("black_fraction = 0.27", "black_fraction = 1.5", r"population\.black_fraction"),
        ("start_day = 5 ", "start_day = 29 ", r"endpoints\[0\].*start_day < end_day"),
    ],
)
def test_spec_errors_name_the_entry(tmp_path, old, new, match):
    with pytest.raises(SpecError, match=match):
        load_trial(_example_with(tmp_path, old, new))


@pytest.mark.extended
def test_written_out_example_numbers_extended(tmp_path):
    """examples/coag.toml, written out in full, and the built-in preset, each compiled and
    run on its own: the results tables are equal."""
    trial, _ = load_trial(EXAMPLES / "coag.toml")
    kwargs = dict(n=200, seed=5, chunk_size=100, progress=False, summary=False)
    run_trial(trial, tmp_path / "spec", **kwargs)
    run_trial(_coag.coag_trial(), tmp_path / "builtin", **kwargs)
    got = pd.read_parquet(tmp_path / "spec" / "patients")
    expected = pd.read_parquet(tmp_path / "builtin" / "patients")
    assert len(got) == 400
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


@pytest.mark.extended
def test_example_runs_in_full_extended(tmp_path):
    """`twins trial examples/coag.toml` at its own size: a results folder with both arms,
    the race subgroup, and the published figures beside the simulated ones."""
    trial, options = load_trial(EXAMPLES / "coag.toml")
    run_trial(trial, tmp_path / "coag", n=options.n, seed=options.seed,
              chunk_size=options.chunk_size, progress=False)  # fmt: skip
    patients = pd.read_parquet(tmp_path / "coag" / "patients")
    assert len(patients) == 2 * options.n
    assert set(patients["race"]) == {"Black", "non-Black"}
    black = (patients["race"] == "Black").mean()
    assert abs(black - 0.27) < 0.05
    assert patients["ttr_window"].between(0, 100).all()
