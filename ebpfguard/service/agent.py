"""``ebpfguard agent``: loads the programs once, serves the control socket (server.py, from the protocol table in
protocol.py) to every local user, watches the policy folder (governance/policydir.py), launches users' instances as
them and watches their processes, releases instances whose cgroups have emptied, and on SIGTERM detaches everything.
The operations' handlers are here, one method per row of the table, each taking its typed request and returning its
typed answer. An OWNER-class handler acts on the caller's own instances only (protocol.owns): another user's are
answered as if they did not exist.

One thread: the loop polls the ring buffer (20 ms), then the sockets, then its timers.
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import socket
import stat
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ebpfguard.errors import EbpfguardError
from ebpfguard.forensics import MAX_BYTES, BadLine, ForensicLog, Forwarder, read
from ebpfguard.forensics.explain import explain
from ebpfguard.governance.policydir import PolicyDir
from ebpfguard.governance.trust import LaunchRefused, launch_check, sig_path
from ebpfguard.governance.trust import verify as verify_signature
from ebpfguard.kernel.cgroups import CgroupManager
from ebpfguard.kernel.features import bpf_lsm_status
from ebpfguard.manifest.load import Manifest, parse
from ebpfguard.pipeline.correlate import load_correlator
from ebpfguard.pipeline.events import now_ns, rfc3339_ns
from ebpfguard.runtime.engine import Engine, Instance
from ebpfguard.runtime.launch import start_for_caller
from ebpfguard.sandbox import landlock_confines, landlock_reports
from ebpfguard.sandbox.launcher import exit_status
from ebpfguard.service import protocol as p
from ebpfguard.service.control import socket_path
from ebpfguard.service.journal import record_line
from ebpfguard.service.protocol import BadRequest, Limits, RollbackAction, Session, owns
from ebpfguard.service.sdnotify import notify
from ebpfguard.service.server import Server, systemd_socket
from ebpfguard.service.wire import decode, to_wire

log = logging.getLogger("ebpfguard")


@dataclass(eq=False)
class Launch:
    """An instance the agent launched for a caller: its main process, until its cgroup is empty."""

    session: Session | None  # None once the caller's connection is gone
    inst: Instance
    proc: subprocess.Popen[bytes]
    pidfd: int
    status: int | None = None  # the main process's, once it exited


class Book:
    """The records of the instances users launched, for their own `records` and `explain` requests (root reads the
    log itself): read back from the log once, at the first such request, then kept from each record as it
    becomes durable. At most MAX records (the oldest go first; the log keeps them all)."""

    MAX = 50_000

    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        self.owner: dict[str, int] = {}  # instance id -> the uid that launched it (non-root only)
        self.recs: deque[dict[str, Any]] = deque(maxlen=self.MAX)
        self.filled = False

    def note(self, rec: dict[str, Any]) -> None:
        detail = rec.get("detail")
        if rec.get("kind") == "lifecycle" and isinstance(detail, dict) and detail.get("event") == "start":
            sandbox = detail.get("sandbox")
            by = sandbox.get("launched_by") if isinstance(sandbox, dict) else None
            if isinstance(by, int) and by > 0:
                self.owner[str(rec.get("instance"))] = by
        if self.owner.get(str(rec.get("instance"))):
            self.recs.append(rec)

    def fill(self) -> None:
        if self.filled:
            return
        self.filled = True
        kept = list(self.recs)
        self.recs.clear()
        last = 0
        for rec in read(self.state_dir):
            if not isinstance(rec, BadLine):
                self.note(rec)
                last = max(last, int(rec.get("seq") or 0))
        for rec in kept:  # written while the log was read back
            if int(rec.get("seq") or 0) > last:
                self.recs.append(rec)

    def of(self, uid: int) -> list[dict[str, Any]]:
        self.fill()
        return [r for r in self.recs if self.owner.get(str(r.get("instance"))) == uid]


@dataclass
class UidLimits:
    """One non-root uid's launches in the window (protocol.Limits)."""

    launches: deque[float] = field(default_factory=deque)


