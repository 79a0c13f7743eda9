"""Surrogates: the shared interface, the tabular models and training sets from trials."""

from __future__ import annotations

import types
import warnings

import jax
import numpy as np
import pandas as pd
import pytest

import surrogates
import twins
from surrogates import Inputs, SklearnSurrogate, XGBoostSurrogate
from surrogates._data import training_set
from twins import drugs
from twins.trials._run import run_trial


def _pk_data(n, seed):
    """Steady-state AUC24 = daily dose / CL of a one-compartment drug, CL from weight and
    a poor-metaboliser flag, plus unexplained log-normal variability (10%)."""
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(
        {
            "WT": rng.uniform(40.0, 120.0, n),
            "AGE": rng.uniform(18.0, 90.0, n),
            "PM": rng.integers(0, 2, n).astype(float),
            "DOSE": rng.choice([100.0, 200.0, 300.0], n),
        }
    )
    cl = 5.0 * (x["WT"] / 70.0) ** 0.75 * np.where(x["PM"] > 0, 0.5, 1.0)
    truth = (x["DOSE"] / cl).to_numpy()
    return x, truth, truth * np.exp(rng.normal(0.0, 0.1, n))


def _r2(y, pred):
    return 1.0 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum()


MODELS = {
    "xgboost": lambda: XGBoostSurrogate(n_estimators=300),
    "linear": lambda: SklearnSurrogate("linear"),
    "random_forest": lambda: SklearnSurrogate("random_forest", n_estimators=100),
    "svm": lambda: SklearnSurrogate("svm", c=10.0),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_tabular_regressors_fit_cover_and_round_trip(name, tmp_path):
    x, truth, y = _pk_data(6000, seed=1)
    model = MODELS[name]().fit(x[:4000], y[:4000], key=0)
    test = x[4000:].copy()
    # Test patients strictly inside the training ranges: no extrapolation warning.
    inside = (test["WT"].between(x["WT"][:4000].min(), x["WT"][:4000].max())) & (
        test["AGE"].between(x["AGE"][:4000].min(), x["AGE"][:4000].max())
    )
    test, y_test, truth_test = test[inside], y[4000:][inside], truth[4000:][inside]
    pred = model.predict(test)
    assert not pred.out_of_range.any()
    # The noise is 10%, so R2 against the noisy values is capped near 0.9; a linear model
    # of a 1/x relation does worse than the others.
    floor = 0.75 if name == "linear" else 0.85
    assert _r2(truth_test, pred.mean) > floor
    assert _r2(y_test, pred.mean) > floor - 0.05
    # Split-conformal coverage is 0.9 on average over calibration sets; with 600
    # calibration and ~2000 test patients its standard deviation is about 0.014.
    covered = np.mean((y_test >= pred.lower) & (y_test <= pred.upper))
    assert abs(covered - 0.9) < 0.06, covered
    loaded = surrogates.load(model.save(tmp_path / name))
    again = loaded.predict(test)
    np.testing.assert_array_equal(again.mean, pred.mean)
    np.testing.assert_array_equal(again.lower, pred.lower)
    assert type(loaded) is type(model) and loaded.hyperparameters() == model.hyperparameters()


def test_quantile_spread_makes_xgboost_intervals_adaptive():
    # Heteroscedastic noise: the interval must be wider where the noise is larger.
    rng = np.random.default_rng(3)
    n = 4000
    x = pd.DataFrame({"a": rng.uniform(0.0, 1.0, n)})
    y = 2.0 * x["a"].to_numpy() + rng.normal(0.0, 0.05 + 0.5 * x["a"].to_numpy())
    model = XGBoostSurrogate(n_estimators=200).fit(x[:3000], y[:3000])
    test = pd.DataFrame({"a": np.linspace(0.05, 0.95, 19)})
    pred = model.predict(test)
    width = pred.upper - pred.lower
    assert width[-4:].mean() > 3.0 * width[:4].mean()
    assert pred.sd is not None


def test_classifiers_predict_probabilities():
    x, _, y = _pk_data(2500, seed=2)
    label = (y > np.median(y)).astype(float)
    for model in (
        XGBoostSurrogate("classification", n_estimators=200),
        SklearnSurrogate("linear", "classification"),
        SklearnSurrogate("random_forest", "classification", n_estimators=100),
        SklearnSurrogate("svm", "classification"),
    ):
        model.fit(x[:2000], label[:2000])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", surrogates.ExtrapolationWarning)
            pred = model.predict(x[2000:])
        assert pred.lower is None and ((pred.mean >= 0) & (pred.mean <= 1)).all()
        accuracy = np.mean(pred.label() == (label[2000:] > 0))
        assert accuracy > 0.8, (model.name, accuracy)


def test_out_of_range_inputs_are_flagged_and_named():
    x, _, y = _pk_data(500, seed=4)
    model = SklearnSurrogate("linear").fit(x, y)
    odd = pd.DataFrame(
        {"WT": [70.0, 250.0], "AGE": [50.0, 50.0], "PM": [0.0, 2.0], "DOSE": [100.0] * 2}
    )
    with pytest.warns(surrogates.ExtrapolationWarning, match="1 of 2 patients"):
        pred = model.predict(odd)
    assert pred.out_of_range.tolist() == [False, True]
    assert "WT outside the training range" in pred.reasons[1]
    assert "PM not one of the training values [0.0, 1.0]" in pred.reasons[1]
    assert pred.reasons[0] == ""


def test_bad_inputs_name_the_problem():
    x, _, y = _pk_data(200, seed=5)
    with pytest.raises(ValueError, match="target is missing or infinite in rows \\[3\\]"):
        SklearnSurrogate().fit(x, np.where(np.arange(200) == 3, np.nan, y))
    with pytest.raises(ValueError, match="y must be"):
        SklearnSurrogate().fit(x, y[:10])
    with pytest.raises(ValueError, match="one class only"):
        SklearnSurrogate("linear", "classification").fit(x, np.ones(200))
    with pytest.raises(TypeError, match="feature 'S' has dtype"):
        SklearnSurrogate().fit(x.assign(S="a"), y)
    model = SklearnSurrogate().fit(x, y)
    with pytest.raises(ValueError, match=r"features \['DOSE'\] are missing"):
        model.predict(x.drop(columns="DOSE"))
    holes = x.copy()
    holes.loc[7, "WT"] = np.nan
    with pytest.raises(ValueError, match="feature 'WT' is missing or infinite in rows \\[7\\]"):
        model.predict(holes)
    # XGBoost handles missing values itself.
    xgb = XGBoostSurrogate(n_estimators=50).fit(holes, y)
    assert np.isfinite(xgb.predict(holes).mean).all()
    with pytest.raises(RuntimeError, match="not fitted"):
        XGBoostSurrogate().predict(x)
    with pytest.raises(FileNotFoundError, match=r"surrogate\.json"):
        surrogates.load("/nonexistent")


def test_inputs_validate_and_flatten():
    static = pd.DataFrame({"a": [1.0, 2.0]})
    seq = np.arange(12.0).reshape(2, 3, 2)
    inputs = Inputs(static, seq, ("dose", "level"), np.array([0.0, 12.0, 24.0]))
    flat = inputs.tabular()
    assert list(flat.columns) == [
        "a",
        "dose@0h",
        "level@0h",
        "dose@12h",
        "level@12h",
        "dose@24h",
        "level@24h",
    ]
    np.testing.assert_array_equal(flat.iloc[1, 1:], seq[1].ravel())
    with pytest.raises(ValueError, match="2 sequence channels but 1 names"):
        Inputs(static, seq, ("dose",))
    with pytest.raises(ValueError, match="3 sequences"):
        Inputs(static, np.zeros((3, 3, 1)), ("dose",))


def _vanco_trial():
    drug = drugs.get("vancomycin_goti2018")

    def per_kg(cov):
        n = len(cov["ID"])
        return np.full((n, 1), 25.0) * cov["WT"][:, None], 15.0 * cov["WT"]

    arm = twins.DosingArm("per_kg", "15 mg/kg", "", per_kg, visits=(3, 5), dose_step=250.0)
    return twins.Trial(
        name="vanco",
        drug=drug,
        population=twins.Population.sample,
        arms=(arm,),
        endpoints=(
            twins.AUC("auc24", "AUC24"),
            twins.Ctrough("trough", "trough"),
            twins.AnyAbove("high", "trough >= 20", 20.0, "true"),
        ),
        days=8,
        interval=12.0,
        covariates=("AGE", "WT", "CRCL"),
    )


def test_training_set_matches_the_trial_run(tmp_path):
    trial = _vanco_trial()
    ts = training_set(trial, 60, seed=3, chunk_size=25, observe=4)
    run_trial(
        trial,
        tmp_path / "run",
        n=60,
        seed=3,
        chunk_size=30,
        trajectories=True,
        progress=False,
        summary=False,
    )
    patients = pd.read_parquet(tmp_path / "run" / "patients").set_index("patient")
    for col in ("auc24", "trough", "high"):
        np.testing.assert_array_equal(ts.targets[col].to_numpy(), patients.loc[ts.patients, col])
    np.testing.assert_allclose(ts.inputs.static["WT"], patients.loc[ts.patients, "WT"])
    traj = pd.read_parquet(tmp_path / "run" / "trajectories")
    first = traj[traj["patient"] == ts.patients[0]].sort_values("day")
    np.testing.assert_allclose(ts.trajectory[0], first["level"].to_numpy()[4:])
    np.testing.assert_allclose(ts.trajectory_days, first["day"].to_numpy()[4:])
    # The sequence: doses of the first 4 periods, one measured level at visit 3 (period 2).
    seq = ts.inputs.sequence
    assert seq.shape == (60, 4, 3) and ts.inputs.channels == ("dose", "measured", "is_measured")
    np.testing.assert_array_equal(seq[:, :, 2].sum(axis=1), 1.0)
    assert (seq[:, 2, 1] > 0).all() and (seq[:, [0, 1, 3], 1] == 0).all()
    np.testing.assert_allclose(
        seq[:, 1:, 0], ts.inputs.static[["maintenance_dose"]].to_numpy() * np.ones(3)
    )
    assert {"CRCL", "loading_dose_1", "maintenance_dose"} <= set(ts.inputs.static.columns)
    with_params = training_set(trial, 30, seed=3, parameters=True, observe=0)
    assert with_params.inputs.sequence is None and "param_CL" in with_params.inputs.static
    with pytest.raises(ValueError, match="arm 'x' is not one of"):
        training_set(trial, 30, arm="x")


def test_training_set_uses_the_visits_that_happened():
    """With missed visits (`Trial(visits=Visits(p_missed=...))`) a missed visit is absent
    from the input sequence (no measured level, `is_measured` 0; never NaN), and the visits
    that happened carry the level of the trial without visit realism (same assay noise)."""
    import dataclasses

    from twins.trials import Visits

    plain = _vanco_trial()
    missed = dataclasses.replace(plain, visits=Visits(p_missed=0.5, reference="test"))
    a = training_set(plain, 40, seed=3, observe=4).inputs.sequence
    b = training_set(missed, 40, seed=3, observe=4).inputs.sequence
    assert np.isfinite(b).all()
    seen = b[:, 2, 2] == 1.0
    assert 8 <= seen.sum() <= 32  # about half of 40 (binomial, p = 0.5)
    np.testing.assert_array_equal(b[seen, 2, 1], a[seen, 2, 1])
    assert (b[~seen, 2, 1] == 0.0).all() and (b[:, [0, 1, 3], 2] == 0.0).all()


def test_a_surrogate_emulates_the_mechanistic_model():
    """With the parameters as features, XGBoost reproduces the simulated AUC24."""
    ts = training_set(_vanco_trial(), 1500, seed=0, parameters=True, observe=0)
    train, test = ts.split(0.25, key=1)
    model = XGBoostSurrogate(n_estimators=400, log_target=True)
    model.fit(train.inputs, train.targets["auc24"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", surrogates.ExtrapolationWarning)
        pred = model.predict(test.inputs)
    y = test.targets["auc24"].to_numpy()
    # 1,100 training patients; benchmarks/surrogate_fidelity.py measures it at scale.
    assert _r2(y, pred.mean) > 0.9
    assert np.median(np.abs(pred.mean / y - 1.0)) < 0.05
    jax.clear_caches()


def test_comparison_tables_score_models_against_the_truth():
    x, truth, y = _pk_data(1500, seed=6)
    train, test = Inputs(x[:1000]), Inputs(x[1000:].reset_index(drop=True))
    models = {"linear": lambda: SklearnSurrogate("linear"), "xgboost": lambda: XGBoostSurrogate()}
    table, means = surrogates.regression_table(models, train, y[:1000], test, truth[1000:])
    for name in models:
        expected = _r2(truth[1000:], means[name])
        np.testing.assert_allclose(table.loc[name, "r2"], expected)
        rel = np.abs(means[name] / truth[1000:] - 1.0)
        np.testing.assert_allclose(table.loc[name, "median_rel_error"], np.median(rel))
    assert table.loc["xgboost", "r2"] > table.loc["linear", "r2"]
    label = (y > np.median(y)).astype(float)
    models = {"logistic": lambda: SklearnSurrogate("linear", "classification")}
    table, probs = surrogates.classification_table(models, train, label[:1000], test, label[1000:])
    p, truth_label = probs["logistic"], label[1000:] > 0
    tp = np.sum((p >= 0.5) & truth_label)
    np.testing.assert_allclose(table.loc["logistic", "precision"], tp / np.sum(p >= 0.5))
    np.testing.assert_allclose(table.loc["logistic", "recall"], tp / truth_label.sum())
    assert 0.8 < table.loc["logistic", "roc_auc"] <= 1.0
    fig = surrogates.roc_figure(label[1000:], probs)
    assert len(fig.axes[0].lines) == 2


def test_activity_scores_only_of_the_genes_the_drug_reads():
    """Static features: a warfarin surrogate sees CYP2C9's activity score (its model reads
    the gene) with its missing flag, a vancomycin surrogate no gene at all, and CYP2D6's
    Indeterminate diplotypes (no CPIC score) are flagged, not NaN."""
    from surrogates._data import static_features

    pop = twins.Population.sample(400, key=3)
    cov = pop.covariates()
    state = {"loading": np.zeros((400, 1)), "dose": np.full(400, 5.0)}
    for drug, read in (("warfarin_hamberg2007", {"CYP2C9"}), ("vancomycin_goti2018", set())):
        trial = types.SimpleNamespace(drug=twins.drugs.get(drug))
        x = static_features(trial, pop, cov, state)
        scores = {c[:-3] for c in x.columns if c.endswith("_AS")}
        assert scores == read, (drug, sorted(x.columns))
        assert np.isfinite(x.to_numpy()).all()
    assert np.isnan(cov["CYP2D6_AS"]).any()  # Indeterminate diplotypes in the sample
    vernakalant = types.SimpleNamespace(drug=twins.drugs.get("vernakalant_mao2012"))
    x = static_features(vernakalant, pop, cov, state)
    np.testing.assert_array_equal(x["CYP2D6_AS_missing"], np.isnan(cov["CYP2D6_AS"]))
    np.testing.assert_array_equal(
        x["CYP2D6_AS"], np.where(np.isnan(cov["CYP2D6_AS"]), 0.0, cov["CYP2D6_AS"])
    )
