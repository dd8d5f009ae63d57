"""Checks of a run against the Ray cluster it runs on, made once the driver is connected.

A training run writes its checkpoints from the Train workers and reads them back on the
driver; on a cluster of more than one node that works only when ``train.storage`` is a
place every node sees: object storage (``s3://``, ``gs://``) or a filesystem every node
mounts. A local path such as the paper configs' ``runs/`` is neither, and the run would
fail much later (a stage-1 checkpoint the driver cannot find). :func:`storage_problem`
says so before anything runs; :func:`check_storage` asks Ray and raises.

A local path is accepted as shared when the user declares it, with the environment
variable ``FRAMEEXIT_SHARED_STORAGE`` (``1``/``true`` for any path, else the shared
folders, ``os.pathsep``-separated), or when the driver sees it mounted from a network
filesystem (NFS, Lustre, CephFS, ...).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from frameexit.config import Config
from frameexit.errors import ConfigError
from frameexit.storage import absolute_uri, is_local

#: the environment variable declaring local paths every node of the cluster mounts
SHARED_STORAGE_ENV = "FRAMEEXIT_SHARED_STORAGE"

#: filesystem types (as in /proc/mounts) that every node can mount
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "lustre", "cephfs", "ceph", "glusterfs", "fuse.glusterfs", "gpfs",
     "beegfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.mountpoint-s3", "fuse.juicefs", "wekafs",
     "cifs", "smb3", "9p", "fuse.sshfs"}
)  # fmt: skip


def alive_nodes(nodes: Iterable[Mapping[str, Any]]) -> int:
    """How many of ``nodes`` (as ``ray.nodes()`` lists them) are alive."""
    return sum(1 for node in nodes if node.get("Alive", node.get("alive", False)))


def alive_hosts(nodes: Iterable[Mapping[str, Any]]) -> int:
    """How many machines the alive ``nodes`` run on: Ray nodes started on one machine
    (a test cluster on loopback) share its disks."""
    return len({
        node.get("NodeManagerHostname") or node.get("NodeManagerAddress") or node.get("NodeID")
        for node in nodes if node.get("Alive", node.get("alive", False))
    })  # fmt: skip


def declared_shared(path: str, setting: str | None = None) -> bool:
    """Whether ``path`` lies under a folder declared shared by ``FRAMEEXIT_SHARED_STORAGE``
    (``setting``; default: the environment's value)."""
    setting = os.environ.get(SHARED_STORAGE_ENV, "") if setting is None else setting
    setting = setting.strip()
    if setting.lower() in ("1", "true", "yes"):
        return True
    for folder in filter(None, (f.strip() for f in setting.split(os.pathsep))):
        folder = os.path.abspath(os.path.expanduser(folder))
        if path == folder or path.startswith(folder.rstrip(os.sep) + os.sep):
            return True
    return False


def mount_type(path: str, mounts: str | None = None) -> str | None:
    """The filesystem type of the mount holding ``path`` (the longest mount point above
    it), from ``mounts`` in /proc/mounts' format (default: this machine's); None when
    unknown."""
    if mounts is None:
        try:
            with open("/proc/mounts", encoding="utf-8", errors="replace") as handle:
                mounts = handle.read()
        except OSError:
            return None
    best, kind = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        under = path == point or path.startswith(point.rstrip("/") + "/")
        if under and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def storage_problem(cfg: Config, nodes: int, *, mounts: str | None = None) -> str | None:
    """Why ``train.storage`` cannot hold a run on a Ray cluster of ``nodes`` alive nodes,
    or None when it can: object storage always can, a local path only on one node or when
    it is declared (``FRAMEEXIT_SHARED_STORAGE``) or mounted (a network filesystem,
    judged from ``mounts``, default /proc/mounts) shared."""
    storage = cfg.train.storage
    if nodes <= 1 or not is_local(storage):
        return None
    path = absolute_uri(storage)
    if declared_shared(path):
        return None
    kind = mount_type(path, mounts)
    if kind in NETWORK_FILESYSTEMS:
        return None
    return (
        f"train.storage={storage!r} is a local path ({path}, on {kind or 'an unknown filesystem'}) and "
        f"the Ray cluster runs on {nodes} machines: the workers' checkpoints would be written to "
        "disks the other nodes cannot read. Use object storage "
        "(train.storage=s3://BUCKET/frameexit/runs), or, if every node mounts this path "
        f"(NFS, EFS, Lustre), declare it: {SHARED_STORAGE_ENV}={path}"
    )


def check_storage(cfg: Config) -> None:
    """Raise ConfigError(``train.storage``) when :func:`storage_problem` finds one on the
    connected Ray cluster (call it after ``ensure_ray``)."""
    import ray

    problem = storage_problem(cfg, alive_hosts(ray.nodes()))
    if problem:
        raise ConfigError("train.storage", problem)
