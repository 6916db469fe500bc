"""The librarian runs inside the kernel: it indexes `.memory/` at start and answers a worker's
search over the bus."""

from __future__ import annotations

from pathlib import Path

import anyio

from jarvis_kernel import Kernel
from jarvis_kernel.bus.memory import MemoryBus
from jarvis_kernel.config import Config
from jarvis_kernel.librarian.service import search_over_bus
from tests.support.memory import copy_sample_memory


async def test_kernel_hosts_the_librarian(tmp_path: Path) -> None:
    copy_sample_memory(tmp_path)
    bus = MemoryBus()
    with anyio.fail_after(30):
        async with Kernel(Config(memory_dir=str(tmp_path)), bus=bus) as kernel:
            assert kernel.librarian is not None
            hits = await search_over_bus(
                bus, "NextAuth GitHub provider", namespace=kernel.keys.namespace
            )
    assert (tmp_path / "patterns.json").is_file() and (tmp_path / "global_index.json").is_file()
    assert any(
        h.project == "atelier-sam" and "nextauth" in h.file_path.lower() for h in hits[:3]
    ), hits


async def test_no_memory_folder_means_no_librarian(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        async with Kernel(Config(memory_dir=str(tmp_path / "absent")), bus=MemoryBus()) as kernel:
            assert kernel.librarian is None
