"""A population on a drug in one call: `simulate_population` (mrgsolve's `mrgsim(mod,
idata, events)`, Pumas' `simobs(model, pop, params)`).

A drug (or a `calibration.PopulationModel`) x subjects (a `twins.Population`, a DataFrame of
model covariates, or NONMEM records) x a regimen x observation times, with between-subject
(eta ~ N(0, Omega)), inter-occasion (kappa ~ N(0, omega_IOV^2) per occasion; Karlsson &
Sheiner 1993, J Pharmacokinet Biopharm 21:735-750) and residual variability each switched
on or off, simulated in one vmapped, compiled call. The result is tidy (one row per
replicate, subject and time) with a summary (median and a central band by time) and exact
exposure metrics over an interval (`pkpd.interval_exposure`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import calibration
import pkpd

from ._population import Population
from .drugs import Drug


@dataclasses.dataclass(frozen=True)
class PopulationSimulation:
    """What `simulate_population` gave.

    - `data`: tidy DataFrame, one row per replicate, subject and time: `REP`, `ID`, `TIME`,
      `OCC` (0-based occasion), `IPRED` (the individual prediction), `DV` (with residual
      error when it is on, else `IPRED`), then the subject's parameters (on the occasion of
      the row) and its model covariates.
    - `ids`, `times` (`(subjects, obs)`), `ipred`, `dv` (`(n_rep, subjects, obs)`), `eta`
      (`(n_rep, subjects, n_eta)`), `kappa` (`(n_rep, subjects, occasions, n_iov)` or None),
      `covariates` (name -> `(subjects,)`), `variability` (the sources switched on).
    """

    data: pd.DataFrame
    ids: np.ndarray
    times: np.ndarray
    ipred: np.ndarray
    dv: np.ndarray
    eta: np.ndarray
    kappa: np.ndarray | None
    covariates: dict[str, np.ndarray]
    variability: tuple[str, ...]
    model: calibration.PopulationModel = dataclasses.field(repr=False)
    population: dict[str, Any] = dataclasses.field(repr=False)
    regimen: pkpd.Regimen = dataclasses.field(repr=False)
    occasion_start: np.ndarray = dataclasses.field(repr=False)

    @property
    def n_rep(self) -> int:
        return int(self.ipred.shape[0])

    def summary(self, level: float = 0.9, column: str = "DV") -> pd.DataFrame:
        """By time (over replicates and subjects): `N`, the median and the central
        `level` band (`LOWER`, `UPPER`: the (1 - level)/2 and (1 + level)/2 quantiles) of
        `column` (`"DV"` or `"IPRED"`). Subjects are on one time grid only when they share
        it; otherwise rows are by each distinct time."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"summary: level must be in (0, 1), got {level!r}.")
        if column not in ("DV", "IPRED"):
            raise ValueError(f"summary: column must be 'DV' or 'IPRED', got {column!r}.")
        q = (1.0 - level) / 2.0
        grouped = self.data.groupby("TIME")[column]
        return pd.DataFrame(
            {
                "N": grouped.size(),
                "MEDIAN": grouped.median(),
                "LOWER": grouped.quantile(q),
                "UPPER": grouped.quantile(1.0 - q),
            }
        ).reset_index()

    def exposure(self, start: float, end: float, *, level: float = 0.9) -> pd.DataFrame:
        """Exact exposure of every replicate's subject over `[start, end]` (h): `AUC` (output
        units x h) and `CMAX`, by `pkpd.interval_exposure` on the model's own solution
        (exact AUC for linear models), noise-free. With inter-occasion variability on, the
        interval must lie within one occasion of every subject (its parameters); otherwise a
        `ValueError` names the subject. `.attrs["summary"]` holds the median and band."""
        if not (math.isfinite(start) and math.isfinite(end) and end > start):
            raise ValueError(f"exposure: expected start < end (h), got [{start}, {end}].")
        pm, nat = self.model, self.population
        occ = np.zeros(len(self.ids), dtype=int)
        if self.kappa is not None:
            starts = self.occasion_start
            occ = (starts <= start).sum(axis=1) - 1
            nxt = np.take_along_axis(
                np.concatenate([starts, np.full((len(self.ids), 1), np.inf)], axis=1),
                (occ + 1)[:, None],
                axis=1,
            )[:, 0]
            bad = end > nxt
            if bad.any():
                i = int(np.argmax(bad))
                raise ValueError(
                    f"exposure: subject {self.ids[i]}: [{start}, {end}] spans occasions (one "
                    f"starts at {nxt[i]} h); with inter-occasion variability on, give an "
                    "interval within one occasion."
                )
        cov = {k: jnp.asarray(v) for k, v in self.covariates.items()}
        kappa = None if self.kappa is None else jnp.asarray(self.kappa)
        auc, cmax = _exposure(
            pm, nat, cov, self.regimen, jnp.asarray(self.eta), kappa, jnp.asarray(occ),
            float(start), float(end),
        )  # fmt: skip
        auc, cmax = np.asarray(auc), np.asarray(cmax)
        n_rep, n = auc.shape
        out = pd.DataFrame(
            {
                "REP": np.repeat(np.arange(n_rep), n),
                "ID": np.tile(self.ids, n_rep),
                "AUC": auc.ravel(),
                "CMAX": cmax.ravel(),
            }
        )
        q = (1.0 - level) / 2.0
        out.attrs["summary"] = pd.DataFrame(
            {
                m: {"MEDIAN": np.median(out[m]), "LOWER": out[m].quantile(q),
                    "UPPER": out[m].quantile(1.0 - q)}
                for m in ("AUC", "CMAX")
            }
        ).T  # fmt: skip
        return out


