"""One rank of the core DDP check (tests/core/test_ddp.py): RANK, WORLD_SIZE, MASTER_* come from the env."""

import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

import rtrl_modules as rm


def data(rank: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + rank)
    return [torch.randn(2, steps, 3, generator=gen, dtype=torch.float64) for steps in (4, 2, 5)]


def ddp_gradients(rank: int) -> dict[str, torch.Tensor]:
    """RTRL gradients of this rank's segments, all-reduced by DDP. The DDP wrapper (and its reducer)
    is gone when this returns, before the process group is destroyed: tearing the reducer down after
    the group can hang in gloo at interpreter exit."""
    torch.manual_seed(0)
    core = rm.ELSTM(3, 4).double()
    ddp = torch.nn.parallel.DistributedDataParallel(core)
    state = core.initial_state(2)
    for x in data(rank):
        out, state = ddp(x, state)
        out.pow(2).sum().backward()
    return {name: p.grad.clone() for name, p in core.named_parameters()}


def main(result_file: str) -> None:
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", init_method="env://", timeout=timedelta(seconds=60))
    grads = ddp_gradients(rank)
    if rank == 0:
        torch.save(grads, result_file)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    # Skip interpreter finalisation: gloo's worker threads can deadlock there (pytorch/pytorch#75097,
    # #179291), and this check is about the gradients, which are on disk by now.
    sys.stdout.flush()
    os._exit(0)
