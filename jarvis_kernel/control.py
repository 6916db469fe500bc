"""Swarm-wide control: pause and resume (docs/protocol.md, "Control").

One place for the writes, shared by `Kernel.pause`/`Kernel.resume` and the operator's
``python -m jarvis_kernel pause|resume``. Each is one atomic step: the key and its event are
written together or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence

from .bus import Bus, Tx
from .clock import Clock
from .errors import ProtocolError
from .market.records import event_fields
from .protocol import Keys, PauseInfo, SwarmPaused, SwarmResumed, decode, encode

__all__ = ["pause", "paused_info", "resume"]


async def pause(
    bus: Bus,
    keys: Keys,
    reason: str,
    *,
    by: str,
    clock: Clock,
    events_maxlen: int | None,
    exempt: Sequence[str] = (),
) -> PauseInfo:
    """``SET <ns>:swarm:paused <PauseInfo>`` and event ``swarm.paused``. Returns the info.

    The tasks named in `exempt` still run while paused (see `PauseInfo`).
    """
    info = PauseInfo(reason=reason, at_ms=clock.time_ms(), by=by, exempt_task_ids=tuple(exempt))
    tx = Tx().set(keys.paused, encode(info))
    tx.xadd(
        keys.events,
        event_fields(SwarmPaused(at_ms=info.at_ms, reason=reason)),
        maxlen=events_maxlen,
    )
    await bus.execute(tx)
    return info


async def resume(
    bus: Bus, keys: Keys, reason: str = "", *, clock: Clock, events_maxlen: int | None
) -> bool:
    """``DEL <ns>:swarm:paused`` and event ``swarm.resumed``. Returns whether it was paused."""
    was_paused = await bus.exists(keys.paused)
    tx = Tx().delete(keys.paused)
    tx.xadd(
        keys.events,
        event_fields(SwarmResumed(at_ms=clock.time_ms(), reason=reason)),
        maxlen=events_maxlen,
    )
    await bus.execute(tx)
    return was_paused


async def paused_info(bus: Bus, keys: Keys) -> PauseInfo | None:
    """The current pause, or None. A value that is not a `PauseInfo` still means paused."""
    raw = await bus.get(keys.paused)
    if raw is None:
        return None
    try:
        return decode(raw, PauseInfo)
    except ProtocolError:  # written by someone else: paused all the same, reason unknown
        return PauseInfo(reason=raw.decode("utf-8", "replace")[:200])
