"""Evidence bundles: one consistent, self-verifying snapshot of the log and the policies it names."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ebpfguard.common.clock import rfc3339_ns
from ebpfguard.common.statedir import StateDir
from ebpfguard.errors import ForensicsError
from ebpfguard.forensics.keys import host_public_key, key_id
from ebpfguard.forensics.log import CURRENT, log_files

BUNDLE_FORMAT = "ebpfguard-evidence/1"
BUNDLE_README = """ebpfguard evidence bundle

forensics/   the forensic log (rotated files, records.jsonl, head.json), hash-chained and Ed25519-signed
policies/    the exact manifest bytes each record names by policy_sha256
pubkey.pem   the signing host's public key (key_id {key_id})
MANIFEST.json the sha256 of every file in the bundle

Verify it on any machine with ebpfguard installed; pin the host's key as your fleet knows it:
    ebpfguard forensics verify --pubkey HOST.pem {name}
Explain a record after extracting it:
    tar xzf {name} && ebpfguard explain --state-dir {top} SEQ
"""


def export(state_dir: str | os.PathLike[str], out: str | os.PathLike[str]) -> dict[str, Any]:
    """Write a self-contained .tar.gz (records, the policies they name, the public key, a manifest of
    sha256 sums) that verifies on another machine. The log is locked while it is copied, so the
    bundle is one consistent snapshot; writers wait for that long."""
    import io
    import socket as _socket
    import tarfile

    sd = StateDir.of(state_dir)
    state = sd.root
    fdir = sd.forensics
    public = host_public_key(state)
    created = time.time_ns()
    top = f"ebpfguard-evidence-{_socket.gethostname()}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    files: dict[str, bytes] = {}
    lock_fd = -1
    if (fdir / CURRENT).exists():
        lock_fd = os.open(fdir / CURRENT, os.O_RDONLY | os.O_CLOEXEC)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
    try:
        for path in [*log_files(fdir), fdir / "head.json"]:
            if path.exists():
                files[f"forensics/{path.name}"] = path.read_bytes()
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)
    if not files:
        raise ForensicsError(f"no forensic log in {fdir}")
    shas: set[str] = set()
    records, first, last = 0, None, None
    for name, data in files.items():
        if not name.endswith(".jsonl"):
            continue
        for line in data.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("seq"), int):
                records += 1
                first = rec["seq"] if first is None else first
                last = rec["seq"]
                if isinstance(rec.get("policy_sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", rec["policy_sha256"]):
                    shas.add(rec["policy_sha256"])
    missing = []
    for sha in sorted(shas):
        try:
            files[f"policies/{sha}"] = sd.policy(sha).read_bytes()
        except OSError:
            missing.append(sha)
    kid = key_id(public)
    files["pubkey.pem"] = public.public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    name = Path(out).name
    files["README"] = BUNDLE_README.format(key_id=kid, name=name, top=top).encode()
    manifest = {"format": BUNDLE_FORMAT, "host": _socket.gethostname(), "created": rfc3339_ns(created),
                "key_id": kid, "records": records, "first_seq": first, "last_seq": last,
                "policies_missing": missing,
                "files": {n: hashlib.sha256(d).hexdigest() for n, d in sorted(files.items())}}
    files["MANIFEST.json"] = json.dumps(manifest, indent=2).encode()
    out_path = Path(out)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            for n, data in files.items():
                info = tarfile.TarInfo(f"{top}/{n}")
                info.size, info.mode, info.mtime = len(data), 0o600, created // 1_000_000_000
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    manifest["path"] = str(out_path)
    manifest["top"] = top
    return manifest


MAX_BUNDLE_MEMBER = 1 << 30


def unpack_bundle(bundle: str | os.PathLike[str], into: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """Unpack an evidence bundle safely (regular files under one top folder, no links, no '..'),
    check every file against MANIFEST.json; returns (the unpacked state folder, the manifest)."""
    import tarfile

    try:
        tar = tarfile.open(bundle, mode="r:*")
    except (OSError, tarfile.TarError) as err:
        raise ForensicsError(f"{bundle}: not an evidence bundle ({err})") from err
    root = Path(into)
    contents: dict[str, bytes] = {}
    top = None
    with tar:
        for m in tar:
            parts = m.name.split("/")
            if m.isdir():
                continue
            if not m.isfile() or m.name.startswith("/") or ".." in parts or len(parts) < 2 or \
                    m.size > MAX_BUNDLE_MEMBER:
                raise ForensicsError(f"{bundle}: refusing member {m.name!r} (not a plain file inside the bundle)")
            if top not in (None, parts[0]):
                raise ForensicsError(f"{bundle}: members under more than one top folder")
            top = parts[0]
            fh = tar.extractfile(m)
            assert fh is not None
            contents["/".join(parts[1:])] = fh.read()
    try:
        manifest = json.loads(contents.pop("MANIFEST.json"))
        if manifest.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}")
        sums: dict[str, str] = manifest["files"]
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise ForensicsError(f"{bundle}: MANIFEST.json missing or not a {BUNDLE_FORMAT} manifest ({err})") from err
    for n in sorted(set(sums) - set(contents)):
        if n.startswith("forensics/"):  # a missing log file is verify()'s to name (deleted records)
            continue
        raise ForensicsError(f"{bundle}: {n} is listed in MANIFEST.json but missing")
    for n, data in contents.items():
        if n.startswith("policies/") and hashlib.sha256(data).hexdigest() != n.split("/", 1)[1]:
            raise ForensicsError(f"{bundle}: {n}: modified (its bytes no longer hash to its name)")
        dest = root / n
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        dest.write_bytes(data)
    return root, manifest


def bundle_public_key(state: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key((state / "pubkey.pem").read_bytes())
    except (OSError, ValueError) as err:
        raise ForensicsError(f"the bundle has no usable pubkey.pem ({err}): pass --pubkey") from err
    if not isinstance(key, Ed25519PublicKey):
        raise ForensicsError("the bundle's pubkey.pem is not an Ed25519 key")
    return key
