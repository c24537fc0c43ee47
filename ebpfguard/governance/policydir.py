"""The administrator's policy folder: the manifests of a directory, reloaded when a file or its signature changes,
each checked against the trust store; shadow versions and their promotion. The agent scans it once a second."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ebpfguard.errors import EbpfguardError, ManifestError
from ebpfguard.governance.trust import DEFAULT_TRUST, TrustStore, Verdict, sig_path, verify
from ebpfguard.manifest.load import Manifest, load

log = logging.getLogger("ebpfguard")
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")

REQUIRE_SIGNED_FILE = ".require-signed"  # in a policy directory: every manifest there must be signed


class PolicyDir:
    """The manifests of a directory, reloaded when a file (or its signature) changes. A bad file is reported and
    the last good version of that extension stays in force. Each manifest's signature is checked against the
    trust store; where signatures are required (--require-signed, or a .require-signed file in the directory)
    an enforce-mode manifest that is not signed by a trusted key is rejected with the reason, and an audit-mode
    one is loaded with its signature status on record."""

    def __init__(self, directory: str | os.PathLike[str] | None, trust_dir: str | os.PathLike[str] | None = None,
                 require_signed: bool = False, promoted_file: str | os.PathLike[str] | None = None):
        self.dir = Path(directory) if directory else None
        # extension name -> the sha256 of the shadow version `policy promote` made the enforced one
        self.promoted_file = Path(promoted_file) if promoted_file else None
        self.promoted: dict[str, str] = {}
        if self.promoted_file is not None and self.promoted_file.exists():
            try:
                data = json.loads(self.promoted_file.read_text())
                self.promoted = {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
            except (OSError, ValueError) as err:
                log.error("ignoring %s: %s", self.promoted_file, err)
        self.seen: dict[Path, tuple[int, ...]] = {}
        self.by_file: dict[Path, Manifest] = {}
        self.errors: dict[str, str] = {}
        self.trust = TrustStore(trust_dir or DEFAULT_TRUST)
        self.require_flag = require_signed
        self.signatures: dict[Path, Verdict] = {}
        self.pending: list[tuple[Manifest, dict[str, Any]]] = []  # policy records for the agent to write

    @property
    def require_signed(self) -> bool:
        return self.require_flag or (self.dir is not None and (self.dir / REQUIRE_SIGNED_FILE).exists())

    def signature(self, m: Manifest) -> Verdict | None:
        return next((self.signatures.get(p) for p, x in self.by_file.items() if x is m), None)

    def manifests(self) -> dict[str, Manifest]:
        """The enforced version of each extension: its manifest without spec.rollout: shadow, or the shadow
        version an administrator promoted."""
        out = {m.name: m for m in self.by_file.values() if m.rollout != "shadow"}
        for m in self.by_file.values():
            if m.rollout == "shadow" and self.promoted.get(m.name) == m.sha256:
                out[m.name] = m
        return out

    def shadows(self) -> dict[str, Manifest]:
        """The staged version of each extension that has one (spec.rollout: shadow, not promoted)."""
        return {m.name: m for m in self.by_file.values()
                if m.rollout == "shadow" and self.promoted.get(m.name) != m.sha256}

    def promote(self, name: str) -> tuple[Manifest | None, Manifest]:
        """Make NAME's shadow version the enforced one (for instances launched from now on); kept across
        restarts in the state directory. Returns (the version it replaces, the promoted one)."""
        shadow = self.shadows().get(name)
        if shadow is None:
            raise EbpfguardError(f"{name!r} has no shadow version loaded (a manifest with spec.rollout: shadow "
                                 f"in {self.dir})")
        old = self.manifests().get(name)
        self.promoted[name] = shadow.sha256
        if self.promoted_file is not None:
            tmp = self.promoted_file.with_name(f".{self.promoted_file.name}.tmp")
            tmp.write_text(json.dumps(self.promoted, indent=1) + "\n")
            os.replace(tmp, self.promoted_file)
        return old, shadow

    def scan(self) -> list[str]:
        """Reload what changed; returns log lines."""
        if self.dir is None or not self.dir.is_dir():
            return []
        out: list[str] = []
        present = set()
        for p in sorted(self.dir.iterdir()):
            if p.suffix not in MANIFEST_SUFFIXES or p.name.endswith(".schema.json") or not p.is_file():
                continue
            present.add(p)
            st = p.stat()
            try:
                sst = sig_path(p).stat()
                stamp: tuple[int, ...] = (st.st_mtime_ns, st.st_size, sst.st_mtime_ns, sst.st_size)
            except OSError:
                stamp = (st.st_mtime_ns, st.st_size)
            if self.seen.get(p) == stamp:
                continue
            self.seen[p] = stamp
            old = self.by_file.get(p)
            kept = ", previous version kept" if old else ""
            try:
                m = load(p)
            except ManifestError as err:
                self.errors[str(p)] = str(err)
                out.append(f"policy {p.name} rejected{kept}: {err}")
                continue
            v = verify(p, self.trust, raw=m.raw)
            event = {"event": "loaded", "file": p.name, "signature": v.as_dict()}
            if not v.ok and self.require_signed and m.mode == "enforce":
                self.errors[str(p)] = f"signature required: {v.reason}"
                out.append(f"policy {p.name} rejected{kept}: signature required: {v.reason}")
                self.pending.append((m, {**event, "event": "rejected"}))
                continue
            self.errors.pop(str(p), None)
            before = self.signatures.get(p)
            self.by_file[p] = m
            self.signatures[p] = v
            said = f"signed by {v.publisher}, key {v.key_id}" if v.ok else v.reason
            if old is None or old.sha256 != m.sha256 or before is None or before.as_dict() != v.as_dict():
                self.pending.append((m, event))
            if old is None:
                staged = " as a shadow version" if m.rollout == "shadow" else ""
                out.append(f"policy {m.name} {m.version} loaded{staged} from {p.name} (sha256 {m.sha256[:12]}; "
                           f"{said})")
            elif old.sha256 != m.sha256:
                out.append(f"policy {m.name} reloaded: {old.sha256[:12]} -> {m.sha256[:12]} ({said}); "
                           "running instances keep theirs")
        for p in set(self.seen) - present:
            self.seen.pop(p)
            self.errors.pop(str(p), None)
            self.signatures.pop(p, None)
            if p in self.by_file:
                out.append(f"policy {self.by_file.pop(p).name} removed ({p.name} is gone)")
        return out
