"""Stage 3, decide: pure. An event, the policy it ran under, what resolve found and the instance's
ladder state give one Decision: the verdict, what the deciding layer already did, what the agent must
do now, and why. Nothing here touches the kernel, a cgroup or a file, so every case is unit-tested.

Verdicts tell the truth: ``denied`` only where the deciding layer refused the call (the kernel's
verdict, or Landlock's ruleset on the real path); ``killed`` only once a kill was sent (settle()
downgrades an agent kill that found no process).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ebpfguard.common.abi import EvFlag, Verdict
from ebpfguard.instance.store import State
from ebpfguard.manifest.compile import CompiledPolicy
from ebpfguard.manifest.load import Escalation, Manifest, Mode
from ebpfguard.pipeline.events import Event
from ebpfguard.pipeline.resolve import Resolution
from ebpfguard.sandbox import landlock

O_PATH = 0o10000000
# Calls the tracepoints watch that Landlock does not govern: a mode, owner, time or attribute change
# succeeds under any ruleset,
# so it is never recorded as refused by Landlock (it is "detected": the call went through).
NOT_LANDLOCK = frozenset({"chmod", "fchmodat", "fchmodat2", "chown", "lchown", "fchownat", "utime", "utimes",
                          "futimesat", "utimensat", "setxattr", "lsetxattr", "removexattr", "lremovexattr",
                          "setxattrat", "removexattrat"})
NEED = {"read": landlock.FS["read_file"] | landlock.FS["read_dir"],
        "write": landlock.FS["write_file"] | landlock.FS["make_reg"] | landlock.FS["remove_file"],
        "exec": landlock.FS["execute"]}

class Step(StrEnum):
    """What act() can do. A ladder step may carry a note after ":" (cgroup.kill:escalation(3 in 60s)); what the
    deciding layer already did is named whole (eacces:landlock, eperm:kernel): step_of() tells them apart."""

    RESUME = "resume"              # SIGCONT a process the kernel held for this decision (never recorded)
    SIGKILL_AGENT = "sigkill:agent"
    KILL = "cgroup.kill"
    FREEZE = "cgroup.freeze"
    THROTTLE = "throttle"
    QUARANTINE = "quarantine"


RESUME, SIGKILL_AGENT, KILL, FREEZE, THROTTLE, QUARANTINE = (Step.RESUME, Step.SIGKILL_AGENT, Step.KILL, Step.FREEZE,
                                                            Step.THROTTLE, Step.QUARANTINE)


def step_of(action: str) -> str:
    """The step an action names, without a ladder step's note."""
    return action.split(":", 1)[0] if action.startswith("cgroup.") else action


@dataclass(frozen=True)
class Policy:
    """What a decision needs of the policy an event ran under."""

    manifest: Manifest
    mode: str
    compiled: CompiledPolicy | None = None
    shadow: Manifest | None = None  # the staged version deciding beside it (spec.rollout: shadow)


@dataclass(frozen=True)
class LadderState:
    """What a decision needs of the instance: its ladder position and Landlock grants."""

    mode: Mode
    state: State = State.RUNNING
    quarantined: bool = False
    window: tuple[float, ...] = ()       # monotonic times of the violations inside the escalation window
    landlock_grants: tuple[tuple[str, int], ...] = ()
    landlock_handled: int = 0
    live: bool = True                    # still bound: ladder steps apply
    mount_writable: tuple[str, ...] | None = None  # read-only mount namespace: where it can still write
    mount_readonly: tuple[str, ...] = ()  # ... and read-only mounts inside those places


@dataclass(frozen=True)
class Decision:
    record: bool                         # False: nothing to record (allowed after all, or an identical repeat)
    verdict: str | None = None
    taken: tuple[str, ...] = ()          # what the deciding layer already did (eperm:kernel, eacces:landlock...)
    todo: tuple[str, ...] = ()           # what act() must do now
    detail: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    window: tuple[float, ...] | None = None  # the instance's escalation window after this event (None: unchanged)
    violation: bool = False              # counts toward the instance's violations


