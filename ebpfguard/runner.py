"""``ebpfguard run``: launch a command as an extension instance, standalone or through the agent."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from .launcher import check_command, exit_status, resolve, spawn
from .manifest.load import Manifest, parse
from .sandbox import Sandbox, landlock_confines, landlock_reports
from .trust import sig_path


def run_standalone(m: Manifest, argv: Sequence[str], state_dir: str, mode: str | None = None,
                   files: str | None = None, trust_dir: str | None = None) -> int:
    """Load the programs in this process, run ``argv`` in a new extension cgroup, wait for the
    cgroup to empty (children and grandchildren included), unload. Returns the command's status."""
    from .engine import Engine  # noqa: PLC0415

    argv = resolve(argv)
    check_command(m, argv, mode)
    Sandbox.prepare(m, mode).close()  # a manifest the launcher cannot enforce fails before anything loads
    eng = Engine(state_dir)
    from .correlate import load_correlator  # noqa: PLC0415

    eng.correlator = load_correlator(None)
    try:
        if files:
            from .trust import DEFAULT_TRUST, TrustStore, launch_check  # noqa: PLC0415

            signed = launch_check(eng.recorder, m, files, TrustStore(trust_dir or DEFAULT_TRUST), None, mode)
        inst = eng.prepare(m, mode, landlocked=landlock_confines(m, mode),
                           landlock_reports=landlock_reports(m, mode))
        if files:
            inst.watch_signed(files, signed.files or [])
        sandbox = Sandbox.prepare(m, mode, proxies=inst.proxy_folders(),
                                  overlays=inst.rollback.overlays() if inst.rollback else None)
        # like a shell: the terminal's Ctrl-C goes to the command, which decides; we wait for it
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            proc = spawn(argv, inst.cgroup.procs_files(), sandbox=sandbox)
        finally:
            signal.signal(signal.SIGINT, old)
            sandbox.close()
        eng.started(inst, proc.pid, list(argv), sandbox.describe())
        prev_int = signal.signal(signal.SIGINT, lambda *_: None)
        try:
            while proc.poll() is None:
                eng.poll(50)
                eng.check_resources()
            status = exit_status(proc.returncode)
            eng.leader_exited(inst, status)
            while inst.cgroup.populated():
                eng.poll(50)
            eng.poll(0)
        finally:
            signal.signal(signal.SIGINT, prev_int)
        eng.release(inst)
        return status
    finally:
        eng.close()


def run_via_agent(state_dir: str, argv: Sequence[str], *, manifest: Manifest | None = None,
                  extension: str | None = None, mode: str | None = None, files: str | None = None) -> int:
    """Ask the agent for an instance cgroup, launch into it, report the exit. The connection stays
    open while the command runs: if this process dies, the agent sees the launcher is gone."""
    from .control import Client  # noqa: PLC0415
    from .errors import ControlError  # noqa: PLC0415
    from .manifest.load import default_home  # noqa: PLC0415

    argv = resolve(argv)
    with Client(state_dir) as client:
        checked: dict[str, Any] = {}
        if files:  # the agent checks them against the signed list (and records a refusal)
            checked["files"] = os.path.abspath(files)
            if manifest is not None:
                sig = sig_path(manifest.source)
                checked["signature_text"] = sig.read_text(errors="replace") if sig.is_file() else ""
        if manifest is not None:
            ans = client.request("prepare", manifest_text=manifest.raw.decode(), manifest_path=manifest.source,
                                 home=default_home(manifest.user), mode=mode, **checked)
        else:
            ans = client.request("prepare", extension=extension, mode=mode, **checked)
        # the agent sends back the manifest it holds, and whether its config lets an extension run as root
        m = manifest or parse(ans["manifest_text"].encode(), ans["manifest_path"], home=ans.get("home"))
        check_command(m, argv, mode)  # (the agent releases the instance when this connection closes)
        sandbox = Sandbox.prepare(m, mode, allow_root=bool(ans.get("allow_root")),
                                  proxies=ans.get("dbus_proxies") or {},
                                  overlays={t: (u, w) for t, (u, w) in (ans.get("rollback") or {}).items()})
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            proc = spawn(argv, ans["procs_files"], sandbox=sandbox)
        finally:
            signal.signal(signal.SIGINT, old)
            sandbox.close()
        client.request("started", instance=ans["instance"], pid=proc.pid, argv=list(argv),
                       sandbox=sandbox.describe())
        prev = signal.signal(signal.SIGINT, lambda *_: None)
        try:
            while True:
                try:
                    proc.wait()
                    break
                except InterruptedError:
                    continue
        finally:
            signal.signal(signal.SIGINT, prev)
        status = exit_status(proc.returncode)
        try:
            client.request("exited", instance=ans["instance"], status=status)
        except ControlError as err:  # the agent stopped meanwhile: the status is still the command's
            print(f"ebpfguard: warning: could not report the exit to the agent: {err}", file=sys.stderr)
        return status
