"""Explanations (issue 6): SHAP additivity against `predict`, exact Shapley values of linear
functions (closed form), feature rankings on known functions and on the warfarin mechanism
(Hamberg 2007: VKORC1, CYP2C9 and age matter, weight does not), LIME, and the twin's HTML
report with a per-patient explanation."""

from __future__ import annotations

import base64
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

import surrogates
import twins
from surrogates import Inputs, SklearnSurrogate, Surrogate, XGBoostSurrogate
from surrogates._data import training_set
from surrogates._explain import (
    Explanation,
    explain,
    explanation_section,
    lime_explain,
    patient_inputs,
    summary_plot,
    waterfall_plot,
)
from twins import drugs

# ----------------------------------------------------------------------------- synthetic


def _known(n: int, seed: int, margin: float = 0.0) -> tuple[pd.DataFrame, np.ndarray]:
    """y = 3 a + 0 b + 2 c d: `a` matters most, `b` not at all, `c` and `d` interact
    (`margin` keeps a, b, d that far inside their ranges)."""
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(
        {
            "a": rng.uniform(-1.0 + margin, 1.0 - margin, n),
            "b": rng.uniform(-1.0 + margin, 1.0 - margin, n),
            "c": rng.integers(0, 2, n).astype(float),
            "d": rng.uniform(margin, 1.0 - margin, n),
        }
    )
    y = 3.0 * x["a"] + 0.0 * x["b"] + 2.0 * x["c"] * x["d"]
    return x, y.to_numpy()


@pytest.fixture(scope="module")
def known():
    """1,000 training rows, then 200 test rows inside the training ranges."""
    train, test = _known(1000, seed=0), _known(200, seed=1, margin=0.02)
    x = pd.concat([train[0], test[0]], ignore_index=True)
    y = np.concatenate([train[1], test[1]])
    xgb = XGBoostSurrogate(n_estimators=300, max_depth=4, n_jobs=1, quantiles=False)
    return x, y, xgb.fit(x.iloc[:1000], y[:1000], key=0)


def test_tree_shap_is_additive_for_xgboost(known):
    x, _, model = known
    test = x[1000:1100]
    pred = model.predict(test).mean
    exact = explain(model, test)
    assert exact.method == "tree (path-dependent)" and exact.output_scale == "prediction"
    np.testing.assert_allclose(exact.prediction, pred)
    np.testing.assert_allclose(exact.base_values + exact.values.sum(axis=1), pred, atol=1e-4)
    assert exact.additivity()
    inter = explain(model, test, background=x[:1000])
    assert inter.method == "tree (interventional)" and inter.additivity()
    # The base value of the interventional algorithm is the mean prediction over the
    # background (100 rows drawn from it with the key).
    drawn = np.sort(np.random.default_rng(0).choice(1000, 100, replace=False))
    bg_mean = model.predict(x.iloc[drawn]).mean.mean()
    np.testing.assert_allclose(inter.base_values, bg_mean, rtol=1e-5)
    # A perturbed explanation fails the check: the check can fail.
    broken = Explanation(
        exact.values * 1.01,
        exact.base_values,
        exact.data,
        exact.feature_names,
        exact.prediction,
        exact.output_scale,
        exact.method,
        exact.surrogate,
    )
    assert not broken.additivity()


# Extended: the closed-form Shapley test of a linear model checks the SHAP path in make test.
@pytest.mark.extended
def test_tree_shap_scale_for_log_target_and_classifiers(known):
    x, y, _ = known
    test = x[1000:1050]
    log_model = XGBoostSurrogate(n_estimators=200, n_jobs=1, log_target=True, quantiles=False)
    log_model.fit(x[:1000], np.exp(y[:1000] / 3.0))
    tree = explain(log_model, test)
    assert tree.output_scale == "log(prediction)"
    np.testing.assert_allclose(
        np.exp(tree.base_values + tree.values.sum(axis=1)),
        log_model.predict(test).mean,
        rtol=1e-4,
    )
    # On the prediction's own scale by the model-agnostic route.
    same = explain(log_model, test[:10], background=x[:1000], method="permutation")
    assert same.output_scale == "prediction" and same.additivity(rtol=1e-9, atol=1e-9)
    clf = XGBoostSurrogate("classification", n_estimators=200, n_jobs=1)
    clf.fit(x[:1000], (y[:1000] > 0.5).astype(float))
    logodds = explain(clf, test)
    assert logodds.output_scale == "log-odds"
    p = clf.predict(test).mean
    np.testing.assert_allclose(
        logodds.base_values + logodds.values.sum(axis=1), np.log(p / (1 - p)), atol=1e-3
    )


