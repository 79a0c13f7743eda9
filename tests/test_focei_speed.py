"""The inner conditional-mode search of the Laplace/FOCE-I objective at the size of real data
sets (issue 21): a search that stalls on the rounding noise of its objective stops, and the
searches of many subjects run in lanes fed from a queue give the same modes as one vmapped
loop over all subjects."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import calibration as C
import pkpd
from calibration import _laplace

TIMES = [0.25, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 12.0, 18.0, 24.0]


def two_compartment(n: int, seed: int = 1):
    """N subjects of a two-compartment IV model (the design of
    benchmarks/calibration_speed.py --large), and the model at distant starting values."""
    truth = C.PopulationModel(
        pkpd.TwoCompartment(),
        theta={"CL": 5.0, "V1": 20.0, "Q": 8.0, "V2": 60.0},
        omega={"CL": 0.09, "V1": 0.09},
        error=C.Proportional(0.1),
    )
    rows = []
    for i in range(1, n + 1):
        rows.append(dict(ID=i, TIME=0.0, EVID=1, AMT=500.0, CMT=1, DV=0.0, MDV=1))
        rows += [dict(ID=i, TIME=t, EVID=0, AMT=0.0, CMT=1, DV=1.0, MDV=0) for t in TIMES]
    design = C.Dataset.from_records(pd.DataFrame(rows))
    data = C.simulate_dataset(truth, None, design, key=seed).dataset()
    start = C.PopulationModel(
        truth.model,
        theta={"CL": 7.0, "V1": 15.0, "Q": 5.0, "V2": 80.0},
        omega=truth.omega,
        error=C.Proportional(0.2),
    )
    return data, start


@pytest.fixture(scope="module")
def problem():
    data, pm = two_compartment(40)
    return data, pm, pm.initial(), C.FOCEI()


def _searches(pm, phi, data, eta0, est, max_steps=200, more=0):
    """Every subject's final search state, each run to its own end (no vmap over
    subjects: a Python loop of single-subject searches), then `more` iterations beyond
    it, and its iteration count."""
    cov, reg, obs = _laplace._subject_arrays(data.numeric())
    nat = pm.natural(phi)
    chol = pm.random_cholesky(phi, obs["occasion_start"].shape[-1])

    @jax.jit
    def one(c, r, o, e):
        step = lambda st: _laplace._newton_step(pm, nat, chol, c, r, o, st, estimator=est)
        st = jax.lax.while_loop(
            lambda st: ~_laplace._newton_finished(st, max_steps), step, _laplace._newton_start(e)
        )
        return st, jax.lax.fori_loop(0, more, lambda _, s: step(s), st)

    take = lambda tree, i: jax.tree_util.tree_map(lambda a: a[i], tree)
    return [one(take(cov, i), take(reg, i), take(obs, i), eta0[i]) for i in range(data.n_subjects)]


def test_searches_end_before_max_steps_at_the_modes(problem):
    """Each subject's search ends on its own test (a small gradient, a tiny accepted step,
    or a downhill step halved to 1e-12 without a decrease of f), not at `max_steps`, and
    where it ends is the mode to the rounding noise of the gradient: converged by
    `_inner`'s test, and 150 more iterations (past the stop) move no eta by more than 2e-8
    (the Newton step of that noise is up to 1e-8 here) nor f by more than 1e-12 relative.
    Before the stall test some of these subjects (one of 40 here, 2-5% of larger sets) ran
    to `max_steps`, their gradient's rounding noise above the 1e-11 aim, and under vmap
    every subject of an evaluation with them."""
    data, pm, phi, est = problem
    runs = _searches(pm, phi, data, jnp.zeros((data.n_subjects, pm.n_eta)), est, more=150)
    steps = np.array([int(st[6]) for st, _ in runs])
    assert steps.max() < 100, steps
    for st, further in runs:
        assert np.isfinite(float(st[1]))
        g, h = np.asarray(st[2]), np.asarray(st[3])
        assert np.max(np.abs(np.linalg.solve(h, g))) <= 1e-7  # _newton_result's test
        np.testing.assert_allclose(np.asarray(further[0]), np.asarray(st[0]), rtol=0, atol=2e-8)
        assert float(further[1]) == pytest.approx(float(st[1]), rel=1e-12)


def test_queued_searches_give_the_modes_of_one_vmapped_loop(problem, monkeypatch):
    """Beyond 256 subjects the searches run in lanes (`_lanes`) fed from a queue; forced
    here to 8 lanes for 40 subjects, from zero and from warm starts, the objective, modes,
    curvatures and flags equal those of the single vmapped loop (to 1e-12), and the modes
    those of each subject's search run alone."""
    data, pm, phi, est = problem
    design = data.numeric()
    rng = np.random.default_rng(0)
    starts = [jnp.zeros((data.n_subjects, pm.n_eta))]
    starts.append(jnp.asarray(rng.normal(0.0, 0.3, (data.n_subjects, pm.n_eta))))
    plain = [_laplace._objective(pm, phi, design, e, est) for e in starts]
    monkeypatch.setattr(_laplace, "_lanes", lambda n: 8)
    queued = [_laplace._objective(pm, phi, design, e, est) for e in starts]
    for p, q, e in zip(plain, queued, starts, strict=True):
        for a, b in zip(p, q, strict=True):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-12, atol=1e-12)
        alone = np.stack([np.asarray(st[0]) for st, _ in _searches(pm, phi, data, e, est)])
        # compiled alone, a subject's arithmetic rounds differently: the same mode to the
        # rounding noise of its gradient (see the test above)
        np.testing.assert_allclose(np.asarray(q[1]), alone, rtol=0, atol=1e-7)


def test_lanes():
    assert _laplace._lanes(12) == 12 and _laplace._lanes(256) == 256
    assert _laplace._lanes(300) == 128 and _laplace._lanes(1000) == 128
    assert _laplace._lanes(4000) == 256
