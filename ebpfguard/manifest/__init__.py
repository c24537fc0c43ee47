"""Manifest v1: load and validate (load.py), compile to kernel map contents (compile.py)."""

from ebpfguard.manifest.compile import CompiledPolicy, compile
from ebpfguard.manifest.load import Manifest, NetRule, load, parse, parse_netrule

__all__ = ["CompiledPolicy", "Manifest", "NetRule", "compile", "load", "parse", "parse_netrule"]
