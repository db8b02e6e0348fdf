"""Where RTRL's extra time per segment goes: the passes over the [B, K·N, D] sensitivities, alone.

    .venv/bin/python benchmarks/bench_sensitivity_passes.py --hidden 256 --steps 5 50

Times, interleaved in one process, the sensitivity work of one segment in isolation (no recurrence,
no autograd), with the other memory traffic of a training step simulated by a 64 MiB write between
repetitions (``--flush 0`` turns that off):

* ``carry + inject`` (what the core does): forward S_T = A ⊙ S_0 + W X per example (a GEMM that writes
  the block, then an add of A ⊙ S_0 while it is in cache), and backward Σ_b g_b ⊙ S_0,b;
* ``fused, out of place``: both in the backward, one read of S_0 per example for both (S_T would only
  exist after the backward: a change of the core's contract);
* ``fused, in place``: the same, S_T written over S_0 (S_0 lost: no repeated calls on a segment);
* ``bfloat16 store``: the current order with S stored in bfloat16 (float32 arithmetic).

It also reports one plain read and one plain write of the same bytes, the memory floor.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch


def passes(batch: int, hidden: int, inputs: int, steps: int, reps: int, flush_mib: int) -> dict[str, float]:
    torch.manual_seed(0)
    rows = 2 * hidden  # K·N for the eLSTM
    s0 = torch.randn(batch, rows, inputs)
    st = torch.empty_like(s0)
    s0_bf16, st_bf16 = s0.bfloat16(), torch.empty_like(s0, dtype=torch.bfloat16)
    block = torch.empty(rows, inputs)
    scale = torch.rand(batch, rows, 1)  # A_{1:T}, per row
    grad = torch.randn(batch, rows, 1)  # ∂L/∂c_0, per row
    w, x = torch.randn(batch, rows, steps), torch.randn(batch, steps, inputs)
    acc = torch.zeros(rows, inputs)
    flush = torch.empty(flush_mib * 2**18) if flush_mib else None

    def carry_inject():
        for b in range(batch):
            torch.mm(w[b], x[b], out=st[b])
            st[b].addcmul_(s0[b], scale[b])
        for b in range(batch):
            acc.addcmul_(s0[b], grad[b])

    def fused_out_of_place():
        for b in range(batch):
            acc.addcmul_(s0[b], grad[b])
            torch.mm(w[b], x[b], out=st[b])
            st[b].addcmul_(s0[b], scale[b])

    def fused_in_place():
        for b in range(batch):
            acc.addcmul_(st[b], grad[b])
            st[b].mul_(scale[b]).addmm_(w[b], x[b])

    def bf16_store():
        for b in range(batch):
            torch.mm(w[b], x[b], out=block)
            block.addcmul_(s0_bf16[b], scale[b])
            st_bf16[b].copy_(block)
        for b in range(batch):
            acc.addcmul_(s0_bf16[b], grad[b])

    setups = {
        "carry + inject": carry_inject,
        "fused, out of place": fused_out_of_place,
        "fused, in place": fused_in_place,
        "bfloat16 store": bf16_store,
        "read S once": lambda: s0.sum(),
        "write S once": lambda: st.fill_(1.0),
    }
    times = {name: [] for name in setups}
    for rep in range(reps + 2):
        for name, fn in setups.items():
            if flush is not None:
                flush.fill_(rep)
            start = time.perf_counter()
            fn()
            if rep >= 2:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--inputs", type=int, default=257)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 50])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--flush", type=int, default=64, help="MiB written between repetitions (0: none)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"# torch {torch.__version__}, {platform.machine()}, {args.threads} threads, B={args.batch}, "
        f"D={args.inputs}, median of {args.reps}, {args.flush} MiB flush between repetitions\n"
    )
    names = None
    for hidden in args.hidden:
        for steps in args.steps:
            ms = passes(args.batch, hidden, args.inputs, steps, args.reps, args.flush)
            if names is None:
                names = list(ms)
                print("| N | T | MiB of S | " + " | ".join(f"{n} ms" for n in names) + " |")
                print("|---" * (len(names) + 3) + "|")
            mib = args.batch * 2 * hidden * args.inputs * 4 / 2**20
            print(f"| {hidden} | {steps} | {mib:.1f} | " + " | ".join(f"{ms[n]:.2f}" for n in names) + " |")


if __name__ == "__main__":
    main()