@dataclass(frozen=True)
class Report:
    """A violation another layer decided and reported, or one the agent found across events: Landlock or
    the D-Bus proxy refused a call, a cgroup limit contained the instance, a correlation rule completed, an
    allowed action left the baseline. It has the shape of a kernel event where a record needs one."""

    kind: str                             # the violation kind (file, network, ipc, resource, correlation...)
    verdict: str | None                   # as the reporting layer says (denied only if it refused the call)
    detail: dict[str, Any]
    ts_ns: int | None = None              # when it happened (real time); None: when recorded
    pid: int | None = None                # None: the layer does not name the process (Landlock names a domain)
    comm: str | None = None
    uid: int | None = None
    cgroup_id: int | None = None          # the instance's, where a record must name it without one
    taken: tuple[str, ...] = ()           # what the reporting layer did (eacces:landlock, oom-kill:cgroup...)
    own: tuple[str, ...] = ()             # the source's own response in enforce mode (a rule's freeze)
    escalates: bool = True                # enters the kind's response and the escalation window
    violation: bool = True                # counts toward the instance's violations
    record: bool = True                   # False: an identical repeat, counted but not written again

    @property
    def tgid(self) -> int | None:
        return self.pid


def judge(r: Report, m: Manifest, inst: LadderState, now: float) -> Decision:
    """The Decision on a Report: its layer's verdict stands; the agent adds the source's own response and
    the ladder (enforce mode, a live instance), a step asked for twice done once."""
    todo: list[str] = list(r.own) if inst.mode == Mode.ENFORCE and inst.live else []
    window = None
    if r.escalates:
        steps, window = ladder(m, inst, r.kind, now)
        own = {step_of(s) for s in todo}
        todo.extend(s for s in steps if step_of(s) not in own)
    return Decision(r.record, r.verdict, r.taken, tuple(todo), r.detail, f"reported: {', '.join(r.taken) or r.kind}",
                    window, violation=r.violation)


def decide(ev: Event, policy: Policy | None, inst: LadderState | None, res: Resolution, now: float) -> Decision:
    detail = ev.detail()
    todo: list[str] = []
    taken: list[str] = []
    verdict = ev.verdict
    reason = "the kernel decided"
    if res.lookup_failed:
        return Decision(False, None, todo=(RESUME,) if ev.has(EvFlag.HELD) else (),
                        reason="the call failed in its path lookup, before any layer was asked")
    if verdict == Verdict.SHADOW.label:  # allowed, and nothing done: what the staged version would refuse
        if policy is not None and policy.shadow is not None:
            detail["shadow"] = {"version": policy.shadow.version, "sha256": policy.shadow.sha256}
        return Decision(True, verdict, detail=detail, reason="allowed by the enforced version; the shadow version "
                                                              "would refuse it (recorded only)")
    if verdict == Verdict.PENDING.label:
        if ev.has(EvFlag.HELD):
            todo.append(RESUME)
        if res.path is not None:
            if res.path != ev.path:
                detail["raw_path"] = ev.path
            detail["path"] = res.path
            if policy is not None and policy.compiled is not None and policy.compiled.allows_path(res.path, ev.access):
                return Decision(False, Verdict.ALLOWED.label, todo=tuple(todo),
                                reason=f"{res.path} is inside the {ev.access} rules")
            if policy is not None and policy.compiled is not None and ev.access in ("read", "write") and \
                    inst is not None and inst.mount_writable is not None and \
                    policy.compiled.allows_path(res.path, "private"):
                return Decision(False, Verdict.ALLOWED.label, todo=tuple(todo),
                                reason=f"{res.path} is in the instance's private /tmp or /var/tmp")
        elif inst is not None and inst.state == State.KILLED:
            # the instance was killed (cgroup.kill) while this call was held for its path: the path is
            # unknown, the call may well have been allowed, and the process is gone. Recording it as a
            # violation would tell what nobody saw (it was once a second, pathless violation after a kill)
            return Decision(False, None, reason="the instance was killed before the held call's path could "
                                                "be read: nothing is known of it")
        else:
            detail["unresolved"] = res.unresolved
        verdict, reason, agent_kill = _pending_verdict(ev.kind, policy)
        if agent_kill:
            todo = [SIGKILL_AGENT]  # a killed process is not resumed
    if verdict == Verdict.DETECTED.label and landlock_granted(inst, ev, res, policy):
        # the string was outside the rules, the object it led to is inside (/bin/sh on a merged /usr, a symlink
        # within the trees) and Landlock, which decides on objects, let it through: no violation
        return Decision(False, Verdict.ALLOWED.label, todo=tuple(todo),
                        reason=f"{res.real_path} (reached as {ev.path}) is inside the {ev.access} rules")
    if verdict == Verdict.DETECTED.label and inst is not None and readonly_denied(inst, ev, res):
        verdict, reason = Verdict.DENIED.label, "read-only in the instance's mount namespace"
        taken.append("erofs:mountns")
    elif verdict == Verdict.DETECTED.label and inst is not None and res.real_path and landlock_denied(inst, ev, res):
        verdict, reason = Verdict.DENIED.label, "the instance's Landlock ruleset grants no such access"
        taken.append("eacces:landlock")
    if not taken:
        taken.extend(_kernel_actions(ev, verdict))
    window = None
    if ev.kind != "lifecycle" and inst is not None and policy is not None:
        steps, window = ladder(policy.manifest, inst, ev.kind, now)
        todo.extend(steps)
    return Decision(True, verdict, tuple(taken), tuple(todo), detail, reason, window,
                    violation=ev.kind != "lifecycle" and inst is not None)


