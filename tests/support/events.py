"""Reading a namespace's event stream in tests: as its own consumer group, no polling."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.abc

from jarvis_kernel.bus import Bus
from jarvis_kernel.protocol import Event, GenericEvent, Keys, decode_event


def kind_of(event: Event | GenericEvent) -> object:
    """The event's ``type`` tag, known or not."""
    return event.type if isinstance(event, GenericEvent) else type(event).__struct_config__.tag


class Events:
    """Every event of a namespace, as they arrive (one XREADGROUP reader).

    Start `run` in a task group; `first` waits for the first event that matches.
    """

    def __init__(self, bus: Bus, keys: Keys) -> None:
        self.bus, self.keys = bus, keys
        self.seen: list[Event | GenericEvent] = []
        self._arrived = anyio.Event()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        await self.bus.xgroup_create(self.keys.events, "test", start_id="0")
        task_status.started()
        while True:
            for entry in await self.bus.xreadgroup(self.keys.events, "test", "t", block_s=1.0):
                self.seen.append(decode_event(entry.fields["event"]))
                self._arrived.set()
                self._arrived = anyio.Event()

    async def first(self, match: Callable[[Event | GenericEvent], bool]) -> Event | GenericEvent:
        while not any(match(e) for e in self.seen):
            await self._arrived.wait()
        return next(e for e in self.seen if match(e))
