"""The one grammar for sizes and durations, shared by manifests, the CLI and the forensic filters.

Sizes follow the manifest's (Kubernetes-style) quantities: ``K``, ``M``, ``G``, ``T`` are powers of
1000 and ``Ki``, ``Mi``, ``Gi``, ``Ti`` powers of 1024, so "256Mi" is 268435456 wherever it is written.
Durations are an integer and one of ``ms``, ``s``, ``m``, ``h``, ``d``, ``w``.
"""

from __future__ import annotations

import re

SIZE_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
              "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_SIZE = re.compile(r"^([0-9]+)(Ki|Mi|Gi|Ti|K|M|G|T)?$")
_DURATION = re.compile(r"^([0-9]+)(ms|s|m|h|d|w)$")


def parse_size(text: str | int) -> int:
    """"256Mi" -> 268435456, "64M" -> 64000000, "4096" -> 4096."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    m = _SIZE.match(str(text).strip())
    if not m:
        raise ValueError(f"{text!r} is not a size such as 4096, 512Ki, 64Mi or 1G (Ki/Mi/Gi: 1024s, K/M/G: 1000s)")
    return int(m.group(1)) * SIZE_UNITS[m.group(2) or ""]


def parse_duration(text: str) -> float:
    """"60s" -> 60.0, "250ms" -> 0.25, "7d" -> 604800.0."""
    m = _DURATION.match(str(text).strip())
    if not m:
        raise ValueError(f"{text!r} is not a duration such as 250ms, 60s, 15m, 2h, 7d or 1w")
    return int(m.group(1)) * DURATION_UNITS[m.group(2)]
