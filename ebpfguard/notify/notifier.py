"""The notifier's loop: one thread polls the agent's `subscribe` stream and the session bus. Each line becomes a
notice (notices.py), coalesced per instance (coalesce.py), shown through the Notifications server (bus.py). A new
notice is completed first: the version of its extension (`status`), the manifest line that would grant what it
tried (`explain`), each on a short connection of its own (the subscribed one only streams).

Actions, where the server has them: "Details" writes the explanation to a file in the user's runtime folder and
opens it (xdg-open); "Stop plug-in" kills the instance (the `kill` operation: the user's own). When the agent goes
away the notifier says so once, quietly, and connects again every RETRY seconds; when the session bus goes, run()
returns.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ebpfguard.common.statedir import DEFAULT as DEFAULT_STATE
from ebpfguard.errors import EbpfguardError
from ebpfguard.forensics.explain import format_text
from ebpfguard.notify.bus import BusGone, Notifications
from ebpfguard.notify.coalesce import Coalescer, Show
from ebpfguard.notify.notices import APP, Notice, Urgency, agent_gone, notice_of, text
from ebpfguard.service.control import Client
from ebpfguard.service.protocol import Explain, Kill, Status, Subscribe

log = logging.getLogger("ebpfguard.notify")
RETRY = 2.0  # seconds between attempts to reach an agent that is gone


class Notifier:
    """Follows the caller's instances through the agent at ``socket`` and tells the desktop through ``bus``."""

    def __init__(self, bus: Notifications, *, socket: str | None = None, state_dir: str = DEFAULT_STATE,
                 home: str | None = None, runtime_dir: str | None = None, clock: Callable[[], float] = time.monotonic,
                 coalescer: Coalescer | None = None, opener: Sequence[str] = ("xdg-open",),
                 retry: float = RETRY) -> None:
        self.bus, self.socket, self.state_dir = bus, socket, state_dir
        self.home = home if home is not None else str(Path.home())
        self.runtime = Path(runtime_dir or os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}")
        self.clock, self.retry, self.opener = clock, retry, list(opener)
        self.coalescer = coalescer or Coalescer(clock)
        self.caps = bus.capabilities()
        self.client: Client | None = None
        self.versions: dict[str, str] = {}
        self.explained: dict[int, dict[str, Any]] = {}
        self.by_id: dict[int, Notice] = {}  # the server's ids of the notices shown -> their notice, for actions
        self.stopped: set[str] = set()  # instances this notifier killed: their "killed by hand" is not told
        self.gone_id = 0  # the "agent is not running" notice, while shown
        self.gone_told = False
        self.next_try = 0.0
        self.children: list[subprocess.Popen[bytes]] = []

    # ---- the loop ----------------------------------------------------------------------------------------------
    def run(self, until: Callable[[], bool] = lambda: False) -> None:
        """Until the session bus goes (or ``until()``)."""
        try:
            while not until():
                self.step()
        except BusGone as err:
            log.info("%s: exiting", err)
        finally:
            self._disconnect()

    def step(self, max_wait: float | None = None) -> None:
        """One round: (re)connect if due, wait for the agent, the bus or the next coalesced update, handle them."""
        if self.client is None and self.clock() >= self.next_try:
            self._connect()
        self._bus_signals()  # what came in while a call waited for its reply sits in the queue, not the socket
        waits = [w for w in (self.coalescer.wait(), None if self.client else max(0.0, self.next_try - self.clock()),
                             max_wait) if w is not None]
        poller = select.poll()
        poller.register(self.bus.fileno(), select.POLLIN)
        if self.client is not None:
            poller.register(self.client.sock, select.POLLIN)
        poller.poll(int(min(waits) * 1000) if waits else None)
        if self.client is not None:  # its own buffer may hold lines the socket no longer shows
            self._agent_lines()
        self._bus_signals()
        for show in self.coalescer.due():
            self._show(show)
        self._reap()

    def _connect(self) -> None:
        try:
            client = Client(self.state_dir, timeout=None, socket_file=self.socket)
        except EbpfguardError as err:
            self._agent_lost(str(err))
            return
        try:
            client.request(Subscribe())
        except EbpfguardError as err:
            client.close()
            self._agent_lost(str(err))
            return
        self.client = client
        log.info("following your instances through %s", client.path)
        if self.gone_id:
            self.bus.close(self.gone_id)
        self.gone_id, self.gone_told = 0, False

    def _agent_lost(self, why: str) -> None:
        self._disconnect()
        self.next_try = self.clock() + self.retry
        if not self.gone_told:
            log.warning("the agent is gone (%s): trying again every %g s", why, self.retry)
            self.gone_told = True
            self.gone_id = self._notify(agent_gone(), 0, 0)

    def _disconnect(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def _agent_lines(self) -> None:
        assert self.client is not None
        while True:
            try:
                item = self.client.next_line(0)
            except TimeoutError:
                return
            except EbpfguardError as err:
                self._agent_lost(str(err))
                return
            if item is None:
                self._agent_lost("it closed the connection")
                return
            self.handle(item)

    def handle(self, item: dict[str, Any]) -> None:
        """One line of the stream."""
        notice = notice_of(item, self.home)
        if notice is None:
            return
        if notice.instance in self.stopped and notice.summary == "was killed" and "by hand" in notice.done:
            return  # the user's own "Stop plug-in"
        show = self.coalescer.add(notice)
        if show is not None:
            self._show(show)

    # ---- showing -----------------------------------------------------------------------------------------------
    def _show(self, show: Show) -> None:
        slot = show.slot
        slot.notice = self._complete(slot.notice)
        replaces = 0 if show.new else slot.id
        ident = self._notify(slot.notice, replaces, slot.more)
        if ident:
            self.coalescer.shown(slot, ident)
            self.by_id[ident] = slot.notice

    def _notify(self, n: Notice, replaces: int, more: int) -> int:
        actions: list[str] = []
        if "actions" in self.caps:
            if n.seq is not None:
                actions += ["details", "Details"]
            if n.stoppable and n.instance:
                actions += ["stop", "Stop plug-in"]
        hints: dict[str, tuple[str, Any]] = {"urgency": ("y", int(n.urgency)), "category": ("s", n.category),
                                             "desktop-entry": ("s", "ebpfguard-notify")}
        try:
            return self.bus.notify(summary=n.title(), body=n.body(more=more, markup="body-markup" in self.caps,
                                                                  actions=bool(actions)),
                                   replaces=replaces, icon=n.icon, app=APP, actions=actions, hints=hints)
        except BusGone:
            raise
        except EbpfguardError as err:  # no server (yet): the next notice tries again
            log.warning("notice not shown: %s", err)
            self.caps = self.bus.capabilities()
            return 0

    def _complete(self, n: Notice) -> Notice:
        """The version of the extension and the manifest line that would grant what it tried, once."""
        if n.version is None and n.instance:
            if n.instance not in self.versions:
                self._versions()
            if n.instance in self.versions:
                n = replace(n, version=self.versions[n.instance])
        if n.seq is not None and not n.fix and n.what:
            e = self._explain(n.seq)
            if e:
                n = n.with_explanation(e, self.home)
        return n

    def _versions(self) -> None:
        try:
            with Client(self.state_dir, timeout=10, socket_file=self.socket) as c:
                for i in c.request(Status()).instances:
                    self.versions[i.instance] = i.version
        except EbpfguardError as err:
            log.debug("status: %s", err)

    def _explain(self, seq: int) -> dict[str, Any] | None:
        if seq not in self.explained:
            try:
                with Client(self.state_dir, timeout=10, socket_file=self.socket) as c:
                    self.explained[seq] = c.request(Explain(seq=seq)).explanation
            except EbpfguardError as err:
                log.debug("explain %d: %s", seq, err)
                return None
        return self.explained[seq]

    # ---- actions -----------------------------------------------------------------------------------------------
    def _bus_signals(self) -> None:
        for member, args in self.bus.signals():
            if member == "ActionInvoked" and len(args) == 2:
                n = self.by_id.get(int(args[0]))
                if n is not None:
                    self.act(n, str(args[1]))
            elif member == "NotificationClosed" and args:
                self.by_id.pop(int(args[0]), None)

    def act(self, n: Notice, action: str) -> None:
        """What the user chose on a notice: "details" or "stop"."""
        if action == "details" and n.seq is not None:
            self._details(n.seq)
        elif action == "stop" and n.instance:
            try:
                with Client(self.state_dir, timeout=30, socket_file=self.socket) as c:
                    c.request(Kill(name=n.instance))
                self.stopped.add(n.instance)
            except EbpfguardError as err:
                self._notify(Notice(key="error", extension=n.extension, summary="could not be stopped",
                                    done=text(err, self.home), urgency=Urgency.NORMAL, category="x-ebpfguard.error",
                                    rank=0), 0, 0)

    def _details(self, seq: int) -> Path | None:
        e = self._explain(seq)
        if e is None:
            return None
        folder = self.runtime / "ebpfguard"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = folder / f"explain-{seq}.txt"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(format_text(e) + "\n")
        try:
            self.children.append(subprocess.Popen([*self.opener, str(path)], stdin=subprocess.DEVNULL,
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                  start_new_session=True))
        except OSError as err:
            log.warning("cannot open %s: %s", path, err)
        return path

    def _reap(self) -> None:
        self.children = [c for c in self.children if c.poll() is None]
