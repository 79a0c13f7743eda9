"""Learning across hospitals without pooling records (Flower).

Federated population fits (the FOCE-I/Laplace outer loop at the server, each hospital's
subjects' contributions computed locally) and federated surrogates (FedAvg/FedProx/FedAdam,
differential privacy with an accountant, SecAgg+; XGBoost by Flower's FedXgbBagging and
FedXgbCyclic). See docs/federated.md.
"""

# isort: off
from . import _telemetry  # noqa: F401  (first: Flower's and Ray's telemetry off)

# isort: on

# -- federated population fits, the Flower deployment engine --
from ._deploy import DeploymentError as DeploymentError
from ._deploy import Federation as Federation
from ._deploy import RunResult as RunResult
from ._deploy import write_app as write_app
from ._population_consents import read_consents as read_consents
from ._population_consents import write_consents as write_consents
from ._population_fit import FederatedFitError as FederatedFitError
from ._population_fit import FederatedPopulationFit as FederatedPopulationFit
from ._population_fit import HospitalData as HospitalData
from ._population_fit import federated_prior as federated_prior
from ._population_fit import fit_population_server as fit_population_server
from ._population_fit import hospital_data as hospital_data
from ._population_fit import hospital_reply as hospital_reply
from ._population_fit import individual_fit as individual_fit
from ._population_models import THEOPHYLLINE as THEOPHYLLINE
from ._population_models import TWO_COMPARTMENT as TWO_COMPARTMENT
from ._population_models import load_model as load_model
from ._population_models import simulate_hospitals as simulate_hospitals
from ._population_models import split_by_subject as split_by_subject
from ._population_run import fit_population_federated as fit_population_federated
from ._population_run import population_federation as population_federation
from ._population_run import run_population_fit as run_population_fit

# -- federated surrogates, differential privacy, sites --
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
from ._surrogate_apps import HospitalRecords as HospitalRecords
from ._surrogate_apps import Outcome as Outcome
from ._surrogate_apps import RoundAudit as RoundAudit
from ._surrogate_apps import SecAggRoundAudit as SecAggRoundAudit
from ._surrogate_apps import consented_rows as consented_rows
from ._surrogate_apps import parameter_digest as parameter_digest
from ._surrogate_apps import secagg_client_app as secagg_client_app
from ._surrogate_apps import secagg_server_app as secagg_server_app
from ._surrogate_apps import simulate as simulate_surrogates  # noqa: F401
from ._surrogate_apps import surrogate_client_app as surrogate_client_app
from ._surrogate_apps import surrogate_server_app as surrogate_server_app
from ._surrogate_models import lstm as lstm_model  # noqa: F401
from ._surrogate_models import mlp as mlp_model  # noqa: F401
from ._surrogate_models import transformer as transformer_model  # noqa: F401
from ._surrogate_run import Network as Network
from ._surrogate_run import fit_surrogate_federated as fit_surrogate_federated
from ._surrogate_run import run_surrogate_fit as run_surrogate_fit
from ._surrogate_run import surrogate_federation as surrogate_deployment  # noqa: F401
from ._surrogate_run import write_surrogate_hospital as write_surrogate_hospital
from ._table3 import PAPER_TABLE3 as PAPER_TABLE3
from ._table3 import FederatedTask as FederatedTask
from ._table3 import Settings as Settings
from ._table3 import accuracy_vs_epsilon as accuracy_vs_epsilon
from ._table3 import federation as surrogate_federation  # noqa: F401
from ._table3 import surrogate_table as surrogate_table
from ._xgb import Boosting as Boosting
from ._xgb import XgbOutcome as XgbOutcome
from ._xgb import bagging_training as xgb_bagging_training  # noqa: F401
from ._xgb import centralised as xgb_centralised  # noqa: F401
from ._xgb import check_model as check_xgb_model  # noqa: F401
from ._xgb import cyclic_training as xgb_cyclic_training  # noqa: F401
from ._xgb import xgb_client_app as xgb_client_app
from ._xgb import xgb_rows as xgb_rows
from ._xgb import xgb_server_app as xgb_server_app
from ._xgb_run import fit_xgb_federated as fit_xgb_federated
from ._xgb_run import write_hospital as write_xgb_hospital  # noqa: F401
