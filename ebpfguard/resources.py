"""Where the shipped data lives: bpf/ sources and policies/ (schema, example manifests).

In a source checkout (the editable install the Makefile makes) they are next to the package.
EBPFGUARD_DATA_DIR overrides the location for packaged installs.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    env = os.environ.get("EBPFGUARD_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent


def bpf_dir() -> Path:
    return data_root() / "bpf"


def policies_dir() -> Path:
    return data_root() / "policies"


def schema_path() -> Path:
    return policies_dir() / "manifest.schema.json"
