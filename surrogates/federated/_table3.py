"""The papers' Table 3 on the project's drug-response task: centralised training against 5, 10
and 20 hospitals, without DP and at epsilon = 0.5 for each unit of privacy, and accuracy
against epsilon.

The papers report (Table 3): centralised 95.1% accuracy, F1 0.927; federated at epsilon =
0.5 and 100 rounds with 5, 10 and 20 nodes 93.4%/0.914, 94.7%/0.941, 95.0%/0.925. Their
unit of privacy, their delta and their accountant are not stated. Here:

- the task: "INR in 2-3 on day 29" on each hospital's own warfarin regimen (`_sites`), the
  same `n_total` virtual patients split between 5, 10 or 20 non-IID hospitals, 20% of each
  held out; every row is scored on the union of the held-out parts (threshold 0.5);
- the model: the MLP surrogate's network on the flat features (`_surrogate_models.mlp`),
  trained by `federated_training` (every hospital every round);
- centralised: the same network and optimiser on the union of the training parts, for the
  same rounds x local steps at the same Poisson rate (so a batch is K times a hospital's);
- record level (DP-SGD in each hospital): a patient's epsilon at `delta` after
  rounds x local steps Poisson-subsampled Gaussian steps at rate q; the noise multiplier is
  calibrated by dp-accounting's PLD accountant to `epsilon` (the same for every hospital,
  since q is); centralised DP-SGD at the same q and steps has the same epsilon;
- client level (hospital clips its update, the server adds noise to the equal-weight mean):
  a hospital's epsilon at `delta` after `rounds` Gaussian releases; the multiplier is
  calibrated by the same accountant.

`surrogate_table` returns one row per setting with accuracy, F1, ROC-AUC, rounds, the noise
multiplier, the epsilon the accountant gives (PLD and RDP) and the bytes the hospitals sent
and received (float32 parameters, the payload only: Flower's framing adds a little,
`_surrogate_apps` measures it). With `xgboost_rounds` it adds XGBoost's rows
(`_xgb.xgb_rows`: centralised XGBoost on the pooled training parts, and Flower's
FedXgbBagging and FedXgbCyclic over the hospitals, without DP: bagging XGBoost has none
here). `accuracy_vs_epsilon` sweeps epsilon for both units.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jax
import numpy as np
import pandas as pd

from ._dp import (
    DELTA,
    ClientDP,
    RecordDP,
    client_epsilon,
    client_noise_multiplier,
    record_epsilon,
    record_noise_multiplier,
)
from ._fedavg import Client, LocalTraining, Server, federated_training
from ._sites import (
    Hospital,
    Schema,
    Site,
    hospitals,
    reference_schema,
    simulate_site,
    site_divergence,
)
from ._surrogate_apps import HospitalRecords
from ._surrogate_models import Model, lstm, mlp, scores, transformer
from ._xgb import Boosting, xgb_rows

Unit = Literal["none", "record", "client"]

#: The papers' Table 3 (accuracy %, F1), for the report beside ours.
PAPER_TABLE3: dict[str, tuple[float, float]] = {
    "centralised": (95.1, 0.927),
    "federated, 5 nodes, epsilon 0.5": (93.4, 0.914),
    "federated, 10 nodes, epsilon 0.5": (94.7, 0.941),
    "federated, 20 nodes, epsilon 0.5": (95.0, 0.925),
}


_LOCAL = LocalTraining(steps=10, sampling_rate=0.1, learning_rate=0.01)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The fixed training settings of every row (chosen once, not tuned per row or per
    epsilon; the held-out patients never choose anything).

    - `local`: each hospital's steps per round (10), Poisson rate q (0.1), Adam's step size
      (0.01).
    - `record_clip`: DP-SGD's per-example clipping norm (1.0).
    - `client_clip`: the clipping norm of a hospital's update under client-level DP (0.5;
      the updates of a non-DP round have norms of about 0.3-1.5 here).
    - `delta`: the delta of every epsilon (1e-5).
    - `hidden`: the MLP's layers; `model`: "mlp", "lstm" or "transformer" (the sequence
      models with their `_surrogate_models` defaults).
    """

    local: LocalTraining = _LOCAL
    record_clip: float = 1.0
    client_clip: float = 0.5
    delta: float = DELTA
    hidden: tuple[int, ...] = (32, 32)
    model: Literal["mlp", "lstm", "transformer"] = "mlp"


