"""Processes and the process group: who this process is in a run, the local ranks it starts, and ending them.

Three ways a run's processes come to be, told apart by Lightning's cluster environments (public API):
torchrun (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``), SLURM (one task per GPU: ``srun``'s variables), or by
hand: ``python -m train.pretrain --devices N`` starts local ranks 1..N-1 itself as copies of its own command
line, with ``MASTER_ADDR``, ``MASTER_PORT`` and ``NODE_RANK`` taken from the environment for several nodes
(docs/scale.md). Ranks it started are its children: when one of them fails, or this process does, the
others are ended, rather than left waiting for the dead one in their next collective until the process
group's timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import (
    ClusterEnvironment,
    LightningEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)

import __main__

GRACE_SECONDS = 10  # how long a failed rank's peers get to fail by themselves (and say why) before they are killed


@dataclass
class Ranks:
    """This process's place in the run, and the local ranks it started (empty unless it launched them)."""

    rank: int
    local_rank: int
    world_size: int
    address: str = "127.0.0.1"  # the process group's rendezvous: rank 0's host and a free port there
    port: int = 0
    children: list[subprocess.Popen] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def environment() -> ClusterEnvironment:
    for kind in (TorchElasticEnvironment, SLURMEnvironment):
        if kind.detect():
            return kind()
    return LightningEnvironment()


def own_command() -> list[str]:
    """This process's command line, to start a copy of it (``python -m pkg.module`` or ``python script.py``)."""
    spec = getattr(__main__, "__spec__", None)
    if spec is not None and spec.name:
        return [sys.executable, "-m", spec.name.removesuffix(".__main__"), *sys.argv[1:]]
    return [sys.executable, os.path.abspath(sys.argv[0]), *sys.argv[1:]]


def start(devices: int, num_nodes: int) -> Ranks:
    """Who this process is, starting this node's other ranks first when nobody else does."""
    world = devices * num_nodes
    if world == 1:
        return Ranks(0, 0, 1)
    cluster = environment()
    if cluster.creates_processes_externally:
        cluster.set_world_size(world)  # Lightning's own environment takes it; torchrun's and SLURM's know it
        cluster.set_global_rank(cluster.node_rank() * devices + cluster.local_rank())
        if cluster.world_size() != world:
            raise ValueError(f"the launcher started {cluster.world_size()} processes, --devices {devices} x "
                             f"--num_nodes {num_nodes} is {world}: give the numbers the launcher was given")
        return Ranks(cluster.global_rank(), cluster.local_rank(), world, cluster.main_address, cluster.main_port)
    address, port = cluster.main_address, cluster.main_port  # MASTER_ADDR / MASTER_PORT, or here and a free port
    os.environ.update(MASTER_ADDR=address, MASTER_PORT=str(port), NODE_RANK=str(cluster.node_rank()),
                      WORLD_SIZE=str(world), LOCAL_RANK="0")
    children = [subprocess.Popen(own_command(), env={**os.environ, "LOCAL_RANK": str(local)})
                for local in range(1, devices)]
    ranks = Ranks(cluster.node_rank() * devices, 0, world, address, port, children)
    threading.Thread(target=watch, args=(children,), daemon=True, name="rank-watcher").start()
    return ranks


def init_process_group(ranks: Ranks) -> None:
    """NCCL on GPUs, gloo on CPU processes, meeting at rank 0's address."""
    if ranks.world_size == 1:
        return
    if ranks.device.type == "cuda":
        torch.cuda.set_device(ranks.device)
    dist.init_process_group("nccl" if ranks.device.type == "cuda" else "gloo",
                            init_method=f"tcp://{ranks.address}:{ranks.port}", rank=ranks.rank,
                            world_size=ranks.world_size, timeout=timedelta(minutes=30))


def watch(children: list[subprocess.Popen]) -> None:
    """A child rank failed: the others (this process included) get GRACE_SECONDS to notice in a collective and
    fail with a message, then every process of the run is killed."""
    while True:
        time.sleep(0.5)
        codes = [child.poll() for child in children]
        if all(code == 0 for code in codes):
            return
        if any(code not in (None, 0) for code in codes):
            time.sleep(GRACE_SECONDS)
            for child in children:
                if child.poll() is None:
                    child.kill()
            os._exit(1)


def first_failure(ranks: Ranks, this_failed_first: bool) -> str | None:
    """This process is failing: end the local ranks it started. Returns which of them failed first when this
    process only failed because of it (a collective with a process that is gone), else None."""
    if not this_failed_first:  # let ranks that failed first finish failing (and print why)
        deadline = time.monotonic() + GRACE_SECONDS
        for child in ranks.children:
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                break
    failed = [(rank, child.returncode) for rank, child in enumerate(ranks.children, 1)
              if child.poll() not in (None, 0)]
    for child in ranks.children:
        if child.poll() is None:
            child.kill()
        child.wait()
    if failed and not this_failed_first:
        return f"local rank {failed[0][0]} failed first (exit status {failed[0][1]}; its error is above)"
    return None


def wait_for_children(ranks: Ranks) -> int:
    """After this process's work: the first non-zero exit status of the ranks it started (0: all succeeded)."""
    codes = [child.wait() for child in ranks.children]
    return next((code for code in codes if code), 0)
