"""Virtual hospitals for the federated surrogates: populations that differ the way real sites
do, each with its own simulated patients and outcomes, and a measure of how different they are.

The task is the project's drug-response task (`surrogates.warfarin_response_task`): "INR in
2-3 on the morning of day 29", from the covariates, the genotypes and the INRs measured
(with assay noise) in the first week, simulated by the trial engine with the Hamberg 2007
warfarin model (`surrogates.training_set`). Here each hospital treats its own patients its
own way:

- **ancestry mix** (IWPC race categories), and with it the **genotype frequencies**: CYP2C9
  and VKORC1 are drawn from the IWPC cohort's counts by race (`twins.Population.sample`);
  VKORC1 -1639A, for instance, is carried by most Asian and few Black patients (CPIC's
  allele frequency tables agree: rs9923231 T 0.87 in East Asians, 0.41 in Europeans, 0.11
  in Sub-Saharan Africans, ../shared/reference/pgx/FREQUENCIES.md);
- **age** range (a geriatric centre, a general hospital);
- **renal function**: the median serum creatinine scaled (`Hospital.renal`), which moves
  CrCL and eGFR (covariates the warfarin model does not use: a shift of the inputs that
  carries no signal, as real sites' case mixes do);
- **dosing practice**: the site's standard daily dose (3 mg at the East Asian hospital, 6 mg
  at the safety-net hospital, ...) and a lower dose from age 75 at some sites; the label is
  "in range on this site's regimen", so the positive rate differs between sites (label
  shift);
- **size** (Dirichlet-distributed shares of the patients: quantity skew).

`hospitals(k, n_total, seed)` makes k of them from five archetypes (`ARCHETYPES`), jittered
beyond the first five; `simulate_site` simulates one; `reference_schema` fixes the features
and their standardisation from a public reference cohort (simulated, no hospital's data);
`site_divergence` measures how non-IID the sites are (label Jensen-Shannon divergence,
covariate Jensen-Shannon divergence and standardised mean differences against the pooled
data, beside the same measures for an IID split of the same patients).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from twins.trials import Trial

ANCESTRIES: tuple[str, ...] = ("Asian", "Black or African American", "Unknown", "White")

#: The static features every hospital computes, in this order (missing ancestry columns
#: are 0), then the INRs measured at the first week's visits (`inr_day1`, `inr_day3`, ...).
STATIC_FEATURES: tuple[str, ...] = (
    "AGE",
    "WT",
    "HT",
    "SEX",
    "SCR",
    "CRCL",
    "EGFR",
    "BSA",
    "LBW",
    "CYP2C9_AS",
    "CYP2C9_12",
    "CYP2C9_13",
    "CYP2C9_22",
    "CYP2C9_23",
    "CYP2C9_33",
    "VKORC1_AG",
    "VKORC1_AA",
    "ancestry_Asian",
    "ancestry_Black_or_African_American",
    "ancestry_Unknown",
    "ancestry_White",
    "maintenance_dose",
)
#: The visits of the first week (days, as `DosingArm.visits`) and the periods observed.
VISITS: tuple[int, ...] = (1, 3, 5, 7)
OBSERVE = 7
DAYS = 28


@dataclasses.dataclass(frozen=True)
class Hospital:
    """One virtual hospital: `name`, `n` patients, `ancestry` (IWPC category -> fraction),
    `age` (low, high) years, `renal` (median serum creatinine relative to
    `twins.Demographics`' default; 1.4 = poorer renal function), `dose` (mg daily, the
    site's standard warfarin dose), `elderly_dose` (mg daily from age 75, or None) and
    `female_fraction`."""

    name: str
    n: int
    ancestry: Mapping[str, float]
    age: tuple[float, float]
    renal: float = 1.0
    dose: float = 5.0
    elderly_dose: float | None = None
    female_fraction: float = 0.5

    def __post_init__(self):
        if int(self.n) != self.n or self.n < 20:
            raise ValueError(f"Hospital {self.name!r}: n must be an integer >= 20, got {self.n}.")
        unknown = set(self.ancestry) - set(ANCESTRIES)
        if unknown:
            raise ValueError(f"Hospital {self.name!r}: unknown ancestries {sorted(unknown)}.")
        if not math.isclose(sum(self.ancestry.values()), 1.0, abs_tol=1e-9):
            raise ValueError(f"Hospital {self.name!r}: ancestry fractions must sum to 1.")
        if not self.renal > 0 or not self.dose > 0:
            raise ValueError(f"Hospital {self.name!r}: renal and dose must be positive.")

    def describe(self) -> str:
        mix = ", ".join(
            f"{a.split(' ')[0]} {f:.0%}" for a, f in sorted(self.ancestry.items()) if f >= 0.005
        )
        elderly = f", {self.elderly_dose:g} mg from 75" if self.elderly_dose else ""
        return (
            f"{mix}; age {self.age[0]:g}-{self.age[1]:g}; creatinine x{self.renal:.2f}; "
            f"{self.dose:g} mg daily{elderly}"
        )


#: Five kinds of site; `hospitals` takes them in turn and jitters them beyond the fifth.
ARCHETYPES: tuple[dict[str, Any], ...] = (
    {
        "name": "academic_north_europe",
        "ancestry": {"White": 0.92, "Asian": 0.04, "Black or African American": 0.04},
        "age": (18.0, 90.0),
        "renal": 1.0,
        "dose": 5.0,
        "elderly_dose": 4.0,
    },
    {
        "name": "east_asian_hospital",
        "ancestry": {"Asian": 0.9, "White": 0.05, "Unknown": 0.05},
        "age": (25.0, 85.0),
        "renal": 0.95,
        "dose": 3.0,
        "elderly_dose": None,
    },
    {
        "name": "urban_safety_net",
        "ancestry": {
            "Black or African American": 0.55,
            "White": 0.3,
            "Unknown": 0.1,
            "Asian": 0.05,
        },
        "age": (18.0, 80.0),
        "renal": 1.25,
        "dose": 6.0,
        "elderly_dose": None,
    },
    {
        "name": "geriatric_centre",
        "ancestry": {"White": 0.85, "Black or African American": 0.1, "Asian": 0.05},
        "age": (65.0, 95.0),
        "renal": 1.4,
        "dose": 4.0,
        "elderly_dose": 3.0,
    },
    {
        "name": "community_mixed",
        "ancestry": {
            "White": 0.6,
            "Black or African American": 0.2,
            "Asian": 0.1,
            "Unknown": 0.1,
        },
        "age": (30.0, 85.0),
        "renal": 1.1,
        "dose": 5.0,
        "elderly_dose": None,
    },
)

_MIN_SITE = 40


def hospitals(k: int, n_total: int, *, seed: int = 0) -> list[Hospital]:
    """`k` hospitals with `n_total` patients between them.

    Hospital i is archetype i mod 5 (`ARCHETYPES`); from the sixth on each is jittered:
    its ancestry mix redrawn from a Dirichlet around the archetype's (concentration 20),
    its age range shifted by up to 5 years, its creatinine scaled by a log-normal (SD 0.1)
    and its dose moved by -0.5, 0 or +0.5 mg. The sizes are `n_total` times Dirichlet(4)
    shares, at least 40 patients each."""
    if int(k) != k or k < 1:
        raise ValueError(f"hospitals: k must be an integer >= 1, got {k}.")
    if n_total < _MIN_SITE * k:
        raise ValueError(f"hospitals: n_total must be at least {_MIN_SITE * k} for {k} sites.")
    rng = np.random.default_rng((seed, 18))
    shares = rng.dirichlet(np.full(k, 4.0))
    spare = n_total - _MIN_SITE * k
    sizes = _MIN_SITE + np.floor(shares * spare).astype(int)
    sizes[: n_total - int(sizes.sum())] += 1  # the remainder, one each
    out = []
    for i in range(k):
        base = ARCHETYPES[i % len(ARCHETYPES)]
        spec = dict(base)
        if i >= len(ARCHETYPES):
            names = sorted(base["ancestry"])
            alpha = 20.0 * np.array([base["ancestry"][a] for a in names]) + 0.05
            mix = rng.dirichlet(alpha)
            spec["ancestry"] = {a: float(f) for a, f in zip(names, mix, strict=True)}
            shift = float(rng.uniform(-5.0, 5.0))
            low, high = base["age"]
            spec["age"] = (max(18.0, round(low + shift)), min(100.0, round(high + shift)))
            spec["renal"] = float(base["renal"] * np.exp(0.1 * rng.standard_normal()))
            spec["dose"] = float(base["dose"] + rng.choice([-0.5, 0.0, 0.5]))
        spec["ancestry"] = _normalised(spec["ancestry"])
        spec["name"] = f"H{i + 1:02d}_{base['name']}"
        out.append(Hospital(n=int(sizes[i]), **spec))
    return out


def _normalised(mix: Mapping[str, float]) -> dict[str, float]:
    total = sum(mix.values())
    return {a: f / total for a, f in mix.items()}


# ----------------------------------------------------------------------------- simulation


@dataclasses.dataclass(frozen=True)
class _SiteDose:
    """A site's dosing practice: `dose` mg daily, `elderly_dose` from age 75."""

    dose: float
    elderly_dose: float | None

    def __call__(self, cov):
        age = np.asarray(cov["AGE"], dtype=float)
        dose = np.full(age.shape, self.dose)
        if self.elderly_dose is not None:
            dose = np.where(age >= 75.0, self.elderly_dose, dose)
        return np.zeros((age.size, 0)), dose


@dataclasses.dataclass(frozen=True)
class _CycledDose:
    """The reference cohort's doses: 3, 4, 5, 6, 7.5 mg in turn (every practice seen)."""

    def __call__(self, cov):
        n = len(cov["ID"])
        return np.zeros((n, 0)), np.array([3.0, 4.0, 5.0, 6.0, 7.5])[np.arange(n) % 5]


def _trial(name: str, population, initial) -> Trial:
    import pkpd
    from twins import DosingArm, FinalLevel, drugs

    return Trial(
        name=name,
        drug=drugs.get("warfarin_hamberg2007"),
        population=population,
        arms=(DosingArm("site_practice", "site practice", "the site's warfarin regimen",
                        initial, visits=VISITS, dose_step=0.5),),
        endpoints=(FinalLevel("inr_end", f"INR on day {DAYS + 1} (noise-free)"),),
        days=DAYS,
        solver=pkpd.FixedStep(2.0),
        band_points=1,  # the bands are not used: no points within the days
    )  # fmt: skip


def site_trial(h: Hospital) -> Trial:
    """The trial engine's description of hospital `h`'s patients and practice."""
    from twins import Demographics, Population

    base = Demographics()
    demographics = dataclasses.replace(
        base,
        scr_median_male=base.scr_median_male * h.renal,
        scr_median_female=base.scr_median_female * h.renal,
    )
    population = functools.partial(
        Population.sample,
        ancestry=dict(h.ancestry),
        age=h.age,
        female_fraction=h.female_fraction,
        demographics=demographics,
    )
    return _trial(h.name, population, _SiteDose(h.dose, h.elderly_dose))


@dataclasses.dataclass(frozen=True)
class Site:
    """A hospital's simulated patients: `static` (the `STATIC_FEATURES` columns),
    `sequence` (n, 7, 3: dose, measured INR, measured flag per day of the first week), `y`
    (1: INR in 2-3 on day 29), `inr` (that INR) and `patients` (ids)."""

    hospital: Hospital
    static: pd.DataFrame
    sequence: np.ndarray
    y: np.ndarray
    inr: np.ndarray
    patients: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: Any) -> Site:
        index = np.asarray(index)
        return Site(
            self.hospital,
            self.static.iloc[index].reset_index(drop=True),
            self.sequence[index],
            self.y[index],
            self.inr[index],
            self.patients[index],
        )

    def split(self, test_fraction: float, *, seed: int) -> tuple[Site, Site]:
        """A random (train, test) split of the site's patients."""
        order = np.random.default_rng((seed, 7)).permutation(len(self))
        n_test = max(1, round(test_fraction * len(self)))
        return self.take(np.sort(order[n_test:])), self.take(np.sort(order[:n_test]))


