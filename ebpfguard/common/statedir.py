"""The layout under STATE (``--state-dir``, /var/lib/ebpfguard by default), named in one place.

    STATE/agent.sock                 the agent's control socket (root only)
    STATE/forensics/records.jsonl    the forensic log, records-<seq>.jsonl once rotated, head.json
    STATE/keys/forensics.ed25519     the host's signing key (PKCS#8 PEM, 0600)
    STATE/instances/<id>.json        what a restarted agent needs to take a running instance back
    STATE/policies/<sha256>          the exact manifest bytes each record's policy_sha256 names
    STATE/rollback/<id>/             an instance's rollback overlays' upper layers (rollback.py)
    STATE/rollback-kept/<id>/        the extension's versions of files the user changed meanwhile
    STATE/incidents/<sha256>.json    incident summaries imported from elsewhere (incident import)
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

DEFAULT = "/var/lib/ebpfguard"


@dataclass(frozen=True)
class StateDir:
    root: Path

    @classmethod
    def of(cls, state: str | os.PathLike[str] | StateDir) -> StateDir:
        return state if isinstance(state, StateDir) else cls(Path(state))

    def __fspath__(self) -> str:
        return str(self.root)

    def __str__(self) -> str:
        return str(self.root)

    @property
    def socket(self) -> Path:
        return self.root / "agent.sock"

    @property
    def forensics(self) -> Path:
        return self.root / "forensics"

    @property
    def records(self) -> Path:
        return self.forensics / "records.jsonl"

    @property
    def head(self) -> Path:
        return self.forensics / "head.json"

    @property
    def signing_key(self) -> Path:
        return self.root / "keys" / "forensics.ed25519"

    @property
    def instances(self) -> Path:
        return self.root / "instances"

    @property
    def rollback(self) -> Path:
        return self.root / "rollback"

    @property
    def rollback_kept(self) -> Path:
        return self.root / "rollback-kept"

    def instance(self, instance_id: str) -> Path:
        return self.instances / f"{instance_id}.json"

    @property
    def policies(self) -> Path:
        return self.root / "policies"

    def policy(self, sha256: str) -> Path:
        return self.policies / sha256

    @property
    def incidents(self) -> Path:
        return self.root / "incidents"


def unreadable(*dirs: str | os.PathLike[str]) -> str | None:
    """Why this user cannot read the first of ``dirs`` that is closed to it (a state folder is root's, 0700),
    said for a person rather than as a bare EACCES; None when each is readable or absent."""
    for d in dirs:
        try:
            st = os.stat(d)
        except PermissionError:
            return f"{d}: a folder on the way is closed to this user: run this as root (sudo)"
        except OSError:
            continue
        if os.path.isdir(d) and not os.access(d, os.R_OK | os.X_OK):
            return f"{d} is readable by its owner only ({_user_name(st.st_uid)}): run this as root (sudo)"
    return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
