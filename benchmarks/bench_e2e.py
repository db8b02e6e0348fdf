"""End-to-end training throughput (frames/s): environments + acting + collector + learner updates.

    .venv/bin/python benchmarks/bench_e2e.py                       # memory, procgen, atari configs
    .venv/bin/python benchmarks/bench_e2e.py --configs memory      # the default memory recipe only
    .venv/bin/python benchmarks/bench_e2e.py --quick               # smoke run

Each config builds the env with ``rtrl_modules.envs.make_env`` + ``PreviousReward`` + the core's
primer, the agent with ``make_agent``, ``R2ACLoss`` and RMSProp, and runs
``rtrl_modules.training.train`` over a fixed number of frames (as ``recipes/r2ac.py`` does, without
Lightning's logging/checkpointing). One untimed warm-up update per config; then
frames / wall-time of the timed run. Cores run one after another (not interleaved), so the ratio is
only as good as the machine's load was steady: repeat with ``--reps`` (median).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from rtrl_modules.envs import make_env
from rtrl_modules.modules import PreviousReward, make_agent
from rtrl_modules.objectives.r2ac import R2ACLoss
from rtrl_modules.training import make_collector, make_optimizer, train

CONFIGS = {
    # name: (suite, task, env options, num_envs, M, N, embed, frames)
    "memory": ("memory", "delayed_cue", {"delay": 20}, 32, 5, 32, 32, 32 * 5 * 100),
    "procgen": ("procgen", "chaser", {"distribution_mode": "hard"}, 32, 50, 256, 256, 32 * 50 * 2),
    "atari": ("atari", "Pong", {}, 32, 50, 256, 256, 32 * 50 * 1),
}


def run(name, core, frames_scale=1.0, seed=0):
    suite, task, options, num_envs, steps, hidden, embed, frames = CONFIGS[name]
    frames = max(num_envs * steps, int(frames * frames_scale) // (num_envs * steps) * num_envs * steps)
    torch.manual_seed(seed)
    env = make_env(suite, task, num_envs, seed=seed, **options)
    env.append_transform(PreviousReward())
    obs_key = "pixels" if "pixels" in env.observation_spec.keys() else "observation"
    shape = env.observation_spec[obs_key].shape[1:]
    agent = make_agent(tuple(shape), env.action_spec.space.n, core=core, hidden_size=hidden, embed_size=embed)
    env.append_transform(agent.core.make_tensordict_primer())
    loss = R2ACLoss(agent.network)
    optimizer = make_optimizer(loss.parameters())
    warm = make_collector(env, agent.actor, steps, total_frames=num_envs * steps)
    train(warm, loss, optimizer)  # warm-up: one update (allocations, first carried sensitivities)
    collector = make_collector(env, agent.actor, steps, total_frames=frames)
    start = time.perf_counter()
    train(collector, loss, optimizer)
    elapsed = time.perf_counter() - start
    collector.shutdown()
    env.close()
    return frames / elapsed, frames, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--cores", nargs="+", default=["tbptt", "rtrl"])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--frames-scale", type=float, default=1.0, help="multiply the frame budgets")
    parser.add_argument("--json", default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.frames_scale = 0.01
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads\n")
    print(
        "| config | envs | M | N | frames | "
        + " | ".join(f"{c} frames/s" for c in args.cores)
        + " | rtrl / tbptt time |"
    )
    print("|---" * (5 + len(args.cores) + 1) + "|")
    results = {}
    for name in args.configs:
        fps = {c: [] for c in args.cores}
        for _ in range(args.reps):
            for core in args.cores:
                value, frames, _ = run(name, core, args.frames_scale)
                fps[core].append(value)
        med = {c: statistics.median(v) for c, v in fps.items()}
        results[name] = {"fps": med, "frames": frames}
        _, _, _, num_envs, steps, hidden, _, _ = CONFIGS[name]
        ratio = med["tbptt"] / med["rtrl"] if {"tbptt", "rtrl"} <= med.keys() else float("nan")
        print(
            f"| {name} | {num_envs} | {steps} | {hidden} | {frames} | "
            + " | ".join(f"{med[c]:,.0f}" for c in args.cores)
            + f" | {ratio:.2f} |",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
