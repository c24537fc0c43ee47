"""Where the shipped data lives: bpf/ sources and policies/ (schema, example manifests).

In a source checkout (the editable install the Makefile makes) they are next to the package; a wheel
or the .deb carries them inside it, as ebpfguard/_data/{bpf,policies,sim,bench}, found through
importlib.resources. EBPFGUARD_DATA_DIR overrides both.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path


def data_root() -> Path:
    """EBPFGUARD_DATA_DIR; else the checkout this package sits in; else the wheel's ebpfguard/_data."""
    env = os.environ.get("EBPFGUARD_DATA_DIR")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "bpf" / "include" / "events.h").is_file():
        return checkout
    return Path(str(resources.files("ebpfguard").joinpath("_data")))


def bpf_dir() -> Path:
    """The eBPF sources: the hook families (*.bpf.c), lib/ (their helpers), include/ (what Python shares)."""
    return data_root() / "bpf"


def bpf_include_dir() -> Path:
    """The headers the agent shares with the kernel programs: the record (events.h), the maps (maps.h)."""
    return bpf_dir() / "include"


def policies_dir() -> Path:
    return data_root() / "policies"


def schema_path() -> Path:
    return policies_dir() / "manifest.schema.json"
