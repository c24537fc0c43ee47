"""The desktop notifier (`ebpfguard notify`): a program of the user's graphical session that follows what the
agent does to that user's own instances (the `subscribe` operation) and tells the person at the desktop, through
org.freedesktop.Notifications on their session bus.

    notices    a record, a refusal or a gap in the stream -> a Notice in plain words (pure: escaping, ~ for the
               home, paths shortened in the middle; never file contents, command lines or environment values)
    coalesce   at most one new notice per instance per 10 s; later events update it in place ("and 317 more")
    bus        the Notifications service on the session bus (jeepney): capabilities, Notify, actions
    notifier   the loop: the agent's stream and the bus's signals, reconnecting when the agent restarts

Sits above service (its client and protocol) and below cli.
"""

from ebpfguard.notify.coalesce import Coalescer, Show
from ebpfguard.notify.notices import Notice, Urgency, notice_of, sample

__all__ = ["Coalescer", "Notice", "Show", "Urgency", "notice_of", "sample"]
