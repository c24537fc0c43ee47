"""Publisher keys, signed manifests and extension file lists, and the trust store that decides whom to believe.

A publisher signs a manifest's exact bytes and, optionally, the size and SHA-256 of every file of the extension
(as VS Code signs an extension package's file list). The signature is MANIFEST.sig beside it, JSON:

    {"format": "ebpfguard-signature/1", "publisher": ..., "key_id": ..., "manifest_sha256": ...,
     "files": [{"path": "bin/tool", "size": 12, "sha256": ..., "exec": true}, ...] | null,
     "signed_at": ..., "endorsement": {...} | null, "signature": base64 Ed25519 over the rest, canonical}

The trust store (/etc/ebpfguard/trust by default) holds keys/KEYID.json: the public key, the publisher names it may
sign for, an expiry; and revoked.json. A key rotates without the administrator: the new key's public file carries an
endorsement signed by the old key, which sign copies into every signature; the store then accepts the new key with the
old key's publishers and expiry for as long as it accepts the old key (a revoked old key takes its endorsements down).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ebpfguard.common.hashing import file_sha256
from ebpfguard.errors import EbpfguardError
from ebpfguard.forensics.chain import canonical
from ebpfguard.forensics.keys import key_id

SIG_FORMAT = "ebpfguard-signature/1"
PUB_FORMAT = "ebpfguard-publisher-key/1"
ENDORSE_FORMAT = "ebpfguard-endorsement/1"
DEFAULT_TRUST = Path("/etc/ebpfguard/trust")


class TrustError(EbpfguardError):
    """Bad input to signing or to the trust store: a key, a signature file, a store entry."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _iso(t: dt.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def parse_date(text: str) -> dt.datetime:
    """YYYY-MM-DD (the end of that day, UTC) or a full ISO 8601 time; naive times are UTC."""
    try:
        if len(text) == 10:
            d = dt.date.fromisoformat(text)
            return dt.datetime(d.year, d.month, d.day, 23, 59, 59, tzinfo=dt.UTC)
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as err:
        raise TrustError(f"{text!r} is not a date (YYYY-MM-DD) or an ISO 8601 time") from err
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def sign_bytes(key: Ed25519PrivateKey, payload: dict[str, Any]) -> str:
    return base64.b64encode(key.sign(canonical(payload))).decode()


