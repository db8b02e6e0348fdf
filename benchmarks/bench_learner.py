"""One whole learner step with RTRL vs TBPTT: vision stem + eLSTM core + heads + R2AC loss +
backward + gradient clipping + RMSProp step (``rtrl_modules.training.update``).

    .venv/bin/python benchmarks/bench_learner.py                  # ProcGen and Atari sizes
    .venv/bin/python benchmarks/bench_learner.py --quick          # small smoke run
    .venv/bin/python benchmarks/bench_learner.py --json out.json  # also write the results

A fixed random [B, M] segment with every key ``R2ACLoss`` reads is fed to ``update`` for each core,
interleaved in one process (median of ``--reps``). The RTRL module carries sensitivities per env
slot across calls, as in training (non-zero S_0 from the second call on). Also reported: the
same step with the convolutions in channels_last memory format (``--channels-last``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
from tensordict import TensorDict

from rtrl_modules.modules.agent import make_agent
from rtrl_modules.objectives.r2ac import R2ACLoss
from rtrl_modules.training import make_optimizer, update

SIZES = {  # name: (observation shape, actions)
    "procgen": ((3, 64, 64), 15),
    "atari": ((4, 84, 84), 6),
}


def fake_segment(shape, num_actions, batch, steps, hidden) -> TensorDict:
    gen = torch.Generator().manual_seed(0)

    def pixels():
        return torch.randint(0, 256, (batch, steps, *shape), generator=gen, dtype=torch.uint8)

    def step_keys():
        return {
            "pixels": pixels(),
            "prev_reward": torch.randn(batch, steps, 1, generator=gen),
            "recurrent_state": torch.zeros(batch, steps, hidden),
            "is_init": torch.zeros(batch, steps, 1, dtype=torch.bool),
        }

    td = TensorDict(step_keys(), batch_size=[batch, steps])
    td["is_init"][:, 0] = True
    td["action"] = torch.randint(0, num_actions, (batch, steps), generator=gen)
    td["action_log_prob"] = torch.full((batch, steps), -float(torch.log(torch.tensor(num_actions))))
    nxt = TensorDict(step_keys(), batch_size=[batch, steps])
    nxt["reward"] = torch.randn(batch, steps, 1, generator=gen)
    done = torch.rand(batch, steps, 1, generator=gen) < 0.01
    nxt["done"], nxt["terminated"] = done, done.clone()
    td["next"] = nxt
    return td


def build(core, shape, num_actions, hidden, channels_last, device="cpu"):
    torch.manual_seed(0)
    agent = make_agent(shape, num_actions, core=core, hidden_size=hidden, embed_size=256)
    agent.network.to(device)
    if channels_last:
        agent.stem.to(memory_format=torch.channels_last)
    loss = R2ACLoss(agent.network)
    optimizer = make_optimizer(loss.parameters())
    return loss, optimizer


def bench(
    size, batch, steps, hidden, reps, channels_last_variants=(False,), cores=("tbptt", "rtrl"), device="cpu"
):
    """Median seconds per update for each core, per memory format. The cores are interleaved
    within one memory format at a time: interleaving contiguous and channels_last models made the
    first call after each format switch pay for it (measured: 0.69-0.88 "ratios" for channels_last)."""
    shape, num_actions = SIZES[size]
    td = fake_segment(shape, num_actions, batch, steps, hidden).to(device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    results = {}
    for cl in channels_last_variants:
        setups = {core: build(core, shape, num_actions, hidden, cl, device) for core in cores}
        times = {k: [] for k in setups}
        for _ in range(2):  # warm-up; the second RTRL call already has carried sensitivities
            for loss, opt in setups.values():
                update(loss, td, opt)
        for _ in range(reps):
            for core, (loss, opt) in setups.items():
                sync()
                start = time.perf_counter()
                update(loss, td, opt)
                sync()
                times[core].append(time.perf_counter() - start)
        results.update({f"{core}{'_cl' if cl else ''}": statistics.median(v) for core, v in times.items()})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50, help="segment length M")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: all cores)"
    )
    parser.add_argument("--channels-last", action="store_true", help="also time channels_last convolutions")
    parser.add_argument(
        "--only-channels-last", action="store_true", help="time channels_last convolutions only"
    )
    parser.add_argument("--cores", nargs="+", default=["tbptt", "rtrl"], choices=["tbptt", "rtrl", "lstm"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.steps, args.reps = 2, 5, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"# torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, "
        f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', '0')}, "
        f"B={args.batch}, M={args.steps}, N={args.hidden}, median of {args.reps} interleaved reps\n"
    )
    variants = (False, True) if args.channels_last else (False,)
    if args.only_channels_last:
        variants, args.channels_last = (True,), False
    suffixes = [("_cl" if v else "") for v in variants]
    cols = [f"{c}{s}" for s in suffixes for c in args.cores]
    ratios = [(f"rtrl{s}", f"{base}{s}") for s in suffixes for base in ("tbptt", "lstm")]
    ratios = [(a, b) for a, b in ratios if a.split("_")[0] in args.cores and b.split("_")[0] in args.cores]
    header = [f"{c} s" for c in cols] + [f"{a} / {b}" for a, b in ratios]
    print("| size | " + " | ".join(header) + " |")
    print("|---" * (len(cols) + len(ratios) + 1) + "|")
    results = {}
    for size in args.sizes:
        r = bench(size, args.batch, args.steps, args.hidden, args.reps, variants, args.cores, args.device)
        results[size] = r
        print(
            f"| {SIZES[size][0]} | "
            + " | ".join(f"{r[c]:.3f}" for c in cols)
            + " | "
            + " | ".join(f"{r[a] / r[b]:.3f}" for a, b in ratios)
            + " |",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
