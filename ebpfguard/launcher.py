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

from .errors import EbpfguardError

if TYPE_CHECKING:
    from .sandbox import Sandbox


class LaunchError(EbpfguardError):
    pass


def resolve(argv: Sequence[str]) -> list[str]:
    """argv with argv[0] made absolute, so the child never probes $PATH (each probe is an exec)."""
    if not argv:
        raise LaunchError("no command given")
    exe = argv[0]
    if "/" not in exe:
        found = shutil.which(exe)
        if not found:
            raise LaunchError(f"{exe}: command not found")
        exe = found
    return [os.path.abspath(exe), *argv[1:]]


def spawn(argv: Sequence[str], procs_files: Sequence[str], env: dict[str, str] | None = None,
          stdout: Any = None, sandbox: Sandbox | None = None) -> subprocess.Popen[bytes]:
    """fork, join every cgroup in ``procs_files`` (the v2 one last), enter ``sandbox``, exec ``argv``.
    With no ``procs_files`` the command runs where the caller is (the benchmark's outside runs)."""
    fds = [os.open(f, os.O_WRONLY | os.O_CLOEXEC) for f in [*procs_files[1:], *procs_files[:1]]]
    err_r, err_w = os.pipe2(os.O_CLOEXEC)

    def child() -> None:
        step = "set up the mount namespace"
        try:
            if sandbox is not None:
                sandbox.isolate()
                step = "drop privileges"
                sandbox.drop()
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
        proc = subprocess.Popen(list(argv), preexec_fn=child if fds or sandbox else None,  # noqa: PLW1509
                                close_fds=True, env=env, stdout=stdout)
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
