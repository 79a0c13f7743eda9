"""The numerical work of a federated round without Flower (surrogates.federated._fedavg):
FedAvg against centralised gradient descent and the least-squares solution on a linear
model, FedProx's proximal term, FedAdam's server step, DP-SGD's limits, and the Flax
surrogates (MLP, LSTM) trained federated."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from surrogates.federated._dp import ClientDP, RecordDP
from surrogates.federated._fedavg import (
    Client,
    LocalTraining,
    Server,
    aggregate,
    fedadam_init,
    fedadam_step,
    federated_training,
    local_update,
)
from surrogates.federated._surrogate_models import lstm, mlp
from surrogates.federated._surrogate_models import transformer as transformer_model


def _squared_loss(params, x, y):
    return 0.5 * (jnp.dot(x, params["w"]) + params["b"][0] - y) ** 2


def _linear_clients(sizes, p=4, seed=0, shift=True):
    """Non-IID linear-regression hospitals: each its own covariate mean and noise."""
    rng = np.random.default_rng(seed)
    beta = rng.normal(size=p)
    out = []
    for k, n in enumerate(sizes):
        x = rng.normal(size=(n, p)) + (0.7 * k if shift else 0.0)
        y = x @ beta + 0.5 + rng.normal(scale=0.1 + 0.1 * k, size=n)
        out.append(Client(x, y))
    return out


def _zeros(p=4):
    return {"w": jnp.zeros(p), "b": jnp.zeros(1)}


# One full-batch step of plain gradient descent per round: every record in every step.
_GD = LocalTraining(steps=1, sampling_rate=1.0, learning_rate=0.05, optimizer="sgd")


def _centralised_gd(clients, params, steps, lr):
    x = np.concatenate([c.x for c in clients])
    y = np.concatenate([c.y for c in clients])

    @jax.jit
    def step(p):
        g = jax.grad(lambda q: jnp.mean(jax.vmap(_squared_loss, (None, 0, 0))(q, x, y)))(p)
        return jax.tree.map(lambda a, b: a - lr * b, p, g)

    for _ in range(steps):
        params = step(params)
    return params


def test_fedavg_of_one_gd_step_equals_centralised_gd_on_the_union():
    """Weighted by n_k, the average of the hospitals' one-step updates is the step of the
    mean gradient over the union, for any (non-IID) split."""
    clients = _linear_clients([30, 55, 17])
    fed = federated_training(
        _squared_loss, _zeros(), clients, rounds=25, local=_GD, key=jax.random.key(0)
    )
    central = _centralised_gd(clients, _zeros(), 25, _GD.learning_rate)
    for name in ("w", "b"):
        np.testing.assert_allclose(fed[name], central[name], rtol=1e-12, atol=1e-13)


def test_fedavg_converges_to_the_least_squares_solution():
    clients = _linear_clients([30, 55, 17], shift=False)
    fed = federated_training(
        _squared_loss, _zeros(), clients, rounds=400,
        local=dataclasses.replace(_GD, learning_rate=0.5), key=jax.random.key(0),
    )  # fmt: skip
    x = np.concatenate([c.x for c in clients])
    y = np.concatenate([c.y for c in clients])
    design = np.column_stack([x, np.ones(len(y))])
    closed, *_ = np.linalg.lstsq(design, y, rcond=None)
    np.testing.assert_allclose(fed["w"], closed[:-1], rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(fed["b"][0], closed[-1], rtol=1e-8, atol=1e-9)


def test_identical_hospitals_with_many_local_steps_equal_centralised_training():
    """With identical hospitals every local trajectory is the centralised one (E steps a
    round on the union, which has the same mean loss): FedAvg must not change it."""
    (one,) = _linear_clients([40])
    local = dataclasses.replace(_GD, steps=7)
    fed = federated_training(
        _squared_loss, _zeros(), [one, one, one], rounds=6, local=local, key=jax.random.key(0)
    )
    central = _centralised_gd([one, one, one], _zeros(), 6 * 7, local.learning_rate)
    for name in ("w", "b"):
        np.testing.assert_allclose(fed[name], central[name], rtol=1e-12, atol=1e-13)


def test_fedprox_adds_mu_times_the_distance_to_the_global_weights():
    (c,) = _linear_clients([20])
    params = {"w": jnp.asarray([0.3, -0.2, 0.1, 0.5]), "b": jnp.asarray([0.2])}
    glob = _zeros()
    mu = 0.7
    local = dataclasses.replace(_GD, proximal_mu=mu)
    new, _ = local_update(
        _squared_loss, params, glob, c.x, c.y, np.ones(len(c)), jax.random.key(0), local=local
    )
    g = jax.grad(lambda p: jnp.mean(jax.vmap(_squared_loss, (None, 0, 0))(p, c.x, c.y)))(params)
    for name in ("w", "b"):
        expected = params[name] - 0.05 * (g[name] + mu * (params[name] - glob[name]))
        np.testing.assert_allclose(new[name], expected, rtol=1e-12, atol=1e-14)


def test_fedadam_step_follows_flowers_formulas():
    """Flower 1.42's FedAdam: m = b1 m + (1 - b1) d, v = b2 v + (1 - b2) d^2,
    w + eta sqrt(1 - b2^(t+1)) / (1 - b1^(t+1)) m / (sqrt(v) + tau), written out here."""
    server = Server("fedadam", eta=0.3, beta_1=0.8, beta_2=0.95, tau=1e-2)
    w = {"a": jnp.asarray([1.0, -2.0, 0.5])}
    state = fedadam_init(w)
    m = np.zeros(3)
    v = np.zeros(3)
    ref = np.asarray(w["a"])
    rng = np.random.default_rng(0)
    for t in range(1, 5):
        avg = {"a": w["a"] + jnp.asarray(rng.normal(size=3))}
        d = np.asarray(avg["a"]) - ref
        m = 0.8 * m + 0.2 * d
        v = 0.95 * v + 0.05 * d**2
        ref = ref + 0.3 * np.sqrt(1 - 0.95 ** (t + 1)) / (1 - 0.8 ** (t + 1)) * m / (
            np.sqrt(v) + 1e-2
        )
        w, state = fedadam_step(w, avg, state, t, server)
        np.testing.assert_allclose(w["a"], ref, rtol=1e-12)


def test_dp_sgd_without_noise_or_clipping_is_plain_sgd_at_rate_one():
    """At q = 1 the expected batch is the batch, so DP-SGD with an unreachable clip and no
    noise is the plain step."""
    clients = _linear_clients([25, 35])
    plain = federated_training(
        _squared_loss, _zeros(), clients, rounds=3, local=_GD, key=jax.random.key(2)
    )
    dp = dataclasses.replace(_GD, dp=RecordDP(clip=1e9, noise_multiplier=0.0))
    private = federated_training(
        _squared_loss, _zeros(), clients, rounds=3, local=dp, key=jax.random.key(2)
    )
    for name in ("w", "b"):
        np.testing.assert_allclose(private[name], plain[name], rtol=1e-12, atol=1e-14)


def test_client_dp_aggregation_without_noise_averages_clipped_updates_equally():
    glob = {"w": jnp.zeros(2)}
    clients = {"w": jnp.asarray([[3.0, 4.0], [0.3, 0.0], [0.0, -0.1]])}
    n = jnp.asarray([100.0, 1.0, 1.0])
    plain, _ = aggregate(glob, clients, n, jax.random.key(0), Server())
    np.testing.assert_allclose(
        plain["w"], (100 * clients["w"][0] + clients["w"][1] + clients["w"][2]) / 102
    )
    private, _ = aggregate(
        glob, clients, n, jax.random.key(0), Server(client_dp=ClientDP(1.0, 0.0))
    )
    expected = (np.array([0.6, 0.8]) + np.array([0.3, 0.0]) + np.array([0.0, -0.1])) / 3
    np.testing.assert_allclose(private["w"], expected, rtol=1e-12)


def test_poisson_sampling_draws_about_q_n_records_a_step():
    """The batch of a step is a Poisson sample: with SGD on a loss whose gradient counts the
    drawn records, the mean count over steps is q n."""

    n, q, steps = 400, 0.05, 200
    x = jnp.ones((n, 1))
    y = jnp.zeros(n)
    sums = []

    def loss(params, xi, yi):
        return params["s"][0] * xi[0]

    # d loss / d s summed over the drawn records divided by the count = 1, so use DP-SGD
    # with clip 1e9, no noise: its gradient is (drawn count) / (q n) per step; SGD with
    # learning rate 1 moves s by minus that.
    local = LocalTraining(
        steps=1, sampling_rate=q, learning_rate=1.0, optimizer="sgd", dp=RecordDP(1e9, 0.0)
    )
    for i in range(steps):
        new, _ = local_update(
            loss, {"s": jnp.zeros(1)}, {"s": jnp.zeros(1)}, x, y, jnp.ones(n),
            jax.random.key(i), local=local,
        )  # fmt: skip
        sums.append(-float(new["s"][0]) * q * n)
    counts = np.array(sums)
    # Mean: SE 0.31 of 20 (1.5%), tolerance over 3 SE; SD: SE about 5%, tolerance 3 SE.
    assert counts.mean() == pytest.approx(q * n, rel=0.05)
    assert counts.std() == pytest.approx(np.sqrt(n * q * (1 - q)), rel=0.15)


def test_mlp_surrogate_learns_federated_with_and_without_dp():
    rng = np.random.default_rng(0)

    def site(n, shift):
        x = rng.normal(size=(n, 6)).astype(np.float32) + shift
        y = ((x[:, 0] - shift) + 0.5 * x[:, 1] > 0.3 * shift).astype(np.float32)
        return x, y

    parts = [site(n, s) for n, s in ((150, 0.0), (90, 0.5), (120, -0.5))]
    test_x, test_y = site(600, 0.0)
    model = mlp(6, hidden=(16,))
    local = LocalTraining(steps=10, sampling_rate=0.2, learning_rate=0.02)
    clients = [Client(x, y) for x, y in parts]
    for loc in (local, dataclasses.replace(local, dp=RecordDP(1.0, 0.8))):
        params = federated_training(
            model.loss, model.params, clients, rounds=8, local=loc, key=jax.random.key(1)
        )
        accuracy = np.mean((model.probabilities(params, test_x) >= 0.5) == test_y)
        assert accuracy > 0.8, loc.dp


@pytest.mark.extended  # ~100 s on 2 shared cores (compiling the LSTM's per-example gradients)
def test_lstm_surrogate_learns_federated_with_fedadam():
    rng = np.random.default_rng(0)

    def site(n, shift):
        x = rng.normal(size=(n, 6)).astype(np.float32) + shift
        y = ((x[:, 0] - shift) + 0.5 * x[:, 1] > 0.3 * shift).astype(np.float32)
        return x, y

    parts = [site(n, s) for n, s in ((150, 0.0), (90, 0.5), (120, -0.5))]
    test_x, test_y = site(600, 0.0)
    local = LocalTraining(steps=10, sampling_rate=0.2, learning_rate=0.02)
    # The static part and a sequence whose last step carries the signal.
    seq_model = lstm(2, 3, hidden=8, static_hidden=8)
    seq_clients = []
    for x, y in parts:
        seq = np.zeros((len(y), 4, 3), np.float32)
        seq[:, -1, 0] = x[:, 0]
        seq[:, -1, 1] = x[:, 1]
        seq_clients.append(Client((x[:, 2:4], seq), y))
    params = federated_training(
        seq_model.loss, seq_model.params, seq_clients, rounds=8, local=local,
        server=Server("fedadam", eta=0.02), key=jax.random.key(1),
    )  # fmt: skip
    tseq = np.zeros((len(test_y), 4, 3), np.float32)
    tseq[:, -1, 0] = test_x[:, 0]
    tseq[:, -1, 1] = test_x[:, 1]
    probs = seq_model.probabilities(params, (test_x[:, 2:4], tseq))
    assert np.mean((probs >= 0.5) == test_y) > 0.75


@pytest.mark.extended  # compiling the Transformer's local update over three hospitals;
# its deployed ground (worker = local_update) is in test_federated_surrogates_deploy
def test_transformer_surrogate_learns_federated():
    rng = np.random.default_rng(1)

    def site(n, shift):
        x = rng.normal(size=(n, 6)).astype(np.float32) + shift
        y = ((x[:, 0] - shift) + 0.5 * x[:, 1] > 0.3 * shift).astype(np.float32)
        seq = np.zeros((n, 4, 3), np.float32)
        seq[:, -1, 0], seq[:, -1, 1] = x[:, 0], x[:, 1]  # the signal in the last step
        return (x[:, 2:4], seq), y

    parts = [site(n, s) for n, s in ((150, 0.0), (90, 0.5), (120, -0.5))]
    (test_static, test_seq), test_y = site(600, 0.0)
    model = transformer_model(2, 3, 4, d_model=8, heads=2, mlp=16)
    local = LocalTraining(steps=10, sampling_rate=0.2, learning_rate=0.02)
    params = federated_training(
        model.loss, model.params, [Client(x, y) for x, y in parts], rounds=8, local=local,
        key=jax.random.key(1),
    )  # fmt: skip
    before = model.probabilities(model.params, (test_static, test_seq))
    probs = model.probabilities(params, (test_static, test_seq))
    assert np.mean((probs >= 0.5) == test_y) > 0.75
    assert np.mean((before >= 0.5) == test_y) < 0.7  # it learned: the start was no better
    with pytest.raises(ValueError, match="multiple of heads"):
        transformer_model(2, 3, 4, d_model=6, heads=4)


def test_model_arrays_round_trip_and_reject_wrong_shapes():
    model = mlp(5, hidden=(4,))
    arrays = model.arrays(model.params)
    back = model.from_arrays(arrays)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(model.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert model.nbytes == sum(a.nbytes for a in arrays) == 4 * model.size
    with pytest.raises(ValueError, match="shape"):
        model.from_arrays([np.zeros((1, 1)), *arrays[1:]])
    with pytest.raises(ValueError, match="expected"):
        model.from_arrays(arrays[:-1])