class Agent:
    def __init__(self, state_dir: str, policy_dir: str | None, engine: Engine | None = None,
                 allow_root_extensions: bool = False, metrics_address: str = "", rotate_bytes: int = MAX_BYTES,
                 log_forward: str = "", bpf_stats: bool = False, trust_dir: str | None = None,
                 require_signed: bool = False, anomaly_response: str = "alert", socket_file: str | None = None,
                 socket_group: str | None = None, limits: Limits | None = None):
        self.state_dir = state_dir
        self.socket_file = socket_file
        self.socket_group = socket_group
        self.limits = limits or Limits()
        self.launches: dict[int, Launch] = {}  # cgroup id -> a launch for a caller
        self.book = Book(state_dir)
        self.by_uid: dict[int, UidLimits] = {}
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
        self.server = Server(self, on_close=self._closed, limits=self.limits)
        self.stopping = False
        self.started_ns = now_ns()
        self.metrics_error = ""  # why the metrics endpoint is not served (status says so)
        self._drops_seen = 0

    # ---- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        Path(self.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.state_dir, 0o700)
        path = socket_path(self.state_dir, self.socket_file, client=False)
        activated = systemd_socket(path)  # ebpfguard.socket: clients wait in its queue until the agent enforces
        if activated is None:
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
                raise EbpfguardError(f"another agent is already serving {path}")
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            finally:
                probe.close()
        else:
            log.info("serving %s, passed by systemd (socket activation)", path)
        self.setup()
        self.server.listen(path, self.socket_group, activated)
        self.scan_policies()
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

    def setup(self) -> None:
        """The engine, wired to the agent (correlation, baselines, the journal, activity), and what an earlier
        agent left: running instances taken back, stale cgroups removed, rollback areas named."""
        if self._engine is None:
            forward = Forwarder(self.log_forward) if self.log_forward else None
            self._engine = Engine(self.state_dir, log=ForensicLog(self.state_dir, self.rotate_bytes, forward),
                                  cgroups=CgroupManager.for_service(), keep_for=os.path.realpath(self.state_dir))
        self.engine = self._engine
        kept, set_hash = getattr(self.engine.sensor, "kept", ""), getattr(self.engine.sensor, "set_hash", "")
        if kept:
            log.info("eBPF programs: %s (set %s, /sys/fs/bpf/ebpfguard)", kept, set_hash)
        if self.engine.observers.correlator is None:
            self.engine.observers.correlator = load_correlator(str(self.policies.dir) if self.policies.dir else None)
        if self.engine.baseline_for is None:
            self.engine.baseline_for = self._baseline_for
        self.engine.observers.anomaly_response = self.anomaly_response
        self.engine.log.durable.append(self._log_record)
        self.engine.log.durable.append(self.book.note)
        self.engine.log.durable.append(self._to_subscribers)
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

    def scan_policies(self) -> None:
        for line in self.policies.scan():
            (log.warning if " rejected" in line or "unsigned" in line or "untrusted" in line else log.info)("%s", line)
        while self.policies.pending:
            m, detail = self.policies.pending.pop(0)
            self.engine.recorder.policy(m, **detail)

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
            self.server.step(0)
            self._watch_launches()
            now = time.monotonic()
            if now - last_scan >= 1.0:
                last_scan = now
                self.scan_policies()
                self._log_drops()
                self.engine.reap()
                self._maybe_checkpoint()
        self.shutdown()

    def shutdown(self) -> None:
        notify("STOPPING=1", "STATUS=stopping: extensions stopped, their programs detached")
        n = len(self.engine.instances)
        if n:
            log.info("stopping: killing %d running extension instance(s)", n)
        self.engine.close()  # ends with a checkpoint
        for launch in list(self.launches.values()):  # their cgroups were killed: each caller hears how it ended
            self._ended(launch, launch.proc.wait() if launch.status is None else None)
        self.server.close()
        try:
            self.engine.cgroups.slice_v2.rmdir()
            for root in self.engine.cgroups.v1_roots.values():
                (root / self.engine.cgroups.slice_name).rmdir()
        except OSError:
            pass
        if self._stats_fd >= 0:
            os.close(self._stats_fd)
        log.info("stopped: extensions' programs detached, cgroups removed; the kept programs wait idle for the "
                 "next start")

    def _maybe_checkpoint(self) -> None:
        try:
            self.engine.log.maybe_checkpoint()
        except EbpfguardError as err:
            log.error("%s", err)

    def _closed(self, s: Session) -> None:
        """A connection ended: what it followed is no longer traced for it, and the instances it prepared have
        lost their launcher (each is released once its cgroup is empty)."""
        if s.watching:
            s.watching = False
            self._retrace()
        for cgid in s.instances:
            inst = self.engine.instances.get(cgid)
            if inst is not None:
                inst.launcher_done = True
        for cgid in s.launched:  # the caller is gone: so is what it launched (its changes kept aside, if any)
            launch = self.launches.get(cgid)
            if launch is None:
                continue
            launch.session = None
            inst = launch.inst
            if cgid in self.engine.instances and inst.cgroup.populated():
                self.engine.recorder.lifecycle(inst, "kill", by="agent", why="the connection that launched it closed",
                                               actions=["cgroup.kill"])
                self.engine.kill(inst)
                inst.discard = False
                inst.rollback_choice = "keep" if inst.rollback is not None else None
            inst.launcher_done = True

    # ---- launches for callers ---------------------------------------------------------------------------
    def _watch_launches(self) -> None:
        """Each launched main process that exited is reported to the engine; once the instance's cgroup is empty
        it is released and its caller told how it ended."""
        for cgid, launch in list(self.launches.items()):
            if launch.status is None:
                rc = launch.proc.poll()
                if rc is None:
                    continue
                launch.status = exit_status(rc)
                if cgid in self.engine.instances:
                    self.engine.leader_exited(launch.inst, launch.status)
            if cgid in self.engine.instances:
                if launch.inst.cgroup.populated():
                    continue
                self.engine.release(launch.inst)
            self._ended(launch, None)

    def _ended(self, launch: Launch, rc: int | None) -> None:
        if rc is not None:
            launch.status = exit_status(rc)
        self.launches.pop(launch.inst.cgroup_id, None)
        os.close(launch.pidfd)
        if launch.session is not None:
            self.server.tell(launch.session, {"exited": launch.status, "instance": launch.inst.id})
            if launch.inst.cgroup_id in launch.session.launched:
                launch.session.launched.remove(launch.inst.cgroup_id)

    def _admit_launch(self, uid: int) -> None:
        """A non-root uid's limits: running instances, launches in the window."""
        if uid == 0:
            return
        lim = self.limits
        running = sum(1 for i in self.engine.instances.values() if i.launched_by == uid)
        if running >= lim.instances:
            log.warning("refused a launch of uid %d: %d instances running (the limit)", uid, running)
            raise EbpfguardError(f"uid {uid} has {running} instances running (the limit is {lim.instances}): "
                                 "stop one first")
        recent = self.by_uid.setdefault(uid, UidLimits()).launches
        now = time.monotonic()
        while recent and now - recent[0] > lim.launch_window_s:
            recent.popleft()
        if len(recent) >= lim.launches:
            log.warning("refused a launch of uid %d: %d launches in %g s (the limit)", uid, len(recent),
                        lim.launch_window_s)
            raise EbpfguardError(f"uid {uid} launched {len(recent)} instances in the last {lim.launch_window_s:g} s "
                                 f"(the limit is {lim.launches}): try again in a moment")
        recent.append(now)

    # ---- trace --activity ---------------------------------------------------------------------------
    def _retrace(self) -> None:
        """Trace exactly the instances some connection follows (the hooks cost nothing for the rest)."""
        for cgid, inst in list(self.engine.instances.items()):
            want = any(s.follows(cgid, inst.manifest.name, inst.launched_by) for s in self.server.sessions())
            if want != (cgid in self.engine.observers.traced):
                self.engine.trace_activity(inst, want)

    def _on_activity(self, cgroup_id: int, item: dict[str, Any]) -> None:
        inst = self.engine.instances.get(cgroup_id)
        owner = inst.launched_by if inst is not None else 0
        self.server.stream(item, lambda s: s.follows(cgroup_id, item.get("extension"), owner))

    # ---- operations (the rows of protocol.OPERATIONS) -------------------------------------------------
    def ping(self, s: Session, req: p.Ping) -> p.Pong:
        return p.Pong(pid=os.getpid(), started=rfc3339_ns(self.started_ns))

    def status(self, s: Session, req: p.Status) -> p.Report:
        sensor = self.engine.sensor
        enforced = self.policies.manifests()
        lsm = ("bpf-lsm (deny on resolved files, execs, ptrace, namespaces)" if getattr(sensor, "lsm", False)
               else f"bpf-lsm: unavailable: {bpf_lsm_status()[1]}")
        agent = p.AgentState(
            pid=os.getpid(), started=rfc3339_ns(self.started_ns), state="enforcing", state_dir=self.state_dir,
            cgroup_mode=self.engine.cgroups.mode, counters=sensor.counters(), records_written=self.engine.log.written,
            records_failed=self.engine.log.failed + self.engine.record_errors,
            landlock_reports=self.engine.laudit_status,
            metrics=p.Metrics(address=self.metrics_address or None, error=self.metrics_error or None),
            syscall_gates=sorted(sensor.gates), syscalls_not_in_kernel=sorted(sensor.missing_gates),
            layers=["cgroup-sock-addr (deny)", "tracepoints (detect, kill, hold)",
                    "launcher: user, no_new_privs, landlock, seccomp, rlimits", "cgroup caps", lsm])
        return p.Report(
            agent=agent,
            policies=[p.PolicyState(name=m.name, version=m.version, mode=m.mode, sha256=m.sha256, file=m.source,
                                    signature=v.as_dict() if (v := self.policies.signature(m)) else None)
                      for m in enforced.values()],
            shadows=[p.ShadowState(name=m.name, version=m.version, sha256=m.sha256, file=m.source,
                                   enforced=m.name in enforced,
                                   shadow_denials=sum(i.shadow_denials for i in self.engine.instances.values()
                                                      if i.manifest.name == m.name))
                     for m in self.policies.shadows().values()],
            require_signed=self.policies.require_signed, trust=str(self.policies.trust.root),
            policy_errors=dict(self.policies.errors) if s.peer.uid == 0 else {},
            instances=[decode(p.InstanceState, i.summary(), strict=False) for i in self._own(s)],
            others=len(self.engine.instances) - len(self._own(s)))

    def _own(self, s: Session) -> list[Instance]:
        """The running instances this session's peer may see and act on."""
        return [i for i in self.engine.instances.values() if owns(s.peer, i.launched_by)]

    def _who(self, s: Session, said: str) -> str:
        """Who asked, for a record: what root's client says, the account's name for anyone else."""
        if s.peer.uid == 0:
            return said
        try:
            return f"{pwd.getpwuid(s.peer.uid).pw_name} (uid {s.peer.uid})"
        except KeyError:
            return f"uid {s.peer.uid}"

    def _policy(self, name: str) -> Manifest:
        m = self.policies.manifests().get(name)
        if m is None and name in self.policies.shadows():
            raise EbpfguardError(f"{name!r} has only a shadow version: promote it (policy promote) or add an "
                                 "enforced one")
        if m is None:
            raise EbpfguardError(f"no policy named {name!r} in {self.policies.dir}")
        return m

    def launch(self, s: Session, req: p.Launch) -> p.Launched:
        """A command launched by the agent as the caller, with the caller's stdio, environment (as the manifest
        filters it) and working directory. A refusal is also told to the caller's subscribers (notify)."""
        try:
            return self._launch(s, req)
        except EbpfguardError as err:
            self._refused(s.peer.uid, req.extension or _manifest_name(req.manifest_text), str(err))
            raise

    def _launch(self, s: Session, req: p.Launch) -> p.Launched:
        uid = s.peer.uid
        try:
            pw = pwd.getpwuid(uid)
        except KeyError:
            raise EbpfguardError(f"uid {uid} has no account on this host: nothing is launched for it") from None
        if len(s.fds) != 3:
            raise BadRequest(f"a launch carries the caller's stdin, stdout and stderr (SCM_RIGHTS): {len(s.fds)} "
                             "file descriptors came with it")
        for name, fd in zip(("stdin", "stdout", "stderr"), s.fds, strict=True):
            if _on_fuse(fd):  # fstat and I/O on it wait for the user's FUSE daemon: the agent's loop never does
                raise BadRequest(f"the {name} passed is a file of a FUSE filesystem: pass a pipe, a terminal or "
                                 "a file of a local filesystem")
            try:
                st = os.fstat(fd)
            except OSError as err:
                raise BadRequest(f"the {name} passed is not usable: {err.strerror}") from None
            if stat.S_ISDIR(st.st_mode):
                raise BadRequest(f"the {name} passed is a folder, not a stream")
            if name != "stdin" and stat.S_ISFIFO(st.st_mode) and _reader_gone(fd):
                raise BadRequest(f"the {name} passed is a pipe whose reading end is closed: nothing could be written")
        if req.extension is not None:
            held = self._policy(req.extension)
            if req.mode is not None and uid != 0:
                raise p.NotAllowed(f"the administrator's policy {req.extension!r} decides its mode: a launch by "
                                   f"uid {uid} cannot override it")
            m = parse(held.raw, held.source, as_user=pw.pw_name)
        else:
            assert req.manifest_text is not None  # Launch holds one of them
            m = parse(req.manifest_text.encode(), req.manifest_path, as_user=pw.pw_name)
            if self.policies.require_signed and (req.mode or m.mode) == "enforce":
                self._signed_by_trusted_key(m, req)
        self._admit_launch(uid)
        shadow = self.policies.shadows().get(m.name)
        if shadow is not None and shadow.sha256 != m.sha256:  # it decides beside, for this user too
            try:
                shadow = parse(shadow.raw, shadow.source, as_user=pw.pw_name)
            except EbpfguardError as err:
                log.warning("%s: the shadow version does not decide beside uid %d's launch: %s", m.name, uid, err)
                shadow = None
        else:
            shadow = None
        inst, proc = start_for_caller(self.engine, m, req.argv, uid=uid, mode=req.mode, env=req.env, cwd=req.cwd,
                                      umask=req.umask, stdio=s.fds, shadow=shadow)
        try:
            pidfd = os.pidfd_open(proc.pid)
        except OSError:  # it is gone already: the watch reports its status
            pidfd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        self.launches[inst.cgroup_id] = Launch(s, inst, proc, pidfd)
        s.launched.append(inst.cgroup_id)
        self._retrace()
        log.info("launched %s for %s (uid %d): %s", inst.id, pw.pw_name, uid, " ".join(req.argv)[:200])
        return p.Launched(instance=inst.id, pid=proc.pid, cgroup=str(inst.cgroup.v2), user=pw.pw_name,
                          layers=list(inst.sandbox.get("layers", [])),
                          not_enforced=list(inst.sandbox.get("not_enforced", [])))

    def subscribe(self, s: Session, req: p.Subscribe) -> p.Subscribed:
        self.book.fill()  # who launched the instances started before this agent (their start records)
        s.subscribed = True
        return p.Subscribed(uid=s.peer.uid, running=[i.id for i in self._own(s)])

    def _to_subscribers(self, rec: dict[str, Any]) -> None:
        """Each durable record to the connections that follow its instance's owner (and root's)."""
        owner = self.book.owner.get(str(rec.get("instance")), 0)
        self.server.stream({"record": rec}, lambda s: s.subscribed and owns(s.peer, owner) and
                           (owner != 0 or s.peer.uid == 0))

    def _refused(self, uid: int, extension: str | None, error: str) -> None:
        self.server.stream({"refusal": {"extension": extension, "error": error}},
                           lambda s: s.subscribed and s.peer.uid == uid)

    def records(self, s: Session, req: p.Records) -> p.RecordList:
        source = self.book.of(s.peer.uid) if s.peer.uid != 0 else (r for r in read(self.state_dir)
                                                                   if not isinstance(r, BadLine))
        out: list[dict[str, Any]] = []
        for rec in source:
            if int(rec.get("seq") or 0) <= req.since_seq:
                continue
            if (req.extension is not None and rec.get("extension") != req.extension) or \
                    (req.kinds and rec.get("kind") not in req.kinds):
                continue
            if len(out) == req.limit:
                return p.RecordList(records=out, more=True)
            out.append(rec)
        return p.RecordList(records=out, more=False)

    def explain(self, s: Session, req: p.Explain) -> p.Explained:
        """A user's own record is at hand in the book (no log read); root's is looked for in the log."""
        known = None
        if s.peer.uid != 0:
            known = next((r for r in self.book.of(s.peer.uid) if int(r.get("seq") or 0) == req.seq), None)
            if known is None:
                raise EbpfguardError(f"no record {req.seq} of an instance uid {s.peer.uid} launched")
        return p.Explained(explanation=explain(self.state_dir, req.seq, known))

    def signal(self, s: Session, req: p.Signal) -> p.Done:
        launch = next((x for x in self.launches.values() if x.session is s and x.inst.id == req.instance), None)
        if launch is None:
            raise EbpfguardError(f"no running instance {req.instance!r} launched on this connection")
        if launch.status is None:
            try:
                signal.pidfd_send_signal(launch.pidfd, getattr(signal, req.signal))
            except OSError as err:  # it exited meanwhile: the watch reports it
                log.debug("signal %s to %s: %s", req.signal, req.instance, err)
        return p.Done()

    def _signed_by_trusted_key(self, m: Manifest, req: p.Launch) -> None:
        """A caller's own manifest, under --require-signed: its signature (the bytes the client sent, never a file
        root reads on a user's word) must come from a key the trust store holds for its publisher; a refusal is
        recorded, as a refused launch of root's is."""
        if req.signature_text is None:
            raise EbpfguardError(f"this agent requires signed manifests: {m.source} came without a signature (no "
                                 f"{sig_path(m.source).name} beside it); sign it with a trusted key or launch a "
                                 "policy the agent holds by name (ebpfguard run -e NAME)")
        v = verify_signature(m.source, self.policies.trust, None, raw=m.raw, sig_text=req.signature_text.encode())
        if not v.ok:
            self.engine.recorder.policy(m, "launch-refused", verdict="denied", actions=["refuse:launch"],
                                        mode=req.mode or m.mode, reason=v.reason, signature=v.as_dict())
            raise LaunchRefused(f"launch refused: {m.name}: {v.reason}")

    def prepare(self, s: Session, req: p.Prepare) -> p.Prepared:
        if req.extension is not None:
            m = self._policy(req.extension)
        else:
            assert req.manifest_text is not None  # Prepare holds one of them
            m = parse(req.manifest_text.encode(), req.manifest_path, home=req.home)
        signed, files = None, req.files
        if files:  # the extension's folder, against the file list its publisher signed
            sig = None if req.extension is not None else (req.signature_text or "").encode()
            signed = launch_check(self.engine.recorder, m, files, self.policies.trust, sig, req.mode)
        # the client is ebpfguard's own launcher (the socket is root's): it restricts what it starts
        shadow = self.policies.shadows().get(m.name)
        inst = self.engine.prepare(m, req.mode, landlocked=landlock_confines(m, req.mode),
                                   landlock_reports=landlock_reports(m, req.mode),
                                   shadow=shadow if shadow is not None and shadow.sha256 != m.sha256 else None)
        if signed is not None and files:
            inst.watch_signed(files, signed.files or [])
        s.instances.append(inst.cgroup_id)
        self._retrace()  # a tracer following this extension sees it from its first exec
        return p.Prepared(instance=inst.id, procs_files=inst.cgroup.procs_files(), cgroup=str(inst.cgroup.v2),
                          manifest_text=m.raw.decode(), manifest_path=m.source, home=req.home,
                          allow_root=self.allow_root_extensions, dbus_proxies=inst.proxy_folders(),
                          rollback=inst.rollback.overlays() if inst.rollback else {})

    def attach(self, s: Session, req: p.Attach) -> p.Attached:
        m = parse(req.manifest_text.encode(), req.manifest_path, home=req.home)
        inst = self.engine.adopt(m, req.pid, req.mode)
        self._retrace()
        return p.Attached(instance=inst.id, cgroup=str(inst.cgroup.v2), pids=inst.cgroup.pids(),
                          not_enforced=list(inst.sandbox["not_enforced"]))

    def _instance(self, ident: str) -> Instance:
        for inst in self.engine.instances.values():
            if inst.id == ident:
                return inst
        raise EbpfguardError(f"no running instance {ident!r}")

    def started(self, s: Session, req: p.Started) -> p.Done:
        self.engine.started(self._instance(req.instance), req.pid, req.argv, req.sandbox)
        return p.Done()

    def exited(self, s: Session, req: p.Exited) -> p.Done:
        self.engine.leader_exited(self._instance(req.instance), req.status)
        self.engine.reap()
        return p.Done()

    def _operator(self, s: Session, req: p.Target, action: str) -> p.Acted:
        """By an instance's id, or every running instance of an extension by its name (the caller's own)."""
        found = [i for i in self._own(s) if req.name in (i.id, i.manifest.name)]
        if not found:
            raise EbpfguardError(f"no running instance or extension named {req.name!r}")
        for inst in found:
            self.engine.operator(inst, action)
        return p.Acted(instances=[i.id for i in found])

    def freeze(self, s: Session, req: p.Freeze) -> p.Acted:
        return self._operator(s, req, "freeze")

    def thaw(self, s: Session, req: p.Thaw) -> p.Acted:
        return self._operator(s, req, "thaw")

    def kill(self, s: Session, req: p.Kill) -> p.Acted:
        return self._operator(s, req, "kill")

    def quarantine(self, s: Session, req: p.Quarantine) -> p.Acted:
        return self._operator(s, req, "lift" if req.lift else "quarantine")

    def rollback(self, s: Session, req: p.Rollback) -> p.RollbackResult:
        """list; show, commit or discard ID: a running (frozen) instance's overlays, or those an instance left
        when the agent or the host went down. A running instance is killed first, then its changes go as asked."""
        live = {i.id: i for i in self._own(s) if i.rollback is not None}
        pending = [x for x in self.engine.pending_rollbacks() if owns(s.peer, _launched_by(x.meta))]
        by = self._who(s, req.by)
        if req.action is RollbackAction.LIST:
            return p.RollbackResult(running=[_area(i.rollback.show(), i.state) for i in live.values()],
                                    pending=[_area(layer.show()) for layer in pending])
        assert req.id is not None  # Rollback needs one for all but list
        if req.id in live:
            inst = live[req.id]
            if req.action is RollbackAction.SHOW:
                return p.RollbackResult.of_area(_area(inst.rollback.show(), inst.state))
            inst.rollback_choice = req.action.value
            self.engine.recorder.lifecycle(inst, f"rollback-{req.action}", by=by, actions=["cgroup.kill"])
            self.engine.kill(inst)  # its stop (when its launcher is done) commits or discards, as asked
            return p.RollbackResult(instance=req.id, stopped=True,
                                    event="committed" if req.action is RollbackAction.COMMIT else "discarded")
        layer = next((x for x in pending if x.instance == req.id), None)
        if layer is None:
            raise EbpfguardError(f"no rollback area for an instance {req.id!r} (ebpfguard rollback list)")
        if req.action is RollbackAction.SHOW:
            return p.RollbackResult.of_area(_area(layer.show()))
        detail = self.engine.finish_rollback(layer, req.action.value, by=by)
        return p.RollbackResult(instance=req.id, stopped=False, event=detail["event"], count=detail["count"],
                                counts=detail["counts"], conflicts=detail.get("conflicts") or [])

    def promote(self, s: Session, req: p.Promote) -> p.Promoted:
        old, new = self.policies.promote(req.extension)
        replaces = p.Replaced(version=old.version, sha256=old.sha256) if old else None
        self.engine.recorder.policy(new, "promoted", file=Path(new.source).name, replaces=to_wire(replaces))
        log.warning("%s: shadow version %s (%s) promoted: it is enforced for instances launched from now on",
                    req.extension, new.version, new.sha256[:12])
        return p.Promoted(name=req.extension, version=new.version, sha256=new.sha256, replaces=replaces)

    def flag(self, s: Session, req: p.Flag) -> p.Flagged:
        rec = self.engine.recorder.flag(req.extension, not req.clear, req.reason, req.by)
        if rec is None:
            raise EbpfguardError("the flag could not be written to the forensic log")
        d = rec["detail"]
        log.warning("%s: %s by %s%s", req.extension, d["event"], d["by"], f": {req.reason}" if req.reason else "")
        return p.Flagged(seq=int(rec["seq"]))

    def activity(self, s: Session, req: p.Activity) -> p.Following:
        if req.pid is not None:
            owner = next((i for i in self._own(s) if req.pid in i.cgroup.pids()), None)
            if owner is None:
                raise EbpfguardError(f"pid {req.pid} is in no extension instance (ebpfguard status lists them)")
            s.watch_cgroups.add(owner.cgroup_id)
        else:
            ext = req.extension
            known = set(self.policies.manifests()) | {i.manifest.name for i in self._own(s)}
            inst = next((i for i in self._own(s) if i.id == ext), None)
            if ext not in known and inst is None:
                raise EbpfguardError(f"no extension or instance named {ext!r} (policies and running instances: "
                                     f"{', '.join(sorted(known)) or 'none'})")
            if inst is not None:
                s.watch_cgroups.add(inst.cgroup_id)
            else:
                s.watch_extension = ext
        s.watching = True
        self._retrace()
        return p.Following(following=[i.id for c, i in self.engine.instances.items()
                                      if s.follows(c, i.manifest.name, i.launched_by)])


