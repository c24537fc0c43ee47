"""The peers ``ebpfguard bench`` measures against, each watching what ebpfguard watches:

* auditd (Debian's ``auditd``): syscall rules on the same file, exec and socket syscalls. The file
  syscalls are filtered in the kernel by the watched folder (``-F dir=``), as ebpfguard's path maps
  filter; exec and socket syscalls are logged unfiltered, because audit cannot match a socket address
  or an exec allow-list, which is how one would have to watch them with it.
* bpftrace (Debian's ``bpftrace``): the same syscall tracepoints; the open and exec family compare
  the path against the watched folder in the kernel and print matches, the rest count per syscall.

Each is started before and stopped after the rounds that measure it, so the others' rounds run
without it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from ebpfguard.errors import EbpfguardError

FILE_SYSCALLS = ("open", "openat", "openat2", "creat", "truncate", "unlink", "unlinkat", "rename", "renameat",
                 "renameat2", "link", "linkat", "symlink", "symlinkat", "chmod", "fchmodat")
OTHER_SYSCALLS = ("execve", "execveat", "connect", "sendto", "sendmsg", "bind")
PATH_PROBES = {"open": "filename", "openat": "filename", "openat2": "filename", "creat": "pathname",
               "execve": "filename", "execveat": "filename"}


class Peer:
    name = ""

    def available(self) -> str | None:
        """None when it can run here, else why not."""
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def pid(self) -> int:
        """The process doing the peer's user-space work (0 when none), for its CPU and RSS."""
        raise NotImplementedError


class Auditd(Peer):
    name = "auditd"
    KEY = "ebpfguard-bench"

    def __init__(self, watched: Path):
        self.watched = watched
        self.started_daemon: int | None = None
        self.was_enabled: str | None = None
        self.was_backlog: str | None = None

    def available(self) -> str | None:
        for tool in ("auditctl", "auditd"):
            if shutil.which(tool) is None and not Path(f"/sbin/{tool}").exists():
                return f"{tool} is not installed (Debian package auditd; make setup installs it)"
        r = subprocess.run([self._tool("auditctl"), "-s"], capture_output=True, text=True)
        if r.returncode != 0:
            return f"the kernel's audit subsystem does not answer: {r.stderr.strip() or r.stdout.strip()}"
        return None

    @staticmethod
    def _tool(name: str) -> str:
        return shutil.which(name) or f"/sbin/{name}"

    def _status(self, field: str) -> str:
        out = subprocess.run([self._tool("auditctl"), "-s"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith(field + " "):
                return line.split()[1]
        return ""

    def _daemon_pid(self) -> int:
        return int(self._status("pid") or 0)

    def pid(self) -> int:
        return self._daemon_pid()

    def start(self) -> None:
        ctl = self._tool("auditctl")
        self.was_enabled = self._status("enabled")
        self.was_backlog = self._status("backlog_limit")
        subprocess.run([ctl, "-b", "8192"], check=True, capture_output=True)  # as deployments set it
        if self._daemon_pid() == 0:  # nobody consumes audit records yet: run the daemon for the bench
            subprocess.run([self._tool("auditd")], check=True, capture_output=True)
            deadline = time.monotonic() + 10
            while self._daemon_pid() == 0:
                if time.monotonic() > deadline:
                    raise EbpfguardError("auditd did not register with the kernel")
                time.sleep(0.05)
            self.started_daemon = self._daemon_pid()
        subprocess.run([ctl, "-e", "1"], check=True, capture_output=True)
        # ebpfguard's never,task rule (kernel/laudit.py) would keep these syscall rules from matching, as
        # a real auditd's rule loading (auditctl -D) removes it; it is put back at stop
        self.removed_never_task = subprocess.run([ctl, "-d", "never,task"], capture_output=True).returncode == 0
        file_rule = [ctl, "-a", "always,exit", "-F", "arch=b64"]
        for sc in FILE_SYSCALLS:
            file_rule += ["-S", sc]
        subprocess.run([*file_rule, "-F", f"dir={self.watched}", "-k", self.KEY], check=True, capture_output=True)
        other = [ctl, "-a", "always,exit", "-F", "arch=b64"]
        for sc in OTHER_SYSCALLS:
            other += ["-S", sc]
        subprocess.run([*other, "-k", self.KEY], check=True, capture_output=True)

    def stop(self) -> None:
        ctl = self._tool("auditctl")
        rules = subprocess.run([ctl, "-l", "-k", self.KEY], capture_output=True, text=True).stdout
        for line in rules.splitlines():
            if line.startswith("-a "):
                subprocess.run([ctl, "-d", *line[3:].split()], capture_output=True)
        if getattr(self, "removed_never_task", False):
            subprocess.run([ctl, "-a", "never,task"], capture_output=True)
            self.removed_never_task = False
        if self.was_enabled:
            subprocess.run([ctl, "-e", self.was_enabled], capture_output=True)
            self.was_enabled = None
        if self.was_backlog:
            subprocess.run([ctl, "-b", self.was_backlog], capture_output=True)
            self.was_backlog = None
        if self.started_daemon:
            try:
                os.kill(self.started_daemon, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 10
            while self._daemon_pid() != 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            self.started_daemon = None


class Bpftrace(Peer):
    name = "bpftrace"

    def __init__(self, watched: Path):
        self.watched = watched
        self.proc: subprocess.Popen[bytes] | None = None
        self.out: Path | None = None

    def available(self) -> str | None:
        if shutil.which("bpftrace") is None:
            return "bpftrace is not installed (Debian package bpftrace; make setup installs it)"
        return None

    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def script(self) -> str:
        prefix = str(self.watched).rstrip("/") + "/"
        lines = []
        for sc, field in PATH_PROBES.items():
            if Path(f"/sys/kernel/tracing/events/syscalls/sys_enter_{sc}").exists():
                lines.append(f'tracepoint:syscalls:sys_enter_{sc} /strncmp(str(args->{field}), "{prefix}", '
                             f'{len(prefix)}) == 0/ {{ printf("%d %s %s\\n", pid, comm, str(args->{field})); }}')
        rest = [f"tracepoint:syscalls:sys_enter_{sc}" for sc in (*FILE_SYSCALLS, *OTHER_SYSCALLS)
                if sc not in PATH_PROBES and Path(f"/sys/kernel/tracing/events/syscalls/sys_enter_{sc}").exists()]
        lines.append(",\n".join(rest) + " { @calls[probe] = count(); }")
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        fd, name = tempfile.mkstemp(prefix="ebpfguard-bpftrace-", suffix=".bt")
        with os.fdopen(fd, "w") as fh:
            fh.write(self.script())
        self.out = Path(name + ".out")
        log = open(self.out, "wb")
        self.proc = subprocess.Popen(["bpftrace", name], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 60
        while b"Attaching" not in self.out.read_bytes():
            if self.proc.poll() is not None:
                raise EbpfguardError(f"bpftrace failed: {self.out.read_text(errors='replace')[-400:]}")
            if time.monotonic() > deadline:
                raise EbpfguardError("bpftrace did not attach within 60 s")
            time.sleep(0.05)
        time.sleep(0.5)  # "Attaching N probes..." is printed before the last probe is in place
        os.unlink(name)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self.out is not None:
            self.out.unlink(missing_ok=True)
            self.out = None
