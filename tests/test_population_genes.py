"""Virtual populations with every gene: `Population.sample` against CPIC's allele frequency
tables.

What is checked, and against what (nothing here is computed by the code under test):

- the shipped tables are byte-identical to the project's reference copies, and
  `twins.cpic_allele_frequencies()` holds exactly their numbers (read here with `csv`);
- sampled allele frequencies, and phenotype frequencies, by CPIC group, against the
  frequencies the tables imply. The implied phenotype frequencies are computed here from the
  allele frequencies and CPIC's own diplotype -> phenotype tables (the CSV files, read with
  `csv`, not through `twins.pgx`), under Hardy-Weinberg equilibrium; alleles that CPIC's
  table leaves out because their function is uncertain (no activity value) count as
  Indeterminate, as CPIC does. Each count must lie in its binomial acceptance interval at n
  (for common cells, +- z standard errors, sqrt(p(1 - p) / n)), with z from a family-wise
  significance level of 0.001 fixed in advance, Bonferroni-split over every comparison;
- genotype proportions against Hardy-Weinberg proportions (chi-square, same level);
- the IWPC race -> CPIC group mapping is the nearest group in the allele frequencies both
  sources give, recomputed here;
- bad frequency tables are refused, naming the gene, group and allele;
- the warfarin cohorts are those of the sampler before CPIC genes were added: the earlier
  sampler is written out again here, step by step, and must give the same bits.
"""

import csv
import filecmp
import math
from fractions import Fraction
from importlib import resources
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import twins
from twins import Population

DATA = resources.files("twins") / "data"
PGX_DATA = resources.files("twins.pgx") / "data"
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "pgx"
FILES = {
    "CYP2C19": "CYP2C19_allele_frequencies_2026-03-13.csv",
    "CYP2C9": "CYP2C9_allele_frequencies_2026-03-13.csv",
    "CYP2D6": "CYP2D6_allele_frequencies_2026-03-13.csv",
    "VKORC1": "VKORC1_allele_frequencies_2026-08-19.csv",
}
DIPLOTYPE_FILES = {
    "CYP2C19": "CPIC_CYP2C19_diplotype_phenotype_2025-11-05.csv",
    "CYP2C9": "CPIC_CYP2C9_diplotype_phenotype_2025-11-05.csv",
    "CYP2D6": "CPIC_CYP2D6_diplotype_phenotype_2024-08-27.csv",
}
C, T = "rs9923231 reference (C)", "rs9923231 variant (T)"
GROUPS = (
    "African American/Afro-Caribbean",
    "American",
    "Central/South Asian",
    "East Asian",
    "European",
    "Latino",
    "Near Eastern",
    "Oceanian",
    "Sub-Saharan African",
)
ALPHA = 1e-3  # family-wise significance level of each test below, fixed in advance
N = 20_000  # patients per group


