"""calibration: statistics for pkpd models (not built yet).

Will hold the population model (typical values, between-subject and inter-occasion
variability, residual error), likelihoods (BLQ too), estimators (MAP, Laplace, NUTS, SVI with
numpyro) returning ArviZ InferenceData, and diagnostics (VPC, GOF, SBC).
"""
