"""Data parallelism through Hugging Face Accelerate.

Under `accelerate launch` (or torchrun, or `safegene eval --num-processes N`, which spawns the
processes itself) the environment names a rank and a world size; `current_dist()` then initialises
the process group through Accelerate's `PartialState` (gloo on CPU, NCCL on GPUs) and gathers Python
objects with Accelerate's `gather_object`. Without such an environment everything is one process
and nothing distributed is touched.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta

from safegene.errors import SafeGeneError
from safegene.io.atomic import HELD_BY_LAUNCHER, held_claims


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str | None = None  # the device Accelerate assigned to this rank

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, items: list) -> list:
        """Every rank's list, concatenated in rank order, on every rank."""
        if self.world == 1:
            return list(items)
        from accelerate.utils import gather_object

        return gather_object(list(items))

    def barrier(self) -> None:
        if self.world > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()


def _env_world() -> int:
    for var in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        if os.environ.get(var):
            try:
                return int(os.environ[var])
            except ValueError:
                pass
    return 1


def in_distributed_env() -> bool:
    return _env_world() > 1


# What a launcher leaves in the environment of the processes it starts: `accelerate launch` (every
# launcher of it sets the mixed precision) and torchrun (torch elastic).
_LAUNCHER_VARS = {
    "ACCELERATE_MIXED_PRECISION": "accelerate launch",
    "TORCHELASTIC_RUN_ID": "torchrun",
}


def lone_launch() -> str | None:
    """The launcher's name when a launcher started this process as a world of one (e.g.
    `accelerate launch --num_processes 2` without `--multi_gpu` on a machine without GPUs runs
    one process), else None."""
    if in_distributed_env():
        return None
    return next((name for var, name in _LAUNCHER_VARS.items() if var in os.environ), None)


def current_dist(device: str | None = None) -> Dist:
    """The process group of this run (initialised on first use), or a single process."""
    if not in_distributed_env():
        return Dist()
    import torch
    from accelerate import PartialState

    cpu = (
        device == "cpu"
        or not torch.cuda.is_available()
        or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    )
    state = PartialState(cpu=cpu, timeout=timedelta(minutes=60))
    atexit.unregister(_destroy_group)  # once, however often the group is asked for
    atexit.register(_destroy_group)
    return Dist(
        rank=state.process_index,
        world=state.num_processes,
        local_rank=state.local_process_index,
        device=str(state.device),
    )


def _destroy_group() -> None:
    """Tear the process group down before the interpreter exits: left to exit, gloo's threads are
    still joinable and a rank could die with 'terminate called without an active exception'."""
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(argv: list[str], num_processes: int, *, cpu: bool) -> int:
    """Run `python -m safegene <argv>` as `num_processes` ranks on this machine (what
    `accelerate launch --num_processes N` does), wait, and return the first failing exit code."""
    if num_processes < 1:
        raise SafeGeneError(f"--num-processes must be at least 1, got {num_processes}")
    port = _free_port()
    procs = []
    for rank in range(num_processes):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(num_processes),
            LOCAL_WORLD_SIZE=str(num_processes),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        if cpu:
            env["ACCELERATE_USE_CPU"] = "true"
        env[HELD_BY_LAUNCHER] = os.pathsep.join(held_claims())  # the ranks write our output
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
        procs.append(subprocess.Popen([sys.executable, "-m", "safegene", *argv], env=env))
    code = 0
    try:
        while procs:
            for p in list(procs):
                rc = p.poll()
                if rc is None:
                    continue
                procs.remove(p)
                if rc != 0 and code == 0:
                    code = rc
                    for q in procs:  # one rank failed: the others would wait for it forever
                        q.terminate()
            time.sleep(0.1)
    except KeyboardInterrupt:
        for q in procs:
            q.terminate()
        raise
    return code
