"""twins.io: data in and out. FHIR R4 (read with the `fhir.resources` R4B models).

- `read_fhir(bundle_or_path, *, reference_time, substance=..., ...)`: a Bundle (dict or
  JSON file, one or many patients) or a bulk-data NDJSON folder -> `FhirImport`:
  `twins.Patient`s (age at the reference time, sex, weight, height, labs, CYP2C9 / CYP2C19
  / CYP2D6 / VKORC1 genotypes), NONMEM records of the doses and levels of one substance
  (for `calibration.Dataset.from_records` and `twins.DigitalTwin`), governance `Consent`s,
  and an `ImportReport` of everything not read. Malformed or unusable resources raise
  `FhirError` naming the resource type, id and field (listed instead with `lenient=True`).
- `recommendation_request(...)`, `forecast_observations(...)`, `fhir_bundle(...)`: a twin's
  dose recommendation as a MedicationRequest of `intent = proposal` and its forecast as
  Observations with `derivedFrom` the levels used, subjects pseudonymised on request;
  `update_json(...)` both as validated JSON, as the live service publishes them.
- `write_import(...)`: the pseudonymised records, patients and report of an import into
  a new or empty folder (`twins fhir import`).
- `inspect_resource(resource, *, substances=...)`: one resource of a stream, validated and
  read on its own (`ResourceInfo`: type, id, version, patient, time, substances).
- `TwinService`: live twins fed by FHIR messages (SQLite-backed, idempotent, order-proof,
  dead letters, audit log); `MqttService` runs one on an MQTT broker (`twins serve`;
  TLS by `MqttTls`); its dose constraints and loading dose per drug are `DosingAdvice`s,
  read from TOML by `read_dosing` (`twins serve --dosing FILE`). See docs/live-twins.md.
- Tables: `LOINC` (observation codes read), `SUBSTANCES`, `HGNC`, `RECORD_COLUMNS`.

See docs/fhir.md.
"""

from ._codes import CREATININE_MOLAR_MASS as CREATININE_MOLAR_MASS
from ._codes import HGNC as HGNC
from ._codes import LOINC as LOINC
from ._codes import SUBSTANCES as SUBSTANCES
from ._codes import LoincCode as LoincCode
from ._codes import Substance as Substance
from ._errors import FhirError as FhirError
from ._errors import ImportReport as ImportReport
from ._errors import Issue as Issue
from ._export import OutputFolderError as OutputFolderError
from ._export import claim_empty_folder as claim_empty_folder
from ._export import write_import as write_import
from ._read import FhirImport as FhirImport
from ._read import ForecastPoint as ForecastPoint
from ._read import Proposal as Proposal
from ._read import read_fhir as read_fhir
from ._records import RECORD_COLUMNS as RECORD_COLUMNS
from ._service import Receipt as Receipt
from ._service import Topics as Topics
from ._service import TwinService as TwinService
from ._service_dosing import DosingAdvice as DosingAdvice
from ._service_dosing import DosingConfigError as DosingConfigError
from ._service_dosing import read_dosing as read_dosing
from ._service_mqtt import MqttService as MqttService
from ._service_mqtt import MqttTls as MqttTls
from ._stream_read import ResourceInfo as ResourceInfo
from ._stream_read import inspect_resource as inspect_resource
from ._units import convert as convert_ucum
from ._write import fhir_bundle as fhir_bundle
from ._write import forecast_observations as forecast_observations
from ._write import recommendation_request as recommendation_request
from ._write import update_json as update_json

__all__ = [
    "CREATININE_MOLAR_MASS",
    "HGNC",
    "LOINC",
    "RECORD_COLUMNS",
    "SUBSTANCES",
    "DosingAdvice",
    "DosingConfigError",
    "FhirError",
    "FhirImport",
    "ForecastPoint",
    "ImportReport",
    "Issue",
    "LoincCode",
    "MqttService",
    "MqttTls",
    "OutputFolderError",
    "Proposal",
    "Receipt",
    "ResourceInfo",
    "Substance",
    "Topics",
    "TwinService",
    "claim_empty_folder",
    "convert_ucum",
    "fhir_bundle",
    "forecast_observations",
    "inspect_resource",
    "read_dosing",
    "read_fhir",
    "recommendation_request",
    "update_json",
    "write_import",
]
