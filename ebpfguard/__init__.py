"""ebpfguard: kernel-level containment of untrusted desktop extensions.

The packages, each importing only those before it (tests/unit/test_imports.py keeps it so):

    errors, common   the exception tree; the vocabulary every layer shares (ABI, clock, units, state paths)
    manifest         manifest v1: load, validate, compile to kernel map contents (pure)
    kernel           eBPF programs and maps (the only bcc importer), host features, Landlock audit, cgroups
    forensics        the signed, hash-chained log; verify, export, explain, trace
    sandbox          the launcher's layers: mount namespace, Landlock, seccomp, D-Bus proxy, rollback overlays
    instance         one running instance: its state, lineage and policy slot
    pipeline         events and reports -> resolve -> decide -> act -> record; observe, correlate
    runtime          the engine and the one launch loop
    governance       trust, the policy folder, learning, baselines, provenance
    observability    Prometheus metrics
    service          the agent, its control protocol and client, systemd and journald
    client           for platforms: launch plug-ins through the agent as their user (ebpfguard.client)
    lab              simulate, bench, peers (product code never imports it)
    cli              the command line (nothing imports it)

The names below are the library's surface (importing this package loads no eBPF and imports no bcc).
"""

from __future__ import annotations

from importlib import metadata as _metadata

from ebpfguard.errors import (
    CgroupError,
    ControlError,
    EbpfguardError,
    ForensicsError,
    KernelError,
    ManifestError,
    Problem,
)
from ebpfguard.forensics import ForensicLog, read, verify
from ebpfguard.manifest import CompiledPolicy, Manifest, compile, load, parse

try:
    __version__ = _metadata.version("ebpfguard")
except _metadata.PackageNotFoundError:  # a checkout that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "CgroupError",
    "CompiledPolicy",
    "ControlError",
    "EbpfguardError",
    "ForensicLog",
    "ForensicsError",
    "KernelError",
    "Manifest",
    "ManifestError",
    "Problem",
    "__version__",
    "compile",
    "load",
    "parse",
    "read",
    "verify",
]