def test_model_agnostic_shap_is_additive_for_scikit_learn(known):
    x, y, _ = known
    test = x[1000:1012]
    for model in (
        SklearnSurrogate("random_forest", n_estimators=40, n_jobs=1),
        SklearnSurrogate("svm"),
    ):
        model.fit(x[:1000], y[:1000])
        pred = model.predict(test).mean
        for method in ("permutation", "kernel"):
            e = explain(model, test, background=x[:1000], method=method, n_background=40)
            assert e.method == method and e.output_scale == "prediction"
            np.testing.assert_allclose(e.prediction, pred)
            np.testing.assert_allclose(
                e.base_values + e.values.sum(axis=1), pred, rtol=1e-9, atol=1e-9
            )
    # The forest also has the tree route (on its standardised features): exact.
    forest = SklearnSurrogate("random_forest", n_estimators=40, n_jobs=1).fit(x[:1000], y[:1000])
    tree = explain(forest, test)
    assert tree.method == "tree (path-dependent)" and tree.additivity()
    np.testing.assert_array_equal(tree.data, test.to_numpy())
    assert tree.importance()["feature"].iloc[0] == "a"


def test_shapley_values_of_a_linear_model_are_the_closed_form(known):
    """For f(x) = w.x + b and independent features the Shapley value of feature j is
    w_j (x_j - E[x_j]) over the background: exact for the permutation route, and for
    Kernel SHAP (a linear function is solved exactly)."""
    x, _, _ = known
    model = SklearnSurrogate("linear").fit(x[:1000], 3.0 * x["a"][:1000] - 2.0 * x["d"][:1000])
    # 20 background rows: all used, and not summarised by k-means for Kernel SHAP.
    test, bg = x[1000:1020], x[:20]
    w = np.array([3.0, 0.0, 0.0, -2.0])
    expected = (test.to_numpy() - bg.to_numpy().mean(axis=0)) * w
    for method in ("permutation", "kernel"):
        e = explain(model, test, background=bg, method=method, n_background=20)
        np.testing.assert_allclose(e.values, expected, atol=1e-8)
    agnostic = explain(model, test, background=bg)  # "auto": not a tree model
    assert agnostic.method == "permutation"


def test_the_explainer_ranks_a_known_function(known):
    x, _, model = known
    imp = explain(model, x[1000:]).importance()
    assert imp["feature"].tolist()[0] == "a"
    assert imp["feature"].tolist()[-1] == "b"
    top = imp.set_index("feature")["mean_abs_shap"].to_dict()
    # E|3a| = 1.5; c d contributes about 0.5 on average, split between c and d; b nothing.
    assert 1.2 < top["a"] < 1.8
    assert top["b"] < 0.05 * top["a"]
    grouped = explain(model, x[1000:]).importance(groups={"cd": ["c", "d"]})
    assert grouped["feature"].tolist() == ["a", "cd", "b"]
    with pytest.raises(ValueError, match=r"names \['e'\], which are not features"):
        explain(model, x[1000:1010]).importance(groups={"cd": ["c", "e"]})


# ----------------------------------------------------------------------------- sequences


class _LinearSequence(Surrogate):
    """A surrogate that reads `Inputs.sequence` itself (as the Flax models do): output k is
    (k + 1) * (2 WT + 0.5 * sum of doses + 3 * the level at step 1)."""

    uses_sequence = True

    def __init__(self, outputs: int = 1, **kw):
        super().__init__(calibration_fraction=0.0, **kw)
        self.outputs = outputs

    def hyperparameters(self):
        return {"outputs": self.outputs}

    def _fit(self, inputs, y, *, key):
        pass

    def _predict(self, inputs):
        assert inputs.sequence is not None
        seq = inputs.sequence
        base = (
            2.0 * inputs.static["WT"].to_numpy()
            + 0.5 * seq[:, :, 0].sum(axis=1)
            + 3.0 * seq[:, 1, 1]
        )
        if self.outputs == 1:
            return base, None
        return np.stack([(k + 1) * base for k in range(self.outputs)], axis=1), None

    def _save_model(self, folder):
        pass

    def _load_model(self, folder):
        pass


def _sequence_inputs(n: int, seed: int) -> Inputs:
    rng = np.random.default_rng(seed)
    static = pd.DataFrame({"WT": rng.uniform(50, 100, n), "AGE": rng.uniform(20, 80, n)})
    seq = np.stack([rng.uniform(0, 10, (n, 3)), rng.uniform(0, 5, (n, 3))], axis=-1)
    return Inputs(static, seq, ("dose", "level"), np.array([0.0, 24.0, 48.0]))


