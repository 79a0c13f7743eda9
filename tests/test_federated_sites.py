"""Virtual hospitals for the federated surrogates (surrogates.federated._sites) and the small
Table 3 (surrogates.federated._table3): sites that differ as real ones do, more than an IID
split of the same patients, and the table's rows."""

import math

import numpy as np
import pytest

from surrogates.federated._dp import client_noise_multiplier
from surrogates.federated._sites import (
    STATIC_FEATURES,
    Hospital,
    hospitals,
    reference_schema,
    site_divergence,
)
from surrogates.federated._table3 import federation, surrogate_table


def test_hospitals_split_the_patients_and_follow_the_archetypes():
    specs = hospitals(12, 3000, seed=1)
    assert sum(h.n for h in specs) == 3000
    assert min(h.n for h in specs) >= 40
    assert len({h.name for h in specs}) == 12
    assert specs[1].ancestry["Asian"] == pytest.approx(0.9)
    assert specs[1].dose == 3.0 and specs[3].age == (65.0, 95.0)
    for h in specs:
        assert sum(h.ancestry.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least"):
        hospitals(10, 100)
    with pytest.raises(ValueError, match="unknown ancestries"):
        Hospital("x", 50, {"Martian": 1.0}, (20.0, 30.0))


def test_sites_differ_more_than_an_iid_split_and_the_features_line_up():
    fed = federation(5, 600)
    sites = [*fed.train]
    schema = reference_schema()
    for s in sites:
        assert list(s.static.columns) == list(STATIC_FEATURES)
        x = schema.tabular(s)
        assert x.shape == (len(s), len(schema.columns)) and np.isfinite(x).all()
        assert set(np.unique(s.y)) <= {0.0, 1.0}
        assert np.all(s.y == ((s.inr >= 2) & (s.inr <= 3)))
    # Dosing practice and case mix as specified.
    east, safety, geriatric = sites[1], sites[2], sites[3]
    assert set(np.unique(east.static["maintenance_dose"])) == {3.0}
    assert set(np.unique(geriatric.static["maintenance_dose"])) == {3.0, 4.0}  # 3 mg from 75
    assert geriatric.static["AGE"].min() >= 65
    assert east.static["ancestry_Asian"].mean() > 0.75
    # Genotype frequencies follow ancestry: VKORC1 -1639 AA (IWPC counts by race) is common
    # among Asian patients and rare among Black patients.
    assert east.static["VKORC1_AA"].mean() > safety.static["VKORC1_AA"].mean() + 0.3
    # Renal function: the geriatric centre's creatinine is scaled by 1.4.
    assert geriatric.static["SCR"].median() > 1.2 * sites[0].static["SCR"].median()
    div = fed.divergence
    assert list(div.index)[-1] == "federation"
    row = div.loc["federation"]
    assert row["covariate_js"] > 5 * row["iid_covariate_js"]
    assert row["max_smd"] > 3 * row["iid_max_smd"]
    assert site_divergence(sites).loc["federation", "n"] == sum(len(s) for s in sites)


@pytest.mark.extended  # ~100 s on 2 shared cores (compiling five settings); the parts:
# test_federated_dp.py, test_federated_surrogates.py
def test_small_table3_has_every_setting_and_states_the_privacy():
    table = surrogate_table(5, n_total=600, rounds=3)
    assert list(zip(table["setting"], table["unit"], strict=True)) == [
        ("centralised", "none"),
        ("centralised", "record"),
        ("federated, 5 hospitals", "none"),
        ("federated, 5 hospitals", "record"),
        ("federated, 5 hospitals", "client"),
    ]
    for col in ("accuracy", "f1", "roc_auc"):
        assert table[col].between(0, 1).all()
    private = table[table["unit"] != "none"]
    assert (private["epsilon_pld"] <= 0.5 + 1e-9).all()
    assert (private["epsilon_rdp"] >= private["epsilon_pld"]).all()
    assert (private["delta"] == 1e-5).all()
    client = table[table["unit"] == "client"].iloc[0]
    assert client["noise_multiplier"] == pytest.approx(client_noise_multiplier(3, 0.5))
    assert client["noise_sd_on_mean"] == pytest.approx(client["noise_multiplier"] * 0.5 / 5)
    fed = table[table["setting"] != "centralised"]
    assert (fed["bytes_up"] == 3 * 5 * fed["bytes_up"].iloc[0] / 15).all()
    assert (table.loc[table["setting"] == "centralised", "bytes_up"] == 0).all()
    assert math.isinf(table.loc[0, "epsilon_pld"])
