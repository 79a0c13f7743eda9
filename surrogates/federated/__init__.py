"""Learning across hospitals without pooling records (Flower).

Federated population fits (the FOCE-I/Laplace outer loop at the server, each hospital's
subjects' contributions computed locally) and federated surrogates (FedAvg/FedProx/FedAdam,
differential privacy with an accountant, SecAgg+). See docs/federated.md.
"""

# -- federated population fits, the Flower deployment engine (helper A) --

# -- federated surrogates, differential privacy, sites (helper B) --
# isort: split
from ._dp import DELTA as DELTA
from ._dp import ClientDP as ClientDP
from ._dp import RecordDP as RecordDP
from ._dp import client_epsilon as client_epsilon
from ._dp import client_noise_multiplier as client_noise_multiplier
from ._dp import record_epsilon as record_epsilon
from ._dp import record_noise_multiplier as record_noise_multiplier
from ._fedavg import Client as Client
from ._fedavg import LocalTraining as LocalTraining
from ._fedavg import Server as Server
from ._fedavg import federated_training as federated_training
from ._fedavg import local_update as local_update
from ._sites import Hospital as Hospital
from ._sites import hospitals as hospitals
from ._sites import reference_schema as reference_schema
from ._sites import simulate_site as simulate_site
from ._sites import site_divergence as site_divergence
from ._surrogate_apps import Outcome as Outcome
from ._surrogate_apps import secagg_client_app as secagg_client_app
from ._surrogate_apps import secagg_server_app as secagg_server_app
from ._surrogate_apps import simulate as simulate_surrogates  # noqa: F401
from ._surrogate_apps import surrogate_client_app as surrogate_client_app
from ._surrogate_apps import surrogate_server_app as surrogate_server_app
from ._surrogate_models import lstm as lstm_model  # noqa: F401
from ._surrogate_models import mlp as mlp_model  # noqa: F401
from ._table3 import PAPER_TABLE3 as PAPER_TABLE3
from ._table3 import FederatedTask as FederatedTask
from ._table3 import Settings as Settings
from ._table3 import accuracy_vs_epsilon as accuracy_vs_epsilon
from ._table3 import federation as surrogate_federation  # noqa: F401
from ._table3 import surrogate_table as surrogate_table
