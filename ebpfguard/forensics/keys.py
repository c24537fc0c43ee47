"""The host's Ed25519 signing key under STATE/keys, and key ids."""

from __future__ import annotations

import hashlib
import os
import secrets

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ebpfguard.common.statedir import StateDir
from ebpfguard.errors import ForensicsError


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_or_create_key(state_dir: str | os.PathLike[str] | StateDir) -> Ed25519PrivateKey:
    """The host's signing key: STATE/keys/forensics.ed25519 (PKCS#8 PEM), created on first use, 0600."""
    path = StateDir.of(state_dir).signing_key
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # exclusive: if another writer made the key first, theirs is the key
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as err:
        raise ForensicsError(f"failed to load or create the signing key {path}: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise ForensicsError(f"{path} is not an Ed25519 key")
    return key


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public half of ``key`` as PEM (SubjectPublicKeyInfo), as a verifier's --pubkey reads it."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def host_public_key(state_dir: str | os.PathLike[str] | StateDir) -> Ed25519PublicKey:
    """The host's public key, loaded (never created: verifying must not mint a key)."""
    path = StateDir.of(state_dir).signing_key
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError as err:
        raise ForensicsError(f"no host key at {path}: give the signer's public key with --pubkey") from err
    except (OSError, ValueError) as err:
        raise ForensicsError(f"failed to load the host key {path}: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise ForensicsError(f"{path} is not an Ed25519 key")
    return key.public_key()
