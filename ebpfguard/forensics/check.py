"""Checking one log as a verifier meets it: a state folder or an evidence bundle, against the keys the
verifier trusts (pinned public keys, else the host's own or the bundle's), and against checkpoints kept
off the host (anchors). `ebpfguard forensics verify` prints what check_log returns, one per target."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ebpfguard.common.statedir import StateDir
from ebpfguard.errors import EbpfguardError, ForensicsError
from ebpfguard.forensics.anchors import AnchorCheck, check_anchors, read_anchors
from ebpfguard.forensics.bundle import bundle_public_key, unpack_bundle
from ebpfguard.forensics.keys import host_public_key, key_id
from ebpfguard.forensics.log import log_files
from ebpfguard.forensics.verify import Verdict, verify


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (as `ebpfguard forensics pubkey` prints it); a file that is not
    one is a ForensicsError naming the file and what it is instead."""
    try:
        with open(path, "rb") as fh:
            key = serialization.load_pem_public_key(fh.read())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ForensicsError(f"{path}: not a PEM public key (expected '-----BEGIN PUBLIC KEY-----', as "
                             "`ebpfguard forensics pubkey` prints)") from None
    except OSError as err:
        raise ForensicsError(f"{path}: {err.strerror}") from err
    if not isinstance(key, Ed25519PublicKey):
        raise ForensicsError(f"{path}: a {type(key).__name__.lstrip('_')}, not an Ed25519 public key")
    return key


@dataclass
class LogCheck:
    """What verifying one target found. ``error`` set: it could not be checked at all (no log, not a bundle,
    unreadable anchors); otherwise ``verdict`` says whether the log is intact and ``anchors`` (when asked
    for) whether every forwarded checkpoint is in it."""

    target: str
    verdict: Verdict | None = None
    note: str = ""  # a bundle's host and key, said beside a verdict that is ok
    anchors: AnchorCheck | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.verdict is not None and self.verdict.ok and (self.anchors is None or self.anchors.ok)

    @property
    def records(self) -> int:
        return self.verdict.records if self.verdict is not None else 0


def check_log(target: str, keys: list[Ed25519PublicKey] | None = None, anchors: str | None = None) -> LogCheck:
    """Verify ``target``: a state folder (against ``keys``, else the host's own key) or an evidence bundle
    (unpacked into a temporary folder, against ``keys``, else the bundle's own pubkey.pem, which the note
    then says). With ``anchors``, also against that file of forwarded checkpoints: each must be in the
    folder's or the bundle's log, signed by a key trusted as above."""
    try:
        if os.path.isdir(target):
            return _check_folder(target, keys, anchors)
        return _check_bundle(target, keys, anchors)
    except EbpfguardError as err:
        return LogCheck(target, error=str(err))


def _check_folder(target: str, keys: list[Ed25519PublicKey] | None, anchors: str | None) -> LogCheck:
    forensics = StateDir.of(target).forensics
    if not log_files(forensics):
        raise ForensicsError(f"no forensic log in {forensics} (not a state directory, or nothing was recorded "
                             "there)")
    out = LogCheck(target, verify(target, keys or None))
    if anchors:
        trusted = {key_id(k): k for k in (keys or [host_public_key(target)])}
        out.anchors = check_anchors(target, read_anchors(anchors), trusted)
    return out


def _check_bundle(target: str, keys: list[Ed25519PublicKey] | None, anchors: str | None) -> LogCheck:
    sent = read_anchors(anchors) if anchors else None  # an unusable anchors file fails before any unpacking
    with tempfile.TemporaryDirectory(prefix="ebpfguard-verify-") as tmp:
        root, info = unpack_bundle(target, tmp)
        trust = keys or [bundle_public_key(root)]
        verdict = verify(root, trust)
        found = None if sent is None else check_anchors(root, sent, {key_id(k): k for k in trust})
    own = "" if keys else ": the bundle's own key; pin it with --pubkey"
    note = f" (host {info.get('host')}, key {info.get('key_id')}{own})"
    if keys and info.get("key_id") not in {key_id(k) for k in keys}:
        note = f" (the bundle's pubkey.pem {info.get('key_id')} is not one you trust)"
    return LogCheck(target, verdict, note, found)
