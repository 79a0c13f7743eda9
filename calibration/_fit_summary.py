"""Fit results as users of NONMEM and nlmixr2 read them: `fit_summary` (OFV in NONMEM's
convention beside -2LL, AIC, BIC, the condition number and correlation matrix of the
estimates, shrinkage, convergence) and `nonmem_tables` (sdtab- and patab-like tables) with
`write_tables` (CSV or Parquet).

Conventions:

- `-2LL` is minus twice the (Laplace or FOCE-I) log-likelihood with every constant;
  NONMEM's OFV leaves out `n log(2 pi)` for the `n` uncensored observations (`INCLUDE
  LNTWOPI: NO`, NONMEM Users Guide VIII; Beal, Sheiner, Boeckmann & Bauer 1989-2011).
- AIC = -2LL + 2k and BIC = -2LL + k log(n) (Akaike 1974, IEEE Trans Automat Contr
  19:716-723; Schwarz 1978, Ann Stat 6:461-464), with `k` the estimated population
  parameters and `n` the observations, as nlmixr2 and Monolix report them (on -2LL with its
  constants: the difference between two models is the same on either OFV).
- The condition number is the ratio of the largest to the smallest eigenvalue of the
  correlation matrix of the estimates, as NONMEM prints it (`PRINT=E`); above about 1000
  the model is usually taken as ill-conditioned (over-parameterised).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np
import pandas as pd

from ._data import Dataset
from ._diagnostics import residuals
from ._laplace import PopulationFit


@dataclasses.dataclass(frozen=True)
class FitSummary:
    """The summary of a population fit (`fit_summary`); `print(summary)` writes it.

    - `method`, `converged`, `n_steps`; `n_subjects`, `n_observations` (uncensored),
      `n_censored`, `n_parameters` (estimated population parameters, `k`);
    - `minus2ll` (-2LL with its constants), `ofv` (NONMEM's: `-2LL - n log(2 pi)`), `aic`,
      `bic`;
    - `condition_number` and `correlation` (DataFrame) of the estimates, `None` without
      their covariance (`fit_population(standard_errors=False)`), `eigenvalues`;
    - `table`: the estimates (estimate, SE, RSE%, 95% CI, CV%, shrinkage%);
    - `rejected_subjects`: subjects whose terms were not finite at some evaluation.
    """

    method: str
    converged: bool
    n_steps: int
    n_subjects: int
    n_observations: int
    n_censored: int
    n_parameters: int
    minus2ll: float
    ofv: float
    aic: float
    bic: float
    condition_number: float | None
    eigenvalues: np.ndarray | None
    correlation: pd.DataFrame | None
    table: pd.DataFrame
    rejected_subjects: dict[str, str]

    def __str__(self) -> str:
        lines = [
            f"Population fit ({self.method.upper()}): "
            + ("converged" if self.converged else "NOT CONVERGED")
            + f" in {self.n_steps} steps",
            f"  subjects {self.n_subjects}, observations {self.n_observations}"
            + (f" (+{self.n_censored} censored)" if self.n_censored else "")
            + f", estimated parameters {self.n_parameters}",
            f"  OFV (NONMEM, without n log 2pi) {self.ofv:.4f}   -2LL {self.minus2ll:.4f}",
            f"  AIC {self.aic:.4f}   BIC {self.bic:.4f}",
        ]
        if self.condition_number is None:
            lines.append(
                "  condition number: no covariance of the estimates (standard_errors=False)"
            )
        else:
            flag = "  (ill-conditioned: > 1000)" if self.condition_number > 1000 else ""
            lines.append(f"  condition number {self.condition_number:.4g}{flag}")
        if self.rejected_subjects:
            lines.append(f"  rejected subjects: {dict(self.rejected_subjects)}")
        lines.append("")
        with pd.option_context(
            "display.max_rows", None, "display.max_columns", None, "display.width", 200
        ):
            lines.append(self.table.to_string(index=False, float_format=lambda x: f"{x:.5g}"))
            if self.correlation is not None:
                lines += ["", "Correlation of the estimates:"]
                lines.append(self.correlation.to_string(float_format=lambda x: f"{x:.3f}"))
        return "\n".join(lines)


def fit_summary(fit: PopulationFit, data: Dataset) -> FitSummary:
    """Summarise `fit` of `data` (see the module docstring for the conventions).

    **Raises:** `ValueError` when `data` is not the fitted data's shape (its subjects differ
    from the fit's)."""
    ids = np.asarray(fit.individual.ids)
    if data.ids is not None and (
        len(ids) != data.n_subjects or list(map(str, ids)) != list(map(str, data.ids))
    ):
        raise ValueError(
            f"fit_summary: the fit has {len(ids)} subjects and data {data.n_subjects}, or their "
            "IDs differ; give the data that was fitted."
        )
    observed = np.asarray(data.observed, dtype=bool)
    censored = observed & np.asarray(data.blq, dtype=bool)
    n_obs = int(observed.sum() - censored.sum())
    flat = np.concatenate([np.ravel(np.asarray(x)) for x in _leaves(fit.phi)])
    k = int(flat.size)
    m2ll = float(fit.ofv)
    names = _parameter_names(fit)
    corr = eig = cond = None
    if fit.cov_phi is not None:
        cov = np.asarray(fit.cov_phi, dtype=float)
        sd = np.sqrt(np.diag(cov))
        if np.all(np.isfinite(sd)) and np.all(sd > 0):
            c = cov / np.outer(sd, sd)
            eig = np.linalg.eigvalsh((c + c.T) / 2.0)
            cond = float(eig.max() / eig.min()) if eig.min() > 0 else math.inf
            labels = names if len(names) == k else [f"p{i}" for i in range(k)]
            corr = pd.DataFrame(c, index=labels, columns=labels)
    return FitSummary(
        method=fit.method,
        converged=bool(fit.converged),
        n_steps=int(fit.n_steps),
        n_subjects=len(ids),
        n_observations=n_obs,
        n_censored=int(censored.sum()),
        n_parameters=k,
        minus2ll=m2ll,
        ofv=m2ll - n_obs * math.log(2.0 * math.pi),
        aic=m2ll + 2.0 * k,
        bic=m2ll + k * math.log(max(n_obs, 1)),
        condition_number=cond,
        eigenvalues=eig,
        correlation=corr,
        table=fit.table.copy(),
        rejected_subjects=dict(fit.diagnostics.get("rejected_subjects", {}) or {}),
    )


def nonmem_tables(
    fit: PopulationFit, data: Dataset, *, key: Any, n_sim: int = 1000
) -> dict[str, pd.DataFrame]:
    """Tables as NONMEM's `$TABLE` writes them: `sdtab` (one row per observation: `ID, TIME,
    DV, PRED, IPRED, RES, IRES, IWRES, CWRES, NPDE, BLQ` and each subject's `ETA1, ETA2, ...`)
    and `patab` (one row per subject: `ID`, the individual parameters and the ETAs, named
    as in NONMEM and by the model's eta names). PRED, IPRED, CWRES and NPDE are those of
    `calibration.residuals` (NPDE from `n_sim` simulations with `key`)."""
    pm = fit.model
    res = residuals(pm, fit, data, key=key, n_sim=n_sim, individual=fit.individual)
    ind = fit.individual
    etas = pd.DataFrame({"ID": ind.ids})
    for i in range(len(ind.eta_names)):
        etas[f"ETA{i + 1}"] = ind.eta[:, i]
    sd = res.copy()
    if "RES" not in sd.columns and {"DV", "PRED"} <= set(sd.columns):
        sd["RES"] = sd["DV"] - sd["PRED"]
    if "IRES" not in sd.columns and {"DV", "IPRED"} <= set(sd.columns):
        sd["IRES"] = sd["DV"] - sd["IPRED"]
    sd = sd.merge(etas, on="ID", how="left", validate="many_to_one")
    first = ["ID", "TIME", "DV", "PRED", "IPRED", "RES", "IRES", "IWRES", "CWRES", "NPDE", "BLQ"]
    sd = sd[[c for c in first if c in sd.columns] + [c for c in sd.columns if c not in first]]
    pa = pd.DataFrame({"ID": ind.ids})
    for name, values in ind.params.items():
        pa[name] = np.asarray(values)
    for i, name in enumerate(ind.eta_names):
        pa[f"ETA{i + 1}"] = ind.eta[:, i]
        pa[f"ETA_{name}"] = ind.eta[:, i]
    return {"sdtab": sd, "patab": pa}


def write_tables(
    tables: dict[str, pd.DataFrame], folder: str | os.PathLike, *, format: str = "csv"
) -> list[str]:
    """Write `nonmem_tables(...)` to `folder` as `<name>.csv` or `<name>.parquet`; returns
    the paths written."""
    if format not in ("csv", "parquet"):
        raise ValueError(f"write_tables: format must be 'csv' or 'parquet', got {format!r}.")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, frame in tables.items():
        path = os.path.join(os.fspath(folder), f"{name}.{format}")
        if format == "csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
        paths.append(path)
    return paths


def _leaves(tree: Any) -> list[Any]:
    if isinstance(tree, dict):
        return [x for k in tree for x in _leaves(tree[k])]
    return [tree]


def _parameter_names(fit: PopulationFit) -> list[str]:
    """Labels of the flattened unconstrained parameters, in `ravel_pytree`'s order (sorted
    dict keys at every level)."""
    pm = fit.model
    out: list[str] = []

    def walk(tree: Any, path: list[str]) -> None:
        if isinstance(tree, dict):
            for key in sorted(tree):
                walk(tree[key], [*path, str(key)])
            return
        size = int(np.size(np.asarray(tree)))
        group = path[0] if path else ""
        leaf = path[-1] if path else ""
        if group == "omega" and leaf == "log_sd":
            out.extend(f"omega[{n}]" for n in pm.eta_names[:size])
        elif group == "iov" and leaf == "log_sd":
            out.extend(f"iov[{n}]" for n in pm.iov_names[:size])
        elif group == "omega" and leaf == "corr":
            pairs = [(i, j) for i in range(pm.n_eta) for j in range(i)]
            out.extend(f"corr[{pm.eta_names[i]}~{pm.eta_names[j]}]" for i, j in pairs[:size])
        elif size == 1:
            out.append(f"{group}[{leaf}]" if group != leaf else leaf)
        else:
            out.extend(f"{group}[{leaf}][{i}]" for i in range(size))

    walk(fit.phi, [])
    return out