@dataclasses.dataclass(frozen=True)
class FederatedTask:
    """`k` hospitals' simulated patients, split into training and held-out parts, with the
    public feature schema and the measure of how different the sites are."""

    hospitals: tuple[Hospital, ...]
    train: tuple[Site, ...]
    test: tuple[Site, ...]
    schema: Schema
    divergence: pd.DataFrame

    def inputs(self, site: Site, kind: str) -> Any:
        if kind == "mlp":
            return self.schema.tabular(site)
        return self.schema.static_sequence(site)

    def clients(self, kind: str = "mlp") -> list[Client]:
        return [Client(self.inputs(s, kind), s.y.astype(np.float32)) for s in self.train]

    def records(
        self, kind: str = "mlp", configs: Mapping[str, Mapping[str, Any]] | None = None
    ) -> list[HospitalRecords]:
        """The hospitals' training parts for the ClientApps, with their patients' IDs and,
        from `configs` (hospital name -> node config: `consent-path`, `audit-log`,
        `audit-key`, `pseudonym-key`), their consent decisions: patients who did not
        consent to federated use never enter a local round (`consented_rows`)."""
        configs = configs or {}
        return [
            HospitalRecords(
                s.hospital.name,
                c,
                tuple(str(p) for p in s.patients),
                dict(configs.get(s.hospital.name, {})),
            )
            for s, c in zip(self.train, self.clients(kind), strict=True)
        ]

    def pooled(self, kind: str = "mlp", part: str = "train") -> Client:
        """The union of the hospitals' training (or held-out) parts as one client."""
        sites = self.train if part == "train" else self.test
        xs = [self.inputs(s, kind) for s in sites]
        x = jax.tree.map(lambda *a: np.concatenate(a), *xs)
        return Client(x, np.concatenate([s.y for s in sites]).astype(np.float32))


@functools.lru_cache(maxsize=8)
def federation(
    k: int, n_total: int = 4000, *, seed: int = 0, test_fraction: float = 0.2
) -> FederatedTask:
    """`k` hospitals (`_sites.hospitals`) with `n_total` patients between them, simulated, and
    20% of each held out."""
    specs = hospitals(k, n_total, seed=seed)
    sites = [simulate_site(h, seed=seed, index=i) for i, h in enumerate(specs)]
    pairs = [s.split(test_fraction, seed=seed + i) for i, s in enumerate(sites)]
    return FederatedTask(
        tuple(specs),
        tuple(p[0] for p in pairs),
        tuple(p[1] for p in pairs),
        reference_schema(seed=seed),
        site_divergence(sites, seed=seed),
    )


def _model(fed: FederatedTask, settings: Settings, seed: int) -> Model:
    if settings.model == "mlp":
        return mlp(len(fed.schema.columns), hidden=settings.hidden, seed=seed)
    static, seq = fed.schema.static_sequence(fed.train[0])
    if settings.model == "transformer":
        return transformer(static.shape[1], seq.shape[2], seq.shape[1], seed=seed)
    return lstm(static.shape[1], seq.shape[2], seed=seed)


