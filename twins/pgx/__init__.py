"""twins.pgx: CPIC genotype -> activity score -> phenotype.

`phenotype(gene, diplotype)` reads a diplotype as a lab reports it and returns CPIC's activity
score and phenotype, for CYP2D6 (duplications such as `*1x2` included), CYP2C9, CYP2C19
(function-based) and VKORC1 (rs9923231, -1639G>A). The CPIC tables ship with the package
(`twins/pgx/data/`, see `source(gene)` for their version and licence). Where CPIC's diplotype
table lists a diplotype its row is the answer; otherwise CPIC's rules are applied to the allele
activity values or functions of the same release:

- CYP2D6: activity score = sum of the activity values of all gene copies; `*AxN` counts N
  copies of `*A`; `x≥3` and `xN` (unknown copy number, at least 2) give a lower bound.
  AS 0 Poor, 0.25-1 Intermediate, 1.25-2.25 Normal, > 2.25 Ultrarapid Metabolizer
  (Caudle 2020); a lower bound that leaves the phenotype open is Indeterminate.
- CYP2C9: AS = sum of the two activity values; 0-0.5 Poor, 1-1.5 Intermediate, 2 Normal
  (Theken 2020).
- CYP2C19: from the pair of allele functions (Lee 2022); no activity score.
- VKORC1: `-1639 GG`, `-1639 AG` or `-1639 AA` (Johnson 2017); no activity score.
- An allele of uncertain or unknown function: `Indeterminate`, no score.

No multipliers on model parameters live here: phenotypes act on parameters through each drug's
published covariate model.

References: Caudle KE et al. Standardizing CYP2D6 genotype to phenotype translation. Clin
Transl Sci 2020;13(1):116-124. Theken KN et al. CPIC guideline for CYP2C9 and NSAIDs. Clin
Pharmacol Ther 2020;108(2):191-200. Lee CR et al. CPIC guideline for CYP2C19 genotype and
clopidogrel therapy: 2022 update. Clin Pharmacol Ther 2022;112(5):959-967. Johnson JA et al.
CPIC guideline for pharmacogenetics-guided warfarin dosing: 2017 update. Clin Pharmacol Ther
2017;102(3):397-404.
"""

from ._lookup import PhenotypeResult as PhenotypeResult
from ._lookup import genes as genes
from ._lookup import phenotype as phenotype
from ._lookup import source as source
from ._tables import TableSource as TableSource

__all__ = ["PhenotypeResult", "TableSource", "genes", "phenotype", "source"]
