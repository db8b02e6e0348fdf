"""RTRL gradients are ordinary .grads by the end of backward, so DDP all-reduces them (2 CPU ranks)."""

import faulthandler
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import rtrl_modules as rm


def _data(rank):
    gen = torch.Generator().manual_seed(100 + rank)
    return [torch.randn(2, steps, 3, generator=gen, dtype=torch.float64) for steps in (4, 2, 5)]


def _rtrl_grads(core, segments):
    state = core.initial_state(2)
    for x in segments:
        out, state = core(x, state)
        out.pow(2).sum().backward()
    return {name: p.grad.clone() for name, p in core.named_parameters()}


def _worker(rank, init_file, result_file):
    faulthandler.dump_traceback_later(120, exit=True)  # a hang fails the test instead of CI
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    core = rm.ELSTM(3, 4).double()
    ddp = torch.nn.parallel.DistributedDataParallel(core)
    state = core.initial_state(2)
    for x in _data(rank):
        out, state = ddp(x, state)
        out.pow(2).sum().backward()
    if rank == 0:
        torch.save({name: p.grad for name, p in core.named_parameters()}, result_file)
    dist.destroy_process_group()


def test_ddp_averages_rtrl_gradients_across_two_cpu_ranks():
    torch.manual_seed(0)
    reference = rm.ELSTM(3, 4).double()
    per_rank = []
    for rank in range(2):
        reference.zero_grad()
        per_rank.append(_rtrl_grads(reference, _data(rank)))
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "grads.pt")
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), result), nprocs=2, join=True)
        got = torch.load(result)
    for name, grad in got.items():
        torch.testing.assert_close(grad, (per_rank[0][name] + per_rank[1][name]) / 2, rtol=1e-10, atol=1e-12)
