"""RTRL gradients are ordinary .grads by the end of backward, so DDP all-reduces them (2 CPU ranks)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

import rtrl_modules as rm

WORKER = Path(__file__).with_name("ddp_worker.py")
sys.path.insert(0, str(WORKER.parent))
from ddp_worker import data  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rtrl_grads(core, segments):
    state = core.initial_state(2)
    for x in segments:
        out, state = core(x, state)
        out.pow(2).sum().backward()
    return {name: p.grad.clone() for name, p in core.named_parameters()}


def test_ddp_averages_rtrl_gradients_across_two_cpu_ranks(tmp_path):
    torch.manual_seed(0)
    reference = rm.ELSTM(3, 4).double()
    per_rank = []
    for rank in range(2):
        reference.zero_grad()
        per_rank.append(_rtrl_grads(reference, data(rank)))

    result = tmp_path / "grads.pt"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
           "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}  # fmt: skip
    ranks = [
        subprocess.Popen([sys.executable, str(WORKER), str(result)], env={**env, "RANK": str(rank)},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in range(2)
    ]  # fmt: skip
    try:
        outputs = [proc.communicate(timeout=150)[0] for proc in ranks]
    finally:
        for proc in ranks:
            proc.kill()
    assert [proc.returncode for proc in ranks] == [0, 0], outputs
    got = torch.load(result)
    for name, grad in got.items():
        torch.testing.assert_close(grad, (per_rank[0][name] + per_rank[1][name]) / 2, rtol=1e-10, atol=1e-12)
