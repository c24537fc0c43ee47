"""Floods are coalesced: at most one new notice per key (an instance) per WINDOW seconds. Events that come within the
window update the notice shown, in place (the server's replaces_id), with a count ("and 317 more"), at most once per
EVERY seconds: the rest wait in the slot until ``due()`` (the notifier's loop asks when the next one is, ``wait()``).
A worse event (a kill after blocks) takes over the notice at once. The clock is injectable: the tests step it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ebpfguard.notify.notices import Notice

WINDOW = 10.0
EVERY = 1.0


@dataclass
class Slot:
    """The notice shown for a key: since when (its window), how many events came after it, the server's id."""

    notice: Notice
    since: float
    sent: float
    more: int = 0
    pending: bool = False
    id: int = 0  # 0 until the server answered (0 as replaces_id: a new notice)


@dataclass(frozen=True)
class Show:
    """A Notify to make: ``slot.notice`` with ``slot.more``; ``new`` is a new notice, else it replaces slot.id."""

    slot: Slot
    new: bool


class Coalescer:
    def __init__(self, clock: Callable[[], float] = time.monotonic, window: float = WINDOW, every: float = EVERY):
        self.clock, self.window, self.every = clock, window, every
        self.slots: dict[str, Slot] = {}

    def add(self, notice: Notice) -> Show | None:
        """What to show for ``notice`` now, or None when it waits (counted) for the slot's next update."""
        now = self.clock()
        self._forget(now)
        slot = self.slots.get(notice.key)
        if slot is None or now - slot.since >= self.window:
            slot = self.slots[notice.key] = Slot(notice, since=now, sent=now)
            return Show(slot, new=True)
        slot.more += 1
        if notice.rank > slot.notice.rank:
            slot.notice = notice
            return self._send(slot, now)
        if now - slot.sent >= self.every:
            return self._send(slot, now)
        slot.pending = True
        return None

    def due(self) -> list[Show]:
        """The updates whose time has come."""
        now = self.clock()
        return [self._send(s, now) for s in self.slots.values() if s.pending and now - s.sent >= self.every]

    def wait(self) -> float | None:
        """Seconds until the next update is due (None: none waits)."""
        now = self.clock()
        times = [s.sent + self.every - now for s in self.slots.values() if s.pending]
        return max(0.0, min(times)) if times else None

    def shown(self, slot: Slot, ident: int) -> None:
        """The server's id for the slot's notice, for the updates that replace it."""
        slot.id = ident

    def _send(self, slot: Slot, now: float) -> Show:
        slot.sent, slot.pending = now, False
        return Show(slot, new=False)

    def _forget(self, now: float) -> None:
        for key in [k for k, s in self.slots.items() if not s.pending and now - s.since >= self.window]:
            del self.slots[key]
