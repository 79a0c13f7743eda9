"""twins: patients, cohorts and digital twins (being built).

Will hold covariates, CPIC genotype -> phenotype, the drug library, virtual populations,
`DigitalTwin`, `Trial`, input/output (NONMEM, FHIR R4, streams), governance, reports and the
`twins` command line. Today it holds the command line with its `demo` job.
"""
