"""Manifest v1: load and validate (load.py), compile to kernel map contents (compile.py)."""

from .compile import CompiledPolicy, compile
from .load import Manifest, NetRule, load, parse, parse_netrule

__all__ = ["CompiledPolicy", "Manifest", "NetRule", "compile", "load", "parse", "parse_netrule"]
