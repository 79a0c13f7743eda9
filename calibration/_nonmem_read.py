"""`read_nonmem`: a NONMEM control stream as a `pkpd` model and a `PopulationModel`.

pharmpy parses the control stream (records, abbreviated code as sympy expressions, the
compartmental system of `$SUBROUTINES ADVAN`/`TRANS` or `$DES`, `$THETA`/`$OMEGA`/`$SIGMA`,
`$DATA` with `$INPUT`, `DROP`, `IGNORE` and `ACCEPT`, and NONMEM's output files); this module
checks what it cannot translate, turns the expressions into JAX functions
(`calibration._nonmem_translate`, an allow-list of node types, no `eval`), and builds the
model, the data (`Dataset.from_records`, the project's NONMEM records reader) and the
estimates.

pharmpy-core is LGPL-3.0 and an optional extra (`pip install "pkpd-twins[nonmem]"`): it is
imported here, inside `read_nonmem`, never when `calibration` is imported.

References: Beal SL, Sheiner LB, Boeckmann AJ, Bauer RJ (eds). NONMEM 7.5 Users Guides. ICON
plc, Gaithersburg, MD, 1989-2020 (Part IV NM-TRAN, Part V PREDPP, Part VII conditional
estimation, Part VIII $ESTIMATION LNTWOPI). Nordgren R, Belin S, Chen X, Ueckert S, Karlsson
MO, Hooker AC et al. Pharmpy (pharmpy-core), Uppsala University, https://pharmpy.github.io
(software; version 2.1.1 used).
"""

# sympy's and pharmpy's objects are dynamically typed (Basic, Optional attributes that the
# parsed model always has): pyright's checks of their use are not informative here.
# pyright: reportArgumentType=false, reportCallIssue=false, reportOptionalMemberAccess=false
# pyright: reportAttributeAccessIssue=false, reportIndexIssue=false, reportOperatorIssue=false
# pyright: reportOptionalCall=false, reportOptionalSubscript=false, reportAssignmentType=false
# pyright: reportGeneralTypeIssues=false

from __future__ import annotations

import dataclasses
import math
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import pkpd

from ._data import Dataset
from ._model import FrozenDict, PopulationModel
from ._nonmem_model import (
    NonmemFOCEI,
    NonmemGeneralError,
    NonmemLaplace,
    NonmemLinearPK,
    NonmemODE,
    NonmemPopulationModel,
    NonmemPred,
    NonmemResidualError,
    NonmemSpec,
    Program,
    block_parameters,
)
from ._nonmem_translate import Expr, NonmemTranslationError, translate

_INSTALL = 'pip install "pkpd-twins[nonmem]"'

#: Records read (the others raise): how each is used.
_RECORDS_READ = {
    "PROBLEM": "the title",
    "INPUT": "data item names, DROP",
    "DATA": "the data file, IGNORE, ACCEPT",
    "SUBROUTINES": "ADVAN, TRANS",
    "MODEL": "compartments of $DES",
    "PK": "individual parameters",
    "DES": "the differential equations",
    "ERROR": "prediction and residual error",
    "PRED": "prediction and residual error",
    "THETA": "initial values, bounds, FIX",
    "OMEGA": "initial values, BLOCK, FIX",
    "SIGMA": "initial values, BLOCK, FIX",
    "ABBREVIATED": "REPLACE (names)",
}
#: Records that do not change the model (listed in the report as not used).
_RECORDS_IGNORED = {
    "ESTIMATION": "the estimation method, kept as NonmemImport.method",
    "COVARIANCE": "the covariance step",
    "TABLE": "output tables",
    "SCATTER": "scatter plots",
    "SIZES": "array sizes",
    "SIMULATION": "simulation (not estimation) settings",
    "ETAS": "initial ETAs",
    "PHIS": "initial ETAs",
    "NONPARAMETRIC": "the nonparametric step",
}
#: Records refused, with why.
_RECORDS_REFUSED = {
    "MIX": "mixture models",
    "PRIOR": "priors ($PRIOR NWPRI/TNPRI)",
    "THETAP": "priors",
    "THETAPV": "priors",
    "OMEGAP": "priors",
    "OMEGAPD": "priors",
    "SIGMAP": "priors",
    "SIGMAPD": "priors",
    "OLKJDF": "priors",
    "SLKJDF": "priors",
    "TTDF": "priors",
    "INFN": "user code ($INFN)",
    "AES": "differential-algebraic equations ($AES)",
    "AESINITIAL": "differential-algebraic equations ($AESINITIAL)",
    "LEVEL": "nested random-effect levels ($LEVEL)",
    "CONTR": "user contributions to the objective ($CONTR)",
    "MSFI": "a model specification file ($MSFI: its estimates are not in the control stream)",
    "BIND": "$BIND",
    "SUPER": "superproblems",
    "OMIT": "$OMIT",
    "ANNEAL": "$ANNEAL",
    "RCOV": "$RCOV",
    "INCLUDE": "$INCLUDE (include the file's text in the control stream)",
}

