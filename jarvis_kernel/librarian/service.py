"""`LibrarianService`: the librarian as one of the kernel's services.

It indexes at start, then every `interval_s` (on the injected `Clock`) and `debounce_s`
after the last change seen under the memory folder (watchfiles), and answers workers'
searches over the bus (docs/memory.md, "Librarian search over the bus")::

    asker:    SUBSCRIBE <ns>:librarian:reply:<requestId>
              LPUSH <ns>:librarian:requests {"requestId", "query", "project"?, "limit"?}
    service:  BLMOVE <ns>:librarian:requests <ns>:librarian:processing RIGHT LEFT
              SET <ns>:librarian:reply:<requestId> <reply> PX <replyTtlS * 1000>
              PUBLISH <ns>:librarian:reply:<requestId> <reply>
              LREM <ns>:librarian:processing 1 <request>
    reply:    {"requestId", "ok": true, "hits": [...]} | {"requestId", "ok": false, "error"}

All blocking work (files, SQLite) runs in a worker thread, one call at a time.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any

import anyio
import msgspec
from anyio.abc import TaskStatus

from ..bus.base import Bus, Tx
from ..clock import Clock, SystemClock, run_with_timeout
from ..config import Config, LibrarianConfig
from ..errors import JarvisError
from ..protocol import ID_PATTERN
from .search import Hit
from .store import IndexReport, Librarian

__all__ = [
    "LibrarianKeys",
    "LibrarianService",
    "SearchReply",
    "SearchRequest",
    "search_over_bus",
]


class SearchRequest(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A worker's search, pushed onto ``<ns>:librarian:requests``."""

    request_id: Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
    query: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
    project: str | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=50)] = 5


