"""End-to-end frames/s per collection mode: single-process, multi-process sync and async actors.

    .venv/bin/python benchmarks/bench_collection.py --configs memory            # default recipe's shape
    .venv/bin/python benchmarks/bench_collection.py --configs procgen --updates 4 # paper's agent size
    .venv/bin/python benchmarks/bench_collection.py --quick                     # smoke run

The configs are ``bench_e2e.py``'s (envs + ``PreviousReward`` + primer, ``make_agent``, ``R2ACLoss``,
RMSProp) with the same total number of envs in every mode: ``"single"`` steps all of them in the
learner's process; ``"sync"``/``"async"`` give each of ``--workers`` processes its share
(``rtrl_modules.training.make_collector``), the actors get the learner's weights after every update
(``segments``, ``weight_update_interval=1``). ``"sync"`` trains on all workers' envs per update,
``"async"`` on one worker's batch as it arrives. Worker start-up and one warm-up update are not timed;
then frames trained / wall time over ``--updates`` updates (``"async"`` runs ``workers`` × as many,
of 1/workers the frames each, so every mode trains on the same number of frames).

``--sensitivities learner actor`` also runs the multi-process modes with actor-carried sensitivities
(``make_collector(sensitivities="actor")``) and reports the bytes each env ships per segment and the
actors' staleness: the relative difference ‖S_0(actor) − S_T(learner)‖ / ‖S_T(learner)‖ of the
continuing segments, averaged over the timed updates (the two differ because the actor stepped S
with older weights than the learner's).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
from bench_e2e import CONFIGS

from rtrl_modules.envs import make_env
from rtrl_modules.modules import PreviousReward, make_agent
from rtrl_modules.objectives.r2ac import R2ACLoss
from rtrl_modules.training import SLOT_KEY, env_factory, make_collector, make_optimizer, segments, update

MODES = ("single", "sync", "async")


def run(
    name: str, core: str, mode: str, workers: int, updates: int, sensitivities: str = "learner", seed: int = 0
) -> tuple[float, int, int | None, float | None]:
    """(frames/s, frames, bytes shipped per env and segment, mean staleness) of ``updates`` timed
    updates (after one warm-up update); the last two for actor-carried sensitivities only."""
    suite, task, options, num_envs, steps, hidden, embed, _ = CONFIGS[name]
    torch.manual_seed(seed)
    probe = make_env(suite, task, 1, seed=seed, **options)
    obs_key = "pixels" if "pixels" in probe.observation_spec.keys() else "observation"
    shape = tuple(probe.observation_spec[obs_key].shape[1:])
    slot = {} if mode == "single" else {"slot_key": SLOT_KEY}
    agent = make_agent(
        shape, probe.action_spec.space.n, core=core, hidden_size=hidden, embed_size=embed, **slot
    )
    probe.close()
    transforms = [PreviousReward(), agent.core.make_tensordict_primer()]
    per_worker = num_envs // workers if mode != "single" else num_envs
    make = [
        env_factory(suite, task, per_worker, transforms, seed=seed + 100 * w, **options)
        for w in range(workers)
    ]
    if mode == "single":
        collector = make_collector(make[0](), agent.actor, steps)
    else:
        collector = make_collector(
            make,
            agent.actor,
            steps,
            mode=mode,
            num_workers=workers,
            num_envs=per_worker,
            sensitivities=sensitivities,
        )
    loss = R2ACLoss(agent.network)
    optimizer = make_optimizer(loss.parameters())
    total = updates * (workers if mode == "async" else 1)
    batches = segments(collector, agent.actor)
    try:
        update(loss, next(batches), optimizer)  # warm-up (worker start-up is over once it arrives)
        frames, stale, start = 0, [], time.perf_counter()
        for _ in range(total):
            batch = next(batches)
            update(loss, batch, optimizer)
            frames += batch.numel()
            stale.append(getattr(collector, "actor_staleness", float("nan")))
        elapsed = time.perf_counter() - start
    finally:
        collector.shutdown()
    ring = getattr(collector, "sensitivity_ring", None)
    stale = [x for x in stale if x == x]
    return (
        frames / elapsed,
        frames,
        None if ring is None else ring.bytes_per_segment(),
        sum(stale) / len(stale) if stale else None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=["memory", "procgen"], choices=list(CONFIGS))
    parser.add_argument("--cores", nargs="+", default=["tbptt", "rtrl"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--updates", type=int, default=None, help="timed updates (default: memory 100, else 4)"
    )
    parser.add_argument("--sensitivities", nargs="+", default=["learner"], choices=["learner", "actor"])
    parser.add_argument("--threads", type=int, default=None, help="learner torch threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="2 updates per run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    threads = torch.get_num_threads()
    print(
        f"# torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, {threads} learner threads"
    )
    print(f"# load average {load:.2f} at start\n")
    columns = ["config", "core", "mode", "sensitivities", "workers × envs", "frames", "frames/s", "vs single"]
    print("| " + " | ".join([*columns, "bytes/env/segment", "staleness"]) + " |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.configs:
        num_envs = CONFIGS[name][3]
        updates = 2 if args.quick else args.updates or (100 if name == "memory" else 4)
        for core in args.cores:
            single = None
            for mode in args.modes:
                for source in (
                    args.sensitivities if mode != "single" and core.startswith("rtrl") else ["learner"]
                ):
                    workers = 1 if mode == "single" else args.workers
                    fps, frames, shipped, stale = run(name, core, mode, workers, updates, source)
                    single = fps if mode == "single" else single
                    ratio = f"{fps / single:.2f}" if single else "–"
                    shape = f"1 × {num_envs}" if mode == "single" else f"{workers} × {num_envs // workers}"
                    shipped = "–" if shipped is None else f"{shipped / 2**10:.0f} KiB"
                    stale = "–" if stale is None else f"{stale:.1e}"
                    print(
                        f"| {name} | {core} | {mode} | {source} | {shape} | {frames} | {fps:.0f} | {ratio} "
                        f"| {shipped} | {stale} |",
                        flush=True,
                    )
    print(f"\n# load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
