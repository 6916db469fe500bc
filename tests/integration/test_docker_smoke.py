"""Docker end to end through aiodocker: the worker image, the host-Python binds, the config.

A container runs this project's venv Python in the registry-free worker image, on the host
network, and reports to a real Redis; the test awaits the report with a blocking BLPOP.
"""

from __future__ import annotations

import errno
import json
from collections.abc import AsyncIterator
from typing import Any

import aiodocker
import anyio
import pytest
import redis.asyncio
from aiodocker.containers import DockerContainer

import jarvis_kernel
from jarvis_kernel.runtime.image import host_python_binds, worker_container_config
from jarvis_kernel.testing import project_root

pytestmark = [pytest.mark.docker, pytest.mark.redis]

ROOT = project_root()
VENV_PYTHON = str(ROOT / ".venv" / "bin" / "python")
KEY = "jarvis:test:docker"
DEADLINE_S = 60.0
BLPOP_TIMEOUT_S = 30

REPORT_VERSION = (
    "import os, jarvis_kernel, redis; "
    "redis.Redis.from_url(os.environ['REDIS_URL'])"
    ".lpush(os.environ['KEY'], jarvis_kernel.__version__)"
)

REPORT_CONFINEMENT = """
import json, os, redis

def write_errno(path):
    try:
        with open(path, "w") as f:
            f.write("x")
    except OSError as exc:
        return exc.errno
    return 0

status = dict(line.split(":", 1) for line in open("/proc/self/status"))
facts = {
    "pid": os.getpid(),
    "pid1": open("/proc/1/comm").read().strip(),
    "no_new_privs": status["NoNewPrivs"].strip(),
    "root_errno": write_errno("/probe"),
    "project_errno": write_errno(os.path.join(os.environ["PROJECT"], "probe")),
    "tmp_errno": write_errno("/tmp/probe"),
}
redis.Redis.from_url(os.environ["REDIS_URL"]).lpush(os.environ["KEY"], json.dumps(facts))
"""

# The handler writes to Redis itself, as the guardian's target will. An Event, not
# signal.pause(): a signal that lands before the wait is not lost.
WAIT_FOR_SIGUSR1 = """
import os, signal, threading, redis

r = redis.Redis.from_url(os.environ["REDIS_URL"])
done = threading.Event()

def on_usr1(signum, frame):
    r.lpush(os.environ["KEY"] + ":signal", signal.Signals(signum).name)
    done.set()

signal.signal(signal.SIGUSR1, on_usr1)
r.lpush(os.environ["KEY"] + ":ready", os.getpid())
done.wait()
"""


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def worker_config(code: str, image: str, redis_url: str, labels: dict[str, str]) -> dict[str, Any]:
    return worker_container_config(
        [VENV_PYTHON, "-c", code],
        image=image,
        env={"REDIS_URL": redis_url, "KEY": KEY, "PROJECT": str(ROOT)},
        binds=host_python_binds(ROOT),
        labels=labels,
        workdir=str(ROOT),
        memory_bytes=512 * 1024 * 1024,
        nano_cpus=1_000_000_000,
    )


async def start(docker: aiodocker.Docker, config: dict[str, Any]) -> DockerContainer:
    # create + start rather than containers.run, which would try a registry on a 404.
    container = await docker.containers.create(config)
    await container.start()
    return container


async def report(client: redis.asyncio.Redis, key: str, container: DockerContainer) -> bytes:
    """What the worker pushed on `key` (blocking pop); its output if it never came."""
    popped = await client.blpop([key], timeout=BLPOP_TIMEOUT_S)
    if popped is None:
        output = "".join(await container.log(stdout=True, stderr=True))
        pytest.fail(f"nothing on {key} within {BLPOP_TIMEOUT_S}s; container output:\n{output}")
    value = popped[1]
    assert isinstance(value, bytes)
    return value


async def test_worker_container_reports_to_redis(
    docker: aiodocker.Docker,
    worker_image: str,
    redis_url: str,
    redis_client: redis.asyncio.Redis,
    docker_labels: dict[str, str],
) -> None:
    config = worker_config(REPORT_VERSION, worker_image, redis_url, docker_labels)
    with anyio.fail_after(DEADLINE_S):
        container = await start(docker, config)
        reported = await report(redis_client, KEY, container)
        exit_status = await container.wait()
        info = await container.show()
        await container.delete()
        with pytest.raises(aiodocker.DockerError) as gone:
            await container.show()

    assert reported.decode() == jarvis_kernel.__version__
    assert exit_status["StatusCode"] == 0
    assert info["State"]["ExitCode"] == 0
    assert gone.value.status == 404

    host = info["HostConfig"]
    assert host["Init"] is True
    assert host["ReadonlyRootfs"] is True
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["NetworkMode"] == "host"
    assert host["Memory"] == 512 * 1024 * 1024
    assert docker_labels.items() <= info["Config"]["Labels"].items()


async def test_worker_container_is_confined(
    docker: aiodocker.Docker,
    worker_image: str,
    redis_url: str,
    redis_client: redis.asyncio.Redis,
    docker_labels: dict[str, str],
) -> None:
    """What the process inside sees, not only what the daemon was told."""
    config = worker_config(REPORT_CONFINEMENT, worker_image, redis_url, docker_labels)
    with anyio.fail_after(DEADLINE_S):
        container = await start(docker, config)
        facts = json.loads(await report(redis_client, KEY, container))
        exit_status = await container.wait()

    assert exit_status["StatusCode"] == 0
    assert facts["pid"] != 1
    assert facts["pid1"] == "docker-init"
    assert facts["no_new_privs"] == "1"
    assert facts["root_errno"] == errno.EROFS
    assert facts["project_errno"] == errno.EROFS
    assert facts["tmp_errno"] == 0


async def test_sigusr1_reaches_python_handler(
    docker: aiodocker.Docker,
    worker_image: str,
    redis_url: str,
    redis_client: redis.asyncio.Redis,
    docker_labels: dict[str, str],
) -> None:
    """docker kill -s SIGUSR1 goes to the init (PID 1), which forwards it to the worker."""
    config = worker_config(WAIT_FOR_SIGUSR1, worker_image, redis_url, docker_labels)
    with anyio.fail_after(DEADLINE_S):
        container = await start(docker, config)
        worker_pid = int(await report(redis_client, f"{KEY}:ready", container))
        await container.kill(signal="SIGUSR1")
        handled = await report(redis_client, f"{KEY}:signal", container)
        exit_status = await container.wait()

    assert worker_pid != 1  # so the signal really went through the init
    assert handled == b"SIGUSR1"
    assert exit_status["StatusCode"] == 0