def test_a_sequence_surrogate_is_explained_over_the_flattened_table():
    train = _sequence_inputs(200, seed=1)
    model = _LinearSequence().fit(train, np.zeros(200))
    test, bg = _sequence_inputs(8, seed=2), train.take(np.arange(50))
    e = explain(model, test, background=bg, n_background=50)
    assert e.method == "permutation"
    assert e.feature_names == tuple(test.tabular().columns)
    assert e.feature_names[2:5] == ("dose@0h", "level@0h", "dose@24h")
    w = pd.Series(0.0, index=list(e.feature_names))
    w["WT"] = 2.0
    w[["dose@0h", "dose@24h", "dose@48h"]] = 0.5
    w["level@24h"] = 3.0
    expected = (test.tabular() - bg.tabular().mean()) * w
    np.testing.assert_allclose(e.values, expected.to_numpy(), atol=1e-9)
    # A trajectory surrogate: one output at a time.
    multi = _LinearSequence(outputs=3).fit(train, np.zeros((200, 3)))
    with pytest.raises(ValueError, match=r"predicts 3 outputs .* output=<index in \[0, 3\)>"):
        explain(multi, test, background=bg)
    third = explain(multi, test, background=bg, output=2, n_background=50)
    np.testing.assert_allclose(third.values, 3.0 * expected.to_numpy(), atol=1e-8)
    with pytest.raises(ValueError, match="output must be an integer in"):
        explain(multi, test, background=bg, output=3)
    # Without a sequence the inputs are refused, naming what is missing.
    with pytest.raises(ValueError, match="trained with sequences; none given"):
        explain(model, test.static, background=bg)


# ----------------------------------------------------------------------------- LIME


def test_lime_finds_the_features_and_is_deterministic_per_key(known):
    x, _, model = known
    patient = pd.DataFrame({"a": [0.9], "b": [0.0], "c": [1.0], "d": [0.9]})
    table = lime_explain(model, patient, 0, background=x[:1000], num_features=4, key=3)
    assert list(table.columns) == ["feature", "condition", "value", "weight"]
    assert table["feature"].iloc[0] == "a" and table["weight"].iloc[0] > 0
    weights = table.set_index("feature")["weight"].to_dict()
    assert abs(weights["b"]) < 0.1 * abs(weights["a"])
    assert weights["c"] > 0  # c = 1 with d = 0.9 raises the prediction by about 1.8
    again = lime_explain(model, patient, 0, background=x[:1000], num_features=4, key=3)
    pd.testing.assert_frame_equal(table, again)
    other = lime_explain(model, patient, 0, background=x[:1000], num_features=4, key=4)
    assert not np.array_equal(other["weight"].to_numpy(), table["weight"].to_numpy())
    assert table.attrs["prediction"] == pytest.approx(float(model.predict(patient).mean[0]))
    with pytest.raises(ValueError, match=r"row must be an integer in \[0, 1\)"):
        lime_explain(model, patient, 1, background=x[:1000])


def test_plots_are_figures(known):
    x, _, model = known
    e = explain(model, x[1000:1100])
    for fig in (summary_plot(e), summary_plot(e, kind="bar"), waterfall_plot(e, 3)):
        assert isinstance(fig, Figure) and fig.axes
    # The waterfall ends at the prediction: the last bar's right end is f(x).
    ax = waterfall_plot(e, 3, max_display=3).axes[0]
    bars = ax.patches
    end = bars[-1].get_path().get_extents(bars[-1].get_patch_transform()).x1
    assert end == pytest.approx(float(e.prediction[3]), abs=1e-4)
    shap_explanation = e.to_shap()
    np.testing.assert_array_equal(shap_explanation.values, e.values)


# ----------------------------------------------------------------------------- warfarin

VKORC1 = ["VKORC1_AG", "VKORC1_AA"]
REGIMEN = ["loading_dose_1", "loading_dose_2", "loading_dose_3", "maintenance_dose"]


def _groups(features):
    cyp = [f for f in features if f.startswith("CYP2C9")]
    return {"VKORC1": VKORC1, "CYP2C9": cyp}


def _mechanism(static: pd.DataFrame, weekly: np.ndarray) -> pd.DataFrame:
    """Importance (mean |SHAP|, genotype indicators grouped by gene) of an XGBoost surrogate
    of the weekly dose, with two pure-noise columns as the level an irrelevant feature
    reaches by chance (the trees also fit noise)."""
    rng = np.random.default_rng(5)
    static = static.assign(
        NOISE_1=rng.uniform(size=len(static)), NOISE_2=rng.normal(size=len(static))
    )
    model = XGBoostSurrogate(n_estimators=400, max_depth=4, n_jobs=1, quantiles=False)
    model.fit(static, weekly, key=0)
    e = explain(model, static.iloc[:800])
    assert e.additivity()
    return e.importance(groups=_groups(static.columns))


