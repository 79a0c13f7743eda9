"""Learning across hospitals without pooling records (Flower).

Federated population fits (the FOCE-I/Laplace outer loop at the server, each hospital's
subjects' contributions computed locally) and federated surrogates (FedAvg/FedProx/FedAdam,
differential privacy with an accountant, SecAgg+). See docs/federated.md.
"""

# -- federated population fits, the Flower deployment engine (helper A) --

# -- federated surrogates, differential privacy, sites (helper B) --
