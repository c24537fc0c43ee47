"""Start a command inside an extension cgroup, so that its first instruction already runs there, and
under its sandbox (user, no_new_privs, Landlock, seccomp, rlimits) when one is given.

Between fork and exec the child enters a mount namespace of its own (as root), drops its privileges,
joins the cgroup through fds the parent opened (the v2 one last), then confines itself (Landlock,
seccomp). It opens nothing after joining, so the only checked action before exec is the exec itself.
A failure in the child is written to a pipe, so the error says what failed and why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ebpfguard.errors import EbpfguardError

if TYPE_CHECKING:
    from ebpfguard.manifest.load import Manifest
    from ebpfguard.sandbox import Sandbox


class LaunchError(EbpfguardError):
    """The command could not be started. ``exit_code`` as a shell gives it: 127 not found, 126 not
    runnable (not executable, or not something the manifest lets the extension execute)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def resolve(argv: Sequence[str]) -> list[str]:
    """argv with argv[0] made absolute, so the child never probes $PATH (each probe is an exec)."""
    if not argv:
        raise LaunchError("no command given")
    exe = argv[0]
    if "/" not in exe:
        found = shutil.which(exe)
        if not found:
            raise LaunchError(f"{exe}: command not found", 127)
        exe = found
    return [os.path.abspath(exe), *argv[1:]]


def check_command(m: Manifest, argv: Sequence[str], mode: str | None = None, *, look: bool = True) -> None:
    """Refuse, before anything is made, a command that cannot run as an instance of ``m``: missing,
    not executable, or (in enforce mode) not under spec.filesystem.exec, whose exec the kernel would
    refuse or kill with no word of why. ``look=False``: not whether the file is there and executable (the
    agent, for a user: root's answer would tell the user of files they cannot see; their client looks, and
    the exec as them says the rest)."""
    from ebpfguard.manifest.compile import compile as compile_policy  # noqa: PLC0415

    exe = argv[0]
    if look and not os.path.lexists(exe):
        raise LaunchError(f"{exe}: no such file", 127)
    if look and (os.path.isdir(exe) or not os.access(exe, os.X_OK)):
        raise LaunchError(f"{exe}: not an executable file", 126)
    if (mode or m.mode) != "enforce" or m.response.get("exec") == "alert":
        return
    policy = compile_policy(m, 0, mode)
    if not any(policy.allows_path(p, "exec") for p in (exe, os.path.realpath(exe))):
        raise LaunchError(f"{exe} is not under spec.filesystem.exec of {m.name!r} ({', '.join(m.exec) or 'empty'}): "
                          "its exec would be refused; add it, or run the program that is listed", 126)


def spawn(argv: Sequence[str], procs_files: Sequence[str], env: dict[str, str] | None = None,
          stdout: Any = None, sandbox: Sandbox | None = None, *, stdin: Any = None, stderr: Any = None,
          cwd: str | None = None, umask: int = -1) -> subprocess.Popen[bytes]:
    """fork, join every cgroup in ``procs_files`` (the v2 one last), enter ``sandbox``, exec ``argv``.
    With no ``procs_files`` the command runs where the caller is (the benchmark's outside runs). ``cwd`` is
    entered in the child once it runs as the extension's user, in its own mount namespace: a folder that user
    cannot enter fails the launch, as it would fail for them."""
    fds = [os.open(f, os.O_WRONLY | os.O_CLOEXEC) for f in [*procs_files[1:], *procs_files[:1]]]
    err_r, err_w = os.pipe2(os.O_CLOEXEC)

    def child() -> None:
        step = "set up the mount namespace"
        try:
            if sandbox is not None:
                sandbox.isolate()
                step = "drop privileges"
                sandbox.drop()
            if cwd is not None:
                step = f"enter the working directory {cwd}"
                try:
                    os.chdir(cwd)
                except FileNotFoundError:
                    raise LaunchError("it is not in the instance's view of the files (its /tmp and /var/tmp are its "
                                      "own, and only what the manifest grants is there): start from a folder the "
                                      "manifest grants") from None
            step = "join the extension cgroup"
            for fd in fds:
                os.write(fd, b"0")
            if sandbox is not None:
                step = "enter the sandbox (Landlock, seccomp)"
                sandbox.confine()
        except BaseException as exc:
            os.write(err_w, f"failed to {step}: {exc}".encode()[:4096])
            raise

    try:
        if env is None and sandbox is not None:
            env = sandbox.environ()
        proc = subprocess.Popen(list(argv), preexec_fn=child if fds or sandbox or cwd else None,  # noqa: PLW1509
                                close_fds=True, env=env, stdin=stdin, stdout=stdout, stderr=stderr, umask=umask)
    except (OSError, subprocess.SubprocessError) as err:
        os.close(err_w)
        detail = os.read(err_r, 4096).decode(errors="replace")
        os.close(err_r)
        raise LaunchError(detail or f"failed to start {argv[0]}: {err}") from err
    finally:
        for fd in fds:
            os.close(fd)
    os.close(err_w)
    os.close(err_r)
    return proc


def exit_status(returncode: int) -> int:
    """The command's own status, or 128+N when it was killed by signal N (as a shell reports it)."""
    return 128 - returncode if returncode < 0 else returncode
