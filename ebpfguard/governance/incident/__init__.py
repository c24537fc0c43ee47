"""Incident summaries: what an extension did and what was done, read from the signed forensic log and reduced to what
can leave the host (docs/incidents.md). The summary keeps the extension (name, version, publisher, policy sha256,
signature status), the techniques with their ATT&CK IDs (forensics/technique.py), the layer that decided and what was
done, times relative to each instance's launch, the kernel and the sandbox's layers, counts, and public network
destinations. Everything else is removed by rule, and a last scrub of the output fails closed. A package with one
job per module:

    schema      the format: FORMAT, what a summary removes, its JSON Schema (docs/incident-schema.json), IncidentError
    report      markdown(): the readable report, the signed JSON inside it
    anonymize   Host (the identifiers to remove: host name, machine and boot id, the host key, the accounts in
                passwd) and Anonymizer (the rules: a path, an address, a D-Bus name, a program, a sandbox layer)
    signing     keygen(), sign(), keys, parse(), check(): the administrator's sharing key (never the host's)
    summary     summarize() an extension's records (or chosen ones); scrub() what the rules missed; share()
    store       import_summary(), imported(), received(): summaries from elsewhere, kept under STATE/incidents;
                write_out()

`python -m ebpfguard.governance.incident > docs/incident-schema.json` writes the schema's file.
"""

from ebpfguard.governance.incident.anonymize import Account, Anonymizer, Host, vocabulary
from ebpfguard.governance.incident.report import attack_link, markdown
from ebpfguard.governance.incident.schema import FORMAT, REMOVED, SCHEMA, IncidentError
from ebpfguard.governance.incident.signing import (
           Check,
           check,
           keygen,
           load_key,
           load_pubkey,
           parse,
           public_pem,
           sign,
           trusted_keys,
)
from ebpfguard.governance.incident.store import (
           Imported,
           brief,
           digest_of,
           import_summary,
           imported,
           received,
           store_dir,
           write_out,
)
from ebpfguard.governance.incident.summary import scrub, share, split_action, summarize

__all__ = ["FORMAT", "REMOVED", "SCHEMA", "Account", "Anonymizer", "Check", "Host", "Imported", "IncidentError",
           "attack_link", "brief", "check", "digest_of", "import_summary", "imported", "keygen", "load_key",
           "load_pubkey", "markdown", "parse", "public_pem", "received", "scrub", "share", "sign", "split_action",
           "store_dir", "summarize", "trusted_keys", "vocabulary", "write_out"]
