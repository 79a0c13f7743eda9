"""Trial specs' [adherence] and [variability] tables (docs/howto-trial-spec.md): they build
the same twins.Adherence and twins.Variability as Python does, on a written-out trial and on
a preset, and bad entries are refused naming the field."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import twins
from twins.app import load_trial, trial_from_dict
from twins.app._spec import SpecError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

BEHAVIOUR = """
preset = "eupact"

[adherence]
p_miss_after_taken = 0.05
p_take_after_missed = 0.6
reference = "a user's choice"

[[variability.iov]]
parameter = "EC50"
sd = 0.2
reference = "a user's choice"

[[variability.iov]]
parameter = "CL"
sd = 0.1
every_days = 14

[[variability.ou]]
parameter = "EC50"
sd = 0.15
correlation_days = 10.0

[run]
n = 10
"""


def test_preset_with_adherence_and_variability():
    trial, options = load_trial(BEHAVIOUR)
    assert options.n == 10
    assert trial.adherence == twins.Adherence(0.05, 0.6, "a user's choice")
    assert trial.variability == twins.Variability(
        (
            twins.IOV("EC50", 0.2, None, "a user's choice"),
            twins.IOV("CL", 0.1, 14.0),
            twins.OrnsteinUhlenbeck("EC50", 0.15, 10.0),
        )
    )
    plain = twins.eupact_trial()
    described = trial.describe()
    assert described["variability"][1]["occasions"] == "every 14 days"
    assert {k: v for k, v in described.items() if k not in ("adherence", "variability")} == (
        plain.describe()
    )


def test_dropout_table_and_endpoint():
    data = {
        "preset": "eupact",
        "dropout": {"rate_per_year": 0.5, "above": 5.0, "p_after_above": 0.5},
    }
    trial, _ = trial_from_dict(data)
    assert trial.dropout == twins.Dropout(0.5, 5.0, 0.5)
    full = tomllib.loads((EXAMPLES / "eupact.toml").read_text())
    full["endpoints"].append({"type": "dropped", "name": "left", "label": "Left the trial"})
    trial, _ = trial_from_dict(full, base_dir=EXAMPLES)
    assert isinstance(trial.endpoints[-1], twins.Dropped)


def test_written_out_spec_with_independent_adherence():
    data = tomllib.loads((EXAMPLES / "eupact.toml").read_text())
    data["adherence"] = {"p_taken": 0.9}
    data["variability"] = {"ou": [{"parameter": "CL", "sd": 0.1, "correlation_days": 5}]}
    trial, _ = trial_from_dict(data, base_dir=EXAMPLES)
    assert trial.adherence == twins.Adherence.independent(0.9)
    assert trial.variability == twins.Variability((twins.OrnsteinUhlenbeck("CL", 0.1, 5.0),))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"adherence": {"p_taken": 1.5}}, r"adherence\.p_taken: expected a number <= 1"),
        ({"adherence": {"p_taken": 0.9, "p_miss_after_taken": 0.1}}, "not both"),
        ({"adherence": {"p_miss_after_taken": 0.1}}, r"missing \['p_take_after_missed'\]"),
        ({"adherence": {"p_miss": 0.1}}, r"adherence\.p_miss: unknown key"),
        ({"adherence": {"p_miss_after_taken": 0, "p_take_after_missed": 0}}, "both 0"),
        ({"variability": {}}, "at least one"),
        (
            {"variability": {"iov": [{"parameter": "EC50"}]}},
            r"variability\.iov\[0\]: missing .*'sd'",
        ),
        (
            {"variability": {"iov": [{"parameter": "EC50", "sd": 0.1, "evry_days": 7}]}},
            r"variability\.iov\[0\]\.evry_days: unknown key \(did you mean 'every_days'\?\)",
        ),
        (
            {"variability": {"iov": [{"parameter": "EC50", "sd": -0.1}]}},
            r"variability\.iov\[0\]\.sd: expected a number >= 0",
        ),
        (
            {"variability": {"ou": [{"parameter": "CL", "sd": 0.1, "correlation_days": 0}]}},
            r"variability\.ou\[0\]\.correlation_days: expected a number > 0",
        ),
        (
            {"variability": {"ou": [{"parameter": "CLX", "sd": 0.1, "correlation_days": 3}]}},
            r"OrnsteinUhlenbeck on 'CLX': the model has no parameter",
        ),
        ({"variability": {"iov": "EC50"}}, r"variability\.iov: expected an array"),
        ({"arms": []}, r"arms: a spec with a preset may only have \[run\], \[adherence\]"),
        ({"dropout": {}}, "expected rate_per_year"),
        ({"dropout": {"rate_per_year": -1}}, r"dropout\.rate_per_year: expected a number >= 0"),
        ({"dropout": {"above": 5, "p_after_above": 2}}, r"dropout\.p_after_above: expected"),
        ({"dropout": {"rate": 1}}, r"dropout\.rate: unknown key"),
    ],
)
def test_bad_entries_name_the_field(table, message):
    data = {"preset": "eupact", **table}
    with pytest.raises(SpecError, match=message):
        trial_from_dict(data)