def _pending_verdict(kind: str, policy: Policy | None) -> tuple[str | None, str, bool]:
    """The verdict user space gives a violation the kernel left pending: (verdict, reason, kill?)."""
    if policy is None:
        return Verdict.DETECTED.label, "no policy bound", False
    step = policy.manifest.response.get(kind)
    if policy.mode != Mode.ENFORCE or step == "alert":
        return Verdict.ALLOWED.label, "audit mode or an alert response: recorded only", False
    if step == "kill":
        return Verdict.KILLED.label, f"response {kind}: kill", True
    return Verdict.DETECTED.label, "a tracepoint cannot refuse the call", False


def _kernel_actions(ev: Event, verdict: str | None) -> list[str]:
    """What the kernel layer did for the verdict it reported."""
    seccomp = ev.has(EvFlag.SECCOMP)
    if verdict == Verdict.KILLED.label and ev.verdict == Verdict.KILLED.label:
        return ["sigsys:seccomp" if seccomp and not ev.has(EvFlag.AT_EXIT) else "sigkill:kernel"]
    if verdict == Verdict.DENIED.label:
        if ev.has(EvFlag.LSM):
            return ["eacces:lsm" if ev.kind in ("file", "exec") else "eperm:lsm"]
        return ["eperm:seccomp" if seccomp else "eperm:kernel"]
    return []


def readonly_denied(inst: LadderState, ev: Event, res: Resolution) -> bool:
    """Did the read-only mount refuse this change? The VFS refuses any write, create, removal, mode,
    owner, time or attribute change on a read-only mount (EROFS) before any LSM is asked."""
    if inst.mount_writable is None or ev.kind != "file" or ev.access != "write":
        return False
    path = res.real_path or res.path or ev.path
    if not path.startswith("/"):
        return False
    # the deepest mount holding the path decides, as in the VFS
    best, writable = -1, False
    for mounts, rw in ((inst.mount_writable, True), (inst.mount_readonly, False)):
        for w in mounts:
            if (path == w or path.startswith(w.rstrip("/") + "/")) and len(w) > best:
                best, writable = len(w), rw
    return not writable


