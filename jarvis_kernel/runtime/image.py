"""The worker image, and how a worker container is configured.

Workers run the host's own Python and this project's virtualenv inside an otherwise empty
image, so no registry is ever needed:

- `ensure_local_image` creates ``jarvis-kernel/worker:local`` from a tiny root filesystem
  made in memory (the directories a Linux root needs and Debian's merged-usr links,
  ``bin -> usr/bin`` ..., nothing else), loaded into the daemon as a one-layer image.
- `host_python_binds` lists the read-only binds that fill it: the host's ``/usr``, the
  Python install prefix and the project (which holds ``.venv``), each at its host path, so
  every absolute path baked into the venv and the interpreter resolves unchanged.
- `worker_container_config` is the create-container body: host network, an init process
  as PID 1 (signals reach the worker, zombies are reaped), ``no-new-privileges``, a
  read-only root with a tmpfs ``/tmp``, and the resource limits.

The binds name paths on the machine that runs the Docker daemon, so the kernel and the
daemon must share a filesystem (a local daemon, as ``DOCKER_HOST`` selects by default).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp

from ..errors import RuntimeUnavailable

__all__ = [
    "WORKER_IMAGE",
    "ensure_local_image",
    "host_python_binds",
    "image_archive",
    "rootfs_tar",
    "worker_container_config",
]

WORKER_IMAGE = "jarvis-kernel/worker:local"
_EPOCH = "1970-01-01T00:00:00Z"  # fixed dates: the same image bytes, and id, every time
_CA_CERTS = Path("/etc/ssl/certs")

# (path, mode) of the empty directories; /tmp is world-writable and sticky like on a host.
_ROOT_DIRS: tuple[tuple[str, int], ...] = (
    ("dev", 0o755),
    ("etc", 0o755),
    ("proc", 0o555),
    ("root", 0o700),
    ("run", 0o755),
    # A directory, not a link into /usr: with ``Init`` the daemon mounts its init binary at
    # /sbin/docker-init, which through a link would land in the read-only host /usr.
    ("sbin", 0o755),
    ("sys", 0o555),
    ("tmp", 0o1777),
    ("usr", 0o755),  # mount point for the host's /usr
    ("work", 0o755),
)
# Debian's merged /usr: the dynamic loader is found as /lib64/ld-linux-x86-64.so.2 and
# scripts as /bin/sh, both through these links into the bind-mounted /usr.
_ROOT_LINKS: tuple[tuple[str, str], ...] = (
    ("bin", "usr/bin"),
    ("lib", "usr/lib"),
    ("lib64", "usr/lib64"),
)


def rootfs_tar() -> bytes:
    """The worker image's root filesystem as an uncompressed tar (same bytes every call)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, mode in _ROOT_DIRS:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = mode
            tar.addfile(info)
        for name, target in _ROOT_LINKS:
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            info.mode = 0o777
            tar.addfile(info)
    return buf.getvalue()


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def image_archive(tag: str, arch: str) -> tuple[bytes, str]:
    """The worker image as a ``docker save`` archive, tagged `tag`, and the image's id.

    One layer (`rootfs_tar`) and a config with fixed dates, so the same `arch` (the
    daemon's ``GOARCH``, e.g. ``amd64``) always gives the same bytes, hence the same
    content-addressed image id (``sha256`` of the config).
    """
    layer = rootfs_tar()
    config = {
        "architecture": arch,
        "os": "linux",
        "created": _EPOCH,
        "config": {"Labels": {"jarvis.kernel.image": "worker"}},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]},
        "history": [{"created": _EPOCH, "created_by": "jarvis_kernel.runtime.image"}],
    }
    config_json = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = [{"Config": "config.json", "RepoTags": [tag], "Layers": ["layer.tar"]}]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _tar_member(tar, "layer.tar", layer)
        _tar_member(tar, "config.json", config_json)
        _tar_member(tar, "manifest.json", json.dumps(manifest).encode())
    return buf.getvalue(), f"sha256:{hashlib.sha256(config_json).hexdigest()}"


async def _image_id(docker: aiodocker.Docker, ref: str) -> str | None:
    try:
        info = await docker.images.inspect(ref)
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return None
        raise
    return str(info["Id"])


async def ensure_local_image(docker: aiodocker.Docker, tag: str = WORKER_IMAGE) -> str:
    """Make sure `tag` names the worker image, creating it without a registry; return `tag`.

    The image is made in memory (`image_archive`) and handed to the daemon's
    ``POST /images/load`` (aiodocker's ``images.import_image``, i.e. ``docker load``).
    Its id is known in advance, so this is idempotent, replaces a stale image under
    `tag`, and callers that race load identical content and end on one image with nothing
    left dangling. Raises `RuntimeUnavailable` when the daemon cannot be used.
    """
    try:
        arch = str((await docker.version())["Arch"])
        archive, image_id = image_archive(tag, arch)
        if await _image_id(docker, tag) != image_id:
            # Errors inside the progress stream are raised as DockerStreamError.
            await docker.images.import_image(archive)
    except (aiodocker.DockerError, aiohttp.ClientError) as exc:
        raise RuntimeUnavailable(f"cannot create image {tag}: {exc}") from exc
    return tag


