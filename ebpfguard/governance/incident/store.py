"""Summaries received from elsewhere, kept under STATE/incidents: import_summary() verifies one against trusted keys
and keeps it by its SHA-256, imported() lists them, brief() and received() say what `incident list` and `provenance`
show of them; write_out() writes a shared summary atomically."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ebpfguard.common.statedir import StateDir
from ebpfguard.governance.incident.schema import IncidentError
from ebpfguard.governance.incident.signing import _write_exclusive, check, parse


def store_dir(state_dir: str | os.PathLike[str]) -> Path:
    return StateDir.of(state_dir).incidents


def digest_of(doc: Mapping[str, Any]) -> str:
    """A summary's name in the store: the SHA-256 of its canonical JSON, signature included (the same summary
    however it was laid out is stored once)."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
                          ).hexdigest()


@dataclass
class Imported:
    sha256: str
    path: Path
    doc: dict[str, Any]
    new: bool = True


def import_summary(state_dir: str | os.PathLike[str], path: str | os.PathLike[str],
                   trusted: Mapping[str, Ed25519PublicKey]) -> Imported:
    """Verify the summary at ``path`` against ``trusted`` and keep it as STATE/incidents/<sha256>.json (0600, in
    a 0700 folder, written atomically); IncidentError with why when it is refused (nothing is stored)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise IncidentError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise IncidentError(f"{p} is a folder, not a summary") from None
    except OSError as err:
        raise IncidentError(f"{p}: {err.strerror}") from err
    doc = parse(data, str(p))
    c = check(doc, trusted)
    if not c.ok:
        raise IncidentError(f"{p}: {c}")
    folder = store_dir(state_dir)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        raise IncidentError(f"cannot create {folder}: {err.strerror}") from err
    sha = digest_of(doc)
    dest = folder / f"{sha}.json"
    if dest.exists():
        return Imported(sha, dest, doc, new=False)
    body = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    tmp = folder / f".{sha}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        _write_exclusive(tmp, body, 0o600, "a file")
        try:
            os.link(tmp, dest)  # exclusive: a second import of the same summary finds it there
        except FileExistsError:
            return Imported(sha, dest, doc, new=False)
        finally:
            tmp.unlink(missing_ok=True)
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as err:
        raise IncidentError(f"cannot write {dest}: {err.strerror}") from err
    return Imported(sha, dest, doc)


def imported(state_dir: str | os.PathLike[str], extension: str | None = None) -> list[Imported]:
    """The summaries kept under STATE/incidents (of ``extension``), oldest import first; a file there that is not
    one is skipped (the store is written only by import)."""
    folder = store_dir(state_dir)
    out = []
    try:
        files = sorted(folder.glob("*.json"), key=lambda p: (p.stat().st_mtime, p.name))
    except OSError:
        return []
    for p in files:
        try:
            doc = parse(p.read_bytes(), str(p))
        except (OSError, IncidentError):
            continue
        if extension is None or (doc.get("extension") or {}).get("name") == extension:
            out.append(Imported(p.stem, p, doc, new=False))
    return out


def brief(item: Imported) -> dict[str, Any]:
    """One imported summary in a line's worth: what `incident list` and `provenance` show of it."""
    doc = item.doc
    ext = doc.get("extension") or {}
    signer = doc.get("signer") or {}
    counts = doc.get("counts") or {}
    techs = [{"technique": t.get("technique"), "attack_id": t.get("attack_id"), "count": t.get("count")}
             for t in doc.get("techniques") or []]
    return {"sha256": item.sha256, "extension": ext.get("name"),
            "versions": [{"version": v.get("version"), "policy_sha256": v.get("policy_sha256")}
                         for v in ext.get("versions") or []],
            "signer": signer.get("key_id"), "period": doc.get("period"), "violations": counts.get("violations", 0),
            "techniques": techs, "destinations": [f"{d.get('address')}:{d.get('port')}"
                                                  for d in doc.get("destinations") or []],
            "imported": dt.datetime.fromtimestamp(item.path.stat().st_mtime, dt.UTC).strftime("%Y-%m-%d")
            if item.path.exists() else None}


def received(state_dir: str | os.PathLike[str], name: str, versions: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """The imported summaries of extension ``name``, each with the local version it matches (by policy sha256,
    else by version) among ``versions`` [(version, sha256)], or None."""
    local = list(versions)
    out = []
    for item in imported(state_dir, name):
        b = brief(item)
        match = None
        for v in b["versions"]:
            hit = next((lv for lv in local if lv[1] and lv[1] == v.get("policy_sha256")), None) or \
                next((lv for lv in local if lv[0] and lv[0] == v.get("version")), None)
            if hit:
                match = {"version": hit[0], "sha256": hit[1],
                         "by": "policy sha256" if hit[1] == v.get("policy_sha256") else "version"}
                break
        out.append({**b, "matches": match})
    return out


def write_out(path: str | os.PathLike[str], text: str) -> None:
    """The summary to OUT, atomically (a reader never sees half of it)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        _write_exclusive(tmp, text.encode(), 0o644, "a file")
        os.replace(tmp, p)
    except OSError as err:
        raise IncidentError(f"cannot write {p}: {err.strerror}") from err
    finally:
        tmp.unlink(missing_ok=True)