def _check_mechanism(imp: pd.DataFrame, *, weight_is_noise: bool = True) -> None:
    ranking = imp["feature"].tolist()
    assert set(ranking[:3]) == {"VKORC1", "CYP2C9", "AGE"}, imp.head(6)
    score = imp.set_index("feature")["mean_abs_shap"].to_dict()
    noise = max(score["NOISE_1"], score["NOISE_2"])
    for weightish in ("WT", "BSA", "LBW"):
        assert ranking.index(weightish) > 3
        assert score[weightish] < 0.5 * score["AGE"], imp.head(10)
        if weight_is_noise:
            assert score[weightish] < 1.5 * noise, imp.head(10)
    # Amiodarone is not in the Hamberg model either (3% of the patients take it).
    assert score["AMIODARONE"] < 0.25 * score["AGE"]


@pytest.fixture(scope="module")
def warfarin_control():
    return training_set(twins.eupact_trial(), 2000, arm="control", seed=0, observe=0)


def test_warfarin_surrogate_ranks_the_mechanistic_covariates(warfarin_control):
    """The control arm's INR-guided weekly dose after 12 weeks reflects the patient's
    sensitivity, which the Hamberg 2007 model sets from VKORC1 (EC50), CYP2C9 and age
    (clearance); weight is not in the model. The arm's doses (10/5/5 mg, 5/5/5 above 75
    years, then 5 mg) are constant or a function of age: left out, so that age keeps its
    credit."""
    ts = warfarin_control
    static = ts.inputs.static.drop(columns=REGIMEN)
    imp = _mechanism(static, ts.targets["weekly_dose"].to_numpy())
    _check_mechanism(imp)


@pytest.mark.extended
def test_warfarin_genotype_arm_initial_dose_takes_the_credit():
    """In the genotype-guided arm the initial doses are the IWPC dose, a function of age,
    height, weight, genotypes and amiodarone. Without them the mechanism's ranking holds;
    with them the dose itself (the rule's summary of the covariates) ranks first and takes
    the genotypes' credit."""
    ts = training_set(twins.eupact_trial(), 2000, arm="genotype_guided", seed=0, observe=0)
    weekly = ts.targets["weekly_dose"].to_numpy()
    # Weight reaches the outcome through the IWPC starting dose (the nomogram keeps a dose
    # that puts the INR in range): above the noise level, still far below age.
    dropped = _mechanism(ts.inputs.static.drop(columns=REGIMEN), weekly)
    _check_mechanism(dropped, weight_is_noise=False)
    kept = _mechanism(ts.inputs.static, weekly)
    assert kept["feature"].iloc[0] == "maintenance_dose", kept.head(5)


# ----------------------------------------------------------------------------- twin report

VANCO = drugs.get("vancomycin_goti2018")


def _vanco_trial():
    def per_kg(cov):
        n = len(cov["ID"])
        return np.full((n, 1), 25.0) * cov["WT"][:, None], 15.0 * cov["WT"]

    arm = twins.DosingArm("per_kg", "15 mg/kg", "", per_kg, visits=(3,), dose_step=250.0)
    return twins.Trial(
        name="vanco",
        drug=VANCO,
        population=twins.Population.sample,
        arms=(arm,),
        endpoints=(twins.AUC("auc24", "AUC24"),),
        days=4,
        interval=12.0,
        covariates=("AGE", "WT", "CRCL"),
    )


def _patient(weight=70.0, genotypes=True):
    return twins.Patient(
        id="VAN-R",
        age=60,
        sex="female",
        weight=weight,
        height=165.0,
        ancestry="White",
        labs={"serum_creatinine": 1.1},
        genotypes={"CYP2C9": "*1/*1"} if genotypes else {},
    )


