"""End-to-end frames/s of recipe configs, ``core=rtrl`` against ``core=tbptt``, interleaved in one process.

    nice -n 10 .venv/bin/python benchmarks/bench_cpu_configs.py configs/atari/pong_cpu.yaml
    .venv/bin/python benchmarks/bench_cpu_configs.py configs/atari/pong_cpu.yaml --set stem=impala
    .venv/bin/python benchmarks/bench_cpu_configs.py configs/atari/pong_cpu.yaml --breakdown  # the parts

For each config this builds the ``R2ACModule`` the recipe builds (``recipes.cli.main(..., run=False)``,
so every config value and ``--set key=value`` override, e.g. ``--set num_envs=16``, applies) once
per core, sets up its envs and collector (``setup("fit")``), and runs the recipe's update: collect a
[num_envs, M] segment, the R2AC loss, backward, gradient-norm clip 40, RMSProp with the linear
decay (as Lightning does, without its logging and checkpoints), ``update_epochs × minibatches``
times per segment where the config asks for several updates per batch. One untimed warm-up update
per core; then ``--rounds`` rounds of ``--updates`` timed updates per core, the cores taking turns within each
round, so both see the same machine load (this machine is shared and noisy: compare the ratio, not
absolute numbers across runs). Prints a markdown table row per config: frames/s per core (all
timed frames / all timed seconds) and the rtrl / tbptt time ratio (median of the per-round ratios).

``--breakdown`` also prints, per agent step (one step of all num_envs envs), the time of: the raw
envpool engine alone (uniform random actions) with 1, 2 and its default number of worker threads;
the TorchRL env with the recipe's transforms (``step_and_maybe_reset``); the actor's forward pass;
one whole collection step (env + actor + collector); and the learner's loss forward, backward and
optimizer step (per segment divided by M), for each core.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from recipes.cli import main as cli_main
from rtrl_modules.training import loss_and_metrics, update

ROOT = Path(__file__).resolve().parents[1]


def build(config: str, core: str, overrides: list[str], root: str):
    """The recipe's R2ACModule for ``config`` with ``core``, its envs and collector set up, and its
    optimizer (and LR scheduler, if any) from ``configure_optimizers``."""
    args = ["--config", config, f"--model.init_args.core={core}", f"--trainer.default_root_dir={root}"]
    args += [f"--model.init_args.{item}" for item in overrides]
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it sees both
    try:
        module = cli_main(args, run=False).model  # parses and builds, no subcommand
    finally:
        sys.argv = argv
    module.setup("fit")
    configured = module.configure_optimizers()
    if isinstance(configured, dict):
        return module, configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    return module, configured, None


def timed_updates(run, updates: int) -> tuple[int, float]:
    start = time.perf_counter()
    module, optimizer, scheduler = run
    frames = 0
    for _ in range(updates):  # the recipe's update: collect, loss, backward, clip 40, RMSProp step
        batch = module.collect()
        for rows in module.plan_updates(batch.shape[0]):  # update_epochs × minibatches steps
            update(module.loss, module.minibatch(batch, rows), optimizer, scheduler, max_grad_norm=40.0)
        frames += batch.numel()
    return frames, time.perf_counter() - start


def _shown(config: str) -> str:
    path = Path(config).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else config


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def breakdown(runs: dict, steps: int) -> None:
    """Per-agent-step times of the parts (see the module docstring)."""
    import envpool

    module = next(iter(runs.values()))[0]
    hp = module.hparams
    env, num_envs, M = module.env, hp.num_envs, hp.segment_length
    base = env.base_env
    rows = []  # (part, seconds per agent step)
    if hasattr(base, "_pool"):  # an envpool engine: the engine alone, by worker threads
        for threads in (1, 2, 0):
            pool = envpool.make_gymnasium(
                base.task_id, num_envs=num_envs, seed=0, num_threads=threads, **base._engine_kwargs
            )
            pool.reset()
            n = pool.action_space.n
            actions = [torch.randint(n, (num_envs,), dtype=torch.int32).numpy() for _ in range(steps)]
            for a in actions[:10]:
                pool.step(a)
            start = time.perf_counter()
            for a in actions:
                pool.step(a)
            label = f"envpool engine alone, num_threads={threads}" + (" (default)" if threads == 0 else "")
            rows.append((label, (time.perf_counter() - start) / steps))
            pool.close()
    n_actions = env.action_spec.space.n
    td = env.reset()
    for i in range(steps + 10):
        if i == 10:
            start = time.perf_counter()
        td.set("action", torch.randint(n_actions, (num_envs,)))
        _, td = env.step_and_maybe_reset(td)
    rows.append(("TorchRL env + recipe transforms (random actions)", (time.perf_counter() - start) / steps))
    for core, (mod, optimizer, _) in runs.items():
        td = mod.env.reset()
        with torch.no_grad():
            for i in range(steps + 10):
                if i == 10:
                    start = time.perf_counter()
                mod.actor(td)
        rows.append((f"[{core}] actor forward (no grad)", (time.perf_counter() - start) / steps))
        mod.collect()  # warm
        start = time.perf_counter()
        batches = [mod.collect() for _ in range(max(1, steps // M))]
        seconds = (time.perf_counter() - start) / (len(batches) * M)
        rows.append((f"[{core}] collection (env + actor + collector)", seconds))
        parts = {"loss forward": 0.0, "backward": 0.0, "clip + optimizer step": 0.0}
        for batch in batches:
            t0 = time.perf_counter()
            total, _ = loss_and_metrics(mod.loss, batch)
            t1 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            t2 = time.perf_counter()
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, 40.0)
            optimizer.step()
            t3 = time.perf_counter()
            parts["loss forward"] += t1 - t0
            parts["backward"] += t2 - t1
            parts["clip + optimizer step"] += t3 - t2
        for name, seconds in parts.items():
            rows.append((f"[{core}] learner {name}", seconds / (len(batches) * M)))
    print(f"\nTime per agent step ({num_envs} envs, M={M}; {steps} steps each):\n")
    print("| part | ms / agent step | frames/s if alone |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {_ms(seconds)} | {num_envs / seconds:,.0f} |")
    print(flush=True)


def bench(config: str, args) -> str:
    """The config's markdown table row."""
    with tempfile.TemporaryDirectory() as root:
        runs = {core: build(config, core, args.set, root) for core in args.cores}
        for run in runs.values():
            timed_updates(run, 1)  # warm-up (allocations, first carried sensitivities)
        if args.breakdown:
            breakdown(runs, args.breakdown_steps)
        frames = {core: 0 for core in runs}
        seconds = {core: 0.0 for core in runs}
        ratios = []
        for _ in range(args.rounds):
            took = {}
            for core, run in runs.items():
                f, s = timed_updates(run, args.updates)
                frames[core] += f
                seconds[core] += s
                took[core] = s / f
            if {"rtrl", "tbptt"} <= took.keys():
                ratios.append(took["rtrl"] / took["tbptt"])
        module = next(iter(runs.values()))[0]
        for run in runs.values():
            run[0].teardown("fit")
    hp = module.hparams
    fps = {core: frames[core] / seconds[core] for core in runs}
    ratio = f"{statistics.median(ratios):.2f}" if ratios else "n/a"
    stem = type(module.agent.stem).__name__  # the stem built (vector observations get an MLP)
    total = sum(frames.values()) // len(frames)
    row = (
        f"| {_shown(config)} | {hp.task} | {stem} | {hp.num_envs} | {hp.segment_length} "
        f"| {hp.hidden_size} | {hp.embed_size} | {total:,} | "
        + " | ".join(f"{fps[c]:,.0f}" for c in runs)
        + f" | {ratio} |"
    )
    print(f"# {row}", flush=True)  # as soon as measured
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("configs", nargs="+", help="recipe config files")
    parser.add_argument("--cores", nargs="+", default=["rtrl", "tbptt"])
    parser.add_argument("--updates", type=int, default=2, help="timed updates per core per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (overrides num_threads)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="model init_args overrides")
    parser.add_argument("--breakdown", action="store_true", help="also time the parts per agent step")
    parser.add_argument("--breakdown-steps", type=int, default=100)
    args = parser.parse_args()
    args.set = [*args.set, f"num_threads={args.threads}"]
    torch.set_num_threads(args.threads)
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"# torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, {args.threads} torch "
        f"thread(s), load average {load}; {args.rounds} rounds x {args.updates} updates per core interleaved",
        flush=True,
    )
    rows = [bench(config, args) for config in args.configs]
    print(f"\n# load average at the end {'/'.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    print(
        "| config | task | stem | envs | M | N | embed | frames per core | "
        + " | ".join(f"{c} frames/s" for c in args.cores)
        + " | rtrl / tbptt time |"
    )
    print("|---" * (8 + len(args.cores) + 1) + "|")
    print("\n".join(rows), flush=True)


if __name__ == "__main__":
    main()
