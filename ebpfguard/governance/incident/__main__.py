"""`python -m ebpfguard.governance.incident > docs/incident-schema.json`: the summary's JSON Schema, as that file
holds it (tests/unit/test_incident.py checks the two are the same)."""

import json

from ebpfguard.governance.incident.schema import SCHEMA

print(json.dumps(SCHEMA, indent=2))
