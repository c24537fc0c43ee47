"""``ebpfguard agent``: loads the programs once, serves the control socket, watches the policy
directory, releases instances whose cgroups have emptied, and on SIGTERM detaches everything.

One thread: the loop polls the ring buffer (20 ms), then the sockets, then its timers.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import socket
import time
from pathlib import Path
from typing import Any

from ebpfguard.errors import EbpfguardError, ManifestError
from ebpfguard.forensics import MAX_BYTES, ForensicLog, Forwarder
from ebpfguard.governance.trust import DEFAULT_TRUST, TrustStore, Verdict, launch_check, sig_path, verify
from ebpfguard.kernel.cgroups import CgroupManager
from ebpfguard.kernel.features import bpf_lsm_status
from ebpfguard.manifest.load import Manifest, load, parse
from ebpfguard.pipeline.correlate import load_correlator
from ebpfguard.pipeline.events import now_ns, rfc3339_ns
from ebpfguard.runtime.engine import Engine, Instance
from ebpfguard.sandbox import landlock_confines, landlock_reports
from ebpfguard.service.control import MAX_REQUEST, peer_uid, socket_path
from ebpfguard.service.journal import record_line
from ebpfguard.service.sdnotify import notify

log = logging.getLogger("ebpfguard")
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


ACTIVITY_BUFFER = 4 << 20  # bytes of activity a slow tracer may fall behind by before lines are dropped


class Conn:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""
        self.instances: list[int] = []  # cgroup ids this connection prepared
        # trace --activity: what this connection follows (an extension's instances, or given cgroups)
        self.watch_extension: str | None = None
        self.watch_cgroups: set[int] = set()
        self.watching = False
        self.out = bytearray()  # activity lines not yet taken by the tracer
        self.lost = 0  # activity lines dropped because the tracer fell behind

    def follows(self, cgroup_id: int, extension: str | None) -> bool:
        return self.watching and (cgroup_id in self.watch_cgroups or
                                  (self.watch_extension is not None and extension == self.watch_extension))


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


class Agent:
    def __init__(self, state_dir: str, policy_dir: str | None, engine: Engine | None = None,
                 allow_root_extensions: bool = False, metrics_address: str = "", rotate_bytes: int = MAX_BYTES,
                 log_forward: str = "", bpf_stats: bool = False, trust_dir: str | None = None,
                 require_signed: bool = False, anomaly_response: str = "alert"):
        self.state_dir = state_dir
        self.rotate_bytes = rotate_bytes
        self.log_forward = log_forward
        self.bpf_stats = bpf_stats
        self._stats_fd = -1
        self.metrics_address = metrics_address
        self.allow_root_extensions = allow_root_extensions
        self.policies = PolicyDir(policy_dir, trust_dir, require_signed, Path(state_dir) / "promoted.json")
        self.anomaly_response = anomaly_response
        self._engine = engine
        self.engine: Engine
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, Conn] = {}
        self.stopping = False
        self.started_ns = now_ns()
        self.listener: socket.socket | None = None
        self.metrics_error = ""  # why the metrics endpoint is not served (status says so)
        self._drops_seen = 0

    # ---- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        Path(self.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.state_dir, 0o700)
        path = socket_path(self.state_dir)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
            raise EbpfguardError(f"another agent is already serving {path}")
        except (FileNotFoundError, ConnectionRefusedError):
            pass
        finally:
            probe.close()
        if self._engine is None:
            forward = Forwarder(self.log_forward) if self.log_forward else None
            self._engine = Engine(self.state_dir, log=ForensicLog(self.state_dir, self.rotate_bytes, forward),
                                  cgroups=CgroupManager.for_service())
        self.engine = self._engine
        if self.engine.observers.correlator is None:
            self.engine.observers.correlator = load_correlator(str(self.policies.dir) if self.policies.dir else None)
        if self.engine.baseline_for is None:
            self.engine.baseline_for = self._baseline_for
        self.engine.observers.anomaly_response = self.anomaly_response
        self.engine.log.durable.append(self._log_record)
        self.engine.observers.subscribers.append(self._on_activity)
        if forward := self.engine.log.forward:
            log.info("records also go to %s at %s", forward.kind, forward.address)
            if forward.missing:
                log.warning("--log-forward %s: %s", forward.kind, forward.missing)
        if self.bpf_stats:
            from ebpfguard.kernel.progstats import enable_stats  # noqa: PLC0415

            try:
                self._stats_fd = enable_stats()
            except EbpfguardError as err:
                log.error("BPF program statistics not enabled: %s", err)
        for inst in self.engine.readopt():
            log.info("re-adopted running instance %s (%s, pids %s)", inst.id, inst.manifest.name, inst.cgroup.pids())
        for name in self.engine.cgroups.sweep(set(self.engine.instances)):
            log.info("removed stale empty cgroup %s", name)
        for layer in self.engine.pending_rollbacks():
            log.warning("rollback: instance %s of %s left %d uncommitted change(s) in %s: "
                        "`ebpfguard rollback show|commit|discard %s`", layer.instance, layer.meta.get("extension"),
                        len(layer.changes()), ", ".join(t.target for t in layer.trees), layer.instance)
        path.unlink(missing_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.listener.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self._scan_policies()
        if self.metrics_address:
            from ebpfguard.observability.metrics import serve  # noqa: PLC0415

            try:
                port = serve(self.engine, self.metrics_address, self.policies.manifests)
                log.info("metrics on http://%s:%d/metrics", self.metrics_address.rpartition(":")[0], port)
            except (OSError, ValueError) as err:  # metrics are not worth refusing to enforce over, but said
                self.metrics_error = f"not served on {self.metrics_address}: {getattr(err, 'strerror', None) or err}"
                log.error("metrics %s", self.metrics_error)
        log.info("enforcing: %d policies, control socket %s, state %s", len(self.policies.by_file), path,
                 self.state_dir)
        notify("READY=1", f"STATUS=enforcing {len(self.policies.by_file)} policies"
               + (f"; metrics {self.metrics_error}" if self.metrics_error else ""))

    def _baseline_for(self, m: Manifest) -> Any:
        from ebpfguard.governance.baseline import BaselineError, find  # noqa: PLC0415

        try:
            b = find(str(self.policies.dir) if self.policies.dir else None, m.name, m.version)
        except BaselineError as err:
            log.error("%s: baseline not used: %s", m.name, err)
            return None
        if b is not None:
            log.info("%s: baseline %s (%d runs): what it never saw is an anomaly (%s)", m.name, b.source, b.runs,
                     self.anomaly_response)
        return b

    def _scan_policies(self) -> None:
        for line in self.policies.scan():
            (log.warning if " rejected" in line or "unsigned" in line or "untrusted" in line else log.info)("%s", line)
        while self.policies.pending:
            m, detail = self.policies.pending.pop(0)
            self.engine.recorder.write(None, {"kind": "policy", "pid": None, "verdict": None, "actions": [],
                                              "detail": {"name": m.name, "version": m.version, **detail}},
                                       manifest=m, mode=m.mode)

    def _log_drops(self) -> None:
        """Kernel records lost since the last look (the ring buffer was full): denied, but not recorded."""
        drops = int(self.engine.sensor.counters().get("drops", 0))
        if drops > self._drops_seen:
            log.warning("the kernel dropped %d records in the last second (ring buffer full): those violations "
                        "were decided but not recorded; %d in all", drops - self._drops_seen, drops)
        self._drops_seen = drops

    @staticmethod
    def _log_record(rec: dict[str, Any]) -> None:
        line = record_line(rec)
        if line is not None:
            log.log(line[0], "%s", line[1])

    def request_stop(self, *_: object) -> None:
        self.stopping = True

    def serve_forever(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        last_scan = 0.0
        while not self.stopping:
            self.engine.poll(20)
            for key, _ in self.sel.select(0):
                if key.data is None:
                    self._accept()
                else:
                    self._read(key.data)
            for conn in [c for c in self.conns.values() if c.out]:
                self._flush(conn)
            now = time.monotonic()
            if now - last_scan >= 1.0:
                last_scan = now
                self._scan_policies()
                self._log_drops()
                self.engine.reap()
                self._maybe_checkpoint()
        self.shutdown()

    def shutdown(self) -> None:
        notify("STOPPING=1", "STATUS=stopping: extensions stopped, programs detached")
        n = len(self.engine.instances)
        if n:
            log.info("stopping: killing %d running extension instance(s)", n)
        self.engine.close()  # ends with a checkpoint
        for conn in list(self.conns.values()):
            self._drop(conn)
        if self.listener:
            self.sel.unregister(self.listener)
            self.listener.close()
            socket_path(self.state_dir).unlink(missing_ok=True)
        try:
            self.engine.cgroups.slice_v2.rmdir()
            for root in self.engine.cgroups.v1_roots.values():
                (root / self.engine.cgroups.slice_name).rmdir()
        except OSError:
            pass
        if self._stats_fd >= 0:
            os.close(self._stats_fd)
        log.info("stopped: programs detached, cgroups removed")

    def _maybe_checkpoint(self) -> None:
        try:
            self.engine.log.maybe_checkpoint()
        except EbpfguardError as err:
            log.error("%s", err)

    # ---- connections ----------------------------------------------------------------------------
    def _accept(self) -> None:
        assert self.listener is not None
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        if peer_uid(sock) != 0:
            sock.sendall(b'{"ok": false, "error": "the control socket serves root only"}\n')
            sock.close()
            return
        sock.setblocking(False)
        conn = Conn(sock)
        self.conns[sock.fileno()] = conn
        self.sel.register(sock, selectors.EVENT_READ, conn)

    def _drop(self, conn: Conn) -> None:
        if conn.watching:
            conn.watching = False
            self._retrace()
        for cgid in conn.instances:
            inst = self.engine.instances.get(cgid)
            if inst is not None:
                inst.launcher_done = True
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        self.conns.pop(conn.sock.fileno(), None)
        conn.sock.close()

    def _read(self, conn: Conn) -> None:
        try:
            chunk = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(conn)
            return
        conn.buf += chunk
        while b"\n" in conn.buf:
            line, conn.buf = conn.buf.split(b"\n", 1)
            self._send(conn, self._answer(conn, line))
        if len(conn.buf) > MAX_REQUEST:
            self._send(conn, {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"})
            self._drop(conn)

    def _send(self, conn: Conn, answer: dict[str, Any]) -> None:
        try:
            conn.sock.setblocking(True)
            conn.sock.sendall(json.dumps(answer).encode() + b"\n")
            conn.sock.setblocking(False)
        except OSError:
            self._drop(conn)

    # ---- trace --activity ---------------------------------------------------------------------------
    def _retrace(self) -> None:
        """Trace exactly the instances some connection follows (the hooks cost nothing for the rest)."""
        for cgid, inst in list(self.engine.instances.items()):
            want = any(c.follows(cgid, inst.manifest.name) for c in self.conns.values())
            if want != (cgid in self.engine.observers.traced):
                self.engine.trace_activity(inst, want)

    def _on_activity(self, cgroup_id: int, item: dict[str, Any]) -> None:
        line = None
        for conn in list(self.conns.values()):
            if not conn.follows(cgroup_id, item.get("extension")):
                continue
            line = line or (json.dumps(item) + "\n").encode()
            if len(conn.out) + len(line) > ACTIVITY_BUFFER:
                conn.lost += 1
                continue
            if conn.lost:
                conn.out += (json.dumps({"lost": conn.lost}) + "\n").encode()
                conn.lost = 0
            conn.out += line
            self._flush(conn)

    def _flush(self, conn: Conn) -> None:
        if not conn.out:
            return
        try:
            n = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        del conn.out[:n]

    def _op_activity(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        ext, pid = req.get("extension"), req.get("pid")
        if ext is not None and not isinstance(ext, str):
            raise TypeError("extension must be a name")
        if pid is not None:
            pid = int(pid)
            owner = next((i for i in self.engine.instances.values() if pid in i.cgroup.pids()), None)
            if owner is None:
                raise EbpfguardError(f"pid {pid} is in no extension instance (ebpfguard status lists them)")
            conn.watch_cgroups.add(owner.cgroup_id)
        elif ext is not None:
            known = set(self.policies.manifests()) | {i.manifest.name for i in self.engine.instances.values()}
            if ext not in known and not any(i.id == ext for i in self.engine.instances.values()):
                raise EbpfguardError(f"no extension or instance named {ext!r} (policies and running instances: "
                                     f"{', '.join(sorted(known)) or 'none'})")
            inst = next((i for i in self.engine.instances.values() if i.id == ext), None)
            if inst is not None:
                conn.watch_cgroups.add(inst.cgroup_id)
            else:
                conn.watch_extension = ext
        else:
            raise ValueError("activity needs an extension or a pid")
        conn.watching = True
        self._retrace()
        following = [i.id for c, i in self.engine.instances.items() if conn.follows(c, i.manifest.name)]
        return {"following": following}

    def _answer(self, conn: Conn, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
        except ValueError as err:
            return {"ok": False, "error": f"request is not JSON: {err}"}
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            return {"ok": False, "error": "a request is a JSON object with a string 'op'"}
        handler = getattr(self, "_op_" + req["op"], None)
        if handler is None:
            return {"ok": False, "error": f"unknown op {req['op']!r} (ping, status, prepare, started, exited, "
                                         "freeze, thaw, kill, quarantine, attach, flag, promote, activity, rollback)"}
        try:
            return {"ok": True, **handler(conn, req)}
        except (KeyError, TypeError, ValueError) as err:
            return {"ok": False, "error": f"bad {req['op']} request: {err!r}"}
        except EbpfguardError as err:
            return {"ok": False, "error": str(err), **({"exit_code": c} if (c := getattr(err, "exit_code", 0)) else {})}

    # ---- operations -----------------------------------------------------------------------------
    def _op_ping(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid(), "started": rfc3339_ns(self.started_ns)}

    def _op_status(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        sensor = self.engine.sensor
        return {
            "agent": {"pid": os.getpid(), "started": rfc3339_ns(self.started_ns), "state": "enforcing",
                      "state_dir": self.state_dir, "cgroup_mode": self.engine.cgroups.mode,
                      "counters": sensor.counters(), "records_written": self.engine.log.written,
                      "records_failed": self.engine.log.failed + self.engine.record_errors,
                      "landlock_reports": self.engine.laudit_status,
                      "metrics": {"address": self.metrics_address or None, "error": self.metrics_error or None},
                      "syscall_gates": sorted(sensor.gates), "syscalls_not_in_kernel": sorted(sensor.missing_gates),
                      "layers": ["cgroup-sock-addr (deny)", "tracepoints (detect, kill, hold)",
                                 "launcher: user, no_new_privs, landlock, seccomp, rlimits", "cgroup caps",
                                 "bpf-lsm (deny on resolved files, execs, ptrace, namespaces)"
                                 if getattr(sensor, "lsm", False) else f"bpf-lsm: unavailable: {bpf_lsm_status()[1]}"]},
            "policies": [{"name": m.name, "version": m.version, "mode": m.mode, "sha256": m.sha256,
                          "file": m.source, "signature": (v.as_dict() if (v := self.policies.signature(m)) else None)}
                         for m in self.policies.manifests().values()],
            "shadows": [{"name": m.name, "version": m.version, "sha256": m.sha256, "file": m.source,
                         "enforced": m.name in self.policies.manifests(),
                         "shadow_denials": sum(i.shadow_denials for i in self.engine.instances.values()
                                               if i.manifest.name == m.name)}
                        for m in self.policies.shadows().values()],
            "require_signed": self.policies.require_signed, "trust": str(self.policies.trust.root),
            "policy_errors": self.policies.errors,
            "instances": [i.summary() for i in self.engine.instances.values()],
        }

    def _op_prepare(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        mode = req.get("mode")
        if mode not in (None, "audit", "enforce"):
            raise ValueError(f"mode {mode!r} is not audit or enforce")
        if req.get("extension"):
            m = self.policies.manifests().get(req["extension"])
            if m is None and req["extension"] in self.policies.shadows():
                raise EbpfguardError(f"{req['extension']!r} has only a shadow version: promote it "
                                     "(policy promote) or add an enforced one")
            if m is None:
                raise EbpfguardError(f"no policy named {req['extension']!r} in {self.policies.dir}")
        else:
            text = req["manifest_text"]
            if not isinstance(text, str):
                raise TypeError("manifest_text must be a string")
            m = parse(text.encode(), str(req.get("manifest_path", "<request>")), home=req.get("home"))
        signed = None
        if req.get("files"):  # the extension's folder, against the file list its publisher signed
            sig = req.get("signature_text")
            signed = launch_check(self.engine.recorder, m, str(req["files"]), self.policies.trust,
                                  None if req.get("extension") else (sig.encode() if isinstance(sig, str) else b""),
                                  mode)
        # the client is ebpfguard's own launcher (the socket is root's): it restricts what it starts
        shadow = self.policies.shadows().get(m.name)
        inst = self.engine.prepare(m, mode, landlocked=landlock_confines(m, mode),
                                     landlock_reports=landlock_reports(m, mode),
                                     shadow=shadow if shadow is not None and shadow.sha256 != m.sha256 else None)
        if signed is not None:
            inst.watch_signed(str(req["files"]), signed.files or [])
        conn.instances.append(inst.cgroup_id)
        self._retrace()  # a tracer following this extension sees it from its first exec
        return {"instance": inst.id, "procs_files": inst.cgroup.procs_files(), "cgroup": str(inst.cgroup.v2),
                "manifest_text": m.raw.decode(), "manifest_path": m.source, "home": req.get("home"),
                "allow_root": self.allow_root_extensions, "dbus_proxies": inst.proxy_folders(),
                "rollback": inst.rollback.overlays() if inst.rollback else {}}

    def _op_attach(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        mode = req.get("mode")
        if mode not in (None, "audit", "enforce"):
            raise ValueError(f"mode {mode!r} is not audit or enforce")
        text = req["manifest_text"]
        if not isinstance(text, str):
            raise TypeError("manifest_text must be a string")
        m = parse(text.encode(), str(req.get("manifest_path", "<request>")), home=req.get("home"))
        inst = self.engine.adopt(m, int(req["pid"]), mode)
        self._retrace()
        return {"instance": inst.id, "cgroup": str(inst.cgroup.v2), "pids": inst.cgroup.pids(),
                "not_enforced": inst.sandbox["not_enforced"]}

    def _instance(self, req: dict[str, Any]) -> Instance:
        for inst in self.engine.instances.values():
            if inst.id == req["instance"]:
                return inst
        raise EbpfguardError(f"no running instance {req['instance']!r}")

    def _op_started(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        inst = self._instance(req)
        sandbox = req.get("sandbox")
        if sandbox is not None and not isinstance(sandbox, dict):
            raise TypeError("sandbox must be an object")
        self.engine.started(inst, int(req["pid"]), [str(a) for a in req["argv"]], sandbox)
        return {}

    def _targets(self, req: dict[str, Any]) -> list[Instance]:
        """An instance by its id, or every running instance of an extension by its name."""
        name = req["name"]
        found = [i for i in self.engine.instances.values() if name in (i.id, i.manifest.name)]
        if not found:
            raise EbpfguardError(f"no running instance or extension named {name!r}")
        return found

    def _op_rollback(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        """list; show, commit or discard ID: a running (frozen) instance's overlays, or those an instance left
        when the agent or the host went down. A running instance is killed first, then its changes go as asked."""
        action = req.get("action")
        if action not in ("list", "show", "commit", "discard"):
            raise ValueError(f"action {action!r} is not list, show, commit or discard")
        live = {i.id: i for i in self.engine.instances.values() if i.rollback is not None}
        if action == "list":
            return {"running": [{**i.rollback.show(), "state": i.state} for i in live.values()],
                    "pending": [layer.show() for layer in self.engine.pending_rollbacks()]}
        ident = req.get("id")
        if not isinstance(ident, str) or not ident:
            raise ValueError("id must name an instance")
        by = str(req.get("by") or "root")
        if ident in live:
            inst = live[ident]
            if action == "show":
                return {**inst.rollback.show(), "state": inst.state}
            inst.rollback_choice = action
            self.engine.recorder.lifecycle(inst, f"rollback-{action}", by=by, actions=["cgroup.kill"])
            self.engine.kill(inst)  # its stop (when its launcher is done) commits or discards, as asked
            return {"instance": ident, "stopped": True, "event": "committed" if action == "commit" else "discarded"}
        layer = next((x for x in self.engine.pending_rollbacks() if x.instance == ident), None)
        if layer is None:
            raise EbpfguardError(f"no rollback area for an instance {ident!r} (ebpfguard rollback list)")
        if action == "show":
            return layer.show()
        detail = self.engine.finish_rollback(layer, action, by=by)
        return {"instance": ident, "stopped": False, **{k: detail[k] for k in ("event", "count", "counts")},
                "conflicts": detail.get("conflicts") or []}

    def _op_promote(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        name = req["extension"]
        if not isinstance(name, str):
            raise TypeError("extension must be a name")
        old, new = self.policies.promote(name)
        detail = {"event": "promoted", "name": name, "version": new.version, "file": Path(new.source).name,
                  "replaces": {"version": old.version, "sha256": old.sha256} if old else None}
        self.engine.recorder.write(None, {"kind": "policy", "pid": None, "verdict": None, "actions": [],
                                          "detail": detail}, manifest=new, mode=new.mode)
        log.warning("%s: shadow version %s (%s) promoted: it is enforced for instances launched from now on",
                    name, new.version, new.sha256[:12])
        return {"name": name, "version": new.version, "sha256": new.sha256,
                "replaces": detail["replaces"]}

    def _op_flag(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        name, reason = req["extension"], str(req.get("reason") or "")
        if not isinstance(name, str) or not name:
            raise ValueError("extension must be a name")
        if not req.get("clear") and not reason:
            raise ValueError("a flag needs a reason")
        rec = self.engine.recorder.flag(name, not req.get("clear"), reason, str(req.get("by") or "root"))
        if rec is None:
            raise EbpfguardError("the flag could not be written to the forensic log")
        d = rec["detail"]
        log.warning("%s: %s by %s%s", name, d["event"], d["by"], f": {reason}" if reason else "")
        return {"seq": rec["seq"]}

    def _operator(self, req: dict[str, Any], action: str) -> dict[str, Any]:
        done = []
        for inst in self._targets(req):
            self.engine.operator(inst, action)
            done.append(inst.id)
        return {"instances": done}

    def _op_freeze(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        return self._operator(req, "freeze")

    def _op_thaw(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        return self._operator(req, "thaw")

    def _op_kill(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        return self._operator(req, "kill")

    def _op_quarantine(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        return self._operator(req, "lift" if req.get("lift") else "quarantine")

    def _op_exited(self, conn: Conn, req: dict[str, Any]) -> dict[str, Any]:
        inst = self._instance(req)
        self.engine.leader_exited(inst, int(req["status"]))
        self.engine.reap()
        return {}