@pytest.fixture(scope="module")
def vanco_surrogate():
    trial = _vanco_trial()
    ts = training_set(trial, 400, seed=0, observe=0)
    model = XGBoostSurrogate(n_estimators=200, n_jobs=1, log_target=True)
    return trial, ts, model.fit(ts.inputs, ts.targets["auc24"], key=0)


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def test_twin_report_has_the_forecast_and_the_explanation(vanco_surrogate, tmp_path):
    trial, ts, model = vanco_surrogate
    x = patient_inputs(trial, _patient(), features=model.features)
    assert list(x.static.columns) == list(model.features)
    section = explanation_section(model, x, background=ts.inputs, title="Why this AUC24")
    twin = twins.DigitalTwin(VANCO, _patient())
    twin.give(VANCO.regimen(4, amount=1000.0, interval=12.0, duration=1.0))
    path = twins.write_twin_report(
        twin, tmp_path / "twin" / "report.html", sections=[section], n_draws=200
    )
    assert sorted(p.name for p in (tmp_path / "twin").iterdir()) == ["report.html"]
    html = Path(path).read_text(encoding="utf-8")
    for heading in ("Patient", "Drug and model", "Posterior", "Forecast", "Why this AUC24"):
        assert f"<h2>{heading}</h2>" in html
    assert "Goti" in html and "Normal Metabolizer" in html  # reference; CPIC phenotype
    assert "LIME (local linear model)" in html and "Top features by |SHAP|" in html
    images = _images(html)
    assert len(images) == 2  # forecast, waterfall
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in images)
    assert "http://" not in html and "https://" not in html  # self-contained
    assert 'class="warning"' not in html


def test_explanation_section_warns_for_a_patient_outside_the_training_ranges(vanco_surrogate):
    trial, ts, model = vanco_surrogate
    heavy = patient_inputs(trial, _patient(weight=260.0), features=model.features)
    title, html = explanation_section(model, heavy, background=ts.inputs)
    assert title == "Surrogate explanation"
    assert 'class="warning"' in html and "WT outside the training range" in html
    with pytest.warns(surrogates.ExtrapolationWarning):
        e = explain(model, heavy)
    assert e.out_of_range.tolist() == [True]


def test_bad_inputs_are_named(vanco_surrogate, known, tmp_path):
    trial, _, model = vanco_surrogate
    x, _, xgb = known
    with pytest.raises(ValueError, match=r"lack the features \['c'\]"):
        explain(xgb, x.drop(columns=["c"]).iloc[:3])
    # vancomycin's model reads no gene: its surrogate has no activity score, and a patient
    # without a genotype is scored; a feature the patient cannot give is named
    assert not [f for f in model.features if f.endswith("_AS")]
    assert len(patient_inputs(trial, _patient(genotypes=False), features=model.features)) == 1
    with pytest.raises(ValueError, match=r"cannot compute the features \['CYP2C9_AS'\]"):
        patient_inputs(trial, _patient(genotypes=False), features=[*model.features, "CYP2C9_AS"])
    with pytest.raises(ValueError, match="needs a background"):
        explain(SklearnSurrogate("linear").fit(x[:100], np.arange(100.0)), x[:3])
    with pytest.raises(ValueError, match="method='tree' needs an XGBoost"):
        explain(SklearnSurrogate("linear").fit(x[:100], np.arange(100.0)), x[:3], method="tree")
    with pytest.raises(ValueError, match="max_evals must be at least 2 p \\+ 1 = 9"):
        explain(xgb, x[:3], background=x, method="permutation", max_evals=5)
    missing = x.iloc[:3].copy()
    missing.loc[1, "a"] = np.nan
    with pytest.raises(ValueError, match="LIME needs complete features; the patient"):
        lime_explain(xgb, missing, 1, background=x)
    with pytest.raises(RuntimeError, match="not fitted"):
        explain(XGBoostSurrogate(), x[:3])
    twin = twins.DigitalTwin(VANCO, _patient())
    with pytest.raises(TypeError, match=r"sequence of \(title, html\) pairs"):
        twins.write_twin_report(twin, tmp_path / "r.html", sections=("title", "<p>html</p>"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no doses given and no regimen"):
        twins.write_twin_report(twin, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


@pytest.mark.extended
def test_twin_report_after_levels_with_a_recommendation(vanco_surrogate, tmp_path):
    """The full report: posterior after two levels, recommendation for the AUC24 window and
    the forecast under it."""
    trial, ts, model = vanco_surrogate
    x = patient_inputs(trial, _patient(), features=model.features)
    twin = twins.DigitalTwin(VANCO, _patient())
    twin.give(VANCO.regimen(4, amount=1000.0, interval=12.0, duration=1.0))
    twin.update(times=[23.5, 35.5], values=[12.0, 14.5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = twins.write_twin_report(
            twin,
            tmp_path / "full.html",
            target="AUC24",
            sections=[explanation_section(model, x, background=ts.inputs)],
        )
    html = path.read_text(encoding="utf-8")
    assert "<h2>Dose recommendation</h2>" in html and "P(400 &lt;= AUC24 &lt;= 600)" in html
    assert len(_images(html)) == 3  # forecast, forecast under the recommendation, waterfall
    assert "conditioned on 2 level(s)" in html