def _manifest_name(text: str | None) -> str | None:
    """metadata.name of a manifest that may not be valid (for a refusal's notice), if it says one."""
    import yaml  # noqa: PLC0415

    try:
        data = yaml.safe_load(text or "")
    except yaml.YAMLError:
        return None
    meta = data.get("metadata") if isinstance(data, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) and name else None


def _on_fuse(fd: int) -> bool:
    """Whether a passed descriptor is a file of a FUSE filesystem, from /proc alone (no call reaches the file)."""
    try:
        info = Path(f"/proc/self/fdinfo/{fd}").read_text()
        mnt = next(line.split()[1] for line in info.splitlines() if line.startswith("mnt_id:"))
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            if fields and fields[0] == mnt:
                fstype = fields[fields.index("-") + 1] if "-" in fields else ""
                return fstype.startswith("fuse")
    except (OSError, StopIteration, IndexError, ValueError):
        return True  # cannot tell: not taken
    return False


def _reader_gone(fd: int) -> bool:
    """A pipe's writing end whose every reader has closed (poll says POLLERR)."""
    import select  # noqa: PLC0415

    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(ev & select.POLLERR for _, ev in poller.poll(0))


def _launched_by(meta: dict[str, Any]) -> int:
    """Who launched the instance a rollback area was left by (0 when its record does not say)."""
    try:
        return int(meta.get("launched_by") or 0)
    except (TypeError, ValueError):
        return 0


def _area(shown: dict[str, Any], state: str | None = None) -> p.RollbackArea:
    """A rollback area as Layer.show() describes it, checked field by field, and a running instance's state. (A key
    the table does not know is left out: tests/unit/test_agent.py fails on one.)"""
    return decode(p.RollbackArea, {**shown, "state": state}, strict=False)
