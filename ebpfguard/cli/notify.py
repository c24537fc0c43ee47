"""`ebpfguard notify`: desktop notifications of what the user's own plug-ins did (the notify package)."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import click

from ebpfguard.cli.common import STATE_OPT, Command, fail
from ebpfguard.errors import EbpfguardError


@click.command(cls=Command)
@STATE_OPT
@click.option("--socket", "socket_file", type=click.Path(dir_okay=False), default=None,
              help="The agent's control socket (default: $EBPFGUARD_SOCKET, else /run/ebpfguard/agent.sock).")
@click.option("--test", "sample", is_flag=True, help="Show a sample notice and exit.")
@click.option("-v", "--verbose", is_flag=True, help="Say on stderr what it does.")
def notify(state_dir: str, socket_file: str | None, sample: bool, verbose: bool) -> None:
    """Tell the person at the desktop what their plug-ins did: each block,
    freeze, throttle, quarantine or kill of an instance they launched, a
    rollback discarded, a launch the agent refused, as a desktop notification
    (org.freedesktop.Notifications on the session bus). Runs in the user's
    graphical session (the ebpfguard-notify.service user unit, or the XDG
    autostart entry), follows only that user's instances, reconnects when the
    agent restarts and exits when the session bus goes.

    A flood makes at most one notice per instance per 10 s, updated in place
    ("and 317 more"). Where the notification server has actions, "Details"
    opens the explanation and "Stop plug-in" kills the instance; otherwise the
    notice names the `ebpfguard explain SEQ` to run.

    \b
    Examples:
      ebpfguard notify --test
      ebpfguard notify
      systemctl --user enable --now ebpfguard-notify.service
    """
    from ebpfguard.notify.bus import BusGone, Notifications
    from ebpfguard.notify.notices import APP
    from ebpfguard.notify.notices import sample as sample_notice
    from ebpfguard.notify.notifier import Notifier

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="ebpfguard notify: %(message)s")
    try:
        bus = Notifications()
    except BusGone as err:
        fail(str(err))
    if sample:
        n = sample_notice(str(Path.home()))
        caps = bus.capabilities()
        if not caps:
            fail("no notification server answers on the session bus (org.freedesktop.Notifications)")
        try:
            ident = bus.notify(summary=n.title(), body=n.body(markup="body-markup" in caps, actions=False),
                               icon=n.icon, app=APP, hints={"urgency": ("y", int(n.urgency)),
                                                            "category": ("s", n.category)})
        except EbpfguardError as err:
            fail(str(err))
        click.echo(f"sample notice {ident} shown")
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the session's end: leave through the finally blocks
    try:
        Notifier(bus, socket=socket_file, state_dir=state_dir).run()
    except KeyboardInterrupt:
        pass
