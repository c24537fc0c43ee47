"""The record encoding the chain and the signatures cover: canonical JSON, its digest, the field order."""

from __future__ import annotations

import hashlib
import json
from typing import Any

FIELDS = ("seq", "time", "extension", "instance", "cgroup_id", "pid", "tgid", "uid", "comm", "kind",
          "detail", "verdict", "actions", "mode", "policy_sha256", "prev_sha256", "key_id", "signature")
GENESIS = "0" * 64


def canonical(rec: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in rec.items() if k != "signature"}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=True).encode()


def digest(rec: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(rec)).hexdigest()
