"""Cost of exact RTRL for the block-diagonal cells (RTU, complex LRU) vs N and D (docs/math.md §6).

    .venv/bin/python benchmarks/bench_block.py            # about 30 s, 1 torch thread, CPU

Time = (forward + backward of one segment, carrying the sensitivities) / T, the minimum over
repetitions after a warm-up; memory = numbers of carried RTRL state per example (state +
sensitivities), which does not depend on T. Exact RTRL is O(N·D) per step: doubling N (or D) should
at most double both.
"""

from __future__ import annotations

import argparse
import time

import torch

import rtrl_modules as rm


def seconds_per_step(core, batch: int, steps: int, mode: str, repeats: int) -> float:
    x = torch.randn(batch, steps, core.input_size)
    is_init = torch.zeros(batch, steps, dtype=torch.bool)
    state = core.initial_state(batch)
    best = float("inf")
    for i in range(repeats + 1):  # the first run is a warm-up
        start = time.perf_counter()
        out, new_state = core(x, state, is_init, gradient=mode)
        out.square().sum().backward()
        if i:
            best = min(best, time.perf_counter() - start)
        state = new_state
    return best / steps


def carried_numbers(core) -> int:
    state = core.initial_state(1)
    return sum(v.numel() for v in state.values(include_nested=True, leaves_only=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, 1 repeat (smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    repeats = 1 if args.quick else args.repeats
    sizes = [(64, 32), (64, 64)] if args.quick else [(64, 64), (64, 128), (64, 256), (64, 512)]
    sizes += [(32, 64), (128, 64)] if args.quick else [(128, 128), (256, 128), (512, 128)]
    print(f"B = {args.batch}, T = {args.steps}, float32, 1 thread; time per step (ms)")
    print("| core | D | N | carried / example | rtrl ms/step | rtrl_stepwise ms/step | tbptt ms/step |")
    print("|---|---|---|---|---|---|---|")
    for name, factory in [("RTU", rm.RTU), ("ComplexLRU", rm.ComplexLRU)]:
        for d, n in sizes:
            core = factory(d, n)
            times = [seconds_per_step(core, args.batch, args.steps, mode, repeats) * 1e3
                     for mode in ("rtrl", "rtrl_stepwise", "tbptt")]  # fmt: skip
            cells = " | ".join(f"{t:.3f}" for t in times)
            print(f"| {name} | {d} | {n} | {carried_numbers(core)} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
