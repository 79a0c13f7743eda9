"""twins.governance: pseudonyms, a tamper-evident audit log, and consent.

Pure Python and the `cryptography` package; nothing here imports the rest of `twins`,
`pkpd`, `calibration` or JAX, so it can be reviewed, and used, on its own.

- Pseudonyms (`Pseudonymizer`): HMAC-SHA256 (RFC 2104) with a secret master key kept
  apart from the data (`load_pseudonym_key`: a key file of mode 0600 or the environment
  variable `PKPD_TWINS_PSEUDONYM_KEY`), one subkey per purpose by HKDF-SHA256 (RFC 5869).
- The audit log (`AuditLog`): append-only JSON lines, hash-chained, with a signed tree
  head (RFC 9162 Merkle root, Ed25519 of RFC 8032) after every append in `LOG.heads`;
  `verify` names the first bad entry; inclusion and consistency proofs for auditors.
- Consent (`ConsentRegistry`): permit/deny by purpose over periods; deny wins; research
  and federated training are opt-in; refusals are logged.

See docs/governance.md.
"""

from ._audit import RECOVERY_ACTOR as RECOVERY_ACTOR
from ._audit import AuditLog as AuditLog
from ._audit import AuditLogError as AuditLogError
from ._consent import DEFAULTS as DEFAULTS
from ._consent import Consent as Consent
from ._consent import ConsentRegistry as ConsentRegistry
from ._consent import Decision as Decision
from ._consent import Purpose as Purpose
from ._consent import Refusal as Refusal
from ._consent import log_consents as log_consents
from ._entries import GENESIS_HASH as GENESIS_HASH
from ._entries import AuditAction as AuditAction
from ._entries import AuditEntry as AuditEntry
from ._entries import AuditEvent as AuditEvent
from ._entries import EntryError as EntryError
from ._entries import canonical_json as canonical_json
from ._heads import HeadError as HeadError
from ._heads import SignedTreeHead as SignedTreeHead
from ._heads import SigningKeyError as SigningKeyError
from ._heads import generate_signing_key as generate_signing_key
from ._heads import key_id as key_id
from ._heads import load_public_key as load_public_key
from ._heads import load_signing_key as load_signing_key
from ._heads import public_pem as public_pem
from ._heads import write_signing_key as write_signing_key
from ._keyfiles import SecretFileError as SecretFileError
from ._merkle import EMPTY_ROOT as EMPTY_ROOT
from ._merkle import CompactTree as CompactTree
from ._merkle import consistency_path as consistency_path
from ._merkle import inclusion_path as inclusion_path
from ._merkle import leaf_hash as leaf_hash
from ._merkle import merkle_root as merkle_root
from ._merkle import node_hash as node_hash
from ._merkle import verify_consistency as verify_consistency
from ._merkle import verify_inclusion as verify_inclusion
from ._proofs import ConsistencyProof as ConsistencyProof
from ._proofs import InclusionProof as InclusionProof
from ._proofs import prove_consistency as prove_consistency
from ._proofs import prove_inclusion as prove_inclusion
from ._proofs import verify_consistency_proof as verify_consistency_proof
from ._proofs import verify_inclusion_proof as verify_inclusion_proof
from ._pseudonym import PSEUDONYM_KEY_ENV as PSEUDONYM_KEY_ENV
from ._pseudonym import PSEUDONYM_KEY_FILE_ENV as PSEUDONYM_KEY_FILE_ENV
from ._pseudonym import MasterKey as MasterKey
from ._pseudonym import NotAPseudonymError as NotAPseudonymError
from ._pseudonym import Pseudonym as Pseudonym
from ._pseudonym import Pseudonymizer as Pseudonymizer
from ._pseudonym import PseudonymKeyError as PseudonymKeyError
from ._pseudonym import generate_pseudonym_key as generate_pseudonym_key
from ._pseudonym import load_pseudonym_key as load_pseudonym_key
from ._pseudonym import load_pseudonymizer as load_pseudonymizer
from ._pseudonym import read_pseudonym_key_file as read_pseudonym_key_file
from ._pseudonym import write_pseudonym_key as write_pseudonym_key
from ._use import AUDIT_PURPOSE as AUDIT_PURPOSE
from ._use import Governance as Governance
from ._verify import AuditReport as AuditReport
from ._verify import Problem as Problem
from ._verify import ProblemKind as ProblemKind
from ._verify import heads_path as heads_path
from ._verify import read_entries as read_entries
from ._verify import read_heads as read_heads
from ._verify import verify as verify

__all__ = [
    "AUDIT_PURPOSE",
    "DEFAULTS",
    "EMPTY_ROOT",
    "GENESIS_HASH",
    "PSEUDONYM_KEY_ENV",
    "PSEUDONYM_KEY_FILE_ENV",
    "RECOVERY_ACTOR",
    "AuditAction",
    "AuditEntry",
    "AuditEvent",
    "AuditLog",
    "AuditLogError",
    "AuditReport",
    "CompactTree",
    "Consent",
    "ConsentRegistry",
    "ConsistencyProof",
    "Decision",
    "EntryError",
    "Governance",
    "HeadError",
    "InclusionProof",
    "MasterKey",
    "NotAPseudonymError",
    "Problem",
    "ProblemKind",
    "Pseudonym",
    "PseudonymKeyError",
    "Pseudonymizer",
    "Purpose",
    "Refusal",
    "SecretFileError",
    "SignedTreeHead",
    "SigningKeyError",
    "canonical_json",
    "consistency_path",
    "generate_pseudonym_key",
    "generate_signing_key",
    "heads_path",
    "inclusion_path",
    "key_id",
    "leaf_hash",
    "load_pseudonym_key",
    "load_pseudonymizer",
    "load_public_key",
    "load_signing_key",
    "log_consents",
    "merkle_root",
    "node_hash",
    "prove_consistency",
    "prove_inclusion",
    "public_pem",
    "read_entries",
    "read_heads",
    "read_pseudonym_key_file",
    "verify",
    "verify_consistency",
    "verify_consistency_proof",
    "verify_inclusion",
    "verify_inclusion_proof",
    "write_pseudonym_key",
    "write_signing_key",
]
