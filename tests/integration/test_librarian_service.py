"""LibrarianService: schedule on the FakeClock, debounced re-index on changes, bus searches."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import msgspec
import pytest

from jarvis_kernel.bus.memory import MemoryBus
from jarvis_kernel.clock import FakeClock
from jarvis_kernel.config import LibrarianConfig
from jarvis_kernel.errors import JarvisError
from jarvis_kernel.librarian.service import LibrarianKeys, LibrarianService, search_over_bus
from jarvis_kernel.librarian.store import Librarian
from tests.support.memory import copy_sample_memory

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def memory(tmp_path: Path) -> Path:
    mem = tmp_path / "memory"
    copy_sample_memory(mem)
    return mem


def _service(memory: Path, clock: FakeClock, **kwargs: object) -> LibrarianService:
    config = LibrarianConfig(interval_s=60.0, debounce_s=2.0)
    lib = Librarian(memory, config=config, clock=clock)
    return LibrarianService(lib, config=config, clock=clock, **kwargs)  # type: ignore[arg-type]


async def test_schedule_reindexes_every_interval(memory: Path) -> None:
    clock = FakeClock()
    service = _service(memory, clock, changes=None)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            assert service.runs == 1
            await clock.wait_for_sleepers(1)
            await clock.advance(60.0)
            await service.wait_for_runs(2)
            tg.cancel_scope.cancel()


async def test_the_first_run_loads_what_searches_keep_in_memory(memory: Path) -> None:
    pytest.importorskip("numpy")
    service = _service(memory, FakeClock(), changes=None)
    index = service.librarian._index
    assert index._terms is None
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            assert index._terms is not None  # not left for the first search to load
            tg.cancel_scope.cancel()


async def test_changes_are_debounced_on_the_clock(memory: Path) -> None:
    clock = FakeClock()
    send, receive = anyio.create_memory_object_stream[object](10)

    def changes(_folder: Path) -> AsyncIterator[object]:
        return receive.__aiter__()

    service = _service(memory, clock, changes=changes)
    with send, receive, anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await send.send("change")
            await clock.wait_for_sleepers(2)  # the schedule and the debounce
            await clock.advance(1.0)
            await send.send("change again")  # restarts the quiet period
            while service.changes_seen < 2:
                await anyio.lowlevel.checkpoint()
            await clock.advance(1.5)
            assert service.runs == 1
            await clock.advance(1.0)
            await service.wait_for_runs(2)
            tg.cancel_scope.cancel()


async def test_a_changed_map_on_disk_is_picked_up(memory: Path) -> None:
    clock = FakeClock()
    config = LibrarianConfig(interval_s=3600.0, debounce_s=0.0)
    service = LibrarianService(Librarian(memory, config=config, clock=clock), clock=clock)
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            path = memory / "projects/mailroom/context_map.json"
            cmap = json.loads(path.read_text())
            cmap["files"].append(
                {"path": "src/webhooks/bounce.ts", "summary": "Handles SendGrid bounce webhooks"}
            )
            path.write_text(json.dumps(cmap))
            await service.wait_for_runs(2)
            assert service.last_report is not None
            assert service.last_report.reread == ["mailroom"]
            tg.cancel_scope.cancel()


async def test_workers_search_through_the_bus(memory: Path) -> None:
    clock = FakeClock()
    bus = MemoryBus(clock=clock)
    service = _service(memory, clock, changes=None, bus=bus)
    keys = LibrarianKeys("jarvis")
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            hits = await search_over_bus(bus, "NextAuth callback error", limit=3, clock=clock)
            assert hits[0].file_path == "src/pages/api/auth/[...nextauth].ts"
            await bus.lpush(keys.requests, b'{"requestId": "bad", "query": 3}')
            scoped = await search_over_bus(bus, "prisma", project="jarvis", clock=clock)
            assert {h.active for h in scoped} <= {True, False}
            letters = await bus.lrange(keys.deadletter, 0, -1)
            assert len(letters) == 1
            assert json.loads(letters[0])["source"] == keys.requests
            assert await bus.llen(keys.processing) == 0
            tg.cancel_scope.cancel()
    await bus.aclose()


async def test_search_over_bus_times_out_without_a_librarian() -> None:
    clock = FakeClock()
    bus = MemoryBus(clock=clock)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:

            async def ask() -> None:
                with pytest.raises(JarvisError, match="no reply"):
                    await search_over_bus(bus, "x", timeout_s=5.0, clock=clock)

            tg.start_soon(ask)
            await clock.wait_for_sleepers(1)
            await clock.advance(5.0)
    [request] = await bus.lrange("jarvis:librarian:requests", 0, -1)
    assert msgspec.json.decode(request)["query"] == "x"
    await bus.aclose()
