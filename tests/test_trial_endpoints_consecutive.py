"""TimeToRange(consecutive=k): the first of k consecutive values in range, against a loop
written here; consecutive = 1 is the endpoint as before (values and description), and the
spec reader takes the key."""

from __future__ import annotations

import numpy as np
import pytest

import twins
from twins.app import load_trial


def _loop(t, y, low, high, k):
    times, events = [], []
    for row in y:
        ok = [(low <= v <= high) for v in row]
        hit = [j for j in range(len(row) - k + 1) if all(ok[j : j + k])]
        events.append(bool(hit))
        times.append(t[hit[0]] if hit else t[-1])
    return np.array(times), np.array(events)


def test_consecutive_values_in_range_against_a_loop():
    rng = np.random.default_rng(0)
    t = np.array([0.0, 3, 5, 7, 10, 14, 21, 28])
    y = rng.uniform(1.0, 4.0, size=(500, t.size))
    y[0] = [1, 2.5, 1, 2.5, 2.6, 1, 1, 1]  # first in range at 3 days, confirmed from 7
    y[1] = [1, 1, 1, 1, 1, 1, 1, 2.5]  # in range at the last value only: no event for k = 2
    course = {"visit_days": t, "measured": y}
    for k in (1, 2, 3):
        e = twins.TimeToRange("ttt", "t", 2.0, 3.0, "measured", k)
        got = e(course)
        want_t, want_e = _loop(t, y, 2.0, 3.0, k)
        np.testing.assert_array_equal(np.asarray(got["ttt"]), want_t)
        np.testing.assert_array_equal(np.asarray(got["ttt_event"]), want_e)
    two = twins.TimeToRange("ttt", "t", 2.0, 3.0, consecutive=2)(course)
    assert float(two["ttt"][0]) == 7.0 and not bool(two["ttt_event"][1])
    one = twins.TimeToRange("ttt", "t", 2.0, 3.0)
    assert "consecutive" not in one.describe()  # spec hashes of earlier runs unchanged
    assert twins.TimeToRange("ttt", "t", consecutive=2).describe()["consecutive"] == 2.0
    with pytest.raises(ValueError, match="consecutive must be an integer >= 1"):
        twins.TimeToRange("ttt", "t", consecutive=0)


def test_spec_reads_consecutive():
    text = """
name = "x"
drug = "warfarin_hamberg2007"
days = 10
[[arms]]
name = "a"
visits = [1, 4, 6, 8]
initial = { loading = [5, 5, 5], maintenance = 5 }
[[endpoints]]
type = "time_to_range"
name = "ttt"
low = 2.0
high = 3.0
consecutive = 2
"""
    trial, _ = load_trial(text)
    assert trial.endpoints[0].consecutive == 2
    with pytest.raises(Exception, match=r"endpoints\[0\]\.consecutive: expected an integer >= 1"):
        load_trial(text.replace("consecutive = 2", "consecutive = 0"))
