"""The federated surrogates through Flower's simulation engine (run_simulation, Ray backend):
the ServerApp and ClientApps give the model of the pure simulation; client-level DP through
Flower's client-side fixed clipping; SecAgg+ gives the plain aggregate to quantisation
tolerance."""

import jax
import numpy as np
import pytest

from surrogates.federated._dp import ClientDP, client_epsilon
from surrogates.federated._fedavg import Client, LocalTraining, Server, federated_training
from surrogates.federated._surrogate_apps import (
    Outcome,
    secagg_client_app,
    secagg_server_app,
    simulate,
    surrogate_client_app,
    surrogate_server_app,
)
from surrogates.federated._surrogate_models import mlp

# Ray starts its processes by fork+exec from a process where JAX runs threads; the child
# execs at once, so CPython's warning about forking a threaded process does not apply.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")

LOCAL = LocalTraining(steps=3, sampling_rate=0.3, learning_rate=0.05)


def _hospitals():
    rng = np.random.default_rng(0)
    out = []
    for n, shift in ((40, 0.0), (60, 0.5), (50, -0.5)):
        x = (rng.normal(size=(n, 6)) + shift).astype(np.float32)
        out.append(Client(x, (x[:, 0] > shift).astype(np.float32)))
    return out


@pytest.mark.extended  # ~100 s on 2 shared cores (Ray's start); the numerics: make test
def test_flower_fedavg_gives_the_pure_simulations_model_and_counts_bytes():
    model = mlp(6, hidden=(8,))
    clients = _hospitals()
    outcome = Outcome()
    simulate(
        surrogate_server_app(model, hospitals=3, rounds=2, outcome=outcome),
        surrogate_client_app(model, clients, local=LOCAL),
        3,
    )
    pure = federated_training(
        model.loss, model.params, clients, rounds=2, local=LOCAL, key=jax.random.key(0)
    )
    assert outcome.params is not None
    for a, b in zip(outcome.params, model.arrays(pure), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)  # float32 sums in another order
    # Each hospital gets and sends the parameters once a round: 2 rounds x 3 hospitals x
    # (float32 bytes + the .npy header of each array).
    assert outcome.bytes_up == outcome.bytes_down
    assert 2 * 3 * model.nbytes < outcome.bytes_up < 2 * 3 * (model.nbytes + 200 * 4)


@pytest.mark.extended  # ~60 s on 2 shared cores; the numerics: test_federated_dp.py
def test_flower_client_level_dp_clips_weights_equally_and_accounts():
    """Flower's DifferentialPrivacyClientSideFixedClipping with fixedclipping_mod: at a
    negligible noise multiplier the result is our equal-weight mean of clipped updates, and
    Flower's accountant gives our RDP epsilon."""
    model = mlp(6, hidden=(8,))
    clients = _hospitals()
    sigma, clip = 1e-3, 0.05  # clip below the updates' norms: every update is clipped
    outcome = Outcome()
    server = Server(client_dp=ClientDP(clip, sigma))
    simulate(
        surrogate_server_app(model, hospitals=3, rounds=2, server=server, outcome=outcome),
        surrogate_client_app(model, clients, local=LOCAL, client_dp=True),
        3,
    )
    pure = federated_training(
        model.loss, model.params, clients, rounds=2, local=LOCAL,
        server=Server(client_dp=ClientDP(clip, 0.0)), key=jax.random.key(0),
    )  # fmt: skip
    assert outcome.params is not None
    for a, b in zip(outcome.params, model.arrays(pure), strict=True):
        # Flower's noise: SD sigma * clip / 3 = 1.7e-5 per coordinate, 2 rounds.
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-4)
    assert outcome.epsilon == pytest.approx(client_epsilon(sigma, 2, accountant="rdp"), rel=1e-9)


def test_fedadam_with_client_level_dp_is_refused():
    model = mlp(6, hidden=(8,))
    app = surrogate_server_app(
        model, hospitals=3, rounds=1, server=Server("fedadam", client_dp=ClientDP(1.0, 1.0))
    )
    assert app is not None  # refused when the strategy is built, inside the run:
    from surrogates.federated._surrogate_apps import _strategy

    with pytest.raises(ValueError, match="FedAdam"):
        _strategy(Server("fedadam", client_dp=ClientDP(1.0, 1.0)), 3, 0.0, 1e-5)


@pytest.mark.extended  # ~60 s on 2 shared cores
def test_secagg_plus_aggregate_equals_the_plain_aggregate():
    """SecAgg+ (Flower's SecAggPlusWorkflow and secaggplus_mod): the server unmasks only the
    sum; it equals FedAvg of the same updates to the quantisation tolerance. Each hospital's
    parameters are quantised to 2^22 levels on [-8, 8] (a step of 3.8e-6) and its weight
    n_k / 1000 too; the error of the weighted mean is below 1e-4."""
    model = mlp(6, hidden=(8,))
    clients = _hospitals()
    outcome = Outcome()
    simulate(
        secagg_server_app(model, hospitals=3, rounds=1, outcome=outcome),
        secagg_client_app(model, clients, local=LOCAL),
        3,
    )
    plain = federated_training(
        model.loss, model.params, clients, rounds=1, local=LOCAL, key=jax.random.key(0)
    )
    assert outcome.params is not None
    for a, b in zip(outcome.params, model.arrays(plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
