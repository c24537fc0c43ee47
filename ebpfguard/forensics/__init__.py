"""The forensic log, as a package with one job per module:

    chain       the canonical encoding that the hash chain and the signatures cover
    keys        the host's Ed25519 key (STATE/keys), key ids
    log         ForensicLog: append, group commit, checkpoints, rotation, torn tails, durable hooks
    forward     Forwarder: durable records to journald or syslog
    verify      read the log back; verify seq, chain, signatures and head.json
    timefilter  --since/--until and a record's time
    bundle      evidence bundles (export, unpack, the bundle's key)
    check       one log as a verifier meets it: a state folder or a bundle, pinned keys, anchors
"""

from ebpfguard.forensics.bundle import BUNDLE_FORMAT, bundle_public_key, export, unpack_bundle
from ebpfguard.forensics.chain import FIELDS, GENESIS, canonical, digest
from ebpfguard.forensics.check import LogCheck, check_log, load_public_key
from ebpfguard.forensics.forward import Forwarder
from ebpfguard.forensics.keys import host_public_key, key_id, load_or_create_key, public_pem
from ebpfguard.forensics.log import (
           CHECKPOINT_EVERY,
           CHECKPOINT_SECONDS,
           CURRENT,
           MAX_BYTES,
           MIN_BYTES,
           BadLine,
           ForensicLog,
           log_files,
           rotate_size,
)
from ebpfguard.forensics.timefilter import parse_when, record_ns, within
from ebpfguard.forensics.verify import Verdict, read, verify

__all__ = ["BUNDLE_FORMAT", "CHECKPOINT_EVERY", "CHECKPOINT_SECONDS", "CURRENT", "FIELDS", "GENESIS", "MAX_BYTES",
           "MIN_BYTES", "BadLine", "ForensicLog", "Forwarder", "LogCheck", "Verdict", "bundle_public_key", "canonical",
           "check_log", "digest", "export", "host_public_key", "key_id", "load_or_create_key", "load_public_key",
           "log_files", "parse_when", "public_pem", "read", "record_ns", "rotate_size", "unpack_bundle", "verify",
           "within"]
