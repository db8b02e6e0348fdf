"""Environment throughput: env steps per second for each suite with 8 and 32 envs.

Steps through ``make_env`` (with its InitTracker/StepCounter/RewardSum transforms) using TorchRL's
``step_and_maybe_reset`` and uniformly random actions, as a collector does. Not part of the tests.

    .venv/bin/python benchmarks/bench_envs.py [--seconds 3] [--num-envs 8 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from rtrl_modules.envs import make_env

CASES = [
    ("memory", "delayed_cue", {"delay": 100}),
    ("popgym", "RepeatPrevious", {"difficulty": "easy"}),
    ("atari", "Pong", {}),
    ("procgen", "chaser", {"distribution_mode": "hard"}),
]


def bench(suite: str, task: str, num_envs: int, seconds: float, options: dict) -> float:
    """Env steps per second (num_envs counted per batched step)."""
    env = make_env(suite, task, num_envs, **options)
    n_actions = env.action_spec.space.n
    td = env.reset()
    steps, start = 0, None
    while True:
        td.set("action", torch.randint(n_actions, (num_envs,)))
        _, td = env.step_and_maybe_reset(td)
        steps += 1
        if start is None and steps == 20:  # warm-up done
            start, steps = time.perf_counter(), 0
        if start is not None and time.perf_counter() - start > seconds:
            break
    rate = steps * num_envs / (time.perf_counter() - start)
    env.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--num-envs", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--suites", nargs="+", default=[c[0] for c in CASES])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"torch threads {args.threads}"
    )
    print("| suite | task | envs | env steps/s |")
    print("|---|---|---:|---:|")
    for suite, task, options in CASES:
        if suite not in args.suites:
            continue
        sizes = args.num_envs + ([256, 1024] if suite == "memory" else [])  # memory: show the 1e5 target
        for n in sizes:
            try:
                rate = f"{bench(suite, task, n, args.seconds, options):,.0f}"
            except ImportError as exc:  # a suite that is not installed
                rate = f"unavailable ({exc})"
            print(f"| {suite} | {task} | {n} | {rate} |", flush=True)


if __name__ == "__main__":
    main()