def simulate_population(
    model: Drug | calibration.PopulationModel,
    subjects: Population | pd.DataFrame,
    regimen: pkpd.Regimen | Sequence[pkpd.Regimen] | None = None,
    times: Any = None,
    *,
    key: jax.Array | int,
    population: Any = None,
    bsv: bool = True,
    iov: bool = True,
    ruv: bool = True,
    occasions: Sequence[float] | None = None,
    n_rep: int = 1,
) -> PopulationSimulation:
    """Simulate a population on a drug in one vmapped call.

    **Arguments:**

    - `model`: a `twins.Drug` (its population model, covariate model and published values)
      or a `calibration.PopulationModel`.
    - `subjects`: a `twins.Population` (with a `Drug`: each patient's model covariates by
      `Drug.covariates`); a DataFrame with one row per subject, an `ID` column and the
      model's covariate columns (with a `PopulationModel`, or a `Drug` whose covariates
      are already computed); or NONMEM records (a DataFrame with `EVID`: the doses, times
      and `OCC` of every subject come from the records, read by
      `calibration.Dataset.from_records`, covariates from each subject's first record).
    - `regimen`: the doses, one `pkpd.Regimen` for everyone or one per subject (none with
      records). Build it with `Drug.regimen`, `pkpd.bolus`/`infusion`/`oral`, `+`, or from
      NONMEM records (`pkpd.regimen_from_records`).
    - `times`: observation times (h), the same for every subject (none with records).
    - `key`: a JAX PRNG key or an int (the same key gives the same simulation).
    - `population`: population values: a `calibration.PopulationFit`, natural-scale values
      (`theta`, `omega` matrix, `sigma`), unconstrained values in `pm.initial()` form, or
      None: the drug's published values (`Drug.population()`, correlations included) or the
      model's own.
    - `bsv`, `iov`, `ruv`: draw between-subject, inter-occasion and residual variability
      (off: eta = 0, kappa = 0, DV = IPRED).
    - `occasions`: occasion start times (h; the first at or before the first dose) for a
      model with IOV and a `regimen` (with records: their `OCC`); default one occasion.
    - `n_rep`: replicates (each a new draw of every subject's random effects and errors).

    **Returns:** a `PopulationSimulation` (`.data`, `.summary()`, `.exposure(start, end)`).

    **Raises:** `ValueError` naming the subject or argument at fault;
    `CovariateError` / `MissingCovariateError` naming the patient and covariate.
    """
    if n_rep < 1:
        raise ValueError(f"simulate_population: expected n_rep >= 1, got {n_rep}.")
    pm = model.model if isinstance(model, Drug) else model
    if not isinstance(pm, calibration.PopulationModel):
        raise TypeError(
            "simulate_population: model must be a twins.Drug or a calibration.PopulationModel, "
            f"got {type(model).__name__}."
        )
    if population is None and isinstance(model, Drug):
        population = model.population()
    nat = _natural(pm, population)
    data = _design(model, pm, subjects, regimen, times, occasions)
    switches = (bool(bsv), bool(iov) and bool(pm.iov), bool(ruv))
    if isinstance(key, int) and not isinstance(key, bool):
        key = jax.random.key(key)
    if not (isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)):
        raise TypeError(
            f"simulate_population: key must be a JAX PRNG key (jax.random.key) or an int, "
            f"got {type(key).__name__}."
        )
    keys = jax.random.split(key, (n_rep, data.n_subjects))
    cov = {k: jnp.asarray(v) for k, v in data.covariates.items()}
    obs = {"time": jnp.asarray(data.time), "occasion_start": jnp.asarray(data.occasion_start)}
    obs |= data.record_arrays()  # record order at a dose time (a trough listed before it)
    out = _simulate(pm, nat, keys, cov, data.regimen, obs, switches)
    out = jax.device_get(out)
    ipred, dv = np.asarray(out["ipred"]), np.asarray(out["dv"])
    bad = ~np.isfinite(ipred) & data.observed[None]
    if bad.any():
        r, i, j = (int(x[0]) for x in np.nonzero(bad))
        raise ValueError(
            f"simulate_population: subject {data.ids[i]} (replicate {r}) has a non-finite "
            f"prediction at TIME={data.time[i, j]}; check its parameters "
            f"{ {k: float(np.asarray(v)[r, i].ravel()[0]) for k, v in out['params'].items()} }."
        )
    kappa = None
    if pm.iov:
        shape = (n_rep, data.n_subjects, data.occasion_start.shape[-1], len(pm.iov))
        kappa = np.asarray(out["kappa"]).reshape(shape)
    frame = _tidy(data, ipred, dv, out["params"], pm)
    return PopulationSimulation(
        data=frame,
        ids=np.asarray(data.ids),
        times=np.asarray(data.time),
        ipred=ipred,
        dv=dv,
        eta=np.asarray(out["eta"]),
        kappa=kappa,
        covariates={k: np.asarray(v) for k, v in data.covariates.items()},
        variability=tuple(n for n, on in zip(("bsv", "iov", "ruv"), switches, strict=True) if on),
        model=pm,
        population=nat,
        regimen=data.regimen,
        occasion_start=np.asarray(data.occasion_start),
    )


