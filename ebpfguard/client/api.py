"""launch() and the Instance handle it returns. Arguments are checked here, before anything is sent (TypeError,
ValueError, FileNotFoundError, as subprocess.Popen raises them); what the agent refuses is a Refused with its words.
The wire mechanics (the descriptors, the exit line, requests answered in between) are service.control's Launching,
which `ebpfguard run` drives too."""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from signal import Signals
from typing import IO, Any, Protocol

from ebpfguard.common.statedir import DEFAULT as DEFAULT_STATE
from ebpfguard.errors import ControlError
from ebpfguard.governance.trust import signature_beside
from ebpfguard.manifest.load import Mode
from ebpfguard.service.control import Client, Launching, caller_umask
from ebpfguard.service.protocol import FORWARDED_SIGNALS, Activity, Launch, Records

PIPE = subprocess.PIPE  # a pipe: this process keeps the other end (Instance.stdin, .stdout, .stderr)
DEVNULL = subprocess.DEVNULL  # /dev/null
STDOUT = subprocess.STDOUT  # stderr only: where stdout goes


class HasFileno(Protocol):
    def fileno(self) -> int: ...


Stdio = int | HasFileno | None  # None: this process's own 0, 1 or 2
QUIET = 0.5  # seconds without activity after an instance's end that end its activity() iterator


def launch(argv: Sequence[str], *, extension: str | None = None, manifest: str | os.PathLike[str] | None = None,
           stdin: Stdio = None, stdout: Stdio = None, stderr: Stdio = None, env: Mapping[str, str] | None = None,
           cwd: str | os.PathLike[str] | None = None, mode: str | None = None,
           socket: str | os.PathLike[str] | None = None) -> Instance:
    """Has the agent run ``argv`` as an instance of ``extension`` (a policy the agent holds, by name) or of
    ``manifest`` (a path, or a manifest's text: a str with a newline), as this process's user, and returns at once
    with its handle. argv[0] without a slash is looked up on env's PATH. stdin, stdout and stderr: a file object, a
    descriptor, PIPE, DEVNULL, STDOUT (stderr only) or None (this process's own). env: the environment the
    manifest filters (default: os.environ); cwd: the working folder, entered with the user's rights (default: this
    process's); mode: "audit" or "enforce" over spec.mode (a manifest's only, not a policy's). socket: the agent's
    (default: $EBPFGUARD_SOCKET, else /run/ebpfguard/agent.sock).

    Raises Refused (a ControlError) with the agent's message when it refuses the launch; ControlError when no
    agent listens."""
    req = _request(argv, extension, manifest, env, cwd, mode)
    with _Stdio(stdin, stdout, stderr) as stdio:
        client = Client(DEFAULT_STATE, timeout=None, socket_file=socket)
        try:
            launching = Launching(client, req, stdio.fds)
        except BaseException:
            client.close()
            raise
        return Instance(launching, client.path, stdio.ours, req.argv, extension)


