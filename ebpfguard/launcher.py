"""Start a command inside an extension cgroup, so that its first instruction already runs there.

The child joins the cgroup between fork and exec through fds the parent opened: after it joins the
v2 group (last), it opens nothing, so the only checked action before exec is the exec itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

from .errors import EbpfguardError


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
          stdout: Any = None) -> subprocess.Popen[bytes]:
    """fork, join every cgroup in ``procs_files`` (the v2 one last), exec ``argv``. With no
    ``procs_files`` the command simply runs where the caller is (the benchmark's outside runs)."""
    fds = [os.open(f, os.O_WRONLY | os.O_CLOEXEC) for f in [*procs_files[1:], *procs_files[:1]]]

    def join() -> None:
        for fd in fds:
            os.write(fd, b"0")

    try:
        return subprocess.Popen(list(argv), preexec_fn=join if fds else None, close_fds=True, env=env,  # noqa: PLW1509
                                stdout=stdout)
    except OSError as err:
        raise LaunchError(f"failed to start {argv[0]}: {err.strerror}") from err
    finally:
        for fd in fds:
            os.close(fd)


def exit_status(returncode: int) -> int:
    """The command's own status, or 128+N when it was killed by signal N (as a shell reports it)."""
    return 128 - returncode if returncode < 0 else returncode
