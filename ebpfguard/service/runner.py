"""``ebpfguard run``: launch a command as an extension instance, standalone or through the agent."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

from ebpfguard.governance.trust import sig_path, signature_beside
from ebpfguard.instance.store import Instance
from ebpfguard.manifest.load import Manifest, parse
from ebpfguard.sandbox import Sandbox
from ebpfguard.sandbox.launcher import check_command, exit_status, resolve, spawn


def run_standalone(m: Manifest, argv: Sequence[str], state_dir: str, mode: str | None = None,
                   files: str | None = None, trust_dir: str | None = None) -> int:
    """Load the programs in this process, with the shipped correlation rules, and run ``argv`` through the
    launch loop (runtime/launch.py) until its cgroup is empty. Returns the command's status."""
    from ebpfguard.pipeline.correlate import load_correlator  # noqa: PLC0415
    from ebpfguard.runtime.engine import Engine  # noqa: PLC0415
    from ebpfguard.runtime.launch import LaunchOptions, launch  # noqa: PLC0415

    argv = resolve(argv)
    check_command(m, argv, mode)
    Sandbox.prepare(m, mode, check_proxies=False).close()  # a manifest the launcher cannot enforce fails first
    eng = Engine(state_dir, correlator=load_correlator(None))
    try:
        on_started = None
        if files:
            from ebpfguard.governance.trust import DEFAULT_TRUST, TrustStore, launch_check  # noqa: PLC0415

            signed = launch_check(eng.recorder, m, files, TrustStore(trust_dir or DEFAULT_TRUST), None, mode)

            def on_started(inst: Instance) -> None:
                inst.watch_signed(files, signed.files or [])

        opts = LaunchOptions(mode=mode, on_started=on_started, collect=False, interactive=True, poll_ms=50)
        return launch(eng, m, argv, opts).status
    finally:
        eng.close()


def run_via_agent(state_dir: str, argv: Sequence[str], *, manifest: Manifest | None = None,
                  extension: str | None = None, mode: str | None = None, files: str | None = None) -> int:
    """Ask the agent for an instance cgroup, launch into it, report the exit. The connection stays
    open while the command runs: if this process dies, the agent sees the launcher is gone."""
    from ebpfguard.errors import ControlError  # noqa: PLC0415
    from ebpfguard.manifest.load import Mode, default_home  # noqa: PLC0415
    from ebpfguard.service.control import Client  # noqa: PLC0415
    from ebpfguard.service.protocol import Exited, Prepare, Started  # noqa: PLC0415

    argv = resolve(argv)
    with Client(state_dir) as client:
        folder = os.path.abspath(files) if files else None  # the agent checks it against the signed list
        if manifest is not None:
            sig = sig_path(manifest.source)
            ans = client.request(Prepare(
                manifest_text=manifest.raw.decode(), manifest_path=manifest.source, home=default_home(manifest.user),
                mode=Mode(mode) if mode else None, files=folder,
                signature_text=(sig.read_text(errors="replace") if sig.is_file() else "") if folder else None))
        else:
            ans = client.request(Prepare(extension=extension, mode=Mode(mode) if mode else None, files=folder))
        # the agent sends back the manifest it holds, and whether its config lets an extension run as root
        m = manifest or parse(ans.manifest_text.encode(), ans.manifest_path, home=ans.home)
        check_command(m, argv, mode)  # (the agent releases the instance when this connection closes)
        sandbox = Sandbox.prepare(m, mode, allow_root=ans.allow_root, proxies=ans.dbus_proxies,
                                  overlays=ans.rollback)
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            proc = spawn(argv, ans.procs_files, sandbox=sandbox)
        finally:
            signal.signal(signal.SIGINT, old)
            sandbox.close()
        client.request(Started(instance=ans.instance, pid=proc.pid, argv=list(argv), sandbox=sandbox.describe()))
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
            client.request(Exited(instance=ans.instance, status=status))
        except ControlError as err:  # the agent stopped meanwhile: the status is still the command's
            print(f"ebpfguard: warning: could not report the exit to the agent: {err}", file=sys.stderr)
        return status


def run_as_caller(state_dir: str, argv: Sequence[str], *, manifest: Manifest | None = None,
                  extension: str | None = None, mode: str | None = None) -> int:
    """A non-root user's `run`: the agent launches the instance as this user, with this process's stdin, stdout
    and stderr, environment and working directory. Signals this process gets (SIGINT, SIGTERM, SIGHUP, SIGQUIT,
    SIGUSR1, SIGUSR2, SIGWINCH) go to the instance's main process; the status is its, 128+N when signal N ended
    it. If this process dies, the agent stops the instance."""
    from ebpfguard.manifest.load import Mode  # noqa: PLC0415
    from ebpfguard.sandbox.launcher import LaunchError  # noqa: PLC0415
    from ebpfguard.service.control import Client, Launching, caller_umask  # noqa: PLC0415
    from ebpfguard.service.protocol import FORWARDED_SIGNALS, Failure, Launch  # noqa: PLC0415

    argv = resolve(argv)
    if not os.path.lexists(argv[0]):  # with this user's rights (the agent does not look for them)
        raise LaunchError(f"{argv[0]}: no such file", 127)
    if os.path.isdir(argv[0]) or not os.access(argv[0], os.X_OK):
        raise LaunchError(f"{argv[0]}: not an executable file", 126)
    req = Launch(extension=extension, manifest_text=manifest.raw.decode() if manifest else None,
                 manifest_path=manifest.source if manifest else "<request>",
                 signature_text=signature_beside(manifest.source) if manifest else None,
                 mode=Mode(mode) if mode else None, argv=argv, env=dict(os.environ), cwd=os.getcwd(),
                 umask=caller_umask())

    def warn(failure: Failure) -> None:
        print(f"ebpfguard: warning: {failure.error}", file=sys.stderr)

    with Client(state_dir, timeout=None) as client:
        held: list[str] = []  # signals that came before the agent named the instance
        launched: list[Launching] = []

        def forward(signum: int, _frame: object) -> None:
            name = signal.Signals(signum).name
            if launched:
                launched[0].forward(name)
            else:
                held.append(name)

        old = {name: signal.signal(getattr(signal, name), forward) for name in FORWARDED_SIGNALS}
        try:
            launched.append(Launching(client, req, [0, 1, 2], on_refused=warn))
            for name in held:
                launched[0].forward(name)
            return launched[0].wait()
        finally:
            for name, handler in old.items():
                signal.signal(getattr(signal, name), handler)