def _b64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise TrustError(f"{what} is not base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise TrustError(f"{what} is not valid base64") from err


def public_from_b64(text: Any, what: str) -> Ed25519PublicKey:
    raw = _b64(text, what)
    if len(raw) != 32:
        raise TrustError(f"{what} is {len(raw)} bytes, not a 32-byte Ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(raw)


def public_b64(pub: Ed25519PublicKey) -> str:
    return base64.b64encode(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError as err:
        raise TrustError(f"{path}: no such file") from err
    except OSError as err:
        raise TrustError(f"{path}: {err.strerror}") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TrustError(f"{path} is not {what} (not JSON: {err})") from err
    if not isinstance(data, dict):
        raise TrustError(f"{path} is not {what} (a JSON object is expected)")
    return data


def _write_exclusive(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError as err:
        raise TrustError(f"{path} exists: refusing to overwrite a key") from err
    except OSError as err:
        raise TrustError(f"cannot create {path}: {err.strerror}") from err
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise TrustError(f"cannot write {path}: {err.strerror}") from err


# ---- publisher keys ---------------------------------------------------------------------------------------

def load_private(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    p = Path(path)
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except FileNotFoundError as err:
        raise TrustError(f"{p}: no such key file") from err
    except OSError as err:
        raise TrustError(f"{p}: {err.strerror}") from err
    except (ValueError, TypeError) as err:
        raise TrustError(f"{p} is not an unencrypted PEM private key (make one with `policy keygen`)") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise TrustError(f"{p} is not an Ed25519 key")
    return key


@dataclass
class PublicKeyFile:
    key_id: str
    publisher: str
    public: Ed25519PublicKey
    endorsement: dict[str, Any] | None = None


def load_public(path: str | os.PathLike[str]) -> PublicKeyFile:
    p = Path(path)
    data = _read_json(p, "a publisher public key (KEYFILE.pub from `policy keygen`)")
    if data.get("format") != PUB_FORMAT:
        raise TrustError(f"{p} is not a publisher public key: format is {data.get('format')!r}, not {PUB_FORMAT!r}")
    pub = public_from_b64(data.get("public_key"), f"{p}: public_key")
    if data.get("key_id") != key_id(pub):
        raise TrustError(f"{p}: key_id {data.get('key_id')!r} does not match its public key ({key_id(pub)})")
    if not isinstance(data.get("publisher"), str) or not data["publisher"]:
        raise TrustError(f"{p}: no publisher name")
    return PublicKeyFile(key_id(pub), data["publisher"], pub, data.get("endorsement"))


def keygen(publisher: str, out: str | os.PathLike[str], endorse_with: str | os.PathLike[str] | None = None
           ) -> PublicKeyFile:
    """A new Ed25519 key: OUT (PKCS#8 PEM, 0600) and OUT.pub. With endorse_with, the old key signs a statement
    that hands its trust over to the new key (rotation), kept in OUT.pub."""
    if not publisher or len(publisher) > 128:
        raise TrustError("--publisher must be 1 to 128 characters")
    out = Path(out)
    old = load_private(endorse_with) if endorse_with else None
    key = Ed25519PrivateKey.generate()
    pub = key.public_key()
    doc: dict[str, Any] = {"format": PUB_FORMAT, "publisher": publisher, "key_id": key_id(pub),
                           "public_key": public_b64(pub), "created": _iso(_now())}
    if old is not None:
        statement = {"format": ENDORSE_FORMAT, "publisher": publisher, "new_key_id": key_id(pub),
                     "new_public_key": public_b64(pub), "endorsed_at": _iso(_now())}
        doc["endorsement"] = {"statement": statement, "endorsed_by": key_id(old.public_key()),
                              "signature": sign_bytes(old, statement)}
    pub_path = out.with_name(out.name + ".pub")
    if pub_path.exists():
        raise TrustError(f"{pub_path} exists: refusing to overwrite a key")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    _write_exclusive(out, pem, 0o600)
    _write_exclusive(pub_path, (json.dumps(doc, indent=2) + "\n").encode(), 0o644)
    return PublicKeyFile(key_id(pub), publisher, pub, doc.get("endorsement"))


# ---- file lists -------------------------------------------------------------------------------------------

def walk(root: Path) -> Iterator[tuple[str, Path, os.stat_result]]:
    """Every entry under root that is not a directory, in a stable order: (relative path, path, lstat)."""
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in sorted(files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]):
            p = Path(dirpath) / name
            yield p.relative_to(root).as_posix(), p, p.lstat()


def file_list(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    root = Path(root)
    if not root.is_dir():
        raise TrustError(f"--files {root}: not a directory")
    out: list[dict[str, Any]] = []
    for rel, p, st in walk(root):
        if rel.endswith(".sig") and p.with_suffix("").exists():
            continue  # a signature is not part of what it signs
        if stat.S_ISLNK(st.st_mode):
            out.append({"path": rel, "symlink": os.readlink(p)})
        elif stat.S_ISREG(st.st_mode):
            out.append({"path": rel, "size": st.st_size, "sha256": file_sha256(p), "exec": bool(st.st_mode & 0o111)})
        else:
            raise TrustError(f"--files {root}: {rel} is neither a file nor a symlink")
    return out


@dataclass
class FileProblem:
    path: str
    reason: str  # missing, changed, extra executable, ...

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def check_files(signed: list[dict[str, Any]], root: str | os.PathLike[str]) -> tuple[list[FileProblem], list[str]]:
    """What differs between the signed list and root: problems (missing, changed, an extra executable or symlink)
    and the extra plain files that are not executable (data an extension may keep beside its code)."""
    root = Path(root)
    problems: list[FileProblem] = []
    want = {f["path"]: f for f in signed}
    seen: set[str] = set()
    extras: list[str] = []
    for rel, p, st in walk(root):
        if rel.endswith(".sig") and p.with_suffix("").exists():
            continue
        seen.add(rel)
        f = want.get(rel)
        if f is None:
            if stat.S_ISLNK(st.st_mode) or st.st_mode & 0o111:
                problems.append(FileProblem(rel, "extra executable, not in the signed list"))
            else:
                extras.append(rel)
        elif "symlink" in f:
            if not stat.S_ISLNK(st.st_mode) or os.readlink(p) != f["symlink"]:
                problems.append(FileProblem(rel, f"changed (signed as a symlink to {f['symlink']})"))
        elif not stat.S_ISREG(st.st_mode):
            problems.append(FileProblem(rel, "changed (signed as a regular file)"))
        elif st.st_size != f["size"] or file_sha256(p) != f["sha256"]:
            problems.append(FileProblem(rel, f"changed (sha256 {file_sha256(p)[:16]}, signed {f['sha256'][:16]})"))
        elif bool(st.st_mode & 0o111) and not f.get("exec"):
            problems.append(FileProblem(rel, "changed (made executable after signing)"))
    for rel in sorted(set(want) - seen):
        problems.append(FileProblem(rel, "missing"))
    return problems, extras


# ---- signing ----------------------------------------------------------------------------------------------

def sig_path(manifest: str | os.PathLike[str]) -> Path:
    p = Path(manifest)
    return p.with_name(p.name + ".sig")


def signature_beside(manifest: str | os.PathLike[str]) -> str | None:
    """The text of MANIFEST.sig, read with the caller's rights (a client sends it with its manifest), or None when
    the manifest has none."""
    sp = sig_path(manifest)
    try:
        return sp.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise TrustError(f"{sp}: {getattr(err, 'strerror', None) or err}") from None


def manifest_publisher(raw: bytes, where: str) -> str:
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise TrustError(f"{where} is not YAML: {err}") from err
    pub = (doc.get("metadata") or {}).get("publisher") if isinstance(doc, dict) else None
    if not isinstance(pub, str) or not pub:
        raise TrustError(f"{where} has no metadata.publisher: a signature binds a publisher's name")
    return pub


def sign(key_path: str | os.PathLike[str], manifest: str | os.PathLike[str],
         files: str | os.PathLike[str] | None = None) -> Path:
    key = load_private(key_path)
    m = Path(manifest)
    try:
        raw = m.read_bytes()
    except OSError as err:
        raise TrustError(f"{m}: {err.strerror}") from err
    publisher = manifest_publisher(raw, str(m))
    pubfile = Path(str(key_path) + ".pub")
    endorsement = None
    if pubfile.exists():
        pf = load_public(pubfile)
        if pf.key_id != key_id(key.public_key()):
            raise TrustError(f"{pubfile} is not the public half of {key_path}")
        if pf.publisher != publisher:
            raise TrustError(f"{key_path} is {pf.publisher}'s key; {m} is published by {publisher!r}")
        endorsement = pf.endorsement
    payload: dict[str, Any] = {
        "format": SIG_FORMAT, "publisher": publisher, "key_id": key_id(key.public_key()),
        "manifest_sha256": hashlib.sha256(raw).hexdigest(),
        "files": file_list(files) if files else None, "signed_at": _iso(_now()), "endorsement": endorsement,
    }
    payload["signature"] = sign_bytes(key, payload)
    out = sig_path(m)
    _write_atomic(out, (json.dumps(payload, indent=1) + "\n").encode())
    return out


# ---- the trust store --------------------------------------------------------------------------------------

@dataclass
class TrustedKey:
    key_id: str
    public: Ed25519PublicKey
    publishers: list[str]
    expires: dt.datetime | None
    added: str = ""
    endorsed_by: str | None = None  # a rotated key: the key whose trust it inherits

    def as_dict(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "public_key": public_b64(self.public), "publishers": self.publishers,
                "expires": _iso(self.expires) if self.expires else None, "added": self.added}


@dataclass
class Revocation:
    key_id: str
    at: str
    reason: str


class TrustStore:
    def __init__(self, root: str | os.PathLike[str] = DEFAULT_TRUST):
        self.root = Path(root)

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    def _init(self) -> None:
        try:
            self.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        except OSError as err:
            raise TrustError(f"cannot create the trust store {self.root}: {err.strerror}") from err

    def keys(self) -> list[TrustedKey]:
        if not self.root.is_dir():
            raise TrustError(f"no trust store at {self.root} (add a key with `policy trust add`)")
        return [k for p in sorted(self.keys_dir.glob("*.json")) if (k := self._load(p))]

    def _load(self, path: Path) -> TrustedKey:
        d = _read_json(path, "a trust store key entry")
        pub = public_from_b64(d.get("public_key"), f"{path}: public_key")
        if d.get("key_id") != key_id(pub) or path.stem != key_id(pub):
            raise TrustError(f"{path}: key_id does not match its public key ({key_id(pub)})")
        pubs = d.get("publishers")
        if not isinstance(pubs, list) or not pubs or not all(isinstance(x, str) and x for x in pubs):
            raise TrustError(f"{path}: publishers must be a non-empty list of names")
        exp = parse_date(d["expires"]) if d.get("expires") else None
        return TrustedKey(key_id(pub), pub, pubs, exp, str(d.get("added", "")))

    def get(self, kid: str) -> TrustedKey | None:
        if not all(c in "0123456789abcdef" for c in kid) or len(kid) != 16:
            return None
        p = self.keys_dir / f"{kid}.json"
        return self._load(p) if p.exists() else None

    def add(self, pubfile: str | os.PathLike[str], publishers: list[str] | None = None,
            expires: str | None = None) -> TrustedKey:
        pf = load_public(pubfile)
        exp = parse_date(expires) if expires else None
        if exp is not None and exp <= _now():
            raise TrustError(f"--expires {expires} is in the past")
        if self.revocation(pf.key_id):
            raise TrustError(f"key {pf.key_id} is revoked in {self.root}: it cannot be trusted again")
        self._init()
        k = TrustedKey(pf.key_id, pf.public, publishers or [pf.publisher], exp, _iso(_now()))
        _write_atomic(self.keys_dir / f"{k.key_id}.json", (json.dumps(k.as_dict(), indent=2) + "\n").encode())
        return k

    def revocations(self) -> list[Revocation]:
        p = self.root / "revoked.json"
        if not p.exists():
            return []
        d = _read_json(p, "a revocation list")
        out = []
        for r in d.get("revoked", []):
            if not isinstance(r, dict) or not isinstance(r.get("key_id"), str):
                raise TrustError(f"{p}: every entry needs a key_id")
            out.append(Revocation(r["key_id"], str(r.get("at", "")), str(r.get("reason", ""))))
        return out

    def revocation(self, kid: str) -> Revocation | None:
        return next((r for r in self.revocations() if r.key_id == kid), None)

    def revoke(self, kid: str, reason: str = "") -> Revocation:
        known = self.get(kid) is not None
        if not known and not (len(kid) == 16 and all(c in "0123456789abcdef" for c in kid)):
            raise TrustError(f"{kid!r} is not a key id (16 hex digits, as `policy trust list` shows)")
        if (r := self.revocation(kid)) is not None:
            return r
        self._init()
        r = Revocation(kid, _iso(_now()), reason)
        entries = [vars(x) for x in self.revocations()] + [vars(r)]
        _write_atomic(self.root / "revoked.json", (json.dumps({"revoked": entries}, indent=2) + "\n").encode())
        return r


# ---- verification -----------------------------------------------------------------------------------------

@dataclass
class Verdict:
    ok: bool
    reason: str  # the first reason it is not trusted, or what it is
    status: str  # signed, unsigned, untrusted, expired, revoked, tampered, files
    publisher: str = ""
    key_id: str = ""
    endorsed_by: str | None = None
    files: list[dict[str, Any]] | None = None
    extras: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "status": self.status, "reason": self.reason, "publisher": self.publisher,
                "key_id": self.key_id, "endorsed_by": self.endorsed_by}


def _signer(store: TrustStore, sig: dict[str, Any], where: str) -> tuple[TrustedKey | None, str]:
    """The trusted key that made sig, directly or through an endorsement by a trusted key; or why none."""
    kid = str(sig.get("key_id", ""))
    k = store.get(kid)
    if k is not None:
        return k, ""
    e = sig.get("endorsement")
    if not isinstance(e, dict):
        return None, f"untrusted: key {kid} is not in the trust store {store.root}"
    st = e.get("statement")
    old = store.get(str(e.get("endorsed_by", "")))
    if old is None or not isinstance(st, dict):
        return None, (f"untrusted: key {kid} is not in the trust store {store.root}, nor is the key "
                      f"{e.get('endorsed_by')} that endorsed it")
    try:
        old.public.verify(_b64(e.get("signature"), f"{where}: endorsement signature"), canonical(st))
        new = public_from_b64(st.get("new_public_key"), f"{where}: endorsed key")
    except (InvalidSignature, TrustError):
        return None, f"untrusted: the endorsement of key {kid} is not signed by {old.key_id}"
    if st.get("format") != ENDORSE_FORMAT or st.get("new_key_id") != kid or key_id(new) != kid:
        return None, f"untrusted: the endorsement by {old.key_id} is for another key than {kid}"
    if st.get("publisher") not in old.publishers:
        return None, f"untrusted: key {old.key_id} may not endorse keys for {st.get('publisher')!r}"
    return TrustedKey(kid, new, old.publishers, old.expires, endorsed_by=old.key_id), ""


def verify(manifest: str | os.PathLike[str], store: TrustStore, files: str | os.PathLike[str] | None = None,
           now: dt.datetime | None = None, raw: bytes | None = None, sig_text: bytes | None = None) -> Verdict:
    """Is MANIFEST signed by a key the store trusts for its publisher, unexpired and unrevoked, with every file
    under FILES as signed? raw and sig_text give the bytes when they do not come from disk (a control request)."""
    m = Path(manifest)
    now = now or _now()
    try:
        raw = m.read_bytes() if raw is None else raw
    except OSError as err:
        return Verdict(False, f"{m}: {err.strerror}", "unsigned")
    sp = sig_path(m)
    if sig_text is None:
        try:
            sig_text = sp.read_bytes()
        except FileNotFoundError:
            return Verdict(False, f"unsigned: no signature {sp.name} beside the manifest", "unsigned")
        except OSError as err:
            return Verdict(False, f"unsigned: {sp}: {err.strerror}", "unsigned")
    try:
        sig = json.loads(sig_text)
        if not isinstance(sig, dict) or sig.get("format") != SIG_FORMAT:
            raise ValueError(f"format is not {SIG_FORMAT!r}")
        signature = _b64(sig.get("signature"), "signature")
    except (ValueError, TrustError, UnicodeDecodeError) as err:
        return Verdict(False, f"unsigned: {sp.name} is not an ebpfguard signature ({err})", "unsigned")
    try:
        k, why = _signer(store, sig, sp.name)
    except TrustError as err:
        return Verdict(False, f"untrusted: the trust store is unreadable: {err}", "untrusted")
    endorsed_by: str | None = None

    def no(status: str, reason: str, **kw: Any) -> Verdict:
        return Verdict(False, reason, status, str(sig.get("publisher", "")), str(sig.get("key_id", "")),
                       endorsed_by, **kw)

    if k is None:
        return no("untrusted", why)
    body = {x: y for x, y in sig.items() if x != "signature"}
    try:
        k.public.verify(signature, canonical(body))
    except InvalidSignature:
        return no("tampered", f"tampered: {sp.name} was altered after key {k.key_id} signed it")
    endorsed_by = k.endorsed_by
    for kid in filter(None, (k.key_id, k.endorsed_by)):
        if (r := store.revocation(kid)) is not None:
            why = f": {r.reason}" if r.reason else ""
            return no("revoked", f"revoked: key {kid} was revoked on {r.at}{why}")
    if k.expires is not None and k.expires <= now:
        return no("expired", f"expired: key {k.key_id} expired on {_iso(k.expires)}")
    digest = hashlib.sha256(raw).hexdigest()
    if digest != sig.get("manifest_sha256"):
        return no("tampered", f"tampered: the manifest's sha256 is {digest[:16]}, the signature covers "
                              f"{str(sig.get('manifest_sha256'))[:16]}")
    try:
        publisher = manifest_publisher(raw, str(m))
    except TrustError as err:
        return no("untrusted", f"untrusted: {err}")
    if publisher != sig.get("publisher") or publisher not in k.publishers:
        return no("untrusted", f"untrusted: key {k.key_id} may sign for {', '.join(k.publishers)}, not for "
                               f"{publisher!r}")
    listed = sig.get("files")
    extras: list[str] = []
    if files is not None:
        if not isinstance(listed, list):
            return no("files", "files: the signature lists no files (signed without --files)")
        problems, extras = check_files(listed, files)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            return no("files", f"files: {problems[0]}{more}", files=listed, extras=extras)
    via = f", endorsed by {k.endorsed_by}" if k.endorsed_by else ""
    return Verdict(True, f"signed by {publisher} (key {k.key_id}{via})", "signed", publisher, k.key_id, endorsed_by,
                   files=listed if isinstance(listed, list) else None, extras=extras)


class LaunchRefused(TrustError):
    """The extension's files are not what its publisher signed: the launch is refused (126, as a shell says of a
    command it cannot execute)."""

    exit_code = 126


def launch_check(recorder: Any, m: Any, files: str, store: TrustStore, sig_text: bytes | None,
                 mode: str | None) -> Verdict:
    """Before a launch with --files: the manifest signed by a trusted key and every file under FILES as signed;
    otherwise a policy record (launch-refused, naming the file) and LaunchRefused. sig_text None reads
    MANIFEST.sig from disk; b"" means the manifest came without one."""
    if sig_text == b"":
        v = Verdict(False, "unsigned: the manifest came without a signature", "unsigned")
    else:
        v = verify(m.source, store, files, raw=m.raw, sig_text=sig_text)
    if not v.ok:
        recorder.policy(m, "launch-refused", verdict="denied", actions=["refuse:launch"], mode=mode,
                        files=str(Path(files).resolve()), reason=v.reason, signature=v.as_dict())
        raise LaunchRefused(f"launch refused: {m.name}: {v.reason}")
    return v
