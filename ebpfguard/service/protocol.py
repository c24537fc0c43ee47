"""The agent's control protocol, defined once. OPERATIONS is the table: each operation's name, its request and answer
types (frozen dataclasses, typed, with defaults), the caller class that may call it and its handler on the agent.
The server's dispatch and authorization, the client's requests, the validation of every request and
docs/protocol.md all come from it, as systemd's varlink interfaces come from their IDL.

The wire: newline-delimited JSON over a unix stream socket. A request is {"op": NAME, FIELD: VALUE, ...}; an answer
is {"ok": true, FIELD: VALUE, ...} or {"ok": false, "error": TEXT, "exit_code": N} (Failure). In a request, a field
given as null is the same as a field left out. Regenerate the reference after a change to the table:
``python -m ebpfguard.service.protocol > docs/protocol.md`` (a unit test fails while it differs).
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Generic, Protocol, TypeVar, get_args, get_origin

from ebpfguard.errors import ControlError
from ebpfguard.manifest.load import Mode
from ebpfguard.service.wire import Mismatch, decode, doc_of, hints, to_wire, type_name

MAX_REQUEST = 1 << 20  # bytes of one request line from root; a longer one is refused and its connection closed
MAX_FDS = 3  # file descriptors one request may carry (SCM_RIGHTS): a launch's stdin, stdout and stderr
FORWARDED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH")


@dataclass(frozen=True)
class Limits:
    """What one non-root uid may hold at once; over a limit a request gets a precise error and the agent keeps
    serving everyone else. Root has none of these limits."""

    connections: int = 16          # open connections
    request_bytes: int = 256 << 10  # one request line (a launch carries argv and environment)
    instances: int = 32            # running instances launched by it
    launches: int = 20             # launches within launch_window_s
    launch_window_s: float = 10.0
A = TypeVar("A")


# ---- who calls ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Peer:
    """The process at the other end of a connection, as the kernel says (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int


class Caller(enum.Enum):
    """Who may call an operation. A class admits a peer or not; which instances and records an OWNER call may touch
    is its handler's check (the caller's own)."""

    ROOT = "root"
    OWNER = "owner"
    ANYONE = "anyone"

    def admits(self, peer: Peer) -> bool:
        return self is not Caller.ROOT or peer.uid == 0


CALLERS = {
    Caller.ROOT: "uid 0 only: policies, promotion, flags, root's own launcher, any instance",
    Caller.OWNER: "any local user, on their own instances and records (root: on all of them)",
    Caller.ANYONE: "any local user: what is safe to say to all",
}


def owns(peer: Peer, owner_uid: int) -> bool:
    """Whether an OWNER-class call of ``peer`` may touch a thing launched by ``owner_uid``: root's calls touch all."""
    return peer.uid == 0 or peer.uid == owner_uid


@dataclass(eq=False)
class Session:
    """What one connection holds across its requests: who is calling, the instances it prepared (released when it
    closes: its launcher is gone) and what it follows (trace --activity)."""

    peer: Peer
    instances: list[int] = field(default_factory=list)  # cgroup ids
    launched: list[int] = field(default_factory=list)  # cgroup ids of instances the agent launched for it
    watch_extension: str | None = None
    watch_cgroups: set[int] = field(default_factory=set)
    watching: bool = False
    subscribed: bool = False  # what happens to the peer's instances streams on this connection (subscribe)
    fds: list[int] = field(default_factory=list)  # what came with the request being answered (SCM_RIGHTS)

    def follows(self, cgroup_id: int, extension: str | None, owner_uid: int = 0) -> bool:
        return self.watching and owns(self.peer, owner_uid) and (
            cgroup_id in self.watch_cgroups or (self.watch_extension is not None and extension == self.watch_extension))


class BadRequest(ControlError):
    """A request the table refuses: not JSON, an unknown operation, an unknown, missing or mistyped field."""

    exit_code = 2


class NotAllowed(ControlError):
    """The peer is not in the operation's caller class."""

    exit_code = 1


# ---- answers ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Failure:
    """Every refused or failed request: {"ok": false, "error": ..., "exit_code": ...}."""

    error: Annotated[str, "what went wrong, in one precise sentence"]
    exit_code: Annotated[int, "what a command line client exits with: 1 failed, 2 bad input, 126 refused by a "
                              "signature check"] = 1


@dataclass(frozen=True, kw_only=True)
class Done:
    """Nothing to say but ok."""


@dataclass(frozen=True, kw_only=True)
class Pong:
    pid: Annotated[int, "the agent's process id"]
    started: Annotated[str, "when it started (RFC 3339)"]


@dataclass(frozen=True, kw_only=True)
class Metrics:
    address: Annotated[str | None, "host:port of the Prometheus endpoint, if asked for"]
    error: Annotated[str | None, "why it is not served"]


@dataclass(frozen=True, kw_only=True)
class AgentState:
    pid: Annotated[int, "the agent's process id"]
    started: Annotated[str, "when it started (RFC 3339)"]
    state: Annotated[str, "enforcing"]
    state_dir: str
    cgroup_mode: Annotated[str, "v2 or hybrid"]
    counters: Annotated[dict[str, int], "the kernel's counters: events, drops, kills, denials, suppressed, over_share"]
    records_written: Annotated[int, "forensic records written since it started"]
    records_failed: Annotated[int, "records that could not be written"]
    landlock_reports: Annotated[str, "on, off, or unavailable: why"]
    metrics: Metrics
    syscall_gates: Annotated[list[str], "syscalls the tracepoint gates watch"]
    syscalls_not_in_kernel: list[str]
    layers: Annotated[list[str], "the enforcement layers in force"]


@dataclass(frozen=True, kw_only=True)
class PolicyState:
    name: str
    version: str
    mode: Mode
    sha256: str
    file: str
    signature: Annotated[dict[str, Any] | None, "the trust store's verdict on its signature"]


@dataclass(frozen=True, kw_only=True)
class ShadowState:
    name: str
    version: str
    sha256: str
    file: str
    enforced: Annotated[bool, "an enforced version of the extension is loaded beside it"]
    shadow_denials: Annotated[int, "what it would have refused in running instances"]


@dataclass(frozen=True, kw_only=True)
class InstanceState:
    instance: Annotated[str, "the instance id"]
    extension: str
    version: str
    mode: Mode
    cgroup: str
    cgroup_id: int
    pid: Annotated[int | None, "its main process, once started"]
    pids: list[int]
    state: Annotated[str, "running, throttled, frozen or killed, then ', quarantined' if so"]
    violations: int
    shadow_denials: int
    started: str
    layers: list[str]
    not_enforced: list[str]
    user: Annotated[str | None, "the user it runs as, once started"]
    policy_sha256: str
    argv: list[str]
    launched_by: Annotated[int, "the uid of who launched it (0: root)"] = 0


@dataclass(frozen=True, kw_only=True)
class Report:
    agent: Annotated[AgentState, "the agent itself"]
    policies: Annotated[list[PolicyState], "the enforced version of each extension"]
    shadows: Annotated[list[ShadowState], "staged versions (spec.rollout: shadow), not yet promoted"]
    require_signed: Annotated[bool, "enforce-mode manifests must be signed by a trusted key"]
    trust: Annotated[str, "the trust store's folder"]
    policy_errors: Annotated[dict[str, str], "file -> why it was rejected"]
    instances: Annotated[list[InstanceState], "every running instance (a non-root caller's own)"]
    others: Annotated[int, "running instances of other users, not named (for a non-root caller)"] = 0


@dataclass(frozen=True, kw_only=True)
class Prepared:
    instance: Annotated[str, "the instance id"]
    procs_files: Annotated[list[str], "the cgroup.procs files the launcher joins before it execs"]
    cgroup: Annotated[str, "its cgroup v2 folder"]
    manifest_text: Annotated[str, "the manifest the instance runs under (the agent's policy, with extension)"]
    manifest_path: Annotated[str, "where that manifest was read"]
    home: Annotated[str | None, "the home the request named"]
    allow_root: Annotated[bool, "whether the agent lets an extension run as root (spec.user: root)"]
    dbus_proxies: Annotated[dict[str, str], "the bus's path in the namespace -> the instance's proxy folder"]
    rollback: Annotated[dict[str, tuple[str, str]],
                        "write tree -> (upper, work) of its overlay (spec.filesystem.rollback)"]


@dataclass(frozen=True, kw_only=True)
class Launched:
    instance: Annotated[str, "the instance id"]
    pid: Annotated[int, "its main process (in the agent's pid namespace)"]
    cgroup: Annotated[str, "its cgroup v2 folder"]
    user: Annotated[str, "the user it runs as: the caller"]
    layers: Annotated[list[str], "the launcher's layers in force"]
    not_enforced: Annotated[list[str], "what the launcher could not enforce here"]


@dataclass(frozen=True, kw_only=True)
class RecordList:
    records: Annotated[list[dict[str, Any]], "forensic records, oldest first (the log's own lines)"]
    more: Annotated[bool, "more records matched than limit: ask again with since_seq the last one's seq"]


@dataclass(frozen=True, kw_only=True)
class Subscribed:
    uid: Annotated[int, "whose instances' records follow (0: root, every instance's)"]
    running: Annotated[list[str], "the caller's running instances now"]


@dataclass(frozen=True, kw_only=True)
class Explained:
    explanation: Annotated[dict[str, Any], "what `ebpfguard explain --json` prints: why, the rule, the fix"]


@dataclass(frozen=True, kw_only=True)
class Attached:
    instance: Annotated[str, "the new instance's id"]
    cgroup: Annotated[str, "its cgroup v2 folder"]
    pids: Annotated[list[int], "the processes moved into it"]
    not_enforced: Annotated[list[str], "the launcher's layers a running process cannot be given"]


@dataclass(frozen=True, kw_only=True)
class Acted:
    instances: Annotated[list[str], "the instances acted on"]


@dataclass(frozen=True, kw_only=True)
class Flagged:
    seq: Annotated[int, "the flag record's sequence number in the forensic log"]


@dataclass(frozen=True, kw_only=True)
class Replaced:
    version: str
    sha256: str


@dataclass(frozen=True, kw_only=True)
class Promoted:
    name: Annotated[str, "the extension"]
    version: Annotated[str, "the version enforced from now on"]
    sha256: Annotated[str, "its manifest's sha256"]
    replaces: Annotated[Replaced | None, "the version it replaces as the enforced one"]


@dataclass(frozen=True, kw_only=True)
class Following:
    following: Annotated[list[str], "the running instances followed now; then one activity item per line, or "
                            '{"lost": N} when N were dropped because the reader fell behind']


@dataclass(frozen=True, kw_only=True)
class RollbackArea:
    SPARSE: ClassVar[bool] = True  # a null field is left out of the wire

    instance: str
    extension: str | None
    trees: Annotated[list[str], "the write trees under rollback"]
    started_ns: int
    changes: Annotated[list[dict[str, Any]], "the first changes (path, op, ...)"]
    count: Annotated[int, "how many changes in all"]
    counts: Annotated[dict[str, int], "op -> how many"]
    changes_sha256: str
    listed: Annotated[int, "how many are in changes"]
    state: Annotated[str | None, "a running instance's state"] = None


@dataclass(frozen=True, kw_only=True)
class RollbackResult:
    """list: running, pending. show: the area's fields. commit, discard: instance, stopped, event (and, for an
    instance that is gone, count, counts, conflicts). The fields another action has are left out."""

    SPARSE: ClassVar[bool] = True

    running: Annotated[list[RollbackArea] | None, "list: running instances' areas"] = None
    pending: Annotated[list[RollbackArea] | None, "list: areas instances left when the agent or host went down"] = None
    instance: str | None = None
    extension: str | None = None
    trees: list[str] | None = None
    started_ns: int | None = None
    changes: list[dict[str, Any]] | None = None
    count: int | None = None
    counts: dict[str, int] | None = None
    changes_sha256: str | None = None
    listed: int | None = None
    state: str | None = None
    stopped: Annotated[bool | None, "commit, discard: a running instance was killed; its stop does the rest"] = None
    event: Annotated[str | None, "commit, discard: committed or discarded"] = None
    conflicts: Annotated[list[dict[str, Any]] | None, "paths kept as the user left them"] = None

    @classmethod
    def of_area(cls, area: RollbackArea) -> RollbackResult:
        return cls(**{f.name: getattr(area, f.name) for f in dataclasses.fields(area)})


# ---- requests -------------------------------------------------------------------------------------------------
class Request(Generic[A]):
    """A request whose answer is an A (the client's request() returns one)."""


def _one_of(a: object, b: object, names: str) -> None:
    if (a is None) == (b is None):
        raise BadRequest(f"give exactly one of {names}")


@dataclass(frozen=True, kw_only=True)
class Ping(Request[Pong]):
    pass


@dataclass(frozen=True, kw_only=True)
class Status(Request[Report]):
    pass


@dataclass(frozen=True, kw_only=True)
class Prepare(Request[Prepared]):
    extension: Annotated[str | None, "a policy the agent holds, by name"] = None
    manifest_text: Annotated[str | None, "a manifest of the caller's (instead of extension)"] = None
    manifest_path: Annotated[str, "where the manifest was read (in errors and records)"] = "<request>"
    home: Annotated[str | None, "what ~ and ${HOME} expand to"] = None
    mode: Annotated[Mode | None, "overrides spec.mode"] = None
    files: Annotated[str | None, "the extension's folder, checked against the file list its publisher signed"] = None
    signature_text: Annotated[str | None, "the manifest's detached signature (with manifest_text and files)"] = None

    def __post_init__(self) -> None:
        _one_of(self.extension, self.manifest_text, "extension (a policy's name) or manifest_text")


@dataclass(frozen=True, kw_only=True)
class Started(Request[Done]):
    instance: Annotated[str, "the id prepare answered"]
    pid: Annotated[int, "its main process"]
    argv: Annotated[list[str], "the command it runs"]
    sandbox: Annotated[dict[str, Any] | None, "what the launcher enforced"] = None


@dataclass(frozen=True, kw_only=True)
class Exited(Request[Done]):
    instance: Annotated[str, "the id prepare answered"]
    status: Annotated[int, "the main process's exit status (128+N when killed by signal N)"]


@dataclass(frozen=True, kw_only=True)
class Launch(Request[Launched]):
    extension: Annotated[str | None, "a policy the agent holds, by name"] = None
    manifest_text: Annotated[str | None, "a manifest of the caller's (instead of extension)"] = None
    manifest_path: Annotated[str, "where the manifest was read (in errors and records)"] = "<request>"
    signature_text: Annotated[str | None, "the manifest's signature (MANIFEST.sig beside it), when it has one: "
                              "an agent that requires signed manifests checks it against its trust store"] = None
    mode: Annotated[Mode | None, "overrides spec.mode (not of a policy the agent holds, for a non-root caller)"] = None
    argv: Annotated[list[str], "the command, argv[0] an absolute path"]
    env: Annotated[dict[str, str], "the caller's environment; the manifest filters it"] = field(default_factory=dict)
    cwd: Annotated[str, "the working directory, entered with the caller's rights in the instance's namespace"] = "/"
    umask: Annotated[int, "the caller's file mode creation mask, the instance's"] = 0o022

    def __post_init__(self) -> None:
        _one_of(self.extension, self.manifest_text, "extension (a policy's name) or manifest_text")
        if not self.argv or not self.argv[0].startswith("/"):
            raise BadRequest("field 'argv': a command whose first word is an absolute path")
        if not self.cwd.startswith("/"):
            raise BadRequest("field 'cwd': an absolute path")
        if not 0 <= self.umask <= 0o777:
            raise BadRequest(f"field 'umask': {self.umask} is not a mode mask (0 to 0o777)")


@dataclass(frozen=True, kw_only=True)
class Signal(Request[Done]):
    instance: Annotated[str, "an instance this connection launched"]
    signal: Annotated[str, f"one of {', '.join(FORWARDED_SIGNALS)}"]

    def __post_init__(self) -> None:
        if self.signal not in FORWARDED_SIGNALS:
            raise BadRequest(f"field 'signal': {self.signal!r} is not forwarded ({', '.join(FORWARDED_SIGNALS)})")


@dataclass(frozen=True, kw_only=True)
class Records(Request[RecordList]):
    since_seq: Annotated[int, "only records after this sequence number"] = 0
    extension: Annotated[str | None, "only this extension's"] = None
    kinds: Annotated[list[str], "only these kinds (none: all)"] = field(default_factory=list)
    limit: Annotated[int, "at most this many (1 to 10000)"] = 1000

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= 10000:
            raise BadRequest(f"field 'limit': {self.limit} is not between 1 and 10000")


@dataclass(frozen=True, kw_only=True)
class Subscribe(Request[Subscribed]):
    pass


@dataclass(frozen=True, kw_only=True)
class Explain(Request[Explained]):
    seq: Annotated[int, "a record's sequence number"]


@dataclass(frozen=True, kw_only=True)
class Target(Request[Acted]):
    name: Annotated[str, "an instance id, or an extension's name (all its running instances)"]


@dataclass(frozen=True, kw_only=True)
class Freeze(Target):
    pass


@dataclass(frozen=True, kw_only=True)
class Thaw(Target):
    pass


@dataclass(frozen=True, kw_only=True)
class Kill(Target):
    pass


@dataclass(frozen=True, kw_only=True)
class Quarantine(Target):
    lift: Annotated[bool, "lift the quarantine instead"] = False


@dataclass(frozen=True, kw_only=True)
class Attach(Request[Attached]):
    pid: Annotated[int, "the process to adopt, with its descendants"]
    manifest_text: Annotated[str, "the manifest it runs under from now on"]
    manifest_path: Annotated[str, "where the manifest was read (in errors and records)"] = "<request>"
    home: Annotated[str | None, "what ~ and ${HOME} expand to"] = None
    mode: Annotated[Mode | None, "overrides spec.mode"] = None


@dataclass(frozen=True, kw_only=True)
class Flag(Request[Flagged]):
    extension: Annotated[str, "the extension's name"]
    reason: Annotated[str, "why (required unless clear)"] = ""
    clear: Annotated[bool, "clear the flag instead"] = False
    by: Annotated[str, "who, for the record"] = "root"

    def __post_init__(self) -> None:
        if not self.extension:
            raise BadRequest("field 'extension': an empty name")
        if not self.clear and not self.reason:
            raise BadRequest("a flag needs a reason")


@dataclass(frozen=True, kw_only=True)
class Promote(Request[Promoted]):
    extension: Annotated[str, "the extension whose shadow version becomes the enforced one"]


@dataclass(frozen=True, kw_only=True)
class Activity(Request[Following]):
    extension: Annotated[str | None, "an extension's name (its instances, now and to come) or an instance id"] = None
    pid: Annotated[int | None, "a process: the instance it is in"] = None

    def __post_init__(self) -> None:
        _one_of(self.extension, self.pid, "extension or pid")


class RollbackAction(enum.StrEnum):
    LIST = "list"
    SHOW = "show"
    COMMIT = "commit"
    DISCARD = "discard"


@dataclass(frozen=True, kw_only=True)
class Rollback(Request[RollbackResult]):
    action: Annotated[RollbackAction, "list the areas; show, commit or discard one"]
    id: Annotated[str | None, "the instance (all but list)"] = None
    by: Annotated[str, "who, for the record"] = "root"

    def __post_init__(self) -> None:
        if self.action is not RollbackAction.LIST and not self.id:
            raise BadRequest(f"field 'id': rollback {self.action} needs an instance id")


# ---- the table ---------------------------------------------------------------------------------------------
class Handlers(Protocol):
    """What the agent implements: one method per operation, typed by the table's request and answer."""

    def ping(self, s: Session, req: Ping) -> Pong: ...
    def status(self, s: Session, req: Status) -> Report: ...
    def prepare(self, s: Session, req: Prepare) -> Prepared: ...
    def started(self, s: Session, req: Started) -> Done: ...
    def exited(self, s: Session, req: Exited) -> Done: ...
    def launch(self, s: Session, req: Launch) -> Launched: ...
    def signal(self, s: Session, req: Signal) -> Done: ...
    def records(self, s: Session, req: Records) -> RecordList: ...
    def explain(self, s: Session, req: Explain) -> Explained: ...
    def subscribe(self, s: Session, req: Subscribe) -> Subscribed: ...
    def freeze(self, s: Session, req: Freeze) -> Acted: ...
    def thaw(self, s: Session, req: Thaw) -> Acted: ...
    def kill(self, s: Session, req: Kill) -> Acted: ...
    def quarantine(self, s: Session, req: Quarantine) -> Acted: ...
    def attach(self, s: Session, req: Attach) -> Attached: ...
    def flag(self, s: Session, req: Flag) -> Flagged: ...
    def promote(self, s: Session, req: Promote) -> Promoted: ...
    def activity(self, s: Session, req: Activity) -> Following: ...
    def rollback(self, s: Session, req: Rollback) -> RollbackResult: ...


@dataclass(frozen=True)
class Operation(Generic[A]):
    name: str
    request: type[Request[A]]
    caller: Caller
    handler: Callable[[Handlers, Session, Any], A]  # the request is of type `request` (the validator made it)
    doc: str

    @property
    def answer(self) -> type[A]:
        return _answer_type(self.request)

    def parse(self, obj: dict[str, Any]) -> Request[A]:
        """The request from a decoded JSON object (its "op" aside), or BadRequest naming the field and the fault."""
        try:
            return decode(self.request, {k: v for k, v in obj.items() if k != "op"}, strict=True)
        except Mismatch as err:
            raise BadRequest(f"bad {self.name} request: {err}") from None
        except BadRequest as err:
            raise BadRequest(f"bad {self.name} request: {err}") from None


OPERATIONS: tuple[Operation[Any], ...] = (
    Operation("ping", Ping, Caller.ANYONE, lambda h, s, r: h.ping(s, r), "Whether the agent is there."),
    Operation("status", Status, Caller.OWNER, lambda h, s, r: h.status(s, r),
              "The agent, its policies and the running instances (`ebpfguard status`): a non-root caller sees its "
              "own instances only, and no policy errors."),
    Operation("launch", Launch, Caller.OWNER, lambda h, s, r: h.launch(s, r),
              "Run a command as an instance, launched by the agent as the caller (`ebpfguard run` of a non-root "
              "user): the request carries the caller's stdin, stdout and stderr (SCM_RIGHTS, in that order). "
              "After the answer the connection carries one more line, `{\"exited\": STATUS, \"instance\": ID}`, "
              "once the instance has ended (STATUS 128+N when signal N ended its main process); `signal` requests "
              "on the same connection are answered in between. Closing the connection stops the instance. A "
              "manifest whose spec.user names another user is refused (exit code 2)."),
    Operation("signal", Signal, Caller.OWNER, lambda h, s, r: h.signal(s, r),
              "Send a signal to the main process of an instance this connection launched."),
    Operation("records", Records, Caller.OWNER, lambda h, s, r: h.records(s, r),
              "Forensic records (`ebpfguard forensics show`, `trace` of a user): a non-root caller gets the records "
              "of the instances it launched, from those the agent has written since it started or read back once."),
    Operation("subscribe", Subscribe, Caller.OWNER, lambda h, s, r: h.subscribe(s, r),
              "Follow what happens to the caller's instances (`ebpfguard notify`): after the answer, the connection "
              "carries `{\"record\": RECORD}` for each record of them as it is written (violations, the ladder's "
              "steps, stops, rollback), `{\"refusal\": {\"extension\": NAME, \"error\": TEXT}}` for each launch of "
              "theirs the agent refused, and `{\"lost\": N}` when N lines were dropped because the reader fell "
              "behind; root follows every instance."),
    Operation("explain", Explain, Caller.OWNER, lambda h, s, r: h.explain(s, r),
              "Why a record was raised (`ebpfguard explain` of a user): a non-root caller, of its own records only."),
    Operation("prepare", Prepare, Caller.ROOT, lambda h, s, r: h.prepare(s, r),
              "An instance cgroup for a launch (`ebpfguard run`): the launcher joins its procs_files, reports "
              "`started`, then `exited`. Closing the connection tells the agent the launcher is gone: the instance "
              "is released once its cgroup is empty."),
    Operation("started", Started, Caller.ROOT, lambda h, s, r: h.started(s, r),
              "The launcher started the instance's main process."),
    Operation("exited", Exited, Caller.ROOT, lambda h, s, r: h.exited(s, r), "The main process exited."),
    Operation("freeze", Freeze, Caller.OWNER, lambda h, s, r: h.freeze(s, r),
              "Freeze instances by hand (a non-root caller: its own)."),
    Operation("thaw", Thaw, Caller.OWNER, lambda h, s, r: h.thaw(s, r),
              "Thaw instances by hand (their escalation window starts again; a non-root caller: its own)."),
    Operation("kill", Kill, Caller.OWNER, lambda h, s, r: h.kill(s, r),
              "Kill instances by hand (a non-root caller: its own)."),
    Operation("quarantine", Quarantine, Caller.OWNER, lambda h, s, r: h.quarantine(s, r),
              "Revoke instances' network, or give it back (lift; a non-root caller: its own)."),
    Operation("attach", Attach, Caller.ROOT, lambda h, s, r: h.attach(s, r),
              "Adopt a running process tree into a new instance (`ebpfguard attach`). Root's only: an adopted "
              "process keeps its privileges (no_new_privs cannot be set from outside), so a setuid program started "
              "in it later would run under the policy, freeze and kill of whoever adopted it; a user launches "
              "(`launch`) instead."),
    Operation("flag", Flag, Caller.ROOT, lambda h, s, r: h.flag(s, r),
              "Flag an extension for security concerns, or clear the flag: a signed record."),
    Operation("promote", Promote, Caller.ROOT, lambda h, s, r: h.promote(s, r),
              "Make an extension's shadow version the enforced one for instances launched from now on."),
    Operation("activity", Activity, Caller.OWNER, lambda h, s, r: h.activity(s, r),
              "Follow what instances do, allowed or not (`ebpfguard trace --activity`): after the answer, the "
              "connection streams one JSON object per line until it closes. A non-root caller follows its own "
              "instances only."),
    Operation("rollback", Rollback, Caller.OWNER, lambda h, s, r: h.rollback(s, r),
              "List, show, commit or discard an instance's rollback overlays; a running instance is killed first. A "
              "non-root caller sees and acts on the areas of its own instances."),
)
BY_NAME: dict[str, Operation[Any]] = {op.name: op for op in OPERATIONS}
BY_REQUEST: dict[type[Any], Operation[Any]] = {op.request: op for op in OPERATIONS}


def _answer_type(request: type) -> type[Any]:
    """A of the Request[A] a request class derives from."""
    for base in getattr(request, "__orig_bases__", ()):
        if get_origin(base) is Request:
            answer: type[Any] = get_args(base)[0]
            return answer
    return _answer_type(request.__mro__[1])




def operation_of(obj: object) -> Operation[Any]:
    """The table's operation a decoded request names, or BadRequest."""
    if not isinstance(obj, dict) or not isinstance(obj.get("op"), str):
        raise BadRequest("a request is a JSON object with a string 'op'")
    op = BY_NAME.get(obj["op"])
    if op is None:
        raise BadRequest(f"unknown op {obj['op']!r} (the agent knows {', '.join(BY_NAME)})")
    return op


def authorize(op: Operation[Any], peer: Peer) -> None:
    if not op.caller.admits(peer):
        raise NotAllowed(f"{op.name} is for {op.caller.value} only ({CALLERS[op.caller]}); "
                         f"this connection's peer is uid {peer.uid}")


# ---- the wire, both ways -----------------------------------------------------------------------------------
def encode_request(req: Request[Any]) -> dict[str, Any]:
    op = BY_REQUEST[type(req)]
    return {"op": op.name, **{k: v for k, v in to_wire(req).items() if v is not None}}


def encode_answer(op: Operation[Any], answer: object) -> dict[str, Any]:
    if not isinstance(answer, op.answer):
        raise TypeError(f"the {op.name} handler answered a {type(answer).__name__}, not a {op.answer.__name__}")
    return {"ok": True, **to_wire(answer)}


def encode_failure(failure: Failure) -> dict[str, Any]:
    return {"ok": False, **to_wire(failure)}


def decode_answer(op: Operation[A], obj: dict[str, Any]) -> A:
    """The typed answer of a successful request (fields a newer agent added are ignored)."""
    try:
        return decode(op.answer, {k: v for k, v in obj.items() if k != "ok"}, strict=False)
    except (Mismatch, BadRequest) as err:
        raise ControlError(f"the agent's {op.name} answer: {err}") from None


def decode_failure(obj: dict[str, Any]) -> Failure:
    try:
        return decode(Failure, {k: v for k, v in obj.items() if k != "ok"}, strict=False)
    except (Mismatch, BadRequest) as err:
        return Failure(error=f"request failed (an answer this client cannot read: {err})")


# ---- the reference (docs/protocol.md) ---------------------------------------------------------------------------
def _fields_table(cls: type, request: bool) -> list[str]:
    fields = dataclasses.fields(cls)
    if not fields:
        return ["(no fields)", ""]
    types = hints(cls)
    head = ["| field | type | default | meaning |", "|---|---|---|---|"] if request else \
        ["| field | type | meaning |", "|---|---|---|"]
    rows = []
    for f in fields:
        cells = [f"`{f.name}`", type_name(types[f.name])]
        if request:
            cells.append("required" if f.default is dataclasses.MISSING else
                         f"`{json.dumps(to_wire(f.default))}`")
        cells.append(doc_of(types[f.name]))
        rows.append("| " + " | ".join(cells) + " |")
    return [*head, *rows, ""]


def _own_doc(cls: type) -> str:
    """The class's docstring, not the signature dataclass() puts where there is none."""
    doc = (cls.__doc__ or "").strip()
    return "" if doc.startswith(f"{cls.__name__}(") else " ".join(doc.split())


def _nested(cls: type) -> Iterator[type]:
    """The dataclasses an answer's fields name, depth first."""
    def walk(tp: Any) -> Iterator[type]:
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            yield tp
            for t in hints(tp).values():
                yield from walk(t)
        for a in get_args(tp):
            yield from walk(a)
    for t in hints(cls).values():
        yield from walk(t)


def reference() -> str:
    """docs/protocol.md: the operations of the table, their fields and caller classes."""
    out = ["# The control protocol", "",
           "<!-- Generated from the table in ebpfguard/service/protocol.py by "
           "`python -m ebpfguard.service.protocol > docs/protocol.md`; a unit test fails when they differ. -->", "",
           "The agent's control socket (`/run/ebpfguard/agent.sock`, 0666: every local user reaches it; `--socket` "
           "on the agent, `EBPFGUARD_SOCKET` for clients) speaks newline-delimited JSON. A request is one line, "
           '`{"op": NAME, FIELD: VALUE, ...}`; a field given as `null` is the same as one left out. Each request '
           'gets one answer line: `{"ok": true, FIELD: VALUE, ...}`, or a failure:', "",
           *_fields_table(Failure, request=False),
           "An unknown operation, an unknown field, a field of the wrong type or a missing one is refused with an "
           f"error that names it (exit code 2); a request line longer than {MAX_REQUEST} bytes closes the "
           "connection. Python clients use `ebpfguard.service.control.Client`: "
           "`Client(state_dir).request(Prepare(extension=\"md-preview\"))` returns a `Prepared`.", "",
           "## Callers", "",
           "Each request is authorized from the peer's credentials (`SO_PEERCRED`) by the caller class of its "
           "operation. An OWNER call of a non-root user sees and acts on the instances that user launched, and records "
           "of them; another user's are answered as if they did not exist. A non-root uid has limits (open "
           f"connections {Limits.connections}, request line {Limits.request_bytes} bytes, running instances "
           f"{Limits.instances}, launches {Limits.launches} per {Limits.launch_window_s:g} s): over one, a "
           "request is refused with an error that names it, and the agent serves everyone else.", "",
           "| class | who |", "|---|---|",
           *[f"| {c.value} | {who} |" for c, who in CALLERS.items()], "",
           "## Operations", "",
           "| operation | caller | request | answer |", "|---|---|---|---|",
           *[f"| [`{op.name}`](#{op.name}) | {op.caller.value} | `{op.request.__name__}` | `{op.answer.__name__}` |"
             for op in OPERATIONS], ""]
    for op in OPERATIONS:
        out += [f"### {op.name}", "", f"Caller: **{op.caller.value}**. {op.doc}", "",
                f"Request `{op.request.__name__}`:", "", *_fields_table(op.request, request=True),
                f"Answer `{op.answer.__name__}`: {_own_doc(op.answer)}".rstrip(), "",
                *_fields_table(op.answer, request=False)]
    seen: list[type] = []
    for op in OPERATIONS:
        seen += [t for t in _nested(op.answer) if t not in seen]
    out += ["## Types", ""]
    for t in seen:
        out += [f"### {t.__name__}", "", *_fields_table(t, request=False)]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(reference(), end="")
