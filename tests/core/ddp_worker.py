"""One rank of the core DDP check (tests/core/test_ddp.py): RANK, WORLD_SIZE, MASTER_* come from the env."""

import os
import sys

import torch
import torch.distributed as dist

import rtrl_modules as rm


def data(rank: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + rank)
    return [torch.randn(2, steps, 3, generator=gen, dtype=torch.float64) for steps in (4, 2, 5)]


def main(result_file: str) -> None:
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", init_method="env://")
    torch.manual_seed(0)
    core = rm.ELSTM(3, 4).double()
    ddp = torch.nn.parallel.DistributedDataParallel(core)
    state = core.initial_state(2)
    for x in data(rank):
        out, state = ddp(x, state)
        out.pow(2).sum().backward()
    if rank == 0:
        torch.save({name: p.grad for name, p in core.named_parameters()}, result_file)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
