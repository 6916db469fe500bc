"""The kernel inside another asyncio application.

The application below has its own work (a ticker standing in for a web server or a bot);
it embeds a `Kernel` with two simulated workers on the in-memory bus, hands it a few tasks
and prints how each ended. No Redis needed::

    python examples/embed.py
"""

from __future__ import annotations

import asyncio
import tempfile

from jarvis_kernel import Kernel, Task
from jarvis_kernel.config import Config, LibrarianConfig, WorkerConfig
from jarvis_kernel.protocol import TaskCompleted, TaskDead


async def ticker(stop: asyncio.Event) -> None:
    """The host application's own work: it keeps running while the swarm does its tasks."""
    ticks = 0
    while not stop.is_set():
        ticks += 1
        await asyncio.sleep(0.05)  # a request served, a message handled...
    print(f"app: ticker ran {ticks} times alongside the kernel")


def swarm_config(memory_dir: str) -> Config:
    """Two inline sim workers; the librarian off (this app has no `.memory/` to index)."""
    return Config(
        memory_dir=memory_dir,
        librarian=LibrarianConfig(enabled=False),
        workers=[
            WorkerConfig(
                id="ui",
                model="gemini:flash",
                expertise={"react": 0.9},
                duration_s=0.2,
                options={"seed": 1},
            ),
            WorkerConfig(
                id="arch",
                model="gemini:pro",
                expertise={"database": 0.9},
                duration_s=0.3,
                options={"seed": 2},
            ),
        ],
    )


async def run_swarm() -> None:
    tasks = [
        Task(task_id="t-button", description="Restyle the login button", required_skills=["react"]),
        Task(task_id="t-schema", description="Add an orders table", required_skills=["database"]),
        Task(task_id="t-readme", description="Fix a typo in the README", complexity=0.1),
    ]
    with tempfile.TemporaryDirectory() as memory_dir:
        async with Kernel.from_config(swarm_config(memory_dir)) as kernel:
            outcomes = await kernel.run_tasks(tasks)
    for task in tasks:
        event = outcomes[task.task_id]
        if isinstance(event, TaskCompleted):
            print(f"{task.task_id}: completed by {event.worker_id}: {event.result}")
        elif isinstance(event, TaskDead):
            print(f"{task.task_id}: dead: {event.reason}")


async def main() -> None:
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as app:
        app.create_task(ticker(stop))
        try:
            await asyncio.wait_for(run_swarm(), timeout=8)
        finally:
            stop.set()
    print("app: done")


if __name__ == "__main__":
    asyncio.run(main())