class Instance:
    """An instance the agent launched for this process's user. Fields: id, pid (its main process, in the agent's
    pid namespace), cgroup, user, layers (the launcher's layers in force), not_enforced (what it could not enforce
    here), args; stdin, stdout and stderr are this process's ends of the pipes asked for with PIPE (binary), else
    None. Closing the handle (close(), or leaving a with block) stops the instance if it still runs, as does this
    process's end. Threads may share a handle: one may wait() while another signals."""

    def __init__(self, launching: Launching, socket: Path, pipes: Sequence[IO[bytes] | None],
                 args: Sequence[str], extension: str | None = None) -> None:
        answer = launching.launched
        self.id = answer.instance
        self.pid = answer.pid
        self.cgroup = answer.cgroup
        self.user = answer.user
        self.layers = list(answer.layers)
        self.not_enforced = list(answer.not_enforced)
        self.args = list(args)
        self.stdin, self.stdout, self.stderr = pipes
        self._launching = launching
        self._socket = socket
        self._extension = extension  # the policy's name, when launched by it: the agent filters records by it
        self._followers: list[Client] = []
        self._closed = False

    @property
    def status(self) -> int | None:
        """The status once known: the main process's exit code, 128+N when signal N ended it."""
        return self._launching.status

    def poll(self) -> int | None:
        """The status if the instance has ended, else None (it does not wait)."""
        if self._closed:
            return self.status
        return self._launching.wait(0)

    def wait(self, timeout: float | None = None) -> int:
        """Waits for the instance to end and returns its status; TimeoutError if it still runs after ``timeout``
        seconds. ControlError if the agent went away meanwhile (it stopped the instance)."""
        if self._closed and self.status is None:
            raise ControlError(f"{self.id}: the handle was closed before the instance ended (closing stopped it)")
        status = self._launching.wait(timeout)
        if status is None:
            raise TimeoutError(f"{self.id} still runs after {timeout:g} s")
        return status

    def signal(self, sig: str | int) -> None:
        """Sends a signal to the instance's main process: one of FORWARDED_SIGNALS, by name ("SIGINT") or as a
        signal.Signals; else ValueError. Nothing once the instance has ended."""
        name = _signal_name(sig)
        self._check_open()
        self._launching.signal(name)

    def kill(self) -> None:
        """Kills the whole instance (every process of its cgroup); its status becomes 137. Nothing once it has
        ended."""
        self._check_open()
        self._launching.kill()

    def activity(self) -> Iterator[dict[str, Any]]:
        """What the instance does from now on, allowed or not: the agent's activity items, as it streams them
        ({"lost": N} when N were dropped because this reader fell behind). The iterator ends once the instance has
        ended and nothing more came for QUIET seconds, after a lifecycle "stop" item, or when the handle is closed.
        Each call is a connection of its own."""
        self._check_open()
        follower = Client(DEFAULT_STATE, timeout=None, socket_file=self._socket)
        try:
            follower.request(Activity(extension=self.id))
        except BaseException:
            follower.close()
            raise
        self._followers.append(follower)
        return self._follow(follower)

    def _follow(self, follower: Client) -> Iterator[dict[str, Any]]:
        try:
            while True:
                try:
                    item = follower.next_line(QUIET)
                except TimeoutError:
                    if self.poll() is not None:  # it ended, and what it did has come (records trail its events)
                        return
                    continue
                if item is None:
                    return
                yield item
                if item.get("kind") == "lifecycle" and item.get("instance") == self.id and \
                        (item.get("detail") or {}).get("event") == "stop":
                    return
        finally:
            follower.close()
            if follower in self._followers:
                self._followers.remove(follower)

    def records(self, kinds: Sequence[str] = ()) -> list[dict[str, Any]]:
        """The forensic records of this instance the agent holds so far, oldest first, as the log has them (only
        those of ``kinds``, if given): the `records` operation, on a connection of its own, so it answers after
        close() too. A record is there once the agent has written it (its group commit: a moment after the event)."""
        out: list[dict[str, Any]] = []
        with Client(DEFAULT_STATE, socket_file=self._socket) as c:
            since = 0
            while True:
                page = c.request(Records(since_seq=since, extension=self._extension, kinds=list(kinds), limit=10000))
                out += [r for r in page.records if r.get("instance") == self.id]
                if not page.more or not page.records:
                    return out
                since = int(page.records[-1].get("seq") or 0)

    def close(self) -> None:
        """Ends the connection (the agent stops the instance if it still runs), the activity streams and this
        process's pipe ends. A second call does nothing."""
        if self._closed:
            return
        self._closed = True
        for follower in list(self._followers):
            follower.shutdown()
        self._launching.close()
        for pipe in (self.stdout, self.stderr):
            if pipe is not None:
                pipe.close()
        if self.stdin is not None:
            try:
                self.stdin.close()
            except BrokenPipeError:  # what was buffered could not go: the instance stopped reading
                pass

    def _check_open(self) -> None:
        if self._closed:
            raise ControlError(f"{self.id}: the handle is closed (closing stopped the instance)")

    def __enter__(self) -> Instance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.status is None else f"status {self.status}"
        return f"<Instance {self.id} pid {self.pid} {state}>"


# ---- arguments ----------------------------------------------------------------------------------------------
def _request(argv: Sequence[str], extension: str | None, manifest: str | os.PathLike[str] | None,
             env: Mapping[str, str] | None, cwd: str | os.PathLike[str] | None, mode: str | None) -> Launch:
    if isinstance(argv, str | bytes) or not isinstance(argv, Sequence) or \
            not all(isinstance(a, str) for a in argv):
        raise TypeError(f"argv: a list of strings, the command and its arguments, not {argv!r}")
    if not argv:
        raise ValueError("argv: no command given")
    if (extension is None) == (manifest is None):
        raise ValueError("give exactly one of extension= (a policy the agent holds, by name) or manifest= (a "
                         "manifest's path or text)")
    environ = dict(os.environ if env is None else env)
    bad = next((k for k, v in environ.items() if not isinstance(k, str) or not isinstance(v, str)), None)
    if bad is not None:
        raise TypeError(f"env: names and values are strings ({bad!r} is not, or its value is not)")
    where = os.getcwd() if cwd is None else os.path.abspath(os.fspath(cwd))
    if mode is not None and mode not in {m.value for m in Mode}:
        raise ValueError(f"mode: {mode!r} is not one of {', '.join(Mode)}")
    text, source = (None, "<request>") if manifest is None else _manifest(manifest)
    return Launch(extension=extension, manifest_text=text, manifest_path=source,
                  signature_text=signature_beside(source) if source != "<request>" else None,
                  mode=Mode(mode) if mode else None, env=environ, cwd=where, umask=caller_umask(),
                  argv=[_command(argv[0], environ.get("PATH", os.defpath), where), *argv[1:]])