class SearchReply(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    request_id: str
    ok: bool
    hits: list[Hit] = []
    error: str | None = None


class LibrarianKeys:
    """The librarian's keys in a namespace."""

    def __init__(self, namespace: str = "jarvis") -> None:
        self.requests = f"{namespace}:librarian:requests"
        self.processing = f"{namespace}:librarian:processing"
        self.deadletter = f"{namespace}:deadletter"
        self._reply = f"{namespace}:librarian:reply:"

    def reply(self, request_id: str) -> str:
        return self._reply + request_id


Changes = Callable[[Path], AsyncIterable[object]]


def _watchfiles(folder: Path) -> AsyncIterable[object]:
    from watchfiles import awatch

    def only_maps(_change: object, path: str) -> bool:
        return path.endswith(("context_map.json", "projects.json"))

    changes: AsyncIterable[object] = awatch(folder, watch_filter=only_maps, recursive=True)
    return changes


class LibrarianService:
    """Runs the librarian in the kernel: schedule, file watching, bus searches."""

    def __init__(
        self,
        librarian: Librarian,
        *,
        config: LibrarianConfig | None = None,
        clock: Clock | None = None,
        bus: Bus | None = None,
        namespace: str = "jarvis",
        changes: Changes | None = _watchfiles,
    ) -> None:
        self.librarian = librarian
        self.config = config or librarian.config
        self.clock: Clock = clock or SystemClock()
        self.bus = bus
        self.keys = LibrarianKeys(namespace)
        self._changes = changes
        self._lock = anyio.Lock()
        self._dirty = anyio.Event()
        self._last_change = 0.0
        self.changes_seen = 0
        self._ran = anyio.Event()
        self.runs = 0
        self.last_report: IndexReport | None = None

    @classmethod
    def from_config(
        cls, config: Config, *, bus: Bus | None = None, clock: Clock | None = None
    ) -> LibrarianService:
        lib = Librarian.from_config(config, clock=clock)
        return cls(
            lib, config=config.librarian, clock=clock, bus=bus, namespace=config.bus.namespace
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Index, then serve until cancelled. `task_status.started()` once listening."""
        await self.reindex()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._schedule)
                tg.start_soon(self._debounce)
                if self._changes is not None:
                    await tg.start(self._watch)
                if self.bus is not None:
                    await tg.start(self._serve_bus)
                task_status.started()
        finally:
            with anyio.move_on_after(5, shield=True):
                async with self._lock:
                    await anyio.to_thread.run_sync(self.librarian.close)

    async def reindex(self) -> IndexReport:
        """One index run (in a worker thread). It never builds the dense modes' word table
        (a minute or more of CPU, which would also hold up the kernel's shutdown): until
        ``librarian index`` has built it once, searches rank as ``expanded``."""
        async with self._lock:
            report = await anyio.to_thread.run_sync(
                functools.partial(self.librarian.index, build_table=False)
            )
            if self.runs == 0:  # then kept up to date by the index runs
                await anyio.to_thread.run_sync(self.librarian.warm)
        self.last_report = report
        self.runs += 1
        self._ran.set()
        self._ran = anyio.Event()
        return report

    async def wait_for_runs(self, count: int) -> None:
        """Wait until at least `count` index runs have finished (for tests and callers)."""
        while self.runs < count:
            await self._ran.wait()

    async def search(self, query: str, *, project: str | None = None, limit: int = 5) -> list[Hit]:
        """Search in a worker thread."""
        async with self._lock:
            return await anyio.to_thread.run_sync(
                lambda: self.librarian.search(query, project=project, limit=limit)
            )

    def notify_changed(self) -> None:
        """Something under the memory folder changed: re-index once quiet for `debounce_s`."""
        self._last_change = self.clock.monotonic()
        self.changes_seen += 1
        self._dirty.set()

    async def _schedule(self) -> None:
        while True:
            await self.clock.sleep(self.config.interval_s)
            await self.reindex()

    async def _debounce(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty = anyio.Event()
            while (left := self._last_change + self.config.debounce_s - self.clock.monotonic()) > 0:
                await self.clock.sleep(left)
            await self.reindex()

    async def _watch(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        assert self._changes is not None
        changes = self._changes(self.librarian.memory_dir)
        task_status.started()
        async for _ in changes:
            self.notify_changed()

    async def _serve_bus(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        assert self.bus is not None
        bus = self.bus
        for leftover in await bus.lrange(self.keys.processing, 0, -1):  # left by a crash
            await self._answer(bus, leftover)
        task_status.started()
        while True:
            raw = await bus.blmove(self.keys.requests, self.keys.processing, None)
            if raw is not None:
                await self._answer(bus, raw)

    async def _answer(self, bus: Bus, raw: bytes) -> None:
        try:
            request = msgspec.json.decode(raw, type=SearchRequest)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            letter = {
                "source": self.keys.requests,
                "error": str(exc),
                "raw": raw[:65536].decode("utf-8", "replace"),
                "atMs": self.clock.time_ms(),
            }
            await bus.execute(
                Tx()
                .lpush(self.keys.deadletter, msgspec.json.encode(letter))
                .lrem(self.keys.processing, 1, raw)
            )
            return
        try:
            hits = await self.search(request.query, project=request.project, limit=request.limit)
            reply = SearchReply(request_id=request.request_id, ok=True, hits=hits)
        except JarvisError as exc:
            reply = SearchReply(request_id=request.request_id, ok=False, error=str(exc))
        data = msgspec.json.encode(reply)
        key = self.keys.reply(request.request_id)
        await bus.execute(
            Tx()
            .set(key, data, ttl_s=self.config.reply_ttl_s)
            .publish(key, data)
            .lrem(self.keys.processing, 1, raw)
        )


async def search_over_bus(
    bus: Bus,
    query: str,
    *,
    namespace: str = "jarvis",
    project: str | None = None,
    limit: int = 5,
    timeout_s: float | None = 10.0,
    clock: Clock | None = None,
) -> list[Hit]:
    """Ask the librarian service through the bus (what a worker does). Raises on timeout."""
    keys = LibrarianKeys(namespace)
    request = SearchRequest(
        request_id=f"q-{uuid.uuid4().hex}", query=query, project=project, limit=limit
    )
    key = keys.reply(request.request_id)
    async with bus.subscribe([key]) as sub:
        await bus.lpush(keys.requests, msgspec.json.encode(request))

        async def first() -> bytes | None:
            async for message in _messages(sub):
                return message
            raise JarvisError("subscription closed")

        done, published = await run_with_timeout(clock or SystemClock(), timeout_s, first)
    data: bytes | None = published if done else None
    if data is None:  # missed the publish (or timed out): the reply key may still hold it
        data = await bus.get(key)
    if data is None:
        raise JarvisError(f"no reply from the librarian within {timeout_s} s")
    reply = msgspec.json.decode(data, type=SearchReply)
    if not reply.ok:
        raise JarvisError(f"librarian: {reply.error}")
    return reply.hits


async def _messages(sub: Any) -> AsyncIterator[bytes]:
    async for message in sub:
        yield message.data
