"""A training run refuses a local ``train.storage`` on a multi-node Ray cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from frameexit.config import load_config
from pipelines.cluster_checks import (
    SHARED_STORAGE_ENV,
    alive_hosts,
    alive_nodes,
    check_storage,
    mount_type,
    storage_problem,
)

ROOT = Path(__file__).resolve().parents[1]
PAPER = str(ROOT / "configs" / "activitynet_resnet50.yaml")  # train.storage: runs


def node(alive: bool, cpus: float = 16.0, host: str = "10.0.0.1") -> dict:
    """One entry as ``ray.nodes()`` lists it (the keys the check reads and their company)."""
    return {
        "NodeID": "n" * 56,
        "Alive": alive,
        "NodeManagerAddress": host,
        "Resources": {"CPU": cpus, "memory": 1e9},
    }


@pytest.fixture(autouse=True)
def _nothing_declared(monkeypatch) -> None:
    monkeypatch.delenv(SHARED_STORAGE_ENV, raising=False)


LOCAL_DISK = "/dev/sda1 / ext4 rw,relatime 0 0\ntmpfs /tmp tmpfs rw 0 0\n"


def test_dead_nodes_do_not_count() -> None:
    assert alive_nodes([node(True, 0), node(False), node(True)]) == 2
    assert alive_nodes([]) == 0


def test_nodes_on_one_machine_share_its_disk() -> None:
    one_machine = [node(True, 0), node(True), node(True)]  # a test cluster on loopback
    assert alive_hosts(one_machine) == 1
    assert alive_hosts([*one_machine, node(True, host="10.0.0.2"), node(False, host="x")]) == 2


def test_a_local_storage_on_several_nodes_is_refused_naming_the_field() -> None:
    cfg = load_config(PAPER)
    problem = storage_problem(
        cfg, alive_nodes([node(True, 0), node(True), node(False)]), mounts=LOCAL_DISK
    )
    assert problem and "train.storage" in problem and "s3://" in problem
    assert SHARED_STORAGE_ENV in problem  # how to declare a shared mount


def test_one_node_or_object_storage_is_fine() -> None:
    cfg = load_config(PAPER)
    assert storage_problem(cfg, alive_nodes([node(True), node(False)]), mounts=LOCAL_DISK) is None
    s3 = load_config(PAPER, ["train.storage=s3://bucket/frameexit/runs"])
    assert storage_problem(s3, 8, mounts=LOCAL_DISK) is None


def test_a_declared_shared_folder_is_accepted_and_only_it(tmp_path: Path, monkeypatch) -> None:
    shared, other = tmp_path / "shared", tmp_path / "shared-not"
    cfg = load_config(PAPER, [f"train.storage={shared}/runs"])
    beside = load_config(PAPER, [f"train.storage={other}/runs"])
    monkeypatch.setenv(SHARED_STORAGE_ENV, f"/nowhere:{shared}")
    assert storage_problem(cfg, 3, mounts=LOCAL_DISK) is None
    assert storage_problem(beside, 3, mounts=LOCAL_DISK)  # a sibling with the same prefix
    monkeypatch.setenv(SHARED_STORAGE_ENV, "true")
    assert storage_problem(beside, 3, mounts=LOCAL_DISK) is None


def test_a_network_filesystem_mount_is_accepted() -> None:
    mounts = LOCAL_DISK + "fs-1.efs.aws:/ /mnt/efs nfs4 rw,vers=4.1 0 0\n"
    assert mount_type("/mnt/efs/runs", mounts) == "nfs4"
    assert mount_type("/mnt/efs2/runs", mounts) == "ext4"  # the longest mount point above
    on_efs = load_config(PAPER, ["train.storage=/mnt/efs/runs"])
    assert storage_problem(on_efs, 4, mounts=mounts) is None
    beside = load_config(PAPER, ["train.storage=/mnt/efs2/runs"])
    assert "ext4" in storage_problem(beside, 4, mounts=mounts)


@pytest.mark.ray
def test_the_check_reads_the_connected_cluster(ray_cluster, tmp_path: Path) -> None:
    """On the session's one-node Ray a local storage passes: the real ``ray.nodes()``
    entries carry the ``Alive`` key the check counts."""
    import ray

    assert alive_nodes(ray.nodes()) == 1
    check_storage(load_config(PAPER, [f"train.storage={tmp_path}"]))
