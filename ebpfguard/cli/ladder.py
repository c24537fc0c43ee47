"""The ladder by hand, through the agent: `freeze`, `thaw`, `kill` and `quarantine` an instance (or every
instance of an extension)."""

from __future__ import annotations

from typing import Any

import click

from ebpfguard.cli.common import STATE_OPT, Command, fail
from ebpfguard.errors import EbpfguardError


def _operator(state_dir: str, op: str, name: str, **extra: Any) -> None:
    from ebpfguard.service.control import Client

    try:
        with Client(state_dir, timeout=10) as c:
            ans = c.request(op, name=name, **extra)
    except EbpfguardError as err:
        fail(str(err))
    for inst in ans["instances"]:
        click.echo(f"{inst}: {op if not extra.get('lift') else 'quarantine lifted'}")


@click.command(cls=Command)
@STATE_OPT
@click.argument("name")
def freeze(state_dir: str, name: str) -> None:
    """Freeze an instance (or every instance of an extension) through the agent.

    \b
    Examples:
      ebpfguard freeze md-preview
    """
    _operator(state_dir, "freeze", name)


@click.command(cls=Command)
@STATE_OPT
@click.argument("name")
def thaw(state_dir: str, name: str) -> None:
    """Resume a frozen instance (or every instance of an extension).

    \b
    Examples:
      ebpfguard thaw md-preview-3f2a9c1e
    """
    _operator(state_dir, "thaw", name)


@click.command(cls=Command, name="kill")
@STATE_OPT
@click.argument("name")
def kill_cmd(state_dir: str, name: str) -> None:
    """Kill every process of an instance (or of every instance of an extension): cgroup.kill.

    \b
    Examples:
      ebpfguard kill md-preview
    """
    _operator(state_dir, "kill", name)


@click.command(cls=Command)
@STATE_OPT
@click.option("--lift", is_flag=True, help="End the quarantine.")
@click.argument("name")
def quarantine(state_dir: str, lift: bool, name: str) -> None:
    """Deny all network to an instance in the kernel (restricted mode), or lift that with --lift.

    \b
    Examples:
      ebpfguard quarantine md-preview
      ebpfguard quarantine --lift md-preview
    """
    _operator(state_dir, "quarantine", name, lift=lift)