def run(
    fed: FederatedTask,
    *,
    unit: Unit = "none",
    epsilon: float | None = None,
    rounds: int = 100,
    centralised: bool = False,
    strategy: str = "fedavg",
    settings: Settings = Settings(),
    seed: int = 0,
) -> dict[str, Any]:
    """One row: train (centralised, or federated over `fed`'s hospitals) with the privacy
    `unit` at `epsilon` (at `settings.delta`), score it on the held-out union."""
    if unit != "none" and not (epsilon and epsilon > 0):
        raise ValueError(f"run: unit {unit!r} needs a positive epsilon.")
    if centralised and unit == "client":
        raise ValueError("run: client-level DP needs hospitals (centralised has one).")
    kind = settings.model
    model = _model(fed, settings, seed)
    local = settings.local
    k = 1 if centralised else len(fed.train)
    clients = [fed.pooled(kind)] if centralised else fed.clients(kind)
    q = local.rate(len(clients[0]))
    steps = rounds * local.steps
    sigma = math.nan
    eps_pld = eps_rdp = math.inf
    server = Server(strategy)  # type: ignore[arg-type]
    if unit == "record":
        assert epsilon is not None
        sigma = record_noise_multiplier(q, steps, epsilon, settings.delta)
        local = dataclasses.replace(local, dp=RecordDP(settings.record_clip, sigma))
        eps_pld = record_epsilon(q, sigma, steps, settings.delta)
        eps_rdp = record_epsilon(q, sigma, steps, settings.delta, accountant="rdp")
    elif unit == "client":
        assert epsilon is not None
        sigma = client_noise_multiplier(rounds, epsilon, settings.delta)
        server = Server(strategy, client_dp=ClientDP(settings.client_clip, sigma))  # type: ignore[arg-type]
        eps_pld = client_epsilon(sigma, rounds, settings.delta)
        eps_rdp = client_epsilon(sigma, rounds, settings.delta, accountant="rdp")
    if strategy == "fedprox" and local.proximal_mu <= 0:
        local = dataclasses.replace(local, proximal_mu=0.01)
    t0 = time.perf_counter()
    params = federated_training(
        model.loss,
        model.params,
        clients,
        rounds=rounds,
        local=local,
        server=server,
        key=jax.random.key(seed),
    )
    train_s = time.perf_counter() - t0
    test = fed.pooled(kind, "test")
    row: dict[str, Any] = {
        "setting": "centralised" if centralised else f"federated, {k} hospitals",
        "hospitals": k,
        "model": f"{kind} ({strategy})" if not centralised else kind,
        "unit": unit,
        "epsilon_target": epsilon if unit != "none" else math.inf,
        "delta": settings.delta if unit != "none" else math.nan,
        "noise_multiplier": sigma,
        "epsilon_pld": eps_pld,
        "epsilon_rdp": eps_rdp,
        "noise_sd_on_mean": (sigma * settings.client_clip / k if unit == "client" else math.nan),
        **scores(test.y, model.probabilities(params, test.x)),
        "rounds": rounds,
        "local_steps": local.steps,
        "sampling_rate": q,
        "bytes_up": 0 if centralised else rounds * k * model.nbytes,
        "bytes_down": 0 if centralised else rounds * k * model.nbytes,
        "n_train": sum(len(c) for c in clients),
        "n_test": len(test),
        "train_s": train_s,
    }
    return row


def surrogate_table(
    hospitals: int | Sequence[int] = (5, 10, 20),
    *,
    n_total: int = 4000,
    rounds: int = 100,
    epsilon: float = 0.5,
    strategy: str = "fedavg",
    settings: Settings = Settings(),
    seed: int = 0,
    xgboost_rounds: int | None = None,
    boosting: Boosting | None = None,
) -> pd.DataFrame:
    """Table 3 on the drug-response task: for each federation size, centralised and
    federated without DP, with record-level DP and with client-level DP at `epsilon`;
    with `xgboost_rounds`, also centralised XGBoost and Flower's FedXgbBagging and
    FedXgbCyclic for that many rounds (`_xgb.xgb_rows`, `boosting` its settings; no DP).

    The centralised rows are trained on the same patients as each federation's (the
    split into training and held-out parts depends on the federation: every size has its
    own centralised rows). Small version: `surrogate_table(5, rounds=3, n_total=600)`."""
    sizes = [hospitals] if isinstance(hospitals, int) else list(hospitals)
    rows = []
    for k in sizes:
        fed = federation(k, n_total, seed=seed)
        for centralised, units in (
            (True, ("none", "record")),
            (False, ("none", "record", "client")),
        ):
            for unit in units:
                row = run(
                    fed,
                    unit=unit,  # type: ignore[arg-type]
                    epsilon=None if unit == "none" else epsilon,
                    rounds=rounds,
                    centralised=centralised,
                    strategy=strategy,
                    settings=settings,
                    seed=seed,
                )
                rows.append(row)
        if xgboost_rounds:
            rows += xgb_rows(fed, rounds=xgboost_rounds, boosting=boosting or Boosting(),
                             seed=seed)  # fmt: skip
        for row in rows:
            row.setdefault("federation", k)
            row.setdefault("label_js", float(fed.divergence.loc["federation", "label_js"]))
            row.setdefault("covariate_js", float(fed.divergence.loc["federation", "covariate_js"]))
    return pd.DataFrame(rows)


def accuracy_vs_epsilon(
    hospitals: int = 10,
    epsilons: Sequence[float] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0),
    *,
    n_total: int = 4000,
    rounds: int = 100,
    settings: Settings = Settings(),
    seed: int = 0,
) -> pd.DataFrame:
    """Accuracy, F1 and ROC-AUC against epsilon for both units (record and client level),
    `hospitals` hospitals, plus the row without DP."""
    fed = federation(hospitals, n_total, seed=seed)
    rows = [run(fed, rounds=rounds, settings=settings, seed=seed)]
    for unit in ("record", "client"):
        for eps in epsilons:
            rows.append(
                run(fed, unit=unit, epsilon=eps, rounds=rounds, settings=settings, seed=seed)  # type: ignore[arg-type]
            )
    return pd.DataFrame(rows)