def landlock_granted(inst: LadderState | None, ev: Event, res: Resolution, policy: Policy | None) -> bool:
    """A call the tracepoints left "detected" in a Landlock-confined instance, whose resolved object is inside
    the manifest's rules for that access, while the string it was reached by is not, and which the instance's
    ruleset did not refuse: allowed on the object the kernel used. Without Landlock (adopted processes) the
    string is all the kernel decided on."""
    if inst is None or not inst.landlock_grants or not res.real_path or policy is None or policy.compiled is None:
        return False
    if ev.kind not in ("file", "exec") or ev.syscall in NOT_LANDLOCK:
        return False
    if policy.compiled.allows_path(res.path or ev.path, ev.access):
        return False  # the string was inside the rules: a violation for another reason (an unsigned file)
    return policy.compiled.allows_path(res.real_path, ev.access) and not landlock_denied(inst, ev, res)


def landlock_denied(inst: LadderState, ev: Event, res: Resolution) -> bool:
    """Did the instance's Landlock ruleset refuse this access? It decides on resolved objects: compare
    the real path with the real paths of the grants. O_PATH opens are not checked by Landlock."""
    real = res.real_path
    if not inst.landlock_grants or ev.kind not in ("file", "exec") or not real:
        return False
    if ev.aux & O_PATH or ev.syscall in NOT_LANDLOCK:
        return False
    need = NEED.get(ev.access, 0)
    if not inst.landlock_handled & need:
        return False
    for path, rights in inst.landlock_grants:
        covers = (real.startswith(path) or real == path.rstrip("/")) if path.endswith("/") else real == path
        if covers and rights & need:
            return False
    return True


# ---- the ladder ---------------------------------------------------------------------------------
def ladder(m: Manifest, inst: LadderState, kind: str, now: float) -> tuple[list[str], tuple[float, ...] | None]:
    """The user-space steps after a violation in enforce mode: the kind's response (freeze, kill,
    throttle), the escalation window (freeze_after, kill_after) and network quarantine."""
    if inst.mode != Mode.ENFORCE or not inst.live:
        return [], None
    window = (*inst.window, now)
    step = m.response.get(kind)
    if step == "kill":
        return [KILL], window
    actions, window = escalate(m.escalation, inst.state, window, now)
    if actions and actions[0].startswith(KILL):
        return actions, window
    state = State.FROZEN if actions else inst.state
    if step == "freeze" and state != "frozen":
        actions.append(FREEZE)
    elif step == "throttle" and state == "running" and not actions:
        actions.append(THROTTLE)
    if m.quarantine and kind in ("network", "privilege") and not inst.quarantined:
        actions.append(QUARANTINE)
    return actions, window


def escalate(esc: Escalation, state: str, window: Sequence[float], now: float) -> tuple[list[str], tuple[float, ...]]:
    """The escalation window alone: kill_after, then freeze_after violations within it. Only the last
    max(kill_after, freeze_after) times can decide, so the window keeps no more (none without
    escalation): deciding costs the same on the ten-thousandth violation as on the first."""
    keep = max(esc.kill_after or 0, esc.freeze_after or 0)
    kept = tuple(t for t in window[-keep:] if now - t <= esc.window) if keep else ()
    n = len(kept)
    if esc.kill_after is not None and n >= esc.kill_after:
        return [f"{KILL}:escalation({n} in {esc.window:g}s)"], kept
    if esc.freeze_after is not None and n >= esc.freeze_after and state != "frozen":
        return [f"{FREEZE}:escalation({n} in {esc.window:g}s)"], kept
    return [], kept


def repeats(m: Manifest, inst: LadderState, count: int, now: float) -> tuple[list[str], tuple[float, ...] | None]:
    """Identical repeats the kernel counted but did not record are violations too: they enter the
    escalation window as if each had been recorded (at most as many as can matter)."""
    esc = m.escalation
    if inst.mode != Mode.ENFORCE or not esc or not inst.live or count <= 0:
        return [], None
    limit = max(esc.kill_after or 0, esc.freeze_after or 0) + 1
    return escalate(esc, inst.state, (*inst.window, *([now] * min(count, limit))), now)


def settle(d: Decision, done: Iterable[str]) -> str | None:
    """The verdict once act() has run: an agent kill that found no process leaves the call detected."""
    if d.verdict == Verdict.KILLED.label and SIGKILL_AGENT in d.todo and SIGKILL_AGENT not in done:
        return Verdict.DETECTED.label
    return d.verdict