def _python_prefixes(project: Path) -> list[Path]:
    """Where this interpreter lives: its real prefix, and the paths the venv links through."""
    real = Path(os.path.realpath(sys.base_prefix))
    found = [real]
    # A venv's bin/python is a symlink to <home>/python3 as written when it was made, so if
    # base_prefix reaches the install through a symlink that path must exist too.
    if Path(sys.base_prefix) != real:
        found.append(Path(sys.base_prefix))
    exe_prefix = Path(os.path.realpath(sys.executable)).parent.parent
    if exe_prefix not in found and not _covered(exe_prefix, [project]):  # a venv of copies
        found.append(exe_prefix)
    return found


def _covered(path: Path, mounts: list[Path]) -> bool:
    return any(path == m or path.is_relative_to(m) for m in mounts)


def host_python_binds(project_root: Path) -> list[str]:
    """Read-only binds that let the host's Python run `project_root`'s venv in the image.

    - ``/usr``: the C library, the dynamic loader (via the image's ``lib64`` link) and the
      shared libraries Python's extension modules link to (libssl, libffi, libz ...).
    - the Python install prefix (``sys.base_prefix``, resolved) at the same path: the venv's
      ``bin/python`` is a symlink into it, and it holds the standard library and
      ``libpython``. Skipped when it is under ``/usr`` (a distribution Python).
    - the project root at the same path: the code, and ``.venv`` whose scripts, ``.pth``
      files and editable install all name absolute host paths.
    - ``/etc/ssl/certs`` when the host has it: the public CA certificates. Debian's OpenSSL
      finds them through ``/usr/lib/ssl/certs -> /etc/ssl/certs``; without them every HTTPS
      request a worker makes (a model API) fails verification. Not ``/etc/ssl`` as a whole:
      ``/etc/ssl/private`` holds the host's private keys.

    Nothing else from the host's ``/etc``: the daemon provides ``/etc/hosts``,
    ``/etc/resolv.conf`` and ``/etc/hostname``, and neither Python nor the project looks
    users up (no ``/etc/passwd``; ``HOME`` is ``/`` unless the worker's env sets it).
    """
    root = Path(os.path.realpath(project_root))
    mounts: list[Path] = [Path("/usr")]
    binds = ["/usr:/usr:ro"]
    for prefix in _python_prefixes(root):
        if not _covered(prefix, mounts):
            mounts.append(prefix)
            binds.append(f"{os.path.realpath(prefix)}:{prefix}:ro")
    if not _covered(root, mounts):
        binds.append(f"{root}:{root}:ro")
    if _CA_CERTS.is_dir():
        binds.append(f"{_CA_CERTS}:{_CA_CERTS}:ro")
    return binds


def worker_container_config(
    argv: list[str],
    *,
    env: dict[str, str],
    binds: list[str],
    labels: dict[str, str],
    workdir: str,
    memory_bytes: int | None,
    nano_cpus: int | None,
    read_only_root: bool = True,
    image: str = WORKER_IMAGE,
) -> dict[str, Any]:
    """The ``POST /containers/create`` body for one worker running `argv`.

    The container shares the host's network (workers reach Redis on loopback), runs an
    init process as PID 1 that forwards signals to the worker and reaps its children,
    cannot gain privileges through setuid binaries, and with `read_only_root` writes only
    to its binds and a tmpfs ``/tmp``. `memory_bytes` also caps swap (no swap beyond it);
    `nano_cpus` is CPUs x 10^9.
    """
    if not argv:
        raise ValueError("argv must name a program")
    bad = [key for key in env if not key or "=" in key]
    if bad:
        raise ValueError(f"invalid environment variable names: {bad}")
    host: dict[str, Any] = {
        "NetworkMode": "host",
        "Init": True,
        "Binds": list(binds),
        "SecurityOpt": ["no-new-privileges"],
        "ReadonlyRootfs": read_only_root,
    }
    if read_only_root:
        host["Tmpfs"] = {"/tmp": "rw,nosuid,nodev,mode=1777"}
    if memory_bytes is not None:
        host["Memory"] = memory_bytes
        host["MemorySwap"] = memory_bytes
    if nano_cpus is not None:
        host["NanoCpus"] = nano_cpus
    return {
        "Image": image,
        "Cmd": list(argv),
        "Env": [f"{key}={value}" for key, value in env.items()],
        "WorkingDir": workdir,
        "Labels": dict(labels),
        "AttachStdin": False,
        "OpenStdin": False,
        "Tty": False,
        "HostConfig": host,
    }
