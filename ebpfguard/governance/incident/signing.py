"""Signatures: an Ed25519 signature of the administrator's sharing key (never the host's forensic key) over a
summary's canonical JSON. keygen() makes a sharing key, sign() signs, load_key()/load_pubkey()/trusted_keys() read
keys, parse() reads a summary (JSON or a Markdown report), check() verifies its schema, signature and signer."""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ebpfguard.forensics import canonical, key_id
from ebpfguard.governance.incident.schema import FORMAT, SCHEMA, IncidentError


def public_pem(pub: Ed25519PublicKey) -> str:
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def sign(summary: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """The summary with its signer (key id, public key) and an Ed25519 signature over the canonical JSON of all
    the rest (chain.canonical: sorted keys, ASCII, no spaces; the signature field left out)."""
    pub = key.public_key()
    doc = {**summary, "signer": {"key_id": key_id(pub), "public_key": public_pem(pub)}, "signature": None}
    doc["signature"] = base64.b64encode(key.sign(canonical(doc))).decode()
    return doc


def keygen(out: str | os.PathLike[str]) -> str:
    """A new sharing key: OUT (PKCS#8 PEM, 0600) and OUT.pub (its public half, PEM). Returns its key id."""
    path = Path(out)
    pub_path = path.with_name(path.name + ".pub")
    if pub_path.exists():
        raise IncidentError(f"{pub_path} exists: refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    _write_exclusive(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()), 0o600, "a key")
    _write_exclusive(pub_path, public_pem(key.public_key()).encode(), 0o644, "a key")
    return key_id(key.public_key())


def load_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    p = Path(path)
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except FileNotFoundError:
        raise IncidentError(f"{p}: no such key file") from None
    except OSError as err:
        raise IncidentError(f"{p}: {err.strerror}") from err
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise IncidentError(f"{p} is not an unencrypted PEM private key (make one with `ebpfguard incident "
                            "keygen -o FILE`)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IncidentError(f"{p} is not an Ed25519 key")
    return key


def load_pubkey(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    p = Path(path)
    try:
        key = serialization.load_pem_public_key(p.read_bytes())
    except FileNotFoundError:
        raise IncidentError(f"{p}: no such key file") from None
    except OSError as err:
        raise IncidentError(f"{p}: {err.strerror}") from err
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise IncidentError(f"{p} is not a PEM public key (expected '-----BEGIN PUBLIC KEY-----', as `ebpfguard "
                            "incident keygen` writes in FILE.pub)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise IncidentError(f"{p} is not an Ed25519 public key")
    return key


def trusted_keys(folder: str | os.PathLike[str] | None, files: Iterable[str | os.PathLike[str]] = ()
                 ) -> tuple[dict[str, Ed25519PublicKey], list[str]]:
    """The keys an administrator trusts: every PEM public key in ``folder`` and ``files``, by key id; and what
    in the folder is not one (each said, then skipped)."""
    keys: dict[str, Ed25519PublicKey] = {}
    skipped: list[str] = []
    for f in files:
        k = load_pubkey(f)
        keys[key_id(k)] = k
    if folder is not None:
        for p in sorted(Path(folder).iterdir()):
            if p.is_file() and not p.name.startswith("."):
                try:
                    k = load_pubkey(p)
                except IncidentError as err:
                    skipped.append(str(err))
                    continue
                keys[key_id(k)] = k
    return keys, skipped


@dataclass
class Check:
    """What verifying a summary found: status ok, unsigned, tampered, untrusted or invalid, and why."""

    status: str
    reason: str = ""
    key_id: str = ""
    doc: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def __str__(self) -> str:
        return f"ok: signed by {self.key_id}" if self.ok else f"{self.status}: {self.reason}"


def parse(data: bytes, where: str) -> dict[str, Any]:
    """A summary from a file's bytes: JSON, or a Markdown report (its last ```json block)."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise IncidentError(f"{where} is not an incident summary (not UTF-8 text)") from None
    if not text.lstrip().startswith("{"):
        start = text.rfind("```json\n")
        end = text.find("\n```", start + 8) if start >= 0 else -1
        if start < 0 or end < 0:
            raise IncidentError(f"{where} is not an incident summary (neither JSON nor a report with its JSON block)")
        text = text[start + 8:end]
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise IncidentError(f"{where} is not an incident summary (not JSON: {err})") from None
    if not isinstance(doc, dict):
        raise IncidentError(f"{where} is not an incident summary (a JSON object is expected)")
    if doc.get("format") != FORMAT:
        raise IncidentError(f"{where} is not an incident summary: format is {doc.get('format')!r}, not {FORMAT!r}")
    return doc


def check(doc: Mapping[str, Any], trusted: Mapping[str, Ed25519PublicKey] | None = None) -> Check:
    """Schema, then the signature with the embedded key; with ``trusted``, the signer must be one of them."""
    errors = sorted(jsonschema.Draft202012Validator(SCHEMA).iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        at = "/".join(str(x) for x in e.path) or "(top)"
        return Check("invalid", f"not an incident summary as docs/incident-schema.json describes it: at {at}: "
                     f"{e.message}")
    signer = doc.get("signer")
    if signer is None or doc.get("signature") is None:
        return Check("unsigned", "the summary carries no signature (it was shared without --key)", doc=dict(doc))
    assert isinstance(signer, Mapping)
    try:
        pub = serialization.load_pem_public_key(str(signer["public_key"]).encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return Check("invalid", "signer.public_key is not a PEM public key")
    if not isinstance(pub, Ed25519PublicKey):
        return Check("invalid", "signer.public_key is not an Ed25519 key")
    kid = key_id(pub)
    if signer.get("key_id") != kid:
        return Check("tampered", f"signer.key_id {signer.get('key_id')!r} is not the embedded key's ({kid})", kid)
    try:
        pub.verify(base64.b64decode(str(doc["signature"]), validate=True), canonical(dict(doc)))
    except (InvalidSignature, binascii.Error, ValueError):
        return Check("tampered", f"bad signature: the summary was altered after key {kid} signed it", kid)
    if trusted is not None and kid not in trusted:
        known = ", ".join(sorted(trusted)) or "none"
        return Check("untrusted", f"signed by key {kid}, which is none of the trusted keys ({known})", kid)
    return Check("ok", key_id=kid, doc=dict(doc))



def _write_exclusive(path: Path, data: bytes, mode: int, what: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        raise IncidentError(f"{path} exists: refusing to overwrite {what}") from None
    except OSError as err:
        raise IncidentError(f"cannot create {path}: {err.strerror}") from err
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
