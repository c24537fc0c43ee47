"""What every command module shares: the help layout (examples after the options), the --state-dir
option, and the ways a command fails or checks its caller."""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any, NoReturn

import click

from ebpfguard.common.statedir import DEFAULT as DEFAULT_STATE
from ebpfguard.common.statedir import unreadable

STATE_OPT = click.option("--state-dir", default=lambda: os.environ.get("EBPFGUARD_STATE_DIR", DEFAULT_STATE),
                         show_default=DEFAULT_STATE, type=click.Path(file_okay=False, readable=False),
                         help="Forensic log, control socket and keys (env EBPFGUARD_STATE_DIR).")
TRUST_DIR = "/etc/ebpfguard/trust"


def fail(msg: str, code: int = 1) -> NoReturn:
    click.echo(f"ebpfguard: error: {msg}", err=True)
    sys.exit(code)


def _examples_last(cmd: click.Command) -> None:
    """Move the docstring's "Examples:" block after the options (click prints the help text first)."""
    text = inspect.cleandoc(cmd.help or "")
    i = text.find("\b\nExamples:")
    if i >= 0:
        cmd.help, cmd.epilog = text[:i].rstrip(), text[i:]


class Command(click.Command):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _examples_last(self)


class Group(click.Group):
    command_class = Command
    group_class = type  # subgroups are Groups too

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _examples_last(self)


def require_root() -> None:
    if os.geteuid() != 0:
        fail("loading eBPF programs and creating cgroups needs root", 1)


def state_readable(*dirs: str, exists: bool = False) -> None:
    """A state folder that exists but is closed to this user (0700, root's): say so, not a bare EACCES. With
    ``exists``, a folder that is not there is an error too (a mistyped --state-dir must not read as an empty log)."""
    why = unreadable(*dirs)
    if why:
        fail(why)
    for d in dirs if exists else ():
        if not os.path.isdir(d):
            fail(f"no state folder at {d} ({'not a folder' if os.path.exists(d) else 'no such folder'}): give the "
                 "agent's --state-dir", 2)


def operator_name() -> str:
    """Who asked: the user behind sudo, else this process's user."""
    import pwd

    uid = int(os.environ.get("SUDO_UID", os.getuid()))
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