def _command(exe: str, path: str, cwd: str) -> str:
    """argv[0] made absolute: the agent execs it as given."""
    if "/" in exe:
        return os.path.normpath(os.path.join(cwd, exe))
    found = shutil.which(exe, path=path)
    if found is None:
        raise FileNotFoundError(errno.ENOENT, f"{exe}: no such command on PATH ({path})", exe)
    return os.path.abspath(found)


def _manifest(manifest: str | os.PathLike[str]) -> tuple[str, str]:
    """(text, where it was read) of a manifest given by path or as text."""
    if isinstance(manifest, str) and "\n" in manifest:
        return manifest, "<request>"
    if not isinstance(manifest, str | os.PathLike):
        raise TypeError(f"manifest: a path or a manifest's text, not {type(manifest).__name__}")
    path = os.path.abspath(os.fspath(manifest))
    return Path(path).read_text(), path


def _signal_name(sig: str | int) -> str:
    name: str | None = None
    if isinstance(sig, str):
        name = sig
    elif isinstance(sig, int) and not isinstance(sig, bool):
        try:
            name = Signals(sig).name
        except ValueError:
            pass
    if name not in FORWARDED_SIGNALS:
        raise ValueError(f"signal {sig!r}: the agent forwards only {', '.join(FORWARDED_SIGNALS)} (kill() ends an "
                         "instance)")
    return name


class _Stdio:
    """The three descriptors a launch passes, made from its stdin, stdout and stderr arguments, and this process's
    ends of the pipes. The descriptors made here are closed once sent (the agent has its copies); the ends kept
    here are closed too if the launch fails."""

    def __init__(self, stdin: Stdio, stdout: Stdio, stderr: Stdio) -> None:
        self.fds: list[int] = []
        self.ours: list[IO[bytes] | None] = []
        self._made: list[int] = []
        try:
            for n, (name, spec) in enumerate((("stdin", stdin), ("stdout", stdout), ("stderr", stderr))):
                self._add(name, spec, n)
        except BaseException:
            self.close(failed=True)
            raise

    def _add(self, name: str, spec: Stdio, default: int) -> None:
        ours: IO[bytes] | None = None
        if spec is None:
            fd = default
        elif isinstance(spec, bool) or not isinstance(spec, int):
            fd = _fileno(name, spec)
        elif spec == PIPE:
            r, w = os.pipe()
            self._made.append(r if default == 0 else w)
            fd, ours = (r, open(w, "wb")) if default == 0 else (w, open(r, "rb"))  # noqa: SIM115 (the handle's)
        elif spec == DEVNULL:
            fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            self._made.append(fd)
        elif spec == STDOUT:
            if name != "stderr":
                raise ValueError(f"{name}: STDOUT is for stderr only")
            fd = self.fds[1]
        elif spec < 0:
            raise ValueError(f"{name}: {spec} is neither a file descriptor nor PIPE, DEVNULL or STDOUT")
        else:
            fd = spec
        if spec is None or (isinstance(spec, int) and spec >= 0):
            try:
                os.fstat(fd)
            except OSError as err:
                raise ValueError(f"{name}: descriptor {fd} is not open ({err.strerror})") from None
        self.fds.append(fd)
        self.ours.append(ours)

    def __enter__(self) -> _Stdio:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.close(failed=kind is not None)

    def close(self, failed: bool) -> None:
        for fd in self._made:
            os.close(fd)
        self._made = []
        if failed:
            for f in self.ours:
                if f is not None:
                    f.close()


def _fileno(name: str, spec: object) -> int:
    try:
        fd = spec.fileno()  # type: ignore[attr-defined]
    except (AttributeError, io.UnsupportedOperation):
        raise TypeError(f"{name}: {type(spec).__name__} has no file descriptor (give a file, a descriptor, PIPE, "
                        "DEVNULL or None)") from None
    except ValueError as err:  # a closed file
        raise ValueError(f"{name}: {err}") from None
    if not isinstance(fd, int):
        raise TypeError(f"{name}: {type(spec).__name__}.fileno() gave {fd!r}, not a descriptor")
    return fd