#: Patients per compiled simulation: every site is simulated in chunks of this size (its n
#: rounded up, the extra patients dropped), so that sites of any size share one compiled
#: program. Patient i's draws depend on i alone, so the first n are the same patients as a
#: simulation of n.
_CHUNK = 256


def _site_from_trial(h: Hospital, trial: Trial, n: int, seed: int) -> Site:
    from .._data import training_set

    n_sim = -(-n // _CHUNK) * _CHUNK
    ts = training_set(trial, n_sim, seed=seed, observe=OBSERVE, chunk_size=_CHUNK)
    ts = ts.take(np.arange(min(n, len(ts))))
    static = ts.inputs.static.reindex(columns=list(STATIC_FEATURES), fill_value=0.0)
    static = static.astype(float)
    if not np.isfinite(static.to_numpy()).all():
        bad = [c for c in static if not np.isfinite(static[c]).all()]
        raise ValueError(f"site {h.name!r}: non-finite features {bad}.")
    assert ts.inputs.sequence is not None
    inr = ts.targets["inr_end"].to_numpy(dtype=float)
    y = ((inr >= 2.0) & (inr <= 3.0)).astype(float)
    return Site(h, static, np.asarray(ts.inputs.sequence, float), y, inr, ts.patients)


def simulate_site(h: Hospital, *, seed: int = 0, index: int = 0) -> Site:
    """Hospital `h`'s patients simulated by the trial engine (`surrogates.training_set`,
    seed `seed * 1000 + index + 1`: every site its own patients)."""
    return _site_from_trial(h, site_trial(h), h.n, seed * 1000 + index + 1)


# ----------------------------------------------------------------------------- features


@dataclasses.dataclass(frozen=True)
class Schema:
    """The features and their standardisation, fixed before training from a public reference
    cohort: `columns` (the static features and `inr_day1`, `_day3`, ...), `mean`, `sd`; and the
    sequence channels' `sequence_mean`, `sequence_sd`."""

    columns: tuple[str, ...]
    mean: np.ndarray
    sd: np.ndarray
    sequence_mean: np.ndarray
    sequence_sd: np.ndarray

    def tabular(self, site: Site) -> np.ndarray:
        """(n, p) float32: the standardised flat features of `site` (the MLP's inputs)."""
        return ((_flat(site) - self.mean) / self.sd).astype(np.float32)

    def static_sequence(self, site: Site) -> tuple[np.ndarray, np.ndarray]:
        """The LSTM's inputs: standardised static features (n, 22) and sequence (n, 7, 3)."""
        k = len(STATIC_FEATURES)
        static = (site.static.to_numpy(dtype=float) - self.mean[:k]) / self.sd[:k]
        seq = (site.sequence - self.sequence_mean) / self.sequence_sd
        return static.astype(np.float32), seq.astype(np.float32)


def _visit_periods() -> list[int]:
    """The 0-based periods of the first week's visits (day d is period d - 1)."""
    return [v - 1 for v in VISITS if v - 1 < OBSERVE]


def _flat(site: Site) -> np.ndarray:
    inrs = site.sequence[:, _visit_periods(), 1]
    return np.concatenate([site.static.to_numpy(dtype=float), inrs], axis=1)


@functools.lru_cache(maxsize=4)
def reference_schema(n: int = 1000, *, seed: int = 0) -> Schema:
    """The features' standardisation from a public reference cohort: `n` simulated patients,
    a quarter of each ancestry, ages 18-95, the default creatinine, doses 3, 4, 5, 6 and 7.5
    mg in turn (no hospital's records: the same numbers at every site, and nothing about
    any site's patients released)."""
    from twins import Population

    h = Hospital("reference", n, {a: 0.25 for a in ANCESTRIES}, (18.0, 95.0), dose=5.0)
    population = functools.partial(Population.sample, ancestry=dict(h.ancestry), age=h.age)
    trial = _trial("reference", population, _CycledDose())
    site = _site_from_trial(h, trial, n, 10**6 + seed)
    flat = _flat(site)
    mean, sd = flat.mean(axis=0), flat.std(axis=0)
    sd = np.where(sd > 1e-9, sd, 1.0)
    smean = site.sequence.mean(axis=(0, 1))
    ssd = site.sequence.std(axis=(0, 1))
    ssd = np.where(ssd > 1e-9, ssd, 1.0)
    columns = (*STATIC_FEATURES, *(f"inr_day{p + 1}" for p in _visit_periods()))
    return Schema(columns, mean, sd, smean, ssd)


# ----------------------------------------------------------------------------- divergence


def _js_bits(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (bits, 0 to 1) of two discrete distributions."""
    p = p / p.sum()
    q = q / q.sum()
    m = 0.5 * (p + q)

    def kl(a, b):
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / b[nz])))

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def _histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of `values` between consecutive `edges` (and below the first, above the last)."""
    idx = np.searchsorted(edges, values, side="right")
    return np.bincount(idx, minlength=edges.size + 1).astype(float)


def _divergences(parts: Sequence[np.ndarray], labels: Sequence[np.ndarray], bins: int):
    pooled = np.concatenate(parts)
    pooled_y = np.concatenate(labels)
    sd = pooled.std(axis=0)
    mean = pooled.mean(axis=0)
    edges = []
    for j in range(pooled.shape[1]):
        col = pooled[:, j]
        levels = np.unique(col)
        if levels.size <= bins:
            edges.append(0.5 * (levels[1:] + levels[:-1]))
        else:
            qs = np.quantile(col, np.linspace(0, 1, bins + 1)[1:-1])
            edges.append(np.unique(qs))
    pooled_hist = [_histogram(pooled[:, j], edges[j]) for j in range(pooled.shape[1])]
    rate = pooled_y.mean()
    rows = []
    for x, y in zip(parts, labels, strict=True):
        js = [_js_bits(_histogram(x[:, j], edges[j]), pooled_hist[j]) for j in range(x.shape[1])]
        smd = np.abs(x.mean(axis=0) - mean) / np.where(sd > 0, sd, 1.0)
        rows.append(
            {
                "n": len(y),
                "positives": float(y.mean()),
                "label_js": _js_bits(
                    np.array([y.mean(), 1 - y.mean()]), np.array([rate, 1 - rate])
                ),
                "covariate_js": float(np.mean(js)),
                "max_smd": float(smd.max()),
            }
        )
    return rows


def site_divergence(sites: Sequence[Site], *, bins: int = 10, seed: int = 0) -> pd.DataFrame:
    """How different the sites are, each against the pooled patients of all of them.

    Per site: `n`, `positives` (the share in range), `label_js` (Jensen-Shannon divergence
    in bits between the site's label distribution and the pooled one), `covariate_js` (the
    mean over the features of the Jensen-Shannon divergence between the site's histogram
    and the pooled one, on 10 pooled-quantile bins, or the levels of a discrete feature),
    `max_smd` (the largest absolute standardised mean difference of a feature), and the
    same three for an IID split of the same patients into sites of the same sizes
    (`iid_label_js`, `iid_covariate_js`, `iid_max_smd`): the floor that sampling alone
    gives. A last row `federation` holds the size-weighted means.

    A simulation-side diagnostic: it pools the sites' features, which a real federation
    would not do without its own privacy measures."""
    parts = [_flat(s) for s in sites]
    labels = [s.y for s in sites]
    rows = _divergences(parts, labels, bins)
    pooled, pooled_y = np.concatenate(parts), np.concatenate(labels)
    order = np.random.default_rng((seed, 11)).permutation(len(pooled_y))
    cuts = np.cumsum([len(y) for y in labels])[:-1]
    iid = _divergences(
        [pooled[i] for i in np.split(order, cuts)],
        [pooled_y[i] for i in np.split(order, cuts)],
        bins,
    )
    for row, base in zip(rows, iid, strict=True):
        for key in ("label_js", "covariate_js", "max_smd"):
            row[f"iid_{key}"] = base[key]
    frame = pd.DataFrame(rows, index=[s.hospital.name for s in sites])
    sizes = frame["n"].to_numpy(dtype=float)
    w = sizes / sizes.sum()
    total = {c: float(np.dot(frame[c].to_numpy(dtype=float), w)) for c in frame.columns if c != "n"}
    total["n"] = int(sizes.sum())
    total["positives"] = float(pooled_y.mean())
    frame.loc["federation"] = pd.Series(total)
    frame["n"] = frame["n"].astype(int)
    frame.index.name = "site"
    return frame