def drug_covariates(drug: Drug, population: Population) -> dict[str, np.ndarray]:
    """The drug's numeric model covariates of every patient of `population` (`Drug.covariates`
    per patient), as arrays."""
    return model_covariates(drug, population.covariates())


def model_covariates(drug: Drug, cov: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The drug's numeric model covariates for every patient (`Drug.covariates` per row of
    `Population.covariates()`)."""
    n = len(cov["ID"])
    keys = list(cov)
    columns = [cov[k] for k in keys]
    rows = [
        drug.covariates({k: c[i] for k, c in zip(keys, columns, strict=True)}) for i in range(n)
    ]
    names = list(rows[0]) if rows else []
    return {k: np.array([r[k] for r in rows], dtype=float) for k in names}


# --- the design ---------------------------------------------------------------------------

#: NONMEM data items that are not covariates (columns of records).
_DATA_ITEMS = frozenset(
    "ID TIME EVID AMT CMT RATE II ADDL SS DV MDV CENS LIMIT OCC BLQ LLOQ DVID SOURCE".split()
)


def _natural(pm: calibration.PopulationModel, population: Any) -> dict[str, Any]:
    """Natural-scale population values (`theta`, `omega` matrix, `sigma`, `iov`)."""
    if population is None:
        return pm.natural(pm.initial())
    if isinstance(population, calibration.PopulationFit):
        return pm.natural(population.phi)
    if not isinstance(population, Mapping) or "theta" not in population:
        raise TypeError(
            "simulate_population: population must be a calibration.PopulationFit, a dict of "
            f"population values (theta, omega, sigma) or None, got {type(population).__name__}."
        )
    if isinstance(population.get("omega"), Mapping):  # unconstrained, pm.initial() form
        return pm.natural(dict(population))
    omega = np.asarray(population["omega"], dtype=float)
    if omega.shape != (pm.n_eta, pm.n_eta):
        raise ValueError(
            f"simulate_population: population['omega'] must be the {pm.n_eta}x{pm.n_eta} "
            f"Omega matrix of {list(pm.eta_names)}, got shape {omega.shape}."
        )
    nat = {
        "theta": dict(population["theta"]),
        "omega": jnp.asarray(omega),
        "sigma": dict(population.get("sigma", {})),
    }
    if pm.iov:
        if "iov" not in population:
            raise ValueError("simulate_population: the model has IOV; population needs 'iov'.")
        nat["iov"] = jnp.asarray(population["iov"], dtype=float)
    return nat


def _design(model, pm, subjects, regimen, times, occasions) -> calibration.Dataset:
    if isinstance(subjects, pd.DataFrame) and "EVID" in subjects.columns:
        if regimen is not None or times is not None or occasions is not None:
            raise ValueError(
                "simulate_population: with NONMEM records, the doses, times and occasions "
                "come from the records; give no regimen, times or occasions."
            )
        names = [c for c in subjects.columns if str(c).upper() not in _DATA_ITEMS]
        return calibration.Dataset.from_records(
            subjects, covariates=names, n_states=pm.model.n_states
        )
    if isinstance(subjects, Population):
        if not isinstance(model, Drug):
            raise TypeError(
                "simulate_population: a twins.Population needs a twins.Drug (its covariate "
                "model); with a PopulationModel give a DataFrame of model covariates."
            )
        ids = np.asarray(subjects.ids, dtype=object)
        cov = drug_covariates(model, subjects)
    elif isinstance(subjects, pd.DataFrame):
        if "ID" not in subjects.columns:
            raise ValueError("simulate_population: the subjects' DataFrame needs an ID column.")
        ids = subjects["ID"].to_numpy(dtype=object)
        if len(set(ids.tolist())) != len(ids):
            raise ValueError("simulate_population: the subjects' IDs must be unique.")
        cov = {}
        for name in [c for c in subjects.columns if c != "ID"]:
            values = pd.to_numeric(subjects[name], errors="coerce").to_numpy(dtype=float)
            bad = ~np.isfinite(values)
            if bad.any():
                i = int(np.argmax(bad))
                raise ValueError(
                    f"simulate_population: subject {ids[i]} (row {i}): covariate {name} = "
                    f"{subjects[name].iloc[i]!r}; expected a finite number."
                )
            cov[name] = values
    else:
        raise TypeError(
            "simulate_population: subjects must be a twins.Population or a DataFrame, got "
            f"{type(subjects).__name__}."
        )
    n = len(ids)
    if n == 0:
        raise ValueError("simulate_population: no subjects.")
    if regimen is None or times is None:
        raise ValueError("simulate_population: give a regimen and observation times.")
    regs = [regimen] * n if isinstance(regimen, pkpd.Regimen) else list(regimen)
    if len(regs) != n or not all(isinstance(r, pkpd.Regimen) for r in regs):
        raise ValueError(
            f"simulate_population: expected one pkpd.Regimen, or one per subject ({n}), got "
            f"{len(regs)}."
        )
    t = np.atleast_1d(np.asarray(times, dtype=float))
    if t.ndim != 1 or t.size == 0 or not np.isfinite(t).all() or (t < 0).any():
        raise ValueError("simulate_population: times must be finite times >= 0 (h).")
    t = np.sort(t)
    starts = np.asarray([0.0] if occasions is None else occasions, dtype=float)
    if starts.ndim != 1 or starts.size == 0 or (np.diff(starts) <= 0).any():
        raise ValueError("simulate_population: occasions must be increasing start times (h).")
    if occasions is not None and not pm.iov:
        raise ValueError("simulate_population: occasions given, but the model has no IOV.")
    first = min(float(np.min(np.asarray(r.time)[np.asarray(r.mask)])) for r in regs)
    if starts[0] > min(first, t[0]):
        raise ValueError(
            f"simulate_population: the first occasion starts at {starts[0]} h, after the first "
            f"dose or observation ({min(first, t[0])} h)."
        )
    occ = np.searchsorted(starts, t, side="right") - 1
    m = t.size
    return calibration.Dataset(
        ids=ids,
        regimen=pkpd.stack(regs),
        time=np.tile(t, (n, 1)),
        dv=np.zeros((n, m)),
        observed=np.ones((n, m), dtype=bool),
        blq=np.zeros((n, m), dtype=bool),
        lloq=np.full((n, m), -np.inf),
        occasion=np.tile(occ.astype(np.int32), (n, 1)),
        covariates=cov,
        records=None,
        occasion_start=np.tile(starts, (n, 1)),
    )


# --- the compiled simulation --------------------------------------------------------------


@eqx.filter_jit
def _simulate(pm, nat, keys, cov, reg, obs, switches):
    bsv, iov, ruv = switches
    chol = jnp.linalg.cholesky(nat["omega"]) if pm.n_eta else jnp.zeros((0, 0))
    n_occ = obs["occasion_start"].shape[-1]
    iov_sd = jnp.tile(jnp.sqrt(nat["iov"]), n_occ) if pm.iov else jnp.zeros(0)

    def one(key, c, r, t):
        k_eta, k_eps, k_kap = jax.random.split(key, 3)
        eta = chol @ jax.random.normal(k_eta, (pm.n_eta,)) if bsv else jnp.zeros(pm.n_eta)
        kappa = iov_sd * jax.random.normal(k_kap, iov_sd.shape) if iov else 0.0 * iov_sd
        f = pm.predict_random(nat["theta"], c, r, t, jnp.concatenate([eta, kappa]))
        if ruv:
            y = pm.observe(nat["sigma"], f, jax.random.normal(k_eps, f.shape), t)
        else:
            y = f
        if pm.iov:
            kap = kappa.reshape(n_occ, len(pm.iov))
            params = jax.vmap(lambda k: pm.individual_params(nat["theta"], c, eta, k))(kap)
        else:
            params = pm.individual_params(nat["theta"], c, eta)
        return {"ipred": f, "dv": y, "eta": eta, "kappa": kappa, "params": params}

    subjects = jax.vmap(one, in_axes=(0, 0, 0, 0))
    return jax.vmap(subjects, in_axes=(0, None, None, None))(keys, cov, reg, obs)


@eqx.filter_jit
def _exposure(pm, nat, cov, reg, eta, kappa, occ, start, end):
    solver = pkpd.ODESolver()

    def one(c, r, e, k, o):
        kap = None if k is None else k.reshape(-1, len(pm.iov))[o]
        params = pm.individual_params(nat["theta"], c, e, kap)
        return pkpd.interval_exposure(
            pm.model, params, r, start, end, solver=solver, output=pm.output, checks=False
        )

    k_axis = None if kappa is None else 0
    subjects = jax.vmap(one, in_axes=(0, 0, 0, k_axis, 0))
    return jax.vmap(subjects, in_axes=(None, None, 0, k_axis, None))(cov, reg, eta, kappa, occ)


def _tidy(data: calibration.Dataset, ipred, dv, params, pm) -> pd.DataFrame:
    n_rep, n, m = ipred.shape
    keep = np.broadcast_to(data.observed[None], ipred.shape).ravel()
    cols: dict[str, Any] = {
        "REP": np.repeat(np.arange(n_rep), n * m),
        "ID": np.tile(np.repeat(np.asarray(data.ids, dtype=object), m), n_rep),
        "TIME": np.tile(np.asarray(data.time).ravel(), n_rep),
        "OCC": np.tile(np.asarray(data.occasion).ravel(), n_rep),
        "IPRED": ipred.ravel(),
        "DV": dv.ravel(),
    }
    occ = np.asarray(data.occasion)
    for name, v in params.items():
        v = np.asarray(v)
        if pm.iov:  # (n_rep, n, n_occ): the parameter on the row's occasion
            v = np.take_along_axis(v, np.broadcast_to(occ[None], (n_rep, n, m)), axis=2)
        else:
            v = np.broadcast_to(v[:, :, None], (n_rep, n, m))
        cols[name] = v.ravel()
    for name, v in data.covariates.items():
        cols[name] = np.tile(np.repeat(np.asarray(v), m), n_rep)
    frame = pd.DataFrame(cols)
    return frame.loc[keep].reset_index(drop=True)