def _rows(gene: str) -> list[dict[str, str]]:
    with (DATA / FILES[gene]).open("r", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _table_frequencies() -> dict[str, dict[str, dict[str, float]]]:
    """gene -> group -> allele -> frequency, straight from the CSV files; VKORC1's C is 1 - T."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for gene in FILES:
        for row in _rows(gene):
            out.setdefault(gene, {}).setdefault(row["population"], {})[row["allele"]] = float(
                row["frequency"]
            )
    for group, table in out["VKORC1"].items():
        out["VKORC1"][group] = {C: 1.0 - table[T], T: table[T]}
    return out


def _diplotype_phenotypes(gene: str) -> dict[frozenset, str]:
    """CPIC's diplotype -> phenotype rows, keyed by the unordered pair of alleles."""
    with (PGX_DATA / DIPLOTYPE_FILES[gene]).open("r", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {frozenset(r["diplotype"].split("/")): r["phenotype"] for r in rows}


def _cyp2d6_activity() -> dict[str, str]:
    import json

    data = json.loads(
        (PGX_DATA / "CPIC_CYP2D6_alleles_activity_2024-08-27.json").read_text("utf-8")
    )
    return {a["name"]: a["activityValue"] for a in data["namedAlleles"]}


def _implied_phenotypes(gene: str, frequencies: dict[str, float]) -> dict[str, float]:
    """P(phenotype) = sum over ordered allele pairs of p_a p_b, phenotype from CPIC's table."""
    if gene == "VKORC1":
        c, t = frequencies[C], frequencies[T]
        return {"-1639 GG": c * c, "-1639 AG": 2 * c * t, "-1639 AA": t * t}
    table = _diplotype_phenotypes(gene)
    listed = {allele for pair in table for allele in pair}
    activity = _cyp2d6_activity() if gene == "CYP2D6" else {}
    out: dict[str, float] = {}
    for a, pa in frequencies.items():
        for b, pb in frequencies.items():
            if a in listed and b in listed:
                label = table[frozenset((a, b))]
            else:
                # CPIC lists every pair of alleles that have an activity value; the others
                # are of uncertain function (activity n/a): Indeterminate.
                assert gene == "CYP2D6", (gene, a, b)
                assert activity[a if a not in listed else b] == "n/a", (a, b)
                label = "Indeterminate"
            out[label] = out.get(label, 0.0) + pa * pb
    return out


def _alleles(gene: str, genotype: str) -> tuple[str, str]:
    if gene == "VKORC1":  # '-1639 AG': G = C (reference), A = T (variant)
        pair = genotype.split()[1]
        return tuple(C if x == "G" else T for x in pair)  # type: ignore[return-value]
    first, second = genotype.split("/")
    return first, second


def _inside(count: int, n: int, p: float, alpha: float) -> bool:
    """Whether `count` of `n` lies in the two-sided binomial(n, p) acceptance interval at
    `alpha` (for common cells the same as p +- z sqrt(p (1 - p) / n))."""
    low = stats.binom.ppf(alpha / 2, n, p)
    high = stats.binom.isf(alpha / 2, n, p)
    return low <= count <= high


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    """N patients of each CPIC group, every gene from CPIC's frequencies."""
    population = Population.sample(
        N * len(GROUPS),
        key=jax.random.key(19),
        ancestry={g: 1 / len(GROUPS) for g in GROUPS},
        genes=("CYP2C19", "CYP2C9", "CYP2D6"),
    )
    frame = population.to_dataframe()
    cov = population.covariates()
    for gene in ("CYP2C19", "CYP2C9", "CYP2D6"):
        frame[f"{gene}_PHENOTYPE"] = cov[f"{gene}_PHENOTYPE"]
        frame[f"{gene}_AS"] = cov[f"{gene}_AS"]
    return frame


@pytest.fixture(scope="module")
def vkorc1() -> pd.DataFrame:
    groups = [g for g in GROUPS if g != "Oceanian"]  # CPIC gives no Oceanian VKORC1 value
    population = Population.sample(
        N * len(groups), key=jax.random.key(20), ancestry={g: 1 / len(groups) for g in groups},
        genes=("VKORC1",),
    )  # fmt: skip
    return population.to_dataframe()


# --- the shipped tables ------------------------------------------------------------------------


def test_shipped_tables_are_the_reference_copies():
    if not REFERENCE.is_dir():
        pytest.skip("../shared/reference/pgx is not present")
    for name in FILES.values():
        with resources.as_file(DATA / name) as shipped:
            assert filecmp.cmp(shipped, REFERENCE / name, shallow=False), name


def test_cpic_allele_frequencies_hold_the_files_numbers():
    expected = _table_frequencies()
    shipped = twins.cpic_allele_frequencies()
    assert set(shipped) == set(FILES)
    for gene, by_group in expected.items():
        assert set(shipped[gene]) == set(by_group), gene
        for group, table in by_group.items():
            assert dict(shipped[gene][group]) == table, (gene, group)
            # CPIC's *1 is 1 minus the rest: every group sums to 1 (CPIC rounds: 2e-7).
            assert math.fsum(table.values()) == pytest.approx(1.0, abs=1e-6), (gene, group)
    assert set(shipped["CYP2D6"]["European"]) >= {"*1x2", "*2x≥3", "*4x2"}
    assert "Oceanian" not in shipped["VKORC1"]
    with pytest.raises(TypeError):
        shipped["CYP2D6"]["European"]["*1"] = 0.5  # type: ignore[index]


def test_iwpc_races_map_to_the_nearest_cpic_group():
    """The three allele frequencies both sources give: CYP2C9*2, *3 and VKORC1 A (= T)."""
    freq = _table_frequencies()
    with (DATA / "IWPC_derived_genotype_frequencies_by_race.csv").open(encoding="utf-8") as f:
        iwpc = {row["race_OMB"]: row for row in csv.DictReader(f)}
    nearest = {}
    for race, row in iwpc.items():
        mine = np.array(
            [
                float(row["CYP2C9_star2_allele_freq"]),
                float(row["CYP2C9_star3_allele_freq"]),
                float(row["VKORC1_1639A_allele_freq"]),
            ]
        )
        distance = {}
        for g in freq["VKORC1"]:
            cpic = [freq["CYP2C9"][g].get("*2", 0.0), freq["CYP2C9"][g].get("*3", 0.0)]
            distance[g] = float(np.linalg.norm(mine - [*cpic, freq["VKORC1"][g][T]]))
        nearest[race] = min(distance, key=distance.__getitem__)
    assert dict(twins.IWPC_CPIC_GROUPS) == nearest
    assert twins.CPIC_GROUPS == GROUPS


# --- sampled against implied frequencies --------------------------------------------------------


def test_sampled_allele_frequencies_match_the_tables(cohort, vkorc1):
    freq = _table_frequencies()
    cells = []
    for gene, frame in (("CYP2C19", cohort), ("CYP2C9", cohort), ("CYP2D6", cohort),
                        ("VKORC1", vkorc1)):  # fmt: skip
        for group, table in freq[gene].items():
            rows = frame[frame["ancestry"] == group][gene]
            counts: dict[str, int] = {}
            for genotype in rows:
                for allele in _alleles(gene, genotype):
                    counts[allele] = counts.get(allele, 0) + 1
            assert set(counts) <= set(table), (gene, group, set(counts) - set(table))
            for allele, p in table.items():
                cells.append((gene, group, allele, counts.get(allele, 0), 2 * len(rows), p))
    alpha = ALPHA / len(cells)
    bad = [c for c in cells if not _inside(c[3], c[4], c[5], alpha)]
    assert not bad, bad
    # CYP2D6 copy-number alleles are drawn (European *1x2: 0.0082 of 40,000 chromosomes).
    european = cohort[cohort["ancestry"] == "European"]["CYP2D6"]
    assert european.str.contains("x").sum() > 0


def test_sampled_phenotype_frequencies_match_the_implied_ones(cohort, vkorc1):
    freq = _table_frequencies()
    cells = []
    for gene, frame, column in (
        ("CYP2C19", cohort, "CYP2C19_PHENOTYPE"),
        ("CYP2C9", cohort, "CYP2C9_PHENOTYPE"),
        ("CYP2D6", cohort, "CYP2D6_PHENOTYPE"),
        ("VKORC1", vkorc1, "VKORC1"),
    ):
        for group, table in freq[gene].items():
            implied = _implied_phenotypes(gene, table)
            assert sum(implied.values()) == pytest.approx(1.0, abs=1e-6)
            observed = frame[frame["ancestry"] == group][column].value_counts()
            assert set(observed.index) <= set(implied), (gene, group)
            n = int(observed.sum())
            for label, p in implied.items():
                cells.append((gene, group, label, int(observed.get(label, 0)), n, p))
    alpha = ALPHA / len(cells)
    bad = [c for c in cells if not _inside(c[3], c[4], c[5], alpha)]
    assert not bad, bad
    # The textbook contrasts come out (CPIC: CYP2C19 PM ~ 13% East Asian vs ~2% European;
    # CYP2D6 UM mostly from duplications).
    by = {c[:3]: c[3] / c[4] for c in cells}
    assert by[("CYP2C19", "East Asian", "Poor Metabolizer")] > 0.1
    assert by[("CYP2C19", "European", "Poor Metabolizer")] < 0.04


def test_cyp2d6_duplications_add_their_copies_activity(cohort):
    """Activity score of sampled CYP2D6 diplotypes with a duplication: the sum of the two
    haplotypes' CPIC activity values (the JSON's own value for `*AxN`), checked here."""
    activity = _cyp2d6_activity()
    rows = cohort[cohort["CYP2D6"].str.contains("x")]
    assert len(rows) > 100
    checked = 0
    for genotype, score, label in zip(
        rows["CYP2D6"], rows["CYP2D6_AS"], rows["CYP2D6_PHENOTYPE"], strict=True
    ):
        values = [activity[a] for a in genotype.split("/")]
        if "n/a" in values:
            assert label == "Indeterminate" and math.isnan(score), genotype
            continue
        bound = any(v.startswith("≥") for v in values)
        total = sum(Fraction(v.lstrip("≥")) for v in values)
        assert score == float(total), genotype
        if not bound:
            expected = (
                "Poor Metabolizer" if total == 0
                else "Intermediate Metabolizer" if total < Fraction(5, 4)
                else "Normal Metabolizer" if total <= Fraction(9, 4)
                else "Ultrarapid Metabolizer"
            )  # fmt: skip  # Caudle 2020, Table 2
            assert label == expected, genotype
        checked += 1
    assert checked > 100


def test_hardy_weinberg_genotype_proportions(cohort):
    """Chi-square of the diplotype counts against p_a^2 and 2 p_a p_b, alleles outside the
    three commonest of the group pooled as 'other', classes with expected < 5 pooled."""
    freq = _table_frequencies()
    tests = []
    for gene in ("CYP2C19", "CYP2C9", "CYP2D6"):
        for group, table in freq[gene].items():
            top = sorted(table, key=lambda a: -table[a])[:3]
            p = {a: table[a] for a in top}
            p["other"] = 1.0 - sum(p.values())
            names = list(p)
            expected = {}
            for i, a in enumerate(names):
                for b in names[i:]:
                    expected[(a, b)] = p[a] * p[b] * (1 if a == b else 2)
            observed = dict.fromkeys(expected, 0)
            rows = cohort[cohort["ancestry"] == group][gene]
            for genotype in rows:
                pair = sorted(
                    (x if x in top else "other" for x in genotype.split("/")), key=names.index
                )
                observed[(pair[0], pair[1])] += 1
            n = len(rows)
            small = [k for k in expected if n * expected[k] < 5]
            obs = [observed[k] for k in expected if k not in small]
            exp = [n * expected[k] for k in expected if k not in small]
            if small:
                obs.append(sum(observed[k] for k in small))
                exp.append(n * sum(expected[k] for k in small))
            statistic = sum((o - e) ** 2 / e for o, e in zip(obs, exp, strict=True))
            tests.append((gene, group, statistic, len(obs) - 1))
    alpha = ALPHA / len(tests)
    bad = [t for t in tests if t[2] > stats.chi2.isf(alpha, t[3])]
    assert not bad, bad


# --- sources by ancestry ------------------------------------------------------------------------


def test_iwpc_races_draw_the_cpic_genes_of_their_group():
    white = Population.sample(3000, key=4, ancestry="White").to_dataframe()
    european = Population.sample(3000, key=4, ancestry="European").to_dataframe()
    # Same key, same stream and frequencies for the CPIC genes: the same diplotypes.
    assert (white["CYP2D6"] == european["CYP2D6"]).all()
    assert (white["CYP2C19"] == european["CYP2C19"]).all()
    # CYP2C9 of White patients comes from the IWPC counts (only *1, *2, *3) ...
    assert set(white["CYP2C9"]) <= {"*1/*1", "*1/*2", "*1/*3", "*2/*2", "*2/*3", "*3/*3"}
    assert not (white["CYP2C9"] == european["CYP2C9"]).all()
    # ... unless CPIC's frequencies are asked for.
    cpic = Population.sample(3000, key=4, ancestry="White", genotype_source="cpic")
    assert (cpic.to_dataframe()["CYP2C9"] == european["CYP2C9"]).all()
    assert (cpic.to_dataframe()["VKORC1"] == european["VKORC1"]).all()
    assert cpic.genes == ("CYP2C19", "CYP2C9", "CYP2D6", "VKORC1")


def test_adding_cpic_genes_leaves_every_other_draw_as_it_was():
    kwargs = dict(ancestry={"White": 0.7, "Asian": 0.3}, medications={"amiodarone": 0.1})
    every = Population.sample(2000, key=9, **kwargs).to_dataframe()
    iwpc_only = Population.sample(2000, key=9, genes=("CYP2C9", "VKORC1"), **kwargs)
    pd.testing.assert_frame_equal(every[iwpc_only.to_dataframe().columns], iwpc_only.to_dataframe())
    assert list(every.columns).count("CYP2D6") == 1 and every["CYP2D6"].notna().all()


# --- bad tables ---------------------------------------------------------------------------------


def _write(tmp_path: Path, rows: list[dict[str, str]]) -> Path:
    path = tmp_path / "frequencies.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_read_allele_frequencies_reads_a_cpic_table(tmp_path):
    table = twins.read_allele_frequencies(_write(tmp_path, _rows("CYP2D6")))
    assert dict(table["CYP2D6"]["European"]) == _table_frequencies()["CYP2D6"]["European"]
    # Without its *1 row a group gets CPIC's *1: 1 minus the other alleles.
    rows = [
        r for r in _rows("CYP2C19") if not (r["allele"] == "*1" and r["population"] == "Latino")
    ]
    latino = twins.read_allele_frequencies(_write(tmp_path, rows))["CYP2C19"]["Latino"]
    others = math.fsum(f for a, f in _table_frequencies()["CYP2C19"]["Latino"].items() if a != "*1")
    assert latino["*1"] == 1.0 - others
    # The VKORC1 file gives T only: C is 1 - T.
    vk = twins.read_allele_frequencies(_write(tmp_path, _rows("VKORC1")))["VKORC1"]["East Asian"]
    assert vk == {C: 1.0 - 0.8664911, T: 0.8664911}


def test_tables_summing_above_one_or_naming_unknown_alleles_are_refused(tmp_path):
    rows = _rows("CYP2D6")
    for row in rows:
        if row["allele"] == "*4" and row["population"] == "European":
            row["frequency"] = str(float(row["frequency"]) + 0.05)
    with pytest.raises(ValueError, match=r"CYP2D6, population 'European'.*sum to 1.*more than "
                       r"1.*\*4 0\.2348"):  # fmt: skip
        twins.read_allele_frequencies(_write(tmp_path, rows))
    rows = _rows("CYP2D6")
    rows.append({**rows[0], "allele": "*999", "population": "East Asian", "frequency": "0.0"})
    with pytest.raises(
        ValueError,
        match=rf"line {len(rows) + 1} \(CYP2D6, population 'East Asian', allele '\*999'\).*"
        r"Unknown CYP2D6 allele '\*999'",
    ):
        twins.read_allele_frequencies(_write(tmp_path, rows))
    rows = _rows("CYP2C9")
    rows[3]["frequency"] = "1.5"
    with pytest.raises(ValueError, match=r"CYP2C9, population .*must be from 0 to 1, got 1\.5"):
        twins.read_allele_frequencies(_write(tmp_path, rows))
    rows = _rows("VKORC1")
    rows[0]["allele"] = "rs9923231 variant (A)"
    with pytest.raises(ValueError, match=r"unknown VKORC1 allele 'rs9923231 variant \(A\)'"):
        twins.read_allele_frequencies(_write(tmp_path, rows))


@pytest.mark.parametrize(
    "frequencies, message",
    [
        (
            {"CYP2C19": {"European": {"*1": 0.9, "*2": 0.2}}},
            r"allele_frequencies\['CYP2C19'\]\['European'\]: allele frequencies must sum to 1 "
            r"\(within 1e-06\), got 1\.1.* \(more than 1\) from \*1 0\.9, \*2 0\.2",
        ),
        (
            {"CYP2D6": {"European": {"*1": 0.5, "*4x≥3": 0.25, "*77777": 0.25}}},
            r"allele_frequencies\['CYP2D6'\]\['European'\]: Unknown CYP2D6 allele '\*77777'",
        ),
        (
            {"VKORC1": {"European": {"rs9923231 reference (C)": 0.5, "G": 0.5}}},
            r"allele_frequencies\['VKORC1'\]\['European'\]: unknown VKORC1 allele 'G'",
        ),
    ],
)
def test_bad_allele_frequencies_arguments_are_refused(frequencies, message):
    with pytest.raises(ValueError, match=message):
        Population.sample(10, key=0, ancestry="European", allele_frequencies=frequencies)


def test_a_gene_cpic_has_no_frequencies_for_is_refused():
    with pytest.raises(ValueError, match=r"CPIC gives no VKORC1 allele frequencies for 'Oceanian'"):
        Population.sample(10, key=0, ancestry="Oceanian")
    assert Population.sample(10, key=0, ancestry="Oceanian", genes=("CYP2D6",)).genes == ("CYP2D6",)
    with pytest.raises(ValueError, match=r"genotype_source must be 'iwpc' .* or 'cpic'"):
        Population.sample(10, key=0, genotype_source="IWPC")


# --- the warfarin cohorts are unchanged ---------------------------------------------------------


def _earlier_sampler(n, seed, fractions, age, medications):
    """`Population.sample` before CPIC genes were added, written out again: the draws in their
    order from the key's NumPy generator (ancestry, sex, age, three truncated normals, CYP2C9
    and VKORC1 from the IWPC counts group by group, medications by name)."""
    data = jax.random.key_data(jax.random.key(seed))
    rng = np.random.default_rng(np.asarray(data, dtype=np.uint32).tolist())
    labels = list(fractions)
    which = rng.choice(len(labels), size=n, p=np.array([fractions[g] for g in labels]))
    female = rng.random(n) < 0.5
    ages = rng.uniform(*age, size=n)
    z = rng.standard_normal((3, n))
    outside = np.abs(z) > 4.0
    if outside.any():
        child = rng.spawn(1)[0]
        while outside.any():
            z[outside] = child.standard_normal(int(outside.sum()))
            outside = np.abs(z) > 4.0
    d = twins.Demographics()

    def pick(male, fem):
        return np.where(female, fem, male)

    height = (
        pick(d.height_mean_male, d.height_mean_female)
        + pick(d.height_sd_male, d.height_sd_female) * z[0]
    )
    sigma = np.sqrt(np.log1p(pick(d.bmi_cv_male, d.bmi_cv_female) ** 2))
    bmi = np.exp(np.log(pick(d.bmi_mean_male, d.bmi_mean_female)) - sigma**2 / 2 + sigma * z[1])
    scr = pick(d.scr_median_male, d.scr_median_female) * np.exp(
        pick(d.scr_log_sd_male, d.scr_log_sd_female) * z[2]
    )
    with (DATA / "IWPC_derived_genotype_frequencies_by_race.csv").open(encoding="utf-8") as f:
        iwpc = {row["race_OMB"]: row for row in csv.DictReader(f)}
    columns = {
        "CYP2C9": [f"CYP2C9_{x}" for x in ("*1/*1", "*1/*2", "*1/*3", "*2/*2", "*2/*3", "*3/*3")],
        "VKORC1": ["VKORC1_GG", "VKORC1_AG", "VKORC1_AA"],
    }
    genes = {}
    for gene, names in columns.items():
        out = np.empty(n, dtype=object)
        for g, group in enumerate(labels):
            rows = np.flatnonzero(which == g)
            w = np.array([float(iwpc[group][c]) for c in names])
            labels_ = [c.split("_", 1)[1] if gene == "CYP2C9" else "-1639 " + c[-2:] for c in names]
            out[rows] = np.array(labels_, dtype=object)[
                rng.choice(len(names), size=len(rows), p=w / w.sum())
            ]
        genes[gene] = out
    meds = {m: rng.random(n) < p for m, p in sorted(medications.items())}
    return {
        "ancestry": np.array(labels, dtype=object)[which],
        "sex": np.where(female, "female", "male"),
        "age": ages,
        "height": height,
        "weight": bmi * (height / 100.0) ** 2,
        "serum_creatinine": scr,
        **genes,
        **{f"med_{m}": v for m, v in meds.items()},
    }


@pytest.mark.parametrize("seed", [0, 3])
def test_warfarin_cohorts_are_those_of_the_earlier_sampler(seed):
    # The EU-PACT virtual trial's population (twins.trials eupact_trial).
    fractions = {"White": 0.985, "Black or African American": 0.0075, "Asian": 0.0075}
    kwargs = dict(ancestry=fractions, age=(45.0, 89.0), medications={"amiodarone": 0.03})
    frame = Population.sample(4000, key=seed, **kwargs).to_dataframe()
    earlier = _earlier_sampler(4000, seed, fractions, (45.0, 89.0), {"amiodarone": 0.03})
    for name, values in earlier.items():
        assert np.array_equal(frame[name].to_numpy(), values), name  # bit for bit
    # The CPIC genes are there too, and are realistic for these ancestries.
    assert frame["CYP2D6"].notna().all() and frame["CYP2C19"].notna().all()


# --- the CYP2C19 and CYP2D6 drugs get genotyped patients ----------------------------------------


def test_cyp2c19_and_cyp2d6_drugs_draw_their_strata_from_the_tables():
    """Vernakalant's Mao 2012 CYP2D6 strata and citalopram's Akil 2016 CYP2C19 groups in a
    default White cohort, against the shares the European tables imply."""
    n = 3000
    population = Population.sample(n, key=5, ancestry="White")
    freq = _table_frequencies()
    cyp2d6 = _implied_phenotypes("CYP2D6", freq["CYP2D6"]["European"])
    cyp2c19 = _implied_phenotypes("CYP2C19", freq["CYP2C19"]["European"])
    vernakalant = twins.drug_covariates(twins.drugs.get("vernakalant_mao2012"), population)
    citalopram = twins.drug_covariates(twins.drugs.get("citalopram_akil2016"), population)
    poor, normal = "Poor Metabolizer", ("Normal", "Intermediate", "Ultrarapid")
    impm = [k for k in cyp2c19 if "Intermediate" in k or "Poor" in k]
    cells = [
        (int(vernakalant["CYP2D6_PM"].sum()), cyp2d6[poor]),
        (int(vernakalant["CYP2D6_EMUM"].sum()), sum(cyp2d6[f"{k} Metabolizer"] for k in normal)),
        (int(citalopram["CYP2C19_IMPM"].sum()), sum(cyp2c19[k] for k in impm)),
        (int(citalopram["CYP2C19_MISSING"].sum()), cyp2c19.get("Indeterminate", 0.0)),
    ]
    for count, p in cells:
        assert _inside(count, n, p, ALPHA / len(cells)), (count, n, p)
    assert vernakalant["CYP2D6_PM"].sum() > 0.03 * n  # no longer all "not genotyped"