#: NONMEM data items with a meaning to the records (others are data items read by name).
_RESERVED = {"ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "RATE", "II", "ADDL", "SS"}
_REFUSED_ITEMS = {
    "DATE": "calendar dates (DATE)",
    "DAT1": "calendar dates (DAT1)",
    "DAT2": "calendar dates (DAT2)",
    "DAT3": "calendar dates (DAT3)",
    "L1": "L1 records",
    "L2": "L2 records (several observations per record)",
    "PCMT": "PCMT",
    "CALL": "CALL",
    "CONT": "continuation records (CONT)",
    "XVID1": "XVID items",
    "XVID2": "XVID items",
    "XVID3": "XVID items",
    "XVID4": "XVID items",
    "XVID5": "XVID items",
}
#: NONMEM variables of abbreviated code that are not data items or model variables.
_REFUSED_NAMES = {
    "NEWIND": "NEWIND (record-order logic)",
    "MTIME": "model event times (MTIME)",
    "MTDIFF": "model event times (MTDIFF)",
    "MNEXT": "model event times (MNEXT)",
    "MPAST": "model event times (MPAST)",
    "MNOW": "model event times (MNOW)",
    "COMACT": "COMACT",
    "COMSAV": "COMSAV",
    "IREP": "simulation replicates (IREP)",
    "MIXNUM": "mixtures (MIXNUM)",
    "MIXEST": "mixtures (MIXEST)",
    "F_FLAG": "F_FLAG (likelihood or M3 observations in $ERROR)",
    "CUMD": "CUMD",
    "PRED_": "PRED_",
    "A_0FLG": "initial amounts (A_0)",
    "IPRED_": "IPRED_",
}

_LINEAR = {
    1: (pkpd.OneCompartment, ("CENTRAL",)),
    2: (pkpd.OneCompartmentOral, ("DEPOT", "CENTRAL")),
    3: (pkpd.TwoCompartment, ("CENTRAL", "PERIPHERAL")),
    4: (pkpd.TwoCompartmentOral, ("DEPOT", "CENTRAL", "PERIPHERAL")),
    11: (pkpd.ThreeCompartment, ("CENTRAL", "PERIPHERAL1", "PERIPHERAL2")),
    12: (pkpd.ThreeCompartmentOral, ("DEPOT", "CENTRAL", "PERIPHERAL1", "PERIPHERAL2")),
}
_DES_ADVANS = (6, 8, 9, 13, 14, 15)


def _pharmpy():
    try:
        import pharmpy
        import pharmpy.modeling
        import pharmpy.tools
    except ImportError as error:
        raise ImportError(
            "calibration.read_nonmem needs pharmpy (pharmpy-core, LGPL-3.0), an optional "
            f"extra of pkpd-twins: {_INSTALL}"
        ) from error
    return pharmpy


# ----------------------------------------------------------------------------- result


@dataclasses.dataclass(frozen=True)
class NonmemEstimates:
    """NONMEM's output beside the control stream (`.ext`, `.phi`, `.tab`, `.lst`, read by
    pharmpy): `ofv` (NONMEM's objective function value, without the n log(2 pi) constant),
    `estimates` (final values by parameter name), `etas` (conditional ETAs by ID),
    `predictions` (the table's PRED, IPRED or CIPREDI by record, if a table was written),
    `individual_ofv`, `method` (the last estimation step)."""

    ofv: float | None
    estimates: pd.Series | None
    etas: pd.DataFrame | None
    predictions: pd.DataFrame | None
    individual_ofv: pd.Series | None


@dataclasses.dataclass(frozen=True)
class NonmemImport:
    """A NONMEM control stream read by `read_nonmem`.

    - `path`, `problem` (the `$PROBLEM` title), `subroutines` (e.g. `"ADVAN2 TRANS2"`, or
      `"$PRED"`), `method` (the estimation method of `$ESTIMATION`);
    - `model`: the structural `pkpd` model (a `NonmemLinearPK` on a `pkpd` linear model, a
      `NonmemODE`, or `NonmemPred` for `$PRED`);
    - `population_model`: a `calibration.PopulationModel` at the initial estimates (a
      `NonmemPopulationModel` where the plain one cannot express the model, see
      `plain`);
    - `data`: the `Dataset` (from `records`, the NONMEM records after `IGNORE`/`ACCEPT`,
      with `EVID`, `MDV`, `CMT` filled in as NONMEM infers them);
    - `parameters`: the `$THETA`/`$OMEGA`/`$SIGMA` parameters (name, kind, initial value,
      bounds, FIX) in NONMEM's order; `initial`: their initial values by name;
    - `final`: NONMEM's results (`NonmemEstimates`) when a `.ext` is beside the control
      stream, else None;
    - `translation`: how each piece was translated (text lines); `untranslated`: what was
      read but deliberately not used (records, statements only for tables, bounds not
      enforced), each with the reason. Anything that would change the model and cannot be
      translated raises `NonmemTranslationError` instead.
    """

    path: pathlib.Path
    problem: str
    subroutines: str
    method: str
    model: pkpd.AbstractModel
    population_model: PopulationModel
    data: Dataset
    records: pd.DataFrame
    parameters: pd.DataFrame
    initial: dict[str, float]
    final: NonmemEstimates | None
    translation: tuple[str, ...]
    untranslated: tuple[str, ...]
    plain: bool
    _map: Any = dataclasses.field(repr=False)

    # --- estimates in NONMEM's names <-> the population model's phi --------------------

    def phi(self, estimates: Mapping[str, float] | None = None) -> dict[str, Any]:
        """The population model's unconstrained parameters (`pm.initial()` form) at
        `estimates` (NONMEM's names; by default NONMEM's final estimates, or the initial
        ones without a `.ext`)."""
        if estimates is None:
            estimates = self.initial if self.final is None else dict(self.final.estimates)
        values = {**self.initial, **{k: float(v) for k, v in dict(estimates).items()}}
        return self._map.phi(values)

    def estimates(self, fit_or_phi: Any) -> pd.Series:
        """Estimates in NONMEM's names and scale (THETAs, OMEGA and SIGMA variances and
        covariances; fixed ones at their values) from a `PopulationFit` or a phi."""
        phi = getattr(fit_or_phi, "phi", fit_or_phi)
        return pd.Series(self._map.values(phi), name="estimate")

    def fit(self, **kwargs: Any):
        """`calibration.fit_population` of the model on the data from the initial estimates,
        with `NonmemFOCEI()` by default (`estimator=NonmemLaplace()` for the Laplace
        method); keywords go to `fit_population`."""
        from ._laplace import fit_population

        kwargs.setdefault("estimator", NonmemFOCEI())
        return fit_population(self.population_model, self.data, **kwargs)

    def objective(self, estimates: Mapping[str, float] | None = None, *, laplace=False) -> float:
        """-2 log-likelihood (FOCE-I, or Laplace) at `estimates` (NONMEM's names; default the
        final estimates). NONMEM's OFV is this minus `n_obs * log(2 pi)`."""
        from ._laplace import _neg_loglik

        est = NonmemLaplace() if laplace else NonmemFOCEI()
        return 2.0 * float(_neg_loglik(self.population_model, self.phi(estimates), self.data, est))

    @property
    def n_observations(self) -> int:
        return self.data.n_observations

    def predictions(
        self, estimates: Mapping[str, float] | None = None, etas: Any = None
    ) -> pd.DataFrame:
        """PRED (ETAs 0) and IPRED (at `etas`: a DataFrame by ID in NONMEM's ETA order, or
        an array `(subjects, n_eta)`; by default NONMEM's conditional ETAs from the `.phi`
        if there is one, else the modes found by `individual_map`) on every record, as
        NONMEM's table lists them."""
        from ._laplace import individual_map

        pm = self.population_model
        phi = self.phi(estimates)
        nat = pm.natural(phi)
        ids = list(self.data.ids.tolist())
        if etas is None:
            if self.final is not None and self.final.etas is not None and estimates is None:
                etas = self.final.etas
            else:
                etas = individual_map(pm, self.data, phi, estimator=NonmemFOCEI()).eta
        if isinstance(etas, pd.DataFrame):
            names = self._map.eta_order
            eta = np.zeros((len(ids), len(names)))
            frame = etas.copy()
            frame.index = [_norm_id(i) for i in frame.index]
            for i, sid in enumerate(ids):
                row = frame.loc[_norm_id(sid)]
                eta[i] = [float(row[n]) for n in names]
        else:
            eta = np.asarray(etas, dtype=float)
        times, items = self._map.record_arrays(self.records, ids)
        pred, ipred = _record_predictions(pm, nat, self.data, times, items, jnp.asarray(eta))
        out = []
        for i, sid in enumerate(ids):
            sub = self.records[self.records["ID"] == sid]
            k = len(sub)
            out.append(
                pd.DataFrame(
                    {
                        "ID": sub["ID"].to_numpy(),
                        "TIME": sub["TIME"].to_numpy(),
                        "EVID": sub["EVID"].to_numpy(),
                        "DV": sub["DV"].to_numpy(),
                        "PRED": np.asarray(pred[i, :k]),
                        "IPRED": np.asarray(ipred[i, :k]),
                    },
                    index=sub.index,
                )
            )
        return pd.concat(out)

    def summary(self) -> dict[str, Any]:
        """What the CLI prints and writes: the model, parameters, data and what was not
        translated (JSON-ready)."""
        params = self.parameters.replace({np.inf: None, -np.inf: None})
        params = params.astype(object).where(params.notna(), None)
        out: dict[str, Any] = {
            "control_stream": str(self.path),
            "problem": self.problem,
            "subroutines": self.subroutines,
            "estimation_method": self.method,
            "structural_model": _describe_model(self.model),
            "population_model": type(self.population_model).__name__,
            "parameters": params.to_dict(orient="records"),
            "data": {
                "file": str(self._map.data_path),
                "records": len(self.records),
                "subjects": self.data.n_subjects,
                "observations": self.data.n_observations,
                "doses": int(np.sum(self.records["EVID"].isin([1, 4]))),
                "covariates": sorted(self.data.covariates),
            },
            "translation": list(self.translation),
            "untranslated": list(self.untranslated),
        }
        if self.final is not None:
            out["nonmem_output"] = {
                "ofv": self.final.ofv,
                "minus_2ll": None
                if self.final.ofv is None
                else self.final.ofv + self.n_observations * math.log(2 * math.pi),
                "estimates": {k: float(v) for k, v in self.final.estimates.items()}
                if self.final.estimates is not None
                else None,
            }
        return out


def _norm_id(x: Any) -> Any:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return str(x)
    return int(f) if f.is_integer() else f


def _describe_model(model: Any) -> str:
    if isinstance(model, NonmemLinearPK):
        return f"{model.advan} on pkpd.{type(model.inner).__name__} (closed form)"
    if isinstance(model, NonmemODE):
        return f"$DES, {len(model.state_names)} compartments (pkpd.AbstractODEModel, diffrax)"
    return "$PRED (no compartments)"


def _record_predictions(pm, nat, data: Dataset, times, items, eta):
    """PRED and IPRED `(subjects, records)` at every record time."""
    cov = {k: jnp.asarray(v) for k, v in data.covariates.items() if k not in items}
    rec = {k: jnp.asarray(v) for k, v in items.items()}
    reg = jax.tree_util.tree_map(jnp.asarray, data.regimen)
    obs = {"time": jnp.asarray(times)}

    def one(c, r, e_cov, o, e):
        c = {**c, **e_cov}
        if isinstance(pm, NonmemPopulationModel):
            p0 = pm.observation_moments(nat, c, r, o, jnp.zeros_like(e), variance=False)[0]
            p1 = pm.observation_moments(nat, c, r, o, e, variance=False)[0]
            return p0, p1
        p0 = pm.predict(pm.individual_params(nat["theta"], c, jnp.zeros_like(e)), r, o["time"])
        p1 = pm.predict(pm.individual_params(nat["theta"], c, e), r, o["time"])
        return p0, p1

    return jax.jit(jax.vmap(one))(cov, reg, rec, obs, eta)


# ----------------------------------------------------------------------------- helpers


@dataclasses.dataclass(frozen=True)
class _Typical:
    """`typical(theta, covariates)`: the `$PK` program at ETAs 0 (hashable)."""

    program: Program
    inputs: tuple[str, ...]
    etas: tuple[str, ...]

    def __call__(self, theta, covariates):
        env = {f"THETA:{k}": v for k, v in theta.items()}
        env |= {f"ETA:{n}": 0.0 for n in self.etas}
        env |= dict(covariates)
        out = self.program.run(env)
        return {k: out[k] for k in self.inputs}


def _line_of(text: str, fragment: str) -> int | None:
    pos = text.find(fragment)
    return None if pos < 0 else text.count("\n", 0, pos) + 1


class _Where:
    """Names a statement in messages: its record and line in the control stream."""

    def __init__(self, text: str, path: pathlib.Path):
        self.text, self.path = text, path

    def __call__(self, record: str, statement: Any) -> str:
        s = str(statement).split("\n")[0][:80]
        name = str(getattr(statement, "symbol", "")) or s
        line = None
        m = re.search(rf"^\s*{re.escape(name)}\s*=", self.text, flags=re.M | re.I)
        if m:
            line = self.text.count("\n", 0, m.start()) + 1
        at = f" (line {line})" if line else ""
        return f"{self.path.name}: ${record} statement {name}{at}"


# ----------------------------------------------------------------------------- the reader


def read_nonmem(
    path: str | pathlib.Path,
    *,
    data: pd.DataFrame | str | pathlib.Path | None = None,
    ode_solver: pkpd.ODESolver | None = None,
) -> NonmemImport:
    """Read a NONMEM control stream into a `pkpd` model and a `calibration.PopulationModel`.

    **Arguments:**

    - `path`: the control stream (`.ctl`, `.mod`); NONMEM's output beside it (same stem:
      `.ext`, `.phi`, `.lst`, the `$TABLE` files) is read into `final` when there is a
      `.ext`.
    - `data`: the data instead of `$DATA`'s file (a path, or a DataFrame with the
      `$INPUT` columns); `$DATA`'s `IGNORE`/`ACCEPT` are applied to a file only.
    - `ode_solver`: the `pkpd.ODESolver` of a `$DES` model (default Tsit5, rtol 1e-6,
      atol 1e-9).

    **Supported:** `$INPUT` (names, synonyms `DV=CONC`, `DROP`), `$DATA` (`IGNORE=@`,
    `IGNORE=#`, `IGNORE=c`, `IGNORE=(...)`, `ACCEPT=(...)`), `$SUBROUTINES ADVAN1-4, 11, 12`
    with any TRANS, `ADVAN6/8/9/13` with `$MODEL` and `$DES`, `$PRED`, `$PK`, `$ERROR`
    (assignments, `IF`/`ELSE IF`/`ELSE`, the functions of `_nonmem_translate`),
    `F<n>`, `ALAG<n>`, `R<n>`, `D<n>`, `S<n>`, `$THETA` (bounds, `FIX`), `$OMEGA` and
    `$SIGMA` (`DIAGONAL`, `BLOCK`, `FIX`; `SAME` is refused), `$ABBREV REPLACE`.
    Everything else that changes the model raises `NonmemTranslationError` naming the record
    or statement (and its line) and the construct; records that do not change it are listed
    in `untranslated`. See docs/nonmem-import.md.

    **Returns:** a `NonmemImport`.

    References: Beal SL, Sheiner LB, Boeckmann AJ, Bauer RJ (eds). NONMEM 7.5 Users Guides.
    ICON plc, 1989-2020 (Parts IV, V, VII and VIII). Pharmpy: Nordgren R, Belin S, Chen X,
    Ueckert S, Karlsson MO, Hooker AC et al., Uppsala University, https://pharmpy.github.io
    (the software; docs/nonmem-import.md).
    """
    _pharmpy()
    import warnings

    with warnings.catch_warnings():
        # pharmpy's own deprecation warnings (pandas, numpy) are not the user's to act on.
        warnings.filterwarnings("ignore", module=r"pharmpy(\.|$)")
        return _read(path, data, ode_solver)


def _read(path, data, ode_solver) -> NonmemImport:
    import pharmpy.modeling as pm_
    import sympy

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_nonmem: no control stream at {path}")
    text = path.read_text(errors="replace")
    notes: list[str] = []
    translation: list[str] = []
    where = _Where(text, path)

    _check_text(text, path)
    try:
        model = pm_.read_model(str(path))
    except Exception as error:  # pharmpy's parser: report what it says, named
        raise NonmemTranslationError(
            f"{path.name}: pharmpy could not parse the control stream: {error}"
        ) from error
    cs = model.internals.control_stream
    _check_records(cs, path, notes)

    # --- parameters -----------------------------------------------------------------
    rvs = model.random_variables
    etas_all = list(rvs.etas.names)
    eps_all = list(rvs.epsilons.names)
    rv_params = set(rvs.parameter_names)
    thetas = [p for p in model.parameters if p.name not in rv_params]
    params_table = _parameters_table(model, thetas, rvs)
    initial = {p.name: float(p.init) for p in model.parameters}
    fixed = {p.name: float(p.init) for p in model.parameters if p.fix}

    # --- statements -----------------------------------------------------------------
    sset = model.statements
    ode = sset.ode_system
    is_pred = ode is None
    if is_pred:
        before, after = list(sset), []
        subroutines = "$PRED"
    else:
        sub = cs.get_records("SUBROUTINES")[0]
        subroutines = f"{sub.advan} {sub.trans}".strip() if sub.trans else sub.advan
        before, after = list(sset.before_odes), list(sset.after_odes)
    advan = 0 if is_pred else int(re.sub(r"\D", "", subroutines.split()[0]) or 0)
    if not is_pred and advan not in _LINEAR and advan not in _DES_ADVANS:
        raise NonmemTranslationError(
            f"{path.name}: $SUBROUTINES {subroutines}: ADVAN{advan} is not supported "
            "(supported: ADVAN1-4, 11, 12 and ADVAN6/8/9/13 with $DES)"
        )
    if advan in _DES_ADVANS and not cs.get_records("DES"):
        raise NonmemTranslationError(f"{path.name}: ADVAN{advan} without $DES")

    # Names of every kind, for the translator (THETA:, ETA:, EPS:, ERR:, data items plain).
    data_items = [c.name for c in model.datainfo if not c.drop]
    for c in model.datainfo:
        if c.name.upper() in _REFUSED_ITEMS and not c.drop:
            raise NonmemTranslationError(
                f"{path.name}: $INPUT {c.name}: {_REFUSED_ITEMS[c.name.upper()]} is not "
                "supported (DROP it or convert it)"
            )
    amounts: dict[Any, sympy.Symbol] = {}
    t_sym = None
    if not is_pred:
        for i, a in enumerate(ode.amounts):
            amounts[sympy.sympify(a)] = sympy.Symbol(f"A({i + 1})")
        t_sym = sympy.sympify(ode.t)

    def sy(e):
        out = sympy.sympify(e)
        if amounts:
            out = out.xreplace(amounts)
        if t_sym is not None:
            out = out.xreplace({t_sym: sympy.Symbol("T")})
        return out

    theta_names = {p.name for p in thetas}
    sigma_names = {p for d in rvs.epsilons for p in _dist_params(d)}
    rename = {n: f"THETA:{n}" for n in theta_names}
    rename |= {n: f"ETA:{n}" for n in etas_all}
    rename |= {n: f"EPS:{n}" for n in eps_all}
    rename |= {n: f"ERR:{n}" for n in sigma_names}

    # Constants: FIXed THETAs and SIGMAs, ETAs of a 0 FIX variance, ICALL (2: estimation).
    const: dict[Any, Any] = {sympy.Symbol(k): sympy.Float(v) for k, v in fixed.items()}
    const[sympy.Symbol("ICALL")] = sympy.Integer(2)
    zero_etas = []
    for d in rvs.etas:
        for k, name in enumerate(d.names):
            var = _dist_params(d)[k * (k + 3) // 2] if len(d.names) > 1 else _dist_params(d)[0]
            if var in fixed and fixed[var] == 0.0:
                zero_etas.append(name)
                const[sympy.Symbol(name)] = sympy.Integer(0)
    if zero_etas:
        notes.append(f"ETAs of a 0 FIX variance set to 0: {', '.join(zero_etas)}")
    etas = [e for e in etas_all if e not in zero_etas]

    def prep(e):
        return sy(e).xreplace(const)

    pk_stmts: list[tuple[str, Any, Any]] = []  # (name, sympy expr, statement)
    des_stmts: list[tuple[str, Any, Any]] = []
    amount_syms = set(amounts.values()) | {sympy.Symbol("T")}
    des_names: set[sympy.Symbol] = set()
    record = "PRED" if is_pred else "PK"
    for s in before:
        if not hasattr(s, "symbol") or not hasattr(s, "expression"):
            continue
        name = str(s.symbol)
        e = prep(s.expression)
        _check_names(name, e, where(record, s))
        if e.free_symbols & (amount_syms | des_names):
            des_names.add(sympy.Symbol(name))
            des_stmts.append((name, e, s))
        else:
            pk_stmts.append((name, e, s))
    err_stmts = []
    for s in after:
        name = str(s.symbol)
        e = prep(s.expression)
        _check_names(name, e, where("ERROR", s))
        err_stmts.append((name, e, s))

    # Sequential substitution (full expressions), with IF-without-ELSE keeping the earlier
    # value (0 if none, as NONMEM initialises its variables).
    def substitute(stmts, env):
        env = dict(env)
        for name, e, _ in stmts:
            sym = sympy.Symbol(name)
            if isinstance(e, sympy.Piecewise) and e.args[-1][1] != sympy.true:
                e = sympy.Piecewise(*e.args, (sym, True))
            prev = env.get(sym, sympy.Integer(0))
            env[sym] = e.xreplace({sym: prev}).xreplace({k: v for k, v in env.items() if k != sym})
        return env

    pk_full = substitute(pk_stmts, {})
    pk_vars = [sympy.Symbol(n) for n, _, _ in pk_stmts]
    data_syms = {sympy.Symbol(n) for n in data_items}

    def full(e):
        """`e` with the $PK variables replaced by their full expressions."""
        return e.xreplace(pk_full)

    # --- the structural model ------------------------------------------------------
    des_full = substitute(des_stmts, {})
    dosing: dict[str, Any] = {}
    state_names: tuple[str, ...] = ()
    if not is_pred:
        names = list(ode.compartment_names)
        state_names = tuple(n.lower() for n in names)
        for i, cname in enumerate(names):
            comp = ode.find_compartment(cname)
            n = i + 1
            f = sy(comp.bioavailability).xreplace(const)
            if f != 1:
                dosing[f"F{n}"] = f
            lag = sy(comp.lag_time).xreplace(const)
            if lag != 0:
                dosing[f"ALAG{n}"] = lag
            for dose in comp.doses:
                for attr, key in (("rate", "R"), ("duration", "D")):
                    v = getattr(dose, attr, None)
                    if v is None or sympy.sympify(v) == 0:
                        continue
                    v = sy(v).xreplace(const)
                    # pharmpy names a modelled rate or duration D1.0 when D1 is a constant
                    v = v.xreplace(
                        {x: sympy.Symbol(re.sub(r"\.0$", "", x.name)) for x in v.free_symbols
                         if re.fullmatch(r"[DR]\d+\.0", x.name)}
                    )  # fmt: skip
                    if not {str(x) for x in v.free_symbols} & set(data_items):
                        dosing[f"{key}{n}"] = v  # modelled (RATE=-1/-2), not the data's RATE
            if comp.input is not None and sympy.sympify(comp.input) != 0:
                raise NonmemTranslationError(
                    f"{path.name}: compartment {cname} has a zero-order input "
                    f"{comp.input} in the model (not from the records): not supported"
                )

    # Prediction and residual variance from $ERROR (or $PRED).
    err_env = substitute(err_stmts, {}) if not is_pred else substitute(pk_stmts, {})
    y = err_env.get(sympy.Symbol("Y"))
    if y is None:
        raise NonmemTranslationError(
            f"{path.name}: no Y = ... in ${'PRED' if is_pred else 'ERROR'}"
        )
    eps_syms = [sympy.Symbol(n) for n in eps_all]
    zero_eps = {e: 0 for e in eps_syms}
    mean = y.xreplace(zero_eps)
    grads = [sympy.diff(y, e).xreplace(zero_eps) for e in eps_syms]
    sigma_m = _sigma_matrix(rvs, const)
    variance = sympy.Integer(0)
    for k in range(len(eps_syms)):
        for m_ in range(len(eps_syms)):
            if grads[k] != 0 and grads[m_] != 0 and sigma_m[k][m_] != 0:
                variance += grads[k] * grads[m_] * sigma_m[k][m_]
    if mean.free_symbols & set(eps_syms) or any(g.free_symbols & set(eps_syms) for g in grads):
        notes.append(
            "Y is not linear in EPS: its prediction and variance are taken at EPS = 0 (as "
            "NONMEM's FOCE linearises in EPS)"
        )
    # The variance in terms of the prediction: the $ERROR variable equal to it (IPRED) held
    # as the symbol __f__ (W = SQRT(THETA(4)**2*IPRED**2 + ...) after IF(IPRED.LT.x) ...).
    f_sym = sympy.Symbol("__f__")
    variance_f = None
    if not is_pred:
        last = {name: k for k, (name, _, _) in enumerate(err_stmts)}
        pinned = [n for n, k in last.items() if n != "Y" and err_env.get(sympy.Symbol(n)) == mean]
        if pinned:
            pin = max(pinned, key=lambda n: last[n])
            env_f: dict[Any, Any] = {}
            for k, (name, e, st) in enumerate(err_stmts):
                env_f = substitute([(name, e, st)], env_f)
                if k == last[pin]:
                    env_f[sympy.Symbol(pin)] = f_sym
            y_f = env_f[sympy.Symbol("Y")]
            g_f = [sympy.diff(y_f, e).xreplace(zero_eps) for e in eps_syms]
            v = sympy.Integer(0)
            for k in range(len(eps_syms)):
                for m_ in range(len(eps_syms)):
                    if g_f[k] != 0 and g_f[m_] != 0 and sigma_m[k][m_] != 0:
                        v += g_f[k] * g_f[m_] * sigma_m[k][m_]
            params_ = {str(p.name) for p in model.parameters}
            if v != 0 and all(str(x) in params_ or x == f_sym for x in v.free_symbols):
                variance_f = v
    for e in (mean, variance):
        for fn in e.atoms(sympy.Function):
            if not isinstance(fn, sympy.Function) or type(fn).__name__ not in _KNOWN_FUNCS:
                raise NonmemTranslationError(
                    f"{path.name}: $ERROR uses {fn}, which cannot be translated"
                )

    # Structural inputs: $PK variables the compartments, dosing and prediction read.
    if is_pred:
        inputs: list[str] = []
        inner_exprs: dict[str, Any] = {}
        field_exprs: list[Any] = []
    else:
        if advan in _LINEAR:
            inner_cls, inner_exprs = _linear_inner(ode, advan, des_full, path, sy, const)
            field_exprs = []
            used = set().union(*(v.free_symbols for v in inner_exprs.values()))
        else:
            inner_cls = None
            inner_exprs = {}
            field_exprs = []
            for eq in ode.eqs:
                rhs = sy(eq.rhs).xreplace(const).xreplace(des_full)
                field_exprs.append(rhs)
            used = set().union(*(v.free_symbols for v in field_exprs))
        used |= set().union(*(v.free_symbols for v in dosing.values())) if dosing else set()
        used -= amount_syms
        bad = used - set(pk_vars) - data_syms - {sympy.Symbol(n) for n in theta_names}
        if bad:
            raise NonmemTranslationError(
                f"{path.name}: the compartments read {sorted(map(str, bad))}, which are not "
                "$PK variables or data items"
            )
        inputs = sorted(str(s) for s in used if s in set(pk_vars) or s in data_syms)
        # The prediction's $PK variables that are subject-level become inputs too.
        for s in sorted(mean.free_symbols, key=str):
            if s in set(pk_vars) and str(s) not in inputs:
                inputs.append(str(s))
    for k_ in list(dosing):
        if k_ not in inputs:
            inputs.append(k_)

    # Which data items vary within a subject (record-level).
    obs_amounts = sorted(int(str(x)[2:-1]) for x in mean.free_symbols if x in set(amounts.values()))
    obs_cmt = obs_amounts[0] if len(obs_amounts) == 1 else None
    records = _records(model, path, data, advan, ode, is_pred, obs_cmt)
    varying = _varying(records, data_items)
    input_full = {}
    for name in inputs:
        sym = sympy.Symbol(name)
        if name in dosing:
            input_full[name] = full(dosing[name])
        elif sym in pk_full:
            input_full[name] = pk_full[sym]
        else:
            input_full[name] = sym
    for name, e in input_full.items():
        rl = sorted(str(s) for s in e.free_symbols if str(s) in varying)
        if rl:
            raise NonmemTranslationError(
                f"{path.name}: the structural parameter {name} reads {', '.join(rl)}, which "
                f"vary within subjects (e.g. ID={varying[rl[0]]}): time-varying covariates "
                "in $PK are not supported (calibration's Dataset takes each subject's first "
                "record); give a baseline column instead"
            )

    # Aliases: inputs with the same full expression are one (S1 = V).
    alias: dict[str, str] = {}
    kept: list[str] = []
    for name in inputs:
        same = next(
            (k for k in kept if name not in dosing and k not in dosing
             and sympy.simplify(input_full[k] - input_full[name]) == 0), None,
        )  # fmt: skip
        if same is None:
            kept.append(name)
        else:
            alias[name] = same
    if alias:
        translation.append("same parameter: " + ", ".join(f"{a} = {b}" for a, b in alias.items()))
    alias_sub = {sympy.Symbol(a): sympy.Symbol(b) for a, b in alias.items()}
    inputs = kept
    input_full = {k: input_full[k] for k in inputs}
    mean = mean.xreplace(alias_sub)
    variance = variance.xreplace(alias_sub)
    inner_exprs = {k: v.xreplace(alias_sub) for k, v in inner_exprs.items()}
    field_exprs = [v.xreplace(alias_sub) for v in field_exprs]
    # Everything in the prediction that is not an input: full expressions.
    non_input = {s: v for s, v in pk_full.items() if str(s) not in inputs}
    mean = mean.xreplace(non_input) if not is_pred else full(mean)
    variance = variance.xreplace(non_input) if not is_pred else full(variance)

    # --- names, data items, translation -----------------------------------------------
    input_set = {sympy.Symbol(n) for n in inputs}
    item_syms = {s for s in (mean.free_symbols | variance.free_symbols) if s in data_syms}
    record_items = tuple(sorted(str(s) for s in item_syms if str(s) in varying))
    time_sym = sympy.Symbol("TIME")
    if time_sym in (mean.free_symbols | variance.free_symbols):
        record_items = tuple(x for x in record_items if x != "TIME")
    subject_items = set()
    for e in input_full.values():
        subject_items |= {str(s) for s in e.free_symbols if s in data_syms}
    subject_items |= {str(s) for s in item_syms if str(s) not in varying}
    subject_items.discard("TIME")
    unknown = (mean.free_symbols | variance.free_symbols) - input_set - data_syms
    unknown -= {sympy.Symbol(n) for n in theta_names | sigma_names | set(etas)}
    unknown -= set(amounts.values()) | {time_sym}
    if unknown:
        raise NonmemTranslationError(
            f"{path.name}: $ERROR reads {sorted(map(str, unknown))}, which are not data items, "
            "parameters or $PK variables"
        )

    # The $PK program for the inputs (statements they need, in order).
    needed = set(inputs)
    prog: list[tuple[str, Expr]] = []
    for name, e, _s in reversed(pk_stmts):
        if name in needed:
            needed |= {str(x) for x in e.free_symbols}
    for name, e, s in pk_stmts:
        if name in needed:
            ee = e
            if isinstance(ee, sympy.Piecewise) and ee.args[-1][1] != sympy.true:
                prior = any(n == name for n, _, _ in prog)
                ee = sympy.Piecewise(*ee.args, (sympy.Symbol(name) if prior else 0, True))
            prog.append((name, translate(ee, where=where(record, s), rename=rename)))
        else:
            if any(str(x) in _REFUSED_NAMES for x in e.free_symbols):
                notes.append(f"{where(record, s)}: not needed by the model, not translated")
    for name in inputs:
        if name in dosing and dosing[name] != sympy.Symbol(name):
            prog.append(
                (name, translate(dosing[name], where=f"{path.name}: {name}", rename=rename))
            )
    unused = [n for n, _, _ in pk_stmts if n not in needed and n not in alias]
    if unused and not is_pred:
        notes.append(
            f"${record} variables not used by the model (only for tables): {', '.join(unused)}"
        )
    program = Program(tuple(prog))

    # --- error model ------------------------------------------------------------------
    free_sigmas = [n for n in sigma_names if n not in fixed]
    f_sym = sympy.Symbol("__f__")
    if variance == 0:
        raise NonmemTranslationError(f"{path.name}: Y has no residual error (EPS)")
    v_f = variance_f
    if v_f is None:
        v_f = _variance_of_prediction(variance, mean, f_sym, amounts, theta_names | sigma_names)
    pk_theta_syms = set()
    for e in input_full.values():
        pk_theta_syms |= {s for s in e.free_symbols if str(s) in theta_names}
    pk_theta_syms |= {s for s in mean.free_symbols if str(s) in theta_names}
    err_thetas = []
    general = True
    if v_f is not None:
        params_v = {str(s) for s in v_f.free_symbols} - {"__f__"}
        ths = {n for n in params_v if n in theta_names}
        if params_v <= (theta_names | sigma_names) and not (
            {sympy.Symbol(n) for n in ths} & pk_theta_syms
        ):
            general = False
            err_thetas = sorted(ths)
    err_params = [n for n in _ordered_sigmas(rvs) if n in free_sigmas]
    if not general:
        err_params = err_params + [t for t in [p.name for p in thetas] if t in err_thetas]
    err_rename = dict(rename) | {n: f"ERR:{n}" for n in err_params}
    err_values = FrozenDict({n: abs(initial[n]) for n in err_params})
    for n in err_params:
        if not err_values[n] > 0:
            raise NonmemTranslationError(
                f"{path.name}: the residual-error parameter {n} has initial value "
                f"{initial[n]}: it must be non-zero (estimated on the log scale)"
            )
    if general:
        error = NonmemGeneralError(err_values)
        translation.append(
            "residual error: its variance depends on ETAs or data items, not on the prediction "
            "alone (fit with NonmemFOCEI)"
        )
    else:
        form = _error_form(v_f, f_sym)
        error = NonmemResidualError(
            err_values,
            translate(v_f, where=f"{path.name}: $ERROR variance", rename=err_rename),
            form,
        )
        translation.append(f"residual error: {form}, variance {v_f} (f the prediction)")

    # --- structural pkpd model ----------------------------------------------------------
    out_ok = not is_pred and not (mean.free_symbols - input_set - set(amounts.values()))
    positive = tuple(n for n in inputs if n.upper() in _POSITIVE_NAMES)
    if is_pred:
        struct: pkpd.AbstractModel = NonmemPred()
    else:
        out_tr = translate(mean if out_ok else sympy.Integer(0),
                           where=f"{path.name}: the prediction", rename=rename)  # fmt: skip
        if advan in _LINEAR:
            inner_tr = tuple(
                (k, translate(v, where=f"{path.name}: {subroutines}", rename=rename))
                for k, v in inner_exprs.items()
            )
            struct = NonmemLinearPK(
                inner=inner_cls(),
                advan=subroutines,
                param_names=tuple(inputs),
                state_names=state_names,
                positive_params=positive,
                inner_params=inner_tr,
                out=out_tr,
            )
            _check_matrix(struct, ode, sy, const, alias_sub, rename, inputs, path)
            translation.append(
                f"{subroutines}: pkpd.{inner_cls.__name__} (closed form), its parameters "
                + ", ".join(f"{k} = {v}" for k, v in inner_exprs.items())
            )
        else:
            free_t = any(sympy.Symbol("T") in f.free_symbols for f in field_exprs)
            struct = NonmemODE(
                param_names=tuple(inputs),
                state_names=state_names,
                positive_params=positive,
                autonomous=not free_t,
                field=tuple(
                    translate(f, where=f"{path.name}: $DES DADT({i + 1})", rename=rename)
                    for i, f in enumerate(field_exprs)
                ),
                out=out_tr,
                solver=ode_solver,
            )
            translation.append(
                f"{subroutines} $DES: pkpd.AbstractODEModel with "
                + "; ".join(f"DADT({i + 1}) = {f}" for i, f in enumerate(field_exprs))
            )
        if dosing:
            translation.append(
                "dosing parameters: " + ", ".join(f"{k} = {v}" for k, v in dosing.items())
            )
        translation.append(f"prediction F = {mean}")
    translation.append(
        "structural parameters (from $PK): "
        + ", ".join(f"{n} = {input_full.get(n, n)}" for n in inputs)
    )

    # --- data ---------------------------------------------------------------------------
    covariates = sorted(subject_items)
    n_states = None if is_pred else len(state_names)
    dataset = Dataset.from_records(
        records,
        covariates=covariates,
        n_states=n_states,
        cens="__no_cens__",
        limit="__no_limit__",
        occasion="__no_occasion__",
    )
    if record_items or "TIME" in {str(s) for s in (mean.free_symbols | variance.free_symbols)}:
        dataset = _with_record_items(dataset, records, record_items)

    # --- population model -------------------------------------------------------------
    free_thetas = [p for p in thetas if p.name not in fixed]
    log_thetas = tuple(
        p.name for p in free_thetas
        if p.lower is not None and float(p.lower) >= 0 and float(p.init) > 0
    )  # fmt: skip
    for p in free_thetas:
        lo, hi = float(p.lower), float(p.upper)
        if p.name in err_thetas:
            continue
        if (lo not in (0.0, -math.inf) and not (lo > 0 and p.name in log_thetas)) or hi != math.inf:
            notes.append(
                f"THETA {p.name}: the bounds ({lo:g}, {hi:g}) are not enforced (estimated "
                f"{'on the log scale' if p.name in log_thetas else 'unbounded'})"
            )
        if p.name not in log_thetas and lo >= 0 and float(p.init) <= 0:
            raise NonmemTranslationError(
                f"{path.name}: THETA {p.name} starts at its lower bound {float(p.init):g}"
            )
    model_thetas = {p.name: float(p.init) for p in free_thetas if p.name not in err_thetas}
    unconstrained = tuple(n for n in model_thetas if n not in log_thetas)
    blocks, eta_order = _omega_blocks(rvs, etas, initial, fixed, path)
    typical = _Typical(program, tuple(inputs), tuple(etas))

    plain, reason = _plain_form(
        out_ok,
        is_pred,
        general,
        record_items,
        blocks,
        input_full,
        etas,
        mean,
        variance,
        err_thetas,
        theta_names,
        sympy,
    )
    omega_of = {}
    if plain:
        omega_of = _standard_etas(input_full, etas, sympy)
        if omega_of is None:
            plain, reason = False, "an ETA is not P = TV * EXP(ETA) on one structural parameter"
    if plain:
        omega = {omega_of[e]: initial[_var_name(rvs, e)] for e in etas}
        pop: PopulationModel = PopulationModel(
            struct,
            theta=model_thetas,
            omega=omega,
            error=error,
            typical=typical,
            unconstrained=unconstrained,
        )
        translation.append(
            "random effects: " + ", ".join(f"{omega_of[e]} = TV * EXP({e})" for e in etas)
        )
    else:
        mean_tr = translate(mean, where=f"{path.name}: the prediction", rename=rename)
        var_tr = translate(
            variance.xreplace({sympy.Symbol(n): sympy.Symbol(n) for n in err_params}),
            where=f"{path.name}: the residual variance",
            rename=err_rename,
        )
        spec = NonmemSpec(
            thetas=FrozenDict(model_thetas),
            log_thetas=tuple(n for n in log_thetas if n in model_thetas),
            etas=tuple(etas),
            blocks=tuple(blocks),
            sigmas=err_values,
            pk=program,
            inputs=tuple(inputs),
            mean=mean_tr,
            variance=var_tr,
            record_items=record_items,
            general_error=general,
            has_states=not is_pred,
            predict_ok=out_ok and not record_items,
        )
        pop = NonmemPopulationModel(
            struct,
            theta=model_thetas,
            omega={},
            error=error,
            typical=typical,
            unconstrained=unconstrained,
            omega_block=any(len(b[0]) > 1 for b in blocks),
            spec=spec,
        )
        translation.append(f"NonmemPopulationModel: {reason}")

    final = _final(model, path)
    method = _method(model)
    mapping = _Map(
        pm=pop,
        plain=plain,
        thetas=[p.name for p in thetas],
        model_thetas=list(model_thetas),
        log_thetas=set(log_thetas),
        err_params=err_params,
        fixed=fixed,
        etas=etas,
        eta_order=eta_order,
        omega_of=omega_of,
        rvs_var={e: _var_name(rvs, e) for e in etas},
        blocks=blocks,
        block_names=_block_names(rvs, etas),
        record_items=record_items,
        data_path=_data_path(model, path, data),
    )
    return NonmemImport(
        path=path,
        problem=_problem(cs),
        subroutines=subroutines,
        method=method,
        model=struct,
        population_model=pop,
        data=dataset,
        records=records,
        parameters=params_table,
        initial=initial,
        final=final,
        translation=tuple(translation),
        untranslated=tuple(notes),
        plain=plain,
        _map=mapping,
    )


_KNOWN_FUNCS = {
    "exp", "log", "Abs", "sin", "cos", "tan", "asin", "acos", "atan", "floor", "ceiling",
    "sign", "erf", "gamma", "loggamma", "Piecewise", "Min", "Max",
}  # fmt: skip
_POSITIVE_NAMES = {
    "CL", "V", "V1", "V2", "V3", "V4", "Q", "Q2", "Q3", "Q4", "KA", "K", "K10", "K12", "K21",
    "K13", "K31", "K20", "K23", "K32", "K24", "K42", "K30", "K40", "VSS", "ALPHA", "BETA",
    "GAMMA",
}  # fmt: skip


# ----------------------------------------------------------------------------- pieces


def _check_text(text: str, path: pathlib.Path) -> None:
    """Refuse what pharmpy would drop silently: verbatim code, several problems."""
    in_code = False
    for no, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        m = re.match(r"\$(\w+)", stripped)
        if m:
            in_code = m.group(1).upper()[:3] in ("PK", "ERR", "DES", "PRE", "AES", "INF", "MIX")
        if in_code and stripped.startswith('"'):
            raise NonmemTranslationError(
                f"{path.name}, line {no}: verbatim FORTRAN code ({stripped[:40]!r}) cannot be "
                "translated"
            )
    n_problems = len(re.findall(r"^\s*\$PROB", text, flags=re.M | re.I))
    if n_problems > 1:
        raise NonmemTranslationError(
            f"{path.name}: {n_problems} $PROBLEMs; only control streams with one problem are read"
        )
    for name in ("MTIME", "MTDIFF", "MNEXT", "MPAST", "MNOW"):
        m = re.search(rf"^[^;\n]*\b{name}\s*\(", text, flags=re.M | re.I)
        if m:
            no = text.count("\n", 0, m.start()) + 1
            raise NonmemTranslationError(
                f"{path.name}, line {no}: {_REFUSED_NAMES[name]} cannot be translated"
            )


def _check_records(cs, path: pathlib.Path, notes: list[str]) -> None:
    for r in cs.records:
        name = str(getattr(r, "name", "")).upper()
        if name in _RECORDS_REFUSED:
            raise NonmemTranslationError(
                f"{path.name}: ${name}: {_RECORDS_REFUSED[name]} cannot be translated"
            )
        if name in _RECORDS_IGNORED:
            notes.append(f"${name} ({_RECORDS_IGNORED[name]}): does not change the model")
        elif name not in _RECORDS_READ and name:
            raise NonmemTranslationError(f"{path.name}: ${name} is not a record read here")
    for r in cs.get_records("SUBROUTINES"):
        raw = str(r).upper()
        for opt in ("OTHER", "INFN", "CONTR", "CCONTR", "PRED", "MIX", "ERROR", "PK", "DES"):
            if re.search(rf"\b{opt}\s*=", raw):
                raise NonmemTranslationError(
                    f"{path.name}: $SUBROUTINES {opt}=: user-supplied subroutines cannot be "
                    "translated"
                )
    for r in cs.get_records("OMEGA") + cs.get_records("SIGMA"):
        if re.search(r"\bSAME\b", str(r).upper()):
            raise NonmemTranslationError(
                f"{path.name}: ${r.name} BLOCK SAME (inter-occasion variability through "
                "occasion indicators) is not translated; calibration models it with an OCC "
                "column and PopulationModel(iov=...)"
            )


def _check_names(name: str, e: Any, where: str) -> None:
    import sympy

    for fn in e.atoms(sympy.Function):
        fname = type(fn).__name__
        if fname.upper() in _REFUSED_NAMES or fname.lower() == "newind":
            raise NonmemTranslationError(f"{where}: {_REFUSED_NAMES.get(fname.upper(), fname)}")
        if fname not in _KNOWN_FUNCS and not fname.startswith("A_"):
            raise NonmemTranslationError(f"{where}: the function {fn} cannot be translated")
    for s in e.free_symbols:
        base = re.sub(r"\(.*", "", str(s)).upper()
        if base in _REFUSED_NAMES:
            raise NonmemTranslationError(f"{where}: {_REFUSED_NAMES[base]} cannot be translated")
    base = re.sub(r"\(.*", "", name).upper()
    if base in _REFUSED_NAMES or name.upper().startswith("A_0"):
        raise NonmemTranslationError(
            f"{where}: {_REFUSED_NAMES.get(base, 'initial amounts (A_0)')} cannot be translated"
        )


def _dist_params(d) -> list[str]:
    """Parameter names of a pharmpy distribution (lower triangle, row by row)."""
    import sympy

    if len(d.names) == 1:
        return [str(d.variance)]
    m = sympy.Matrix(d.variance)
    return [str(m[i, j]) for i in range(m.rows) for j in range(i + 1)]


def _var_name(rvs, eta: str) -> str:
    import sympy

    for d in rvs.etas:
        if eta in d.names:
            if len(d.names) == 1:
                return str(d.variance)
            k = list(d.names).index(eta)
            return str(sympy.Matrix(d.variance)[k, k])
    raise KeyError(eta)


def _block_names(rvs, etas) -> dict[tuple[int, int], str]:
    import sympy

    out = {}
    for d in rvs.etas:
        names = list(d.names)
        if len(names) == 1:
            if names[0] in etas:
                i = etas.index(names[0])
                out[(i, i)] = str(d.variance)
            continue
        m = sympy.Matrix(d.variance)
        for a in range(len(names)):
            for b in range(a + 1):
                if names[a] in etas and names[b] in etas:
                    out[(etas.index(names[a]), etas.index(names[b]))] = str(m[a, b])
    return out


def _ordered_sigmas(rvs) -> list[str]:
    out = []
    for d in rvs.epsilons:
        for p in _dist_params(d):
            if p not in out:
                out.append(p)
    return out


def _sigma_matrix(rvs, const) -> list[list[Any]]:
    import sympy

    names = list(rvs.epsilons.names)
    n = len(names)
    m = [[sympy.Integer(0)] * n for _ in range(n)]
    for d in rvs.epsilons:
        idx = [names.index(x) for x in d.names]
        if len(idx) == 1:
            v = sympy.Symbol(str(d.variance)).xreplace(const)
            m[idx[0]][idx[0]] = v
        else:
            mat = sympy.Matrix(d.variance)
            for a in range(len(idx)):
                for b in range(len(idx)):
                    m[idx[a]][idx[b]] = sympy.sympify(mat[a, b]).xreplace(const)
    return m


def _omega_blocks(rvs, etas, initial, fixed, path):
    import sympy

    blocks = []
    for d in rvs.etas:
        names = [n for n in d.names if n in etas]
        if not names:
            continue
        if len(d.names) == 1:
            p = str(d.variance)
            v = initial[p]
            if not v > 0:
                raise NonmemTranslationError(f"{path.name}: $OMEGA {p} = {v}: must be > 0")
            blocks.append(((etas.index(names[0]),), (v,), p in fixed))
            continue
        if len(names) != len(d.names):
            raise NonmemTranslationError(f"{path.name}: an $OMEGA BLOCK with a 0 FIX ETA")
        m = sympy.Matrix(d.variance)
        vals, fix = [], []
        for a in range(m.rows):
            for b in range(a + 1):
                p = str(m[a, b])
                vals.append(initial[p])
                fix.append(p in fixed)
        if any(fix) and not all(fix):
            raise NonmemTranslationError(f"{path.name}: an $OMEGA BLOCK partly FIX")
        blocks.append((tuple(etas.index(n) for n in names), tuple(vals), all(fix)))
    return blocks, list(etas)


def _linear_inner(ode, advan, des_full, path, sy, const):
    """The `pkpd` class of ADVANn and its parameters as sympy expressions of the $PK
    variables (rate constants; central volume 1)."""
    import sympy

    cls, expect = _LINEAR[advan]
    names = [n.upper() for n in ode.compartment_names]
    if names != list(expect):
        raise NonmemTranslationError(
            f"{path.name}: ADVAN{advan} compartments {names}, expected {list(expect)}"
        )
    mat = ode.compartmental_matrix
    n = len(names)
    m = [[sy(mat[i, j]).xreplace(const) for j in range(n)] for i in range(n)]
    one = sympy.Integer(1)
    if advan == 1:
        return cls, {"CL": -m[0][0], "V": one}
    if advan == 2:
        return cls, {"KA": m[1][0], "CL": -m[1][1], "V": one}
    if advan == 3:
        k12, k21 = m[1][0], m[0][1]
        return cls, {"CL": -(m[0][0] + k12), "V1": one, "Q": k12, "V2": k12 / k21}
    if advan == 4:
        ka, k23, k32 = m[1][0], m[2][1], m[1][2]
        return cls, {"KA": ka, "CL": -(m[1][1] + k23), "V1": one, "Q": k23, "V2": k23 / k32}
    if advan == 11:
        k12, k21, k13, k31 = m[1][0], m[0][1], m[2][0], m[0][2]
        return cls, {
            "CL": -(m[0][0] + k12 + k13), "V1": one, "Q2": k12, "V2": k12 / k21,
            "Q3": k13, "V3": k13 / k31,
        }  # fmt: skip
    ka, k23, k32, k24, k42 = m[1][0], m[2][1], m[1][2], m[3][1], m[1][3]
    return cls, {
        "KA": ka, "CL": -(m[1][1] + k23 + k24), "V1": one, "Q2": k23, "V2": k23 / k32,
        "Q3": k24, "V3": k24 / k42,
    }  # fmt: skip


def _check_matrix(struct, ode, sy, const, alias_sub, rename, inputs, path):
    """The pkpd model's rate-constant matrix equals pharmpy's at random parameter values."""
    mat = ode.compartmental_matrix
    n = len(ode.compartment_names)
    rng = np.random.default_rng(0)
    params = {k: float(rng.uniform(0.5, 2.0)) for k in inputs}
    ours = np.asarray(struct.matrix(params))
    theirs = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            e = sy(mat[i, j]).xreplace(const).xreplace(alias_sub)
            theirs[i, j] = float(translate(e, where="", rename=rename).evaluate(params))
    if not np.allclose(ours, theirs, rtol=1e-10, atol=1e-12):
        raise NonmemTranslationError(
            f"{path.name}: the compartmental matrix does not have the structure of "
            f"{type(struct.inner).__name__}"
        )


def _variance_of_prediction(variance, mean, f_sym, amounts, param_names):
    """The residual variance as a function of the prediction `f_sym` and of parameters only
    (None if it cannot be written so): the amount in `mean = f` solved for and replaced."""
    import sympy

    def rest(e):
        return {s for s in e.free_symbols if s.name not in param_names}

    if not rest(variance):
        return variance
    if mean.free_symbols:
        candidate = variance.xreplace({mean: f_sym})
        if not rest(candidate) - {f_sym}:
            return candidate
    amount_syms = [s for s in mean.free_symbols if s in set(amounts.values())]
    if len(amount_syms) != 1:
        return None
    try:
        sol = sympy.solve(sympy.Eq(mean, f_sym), amount_syms[0], dict=True)
        if len(sol) != 1:
            return None
        candidate = sympy.simplify(variance.xreplace(sol[0]))
    except Exception:  # sympy cannot invert the prediction: the general path
        return None
    if rest(candidate) - {f_sym}:
        return None
    return candidate


def _error_form(v, f) -> str:
    import sympy

    poly = sympy.Poly(sympy.expand(v), f) if v.is_polynomial(f) else None
    if poly is None:
        return "custom"
    degs = {m[0] for m in poly.monoms()}
    if degs == {0}:
        return "additive"
    if degs == {2}:
        return "proportional"
    if degs == {0, 2}:
        return "combined"
    return "custom"


def _standard_etas(input_full, etas, sympy) -> dict[str, str] | None:
    """`eta -> structural parameter` when each ETA is `P = TV * EXP(ETA)` on exactly one
    parameter and each parameter has at most one ETA; None otherwise."""
    out: dict[str, str] = {}
    seen: set[str] = set()
    eta_syms = {sympy.Symbol(e): e for e in etas}
    for name, e in input_full.items():
        mine = [eta_syms[s] for s in e.free_symbols if s in eta_syms]
        if not mine:
            continue
        if len(mine) > 1:
            return None
        eta = mine[0]
        if eta in out:
            return None
        s = sympy.Symbol(eta)
        ratio = sympy.powsimp(sympy.expand_power_exp(e * sympy.exp(-s)), force=True)
        if s in ratio.free_symbols:
            ratio = sympy.simplify(e * sympy.exp(-s))
            if s in ratio.free_symbols:
                return None
        out[eta] = name
        seen.add(name)
    if set(out) != set(etas):
        return None
    return out


def _plain_form(out_ok, is_pred, general, record_items, blocks, input_full, etas, mean, variance,
                err_thetas, theta_names, sympy):  # fmt: skip
    if is_pred:
        return False, "$PRED"
    if general:
        return False, "the residual error depends on more than the prediction"
    if record_items:
        return False, f"$ERROR reads data items of each record ({', '.join(record_items)})"
    if any(len(b[0]) > 1 for b in blocks):
        return False, "$OMEGA BLOCK"
    if any(b[2] for b in blocks):
        return False, "a FIXed $OMEGA"
    eta_syms = {sympy.Symbol(e) for e in etas}
    direct = (mean.free_symbols | variance.free_symbols) & (
        eta_syms | {sympy.Symbol(t) for t in theta_names if t not in err_thetas}
    )
    if direct:
        return False, f"$ERROR reads {sorted(map(str, direct))} directly"
    if sympy.Symbol("TIME") in mean.free_symbols:
        return False, "$ERROR reads TIME"
    if not out_ok:
        return False, "the prediction reads data items or parameters directly"
    return True, ""


def _records(model, path, data, advan, ode, is_pred, obs_cmt=None) -> pd.DataFrame:
    """NONMEM records from pharmpy's dataset (`$INPUT` names, `DROP`, `IGNORE`, `ACCEPT`),
    with the data items the records need as `pkpd.validate_records` names them."""
    import pharmpy.modeling as pm_

    if data is not None:
        if isinstance(data, str | pathlib.Path):
            model = pm_.set_dataset(model, str(data), datatype="nonmem")
        else:
            model = pm_.set_dataset(model, data)
    df = model.dataset
    if df is None:
        raise NonmemTranslationError(f"{path.name}: no data ($DATA) could be read")
    di = model.datainfo
    by_type: dict[str, str] = {}
    for col in di:
        if not col.drop:
            by_type.setdefault(col.type, col.name)
    out = pd.DataFrame(index=df.index)
    for col in di:
        if not col.drop:
            out[col.name] = pd.to_numeric(df[col.name], errors="coerce")
    rename = {}
    for typ, std in (("id", "ID"), ("idv", "TIME"), ("dv", "DV"), ("dose", "AMT")):
        if typ in by_type and by_type[typ] != std:
            rename[by_type[typ]] = std
    out = out.rename(columns=rename)
    for std in ("ID", "TIME", "DV"):
        if std not in out.columns:
            if std == "TIME" and is_pred:
                out["TIME"] = 0.0
                continue
            raise NonmemTranslationError(f"{path.name}: $INPUT has no {std}")
    if "AMT" not in out.columns:
        out["AMT"] = 0.0
    try:
        out["EVID"] = pm_.get_evid(model).to_numpy().astype(int)
        out["MDV"] = pm_.get_mdv(model).to_numpy().astype(int)
    except Exception:
        amt = out["AMT"].to_numpy()
        out["EVID"] = np.where(amt > 0, 1, 0)
        out["MDV"] = np.where(amt > 0, 1, 0)
    out.loc[out["EVID"] != 0, "MDV"] = 1
    if is_pred:
        out["EVID"] = np.where(out["MDV"] == 1, 2, 0)
        out["AMT"] = 0.0
        out["CMT"] = 1
        return out.reset_index(drop=True)
    if "CMT" not in out.columns or out["CMT"].isna().all():
        dose_cmt = next((i + 1 for i, n in enumerate(ode.compartment_names)
                         if ode.find_compartment(n).doses), 1)  # fmt: skip
        out["CMT"] = np.where(out["EVID"].isin([1, 4]), dose_cmt, obs_cmt or 1)
    out["CMT"] = out["CMT"].astype(int)
    is_obs = (out["EVID"] == 0).to_numpy()
    if obs_cmt is not None:
        other = is_obs & ~out["CMT"].isin([0, obs_cmt]).to_numpy()
        if other.any():
            k = int(np.flatnonzero(other)[0])
            raise NonmemTranslationError(
                f"{path.name}: observation records with CMT={int(out['CMT'].iloc[k])} (row {k} "
                f"of the data after IGNORE/ACCEPT): NONMEM then predicts that compartment's "
                f"amount; only the default observation compartment {obs_cmt} (or CMT=0) is "
                "translated"
            )
        out.loc[is_obs, "CMT"] = obs_cmt
    bad = out["CMT"] < 0
    if bad.any():
        raise NonmemTranslationError(
            f"{path.name}: negative CMT (turning compartments off) is not supported "
            f"(row {int(np.flatnonzero(bad)[0])})"
        )
    if "RATE" in out.columns:
        out["RATE"] = out["RATE"].fillna(0.0)
    return out.reset_index(drop=True)


def _varying(records: pd.DataFrame, items: list[str]) -> dict[str, Any]:
    """Data items that vary within a subject -> the first such subject's ID."""
    out = {}
    g = records.groupby("ID", sort=False)
    for c in items:
        if c in ("ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "RATE", "II", "ADDL", "SS"):
            continue
        if c not in records.columns:
            continue
        n = g[c].nunique(dropna=False)
        if (n > 1).any():
            out[c] = _norm_id(n.index[np.flatnonzero((n > 1).to_numpy())[0]])
    out["TIME"] = None
    return out


def _with_record_items(dataset: Dataset, records: pd.DataFrame, items) -> Dataset:
    """The dataset with the record-level data items of each observation as `(subjects,
    observations)` arrays in `covariates` (padding repeats the last value)."""
    cov = dict(dataset.covariates)
    is_obs = (records["EVID"] == 0) & (records["MDV"] == 0)
    n_obs = dataset.time.shape[1]
    for item in items:
        arr = np.zeros((dataset.n_subjects, n_obs))
        for i, sid in enumerate(dataset.ids.tolist()):
            v = records.loc[is_obs & (records["ID"] == sid), item].to_numpy(dtype=float)
            arr[i, : len(v)] = v
            if len(v) and len(v) < n_obs:
                arr[i, len(v) :] = v[-1]
        cov[item] = arr
    return Dataset(
        dataset.ids, dataset.regimen, dataset.time, dataset.dv, dataset.observed, dataset.blq,
        dataset.lloq, dataset.occasion, cov, dataset.records, dataset.occasion_start,
        obs_order=dataset.obs_order, obs_dvid=dataset.obs_dvid,
    )  # fmt: skip


def _parameters_table(model, thetas, rvs) -> pd.DataFrame:
    kinds = {}
    for p in thetas:
        kinds[p.name] = "theta"
    for d in rvs.etas:
        for p in _dist_params(d):
            kinds[p] = "omega"
    for d in rvs.epsilons:
        for p in _dist_params(d):
            kinds[p] = "sigma"
    rows = []
    for p in model.parameters:
        rows.append(
            {
                "name": p.name,
                "kind": kinds.get(p.name, "?"),
                "initial": float(p.init),
                "lower": float(p.lower),
                "upper": float(p.upper),
                "fix": bool(p.fix),
            }
        )
    return pd.DataFrame(rows)


def _final(model, path: pathlib.Path) -> NonmemEstimates | None:
    if not path.with_suffix(".ext").is_file():
        return None
    from pharmpy.tools import read_modelfit_results

    res = read_modelfit_results(str(path))
    if res is None:
        return None
    pe = res.parameter_estimates
    etas = res.individual_estimates
    return NonmemEstimates(
        ofv=None if res.ofv is None else float(res.ofv),
        estimates=None if pe is None else pe.astype(float),
        etas=etas,
        predictions=res.predictions,
        individual_ofv=res.individual_ofv,
    )


def _method(model) -> str:
    try:
        steps = model.execution_steps
    except AttributeError:
        return "?"
    if not len(steps):
        return "none"
    s = steps[-1]
    m = str(getattr(s, "method", "?"))
    if getattr(s, "interaction", False):
        m += "-I"
    if getattr(s, "laplace", False):
        m += " LAPLACE"
    return m


def _problem(cs) -> str:
    r = cs.get_records("PROBLEM")
    if not r:
        return ""
    first = str(r[0]).strip().splitlines()[0]
    return re.sub(r"^\$PROB\w*", "", first, flags=re.I).strip()


def _data_path(model, path, data) -> Any:
    if data is not None and not isinstance(data, pd.DataFrame):
        return pathlib.Path(data)
    try:
        return model.datainfo.path
    except AttributeError:
        return None


# ----------------------------------------------------------------------------- mapping


@dataclasses.dataclass
class _Map:
    """NONMEM's parameters <-> the population model's phi."""

    pm: Any
    plain: bool
    thetas: list[str]
    model_thetas: list[str]
    log_thetas: set[str]
    err_params: list[str]
    fixed: dict[str, float]
    etas: list[str]
    eta_order: list[str]
    omega_of: dict[str, str]
    rvs_var: dict[str, str]
    blocks: list
    block_names: dict[tuple[int, int], str]
    record_items: tuple[str, ...]
    data_path: Any

    def phi(self, values: Mapping[str, float]) -> dict[str, Any]:
        theta = {
            k: jnp.asarray(math.log(values[k]) if k in self.log_thetas else float(values[k]))
            for k in self.model_thetas
        }
        sigma = {k: jnp.asarray(math.log(abs(values[k]))) for k in self.err_params}
        if self.plain:
            log_sd = [0.5 * math.log(values[self.rvs_var[e]]) for e in self.etas]
            return {"theta": theta, "omega": {"log_sd": jnp.asarray(log_sd)}, "sigma": sigma}
        log_sd = [0.0] * len(self.etas)
        corr: list[float] = []
        for idx, _, fixed in self.blocks:
            n = len(idx)
            cov = np.zeros((n, n))
            for a in range(n):
                for b in range(a + 1):
                    ia, ib = idx[a], idx[b]
                    key = self.block_names.get((ia, ib)) or self.block_names.get((ib, ia))
                    cov[a, b] = cov[b, a] = values[key]
            ls, z = block_parameters(cov)
            for k, i in enumerate(idx):
                log_sd[i] = ls[k]
            if not fixed:
                corr += z
        omega = {"log_sd": jnp.asarray(log_sd)}
        if corr:
            omega["corr"] = jnp.asarray(corr)
        return {"theta": theta, "omega": omega, "sigma": sigma}

    def values(self, phi) -> dict[str, float]:
        nat = self.pm.natural(phi)
        out: dict[str, float] = {}
        for k in self.thetas:
            if k in self.fixed:
                out[k] = self.fixed[k]
            elif k in nat["theta"]:
                out[k] = float(nat["theta"][k])
            elif k in nat["sigma"]:
                out[k] = float(nat["sigma"][k])
        omega = np.asarray(nat["omega"])
        for (i, j), name in self.block_names.items():
            out[name] = float(omega[i, j])
        for k in self.err_params:
            if k not in out:
                out[k] = float(nat["sigma"][k])
        for k, v in self.fixed.items():
            out.setdefault(k, v)
        return out

    def record_arrays(self, records: pd.DataFrame, ids) -> tuple[np.ndarray, dict[str, Any]]:
        groups = [records[records["ID"] == sid] for sid in ids]
        n = max(len(g) for g in groups)
        times = np.zeros((len(ids), n))
        items = {k: np.zeros((len(ids), n)) for k in self.record_items}
        for i, g in enumerate(groups):
            t = g["TIME"].to_numpy(dtype=float)
            times[i, : len(t)] = t
            times[i, len(t) :] = t[-1]
            for k in self.record_items:
                v = g[k].to_numpy(dtype=float)
                items[k][i, : len(v)] = v
                items[k][i, len(v) :] = v[-1]
        return times, items
