"""The core before and after a change, timed in one process: forward + backward of one segment.

    .venv/bin/python benchmarks/bench_core_versions.py --before 2b885e9 --threads 1

Extracts ``rtrl_modules/cells`` and ``rtrl_modules/core`` as they were at git revision ``--before``
into a temporary package beside the current ones, builds the same eLSTM (same weights, inputs and
carried sensitivities) in both, and times, interleaved (the machines are noisy, so the ratios
matter), for each (N, T):

* ``tbptt`` and ``rtrl`` of the current core, called as users call it (``core(x, state)``);
* ``tbptt`` and ``rtrl`` of the earlier core called the same way, and its ``rtrl`` with a reused
  ``sensitivity_out`` buffer (how ``bench_core.py`` timed it before the core reused memory itself).
"""

from __future__ import annotations

import argparse
import importlib
import io
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

import rtrl_modules as rm

ROOT = Path(__file__).resolve().parent.parent


def load_core_at(revision: str, into: Path):
    """``rtrl_modules.core`` as it was at ``revision``, importable as ``rtrl_before.core``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "rtrl_modules/cells", "rtrl_modules/core"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    package = into / "rtrl_before"
    (into / "rtrl_modules").rename(package)
    (package / "__init__.py").write_text("")
    sys.path.insert(0, str(into))
    return importlib.import_module("rtrl_before.core")


def bench(old_core, batch: int, hidden: int, inputs: int, steps: int, reps: int) -> dict[str, float]:
    torch.manual_seed(0)
    new = rm.ELSTM(inputs, hidden)
    old = old_core.ELSTM(inputs, hidden)
    old.load_state_dict(new.state_dict())
    x = torch.randn(batch, steps, inputs, requires_grad=True)
    weights = torch.randn(batch, steps, hidden)
    states = {}
    for name, core in (("new", new), ("old", old)):
        _, states[name] = core(x.detach(), core.initial_state(batch))  # non-zero carried sensitivities
    buffer = torch.empty_like(states["old"]["sensitivity", "weight_ih"])

    def run(core, state, mode, out=None):
        output, _ = core(x, state, gradient=mode, sensitivity_out=out)
        (output * weights).sum().backward()

    setups = {
        "tbptt": lambda: run(new, states["new"], "tbptt"),
        "rtrl": lambda: run(new, states["new"], "rtrl"),
        "tbptt before": lambda: run(old, states["old"], "tbptt"),
        "rtrl before": lambda: run(old, states["old"], "rtrl"),
        "rtrl before, reused buffer": lambda: run(old, states["old"], "rtrl", buffer),
    }
    times = {name: [] for name in setups}
    for _ in range(2):
        for fn in setups.values():
            fn()
    for _ in range(reps):
        for name, fn in setups.items():
            new.zero_grad(set_to_none=True)
            old.zero_grad(set_to_none=True)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", required=True, help="git revision of the earlier core")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--inputs", type=int, default=257)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 50])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        old_core = load_core_at(args.before, Path(tmp))
        print(
            f"# torch {torch.__version__}, {platform.machine()}, {args.threads} threads, B={args.batch}, "
            f"D={args.inputs}, median of {args.reps} interleaved repetitions; before = {args.before}\n"
        )
        print("| N | T | tbptt ms | rtrl ms | rtrl / tbptt | before: rtrl / tbptt (plain API) "
              "| before: rtrl / tbptt (reused buffer) |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for hidden in args.hidden:
            for steps in args.steps:
                ms = bench(old_core, args.batch, hidden, args.inputs, steps, args.reps)
                print(
                    f"| {hidden} | {steps} | {ms['tbptt']:.1f} | {ms['rtrl']:.1f} "
                    f"| {ms['rtrl'] / ms['tbptt']:.2f} "
                    f"| {ms['rtrl before'] / ms['tbptt before']:.2f} "
                    f"| {ms['rtrl before, reused buffer'] / ms['tbptt before']:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
